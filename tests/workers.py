"""``--jobs N``: run the suite in N pytest processes that share out its test files.

The suite is single-threaded (one BLAS thread, conftest.py), so a second process uses the second
core. ``python -m pytest --jobs 2`` starts N - 1 worker processes with the same arguments and
becomes the first worker itself. Each process collects every test, then takes test files one at
a time: a file is claimed by creating a file of its name in a shared folder (``O_EXCL``, so
exactly one process runs it), and all its tests run in that process, so a module-scoped fixture
is built once. (Each file ends with ``nextitem=None``, so a session-scoped fixture would be built
once per file; the suite has none.) Files in SLOW_FIRST are claimed first, so that no process is
left with a long file at the end while the others have finished. The first process replays the
other workers' reports as they arrive (pytest's own report serialisation, which pytest-xdist
uses too), so the progress, the failures, the final count and the exit status cover every test.
A worker that exits without finishing (a crash, an error at collection) fails the run, with its
output printed, and so does a test that no process reported. Options that need one process or
the cache (--lf, --ff, --nf, --sw, --cache-clear, --pdb, --trace) are refused with --jobs > 1,
and the other workers' warnings are not shown (their failures and skips are).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from urllib.parse import quote

import pytest

# The options a --jobs run refuses (by their pytest dest): they need one process, or the cache.
SINGLE_PROCESS = {"--lf": "lf", "--ff": "failedfirst", "--nf": "newfirst", "--sw": "stepwise",
                  "--sw-skip": "stepwise_skip", "--cache-clear": "cacheclear", "--pdb": "usepdb", "--trace": "trace"}
# The test files that take longest, longest first (measured with --durations=0; files over 4 s).
# The rest follow in collection order. A stale list only costs balance at the end of a run.
SLOW_FIRST = ("test_guidance_learned.py", "test_readme.py", "test_guidance.py", "test_theory_mixture.py",
              "test_tilted.py", "test_latent.py", "test_oracle.py", "test_cli.py", "test_verify.py",
              "test_examples.py", "test_docs_formulas.py", "test_samplers.py", "test_figures.py", "test_process.py",
              "test_dpm_ancestral.py", "test_ode.py", "test_workers.py", "test_likelihood.py", "test_measure_rules.py",
              "test_theory_rules.py", "test_clip.py", "test_theory.py", "test_train.py", "test_predictions.py",
              "test_inverse.py", "test_theory_samplers.py", "test_sampler_grids.py", "test_methods.py")


def pytest_addoption(parser):
    parser.addoption("--jobs", type=int, default=1, metavar="N",
                     help="run the test files in N processes (one per core: 2 on the CI machine)")
    parser.addoption("--worker-folder", default=None, help="(internal) the claims folder of a --jobs run")
    parser.addoption("--worker-index", type=int, default=None, help="(internal) this worker's number in a --jobs run")


def pytest_sessionstart(session):
    config = session.config
    jobs = config.getoption("jobs")
    if jobs < 1:
        raise pytest.UsageError(f"--jobs must be a positive integer, got {jobs}")
    if jobs == 1 or config.getoption("worker_folder") or config.option.collectonly:
        return
    single = [flag for flag, option in SINGLE_PROCESS.items() if getattr(config.option, option, False)]
    if single:
        raise pytest.UsageError(f"--jobs {jobs} cannot be combined with {single[0]}: run it with --jobs 1")
    folder = tempfile.mkdtemp(prefix="refdiff-jobs-")
    config.option.worker_folder = folder
    config._workers = [_start_worker(config, folder, i) for i in range(1, jobs)]


def _start_worker(config, folder, i):
    """Worker i: pytest with this run's arguments, its reports to folder/reports-i.jsonl."""
    args = [sys.executable, "-m", "pytest", *config.invocation_params.args, "-p", "no:cacheprovider",
            f"--worker-folder={folder}", f"--worker-index={i}", f"--basetemp={os.path.join(folder, f'tmp-{i}')}"]
    log = os.path.join(folder, f"log-{i}.txt")
    with open(log, "w") as out:
        process = subprocess.Popen(args, cwd=config.invocation_params.dir, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT)
    return {"process": process, "log": log, "reports": os.path.join(folder, f"reports-{i}.jsonl"), "read": 0}


def pytest_configure(config):
    """A worker (not the first process) writes every report it makes to its reports file."""
    index = config.getoption("worker_index")
    if index is not None:
        config.pluginmanager.register(_ReportWriter(config, index), "refdiff-jobs-reports")


