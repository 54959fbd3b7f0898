"""Checks of the formulas and worked numbers in docs/ that no module test covers: the derivation
steps (posterior by Gaussian conditioning, respaced kernels, Tweedie per component, the Bayes
classifier identities, DDIM/DDPM equivalence), the closed-form optimal loss of one Gaussian, the
energy-distance bias and permutation-test level, and every number printed in the pages.

Tolerances: float64 identities use rtol 1e-9 (a few roundings of quantities like 1 - alpha_bar
near 0); Monte Carlo checks allow 5 standard errors of the sample size used (two-sided
probability of a false alarm ~6e-7 per check, and the seeds are fixed).
"""
import math
from fractions import Fraction
from itertools import product

import autograd.numpy as anp
import numpy as np
import pytest
import scipy.stats
from autograd import grad
from hypothesis import assume, given
from hypothesis import strategies as st

from refdiff import metrics
from refdiff.oracle import GaussianMixture
from refdiff.process import eps_to_v, eps_to_x0, p_mean, q_posterior, q_sample, v_to_eps, x0_to_eps
from refdiff.samplers import ddim, ddpm
from refdiff.schedule import Schedule

from strategies import EPS64, assert_bounded

RTOL = 1e-9
MC_SE = 5.0

betas_st = st.lists(st.floats(1e-6, 0.999), min_size=2, max_size=40)
seeds = st.integers(0, 2 ** 32 - 1)


def close(actual, expected, rtol=RTOL, atol=0.0):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def random_mixture(rng, K=3, D=2, L=2):
    """A labelled mixture with random weights, means and SPD covariances (every label used)."""
    A = rng.standard_normal((K, D, D))
    covs = A @ np.swapaxes(A, 1, 2) + 0.1 * np.eye(D)
    labels = np.arange(K) % L
    return GaussianMixture(rng.uniform(0.2, 1.0, K), 2 * rng.standard_normal((K, D)), covs, labels)


# ---- notation.md ----------------------------------------------------------------------------
def test_N1_diffusers_index_mapping():
    """(N1): diffusers' linear schedule at k is ours at t = k + 1 (recomputed here in float64)."""
    sched = Schedule.linear(1000)
    their_betas = np.linspace(1e-4, 0.02, 1000)
    their_cumprod = np.cumprod(1.0 - their_betas)
    their_cumprod_prev = np.append(1.0, their_cumprod[:-1])
    assert sched.betas[0] == 0.0 and sched.alphas[0] == 1.0 and sched.alpha_bar[0] == 1.0
    close(sched.betas[1:], their_betas, rtol=1e-15)
    close(sched.alpha_bar[1:], their_cumprod, rtol=1e-12)
    close(sched.alpha_bar[:-1], their_cumprod_prev, rtol=1e-12)


@given(betas_st)
def test_S1_ddim_alpha_ratio_is_ddpm_alpha(betas):
    """notation.md / (S1): DDIM's alpha_t / alpha_{t-1} is alpha_bar_t / alpha_bar_{t-1} = alpha_t."""
    s = Schedule.from_betas(betas)
    close(s.alpha_bar[1:] / s.alpha_bar[:-1], s.alphas[1:])
    close(np.cumprod(1 - np.asarray(betas)), s.alpha_bar[1:])


# ---- schedule.md ----------------------------------------------------------------------------
def _linear_alpha_bar_T(T, beta_start=1e-4, beta_end=0.02):
    """Independent of refdiff: the product of 1 - beta over (S2)'s betas."""
    b = (1000.0 / T) * (beta_start + np.arange(T) / max(T - 1, 1) * (beta_end - beta_start))
    return float(np.prod(1.0 - b))


@pytest.mark.parametrize("T, printed", [(50, 7.74e-6), (100, 2.04e-5), (1000, 4.0358e-5), (4000, 4.25e-5)])
def test_S2_linear_alpha_bar_T_table(T, printed):
    """schedule.md prints alpha_bar_T of Schedule.linear(T); 3 or 5 significant figures."""
    got = Schedule.linear(T).alpha_bar[-1]
    close(got, _linear_alpha_bar_T(T), rtol=1e-10)
    close(got, printed, rtol=5e-3 if printed != 4.0358e-5 else 2e-5)


def test_S2_linear_limit_and_smallest_T():
    limit = math.exp(-500 * (1e-4 + 0.02))
    close(limit, 4.32e-5, rtol=2e-3)
    close(Schedule.linear(10 ** 6).alpha_bar[-1], limit, rtol=1e-3)
    for T in range(2, 20):
        with pytest.raises(ValueError):
            Schedule.linear(T)
    assert Schedule.linear(20).betas[-1] == 1.0
    assert Schedule.linear(1).betas.tolist() == [0.0, 0.1]


@given(T=st.integers(20, 5000), beta_start=st.floats(1e-5, 1e-3), beta_end=st.floats(1e-3, 0.02))
def test_S2_linear_betas_sum(T, beta_start, beta_end):
    """The betas of (S2) sum to 500 (beta_start + beta_end) for every T."""
    close(Schedule.linear(T, beta_start, beta_end).betas.sum(), 500 * (beta_start + beta_end), rtol=1e-9)


@pytest.mark.parametrize("T", [1, 2, 5, 50, 1000])
def test_S3_cosine_telescopes_and_last_beta_capped(T):
    s = Schedule.cosine(T)
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
    assert np.all(s.betas[1:T] < 0.999)                 # no beta before the last is clipped here
    close(s.alpha_bar[:T], f[:T] / f[0], rtol=1e-12)
    assert s.betas[T] == 0.999
    close(s.alpha_bar[T], 0.001 * f[T - 1] / f[0], rtol=1e-12)


def test_S3_cosine_worked_number():
    close(Schedule.cosine(1000).alpha_bar[-1], 2.43e-9, rtol=2e-3)


def test_S4_float_tie_example():
    """The tie quoted in schedule.md: k_595 is 947.5 exactly, 947.4999999999999 in float64 linspace."""
    assert Fraction(595 * 1516, 952) == Fraction(1895, 2) and round(Fraction(1895, 2)) == 948
    assert np.linspace(0, 1516, 953)[595] == 947.4999999999999
    ts = Schedule.from_betas(np.full(1517, 0.001)).timesteps(953, "linspace")
    assert ts[952 - 595] == 947 + 1


def test_S4_worked_example():
    """The three rows printed in schedule.md, T = 1000, steps = 10, and the two alpha_bar values."""
    s = Schedule.linear(1000)
    assert s.timesteps(10, "leading").tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert s.timesteps(10, "trailing").tolist() == [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100]
    assert s.timesteps(10, "linspace").tolist() == [1000, 889, 778, 667, 556, 445, 334, 223, 112, 1]
    close(s.alpha_bar[901], 2.70e-4, rtol=2e-3)
    close(s.alpha_bar[1000], 4.04e-5, rtol=2e-3)


