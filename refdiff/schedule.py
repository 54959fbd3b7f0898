"""Noise schedules and timestep selection (docs/schedule.md).

Math time t runs over 0..T with t = 0 the clean data, so every array here has length T + 1 and
``alpha_bar[0] == 1``, ``betas[0] == 0``. diffusers and guided-diffusion index the same steps by
k = t - 1 (docs/notation.md, eq. (N1)).
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator

from .arrays import as_count, as_real, is_real

SPACINGS = ("leading", "trailing", "linspace")
DIFFUSERS_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# The keys of a diffusers scheduler config that define the schedule (eq. (S9)); every other key
# (timestep_spacing, steps_offset, prediction_type, clip_sample, ...) is about sampling and is ignored.
DIFFUSERS_SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "trained_betas",
                           "rescale_betas_zero_snr")


@dataclass(frozen=True, eq=False)
class Schedule:
    """A variance schedule beta_1..beta_T and the quantities derived from it (eq. (S1)).

    Attributes
    ----------
    betas : ndarray, shape (T + 1,)
        betas[0] = 0, betas[t] = beta_t for t = 1..T.
    alphas : ndarray, shape (T + 1,)
        alpha_t = 1 - beta_t.
    alpha_bar : ndarray, shape (T + 1,)
        alpha_bar_t = prod_{s <= t} alpha_s, so alpha_bar[0] = 1.
    T : int
        Number of diffusion steps.

    Build one with ``Schedule.linear``, ``Schedule.cosine`` or ``Schedule.from_betas``.
    """

    betas: np.ndarray

    def __post_init__(self):
        betas = np.array(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 2 or betas[0] != 0.0:
            raise ValueError("betas must be a 1-D array [0, beta_1, ..., beta_T] with T >= 1; "
                             "use Schedule.from_betas for beta_1..beta_T")
        _check_betas(betas[1:])
        alphas = 1.0 - betas
        if np.any(alphas[1:] == 1.0):
            raise ValueError("betas must be large enough that 1 - beta < 1 in float64 (beta > ~1e-16)")
        alpha_bar = np.cumprod(alphas)
        for arr in (betas, alphas, alpha_bar):
            arr.flags.writeable = False
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas", alphas)
        object.__setattr__(self, "alpha_bar", alpha_bar)
        object.__setattr__(self, "_log_cubic", _log_alpha_bar_cubics(alpha_bar))

    @property
    def T(self):
        return self.betas.size - 1

    def __repr__(self):
        return f"Schedule(T={self.T}, alpha_bar_T={self.alpha_bar[-1]:.3g})"

    @classmethod
    def from_betas(cls, betas):
        """Schedule from beta_1..beta_T, each in (0, 1] (eq. (S1))."""
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"betas must be a 1-D array of length T >= 1, got shape {betas.shape}")
        _check_betas(betas)
        return cls(np.concatenate([[0.0], betas]))

    @classmethod
    def linear(cls, T, beta_start=1e-4, beta_end=0.02):
        """Linear betas rescaled by 1000 / T, as guided-diffusion does (eq. (S2)).

        beta_t = (1000 / T) * linspace(beta_start, beta_end, T)[t - 1]; for T = 1000 this is
        diffusers' "linear" schedule (Ho et al. 2020, Sec. 4). The rescaling keeps the sum of the
        betas, hence alpha_bar_T, nearly fixed: 4.04e-5 at T = 1000, tending to
        exp(-500 (beta_start + beta_end)) = 4.3e-5 as T grows, 2.0e-5 at T = 100. Below T = 20 the
        rescaled beta_end exceeds 1 and the schedule is rejected.
        """
        T = as_count(T, "T", low=1)
        beta_start, beta_end = as_real(beta_start, "beta_start", above=0), as_real(beta_end, "beta_end", above=0)
        scale = 1000.0 / T
        betas = np.linspace(scale * beta_start, scale * beta_end, T)
        if betas.max() > 1:
            raise ValueError(f"T={T} is too small for beta_start={beta_start}, beta_end={beta_end}: "
                             f"the rescaled betas (1000 / T) * beta must stay <= 1")
        return cls.from_betas(betas)

    @classmethod
    def scaled_linear(cls, T, beta_start=0.00085, beta_end=0.012):
        """Stable Diffusion's betas: the square roots linear in t, beta_t = linspace(sqrt(beta_start),
        sqrt(beta_end), T)[t - 1]^2 (eq. (S7)); diffusers' "scaled_linear".

        Computed in float64 (diffusers computes it in float32), for any T, without the 1000 / T
        rescaling that ``linear`` applies. The defaults are Stable Diffusion 1.x and 2.x's.
        """
        T = as_count(T, "T", low=1)
        beta_start = as_real(beta_start, "beta_start", above=0, high=1)
        beta_end = as_real(beta_end, "beta_end", above=0, high=1)
        return cls.from_betas(np.linspace(np.sqrt(beta_start), np.sqrt(beta_end), T) ** 2)

    @classmethod
    def cosine(cls, T, s=0.008, max_beta=0.999):
        """Cosine schedule of Nichol & Dhariwal (2021, eq. 17), betas capped at max_beta (eq. (S3)).

        alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), and
        beta_t = min(1 - f(t) / f(t - 1), max_beta); diffusers calls it "squaredcos_cap_v2".
        """
        T = as_count(T, "T", low=1)
        s, max_beta = as_real(s, "s", low=0), as_real(max_beta, "max_beta", above=0, high=1)
        f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
        return cls.from_betas(np.minimum(1.0 - f[1:] / f[:-1], max_beta))

    def alpha_bar_at(self, t):
        """alpha_bar at real times t in [0, T], equal to ``alpha_bar[t]`` at every integer (eq. (S6)).

        Between integers k < t < k + 1: exp of the monotone cubic (PCHIP, Fritsch & Carlson 1980)
        through the points (k, log alpha_bar_k) where alpha_bar_k > 0; on an interval whose right
        end has alpha_bar_{k+1} = 0, linear in alpha_bar itself. Non-increasing and continuous;
        used for every schedule, cosine included (docs/schedule.md, (S6)).

        Parameters
        ----------
        t : float or array of any shape, each in [0, T]

        Returns
        -------
        float64 array of t's shape
        """
        t = _check_times(t, self.T)
        k = np.floor(t).astype(np.int64)
        out = np.empty(t.shape)
        whole = t == k
        out[whole] = self.alpha_bar[k[whole]]  # exact at the integers, no interpolation round-off
        out[~whole] = _on_segment(self._segments(k[~whole]), t[~whole])
        return out

    def _segments(self, k):
        """What eq. (S6) needs on the intervals [k, k + 1], k an int array: (k, alpha_bar_k,
        alpha_bar_{k+1}, the PCHIP coefficients of log alpha_bar there, (4, n)), for ``_on_segment``."""
        c = self._log_cubic[:, np.minimum(k, self._log_cubic.shape[1] - 1)]  # unused where alpha_bar_{k+1} = 0
        return k, self.alpha_bar[k], self.alpha_bar[k + 1], c

    def sigma_at(self, t):
        """sigma(t) = sqrt((1 - alpha_bar(t)) / alpha_bar(t)) at real t in [0, T] (eq. (S6)); inf where alpha_bar is 0."""
        return _noise_to_signal(self.alpha_bar_at(t))

    def t_of_sigma(self, sigma):
        """The time t in [0, T] with sigma_at(t) = sigma: the inverse of eq. (S6).

        sigma(t) is increasing (strictly while alpha_bar > 0). The integers k - 1 < t <= k come from
        the table of sigma_k. Then splitting a bracket (``_split``: into 32 parts for up to 64 sigmas,
        else in half) until its two ends are neighbouring floats pins t down to float64 resolution,
        each split evaluating sigma exactly as ``sigma_at`` does. The bracket is [k - 1, k], or
        t0 +- 1e-11 around a Newton solution t0 of the cubic (``_newton_start``, within 1e-11 for
        t >= 1 on the named schedules) wherever sigma at its ends confirms that it holds the answer:
        for one sigma, 2-4 splits of 32 where halving took 8-17. sigma: finite, in [0, sigma_at(T)].
        """
        if not is_real(sigma):
            raise ValueError(f"sigma must be a real number or array, finite and >= 0, got {sigma!r}")
        sigma = np.asarray(sigma, dtype=np.float64)
        if not np.isfinite(sigma).all() or (sigma < 0).any():
            raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
        table = _noise_to_signal(self.alpha_bar)
        if (sigma > table[-1]).any():
            raise ValueError(f"sigma must be <= sigma(T) = {table[-1]:.6g}, got {sigma.max():.6g}")
        k = np.searchsorted(table, sigma.reshape(-1))  # the first k with sigma_k >= sigma
        t = k.astype(np.float64)
        inside = table[k] != sigma.reshape(-1)  # else t = k exactly
        k = k[inside] - 1
        target, segments = sigma.reshape(-1)[inside], self._segments(k)
        columns = tuple(part[..., None] for part in segments)  # (n, 1) and (4, n, 1): gathered once for every split

        def below(times):
            """sigma(times) < sigma, row by row, for times of shape (n, j)."""
            return _noise_to_signal(_on_segment(columns, times)) < target[:, None]

        lo_in, hi_in = k.astype(np.float64), t[inside]
        guess = lo_in + _newton_start(segments, target)
        near = np.stack([np.maximum(guess - 1e-11, lo_in), np.minimum(guess + 1e-11, hi_in)], axis=1)
        ends = below(near)
        brackets = ends[:, 0] & ~ends[:, 1]  # invariant: sigma(lo) < sigma <= sigma(hi)
        lo_in, hi_in = np.where(brackets, near[:, 0], lo_in), np.where(brackets, near[:, 1], hi_in)
        while not _neighbours(lo_in, hi_in):  # each split narrows a bracket that holds a float (``_split``)
            lo_in, hi_in = _split(lo_in, hi_in, below)
        t[inside] = np.where(self.sigma_at(lo_in) == target, lo_in, hi_in)
        return t.reshape(sigma.shape)

    def timesteps(self, steps, spacing="leading"):
        """The `steps` timesteps a fast sampler visits, in decreasing order, each in 1..T (eq. (S4)).

        Exactly diffusers' ``set_timesteps`` with ``timestep_spacing=spacing`` and steps_offset 0,
        shifted by one (diffusers' k = our t - 1):
        - "leading":  k = r * i for i = 0..steps-1, r = T // steps (t = T is reached only when
          r * (steps - 1) = T - 1, e.g. steps = T);
        - "trailing": k = round(T - i * T / steps) - 1 (starts at t = T);
        - "linspace": k = round(linspace(0, T - 1, steps)) (both ends included).
        """
        T = self.T
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
            raise ValueError(f"steps must be an integer in 1..{T}, got {steps!r}")
        if spacing == "leading":
            k = np.arange(steps) * (T // steps)
        elif spacing == "trailing":  # diffusers' arange(T, 0, -T / steps) can yield steps + 1
            # values through float round-off (e.g. T = 1000, steps = 61); we keep the first `steps`.
            k = np.round(np.arange(T, 0, -T / steps))[:steps].astype(np.int64) - 1
        elif spacing == "linspace":
            k = np.round(np.linspace(0, T - 1, steps)).astype(np.int64)
        else:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        return np.sort(k.astype(np.int64) + 1)[::-1].copy()

    def respace(self, timesteps):
        """The schedule that steps straight between the given timesteps (eq. (S5)).

        With sorted timesteps t_1 < ... < t_S, the new schedule has T' = S and
        alpha_bar'_j = alpha_bar_{t_j}, hence beta'_j = 1 - alpha_bar_{t_j} / alpha_bar_{t_{j-1}}
        (t_0 = 0), as guided-diffusion's ``SpacedDiffusion`` computes them for the timesteps that
        ``space_timesteps`` picks. Index j of the new schedule stands
        for original timestep t_j, which is what a model must be called with.
        """
        ts = np.unique(np.asarray(timesteps))
        if ts.size == 0 or not np.issubdtype(ts.dtype, np.integer) or ts[0] < 1 or ts[-1] > self.T:
            raise ValueError(f"timesteps must be distinct integers in 1..{self.T}, got {np.asarray(timesteps)}")
        # alpha_bar_{t_j} / alpha_bar_{t_{j-1}} as the product of alpha_s over t_{j-1} < s <= t_j:
        # the same number, but it stays in [0, 1) where alpha_bar itself reaches 0 or underflows.
        ratio = np.multiply.reduceat(self.alphas[1:ts[-1] + 1], np.concatenate([[0], ts[:-1]]))
        return Schedule.from_betas(1.0 - ratio)

    def rescale_zero_terminal_snr(self):
        """This schedule with alpha_bar_T = 0 exactly and alpha_bar_1 kept: Lin et al. (2024), Alg. 1 (eq. (S8)).

        sqrt(alpha_bar_t) is shifted by its value at T and scaled back to its value at t = 1:
        r_t <- (r_t - r_T) r_1 / (r_1 - r_T); the betas follow from the new alpha_bar as
        1 - alpha_bar_t / alpha_bar_{t-1}, so beta_T = 1. An eps prediction cannot give x0 at t = T
        then (docs/process.md, (C1)): samplers refuse to start there with one.
        """
        if self.T < 2:
            raise ValueError("the schedule must have T >= 2 to be rescaled to zero terminal SNR (r_1 = r_T at T = 1)")
        root = np.sqrt(self.alpha_bar[1:])
        root = (root - root[-1]) * root[0] / (root[0] - root[-1])
        alpha_bar = root * root
        return Schedule.from_betas(1.0 - np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]]))

    @classmethod
    def from_diffusers_config(cls, config):
        """The schedule of a diffusers scheduler config: a dict or the path of a scheduler_config.json (eq. (S9)).

        trained_betas first if given (their number must be num_train_timesteps); else beta_schedule
        "linear" (diffusers' own: linspace(beta_start, beta_end, T), no 1000 / T rescaling),
        "scaled_linear" (``scaled_linear``) or "squaredcos_cap_v2" (``cosine``); then
        rescale_betas_zero_snr (missing: false). Missing keys take DDPMScheduler's defaults (1000,
        "linear", 1e-4, 0.02); keys outside DIFFUSERS_SCHEDULE_KEYS are ignored.
        """
        config = _diffusers_config(config)
        T = as_count(config.get("num_train_timesteps", 1000), "num_train_timesteps", low=1)
        trained = config.get("trained_betas")
        if trained is not None:
            betas = np.asarray(trained, dtype=np.float64) if is_real(trained) else None
            if betas is None or betas.shape != (T,):
                raise ValueError(f"trained_betas must be a list of num_train_timesteps = {T} numbers, got {trained!r}")
            sched = cls.from_betas(betas)
        else:
            sched = cls._diffusers_betas(config, T)
        zero_snr = config.get("rescale_betas_zero_snr", False)
        if not isinstance(zero_snr, bool):
            raise ValueError(f"rescale_betas_zero_snr must be true or false, got {zero_snr!r}")
        return sched.rescale_zero_terminal_snr() if zero_snr else sched

    @classmethod
    def _diffusers_betas(cls, config, T):
        """The schedule that config's beta_schedule, beta_start and beta_end name (``from_diffusers_config``)."""
        kind = config.get("beta_schedule", "linear")
        start = as_real(config.get("beta_start", 1e-4), "beta_start", above=0, high=1)
        end = as_real(config.get("beta_end", 0.02), "beta_end", above=0, high=1)
        if kind == "linear":
            return cls.from_betas(np.linspace(start, end, T))
        if kind == "scaled_linear":
            return cls.scaled_linear(T, start, end)
        if kind == "squaredcos_cap_v2":
            return cls.cosine(T)
        raise ValueError(f"beta_schedule must be one of {DIFFUSERS_BETA_SCHEDULES}, got {kind!r}")

    def to_diffusers_config(self):
        """A diffusers config that gives this schedule back: its betas as ``trained_betas`` (eq. (S9)).

        ``Schedule.from_diffusers_config(s.to_diffusers_config())`` has the same betas, bit for bit,
        also through JSON (Python writes floats as their shortest round-tripping repr).
        """
        return {"num_train_timesteps": self.T, "beta_schedule": "linear", "trained_betas": self.betas[1:].tolist(),
                "rescale_betas_zero_snr": False}

    def posterior_variance(self):
        """beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t for t = 0..T (eq. (P3)).

        Index 0 is set to 0 (there is no step into t = -1).
        """
        var = np.zeros(self.T + 1)
        var[1:] = (1.0 - self.alpha_bar[:-1]) / (1.0 - self.alpha_bar[1:]) * self.betas[1:]
        return var


