"""Tests of the Gaussian-mixture oracle (refdiff/oracle.py, docs/oracle.md).

The oracle is the reference for the whole project, so nothing here checks it against itself:
densities against scipy.stats.multivariate_normal, scores against autograd and against central
differences of the scipy density, the denoiser against closed-form Gaussian conditioning and
importance sampling, the classifier against Bayes' rule, and sampling and the optimal loss against
the parameters, each with a stated tolerance: float64 round-off scaled by the conditioning, or a
multiple of the Monte Carlo standard error of the sample size used.
"""

import numpy as np
import pytest
from autograd import elementwise_grad
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import logsumexp, softmax
from scipy.stats import chi2, multivariate_normal

from refdiff.labels import NULL_LABEL
from refdiff.oracle import GaussianMixture
from refdiff.process import score_to_eps
from refdiff.schedule import Schedule

from strategies import Params, finite, mixtures, uniform_arrays

EPS = np.finfo(np.float64).eps
SCHEDULES = {"linear": Schedule.linear(1000), "cosine": Schedule.cosine(1000)}
T_MID = 500
# alpha_bar at t = 1, mid and T of both schedules (1 - 4e-5 down to 2e-9), and a = 1 (clean data).
ALPHAS = [s.alpha_bar[t] for s in SCHEDULES.values() for t in (1, T_MID, s.T)] + [1.0]
# Round-off allowance: a float64 quadratic form (x - m)^T C^{-1} (x - m) computed by two different
# factorisations (eigh here, scipy's eigh-based pseudo-inverse there) differs by at most a few
# EPS * cond(C) * |x - m|^2 / lambda_min(C) per term (Higham, "Accuracy and Stability", ch. 3);
# the sum over D <= 4 coordinates, K <= 5 components and the logsumexp add a small integer factor.
ROUNDOFF = 64
# Monte Carlo checks: |estimate - truth| <= Z_MC standard errors. At 5 SE a two-sided normal
# deviation has probability 6e-7, so the few hundred comparisons below fail by chance with
# probability < 1e-3 (and the ci profile is derandomized, so a pass is reproducible).
Z_MC = 5


# ---- strategies: random labelled mixtures (tests/strategies.py) and query points ------------
@st.composite
def points(draw, dim, bound=8.0, max_rows=4):
    """(N, D) query points, N in 1..max_rows, in the box [-bound, bound]^D around the mixture (its
    means lie within 5 per coordinate): uniform from a drawn seed, a drawn share of the coordinates
    at 0, on the box's faces or all equal (strategies.uniform_arrays)."""
    return draw(uniform_arrays((draw(st.integers(1, max_rows)), dim), -bound, bound))


@st.composite
def queries(draw, max_components=5, bound=8.0):
    """A mixture, query points x of shape (N, D) in [-bound, bound]^D, and a condition y for them."""
    p = draw(mixtures(max_components))
    x = draw(points(p.dim, bound))
    return p, x, draw(conditions(p, len(x)))


@st.composite
def split_gaussians(draw, bound=1e3):
    """One Gaussian N(mu, S) written as 1..3 identical components with random weights and labels,
    query points in [-bound, bound]^D and a condition for them."""
    one = draw(mixtures(max_components=1))
    copies = draw(st.integers(1, 3))
    weights = draw(uniform_arrays(copies, 0.05, 1.0))  # equal, or at 0.05 and 1, among others
    labels = np.arange(copies) % draw(st.integers(1, copies))  # covers 0..L-1
    p = Params(weights, np.repeat(one.means, copies, axis=0), np.repeat(one.covs, copies, axis=0), labels)
    x = draw(points(p.dim, bound))
    return p, x, draw(conditions(p, len(x)))


def timesteps(sched, n):
    """n integer timesteps in 1..T, one per row."""
    return hnp.arrays(np.int64, n, elements=st.integers(1, sched.T))


def conditions(p, n):
    """y for n rows: None, one label for all rows, or per-row labels that may be NULL_LABEL."""
    label = st.integers(0, p.num_labels - 1)
    per_row = hnp.arrays(np.int64, n, elements=st.integers(NULL_LABEL, p.num_labels - 1))
    return st.one_of(st.none(), label, per_row)


# ---- fixed mixtures, for the tests that need no search ----------------------------------------
# three components on a circle of radius 5 (pairwise distance 5 sqrt 3 = 8.66), sd 0.22; label 1
# owns two components
SEPARATED = Params(np.array([0.5, 0.3, 0.2]), 5 * np.array([[1.0, 0.0], [-0.5, 0.866], [-0.5, -0.866]]),
                   np.stack([0.05 * np.eye(2)] * 3), np.array([0, 1, 1]))
# overlapping components with random-looking covariances; label 0 owns two components
MIXTURE = Params(np.array([0.2, 0.5, 0.3]), np.array([[-1.0, 0.5], [1.0, 1.0], [0.0, -1.5]]),
                 np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.4, -0.1], [-0.1, 0.8]], [[2.0, 0.0], [0.0, 0.3]]]),
                 np.array([0, 1, 0]))
ONE_GAUSSIAN = Params(np.array([1.0]), np.array([[1.0, -2.0]]), np.array([[[2.0, 0.8], [0.8, 0.5]]]),
                      np.array([0]))


# ---- independent reference computations ---------------------------------------------------------
def row_labels(y, n):
    """y as one label per row, NULL_LABEL standing for 'unconditional'."""
    return np.full(n, NULL_LABEL) if y is None else np.broadcast_to(y, (n,))


def component_mask(p, y, n):
    """(N, K): does component k count for row i (its label, or every component when unconditional)?"""
    rows = row_labels(y, n)[:, None]
    return (rows == NULL_LABEL) | (p.labels[None, :] == rows)