class _ReportWriter:
    def __init__(self, config, index):
        self.config = config
        self.path = os.path.join(config.getoption("worker_folder"), f"reports-{index}.jsonl")

    def pytest_runtest_logreport(self, report):
        """One JSON line per report, appended as soon as it is made."""
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        with open(self.path, "a") as out:
            out.write(json.dumps(data) + "\n")


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    folder = session.config.getoption("worker_folder")
    if folder is None or session.config.option.collectonly:
        return None
    if session.testsfailed and not session.config.option.continue_on_collection_errors:  # as pytest's own loop
        raise session.Interrupted(f"{session.testsfailed} error(s) during collection")
    files, session.config._finished = _files_in_claim_order(session.items), set()
    is_worker, parent = session.config.getoption("worker_index") is not None, os.getppid()
    while not (is_worker and os.getppid() != parent) and (mine := _claim(folder, files)) is not None:  # orphans stop
        items = files[mine]
        for item, next_item in zip(items, [*items[1:], None]):
            item.config.hook.pytest_runtest_protocol(item=item, nextitem=next_item)
            session.config._finished.add(item.nodeid)
            _replay(session)
            _stop_if_asked(session)
    while any(worker["process"].poll() is None for worker in getattr(session.config, "_workers", ())):
        _replay(session)
        _stop_if_asked(session)
        time.sleep(0.1)
    _replay(session)
    _check_workers(session)
    _stop_if_asked(session)
    return True


def _stop_if_asked(session):
    """As pytest's own loop: a failure limit reached (-x, --maxfail) fails the run, a plugin's
    request to stop interrupts it."""
    if session.shouldfail:
        raise session.Failed(session.shouldfail)
    if session.shouldstop:
        raise session.Interrupted(session.shouldstop)


def pytest_unconfigure(config):
    """No worker outlives the run (an interrupted one stops the others)."""
    for worker in getattr(config, "_workers", ()):
        if worker["process"].poll() is None:
            worker["process"].terminate()
            try:
                worker["process"].wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker["process"].kill()
    if hasattr(config, "_workers"):
        shutil.rmtree(config.getoption("worker_folder"), ignore_errors=True)


def _files_in_claim_order(items):
    """{test file: its items in collection order}, the files of SLOW_FIRST first."""
    files = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    order = sorted(files, key=lambda path: rank.get(os.path.basename(path), len(rank)))
    return {path: files[path] for path in order}


def _claim(folder, files):
    """The first file of ``files`` no process has claimed yet, now claimed by this one; None if none is left."""
    for path in files:
        try:
            os.close(os.open(os.path.join(folder, quote(path, safe="")), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        return path
    return None


def _replay(session):
    """In the first process: hand the other workers' new reports to pytest as if run here."""
    config = session.config
    for worker in getattr(config, "_workers", ()):
        for data in _new_lines(worker):
            report = config.hook.pytest_report_from_serializable(config=config, data=data)
            if report.when == "setup":
                config.hook.pytest_runtest_logstart(nodeid=report.nodeid, location=report.location)
            config.hook.pytest_runtest_logreport(report=report)
            if report.when == "teardown":
                config.hook.pytest_runtest_logfinish(nodeid=report.nodeid, location=report.location)
                config._finished.add(report.nodeid)


def _check_workers(session):
    """In the first process, once every worker has exited: fail the run if one ended without a
    result of its tests (its output is printed) or if a collected test was reported by no one."""
    config = session.config
    if not hasattr(config, "_workers"):
        return
    for worker in config._workers:
        code = worker["process"].returncode
        if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED):
            with open(worker["log"]) as log:
                sys.stdout.write(log.read())
            session.shouldfail = f"a --jobs worker exited with code {code} (its output is above)"
    missing = [item.nodeid for item in session.items if item.nodeid not in config._finished]
    if missing and not session.shouldfail:
        session.shouldfail = f"{len(missing)} test(s) ran in no process (a --jobs worker stopped early), e.g. {missing[0]}"


def _new_lines(worker):
    """The complete JSON lines the worker appended since the last call."""
    if not os.path.exists(worker["reports"]):
        return []
    with open(worker["reports"], "rb") as reports:
        reports.seek(worker["read"])
        text = reports.read()
    complete = text[:text.rfind(b"\n") + 1]  # a line being written is read next time
    worker["read"] += len(complete)
    return [_tuples_back(json.loads(line)) for line in complete.splitlines()]


def _tuples_back(data):
    """A report as serialised, with the tuples JSON made lists made tuples again (the terminal
    reporter reads a skip's longrepr and every location as tuples)."""
    for key in ("longrepr", "location"):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    return data
