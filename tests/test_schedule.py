"""Tests for refdiff/schedule.py: invariants over random schedules, the named schedules against
independent implementations (diffusers' formulas written out here), timestep selection, respacing,
and every error path."""
import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.interpolate import PchipInterpolator

from refdiff import schedule
from refdiff.schedule import SPACINGS, Schedule
from strategies import (EPS64, MAX_T, assert_bounded, beta_arrays, cosine_args, linear_args,
                        schedules, seeds)

TINY = np.finfo(np.float64).tiny


# ---- invariants of every schedule -----------------------------------------------------------

@given(schedules())
def test_schedule_invariants(sched):
    T, betas, alpha_bar = sched.T, sched.betas, sched.alpha_bar
    assert betas.shape == sched.alphas.shape == alpha_bar.shape == (T + 1,)
    assert alpha_bar[0] == 1.0 and betas[0] == 0.0
    assert np.all((betas[1:] > 0) & (betas[1:] <= 1))
    np.testing.assert_array_equal(sched.alphas, 1.0 - betas)
    assert np.all((alpha_bar >= 0) & (alpha_bar <= 1))
    assert np.all(np.diff(alpha_bar) <= 0)
    # Strictly decreasing where beta_t < 1, as long as alpha_bar_{t-1} is a normal float: then
    # alpha_bar_{t-1} * alpha_t with alpha_t <= 1 - 2^-53 rounds strictly below alpha_bar_{t-1}
    # (below the normal range, products can round back up to their input).
    strict = (betas[1:] < 1) & (alpha_bar[:-1] >= TINY)
    assert np.all(alpha_bar[1:][strict] < alpha_bar[:-1][strict])
    # alpha_bar = running product of alpha, by a loop: each product rounds once (relative
    # EPS64 / 2), so step t is within t * EPS64 / 2 relative; bound T * EPS64 (factor 2 spare).
    expected, p = [1.0], 1.0
    for alpha in 1.0 - betas[1:]:
        p *= alpha
        expected.append(p)
    np.testing.assert_allclose(alpha_bar, expected, rtol=T * EPS64, atol=0)


@given(schedules())
def test_posterior_variance_bounds(sched):
    var = sched.posterior_variance()
    assert var.shape == (sched.T + 1,)
    assert var[0] == 0.0 and var[1] == 0.0  # alpha_bar_0 = 1: no noise left in x_0 given x_0
    # (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) <= 1 since alpha_bar is non-increasing, and
    # rounding is monotone, so the computed ratio is <= 1 exactly.
    assert np.all((var[1:] >= 0) & (var[1:] <= sched.betas[1:]))