def log_joint(p, x, a):
    """log pi_k + log N(x; sqrt(a) mu_k, a Sigma_k + (1 - a) I) by scipy, shape (N, K) (eq. (O1))."""
    means, covs = p.noised(a)
    return np.stack([np.log(p.pi[k]) + np.reshape(multivariate_normal(means[k], covs[k]).logpdf(x), -1)
                     for k in range(len(p.pi))], axis=1)


def ref_log_prob(p, x, a, y=None):
    """log q_t(x [| y]) = logsumexp over the label's components minus the log of their total weight."""
    mask = component_mask(p, y, len(x))
    return (logsumexp(np.where(mask, log_joint(p, x, a), -np.inf), axis=1)
            - logsumexp(np.where(mask, np.log(p.pi), -np.inf), axis=1))


def ref_classifier(p, x, a):
    """Bayes' rule: p(y | x) = sum_{k in y} pi_k N_k(x) / sum_k pi_k N_k(x), shape (N, L)."""
    log_pi_n = log_joint(p, x, a)
    joint = np.exp(log_pi_n - log_pi_n.max(axis=1, keepdims=True))
    per_label = np.stack([joint[:, p.labels == c].sum(axis=1) for c in range(p.num_labels)], axis=1)
    return per_label / joint.sum(axis=1, keepdims=True)


def ref_mean_cov(p, y=None):
    """Mean and covariance by the law of total variance: E[Cov | k] + Cov[E | k] over the weights."""
    w = p.pi * (p.labels == y) if y is not None else p.pi
    w = w / w.sum()
    m = w @ p.means
    centred = p.means - m
    return m, np.einsum("k,kde->de", w, p.covs) + np.einsum("k,kd,ke->de", w, centred, centred)


def distance_bound(p, x, a):
    """|x| + |m_k| >= |x - m_k| for the noised means m_k, shape (N, K): the scale of the round-off in
    x - m_k (which may cancel, so its own size is no guide)."""
    return np.linalg.norm(np.abs(x)[:, None, :] + np.abs(p.noised(a)[0])[None], axis=2)


def log_density_tolerance(p, x, a):
    """Round-off bound on |log N_k(x)| computed two ways, per row: ROUNDOFF * EPS * cond(C_k) *
    (|x - m_k|^2 / lambda_min(C_k) + |log det C_k| + D), the largest over k (see ROUNDOFF)."""
    kappa, lam_min = p.conditioning(a)
    logdet = np.abs(np.linalg.slogdet(p.noised(a)[1])[1])
    return ROUNDOFF * EPS * np.max(kappa * (distance_bound(p, x, a) ** 2 / lam_min + logdet + p.dim), axis=1)


def score_tolerance(p, x, a):
    """Round-off bound on a score, per row: each component's term C_k^{-1}(x - m_k) has norm at most
    |x - m_k| / lambda_min and is computed to ROUNDOFF * EPS * cond(C_k) relative to that."""
    kappa, lam_min = p.conditioning(a)
    return ROUNDOFF * EPS * np.max(kappa * (1 + distance_bound(p, x, a) / lam_min), axis=1)


def assert_rows_close(got, expected, tol, what):
    """|got - expected| <= tol row by row (tol of shape (N,)), printing both on failure."""
    got, expected = np.asarray(got), np.asarray(expected)
    err = np.abs(got - expected).reshape(len(got), -1).max(axis=1)
    assert np.all(err <= tol), f"{what}: got\n{got}\nexpected\n{expected}\nerror {err} > tolerance {tol}"


def assert_within_se(estimate, truth, se, what, z=Z_MC):
    """A Monte Carlo estimate within z standard errors of the truth, elementwise."""
    estimate, truth, se = map(np.asarray, (estimate, truth, se))
    ok = np.abs(estimate - truth) <= z * se
    assert np.all(ok), f"{what}: estimate\n{estimate}\ntruth\n{truth}\n{z} SE = {z * se}"


# ---- densities -------------------------------------------------------------------------------------
@given(q=queries())
def test_log_prob_noised_equals_scipy_mixture_density(q):
    p, x, y = q
    gm = p.gm
    for a in ALPHAS:
        want, tol = ref_log_prob(p, x, a, y), log_density_tolerance(p, x, a)
        assert_rows_close(gm.log_prob_noised(x, a, y), want, tol, f"log q_t at a={a}, y={y}")
    assert ALPHAS[-1] == 1.0  # the last reference is the one at a = 1
    assert_rows_close(gm.log_prob(x, y), want, tol, "log_prob = log_prob_noised at a = 1")


@given(q=queries())
def test_at_alpha_bar_zero_every_mixture_is_the_standard_normal(q):
    # a = 0: every component is N(0, I), so log q = log N(x; 0, I), score = -x, p(y | x) = prior.
    # Each component's value is |x|^2 up to round-off in the rotation U_k^T x: a few EPS (1 + |x|^2).
    p, x, _ = q
    gm, tol = p.gm, 16 * EPS * (1 + np.sum(x ** 2, axis=1))
    std_normal = -0.5 * np.sum(x ** 2, axis=1) - 0.5 * p.dim * np.log(2 * np.pi)
    assert_rows_close(gm.log_prob_noised(x, 0.0), std_normal, tol, "log q at a = 0")
    assert_rows_close(gm.score(x, 0.0), -x, tol, "score at a = 0")
    prior = p.label_prior
    assert_rows_close(np.exp(gm.log_classifier(x, 0.0)), np.broadcast_to(prior, (len(x), len(prior))),
                      tol, "classifier at a = 0")


