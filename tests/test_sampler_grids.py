"""Explicit sampling grids, the one sampler signature, and the noise-draw rule (docs/samplers.md,
"Grids" and "Noise"; refdiff.samplers.sampling_grid).

References, each independent of the code under test:
- the pinned trajectories of the code before the refactor (tests/pinned_runs.py), bit for bit;
- the int-step form of every sampler, bit for bit, against the explicit grid it stands for;
- the exact probability-flow map of Gaussian data (closed form, derived below) and, for Heun on a
  Gaussian, Heun's own recursion per eigen-direction (closed form);
- the exact finite-step law of DDPM (tests/test_samplers.py, ``exact_ddpm_moments``);
- a replay of Ho et al. (2020) Alg. 2 and Song et al. (2021) eq. 12 written here in plain numpy,
  fed with the draws a recording Generator saw the sampler make.

Round-off tolerances are written ``k * EPS64 * size``: k a count of roundings per step (stated),
size the largest intermediate the arithmetic carries (stated). On failure the computed and
expected values are printed (``assert_bounded``, ``assert_same_bits``).
"""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import toy_data
from pinned_runs import FIXTURE, runs
from refdiff.oracle import GaussianMixture
from refdiff.samplers import ddim, ddpm, karras_times, ode, ode_adaptive, sampling_grid
from refdiff.schedule import Schedule
from strategies import EPS64, assert_bounded
from test_samplers import exact_ddpm_moments

LINEAR, COSINE = Schedule.linear(1000), Schedule.cosine(500)
SCHEDS = {"linear1000": LINEAR, "cosine500": COSINE}
SMALL = Schedule.linear(50)
# alpha_bar_T = 0.57, sigma(T) = 0.87: RK45 crosses it in few steps, for the ode_adaptive plumbing tests
# (each model time inside RK45 is a 64-step bisection, ~3 ms).
MILD = Schedule.linear(50, 1e-4, 1e-3)
ANISO = toy_data.mixture("anisotropic")
SPACINGS = ("leading", "trailing", "linspace", "karras")
# A correlated 2-D Gaussian N(M, C) with both variances below 1 (eigenvalues 0.35 and 0.03).
M, C = np.array([0.7, -1.2]), np.array([[0.3, 0.12], [0.12, 0.08]])
GAUSS = GaussianMixture([1.0], [M], [C])


def mixture_eps(sched, label=2):
    """The exact eps of "anisotropic" given label 2 (itself a two-component mixture)."""
    model = ANISO.eps_model(sched)
    return lambda x, t: model(x, t, label)


def gauss_eps(sched):
    return GAUSS.eps_model(sched)


EPS_MIX = {name: mixture_eps(s) for name, s in SCHEDS.items()}
EPS_GAUSS = {name: gauss_eps(s) for name, s in {**SCHEDS, "small": SMALL, "mild": MILD}.items()}


