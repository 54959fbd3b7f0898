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

from .arrays import alpha_bar_of, as_points, as_times, as_timesteps


def column(table, t, like):
    """table[t] as a column of shape (N, 1) in the dtype of ``like``, to broadcast against (N, D)."""
    return table[t].astype(like.dtype)[:, None]


def _prepare(sched, t, *arrays, real=False):
    """Check arrays of one shape (N, D) and timesteps in 1..T (``real``: also real times in [1, T]).

    Returns the arrays (in a common floating dtype), t as int64 of shape (N,) (float64 for real
    times), and a = alpha_bar_t as a float64 column of shape (N, 1) (eq. (S6) at real t).
    """
    names = [name for name, _ in arrays]
    xs = [as_points(value, name=name) for name, value in arrays]
    for name, x in zip(names[1:], xs[1:]):
        if x.shape != xs[0].shape:
            raise ValueError(f"{name} must have the shape of {names[0]} {xs[0].shape}, got {x.shape}")
    dtype = np.result_type(*map(getval, xs))
    xs = [x if getval(x).dtype == dtype else x.astype(dtype) for x in xs]
    t = (as_times if real else as_timesteps)(t, xs[0].shape[0], sched.T)
    return xs, t, alpha_bar_of(sched, t)[:, None]


def _signal_left(a, t, what, quantity="alpha_bar"):
    """Raise ValueError naming t unless every entry of ``a`` (alpha_bar_t, or alpha_t) is > 0:
    ``what`` divides by its square root.

    alpha_bar_t = 0 at t = T of a zero-terminal-SNR schedule (docs/schedule.md, (S8)), where x_t is
    pure noise and carries nothing of x0 (docs/process.md, (C1)), and alpha_T = 1 - beta_T = 0 there.
    """
    if np.any(a == 0):
        bad = int(np.asarray(t).reshape(-1)[np.flatnonzero(np.asarray(a).reshape(-1) == 0)[0]])
        raise ValueError(f"t = {bad} has {quantity} = 0 (zero terminal SNR): {what} divides by sqrt({quantity}) and "
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


PREDICTIONS = ("eps", "x0", "v", "score")  # what a denoiser may predict (docs/process.md, (C1)-(C6))


def _coefficients(a, target, to_eps):
    """(c_x, c_p) with eps = c_x x_t + c_p ``target`` (to_eps) or ``target`` = c_x x_t + c_p eps, c_x None
    where x_t does not enter: (C1)-(C6) written as two float64 columns of a = alpha_bar; target not eps."""
    r, s = np.sqrt(a), np.sqrt(1 - a)
    if target == "v":
        return (s, r) if to_eps else (-s / r, 1 / r)  # (C6), (C5)
    if target == "score":
        return (None, -s) if to_eps else (None, -1 / s)  # (C4), (C3)
    return (1 / s, -r / s) if to_eps else (1 / r, -s / r)  # (C2), (C1)


def _convert(sched, xt, t, value, name, target, to_eps, real):
    """eps from a prediction ``value`` of ``target`` (to_eps), or that prediction from eps ``value``;
    t integer in 1..T, or also real in [1, T] (``real``, eq. (S6))."""
    if target not in PREDICTIONS:
        raise ValueError(f"target must be one of {PREDICTIONS}, got {target!r}")
    named = [("xt", xt), (name, value)] if xt is not None else [(name, value)]
    arrays, t, a = _prepare(sched, t, *named, real=real)
    if target == "eps":
        return arrays[-1].copy()
    if not to_eps and target in ("x0", "v"):
        _signal_left(a, t, f"{target} from eps")
    c_x, c_p = _coefficients(a, target, to_eps)
    if c_x is None:
        return _combine(c_p, arrays[-1])
    return _combine(c_x, arrays[0], c_p, arrays[1])


def eps_to_prediction(sched, xt, t, eps, target):
    """What a noise prediction implies for ``target`` in PREDICTIONS at x_t: x0 (C1), score (C3), v (C5).

    t: integer timesteps in 1..T or real times in [1, T] (eq. (S6)), one or one per row. For the
    optimal eps = E[eps | x_t] each is the optimal prediction of its target, E[target | x_t]
    (the conversions are affine at fixed x_t). x0 and v divide by sqrt(alpha_bar): ValueError
    naming t where alpha_bar_t = 0.
    """
    return _convert(sched, xt, t, eps, "eps", target, False, True)


def prediction_to_eps(sched, xt, t, prediction, target):
    """The noise prediction that a prediction of ``target`` implies at x_t: (C2), (C4), (C6); t as
    in ``eps_to_prediction``."""
    return _convert(sched, xt, t, prediction, "prediction", target, True, True)


def prediction_to_x0(sched, xt, t, prediction, source):
    """The x0 that a prediction of ``source`` (process.PREDICTIONS) implies at x_t; t as in
    ``eps_to_prediction``. From v by the rotation back, x0 = sqrt(a) x_t - sqrt(1 - a) v (docs/process.md,
    "v"), which holds at alpha_bar = 0 too (x0 = -v there, zero terminal SNR); from x0 itself; from
    eps or the score through eps, (C1), which needs alpha_bar > 0."""
    if source not in PREDICTIONS:
        raise ValueError(f"source must be one of {PREDICTIONS}, got {source!r}")
    if source == "v":
        (xt, v), _, a = _prepare(sched, t, ("xt", xt), ("prediction", prediction), real=True)
        return _combine(np.sqrt(a), xt, -np.sqrt(1 - a), v)
    if source == "x0":
        return _prepare(sched, t, ("xt", xt), ("prediction", prediction), real=True)[0][1].copy()
    return eps_to_prediction(sched, xt, t, prediction_to_eps(sched, xt, t, prediction, source), "x0")


def eps_to_x0(sched, xt, t, eps):
    """x0 = (x_t - sqrt(1 - a) eps) / sqrt(a), inverting eq. (P1) (eq. (C1))."""
    return _convert(sched, xt, t, eps, "eps", "x0", False, False)


def x0_to_eps(sched, xt, t, x0):
    """eps = (x_t - sqrt(a) x0) / sqrt(1 - a), inverting eq. (P1) (eq. (C2))."""
    return _convert(sched, xt, t, x0, "x0", "x0", True, False)


def eps_to_score(sched, t, eps):
    """The score that a noise prediction implies: -eps / sqrt(1 - a) (eq. (C3)).

    For the optimal eps = E[eps | x_t] this is grad log q_t(x_t) exactly (Song et al. 2021,
    Secs. 3.3-3.4, VP SDE; docs/process.md derives it).
    """
    return _convert(sched, None, t, eps, "eps", "score", False, False)


def score_to_eps(sched, t, score):
    """eps = -sqrt(1 - a) * score, inverting eq. (C3) (eq. (C4))."""
    return _convert(sched, None, t, score, "score", "score", True, False)


def eps_to_v(sched, xt, t, eps):
    """v = sqrt(a) eps - sqrt(1 - a) x0 = (eps - sqrt(1 - a) x_t) / sqrt(a) (eq. (C5)).

    Salimans & Ho (2022), Sec. 4 and Appendix D.
    """
    return _convert(sched, xt, t, eps, "eps", "v", False, False)


def v_to_eps(sched, xt, t, v):
    """eps = sqrt(1 - a) x_t + sqrt(a) v, inverting eq. (C5) (eq. (C6))."""
    return _convert(sched, xt, t, v, "v", "v", True, False)


def target_of(sched, x0, t, eps, target):
    """The value of ``target`` for one draw (x0, eps) at t, the regression target of training:
    eps; x0; v = sqrt(a) eps - sqrt(1 - a) x0 (C5); the score of q(x_t | x0), -eps / sqrt(1 - a)
    (docs/process.md, "Score", step 1). t as in ``eps_to_prediction``."""
    if target not in PREDICTIONS:
        raise ValueError(f"target must be one of {PREDICTIONS}, got {target!r}")
    (x0, eps), _, a = _prepare(sched, t, ("x0", x0), ("eps", eps), real=True)
    if target == "v":
        return _combine(np.sqrt(a), eps, -np.sqrt(1 - a), x0)
    return {"eps": eps, "x0": x0, "score": _combine(-1 / np.sqrt(1 - a), eps)}[target]


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
    beta = sched.betas[t][:, None]
    _signal_left(1 - beta, t, "the reverse step's mean from eps", "alpha_t")
    return _combine(1 / np.sqrt(1 - beta), xt, -beta / (np.sqrt(1 - a) * np.sqrt(1 - beta)), eps)