# ---- scores ------------------------------------------------------------------------------------------
@given(q=queries())
def test_score_equals_autograd_gradient_of_log_prob_noised(q):
    p, x, y = q
    gm = p.gm
    for a in ALPHAS:
        # rows are independent, so the gradient of the sum is the per-row gradient
        grad = elementwise_grad(lambda v: gm.log_prob_noised(v, a, y))(x)
        assert_rows_close(gm.score(x, a, y), grad, score_tolerance(p, x, a), f"score at a={a}, y={y}")
        assert_rows_close(gm.eps(x, a, y), -np.sqrt(1 - a) * grad, score_tolerance(p, x, a),
                          f"eps = -sqrt(1 - a) score at a={a}, y={y}")
        np.testing.assert_array_equal(gm.eps(x, a, y), -np.sqrt(1 - a) * gm.score(x, a, y))  # (O3), bit for bit
    rows = np.resize(ALPHAS, len(x))  # one alpha_bar per row
    np.testing.assert_array_equal(gm.eps(x, rows, y), -np.sqrt(1 - rows)[:, None] * gm.score(x, rows, y))


@given(q=queries(), data=st.data())
def test_classifier_gradient_is_the_score_difference(q, data):
    # (O5g): autograd differentiates log p(c | x_t) by the closed form of _log_classifier_vjp. By
    # (O5) the gradient is score(x | c) - score(x), computed here by ``score`` (the responsibilities'
    # path). A drawn cotangent g weights every label at once, as a vector-Jacobian product does. Each
    # side sums at most sum_c |g_c| (1 + 1) component terms of the score's round-off: 4 sum|g| of
    # score_tolerance covers both.
    p, x, _ = q
    gm = p.gm
    g = data.draw(hnp.arrays(np.float64, (len(x), p.num_labels), elements=st.floats(-2, 2, **finite)))
    for a in ALPHAS:
        got = elementwise_grad(lambda v: np.sum(gm.log_classifier(v, a) * g, axis=1))(x)
        want = sum(g[:, [c]] * (gm.score(x, a, c) - gm.score(x, a)) for c in range(p.num_labels))
        tol = 4 * np.abs(g).sum(axis=1) * score_tolerance(p, x, a)
        assert_rows_close(got, want, tol, f"grad of sum_c g_c log p(c | x_t) at a={a}")


def test_classifier_gradient_can_be_differentiated_again():
    # The closed-form gradient (O5g) is written in autograd.numpy, so second derivatives (a guided
    # eps_fn's Jacobian, e.g. for likelihoods) are exact too: the Hessian of log p(1 | x_t) times v
    # against central differences of score(x | 1) - score(x), whose error is O(h^2) ~ 1e-10.
    gm, x, a, v, h = MIXTURE.gm, np.array([[0.3, -0.4], [1.5, 0.2]]), 0.7, np.array([0.6, -0.8]), 1e-5
    gradient = lambda z: elementwise_grad(lambda u: gm.log_classifier(u, a)[:, 1])(z)
    hessian_v = elementwise_grad(lambda z: gradient(z) @ v)(x)
    difference = lambda z: gm.score(z, a, 1) - gm.score(z, a)
    fd = np.stack([(difference(x + h * e) - difference(x - h * e)) @ v / (2 * h) for e in np.eye(2)], axis=1)
    np.testing.assert_allclose(hessian_v, fd, rtol=1e-6, atol=1e-8)


def central_difference_bound(p, x, a, mask, i, h0):
    """Step h <= h0 along coordinate i and the error bound of the central difference of log q there.

    Along a line, g_k(s) = log pi_k + log N_k(x + s e_i) is quadratic with slope g1_k + s g2_k, and
    log q = logsumexp_k g_k, whose third derivative is kappa_3 + 3 Cov of (slope, curvature) under
    the responsibilities; with R1, R2 the ranges of slope and curvature over |s| <= h0 this gives
    |f'''| <= M3 = R1^3 + 3 R1 R2. Central differences err by h^2 M3 / 6 + err_f / h, where err_f
    bounds the round-off of one scipy evaluation (log_density_tolerance); h minimises the sum.
    """
    means, covs = p.noised(a)
    prec = np.linalg.inv(covs)  # (K, D, D)
    g1 = -np.einsum("kd,nkd->nk", prec[:, i, :], x[:, None, :] - means[None])  # (N, K)
    g2 = np.broadcast_to(-prec[:, i, i], g1.shape)
    spread = lambda v: np.where(mask, v, -np.inf).max(axis=1) - np.where(mask, v, np.inf).min(axis=1)
    r1 = spread(g1) + 2 * h0 * np.abs(g2).max(axis=1)
    m3 = r1 ** 3 + 3 * r1 * spread(g2)
    err_f = log_density_tolerance(p, np.abs(x) + h0, a)
    h = np.minimum(h0, np.cbrt(3 * err_f / np.maximum(m3, 1e-300)))
    return h, h ** 2 * m3 / 6 + err_f / h


@settings(max_examples=50)
@given(q=queries())
def test_score_equals_central_difference_of_scipy_density(q):
    # independent of autograd and of the oracle: log q from scipy, differentiated numerically
    p, x, y = q
    gm, mask = p.gm, component_mask(p, y, len(x))
    for a in ALPHAS:
        score = gm.score(x, a, y)
        h0 = 1e-3 * np.sqrt(p.conditioning(a)[1].min())
        bounds = [central_difference_bound(p, x, a, mask, i, h0) for i in range(p.dim)]  # (h, tol) per i
        # x + h_i e_i and x - h_i e_i for every coordinate i, (2, D, N, D), in one scipy evaluation
        steps = np.eye(p.dim)[:, None, :] * np.stack([h for h, _ in bounds])[:, :, None]
        shifted = np.stack([x + steps, x - steps]).reshape(-1, p.dim)
        f = ref_log_prob(p, shifted, a, np.tile(row_labels(y, len(x)), 2 * p.dim)).reshape(2, p.dim, len(x))
        for i, (h, tol) in enumerate(bounds):
            fd = (f[0, i] - f[1, i]) / (2 * h)
            assert_rows_close(score[:, i], fd, tol, f"d/dx_{i} log q at a={a}, y={y}, h={h}")