def _diffusers_config(config):
    """config as a dict: itself, or the JSON object in the file it names; ValueError naming the file."""
    if isinstance(config, (str, Path)):
        try:
            with open(config, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"config: cannot read {str(config)!r} as a diffusers scheduler_config.json ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict or the path of a scheduler_config.json holding a JSON object, "
                         f"got {type(config).__name__}")
    return config


_SPLITS = 32  # t_of_sigma's points per bracket and step for up to _SPLIT_ROWS sigmas: 5 bits of t for ~one step's cost
_SPLIT_ROWS = 64  # beyond this many sigmas, 31 points per row cost more than the steps they save: halve instead


def _log_alpha_bar_cubics(alpha_bar):
    """The coefficients (4, P - 1) of PCHIP through (t, log alpha_bar_t) over the P times with
    alpha_bar_t > 0 (eq. (S6)): column k is the cubic on [k, k + 1], highest power first. One
    column of NaN if only t = 0 has alpha_bar > 0 (no interval has a positive right end then).
    """
    positive = np.flatnonzero(alpha_bar > 0)
    if positive.size < 2:
        return np.full((4, 1), np.nan)
    coef = PchipInterpolator(positive.astype(np.float64), np.log(alpha_bar[positive])).c
    coef.flags.writeable = False
    return coef


