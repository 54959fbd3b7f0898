"""Euler ancestral (D7) and DPM-Solver++(2M) (D8) in refdiff/samplers.py.

Euler ancestral is checked against DDIM, which it equals: bit for bit at eta = 0, to round-off
with the same draws at eta > 0, and through the identity of the two noise levels (hypothesis).
DPM-Solver++(2M) is checked against an independent transcription of Lu et al.'s Algorithm 2 in
Karras et al.'s variables (k-diffusion's form, written here from the paper), against DDIM on
its first-order first step, and by its convergence order on the exact oracle against an RK45
solution at rtol 1e-8.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import toy_data
from refdiff.guidance import classifier_free_guidance
from refdiff.samplers import ddim, dpmpp_2m, euler_ancestral, karras_times, ode, ode_adaptive
from refdiff.schedule import Schedule

SCHED = Schedule.linear(1000)
MIX = toy_data.mixture("three_gaussians")
EPS = MIX.eps_model(SCHED)


def conditional(n):
    y = np.arange(n) % 3
    return lambda x, t: EPS(x, t, y)


def start(n, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal((n, 2)).astype(dtype)


# ---- (D7) Euler ancestral ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "karras"])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_euler_ancestral_at_eta_0_is_ddim_bit_for_bit(dtype, spacing, steps):
    x_T = start(60, dtype=dtype)
    want = ddim(conditional(60), SCHED, x_T, steps, spacing=spacing)
    got = euler_ancestral(conditional(60), SCHED, x_T, steps, eta=0.0, spacing=spacing)
    assert got.dtype == dtype and np.array_equal(got, want), np.abs(got - want).max()


@pytest.mark.parametrize("eta", [0.3, 1.0])
@pytest.mark.parametrize("steps", [5, 50])
def test_euler_ancestral_is_ddim_with_the_same_eta_and_draws(eta, steps):
    x_T = start(200, seed=1)
    want = ddim(conditional(200), SCHED, x_T, steps, eta=eta, rng=np.random.default_rng(7))
    got = euler_ancestral(conditional(200), SCHED, x_T, steps, eta=eta, rng=np.random.default_rng(7))
    # the two noise levels agree to round-off ((D7)); |x| <= ~4, so float64 round-off over 50 steps
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@given(st.floats(1e-6, 1 - 1e-6), st.floats(1e-6, 1 - 1e-6), st.floats(0, 1))
def test_D7_the_ancestral_noise_carried_back_to_x_is_ddims_sigma(a1, a2, eta):
    a, a_prev = min(a1, a2), max(a1, a2)  # a step goes toward the data: a_prev >= a
    s, s_prev = np.sqrt((1 - a) / a), np.sqrt((1 - a_prev) / a_prev)
    s_up = min(s_prev, eta * np.sqrt(s_prev ** 2 * (s ** 2 - s_prev ** 2) / s ** 2))
    ddim_sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    assert np.sqrt(a_prev) * s_up == pytest.approx(ddim_sigma, rel=1e-9, abs=1e-12)
    # and the deterministic part: sqrt(a_prev) sigma_down is DDIM's sqrt(1 - a_prev - sigma^2)
    s_down = np.sqrt(s_prev ** 2 - s_up ** 2)
    assert np.sqrt(a_prev) * s_down == pytest.approx(np.sqrt(max(1 - a_prev - ddim_sigma ** 2, 0)), rel=1e-7,
                                                     abs=1e-9)


class CountingGenerator(np.random.Generator):
    """A Generator that counts its standard_normal draws and records their shapes and dtypes."""

    def __init__(self, seed):
        super().__init__(np.random.PCG64(seed))
        self.draws = []

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        self.draws.append((size, np.dtype(dtype)))
        return super().standard_normal(size, dtype=dtype, out=out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_euler_ancestral_draws_once_per_step_but_the_last(dtype):
    rng = CountingGenerator(3)
    x = euler_ancestral(conditional(10), SCHED, start(10, dtype=dtype), 12, rng=rng)
    assert x.dtype == dtype and rng.draws == [((10, 2), np.dtype(dtype))] * 11


def test_euler_ancestral_refuses_bad_arguments():
    with pytest.raises(ValueError, match=r"\beta\b"):
        euler_ancestral(conditional(4), SCHED, start(4), 5, eta=-0.1, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\brng\b"):
        euler_ancestral(conditional(4), SCHED, start(4), 5)  # eta = 1 draws noise: rng is needed
    with pytest.raises(ValueError, match=r"\bsteps\b"):
        euler_ancestral(conditional(4), SCHED, start(4), np.array([500.5, 10.0]), rng=np.random.default_rng(0))


# ---- (D8) DPM-Solver++(2M) ---------------------------------------------------------------------
def dpmpp_2m_in_sigma(eps_fn, sched, x_T, ts):
    """Lu et al. (2022b) Alg. 2 written independently, in Karras et al.'s variables: x~ = x / sqrt(a),
    sigma~ = sqrt((1 - a) / a), lambda = -log sigma~, data prediction D = x~ - sigma~ eps."""
    sigmas = [float(sched.sigma_at(t)) for t in ts] + [0.0]
    times = list(ts) + [0]
    x, old = x_T / np.sqrt(float(sched.alpha_bar_at(ts[0]))), None
    for i in range(len(ts)):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = x - s * eps_fn(x / np.sqrt(1 + s ** 2), np.full(len(x), times[i]))
        if s_next == 0:
            return denoised
        h = np.log(s) - np.log(s_next)
        if old is not None:
            r = (np.log(sigmas[i - 1]) - np.log(s)) / h
            denoised, old = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * old, denoised
        else:
            old = denoised
        x = (s_next / s) * x - np.expm1(-h) * denoised
    raise AssertionError("the grid must end with a step to 0")


@pytest.mark.parametrize("grid", ["karras", "integers", "reals"])
@pytest.mark.parametrize("w", [0.0, 3.0])
def test_dpmpp_2m_is_lu_et_al_algorithm_2(grid, w):
    ts = {"karras": karras_times(SCHED, 15), "integers": SCHED.timesteps(15, "trailing"),
          "reals": np.linspace(999.5, 1.25, 15)}[grid]
    y = np.arange(100) % 3
    eps_fn = classifier_free_guidance(EPS, y, w)
    x_T = start(100, seed=4)
    got = dpmpp_2m(eps_fn, SCHED, x_T, ts)
    want = dpmpp_2m_in_sigma(eps_fn, SCHED, x_T, ts)
    # two float64 orders of the same arithmetic over 15 steps, |x| <= ~10 at w = 3
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-11)


def test_dpmpp_2m_first_step_is_ddims_and_one_step_is_x0_hat():
    x_T, ts = start(50, seed=5), SCHED.timesteps(10, "leading")
    _, path = dpmpp_2m(conditional(50), SCHED, x_T, ts, return_path=True)
    _, ddim_path = ddim(conditional(50), SCHED, x_T, ts, return_path=True)
    np.testing.assert_allclose(path[1], ddim_path[1], rtol=0, atol=1e-13)  # first order: DDIM exactly
    assert np.abs(path[2] - ddim_path[2]).max() > 1e-6  # the second step is not DDIM's
    one = dpmpp_2m(conditional(50), SCHED, x_T, 1)
    np.testing.assert_allclose(one, ddim(conditional(50), SCHED, x_T, 1), rtol=0, atol=1e-13)


def test_dpmpp_2m_keeps_float32_and_refuses_a_bad_rng():
    x = dpmpp_2m(conditional(8), SCHED, start(8, dtype=np.float32), 10)
    assert x.dtype == np.float32 and np.all(np.isfinite(x))
    with pytest.raises(ValueError, match=r"\brng\b"):
        dpmpp_2m(conditional(8), SCHED, start(8), 10, rng=3)


# ---- convergence order on the exact oracle -------------------------------------------------------
SAMPLERS = {"euler": lambda f, x, g: ode(f, SCHED, x, g), "heun": lambda f, x, g: ode(f, SCHED, x, g, "heun"),
            "dpmpp_2m": lambda f, x, g: dpmpp_2m(f, SCHED, x, g)}
ORDERS = {"euler": 1, "heun": 2, "dpmpp_2m": 2}


@pytest.fixture(scope="module")
def reference():
    """x_0 of the exact probability-flow ODE from one x_T (RK45, rtol 1e-8: its error is far below the 2e-4 of the finest grid), unguided and at w = 3."""
    x_T, y = start(100, seed=6), np.arange(100) % 3
    fns = {w: classifier_free_guidance(EPS, y, w) for w in (0.0, 3.0)}
    return x_T, fns, {w: ode_adaptive(f, SCHED, x_T, rtol=1e-8, atol=1e-10) for w, f in fns.items()}


@pytest.mark.parametrize("w", [0.0, 3.0])
@pytest.mark.parametrize("name", SAMPLERS)
def test_global_error_falls_at_the_solvers_order_on_karras_grids(name, w, reference):
    # Every grid ends at t = 1, where all three (and the reference) take the same x0_hat step, so
    # the error is the path's. Slopes fitted over 40..160 steps; measured on this x_T: Euler 0.99 and
    # 1.01, Heun 2.06 and 2.20, DPM-Solver++(2M) 2.09 and 2.20 (w = 0, 3), as on docs/samplers.md's.
    x_T, fns, ref = reference
    counts = np.array([40, 80, 160])
    errors = [np.sqrt(np.mean((SAMPLERS[name](fns[w], x_T, karras_times(SCHED, s)) - ref[w]) ** 2)) for s in counts]
    slope = -np.polyfit(np.log(counts), np.log(errors), 1)[0]
    assert abs(slope - ORDERS[name]) < 0.3, (name, w, errors, slope)