def test_schedule_is_frozen_with_read_only_arrays():
    sched = Schedule.linear(10, 1e-5, 1e-3)
    for name in ("betas", "alphas", "alpha_bar"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(sched, name)[1] = 0.5
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(sched, name, np.zeros(11))


def test_from_betas_copies_its_input():
    betas = np.array([0.1, 0.2])
    sched = Schedule.from_betas(betas)
    betas[0] = 0.9
    assert sched.betas[1] == 0.1


# ---- linear ---------------------------------------------------------------------------------

def test_linear_T1000_is_diffusers_linear():
    sched = Schedule.linear(1000)
    np.testing.assert_array_equal(sched.betas[1:], np.linspace(1e-4, 0.02, 1000))
    # Independent route: alpha_bar_T = exp(sum log(1 - beta)) with log1p; both routes round
    # about 1000 times (relative EPS64 / 2 each): rtol 1000 * EPS64.
    alpha_bar_T = math.exp(math.fsum(np.log1p(-np.linspace(1e-4, 0.02, 1000))))
    np.testing.assert_allclose(sched.alpha_bar[-1], alpha_bar_T, rtol=1000 * EPS64)
    np.testing.assert_allclose(sched.alpha_bar[-1], 4.0358e-5, rtol=1e-4)  # 4.03583e-5


@given(linear_args())
def test_linear_rescales_by_1000_over_T(args):
    T, start, end = args
    scale = 1000.0 / T
    frac = np.arange(T) / (T - 1) if T > 1 else np.zeros(1)
    want = scale * (start + (end - start) * frac)
    # A few roundings, each relative EPS64 / 2 of the largest term (start or end, scaled);
    # start > end gives cancellation near t = T, hence a bound on the absolute error.
    bound = 4 * EPS64 * scale * max(start, end)
    assert_bounded(Schedule.linear(T, start, end).betas[1:], want, bound, "linear betas")


def linear_log_sums(T):
    """S1 = sum beta, S2 = sum beta^2 of the default linear schedule, by closed forms of
    arithmetic series (beta_i = scale * (b0 + i d), i = 0..T-1)."""
    scale, b0 = 1000.0 / T, 1e-4
    d = (0.02 - b0) / (T - 1)
    s1 = scale * T * (b0 + 0.02) / 2
    s2 = scale**2 * (T * b0**2 + b0 * d * T * (T - 1) + d**2 * (T - 1) * T * (2 * T - 1) / 6)
    return s1, s2


@given(st.integers(30, 4000))
def test_linear_alpha_bar_T_for_any_T(T):
    alpha_bar_T = Schedule.linear(T).alpha_bar[-1]
    s1, s2 = linear_log_sums(T)
    # Since -b - b^2 <= log(1 - b) <= -b for 0 <= b <= 2/3 (beta_T = 20 / T <= 2/3 for T >= 30):
    # exp(-S1 - S2) <= alpha_bar_T <= exp(-S1), up to the product's round-off T * EPS64.
    slack = 1 + 2 * T * EPS64
    assert math.exp(-s1 - s2) / slack <= alpha_bar_T <= math.exp(-s1) * slack
    # "Near 4e-5": log alpha_bar_T = -S1 - S2/2 - S3/3 - ... with S1 = 10.05 for every T,
    # S2/2 ~ 67/T, S3/3 ~ 667/T^2, S4/4 ~ 8000/T^3. Against T = 1000 (4.036e-5) the ratio is
    # exp(0.068 - 67/T - 667/T^2 - ...): 0.505 at T = 100 (measured), 0.19 at T = 50 (so T = 50
    # is a factor 5 off), and at most exp(-S1) / 4.036e-5 = 1.0697 for T -> infinity.
    if T >= 100:
        assert 0.5 <= alpha_bar_T / 4.0358e-5 <= math.exp(-10.05) / 4.0358e-5


def test_linear_with_betas_above_one_names_the_argument():
    # T = 10 scales beta_end = 0.02 to 2.0 > 1; the caller passed T and beta_end, not "betas".
    with pytest.raises(ValueError, match=r"\b(T|beta_start|beta_end)\b"):
        Schedule.linear(10)


# ---- cosine ---------------------------------------------------------------------------------

def cosine_betas(T, s=0.008, max_beta=0.999):
    """diffusers' betas_for_alpha_bar(T, max_beta, "cosine") in float64, before its cast to
    float32, with 0.008 written as s (for s = 0.008, 1 + s == 1.008 exactly)."""
    def alpha_bar_fn(t):
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar_fn((i + 1) / T) / alpha_bar_fn(i / T), max_beta)
                     for i in range(T)])


@given(cosine_args())
def test_cosine_is_diffusers_squaredcos_cap_v2(args):
    T, s, max_beta = args
    betas = Schedule.cosine(T, s, max_beta).betas[1:]
    # Same arguments to cos, and cos (math vs numpy) is within ~2 ulp relative: the ratio is
    # within ~4 EPS64 relative, so 1 - ratio within ~5 EPS64 absolute; bound 16 EPS64.
    assert_bounded(betas, cosine_betas(T, s, max_beta), 16 * EPS64, "cosine betas")


@given(cosine_args())
def test_cosine_alpha_bar_is_f_over_f0_until_capped(args):
    T, s, max_beta = args
    sched = Schedule.cosine(T, s, max_beta)
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    ratio = f[1:] / f[:-1]
    uncapped = np.cumprod(1 - ratio <= max_beta) == 1  # every step up to t uncapped
    # Nichol & Dhariwal eq. 17 telescopes: alpha_bar_t = f(t) / f(0). Each step rounds the
    # ratio, 1 - ratio and 1 - beta (absolute EPS64 / 2 each, so relative EPS64 / alpha_t) and
    # the product: relative sum_s (EPS64 / alpha_s + 2 EPS64) up to t; bound twice that.
    rtol = 2 * EPS64 * np.cumsum(1 / ratio + 2)
    got, want = sched.alpha_bar[1:][uncapped], (f[1:] / f[0])[uncapped]
    assert_bounded(got, want, rtol[uncapped] * want, "cosine alpha_bar")