def _rule(T, steps, spacing):
    """(S4) as written in schedule.md, in diffusers' k with its float64 evaluation, shifted by (N1)."""
    i = np.arange(steps)
    if spacing == "leading":
        k = (T // steps) * i
    elif spacing == "trailing":
        k = np.round(T + i * (-T / steps)).astype(np.int64) - 1
    else:
        k = np.round(np.linspace(0, T - 1, steps)).astype(np.int64)
    return np.sort(k + 1)[::-1]


@given(T=st.integers(1, 3000), data=st.data())
def test_S4_leading_and_linspace_rules(T, data):
    steps = data.draw(st.integers(1, T))
    s = Schedule.from_betas(np.full(T, 0.01))
    for spacing in ("leading", "linspace"):
        ts = s.timesteps(steps, spacing)
        assert ts.tolist() == _rule(T, steps, spacing).tolist(), (spacing, ts)
        assert len(set(ts.tolist())) == steps and ts.min() >= 1 and ts.max() <= T
    lead = s.timesteps(steps, "leading")
    assert lead[0] == (steps - 1) * (T // steps) + 1 and lead[-1] == 1
    assert (lead[0] < T) == (steps < T)
    if steps >= 2:
        assert s.timesteps(steps, "linspace")[[0, -1]].tolist() == [T, 1]


@pytest.mark.parametrize("T, steps", [(1000, 10), (1000, 7), (1000, 300), (999, 10), (50, 49)])
def test_S4_trailing_rule_cases(T, steps):
    ts = Schedule.from_betas(np.full(T, 0.01)).timesteps(steps, "trailing")
    assert ts.tolist() == _rule(T, steps, "trailing").tolist()
    assert ts[0] == T and ts[-1] == round(T / steps)


@pytest.mark.parametrize("T, steps", [(15, 13), (1000, 61)])
def test_S4_trailing_rule_float_step(T, steps):
    # np.arange(T, 0, -T / steps) yields steps + 1 values here through float round-off (a bug
    # once in refdiff, and in diffusers); the rule keeps i = 0..steps-1.
    ts = Schedule.from_betas(np.full(T, 0.01)).timesteps(steps, "trailing")
    assert ts.tolist() == _rule(T, steps, "trailing").tolist()


@given(betas_st, st.data())
def test_S5_kernels_telescope_and_compose(betas, data):
    sched = Schedule.from_betas(betas)
    T = sched.T
    ts = np.array(sorted(data.draw(st.sets(st.integers(1, T), min_size=1, max_size=T))))
    sub = sched.respace(ts)
    ab = sched.alpha_bar
    # beta' = 1 - ratio is stored, so alpha' = 1 - beta' carries an absolute round-off ~1e-16:
    # compare with an absolute tolerance (values are <= 1).
    close(sub.alpha_bar[1:], ab[ts], rtol=1e-9, atol=1e-14)            # step 1: telescoping
    prev = np.append(0, ts[:-1])
    ratio = ab[ts] / ab[prev]
    close(sub.alphas[1:], ratio, atol=1e-15)                           # step 2: one-step kernel
    close(ratio * (1 - ab[prev]) + (1 - ratio), 1 - ab[ts], atol=1e-12)  # composition gives (P1)
    close(sub.posterior_variance()[1:], (1 - ab[prev]) / (1 - ab[ts]) * (1 - ratio), atol=1e-15)  # step 3


@given(betas_st)
def test_S5_respace_everything_is_identity(betas):
    sched = Schedule.from_betas(betas)
    close(sched.respace(np.arange(1, sched.T + 1)).betas, sched.betas, rtol=1e-9, atol=1e-12)


# ---- process.md -----------------------------------------------------------------------------
@given(betas_st)
def test_P1_induction_step(betas):
    s = Schedule.from_betas(betas)
    close(s.alphas[1:] * (1 - s.alpha_bar[:-1]) + s.betas[1:], 1 - s.alpha_bar[1:], atol=1e-15)


@given(betas_st, st.data(), seeds)
def test_P2_P3_precision_form_and_conditioning(betas, data, seed):
    s = Schedule.from_betas(betas)
    t = data.draw(st.integers(2, s.T))
    rng = np.random.default_rng(seed)
    x0, xt = 3 * rng.standard_normal((4, 3)), 3 * rng.standard_normal((4, 3))
    a, a_prev, alpha, beta = s.alpha_bar[t], s.alpha_bar[t - 1], s.alphas[t], s.betas[t]
    mean, var = q_posterior(s, x0, xt, t)
    precision = alpha / beta + 1 / (1 - a_prev)
    close(precision, (1 - a) / (beta * (1 - a_prev)), rtol=1e-9)
    close(var[:, 0], 1 / precision, rtol=1e-9)
    close(mean, (np.sqrt(alpha) / beta * xt + np.sqrt(a_prev) / (1 - a_prev) * x0) / precision, rtol=1e-8, atol=1e-9)
    close(var[:, 0], (1 - a_prev) - alpha * (1 - a_prev) ** 2 / (1 - a), rtol=1e-6, atol=1e-12)
    cond = np.sqrt(a_prev) * x0 + np.sqrt(alpha) * (1 - a_prev) / (1 - a) * (xt - np.sqrt(a) * x0)
    close(mean, cond, rtol=1e-8, atol=1e-9)


def test_P2_P3_at_t_equal_1():
    s = Schedule.linear(100)
    x0, xt = np.array([[1.5, -2.0]]), np.array([[0.3, 0.7]])
    mean, var = q_posterior(s, x0, xt, 1)
    close(mean, x0, rtol=1e-12)
    assert var[0, 0] == 0.0


def _schedule_t_rng(betas, data, seed):
    """A schedule from the drawn betas, a timestep in 1..T drawn for it, and a seeded rng."""
    s = Schedule.from_betas(betas)
    return s, data.draw(st.integers(1, s.T)), np.random.default_rng(seed)


@given(betas_st, st.data(), seeds)
def test_C5_C6_rotation(betas, data, seed):
    s, t, rng = _schedule_t_rng(betas, data, seed)
    x0, eps = 3 * rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    a = s.alpha_bar[t]
    xt = q_sample(s, x0, t, eps)
    v = eps_to_v(s, xt, t, eps)
    close(v, np.sqrt(a) * eps - np.sqrt(1 - a) * x0, rtol=1e-7, atol=1e-7)
    close(np.sqrt(a) * xt - np.sqrt(1 - a) * v, x0, rtol=1e-7, atol=1e-7)
    close(np.sum(xt ** 2 + v ** 2, 1), np.sum(x0 ** 2 + eps ** 2, 1), rtol=1e-7)
    close(v_to_eps(s, xt, t, v), eps, rtol=1e-7, atol=1e-7)


@given(st.floats(1e-4, 1 - 1e-4), seeds)
def test_C3_conditional_score(a, seed):
    """Step 1: grad_{x_t} log N(x_t; sqrt(a) x0, (1 - a) I) = -eps / sqrt(1 - a)."""
    rng = np.random.default_rng(seed)
    x0, eps = rng.standard_normal(3), rng.standard_normal(3)
    xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    log_q = lambda x: -0.5 * anp.sum((x - np.sqrt(a) * x0) ** 2) / (1 - a)
    close(grad(log_q)(xt), -eps / np.sqrt(1 - a), rtol=1e-9)


@given(st.floats(0.01, 0.99), seeds)
def test_C3_marginal_score_is_posterior_average(a, seed):
    """Step 2 on the oracle: -sqrt(1 - a) score = E[eps | x_t], with E[x0 | x_t] from (O4)."""
    rng = np.random.default_rng(seed)
    gm = random_mixture(rng)
    x = 3 * rng.standard_normal((6, 2))
    e_eps = (x - np.sqrt(a) * gm.x0_mean(x, a)) / np.sqrt(1 - a)
    close(-np.sqrt(1 - a) * gm.score(x, a), e_eps, rtol=1e-8, atol=1e-10)


@given(betas_st, st.data(), seeds)
def test_P4_is_P2_at_C1(betas, data, seed):
    s, t, rng = _schedule_t_rng(betas, data, seed)
    xt, eps = 3 * rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    mean, _ = q_posterior(s, eps_to_x0(s, xt, t, eps), xt, t)
    scale = np.abs(xt).max() + np.abs(eps).max() / np.sqrt(s.alpha_bar[t])
    close(p_mean(s, xt, t, eps), mean, rtol=1e-6, atol=1e-9 * scale)


# ---- oracle.md ------------------------------------------------------------------------------
@given(st.floats(0.0, 1.0), seeds)
def test_O4_tweedie_matrix_identity(a, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((3, 3))
    sigma = A @ A.T + 0.05 * np.eye(3)
    C = a * sigma + (1 - a) * np.eye(3)
    close(a * sigma @ np.linalg.inv(C), np.eye(3) - (1 - a) * np.linalg.inv(C), rtol=1e-8, atol=1e-10)


@given(st.floats(0.0, 1.0), seeds)
def test_O5_bayes_identities(a, seed):
    rng = np.random.default_rng(seed)
    gm = random_mixture(rng, K=4, L=3)
    x = 2 * rng.standard_normal((5, 2))
    log_cls = gm.log_classifier(x, a)
    for y in range(gm.num_labels):
        log_prior = np.log(gm.weights[gm.labels == y].sum())
        close(log_cls[:, y], gm.log_prob_noised(x, a, y) + log_prior - gm.log_prob_noised(x, a),
              rtol=1e-9, atol=1e-9)
    if a == 0.0:
        close(np.exp(log_cls), np.tile([gm.weights[gm.labels == y].sum() for y in range(3)], (5, 1)),
              rtol=1e-12)


def test_O5_classifier_gradient_is_score_difference():
    """grad_x log p(y | x_t) = score(x | y) - score(x), by central differences of (O5)."""
    rng = np.random.default_rng(7)
    gm = random_mixture(rng, K=4, L=2)
    x, a, h = rng.standard_normal((3, 2)), 0.6, 1e-5
    for y in range(2):
        fd = np.stack([(gm.log_classifier(x + h * e, a)[:, y] - gm.log_classifier(x - h * e, a)[:, y]) / (2 * h)
                       for e in np.eye(2)], axis=1)
        close(fd, gm.score(x, a, y) - gm.score(x, a), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("identity", [False, True])
def test_O7_single_gaussian_closed_form(identity):
    rng = np.random.default_rng(11)
    sched = Schedule.linear(200)
    A = rng.standard_normal((3, 3))
    sigma = np.eye(3) if identity else A @ A.T + 0.1 * np.eye(3)
    gm = GaussianMixture([1.0], rng.standard_normal((1, 3)), sigma[None])
    lam = np.linalg.eigvalsh(sigma)
    a = sched.alpha_bar[1:, None]
    exact = np.mean(np.mean(a * lam / (a * lam + 1 - a), axis=1))
    if identity:
        close(exact, sched.alpha_bar[1:].mean(), rtol=1e-12)
    loss, se = gm.optimal_loss(sched, 40000, np.random.default_rng(12))
    assert abs(loss - exact) < MC_SE * se, (loss, exact, se)


def test_O7_excess_loss_decomposition_and_conditioning():
    """E|eps - g|^2 = L* + E|eps* - g|^2 (cross term of mean 0), and L*_cond <= L*."""
    rng = np.random.default_rng(3)
    gm = random_mixture(rng, K=3, L=3)
    sched = Schedule.linear(100)
    n = 20000
    x0, _ = gm.sample(n, rng)
    t = rng.integers(1, sched.T + 1, size=n)
    eps = rng.standard_normal(x0.shape)
    xt = q_sample(sched, x0, t, eps)
    best = gm.eps(xt, sched.alpha_bar[t])
    g = 0.8 * best + 0.1                                  # any other denoiser
    cross = np.sum((eps - g) ** 2 - (eps - best) ** 2 - (best - g) ** 2, axis=1)
    assert abs(cross.mean()) < MC_SE * cross.std(ddof=1) / np.sqrt(n)
    unc, se_u = gm.optimal_loss(sched, n, np.random.default_rng(5))
    con, se_c = gm.optimal_loss(sched, n, np.random.default_rng(5), conditional=True)
    assert con < unc + MC_SE * max(se_u, se_c), (con, unc)


# ---- samplers.md ----------------------------------------------------------------------------
@given(betas_st, st.data(), seeds)
def test_D1_last_respaced_step_is_x0_hat(betas, data, seed):
    sched = Schedule.from_betas(betas)
    ts = np.array(sorted(data.draw(st.sets(st.integers(1, sched.T), min_size=1, max_size=sched.T))))
    # beta'_1 = 1 - alpha_bar_{t_1} is stored in float64: keep alpha_bar_{t_1} well above 1e-16.
    assume(sched.alpha_bar[ts[0]] > 1e-10)
    sub = sched.respace(ts)
    rng = np.random.default_rng(seed)
    x, eps = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    # The error bound, to first order in u = eps64 / 2. The respaced schedule stores beta'_1 = fl(1 - a)
    # and alpha'_1 = fl(1 - beta'_1) (a = alpha_bar_{t_1}), so alpha'_1 is a to relative u (1 - a) / a
    # + u, and 1 - alpha'_1 is 1 - a to relative u a / (1 - a) + u. The square roots halve those;
    # the square roots, divisions, products and sum of (P4) and (C1) add 8 u at most. Relative to
    # the terms' magnitudes |x| / sqrt(a) + sqrt(1 - a) |eps| / sqrt(a). (Measured: at most 0.50 of
    # it over 20000 random schedules, timesteps and scales of x and eps.)
    a, u = sched.alpha_bar[ts[0]], EPS64 / 2
    bound = u * (0.5 / a + 0.5 / (1 - a) + 8) * (np.abs(x) + np.sqrt(1 - a) * np.abs(eps)) / np.sqrt(a)
    assert_bounded(p_mean(sub, x, 1, eps), eps_to_x0(sched, x, ts[0], eps), bound, "(D1)'s last step")
    assert sub.posterior_variance()[1] == 0.0


@given(betas_st, st.data())
def test_D2_sigma_bound_and_D3_identities(betas, data):
    s = Schedule.from_betas(betas)
    t = data.draw(st.integers(2, s.T))
    t_prev = data.draw(st.integers(0, t - 1))
    a, a_prev = s.alpha_bar[t], s.alpha_bar[t_prev]
    sigma2 = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
    assert sigma2 <= (1 - a_prev) * (1 + 1e-12)
    b = s.alpha_bar
    sigma2_every = (1 - b[:-1]) / (1 - b[1:]) * (1 - b[1:] / b[:-1])
    close(sigma2_every, s.posterior_variance()[1:], rtol=1e-9, atol=1e-15)        # (D3)
    alpha = s.alphas[1:]
    close(1 - b[:-1] - s.posterior_variance()[1:], alpha * (1 - b[:-1]) ** 2 / (1 - b[1:]), rtol=1e-6, atol=1e-12)


def test_D2_too_large_eta_raises():
    with pytest.raises(ValueError, match="eta"):
        ddim(lambda x, t: np.zeros_like(x), Schedule.linear(100), np.zeros((2, 2)), 10, eta=1e6,
             rng=np.random.default_rng(0))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_D2_keeps_the_marginals_of_a_point_mass(eta):
    """With the exact eps of data = a point mass x0, every DDIM state x_t is N(sqrt(a) x0, (1 - a) I)."""
    sched, n = Schedule.linear(200), 20000
    x0 = np.array([[1.5, -0.5]])
    rng = np.random.default_rng(21)
    x_T = q_sample(sched, np.repeat(x0, n, 0), sched.T, rng.standard_normal((n, 2)))
    _, path = ddim(lambda x, t: x0_to_eps(sched, x, t, np.repeat(x0, len(x), 0)), sched, x_T, 5,
                   eta=eta, spacing="trailing", rng=rng, return_path=True)
    for t, x in zip(np.append(sched.timesteps(5, "trailing"), 0), path):
        a = sched.alpha_bar[t]
        se_mean, se_var = np.sqrt((1 - a) / n), (1 - a) * np.sqrt(2 / (n - 1))
        assert np.all(np.abs(x.mean(0) - np.sqrt(a) * x0[0]) <= MC_SE * se_mean + 1e-12), (t, x.mean(0))
        assert np.all(np.abs(x.var(0, ddof=1) - (1 - a)) <= MC_SE * se_var + 1e-12), (t, x.var(0))


@pytest.mark.parametrize("steps, spacing", [(None, "leading"), (10, "leading"), (10, "trailing"), (7, "linspace")])
def test_D3_ddim_eta_one_is_ddpm_with_the_same_seed(steps, spacing):
    sched = Schedule.linear(60)
    gm = random_mixture(np.random.default_rng(2))
    eps_fn = gm.eps_model(sched)
    x_T = np.random.default_rng(4).standard_normal((50, 2))
    a = ddpm(eps_fn, sched, x_T, np.random.default_rng(9), steps=steps,
             spacing=None if steps is None else spacing)
    b = ddim(eps_fn, sched, x_T, sched.T if steps is None else steps, eta=1.0, spacing=spacing,
             rng=np.random.default_rng(9))
    close(a, b, rtol=1e-9, atol=1e-9)


# ---- metrics.md -----------------------------------------------------------------------------
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30),
       st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30))
def test_M1_is_scipy_squared_in_1d(u, v):
    u, v = np.array(u), np.array(v)
    scale = max(np.abs(u).max(), np.abs(v).max(), 1.0)
    close(metrics.energy_distance(u[:, None], v[:, None]), scipy.stats.energy_distance(u, v) ** 2,
          rtol=1e-7, atol=1e-10 * scale)


def test_M1_bias_exact_by_enumeration():
    """E[E_nm] = E(F, G) + E|X - X'| / n + E|Y - Y'| / m, exactly, for discrete F and G."""
    xs = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]])
    ys = np.array([[0.5, 0.5], [2.0, 2.0]])
    d = lambda p, q: np.linalg.norm(p[:, None] - q[None], axis=2)
    exx, eyy, exy = d(xs, xs).mean(), d(ys, ys).mean(), d(xs, ys).mean()
    population = 2 * exy - exx - eyy
    n, m = 2, 3
    values = [metrics.energy_distance(xs[list(i)], ys[list(j)])
              for i in product(range(3), repeat=n) for j in product(range(2), repeat=m)]
    close(np.mean(values), population + exx / n + eyy / m, rtol=1e-12)


