"""Samplers: DDPM ancestral sampling, DDIM and the probability-flow ODE (docs/samplers.md).

Every sampler takes a plain ``eps_fn(x, t) -> eps`` (a model with guidance already applied, or
``lambda x, t: eps_model(x, t, y)``) and never knows about labels or guidance. Each is one
function with a visible loop over decreasing timesteps, except ``ode_adaptive``, which hands the
loop to ``scipy.integrate.solve_ivp`` and calls eps_fn at real t (docs/schedule.md, (S6)).

``callback(t, x, eps)``, if given, is called after every step with the timestep t the step
started from (original indexing, 1..T), the new state x_{t_prev} and the eps used.
``return_path=True`` also returns the states as an array of shape (steps + 1, N, D), x_T first.
"""
import numpy as np
from scipy.integrate import solve_ivp

from .arrays import as_points, check_rng
from .process import column, eps_to_x0, p_mean

VARIANCES = ("beta_tilde", "beta")
ODE_METHODS = ("euler", "heun")
KARRAS_RHO = 7.0  # Karras et al. (2022), eq. 5 and Table 1


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


def ode(eps_fn, sched, x_T, steps, method="euler", spacing="leading", return_path=False,
        callback=None):
    """The probability-flow ODE dx~/dsigma = eps(x, t(sigma)) by Euler or Heun steps (eqs. (D4), (D5)).

    Song et al. (2021, score SDE), eq. 13 for the VP SDE, written in x~ = x / sqrt(alpha_bar) and
    sigma = sqrt((1 - alpha_bar) / alpha_bar) as in Karras et al. (2022), Sec. 3 (docs/samplers.md).
    The grid is ``sched.timesteps(steps, spacing)`` then t = 0 (sigma = 0). "euler" is Karras et
    al.'s Alg. 1 without the corrector and equals ``ddim(eta=0)`` exactly in exact arithmetic
    (D4); "heun" adds the trapezoid corrector of Alg. 1 on every step except the last
    one to sigma = 0, which stays Euler. Euler uses ``steps`` eps evaluations, Heun 2 steps - 1.

    Parameters
    ----------
    eps_fn : callable (x (N, D), t (N,) ints) -> eps (N, D); sched : Schedule
    x_T : array (N, D), the starting state at t = the first grid point
    steps : int in 1..T; method : "euler" or "heun"; spacing : see (S4), or "karras" for the
        sigma grid of Karras et al. (2022), eq. 5, at real times (eq. (D6))

    Returns
    -------
    x_0 (N, D), and with ``return_path`` the states (steps + 1, N, D). ``callback(t, x, eps)``
    receives the eps the step used (Heun: the average of its two evaluations).
    """
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}, got {method!r}")
    x = _start(x_T, None, needs_rng=False)
    ts = karras_times(sched, steps) if spacing == "karras" else sched.timesteps(steps, spacing)
    path = [x]
    for t, t_prev in zip(ts, np.append(ts[1:], 0)):
        a, a_prev = float(sched.alpha_bar_at(t)), float(sched.alpha_bar_at(t_prev))  # exact at integers (S6)
        s, s_prev = float(sched.sigma_at(t)), float(sched.sigma_at(t_prev))
        x_tilde = x / np.sqrt(a)
        eps = _call(eps_fn, x, t)
        # (D4) Euler: x~' = x~ + (sigma_prev - sigma) eps, then x' = sqrt(a_prev) x~'
        x_new = np.sqrt(a_prev) * (x_tilde + (s_prev - s) * eps)
        if method == "heun" and t_prev > 0:
            # (D5) trapezoid corrector with the slope at the Euler prediction
            eps = 0.5 * (eps + _call(eps_fn, x_new.astype(x.dtype), t_prev))
            x_new = np.sqrt(a_prev) * (x_tilde + (s_prev - s) * eps)
        x = _step_done(x_new.astype(x.dtype), t, eps, path, return_path, callback)
    return (x, np.stack(path)) if return_path else x