def test_cosine_cap_is_active_at_the_last_step():
    sched = Schedule.cosine(1000)
    assert sched.betas[-1] == 0.999
    assert cosine_betas(1000, max_beta=1.0)[-1] > 0.999  # uncapped, it would be ~1
    assert np.all(sched.betas[1:-1] < 0.999)


# ---- timesteps --------------------------------------------------------------------------------

def diffusers_timesteps(T, steps, spacing):
    """diffusers' set_timesteps (DDIM/DDPM schedulers, steps_offset 0) as 0-based k."""
    if spacing == "leading":
        step_ratio = T // steps
        return (np.arange(0, steps) * step_ratio).round()[::-1].astype(np.int64)
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    return np.linspace(0, T - 1, steps).round()[::-1].astype(np.int64)


@st.composite
def T_and_steps(draw):
    T = draw(st.integers(1, MAX_T))
    return T, draw(st.integers(1, T))


@given(T_and_steps(), st.sampled_from(SPACINGS))
def test_timesteps_are_diffusers_set_timesteps(T_steps, spacing):
    T, steps = T_steps
    ts = Schedule.from_betas(np.full(T, 1e-3)).timesteps(steps, spacing)
    # diffusers' float np.arange(T, 0, -T / steps) gives steps + 1 values for ~5% of pairs
    # (e.g. T = 15, steps = 13: the extra one rounds to k = -1); only the first `steps` are the
    # formula k_i = round(T - i T / steps) - 1, i < steps, that "trailing" means.
    np.testing.assert_array_equal(ts, diffusers_timesteps(T, steps, spacing)[:steps] + 1)
    assert ts.shape == (steps,) and ts.dtype == np.int64
    assert np.all(np.diff(ts) < 0) and ts.min() >= 1 and ts.max() <= T
    if spacing == "trailing":
        assert ts[0] == T
    if spacing == "linspace" and steps >= 2:
        assert ts[0] == T and ts[-1] == 1


def test_timesteps_examples():
    sched = Schedule.linear(1000)
    np.testing.assert_array_equal(sched.timesteps(4, "leading"), [751, 501, 251, 1])
    np.testing.assert_array_equal(sched.timesteps(4, "trailing"), [1000, 750, 500, 250])
    np.testing.assert_array_equal(sched.timesteps(4, "linspace"), [1000, 667, 334, 1])
    np.testing.assert_array_equal(sched.timesteps(np.int64(1000)), np.arange(1000, 0, -1))


# ---- respacing ------------------------------------------------------------------------------

@st.composite
def respace_cases(draw):
    """A random schedule and a nonempty set of its timesteps, in random order with repeats."""
    sched = draw(schedules())
    rng = np.random.default_rng(draw(seeds))
    size = draw(st.integers(1, sched.T))
    ts = rng.choice(np.arange(1, sched.T + 1), size, replace=False)
    return sched, np.concatenate([ts, ts[: draw(st.integers(0, size))]])


@given(respace_cases())
def test_respace_keeps_alpha_bar_at_the_chosen_timesteps(case):
    sched, ts = case
    new = sched.respace(ts)
    kept = np.unique(ts)
    assert new.T == kept.size
    assert np.all((new.betas[1:] > 0) & (new.betas[1:] <= 1))
    # u = EPS64 / 2. The reference alpha_bar[t] is the product of the stored alphas up to t,
    # rounded t times (relative t u). A respaced step computes r_j = a_j / a_{j-1} (or the
    # product of the alphas in the gap: up to T roundings in all), beta' = 1 - r_j and
    # alpha' = 1 - beta' (absolute u each), and the product: over S steps alpha_bar' is within
    # (2 T + 3 S) u relative plus S u absolute; bound about twice that.
    T, S = sched.T, kept.size
    np.testing.assert_allclose(new.alpha_bar, np.concatenate([[1.0], sched.alpha_bar[kept]]),
                               rtol=(2 * T + 3 * S) * EPS64, atol=S * EPS64)


@given(schedules())
def test_respace_with_every_timestep_reproduces_the_schedule(sched):
    new = sched.respace(np.arange(1, sched.T + 1))
    T = sched.T
    # Bound as in the test above with S = T.
    np.testing.assert_allclose(new.alpha_bar, sched.alpha_bar, rtol=5 * T * EPS64, atol=T * EPS64)
    # beta'_t = 1 - a_t / a_{t-1} with a_t = a_{t-1} alpha_t rounded once: the ratio is within
    # 2 EPS64 of alpha_t, so beta'_t within 2 EPS64 absolute (where a_t is a normal float).
    normal = sched.alpha_bar[1:] >= TINY
    np.testing.assert_allclose(new.betas[1:][normal], sched.betas[1:][normal], rtol=0,
                               atol=2 * EPS64)