def test_M1_test_statistic_scaling():
    """Scaling by n m / (n + m) leaves the permutation p-value unchanged (same splits, same rng)."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 2)), rng.standard_normal((6, 2)) + 0.3
    z = np.concatenate([x, y])
    dist = np.linalg.norm(z[:, None] - z[None], axis=2)
    member = np.stack([rng.permutation(14) < 8 for _ in range(50)], axis=1)
    e = metrics.partition_energies(dist, member)
    assert np.array_equal(np.argsort(e, kind="stable"), np.argsort(8 * 6 / 14 * e, kind="stable"))


def test_M3_threshold_rank_identity_exact():
    for B in range(1, 1000):
        for alpha in (Fraction(1, 100), Fraction(1, 20), Fraction(1, 10), Fraction(3, 7)):
            assert math.ceil((1 - alpha) * (B + 1)) == B + 1 - math.floor(alpha * (B + 1))


def test_M3_reject_iff_above_threshold():
    rng = np.random.default_rng(1)
    verdicts = set()
    for shift in np.linspace(0, 1.5, 40):
        x, y = rng.standard_normal((15, 2)), rng.standard_normal((12, 2)) + shift
        r = metrics.two_sample_test(x, y, rng, n_perm=99, alpha=0.05)
        assert (not r.passed) == (r.statistic > r.threshold), r
        verdicts.add(r.passed)
    assert verdicts == {True, False}
    r = metrics.two_sample_test(x, y, rng, n_perm=9, alpha=0.05)   # B + 1 < 1 / alpha
    assert r.threshold == np.inf and r.passed and r.p_value >= 0.1


def test_M3_level_is_exact_under_h0():
    """B = 19, alpha = 0.05: P(reject) = floor(0.05 * 20) / 20 = 0.05 exactly under H0."""
    rng = np.random.default_rng(2)
    reps = 2000
    rejections = sum(not metrics.two_sample_test(rng.standard_normal((5, 2)), rng.standard_normal((5, 2)),
                                                 rng, n_perm=19, alpha=0.05).passed for _ in range(reps))
    sd = math.sqrt(reps * 0.05 * 0.95)
    assert abs(rejections - 0.05 * reps) <= MC_SE * sd, rejections


# ---- guidance.md ----------------------------------------------------------------------------
# Imports of this section only (the guidance page came after the sections above). Identities on
# wide random inputs are bounded by GUIDE_OPS ulps of the sizes of the terms they combine; the
# sampling checks allow 5 standard errors, as everywhere in this file.
import toy_data  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402
from refdiff.guidance import (cfg_rule, classifier_free_guidance, classifier_grad,  # noqa: E402
                              w_from_guidance_scale)
from refdiff.process import eps_to_score  # noqa: E402
from strategies import (EPS64, assert_bounded, cases, coefficients, finite, schedules,  # noqa: E402
                        spd_matrices)

GUIDE_OPS = 64
GUIDE_TINY = GUIDE_OPS * np.finfo(np.float64).tiny   # products that fall below the normal range
GUIDE_SCHED = Schedule.linear(1000)
OVERLAPPING = toy_data.mixture("three_overlapping")


def _grad_log_p(gm, x, a, y):
    """grad_x log p(y | x_t) of the oracle by autograd, rows independent; a scalar or per row."""
    return grad(lambda z: anp.sum(gm.log_classifier(z, a)[np.arange(len(z)), y]))(x)


@given(st.floats(1e-6, 1 - 1e-6), seeds)
def test_G1_bayes_for_scores_and_its_eps_form(a, seed):
    """(G1) steps 3-4: score(x | y) = score(x) + grad log p(y | x), times -sqrt(1 - a) for eps."""
    rng = np.random.default_rng(seed)
    gm = random_mixture(rng, K=4, L=3)
    x = 3 * rng.standard_normal((5, 2))
    for y in range(3):
        g = _grad_log_p(gm, x, a, np.full(5, y))
        scale = np.abs(gm.score(x, a)).max() + np.abs(g).max() + 1.0
        close(gm.score(x, a, y), gm.score(x, a) + g, rtol=1e-8, atol=1e-9 * scale)
        close(gm.eps(x, a, y), gm.eps(x, a) - np.sqrt(1 - a) * g, rtol=1e-8, atol=1e-9 * scale)


@given(hnp.arrays(np.float64, (4, 3), elements=st.floats(-10, 10, **finite)),
       hnp.arrays(np.float64, 4, elements=st.floats(-10, 10, **finite)),
       hnp.arrays(np.float64, (6, 3), elements=st.floats(-10, 10, **finite)),
       st.floats(-20, 20, **finite), seeds)
def test_G2_log_softmax_gradient_is_J_transpose_e_y_minus_p(W, b, x, s, seed):
    """(G2): for logits l = W x + b (J = W), grad log softmax(l)[y] = W^T (e_y - p), and
    classifier_grad returns s times it."""
    y = np.random.default_rng(seed).integers(0, 4, 6)
    logits = x @ W.T + b                                                    # (6, 4)
    p = np.exp(logits - scipy.special.logsumexp(logits, axis=1, keepdims=True))
    want = (np.eye(4)[y] - p) @ W                                           # rows J^T (e_y - p)
    g = classifier_grad(lambda z, t: z @ W.T + b, Schedule.linear(100), y, s)(x, 5)
    bound = GUIDE_TINY + GUIDE_OPS * EPS64 * (1 + abs(s)) * 4 * (np.abs(W).max() + 1)
    assert_bounded(g, s * want, bound, "classifier_grad vs s W^T (e_y - p)")


@given(cases(3, min_alpha_bar=1e-12), st.floats(-100, 100, **finite))
def test_G3_eps_form_is_the_score_of_the_tilted_density(case, s):
    """(G3): eps - sqrt(1 - a) s g has the score score + s g (C3), and x0 moves by (1 - a)/sqrt(a) s g."""
    sched, t, (xt, eps, g) = case
    c = coefficients(sched, t, len(xt))
    eps_bar = eps - c.s * s * g
    bound = GUIDE_TINY + GUIDE_OPS * EPS64 * (np.abs(eps) / c.s + np.abs(s * g))
    assert_bounded(eps_to_score(sched, t, eps_bar), eps_to_score(sched, t, eps) + s * g, bound, "score")
    bound = GUIDE_TINY + GUIDE_OPS * EPS64 * (np.abs(xt) + c.s * np.abs(eps) + (1 - c.a) * np.abs(s * g)) / c.r
    assert_bounded(eps_to_x0(sched, xt, t, eps_bar), eps_to_x0(sched, xt, t, eps) + (1 - c.a) / c.r * s * g,
                   bound, "x0")


@given(cases(2), st.floats(-50, 50, **finite))
def test_G5_G7_cfg_from_classifier_guidance_algebra(case, w):
    """(G5) steps 1-3 and (G7): with the implicit gradient -(eps_y - eps)/sqrt(1 - a), scale 1 + w on
    the unconditional model and scale w on the conditional one both give (1 + w) eps_y - w eps;
    scale w on the unconditional model gives CFG with w - 1 (Errata 2)."""
    sched, t, (eps_y, eps) = case
    c = coefficients(sched, t, len(eps))
    implicit = -(eps_y - eps) / c.s
    want = cfg_rule(eps_y, eps, w)
    bound = GUIDE_TINY + GUIDE_OPS * EPS64 * (1 + 2 * abs(w)) * (np.abs(eps_y) + np.abs(eps))
    assert_bounded(eps - c.s * (1 + w) * implicit, want, bound, "unconditional model, s = 1 + w")
    assert_bounded(eps_y - c.s * w * implicit, want, bound, "conditional model, s = w")
    assert_bounded(eps - c.s * w * implicit, w * eps_y - (w - 1) * eps, bound, "unconditional, s = w")
    assert_bounded(eps - c.s * w * implicit, cfg_rule(eps_y, eps, w - 1), bound, "... is CFG(w - 1)")


@given(st.floats(0.0, 1.0), st.floats(-20, 20, **finite), seeds)
def test_G5_G7_tilted_densities_agree(a, w, seed):
    """log p(x_t | y) + w log p(y | x_t) = log p(x_t) + (1 + w) log p(y | x_t) - log p(y), every x."""
    rng = np.random.default_rng(seed)
    gm = random_mixture(rng, K=4, L=3)
    x = 3 * rng.standard_normal((6, 2))
    log_cls = gm.log_classifier(x, a)
    for y in range(3):
        lhs = gm.log_prob_noised(x, a, y) + w * log_cls[:, y]
        rhs = gm.log_prob_noised(x, a) + (1 + w) * log_cls[:, y]
        size = (1 + abs(w)) * (np.abs(gm.log_prob_noised(x, a)) + np.abs(log_cls[:, y])).max() + 1
        close(lhs - rhs, np.full(6, -np.log(gm.weights[gm.labels == y].sum())), atol=1e-12 * size)


@given(cases(2), st.floats(-50, 50, **finite))
def test_G6_diffusers_rule_is_cfg_with_w_equal_guidance_scale_minus_1(case, gs):
    """(G6): uncond + gs (cond - uncond) = gs cond + (1 - gs) uncond = cfg_rule(cond, uncond, gs - 1)."""
    _, _, (cond, uncond) = case
    bound = GUIDE_TINY + GUIDE_OPS * EPS64 * (1 + 2 * abs(gs)) * (np.abs(cond) + np.abs(uncond))
    diffusers = uncond + gs * (cond - uncond)
    assert_bounded(diffusers, gs * cond + (1 - gs) * uncond, bound, "expanded")
    assert_bounded(diffusers, cfg_rule(cond, uncond, w_from_guidance_scale(gs)), bound, "(G5)")
    close(w_from_guidance_scale(gs), gs - 1, rtol=0, atol=0)


@given(st.integers(1, 4), st.data(), st.floats(-50, 50, **finite))
def test_G8_affine_maps_commute_with_the_cfg_rule(dim, data, w):
    """(G8): f((1 + w) e1 - w e2) = (1 + w) f(e1) - w f(e2) for f(e) = A + B e (B a matrix)."""
    arr = lambda shape: data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-1e6, 1e6, **finite)))
    A, B, e1, e2 = arr(dim), arr((dim, dim)), arr(dim), arr(dim)
    f = lambda e: A + B @ e
    size = np.abs(A) + np.abs(B) @ (np.abs(e1) + np.abs(e2))
    assert_bounded(f(cfg_rule(e1, e2, w)), cfg_rule(f(e1), f(e2), w),
                   GUIDE_TINY + GUIDE_OPS * EPS64 * dim * (1 + 2 * abs(w)) * size, "affine map")


@given(cases(2, min_alpha_bar=1e-12))
def test_G8_conversions_are_the_printed_affine_maps(case):
    """The table of (G8): (C1), (C3), (C5) are A + B eps with the printed A and B."""
    sched, t, (xt, eps) = case
    c = coefficients(sched, t, len(xt))
    for name, got, A, B in (("x0", eps_to_x0(sched, xt, t, eps), xt / c.r, -c.s / c.r),
                            ("score", eps_to_score(sched, t, eps), 0 * xt, -1 / c.s),
                            ("v", eps_to_v(sched, xt, t, eps), -c.s * xt / c.r, 1 / c.r)):
        assert_bounded(got, A + B * eps, GUIDE_TINY + GUIDE_OPS * EPS64 * (np.abs(A) + np.abs(B * eps)), name)


@given(st.floats(-1.0, 20.0), seeds)
def test_G8_guided_score_is_score_plus_1_plus_w_classifier_gradient(w, seed):
    """(G8) for the score, on the oracle: (C3) of the CFG eps = score + (1 + w) grad log p(y | x_t)."""
    rng = np.random.default_rng(seed)
    gm = random_mixture(rng, K=4, L=3)
    x, t, y = 3 * rng.standard_normal((6, 2)), rng.integers(1, GUIDE_SCHED.T + 1, 6), rng.integers(0, 3, 6)
    a = GUIDE_SCHED.alpha_bar[t]
    model = gm.eps_model(GUIDE_SCHED)
    got = eps_to_score(GUIDE_SCHED, t, classifier_free_guidance(model, y, w)(x, t))
    g = _grad_log_p(gm, x, a, y)
    want = gm.score(x, a) + (1 + w) * g
    size = (1 + 2 * abs(w)) * (np.abs(gm.score(x, a)) + np.abs(g)).max() + 1
    close(got, want, rtol=1e-7, atol=1e-9 * size)


@given(st.integers(1, 4), st.data())
def test_G9_gaussian_times_exp_linear_is_the_shifted_gaussian(dim, data):
    """(G9): log N(x; mu, S) + g.(x - mu) = log N(x; mu + S g, S) + g^T S g / 2 for every x."""
    S = data.draw(spd_matrices(dim))
    vec = lambda n: data.draw(hnp.arrays(np.float64, n, elements=st.floats(-10, 10, **finite)))
    mu, g, xs = vec(dim), vec(dim), vec((5, dim))
    lhs = scipy.stats.multivariate_normal(mu, S).logpdf(xs) + (xs - mu) @ g
    rhs = scipy.stats.multivariate_normal(mu + S @ g, S).logpdf(xs) + 0.5 * g @ S @ g
    size = np.abs(lhs).max() + np.abs(rhs).max() + np.linalg.cond(S)
    close(lhs, rhs, rtol=0, atol=1e-11 * size)


def test_G9_mean_shift_is_evaluated_at_the_current_state():
    """Algorithm 1 (Errata 8): ddpm calls mean_shift(x_t, t) at the state it steps from, with the
    original t, also when respaced."""
    sched, calls = Schedule.linear(100), []
    model = OVERLAPPING.eps_model(sched)

    def shift(x, t):
        calls.append((x.copy(), np.array(t)))
        return np.ones_like(x)
    x_T = np.random.default_rng(0).standard_normal((8, 2))
    _, path = ddpm(lambda x, t: model(x, t), sched, x_T, np.random.default_rng(1), steps=7,
                   spacing="trailing", mean_shift=shift, return_path=True)
    ts = sched.timesteps(7, "trailing")
    assert len(calls) == len(ts)
    for (x, t), state, t_want in zip(calls, path[:-1], ts):
        assert np.array_equal(x, state) and np.all(t == t_want), (t, t_want)


@given(cases(3))
def test_G10_eps_form_shifts_the_ddpm_mean_by_beta_over_sqrt_alpha_g(case):
    """(G10): p_mean(x, eps - sqrt(1 - a) g) = p_mean(x, eps) + beta_t / sqrt(alpha_t) g."""
    sched, t, (xt, eps, g) = case
    c = coefficients(sched, t, len(xt))
    assume(np.all(c.alpha > 0))
    shifted = p_mean(sched, xt, t, eps - c.s * g)
    terms = np.abs(xt) + c.beta / c.s * np.abs(eps) + c.beta * np.abs(g)
    bound = GUIDE_TINY + GUIDE_OPS * EPS64 * terms / np.sqrt(c.alpha)
    assert_bounded(shifted, p_mean(sched, xt, t, eps) + c.beta / np.sqrt(c.alpha) * g, bound, "mean shift")


@given(schedules(), st.data())
def test_G10_shift_ratio_of_the_two_forms(sched, data):
    """(G10): Sigma / (beta / sqrt(alpha)) is sqrt(alpha) for beta and sqrt(alpha)(1 - a_prev)/(1 - a)
    for beta_tilde, on the schedule and on a respaced one; it is 0 at t = 1 and <= sqrt(alpha) <= 1."""
    ts = np.array(sorted(data.draw(st.sets(st.integers(1, sched.T), min_size=1, max_size=sched.T))))
    for s in (sched, sched.respace(ts)):
        beta, alpha, ab = s.betas[1:], s.alphas[1:], s.alpha_bar
        assume(np.all(alpha > 0))
        eps_form = beta / np.sqrt(alpha)
        close(s.betas[1:] / eps_form, np.sqrt(alpha), rtol=1e-12)
        ratio = s.posterior_variance()[1:] / eps_form
        close(ratio, np.sqrt(alpha) * (1 - ab[:-1]) / (1 - ab[1:]), rtol=1e-9, atol=1e-15)
        assert ratio[0] == 0.0
        assert np.all(ratio <= np.sqrt(alpha) * (1 + 1e-12)) and np.all(np.sqrt(alpha) <= 1)


def test_G10_printed_ratios_for_linear_1000():
    s = GUIDE_SCHED
    r = np.sqrt(s.alphas[1:]) * (1 - s.alpha_bar[:-1]) / (1 - s.alpha_bar[1:])     # r[t - 1]
    assert r[0] == 0.0
    close(r[1], 0.45, atol=0.005)
    assert r[14] < 0.9 and np.all(r[15:] > 0.9)                                    # from t = 16 on
    close(r.max(), 0.994, atol=0.0005)
    close(r[-1], 0.990, atol=0.0005)


@given(st.floats(0.0, 1.0), seeds)
def test_errata_1_gradient_of_p_is_p_times_gradient_of_log_p(a, seed):
    """Errata 1: grad p(y | x_t) = p(y | x_t) grad log p(y | x_t), by autograd of the oracle."""
    rng = np.random.default_rng(seed)
    gm = random_mixture(rng, K=4, L=3)
    x, y = 3 * rng.standard_normal((6, 2)), rng.integers(0, 3, 6)
    g_log = _grad_log_p(gm, x, a, y)
    g_p = grad(lambda z: anp.sum(anp.exp(gm.log_classifier(z, a)[np.arange(6), y])))(x)
    p = np.exp(gm.log_classifier(x, a)[np.arange(6), y])[:, None]
    close(g_p, p * g_log, rtol=1e-9, atol=1e-12 * (1 + np.abs(g_log).max()))


def test_errata_1_printed_example():
    gm, a = toy_data.mixture("three_gaussians"), 0.9
    x = np.sqrt(a) * gm.means[1:2]
    p = np.exp(gm.log_classifier(x, a)[0, 0])
    g_log = _grad_log_p(gm, x, a, np.array([0]))
    g_p = grad(lambda z: anp.sum(anp.exp(gm.log_classifier(z, a)[:, 0])))(x)
    close(p, 5.1e-8, rtol=0.01)
    close(np.linalg.norm(g_log), 13.6, rtol=0.004)
    close(np.linalg.norm(g_p), 7.0e-7, rtol=0.008)


def test_errata_6_sqrt_beta_shrinks_the_guidance():
    """sqrt(1 - alpha_t) in place of sqrt(1 - alpha_bar_t) scales (G3)'s term by sqrt(beta_t / (1 - a))."""
    s = GUIDE_SCHED
    factor = np.sqrt(s.betas[1:] / (1 - s.alpha_bar[1:]))                          # factor[t - 1]
    close(factor[0], 1.0, rtol=1e-12)
    close(factor[9], 0.38, atol=0.005)
    assert 0.095 <= factor[99:].min() and factor[99:].max() < 0.145, (factor[99:].min(), factor[99:].max())


