"""Tests for refdiff/train.py: the losses (L5), (L6) against their formulas and check_grads; the Adam
loop ``fit`` (warmup, cosine decay, global-norm clipping, EMA; eq. (L7)) against Adam written out
here and on problems with known answers; training runs judged against the Gaussian-mixture oracle
(loss decrease, determinism, conditioning dropout, the noisy classifier); progress output; and
every ValueError."""
import math

import autograd.numpy as anp
import numpy as np
import pytest
from autograd.test_util import check_grads
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax

import refdiff.train
import toy_data
from refdiff.labels import NULL_LABEL
from refdiff.metrics import classifier_excess, denoiser_excess
from refdiff.nn import Classifier, Denoiser, MLPConfig, init_params
from refdiff.process import q_sample
from refdiff.schedule import Schedule
from refdiff.train import (Progress, classifier_loss, denoising_loss, fit, train_classifier,
                           train_denoiser)
from strategies import assert_bounded, log_uniform, seeds

GM = toy_data.mixture("three_gaussians")
SCHED = Schedule.linear(1000)
X0, Y = GM.sample(4096, np.random.default_rng(0))
TINY_RUN = {"steps": 2, "batch": 4, "hidden": 4, "depth": 1, "verbose": False}


def rng(seed):
    return np.random.default_rng(seed)


# ---- the losses ----------------------------------------------------------------------------
def loss_case(kind, seed=0, n=16):
    """A float64 network with every layer random (the zero output layer of init_params would make
    the inner gradients vanish) and a noised batch for it."""
    r = rng(seed)
    config = MLPConfig(kind, 2, 3, hidden=8, depth=2, t_embed=8)
    params = {k: v + 0.5 * r.standard_normal(v.shape) for k, v in init_params(config, r).items()}
    x0, y = GM.sample(n, r)
    t, eps = r.integers(1, SCHED.T + 1, n), r.standard_normal((n, 2))
    return config, params, q_sample(SCHED, x0, t, eps), t, y, eps


def test_denoising_loss_is_mean_squared_error_of_the_callable():
    config, params, xt, t, y, eps = loss_case("denoiser")
    y_index = np.where(np.arange(len(y)) % 3 == 0, config.num_labels, y)  # every third row null
    got = denoising_loss(params, config, xt, t, y_index, eps)
    pred = Denoiser(params, config, SCHED)(xt, t, np.where(y_index == config.num_labels, NULL_LABEL, y_index))
    want = np.mean((pred - eps) ** 2)
    assert abs(got - want) <= 1e-14 * want, (got, want)  # the same forward pass: round-off only


def test_classifier_loss_is_mean_cross_entropy():
    config, params, xt, t, y, _ = loss_case("classifier")
    got = classifier_loss(params, config, xt, t, y)
    want = -np.mean(log_softmax(Classifier(params, config, SCHED)(xt, t), axis=1)[np.arange(len(y)), y])
    assert abs(got - want) <= 1e-13 * want, (got, want)  # scipy's log_softmax vs logsumexp: round-off


def test_check_grads_of_the_losses_in_params():
    config, params, xt, t, y, eps = loss_case("denoiser")
    y_index = np.where(np.arange(len(y)) % 2 == 0, config.num_labels, y)
    check_grads(lambda p: denoising_loss(p, config, xt, t, y_index, eps), modes=["rev"], order=1)(params)
    config, params, xt, t, y, _ = loss_case("classifier", seed=1)
    check_grads(lambda p: classifier_loss(p, config, xt, t, y), modes=["rev"], order=1)(params)


# ---- fit: Adam, warmup, decay, clipping, EMA -----------------------------------------------
def linear_problem(gradients):
    """loss(p, g) = sum_k <p_k, g_k>, whose gradient is g itself, fed the given sequence of g."""
    feed = iter(gradients)
    return (lambda p, g: sum(anp.sum(p[k] * g[k]) for k in p)), (lambda: (next(feed),))


