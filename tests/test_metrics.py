"""Tests for refdiff/metrics.py: the energy distance (M1) against a double loop and scipy, its
invariances, the matrix-product permutation statistics (M2), the permutation test's level, power
and p-value (M3), per-class moments (M4), the fidelity (M7) and spread (M8) of guided samples
against scipy, and every ValueError."""
import itertools
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

import toy_data
from refdiff.metrics import (TIE_RTOL, TwoSampleResult, class_moments, class_spread, energy_distance,
                             fidelity, partition_energies, two_sample_test)

# Round-off: every distance carries a relative error of a few ulps of the largest coordinate, and
# (M1) combines averages with coefficients of total weight 4, so |error| <= ~10 eps * max|coord|
# for these tiny samples; ROUND_OFF = 1e-12 (~4500 eps) of that scale is far above round-off,
# yet a wrong coefficient (e.g. n(n-1) for n^2) moves E by >= ~1e-2 of the scale.
ROUND_OFF = 1e-12


def brute_energy(x, y):
    """(M1) by an explicit double loop over points, sharing no code with refdiff."""
    def mean_dist(a, b):
        return sum(math.dist(p, q) for p in a for q in b) / (len(a) * len(b))
    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def scale_of(*arrays):
    return max(float(np.abs(a).max()) for a in arrays) + 1e-300


def assert_close(got, want, scale, what):
    assert abs(got - want) <= ROUND_OFF * scale, f"{what}: got {got!r}, expected {want!r}"


@st.composite
def samples(draw, max_n=7, max_dim=4):
    """Two samples (n, D), (m, D) with 2 <= n, m <= max_n, each with its own scale in 1e-3..1e3."""
    n, m = draw(st.integers(2, max_n)), draw(st.integers(2, max_n))
    dim = draw(st.integers(1, max_dim))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    sx, sy = (10.0 ** draw(st.floats(-3, 3)) for _ in range(2))
    shift = draw(st.floats(-3, 3))
    return sx * rng.standard_normal((n, dim)) + shift * sx, sy * rng.standard_normal((m, dim))


@given(samples())
def test_energy_distance_matches_double_loop(xy):
    x, y = xy
    assert_close(energy_distance(x, y), brute_energy(x, y), scale_of(x, y), "E(x, y)")


@given(samples(max_dim=1))
def test_energy_distance_is_scipy_1d_squared(xy):
    # scipy.stats.energy_distance(u, v) = sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|) over the empirical
    # distributions (computed from CDFs): the square root of the V-statistic (M1).
    x, y = xy
    want = scipy.stats.energy_distance(x[:, 0], y[:, 0]) ** 2
    assert_close(energy_distance(x, y), want, scale_of(x, y), "E(x, y) vs scipy ** 2")


@given(samples(), st.floats(-3, 3), st.booleans(), st.integers(0, 2 ** 32 - 1))
def test_energy_distance_symmetry_and_invariances(xy, log_c, negate, seed):
    x, y = xy
    e = energy_distance(x, y)
    scale = scale_of(x, y)
    assert_close(energy_distance(y, x), e, scale, "E(y, x)")
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((x.shape[1],) * 2))   # orthogonal (D, D)
    shift = scale * rng.uniform(-10, 10, x.shape[1])                      # |shift| <= 10 scale
    assert_close(energy_distance(x @ rotation + shift, y @ rotation + shift), e, 20 * scale,
                 "E after rotation + translation")
    c = (-1) ** negate * 10.0 ** log_c
    assert_close(energy_distance(c * x, c * y), abs(c) * e, abs(c) * scale, "E(c x, c y) / |c|")


@given(samples())
def test_energy_distance_of_identical_samples_is_exactly_zero(xy):
    x, _ = xy
    # 2a - a - a is exact in floating point when both means see the same distances.
    assert energy_distance(x, x.copy()) == 0.0


def test_energy_distance_is_positive_for_different_samples():
    x = np.array([[0.0, 0.0], [1.0, 0.0]])
    y = np.array([[0.0, 0.0], [2.0, 0.0]])
    # 2 * (0 + 2 + 1 + 1) / 4 - 2 * 1 / 4 - 2 * 2 / 4 = 2 - 0.5 - 1 = 0.5
    assert energy_distance(x, y) == 0.5


