"""The refdiff command's error classes (issue 14), one test per class.

The contract: every user mistake and every bad file gives one line ``refdiff: error: ...`` on
stderr naming the flag or the file and what was expected, exit status 2, no traceback and no
warning; nothing the user had is lost or overwritten without being asked; temporary files are
unique and cleaned up (stale ones of our own naming are removed on the next save to the same
target). tests/test_cli.py holds the commands' working runs and the first one-line mistakes;
this file holds the classes the issue lists, each shown to fail on a mutation of its fix.
"""
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

import toy_data
from refdiff import checkpoint, cli, demo, npz, samplers
from refdiff.cli import main
from refdiff.latent import AEConfig, Autoencoder, autoencoder_shapes
from refdiff.nn import Classifier, Denoiser, MLPConfig, param_shapes
from refdiff.schedule import Schedule

PREFIX = "refdiff: error: "
GUARD_SECONDS = 20  # a command that has not returned by then hangs (a FIFO waited on)
HEX16 = "0123456789abcdef"


class Hung(Exception):
    """Raised by the alarm when a command hangs; neither an OSError nor a ValueError, so main lets it through."""


def _hang(signum, frame):
    raise Hung(f"the command did not return within {GUARD_SECONDS} s")


def run(argv, capsys):
    """main(argv) under a timeout guard, every warning recorded: (status, stdout, stderr, warnings)."""
    capsys.readouterr()
    old = signal.signal(signal.SIGALRM, _hang)
    signal.setitimer(signal.ITIMER_REAL, GUARD_SECONDS)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            status = main(argv)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    out, err = capsys.readouterr()
    return status, out, err, [f"{w.category.__name__}: {w.message}" for w in caught]


def refused(argv, capsys, *needles):
    """Assert the contract for a refused command: exit 2, one line naming every needle, no
    traceback, no warning, no temporary-file name, no errno text; returns the line."""
    status, out, err, caught = run(argv, capsys)
    assert status == 2, (status, out, err)
    assert err.startswith(PREFIX) and err.count("\n") == 1 and err.endswith("\n"), err
    for needle in needles:
        assert needle in err, (needle, err)
    for leak in ("Traceback", "Warning", "[Errno", ".tmp"):
        assert leak not in err, (leak, err)
    assert caught == [], caught
    return err


def snapshot(folder):
    """Every file under folder, by path, with its bytes (a FIFO or a folder by its kind)."""
    files = {}
    for root, dirs, names in os.walk(folder):
        files.update({os.path.join(root, d): "folder" for d in dirs})
        for name in names:
            path = os.path.join(root, name)
            files[path] = pathlib.Path(path).read_bytes() if os.path.isfile(path) else "special"
    return files


# ---- tiny models, built in milliseconds: random parameters, the CLI's schedule -------------------
def tiny_network(kind, num_labels, seed=0):
    config = MLPConfig(kind, 2, num_labels, hidden=8, depth=1, t_embed=4)
    rng = np.random.default_rng(seed)
    params = {key: 0.3 * rng.standard_normal(shape) for key, shape in param_shapes(config).items()}
    return (Denoiser if kind == "denoiser" else Classifier)(params, config, Schedule.linear(1000))


def tiny_autoencoder():
    config = AEConfig(dim=2, latent=1, hidden=8, depth=1, kl_weight=1e-3)
    rng = np.random.default_rng(0)
    return Autoencoder({key: rng.standard_normal(s) for key, s in autoencoder_shapes(config).items()}, config, 1.0)


MODELS = {"denoiser": lambda: tiny_network("denoiser", 3), "classifier": lambda: tiny_network("classifier", 3),
          "unconditional": lambda: tiny_network("denoiser", 0), "autoencoder": tiny_autoencoder}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One checkpoint of every kind used here, saved once: {name: path}."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {name: folder / f"{name}.npz" for name in MODELS}
    for name, make in MODELS.items():
        checkpoint.save(paths[name], make())
    return paths


def model_folder(path, saved, **files):
    """A --model folder at path holding {file name: saved checkpoint name}."""
    path.mkdir()
    for name, kind in files.items():
        shutil.copyfile(saved[kind], path / f"{name}.npz")
    return path