def test_respace_past_alpha_bar_zero():
    # beta_2 = 1 makes alpha_bar_2 = alpha_bar_3 = 0; stepping 2 -> 3 keeps alpha_bar at 0.
    sched = Schedule.from_betas([0.5, 1.0, 0.5])
    np.testing.assert_array_equal(sched.respace([2, 3]).alpha_bar, [1.0, 0.0, 0.0])


# ---- error paths ----------------------------------------------------------------------------

BAD_T = [0, -3, 10.0, 2.5, "10", None, True, False]


@pytest.mark.parametrize("make", [Schedule.linear, Schedule.cosine])
@pytest.mark.parametrize("T", BAD_T)
def test_bad_T(make, T):
    with pytest.raises(ValueError, match=r"\bT\b"):
        make(T)


@pytest.mark.parametrize("betas", [[0.0], [-0.1, 0.2], [0.1, 1.5], [np.nan], [0.1, np.inf],
                                   [[0.1, 0.2]], [], 0.1, [1e-17]])
def test_bad_betas(betas):
    with pytest.raises(ValueError, match="betas"):
        Schedule.from_betas(betas)


@pytest.mark.parametrize("betas", [[0.1, 0.2], [0.0], [[0.0, 0.1]], [0.0, np.nan]])
def test_bad_betas_given_to_the_constructor(betas):
    with pytest.raises(ValueError, match="betas"):
        Schedule(np.array(betas))


@pytest.mark.parametrize("kwargs, name", [
    ({"beta_start": 0.0}, "beta_start"), ({"beta_start": -1e-4}, "beta_start"),
    ({"beta_start": np.nan}, "beta_start"), ({"beta_end": np.inf}, "beta_end"),
    ({"beta_end": 0.0}, "beta_end")])
def test_bad_linear_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Schedule.linear(1000, **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"s": -0.1}, r"\bs\b"), ({"s": np.nan}, r"\bs\b"), ({"s": np.inf}, r"\bs\b"),
    ({"max_beta": 0.0}, "max_beta"), ({"max_beta": 1.5}, "max_beta"),
    ({"max_beta": np.nan}, "max_beta")])
def test_bad_cosine_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Schedule.cosine(1000, **kwargs)


@pytest.mark.parametrize("steps", [0, -1, 11, 2.0, True, "3", None])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        Schedule.linear(10, 1e-5, 1e-3).timesteps(steps)


@pytest.mark.parametrize("spacing", ["Leading", "uniform", None, ""])
def test_bad_spacing(spacing):
    with pytest.raises(ValueError, match="spacing"):
        Schedule.linear(10, 1e-5, 1e-3).timesteps(5, spacing)


@pytest.mark.parametrize("ts", [[], [0, 1], [1, 11], [-1], [1.0, 2.0], [1.5], [True, False]])
def test_bad_respace_timesteps(ts):
    with pytest.raises(ValueError, match="timesteps"):
        Schedule.linear(10, 1e-5, 1e-3).respace(ts)


# ---- continuous time: alpha_bar_at, sigma_at, t_of_sigma (eq. (S6)) -------------------------

@given(schedules(), seeds)
def test_S6_alpha_bar_at_agrees_at_integers_and_is_monotone(sched, seed):
    T = sched.T
    # Exactly the table at every integer, given as ints or as floats.
    np.testing.assert_array_equal(sched.alpha_bar_at(np.arange(T + 1)), sched.alpha_bar)
    np.testing.assert_array_equal(sched.alpha_bar_at(np.arange(T + 1.0)), sched.alpha_bar)
    t = np.sort(np.concatenate([np.random.default_rng(seed).uniform(0, T, 200), np.arange(T + 1)]))
    a = sched.alpha_bar_at(t)
    assert a.shape == t.shape and a.dtype == np.float64
    assert np.all(np.diff(a) <= 0), "alpha_bar_at must be non-increasing"
    assert np.all((a >= 0) & (a <= 1))
    # Between integers it stays between its neighbours, and is > 0 where the right one is.
    k = np.floor(t).astype(int).clip(max=T - 1)
    lo, hi = sched.alpha_bar[k + 1], sched.alpha_bar[k]
    assert np.all((a >= lo) & (a <= hi))
    assert np.all(a[lo > 0] > 0)