def test_partition_energies_match_direct_recomputation():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((9, 3)) * [1.0, 10.0, 0.1]
    dist = cdist(z, z)
    splits = [np.arange(9) < 4, np.arange(9) >= 4, np.arange(9) % 3 == 0, np.arange(9) < 7]
    splits += [rng.permutation(9) < k for k in (2, 4, 5)]
    member = np.stack(splits, axis=1)                                      # (9, 7)
    got = partition_energies(dist, member)
    for b, split in enumerate(splits):
        assert_close(got[b], energy_distance(z[split], z[~split]), scale_of(z), f"split {b}")


def test_partition_energies_cover_every_split_of_a_small_sample():
    # All C(6, 3) = 20 splits of 6 points: each matches (M1) computed on the split directly.
    z = np.random.default_rng(1).uniform(-5, 5, (6, 2))
    splits = [np.isin(np.arange(6), idx) for idx in itertools.combinations(range(6), 3)]
    got = partition_energies(cdist(z, z), np.stack(splits, axis=1))
    want = [brute_energy(z[s], z[~s]) for s in splits]
    np.testing.assert_allclose(got, want, rtol=0, atol=ROUND_OFF * scale_of(z))


@given(samples(max_n=6), st.integers(0, 2 ** 32 - 1), st.integers(1, 60),
       st.sampled_from([0.01, 0.05, 0.1, 0.5]))
def test_two_sample_result_is_consistent(xy, seed, n_perm, alpha):
    x, y = xy
    res = two_sample_test(x, y, np.random.default_rng(seed), n_perm=n_perm, alpha=alpha)
    assert 0 < res.p_value <= 1
    count = res.p_value * (n_perm + 1)                                     # 1 + #{E_b >= E_obs}
    assert abs(count - round(count)) < 1e-9 and 1 <= round(count) <= n_perm + 1
    assert res.passed == (res.p_value > alpha)
    assert (res.n_perm, res.alpha) == (n_perm, alpha)
    assert_close(res.statistic, energy_distance(x, y), scale_of(x, y), "observed statistic")
    # (M3): rejected iff statistic > threshold, ties within TIE_RTOL * mean distance counting as >=
    tie = TIE_RTOL * cdist(np.vstack([x, y]), np.vstack([x, y])).mean()
    if res.passed:
        assert res.statistic <= res.threshold + tie, res
    else:
        assert res.statistic > res.threshold, res
    assert np.isinf(res.threshold) == ((n_perm + 1) * alpha < 1 - 1e-9), res


def test_p_value_extremes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 2))
    far = two_sample_test(x, x + 100.0, np.random.default_rng(3), n_perm=99)
    assert far.p_value == 1 / 100 and not far.passed, far   # no split beats the observed one
    same = two_sample_test(x, x.copy(), np.random.default_rng(3), n_perm=99)
    assert same.p_value == 1.0 and same.passed, same          # E_obs ~ 0 <= every E_b
    few = two_sample_test(x, x + 100.0, np.random.default_rng(3), n_perm=5)
    assert few.threshold == np.inf and few.p_value == 1 / 6 and few.passed, few  # 6 < 1 / alpha


def test_two_sample_test_is_deterministic_under_a_seed():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((40, 2)), rng.standard_normal((30, 2)) + 0.3
    first = two_sample_test(x, y, np.random.default_rng(5), n_perm=50, alpha=0.05)
    again = two_sample_test(x, y, np.random.default_rng(5), n_perm=50, alpha=0.05)
    assert isinstance(first, TwoSampleResult) and first == again


def test_batching_does_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((25, 3)), rng.standard_normal((35, 3)) * 1.2
    whole = two_sample_test(x, y, np.random.default_rng(7), n_perm=99)
    monkeypatch.setattr("refdiff.metrics.BATCH_FLOATS", 60 * 7)            # batches of 7 columns
    batched = two_sample_test(x, y, np.random.default_rng(7), n_perm=99)
    assert batched.p_value == whole.p_value and batched.passed == whole.passed
    assert abs(batched.threshold - whole.threshold) <= ROUND_OFF * scale_of(x, y)