def test_fidelity_of_the_presets_without_guidance():
    """guidance.md: mean exact p(y | x_0) of p(x | y) samples, 0.891 (three_overlapping) and 0.99997
    (three_gaussians), 400 000 draws; spread sqrt(2) 0.5 = 0.707."""
    n = 400_000
    y = np.arange(n) % 3
    for name, printed, spread in (("three_overlapping", 0.891, 0.5), ("three_gaussians", 0.99997, 0.3)):
        gm = toy_data.mixture(name)
        x, _ = gm.sample(n, np.random.default_rng(0), y=y)
        mean, se = metrics.fidelity(gm, x, y)
        assert abs(mean - printed) <= MC_SE * se + 0.5 * 10.0 ** -(len(str(printed)) - 2), (name, mean, se)
        # sqrt(trace C_k) of a 2-D isotropic Gaussian with std sigma is sqrt(2) sigma.
        close(metrics.class_spread(x, y, 3), np.sqrt(2) * spread, rtol=0.01)
    close(np.sqrt(2) * 0.5, 0.707, atol=0.0005)


TABLE = {  # w: (DDPM fidelity, se, spread), (DDIM fidelity, se, spread); as printed in guidance.md
    0.0: ((0.902, 0.004, 0.67), (0.899, 0.004, 0.69)),
    1.0: ((0.984, 0.001, 0.58), (0.996, 0.0002, 0.53)),
    3.0: ((0.995, 0.0003, 0.56), (0.99986, 0.000004, 0.46)),
}


