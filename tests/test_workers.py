"""The ``--jobs`` runner (tests/workers.py), run on small throwaway suites in a subprocess.

Each throwaway suite's conftest loads the runner's hooks as tests/conftest.py does.
"""
import os
import subprocess
import sys

import pytest

import workers

TESTS = os.path.dirname(os.path.abspath(__file__))
CONFTEST = f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom workers import *  # noqa: F401,F403\n"
# Two files whose tests can only pass side by side: each marks that it has started and waits for
# the other's mark (at most 120 s). One process running both files in turn would wait forever.
MEETING = """import os, time

def test_{me}_runs_beside_{other}():
    open(os.path.join({folder!r}, "{me}"), "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join({folder!r}, "{other}")):
        assert time.monotonic() < deadline, "{other} never started while {me} ran"
        time.sleep(0.02)
"""
FAILING = """def test_passes():
    pass

def test_fails():
    assert 2 + 2 == 5, "the deliberate failure"
"""


def _suite(tmp_path, files):
    """A folder holding the runner's conftest and ``files`` ({name: source})."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for name, source in files.items():
        (tmp_path / name).write_text(source)
    return tmp_path


def _pytest(folder, *args):
    """pytest on a throwaway suite, without the installed plugins it does not use (importing
    hypothesis alone takes about a second, in each process of each run)."""
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)


def test_two_jobs_run_files_side_by_side_and_report_every_test(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    suite = _suite(tmp_path / "suite", {
        "test_a.py": MEETING.format(me="a", other="b", folder=str(marks)),
        "test_b.py": MEETING.format(me="b", other="a", folder=str(marks)),
        "test_c.py": FAILING})
    done = _pytest(suite, "--jobs", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 3 passed" in done.stdout  # the other process's tests counted in the first's summary
    assert "the deliberate failure" in done.stdout  # and its failures shown, whichever process ran test_c
    assert sorted(os.listdir(marks)) == ["a", "b"]


@pytest.mark.parametrize("code,message", [(3, "a --jobs worker exited with code 3"),
                                          (1, "2 test(s) ran in no process")])
def test_a_worker_that_dies_fails_the_run(tmp_path, code, message):
    """The worker process (not the first) exits mid-file; the first one says so and fails. With
    exit code 1, which a worker also gives when a test fails, the tests it never ran tell."""
    marks = tmp_path / "marks"
    marks.mkdir()
    die = (f"\n    if any(arg.startswith('--worker-index') for arg in __import__('sys').argv):\n"
           f"        os._exit({code})\n\n\ndef test_after():\n    pass\n")
    suite = _suite(tmp_path / "suite", {
        "test_a.py": MEETING.format(me="a", other="b", folder=str(marks)) + die,
        "test_b.py": MEETING.format(me="b", other="a", folder=str(marks)) + die})
    done = _pytest(suite, "--jobs", "2")
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
    assert message in done.stdout


def test_skips_and_xfails_of_either_process_are_reported(tmp_path):
    """Each process runs a skip and an xfail (JSON makes a skip's reason a list; -rA reads it)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    more = ("\n\nimport pytest\n\n\ndef test_skipped():\n    pytest.skip('no reason')\n\n\n"
            "@pytest.mark.xfail(strict=True)\ndef test_xfailed():\n    assert False\n")
    suite = _suite(tmp_path / "suite", {
        "test_a.py": MEETING.format(me="a", other="b", folder=str(marks)) + more,
        "test_b.py": MEETING.format(me="b", other="a", folder=str(marks)) + more})
    done = _pytest(suite, "--jobs", "2", "-v", "-rA")
    assert done.returncode == pytest.ExitCode.OK, done.stdout + done.stderr
    assert "2 passed, 2 skipped, 2 xfailed" in done.stdout and "INTERNALERROR" not in done.stdout


def test_nothing_selected_is_pytests_exit_5(tmp_path):
    done = _pytest(_suite(tmp_path, {"test_c.py": FAILING}), "--jobs", "2", "-k", "no_such_test")
    assert done.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, done.stdout + done.stderr


def test_options_that_need_one_process_are_refused(tmp_path):
    done = _pytest(_suite(tmp_path, {"test_c.py": FAILING}), "--jobs", "2", "--pdb")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR and "cannot be combined with --pdb" in done.stderr


def test_one_job_is_plain_pytest(tmp_path):
    plain = "def test_no_workers(request):\n    assert request.config.getoption('worker_folder') is None\n"
    done = _pytest(_suite(tmp_path, {"test_c.py": FAILING, "test_plain.py": plain}), "--jobs", "1")
    assert done.returncode == 1 and "1 failed, 2 passed" in done.stdout, done.stdout


def test_an_error_at_collection_stops_the_run(tmp_path):
    """An error at collection in every process: the run stops there, as plain pytest does."""
    done = _pytest(_suite(tmp_path, {"test_c.py": FAILING, "test_broken.py": "def test_x(:\n"}), "--jobs", "2")
    assert done.returncode == pytest.ExitCode.INTERRUPTED, done.stdout
    assert "error(s) during collection" in done.stdout


def test_a_worker_that_cannot_collect_fails_the_run(tmp_path):
    """Only the worker fails to collect: the first process runs every test, and still fails."""
    broken = "import sys\nassert not any(arg.startswith('--worker-index') for arg in sys.argv)\n"
    done = _pytest(_suite(tmp_path, {"test_c.py": "def test_passes():\n    pass\n", "test_broken.py": broken}),
                   "--jobs", "2")
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "a --jobs worker exited with code 2" in done.stdout


def test_jobs_must_be_positive(tmp_path):
    done = _pytest(_suite(tmp_path, {"test_c.py": FAILING}), "--jobs", "0")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR and "--jobs must be a positive integer" in done.stderr


def test_each_file_is_claimed_once_in_order(tmp_path):
    files = {"tests/test_b.py": [], "tests/test_a.py": []}
    assert [workers._claim(str(tmp_path), files) for _ in range(3)] == ["tests/test_b.py", "tests/test_a.py", None]


def test_slow_files_are_claimed_first():
    class Item:
        def __init__(self, nodeid):
            self.nodeid = nodeid

    items = [Item("tests/test_nn.py::t1"), Item("tests/test_guidance_learned.py::t2"), Item("tests/test_nn.py::t3")]
    order = workers._files_in_claim_order(items)
    assert list(order) == ["tests/test_guidance_learned.py", "tests/test_nn.py"]
    assert [item.nodeid for item in order["tests/test_nn.py"]] == ["tests/test_nn.py::t1", "tests/test_nn.py::t3"]


def test_every_slow_file_exists():
    """SLOW_FIRST names files of this suite (a renamed file would silently lose its place)."""
    assert all(os.path.exists(os.path.join(TESTS, name)) for name in workers.SLOW_FIRST)