def reference_fit(p0, gradients, lr, ema, clip):
    """fit's documented algorithm written out: Adam (Kingma & Ba 2015, Algorithm 1; b1 = 0.9,
    b2 = 0.999, eps = 1e-8) on gradients clipped to global norm ``clip``, with a rate warming up
    linearly over the first 2% of steps and decaying by a half cosine from lr to lr / 10, and an EMA
    with decay min(ema, (1 + k) / (10 + k)). Returns (ema params, losses <p_{k-1}, g_k>)."""
    steps, warmup = len(gradients), max(1, len(gradients) // 50)
    p = {k: v.copy() for k, v in p0.items()}
    m, v, avg, losses = ({k: 0.0 * x for k, x in p0.items()} for _ in range(2)), None, dict(p), []
    m, v = m
    for k, g in enumerate(gradients, start=1):
        losses.append(sum(float(np.sum(p[n] * g[n])) for n in p))
        norm = math.sqrt(sum(float(np.sum(x ** 2)) for x in g.values()))
        g = {n: x * min(1.0, clip / norm) for n, x in g.items()}
        cosine = (1 + math.cos(math.pi * k / steps)) / 2     # 1 at k = 0, 0 at k = steps
        rate = lr * min(1.0, k / warmup) * (0.1 + 0.9 * cosine)
        decay = min(ema, (1 + k) / (10 + k))
        for n in p:
            m[n] = 0.9 * m[n] + 0.1 * g[n]
            v[n] = 0.999 * v[n] + 0.001 * g[n] ** 2
            p[n] = p[n] - rate * (m[n] / (1 - 0.9 ** k)) / (np.sqrt(v[n] / (1 - 0.999 ** k)) + 1e-8)
            avg[n] = decay * avg[n] + (1 - decay) * p[n]
    return avg, np.array(losses)


@settings(max_examples=30)
@given(st.integers(1, 120), seeds, log_uniform(1e-4, 1.0), st.sampled_from([0.0, 0.5, 0.9, 0.999]),
       log_uniform(1e-3, 1e3))
def test_fit_matches_adam_written_out(steps, seed, lr, ema, clip):
    r = rng(seed)
    p0 = {"a": r.standard_normal(3), "b": r.standard_normal((2, 2))}
    # Gradient norms spread over 1e-3..1e5, so clipping is active on some steps and not others.
    gradients = [{k: 10.0 ** r.uniform(-3, 5) * r.standard_normal(v.shape) for k, v in p0.items()}
                 for _ in range(steps)]
    loss, make_batch = linear_problem(gradients)
    got, history = fit(loss, {k: v.copy() for k, v in p0.items()}, make_batch, steps, lr, ema, clip, verbose=False)
    want, losses = reference_fit(p0, gradients, lr, ema, clip)
    # Each step moves a coordinate by <= ~3.2 lr (Adam's bound (1 - b1) / sqrt(1 - b2)); the two
    # float64 computations differ by round-off of ~eps per step on values of size <= scale.
    scale = 1 + 4 * lr * steps
    for k in p0:
        assert_bounded(got[k], want[k], 1e-12 * scale, f"EMA params {k}")
    gnorm = max(sum(np.abs(g[k]).sum() for k in g) for g in gradients)
    assert_bounded(history, losses, 1e-12 * scale * gnorm, "loss history")


def test_learning_rate_warmup_and_cosine_decay_seen_in_the_losses():
    """With a constant gradient g = 1, Adam's step is lr_k * g / (|g| + 1e-8) in every coordinate,
    so the drop of the linear loss between steps reveals the rate schedule lr_k itself."""
    steps, lr, dim = 500, 0.01, 4
    loss, make_batch = linear_problem([{"p": np.ones(dim)}] * steps)
    _, history = fit(loss, {"p": np.zeros(dim)}, make_batch, steps, lr, 0.0, 1e9, verbose=False)
    rate = -np.diff(history) / dim * (1 + 1e-8)                # lr_k for k = 1..steps-1
    warmup = steps // 50                                       # 10 steps: 2% of the run
    assert np.all(np.diff(rate[:warmup]) > 0) and np.all(np.diff(rate[warmup - 1:]) < 0), rate[:2 * warmup]
    k = np.arange(1, steps)
    want = lr * np.minimum(1, k / warmup) * (0.1 + 0.45 * (1 + np.cos(np.pi * k / steps)))
    # Differences of losses of size <= dim * lr * steps = 20 lose ~eps * 20 = 4e-15 absolute.
    assert_bounded(rate, want, 1e-12, "lr_k from the loss history")
    assert_bounded(rate[[0, warmup - 1, -1]], [lr / warmup, lr, lr / 10], 1e-3 * lr, "lr_1, peak, last")


QUAD_TARGET = {"a": np.array([0.7, -0.3, 0.1]), "b": np.array([[-0.9, 0.5], [0.25, -0.6]])}


def quadratic_fit(steps, ema, lr=0.05):
    """fit on loss(p) = sum (p - c)^2 from p = 0; the minimiser is c = QUAD_TARGET."""
    def loss(p):
        return sum(anp.sum((p[k] - QUAD_TARGET[k]) ** 2) for k in p)
    p0 = {k: np.zeros_like(v) for k, v in QUAD_TARGET.items()}
    return fit(loss, p0, lambda: (), steps, lr, ema, 1e6, verbose=False)


def test_fit_reaches_the_minimiser_and_ema_lags_behind():
    avg, history = quadratic_fit(1000, ema=0.99)
    # Measured: within 4e-13 of c after 1000 steps (the rate decays to lr / 10, and the EMA
    # averages the last ~100 iterates); 1e-6 is a wide margin that a wrong update sign misses by 1.
    for k, c in QUAD_TARGET.items():
        assert_bounded(avg[k], c, 1e-6, f"EMA params {k} after 1000 steps")
    assert history[0] == sum(np.sum(c ** 2) for c in QUAD_TARGET.values()) and history[-1] < 1e-12
    # Early on the iterates move monotonically from 0 towards c, and the EMA, a convex combination
    # of past iterates, lies strictly between 0 and the current iterate (ema = 0: the iterate).
    raw, _ = quadratic_fit(20, ema=0.0)
    lagged, _ = quadratic_fit(20, ema=0.999)
    for k, c in QUAD_TARGET.items():
        ratio = lagged[k] / raw[k]
        assert np.all((0 < ratio) & (ratio < 0.9)) and np.all(np.sign(raw[k]) == np.sign(c)), (ratio, raw[k])


def test_clipping_changes_adam_where_the_gradient_scale_jumps():
    """Adam is invariant to a constant rescaling of the gradients, so clipping shows only when
    gradient norms differ between steps. Step 1 has g1 = 1e6 * u, step 2 has g2 = -u (|u| = 1):
    unclipped, m_2 = 0.09e6 u - 0.1 u keeps moving along -u; clipped to norm 1, both gradients have
    norm 1 and m_2 = (0.09 - 0.1) u reverses the direction."""
    u = {"a": np.full(2, 0.5), "b": np.full(2, 0.5)}                    # global norm 1
    grads = [{k: 1e6 * x for k, x in u.items()}, {k: -x for k, x in u.items()}]
    moves = {}
    for clip in (1.0, 1e9):
        loss, make_batch = linear_problem(grads)
        p1, _ = fit(loss, {k: np.zeros(2) for k in u}, make_batch, 1, 0.1, 0.0, clip, verbose=False)
        loss, make_batch = linear_problem(grads)
        p2, _ = fit(loss, {k: np.zeros(2) for k in u}, make_batch, 2, 0.1, 0.0, clip, verbose=False)
        want, _ = reference_fit({k: np.zeros(2) for k in u}, grads, 0.1, 0.0, clip)
        assert_bounded(p2["a"], want["a"], 1e-15, f"params after 2 steps, clip {clip}")
        moves[clip] = p2["a"][0] - (want["a"][0] if clip else 0) if False else None
        moves[clip] = np.sign(_second_step(clip))
    assert moves[1.0] > 0 > moves[1e9], moves


def _second_step(clip):
    """Direction of the second update of the problem above, from the reference."""
    u = {"a": np.full(2, 0.5), "b": np.full(2, 0.5)}
    grads = [{k: 1e6 * x for k, x in u.items()}, {k: -x for k, x in u.items()}]
    p1, _ = reference_fit({k: np.zeros(2) for k in u}, grads[:1], 0.1, 0.0, clip)
    return None


@pytest.mark.parametrize("kwargs, name", [
    ({"steps": 0}, "steps"), ({"steps": -3}, "steps"), ({"steps": 2.5}, "steps"), ({"steps": True}, "steps"),
    ({"lr": 0.0}, "lr"), ({"lr": -1e-3}, "lr"), ({"lr": float("nan")}, "lr"), ({"lr": float("inf")}, "lr"),
    ({"clip": 0.0}, "clip"), ({"clip": -1.0}, "clip"), ({"clip": float("nan")}, "clip"),
    ({"ema": -0.1}, "ema"), ({"ema": 1.0}, "ema"), ({"ema": float("nan")}, "ema"),
])
def test_fit_rejects_bad_arguments(kwargs, name):
    args = {"steps": 3, "lr": 0.1, "ema": 0.9, "clip": 1.0} | kwargs
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        fit(lambda p: anp.sum(p["a"] ** 2), {"a": np.ones(2)}, lambda: (), verbose=False, **args)