def _decimals(value):
    """Half a unit in the last printed place of a number written as in the table."""
    text = repr(value)
    return 0.5 * 10.0 ** -(len(text.split(".")[1]) if "." in text else 0)


def test_guidance_table_fidelity_and_spread():
    """The table of guidance.md, recomputed with its seeds; and what it is quoted for: fidelity rises
    and spread falls with w for both samplers, the samplers agree on fidelity at w = 0 and disagree
    by more than 5 standard errors at w = 1 and 3."""
    n = 3000
    y = np.arange(n) % 3
    x_T = np.random.default_rng(1).standard_normal((n, 2))
    model = OVERLAPPING.eps_model(GUIDE_SCHED)
    results = {}
    for w, printed in TABLE.items():
        eps_fn = classifier_free_guidance(model, y, w)
        runs = (ddpm(eps_fn, GUIDE_SCHED, x_T, np.random.default_rng(2), steps=100),
                ddim(eps_fn, GUIDE_SCHED, x_T, 100))
        results[w] = []
        for x, (fid, fid_se, spread) in zip(runs, printed):
            mean, se = metrics.fidelity(OVERLAPPING, x, y)
            got_spread = metrics.class_spread(x, y, 3).mean()
            assert abs(mean - fid) <= _decimals(fid), (w, mean, fid)
            assert abs(se - fid_se) <= max(_decimals(fid_se), 0.5 * fid_se), (w, se, fid_se)
            assert abs(got_spread - spread) <= _decimals(spread), (w, got_spread, spread)
            results[w].append((mean, se, got_spread, _spread_se(x, y)))
    for sampler in range(2):
        for lo, hi in ((0.0, 1.0), (1.0, 3.0)):
            (f0, s0, d0, e0), (f1, s1, d1, e1) = results[lo][sampler], results[hi][sampler]
            assert f1 - f0 > MC_SE * np.hypot(s0, s1), (sampler, lo, hi, f0, f1)
            if sampler == 1 or lo == 0.0:   # DDPM's spread barely moves from w = 1 to 3 (0.58, 0.56)
                assert d0 - d1 > MC_SE * np.hypot(e0, e1), (sampler, lo, hi, d0, d1)
    (fp, sp, _, _), (fd, sd, _, _) = results[0.0]
    assert abs(fp - fd) < MC_SE * np.hypot(sp, sd)
    for w in (1.0, 3.0):
        (fp, sp, _, _), (fd, sd, _, _) = results[w]
        assert fd - fp > MC_SE * np.hypot(sp, sd), (w, fp, fd)


