"""Closed forms of guided sampling for 1D Gaussian data (refdiff/theory.py, docs/theory.md (T1)-(T4)).

The eps coefficients (T1) are checked against CFG on the exact oracle; the output laws (T2), (T3)
against the real samplers, and at w = 0 against the independent Gaussian reference of
tests/test_samplers.py; the tilted density (T4) against quadrature.
"""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st
from scipy.integrate import quad

from refdiff import theory
from refdiff.guidance import classifier_free_guidance
from refdiff.samplers import ddim, ddpm
from refdiff.schedule import Schedule

from test_samplers import exact_ddim_moments, exact_ddpm_moments

SCHED = Schedule.linear(1000)
MU, V = 1.0, 0.5


def test_exact_pair_is_the_prior_for_null_rows_and_the_conditional_otherwise():
    x, t = np.linspace(-3, 3, 7)[:, None], np.full(7, 300)
    a = SCHED.alpha_bar[300]
    model = theory.exact_pair(SCHED, MU, V)
    prior, cond = np.sqrt(1 - a) * x, np.sqrt(1 - a) * (x - np.sqrt(a) * MU) / (a * V + 1 - a)   # (O3)
    np.testing.assert_allclose(model(x, t), prior, rtol=1e-12, atol=1e-15)
    y = np.array([0, -1, 0, -1, 0, 0, -1])
    np.testing.assert_allclose(model(x, t, y), np.where(y[:, None] == -1, prior, cond), rtol=1e-12, atol=1e-15)
    # a batch of one kind asks only its own oracle: the same bits as those rows of a mixed batch
    np.testing.assert_array_equal(model(x, t, 0)[y != -1], model(x, t, y)[y != -1])
    np.testing.assert_array_equal(model(x, t)[y == -1], model(x, t, y)[y == -1])


@given(st.integers(1, 1000), st.floats(-3, 3), st.floats(0.05, 4), st.floats(-1, 10))
def test_T1_cfg_eps_is_affine_with_these_coefficients(t, mu, v, w):
    x = np.linspace(-4, 4, 9)[:, None]
    got = classifier_free_guidance(theory.exact_pair(SCHED, mu, v), 0, w)(x, np.full(9, t))
    e1, e0 = theory.cfg_eps_coefficients(SCHED.alpha_bar[t], mu, v, w)
    # round-off: a few ulps of the terms (1 + 2|w|) * |eps| with |eps| <= (|x| + |mu|) / min(v, 1)
    bound = 64 * np.finfo(float).eps * (1 + 2 * abs(w)) * (4 + abs(mu)) / min(v, 1)
    np.testing.assert_allclose(got, e1 * x + e0, rtol=0, atol=bound)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("steps", [None, 50])
def test_T2_T3_at_w_0_match_the_independent_gaussian_reference(sampler, steps):
    ts = np.arange(SCHED.T, 0, -1) if steps is None else SCHED.timesteps(steps, "leading")
    if sampler == "ddim":
        got, want = theory.ddim_output(SCHED, ts, MU, V, 0.0), exact_ddim_moments(SCHED.alpha_bar, ts, 0.0, np.array([V]), np.array([MU]))
    else:
        got, want = theory.ddpm_output(SCHED, ts, MU, V, 0.0), exact_ddpm_moments(SCHED.alpha_bar, ts, "beta_tilde", np.array([V]), np.array([MU]))
    np.testing.assert_allclose(got, np.ravel(want), rtol=1e-12)


@pytest.mark.parametrize("w", [1.0, 3.0])
@pytest.mark.parametrize("sampler", ["ddim-50", "ddpm-100", "ddim-20-eta1"])
def test_T2_T3_are_what_the_samplers_output(sampler, w):
    # 20000 samples: the sample mean within 5 SE = 5 sqrt(var / n) of (T2)/(T3), the sample
    # variance within 5 SE = 5 var sqrt(2 / (n - 1)) (Gaussian output).
    n, rng = 20_000, np.random.default_rng(1)
    eps_fn = classifier_free_guidance(theory.exact_pair(SCHED, MU, V), 0, w)
    x_T = rng.standard_normal((n, 1))
    kind, steps = sampler.split("-")[0], int(sampler.split("-")[1])
    ts = SCHED.timesteps(steps, "leading")
    if kind == "ddpm":
        x, (mean, var) = ddpm(eps_fn, SCHED, x_T, rng, steps=steps), theory.ddpm_output(SCHED, ts, MU, V, w)
    else:
        eta = 1.0 if sampler.endswith("eta1") else 0.0
        x, (mean, var) = ddim(eps_fn, SCHED, x_T, steps, eta=eta, rng=rng), theory.ddim_output(SCHED, ts, MU, V, w, eta)
    assert abs(x.mean() - mean) <= 5 * np.sqrt(var / n), (x.mean(), mean)
    assert abs(x.var(ddof=1) - var) <= 5 * var * np.sqrt(2 / (n - 1)), (x.var(ddof=1), var)


