"""``refdiff demo --data images`` (refdiff/demo_images.py), on budgets of 20 training steps.

The models are useless at this size; the tests check the plumbing: every output is written,
metrics.json describes the samples in samples.npz, and mistakes are refused by name. What the
demo measures at its real budgets is in docs/clip.md and docs/latent.md.
"""
import contextlib
import io
import json

import numpy as np
import pytest

from refdiff import demo_images, methods
from refdiff.cli import main
from refdiff.sweep import image_measures
from toy_data import images

TINY = {name: {**opts, "steps": 20} for name, opts in demo_images.BUDGETS.items()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One run of ``refdiff demo --data images`` on TINY budgets (the command line's options for the
    denoiser's and the classifier's steps, the rest by patching): two strengths, two samples per
    class, three per caption, DDPM-10 instead of DDPM-100, in two processes. Returns the folder,
    what demo_images.run returned, stdout and the arguments the command passed to run."""
    out, calls, returned, stdout = tmp_path_factory.mktemp("images_demo"), [], [], io.StringIO()
    run = demo_images.run

    def small_run(*args, **kwargs):
        calls.append((args, kwargs))
        returned.append(run(*args, **{**kwargs, "ws": (0.0, 3.0), "n_caption": 3}))
        return returned[-1]

    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.setattr(demo_images, "BUDGETS", TINY)
        patch.setattr(demo_images, "STEPS", 10)
        patch.setattr(demo_images, "run", small_run)
        assert main(["demo", "--data", "images", "--out", str(out), "--n-per-label", "2", "--denoiser-steps", "20",
                     "--classifier-steps", "20", "--jobs", "2", "-q"]) == 0
    return out, returned[0], stdout.getvalue(), calls


def test_every_output_is_written_and_no_temporary_file_is_left(demo):
    out, _, _, _ = demo
    assert {p.name for p in out.iterdir()} == {"metrics.json", "samples.npz", "guidance_grid.png", "captions.png"}
    for name in ("guidance_grid.png", "captions.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_describe_the_saved_samples(demo):
    out, returned, _, _ = demo
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(returned))  # the file is what run returned
    assert set(metrics["train_seconds"]) == set(metrics["final_loss"]) == set(demo_images.BUDGETS)
    rows = metrics["rows"]
    assert [(r["method"], r["w"]) for r in rows] == [(m, w) for m in demo_images.METHODS for w in (0.0, 3.0)]
    with np.load(out / "samples.npz", allow_pickle=False) as f:
        y = f["y"]
        assert np.array_equal(y, np.arange(14) % images.NUM_CLASSES)
        for r in rows:
            x = f[f"{r['method']}_w{r['w']:g}"]
            assert x.shape == (14, 64)
            recomputed = image_measures(x, y)  # the judge applied again to the saved images
            assert r["judged"] == recomputed["judged"] and r["no_match"] == recomputed["no_match"]
            assert r["seconds_per_sample"] > 0
            assert r["scale"] == (1 + r["w"] if r["method"] in ("classifier", "clip") else r["w"])


def test_caption_rows_cover_every_caption_rule_and_scale(demo):
    _, metrics, _, _ = demo
    keys = [(r["caption"], r["rule"], r["scale"]) for r in metrics["captions"]]
    assert keys == [(c, rule, s) for c in demo_images.CAPTIONS for rule in ("noise_aware", "x0")
                    for s in (0.0, 1.0, 4.0)]
    for r in metrics["captions"]:
        assert 0 <= r["all"] <= min(v for k, v in r.items() if k not in ("caption", "rule", "scale"))


def test_zero_shot_and_autoencoder_figures_are_recorded(demo):
    _, metrics, _, _ = demo
    for name in ("clip_clean", "clip_noise_aware"):
        assert set(metrics["zero_shot"][name]) == {"class", "thickness", "horizontal", "vertical"}
        for accuracy, count in metrics["zero_shot"][name].values():
            assert 0 <= accuracy <= 1 and 0 < count <= 2000
    for name in ("clip_clean", "clip_noise_aware"):
        assert set(metrics["retrieval"][name]) == {"image_to_text", "text_to_image"}
        assert all(0 <= v <= 1 for v in metrics["retrieval"][name].values())
    assert [r["t"] for r in metrics["noisy_class_accuracy"]] == list(demo_images.NOISY_T)
    assert all(0 <= r["clip"] <= 1 and 0 <= r["classifier"] <= 1 for r in metrics["noisy_class_accuracy"])
    ae = metrics["autoencoder"]
    assert ae["latent"] == 8 and ae["mse"] > 0 and ae["scale"] > 0 and 0 <= ae["judged_reconstructions"] <= 1


def test_the_table_names_every_method(demo):
    _, metrics, _, _ = demo
    table = demo_images.format_rows(metrics["rows"])
    assert all(method in table for method in demo_images.METHODS) and len(table.splitlines()) == 2 + 2


def test_bad_budgets_and_methods_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"^budgets must name exactly"):
        demo_images.run(str(tmp_path), np.random.default_rng(0), {"denoiser": {}})
    with pytest.raises(ValueError, match=r"^method must be one of"):
        methods.get("dalle")


def test_the_command_line_runs_the_images_demo(demo):
    out, metrics, stdout, calls = demo
    [(args, kwargs)] = calls
    assert args[0] == str(out) and kwargs == {"n_per_label": 2, "verbose": False, "jobs": 2}  # --out, ..., -q
    assert {name: opts["steps"] for name, opts in args[2].items()} == {name: 20 for name in TINY}  # the step flags
    assert json.loads((out / "metrics.json").read_text())["data"] == metrics["data"] == "images"
    assert "judged accuracy" in stdout


def test_one_process_gives_the_same_outputs_as_two(demo, tmp_path):
    # Each model trains from its own stream and every sampling run from the demo's shared x_T and
    # noise seed, so the process count changes nothing but the times.
    out, parallel, _, _ = demo
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo_images, "STEPS", 10)
        plain = demo_images.run(str(tmp_path), np.random.default_rng(0), TINY, ws=(0.0, 3.0), n_per_label=2,
                                n_caption=3, say=lambda line: None, verbose=False, jobs=1)
    assert without_times(plain) == without_times(parallel)
    with np.load(out / "samples.npz") as two, np.load(tmp_path / "samples.npz") as one:
        assert sorted(two.files) == sorted(one.files)
        assert all(np.array_equal(two[name], one[name]) for name in two.files)


def without_times(metrics):
    """metrics.json without its wall-clock seconds."""
    rows = [{k: v for k, v in row.items() if k != "seconds_per_sample"} for row in metrics["rows"]]
    return {**{k: v for k, v in metrics.items() if k != "train_seconds"}, "rows": rows}