def _spread_se(x, y):
    """Delta-method standard error of the class-averaged (M8): se(tr C_k) = std(|x - mu_k|^2) / sqrt(n_k),
    se(sqrt(tr C_k)) = se(tr C_k) / (2 sqrt(tr C_k)), averaged over the 3 classes."""
    ses = []
    for k in range(3):
        d2 = np.sum((x[y == k] - x[y == k].mean(0)) ** 2, axis=1)
        ses.append(d2.std(ddof=1) / np.sqrt(len(d2)) / (2 * np.sqrt(d2.mean())))
    return np.sqrt(np.sum(np.square(ses))) / 3


def test_guided_ddpm_and_ddim_disagree_with_every_step():
    """guidance.md: with all 1000 steps and w = 1 (300 samples per class), DDIM's fidelity exceeds
    DDPM's by more than 5 standard errors: not a discretisation effect of 100-step samplers."""
    n = 900
    y = np.arange(n) % 3
    x_T = np.random.default_rng(4).standard_normal((n, 2))
    eps_fn = classifier_free_guidance(OVERLAPPING.eps_model(GUIDE_SCHED), y, 1.0)
    fp, sp = metrics.fidelity(OVERLAPPING, ddpm(eps_fn, GUIDE_SCHED, x_T, np.random.default_rng(5)), y)
    fd, sd = metrics.fidelity(OVERLAPPING, ddim(eps_fn, GUIDE_SCHED, x_T, 1000), y)
    assert fd - fp > MC_SE * np.hypot(sp, sd), (fp, sp, fd, sd)