def assert_same_bits(got, want, what=""):
    """np.array_equal and the same dtype; on failure show where and what differs."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, \
        f"{what}: computed {got.dtype}{got.shape}, expected {want.dtype}{want.shape}"
    if not np.array_equal(got, want):
        diff = got != want
        i = tuple(np.argwhere(diff)[0])
        raise AssertionError(f"{what}: {diff.sum()} of {diff.size} elements differ; first at {i}: "
                             f"computed {got[i]!r}, expected {want[i]!r}\ncomputed:\n{got}\nexpected:\n{want}")


def sigma_of(a):
    return np.sqrt((1 - a) / a)


# ---- 1. the pins ---------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", [False, True], ids=["int-steps", "explicit-grid"])
def test_pinned_runs_equal_the_fixture_bit_for_bit(grid):
    fixture = np.load(FIXTURE)
    got = runs(grid)
    assert sorted(got) == sorted(fixture.files)
    for key in fixture.files:
        assert_same_bits(got[key], fixture[key], key)


# ---- 2. explicit grids equal int-step grids ---------------------------------------------------------

def test_sampling_grid_matches_its_definition():
    # Independent statement of "Grids": timesteps for the three spacings, karras_times for the
    # real samplers, and for ddpm/ddim the karras times rounded to the nearest integer, repeats
    # dropped, decreasing (diffusers' use_karras_sigmas rounding).
    for sched in SCHEDS.values():
        for k in (1, 2, 5, 10, 30):
            for spacing in SPACINGS[:3]:
                for discrete in (False, True):
                    assert_same_bits(sampling_grid(sched, k, spacing, discrete), sched.timesteps(k, spacing), spacing)
            real = karras_times(sched, k)
            assert_same_bits(sampling_grid(sched, k, "karras"), real, "karras real")
            rounded = np.array(sorted({int(np.round(t)) for t in real}, reverse=True), dtype=np.int64)
            assert_same_bits(sampling_grid(sched, k, "karras", discrete=True), rounded, f"karras discrete, {k}")
        assert_same_bits(sampling_grid(sched, 7), sched.timesteps(7, "leading"), "default spacing")
    # A small count on the cosine schedule collapses: sigma(T) = 1e4, so several karras times
    # round to the same timestep and the discrete grid is shorter than the count.
    assert len(sampling_grid(COSINE, 10, "karras", discrete=True)) < 10


def _run(kind, sched, f, x, steps, spacing):
    """(x_0, path) of sampler ``kind`` with ``steps`` (count or grid) and ``spacing`` (None: leave it out)."""
    kw = {} if spacing is None else {"spacing": spacing}
    if kind.startswith("ddpm"):
        return ddpm(f, sched, x, np.random.default_rng(3), steps=steps, variance=kind.split("-")[1],
                    return_path=True, **kw)
    if kind.startswith("ddim"):
        eta = float(kind.split("-")[1])
        return ddim(f, sched, x, steps, eta=eta, rng=np.random.default_rng(3) if eta else None,
                    return_path=True, **kw)
    if kind.startswith("ode-"):
        return ode(f, sched, x, steps, kind.split("-")[1], return_path=True, **kw)
    return ode_adaptive(f, sched, x, steps, rtol=1.0, atol=1.0, return_path=True, **kw)


FIXED_KINDS = ("ddpm-beta_tilde", "ddpm-beta", "ddim-0", "ddim-0.5", "ode-euler", "ode-heun")


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("kind", FIXED_KINDS + ("ode_adaptive",))
@pytest.mark.parametrize("name", SCHEDS)
def test_explicit_grid_is_the_int_step_grid_bit_for_bit(name, kind, spacing):
    sched, f = SCHEDS[name], EPS_MIX[name]
    x = np.random.default_rng(0).standard_normal((6, 2))
    discrete = kind.startswith(("ddpm", "ddim"))
    # ode_adaptive costs one RK45 solve per call whatever the grid (each model time is a
    # 64-step bisection), so it runs on one short grid at loose tolerances.
    for k in ((3,) if kind == "ode_adaptive" else (1, 4, 9)):
        if spacing == "karras":
            grid = sampling_grid(sched, k, "karras", discrete=True) if discrete else karras_times(sched, k)
        else:
            grid = sched.timesteps(k, spacing)
        by_count = _run(kind, sched, f, x, k, spacing)
        by_grid = _run(kind, sched, f, x, grid, None)
        assert by_count[1].shape == (len(grid) + 1, 6, 2)
        assert_same_bits(by_grid[0], by_count[0], f"{kind} {spacing} {k} x_0")
        assert_same_bits(by_grid[1], by_count[1], f"{kind} {spacing} {k} path")


# ---- 3. real grids for the ODE samplers: the exact Gaussian flow ------------------------------------
# For data N(M, C), the exact eps is eps*(x, t) = sqrt(1 - a) (a C + (1 - a) I)^-1 (x - sqrt(a) M)
# (-sqrt(1 - a) times the score of q_t = N(sqrt(a) M, a C + (1 - a) I)). With x~ = x / sqrt(a) and
# sigma^2 = (1 - a) / a: a C + (1 - a) I = a (C + sigma^2 I), x - sqrt(a) M = sqrt(a) (x~ - M) and
# sqrt(1 - a) = sqrt(a) sigma, so eps* = sigma (C + sigma^2 I)^-1 (x~ - M). In the eigenbasis
# C = U diag(lam) U^T, z = U^T (x~ - M) obeys dz_i/dsigma = sigma z_i / (lam_i + sigma^2)
# = d/dsigma log sqrt(lam_i + sigma^2) z_i, hence z_i(s') = z_i(s) sqrt((lam_i + s'^2) / (lam_i + s^2)).
# The x0 step x~ - s eps* multiplies z_i by 1 - s^2 / (lam_i + s^2) = lam_i / (lam_i + s^2).
LAM, U = np.linalg.eigh(C)


def to_z(x, a):
    return (x / np.sqrt(a)) @ U - M @ U


def from_z(z, a):
    return np.sqrt(a) * (z @ U.T + M)


def exact_flow(x_from, a_from, s_to, a_to, x0_step=False):
    """The exact PF-ODE state x at sigma s_to (alpha_bar a_to) from x_from at alpha_bar a_from;
    with x0_step, then the Euler step to sigma = 0 (the sampler's last step, a_to ignored)."""
    z = to_z(x_from, a_from) * np.sqrt((LAM + s_to ** 2) / (LAM + sigma_of(a_from) ** 2))
    if x0_step:
        return from_z(z * LAM / (LAM + s_to ** 2), 1.0)
    return from_z(z, a_to)


def heun_recursion(x_T, sched, ts):
    """Heun of (D5) on this Gaussian, in closed form per eigen-direction: with g(s) = s / (lam + s^2)
    (eps* = g z), h = s' - s, the predictor is z (1 + h g(s)), the corrector
    z' = z (1 + h / 2 (g(s) + g(s') (1 + h g(s)))), and the last step (to sigma = 0) the x0 step."""
    a = sched.alpha_bar_at(np.asarray(ts, dtype=np.float64))
    s = sigma_of(a)
    z = to_z(x_T, a[0])
    g = lambda sig: sig / (LAM + sig ** 2)
    for i in range(len(ts) - 1):
        h = s[i + 1] - s[i]
        z = z * (1 + h / 2 * (g(s[i]) + g(s[i + 1]) * (1 + h * g(s[i]))))
    return from_z(z * LAM / (LAM + s[-1] ** 2), 1.0)


def non_integer_grid(T, n):
    """A hand-made decreasing grid of n non-integer times in [1.25, T - 0.5], denser near t = 1."""
    u = np.linspace(1.0, 0.0, n)
    ts = 1.25 + (T - 1.75) * u ** 2
    assert np.all(np.diff(ts) < 0) and np.all(ts != np.round(ts))
    return ts


def roundoff_tol(sched, ts, x_T, k=16):
    """k roundings per step, each of the size of the scaled state x~ = x / sqrt(a), at most
    |x_T| sqrt(1 + sigma_0^2) at the first grid time; the flow of this Gaussian contracts every
    direction as sigma falls (z scales by sqrt((lam + s'^2) / (lam + s^2)) < 1), so earlier errors
    are not amplified and the budget adds up over the steps."""
    s0 = float(sched.sigma_at(float(ts[0])))
    return k * len(ts) * EPS64 * np.sqrt(1 + s0 ** 2) * np.abs(x_T).max()


@pytest.mark.parametrize("case", ["linear-karras-120", "cosine-non-integer-150"])
def test_heun_on_a_fine_real_grid_lands_on_the_exact_flow(case):
    sched = LINEAR if case.startswith("linear") else COSINE
    ts = karras_times(sched, 120) if case.startswith("linear") else non_integer_grid(sched.T, 150)
    assert np.any(ts != np.round(ts))
    x_T = np.random.default_rng(1).standard_normal((20, 2))
    got = ode(gauss_eps(sched), sched, x_T, ts, "heun")
    a = sched.alpha_bar_at(ts)
    exact = exact_flow(x_T, a[0], sigma_of(a[-1]), a[-1], x0_step=True)
    # (a) refdiff's Heun is Heun: equal to the closed-form recursion to round-off (roundoff_tol).
    tol = roundoff_tol(sched, ts, x_T)
    assert_bounded(got, heun_recursion(x_T, sched, ts), tol, "heun vs its closed-form recursion")
    # (b) so it lands on the exact flow within Heun's own global error on this grid (computed
    # exactly by the recursion, independent of refdiff) plus round-off; the grid is fine enough
    # that this error is small.
    method_err = np.abs(heun_recursion(x_T, sched, ts) - exact)
    assert method_err.max() < 5e-3, method_err.max()
    assert_bounded(got, exact, method_err + tol, "heun vs the exact flow")


def rk45_tol(n_evals, n_components, rtol, atol, x_tilde_max):
    """A bound on RK45's global error in x~. scipy accepts a step when the RMS over the n
    components of err_i / (atol + rtol |y_i|) is <= 1, so a component's local error is at most
    sqrt(n) (atol + rtol |y|max); RK45 takes at most n_evals / 6 steps (6 evaluations a step,
    first-same-as-last), and the flow contracts (roundoff_tol), so local errors add up without
    amplification; the dense output is an interpolant of the same order. Outputs are
    x = sqrt(a) x~ with sqrt(a) <= 1, so the bound holds for x as well."""
    return np.sqrt(n_components) * (n_evals / 6 + 1) * (atol + rtol * x_tilde_max)


@pytest.mark.parametrize("case", ["linear-karras-6", "cosine-non-integer-5"])
def test_ode_adaptive_on_a_real_grid_follows_the_exact_flow(case):
    sched = LINEAR if case.startswith("linear") else COSINE
    ts = karras_times(sched, 6) if case.startswith("linear") else non_integer_grid(sched.T, 5)
    x_T = np.random.default_rng(2).standard_normal((10, 2))
    evals = []
    f = gauss_eps(sched)
    rtol, atol = 1e-6, 1e-8
    got, path = ode_adaptive(lambda x, t: evals.append(1) or f(x, t), sched, x_T, ts, rtol=rtol, atol=atol,
                             return_path=True)
    a = sched.alpha_bar_at(ts)
    tol = rk45_tol(len(evals), x_T.size, rtol, atol, np.abs(x_T).max() / np.sqrt(a[0]))
    assert path.shape == (len(ts) + 1, 10, 2) and np.array_equal(path[0], x_T) and np.array_equal(path[-1], got)
    for i in range(1, len(ts)):  # inner grid times (dense output) and the last one (the solver's end)
        want = exact_flow(x_T, a[0], sigma_of(a[i]), a[i])
        assert_bounded(path[i], want, tol, f"ode_adaptive state at t = {ts[i]}")
    exact = exact_flow(x_T, a[0], sigma_of(a[-1]), a[-1], x0_step=True)
    # The last step x~ - sigma eps* multiplies the error in z by lam / (lam + sigma^2) <= 1.
    assert_bounded(got, exact, tol, "ode_adaptive x_0")


def d4_tol(sched, ts, x, k=16):
    """(D4): Euler in x~ and DDIM in x are the same algebra in different roundings. Each carries
    numbers of the size of x~ = x / sqrt(a) <= |x| sqrt(1 + sigma_0^2) and cancels them down to
    O(1); k = 16 roundings a step between the two samplers, summed over the steps."""
    return roundoff_tol(sched, ts, x, k)


@pytest.mark.parametrize("name", SCHEDS)
@pytest.mark.parametrize("k", [5, 25])
def test_D4_ddim_eta0_on_the_integer_karras_grid_is_euler(name, k):
    sched, f = SCHEDS[name], EPS_MIX[name]
    grid = sampling_grid(sched, k, "karras", discrete=True)
    assert grid.dtype == np.int64
    x_T = np.random.default_rng(k).standard_normal((50, 2))
    got = ode(f, sched, x_T, grid, return_path=True)[1]
    want = ddim(f, sched, x_T, steps=k, spacing="karras", return_path=True)[1]
    assert_bounded(got, want, d4_tol(sched, grid, x_T), f"ode euler vs ddim eta=0 on {grid}")


# ---- 4. DDPM on the rounded karras grid samples its exact finite-step law ----------------------------

@pytest.mark.parametrize("name,variance", [("linear1000", "beta_tilde"), ("cosine500", "beta")])
def test_ddpm_on_the_rounded_karras_grid_has_its_exact_law(name, variance):
    sched, n = SCHEDS[name], 20000
    grid = sampling_grid(sched, 12, "karras", discrete=True)
    rng = np.random.default_rng(17)
    x = ddpm(gauss_eps(sched), sched, rng.standard_normal((n, 2)), rng, steps=12, spacing="karras",
             variance=variance)
    mean, var = exact_ddpm_moments(sched.alpha_bar, grid, variance, LAM, U.T @ M)  # per eigen-direction
    z = x @ U
    # The output is exactly Gaussian: a sample mean has standard error sqrt(var / n) and a sample
    # variance var sqrt(2 / (n - 1)). 5 SE: two-sided false alarm ~6e-7 per check, 4 checks.
    assert_bounded(z.mean(0), mean, 5 * np.sqrt(var / n), f"mean on {grid}")
    assert_bounded(z.var(0, ddof=1), var, 5 * var * np.sqrt(2 / (n - 1)), f"variance on {grid}")


# ---- 5. the noise-draw rule and a replay from the recorded draws ------------------------------------

class RecordingGenerator(np.random.Generator):
    """A numpy Generator that records every public method call: (name, args, kwargs, result)."""

    def __init__(self, seed):
        super().__init__(np.random.PCG64(seed))
        self.calls = []

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if name.startswith("_") or name == "calls" or not callable(attr):
            return attr
        calls = super().__getattribute__("calls")

        def recorded(*args, **kwargs):
            out = attr(*args, **kwargs)
            calls.append((name, args, kwargs, out))
            return out
        return recorded

    def draws(self):
        return [out for _, _, _, out in self.calls]


def check_calls(rng, x, count):
    """Exactly ``count`` calls, each standard_normal(x.shape, dtype=x.dtype) returning that."""
    summary = [(name, args, kwargs) for name, args, kwargs, _ in rng.calls]
    assert len(rng.calls) == count, f"{len(rng.calls)} calls, expected {count}: {summary}"
    for name, args, kwargs, out in rng.calls:
        size = args[0] if args else kwargs.get("size")
        dtype = args[1] if len(args) > 1 else kwargs.get("dtype", np.float64)
        assert name == "standard_normal" and tuple(size) == x.shape and np.dtype(dtype) == x.dtype, summary
        assert out.shape == x.shape and out.dtype == x.dtype, (out.shape, out.dtype)


def test_recording_generator_is_a_generator_and_records():
    from refdiff.arrays import check_rng
    rng = RecordingGenerator(0)
    assert check_rng(rng) is rng
    z = rng.standard_normal((2, 3), dtype=np.float32)
    rng.random(4)
    assert [c[0] for c in rng.calls] == ["standard_normal", "random"] and rng.calls[0][3] is z
    assert np.array_equal(z, np.random.default_rng(np.random.PCG64(0)).standard_normal((2, 3), dtype=np.float32))


def replay_ddpm(eps_fn, alpha_bar, ts, x_T, draws, variance):
    """Ho et al. (2020) Alg. 2 on the chain respaced to ts (decreasing): alpha_bar'_j = alpha_bar at
    the j-th smallest grid time (alpha_bar'_0 = 1), beta'_j = 1 - a_j / a_{j-1},
    x <- (x - beta' / sqrt(1 - a) eps) / sqrt(1 - beta') + sigma z, sigma^2 = beta_tilde' or beta',
    no noise at j = 1. Also returns the tolerance of ``ddpm_tol``."""
    ab = np.concatenate([[1.0], alpha_bar[np.sort(ts)]])
    draws, x, S, amp = list(draws), x_T, len(ts), 0.0
    for j in range(S, 0, -1):
        a, ap = ab[j], ab[j - 1]
        beta = 1 - a / ap
        eps = eps_fn(x, np.full(x.shape[0], ts[S - j]))
        x = (x - beta / np.sqrt(1 - a) * eps) / np.sqrt(1 - beta)
        if j > 1:
            var = (1 - ap) / (1 - a) * beta if variance == "beta_tilde" else beta
            x = x + np.sqrt(var) * draws.pop(0)
        amp += 1 / np.sqrt(1 - beta) + 1 / np.sqrt(beta)
    assert not draws, f"{len(draws)} draws left over"
    return x, amp


def replay_ddim(eps_fn, alpha_bar, ts, x_T, draws, eta):
    """Song et al. (2021) eq. 12 with sigma of eq. 16: x0 = (x - sqrt(1 - a) eps) / sqrt(a),
    x <- sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z, a_prev = 1 after the last
    grid time, a draw wherever sigma > 0."""
    draws, x, amp = list(draws), x_T, 0.0
    for t, tp in zip(ts, list(ts[1:]) + [0]):
        a, ap = alpha_bar[t], (alpha_bar[tp] if tp > 0 else 1.0)
        sigma = eta * np.sqrt((1 - ap) / (1 - a)) * np.sqrt(1 - a / ap)
        eps = eps_fn(x, np.full(x.shape[0], t))
        x = np.sqrt(ap) * (x - np.sqrt(1 - a) * eps) / np.sqrt(a) + np.sqrt(1 - ap - sigma ** 2) * eps
        if sigma > 0:
            x = x + sigma * draws.pop(0)
        amp += 1 / np.sqrt(a) + (1 / np.sqrt(1 - a / ap) if eta > 0 else 0.0)
    assert not draws, f"{len(draws)} draws left over"
    return x, amp


def replay_tol(amp, scale, k=16):
    """k = 16 roundings a step, each of the size of the largest intermediate: x / sqrt(1 - beta')
    (DDPM) or x / sqrt(a) (DDIM); and the noise scale, computed from 1 - a / a_prev, whose absolute
    round-off EPS64 becomes EPS64 / sqrt(1 - a / a_prev) relative in sigma. ``amp`` sums these
    factors over the steps. Gaussian data with variances below 1 makes every step contract the
    deviation from the mean, so earlier errors are not amplified. scale = max(1, |state|)."""
    return k * EPS64 * amp * scale


def ddpm_draw_count(grid):
    return len(grid) - 1  # every step but the last


def ddim_draw_count(sched, grid, eta):
    a = sched.alpha_bar[grid]
    ap = np.append(sched.alpha_bar[grid[1:]], 1.0)
    return int(np.sum(eta * np.sqrt((1 - ap) / (1 - a) * (1 - a / ap)) > 0))


DDPM_CASES = {  # name: (schedule key, steps, spacing, variance)
    "full": ("small", None, None, "beta_tilde"),
    "full-beta": ("small", None, None, "beta"),
    "respaced-trailing": ("linear1000", 25, "trailing", "beta_tilde"),
    "respaced-leading-beta": ("linear1000", 10, None, "beta"),
    "karras-cosine": ("cosine500", 10, "karras", "beta_tilde"),  # 10 asked, fewer unique steps
    "one-step": ("linear1000", 1, None, "beta_tilde"),
}
SCHED_OF = {**SCHEDS, "small": SMALL}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", DDPM_CASES)
def test_ddpm_draws_one_normal_per_step_but_the_last_and_replays(case, dtype):
    key, steps, spacing, variance = DDPM_CASES[case]
    sched, f = SCHED_OF[key], EPS_GAUSS[key]
    grid = sampling_grid(sched, np.arange(sched.T, 0, -1) if steps is None else steps, spacing, discrete=True)
    x_T = np.random.default_rng(5).standard_normal((7, 2)).astype(dtype)
    rng = RecordingGenerator(9)
    kw = {} if steps is None else {"steps": steps, "spacing": spacing}
    x0, path = ddpm(f, sched, x_T, rng, variance=variance, return_path=True, **kw)
    assert x0.dtype == dtype and path.dtype == dtype
    check_calls(rng, x_T, ddpm_draw_count(grid))
    if dtype == np.float64:
        want, amp = replay_ddpm(f, sched.alpha_bar, grid, x_T, rng.draws(), variance)
        assert_bounded(x0, want, replay_tol(amp, max(1.0, np.abs(path).max())), f"ddpm {case} vs replay")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("eta,steps,spacing", [(0.5, 20, None), (1.0, 12, "trailing"), (0.3, 8, "karras"),
                                               (0.0, 20, None), (0.0, 8, "karras")])
def test_ddim_draws_one_normal_per_noisy_step_and_replays(eta, steps, spacing, dtype):
    sched, f = COSINE, EPS_GAUSS["cosine500"]
    grid = sampling_grid(sched, steps, spacing, discrete=True)
    x_T = np.random.default_rng(6).standard_normal((7, 2)).astype(dtype)
    rng = RecordingGenerator(10)
    x0, path = ddim(f, sched, x_T, steps, eta=eta, spacing=spacing, rng=rng, return_path=True)
    assert x0.dtype == dtype
    count = ddim_draw_count(sched, grid, eta)
    assert count == (len(grid) - 1 if eta > 0 else 0)
    check_calls(rng, x_T, count)
    if dtype == np.float64:
        want, amp = replay_ddim(f, sched.alpha_bar, grid, x_T, rng.draws(), eta)
        assert_bounded(x0, want, replay_tol(amp, max(1.0, np.abs(path).max())), "ddim vs replay")


@pytest.mark.parametrize("run", [
    lambda f, x, rng: ode(f, SMALL, x, 6, rng=rng),
    lambda f, x, rng: ode(f, SMALL, x, karras_times(SMALL, 6), "heun", rng=rng),
    lambda f, x, rng: ode_adaptive(EPS_GAUSS["mild"], MILD, x, rng=rng, rtol=0.1, atol=0.1),
    lambda f, x, rng: ddim(f, SMALL, x, 6, eta=0.0, rng=rng),
    lambda f, x, rng: ddpm(f, SMALL, x, rng, steps=1),
], ids=["ode-euler", "ode-heun-karras", "ode_adaptive", "ddim-eta0", "ddpm-1-step"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_deterministic_samplers_draw_nothing(run, dtype):
    rng = RecordingGenerator(11)
    x = np.random.default_rng(0).standard_normal((3, 2)).astype(dtype)
    out = run(EPS_GAUSS["small"], x, rng)
    check_calls(rng, x, 0)
    assert out.dtype == dtype


# Random grids, by hypothesis (profile "ci": derandomized).

@st.composite
def int_grids(draw, T, max_size=10):
    """A random strictly decreasing subset of 1..T, sometimes holding T and 1."""
    ts = set(draw(st.lists(st.integers(1, T), min_size=1, max_size=max_size)))
    ts |= set(draw(st.sampled_from([(), (T,), (1,), (T, 1)])))
    return np.array(sorted(ts, reverse=True), dtype=np.int64)


@st.composite
def real_grids(draw, T, max_size=10):
    """A random strictly decreasing grid of real times in [1, T] (a model needs t >= 1)."""
    ts = set(draw(st.lists(st.floats(1.0, float(T), allow_nan=False), min_size=1, max_size=max_size)))
    return np.array(sorted(ts, reverse=True), dtype=np.float64)


@settings(max_examples=40)
@given(data=st.data(), name=st.sampled_from(sorted(SCHEDS)), seed=st.integers(0, 2 ** 32 - 1))
def test_random_integer_grids_replay_ddpm_and_ddim(data, name, seed):
    sched, f = SCHEDS[name], EPS_GAUSS[name]
    grid = data.draw(int_grids(sched.T), "grid")
    eta = data.draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0), "eta")
    variance = data.draw(st.sampled_from(["beta_tilde", "beta"]), "variance")
    x_T = np.random.default_rng(seed).standard_normal((4, 2))
    rng = RecordingGenerator(seed)
    x0, path = ddim(f, sched, x_T, grid, eta=eta, rng=rng, return_path=True)
    check_calls(rng, x_T, ddim_draw_count(sched, grid, eta))
    want, amp = replay_ddim(f, sched.alpha_bar, grid, x_T, rng.draws(), eta)
    assert_bounded(x0, want, replay_tol(amp, max(1.0, np.abs(path).max())), f"ddim eta={eta} on {grid}")
    rng = RecordingGenerator(seed)
    x0, path = ddpm(f, sched, x_T, rng, steps=grid, variance=variance, return_path=True)
    check_calls(rng, x_T, ddpm_draw_count(grid))
    want, amp = replay_ddpm(f, sched.alpha_bar, grid, x_T, rng.draws(), variance)
    assert_bounded(x0, want, replay_tol(amp, max(1.0, np.abs(path).max())), f"ddpm {variance} on {grid}")


@settings(max_examples=40)
@given(data=st.data(), name=st.sampled_from(sorted(SCHEDS)), seed=st.integers(0, 2 ** 32 - 1))
def test_random_grids_euler_is_ddim_on_integers_and_x_tilde_euler_on_reals(data, name, seed):
    sched, f = SCHEDS[name], EPS_MIX[name]
    x_T = np.random.default_rng(seed).standard_normal((4, 2))
    grid = data.draw(int_grids(sched.T), "integer grid")
    assert_bounded(ode(f, sched, x_T, grid), ddim(f, sched, x_T, grid), d4_tol(sched, grid, x_T),
                   f"(D4) on {grid}")
    grid = data.draw(real_grids(sched.T), "real grid")
    # Euler of (D4) written out: x~ = x / sqrt(a), x~' = x~ + (s' - s) eps(x, t), x' = sqrt(a') x~',
    # with a = alpha_bar_at(t) of (S6) (the model reads the same alpha_bar) and t_prev = 0 last.
    got = ode(f, sched, x_T, grid)
    x = x_T
    for t, tp in zip(grid, list(grid[1:]) + [0.0]):
        a, ap = float(sched.alpha_bar_at(t)), float(sched.alpha_bar_at(tp))
        x = np.sqrt(ap) * (x / np.sqrt(a) + (sigma_of(ap) - sigma_of(a)) * f(x, np.full(4, t)))
    assert_bounded(got, x, d4_tol(sched, grid, x_T), f"euler on the real grid {grid}")


# ---- 6. ode_adaptive: default grid, callback, path -------------------------------------------------

@pytest.mark.parametrize("sched", [MILD, Schedule.from_betas([0.3])], ids=["T50", "T1"])
def test_ode_adaptive_default_grid_is_T_then_1(sched):
    f = GaussianMixture([1.0], [[0.7]], [[[0.3]]]).eps_model(sched)
    x = np.random.default_rng(0).standard_normal((5, 1))
    explicit = np.array([sched.T, 1]) if sched.T > 1 else np.array([1])
    a = ode_adaptive(f, sched, x, rtol=1e-3, atol=1e-5, return_path=True)
    b = ode_adaptive(f, sched, x, explicit, rtol=1e-3, atol=1e-5, return_path=True)
    assert_same_bits(a[0], b[0], "x_0")
    assert_same_bits(a[1], b[1], "path")
    assert a[1].shape == (len(explicit) + 1, 5, 1)


@pytest.mark.parametrize("grid", [np.array([50, 30, 7, 1]), karras_times(MILD, 5), np.array([20.5]),
                                  np.array([50.0, 2.5])], ids=["int", "karras", "one-point", "two-point"])
def test_ode_adaptive_callback_and_path(grid):
    sched, f = MILD, EPS_GAUSS["mild"]
    x_T = np.random.default_rng(3).standard_normal((6, 2))
    seen = []
    x0, path = ode_adaptive(f, sched, x_T, grid, rtol=1e-4, atol=1e-6, return_path=True,
                            callback=lambda t, x, eps: seen.append((t, x.copy(), eps.copy())))
    # One call per grid time: the interval (or, last, the x0 step) starting there.
    assert [t for t, _, _ in seen] == list(grid), [t for t, _, _ in seen]
    assert path.shape == (len(grid) + 1, 6, 2) and len(seen) == len(grid)
    assert np.array_equal(path[0], x_T) and np.array_equal(path[-1], x0)
    ts = list(grid) + [0]
    for i, (t, x, eps) in enumerate(seen):
        assert x.shape == eps.shape == (6, 2)
        assert np.array_equal(x, path[i + 1])
        # The reported eps is the interval's average slope: x~' = x~ + (s' - s) eps. x~ is recovered
        # from the stored state x = sqrt(a) x~ (one rounding each way) and eps from a difference
        # quotient, so the identity holds to a few roundings of the largest term involved.
        a, ap = float(sched.alpha_bar_at(ts[i])), float(sched.alpha_bar_at(ts[i + 1]))
        xt, xt_next, ds = path[i] / np.sqrt(a), path[i + 1] / np.sqrt(ap), sigma_of(ap) - sigma_of(a)
        size = np.abs(xt).max() + np.abs(xt_next).max() + np.abs(ds * eps).max()
        assert_bounded(xt_next, xt + ds * eps, 8 * EPS64 * size, f"average slope of interval {i}")
    # The last step is the Euler (x0) step with the eps at the last grid state. The sampler
    # evaluates it at sqrt(a) x~, which may differ from the stored path[-2] by a rounding (with a
    # one-point grid path[-2] is x_T itself, and sqrt(a) (x_T / sqrt(a)) != x_T in general); eps*
    # is linear with slope sqrt(1 - a) / (a lam + 1 - a) per direction, so 4 roundings of |x| times it.
    a = float(sched.alpha_bar_at(grid[-1]))
    slope = (np.sqrt(1 - a) / (a * LAM + 1 - a)).max()
    want = f(path[-2], np.full(6, grid[-1]))
    assert_bounded(seen[-1][2], want, 4 * EPS64 * np.abs(path[-2]).max() * slope + 4 * EPS64 * np.abs(want).max(),
                   "eps of the last step")


# ---- 7. bad input --------------------------------------------------------------------------------

F_SMALL = EPS_GAUSS["small"]
X4 = np.zeros((4, 2))
CALLS = {
    "ddpm": lambda steps=None, **kw: ddpm(F_SMALL, SMALL, X4, kw.pop("rng", np.random.default_rng(0)),
                                          steps=steps, **kw),
    "ddim": lambda steps, **kw: ddim(F_SMALL, SMALL, X4, steps, **kw),
    "ode": lambda steps, **kw: ode(F_SMALL, SMALL, X4, steps, **kw),
    "ode_adaptive": lambda steps=None, **kw: ode_adaptive(F_SMALL, SMALL, X4, steps, **kw),
}
BAD_STEPS = {
    "increasing": np.array([1, 5]), "repeated": np.array([5, 5, 1]), "zero": np.array([5, 0]),
    "negative": np.array([5, -1]), "above-T": np.array([51, 5]), "real-above-T": np.array([50.5, 5.0]),
    "2-D": np.array([[5, 1]]), "empty": np.array([]), "empty-list": [], "nan": np.array([5.0, np.nan]),
    "inf": np.array([np.inf, 1.0]), "string": "10", "bool": True, "bool-false": False,
    "bool-array": np.array([True, False]), "strings": ["b", "a"], "count-0": 0, "count-above-T": 51,
    "count-real": 10.5, "count-whole-float": 10.0, "complex": np.array([5 + 0j, 1]),
    "ragged": [[5, 3], [1]],  # numpy cannot make an array of it: the message must still name steps
}


def _raises(call, word, *args, **kwargs):
    with pytest.raises(ValueError, match=rf"\b{word}\b") as info:
        call(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("bad", list(BAD_STEPS.values()), ids=list(BAD_STEPS))
@pytest.mark.parametrize("sampler", CALLS)
def test_bad_steps_raise_naming_steps(sampler, bad):
    _raises(CALLS[sampler], "steps", bad)


@pytest.mark.parametrize("sampler", ["ddim", "ode"])
def test_steps_none_raises_for_samplers_that_need_a_grid(sampler):
    _raises(CALLS[sampler], "steps", None)


@pytest.mark.parametrize("sampler", CALLS)
@pytest.mark.parametrize("spacing", ["leading", "karras", "even"])
def test_spacing_with_an_explicit_grid_raises_naming_spacing(sampler, spacing):
    _raises(CALLS[sampler], "spacing", np.array([40, 20, 1]), spacing=spacing)


@pytest.mark.parametrize("sampler", CALLS)
@pytest.mark.parametrize("spacing", ["even", "Leading", "", "karas"])
def test_unknown_spacing_raises_naming_spacing(sampler, spacing):
    _raises(CALLS[sampler], "spacing", 5, spacing=spacing)


@pytest.mark.parametrize("sampler", ["ddpm", "ode_adaptive"])
def test_spacing_without_steps_raises_naming_spacing(sampler):
    _raises(CALLS[sampler], "spacing", spacing="trailing")


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("grid", [np.array([40.5, 20.0, 1.0]), np.array([40.0, 20.0, 1.5]), [30, 2.25]])
def test_real_grid_raises_for_the_discrete_samplers(sampler, grid):
    msg = _raises(CALLS[sampler], "steps", grid)
    assert re.search(r"integer", msg), msg


@pytest.mark.parametrize("rng", [123, np.random.RandomState(0), "seed", np.random.PCG64(0), [1, 2]],
                         ids=["int", "RandomState", "str", "bitgen", "list"])
@pytest.mark.parametrize("sampler", ["ode", "ode_adaptive", "ddim-eta0", "ddim-eta0.5", "ddpm"])
def test_non_generator_rng_raises_naming_rng(sampler, rng):
    call = CALLS[sampler.split("-")[0]]
    kw = {"eta": 0.5} if sampler == "ddim-eta0.5" else {}
    _raises(call, "rng", 5, rng=rng, **kw)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_whole_valued_float_grids_are_the_int_grid(sampler):
    f = EPS_GAUSS["small"]
    x = np.random.default_rng(4).standard_normal((5, 2))
    ints = np.array([50, 33, 8, 2, 1])
    for floats in (ints.astype(np.float64), ints.astype(np.float32), list(map(float, ints))):
        if sampler == "ddpm":
            a = ddpm(f, SMALL, x, np.random.default_rng(1), steps=floats, return_path=True)
            b = ddpm(f, SMALL, x, np.random.default_rng(1), steps=ints, return_path=True)
        else:
            a = ddim(f, SMALL, x, floats, eta=0.7, rng=np.random.default_rng(1), return_path=True)
            b = ddim(f, SMALL, x, ints, eta=0.7, rng=np.random.default_rng(1), return_path=True)
        assert_same_bits(a[1], b[1], f"{sampler} whole floats {type(floats).__name__}")
    assert sampling_grid(SMALL, ints.astype(float), discrete=True).dtype == np.int64
    assert sampling_grid(SMALL, ints.astype(float)).dtype == np.float64


# ---- 8. backward compatibility of the call forms --------------------------------------------------

def test_old_call_forms_still_work_and_equal_the_keyword_forms():
    f, fm = EPS_GAUSS["small"], EPS_GAUSS["mild"]
    x = np.random.default_rng(8).standard_normal((5, 2))
    g = lambda: np.random.default_rng(21)
    pairs = {
        "ddpm(f, s, x, rng)": (ddpm(f, SMALL, x, g()), ddpm(f, SMALL, x, rng=g(), steps=np.arange(50, 0, -1))),
        "ddpm(..., steps=10, spacing='trailing')": (
            ddpm(f, SMALL, x, g(), steps=10, spacing="trailing"),
            ddpm(eps_fn=f, sched=SMALL, x_T=x, rng=g(), steps=SMALL.timesteps(10, "trailing"))),
        "ddim(f, s, x, 10, eta=1.0, rng=rng)": (
            ddim(f, SMALL, x, 10, eta=1.0, rng=g()), ddim(f, SMALL, x, steps=SMALL.timesteps(10), eta=1.0, rng=g())),
        "ode(f, s, x, 10, 'heun', spacing='linspace')": (
            ode(f, SMALL, x, 10, "heun", spacing="linspace"),
            ode(f, SMALL, x, steps=SMALL.timesteps(10, "linspace"), method="heun", rng=g())),
        "ode_adaptive(f, s, x, rtol=1e-5, atol=1e-7)": (
            ode_adaptive(fm, MILD, x, rtol=1e-5, atol=1e-7),
            ode_adaptive(fm, MILD, x, steps=np.array([50, 1]), rtol=1e-5, atol=1e-7, rng=g())),
    }
    for form, (old, new) in pairs.items():
        assert old.shape == x.shape and np.all(np.isfinite(old)), form
        assert_same_bits(old, new, form)
