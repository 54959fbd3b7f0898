"""Sampling the tilted density exactly: sequential Monte Carlo with a guided sampler as its proposal
(docs/tilted.md).

CFG's samplers land neither on p(x | y)^(1 + w) p(x)^(-w) nor on one law (docs/theory.md).
Sequential Monte Carlo (Del Moral, Doucet & Jasra 2006) corrects them: particles move by a guided
DDPM step and are weighted, step by step, toward the tilted densities of the noised marginals,
pi_t(x) proportional to q_t(x | y)^(1 + w) q_t(x)^(-w); at t = 0 that is the tilted density
itself. With the oracle log pi_t is exact, so the weighted particles are exactly consistent for it
(``smc``, ``sample``); ``fk_cfg`` weights CFG's DDPM from the two scores alone (Feynman-Kac), which
a learned model can give.
"""
from collections import namedtuple

import numpy as np

from .arrays import alpha_bar_of, as_count, as_points, as_real, check_rng
from .guidance import classifier_free_guidance
from .process import p_mean
from .samplers import sampling_grid

SMCResult = namedtuple("SMCResult", "x log_weights ess")  # particles (N, D), log weights (N,), ESS / N per step
MalaResult = namedtuple("MalaResult", "x log_pi")  # particles (N, D) after a move, log pi_t at them (N,)
LOG_2PI = np.log(2 * np.pi)


def tilted_log_target(mixture, sched, y, w):
    """log pi_t(x) = (1 + w) log q_t(x | y) - w log q_t(x), up to a constant, eq. (F1): exact with the
    oracle ``mixture``; t = 0 gives the tilted density of the data."""
    w = as_real(w, "w")

    def log_target(x, t):
        a = alpha_bar_of(sched, np.full(len(x), t))
        return (1 + w) * mixture.log_prob_noised(x, a, y) - w * mixture.log_prob_noised(x, a)
    return log_target


def smc(eps_fn, log_target, sched, x_T, rng, steps=None, threshold=0.5, mala_steps=1, mala_size=1.0):
    """Sequential Monte Carlo toward ``log_target`` at t = 0, eq. (F2).

    Proposal: DDPM's step (D1) with ``eps_fn`` on the chain respaced to ``steps`` (every timestep
    if None), of variance beta (Ho et al.'s larger choice, the exact reverse variance for data of
    unit variance; beta_tilde, exact only given x_0, is ten times too narrow near t = 0 for a
    proposal and collapses the weights). Backward kernel: the forward noising q(x_t | x_{t_prev}).
    The incremental log weight is log pi_{t_prev}(x') + log q(x | x') - log pi_t(x) - log M(x' | x),
    and the first one corrects x_T ~ N(0, I) to pi_T. Whenever the effective sample size falls
    below ``threshold`` * N the particles are resampled (systematic) and their weights reset.
    After every step but the last the particles make ``mala_steps`` Metropolis-adjusted Langevin
    moves that leave pi_t_prev invariant (``mala``, step size ``mala_size`` (1 - alpha_bar)): they
    keep the weights valid and move the particles toward pi_t_prev where the proposal left them
    short. log pi is evaluated once where a particle lands and carried through resampling and moves.

    Returns SMCResult(x, log_weights, ess): the final particles with their log weights, and the
    ESS / N after each step, before any resampling.
    """
    rng, x = check_rng(rng), as_points(x_T, "x_T")
    threshold, mala_size = as_real(threshold, "threshold", low=0, high=1), as_real(mala_size, "mala_size", above=0)
    mala_steps = as_count(mala_steps, "mala_steps")
    ts = sampling_grid(sched, np.arange(sched.T, 0, -1) if steps is None else steps, discrete=True)
    sub, ess = sched.respace(ts), []
    log_pi = log_target(x, ts[0])
    log_w = log_pi - _log_normal(x, 0.0, 1.0)
    for j, t, t_prev in zip(range(sub.T, 0, -1), ts, np.append(ts[1:], 0)):
        mean = p_mean(sub, x, np.full(len(x), j), np.asarray(eps_fn(x, np.full(len(x), t))))
        var = sub.betas[j]
        x_new = mean + np.sqrt(var) * rng.standard_normal(x.shape)
        back = (np.sqrt(1 - sub.betas[j]) * x_new, sub.betas[j])  # q(x_t | x_{t_prev}), (S5)
        log_pi_new = log_target(x_new, t_prev)
        log_w = log_w + log_pi_new + _log_normal(x, *back) - log_pi - _log_normal(x_new, mean, var)
        x, log_pi = x_new, log_pi_new
        ess.append(effective_sample_size(log_w) / len(x))
        if ess[-1] < threshold:
            keep = systematic_resample(log_w, rng)
            x, log_pi, log_w = x[keep], log_pi[keep], np.zeros(len(x))
        for _ in range(mala_steps if t_prev > 0 else 0):
            x, log_pi = mala(eps_fn, log_target, sched, x, t_prev, mala_size, rng, log_pi)
    return SMCResult(x, log_w, np.array(ess))