# ---- the model callables -------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEDULES)
@given(q=queries(), data=st.data())
def test_eps_model_is_eps_at_each_rows_alpha_bar(name, q, data):
    (p, x, y), sched = q, SCHEDULES[name]
    gm, t = p.gm, data.draw(timesteps(sched, len(x)))
    got = gm.eps_model(sched)(x, t, y)
    for i, label in enumerate(row_labels(y, len(x))):
        # one row at a time with a scalar a; a NULL_LABEL row is the unconditional eps
        xi, a, yi = x[i:i + 1], sched.alpha_bar[t[i]], None if label == NULL_LABEL else int(label)
        tol, what = score_tolerance(p, xi, a), f"row {i}, t={t[i]}, y={label}"
        assert_rows_close(got[i:i + 1], gm.eps(xi, a, yi), tol, what)
        grad = elementwise_grad(lambda v: gm.log_prob_noised(v, a, yi))(xi)
        assert_rows_close(got[i:i + 1], score_to_eps(sched, t[i], grad), tol, f"{what}, against autograd")


@pytest.mark.parametrize("name", SCHEDULES)
def test_eps_model_and_classifier_keep_float32(name):
    sched, gm = SCHEDULES[name], SEPARATED.gm
    x = np.array([[0.5, -1.0], [2.0, 3.0]], dtype=np.float32)
    for t in (1, sched.T):
        eps = gm.eps_model(sched)(x, t, [0, NULL_LABEL])
        logits = gm.classifier(sched)(x, t)
        assert eps.dtype == np.float32 and logits.dtype == np.float32, (eps.dtype, logits.dtype)
        # the float64 result rounded to float32: error <= EPS_32 times the largest entry
        a, x64 = sched.alpha_bar[t], x.astype(np.float64)
        exact = ((eps, gm.eps(x64, a, np.array([0, NULL_LABEL]))), (logits, gm.log_classifier(x64, a)))
        for got, expected in exact:
            atol = np.finfo(np.float32).eps * np.abs(expected).max()
            np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


# ---- the posterior mean (Tweedie) ------------------------------------------------------------------
@given(q=queries())
def test_x0_mean_equals_tweedie_formula(q):
    # Two computations: x0_mean weights the components' posterior means mu_k + shift_k, where
    # |shift_k| <= |x - m_k| / sqrt(a) (as a lam / (a lam + 1 - a) <= 1); Tweedie (C7) uses the score,
    # and dividing by sqrt(a) amplifies the round-off of x and of (1 - a) * score by 1 / sqrt(a).
    # (The 1 + floors the scale at the data's unit, as norms of tiny means underflow to 0.)
    p, x, y = q
    gm = p.gm
    for a in ALPHAS:
        expected = (x + (1 - a) * gm.score(x, a, y)) / np.sqrt(a)
        posterior = 1 + np.max(np.linalg.norm(p.means, axis=1) + distance_bound(p, x, a) / np.sqrt(a), axis=1)
        tweedie = ROUNDOFF * EPS * np.linalg.norm(x, axis=1) + (1 - a) * score_tolerance(p, x, a)
        tol = ROUNDOFF * EPS * posterior + tweedie / np.sqrt(a)
        assert_rows_close(gm.x0_mean(x, a, y), expected, tol, f"x0_mean vs Tweedie at a={a}, y={y}")


@given(q=split_gaussians())
def test_one_gaussian_split_into_components_has_the_closed_form_score_and_posterior(q):
    # x0 ~ N(mu, S), however many identical components carry it and under any label;
    # x_t = sqrt(a) x0 + sqrt(1 - a) eps has Cov(x_t) = C and Cov(x0, x_t) = sqrt(a) S, so
    # score = -C^{-1} (x_t - sqrt(a) mu) and E[x0 | x_t] = mu + sqrt(a) S C^{-1} (x_t - sqrt(a) mu),
    # solved here by LU (np.linalg.solve); the points reach |x| = 1e3.
    p, x, y = q
    gm, mu, S = p.gm, p.means[0], p.covs[0]
    for a in ALPHAS:
        m, C = p.noised(a)
        c_inv_d = np.linalg.solve(C[0], (x - m[0]).T).T  # (N, D)
        assert_rows_close(gm.score(x, a, y), -c_inv_d, score_tolerance(p, x, a), f"score at a={a}, y={y}")
        tol = score_tolerance(p, x, a) * np.linalg.eigvalsh(S)[-1] + ROUNDOFF * EPS * np.abs(mu).max()
        expected = mu + np.sqrt(a) * c_inv_d @ S
        assert_rows_close(gm.x0_mean(x, a, y), expected, tol, f"E[x0 | x_t] at a={a}, y={y}")


def importance_sampled_x0_mean(p, xt, a, n, rng):
    """E[x0 | x_t] by self-normalised importance sampling from the prior, and its standard error.

    x0_i ~ p (drawn here by Cholesky factors, not by the oracle), w_i = N(x_t; sqrt(a) x0_i, (1 - a) I);
    the estimate sum w x0 / sum w has the delta-method standard error
    sqrt(sum w_i^2 (x0_i - estimate)^2) / sum w_i (Owen, "Monte Carlo theory, methods and examples", 9.2).
    """
    k = rng.choice(len(p.pi), size=n, p=p.pi)
    x0 = p.means[k] + np.einsum("nde,ne->nd", np.linalg.cholesky(p.covs)[k], rng.standard_normal((n, p.dim)))
    logw = -0.5 * np.sum((xt - np.sqrt(a) * x0) ** 2, axis=1) / (1 - a)
    w = np.exp(logw - logw.max())
    est = w @ x0 / w.sum()
    return est, np.sqrt(w ** 2 @ (x0 - est) ** 2) / w.sum()


