"""Process settings that make refdiff fast on small matrices: BLAS threads and glibc's malloc (docs/learned.md, "Speed").

refdiff's matrix products are small (a batch of 1024 by 128 hidden units). A second BLAS thread
saves little on them when the machine is idle and costs several times over when another process
holds a core, so the ``refdiff`` command and the test suite use ``DEFAULT_THREADS`` = 1 unless
``--threads`` or ``$REFDIFF_THREADS`` says otherwise (the measurements are in docs/learned.md).
Library users choose for themselves: ``refdiff.runtime.set_threads(1)``, or
``OPENBLAS_NUM_THREADS=1`` in the environment before numpy is first imported.

Nothing here imports numpy: ``set_threads`` sets the environment variables that a BLAS reads when
it loads, and tells every OpenBLAS already loaded in the process (numpy's and scipy's each bring
their own) through its ``set_num_threads`` entry point.
"""
import ctypes
import multiprocessing
import os
import signal
import sys

DEFAULT_THREADS = 1
THREADS_VARIABLE = "REFDIFF_THREADS"
BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# The names OpenBLAS builds export for setting and reading the thread count (scipy-openblas
# prefixes its symbols, and its 64-bit-integer build adds the suffix 64_).
SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
           "openblas_set_num_threads")
GETTERS = tuple(name.replace("set_", "get_") for name in SETTERS)


def threads_from(value=None, environ=os.environ):
    """The thread count to use: ``value`` if given, else $REFDIFF_THREADS, else DEFAULT_THREADS.

    ValueError, naming where the number came from, unless it is an integer >= 1.
    """
    if value is not None:
        source, raw, n = "threads", value, value
    elif THREADS_VARIABLE in environ:
        source, raw = f"${THREADS_VARIABLE}", environ[THREADS_VARIABLE]
        n = int(raw) if raw.strip().isdigit() else None
    else:
        return DEFAULT_THREADS
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{source} must be an integer >= 1, got {raw!r}")
    return n


def set_threads(n):
    """Use n BLAS threads from now on in this process and its children.

    Sets OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS (read by a BLAS when it loads,
    and inherited by child processes) and calls the thread setter of every OpenBLAS already
    loaded. Returns {library path: its thread count afterwards}, empty if none is loaded yet.
    """
    n = threads_from(n)
    for name in BLAS_VARIABLES:
        os.environ[name] = str(n)
    for lib in _loaded_openblas().values():
        setter = next((getattr(lib, name) for name in SETTERS if hasattr(lib, name)), None)
        if setter is not None:
            setter(ctypes.c_int(n))
    return blas_threads()


def blas_threads():
    """{library path: thread count} of every OpenBLAS loaded in this process (Linux; {} elsewhere)."""
    counts = {}
    for path, lib in _loaded_openblas().items():
        getter = next((getattr(lib, name) for name in GETTERS if hasattr(lib, name)), None)
        if getter is not None:
            getter.restype = ctypes.c_int
            counts[path] = int(getter())
    return counts


def _loaded_openblas():
    """{path: ctypes handle} of the OpenBLAS shared libraries mapped into this process, read from
    /proc/self/maps (opening a library that is already loaded returns the loaded one)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1].lower()}
    except OSError:
        return {}
    libs = {}
    for path in sorted(p for p in paths if ".so" in p and os.path.exists(p)):
        try:
            libs[path] = ctypes.CDLL(path)
        except OSError:
            continue
    return libs


def tune_malloc():
    """Keep freed large arrays in glibc's heap instead of returning them to the OS after every step.

    Training allocates and frees the same large temporaries every step; by default glibc unmaps
    them each time and the next step page-faults them back in. Raising the mmap and trim
    thresholds (mallopt M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1) removes those faults
    (docs/learned.md gives the measured effect). Only this process, and only on glibc.
    Returns True when applied.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 30)) and bool(libc.mallopt(-1, 1 << 30))
    except (OSError, AttributeError):
        return False


def default_jobs():
    """The number of processes ``run_tasks`` uses unless told otherwise: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_TASKS = ()  # the task list of the running ``run_tasks``, which its forked workers inherit


def run_tasks(tasks, jobs, on_result=None, labels=None):
    """[task() for task in tasks], computed in up to ``jobs`` worker processes; ``on_result(i, result)``
    is called in this process as each result comes back, in list order, and ``labels[i]`` (if
    given) starts each line that task i writes to stderr in a worker.

    A task is a callable of no arguments that carries its own randomness (its own Generator), so
    the results are the plain loop's whatever the number of processes. The workers are forked
    from this process and start with its memory, tasks and data included; only the results travel,
    pickled, back through a pipe (nothing is read from a file). A free worker takes the next task,
    so list the longest first. Workers ignore Ctrl-C (this process stops them) and write whole,
    labelled lines to stderr, never a progress line redrawn in place (``_WholeLines``). The plain
    loop runs when jobs is 1, there is at most one task, or the platform cannot fork
    (docs/learned.md, "Speed").
    """
    tasks = list(tasks)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    labels = [""] * len(tasks) if labels is None else list(labels)
    if len(labels) != len(tasks):
        raise ValueError(f"labels must hold one label per task ({len(tasks)}), got {len(labels)}")
    results = []
    for result in _results(tasks, jobs, labels):
        if on_result:
            on_result(len(results), result)
        results.append(result)
    return results


def _results(tasks, jobs, labels):
    """The tasks' results in list order, from a pool of min(jobs, len(tasks)) forked workers, or
    from the plain loop (see ``run_tasks``)."""
    global _TASKS
    if jobs == 1 or len(tasks) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        yield from (task() for task in tasks)
        return
    _TASKS = list(zip(tasks, labels))
    try:
        with multiprocessing.get_context("fork").Pool(min(jobs, len(tasks)), initializer=_worker_start) as pool:
            yield from pool.imap(_run_task, range(len(tasks)), chunksize=1)
    finally:
        _TASKS = ()


def _run_task(i):
    task, sys.stderr.label = _TASKS[i]
    return task()


def _worker_start():
    """In a worker of ``run_tasks``: Ctrl-C is left to the parent, and stderr writes whole lines."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stderr = _WholeLines(sys.stderr)


class _WholeLines:
    """A worker's stderr, which says it is not a terminal, so that progress lines (train.Progress)
    come whole, one per line, instead of one line redrawn in place that another worker's would
    garble; each line starts with the running task's label in brackets."""

    def __init__(self, stream):
        self.stream, self.label = stream, ""

    def isatty(self):
        return False

    def write(self, text):
        if self.label:
            text = "".join(f"[{self.label}] {line}" for line in text.splitlines(keepends=True))
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)