def mala(eps_fn, log_target, sched, x, t, size, rng, log_pi=None):
    """One Metropolis-adjusted Langevin step on pi_t, eq. (F4): the proposal x' = x + (h / 2) s(x) + sqrt(h) z
    with the score s = -eps_fn / sqrt(1 - a) (C3; CFG's eps is exactly the score of pi_t) and
    h = size (1 - a), accepted with probability min(1, pi_t(x') q(x | x') / (pi_t(x) q(x' | x)))
    (Roberts & Tweedie 1996), so pi_t is left invariant whatever the step size.

    ``log_pi``: log_target(x, t) when the caller has it (``smc`` does), else evaluated here.
    Returns MalaResult(x, log_pi): the particles after the step and log pi_t at them.
    """
    a = float(alpha_bar_of(sched, np.array([t]))[0])
    h = size * (1 - a)
    drift = lambda z: z - h / 2 * np.asarray(eps_fn(z, np.full(len(z), t))) / np.sqrt(1 - a)
    log_pi = log_target(x, t) if log_pi is None else log_pi
    proposal = drift(x) + np.sqrt(h) * rng.standard_normal(x.shape)
    log_pi_proposal = log_target(proposal, t)
    log_ratio = (log_pi_proposal + _log_normal(x, drift(proposal), h)
                 - log_pi - _log_normal(proposal, drift(x), h))
    accept = np.log(rng.uniform(size=len(x))) < log_ratio
    return MalaResult(np.where(accept[:, None], proposal, x), np.where(accept, log_pi_proposal, log_pi))


def fk_cfg(eps_model, sched, y, w, x_T, rng, steps=None, threshold=0.5):
    """CFG's DDPM with Feynman-Kac weights toward the tilted density from scores alone, eq. (F5).

    With gamma = 1 + w, log pi_t = gamma log q_t(x | y) + (1 - gamma) log q_t(x), and each q_t solves
    the forward Fokker-Planck equation, so d/dt log pi_t is that of a density whose score is CFG's,
    plus (beta / 2) gamma (1 - gamma) |s_y - s|^2 (s_y, s the two scores). Sampling the reverse SDE
    with CFG's score (DDPM) therefore targets pi_0 once each particle carries the weight
    d log W = (beta / 2) gamma (gamma - 1) |s_y - s|^2 per unit of reverse time (Skreta et al. 2025):
    per step, (beta_j / 2) gamma (gamma - 1) |eps(x, t, y) - eps(x, t)|^2 / (1 - alpha_bar_t), from the
    two predictions CFG already makes. No density is needed, so a learned model serves; what is
    approximated is the continuous-time weight by one Euler step per grid interval, and the scores
    by the model. DDPM's step has variance beta (as in ``smc``); resampling as in ``smc``.
    Returns SMCResult(x, log_weights, ess).
    """
    rng, x = check_rng(rng), as_points(x_T, "x_T")
    gamma, threshold = 1 + as_real(w, "w"), as_real(threshold, "threshold", low=0, high=1)
    ts = sampling_grid(sched, np.arange(sched.T, 0, -1) if steps is None else steps, discrete=True)
    sub, log_w, ess = sched.respace(ts), np.zeros(len(x)), []
    labels = np.broadcast_to(np.asarray(y), (len(x),))
    for j, t in zip(range(sub.T, 0, -1), ts):
        tt = np.full(len(x), t)
        cond, uncond = np.asarray(eps_model(x, tt, labels)), np.asarray(eps_model(x, tt))
        log_w = log_w + sub.betas[j] / 2 * gamma * (gamma - 1) * np.sum((cond - uncond) ** 2, axis=1) / (
            1 - sched.alpha_bar[t])  # (F5)
        x = p_mean(sub, x, np.full(len(x), j), (1 + w) * cond - w * uncond)  # (P4) with CFG's eps (G5)
        x = x + np.sqrt(sub.betas[j]) * rng.standard_normal(x.shape) if j > 1 else x
        ess.append(effective_sample_size(log_w) / len(x))
        if ess[-1] < threshold:
            x, log_w = x[systematic_resample(log_w, rng)], np.zeros(len(x))
    return SMCResult(x, log_w, np.array(ess))


def effective_sample_size(log_weights):
    """(sum w)^2 / sum w^2 from log weights, eq. (F3): N for equal weights, 1 when one weight holds all."""
    w = np.exp(log_weights - np.max(log_weights))
    return float(w.sum() ** 2 / (w * w).sum())


def systematic_resample(log_weights, rng):
    """Indices of N particles drawn in proportion to their weights with one uniform offset
    (systematic resampling; Douc, Cappe & Moulines 2005): particle i is kept floor or ceil of N w_i times."""
    w = np.exp(log_weights - np.max(log_weights))
    edges = np.cumsum(w / w.sum())
    edges[-1] = 1.0
    return np.searchsorted(edges, (rng.uniform() + np.arange(len(w))) / len(w))


def resampled(result, rng):
    """Equally weighted particles from an SMCResult: its particles resampled by their weights."""
    return result.x[systematic_resample(result.log_weights, check_rng(rng))]


def _log_normal(x, mean, var):
    """log N(x; mean, var I) per row of x (N, D)."""
    return -0.5 * (np.sum((x - mean) ** 2, axis=1) / var + x.shape[1] * (np.log(var) + LOG_2PI))


def sample(mixture, sched, y, w, n, rng, steps=200, threshold=0.5, mala_steps=1, mala_size=1.0):
    """n draws of the tilted density p(x | y)^(1 + w) p(x)^(-w) of the oracle ``mixture``, eq. (F2):
    ``smc`` with CFG's DDPM step (G5) as the proposal and the exact targets (F1), resampled by the
    final weights (steps: as ``smc``, None for every timestep). Returns (x (n, D), SMCResult); x_T
    is drawn from ``rng`` first.

    The weights need log q_t, which only the oracle has; a learned model takes ``fk_cfg`` (F5),
    whose weights need only its two predictions (docs/tilted.md).
    """
    rng = check_rng(rng)
    x_T = rng.standard_normal((as_count(n, "n", low=1), mixture.dim))
    eps_fn = classifier_free_guidance(mixture.eps_model(sched), y, w)
    result = smc(eps_fn, tilted_log_target(mixture, sched, y, w), sched, x_T, rng, steps, threshold, mala_steps, mala_size)
    return resampled(result, rng), result
