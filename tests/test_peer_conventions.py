"""Where diffusers' schedulers (0.42.1) and refdiff differ (docs/samplers.md, "Peer conventions:
diffusers' schedulers beside refdiff").

Each ``diffusers_*`` / ``guided_diffusion_*`` helper below is one rule of the peer, written here
in a few lines of NumPy from the formula the docs state (the file and function it comes from is
named in each docstring; no diffusers code is imported or copied). diffusers indexes timesteps by
k = t - 1 (docs/notation.md, (N1)); a negative k stands for t = 0, whose alpha_bar is 1
(``set_alpha_to_one=True``, diffusers' default). Each test compares the rule with refdiff's own
(``Schedule.timesteps``, ``sampling_grid``, ``karras_times``, ``Schedule.sigma_at``, and the
samplers where the rule is about a step) and pins where and by how much they differ. Each test
names, in a comment, the mutation of the peer rule that would make the stated difference vanish
and that the test then catches (each was tried by editing the helper).

Everything is float64 (diffusers builds its tables in float32, which adds its own round-off).
"""
from functools import lru_cache
from math import gcd

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from refdiff.samplers import ddim, ddpm, karras_times, sampling_grid
from refdiff.schedule import Schedule

T, S = 1000, 50  # the case: Schedule.linear(1000), 50 steps
LINEAR = Schedule.linear(T)
SPACINGS = ("leading", "trailing", "linspace")
FAST = settings(max_examples=40, deadline=None)


@lru_cache(maxsize=None)
def linear(T_):
    return Schedule.linear(T_)


@lru_cache(maxsize=None)
def cosine(T_):
    return Schedule.cosine(T_)


def table_sigmas(sched):
    """sigma_k for diffusers' k = 0..T-1, i.e. refdiff's sigma at t = k + 1 (exact table values, (S6))."""
    return sched.sigma_at(np.arange(1, sched.T + 1))


# ---------------------------------------------------------------------------------------------
# Peer rules, written from the formulas (docs/samplers.md, "Peer conventions").
# ---------------------------------------------------------------------------------------------

def diffusers_ddim_linspace_timesteps(T_, S_):
    """DDIMScheduler.set_timesteps, "linspace": k_i = round(linspace(0, T - 1, S)), decreasing."""
    return np.round(np.linspace(0, T_ - 1, S_))[::-1].astype(np.int64)


def diffusers_ddim_prev(k, T_, S_):
    """DDIMScheduler.step: prev_timestep = timestep - num_train_timesteps // num_inference_steps,
    whatever the spacing; returned as refdiff's t (k + 1, and 0 where it is negative: alpha_bar = 1)."""
    k_prev = np.asarray(k) - T_ // S_
    return np.where(k_prev >= 0, k_prev + 1, 0)


def refdiff_ddim_targets(sched, S_, spacing):
    """refdiff's DDIM step targets ((D2) on the grid of (S4)): the next grid time, then t = 0."""
    ts = sampling_grid(sched, S_, spacing)
    return ts, np.append(ts[1:], 0)


def diffusers_trailing_arange(T_, S_):
    """The 0-based timesteps of diffusers' "trailing" spacing (DDIM, DDPM, Euler, Heun set_timesteps):
    round(arange(T, 0, -T / S)) - 1, every value numpy's arange gives, not only the first S."""
    return np.round(np.arange(T_, 0, -T_ / S_)).astype(np.int64) - 1


def guided_diffusion_space_timesteps(T_, S_):
    """guided_diffusion/respace.py ``space_timesteps(T, "S")`` (one section): the 0-based steps
    round(cur) with cur = 0, then cur += (T - 1) / (S - 1) S - 1 times (a running float sum,
    Python's round)."""
    stride = 1 if S_ <= 1 else (T_ - 1) / (S_ - 1)
    cur, kept = 0.0, set()
    for _ in range(S_):
        kept.add(round(cur))
        cur += stride
    return np.array(sorted(kept)[::-1], dtype=np.int64)


