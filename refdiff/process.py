"""The forward process q(x_t | x_0), its posterior, and the conversions between eps, x0, score
and v (docs/process.md).

Every function takes the schedule and integer timesteps t in 1..T (an int, or one per row), and
batch-first arrays of shape (N, D). Each result is a linear combination of two arrays whose
coefficients are computed in float64 from the schedule's tables and cast once to the input's
dtype, so float32 in gives float32 out without losing 1 - alpha_bar near t = 1.

Notation (docs/notation.md): a = alpha_bar_t, sigma = sqrt(1 - a).
"""
import numpy as np
from autograd.tracer import getval

from .arrays import as_points, as_timesteps


def column(table, t, like):
    """table[t] as a column of shape (N, 1) in the dtype of ``like``, to broadcast against (N, D)."""
    return table[t].astype(like.dtype)[:, None]


def _prepare(sched, t, *arrays):
    """Check arrays of one shape (N, D) and timesteps in 1..T.

    Returns the arrays (in a common floating dtype), t as int64 of shape (N,), and
    a = alpha_bar_t as a float64 column of shape (N, 1).
    """
    names = [name for name, _ in arrays]
    xs = [as_points(value, name=name) for name, value in arrays]
    for name, x in zip(names[1:], xs[1:]):
        if x.shape != xs[0].shape:
            raise ValueError(f"{name} must have the shape of {names[0]} {xs[0].shape}, got {x.shape}")
    dtype = np.result_type(*map(getval, xs))
    xs = [x if getval(x).dtype == dtype else x.astype(dtype) for x in xs]
    t = as_timesteps(t, xs[0].shape[0], sched.T)
    return xs, t, sched.alpha_bar[t][:, None]


def _signal_left(a, t, what):
    """Raise ValueError naming t unless every alpha_bar_t in a is > 0: ``what`` divides by sqrt(alpha_bar_t).

    alpha_bar_t = 0 only at t = T of a zero-terminal-SNR schedule (docs/schedule.md, (S8)), where
    x_t is pure noise and carries nothing of x0 (docs/process.md, (C1)).
    """
    if np.any(a == 0):
        bad = int(np.asarray(t).reshape(-1)[np.flatnonzero(a.reshape(-1) == 0)[0]])
        raise ValueError(f"t = {bad} has alpha_bar = 0 (zero terminal SNR): {what} divides by sqrt(alpha_bar) and "
                         "is undefined there; an x0 or v prediction gives x0 at that t")


def _combine(c1, x1, c2=None, x2=None):
    """c1 * x1 (+ c2 * x2), the float64 coefficient columns cast to the arrays' dtype first."""
    out = c1.astype(x1.dtype) * x1
    return out if c2 is None else out + c2.astype(x1.dtype) * x2


def q_sample(sched, x0, t, eps):
    """Draw x_t ~ q(x_t | x_0) given the noise: x_t = sqrt(a) x0 + sqrt(1 - a) eps (eq. (P1)).

    Ho et al. (2020), eq. 4. Returns an array of shape (N, D).
    """
    (x0, eps), _, a = _prepare(sched, t, ("x0", x0), ("eps", eps))
    return _combine(np.sqrt(a), x0, np.sqrt(1 - a), eps)


def q_posterior(sched, x0, xt, t):
    """Mean and variance of q(x_{t-1} | x_t, x_0) (eq. (P2), (P3); Ho et al. 2020, eqs. 6-7).

    mean = sqrt(a_{t-1}) beta_t / (1 - a_t) x0 + sqrt(alpha_t) (1 - a_{t-1}) / (1 - a_t) x_t,
    var  = (1 - a_{t-1}) / (1 - a_t) beta_t.

    Returns
    -------
    mean : ndarray, shape (N, D)
    var : ndarray, shape (N, 1), the same for every coordinate.
    """
    (x0, xt), t, a = _prepare(sched, t, ("x0", x0), ("xt", xt))
    a_prev, beta = sched.alpha_bar[t - 1][:, None], sched.betas[t][:, None]
    mean = _combine(np.sqrt(a_prev) * beta / (1 - a), x0, np.sqrt(1 - beta) * (1 - a_prev) / (1 - a), xt)
    return mean, ((1 - a_prev) / (1 - a) * beta).astype(mean.dtype)


