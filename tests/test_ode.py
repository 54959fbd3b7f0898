"""The probability-flow ODE samplers (docs/samplers.md, (D4)-(D5)) and real t in the model
callables (docs/schedule.md, (S6)).

References: DDIM with eta = 0 for Euler (D4, an algebraic identity); for Gaussian data the
PF-ODE's exact solution map, derived per eigen-direction below independently of refdiff; a tight
``ode_adaptive`` solution for the mixture.
"""
import numpy as np
import pytest
from autograd.misc import flatten

import toy_data
from refdiff.arrays import as_times
from refdiff.guidance import classifier_guidance
from refdiff.nn import Denoiser, MLPConfig, init_params
from refdiff.samplers import ddim, ode, ode_adaptive
from refdiff.schedule import Schedule
from test_samplers import GAUSS, eps_fn_of

EPS64 = np.finfo(np.float64).eps
LINEAR, COSINE = Schedule.linear(1000), Schedule.cosine(1000)
RANDOM = Schedule.from_betas(np.random.default_rng(3).uniform(1e-4, 0.05, 300))
MIX = toy_data.mixture("three_gaussians")


def sigma_of(a):
    return np.sqrt((1 - a) / a)


# ---- real t in the model callables ----------------------------------------------------------

def test_as_times_keeps_integers_and_checks_reals():
    assert as_times(3, 2, 10).dtype == np.int64 and as_times(3.0, 2, 10).dtype == np.int64
    np.testing.assert_array_equal(as_times(np.array([2.5, 3.0]), 2, 10), [2.5, 3.0])
    for bad in (0.5, 10.5, np.nan, [1.5, np.inf]):
        with pytest.raises(ValueError, match="^t must"):
            as_times(bad, 2, 10)
    with pytest.raises(ValueError, match="shape"):
        as_times(np.array([1.5, 2.5, 3.5]), 2, 10)