@pytest.mark.parametrize("name", SCHEDULES)
def test_x0_mean_matches_importance_sampling(name):
    # one Gaussian (where the closed form is known too) and a labelled mixture; t = mid, where the
    # likelihood is broad enough for the prior draws (n = 100,000) to give a small standard error
    a = SCHEDULES[name].alpha_bar[T_MID]
    rng = np.random.default_rng(0)
    mu, S = ONE_GAUSSIAN.means[0], ONE_GAUSSIAN.covs[0]
    for row in np.array([[0.3, -0.4], [1.5, 0.5], [-1.0, 1.0]]):
        C = a * S + (1 - a) * np.eye(2)
        closed_form = mu + np.sqrt(a) * S @ np.linalg.solve(C, row - np.sqrt(a) * mu)
        for p, expected in ((ONE_GAUSSIAN, closed_form), (MIXTURE, None)):
            est, se = importance_sampled_x0_mean(p, row, a, 100_000, rng)
            got = p.gm.x0_mean(row[None], a)[0]
            assert_within_se(est, got, se, f"E[x0 | x_t={row}] at a={a:.3g}")
            if expected is not None:
                assert_within_se(est, expected, se, f"closed form of E[x0 | x_t={row}] at a={a:.3g}")


# ---- the noisy classifier --------------------------------------------------------------------------
def classifier_tolerance(p, x, a):
    """Probabilities in [0, 1] carry the log-densities' round-off (two of them, numerator and
    denominator) as a relative error, plus a few EPS from the sums."""
    return 2 * log_density_tolerance(p, x, a) + 8 * EPS


@given(q=queries(), data=st.data())
def test_log_classifier_is_bayes_rule(q, data):
    p, x, _ = q
    gm = p.gm
    for a in ALPHAS:
        got = np.exp(gm.log_classifier(x, a))
        assert got.shape == (len(x), p.num_labels)
        assert_rows_close(got, ref_classifier(p, x, a), classifier_tolerance(p, x, a), f"p(y | x_t) at a={a}")
        assert_rows_close(got.sum(axis=1), np.ones(len(x)), np.full(len(x), 1e-12), "rows sum to 1")
    for name, sched in SCHEDULES.items():
        t = data.draw(timesteps(sched, len(x)))
        probs = softmax(gm.classifier(sched)(x, t), axis=1)
        for i, a in enumerate(sched.alpha_bar[t]):
            xi = x[i:i + 1]
            assert_rows_close(probs[i:i + 1], ref_classifier(p, xi, a), classifier_tolerance(p, xi, a),
                              f"softmax of {name} logits, row {i} at t={t[i]}")


def prior_deviation_bound(p, x, a):
    """Bound on |p(y | x) - pi_y| at alpha_bar = a, per row.

    With N_0 = N(x; 0, I) and C_k = I + a (Sigma_k - I) (eigenvalues c_i), ell_k = log N_k / N_0 =
    -1/2 [x^T (C^-1 - I) x - 2 m^T C^-1 x + m^T C^-1 m + log det C], m = sqrt(a) mu_k, so
    |ell_k| <= delta_k = 1/2 [|x|^2 max|1/c_i - 1| + 2 |m||x| / c_min + |m|^2 / c_min + sum|log c_i|].
    Each posterior weight is then pi_k e^{ell_k} / sum_j pi_j e^{ell_j} in pi_k e^{[-2d, 2d]}
    (d = max delta_k), for the label and for its complement, so
    |p(y | x) - pi_y| <= min(pi_y, 1 - pi_y) (e^{2d} - 1).
    """
    c = np.linalg.eigvalsh(p.noised(a)[1])  # (K, D)
    m = np.linalg.norm(np.sqrt(a) * p.means, axis=1)  # (K,)
    r = np.linalg.norm(x, axis=1)[:, None]  # (N, 1)
    delta = 0.5 * (r ** 2 * np.abs(1 / c - 1).max(axis=1) + 2 * m * r / c[:, 0] + m ** 2 / c[:, 0]
                   + np.abs(np.log(c)).sum(axis=1))
    prior = p.label_prior
    return np.minimum(prior, 1 - prior)[None] * np.expm1(2 * delta.max(axis=1))[:, None], prior


@given(q=queries(bound=3.0))
def test_classifier_at_t_max_is_near_the_prior(q):
    # typical x_T ~ N(0, I) lie in [-3, 3]^D; bound for the linear schedule (a_T = 4e-5) is
    # ~ e^{2 sqrt(a) |mu||x|} - 1, up to ~0.6; for the cosine one (a_T = 2e-9) it is ~1e-3
    p, x, _ = q
    gm = p.gm
    for sched in SCHEDULES.values():
        a = sched.alpha_bar[sched.T]
        bound, prior = prior_deviation_bound(p, x, a)
        got = np.exp(gm.log_classifier(x, a))
        assert np.all(np.abs(got - prior) <= bound + 1e-12), (got, prior, bound)