@given(schedules(), seeds)
def test_S6_between_integers_is_exp_of_scipys_pchip_or_linear_where_alpha_bar_reaches_0(sched, seed):
    # (S6) written out: exp of PCHIP through (k, log alpha_bar_k) over alpha_bar_k > 0, evaluated
    # here by scipy itself; the schedule's own Horner evaluation of the same cubic differs by
    # round-off only: |d log a| < 4 ulps of log a's largest term, so a few 1e-15 relative.
    T = sched.T
    t = np.random.default_rng(seed).uniform(0, T, 300)
    t = t[t != np.floor(t)]
    k = np.floor(t).astype(int)
    a_lo, a_hi = sched.alpha_bar[k], sched.alpha_bar[k + 1]
    positive = np.flatnonzero(sched.alpha_bar > 0)
    want = a_lo * (k + 1 - t)
    if positive.size >= 2:
        cubic = PchipInterpolator(positive.astype(float), np.log(sched.alpha_bar[positive]))
        inner = a_hi > 0
        want[inner] = np.clip(np.exp(cubic(t[inner])), a_hi[inner], a_lo[inner])
    scale = 1 + np.abs(np.log(np.maximum(want, 1e-300)))
    np.testing.assert_allclose(sched.alpha_bar_at(t), want, rtol=1e-14 * scale.max(), atol=0)


@given(schedules(), seeds)
def test_S6_t_of_sigma_is_exact_at_the_integers_and_resolves_tiny_times(sched, seed):
    # sigma_k of the table maps back to k exactly; sigma(t) for t in (0, 1), even 1e-12 (where
    # sigma ~ sqrt(beta_1 t)), maps back to a t with the same sigma to 1e-9 relative.
    k = np.arange(sched.T + 1)
    k = k[np.isfinite(sched.sigma_at(k))]
    np.testing.assert_array_equal(sched.t_of_sigma(sched.sigma_at(k)), k)
    t = 10.0 ** np.random.default_rng(seed).uniform(-12, 0, 20)
    sigma = sched.sigma_at(t)
    np.testing.assert_allclose(sched.sigma_at(sched.t_of_sigma(sigma)), sigma, rtol=1e-9, atol=0)
    assert sched.t_of_sigma(sigma).shape == (20,) and np.asarray(sched.t_of_sigma(sigma[0])).shape == ()


@given(schedules(), seeds)
def test_S6_t_of_sigma_inverts_sigma(sched, seed):
    t = np.random.default_rng(seed).uniform(0, sched.T, 50)
    sigma = sched.sigma_at(t)
    ok = np.isfinite(sigma)
    back = sched.sigma_at(sched.t_of_sigma(sigma[ok]))
    # Bisection pins t to one ulp of T; sigma moves by at most |d log sigma / dt| * ulp, and a
    # single step with beta = 1 - 1e-12 has d log sigma / dt < 14, so 1e-9 relative is ample.
    np.testing.assert_allclose(back, sigma[ok], rtol=1e-9, atol=0)
    assert sched.t_of_sigma(0.0) == 0.0


@given(schedules(), seeds)
def test_S6_t_of_sigma_with_or_without_the_newton_bracket_is_a_crossing_of_sigma(sched, seed):
    # The narrow bracket around the Newton start is a shortcut, kept only where sigma at its ends
    # confirms it: with a start that is always wrong (u + 0.3, wrapped into [0, 1)) every bracket
    # fails that check and t_of_sigma halves [k - 1, k] as before. A sigma of the table maps to its
    # integer in both; any other to a crossing of sigma in both, a float t with sigma_at(t-) <
    # sigma <= sigma_at(t) (t- the float below t). Where the float evaluation of sigma is monotone
    # the crossing is unique, so the two searches give the same t bit for bit. Where rounding makes
    # it step down there can be two (with beta_21 = 1 - 1e-12, sigma_at gave ...925, ...917, ...925
    # at three neighbouring floats near t = 20.9955), and the searches may return either.
    t = np.random.default_rng(seed).uniform(0, sched.T, 50)
    sigma = sched.sigma_at(t)
    sigma = sigma[np.isfinite(sigma)]
    fast = sched.t_of_sigma(sigma)
    with pytest.MonkeyPatch.context() as patch:
        start = schedule._newton_start
        patch.setattr(schedule, "_newton_start", lambda seg, s: (start(seg, s) + 0.3) % 1.0)
        plain = sched.t_of_sigma(sigma)
    table = np.isin(sigma, sched.sigma_at(np.arange(sched.T + 1)))
    np.testing.assert_array_equal(fast[table], np.round(fast[table]))
    np.testing.assert_array_equal(plain[table], fast[table])
    for found in (fast[~table], plain[~table]):
        assert (sched.sigma_at(np.nextafter(found, 0)) < sigma[~table]).all()
        assert (sched.sigma_at(found) >= sigma[~table]).all()