def karras_times(sched, steps, rho=KARRAS_RHO):
    """The real times of Karras et al.'s (2022, eq. 5) sigma grid from sigma(T) down to sigma(1) (eq. (D6)).

    sigma_i = (sigma_max^(1/rho) + i / (steps - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    i = 0..steps-1, mapped to t by ``Schedule.t_of_sigma`` (S6); the ends are exactly T and 1. The
    steps shrink geometrically toward the data, so no step jumps across most of the sigma range,
    which is what Heun's corrector needs (D5). Shape (steps,), decreasing floats.
    """
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    s_max, s_min = float(sched.sigma_at(sched.T)), float(sched.sigma_at(1))
    if not np.isfinite(s_max):
        raise ValueError("spacing 'karras' needs alpha_bar_T > 0: sigma(T) is infinite")
    frac = np.arange(steps) / max(steps - 1, 1)
    sigmas = (s_max ** (1 / rho) + frac * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    ts = np.clip(sched.t_of_sigma(np.minimum(sigmas, s_max)), 1.0, sched.T)
    ts[0] = sched.T
    if steps > 1:
        ts[-1] = 1.0
    return ts


def ode_adaptive(eps_fn, sched, x_T, rtol=1e-6, atol=1e-8):
    """The probability-flow ODE from t = T to t = 1 by adaptive RK45, then the x0 step to t = 0 (eq. (D5)).

    Integrates dx~/dsigma = eps(sqrt(alpha_bar) x~, t(sigma)) with ``scipy.integrate.solve_ivp``
    (Dormand-Prince RK45, tolerances rtol, atol on x~ = x / sqrt(alpha_bar)) in sigma from
    sigma(T) down to sigma(1), calling eps_fn at real t = ``sched.t_of_sigma(sigma)`` (eq. (S6);
    clipped to [1, T] against bisection round-off), the whole batch as one system. The last step,
    from t = 1 to t = 0, is the Euler (= DDIM) step x_0 = x~ - sigma(1) eps: a model is only
    defined for t >= 1, and every fixed-step sampler ends the same way. Song et al. (2021, score
    SDE), Sec. 4.3, solve the same ODE with RK45.

    Parameters
    ----------
    eps_fn : callable (x (N, D), t (N,) floats in [1, T]) -> eps (N, D); sched : Schedule with
    alpha_bar_T > 0; x_T : array (N, D) at t = T; rtol, atol : positive floats

    Returns
    -------
    x_0 : array (N, D), in x_T's dtype
    """
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    if not sched.alpha_bar[-1] > 0:
        raise ValueError("ode_adaptive needs alpha_bar_T > 0: sigma(T) is infinite")
    x = _start(x_T, None, needs_rng=False)
    shape, T = x.shape, sched.T
    s_T, s_1 = float(sched.sigma_at(T)), float(sched.sigma_at(1))

    def slope(sigma, x_tilde):  # dx~/dsigma = eps(x, t(sigma)) with x = x~ / sqrt(1 + sigma^2)
        t = model_time(sched, sigma)
        xt = (x_tilde.reshape(shape) / np.sqrt(1.0 + sigma ** 2)).astype(x.dtype)
        return np.asarray(eps_fn(xt, np.full(shape[0], t)), dtype=np.float64).reshape(-1)

    x_tilde = x.astype(np.float64).reshape(-1) / np.sqrt(sched.alpha_bar[T])
    if T > 1:
        sol = solve_ivp(slope, (s_T, s_1), x_tilde, method="RK45", rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed: {sol.message}")
        x_tilde = sol.y[:, -1]
    x1 = (x_tilde.reshape(shape) * np.sqrt(sched.alpha_bar[1])).astype(x.dtype)
    return (x_tilde.reshape(shape) - s_1 * _call(eps_fn, x1, 1)).astype(x.dtype)


def model_time(sched, sigma):
    """t(sigma) of (S6) for a model call inside an ODE solver: sigma capped at sigma(T) and t clipped
    to [1, T] (models are defined for t >= 1), against the solver's and the bisection's round-off."""
    return float(np.clip(sched.t_of_sigma(min(sigma, float(sched.sigma_at(sched.T)))), 1.0, sched.T))


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