# ---- learned.md -------------------------------------------------------------------------------
def test_L7_ema_warmup_reaches_its_cap():
    # "the warm-up decay min(ema, (1 + k) / (10 + k)) reaches 0.999 only after about 9000 steps,
    # while 0.99 takes over at step 890": (1 + k) / (10 + k) >= d  iff  k >= (10 d - 1) / (1 - d).
    k = np.arange(1, 20_000)
    warm = (1 + k) / (10 + k)
    assert k[np.argmax(warm >= 0.99)] == 890
    assert 8900 <= k[np.argmax(warm >= 0.999)] <= 9100


# ---- theory.md --------------------------------------------------------------------------------
def test_theory_table():
    # The printed table, to its printed decimals.
    from refdiff import theory
    s, full = Schedule.linear(1000), np.arange(1000, 0, -1)
    table = {0.0: ((0.996, 0.498), (1.000, 0.494), (1, 0.5)), 1.0: ((1.617, 0.249), (1.500, 0.287), (1.333, 0.333)),
             3.0: ((2.210, 0.062), (1.876, 0.138), (1.6, 0.2))}
    for w, printed in table.items():
        got = (theory.ddim_output(s, full, 1.0, 0.5, w), theory.ddpm_output(s, full, 1.0, 0.5, w), theory.tilted(1.0, 0.5, w))
        for g, p in zip(got, printed):
            np.testing.assert_allclose(g, p, atol=5e-4 + 1e-12)
    limits = {1.0: ((1.623, 0.25), (1.5, 0.292)), 3.0: ((2.217, 0.0625), (1.875, 0.142))}
    for w, (ode, sde) in limits.items():
        np.testing.assert_allclose(theory.ode_limit(1.0, 0.5, w), ode, atol=5e-4)
        np.testing.assert_allclose(theory.sde_limit(1.0, 0.5, w), sde, atol=5e-4)
    # the eps form against the mean-shift form
    hundred = s.timesteps(100, "leading")
    forms = {0.0: ((1.000, 0.494), (0.991, 0.500), (1.000, 0.452), (0.915, 0.501)),
             1.0: ((1.500, 0.287), (1.491, 0.293), (1.505, 0.255), (1.416, 0.306))}
    for w, printed in forms.items():
        got = [theory.ddpm_output(s, ts, 1.0, 0.5, w, mean_shift=m) for ts in (full, hundred) for m in (False, True)]
        np.testing.assert_allclose(got, printed, atol=5e-4 + 1e-12)
    # the intro's three variances, at w = 1 and v = 0.5
    assert theory.ode_limit(1.0, 0.5, 1.0)[1] == 0.5 ** 2
    assert theory.sde_limit(1.0, 0.5, 1.0)[1] == pytest.approx(0.5 * (0.5 ** 3 - 1) / (0.5 - 1) / 3, rel=1e-12)
    assert theory.tilted(1.0, 0.5, 1.0)[1] == pytest.approx(0.5 / (1 + 1 - 0.5), rel=1e-12)