def _on_segment(segments, t):
    """alpha_bar(t) on the intervals of ``Schedule._segments``, k < t < k + 1 (eq. (S6)); unchecked.

    exp of the PCHIP cubic of log alpha_bar on [k, k + 1], written out by Horner's rule in
    u = t - k from the interpolant's coefficients (``PchipInterpolator.c``), kept within
    [alpha_bar_{k+1}, alpha_bar_k]; linear in alpha_bar where alpha_bar_{k+1} = 0.
    """
    k, a_lo, a_hi, c = segments
    u = t - k
    with np.errstate(over="ignore", invalid="ignore"):
        log_a = ((c[0] * u + c[1]) * u + c[2]) * u + c[3]
        val = np.where(a_hi > 0, np.minimum(np.exp(log_a), a_lo), a_lo * (1.0 - u))
    return np.minimum(np.maximum(val, a_hi), a_lo)  # clip(val, a_hi, a_lo), without np.clip's overhead


def _split(lo, hi, below):
    """One step of ``Schedule.t_of_sigma``'s search: the points lo + (hi - lo) j / m, j = 1..m - 1
    (m = ``_SPLITS``, 2 beyond ``_SPLIT_ROWS`` rows), and the neighbouring pair (lo', hi') of [lo, points, hi]
    where ``below`` first turns False (taken as True at lo and False at hi), so that sigma(lo') <
    sigma <= sigma(hi') holds again. The bracket shrinks to about 1 / m of its width (bisection
    when m = 2), and never stalls: the point j = m / 2 lies strictly inside wherever a float does."""
    m = _SPLITS if lo.size <= _SPLIT_ROWS else 2
    ends = np.concatenate([lo[:, None], lo[:, None] + (hi - lo)[:, None] * (np.arange(1, m) / m), hi[:, None]], axis=1)
    inner = below(ends[:, 1:-1])
    first = np.argmin(np.concatenate([inner, np.zeros((lo.size, 1), dtype=bool)], axis=1), axis=1) + 1
    rows = np.arange(lo.size)
    return ends[rows, first - 1], ends[rows, first]


