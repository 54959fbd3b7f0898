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
    scale = 1 / np.sqrt(sched.alpha_bar[ts[0]])
    close(p_mean(sub, x, 1, eps), eps_to_x0(sched, x, ts[0], eps), rtol=1e-7, atol=1e-9 * scale)
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