def eps_to_x0(sched, xt, t, eps):
    """x0 = (x_t - sqrt(1 - a) eps) / sqrt(a), inverting eq. (P1) (eq. (C1))."""
    (xt, eps), t, a = _prepare(sched, t, ("xt", xt), ("eps", eps))
    _signal_left(a, t, "x0 from eps")
    return _combine(1 / np.sqrt(a), xt, -np.sqrt(1 - a) / np.sqrt(a), eps)


def x0_to_eps(sched, xt, t, x0):
    """eps = (x_t - sqrt(a) x0) / sqrt(1 - a), inverting eq. (P1) (eq. (C2))."""
    (xt, x0), _, a = _prepare(sched, t, ("xt", xt), ("x0", x0))
    return _combine(1 / np.sqrt(1 - a), xt, -np.sqrt(a) / np.sqrt(1 - a), x0)


def eps_to_score(sched, t, eps):
    """The score that a noise prediction implies: -eps / sqrt(1 - a) (eq. (C3)).

    For the optimal eps = E[eps | x_t] this is grad log q_t(x_t) exactly (Song et al. 2021,
    Secs. 3.3-3.4, VP SDE; docs/process.md derives it).
    """
    (eps,), _, a = _prepare(sched, t, ("eps", eps))
    return _combine(-1 / np.sqrt(1 - a), eps)


def score_to_eps(sched, t, score):
    """eps = -sqrt(1 - a) * score, inverting eq. (C3) (eq. (C4))."""
    (score,), _, a = _prepare(sched, t, ("score", score))
    return _combine(-np.sqrt(1 - a), score)


def eps_to_v(sched, xt, t, eps):
    """v = sqrt(a) eps - sqrt(1 - a) x0 = (eps - sqrt(1 - a) x_t) / sqrt(a) (eq. (C5)).

    Salimans & Ho (2022), Sec. 4 and Appendix D.
    """
    (xt, eps), t, a = _prepare(sched, t, ("xt", xt), ("eps", eps))
    _signal_left(a, t, "v from eps")
    return _combine(1 / np.sqrt(a), eps, -np.sqrt(1 - a) / np.sqrt(a), xt)


def v_to_eps(sched, xt, t, v):
    """eps = sqrt(1 - a) x_t + sqrt(a) v, inverting eq. (C5) (eq. (C6))."""
    (xt, v), _, a = _prepare(sched, t, ("xt", xt), ("v", v))
    return _combine(np.sqrt(1 - a), xt, np.sqrt(a), v)


def tweedie_x0(sched, xt, t, score):
    """E[x_0 | x_t] = (x_t + (1 - a) score) / sqrt(a), Tweedie's formula (eq. (C7)).

    Efron (2011); it is eq. (C1) with the optimal eps = -sqrt(1 - a) score substituted.
    """
    (xt, score), t, a = _prepare(sched, t, ("xt", xt), ("score", score))
    _signal_left(a, t, "Tweedie's x0")
    return _combine(1 / np.sqrt(a), xt, (1 - a) / np.sqrt(a), score)


def p_mean(sched, xt, t, eps):
    """Mean of the learned reverse step: (x_t - beta_t / sqrt(1 - a) eps) / sqrt(alpha_t) (eq. (P4)).

    Ho et al. (2020), eq. 11; equal to the posterior mean (P2) at x0 = eps_to_x0(x_t, eps).
    """
    (xt, eps), t, a = _prepare(sched, t, ("xt", xt), ("eps", eps))
    _signal_left(a, t, "the reverse step's mean from eps")
    beta = sched.betas[t][:, None]
    return _combine(1 / np.sqrt(1 - beta), xt, -beta / (np.sqrt(1 - a) * np.sqrt(1 - beta)), eps)