@pytest.mark.parametrize("name", SCHEDULES)
def test_classifier_at_t_one_is_one_hot_for_separated_components(name):
    # Points within r <= 1 of their own noised mean m_k, noised variance s^2 ~ 0.05: for any other
    # component j (at distance d >= 8.66), log N_j - log N_k <= -d (d - 2r) / (2 s^2) < -500, so
    # 1 - p(own label | x) <= sum_j (pi_j / pi_k) e^{-500}: zero in float64 up to round-off.
    sched, gm = SCHEDULES[name], SEPARATED.gm
    a = sched.alpha_bar[1]
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    for k, mu in enumerate(SEPARATED.means):
        x = np.sqrt(a) * mu + np.concatenate([[[0.0, 0.0]], 0.5 * ring, ring])
        p_own = np.exp(gm.classifier(sched)(x, 1))[:, SEPARATED.labels[k]]
        assert np.all(p_own >= 1 - 1e-12), p_own


# ---- numerical stability -----------------------------------------------------------------------
FAR_ALPHAS = [s.alpha_bar[t] for s in SCHEDULES.values() for t in (1, s.T)] + [1.0]


@given(q=queries(bound=1e3))
def test_far_points_give_finite_values(q):
    p, x, y = q
    gm = p.gm
    for a in FAR_ALPHAS:
        for what, value in [("log q", gm.log_prob_noised(x, a, y)), ("score", gm.score(x, a, y)),
                            ("eps", gm.eps(x, a, y)), ("x0_mean", gm.x0_mean(x, a, y)),
                            ("log p(y | x)", gm.log_classifier(x, a))]:
            assert np.all(np.isfinite(value)), f"{what} at a={a}, x={x}: {value}"


@given(p=mixtures(), data=st.data())
def test_classifier_rows_sum_to_one_far_away(p, data):
    # normalised once, L <= 5 probabilities sum to 1 within a few EPS; 1e-12 allows ~1000 times
    # that, whatever the size of the log-densities (up to ~1e11 here: |x|^2 / var, |x| <= 2e3, var >= 1e-5)
    x, gm = data.draw(points(p.dim, bound=1e3)), p.gm
    for a in FAR_ALPHAS:
        excess = np.exp(gm.log_classifier(x, a)).sum(axis=1) - 1
        assert np.all(np.abs(excess) <= 1e-12), f"rows sum to 1 + {excess} at a={a}, x={x}"


# ---- mean, covariance, sampling -------------------------------------------------------------------
@given(p=mixtures())
def test_mean_and_cov_follow_from_the_parameters(p):
    # ref_mean_cov uses the law of total variance, the oracle the second moment minus m m^T; the
    # latter cancels up to |m|^2 + max|mu|^2, so round-off is a few EPS times that
    gm = p.gm
    for y in [None] + list(range(p.num_labels)):
        m, cov = ref_mean_cov(p, y)
        tol = 16 * EPS * (1 + np.max(p.means ** 2) + np.abs(p.covs).max())
        np.testing.assert_allclose(gm.mean(y), m, rtol=0, atol=tol)
        np.testing.assert_allclose(gm.cov(y), cov, rtol=0, atol=tol)


def assert_sample_moments(x, p, y, what):
    """Sample mean and covariance within Z_MC standard errors of the exact ones (ref_mean_cov).

    SE of a mean coordinate: sqrt(Cov_ii / n). SE of a covariance entry: sqrt((E[c_i^2 c_j^2] -
    Cov_ij^2) / n) with centred c, the fourth moment estimated from the sample (asymptotic variance
    of a sample covariance, e.g. Anderson, "Multivariate Statistical Analysis", sec. 3.4).
    """
    n = len(x)
    m, cov = ref_mean_cov(p, y)
    assert_within_se(x.mean(axis=0), m, np.sqrt(np.diag(cov) / n), f"{what} mean")
    c = x - x.mean(axis=0)
    fourth = np.einsum("ni,nj->ij", c ** 2, c ** 2) / n
    assert_within_se(c.T @ c / (n - 1), cov, np.sqrt(np.maximum(fourth - cov ** 2, 0) / n) + 1e-12,
                     f"{what} covariance")


@settings(max_examples=50)
@given(p=mixtures(), seed=st.integers(0, 2 ** 32 - 1))
def test_sample_matches_the_mixture(p, seed):
    gm, n = p.gm, 20_000
    x, labels = gm.sample(n, np.random.default_rng(seed))
    assert x.shape == (n, p.dim) and labels.shape == (n,)
    # label counts are binomial(n, pi_y): SE sqrt(pi_y (1 - pi_y) / n) of the frequency, plus EPS
    # for the round-off of pi_y itself (a single label's pi_y = 1 - 1e-16 must still pass)
    prior = p.label_prior
    freq = np.bincount(labels, minlength=p.num_labels) / n
    se = np.sqrt(np.maximum(prior * (1 - prior), 0) / n) + EPS
    assert_within_se(freq, prior, se, "label frequencies")
    assert_sample_moments(x, p, None, "unconditional")
    y = seed % p.num_labels
    xy, ly = gm.sample(n, np.random.default_rng(seed + 1), y=y)
    assert np.all(ly == y)
    assert_sample_moments(xy, p, y, f"given y={y}")


def test_sample_moments_are_precise_for_a_large_sample():
    # n = 400,000: the covariance SE is ~0.2% of its entries, so a 1% error in scale is caught
    gm, rng = MIXTURE.gm, np.random.default_rng(2)
    for y in (None, 0, 1):
        x, _ = gm.sample(400_000, rng, y=y)
        assert_sample_moments(x, MIXTURE, y, f"y={y}")


def test_conditional_samples_come_from_the_labels_components():
    gm, rng = SEPARATED.gm, np.random.default_rng(1)
    means = SEPARATED.means
    for y in (0, 1, rng.integers(0, 2, 500)):
        x, labels = gm.sample(500, rng, y=y)
        np.testing.assert_array_equal(labels, np.broadcast_to(y, (500,)))
        # components are 8.66 apart with sd 0.22: the nearest mean is the point's own component
        nearest = np.argmin(np.linalg.norm(x[:, None] - means[None], axis=2), axis=1)
        np.testing.assert_array_equal(SEPARATED.labels[nearest], labels)