def test_level_under_the_null():
    # R = 4000 tests of two samples from one skewed distribution (n = 20, m = 30, D = 2) at
    # alpha = 0.05 with n_perm = 99: P(p <= alpha) = floor(0.05 * 100) / 100 = 0.05 exactly, so the
    # rejection count is Binomial(R, 0.05). Tolerance 4 sigma, sigma = sqrt(alpha (1 - alpha) / R)
    # = 0.0034, i.e. |rate - 0.05| <= 0.0138 (false alarm probability ~6e-5; seeds are fixed).
    # Scaling the observed statistic by 0.9 or 1.1 moves the rate to 0.029 or 0.067: caught.
    R, alpha = 4000, 0.05
    rng = np.random.default_rng(8)
    rejected = sum(not two_sample_test(rng.exponential(size=(20, 2)), rng.exponential(size=(30, 2)),
                                       rng, n_perm=99, alpha=alpha).passed for _ in range(R))
    tolerance = 4 * math.sqrt(alpha * (1 - alpha) / R)
    assert abs(rejected / R - alpha) <= tolerance, f"rejection rate {rejected / R}, expected {alpha}"


@pytest.mark.parametrize("change", ["shift", "rescale"])
def test_power_against_a_clear_difference(change):
    # n = m = 500: a 0.5-sd mean shift puts E more than 40 sd (of its permutation null) above the
    # null mean, a 1.5x scale change more than 12 sd (minimum over 30 seeds, checked when this test
    # was written), so the p-value is the smallest possible, 1 / (n_perm + 1).
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((500, 2)), rng.standard_normal((500, 2))
    y = y + 0.5 if change == "shift" else 1.5 * y
    res = two_sample_test(x, y, rng, n_perm=199, alpha=0.01)
    assert not res.passed and res.statistic > res.threshold and res.p_value == 1 / 200, res