# ---- a checkpoint of the wrong kind --------------------------------------------------------------
@pytest.mark.parametrize("files,argv,wrong,problem", [
    ({"denoiser": "classifier"}, ["sample"], "denoiser.npz", "holds a classifier, expected a denoiser"),
    ({"denoiser": "autoencoder"}, ["sample"], "denoiser.npz", "holds an autoencoder, expected a denoiser"),
    ({"denoiser": "denoiser", "classifier": "denoiser"}, ["sample", "--guidance", "classifier", "--scale", "2"],
     "classifier.npz", "holds a denoiser, expected a classifier"),
    ({"denoiser": "denoiser", "classifier": "denoiser"},
     ["field", "--guidance", "classifier", "--scale", "2", "--label", "0", "--out", "f.png"],
     "classifier.npz", "holds a denoiser, expected a classifier"),
], ids=["classifier-as-denoiser", "autoencoder-as-denoiser", "denoiser-as-classifier", "field-denoiser-as-classifier"])
def test_a_checkpoint_of_the_wrong_kind_is_named_with_both_kinds(files, argv, wrong, problem, saved, tmp_path,
                                                                  capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = model_folder(tmp_path / "m", saved, **files)
    refused([*argv, "--model", str(model), "-q"], capsys, f"checkpoint {model / wrong}: {problem}")
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no samples.npz, no f.png


# ---- an unconditional denoiser -------------------------------------------------------------------
def test_an_unconditional_denoiser_samples_unconditionally_in_silence(saved, tmp_path, capsys):
    model, out = model_folder(tmp_path / "m", saved, denoiser="unconditional"), tmp_path / "s.npz"
    status, printed, err, caught = run(["sample", "--model", str(model), "-n", "6", "--steps", "4", "--out", str(out),
                                        "-q"], capsys)
    assert (status, err, caught) == (0, "", []), (status, err, caught)
    assert "0..-1" not in printed and "spread" not in printed, printed  # no per-label figure for no labels
    with np.load(out, allow_pickle=False) as f:
        assert f["x"].shape == (6, 2) and np.isfinite(f["x"]).all() and np.array_equal(f["y"], np.full(6, -1))


@pytest.mark.parametrize("argv,needle", [
    (["sample", "--label", "1"], "--label 1 needs a model with labels"),
    (["sample", "--guidance", "cfg", "--scale", "2"], "--guidance cfg needs a model with labels"),
    (["field", "--guidance", "cfg", "--scale", "2", "--label", "0", "--out", "f.png"],
     "--guidance cfg needs a model with labels"),
])
def test_an_unconditional_denoiser_refuses_labels_by_flag(argv, needle, saved, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = model_folder(tmp_path / "m", saved, denoiser="unconditional")
    err = refused([*argv, "--model", str(model), "-q"], capsys, needle, f"{model / 'denoiser.npz'} was trained without")
    assert "0..-1" not in err


# ---- --data beside --model -----------------------------------------------------------------------
@pytest.mark.parametrize("data,needle", [
    ("moons", "--data beside --model must be a Gaussian-mixture preset"),
    ("ring8", "--data ring8 has 8 labels in 2D, the models of --model"),
    ("mine.npz", "--data beside --model must be a Gaussian-mixture preset"),
])
def test_data_beside_model_is_checked_against_the_models(data, needle, saved, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = model_folder(tmp_path / "m", saved, denoiser="denoiser")
    refused(["sample", "--model", str(model), "--data", data, "-q"], capsys, needle)
    assert not (tmp_path / "samples.npz").exists()


def test_jobs_is_refused_for_the_2d_demo(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(["demo", "--jobs", "2", "-q"], capsys, "--jobs is used only with --data images")
    assert list(tmp_path.iterdir()) == []  # refused before anything is trained or written


def test_data_beside_model_is_used_for_the_exact_fidelity(saved, tmp_path, capsys):
    model = model_folder(tmp_path / "m", saved, denoiser="denoiser")
    argv = ["sample", "--model", str(model), "-n", "6", "--steps", "4", "--out", str(tmp_path / "s.npz"), "-q"]
    without, with_data = run(argv, capsys), run([*argv, "--data", "three_gaussians"], capsys)
    assert without[0] == with_data[0] == 0 and without[3] == with_data[3] == []
    assert "exact p(y | x0)" not in without[1] and "mean exact p(y | x0)" in with_data[1], (without, with_data)


# ---- memory --------------------------------------------------------------------------------------
def out_of_memory(*args, **kwargs):
    raise MemoryError("Unable to allocate 74.5 GiB for an array with shape (10000000000,) and data type int64")


@pytest.mark.parametrize("argv,target,needles", [
    (["sample", "-n", "10000000000"], (cli, "_guided"), ["-n 10000000000 may be too large", "74.5 GiB"]),
    (["data", "moons", "-n", "10000000000", "--out", "d.npz"], (toy_data, "sample"), ["-n 10000000000 may be too large"]),
    (["demo", "--n-per-label", "100000000"], (demo, "run"), ["--n-per-label 100000000 may be too large"]),
    (["sample"], (samplers, "ddim"), ["out of memory", "ulimit -v"]),  # a memory cap: no size option to blame
], ids=["sample-n", "data-n", "demo-n-per-label", "no-size-option"])
def test_running_out_of_memory_is_one_line_naming_the_size_option(argv, target, needles, tmp_path, capsys,
                                                                   monkeypatch):
    # MemoryError is simulated where the run would allocate: a test never allocates 80 GB.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(*target, out_of_memory)
    refused([*argv, "-q"], capsys, *needles)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS caps the address space on Linux")
def test_a_memory_cap_gives_the_line_not_a_traceback(tmp_path):
    # The real thing, in a process whose address space is capped at 2 GiB (ulimit -v): -n 1e10
    # needs 80 GB for its labels alone, so numpy refuses at once and nothing large is allocated.
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    ran = subprocess.run([sys.executable, "-m", "refdiff.cli", "sample", "-n", "10000000000", "-q", "--out",
                          str(tmp_path / "s.npz")], capture_output=True, text=True, preexec_fn=cap, timeout=60)
    assert ran.returncode == 2 and ran.stderr.startswith(PREFIX) and ran.stderr.count("\n") == 1, ran.stderr
    assert "-n 10000000000 may be too large" in ran.stderr and "Traceback" not in ran.stderr
    assert os.listdir(tmp_path) == []


# ---- bad files: every reader, every kind of bad file ---------------------------------------------
HUGE = (20_000_000_000,)  # float64: 160 GB


def write_huge_header(path):
    """A zip whose x.npy header claims HUGE but holds three float64s."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": HUGE})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", header.getvalue() + np.zeros(3).tobytes())


def npy_bytes(array):
    """What numpy.save writes for array."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


BAD_FILES = {
    "text": (lambda p: p.write_text("x,y\n0.5,1\n"), "not an .npz archive: no zip signature"),
    "npy": (lambda p: p.write_bytes(npy_bytes(np.zeros((4, 2)))), "it holds a single .npy array (numpy.save)"),
    "empty": (lambda p: p.write_bytes(b""), "the file is empty"),
    "folder": (lambda p: p.mkdir(), "is a folder, not a file"),
    "fifo": (lambda p: os.mkfifo(p), "is not a regular file"),
    "huge-header": (write_huge_header, f"header claims shape {HUGE} of float64 (160 GB) but it holds 24 bytes"),
    "pickled": (lambda p: np.savez(p, x=np.array([{"a": 1}], dtype=object)), "holds Python objects"),
}
READERS = {  # argv given the bad file, and how the message names it
    "model": (lambda f: ["sample", "--model", str(f.parent), "--out", str(f.parent.parent / "s.npz")], "checkpoint {}: "),
    "data": (lambda f: ["train", "--data", str(f), "--out", str(f.parent.parent / "t")], "--data {}: "),
    "samples": (lambda f: ["plot", str(f)], "{}: "),
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("content", BAD_FILES)
def test_a_bad_file_is_named_with_what_is_wrong_and_left_alone(content, reader, tmp_path, capsys):
    write, problem = BAD_FILES[content]
    argv, naming = READERS[reader]
    (tmp_path / "in").mkdir()
    bad = tmp_path / "in" / ("denoiser.npz" if reader == "model" else "bad.npz")
    write(bad)
    before = snapshot(tmp_path)
    err = refused([*argv(bad), "-q"], capsys, naming.format(bad), problem)  # a FIFO is never waited on: run has a guard
    assert "allow_pickle" not in err and "pickle" not in err.replace("only pickle could read", "")
    assert snapshot(tmp_path) == before  # the file untouched, nothing written


@pytest.mark.parametrize("reader", READERS)
def test_a_header_claiming_160_gb_is_refused_before_allocating(reader, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    bad = tmp_path / "in" / "denoiser.npz"
    write_huge_header(bad)
    argv, _ = READERS[reader]
    refused([*argv(bad), "-q"], capsys, "header claims shape")  # first, untraced: the imports' memory is not the read's
    tracemalloc.start()
    try:
        refused([*argv(bad), "-q"], capsys, "header claims shape")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100e6, f"reading the header allocated {peak / 1e6:.0f} MB"


def test_a_fifo_is_refused_at_once(tmp_path, capsys):
    fifo = tmp_path / "samples.npz"
    os.mkfifo(fifo)
    start = time.monotonic()
    refused(["plot", str(fifo)], capsys, f"{fifo}: is not a regular file")
    assert time.monotonic() - start < 5


# ---- outputs: a missing folder, a folder as a file name, a file as a folder, a failed rename ------
@pytest.mark.parametrize("argv,needles", [
    (["field", "--out", "missing/f.png"], ["cannot write missing/f.png: folder missing does not exist"]),
    (["sample", "--out", "existing/"], ["cannot write existing/: it is a folder, not a file name"]),
    (["sample", "--out", "existing"], ["cannot write existing: it is a folder, not a file name"]),
    (["data", "moons", "--out", "existing"], ["cannot write existing: it is a folder, not a file name"]),
    (["sample", "--out", "notes.txt/s.npz"], ["cannot write notes.txt/s.npz: folder notes.txt is not a folder"]),
    (["demo", "--out", "notes.txt"], ["cannot create folder notes.txt: a file of that name exists"]),
    (["train", "--out", "notes.txt"], ["cannot create folder notes.txt: a file of that name exists"]),
])
def test_an_output_that_cannot_be_written_is_named_and_nothing_is_lost(argv, needles, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    (tmp_path / "notes.txt").write_text("the user's notes\n")
    before = snapshot(tmp_path)
    refused([*argv, "--denoiser-steps", "1"] if argv[0] in ("demo", "train") else argv, capsys, *needles)
    assert snapshot(tmp_path) == before


def refuse_rename(src, dst):
    raise PermissionError(13, "Permission denied", src, dst)


@pytest.mark.parametrize("argv,out", [
    (["sample", "-n", "4", "--steps", "2"], "s.npz"),
    (["field", "--lim", "1"], "f.png"),
])
def test_a_failed_rename_names_the_target_not_the_temporary_file(argv, out, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / out).write_bytes(b"the old output")
    monkeypatch.setattr(os, "replace", refuse_rename)
    refused([*argv, "--out", out, "-q"], capsys, out, "Permission denied")
    assert os.listdir(tmp_path) == [out] and (tmp_path / out).read_bytes() == b"the old output"


def test_an_os_error_about_a_file_descriptor_is_still_one_line(tmp_path, capsys, monkeypatch):
    # os.fdopen names the descriptor, an int, where other OSErrors name a path: once, a folder
    # opened as a file made the error line itself raise TypeError.
    def fdopen_a_folder(name):
        raise IsADirectoryError(21, "Is a directory", 3)
    monkeypatch.setattr(npz, "read_npz", fdopen_a_folder)
    assert refused(["plot", str(tmp_path / "s.npz")], capsys) == f"{PREFIX}Is a directory\n"


# ---- arguments named by their flag ---------------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    *[([command, "--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'")
      for command in ("sample", "field", "data", "demo", "train", "bench")],
    (["sample", "--steps", "0"], "argument --steps: expected an integer >= 1"),
    (["sample", "--sampler", "ddpm", "--steps", "1001"], "--steps must be an integer in 1..1000, got 1001"),
    (["sample", "--steps", "1001"], "--steps must be an integer in 1..1000, got 1001"),
    (["sample", "--guidance", "cfg", "--scale", "nan"], "--scale must be a finite number, got nan"),
    (["sample", "--guidance", "classifier", "--scale", "inf"], "--scale must be a finite number, got inf"),
    (["field", "--guidance", "cfg", "--scale=-inf", "--label", "0"], "--scale must be a finite number"),
    (["field", "--lim", "0"], "--lim must be a finite number > 0, got 0.0"),
    (["sample", "--threads", "0"], "argument --threads: expected an integer >= 1"),
    (["demo", "--n-per-label", "0"], "argument --n-per-label: expected an integer >= 1"),
])
def test_a_bad_value_is_named_by_the_flag_the_user_typed(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = refused([*argv, "-q"], capsys, needle)
    library_name = re.match(rf"{PREFIX}(w|s|scale|steps|seed|lim|n|n_per_label|threads) ", err)
    assert library_name is None, err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv,needle", [
    (["sample", "--guidance", "cfg", "--scale", "1e300"], "--scale 1e+300 is too strong for float64 here"),
    (["sample", "--guidance", "classifier", "--scale", "1e300"], "--scale 1e+300 is too strong for float64 here"),
    (["sample", "--sampler", "ddpm", "--steps", "10", "--guidance", "cfg", "--scale", "1e300"],
     "--scale 1e+300 is too strong for float64 here"),
    (["field", "--lim", "1e200", "--out", "f.png"], "--lim 1e+200 is too large for float64 here"),
    (["field", "--lim", "1e200", "--guidance", "cfg", "--scale", "2", "--label", "0", "--out", "f.png"],
     "--lim 1e+200 and --scale 2 are too large for float64 here"),
], ids=["cfg", "classifier", "ddpm-cfg", "field-lim", "field-lim-scale"])
def test_an_overflowing_value_is_named_without_warning_spew(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = refused([*argv, "-n", "6"] if argv[0] == "sample" else argv, capsys, needle)
    assert "field_fn" not in err
    assert os.listdir(tmp_path) == []


# ---- never writing over a file the command reads -------------------------------------------------
@pytest.mark.parametrize("argv,flags", [
    (["sample", "--model", "m", "--out", "m/denoiser.npz"], ["--out m/denoiser.npz", "--model"]),
    (["sample", "--model", "m", "--out", "m/./denoiser.npz"], ["--out m/./denoiser.npz", "--model"]),
    (["sample", "--model", "m", "--guidance", "classifier", "--scale", "1", "--out", "m/classifier.npz"],
     ["--out m/classifier.npz", "--model"]),
    (["train", "--data", "m/denoiser.npz", "--out", "m"], ["--out m/denoiser.npz", "--data"]),
    (["demo", "--data", "d/samples.npz", "--out", "d"], ["--out d/samples.npz", "--data"]),
], ids=["sample-denoiser", "sample-other-spelling", "sample-classifier", "train", "demo"])
def test_a_command_never_writes_over_a_file_it_reads(argv, flags, saved, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_folder(tmp_path / "m", saved, denoiser="denoiser", classifier="classifier")
    (tmp_path / "d").mkdir()
    x, y = toy_data.sample("moons", 50, np.random.default_rng(0))
    np.savez(tmp_path / "d" / "samples.npz", x=x, y=y)
    before = snapshot(tmp_path)
    refused([*argv, "-q"], capsys, *flags, "nothing was written")
    assert snapshot(tmp_path) == before  # byte for byte


# ---- temporary files: unique under concurrent saves, and cleaned up after a kill ----------------
def write_npz(path, i):
    npz.save_npz_atomic(path, x=np.full((1000, 2), float(i)))


def write_png(path, i, lock=threading.Lock()):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(2, 2))
    fig.add_subplot(1, 1, 1).plot([0, 1], [0, i])
    draw = fig.savefig

    def savefig(*args, **kwargs):  # Agg renders one figure at a time; the temporary files are made at once
        with lock:
            draw(*args, **kwargs)
    fig.savefig = savefig
    demo.save_figure(fig, path)


def expected_png(i):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(2, 2))
    fig.add_subplot(1, 1, 1).plot([0, 1], [0, i])
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=80, format="png")
    return buffer.getvalue()


def write_json(path, i):
    demo.save_json({"i": i, "x": list(range(1000))}, path)


# Every writer goes through npz.write_atomic and so through npz.temp_path.
WRITERS = {"npz": (npz, write_npz, "out.npz"), "figure": (npz, write_png, "f.png"),
           "json": (npz, write_json, "metrics.json")}


@pytest.mark.parametrize("writer", WRITERS)
def test_two_saves_to_one_target_at_once_both_succeed(writer, tmp_path, monkeypatch):
    module, write, name = WRITERS[writer]
    target, together, temps, errors = tmp_path / name, threading.Barrier(2, timeout=10), [], []
    real_temp_path = module.temp_path

    def temp_path(path):  # both writers hold their temporary file before either writes it
        try:
            tmp = real_temp_path(path)
        except BaseException:
            together.abort()
            raise
        temps.append(tmp)
        together.wait()
        assert os.path.exists(tmp)
        return tmp

    def save(i):
        try:
            write(target, i)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    monkeypatch.setattr(module, "temp_path", temp_path)
    threads = [threading.Thread(target=save, args=(i,)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and len(set(temps)) == 2, (errors, temps)
    assert os.listdir(tmp_path) == [name]  # both temporary files renamed away
    if writer == "npz":
        assert np.unique(npz.read_npz(target)["x"]).tolist() in ([1.0], [2.0])  # one whole save, not a mix
    elif writer == "figure":
        assert target.read_bytes() in (expected_png(1), expected_png(2))
    else:
        assert json.loads(target.read_text())["i"] in (1, 2)


def dead_pid():
    """The pid of a process that has exited and been reaped."""
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.parametrize("writer", WRITERS)
def test_stale_temporary_files_of_the_target_are_removed_on_the_next_save(writer, tmp_path):
    _, write, name = WRITERS[writer]
    dead, alive = dead_pid(), os.getpid()
    # A killed save's file (its pid is gone), and the older namings (no pid) once an hour old, go;
    # a save in progress (a live pid), a recent file of an older naming, another target's
    # files and the user's own stay. Every file but the recent one is two hours old.
    stale = [f".{name}.{dead}.{HEX16}.tmp", f".{name}.{HEX16[::-1]}.tmp", f".{name}.tmp"]
    kept = [f".{name}.{alive}.{HEX16}.tmp", f".{name}.{HEX16}.tmp.keep", f".other.npz.{dead}.{HEX16}.tmp",
            f".other.npz.{HEX16}.tmp", "notes.tmp", f"{name}.tmp", f"{name}.{dead}.{HEX16}.tmp"]
    recent = f".{name}.{HEX16}.tmp"
    hours_ago = time.time() - 2 * 3600
    for entry in stale + kept + [recent]:
        (tmp_path / entry).write_bytes(b"half a save")
        if entry != recent:
            os.utime(tmp_path / entry, (hours_ago, hours_ago))
    write(tmp_path / name, 1)
    assert sorted(os.listdir(tmp_path)) == sorted(kept + [recent, name])


def test_a_killed_save_leaves_a_temporary_file_that_the_next_save_removes(tmp_path):
    target = tmp_path / "out.npz"
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys, numpy as np\n"
        "from refdiff import npz\n"
        "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # killed between write and rename\n"
        f"npz.save_npz_atomic({str(target)!r}, x=np.zeros((1000, 2)))\n")], capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = os.listdir(tmp_path)
    assert len(left) == 1 and re.fullmatch(r"\.out\.npz\.\d+\.[0-9a-f]{16}\.tmp", left[0]), left
    for i in range(3):  # the pile-up of the issue: each save removes what the killed one left
        npz.save_npz_atomic(target, x=np.full(3, float(i)))
        assert os.listdir(tmp_path) == ["out.npz"]
