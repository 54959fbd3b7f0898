"""Euler ancestral (D7), DPM-Solver++(2M) (D8), DDIM inversion (D9) and thresholding (D10) in
refdiff/samplers.py.

Euler ancestral is checked against DDIM, which it equals: bit for bit at eta = 0, to round-off
with the same draws at eta > 0, and through the identity of the two noise levels (hypothesis).
DPM-Solver++(2M) is checked against an independent transcription of Lu et al.'s Algorithm 2 in
Karras et al.'s variables (k-diffusion's form, written here from the paper), against DDIM on
its first-order first step, and by its convergence order on the exact oracle against an RK45
solution at rtol 1e-8. DDIM inversion is checked step by step on an affine eps and by its
first-order round trip on the oracle; thresholding by the x0_hat its eps gives (hypothesis) and
on a mixture inside the box, unguided and at w = 20, and by recomputing the docs' table of
fidelity, spread and samples outside the box at w = 0-30.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import toy_data
from refdiff.oracle import GaussianMixture
from refdiff.guidance import classifier_free_guidance
from refdiff.samplers import (clipped, ddim, ddim_invert, dpmpp_2m, dpmpp_2m_sde, dpmpp_2s, edm, euler_ancestral,
                              karras_times, model_time, ode, ode_adaptive, thresholded)
from refdiff.schedule import Schedule

SCHED = Schedule.linear(1000)
DOCS = Path(__file__).resolve().parents[1] / "docs"
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
            "dpmpp_2m": lambda f, x, g: dpmpp_2m(f, SCHED, x, g), "dpmpp_2s": lambda f, x, g: dpmpp_2s(f, SCHED, x, g)}
ORDERS = {"euler": 1, "heun": 2, "dpmpp_2m": 2, "dpmpp_2s": 2}


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
    # 1.01, Heun 2.06 and 2.20, DPM-Solver++(2M) 2.09 and 2.20, (2S) 1.99 and 2.01 (w = 0, 3), as on
    # docs/samplers.md's.
    x_T, fns, ref = reference
    counts = np.array([40, 80, 160])
    errors = [np.sqrt(np.mean((SAMPLERS[name](fns[w], x_T, karras_times(SCHED, s)) - ref[w]) ** 2)) for s in counts]
    slope = -np.polyfit(np.log(counts), np.log(errors), 1)[0]
    assert abs(slope - ORDERS[name]) < 0.3, (name, w, errors, slope)


# ---- (D9) DDIM inversion -----------------------------------------------------------------------
def test_D9_inverting_then_ddim_returns_x0_with_an_error_falling_at_first_order():
    x0, y = MIX.sample(300, np.random.default_rng(8))
    eps_fn = lambda x, t: EPS(x, t, y)
    counts = np.array([20, 50, 100, 200])
    errors = [np.sqrt(np.mean((ddim(eps_fn, SCHED, ddim_invert(eps_fn, SCHED, x0, s), s) - x0) ** 2)) for s in counts]
    slope = -np.polyfit(np.log(counts), np.log(errors), 1)[0]
    # measured: 0.112, 0.052, 0.028, 0.014 and slope 0.90 (one draw of 300 points; docs/samplers.md, (D9))
    assert all(np.diff(errors) < 0) and abs(slope - 1) < 0.2 and errors[-1] < 0.02, (errors, slope)


def test_D9_each_step_is_c1_at_the_source_and_p1_at_the_target():
    x0, ts = start(40, seed=9), SCHED.timesteps(5, "leading")
    seen = []
    eps_fn = lambda x, t: (seen.append(int(t[0])) or 0.1 * x + 0.05)  # affine: every step checkable by hand
    x, path = ddim_invert(eps_fn, SCHED, x0, ts, return_path=True)
    assert seen == list(ts[::-1])  # eps_fn at each target time, the grid walked upward
    sources, a = np.append(0, ts[::-1][:-1]), SCHED.alpha_bar
    for k, (s, t) in enumerate(zip(sources, ts[::-1])):
        eps = 0.1 * path[k] + 0.05
        want = np.sqrt(a[t]) * (path[k] - np.sqrt(1 - a[s]) * eps) / np.sqrt(a[s]) + np.sqrt(1 - a[t]) * eps
        np.testing.assert_allclose(path[k + 1], want, rtol=1e-14, atol=1e-14)
    assert np.array_equal(x, path[-1]) and path.shape == (len(ts) + 1, 40, 2)


# ---- (D10) thresholding --------------------------------------------------------------------------
def boxed_mixture():
    """Three overlapping labelled Gaussians inside [-1, 1]^2 (std 0.15 about (+-0.3, -0.3) and (0, 0.3);
    less than 1e-5 of the mass outside), as image data in [-1, 1] is."""
    from refdiff.oracle import GaussianMixture
    means = np.array([[-0.3, -0.3], [0.3, -0.3], [0.0, 0.3]])
    return GaussianMixture(np.ones(3), means, np.tile(0.0225 * np.eye(2), (3, 1, 1)), labels=[0, 1, 2])


@given(st.integers(0, 2 ** 32 - 1), st.floats(0.5, 1.0), st.floats(1.0, 5.0), st.integers(1, 999))
def test_D10_thresholded_eps_gives_the_thresholded_x0(seed, percentile, max_value, t):
    rng = np.random.default_rng(seed)
    x, raw = 3 * rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    eps = thresholded(lambda x, t: raw, SCHED, percentile, max_value)(x, np.full(6, t))
    a = SCHED.alpha_bar[t]
    x0_hat = (x - np.sqrt(1 - a) * raw) / np.sqrt(a)
    s = np.clip(np.quantile(np.abs(x0_hat), percentile, axis=1, keepdims=True), 1, max_value)
    got = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)  # the x0_hat the returned eps gives (C1)
    np.testing.assert_allclose(got, np.clip(x0_hat, -s, s) / s, rtol=1e-9, atol=1e-9 * np.abs(x0_hat).max())
    assert np.all(np.abs(got) <= 1 + 1e-9)


def test_D10_clipped_and_thresholded_take_real_times_and_keep_float32():
    x = start(5, dtype=np.float32) * 4
    for wrapped in (clipped(lambda x, t: np.zeros_like(x), SCHED, -1.0, 1.0),
                    thresholded(lambda x, t: np.zeros_like(x), SCHED)):
        eps = wrapped(x, np.full(5, 412.5))
        a = SCHED.alpha_bar_at(412.5)
        assert eps.dtype == np.float32
        x0 = (x.astype(np.float64) - np.sqrt(1 - a) * eps) / np.sqrt(a)
        assert np.abs(x0).max() <= 1 + 1e-5, x0  # x / sqrt(a) clipped into the box


def test_D10_inside_the_box_thresholding_changes_nothing_and_at_large_w_it_keeps_samples_in():
    mix, n = boxed_mixture(), 600
    eps_model, y, x_T = mix.eps_model(SCHED), np.arange(n) % 3, start(n, seed=10)
    plain = ddim(classifier_free_guidance(eps_model, y, 0.0), SCHED, x_T, 50)
    boxed = ddim(thresholded(classifier_free_guidance(eps_model, y, 0.0), SCHED), SCHED, x_T, 50)
    # unguided, the exact x0_hat stays in the box at every step: nothing moves but round-off
    # (measured: at most 4e-16)
    assert np.abs(boxed - plain).max() < 1e-12
    strong = classifier_free_guidance(eps_model, y, 20.0)
    assert np.abs(ddim(strong, SCHED, x_T, 50)).max() > 1.1  # CFG at w = 20 throws 5% of the samples out
    assert np.abs(ddim(thresholded(strong, SCHED), SCHED, x_T, 50)).max() <= 1
    assert np.abs(ddim(clipped(strong, SCHED), SCHED, x_T, 50)).max() <= 1


def measure_samplers():
    """docs/measure_samplers.py as a module (BOXED, boxed_runs, boxed_cell)."""
    spec = importlib.util.spec_from_file_location("measure_samplers", DOCS / "measure_samplers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_D10_docs_table():
    # Every cell of docs/samplers.md's (D10) table recomputed (deterministic: DDIM from one seeded
    # x_T), and the prose: thresholding at max_value 1 is clipping bit for bit; the spread shrinks by
    # 8% (clipped) and 13% (max_value 2) at w = 30; at w = 3 the rules change samples none of which
    # leaves the box.
    module = measure_samplers()
    section = (DOCS / "samplers.md").read_text().split("## (D10)")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| w ")]
    assert [float(r.split("|")[1]) for r in rows] == list(module.BOXED_WS)
    spreads = {}
    for row, w in zip(rows, module.BOXED_WS):
        runs, y = module.boxed_runs(w)
        assert np.array_equal(runs["thresholded"], runs["clipped"]), w
        got = [module.boxed_cell(runs[v], y) for v in ("plain", "clipped", "thresholded, max_value 2")]
        assert [c.strip() for c in row.strip(" |").split("|")[1:]] == got, (w, got)
        spreads[w] = {v: module.class_spread(x, y, 3).mean() for v, x in runs.items()}
        if w == 3.0:
            assert not np.array_equal(runs["plain"], runs["clipped"]) and np.abs(runs["plain"]).max() < 1
    plain = spreads[30.0]["plain"]
    assert round(1 - spreads[30.0]["clipped"] / plain, 2) == 0.08
    assert round(1 - spreads[30.0]["thresholded, max_value 2"] / plain, 2) == 0.13


def test_D9_D10_refuse_bad_arguments():
    f = lambda x, t: np.zeros_like(x)
    for call, name in ((lambda: thresholded(f, SCHED, percentile=0.0), "percentile"),
                       (lambda: thresholded(f, SCHED, max_value=0.5), "max_value"),
                       (lambda: clipped(f, SCHED, 1.0, -1.0), "low"),
                       (lambda: ddim_invert(f, SCHED, start(3), 5, rng=3), "rng"),
                       (lambda: ddim_invert(f, SCHED, start(3), np.array([10.5, 2.0])), "steps")):
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            call()


# ---- (D11) Karras et al.'s stochastic sampler ------------------------------------------------------
@pytest.mark.parametrize("grid", [20, "karras"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_D11_edm_without_churn_is_heun_bit_for_bit(grid, dtype):
    ts = karras_times(SCHED, 20) if grid == "karras" else grid
    x_T = start(50, seed=11, dtype=dtype)
    got = edm(conditional(50), SCHED, x_T, ts)
    assert got.dtype == dtype and np.array_equal(got, ode(conditional(50), SCHED, x_T, ts, "heun"))


@pytest.mark.parametrize("s_tmax, expected_draws", [(20.0, None), (None, 10)])
def test_D11_churn_adds_the_stated_noise_and_never_passes_T(s_tmax, expected_draws):
    # With eps = 0 every Heun step keeps x~ = x / sqrt(a): x_0 is x~_T plus the churn noise alone,
    # s_noise sqrt(sigma_hat^2 - sigma^2) z on each churned step, sigma_hat = min((1 + gamma) sigma, sigma(T)).
    # Without s_tmax every step churns but the first (at T the cap leaves nothing to add) and the last
    # (sigma(1) = 0.01 < s_tmin).
    ts, s_churn, s_noise = karras_times(SCHED, 12), 6.0, 0.7
    rng, x_T, times = CountingGenerator(12), start(30, seed=12), []
    x = edm(lambda x, t: (times.append(float(t[0])) or np.zeros_like(x)), SCHED, x_T, ts, s_churn=s_churn,
            s_tmin=0.05, s_tmax=s_tmax, s_noise=s_noise, rng=rng)
    replay, want = np.random.default_rng(12), x_T / np.sqrt(SCHED.alpha_bar_at(ts[0]))
    gamma, s_max, draws = min(s_churn / len(ts), np.sqrt(2) - 1), SCHED.sigma_at(SCHED.T), 0
    for t in ts:
        s = SCHED.sigma_at(t)
        s_hat = min((1 + gamma) * s, s_max) if 0.05 <= s <= (s_tmax or np.inf) else s
        if s_hat > s:
            want = want + s_noise * np.sqrt(s_hat ** 2 - s ** 2) * replay.standard_normal(want.shape)
            draws += 1
    np.testing.assert_allclose(x, want, rtol=1e-12, atol=1e-12)
    assert len(rng.draws) == draws and 0 < draws < len(ts)  # s_tmin (and s_tmax) and the cap leave some out
    assert expected_draws in (None, draws) and max(times) <= SCHED.T


def test_D11_edm_with_churn_samples_the_data():
    # DDPM-like fresh noise: 30 Karras steps with s_churn = 40 pass the two-sample test against 2000
    # true points (energy distance, permutation threshold at alpha = 0.01); measured p = 0.56.
    from refdiff.metrics import two_sample_test
    x = edm(lambda x, t: EPS(x, t), SCHED, start(2000, seed=0), karras_times(SCHED, 30), s_churn=40.0,
            rng=np.random.default_rng(1))
    assert two_sample_test(x, MIX.sample(2000, np.random.default_rng(5))[0], np.random.default_rng(2)).passed


def test_D11_edm_refuses_bad_arguments():
    f = lambda x, t: np.zeros_like(x)
    for kwargs, name in (({"s_churn": -1.0, "rng": np.random.default_rng(0)}, "s_churn"), ({"s_churn": 1.0}, "rng"),
                         ({"s_tmax": -2.0}, "s_tmax"), ({"s_noise": float("nan")}, "s_noise")):
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            edm(f, SCHED, start(3), 5, **kwargs)


# ---- (D12) DPM-Solver++(2S) and (D13) DPM-Solver++(2M) SDE ---------------------------------------
def test_D12_dpmpp_2s_calls_the_model_at_the_midpoint_in_lambda():
    ts, times = karras_times(SCHED, 6), []
    dpmpp_2s(lambda x, t: (times.append(float(t[0])) or EPS(x, t)), SCHED, start(20, seed=13), ts)
    mids = [model_time(SCHED, np.sqrt(SCHED.sigma_at(t) * SCHED.sigma_at(t_prev))) for t, t_prev in zip(ts, ts[1:])]
    want = [v for pair in zip(ts[:-1], mids) for v in pair] + [ts[-1]]  # two calls a step, one on the last
    np.testing.assert_allclose(times, want, rtol=1e-12)


def test_D12_dpmpp_2s_one_step_is_x0_hat_and_float32_stays():
    x_T = start(30, seed=14)
    np.testing.assert_allclose(dpmpp_2s(conditional(30), SCHED, x_T, 1), ddim(conditional(30), SCHED, x_T, 1),
                               rtol=0, atol=1e-13)
    assert dpmpp_2s(conditional(30), SCHED, x_T.astype(np.float32), 8).dtype == np.float32


@pytest.mark.parametrize("w", [0.0, 3.0])
def test_D13_dpmpp_2m_sde_at_eta_0_is_dpmpp_2m(w):
    y, x_T, ts = np.arange(100) % 3, start(100, seed=15), karras_times(SCHED, 20)
    eps_fn = classifier_free_guidance(EPS, y, w)
    # the same arithmetic regrouped: measured 1.8e-15 and 3.1e-15 over 20 steps
    np.testing.assert_allclose(dpmpp_2m_sde(eps_fn, SCHED, x_T, ts, eta=0.0), dpmpp_2m(eps_fn, SCHED, x_T, ts),
                               rtol=0, atol=1e-12)


def test_D13_dpmpp_2m_sde_samples_the_data_drawing_once_per_step_but_the_last():
    # 30 Karras steps at eta = 1 pass the two-sample test against 2000 true points (measured p = 0.57)
    from refdiff.metrics import two_sample_test
    rng = CountingGenerator(1)
    x = dpmpp_2m_sde(lambda x, t: EPS(x, t), SCHED, start(2000, seed=0), karras_times(SCHED, 30), rng=rng)
    assert rng.draws == [((2000, 2), np.dtype(np.float64))] * 29
    assert two_sample_test(x, MIX.sample(2000, np.random.default_rng(5))[0], np.random.default_rng(2)).passed


def test_D12_D13_refuse_bad_arguments():
    f = lambda x, t: np.zeros_like(x)
    for call, name in ((lambda: dpmpp_2m_sde(f, SCHED, start(3), 5, eta=-1.0), "eta"),
                       (lambda: dpmpp_2m_sde(f, SCHED, start(3), 5), "rng"),
                       (lambda: dpmpp_2s(f, SCHED, start(3), 5, rng=1), "rng")):
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            call()


def test_D13_each_step_is_the_stated_formula():
    # (D13) replayed on an affine eps with the same draws: D = x~ - sigma~ eps, and every coefficient
    # (the decay exp(-eta h), the midpoint correction, the noise sigma~_prev sqrt(1 - exp(-2 eta h))).
    ts, eta, x_T = karras_times(SCHED, 8), 0.7, start(25, seed=16)
    eps_fn = lambda x, t: 0.3 * x - 0.1
    got = dpmpp_2m_sde(eps_fn, SCHED, x_T, ts, eta=eta, rng=np.random.default_rng(17))
    replay, x, d_last, h_last = np.random.default_rng(17), x_T / np.sqrt(SCHED.alpha_bar_at(ts[0])), None, None
    for t, t_prev in zip(ts, np.append(ts[1:], 0)):
        s = SCHED.sigma_at(t)
        d = x - s * eps_fn(x * np.sqrt(SCHED.alpha_bar_at(t)), t)
        if t_prev == 0:
            x = d
            break
        s_prev = SCHED.sigma_at(t_prev)
        h = np.log(s) - np.log(s_prev)
        new = s_prev / s * np.exp(-eta * h) * x + (1 - np.exp(-h - eta * h)) * d
        if d_last is not None:
            new += 0.5 * (1 - np.exp(-h - eta * h)) * (h / h_last) * (d - d_last)
        x = new + s_prev * np.sqrt(1 - np.exp(-2 * eta * h)) * replay.standard_normal(x.shape)
        d_last, h_last = d, h
    np.testing.assert_allclose(got, x, rtol=1e-10, atol=1e-10)


# ---- what the deterministic samplers sample on Gaussian data, exactly ----------------------------
GAUSS = GaussianMixture([1.0], [[0.7, -1.2]], [[[0.3, 0.12], [0.12, 0.08]]])


def eps_coefficients(a, lam, m):
    """eps*(x) = e1 x + e0 in one eigen-direction of data N(m, lam): sqrt(1 - a) (x - sqrt(a) m) / (a lam + 1 - a)."""
    e1 = np.sqrt(1 - a) / (a * lam + 1 - a)
    return e1, -e1 * np.sqrt(a) * m


def x0_hat(c, d, a, lam, m):
    """The data prediction (C1) of x = c z + d, again as (coefficient of z, constant)."""
    e1, e0 = eps_coefficients(a, lam, m)
    return (1 - np.sqrt(1 - a) * e1) * c / np.sqrt(a), ((1 - np.sqrt(1 - a) * e1) * d - np.sqrt(1 - a) * e0) / np.sqrt(a)


def exact_dpmpp_2m(ts, lam, m):
    """x_0 = c z + d per direction after (D8) from x_T = z, written from the formula: (c, d)."""
    abar, sig = SCHED.alpha_bar_at, lambda t: np.sqrt((1 - SCHED.alpha_bar_at(t)) / SCHED.alpha_bar_at(t))
    c, d, last, h_last = np.ones_like(m), np.zeros_like(m), None, None
    for t, t_prev in zip(ts, list(ts[1:]) + [0]):
        D = x0_hat(c, d, abar(t), lam, m)
        if t_prev == 0:
            return D
        h = np.log(sig(t) / sig(t_prev))
        step = D if last is None else tuple((1 + h / (2 * h_last)) * u - h / (2 * h_last) * v for u, v in zip(D, last))
        k = np.sqrt((1 - abar(t_prev)) / (1 - abar(t)))
        c, d = (k * c - np.sqrt(abar(t_prev)) * np.expm1(-h) * step[0], k * d - np.sqrt(abar(t_prev)) * np.expm1(-h) * step[1])
        last, h_last = D, h


def exact_dpmpp_2s(ts, lam, m):
    """x_0 = c z + d per direction after (D12) from x_T = z (in x~ = x / sqrt(a)): (c, d)."""
    abar, sig = SCHED.alpha_bar_at, lambda t: np.sqrt((1 - SCHED.alpha_bar_at(t)) / SCHED.alpha_bar_at(t))
    c, d = np.ones_like(m) / np.sqrt(abar(ts[0])), np.zeros_like(m)  # x~_T
    for t, t_prev in zip(ts, list(ts[1:]) + [0]):
        D = x0_hat(c * np.sqrt(abar(t)), d * np.sqrt(abar(t)), abar(t), lam, m)  # D = x~ - sigma~ eps
        if t_prev == 0:
            return D
        s, s_prev = sig(t), sig(t_prev)
        s_mid, h = np.sqrt(s * s_prev), np.log(s / s_prev)
        t_mid = model_time(SCHED, s_mid)
        mid = ((s_mid / s) * c - np.expm1(-h / 2) * D[0], (s_mid / s) * d - np.expm1(-h / 2) * D[1])
        D_mid = x0_hat(mid[0] * np.sqrt(abar(t_mid)), mid[1] * np.sqrt(abar(t_mid)), abar(t_mid), lam, m)
        c, d = (s_prev / s) * c - np.expm1(-h) * D_mid[0], (s_prev / s) * d - np.expm1(-h) * D_mid[1]


@pytest.mark.parametrize("exact, sampler", [(exact_dpmpp_2m, dpmpp_2m), (exact_dpmpp_2s, dpmpp_2s)])
@pytest.mark.parametrize("grid", ["karras", "trailing", "reals"])
def test_deterministic_samplers_are_the_affine_map_of_the_docs_on_gaussian_data(exact, sampler, grid):
    # With the exact eps of N(mean, cov) every step is affine in x, so x_0 = U (c * (U^T x_T) + d)
    # with (c, d) from the scalar recursion per eigen-direction: the sampler's law is exactly
    # N(U d, U diag(c^2) U^T), and each sample is checked against its image to round-off.
    ts = {"karras": karras_times(SCHED, 12), "trailing": SCHED.timesteps(12, "trailing"),
          "reals": np.linspace(990.5, 1.5, 12)}[grid]
    lam, U = np.linalg.eigh(GAUSS.covs[0])
    c, d = exact(ts, lam, U.T @ GAUSS.means[0])
    x_T = start(500, seed=18)
    got = sampler(lambda x, t: GAUSS.eps_model(SCHED)(x, t), SCHED, x_T, ts)
    want = (x_T @ U * c + d) @ U.T
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