@given(schedules(), seeds, st.sampled_from([1, 20, 65, 200]))
def test_S6_t_of_sigma_finds_the_crossing_of_tiny_times(sched, seed, n):
    # Below t = 1 the Newton bracket may fail, and the search starts from [0, 1]. For t ~ 1e-12
    # that is ~90 halvings to t's resolution: a cap of 64 (an earlier version) stopped short and
    # returned a t that was not a crossing. n = 1 and 20 take 32-way splits, 65 and 200 halvings.
    t = 10 ** np.random.default_rng(seed).uniform(-15, 0, n)
    sigma = sched.sigma_at(t)
    found = sched.t_of_sigma(sigma)
    table = np.isin(sigma, sched.sigma_at(np.arange(sched.T + 1)))  # these map to their integer
    np.testing.assert_array_equal(found[table], np.round(found[table]))
    assert (sched.sigma_at(np.nextafter(found[~table], 0)) < sigma[~table]).all()
    assert (sched.sigma_at(found[~table]) >= sigma[~table]).all()


@given(st.sampled_from(["linear", "cosine", "scaled_linear"]), st.integers(20, 1000), seeds)
def test_S6_newton_start_is_within_the_bracket_of_t(kind, T, seed):
    # Six Newton steps on the monotone cubic from the chord's root reach u to within 1e-11 for
    # t >= 1 on the named schedules (measured: at most 1.1e-12, at t ~ 1.4 of cosine T ~ 970, where
    # d log alpha_bar / dt ~ 1e-4 turns the rounding of sigma into that much of t), inside the
    # +-1e-11 bracket t_of_sigma tries first, so the shortcut is taken. Below t = 1 it may not be.
    sched = getattr(Schedule, kind)(T)
    t = np.random.default_rng(seed).uniform(1, T, 50)
    t = t[(t != np.floor(t)) & (sched.alpha_bar[np.floor(t).astype(int) + 1] > 0)]
    k = np.floor(t).astype(int)
    u = schedule._newton_start(sched._segments(k), sched.sigma_at(t))
    assert_bounded(u, t - k, 1e-11, "Newton's u")


def test_S6_sigma_is_the_noise_to_signal_ratio():
    sched = Schedule.linear(1000)
    t = np.array([0.0, 0.5, 1.0, 250.25, 999.9, 1000.0])
    a = sched.alpha_bar_at(t)
    np.testing.assert_allclose(sched.sigma_at(t), np.sqrt((1 - a) / a), rtol=1e-15)
    assert np.all(np.diff(sched.sigma_at(t)) > 0)


def test_S6_cosine_interpolation_is_close_to_the_closed_form():
    # docs/schedule.md (S6): at half-integers the interpolant is within 1e-5 of f(t) / f(0)
    # (relative) up to t = T - 10 for T = 1000; the cap of (S3) makes the last steps differ.
    T, s = 1000, 0.008
    sched = Schedule.cosine(T)
    t = np.arange(T - 10) + 0.5
    f = lambda u: np.cos((u / T + s) / (1 + s) * np.pi / 2) ** 2
    rel = np.abs(sched.alpha_bar_at(t) / (f(t) / f(0)) - 1)
    assert rel.max() < 1e-5, rel.max()


@pytest.mark.parametrize("bad", [-0.5, 10.5, np.nan, np.inf, [1.0, np.nan], "x"])
def test_S6_bad_times_raise(bad):
    sched = Schedule.linear(10, 1e-3, 0.01)
    with pytest.raises(ValueError, match="^t must"):
        sched.alpha_bar_at(bad)


@pytest.mark.parametrize("bad", [-1.0, np.nan, 1e9])
def test_S6_bad_sigma_raises(bad):
    with pytest.raises(ValueError, match="^sigma must"):
        Schedule.linear(100).t_of_sigma(bad)  # sigma(T) = 221
