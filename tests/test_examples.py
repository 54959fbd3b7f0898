"""The scripts of examples/ run with small arguments, write their figures and print numbers that
mean what their docstrings say.

guidance_sweep.py registers a guidance method, so it runs in its own interpreter, as a user runs
it; the other two run in this one (``runpy``, as ``python examples/NAME.py ARGS`` would), which
saves an interpreter's start and imports. The numbers are checked against what must hold whatever
the training reached: classifier guidance equals CFG on exact models (G5), interval CFG at w = 0
is the conditional model, a loaded checkpoint gives the numbers of the run that saved it, CLIP
guidance raises the CLIP score it climbs.
"""
import ast
import os
import pathlib
import runpy
import subprocess
import sys

import numpy as np
import pytest

import toy_data
from refdiff import checkpoint
from refdiff.schedule import Schedule
from refdiff.train import train_classifier

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def run_script(name, args, capsys, monkeypatch):
    """Run examples/NAME.py as __main__ with ``args`` in this interpreter; its stdout lines."""
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out.splitlines()


def assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000, path


def test_every_example_has_a_docstring_saying_how_to_run_it():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == ["clip_images.py", "guidance_sweep.py", "guided_field.py", "inpainting.py"]
    for name in scripts:
        doc = ast.get_docstring(ast.parse((EXAMPLES / name).read_text(encoding="utf-8")))
        assert doc and f"python examples/{name}" in doc, name


def test_guidance_sweep(tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(EXAMPLES / "guidance_sweep.py"), "--n-per-label", "40", "--steps",
                           "10", "--ws", "0", "1", "3", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split() == ["method", "w", "s=1+w", "fidelity", "fidelity_se", "spread", "energy"]
    rows = {(cells[0], float(cells[1])): [float(v) for v in cells[2:]] for cells in map(str.split, lines[:-1])}
    assert sorted(rows) == sorted((m, w) for m in ("classifier", "cfg", "apg", "cfg_zero_star", "interval")
                                  for w in (0.0, 1.0, 3.0))
    for w in (0.0, 1.0, 3.0):  # fidelity and spread; the energy distance draws fresh reference points
        assert rows["classifier", w][1:4] == rows["cfg", w][1:4], (w, rows)  # CG(1 + w) = CFG(w) on exact models
        assert rows["cfg", w][0] == 1 + w
    assert rows["interval", 0.0][1:4] == rows["cfg", 0.0][1:4]  # at w = 0 both are the conditional model
    fidelity = [rows["cfg", w][1] for w in (0.0, 1.0, 3.0)]
    assert fidelity[0] < fidelity[1] <= fidelity[2] <= 1, fidelity
    assert all(0 < rows[key][3] for key in rows)  # a positive spread
    for name in ("samples.png", "fidelity_diversity.png"):
        assert_png(out / name)


def excess_lines(lines):
    """{branch: (excess, stderr)} from guided_field.py's output."""
    found = {}
    for line in lines[:2]:
        branch, rest = line.split(" excess loss over the Bayes floor: ")
        excess, stderr = (float(v) for v in rest.split(" +- "))
        found[branch] = excess, stderr
    return found


def test_guided_field_trains_saves_and_loads(tmp_path, capsys, monkeypatch):
    small = ["--steps", "30", "--n-eval", "2000"]
    trained = run_script("guided_field.py", [*small, "--out", str(tmp_path / "a")], capsys, monkeypatch)
    excess = excess_lines(trained)
    assert sorted(excess) == ["conditional", "unconditional"]
    for value, stderr in excess.values():  # no model beats the Bayes floor by more than its noise
        assert np.isfinite(value) and 0 < stderr and value > -3 * stderr, excess
    assert_png(tmp_path / "a" / "field.png")
    loaded = run_script("guided_field.py", [*small, "--checkpoint", str(tmp_path / "a" / "denoiser.npz"),
                                            "--out", str(tmp_path / "b")], capsys, monkeypatch)
    assert loaded[:2] == trained[:2]  # the saved model, judged on the same draws
    assert_png(tmp_path / "b" / "field.png")


def test_guided_field_refuses_a_checkpoint_that_is_not_a_2d_denoiser(tmp_path, capsys, monkeypatch):
    mix, sched = toy_data.mixture("three_gaussians"), Schedule.linear(1000)
    x, y = mix.sample(64, np.random.default_rng(0))
    checkpoint.save(str(tmp_path / "classifier.npz"), train_classifier(x, y, sched, np.random.default_rng(0), steps=1,
                                                                  batch=8, verbose=False))
    with pytest.raises(SystemExit, match="expected a denoiser of 2D points with 3 labels"):
        run_script("guided_field.py", ["--checkpoint", str(tmp_path / "classifier.npz"), "--out", str(tmp_path)],
                   capsys, monkeypatch)


def test_clip_images(tmp_path, capsys, monkeypatch):
    captions = ["thick vertical bar", "left vertical bar"]
    lines = run_script("clip_images.py", ["--denoiser-steps", "20", "--clip-steps", "20", "-n", "8", "--scales", "0",
                                          "5", "--caption", captions[0], "--caption", captions[1],
                                          "--out", str(tmp_path)], capsys, monkeypatch)
    table = {}
    for line in lines[1:-1]:
        caption, (s, score, *cells) = line[:28].strip(), line[28:].split()
        table[caption, float(s)] = float(score), dict(zip(cells[::2], map(float, cells[1::2])))
    assert sorted(table) == sorted((c, s) for c in captions for s in (0.0, 5.0))
    assert sorted(table[captions[0], 0.0][1]) == ["all", "class", "thickness"]
    assert sorted(table[captions[1], 0.0][1]) == ["all", "class", "horizontal"]
    for score, match in table.values():
        assert all(0 <= v <= 1 for v in match.values()) and match["all"] <= min(match.values()), match
    for caption in captions:  # guidance climbs the score it is given
        assert table[caption, 5.0][0] > table[caption, 0.0][0], table
    assert_png(tmp_path / "captions.png")


def test_inpainting(tmp_path, capsys, monkeypatch):
    # a 300-step denoiser, 3 images, DDPM-100: every rule prints finite errors, a guided rule agrees with
    # the observation better than the unguided samples (mutation: the observation's rows of A shuffled)
    lines = run_script("inpainting.py", ["--denoiser-steps", "300", "-n", "3", "--out", str(tmp_path)], capsys, monkeypatch)
    assert lines[0].split() == ["rule", "RMS", "observed", "RMS", "hidden", "own", "class", "diverged"]
    rows = {line[:22].strip(): [float(v) for v in line[22:].split()] for line in lines[1:-1]}
    assert sorted(rows) == sorted(["unguided", "DPS, zeta = 5", "DPS, zeta = 0.5", "reconstruction"]), rows
    assert all(np.all(np.isfinite(v)) and v[-1] == 0 for v in rows.values()), rows
    assert rows["reconstruction"][0] < rows["unguided"][0] and rows["DPS, zeta = 5"][0] < rows["unguided"][0], rows
    assert_png(tmp_path / "inpainting.png")