def test_sample_is_deterministic_in_the_seed():
    gm = MIXTURE.gm
    for y in (None, 1, np.array([0, 1, 1, 0])):
        first = gm.sample(4, np.random.default_rng(7), y=y)
        again = gm.sample(4, np.random.default_rng(7), y=y)
        other = gm.sample(4, np.random.default_rng(8), y=y)
        for u, v in zip(first, again):
            np.testing.assert_array_equal(u, v)
        assert not np.array_equal(first[0], other[0])
    x, labels = gm.sample(0, np.random.default_rng(0))
    assert x.shape == (0, 2) and labels.shape == (0,)


# ---- the Bayes-optimal loss -------------------------------------------------------------------
def gaussian_optimal_loss(sched, cov):
    """L* for x0 ~ N(mu, cov), exactly: the mean over t = 1..T and the D eigen-directions of
    Var(eps_i | x_t) = 1 - (1 - a) / (a lam_i + 1 - a) = a lam_i / (a lam_i + 1 - a)."""
    a = sched.alpha_bar[1:, None]
    lam = np.linalg.eigvalsh(cov)[None]
    return float(np.mean(a * lam / (a * lam + 1 - a)))


@pytest.mark.parametrize("name", SCHEDULES)
def test_optimal_loss_of_one_gaussian_has_its_closed_form(name):
    # Monte Carlo over n = 20,000 draws of (x0, t, eps), within 4 SE (chance failure 6e-5 each)
    sched = SCHEDULES[name]
    for cov in (0.3 * np.eye(2), ONE_GAUSSIAN.covs[0]):
        gm = GaussianMixture([1.0], ONE_GAUSSIAN.means, [cov])
        loss, se = gm.optimal_loss(sched, 20_000, np.random.default_rng(3))
        assert_within_se(loss, gaussian_optimal_loss(sched, cov), se, f"L* for cov {cov}", z=4)


def test_optimal_loss_standard_error_is_consistent_across_seeds():
    # Independent runs differ by N(0, se1^2 + se2^2): within 4 SE of the difference. Over R = 30
    # runs the spread of the losses estimates the true SE: (R - 1) s^2 / se^2 ~ chi^2_{R-1}, so
    # s / mean(se) lies within the chi^2 quantiles 1e-4 and 1 - 1e-4 (se itself varies by ~2%).
    gm, sched, R = MIXTURE.gm, SCHEDULES["linear"], 30
    runs = np.array([gm.optimal_loss(sched, 1_000, np.random.default_rng(seed)) for seed in range(R)])
    for (l1, s1), (l2, s2) in zip(runs, runs[1:]):
        assert_within_se(l1, l2, np.hypot(s1, s2), "reruns", z=4)
    ratio = np.std(runs[:, 0], ddof=1) / runs[:, 1].mean()
    low, high = np.sqrt(chi2.ppf([1e-4, 1 - 1e-4], R - 1) / (R - 1))
    assert low <= ratio <= high, (ratio, low, high)


@pytest.mark.parametrize("name", SCHEDULES)
def test_knowing_the_label_does_not_raise_the_optimal_loss(name):
    # the conditional denoiser is optimal for a finer sigma-algebra, so L*_cond <= L*_uncond; the
    # two estimates share their draws (same seed), and 4 * hypot(se) bounds their noise
    sched = SCHEDULES[name]
    for gm in (MIXTURE.gm, SEPARATED.gm):
        cond, se_c = gm.optimal_loss(sched, 10_000, np.random.default_rng(5), conditional=True)
        uncond, se_u = gm.optimal_loss(sched, 10_000, np.random.default_rng(5))
        assert cond <= uncond + 4 * np.hypot(se_c, se_u), (cond, uncond, se_c, se_u)
    one_label = MIXTURE._replace(labels=np.zeros(3, dtype=np.int64)).gm  # y carries no information
    same = [one_label.optimal_loss(sched, 1_000, np.random.default_rng(5), conditional=c)
            for c in (True, False)]
    np.testing.assert_allclose(same[0], same[1], rtol=1e-12)


# ---- validation -------------------------------------------------------------------------------------
GOOD = dict(weights=[1.0, 2.0], means=[[0.0, 0.0], [1.0, 1.0]], covs=[np.eye(2), 2 * np.eye(2)],
            labels=[0, 1])


@pytest.mark.parametrize("change, match", [
    (dict(weights=[1.0]), "weights"),
    (dict(weights=[[1.0, 2.0]]), "weights"),
    (dict(weights=[1.0, -1.0]), "weights"),
    (dict(weights=[1.0, 0.0]), "weights"),
    (dict(weights=[1.0, np.nan]), "weights"),
    (dict(weights=[1.0, np.inf]), "weights"),
    (dict(means=[0.0, 1.0]), "means"),
    (dict(means=[[0.0, np.nan], [1.0, 1.0]]), "means"),
    (dict(covs=[np.eye(2)]), "covs"),
    (dict(covs=np.ones((2, 3, 3))), "covs"),
    (dict(covs=[np.eye(2), [[1.0, np.nan], [np.nan, 1.0]]]), "covs"),
    (dict(covs=[np.eye(2), [[1.0, 0.5], [0.0, 1.0]]]), "covs must be symmetric"),
    (dict(covs=[np.eye(2), [[1.0, 2.0], [2.0, 1.0]]]), "covs must be positive definite"),
    (dict(covs=[np.eye(2), np.zeros((2, 2))]), "covs must be positive definite"),
    (dict(labels=[0, 2]), "labels"),
    (dict(labels=[1, 1]), "labels"),
    (dict(labels=[-1, 0]), "labels"),
    (dict(labels=[0]), "labels"),
    (dict(labels=[0.5, 0]), "labels"),
])
def test_constructor_rejects_bad_parameters(change, match):
    with pytest.raises(ValueError, match=f"^{match}"):
        GaussianMixture(**{**GOOD, **change})


