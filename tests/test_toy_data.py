"""Tests for toy_data: the registry, every data set's shapes, determinism and scale, the presets
against their own closed-form moments, and every error path."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import toy_data
from refdiff.oracle import GaussianMixture
from toy_data import two_d

NAMES = toy_data.names()
PRESETS = toy_data.presets()
SAMPLE_ONLY = tuple(name for name in NAMES if name not in PRESETS)
N = 2000


def draw(name, n=N, seed=0):
    return toy_data.sample(name, n, np.random.default_rng(seed))


# ---- the registry -------------------------------------------------------------------------
def test_names_sorted_and_complete():
    assert NAMES == tuple(sorted(NAMES))
    assert set(NAMES) == {"three_gaussians", "three_overlapping", "ring8", "anisotropic", "moons", "circles", "spirals",
                          "checkerboard", "swiss_roll"}
    assert set(PRESETS) == {"three_gaussians", "three_overlapping", "ring8", "anisotropic"}


@pytest.mark.parametrize("name", NAMES)
def test_describe_is_one_line(name):
    text = toy_data.describe(name)
    assert isinstance(text, str) and text and "\n" not in text


@pytest.mark.parametrize("name", NAMES)
def test_sample_shapes_labels_and_scale(name):
    x, y = draw(name)
    K = toy_data.num_labels(name)
    assert x.shape == (N, 2) and x.dtype == np.float64
    assert y.shape == (N,) and y.dtype == np.int64
    assert np.all(np.isfinite(x))
    assert set(np.unique(y).tolist()) == set(range(K)), np.bincount(y)
    # The scale contract: every point within |x| <= 4, coordinate std of order 1, roughly centred.
    assert np.linalg.norm(x, axis=1).max() <= 4.0, np.linalg.norm(x, axis=1).max()
    assert np.all((x.std(axis=0) > 0.5) & (x.std(axis=0) < 2.0)), x.std(axis=0)
    assert np.all(np.abs(x.mean(axis=0)) < 1.0), x.mean(axis=0)


@given(name=st.sampled_from(NAMES), n=st.integers(0, 500), seed=st.integers(0, 2 ** 63))
def test_shapes_and_determinism_any_n(name, n, seed):
    x, y = draw(name, n, seed)
    assert x.shape == (n, 2) and x.dtype == np.float64 and np.all(np.isfinite(x))
    assert y.shape == (n,) and y.dtype == np.int64
    assert np.all((y >= 0) & (y < toy_data.num_labels(name)))
    x2, y2 = draw(name, np.int64(n), seed)  # same seed (and a numpy int n): bit-identical
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    if n > 0:
        assert not np.array_equal(x, draw(name, n, seed + 1)[0])


@pytest.mark.parametrize("name", SAMPLE_ONLY)
def test_registry_calls_the_generator(name):
    x, y = getattr(two_d, name)(50, np.random.default_rng(3))
    x2, y2 = draw(name, 50, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


# ---- the presets ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, components", [("three_gaussians", 3), ("three_overlapping", 3), ("ring8", 8),
                                                  ("anisotropic", 4)])
def test_preset_structure(name, components):
    gm = toy_data.mixture(name)
    assert isinstance(gm, GaussianMixture) and gm.dim == 2
    assert gm.num_components == components
    assert gm.num_labels == toy_data.num_labels(name)
    x, y = draw(name, 50, seed=5)
    x2, y2 = gm.sample(50, np.random.default_rng(5))
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_class_means_and_frequencies(name):
    gm = toy_data.mixture(name)
    x, y = draw(name, 4000, seed=11)
    for c in range(gm.num_labels):
        xc = x[y == c]
        # Tolerance: 5 Monte Carlo standard errors, SE = sqrt(diag Cov[x_0 | y] / n_class).
        se = np.sqrt(np.diag(gm.cov(c)) / len(xc))
        assert np.all(np.abs(xc.mean(axis=0) - gm.mean(c)) <= 5 * se), (c, xc.mean(axis=0), gm.mean(c), se)
        # Label frequency vs p(y = c) = sum of its components' weights; binomial SE, 5 SEs.
        p = gm.weights[gm.labels == c].sum()
        assert abs(len(xc) / len(x) - p) <= 5 * np.sqrt(p * (1 - p) / len(x)), (c, len(xc) / len(x), p)


def test_isotropic_presets_geometry():
    for name, radius, std in [("three_gaussians", 1.5, 0.3), ("three_overlapping", 1.0, 0.5), ("ring8", 2.0, 0.2)]:
        gm = toy_data.mixture(name)
        K = gm.num_components
        np.testing.assert_allclose(np.linalg.norm(gm.means, axis=1), radius, rtol=1e-12)
        np.testing.assert_allclose(gm.covs, np.broadcast_to(std ** 2 * np.eye(2), (K, 2, 2)), atol=1e-15)
        np.testing.assert_allclose(gm.weights, 1 / K, rtol=1e-12)
        angles = np.sort(np.mod(np.arctan2(gm.means[:, 1], gm.means[:, 0]), 2 * np.pi))
        np.testing.assert_allclose(np.diff(angles), 2 * np.pi / K, rtol=1e-12)  # equally spaced
        assert np.array_equal(gm.labels, np.arange(K))


def test_anisotropic_is_really_anisotropic():
    gm = toy_data.mixture("anisotropic")
    assert np.bincount(gm.labels).max() >= 2, gm.labels  # a label owns two components
    assert len(np.unique(gm.weights)) > 1, gm.weights  # unequal weights
    corr = gm.covs[:, 0, 1] / np.sqrt(gm.covs[:, 0, 0] * gm.covs[:, 1, 1])
    assert np.all(np.abs(corr) > 0.1), corr  # every component rotated: off-diagonal covariance
    eig = np.linalg.eigvalsh(gm.covs)
    assert np.all(eig[:, 1] / eig[:, 0] > 2.0), eig  # and elongated


def test_anisotropic_matches_its_docstring():
    # The table of anisotropic()'s docstring, rebuilt here with an explicit rotation matrix.
    table = [(0.35, (-1.4, 0.9), (0.45, 0.12), 30), (0.25, (1.4, 0.9), (0.40, 0.15), -45),
             (0.15, (-1.0, -1.2), (0.35, 0.12), 75), (0.25, (1.1, -1.1), (0.45, 0.15), 10)]
    gm = toy_data.mixture("anisotropic")
    for k, (w, mu, s, deg) in enumerate(table):
        c, sn = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
        R = np.array([[c, -sn], [sn, c]])
        np.testing.assert_allclose(gm.covs[k], R @ np.diag(np.square(s)) @ R.T, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gm.means[k], mu, rtol=1e-15)
        assert gm.weights[k] == pytest.approx(w, rel=1e-12)
    assert gm.labels.tolist() == [0, 1, 2, 2]


# ---- constructions of the sample-only sets ----------------------------------------------------
def test_checkerboard_label_is_square_colour():
    x, y = draw("checkerboard")
    assert np.all(np.abs(x) <= 2.0)
    cells = np.floor(x + 2.0).astype(int)
    assert np.array_equal((cells[:, 0] + cells[:, 1]) % 2, y)


def test_circles_radii():
    x, y = draw("circles")
    r = np.linalg.norm(x, axis=1)
    for c, radius in enumerate([1.0, 2.0]):
        assert abs(np.median(r[y == c]) - radius) < 0.02, (c, np.median(r[y == c]))


def test_swiss_roll_labels_increase_outwards():
    x, y = draw("swiss_roll")
    r = np.linalg.norm(x, axis=1)
    for c, (lo, hi) in enumerate([(1.0, 5 / 3), (5 / 3, 7 / 3), (7 / 3, 3.0)]):
        inside = (r[y == c] > lo - 0.3) & (r[y == c] < hi + 0.3)  # noise std 0.08: 0.3 is ~4 std
        assert inside.all(), (c, r[y == c].min(), r[y == c].max())


def test_spirals_points_lie_on_their_own_arm():
    x, y = draw("spirals")
    r = np.linalg.norm(x, axis=1)
    far = r > 0.8  # away from the centre, where the arms meet
    # Arm k at radius r has angle 2 pi (k / 3 + r / 2.5); the nearest arm in angle must be y.
    arms = 2 * np.pi * (np.arange(3)[None] / 3 + r[far, None] / 2.5)  # (N_far, 3)
    residual = np.angle(np.exp(1j * (np.arctan2(x[far, 1], x[far, 0])[:, None] - arms)))
    # The noise (std 0.08) moves the angle by ~0.2 rad; arms are 2 pi / 3 apart, a 5-std margin.
    hit = np.mean(np.argmin(np.abs(residual), axis=1) == y[far])
    assert hit > 0.99, hit


def test_moons_classes_are_upper_and_lower():
    x, y = draw("moons")
    assert x[y == 0, 1].mean() > 0.3 > -0.3 > x[y == 1, 1].mean()


# ---- errors ----------------------------------------------------------------------------------
BAD_N = [-1, 2.0, True, "3", None]
BAD_RNG = [None, 0, np.random.RandomState(0)]


@pytest.mark.parametrize("call", [
    lambda name: toy_data.sample(name, 5, np.random.default_rng(0)),
    toy_data.mixture, toy_data.num_labels, toy_data.describe])
@pytest.mark.parametrize("name", ["nope", None, 3, "Moons"])
def test_unknown_name(call, name):
    with pytest.raises(ValueError, match=r"^name must be one of anisotropic, checkerboard, .*swiss_roll"):
        call(name)


@pytest.mark.parametrize("name", SAMPLE_ONLY)
def test_mixture_of_sample_only_set(name):
    with pytest.raises(ValueError, match=rf"name '{name}' has no closed form; presets are anisotropic"):
        toy_data.mixture(name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", BAD_N)
def test_bad_n(name, n):
    with pytest.raises(ValueError, match=r"^n must be an integer >= 0"):
        toy_data.sample(name, n, np.random.default_rng(0))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rng", BAD_RNG)
def test_bad_rng(name, rng):
    with pytest.raises(ValueError, match=r"^rng must be a numpy.random.Generator"):
        toy_data.sample(name, 5, rng)


@pytest.mark.parametrize("name", SAMPLE_ONLY)
def test_generators_check_their_arguments(name):
    generator = getattr(two_d, name)
    with pytest.raises(ValueError, match=r"^n must be"):
        generator(-1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^rng must be"):
        generator(5, np.random.RandomState(0))
