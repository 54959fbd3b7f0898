"""Process settings (refdiff/runtime.py): the thread count from its sources, BLAS told at run time,
and the command line's --threads and $REFDIFF_THREADS."""
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS, which set_threads must reach too)

from refdiff import runtime
from refdiff.cli import main


def test_threads_from_its_sources():
    assert runtime.threads_from(environ={}) == runtime.DEFAULT_THREADS == 1
    assert runtime.threads_from(environ={"REFDIFF_THREADS": "3"}) == 3
    assert runtime.threads_from(2, environ={"REFDIFF_THREADS": "3"}) == 2  # an explicit value wins


@pytest.mark.parametrize("value, environ, named", [
    (0, {}, "threads"), (-1, {}, "threads"), (1.5, {}, "threads"), (True, {}, "threads"), ("2", {}, "threads"),
    (None, {"REFDIFF_THREADS": "0"}, r"\$REFDIFF_THREADS"), (None, {"REFDIFF_THREADS": "two"}, r"\$REFDIFF_THREADS"),
    (None, {"REFDIFF_THREADS": ""}, r"\$REFDIFF_THREADS"), (None, {"REFDIFF_THREADS": "-2"}, r"\$REFDIFF_THREADS"),
])
def test_bad_thread_counts_are_refused_by_their_source(value, environ, named):
    with pytest.raises(ValueError, match=rf"^{named} must be an integer >= 1"):
        runtime.threads_from(value, environ=environ)


def test_set_threads_reaches_every_loaded_openblas_and_the_environment():
    before = runtime.blas_threads()
    try:
        for n in (2, 1):
            counts = runtime.set_threads(n)
            # numpy and scipy each bring an OpenBLAS on Linux wheels; every one loaded reports n
            assert counts and set(counts.values()) == {n}, counts
            assert all(os.environ[name] == str(n) for name in runtime.BLAS_VARIABLES)
    finally:
        runtime.set_threads(next(iter(before.values()), 1))


def test_the_suite_runs_with_one_thread_unless_told_otherwise():
    # tests/conftest.py applies the command's setting before the tests run
    want = runtime.threads_from()
    assert set(runtime.blas_threads().values()) <= {want}


def test_a_child_process_starts_with_the_threads_set():
    code = "import numpy, refdiff.runtime as r; print(sorted(set(r.blas_threads().values())))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert out.stdout.strip() == "[1]", out


def test_the_command_applies_threads_and_refuses_bad_ones(capsys, monkeypatch):
    before = runtime.blas_threads()
    try:
        assert main(["data", "--threads", "2"]) == 0
        assert set(runtime.blas_threads().values()) == {2}
        monkeypatch.setenv("REFDIFF_THREADS", "x")
        assert main(["data"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("refdiff: error: $REFDIFF_THREADS must be an integer >= 1") and err.count("\n") == 1
        assert main(["data", "--threads", "0"]) == 2 and "--threads" in capsys.readouterr().err
    finally:
        runtime.set_threads(next(iter(before.values()), 1))


def test_tune_malloc_applies_on_glibc():
    assert runtime.tune_malloc() is (sys.platform.startswith("linux"))
    np.ones(10)  # the process carries on


def numbered_task(i):
    """A task that carries its own randomness (seed i) and says which process ran it, and whether
    that process's stderr claimed to be a terminal."""
    def task():
        return i, float(np.random.default_rng(i).standard_normal()), os.getpid(), sys.stderr.isatty()
    return task


@pytest.mark.parametrize("jobs", [1, 2, 3])
@pytest.mark.parametrize("n", [0, 1, 5])
def test_run_tasks_gives_the_plain_loops_results_in_order(jobs, n, monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    tasks, told = [numbered_task(i) for i in range(n)], []
    results = runtime.run_tasks(tasks, jobs, on_result=lambda i, result: told.append((i, result)))
    plain = [task() for task in tasks]
    assert [r[:2] for r in results] == [r[:2] for r in plain]  # the same values, in list order
    assert told == list(enumerate(results))  # on_result heard each one, in order
    pids = {r[2] for r in results}
    if jobs > 1 and n > 1:  # forked workers ran them, at most jobs of them, with whole-line stderr
        assert os.getpid() not in pids and len(pids) <= jobs and not any(r[3] for r in results)
    else:
        assert pids <= {os.getpid()} and all(r[3] for r in results)


class Terminal:
    """A stderr that says it is a terminal."""

    def isatty(self):
        return True

    def write(self, text):
        return len(text)

    def flush(self):
        pass


def test_run_tasks_passes_a_tasks_error_on_and_refuses_bad_jobs():
    def bad():
        raise ValueError("steps must be an integer >= 1, got 0")
    with pytest.raises(ValueError, match=r"^steps must be an integer >= 1, got 0$"):
        runtime.run_tasks([numbered_task(0), bad], 2)
    for jobs in (0, -1, 1.5, True, "2", None):
        with pytest.raises(ValueError, match=r"^jobs must be an integer >= 1"):
            runtime.run_tasks([numbered_task(0)], jobs)
    with pytest.raises(ValueError, match=r"^labels must hold one label per task \(2\), got 1"):
        runtime.run_tasks([numbered_task(0), numbered_task(1)], 2, labels=["only one"])  # zip would drop a task


def test_a_workers_lines_on_stderr_start_with_its_tasks_label(capfd):
    def speaker(word):
        def task():
            sys.stderr.write(f"{word} 1\n{word} 2\n")
            sys.stderr.flush()
        return task
    runtime.run_tasks([speaker("a"), speaker("b")], 2, labels=["first", "second"])
    lines = capfd.readouterr().err.splitlines()
    assert sorted(lines) == ["[first] a 1", "[first] a 2", "[second] b 1", "[second] b 2"]


def test_default_jobs_is_the_cpus_this_process_may_use():
    assert runtime.default_jobs() == len(os.sched_getaffinity(0)) >= 1
