"""The refdiff command: listings, output files, one-line errors with exit status 2."""
import functools
import subprocess
import sys

import numpy as np
import pytest

import toy_data
from refdiff.cli import main


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "data" in capsys.readouterr().out


def test_data_lists_every_set(capsys):
    assert main(["data"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(toy_data.names())


def test_data_writes_a_sample_that_matches_the_library(tmp_path):
    out = tmp_path / "moons.npz"
    assert main(["data", "moons", "-n", "50", "--seed", "3", "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as f:
        x, y = f["x"], f["y"]
    x_ref, y_ref = toy_data.sample("moons", 50, np.random.default_rng(3))
    assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)
    assert [p.name for p in tmp_path.iterdir()] == ["moons.npz"]  # no temporary file left behind


@pytest.mark.parametrize("argv,needle", [
    (["bogus"], "invalid choice"),
    (["data", "nope", "--out", "x.npz"], "name must be one of"),
    (["data", "moons"], "--out is required"),
    (["data", "moons", "-n", "x", "--out", "x.npz"], "invalid int value"),
    (["data", "moons", "-n", "-3", "--out", "x.npz"], "n must be an integer >= 0"),
    (["data", "moons", "--out", "/nonexistent-folder/x.npz"], "does not exist"),
])
def test_user_mistakes_are_one_line_and_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("refdiff: error: ") and needle in err and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_console_script_is_installed_and_exits_2_on_a_mistake():
    ok = subprocess.run([sys.executable, "-m", "refdiff.cli", "--version"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("refdiff ")
    bad = subprocess.run(["refdiff", "data", "nope", "--out", "x.npz"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_bench_prints_every_figure_as_json(capsys, monkeypatch):
    # A tiny budget: the figures' values are not judged here (refdiff bench is a benchmark), only
    # that every one the issue names is there, finite where numeric, and the ratios consistent;
    # so the timed batches are small too (tests/test_bench.py checks each timing function).
    from refdiff import bench
    for name, sizes in (("_threads", {"steps": 3, "n_predict": 500}), ("_oracle_speed", {"n": 2000}),
                        ("_sampling_speed", {"n": 500})):
        monkeypatch.setattr(bench, name, functools.partial(getattr(bench, name), **sizes))
    assert main(["bench", "--json", "--denoiser-steps", "25", "--classifier-steps", "25", "--n-eval", "500",
                 "--n-samples", "200"]) == 0
    import json
    figures = json.loads(capsys.readouterr().out)
    for key in ("train_step_ms_denoiser_float64", "train_step_ms_denoiser_float32", "train_step_ms_classifier_float32",
                "train_seconds_denoiser", "train_seconds_classifier", "denoiser_excess_conditional",
                "denoiser_excess_unconditional", "denoiser_excess_trained_mix", "classifier_excess",
                "ddpm_distance_learned", "ddpm_distance_oracle", "sample_step_ms_unguided", "sample_step_ms_cfg",
                "sample_step_ms_classifier", "train_step_ms_threads1_busy", "predict_ms_threads1_idle",
                "predict_ms_threads2_busy", "busy_over_idle_train_step", "busy_over_idle_predict"):
        assert np.isfinite(figures[key]) and figures[key] >= 0 or key.startswith("denoiser_excess"), key
    assert figures["sample_step_ratio_cfg"] == pytest.approx(figures["sample_step_ms_cfg"] / figures["sample_step_ms_unguided"])
    assert figures["ddpm_distance_ratio"] == pytest.approx(figures["ddpm_distance_learned"] / figures["ddpm_distance_oracle"])


@pytest.mark.parametrize("argv,needle", [
    (["bench", "--data", "moons"], "Gaussian-mixture preset"),
    (["bench", "--denoiser-steps", "0"], "argument --denoiser-steps: expected an integer >= 1"),
])
def test_bench_rejects_bad_arguments(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_bench_images_prints_its_figures(capsys):
    # Tiny budget again: only the presence and range of each figure is checked here.
    assert main(["bench", "--images", "--json", "--denoiser-steps", "10", "--classifier-steps", "10",
                 "--n-samples", "70"]) == 0
    import json
    figures = json.loads(capsys.readouterr().out)
    for key in ("images_classifier_accuracy_clean", "images_judged_requested_class_ddim50",
                "images_judged_no_match_ddim50", "images_judged_requested_class_ddpm1000"):
        assert 0.0 <= figures[key] <= 1.0, key
    assert figures["images_train_seconds_denoiser"] > 0 and figures["images_ms_per_sample_ddpm1000"] > 0


# ---- demo, train, sample, field, verify ------------------------------------------------------
TINY_DEMO = ["--denoiser-steps", "30", "--classifier-steps", "10", "--n-per-label", "20"]


def test_demo_writes_figures_metrics_and_samples(tmp_path, capsys):
    import json
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seed", "3", *TINY_DEMO]) == 0
    printed = capsys.readouterr().out
    names = {"scale_sweep.png", "fields.png", "trajectories.png", "fidelity_diversity.png", "metrics.json", "samples.npz"}
    assert {p.name for p in out.iterdir()} == names  # and no temporary file left behind
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["rows"]
    assert metrics["data"] == "three_gaussians" and len(rows) == 2 * 5
    assert {(r["method"], r["w"]) for r in rows} == {(m, w) for m in ("classifier", "cfg") for w in (0, 0.5, 1, 3, 6)}
    for r in rows:
        assert 0 <= r["fidelity"] <= 1 and r["spread"] > 0 and r["energy"] >= 0 and r["scale"] == 1 + r["w"]
    with np.load(out / "samples.npz", allow_pickle=False) as f:
        assert f["y"].shape == (60,) and f["cfg_w3"].shape == (60, 2) and len(f.files) == 11
        # metrics.json's spread is that of the saved samples
        from refdiff.metrics import class_spread
        cfg3 = next(r for r in rows if r["method"] == "cfg" and r["w"] == 3)
        assert cfg3["spread"] == pytest.approx(np.mean(class_spread(f["cfg_w3"], f["y"], 3)))
    assert "fidelity" in printed and "wrote metrics.json" in printed  # the summary table


def test_demo_on_a_user_npz_without_a_closed_form(tmp_path, capsys):
    import json
    x, y = toy_data.sample("moons", 400, np.random.default_rng(0))
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    assert main(["demo", "--data", str(tmp_path / "mine.npz"), "--out", str(tmp_path / "d"), *TINY_DEMO]) == 0
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert metrics["data"] == "mine.npz" and "fidelity" not in metrics["rows"][0]  # no oracle for a user's data
    assert not (tmp_path / "d" / "fidelity_diversity.png").exists()


def test_train_then_sample_and_field_from_the_checkpoints(tmp_path, capsys):
    from refdiff import checkpoint
    model = tmp_path / "m"
    assert main(["train", "--out", str(model), "--denoiser-steps", "20", "--classifier-steps", "10"]) == 0
    assert {p.name for p in model.iterdir()} == {"denoiser.npz", "classifier.npz"}
    assert checkpoint.load(model / "denoiser.npz").config.num_labels == 3
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", str(model), "--data", "three_gaussians", "--guidance", "classifier", "--scale",
                 "2", "--label", "1", "-n", "30", "--steps", "10", "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as f:
        assert f["x"].shape == (30, 2) and np.all(f["y"] == 1)
    assert "mean exact p(y | x0)" in capsys.readouterr().out
    png = tmp_path / "f.png"
    assert main(["field", "--model", str(model), "--guidance", "cfg", "--scale", "3", "--label", "0",
                 "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_from_the_oracle_is_the_library_call(tmp_path):
    # refdiff sample --guidance cfg --scale w is DDIM-50 on classifier_free_guidance(oracle, labels, w).
    from refdiff.guidance import classifier_free_guidance
    from refdiff.samplers import ddim
    from refdiff.schedule import Schedule
    out = tmp_path / "s.npz"
    assert main(["sample", "--data", "three_overlapping", "--guidance", "cfg", "--scale", "2", "-n", "40",
                 "--seed", "5", "--out", str(out)]) == 0
    mix, sched = toy_data.mixture("three_overlapping"), Schedule.linear(1000)
    y = np.arange(40) % 3
    want = ddim(classifier_free_guidance(mix.eps_model(sched), y, 2.0), sched,
                np.random.default_rng(5).standard_normal((40, 2)), 50)
    with np.load(out, allow_pickle=False) as f:
        np.testing.assert_array_equal(f["x"], want)
        np.testing.assert_array_equal(f["y"], y)
        assert str(f["settings"]) == "the oracle of three_overlapping; CFG w = 2; DDIM, 50 steps; seed 5"


def test_sample_unconditional_and_with_ddpm(tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", "--label", "-1", "--sampler", "ddpm", "--steps", "20", "-n", "10", "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as f:
        assert f["x"].shape == (10, 2) and np.all(f["y"] == -1)


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m", "dpmpp_2s", "dpmpp_2m_sde", "edm"])
def test_sample_with_the_newer_samplers_is_the_library_call(sampler, tmp_path):
    # refdiff sample --sampler NAME --steps K is refdiff.samplers.NAME on the same eps_fn, x_T and rng
    from refdiff import samplers
    from refdiff.guidance import classifier_free_guidance
    from refdiff.schedule import Schedule
    out = tmp_path / "s.npz"
    assert main(["sample", "--guidance", "cfg", "--scale", "1", "--sampler", sampler, "--steps", "12", "-n", "30",
                 "--seed", "2", "--out", str(out), "-q"]) == 0
    mix, sched, rng = toy_data.mixture("three_gaussians"), Schedule.linear(1000), np.random.default_rng(2)
    eps_fn = classifier_free_guidance(mix.eps_model(sched), np.arange(30) % 3, 1.0)
    x_T = rng.standard_normal((30, 2))
    noisy = sampler in ("euler_ancestral", "dpmpp_2m_sde")
    want = getattr(samplers, sampler)(eps_fn, sched, x_T, 12, **({"rng": rng} if noisy else {}))
    with np.load(out, allow_pickle=False) as f:
        np.testing.assert_array_equal(f["x"], want)
        assert str(f["settings"]).endswith(", 12 steps; seed 2")


def test_field_from_the_oracle(tmp_path):
    png = tmp_path / "f.png"
    assert main(["field", "--data", "anisotropic", "--kind", "stream", "--what", "eps", "--t", "50",
                 "--out", str(png)]) == 0
    assert png.stat().st_size > 1000


def test_verify_prints_every_check_and_exits_0(capsys):
    assert main(["verify", "--only", "G5", "C3"]) == 0
    out = capsys.readouterr().out
    assert "G5" in out and "C3" in out and "FAIL" not in out


def test_verify_exits_1_when_an_identity_fails(capsys, monkeypatch):
    from refdiff import guidance
    monkeypatch.setattr(guidance, "cfg_rule", lambda cond, uncond, w: (2 + w) * cond - (1 + w) * uncond)
    assert main(["verify", "--only", "G5"]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["demo", "--data", "nope"], "--data must be one of"),
    (["demo", "--data", "missing.npz"], "no such file"),
    (["demo", "--n-per-label", "0"], "argument --n-per-label: expected an integer >= 1"),
    (["train", "--data", "bad.npz"], "needs arrays x and y"),
    (["train", "--data", "labels.npz"], "y must be"),
    (["train", "--data", "junk.npz"], "--data junk.npz: not an .npz archive"),
    (["sample", "--guidance", "cfg"], "--scale is required"),
    (["sample", "--scale", "2"], "--scale is required"),
    (["sample", "--guidance", "cfg", "--scale", "nan"], "--scale must be a finite number"),
    (["sample", "--label", "3"], "--label must be in 0..2"),
    (["sample", "--guidance", "cfg", "--scale", "1", "--label", "-1"], "--label must be in 0..2"),
    (["sample", "--data", "moons"], "Gaussian-mixture preset"),
    (["sample", "--model", "nowhere"], "nowhere"),
    (["sample", "--sampler", "euler"], "invalid choice"),
    (["field", "--guidance", "cfg", "--scale", "3"], "--label is required"),
    (["field", "--t", "1001"], "--t must be in 1..1000"),
    (["field", "--t", "0"], "argument --t: expected an integer >= 1"),
    (["verify", "--only", "Z9"], "labels"),
])
def test_new_subcommands_reject_mistakes_in_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("bad.npz", x=np.zeros((4, 2)))
    np.savez("labels.npz", x=np.zeros((4, 2)), y=np.array([0.5, 1, 0, 1]))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("refdiff: error: ") and needle in err and err.count("\n") == 1, err


@pytest.mark.parametrize("command", ["demo", "train", "sample", "field", "verify", "bench", "data"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "--seed" in capsys.readouterr().out
