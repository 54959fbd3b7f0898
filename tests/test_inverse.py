"""Inverse problems, docs/inverse.md: the exact posterior of a Gaussian mixture under a linear
observation (I1) against Bayes on a grid and the Gaussian conditioning formula in information form;
the exact likelihood p(y_obs | x_t) (I2) against its per-component formula and at t = 0; exact
likelihood guidance as the posterior's eps (I3) and its samples; DPS (I4) and reconstruction
guidance (I5) as the gradients they claim; the docs' table; bad input by name."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from autograd import grad
from hypothesis import given, strategies as st
from scipy.stats import multivariate_normal

import toy_data
from refdiff import inverse
from refdiff.metrics import two_sample_test
from refdiff.oracle import GaussianMixture
from refdiff.process import eps_to_x0
from refdiff.samplers import ddpm
from refdiff.schedule import Schedule
from strategies import seeds

SCHED = Schedule.linear(1000)
MIX = toy_data.mixture("three_overlapping")
A1, Y1, S1 = np.array([[1.0, 0.0]]), np.array([0.5]), 0.3  # observed in the first coordinate
DOCS = Path(__file__).resolve().parents[1] / "docs"


def random_problem(seed, dim=2, m=None):
    """A random 2- or 3-component mixture, an observation matrix of m rows, y_obs and noise_std."""
    rng = np.random.default_rng(seed)
    k, m = rng.integers(2, 4), m or rng.integers(1, dim + 1)
    roots = rng.normal(0, 0.7, (k, dim, dim))
    covs = roots @ np.swapaxes(roots, 1, 2) + 0.2 * np.eye(dim)
    gm = GaussianMixture(rng.uniform(0.5, 2, k), rng.normal(0, 2, (k, dim)), covs)
    return gm, rng.normal(0, 1, (m, dim)), rng.normal(0, 2, m), float(rng.uniform(0.2, 1.5))


# ---- (I1) the exact posterior -----------------------------------------------------------------------
@given(seeds)
def test_I1_each_component_is_the_information_form_of_gaussian_conditioning(seed):
    # an independent formula: precision Sigma^-1 + A^T A / s^2, mean by the precision-weighted sum;
    # the weights pi_k N(y; A mu_k, A Sigma_k A^T + s^2 I) by scipy (mutation: the gain without S^-1)
    gm, A, y, s = random_problem(seed)
    post = gm.posterior_given(A, y, s)
    weights = []
    for k in range(gm.num_components):
        precision = np.linalg.inv(gm.covs[k]) + A.T @ A / s ** 2
        cov = np.linalg.inv(precision)
        np.testing.assert_allclose(post.covs[k], cov, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(post.means[k], cov @ (np.linalg.solve(gm.covs[k], gm.means[k]) + A.T @ y / s ** 2),
                                   rtol=1e-8, atol=1e-9)
        weights.append(gm.weights[k] * multivariate_normal(A @ gm.means[k], A @ gm.covs[k] @ A.T + s ** 2 * np.eye(len(y))).pdf(y))
    np.testing.assert_allclose(post.weights, np.array(weights) / np.sum(weights), rtol=1e-8)
    np.testing.assert_array_equal(post.labels, gm.labels)


def test_I1_against_bayes_on_a_grid():
    # prior density times likelihood on a 601 x 601 grid over [-6, 6]^2 (spacing 0.02), normalised:
    # its mean, covariance and class probabilities against the posterior mixture's (the grid's error
    # is far below the tolerance: the densities are smooth on the scale of the spacing)
    g = np.linspace(-6, 6, 601)
    x = np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1).reshape(-1, 2)
    log_post = MIX.log_prob(x) + multivariate_normal(Y1, S1 ** 2).logpdf(x @ A1.T)
    p = np.exp(log_post - log_post.max())
    p /= p.sum()
    post = MIX.posterior_given(A1, Y1, S1)
    mean = p @ x
    np.testing.assert_allclose(mean, post.mean(), atol=1e-6)
    np.testing.assert_allclose((x - mean).T @ ((x - mean) * p[:, None]), post.cov(), atol=1e-6)
    classes = np.exp(MIX.log_classifier(x, 1.0))  # p(label | x0), then averaged under the posterior
    by_label = [post.weights[post.labels == c].sum() for c in range(MIX.num_labels)]
    np.testing.assert_allclose(p @ classes, by_label, atol=1e-6)


# ---- (I2) the exact likelihood of the observation at x_t ----------------------------------------------
@given(seeds)
def test_I2_at_t_0_is_the_gaussian_likelihood_of_x0(seed):
    gm, A, y, s = random_problem(seed)
    x = np.random.default_rng(seed).normal(0, 2, (6, gm.dim))
    want = multivariate_normal(np.zeros(len(y)), s ** 2 * np.eye(len(y))).logpdf(y - x @ A.T)
    np.testing.assert_allclose(gm.observation_log_likelihood(x, 1.0, A, y, s), want, rtol=1e-9, atol=1e-9)


@given(seeds, st.floats(0.01, 0.99))
def test_I2_is_the_mixture_of_the_components_gaussian_predictions(seed, a):
    # an independent route: x0 | x_t, k is Gaussian (O4) with covariance (Sigma_k^-1 + a / (1 - a) I)^-1,
    # so p(y | x_t) = sum_k p(k | x_t) N(y; A m_k(x_t), A C_k A^T + s^2 I) (mutation: the evidence left out)
    gm, A, y, s = random_problem(seed)
    x = np.random.default_rng(seed + 1).normal(0, 2, (5, gm.dim))
    log_joint = np.stack([np.log(gm.weights[k]) + multivariate_normal(np.sqrt(a) * gm.means[k],
                          a * gm.covs[k] + (1 - a) * np.eye(gm.dim)).logpdf(x).reshape(-1) for k in range(gm.num_components)], 1)
    r = np.exp(log_joint - log_joint.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    want = np.zeros(len(x))
    for k in range(gm.num_components):
        C = np.linalg.inv(np.linalg.inv(gm.covs[k]) + a / (1 - a) * np.eye(gm.dim))
        m = (C @ (np.linalg.solve(gm.covs[k], gm.means[k])[:, None] + np.sqrt(a) / (1 - a) * x.T)).T
        want += r[:, k] * multivariate_normal(np.zeros(len(y)), A @ C @ A.T + s ** 2 * np.eye(len(y))).pdf(y - m @ A.T)
    np.testing.assert_allclose(gm.observation_log_likelihood(x, a, A, y, s), np.log(want), rtol=1e-8, atol=1e-8)


# ---- (I3) exact likelihood guidance --------------------------------------------------------------------
@given(seeds)
def test_I3_exact_likelihood_guidance_is_the_posteriors_eps(seed):
    gm, A, y, s = random_problem(seed)
    rng = np.random.default_rng(seed)
    x, t = rng.normal(0, 2, (8, gm.dim)), rng.integers(1, SCHED.T + 1, 8)
    got = inverse.likelihood_guidance(gm.eps_model(SCHED), gm, SCHED, A, y, s)(x, t)
    want = gm.posterior_given(A, y, s).eps_model(SCHED)(x, t)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


def test_I3_samples_the_posterior():
    # DDPM-200 with the exact likelihood guidance against 2000 exact posterior draws: the energy
    # distance permutation test at alpha = 0.01 (metrics.two_sample_test) passes
    rng = np.random.default_rng(0)
    eps_fn = inverse.likelihood_guidance(MIX.eps_model(SCHED), MIX, SCHED, A1, Y1, S1)
    x = ddpm(eps_fn, SCHED, rng.standard_normal((2000, 2)), rng, steps=200)
    assert two_sample_test(x, MIX.posterior_given(A1, Y1, S1).sample(2000, rng)[0], rng).passed


# ---- (I4), (I5) the approximations at the predicted x0 -------------------------------------------------
@pytest.mark.parametrize("rule", ["dps", "reconstruction"])
def test_I4_I5_shift_eps_by_the_gradient_of_their_likelihood_at_x0_hat(rule):
    # eps_bar = eps - sqrt(1 - a) grad_x l(x0_hat(x)), the gradient checked against autograd of l written
    # out here through the oracle's eps (mutations: the gradient at x_t instead of through x0_hat, the
    # variance term without (1 - a))
    rng = np.random.default_rng(3)
    x, t, zeta = rng.normal(0, 1.5, (6, 2)), 300, 2.0
    eps = MIX.eps_model(SCHED)
    a = SCHED.alpha_bar[t]
    cov = S1 ** 2 * np.eye(1) + (1 - a) * A1 @ A1.T

    def total(z):
        r = Y1 - eps_to_x0(SCHED, z, np.full(len(z), t), eps(z, np.full(len(z), t))) @ A1.T
        return -zeta * (r ** 2).sum() if rule == "dps" else -0.5 * (r ** 2).sum() / cov[0, 0]
    fn = (inverse.dps_guidance(eps, SCHED, A1, Y1, zeta) if rule == "dps"
          else inverse.reconstruction_guidance(eps, SCHED, A1, Y1, S1))
    want = eps(x, np.full(6, t)) - np.sqrt(1 - a) * grad(total)(x)
    np.testing.assert_allclose(fn(x, np.full(6, t)), want, rtol=1e-9, atol=1e-12)


def test_I4_I5_guide_only_up_to_t_max():
    # above t_max the eps is the model's, bit for bit (no backward pass); at t_max and below, guided
    rng = np.random.default_rng(5)
    x, eps = rng.normal(0, 1.5, (6, 2)), MIX.eps_model(SCHED)
    for fn in (inverse.dps_guidance(eps, SCHED, A1, Y1, 2.0, t_max=400),
               inverse.reconstruction_guidance(eps, SCHED, A1, Y1, S1, t_max=400)):
        np.testing.assert_array_equal(fn(x, np.full(6, 401)), eps(x, np.full(6, 401)))
        assert not np.allclose(fn(x, np.full(6, 400)), eps(x, np.full(6, 400)))


def test_the_jacobian_of_x0_hat_and_its_amplification_of_eps_errors():
    # docs/inverse.md, "Learned models": for the exact eps of N(mu, Sigma), d x0_hat / d x_t is
    # sqrt(a) Cov[x_0 | x_t] / (1 - a) = sqrt(a) / (1 - a) (Sigma^-1 + a / (1 - a) I)^-1 (autograd, every row);
    # an error delta in J_eps reaches it times sqrt(1 - a) / sqrt(a): 157 at t = T, 6.1 at t = 600
    from autograd import jacobian
    gm = GaussianMixture([1.0], [[0.5, -1.0]], [[[0.6, 0.2], [0.2, 0.4]]])
    eps = gm.eps_model(SCHED)
    for t in (50, 600, 1000):
        a = SCHED.alpha_bar[t]
        x0_hat = lambda z: eps_to_x0(SCHED, z[None], np.array([t]), eps(z[None], np.array([t])))[0]
        want = np.sqrt(a) / (1 - a) * np.linalg.inv(np.linalg.inv(gm.covs[0]) + a / (1 - a) * np.eye(2))
        np.testing.assert_allclose(jacobian(x0_hat)(np.array([0.3, 0.7])), want, rtol=1e-6, atol=1e-9)
    factor = lambda t: np.sqrt(1 - SCHED.alpha_bar[t]) / np.sqrt(SCHED.alpha_bar[t])
    assert (round(factor(1000)), round(factor(600), 1), round(np.sqrt(SCHED.alpha_bar[600]), 2)) == (157, 6.1, 0.16)


def test_I4_zeta_0_is_the_prior():
    rng = np.random.default_rng(4)
    x, t = rng.normal(0, 1.5, (6, 2)), rng.integers(1, SCHED.T + 1, 6)
    np.testing.assert_array_equal(inverse.dps_guidance(MIX.eps_model(SCHED), SCHED, A1, Y1, 0.0)(x, t),
                                  MIX.eps_model(SCHED)(x, t))


# ---- docs and bad input ----------------------------------------------------------------------------------
def test_docs_table_and_prose():
    spec = importlib.util.spec_from_file_location("measure_inverse", DOCS / "measure_inverse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows, _, floor = module.measure()
    printed = module.table(rows, floor)
    assert printed in (DOCS / "inverse.md").read_text(), printed
    d = {(name, k): v for name, k, v in rows}
    exact, rg = "exact likelihood (I3)", "reconstruction (I5)"
    dps = [name for name, _ in d if name.startswith("DPS")]
    for k in module.STEPS:  # the exact rule is at the floor's scale, reconstruction next, every DPS further
        assert d[exact, k] < 2 * floor < d[rg, k] < min(d[n, k] for n in dps), (k, d)
        assert 2 < d[rg, k] / floor < 5, (k, d[rg, k] / floor)  # "two to five times the floor"
    own = "DPS (I4), zeta = 5.56"
    assert own in dps and all(7 < d[own, k] / floor < 12 for k in module.STEPS)  # "7-12 times the floor"
    assert d[own, 200] == min(d[n, 200] for n in dps) and abs(d[own, 50] / d["DPS (I4), zeta = 20", 50] - 1) < 0.05


@pytest.mark.parametrize("call, name", [
    (lambda: MIX.posterior_given(np.ones((1, 3)), Y1, S1), "A"),
    (lambda: MIX.posterior_given(A1, np.ones(2), S1), "y_obs"),
    (lambda: MIX.posterior_given(A1, Y1, 0.0), "noise_std"),
    (lambda: MIX.observation_log_likelihood(np.zeros((2, 2)), 0.5, A1, [np.nan], S1), "y_obs"),
    (lambda: inverse.dps_guidance(MIX.eps_model(SCHED), SCHED, A1, Y1, -1.0), "zeta"),
    (lambda: inverse.dps_guidance(MIX.eps_model(SCHED), SCHED, np.ones(2), Y1, 1.0), "A"),
    (lambda: inverse.reconstruction_guidance(MIX.eps_model(SCHED), SCHED, A1, Y1, -0.1), "noise_std"),
])
def test_bad_input_is_named(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()
