"""Samplers: DDPM ancestral sampling and DDIM (docs/samplers.md).

Every sampler takes a plain ``eps_fn(x, t) -> eps`` (a model with guidance already applied, or
``lambda x, t: eps_model(x, t, y)``) and never knows about labels or guidance. Each is one
function with a visible loop over decreasing timesteps.

``callback(t, x, eps)``, if given, is called after every step with the timestep t the step
started from (original indexing, 1..T), the new state x_{t_prev} and the eps used.
``return_path=True`` also returns the states as an array of shape (steps + 1, N, D), x_T first.
"""
import numpy as np

from .arrays import as_points, check_rng
from .process import column, eps_to_x0, p_mean

VARIANCES = ("beta_tilde", "beta")


def ddpm(eps_fn, sched, x_T, rng, variance="beta_tilde", steps=None, spacing=None,
         mean_shift=None, return_path=False, callback=None):
    """Ancestral sampling, Ho et al. (2020) Algorithm 2 (eq. (D1)).

    x_{t-1} = mu(x_t, eps) + sigma_t z with mu from eq. (P4) and z ~ N(0, I) for t > 1, z = 0
    at the last step. sigma_t^2 is beta_tilde_t (eq. (P3), the true posterior variance) or beta_t.
    With ``steps`` the chain runs on the respaced schedule over ``sched.timesteps(steps, spacing)``
    (eq. (S5); spacing defaults to "leading"), calling eps_fn with the original timesteps
    (Nichol & Dhariwal 2021, Sec. 4). ``spacing`` without ``steps`` is an error.

    ``mean_shift(x, t) -> g``, if given, moves each step's mean to mu + sigma_t^2 g: the mean-shift
    form of classifier guidance, Dhariwal & Nichol (2021) Algorithm 1 with g from
    ``guidance.classifier_grad`` (eq. (G9)). With sigma_t^2 = beta_tilde_t the shift is 0 at the
    last step (t = 1); the eps form (G3) instead shifts the mean by (beta_t / sqrt(alpha_t)) g, with
    the respaced beta and alpha of the step on a respaced chain (G10).

    Parameters
    ----------
    eps_fn : callable (x (N, D), t (N,) ints) -> eps (N, D)
    sched : Schedule
    x_T : array (N, D), the starting noise (float32 stays float32)
    rng : numpy.random.Generator
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if steps is None and spacing is not None:
        raise ValueError(f"spacing={spacing!r} needs steps: without steps DDPM visits every timestep")
    x = _start(x_T, rng, needs_rng=True)
    ts = np.arange(sched.T, 0, -1) if steps is None else sched.timesteps(steps, spacing or "leading")
    sub = sched.respace(ts)
    var_table = sub.posterior_variance() if variance == "beta_tilde" else sub.betas
    path = [x]
    for j, t in zip(range(sub.T, 0, -1), ts):
        tt = np.full(x.shape[0], j)
        eps = _call(eps_fn, x, t)
        x_new = p_mean(sub, x, tt, eps)
        if mean_shift is not None:
            x_new = x_new + column(var_table, tt, x) * _call(mean_shift, x, t, "mean_shift")
        if j > 1:
            x_new = x_new + np.sqrt(column(var_table, tt, x)) * rng.standard_normal(x.shape, dtype=x.dtype)
        x = _step_done(x_new, t, eps, path, return_path, callback)
    return (x, np.stack(path)) if return_path else x


def ddim(eps_fn, sched, x_T, steps, eta=0.0, spacing="leading", rng=None, return_path=False,
         callback=None):
    """DDIM, Song et al. (2021) eq. 12 with sigma from eq. 16 (eq. (D2)).

    x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z, where
    x0_hat = eq. (C1), sigma = eta sqrt((1 - a_prev) / (1 - a)) sqrt(1 - a / a_prev), and the
    last step goes to t = 0 (a_prev = 1). eta = 0 is deterministic; eta = 1 with every timestep
    has sigma^2 = beta_tilde, DDPM's posterior variance (eq. (D3)).
    """
    if not (np.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    x = _start(x_T, rng, needs_rng=eta > 0)
    ts = sched.timesteps(steps, spacing)
    path = [x]
    for t, t_prev in zip(ts, np.append(ts[1:], 0)):
        tt = np.full(x.shape[0], t)
        a, a_prev = sched.alpha_bar[t], sched.alpha_bar[t_prev]
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        if sigma ** 2 > 1 - a_prev:
            raise ValueError(f"eta = {eta} is too large: sigma^2 exceeds 1 - alpha_bar_prev at t = {t}")
        eps = _call(eps_fn, x, t)
        x0 = eps_to_x0(sched, x, tt, eps)
        x_new = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma ** 2) * eps
        if sigma > 0:
            x_new = x_new + sigma * rng.standard_normal(x.shape, dtype=x.dtype)
        x = _step_done(x_new.astype(x.dtype), t, eps, path, return_path, callback)
    return (x, np.stack(path)) if return_path else x


def _start(x_T, rng, needs_rng):
    """Validate the starting noise and, when the sampler draws noise, the rng."""
    if needs_rng:
        check_rng(rng)
    return as_points(x_T, "x_T")


def _call(fn, x, t, name="eps_fn"):
    """fn(x, t) at one timestep for the whole batch, checked to return an array shaped like x."""
    out = np.asarray(fn(x, np.full(x.shape[0], t)))
    if out.shape != x.shape:
        raise ValueError(f"{name} must return an array of shape {x.shape}, got {out.shape}")
    return out.astype(x.dtype, copy=False)


def _step_done(x, t, eps, path, return_path, callback):
    if return_path:
        path.append(x)
    if callback is not None:
        callback(t, x, eps)
    return x
