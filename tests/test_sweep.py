"""The guidance sweep (refdiff/sweep.py): rows and samples for every method and strength, the two
methods' agreement on exact models (G5), and the measures against direct computations."""
import numpy as np
import pytest

import toy_data
from refdiff.metrics import class_spread, energy_distance, fidelity
from refdiff.samplers import SAMPLERS, ddim
from refdiff.schedule import Schedule
from refdiff import methods
from refdiff.sweep import format_table, guided_eps_fn, image_measures, mixture_measures, scale_sweep
from toy_data import images

SCHED = Schedule.linear(1000)
MIX = toy_data.mixture("three_overlapping")
METHODS = methods.available(("denoiser", "classifier"))  # the registered methods these models run


def test_sweep_rows_samples_and_the_methods_agree_on_exact_models():
    n, ws = 300, (0.0, 1.0, 3.0)
    y, x_T = np.arange(n) % 3, np.random.default_rng(0).standard_normal((n, 2))
    model, logits = MIX.eps_model(SCHED), MIX.classifier(SCHED)
    models = {"denoiser": model, "classifier": logits}
    rows, samples = scale_sweep(models, SCHED, y, ws, x_T, mixture_measures(MIX, np.random.default_rng(1)),
                                sample=lambda f, x: ddim(f, SCHED, x, 20))
    assert [(r["method"], r["w"], r["scale"]) for r in rows] == [(m, w, 1 + w) for m in METHODS for w in ws]
    assert set(samples) == {(m, w) for m in METHODS for w in ws}
    for w in ws:  # each sample is the DDIM run of its guided eps_fn from the common x_T
        want = ddim(guided_eps_fn("cfg", w, models, SCHED, y), SCHED, x_T, 20)
        np.testing.assert_array_equal(samples["cfg", w], want)
        # (G5): on exact models CFG(w) and classifier guidance (1 + w) give the same chain.
        np.testing.assert_allclose(samples["classifier", w], samples["cfg", w], atol=1e-7)
    first = rows[0]
    assert first["fidelity"] == pytest.approx(fidelity(MIX, samples["classifier", 0.0], y)[0], rel=1e-12)
    assert first["spread"] == pytest.approx(np.mean(class_spread(samples["classifier", 0.0], y, 3)), rel=1e-12)
    fid = [r["fidelity"] for r in rows if r["method"] == "cfg"]
    assert fid[0] < fid[1] < fid[2]  # numbers and their monotonicity: tests/test_guidance.py
    default, _ = scale_sweep(models, SCHED, y, (1.0,), x_T, lambda x, y: {"x0": float(x[0, 0])},
                             methods=("cfg",))  # the default sampler is DDIM-50
    assert default[0]["x0"] == ddim(guided_eps_fn("cfg", 1.0, models, SCHED, y), SCHED, x_T, 50)[0, 0]
    table = format_table(rows).splitlines()
    assert len(table) == 1 + len(rows) and table[0].split()[:3] == ["method", "w", "s=1+w"]
    assert table[1].split()[:3] == ["classifier", "0.00", "1.00"]


def test_mixture_measures_energy_is_against_fresh_class_draws():
    rng = np.random.default_rng(2)
    x, y = MIX.sample(600, rng)
    got = mixture_measures(MIX, np.random.default_rng(3))(x, y)
    fresh = np.random.default_rng(3)
    want = np.mean([energy_distance(x[y == k], MIX.sample(int(np.sum(y == k)), fresh, y=k)[0]) for k in range(3)])
    assert got["energy"] == pytest.approx(want, rel=1e-12)
    assert (got["fidelity"], got["fidelity_se"]) == pytest.approx(fidelity(MIX, x, y), rel=1e-12)


def test_image_measures_on_true_images():
    x, y = images.sample(140, np.random.default_rng(4))
    m = image_measures(x, y)
    judged = images.judge(x)
    assert m["judged"] == pytest.approx(np.mean(judged == y)) and m["judged"] > 0.9
    assert m["judged_se"] == pytest.approx(np.sqrt(m["judged"] * (1 - m["judged"]) / 140))
    assert m["no_match"] == pytest.approx(np.mean(judged == images.NO_MATCH))
    assert m["spread"] == pytest.approx(np.mean(class_spread(x, y, images.NUM_CLASSES)))  # x is in [-1, 1]
    assert m["pixel_p99"] <= 1.0
    doubled = image_measures(2 * x, y)  # beyond the pixel range: clipped for the spread, seen in pixel_p99
    assert doubled["spread"] == pytest.approx(np.mean(class_spread(np.clip(2 * x, -1, 1), y, images.NUM_CLASSES)))
    assert doubled["pixel_p99"] == pytest.approx(2 * m["pixel_p99"])
    wrong = image_measures(x, (y + 1) % images.NUM_CLASSES)
    assert wrong["judged"] < 0.1


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="method must be one of"):
        guided_eps_fn("dalle", 1.0, {"denoiser": MIX.eps_model(SCHED), "classifier": MIX.classifier(SCHED)}, SCHED, 0)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_the_sweep_takes_every_sampler_by_name(name):
    # a name runs refdiff.samplers.SAMPLERS[name] at its default steps, a stochastic one from a fresh
    # default_rng(0) at every call: each (method, w) is that call, and two runs agree
    n, y = 30, np.arange(30) % 3
    x_T, models = np.random.default_rng(3).standard_normal((n, 2)), {"denoiser": MIX.eps_model(SCHED)}
    first = lambda x, y: {"x": x.copy()}
    rows, samples = scale_sweep(models, SCHED, y, (1.0,), x_T, lambda x, y: {}, methods=("cfg",), sample=name)
    run = SAMPLERS[name][1]
    want = run(guided_eps_fn("cfg", 1.0, models, SCHED, y), SCHED, x_T, None, np.random.default_rng(0), None)
    np.testing.assert_array_equal(samples["cfg", 1.0], want)
    again, _ = scale_sweep(models, SCHED, y, (1.0,), x_T, first, methods=("cfg",), sample=name)
    np.testing.assert_array_equal(again[0]["x"], want)


def test_an_unknown_sampler_name_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^sample must be a callable or one of \('ddim'"):
        scale_sweep({"denoiser": MIX.eps_model(SCHED)}, SCHED, np.zeros(2, int), (0.0,), np.zeros((2, 2)),
                    lambda x, y: {}, methods=("cfg",), sample="plms")