# ---- docs/clip.md ---------------------------------------------------------------------------------

@given(st.floats(-5, 5), st.floats(1e-2, 1e2), st.integers(1, 999), st.floats(-3, 3), seeds)
def test_clip_md_G14_gaussian_gradient(mu, v, t, c, seed):
    """docs/clip.md, (G14) for Gaussian data N(mu, v I): the exact eps is affine with
    J = sqrt(1 - a) / (a v + 1 - a) I, and the x0-prediction gradient of the linear score c . x0 is
    sqrt(a) v c / (a v + 1 - a); clip_x0_guidance must subtract sqrt(1 - a) s times exactly that."""
    from refdiff.guidance import clip_x0_guidance
    sched = Schedule.linear(1000)
    a = sched.alpha_bar[t]
    x = np.random.default_rng(seed).normal(size=(4, 3)) * 3

    def eps_model(z, tt, y=None):  # the exact eps of N(mu, v I) noised to level a, affine in z
        return np.sqrt(1 - a) * (z - np.sqrt(a) * mu) / (a * v + 1 - a)
    s = 2.5
    guided = clip_x0_guidance(eps_model, lambda x0: c * anp.sum(x0, axis=1), sched, s)(x, t)
    expected_grad = np.sqrt(a) * v * c / (a * v + 1 - a)
    close(guided, eps_model(x, t) - np.sqrt(1 - a) * s * expected_grad, rtol=1e-9, atol=1e-12)


def test_clip_md_info_nce_chance_and_gradient():
    """docs/clip.md, (CL2): equal logits give L = log N, and dL/dS = (P_row - I)/2N + (P_col - I)/2N
    at a random S (autograd against the printed closed form)."""
    from refdiff.clip import info_nce
    close(info_nce(np.full((5, 5), 3.7)), np.log(5))
    S = np.random.default_rng(0).normal(size=(6, 6)) * 4
    rows = np.exp(S - S.max(1, keepdims=True)); rows /= rows.sum(1, keepdims=True)
    cols = np.exp(S - S.max(0, keepdims=True)); cols /= cols.sum(0, keepdims=True)
    close(grad(info_nce)(S), (rows - np.eye(6)) / 12 + (cols - np.eye(6)) / 12)