def guided_diffusion_ddim_alpha_bar_prev(alpha_bar_k, kept):
    """guided_diffusion SpacedDiffusion + GaussianDiffusion.ddim_sample: the respaced chain's
    alphas_cumprod_prev, i.e. at each kept k (decreasing) the alpha_bar of the next kept k, 1 after
    the last. ``alpha_bar_k`` is indexed by 0-based k."""
    a = alpha_bar_k[np.sort(kept)]
    return np.append(1.0, a[:-1])[::-1]


def diffusers_ddpm_adds_noise(k):
    """DDPMScheduler.step: noise is added when the timestep being left, k, is > 0 (``if t > 0``),
    the last step included."""
    return np.asarray(k) > 0


def diffusers_ddpm_variance(a, a_prev, variance_type):
    """DDPMScheduler._get_variance: beta' = 1 - a / a_prev; "fixed_small" is the posterior
    variance (1 - a_prev) / (1 - a) * beta' clamped below at 1e-20; "fixed_large" is beta'."""
    beta = 1.0 - a / a_prev
    if variance_type == "fixed_small":
        return max((1.0 - a_prev) / (1.0 - a) * beta, 1e-20)
    return beta


def diffusers_euler_timesteps(T_, S_, spacing):
    """EulerDiscreteScheduler / HeunDiscreteScheduler.set_timesteps: "linspace" keeps
    linspace(0, T - 1, S) in float32 *unrounded*; "leading" and "trailing" round as DDIM does."""
    if spacing == "linspace":
        return np.linspace(0, T_ - 1, S_, dtype=np.float32)[::-1].astype(np.float64)
    if spacing == "leading":
        return (np.arange(S_) * (T_ // S_))[::-1].astype(np.float64)
    return diffusers_trailing_arange(T_, S_).astype(np.float64)


def diffusers_euler_sigmas(sched, k):
    """Euler/Heun set_timesteps (interpolation_type "linear"): sigma at real k by np.interp, linear
    in sigma between the table's sigma_floor(k) and sigma_ceil(k)."""
    return np.interp(k, np.arange(sched.T), table_sigmas(sched))


def diffusers_heun_default_betas():
    """HeunDiscreteScheduler.__init__ defaults: beta_start=0.00085, beta_end=0.012,
    beta_schedule="linear": a linear ramp of 1000 betas."""
    return np.linspace(0.00085, 0.012, 1000)


def stable_diffusion_betas():
    """Stable Diffusion's betas as diffusers configures them (loaders/single_file_utils.py
    SCHEDULER_DEFAULT_CONFIG: "scaled_linear", 0.00085 to 0.012): linspace of the square roots, squared."""
    return np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2


def diffusers_init_noise_sigma(sigmas, spacing):
    """Euler/EulerAncestral/Heun/LMS/KDPM2 ``init_noise_sigma``: max sigma for "linspace" and
    "trailing", sqrt(max sigma^2 + 1) for "leading"."""
    m = float(np.max(sigmas))
    return m if spacing in ("linspace", "trailing") else (m * m + 1.0) ** 0.5


def diffusers_karras_sigmas(sigmas, S_, rho=7.0):
    """Euler/Heun ``_convert_to_karras`` (no sigma_min / sigma_max in the config): eq. 5 of Karras
    et al. with sigma_max = the spaced grid's first sigma and sigma_min = its last."""
    hi, lo = sigmas[0] ** (1 / rho), sigmas[-1] ** (1 / rho)
    return (hi + np.linspace(0, 1, S_) * (lo - hi)) ** rho


def diffusers_dpmsolver_karras_ends(sched):
    """DPMSolverMultistepScheduler.set_timesteps with use_karras_sigmas: the ends come from the
    whole table (flipped), sigma_{T-1} and sigma_0 in k."""
    tab = table_sigmas(sched)
    return tab[-1], tab[0]


# ---------------------------------------------------------------------------------------------
# 1. DDIM "linspace": diffusers steps to k - T // S, not to the next visited timestep.
# ---------------------------------------------------------------------------------------------

class CountingGenerator(np.random.Generator):
    """A Generator counting its standard_normal calls (refdiff's samplers draw only through it)."""

    def __init__(self, seed=0):
        super().__init__(np.random.PCG64(seed))
        self.draws = 0

    def standard_normal(self, *args, **kwargs):
        self.draws += 1
        return super().standard_normal(*args, **kwargs)


def test_diffusers_ddim_linspace_misses_the_next_timestep_at_19_of_49_steps():
    # Mutation caught: diffusers_ddim_prev returning the next visited timestep (k of step i + 1)
    # instead of k - T // S: the count below becomes 0, not 19.
    ts, refdiff_next = refdiff_ddim_targets(LINEAR, S, "linspace")
    np.testing.assert_array_equal(ts - 1, diffusers_ddim_linspace_timesteps(T, S))  # same grid (S4)
    peer = diffusers_ddim_prev(ts - 1, T, S)
    differ = np.flatnonzero(peer != refdiff_next)
    assert differ.size == 19 and ts.size - 1 == 49
    np.testing.assert_array_equal(differ, [1, 3, 6, 9, 11, 14, 16, 19, 21, 24, 27, 29, 32, 34, 37, 39, 42, 45, 47])
    # each time the visited gap is 21 = 20 + 1 and diffusers lands one timestep above the next call
    np.testing.assert_array_equal(peer[differ] - refdiff_next[differ], 1)
    assert peer[-1] == refdiff_next[-1] == 0  # the last step (from t = 1) agrees: to t = 0
    # refdiff's ddim itself steps to the next grid time: with eps = 0 the step is
    # x_prev = sqrt(a_prev / a) x, so the path gives a_prev = a * (x_prev / x)^2.
    _, path = ddim(lambda x, t: np.zeros_like(x), LINEAR, np.ones((1, 1)), S, spacing="linspace",
                   return_path=True)
    ratio2 = (path[1:, 0, 0] / path[:-1, 0, 0]) ** 2
    a_prev = LINEAR.alpha_bar[ts] * ratio2
    np.testing.assert_allclose(a_prev, LINEAR.alpha_bar[refdiff_next], rtol=1e-12)
    assert np.all(np.abs(a_prev[differ] / LINEAR.alpha_bar[peer[differ]] - 1) > 1e-4)


@FAST
@given(T_=st.integers(20, 2000), data=st.data())
def test_diffusers_ddim_target_agrees_for_leading_and_counts_for_linspace(T_, data):
    # Mutation caught: diffusers_ddim_prev using the actual gap (next visited timestep): the
    # linspace count is then 0 wherever the closed form below is positive.
    S_ = data.draw(st.integers(2, T_), label="S")
    sched = linear(T_)
    ts, nxt = refdiff_ddim_targets(sched, S_, "leading")
    np.testing.assert_array_equal(diffusers_ddim_prev(ts - 1, T_, S_), nxt)  # "leading": gap = T // S
    ts, nxt = refdiff_ddim_targets(sched, S_, "linspace")
    peer = diffusers_ddim_prev(ts - 1, T_, S_)
    assert peer[-1] == nxt[-1] == 0
    assert np.all(peer >= nxt)  # diffusers never steps past the next visited timestep
    r, q = T_ // S_, (T_ - 1) // (S_ - 1)  # gaps of (S4) "linspace" are q or q + 1, and q >= r
    expected = S_ - 1 if q > r else (T_ - 1) - (S_ - 1) * r
    assert np.count_nonzero(peer != nxt) == expected


def test_diffusers_ddim_trailing_targets():
    # Mutation caught: as above (the next visited timestep): the 10 and 400 below become 0, and
    # the S = 600 run would end at t = 0.
    counts = {}
    for S_ in (30, 50, 600):
        ts, nxt = refdiff_ddim_targets(LINEAR, S_, "trailing")
        peer = diffusers_ddim_prev(ts - 1, T, S_)
        counts[S_] = int(np.count_nonzero(peer != nxt))
        if S_ == 600:  # round(T / S) - 1 = 1 >= T // S = 1: the last step goes to t = 1, not 0
            assert ts[-1] == 2 and peer[-1] == 1 and nxt[-1] == 0
    assert counts == {30: 10, 50: 0, 600: 400}


def test_diffusers_trailing_arange_can_give_one_timestep_too_many():
    # Mutation caught: diffusers_trailing_arange keeping only the first S values (as refdiff's
    # Schedule.timesteps does): the length is then 61 and the last k 15.
    assert np.arange(1000, 0, -1000 / 61)[-1] == pytest.approx(-5.7e-13, rel=0.01)  # past the stop, by round-off
    k = diffusers_trailing_arange(1000, 61)
    assert k.size == 62 and k[-1] == -1 and k[-2] == 15
    ts = LINEAR.timesteps(61, "trailing")
    assert ts.size == 61 and ts[-1] == 16
    np.testing.assert_array_equal(ts - 1, k[:61])


def test_guided_diffusion_linspace_respacing_steps_to_the_next_kept_timestep():
    # guided-diffusion's DDIM on SpacedDiffusion reads alphas_cumprod_prev of the respaced chain:
    # the previous kept timestep, as refdiff's (S5) respace gives.
    # Mutation caught: guided_diffusion_space_timesteps computing i * stride then rounding (as
    # np.linspace does): the 278 below becomes 0.
    kept = guided_diffusion_space_timesteps(T, S)
    np.testing.assert_array_equal(kept + 1, LINEAR.timesteps(S, "linspace"))
    ts, refdiff_next = refdiff_ddim_targets(LINEAR, S, "linspace")
    peer = guided_diffusion_ddim_alpha_bar_prev(LINEAR.alpha_bar[1:], kept)
    np.testing.assert_array_equal(peer, LINEAR.alpha_bar[refdiff_next])
    # the running float sum crosses a half-integer on the other side of np.linspace's product:
    assert 499 in guided_diffusion_space_timesteps(T, 21) and 500 in LINEAR.timesteps(21, "linspace") - 1
    differ = [S_ for S_ in range(2, T + 1)
              if not np.array_equal(guided_diffusion_space_timesteps(T, S_) + 1, LINEAR.timesteps(S_, "linspace"))]
    assert len(differ) == 278 and differ[:3] == [21, 23, 31]


# ---------------------------------------------------------------------------------------------
# 2. DDPM: noise on the last step whenever its timestep k > 0.
# ---------------------------------------------------------------------------------------------

def test_diffusers_ddpm_draws_noise_on_the_last_trailing_step():
    # Mutation caught: diffusers_ddpm_adds_noise following Ho et al.'s Alg. 2 (no noise on the
    # last step): its trailing count becomes 49, refdiff's.
    for spacing, peer_draws, last_k in (("trailing", 50, 19), ("leading", 49, 0), ("linspace", 49, 0)):
        ts = LINEAR.timesteps(S, spacing)
        assert ts[-1] - 1 == last_k
        assert np.count_nonzero(diffusers_ddpm_adds_noise(ts - 1)) == peer_draws
        rng = CountingGenerator()
        ddpm(lambda x, t: np.zeros_like(x), LINEAR, np.zeros((1, 1)), rng, S, spacing=spacing)
        assert rng.draws == S - 1  # refdiff (D1): z = 0 on the last step, whatever its t
    # "leading" with steps_offset = 1 (Stable Diffusion's config) adds 1 to every k: last k = 1, noise too
    assert diffusers_ddpm_adds_noise(LINEAR.timesteps(S, "leading") - 1 + 1)[-1]
    # the size of that last-step noise (trailing, from t = 20 to t = 0, a_prev = 1):
    a = LINEAR.alpha_bar[20]
    assert diffusers_ddpm_variance(a, 1.0, "fixed_small") == 1e-20  # std 1e-10: a draw, ~no noise
    std_large = diffusers_ddpm_variance(a, 1.0, "fixed_large") ** 0.5  # = sqrt(1 - alpha_bar_20)
    assert std_large == pytest.approx(0.07595, abs=1e-5)
    sub = LINEAR.respace(LINEAR.timesteps(S, "trailing"))  # refdiff's (S5) chain
    assert sub.posterior_variance()[1] == 0.0 and sub.betas[1] == pytest.approx(1 - a, rel=1e-12)


@FAST
@given(T_=st.integers(20, 2000), spacing=st.sampled_from(SPACINGS), data=st.data())
def test_diffusers_ddpm_extra_draw_exactly_when_trailing_ends_above_t_1(T_, spacing, data):
    # Mutation caught: as above (Ho's rule, no noise on the last step): the extra draw vanishes
    # for trailing with round(T / S) >= 2.
    S_ = data.draw(st.integers(1, T_), label="S")
    ts = linear(T_).timesteps(S_, spacing)
    extra = np.count_nonzero(diffusers_ddpm_adds_noise(ts - 1)) - (S_ - 1)  # refdiff draws S - 1
    assert extra == int(spacing == "trailing" and round(T_ / S_) >= 2)


# ---------------------------------------------------------------------------------------------
# 3. Euler / Heun: unrounded linspace timesteps, sigma interpolated linearly.
# ---------------------------------------------------------------------------------------------

def test_diffusers_euler_linspace_timesteps_are_unrounded():
    # Mutation caught: diffusers_euler_timesteps rounding its "linspace" values (as DDIM does):
    # the 48 becomes 0 and the 1.6% becomes 0.
    k = diffusers_euler_timesteps(T, S, "linspace")
    ts = LINEAR.timesteps(S, "linspace")
    off = np.abs(k - (ts - 1))
    assert np.count_nonzero(off) == 48 and off[0] == off[-1] == 0  # only the two ends are whole
    assert round(off.max(), 4) == 0.4898
    rel = np.abs(diffusers_euler_sigmas(LINEAR, k) / LINEAR.sigma_at(ts) - 1)
    assert round(rel.max(), 4) == 0.0157  # Euler's sigma vs refdiff's at its rounded timestep
    for spacing in ("leading", "trailing"):  # there Euler/Heun round like DDIM: Schedule.timesteps
        np.testing.assert_array_equal(diffusers_euler_timesteps(T, S, spacing), LINEAR.timesteps(S, spacing) - 1)


@FAST
@given(T_=st.integers(20, 2000), data=st.data())
def test_diffusers_euler_linspace_whole_timesteps_count(T_, data):
    # Mutation caught: as above (rounded): every timestep is then whole, S of S.
    S_ = data.draw(st.integers(2, T_), label="S")
    k = diffusers_euler_timesteps(T_, S_, "linspace")
    whole = np.count_nonzero(k == np.round(k))
    assert whole == gcd(T_ - 1, S_ - 1) + 1  # i (T - 1) / (S - 1) is whole for i = 0, n, 2n, ...
    np.testing.assert_array_equal(np.round(np.linspace(0, T_ - 1, S_))[::-1], linear(T_).timesteps(S_, "linspace") - 1)


def test_diffusers_euler_sigma_interpolation_differs_from_S6_between_integers():
    # Mutation caught: diffusers_euler_sigmas interpolating as refdiff's (S6) does
    # (``sched.sigma_at(k + 1)``): both differences become 0.
    for sched, expected in ((LINEAR, 1.28e-5), (cosine(1000), 5.66e-4)):
        k = diffusers_euler_timesteps(T, S, "linspace")
        rel = np.abs(diffusers_euler_sigmas(sched, k) / sched.sigma_at(k + 1) - 1)
        assert rel.max() == pytest.approx(expected, rel=0.01)
        whole = k == np.round(k)
        assert np.all(rel[whole] == 0)  # the same table at the integers


# ---------------------------------------------------------------------------------------------
# 4. HeunDiscreteScheduler's default betas.
# ---------------------------------------------------------------------------------------------

def test_diffusers_heun_default_betas_are_sd_ends_on_a_linear_ramp():
    # Mutation caught: diffusers_heun_default_betas built as "scaled_linear" (Stable Diffusion's
    # schedule): the 25.15 becomes 14.61 and the equality with Schedule.linear fails.
    heun, sd = diffusers_heun_default_betas(), stable_diffusion_betas()
    np.testing.assert_allclose(Schedule.linear(1000, 0.00085, 0.012).betas[1:], heun, rtol=1e-14)
    sigma_max = {}
    for name, betas in (("heun", heun), ("sd", sd), ("ddpm", LINEAR.betas[1:])):
        sched = Schedule.from_betas(betas)
        sigma_max[name] = round(float(sched.sigma_at(sched.T)), 2)
    assert sigma_max == {"heun": 25.15, "sd": 14.61, "ddpm": 157.41}
    assert heun[0] == sd[0] and heun[-1] == pytest.approx(sd[-1], rel=1e-14)  # same ends
    assert np.max(np.abs(heun / sd - 1)) > 0.2  # not the same ramp


# ---------------------------------------------------------------------------------------------
# 5. init_noise_sigma.
# ---------------------------------------------------------------------------------------------

def refdiff_start_std_tilde(sched, spacing, S_):
    """refdiff starts from x ~ N(0, I) at the grid's first time t_S; in x~ = x / sqrt(alpha_bar)
    ((D4)) its std is 1 / sqrt(alpha_bar(t_S)) = sqrt(1 + sigma(t_S)^2)."""
    t0 = sampling_grid(sched, S_, spacing)[0]
    return 1.0 / np.sqrt(float(sched.alpha_bar_at(t0)))


def grid_sigmas(sched, S_, spacing):
    return diffusers_euler_sigmas(sched, diffusers_euler_timesteps(sched.T, S_, spacing))


def test_diffusers_init_noise_sigma_is_sigma_max_for_linspace_and_trailing():
    # Mutation caught: diffusers_init_noise_sigma returning sqrt(sigma^2 + 1) for every spacing:
    # the relative differences below become 0.
    got = {sp: diffusers_init_noise_sigma(grid_sigmas(LINEAR, S, sp), sp) / refdiff_start_std_tilde(LINEAR, sp, S) - 1
           for sp in SPACINGS}
    assert got["leading"] == pytest.approx(0, abs=1e-15)
    assert got["linspace"] == got["trailing"] == pytest.approx(-2.018e-5, rel=1e-3)  # ~ -1 / (2 sigma(T)^2)
    heun = Schedule.from_betas(diffusers_heun_default_betas())
    peer = diffusers_init_noise_sigma(grid_sigmas(heun, S, "linspace"), "linspace")
    rel = peer / refdiff_start_std_tilde(heun, "linspace", S) - 1
    assert rel == pytest.approx(-7.9e-4, rel=0.01)


@FAST
@given(T_=st.integers(21, 2000), kind=st.sampled_from(["linear", "cosine"]), spacing=st.sampled_from(SPACINGS),
       data=st.data())
def test_diffusers_init_noise_sigma_in_refdiffs_terms(T_, kind, spacing, data):
    # Mutation caught: as above; the linspace/trailing ratio is then 1, not sqrt(1 - alpha_bar).
    S_ = data.draw(st.integers(1, T_), label="S")  # T >= 21: alpha_bar_T > 0, sigma(T) finite
    sched = linear(T_) if kind == "linear" else cosine(T_)
    # diffusers' trailing grid may have an extra k = -1 (test above); refdiff's does not
    assume(spacing != "trailing" or diffusers_trailing_arange(T_, S_).size == S_)
    peer = diffusers_init_noise_sigma(grid_sigmas(sched, S_, spacing), spacing)
    ours = refdiff_start_std_tilde(sched, spacing, S_)
    a0 = float(sched.alpha_bar_at(sampling_grid(sched, S_, spacing)[0]))
    want = 1.0 if spacing == "leading" else np.sqrt(1.0 - a0)  # sigma / sqrt(1 + sigma^2)
    assert peer / ours == pytest.approx(want, rel=1e-12)
    if spacing != "leading":
        assert peer / ours < 1.0


# ---------------------------------------------------------------------------------------------
# 6. Karras grid: ends from the spaced grid.
# ---------------------------------------------------------------------------------------------

def diffusers_karras_for_spacing(sched, S_, spacing):
    """Euler/Heun set_timesteps with use_karras_sigmas: the spaced grid's sigmas, then eq. 5 on them."""
    return diffusers_karras_sigmas(grid_sigmas(sched, S_, spacing), S_)


def test_diffusers_karras_ends_come_from_the_spaced_grid():
    # Mutation caught: diffusers_karras_for_spacing passing the whole table (flipped, as
    # DPMSolverMultistep does) instead of the spaced grid: leading's 130.14 and trailing's
    # 0.0762 become refdiff's 157.41 and 0.0100.
    ours = LINEAR.sigma_at(karras_times(LINEAR, S))
    assert round(float(ours[0]), 2) == 157.41 and round(float(ours[-1]), 4) == 0.0100
    peer = {sp: diffusers_karras_for_spacing(LINEAR, S, sp) for sp in SPACINGS}
    np.testing.assert_allclose(peer["linspace"], ours, rtol=1e-12)  # same ends, same eq. 5
    assert round(peer["leading"][0], 2) == 130.14 and peer["leading"][-1] == pytest.approx(ours[-1], rel=1e-14)
    assert round(peer["trailing"][-1], 4) == 0.0762 and peer["trailing"][0] == pytest.approx(ours[0], rel=1e-14)
    assert np.allclose(diffusers_dpmsolver_karras_ends(LINEAR), (ours[0], ours[-1]), rtol=1e-14)


@FAST
@given(T_=st.integers(21, 2000), data=st.data())  # T = 20 has beta_T = 1, sigma(T) = inf
def test_diffusers_karras_ends_agree_exactly_when_the_grid_reaches_T_and_1(T_, data):
    # Mutation caught: as above; the leading and trailing ends then always agree with refdiff's.
    S_ = data.draw(st.integers(2, T_), label="S")
    sched = linear(T_)
    ours = sched.sigma_at(karras_times(sched, S_)[[0, -1]])  # refdiff (D6): sigma(T), sigma(1)
    assert ours[0] == sched.sigma_at(T_) and ours[1] == sched.sigma_at(1)
    for spacing in SPACINGS:
        if spacing == "trailing" and diffusers_trailing_arange(T_, S_).size != S_:
            continue  # diffusers' grid then has an extra k = -1 (test above)
        peer = diffusers_karras_for_spacing(sched, S_, spacing)
        ts = sched.timesteps(S_, spacing)
        top, bottom = peer[0] == pytest.approx(ours[0], rel=1e-13), peer[-1] == pytest.approx(ours[1], rel=1e-13)
        assert top == (ts[0] == T_) and bottom == (ts[-1] == 1)
        if spacing == "linspace":  # both ends always
            assert top and bottom
        if spacing == "leading":  # the top end only when (S - 1) (T // S) = T - 1
            assert bottom and top == ((S_ - 1) * (T_ // S_) == T_ - 1)
        if spacing == "trailing":  # the bottom end only when round(T / S) = 1
            assert top and bottom == (ts[-1] == 1)
