"""What a denoiser predicts: eps, x0, v or score (docs/process.md (C1)-(C6), (C8); docs/learned.md
(L3p), (L5w)).

The named conversions are checked against the specific ones (bit for bit at integer t) and the
formulas at real t; the training targets against the conversions of the true eps; each target's
squared error against the eps error it implies ((C8), hypothesis), and the min-SNR weights against
min(SNR, gamma) times the x0 error; the oracle's predictions against x0_mean (O4) and, by
perturbation, as the minimisers of their own losses; the Denoiser's conversions, its checkpoint and
its training in every target; and the excess in a target's own loss.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import toy_data
from refdiff import checkpoint, process
from refdiff.metrics import denoiser_excess
from refdiff.nn import Denoiser, MLPConfig, init_params
from refdiff.process import PREDICTIONS, eps_to_prediction, prediction_to_eps, target_of
from refdiff.schedule import Schedule
from refdiff.train import loss_weights, train_denoiser
from strategies import EPS64, assert_bounded, cases, coefficients

SCHED = Schedule.linear(1000)
SPECIFIC = {"x0": (process.eps_to_x0, process.x0_to_eps), "v": (process.eps_to_v, process.v_to_eps),
            "score": (lambda s, xt, t, e: process.eps_to_score(s, t, e), lambda s, xt, t, p: process.score_to_eps(s, t, p))}


@pytest.mark.parametrize("target", PREDICTIONS)
@given(cases(2, min_alpha_bar=0.0))
def test_named_conversions_are_the_specific_ones_bit_for_bit(target, case):
    sched, t, (xt, value) = case
    got_from, got_to = eps_to_prediction(sched, xt, t, value, target), prediction_to_eps(sched, xt, t, value, target)
    if target == "eps":
        assert np.array_equal(got_from, value) and np.array_equal(got_to, value)
    else:
        from_eps, to_eps = SPECIFIC[target]
        assert np.array_equal(got_from, from_eps(sched, xt, t, value), equal_nan=True)
        assert np.array_equal(got_to, to_eps(sched, xt, t, value), equal_nan=True)


@pytest.mark.parametrize("target", ["x0", "v", "score"])
@given(st.floats(1.0, 1000.0), st.integers(0, 2 ** 32 - 1))
def test_named_conversions_at_real_t_are_the_formulas_with_alpha_bar_at_t(target, t, seed):
    rng = np.random.default_rng(seed)
    xt, eps = rng.standard_normal((2, 5, 3))
    a = SCHED.alpha_bar_at(t)
    r, s = np.sqrt(a), np.sqrt(1 - a)
    want = {"x0": (xt - s * eps) / r, "v": (eps - s * xt) / r, "score": -eps / s}[target]  # (C1), (C5), (C3)
    got = eps_to_prediction(SCHED, xt, np.full(5, t), eps, target)
    scale = (np.abs(xt) + np.abs(eps)) / min(r, s)
    assert_bounded(got, want, 16 * EPS64 * scale, f"{target} at t = {t}")
    back = prediction_to_eps(SCHED, xt, np.full(5, t), got, target)
    assert_bounded(back, eps, 64 * EPS64 * scale, f"{target} -> eps at t = {t}")


@pytest.mark.parametrize("target", PREDICTIONS)
@given(cases(2, min_alpha_bar=1e-6))
def test_a_draws_target_is_what_its_true_eps_implies(target, case):
    # target_of(x0, eps) = eps_to_prediction(x_t, eps) with x_t = q_sample(x0, eps): (C1), (C3), (C5)
    sched, t, (x0, eps) = case
    c = coefficients(sched, t, len(x0))
    xt = process.q_sample(sched, x0, t, eps)
    got, want = target_of(sched, x0, t, eps, target), eps_to_prediction(sched, xt, t, eps, target)
    # x_t carries 2 ulps of r|x0| + s|eps|, amplified by at most 1 / r (x0, v); the rest a few ulps
    scale = (np.abs(x0) + np.abs(eps)) * (1 + 1 / c.r) + np.abs(eps) / c.s
    assert_bounded(got, want, 16 * EPS64 * scale, target)


@pytest.mark.parametrize("target", PREDICTIONS)
@given(st.integers(1, 1000), st.integers(0, 2 ** 32 - 1))
def test_C8_each_targets_error_is_k_times_the_eps_error_it_implies(target, t, seed):
    # An eps prediction off by delta implies a target prediction off by c_e delta ((C1), (C3), (C5)),
    # so its squared error is k = c_e^2 times delta^2: 1 (eps), 1 / SNR (x0), (SNR + 1) / SNR (v),
    # SNR + 1 (score), SNR = a / (1 - a): the factor loss_weights divides by (L5w).
    rng = np.random.default_rng(seed)
    x0, eps, delta = rng.standard_normal((3, 8, 2))
    xt = process.q_sample(SCHED, x0, t, eps)
    a = SCHED.alpha_bar[t]
    snr = a / (1 - a)
    k = {"eps": 1.0, "x0": 1 / snr, "v": (snr + 1) / snr, "score": snr + 1}[target]
    error = eps_to_prediction(SCHED, xt, t, eps + delta, target) - target_of(SCHED, x0, t, eps, target)
    np.testing.assert_allclose(np.sum(error ** 2), k * np.sum(delta ** 2), rtol=1e-6)
    w = loss_weights(SCHED, np.full(8, t), target, 5.0)
    x0_error = eps_to_prediction(SCHED, xt, t, eps + delta, "x0") - x0
    np.testing.assert_allclose(np.sum(w * error ** 2), min(snr, 5.0) * np.sum(x0_error ** 2), rtol=1e-6)


def test_L5w_min_snr_weights_are_hang_et_als_for_eps_x0_and_v():
    # Hang et al. (2023), Sec. 3.4: min(SNR, gamma) / SNR (eps), min(SNR, gamma) (x0), min(SNR, gamma) / (SNR + 1) (v)
    t = np.arange(1, 1001)
    a = SCHED.alpha_bar[t][:, None]
    snr = a / (1 - a)
    for target, want in (("eps", np.minimum(snr, 5) / snr), ("x0", np.minimum(snr, 5)), ("v", np.minimum(snr, 5) / (snr + 1))):
        np.testing.assert_allclose(loss_weights(SCHED, t, target, 5.0), want, rtol=1e-12)
    # at SNR = 0 (zero terminal SNR) every weight is its finite limit: 1 (eps), 0 (x0, v), 1 (score)
    zero = Schedule.linear(1000).rescale_zero_terminal_snr()
    got = [loss_weights(zero, np.array([1000]), target, 5.0)[0, 0] for target in PREDICTIONS]
    assert got == [1.0, 0.0, 0.0, 1.0]


MIX = toy_data.mixture("three_gaussians")


@pytest.mark.parametrize("target", ["x0", "v"])
def test_the_oracles_x0_and_v_are_the_conversions_of_its_eps(target):
    # prediction_model computes x0 by (O4), without eps, and v from it; (C1), (C5) of the exact eps agree
    rng = np.random.default_rng(0)
    x, t = 2 * rng.standard_normal((200, 2)), rng.integers(1, 1001, 200)
    y = rng.integers(0, 3, 200)
    got = MIX.prediction_model(SCHED, target)(x, t, y)
    want = eps_to_prediction(SCHED, x, t, MIX.eps_model(SCHED)(x, t, y), target)
    # eps* within a few ulps of (1 + |x|), amplified by s / r <= 1 / sqrt(a) in (C1), (C5): measured 2 ulps
    assert_bounded(got, want, 16 * EPS64 * (1 + np.abs(x)) / np.sqrt(SCHED.alpha_bar[t])[:, None], target)


@pytest.mark.parametrize("target", PREDICTIONS)
def test_the_oracles_prediction_minimises_its_own_loss(target):
    # Moving the prediction by +-0.3 d (d a fixed smooth field of unit scale) raises the mean loss
    # over 20,000 draws at t in 100..1000: the expected rise is 0.09 E|d|^2 (about 0.05), the cross
    # term has mean 0 (the oracle's is E[target | x_t]) and a standard error below 0.01 here.
    rng = np.random.default_rng(1)
    n = 20_000
    x0, y = MIX.sample(n, rng)
    t, eps = rng.integers(100, 1001, n), rng.standard_normal((n, 2))
    xt = process.q_sample(SCHED, x0, t, eps)
    best = MIX.prediction_model(SCHED, target)(xt, t, y)
    truth = target_of(SCHED, x0, t, eps, target)
    d = np.stack([np.sin(xt[:, 0]), np.cos(xt[:, 1])], axis=1)
    loss = lambda p: np.mean(np.sum((truth - p) ** 2, axis=1))
    assert loss(best) < loss(best + 0.3 * d) and loss(best) < loss(best - 0.3 * d)
    assert loss(best + 0.3 * d) - loss(best) > 0.02


@pytest.mark.parametrize("target", PREDICTIONS)
def test_denoiser_excess_in_each_target_is_0_for_the_oracle_and_positive_for_a_biased_model(target):
    # eps off by 0.3 everywhere: detected in every target's loss by a one-sided z-test at 3 standard
    # errors on 20,000 common draws (measured 42, 47, 40 and 3.6 standard errors: the score loss
    # weights eps errors by 1 / (1 - a), so its few draws at the smallest t dominate its variance)
    oracle = MIX.eps_model(SCHED)
    zero = denoiser_excess(oracle, MIX, SCHED, 2000, np.random.default_rng(2), target=target)
    biased = denoiser_excess(lambda x, t, y=None: oracle(x, t, y) + 0.3, MIX, SCHED, 20_000, np.random.default_rng(2),
                             target=target)
    assert zero.excess == 0.0 and zero.loss == zero.floor and biased.excess > 3 * biased.stderr


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_a_denoiser_returns_the_eps_its_prediction_implies_and_predicts_every_target(prediction, tmp_path):
    config = MLPConfig("denoiser", 2, 3, hidden=16, depth=2, prediction=prediction)
    params = init_params(config, np.random.default_rng(3))
    params["W_out"] = 0.3 * np.random.default_rng(4).standard_normal(params["W_out"].shape)
    model = Denoiser(params, config, SCHED)
    x, t, y = np.random.default_rng(5).standard_normal((7, 2)), np.array([1, 10, 100, 400, 700, 999, 1000]), 1
    own = model.predict(x, t, y, prediction)
    np.testing.assert_array_equal(model(x, t, y), prediction_to_eps(SCHED, x, t, own, prediction))
    for target in PREDICTIONS:
        through_eps = eps_to_prediction(SCHED, x, t, model(x, t, y), target)
        direct = process.prediction_to_x0(SCHED, x, t, own, prediction) if target == "x0" else through_eps
        np.testing.assert_array_equal(model.predict(x, t, y, target), own if target == prediction else direct)
        # x0 straight from the prediction and through eps agree to round-off amplified by 1 / sqrt(a) (157)
        np.testing.assert_allclose(model.predict(x, t, y, target), through_eps, rtol=1e-12, atol=1e-11)
    checkpoint.save(tmp_path / "m.npz", model)
    back = checkpoint.load(tmp_path / "m.npz")
    assert back.config.prediction == prediction and np.array_equal(back(x, t, y), model(x, t, y))


def test_a_checkpoint_without_a_prediction_field_is_an_eps_model():
    fields = MLPConfig("denoiser", 2, 3).to_dict()
    del fields["prediction"]
    assert MLPConfig(**fields).prediction == "eps"


@pytest.mark.parametrize("prediction, weighting", [("x0", None), ("v", "min_snr"), ("score", "min_snr"), ("eps", "min_snr")])
def test_training_in_each_target_lowers_its_own_loss(prediction, weighting):
    # 300 steps on three_gaussians: the network's own-target loss falls by more than half from the
    # first 20 steps to the last 20, and the model keeps its prediction type. (Unweighted, the score
    # loss weights eps errors by 1 / (1 - a) and its batches are dominated by their smallest t: over
    # these steps it did not fall, 27 -> 33; docs/learned.md.)
    x0, y = MIX.sample(5000, np.random.default_rng(6))
    model = train_denoiser(x0, y, SCHED, np.random.default_rng(7), steps=300, batch=256, hidden=32, depth=2,
                           prediction=prediction, weighting=weighting, verbose=False)
    history = np.asarray(model.history)
    assert model.config.prediction == prediction and history[-20:].mean() < 0.5 * history[:20].mean()


def test_bad_prediction_weighting_and_gamma_are_refused_by_name():
    x0, y = MIX.sample(50, np.random.default_rng(0))
    for kwargs, name in (({"prediction": "noise"}, "prediction"), ({"weighting": "snr"}, "weighting"),
                         ({"min_snr_gamma": 0.0}, "min_snr_gamma")):
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            train_denoiser(x0, y, SCHED, np.random.default_rng(0), steps=1, verbose=False, **kwargs)
    for call in (lambda: eps_to_prediction(SCHED, x0, 5, x0, "noise"), lambda: target_of(SCHED, x0, 5, x0, "sample")):
        with pytest.raises(ValueError, match=r"\btarget\b"):
            call()
    with pytest.raises(ValueError, match=r"\bsource\b"):
        process.prediction_to_x0(SCHED, x0, 5, x0, "sample")
    with pytest.raises(ValueError, match=r"\bprediction\b"):
        MLPConfig("classifier", 2, 3, prediction="v")


def test_a_v_denoiser_gives_x0_at_zero_terminal_snr_where_eps_cannot():
    # at alpha_bar_T = 0 the rotation gives x0 = -v exactly; through eps, (C1) refuses
    zero = Schedule.scaled_linear(1000).rescale_zero_terminal_snr()
    config = MLPConfig("denoiser", 2, 3, hidden=16, depth=2, prediction="v")
    params = init_params(config, np.random.default_rng(8))
    params["W_out"] = 0.3 * np.random.default_rng(9).standard_normal(params["W_out"].shape)
    model, x = Denoiser(params, config, zero), np.random.default_rng(10).standard_normal((4, 2))
    v = model.predict(x, 1000, 0, "v")
    np.testing.assert_array_equal(model.predict(x, 1000, 0, "x0"), -v)
    np.testing.assert_array_equal(model(x, 1000, 0), x)  # eps = sqrt(1 - a) x + sqrt(a) v = x_T
    with pytest.raises(ValueError, match=r"\bt = 1000\b"):
        eps_to_prediction(zero, x, 1000, model(x, 1000, 0), "x0")