X = np.zeros((3, 2))


@pytest.mark.parametrize("call, match", [
    (lambda gm: gm.log_prob_noised(np.zeros((3, 3)), 0.5), "x"),
    (lambda gm: gm.log_prob_noised(np.zeros(2), 0.5), "x"),
    (lambda gm: gm.score(np.full((1, 2), np.nan), 0.5), "x"),
    (lambda gm: gm.score(X, -0.1), "alpha_bar"),
    (lambda gm: gm.score(X, 1.1), "alpha_bar"),
    (lambda gm: gm.x0_mean(X, np.nan), "alpha_bar"),
    (lambda gm: gm.log_prob_noised(X, [0.5, 0.5]), "alpha_bar"),
    (lambda gm: gm.log_classifier(X, 2.0), "alpha_bar"),
    (lambda gm: gm.eps(X, -1.0), "alpha_bar"),
    (lambda gm: gm.eps(X, [0.5, 0.5]), "alpha_bar"),
    (lambda gm: gm.eps(1.0, 0.5), "x"),
    (lambda gm: gm.score(X, 0.5, 2), "y"),
    (lambda gm: gm.score(X, 0.5, -2), "y"),
    (lambda gm: gm.score(X, 0.5, [0, 1]), "y"),
    (lambda gm: gm.score(X, 0.5, 0.5), "y"),
    (lambda gm: gm.mean(2), "y"),
    (lambda gm: gm.cov(NULL_LABEL), "y"),
    (lambda gm: gm.sample(-1, np.random.default_rng(0)), "n"),
    (lambda gm: gm.sample(2.0, np.random.default_rng(0)), "n"),
    (lambda gm: gm.sample(True, np.random.default_rng(0)), "n"),
    (lambda gm: gm.sample(3, 0), "rng"),
    (lambda gm: gm.sample(3, np.random.RandomState(0)), "rng"),
    (lambda gm: gm.sample(3, np.random.default_rng(0), y=2), "y"),
    (lambda gm: gm.sample(3, np.random.default_rng(0), y=NULL_LABEL), "y"),
    (lambda gm: gm.optimal_loss(SCHEDULES["linear"], 1, np.random.default_rng(0)), "n"),
    (lambda gm: gm.optimal_loss(SCHEDULES["linear"], 10.0, np.random.default_rng(0)), "n"),
    (lambda gm: gm.eps_model(SCHEDULES["linear"])(X, 0), "t"),
    (lambda gm: gm.eps_model(SCHEDULES["linear"])(X, 1001), "t"),
    (lambda gm: gm.eps_model(SCHEDULES["linear"])(np.zeros((3, 1)), 5), "x"),
    (lambda gm: gm.classifier(SCHEDULES["cosine"])(X, [1, 2]), "t"),
])
def test_methods_reject_bad_input_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=f"^{match} must"):
        call(GaussianMixture(**GOOD))


# ---- the shared-alpha_bar path against the per-row path --------------------------------------------
@given(q=queries(), data=st.data(), dtype=st.sampled_from([np.float64, np.float32]))
def test_a_shared_alpha_bar_and_a_per_row_one_agree_row_by_row(q, data, dtype):
    # A batch that shares one alpha_bar keeps the noised variances per component, (K, D); rows with
    # different alpha_bar make them (N, K, D) (refdiff/oracle.py). An extra row at another alpha_bar
    # forces the per-row path; each row alone takes the shared one. Same formulas, so the two
    # differ only by the matrix products' summation order: the round-off bounds above.
    p, x, y = q
    gm, x = p.gm, x.astype(dtype)
    a = data.draw(hnp.arrays(np.float64, len(x), elements=st.sampled_from(ALPHAS)))
    other = ALPHAS[0] if a[0] != ALPHAS[0] else ALPHAS[1]
    rows, alphas = np.concatenate([x, x[:1]]), np.concatenate([a, [other]])
    labels = None if y is None else np.append(row_labels(y, len(x)), row_labels(y, len(x))[:1])
    per_row = {"score": gm.score(rows, alphas, labels), "x0_mean": gm.x0_mean(rows, alphas, labels),
               "log_prob": gm.log_prob_noised(rows, alphas, labels), "log_classifier": gm.log_classifier(rows, alphas)}
    for i, label in enumerate(row_labels(y, len(x))):
        xi, ai, yi = x[i:i + 1], a[i], None if label == NULL_LABEL else int(label)
        score_tol, log_tol = score_tolerance(p, xi, ai), log_density_tolerance(p, xi, ai)
        posterior = 1 + np.max(np.linalg.norm(p.means, axis=1) + distance_bound(p, xi, ai) / np.sqrt(ai), axis=1)
        what = f"row {i} at a={ai}, y={label}, {np.dtype(dtype).name}"
        assert_rows_close(per_row["score"][i:i + 1], gm.score(xi, ai, yi), score_tol, f"score, {what}")
        assert_rows_close(per_row["x0_mean"][i:i + 1], gm.x0_mean(xi, ai, yi), ROUNDOFF * EPS * posterior,
                          f"x0_mean, {what}")
        assert_rows_close(per_row["log_prob"][i:i + 1], gm.log_prob_noised(xi, ai, yi), log_tol, f"log q_t, {what}")
        assert_rows_close(np.exp(per_row["log_classifier"][i:i + 1]), np.exp(gm.log_classifier(xi, ai)),
                          classifier_tolerance(p, xi, ai), f"p(y | x_t), {what}")