@pytest.mark.parametrize("sched", [LINEAR, COSINE, RANDOM], ids=["linear", "cosine", "random"])
def test_oracle_at_real_t(sched):
    x = np.random.default_rng(0).standard_normal((6, 2)) * 2
    y = np.array([0, 1, 2, -1, 0, 1])
    eps_model, logits = MIX.eps_model(sched), MIX.classifier(sched)
    ts = np.array([1, 2, 17, sched.T // 2, sched.T - 1, sched.T])
    # Whole-valued floats take the integer path: bit-identical.
    np.testing.assert_array_equal(eps_model(x, ts.astype(float), y), eps_model(x, ts, y))
    np.testing.assert_array_equal(logits(x, ts.astype(float)), logits(x, ts))
    # Real t: (O3) and (O5) at alpha_bar_at(t).
    t = np.array([1.25, 2.5, 17.75, sched.T / 2 + 0.5, sched.T - 0.5, sched.T - 1e-9])
    a = sched.alpha_bar_at(t)
    np.testing.assert_array_equal(eps_model(x, t, y), MIX.eps(x, a, y))
    np.testing.assert_array_equal(logits(x, t), MIX.log_classifier(x, a))
    # Classifier guidance reads sqrt(1 - alpha_bar) at the real t too (G3).
    guided = classifier_guidance(eps_model, logits, sched, 1, scale=2.0)
    unguided = classifier_guidance(eps_model, logits, sched, 1, scale=0.0)
    grad = classifier_guidance(eps_model, logits, sched, 1, scale=1.0)(x, t) - unguided(x, t)
    np.testing.assert_allclose(guided(x, t) - unguided(x, t), 2 * grad, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(guided(x, ts.astype(float)), guided(x, ts))


def test_network_at_real_t():
    config = MLPConfig("denoiser", dim=2, num_labels=3, hidden=16, depth=2)
    flat, unflatten = flatten(init_params(config, np.random.default_rng(0)))
    params = unflatten(np.random.default_rng(2).standard_normal(flat.shape))  # no zero output layer
    net = Denoiser(params, config, LINEAR)
    x = np.random.default_rng(1).standard_normal((4, 2))
    ts = np.array([1, 10, 500, 1000])
    np.testing.assert_array_equal(net(x, ts.astype(float), 1), net(x, ts, 1))
    t = np.array([1.5, 10.25, 500.5, 999.99])
    near = net(x, t, 1)
    assert near.shape == (4, 2) and np.all(np.isfinite(near))
    assert not np.array_equal(near, net(x, np.floor(t).astype(int), 1))
    with pytest.raises(ValueError, match="^t must"):
        net(x, 0.5, 1)


# ---- (D4) Euler is DDIM with eta = 0 --------------------------------------------------------

@pytest.mark.parametrize("sched", [LINEAR, COSINE, RANDOM], ids=["linear", "cosine", "random"])
@pytest.mark.parametrize("steps", [1, 7, 50])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_D4_euler_is_ddim_eta_0(sched, steps, spacing):
    x_T = np.random.default_rng(steps).standard_normal((100, 2))
    eps_fn = eps_fn_of(MIX.eps_model(sched))
    got, path = ode(eps_fn, sched, x_T, steps, spacing=spacing, return_path=True)
    want = ddim(eps_fn, sched, x_T, steps, spacing=spacing)
    # Same maths, different rounding: both carry x / sqrt(a) of size |x| (1 + sigma_start) and
    # cancel it down to O(1), so the round-off is a few EPS64 * (1 + sigma_start) * |x|.
    sigma0 = sigma_of(sched.alpha_bar[sched.timesteps(steps, spacing)[0]])
    tol = 64 * EPS64 * (1 + sigma0) * np.abs(x_T).max()
    assert np.abs(got - want).max() <= tol, (np.abs(got - want).max(), tol)
    assert path.shape == (steps + 1, 100, 2) and np.array_equal(path[-1], got)


# ---- the exact PF-ODE map for Gaussian data -------------------------------------------------
# Per eigen-direction of N(m, lam): eps* = sqrt(1 - a)(x - sqrt(a) m) / (a lam + 1 - a)
# = sigma (x~ - m) / (lam + sigma^2) in x~ = x / sqrt(a), so dx~/dsigma = sigma (x~ - m) / (lam + sigma^2)
# and x~(s') - m = (x~(s) - m) sqrt((lam + s'^2) / (lam + s^2)).

def exact_flow(x, a_from, s_to, end_with_x0_step):
    """The exact PF-ODE map of GAUSS from alpha_bar a_from to sigma s_to, then optionally the
    x0 step x~ - s eps* = m + (x~ - m) lam / (lam + s^2)."""
    lam, U = np.linalg.eigh(GAUSS.covs[0])
    m, s = U.T @ GAUSS.means[0], sigma_of(a_from)
    z = (x / np.sqrt(a_from)) @ U - m
    z = z * np.sqrt((lam + s_to ** 2) / (lam + s ** 2))
    if end_with_x0_step:
        z = z * lam / (lam + s_to ** 2)
    return (m + z) @ U.T


@pytest.mark.parametrize("sched", [LINEAR, COSINE, RANDOM], ids=["linear", "cosine", "random"])
def test_D5_adaptive_is_the_exact_gaussian_flow(sched):
    x_T = np.random.default_rng(0).standard_normal((50, 2))
    got = ode_adaptive(eps_fn_of(GAUSS.eps_model(sched)), sched, x_T, rtol=1e-10, atol=1e-12)
    want = exact_flow(x_T, sched.alpha_bar[-1], sigma_of(sched.alpha_bar[1]), True)
    # RK45's local error control at rtol 1e-10 on x~ (size up to |x| sigma_T); 1e-7 absolute on
    # outputs of size ~1 leaves room for the accumulated global error.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    # The default tolerances are looser but still far below any discretisation error.
    loose = ode_adaptive(eps_fn_of(GAUSS.eps_model(sched)), sched, x_T)
    np.testing.assert_allclose(loose, want, rtol=0, atol=1e-4)


def test_D5_gaussian_flow_output_law():
    # From x_T ~ N(0, I) the exact flow to sigma = 0 outputs N(m', C') per direction with
    # m' = m (1 - sqrt(a_T lam / c)), var' = lam / c, c = a_T lam + 1 - a_T: N(m, lam) up to
    # the prior mismatch a_T. Checked on the closed form, then on ode_adaptive's samples.
    a_T = LINEAR.alpha_bar[-1]
    lam, U = np.linalg.eigh(GAUSS.covs[0])
    c = a_T * lam + 1 - a_T
    m = U.T @ GAUSS.means[0]
    x = np.random.default_rng(1).standard_normal((5000, 2))
    z = ode_adaptive(eps_fn_of(GAUSS.eps_model(LINEAR)), LINEAR, x) @ U
    n = len(x)
    # Exact law of the sampler (flow to sigma(1), then the x0 step: a factor per direction).
    s1 = sigma_of(LINEAR.alpha_bar[1])
    g = np.sqrt((lam + s1 ** 2) / (lam + sigma_of(a_T) ** 2)) * lam / (lam + s1 ** 2) / np.sqrt(a_T)
    mean, var = m - g * np.sqrt(a_T) * m, g ** 2
    # Ending with the x0 step at sigma(1) instead of flowing to 0 scales each direction's
    # deviation from m by sqrt(lam / (lam + s1^2)) (0.4% in variance for the smallest lam).
    shrink = np.sqrt(lam / (lam + s1 ** 2))
    np.testing.assert_allclose(var, lam / c * shrink ** 2, rtol=1e-12)
    np.testing.assert_allclose(mean, m * (1 - np.sqrt(a_T * lam / c) * shrink), rtol=1e-12)
    # 5 Monte Carlo standard errors: mean SE sqrt(var / n), variance SE var sqrt(2 / (n - 1)).
    np.testing.assert_allclose(z.mean(0), mean, rtol=0, atol=5 * np.sqrt(var / n).max())
    np.testing.assert_allclose(z.var(0, ddof=1), var, rtol=5 * np.sqrt(2 / (n - 1)))


# ---- (D5) Heun ------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [20, 40])
@pytest.mark.parametrize("data", ["gauss", "mixture"])
def test_D5_heun_beats_euler_at_equal_evaluations(k, data):
    """Heun with k steps (2k - 1 evaluations) against Euler with 2k steps, "linspace" from t = T
    on Schedule.linear(1000). Reference: the exact flow (Gaussian) or ode_adaptive at rtol 1e-9
    (mixture), both ending with the same x0 step from t = 1 as the fixed-step grids. The errors
    measured (~1e-2) dwarf the reference's (~1e-7). See docs/samplers.md (D5) for why Heun loses
    with k = 5 and on the cosine schedule."""
    model = GAUSS if data == "gauss" else MIX
    eps_fn = eps_fn_of(model.eps_model(LINEAR))
    x_T = np.random.default_rng(k).standard_normal((200, 2))
    if data == "gauss":
        ref = exact_flow(x_T, LINEAR.alpha_bar[-1], sigma_of(LINEAR.alpha_bar[1]), True)
    else:
        ref = ode_adaptive(eps_fn, LINEAR, x_T, rtol=1e-9, atol=1e-12)
    err_euler = np.linalg.norm(ode(eps_fn, LINEAR, x_T, 2 * k, spacing="linspace") - ref, axis=1)
    err_heun = np.linalg.norm(ode(eps_fn, LINEAR, x_T, k, "heun", spacing="linspace") - ref, axis=1)
    assert np.all(err_heun < err_euler), (err_heun.max(), err_euler.min())
    assert err_heun.mean() < 0.5 * err_euler.mean(), (err_heun.mean(), err_euler.mean())


def test_D5_heun_first_step_correction_formula():
    """docs/samplers.md (D5): Heun minus Euler on one step is
    (s' - s) / 2 * (x0_hat(x, s) - x0_hat(x~', s')) / s'; large when s / s' is."""
    sched, eps_fn = COSINE, eps_fn_of(MIX.eps_model(COSINE))
    x = np.random.default_rng(0).standard_normal((20, 2))
    # one Euler and one Heun step from t = T to t_prev = T // 2 ("trailing", 2 steps, first step)
    t, tp = 1000, 500
    a, ap = sched.alpha_bar[t], sched.alpha_bar[tp]
    s, sp = sigma_of(a), sigma_of(ap)
    eps = eps_fn(x, np.full(20, t))
    xt = x / np.sqrt(a)
    x0, pred = xt - s * eps, xt + (sp - s) * eps
    x0p = pred - sp * eps_fn(np.sqrt(ap) * pred, np.full(20, tp))
    want = np.sqrt(ap) * (pred + (sp - s) / 2 * (x0 - x0p) / sp)
    steps = []
    ode(eps_fn, sched, x, 2, "heun", spacing="trailing", callback=lambda t, x, e: steps.append(x))
    np.testing.assert_allclose(steps[0], want, rtol=1e-9, atol=1e-9)


def test_heun_with_one_step_is_euler_and_counts_evaluations():
    calls = []

    def eps_fn(x, t):
        calls.append(int(t[0]))
        return MIX.eps_model(LINEAR)(x, t)
    x_T = np.random.default_rng(0).standard_normal((5, 2))
    np.testing.assert_array_equal(ode(eps_fn, LINEAR, x_T, 1, "heun"), ode(eps_fn, LINEAR, x_T, 1))
    calls.clear()
    ode(eps_fn, LINEAR, x_T, 4, "heun", spacing="linspace")
    assert calls == [1000, 667, 667, 334, 334, 1, 1]  # 2 * 4 - 1 evaluations


def test_ode_errors():
    eps_fn, x = eps_fn_of(MIX.eps_model(LINEAR)), np.zeros((2, 2))
    with pytest.raises(ValueError, match="method"):
        ode(eps_fn, LINEAR, x, 5, method="rk4")
    with pytest.raises(ValueError, match="spacing"):
        ode(eps_fn, LINEAR, x, 5, spacing="even")
    with pytest.raises(ValueError, match="rtol"):
        ode_adaptive(eps_fn, LINEAR, x, rtol=0.0)
    with pytest.raises(ValueError, match="alpha_bar_T > 0"):
        ode_adaptive(eps_fn, Schedule.from_betas([0.5, 1.0]), x)
    with pytest.raises(ValueError, match="eps_fn must return"):
        ode(lambda x, t: x[:1], LINEAR, x, 5)


# ---- (D6) Karras et al.'s sigma grid --------------------------------------------------------

@pytest.mark.parametrize("sched", [LINEAR, Schedule.cosine(1000)], ids=["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 2, 7, 40])
def test_D6_karras_times_follow_the_rho_formula(sched, steps):
    from refdiff.samplers import KARRAS_RHO, karras_times
    ts = karras_times(sched, steps)
    assert ts.shape == (steps,) and ts[0] == sched.T and (steps == 1 or ts[-1] == 1.0)
    assert np.all(np.diff(ts) < 0)
    s_max, s_min, r = sched.sigma_at(sched.T), sched.sigma_at(1), 1 / KARRAS_RHO
    frac = np.arange(steps) / max(steps - 1, 1)
    want = (s_max ** r + frac * (s_min ** r - s_max ** r)) ** KARRAS_RHO
    # t_of_sigma bisects to float64 resolution; sigma_at is then accurate to a few ulps times its slope
    np.testing.assert_allclose(sched.sigma_at(ts), want, rtol=1e-9)


def test_D6_ode_on_the_karras_grid_runs_at_real_times_and_heun_wins_with_enough_steps():
    # Measured (docs/samplers.md (D6)): on this grid Heun with k steps beats Euler with 2k at k = 20
    # on Schedule.linear(1000) (mean error 0.035 against 0.060), but not at k <= 10.
    seen = []
    eps_fn = eps_fn_of(MIX.eps_model(LINEAR))
    x_T = np.random.default_rng(0).standard_normal((200, 2))
    ref = ode_adaptive(eps_fn, LINEAR, x_T, rtol=1e-9, atol=1e-12)
    euler = ode(lambda x, t: seen.append(t[0]) or eps_fn(x, t), LINEAR, x_T, 40, spacing="karras")
    assert len(seen) == 40 and any(t != round(t) for t in seen)   # real t in [1, T]
    heun = ode(eps_fn, LINEAR, x_T, 20, "heun", spacing="karras")
    err_euler, err_heun = (np.linalg.norm(z - ref, axis=1).mean() for z in (euler, heun))
    assert err_heun < 0.75 * err_euler, (err_heun, err_euler)


def test_D6_bad_karras_steps():
    from refdiff.samplers import karras_times
    with pytest.raises(ValueError, match="steps"):
        karras_times(LINEAR, 0)
