"""refdiff sample and field with the rules of 2023-2025 (docs/guidance.md, (G15)-(G19)): --negative,
--weak-model and --weak-blur reach the registered methods, the settings line names them, and every
misuse is one line naming the flag, with nothing written."""
import numpy as np
import pytest

import toy_data
from refdiff import checkpoint, demo, guidance
from refdiff.npz import read_npz
from refdiff.samplers import ddim
from refdiff.schedule import Schedule
from test_cli_errors import model_folder, refused, run, saved, tiny_network  # noqa: F401 (saved: a fixture)
from test_figures import assert_readable, saved_by

SCHED = Schedule.linear(1000)
MIX = toy_data.mixture("three_gaussians")


def sample(tmp_path, capsys, *flags):
    out = tmp_path / "s.npz"
    status, stdout, err, caught = run(["sample", "-n", "6", "--steps", "5", "--scale", "2", "--out", str(out), "-q",
                                       *flags], capsys)
    assert status == 0 and caught == [], (status, err, caught)
    return read_npz(out)


def test_negative_reaches_the_rule_and_the_settings(tmp_path, capsys):
    # the oracle's samples are (G15) toward labels 0, 1, 2 away from label 1, by DDIM-5 from the seed's x_T
    got = sample(tmp_path, capsys, "--guidance", "negative", "--negative", "1")
    y = np.arange(6) % 3
    x_T = np.random.default_rng(0).standard_normal((6, 2))
    want = ddim(guidance.negative_prompt_guidance(MIX.eps_model(SCHED), y, 1, 2.0), SCHED, x_T, 5)
    assert np.array_equal(got["y"], y)
    np.testing.assert_allclose(got["x"], want, rtol=0, atol=1e-12)  # mutation: the negative label dropped (CFG)
    assert "negative label w = 2, negative label 1" in str(got["settings"]), got["settings"]


@pytest.mark.parametrize("flags, needle", [
    ((), "weak model: the oracle blurred by 0.5"),
    (("--weak-blur", "1.5"), "weak model: the oracle blurred by 1.5"),
])
def test_autoguidance_on_the_oracle_blurs_it_by_weak_blur(flags, needle, tmp_path, capsys):
    got = sample(tmp_path, capsys, "--guidance", "autoguidance", *flags)
    blur = float(needle.split()[-1])
    x_T = np.random.default_rng(0).standard_normal((6, 2))
    want = ddim(guidance.autoguidance(MIX.eps_model(SCHED), MIX.blurred(blur).eps_model(SCHED), np.arange(6) % 3, 2.0),
                SCHED, x_T, 5)
    np.testing.assert_allclose(got["x"], want, rtol=0, atol=1e-12)
    assert needle in str(got["settings"]), got["settings"]


def test_autoguidance_with_a_model_reads_weak_model(saved, tmp_path, capsys):  # noqa: F811
    folder = model_folder(tmp_path / "m", saved, denoiser="denoiser")
    weak = tmp_path / "weak.npz"
    checkpoint.save(weak, tiny_network("denoiser", 3, seed=5))
    got = sample(tmp_path, capsys, "--model", str(folder), "--guidance", "autoguidance", "--weak-model", str(weak))
    good, bad = checkpoint.load(folder / "denoiser.npz"), checkpoint.load(weak)
    x_T = np.random.default_rng(0).standard_normal((6, 2))
    want = ddim(guidance.autoguidance(good, bad, np.arange(6) % 3, 2.0), SCHED, x_T, 5)
    np.testing.assert_allclose(got["x"], want, rtol=1e-6, atol=1e-6)  # float32 networks
    assert f"weak model {weak}" in str(got["settings"])


@pytest.mark.parametrize("argv, needles", [
    (["--guidance", "cfg", "--negative", "1"], ("--negative is used only with --guidance negative or perp_neg",)),
    (["--guidance", "perp_neg"], ("--negative is required with --guidance negative or perp_neg",)),
    (["--guidance", "negative", "--negative", "3"], ("--negative must be in 0..2", "got 3")),
    (["--guidance", "cfg", "--weak-blur", "1"], ("--weak-blur is used only with --guidance autoguidance",)),
    (["--guidance", "autoguidance", "--weak-blur", "-1"], ("--weak-blur must be a finite number >= 0", "-1")),
    (["--guidance", "autoguidance", "--weak-model", "w.npz"], ("--weak-model is used only with --guidance autoguidance",
                                                               "and --model")),
])
def test_misused_flags_are_one_line_naming_them_and_nothing_is_written(argv, needles, tmp_path, capsys):
    out = tmp_path / "s.npz"
    refused(["sample", "--scale", "2", "-n", "3", "--out", str(out), *argv], capsys, *needles)
    assert not out.exists()


def test_a_model_needs_weak_model_of_its_own_kind(saved, tmp_path, capsys):  # noqa: F811
    folder = model_folder(tmp_path / "m", saved, denoiser="denoiser")
    out = tmp_path / "s.npz"
    base = ["sample", "--model", str(folder), "--guidance", "autoguidance", "--scale", "2", "-n", "3", "--out", str(out)]
    refused(base, capsys, "--weak-model is required with --guidance autoguidance and --model")
    refused(base + ["--weak-model", str(saved["unconditional"])], capsys, "--weak-model", "dimension, labels and schedule")
    refused(base + ["--weak-model", str(saved["classifier"])], capsys, "expected a denoiser")
    assert not out.exists()


def test_field_draws_a_rule_of_2023_2025_with_its_settings_in_the_title(tmp_path, capsys, monkeypatch):
    saved = saved_by(demo, monkeypatch)
    status, _, err, _ = run(["field", "--guidance", "perp_neg", "--negative", "2", "--scale", "3", "--label", "0",
                             "--out", str(tmp_path / "f.png")], capsys)
    assert status == 0, err
    title = saved["f.png"].axes[0].get_title()
    assert "Perp-Neg w = 3, negative label 2 toward label 0" in title, title
    assert_readable(saved["f.png"])