def test_class_moments_on_explicit_data():
    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0],                    # class 0
                  [1.0, 1.0], [3.0, -1.0], [2.0, 5.0], [-4.0, 1.0],      # class 1
                  [7.0, 8.0]])                                          # class 2; class 3 empty
    y = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    counts, means, covs = class_moments(x, y, num_labels=4)
    np.testing.assert_array_equal(counts, [3, 4, 1, 0])
    # class 0 by hand: mean (2/3, 2/3), deviations (-2/3, -2/3), (4/3, -2/3), (-2/3, 4/3)
    np.testing.assert_allclose(means[0], [2 / 3, 2 / 3], rtol=1e-15)
    np.testing.assert_allclose(covs[0], [[4 / 3, -2 / 3], [-2 / 3, 4 / 3]], rtol=1e-15)
    np.testing.assert_allclose(means[1], x[3:7].mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(covs[1], np.cov(x[3:7], rowvar=False, ddof=1), rtol=1e-14)
    np.testing.assert_array_equal(means[2], [7.0, 8.0])
    assert np.isnan(covs[2]).all() and np.isnan(means[3]).all() and np.isnan(covs[3]).all()
    assert covs.shape == (4, 2, 2) and means.shape == (4, 2)


TWO = np.zeros((3, 2))
RNG = np.random.default_rng(0)


@pytest.mark.parametrize("kwargs, name", [
    (dict(x=np.zeros(3)), "x"),
    (dict(x=np.zeros((3, 2, 1))), "x"),
    (dict(x=np.array([[0.0, np.nan], [1.0, 1.0]])), "x"),
    (dict(x=np.array([["a", "b"], ["c", "d"]])), "x"),
    (dict(x=np.zeros((1, 2))), "x"),
    (dict(y=np.zeros((3, 3))), "y"),
    (dict(y=np.zeros((1, 2))), "y"),
    (dict(y=np.array([[np.inf, 0.0], [0.0, 0.0]])), "y"),
])
def test_bad_samples_raise(kwargs, name):
    args = dict(x=TWO, y=TWO) | kwargs
    with pytest.raises(ValueError, match=f"^{name} "):
        energy_distance(**args)
    with pytest.raises(ValueError, match=f"^{name} "):
        two_sample_test(**args, rng=RNG)


@pytest.mark.parametrize("kwargs, name", [
    (dict(rng=None), "rng"), (dict(rng=0), "rng"), (dict(rng=np.random.RandomState(0)), "rng"),
    (dict(n_perm=0), "n_perm"), (dict(n_perm=2.0), "n_perm"), (dict(n_perm=True), "n_perm"),
    (dict(alpha=0.0), "alpha"), (dict(alpha=1.0), "alpha"), (dict(alpha=float("nan")), "alpha"),
    (dict(alpha=True), "alpha"), (dict(alpha="0.05"), "alpha"),
])
def test_bad_test_options_raise(kwargs, name):
    args = dict(x=TWO, y=TWO, rng=RNG) | kwargs
    with pytest.raises(ValueError, match=f"^{name} "):
        two_sample_test(**args)


@pytest.mark.parametrize("kwargs, name", [
    (dict(x=np.zeros(4)), "x"),
    (dict(y=None), "y"), (dict(y=[0, 1, 2]), "y"), (dict(y=[0, 1, 2, 3]), "y"),
    (dict(y=[0, 1, -1, 0]), "y"), (dict(y=[0.5, 1, 1, 0]), "y"),
    (dict(num_labels=0), "num_labels"), (dict(num_labels=2.0), "num_labels"),
])
def test_bad_class_moment_inputs_raise(kwargs, name):
    args = dict(x=np.zeros((4, 2)), y=[0, 1, 1, 0], num_labels=3) | kwargs
    with pytest.raises(ValueError, match=f"^{name} "):
        class_moments(**args)


# ---- (M7), (M8): fidelity and spread of guided samples ------------------------------------------
def test_fidelity_is_the_mean_bayes_posterior_of_the_requested_label():
    # three_overlapping: equal weights, one Gaussian per label, so p(y | x) = N(x; mu_y, S_y) /
    # sum_k N(x; mu_k, S_k), computed here with scipy from the parameters.
    mix = toy_data.mixture("three_overlapping")
    rng = np.random.default_rng(4)
    x, y = rng.uniform(-2, 2, (500, 2)), rng.integers(0, 3, 500)
    dens = np.stack([scipy.stats.multivariate_normal(mix.means[k], mix.covs[k]).pdf(x) for k in range(3)], 1)
    p = dens[np.arange(500), y] / dens.sum(1)
    mean, stderr = fidelity(mix, x, y)
    np.testing.assert_allclose([mean, stderr], [p.mean(), p.std(ddof=1) / np.sqrt(500)], rtol=1e-12)
    assert fidelity(mix, x, 2)[0] == pytest.approx(np.mean(dens[:, 2] / dens.sum(1)), rel=1e-12)


def test_fidelity_of_true_samples_is_their_expected_value():
    # E[p(y | x)] over (x, y) ~ p is E_x[sum_y p(y | x)^2]; both estimated from 20000 draws, the
    # first with its own standard error (5 SE).
    mix = toy_data.mixture("three_overlapping")
    x, y = mix.sample(20_000, np.random.default_rng(5))
    mean, stderr = fidelity(mix, x, y)
    expected = np.mean(np.sum(np.exp(2 * mix.log_classifier(x, 1.0)), axis=1))
    assert abs(mean - expected) <= 5 * stderr, (mean, expected, stderr)


@given(st.integers(2, 40), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2 ** 32 - 1))
def test_class_spread_is_the_rms_distance_to_the_class_mean(n, dim, num_labels, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)) * 10.0 ** rng.uniform(-3, 3)
    y = rng.integers(0, num_labels, n)
    spread = class_spread(x, y, num_labels)
    assert spread.shape == (num_labels,)
    for k in range(num_labels):
        xk = x[y == k]
        if len(xk) < 2:
            assert np.isnan(spread[k])
        else:  # sum of squared distances to the mean over n_k - 1, as the trace of (M4)
            want = np.sqrt(np.sum((xk - xk.mean(0)) ** 2) / (len(xk) - 1))
            np.testing.assert_allclose(spread[k], want, rtol=1e-12)


@pytest.mark.parametrize("kwargs, name", [
    (dict(x=np.zeros((4, 3))), "x"), (dict(x=np.zeros((1, 2))), "x"),
    (dict(y=None), "y"), (dict(y=[0, 1, 3, 0]), "y"), (dict(y=[0, 1, -1, 0]), "y"),
])
def test_bad_fidelity_inputs_raise(kwargs, name):
    args = dict(mixture=toy_data.mixture("three_overlapping"), x=np.zeros((4, 2)), y=[0, 1, 1, 0]) | kwargs
    with pytest.raises(ValueError, match=f"^{name} "):
        fidelity(**args)