@given(st.floats(-3, 3), st.floats(0.05, 4), st.floats(-0.9, 10))
def test_T4_tilted_density_by_quadrature(mu, v, w):
    precision = (1 + w) / v - w
    if precision <= 0:
        with pytest.raises(ValueError, match="not normalisable"):
            theory.tilted(mu, v, w)
        return
    assume(precision > 0.05)  # wider densities need more than a fixed quadrature window
    mean, var = theory.tilted(mu, v, w)
    log_f = lambda x: -(1 + w) * (x - mu) ** 2 / (2 * v) + w * x ** 2 / 2   # log of the unnormalised density
    # Quadrature in z = (x - mean) / sd over |z| <= 30: the claimed mean and sd only place the
    # window; the moments of z under the raw density must then be 0 and 1.
    sd = np.sqrt(var)
    g = lambda z: np.exp(log_f(mean + sd * z) - log_f(mean))
    m0, m1, m2 = (quad(lambda z: z ** k * g(z), -30, 30, epsabs=1e-13, epsrel=1e-10, limit=200)[0] for k in range(3))
    assert abs(m1 / m0) <= 1e-8 and abs(m2 / m0 - 1) <= 1e-8, (m0, m1, m2)


def test_the_three_laws_differ_under_guidance():
    # docs/theory.md's table: with every step (so the discretisation error is ~0.005 in the mean
    # and ~0.007 in the variance, the w = 0 rows), DDIM, DDPM and the tilted density disagree
    # at w = 1 and w = 3 by far more than that.
    full = np.arange(SCHED.T, 0, -1)
    for w in (1.0, 3.0):
        laws = [theory.ddim_output(SCHED, full, MU, V, w), theory.ddpm_output(SCHED, full, MU, V, w),
                theory.tilted(MU, V, w)]
        for i in range(3):
            for j in range(i):
                assert abs(laws[i][0] - laws[j][0]) > 0.1 and abs(laws[i][1] - laws[j][1]) > 0.03, (w, laws)
        assert laws[0][0] > laws[1][0] > laws[2][0] and laws[0][1] < laws[1][1] < laws[2][1]
    at0 = [theory.ddim_output(SCHED, full, MU, V, 0.0), theory.ddpm_output(SCHED, full, MU, V, 0.0)]
    for mean, var in at0:
        assert abs(mean - MU) < 0.005 and abs(var - V) < 0.007


def test_bad_input():
    with pytest.raises(ValueError, match="not normalisable"):
        theory.tilted(1.0, 2.0, 1.0)   # (1 + 1) / 2 - 1 = 0
    with pytest.raises(ValueError, match="ts"):
        theory.ddim_output(SCHED, [1001, 500], MU, V, 1.0)


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("v", [0.5, 2.0])
def test_T5_T6_are_the_limits_of_ddim_and_ddpm_with_every_step(w, v):
    # DDIM with every step is a first-order discretisation of the ODE, DDPM of the SDE: on the
    # cosine schedule (alpha_bar_T = 2e-9, so starting from N(0, 1) is exact to ~1e-4) their
    # relative distance to (T5), (T6) must fall about 4x from T = 1000 to T = 4000 (at least 3x
    # asked): a wrong limit would leave a floor instead. (Measured at T = 4000: at most 2.6e-3.)
    errors = []
    for T in (1000, 4000):
        s, full = Schedule.cosine(T), np.arange(T, 0, -1)
        limits = np.concatenate([theory.ode_limit(MU, v, w), theory.sde_limit(MU, v, w)])
        outputs = np.concatenate([theory.ddim_output(s, full, MU, v, w), theory.ddpm_output(s, full, MU, v, w)])
        errors.append(np.abs(outputs / limits - 1))   # relative: the variances reach v^(1 + w) = 16
    assert np.all(errors[1] < 1e-2), errors
    big = errors[0] > 1e-5  # where T = 1000 is already at round-off there is nothing to shrink
    assert np.all(errors[1][big] < errors[0][big] / 3), errors


