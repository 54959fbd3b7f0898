"""Tests for the learned-model metrics of refdiff/metrics.py: ``denoiser_excess`` (M5) and
``classifier_excess`` (M6) against the oracle itself (excess exactly 0), against the same
quantities recomputed here from the same draws, on deliberately worse models, and their standard
errors against the spread of the excess over independent seeds."""
import math

import numpy as np
import pytest
from scipy.special import log_softmax
from scipy.stats import chi2

import toy_data
from refdiff.metrics import classifier_excess, denoiser_excess
from refdiff.process import q_sample
from refdiff.schedule import Schedule

GM = toy_data.mixture("three_gaussians")
SCHED = Schedule.linear(1000)
ORACLE_EPS, ORACLE_LOGITS = GM.eps_model(SCHED), GM.classifier(SCHED)


def scaled_eps(factor):
    """A worse denoiser: the oracle's eps times ``factor``."""
    return lambda x, t, y=None: factor * ORACLE_EPS(x, t, y)


def tempered(factor):
    """A worse classifier: the exact log-posterior times ``factor`` (mis-calibrated, same argmax)."""
    return lambda x, t: factor * ORACLE_LOGITS(x, t)


def uniform(x, t):
    return np.zeros((len(x), GM.num_labels))


def excess_of(kind, model, n, seed, **kwargs):
    if kind == "denoiser":
        return denoiser_excess(model, GM, SCHED, n, np.random.default_rng(seed), **kwargs)
    return classifier_excess(model, GM, SCHED, n, np.random.default_rng(seed))


@pytest.mark.parametrize("kind, model, kwargs", [
    ("denoiser", ORACLE_EPS, {}), ("denoiser", ORACLE_EPS, {"conditional": False}),
    ("classifier", ORACLE_LOGITS, {})])
def test_oracle_against_itself_has_zero_excess(kind, model, kwargs):
    ex = excess_of(kind, model, 500, 0, **kwargs)
    assert ex.loss == ex.floor > 0 and ex.excess == 0.0 and ex.stderr == 0.0, ex


def draws(n, seed):
    """The draws (M5) and (M6) make from a Generator seeded ``seed``, with x_t."""
    x0, y, t, eps = GM.denoising_draws(SCHED, n, np.random.default_rng(seed))
    return x0, y, t, eps, q_sample(SCHED, x0, t, eps)


@pytest.mark.parametrize("conditional", [True, False])
def test_denoiser_excess_recomputed(conditional):
    _, y, t, eps, xt = draws(2000, 3)
    y = y if conditional else None
    loss = np.mean((eps - 0.9 * ORACLE_EPS(xt, t, y)) ** 2)
    floor = np.mean((eps - ORACLE_EPS(xt, t, y)) ** 2)
    ex = excess_of("denoiser", scaled_eps(0.9), 2000, 3, conditional=conditional)
    # Means of the same 2000 numbers, perhaps summed in another order: relative round-off ~1e-15.
    np.testing.assert_allclose([ex.loss, ex.floor, ex.excess], [loss, floor, loss / floor - 1], rtol=1e-12)


def test_classifier_excess_recomputed():
    _, y, t, _, xt = draws(2000, 4)
    rows = np.arange(len(y))
    loss = -np.mean(log_softmax(0.5 * ORACLE_LOGITS(xt, t), axis=1)[rows, y])
    floor = -np.mean(log_softmax(ORACLE_LOGITS(xt, t), axis=1)[rows, y])
    ex = excess_of("classifier", tempered(0.5), 2000, 4)
    # scipy's log_softmax against logsumexp - logit, then a mean: relative round-off ~1e-15.
    np.testing.assert_allclose([ex.loss, ex.floor, ex.excess], [loss, floor, loss / floor - 1], rtol=1e-12)


def test_untrained_classifier_loss_is_log_k():
    ex = excess_of("classifier", uniform, 1000, 5)
    # Zero logits: every sample's cross-entropy is logsumexp(0, 0, 0) = log 3, to round-off.
    assert abs(ex.loss - math.log(3)) < 1e-15 and abs(ex.excess - (math.log(3) / ex.floor - 1)) < 1e-14, ex


@pytest.mark.parametrize("kind, model", [("denoiser", scaled_eps(0.9)), ("classifier", tempered(0.5))])
def test_worse_model_has_significant_positive_excess(kind, model):
    ex = excess_of(kind, model, 10000, 6)
    # Measured: 28 (denoiser) and 15 (classifier) standard errors. 5 standard errors is a one-sided
    # normal tail of 3e-7 under "no excess".
    assert ex.loss > ex.floor and ex.excess > 5 * ex.stderr, ex


SEEDS = 20


@pytest.mark.parametrize("kind, model", [
    ("denoiser", scaled_eps(0.9)), ("denoiser", scaled_eps(0.5)), ("classifier", tempered(0.5))],
    ids=["eps x 0.9 (excess 0.08)", "eps x 0.5 (excess 1.9)", "logits x 0.5 (excess 0.03)"])
def test_stderr_matches_the_spread_over_seeds(kind, model):
    """The standard error must describe the excess's sampling spread: its sample sd over SEEDS
    independent seeds, divided by the rms reported stderr, is ~ sqrt(chi2_{SEEDS-1} / (SEEDS-1))."""
    results = [excess_of(kind, model, 1000, seed) for seed in range(SEEDS)]
    values = np.array([r.excess for r in results])
    stderr = math.sqrt(np.mean([r.stderr ** 2 for r in results]))
    ratio = values.std(ddof=1) / stderr
    # The 0.05% and 99.95% points of that law: [0.51, 1.56] for 20 seeds, a two-sided 0.1% test
    # (n = 1000 makes each excess nearly normal). Measured over 200 seeds: the ratio is 1.30, 2.53
    # and 1.14 for the three models; the delta-method standard error of the ratio of means,
    # sd(d - excess * oracle_loss) / sqrt(n) / floor, gives 0.98 and 0.94 for the two denoisers.
    lo, hi = np.sqrt(chi2.ppf([0.0005, 0.9995], SEEDS - 1) / (SEEDS - 1))
    assert lo < ratio < hi, (f"sd of excess over {SEEDS} seeds {values.std(ddof=1):.4g}, rms stderr "
                             f"{stderr:.4g}, ratio {ratio:.3f} outside [{lo:.2f}, {hi:.2f}]")