def _neighbours(lo, hi):
    """Whether every bracket [lo, hi] has no float strictly inside: its midpoint rounds to an end."""
    mid = 0.5 * (lo + hi)
    return bool(((mid <= lo) | (mid >= hi)).all())


def _newton_start(segments, sigma):
    """An approximate u = t - k in [0, 1] with sigma(t) = sigma on the intervals of ``Schedule._segments``:
    six Newton steps on the cubic c(u) = log alpha_bar = -log(1 + sigma^2) from the chord's root;
    u = 1 - alpha_bar / alpha_bar_k where alpha_bar_{k+1} = 0. Only a starting point (``t_of_sigma``)."""
    _, a_lo, a_hi, c = segments
    log_a = -np.log1p(sigma * sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.minimum(np.maximum((log_a - c[3]) / (np.log(a_hi) - c[3]), 0.0), 1.0)  # np.clip, without its overhead
        for _ in range(6):
            slope = (3 * c[0] * u + 2 * c[1]) * u + c[2]
            u = np.minimum(np.maximum(u - (((c[0] * u + c[1]) * u + c[2]) * u + c[3] - log_a) / slope, 0.0), 1.0)
    return np.where(a_hi > 0, np.where(np.isnan(u), 0.5, u), 1.0 - np.exp(log_a) / a_lo)


def _noise_to_signal(alpha_bar):
    """sigma = sqrt((1 - alpha_bar) / alpha_bar), inf where alpha_bar = 0 (eq. (S6))."""
    with np.errstate(divide="ignore", over="ignore"):
        return np.sqrt((1.0 - alpha_bar) / alpha_bar)


def _check_times(t, T, name="t"):
    """t as a finite float64 array in [0, T], raising ValueError naming ``name`` otherwise."""
    try:
        if not is_real(t):
            raise TypeError(f"dtype of {t!r}")
        t = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number or array in [0, {T}], got {t!r}") from None
    if not np.all(np.isfinite(t)):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    bad = t[(t < 0) | (t > T)]
    if bad.size:
        raise ValueError(f"{name} must be in [0, {T}], got {bad[0]}")
    return t


def _check_betas(betas):
    if not np.all(np.isfinite(betas)):
        raise ValueError("betas must be finite, got NaN or inf")
    if not np.all((betas > 0) & (betas <= 1)):
        bad = betas[~((betas > 0) & (betas <= 1))][0]
        raise ValueError(f"betas must lie in (0, 1], got {bad}")