@given(st.floats(-3, 3), st.floats(0.05, 4), st.floats(-1, 6))
def test_T5_T6_by_integrating_the_moment_equations(mu, v, w):
    # The mean and variance ODEs in a (docs/theory.md), integrated numerically from a = 1e-14
    # (x ~ N(0, 1)) to a = 1 in log a, against the closed forms; solver tolerance 1e-10.
    from scipy.integrate import solve_ivp

    def rhs(log_a, state, stochastic):
        a = np.exp(log_a)
        s = 1 + a * (v - 1)
        c1, c0 = -(1 + w) / s + w, (1 + w) * np.sqrt(a) * mu / s   # CFG score = c1 x + c0
        k = 2.0 if stochastic else 1.0                              # (x + k score) / (2a)
        m, var = state
        dm = (m + k * (c1 * m + c0)) / 2                            # d/d(log a) = a d/da
        dvar = (1 + k * c1) * var + (1.0 if stochastic else 0.0)
        return [dm, dvar]

    for stochastic, limit in ((False, theory.ode_limit), (True, theory.sde_limit)):
        sol = solve_ivp(rhs, (np.log(1e-14), 0.0), [0.0, 1.0], args=(stochastic,), rtol=1e-10, atol=1e-12)
        mean, var = limit(mu, v, w)
        # starting at a = 1e-14 instead of 0 moves the mean by ~sqrt(1e-14) |mu| (1 + w) = 1e-7 |mu| (1 + w)
        np.testing.assert_allclose(sol.y[:, -1], [mean, var], rtol=1e-6, atol=1e-6 * (1 + abs(mu)) * (2 + w))


@pytest.mark.parametrize("w", [0.0, 1.0])
def test_T3_mean_shift_form_is_what_ddpm_outputs(w):
    # DDPM-100 with the unconditional eps and Algorithm 1's shift sigma^2 (1 + w) grad log p(y | x_t),
    # the gradient from (G1) with the exact pair; 20000 samples within 5 SE as above.
    n, rng = 20_000, np.random.default_rng(2)
    model = theory.exact_pair(SCHED, MU, V)
    grad = lambda x, t: -(1 + w) * (model(x, t, 0) - model(x, t)) / np.sqrt(1 - SCHED.alpha_bar[t])[:, None]
    x = ddpm(lambda x, t: model(x, t), SCHED, rng.standard_normal((n, 1)), rng, steps=100, mean_shift=grad)
    mean, var = theory.ddpm_output(SCHED, SCHED.timesteps(100, "leading"), MU, V, w, mean_shift=True)
    assert abs(x.mean() - mean) <= 5 * np.sqrt(var / n), (x.mean(), mean)
    assert abs(x.var(ddof=1) - var) <= 5 * var * np.sqrt(2 / (n - 1)), (x.var(ddof=1), var)


def test_mean_shift_and_eps_forms_share_the_sde_limit_but_not_coarse_steps():
    # Per step the two forms differ by O(beta) (G10), so with every step both converge to (T6)
    # (relative error below 1% at T = 4000 on the cosine schedule); on a 100-step chain the
    # mean-shift form guides less: at w = 0 it misses the class mean by ~9% (docs/theory.md).
    s, full = Schedule.cosine(4000), np.arange(4000, 0, -1)
    for w in (1.0, 3.0):
        limit = np.array(theory.sde_limit(MU, V, w))
        for mean_shift in (False, True):
            assert np.all(np.abs(np.array(theory.ddpm_output(s, full, MU, V, w, mean_shift=mean_shift)) / limit - 1) < 1e-2)
    coarse = theory.ddpm_output(SCHED, SCHED.timesteps(100, "leading"), MU, V, 0.0, mean_shift=True)
    assert abs(coarse[0] - MU) > 0.05
