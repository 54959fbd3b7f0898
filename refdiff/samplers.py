"""Samplers: DDPM ancestral sampling, DDIM, the probability-flow ODE, Euler ancestral,
DPM-Solver++(2M), (2S) and (2M) SDE, Karras et al.'s stochastic sampler, predictor-corrector
guidance (two eps functions) and DDIM inversion, and the thresholding of x0_hat as eps_fn wrappers
(docs/samplers.md).

Every sampler takes a plain ``eps_fn(x, t) -> eps`` (a model with guidance already applied, or
``lambda x, t: eps_model(x, t, y)``) and never knows about labels or guidance. They share one
signature, ``sampler(eps_fn, sched, x_T, steps, *, spacing=None, rng=None, return_path=False,
callback=None, ...)`` (``ddpm`` keeps ``rng`` as its fourth argument), and each is one function
with a visible loop over a decreasing grid of times (``sampling_grid``), the last step going to
t = 0. ``ode_adaptive`` hands the steps between grid points to ``scipy.integrate.solve_ivp``.

``steps`` is a step count, whose grid ``spacing`` chooses ((S4); "karras": (D6)), or the grid
itself: a 1-D strictly decreasing array of times in (0, T], used as given. ``ddpm`` and ``ddim``
step between integer timesteps; ``ode`` and ``ode_adaptive`` take real times too.

``callback(t, x, eps)``, if given, is called after every step with the time t the step started
from (original indexing), the new state x_{t_prev} and the eps the step used.
``return_path=True`` also returns the states as an array of shape (S + 1, N, D), x_T first, S
the grid's length.

Noise: a stochastic sampler draws exactly one ``rng.standard_normal(x.shape, dtype=x.dtype)`` per
step that injects noise, in step order, and none on the last step to t = 0, so a refdiff
trajectory can be replayed anywhere from the same draws (docs/samplers.md, "Noise").
"""
import numpy as np
from scipy.integrate import solve_ivp

from .arrays import alpha_bar_of, as_count, as_points, as_real, as_times, check_rng, is_real
from .process import column, eps_to_x0, p_mean
from .schedule import SPACINGS

VARIANCES = ("beta_tilde", "beta")
ODE_METHODS = ("euler", "heun")
GRID_SPACINGS = SPACINGS + ("karras",)
KARRAS_RHO = 7.0  # Karras et al. (2022), eq. 5 and Table 1


def sampling_grid(sched, steps, spacing=None, discrete=False):
    """The decreasing times a sampler visits before its last step to t = 0.

    Parameters
    ----------
    sched : Schedule
    steps : int in 1..T, or a 1-D strictly decreasing array of times in (0, T] (the grid itself)
    spacing : None ("leading"), one of SPACINGS (``sched.timesteps``, eq. (S4)) or "karras"
        (``karras_times``, eq. (D6)); only with an int ``steps``
    discrete : True for samplers that step between integer timesteps: whole-valued floats become
        int64, other reals are refused, and "karras" gives the integer timesteps nearest Karras
        et al.'s grid, repeats dropped (diffusers' DPMSolverMultistepScheduler rounds them so, keeping repeats)

    Returns
    -------
    int64 array, or float64 for real times, shape (S,)
    """
    if not isinstance(steps, (list, tuple, np.ndarray)):  # a count (anything else is refused by name)
        grid = _grid_of_count(sched, steps, "leading" if spacing is None else spacing, discrete)
    elif spacing is not None:
        raise ValueError(f"spacing={spacing!r} applies to a step count; an array of times is used as given")
    else:
        grid = _explicit_grid(sched, steps)
    if discrete and grid.dtype != np.int64:
        if not np.all(grid == np.round(grid)):
            raise ValueError("steps must be integer timesteps for this sampler, which steps between the schedule's "
                             f"integer timesteps (ode and ode_adaptive take real times), got {grid}")
        grid = grid.astype(np.int64)
    return grid


def _sampler_grid(sched, steps, spacing=None, discrete=False, x0_at_zero=False):
    """``sampling_grid`` for a sampler, which refuses a grid that starts where alpha_bar = 0 unless it
    is given x0 there (``x0_at_zero``: ddim's x0_fn): an eps prediction cannot give x0 at that t."""
    grid = sampling_grid(sched, steps, spacing, discrete)
    if alpha_bar_of(sched, grid[:1])[0] == 0 and not x0_at_zero:
        raise ValueError(f"steps: the grid starts at t = {grid[0]}, where alpha_bar = 0 (a zero-terminal-SNR schedule, "
                         "docs/schedule.md (S8)): an eps prediction cannot give x0 there; start below it (e.g. "
                         "spacing 'leading'), drop t = T from the grid, or give ddim an x0_fn (a v or x0 model's)")
    return grid


def _grid_of_count(sched, steps, spacing, discrete):
    """The grid of ``steps`` steps that ``spacing`` chooses (``sampling_grid``)."""
    if spacing not in GRID_SPACINGS:
        raise ValueError(f"spacing must be one of {GRID_SPACINGS}, got {spacing!r}")
    if spacing != "karras":
        return sched.timesteps(steps, spacing)
    ts = karras_times(sched, steps)
    return np.unique(np.round(ts).astype(np.int64))[::-1].copy() if discrete else ts


def _explicit_grid(sched, steps):
    """``steps`` as a 1-D strictly decreasing array of finite times in (0, T]: int64 or float64."""
    expected = f"an integer in 1..{sched.T} or a 1-D strictly decreasing array of times in (0, {sched.T}]"
    try:
        grid = np.asarray(steps)
    except (TypeError, ValueError):
        raise ValueError(f"steps must be {expected}, got {steps!r}") from None
    if not is_real(grid) or grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)):
        raise ValueError(f"steps must be {expected}, got {steps!r}")
    if not (np.all(np.diff(grid) < 0) and grid[-1] > 0 and grid[0] <= sched.T):
        raise ValueError(f"steps must be {expected}, got {grid}")
    return grid.astype(np.int64 if np.issubdtype(grid.dtype, np.integer) else np.float64)


def ddpm(eps_fn, sched, x_T, rng, steps=None, *, spacing=None, variance="beta_tilde", mean_shift=None,
         return_path=False, callback=None):
    """Ancestral sampling, Ho et al. (2020) Algorithm 2 (eq. (D1)).

    x_{t_prev} = mu(x_t, eps) + sigma_t z with mu from eq. (P4) on the chain respaced to the grid
    (eq. (S5)) and z ~ N(0, I) except at the last step; sigma_t^2 is beta_tilde_t (eq. (P3), the
    true posterior variance) or beta_t. Without ``steps`` the chain visits every timestep T..1;
    eps_fn is called with the original timesteps (Nichol & Dhariwal 2021, Sec. 4).

    ``mean_shift(x, t) -> g``, if given, moves each step's mean to mu + sigma_t^2 g: the mean-shift
    form of classifier guidance, Dhariwal & Nichol (2021) Algorithm 1 with g from
    ``guidance.classifier_grad`` (eq. (G9)). With sigma_t^2 = beta_tilde_t the shift is 0 at the
    last step; the eps form (G3) instead shifts the mean by (beta_t / sqrt(alpha_t)) g, with the
    respaced beta and alpha of the step on a respaced chain (G10).

    Parameters
    ----------
    eps_fn : callable (x (N, D), t (N,) ints) -> eps (N, D); sched : Schedule
    x_T : array (N, D), the starting noise (float32 stays float32); rng : numpy.random.Generator
    steps : None (every timestep), a step count or integer timesteps (``sampling_grid``)
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if steps is None and spacing is not None:
        raise ValueError(f"spacing={spacing!r} needs steps: without steps DDPM visits every timestep")
    rng, x = check_rng(rng), as_points(x_T, "x_T")
    ts = _sampler_grid(sched, np.arange(sched.T, 0, -1) if steps is None else steps, spacing, discrete=True)
    sub = sched.respace(ts)  # (S5): index j of sub stands for timestep ts[S - j]
    var_table = sub.posterior_variance() if variance == "beta_tilde" else sub.betas  # (P3) or beta
    path = [x]
    for j, t in zip(range(sub.T, 0, -1), ts):
        tt = np.full(x.shape[0], j)
        eps = _call(eps_fn, x, t)
        x_new = p_mean(sub, x, tt, eps)  # (P4) mu = (x - beta_j / sqrt(1 - a_j) eps) / sqrt(alpha_j)
        if mean_shift is not None:  # (G9) mu + sigma_j^2 g
            x_new = x_new + column(var_table, tt, x) * _call(mean_shift, x, t, "mean_shift")
        if j > 1:  # (D1) + sigma_j z, one draw per step but the last
            x_new = x_new + np.sqrt(column(var_table, tt, x)) * rng.standard_normal(x.shape, dtype=x.dtype)
        x = _step_done(x_new, t, eps, path, return_path, callback)
    return (x, np.stack(path)) if return_path else x


def ddim(eps_fn, sched, x_T, steps, *, eta=0.0, spacing=None, rng=None, return_path=False, callback=None, x0_fn=None):
    """DDIM, Song et al. (2021) eq. 12 with sigma from eq. 16 (eq. (D2)).

    x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z, where
    x0_hat = eq. (C1), sigma = eta sqrt((1 - a_prev) / (1 - a)) sqrt(1 - a / a_prev), and the
    last step goes to t = 0 (a_prev = 1, so sigma = 0 there). eta = 0 is deterministic and
    needs no rng; eta = 1 with every timestep has sigma^2 = beta_tilde, DDPM's posterior
    variance (eq. (D3)). ``steps``: a step count or integer timesteps (``sampling_grid``).

    ``x0_fn(x, t) -> x0_hat``, if given, gives x0_hat at every step in place of (C1), and eps_fn
    only the direction back to t_prev: (D2) with its two predictions apart. CFG++ passes the
    guided x0 and the unconditional eps (``guidance.cfg_pp``, eq. (G21)); a v or x0 model's
    ``model.predict(x, t, y, "x0")`` makes a grid from alpha_bar_t = 0 possible (the first step of a
    trailing grid on a zero-terminal-SNR schedule, docs/schedule.md (S8)), where (C1) has no x0_hat.
    """
    eta = _checked_eta(eta, rng)
    x = as_points(x_T, "x_T")
    ts = _sampler_grid(sched, steps, spacing, discrete=True, x0_at_zero=x0_fn is not None)
    path = [x]
    for t, t_prev in zip(ts, np.append(ts[1:], 0)):
        a, a_prev = sched.alpha_bar[t], sched.alpha_bar[t_prev]
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))  # (D2), DDIM eq. 16
        if sigma ** 2 > 1 - a_prev:
            raise ValueError(f"eta = {eta} is too large: sigma^2 exceeds 1 - alpha_bar_prev at t = {t}")
        eps = _call(eps_fn, x, t)
        x0 = None if x0_fn is None else _call(x0_fn, x, t, "x0_fn")
        x = _step_done(_ddim_update(sched, x, t, t_prev, eps, sigma, rng, x0), t, eps, path, return_path, callback)
    return (x, np.stack(path)) if return_path else x


def _ddim_update(sched, x, t, t_prev, eps, sigma, rng, x0=None):
    """One step of (D2) from integer timestep t to t_prev with the noise level sigma (a draw of z only
    if sigma > 0); x0_hat is (C1) of eps unless given."""
    a_prev = sched.alpha_bar[t_prev]
    if x0 is None:
        x0 = eps_to_x0(sched, x, np.full(x.shape[0], t), eps)  # (C1) x0_hat = (x - sqrt(1 - a) eps) / sqrt(a)
    x_new = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma ** 2) * eps  # (D2), DDIM eq. 12
    if sigma > 0:  # (D2) + sigma z, one draw per noise-injecting step
        x_new = x_new + sigma * rng.standard_normal(x.shape, dtype=x.dtype)
    return x_new.astype(x.dtype)


def euler_ancestral(eps_fn, sched, x_T, steps, *, eta=1.0, spacing=None, rng=None, return_path=False,
                    callback=None, x0_fn=None):
    """Euler ancestral sampling, k-diffusion's ``sample_euler_ancestral`` (eq. (D7)).

    In Karras et al.'s variables x~ = x / sqrt(a), sigma = sqrt((1 - a) / a) (eq. (D4)), each step
    splits the move to sigma_prev into a deterministic Euler step to sigma_down and fresh noise of
    standard deviation sigma_up:

        sigma_up = min(sigma_prev, eta sqrt(sigma_prev^2 (sigma^2 - sigma_prev^2) / sigma^2)),
        sigma_down = sqrt(sigma_prev^2 - sigma_up^2),
        x~_prev = x~ + (sigma_down - sigma) eps + sigma_up z.

    Back in x this is DDIM's step (D2) with the noise level sqrt(a_prev) sigma_up, which equals
    DDIM's eta-sigma (DDIM eq. 16) for eta <= 1: Euler ancestral is DDIM with the same eta
    (docs/samplers.md, (D7)). It is computed so, by the same update as ``ddim``: with eta = 0 it
    is ``ddim`` bit for bit, and it draws no noise. It steps between integer timesteps
    (``sampling_grid`` with discrete=True), the last step to t = 0 returning x0_hat.

    Parameters
    ----------
    eps_fn : callable (x (N, D), t (N,) ints) -> eps (N, D); sched : Schedule; x_T : array (N, D)
    steps, spacing : the grid (``sampling_grid``); eta : float >= 0 (k-diffusion's default 1);
    rng : numpy.random.Generator, needed when eta > 0
    x0_fn : callable (x, t) -> x0_hat in place of (C1), as in ``ddim`` (CFG++, (G21); the grid
        must still start where alpha_bar > 0)
    """
    eta = _checked_eta(eta, rng)
    x = as_points(x_T, "x_T")
    ts = _sampler_grid(sched, steps, spacing, discrete=True)
    path = [x]
    for t, t_prev in zip(ts, np.append(ts[1:], 0)):
        s, s_prev = sched.sigma_at(t), sched.sigma_at(t_prev)
        s_up = min(s_prev, eta * np.sqrt(s_prev ** 2 * (s ** 2 - s_prev ** 2) / s ** 2))  # (D7)
        eps = _call(eps_fn, x, t)
        x0 = None if x0_fn is None else _call(x0_fn, x, t, "x0_fn")
        sigma = np.sqrt(sched.alpha_bar[t_prev]) * s_up  # (D7) the noise of x~ carried back to x
        x = _step_done(_ddim_update(sched, x, t, t_prev, eps, sigma, rng, x0), t, eps, path, return_path, callback)
    return (x, np.stack(path)) if return_path else x


def dpmpp_2m(eps_fn, sched, x_T, steps, *, spacing=None, rng=None, return_path=False, callback=None):
    """DPM-Solver++(2M), Lu et al. (2022b) Algorithm 2, in data prediction (eq. (D8)).

    With alpha = sqrt(a), sigma = sqrt(1 - a), lambda = log(alpha / sigma) and h = lambda_prev - lambda,
    each step moves along the exact solution of the probability-flow ODE for a data prediction D
    held fixed over the step:

        x_prev = (sigma_prev / sigma) x - alpha_prev (exp(-h) - 1) D,

    with D = x0_hat (C1) on the first step (first order: this is DDIM's step exactly in exact
    arithmetic) and on every later step the second-order extrapolation
    D = (1 + 1 / (2 r)) x0_hat - 1 / (2 r) x0_hat_last, r = h_last / h. The step to t = 0 returns
    that step's x0_hat (sigma_prev = 0), as k-diffusion's ``sample_dpmpp_2m`` does (no
    ``lower_order_final``). Times may be real (``sampling_grid``); one eps evaluation a step.

    Parameters
    ----------
    eps_fn : callable (x (N, D), t (N,)) -> eps (N, D); sched : Schedule with alpha_bar_T > 0;
    x_T : array (N, D); steps, spacing : the grid; rng : unused (no noise), for the signature
    """
    _check_unused_rng(rng)
    x = as_points(x_T, "x_T")
    ts = _sampler_grid(sched, steps, spacing)
    path, d_last, h_last = [x], None, None
    for t, t_prev in zip(ts, np.append(ts[1:], 0)):
        a, a_prev = float(sched.alpha_bar_at(t)), float(sched.alpha_bar_at(t_prev))  # exact at integers (S6)
        eps = _call(eps_fn, x, t)
        d = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)  # (C1) x0_hat, the data prediction
        if t_prev == 0:  # (D8) sigma_prev = 0: the step returns the data prediction
            x = _step_done(d.astype(x.dtype), t, eps, path, return_path, callback)
            break
        h = np.log(sched.sigma_at(t) / sched.sigma_at(t_prev))  # lambda_prev - lambda, lambda = -log sigma~
        d_step = d if d_last is None else (1 + h / (2 * h_last)) * d - h / (2 * h_last) * d_last  # (D8), r = h_last / h
        x_new = np.sqrt((1 - a_prev) / (1 - a)) * x - np.sqrt(a_prev) * np.expm1(-h) * d_step  # (D8)
        d_last, h_last = d, h
        x = _step_done(x_new.astype(x.dtype), t, eps, path, return_path, callback)
    return (x, np.stack(path)) if return_path else x


def ode(eps_fn, sched, x_T, steps, method="euler", *, spacing=None, rng=None, return_path=False, callback=None):
    """The probability-flow ODE dx~/dsigma = eps(x, t(sigma)) by Euler or Heun steps (eqs. (D4), (D5)).

    Song et al. (2021, score SDE), eq. 13 for the VP SDE, written in x~ = x / sqrt(alpha_bar) and
    sigma = sqrt((1 - alpha_bar) / alpha_bar) as in Karras et al. (2022), Sec. 3 (docs/samplers.md).
    "euler" is Karras et al.'s Alg. 1 without the corrector and equals ``ddim(eta=0)`` exactly in
    exact arithmetic (D4); "heun" adds the trapezoid corrector of Alg. 1 on every step except
    the last one to sigma = 0, which stays Euler. Euler uses S eps evaluations, Heun 2 S - 1.

    Parameters
    ----------
    eps_fn : callable (x (N, D), t (N,)) -> eps (N, D); sched : Schedule; x_T : array (N, D) at the
        first grid time; steps, spacing : the grid, of real or integer times (``sampling_grid``;
        "karras": eq. (D6)); method : "euler" or "heun"; rng : unused (no noise), for the signature

    Returns
    -------
    x_0 (N, D), and with ``return_path`` the states (S + 1, N, D). ``callback(t, x, eps)``
    receives the eps the step used (Heun: the average of its two evaluations).
    """
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}, got {method!r}")
    _check_unused_rng(rng)
    x = as_points(x_T, "x_T")
    ts = _sampler_grid(sched, steps, spacing)
    path = [x]
    for t, t_prev in zip(ts, np.append(ts[1:], 0)):
        x_new, eps = _ode_step(eps_fn, sched, x, t, t_prev, method)
        x = _step_done(x_new, t, eps, path, return_path, callback)
    return (x, np.stack(path)) if return_path else x


def dpmpp_2s(eps_fn, sched, x_T, steps, *, spacing=None, rng=None, return_path=False, callback=None):
    """DPM-Solver++(2S), Lu et al. (2022b) Algorithm 1 with the midpoint r = 1/2 (eq. (D12)).

    In Karras et al.'s variables x~ = x / sqrt(a), sigma~ = sqrt((1 - a) / a), lambda = -log sigma~,
    D = x~ - sigma~ eps (the data prediction x0_hat, (C1)) and h = lambda_prev - lambda: a
    first-order step to the midpoint sigma_mid = sqrt(sigma~ sigma~_prev) (lambda + h / 2), a second
    model call there, and the step from x~ with the midpoint's data prediction:

        x~_mid = (sigma_mid / sigma~) x~ - (exp(-h / 2) - 1) D,
        x~_prev = (sigma~_prev / sigma~) x~ - (exp(-h) - 1) D_mid,

    the model called at t_mid = t(sigma_mid) (S6). The step to t = 0 returns D, as k-diffusion's
    ``sample_dpmpp_2s_ancestral`` with eta = 0 does. Two eps evaluations a step but the last.

    Parameters as for ``dpmpp_2m``; ``callback`` gets the eps of the step's first call.
    """
    _check_unused_rng(rng)
    x = as_points(x_T, "x_T")
    ts = _sampler_grid(sched, steps, spacing)
    path = [x]
    for t, t_prev in zip(ts, np.append(ts[1:], 0)):
        a, s = float(sched.alpha_bar_at(t)), float(sched.sigma_at(t))
        x_tilde, eps = x / np.sqrt(a), _call(eps_fn, x, t)
        d = x_tilde - s * eps  # (C1) in x~: the data prediction
        if t_prev > 0:
            s_prev = float(sched.sigma_at(t_prev))
            s_mid, h = np.sqrt(s * s_prev), np.log(s / s_prev)  # (D12) lambda + h / 2
            t_mid = model_time(sched, s_mid)
            x_mid = (s_mid / s) * x_tilde - np.expm1(-h / 2) * d  # (D12) first order to the midpoint
            a_mid = float(sched.alpha_bar_at(t_mid))
            d_mid = x_mid - s_mid * _call(eps_fn, (x_mid * np.sqrt(a_mid)).astype(x.dtype), t_mid)
            d = np.sqrt(float(sched.alpha_bar_at(t_prev))) * ((s_prev / s) * x_tilde - np.expm1(-h) * d_mid)  # (D12)
        x = _step_done(d.astype(x.dtype), t, eps, path, return_path, callback)  # at t_prev = 0: D itself
    return (x, np.stack(path)) if return_path else x


def dpmpp_2m_sde(eps_fn, sched, x_T, steps, *, eta=1.0, spacing=None, rng=None, return_path=False, callback=None):
    """DPM-Solver++(2M) SDE, Lu et al. (2022b) Sec. 4 with the midpoint correction (eq. (D13)).

    In the variables of ``dpmpp_2s`` with D the step's data prediction, D_last the previous step's,
    r = h_last / h and eta_h = eta h:

        x~_prev = (sigma~_prev / sigma~) exp(-eta_h) x~ - (exp(-h - eta_h) - 1) D
                  - (exp(-h - eta_h) - 1) (D - D_last) / (2 r)      (from the second step on)
                  + sigma~_prev sqrt(1 - exp(-2 eta_h)) z,

    k-diffusion's ``sample_dpmpp_2m_sde`` with solver_type "midpoint". eta = 0 is ``dpmpp_2m``
    (D8) in exact arithmetic and draws nothing; the step to t = 0 returns D. One draw per step but
    the last when eta > 0.

    Parameters as for ``dpmpp_2m``, and eta : float >= 0; rng : numpy.random.Generator when eta > 0
    """
    eta = _checked_eta(eta, rng)
    x = as_points(x_T, "x_T")
    ts = _sampler_grid(sched, steps, spacing)
    path, d_last, h_last = [x], None, None
    for t, t_prev in zip(ts, np.append(ts[1:], 0)):
        a, s = float(sched.alpha_bar_at(t)), float(sched.sigma_at(t))
        x_tilde, eps = x / np.sqrt(a), _call(eps_fn, x, t)
        d = x_tilde - s * eps  # (C1) in x~
        if t_prev == 0:  # the step to 0 returns the data prediction
            x = _step_done(d.astype(x.dtype), t, eps, path, return_path, callback)
            break
        s_prev = float(sched.sigma_at(t_prev))
        h = np.log(s / s_prev)
        x_new = (s_prev / s) * np.exp(-eta * h) * x_tilde - np.expm1(-h - eta * h) * d  # (D13)
        if d_last is not None:  # (D13) the midpoint correction, r = h_last / h
            x_new = x_new - np.expm1(-h - eta * h) * (d - d_last) * h / (2 * h_last)
        if eta > 0:  # (D13) + sigma~_prev sqrt(1 - exp(-2 eta h)) z
            x_new = x_new + s_prev * np.sqrt(-np.expm1(-2 * eta * h)) * rng.standard_normal(x.shape, dtype=x.dtype)
        d_last, h_last = d, h
        x = _step_done((np.sqrt(float(sched.alpha_bar_at(t_prev))) * x_new).astype(x.dtype), t, eps, path,
                       return_path, callback)
    return (x, np.stack(path)) if return_path else x


def _ode_step(eps_fn, sched, x, t, t_prev, method):
    """One Euler (D4) or Heun (D5) step of the probability-flow ODE from time t to t_prev (Heun's
    corrector on every step but the one to 0): (x_prev in x's dtype, the eps the step used)."""
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
    return x_new.astype(x.dtype), eps


def edm(eps_fn, sched, x_T, steps, *, s_churn=0.0, s_tmin=0.0, s_tmax=None, s_noise=1.0, spacing=None, rng=None,
        return_path=False, callback=None):
    """Karras et al.'s (2022) stochastic sampler, Algorithm 2: Heun steps with churn (eq. (D11)).

    Before the step from sigma = sigma(t), if s_tmin <= sigma <= s_tmax (s_tmax None: no bound),
    the noise level is raised to sigma_hat = (1 + gamma) sigma, gamma = min(s_churn / S, sqrt(2) - 1)
    for S steps, by adding fresh noise to x~ = x / sqrt(a):

        x~_hat = x~ + s_noise sqrt(sigma_hat^2 - sigma^2) z,

    and the Heun step of ``ode`` (D5) then goes from t_hat = t(sigma_hat) (S6) to the next time.
    sigma_hat is capped at sigma(T): a churned time never passes T (so the first step, at T,
    adds no noise). With s_churn = 0 this is ``ode(method="heun")`` bit for bit, and draws nothing;
    otherwise one draw per churned step.

    Parameters
    ----------
    eps_fn : callable (x (N, D), t (N,) real) -> eps (N, D); sched : Schedule with alpha_bar_T > 0;
    x_T : array (N, D); steps, spacing : the grid (real times allowed); s_churn, s_tmin : floats >= 0;
    s_tmax : None or float >= 0; s_noise : float >= 0; rng : numpy.random.Generator when s_churn > 0
    """
    s_churn, s_tmin = as_real(s_churn, "s_churn", low=0), as_real(s_tmin, "s_tmin", low=0)
    s_tmax, s_noise = as_real(s_tmax, "s_tmax", low=0, optional=True), as_real(s_noise, "s_noise", low=0)
    if s_churn > 0:
        check_rng(rng)
    else:
        _check_unused_rng(rng)
    x = as_points(x_T, "x_T")
    ts = _sampler_grid(sched, steps, spacing)
    s_max, path = float(sched.sigma_at(sched.T)), [x]
    for t, t_prev in zip(ts, np.append(ts[1:], 0)):
        s = float(sched.sigma_at(t))
        churned = s_tmin <= s <= (np.inf if s_tmax is None else s_tmax)
        gamma = min(s_churn / len(ts), np.sqrt(2) - 1) if churned else 0.0  # (D11), Karras et al. Alg. 2
        s_hat = min(s * (1 + gamma), s_max)
        if s_hat > s:
            x, t = _churn(sched, x, t, s, s_hat, s_noise, rng)
        x_new, eps = _ode_step(eps_fn, sched, x, t, t_prev, "heun")
        x = _step_done(x_new, t, eps, path, return_path, callback)
    return (x, np.stack(path)) if return_path else x


def _churn(sched, x, t, s, s_hat, s_noise, rng):
    """(D11) x at time t (sigma s) raised to sigma_hat: x~ + s_noise sqrt(sigma_hat^2 - sigma^2) z with
    x~ = x / sqrt(a), returned as x at t_hat = t(sigma_hat) with t_hat (one draw of z)."""
    t_hat = model_time(sched, s_hat)
    z = rng.standard_normal(x.shape, dtype=x.dtype)
    x_tilde = x / np.sqrt(float(sched.alpha_bar_at(t))) + s_noise * np.sqrt(s_hat ** 2 - s ** 2) * z
    return (x_tilde * np.sqrt(float(sched.alpha_bar_at(t_hat)))).astype(x.dtype), t_hat


def pcg(eps_fn, corrector_eps_fn, sched, x_T, steps, rng, *, langevin_steps=1, step_scale=1.0, spacing=None,
        return_path=False, callback=None):
    """Predictor-corrector guidance, Bradley & Nakkiran (2024), eq. (D14): a DDIM step (D2) with
    ``eps_fn`` (the predictor; for PCG the conditional model), then ``langevin_steps`` unadjusted
    Langevin steps at t_prev on the density whose eps is ``corrector_eps_fn`` (the corrector; for
    PCG the powered density p_t(x | y)^gamma p_t(x)^(1 - gamma), i.e. CFG (G5) with w = gamma - 1):

        x <- x + (e / 2) s(x) + sqrt(e) z,     s = -corrector_eps / sqrt(1 - a_prev),   e = step_scale beta_j,

    beta_j the respaced step's beta (S5). With the conditional predictor, one corrector step of
    scale 1 and exponent 2 gamma - 1 it is DDPM with CFG at gamma = 1 + w to first order in the
    step (docs/theory_mixture.md, (T10), (T11)). No corrector at the last step (t_prev = 0); one
    noise draw per Langevin step. rng: numpy.random.Generator.
    """
    rng, x = check_rng(rng), as_points(x_T, "x_T")
    langevin_steps, step_scale = as_count(langevin_steps, "langevin_steps"), as_real(step_scale, "step_scale", above=0)
    ts = _sampler_grid(sched, steps, spacing, discrete=True)
    sub, path = sched.respace(ts), [x]
    for j, t, t_prev in zip(range(len(ts), 0, -1), ts, np.append(ts[1:], 0)):
        eps = _call(eps_fn, x, t)
        x_new = _ddim_update(sched, x, t, t_prev, eps, 0.0, None)
        e, sigma = step_scale * sub.betas[j], np.sqrt(1 - sched.alpha_bar[t_prev])
        for _ in range(langevin_steps if t_prev > 0 else 0):  # (D14) the corrector
            score = -_call(corrector_eps_fn, x_new, t_prev, "corrector_eps_fn") / sigma
            x_new = x_new + e / 2 * score + np.sqrt(e) * rng.standard_normal(x.shape, dtype=x.dtype)
        x = _step_done(x_new.astype(x.dtype), t, eps, path, return_path, callback)
    return (x, np.stack(path)) if return_path else x


def ddim_invert(eps_fn, sched, x0, steps, *, spacing=None, rng=None, return_path=False, callback=None):
    """Deterministic DDIM inversion, x_0 -> x_{t_0}: the grid of ``ddim`` walked upward (eq. (D9)).

    From time s to the next larger grid time t (0 -> t_{S-1} -> ... -> t_0 for the decreasing
    grid t_0 > ... > t_{S-1} that ``ddim`` takes), with eps = eps_fn(x_s, t) evaluated at the
    target time, as DDIM's ODE is run backwards in Song et al. (2021), Sec. 4.3, and in diffusers'
    DDIMInverseScheduler as its DiffEdit pipeline drives it:

        x0_hat = (x_s - sqrt(1 - a_s) eps) / sqrt(a_s),   x_t = sqrt(a_t) x0_hat + sqrt(1 - a_t) eps,

    with a_0 = 1 on the first step (x0_hat = x_0). Each step is exact only where eps does not
    change between s and t, so ``ddim`` from the result returns x_0 up to an error that shrinks
    with the step count (docs/samplers.md, (D9)).

    Parameters
    ----------
    eps_fn : callable (x (N, D), t (N,) ints) -> eps (N, D); sched : Schedule; x0 : array (N, D)
    steps, spacing : the grid, as for ``ddim`` (integer timesteps); rng : unused, for the signature

    Returns x at t_0 (N, D); ``callback(s, x, eps)`` and ``return_path`` (x_0 first) as for the others.
    """
    _check_unused_rng(rng)
    x = as_points(x0, "x0")
    ts = _sampler_grid(sched, steps, spacing, discrete=True)[::-1]  # increasing: t_{S-1}, ..., t_0
    path = [x]
    for s, t in zip(np.append(0, ts[:-1]), ts):
        a_s, a_t = sched.alpha_bar[s], sched.alpha_bar[t]  # alpha_bar[0] = 1
        eps = _call(eps_fn, x, t)
        x0_hat = (x - np.sqrt(1 - a_s) * eps) / np.sqrt(a_s)  # (C1) at the source time
        x = _step_done((np.sqrt(a_t) * x0_hat + np.sqrt(1 - a_t) * eps).astype(x.dtype), s, eps, path,
                       return_path, callback)  # (D9), (P1) at the target time
    return (x, np.stack(path)) if return_path else x


def thresholded(eps_fn, sched, percentile=0.995, max_value=1.0):
    """Imagen's dynamic thresholding as an eps_fn (Saharia et al. 2022, Sec. 2.3; eq. (D10)).

    Each row's x0_hat (C1) is clipped to [-s, s] and divided by s, where s is the ``percentile``
    quantile of that row's |x0_hat|, raised to at least 1 and capped at ``max_value`` (diffusers'
    ``sample_max_value``); the eps returned is the one that gives the thresholded x0_hat ((C2)),
    so every sampler takes the wrapped eps_fn unchanged. Rows whose |x0_hat| quantile is <= 1 are
    clipped to [-1, 1] only.

    Parameters
    ----------
    eps_fn : callable (x, t) -> eps; sched : Schedule; percentile : float in (0, 1];
    max_value : float >= 1

    Returns
    -------
    callable (x (N, D), t) -> eps (N, D), for integer or real t
    """
    percentile = as_real(percentile, "percentile", above=0, high=1)
    max_value = as_real(max_value, "max_value", low=1)

    def threshold(x0_hat):  # (D10), s per row: shape (N, 1)
        s = np.clip(np.quantile(np.abs(x0_hat), percentile, axis=1, keepdims=True), 1.0, max_value)
        return np.clip(x0_hat, -s, s) / s

    return _x0_mapped(eps_fn, sched, threshold)


def clipped(eps_fn, sched, low=-1.0, high=1.0):
    """x0_hat (C1) clipped to [low, high] as an eps_fn (diffusers' ``clip_sample``; eq. (D10)).

    Returns callable (x (N, D), t) -> the eps (C2) that gives the clipped x0_hat.
    """
    low, high = as_real(low, "low"), as_real(high, "high")
    if not low < high:
        raise ValueError(f"low must be below high, got low = {low:g}, high = {high:g}")
    return _x0_mapped(eps_fn, sched, lambda x0_hat: np.clip(x0_hat, low, high))


def _x0_mapped(eps_fn, sched, transform):
    """The eps_fn whose x0_hat is ``transform`` of eps_fn's: x0_hat by (C1) at each row's alpha_bar
    (integer or real t, (S6)), transformed, and turned back into eps by (C2)."""
    def wrapped(x, t):
        x = as_points(x, "x")
        a = alpha_bar_of(sched, as_times(t, x.shape[0], sched.T))[:, None]  # (N, 1)
        eps = np.asarray(eps_fn(x, t))
        x0_hat = transform((x - np.sqrt(1 - a) * eps) / np.sqrt(a))  # (C1), then the map
        return ((x - np.sqrt(a) * x0_hat) / np.sqrt(1 - a)).astype(x.dtype)  # (C2)
    return wrapped


def karras_times(sched, steps, rho=KARRAS_RHO):
    """The real times of Karras et al.'s (2022, eq. 5) sigma grid from sigma(T) down to sigma(1) (eq. (D6)).

    sigma_i = (sigma_max^(1/rho) + i / (steps - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    i = 0..steps-1, mapped to t by ``Schedule.t_of_sigma`` (S6); the ends are exactly T and 1. The
    steps shrink geometrically toward the data, so no step jumps across most of the sigma range,
    which is what Heun's corrector needs (D5). Shape (steps,), decreasing floats.
    """
    steps, rho = as_count(steps, "steps", low=1), as_real(rho, "rho", above=0)
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


def ode_adaptive(eps_fn, sched, x_T, steps=None, *, spacing=None, rng=None, rtol=1e-6, atol=1e-8,
                 return_path=False, callback=None):
    """The probability-flow ODE between grid points by adaptive RK45, then the x0 step to t = 0 (eq. (D5)).

    Integrates dx~/dsigma = eps(sqrt(alpha_bar) x~, t(sigma)) with ``scipy.integrate.solve_ivp``
    (Dormand-Prince RK45, tolerances rtol, atol on x~ = x / sqrt(alpha_bar)) in sigma from the
    first grid time to the last (default grid: [T, 1]), the whole batch as one system, calling
    eps_fn at real t = ``model_time(sched, sigma)`` (eq. (S6)); states at inner grid times come
    from the solver's dense output. The last step, to t = 0, is the Euler (= DDIM) step
    x_0 = x~ - sigma eps: a model is only defined for t >= 1, and every fixed-step sampler ends so.
    Song et al. (2021, score SDE), Sec. 4.3, solve the same ODE with RK45.

    Parameters
    ----------
    eps_fn : callable (x (N, D), t (N,) floats in [1, T]) -> eps (N, D); sched : Schedule with
    alpha_bar_T > 0; x_T : array (N, D) at the first grid time; steps, spacing : the grid
    (``sampling_grid``); rng : unused (no noise), for the signature; rtol, atol : floats > 0

    Returns x_0 (N, D) in x_T's dtype; with ``return_path`` also the states at the grid times and
    t = 0. ``callback(t, x, eps)`` gets, for a solver interval, the average slope (x~' - x~) /
    (sigma' - sigma): the eps one Euler step would need to land where RK45 did.
    """
    rtol, atol = as_real(rtol, "rtol", above=0), as_real(atol, "atol", above=0)
    if not sched.alpha_bar[-1] > 0:
        raise ValueError("ode_adaptive needs alpha_bar_T > 0: sigma(T) is infinite")
    _check_unused_rng(rng)
    x = as_points(x_T, "x_T")
    ts = _sampler_grid(sched, np.unique([sched.T, 1])[::-1] if steps is None else steps, spacing)
    sigmas = [float(sched.sigma_at(t)) for t in ts]
    x_tilde, path = x.astype(np.float64).reshape(-1) / np.sqrt(float(sched.alpha_bar_at(ts[0]))), [x]
    for i, x_next in enumerate(_rk45_states(eps_fn, sched, x, x_tilde, sigmas, rtol, atol)):  # x~ at ts[1:]
        eps = (x_next - x_tilde).reshape(x.shape) / (sigmas[i + 1] - sigmas[i])  # the interval's average slope
        x_tilde = x_next
        _step_done(_unscaled(sched, x_tilde, ts[i + 1], x), ts[i], eps.astype(x.dtype), path, return_path, callback)
    eps = _call(eps_fn, _unscaled(sched, x_tilde, ts[-1], x), ts[-1])
    # (D4) the Euler step to sigma = 0: x_0 = x~ - sigma eps
    x0 = _step_done((x_tilde.reshape(x.shape) - sigmas[-1] * eps).astype(x.dtype), ts[-1], eps, path,
                    return_path, callback)
    return (x0, np.stack(path)) if return_path else x0


def _unscaled(sched, x_tilde, t, like):
    """x = sqrt(alpha_bar(t)) x~ in the shape and dtype of ``like``, from the flat float64 x~."""
    return (x_tilde.reshape(like.shape) * np.sqrt(float(sched.alpha_bar_at(t)))).astype(like.dtype)


def _rk45_states(eps_fn, sched, x, x_tilde, sigmas, rtol, atol):
    """x~ at sigmas[1:], flattened, by one RK45 solve from sigmas[0] (dense output for the inner
    points; the end is the solver's own last step). An empty list for a one-point grid."""
    if len(sigmas) < 2:
        return []
    shape = x.shape

    def slope(sigma, state):  # dx~/dsigma = eps(x, t(sigma)) with x = x~ / sqrt(1 + sigma^2)
        xt = (state.reshape(shape) / np.sqrt(1.0 + sigma ** 2)).astype(x.dtype)
        return np.asarray(eps_fn(xt, np.full(shape[0], model_time(sched, sigma))), dtype=np.float64).reshape(-1)

    sol = solve_ivp(slope, (sigmas[0], sigmas[-1]), x_tilde, method="RK45", rtol=rtol, atol=atol,
                    dense_output=len(sigmas) > 2)
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    return [sol.sol(s) for s in sigmas[1:-1]] + [sol.y[:, -1]]


def model_time(sched, sigma):
    """t(sigma) of (S6) for a model call inside an ODE solver: sigma capped at sigma(T) and t clipped
    to [1, T] (models are defined for t >= 1), against the solver's and the bisection's round-off."""
    as_real(sigma, "sigma", low=0)
    return float(np.clip(sched.t_of_sigma(min(sigma, float(sched.sigma_at(sched.T)))), 1.0, sched.T))


def _checked_eta(eta, rng):
    """eta as a float >= 0, and rng checked: a Generator when eta > 0 draws noise, else unused."""
    eta = as_real(eta, "eta", low=0)
    if eta > 0:
        check_rng(rng)
    else:
        _check_unused_rng(rng)
    return eta


def _check_unused_rng(rng):
    """A sampler that draws no noise takes rng for the common signature; a given one must still be a Generator."""
    if rng is not None:
        check_rng(rng)


def _call(fn, x, t, name="eps_fn"):
    """fn(x, t) at one timestep for the whole batch, checked to return an array shaped like x."""
    out = np.asarray(fn(x, np.full(x.shape[0], t)))
    if out.shape != x.shape:
        raise ValueError(f"{name} must return an array of shape {x.shape}, got {out.shape}")
    return out.astype(x.dtype, copy=False)


def _step_done(x, t, eps, path, return_path, callback):
    """Record the new state (``return_path``), tell ``callback``, and return the state."""
    if return_path:
        path.append(x)
    if callback is not None:
        callback(t, x, eps)
    return x


# ---- the samplers by name ------------------------------------------------------------------------
# For refdiff sample --sampler NAME, sweep.scale_sweep(sample=NAME) and theory.sampler_output: each
# sampler's display name and a call (eps_fn, sched, x_T, steps, rng, callback) -> x_0, steps being a
# count, a grid, or None for every timestep (DDPM) or DEFAULT_STEPS (the others); rng is read only by
# the stochastic ones.
DEFAULT_STEPS = 50


def _steps(k):
    """A registry call's steps: DEFAULT_STEPS when none are given."""
    return DEFAULT_STEPS if k is None else k


SAMPLERS = {
    "ddim": ("DDIM", lambda f, sched, x, k, rng, cb: ddim(f, sched, x, _steps(k), callback=cb)),
    "ddpm": ("DDPM", lambda f, sched, x, k, rng, cb: ddpm(f, sched, x, rng, steps=k, callback=cb)),
    "euler_ancestral": ("Euler ancestral", lambda f, sched, x, k, rng, cb: euler_ancestral(
        f, sched, x, _steps(k), rng=rng, callback=cb)),
    "dpmpp_2m": ("DPM-Solver++(2M)", lambda f, sched, x, k, rng, cb: dpmpp_2m(f, sched, x, _steps(k), callback=cb)),
    "dpmpp_2s": ("DPM-Solver++(2S)", lambda f, sched, x, k, rng, cb: dpmpp_2s(f, sched, x, _steps(k), callback=cb)),
    "dpmpp_2m_sde": ("DPM-Solver++(2M) SDE", lambda f, sched, x, k, rng, cb: dpmpp_2m_sde(
        f, sched, x, _steps(k), rng=rng, callback=cb)),
    "edm": ("Heun (Karras et al.'s sampler without churn)", lambda f, sched, x, k, rng, cb: edm(
        f, sched, x, _steps(k), callback=cb)),
}
