"""Exact log-likelihoods of a model through the probability-flow ODE (docs/likelihood.md, (E1)-(E3)).

The probability-flow ODE (docs/samplers.md, (D4)) is a deterministic, invertible map from x_1 to
x_T, so the instantaneous change of variables (Chen et al. 2018, Thm. 1; Grathwohl et al. 2019,
FFJORD; Song et al. 2021, score SDE, Sec. 4.3 and App. D.2) turns it into a density: the log
density changes along a trajectory at the rate minus the divergence of the velocity. In the
scaled variable x~ = x / sqrt(alpha_bar), with sigma = sqrt((1 - alpha_bar) / alpha_bar) of (S6),

    dx~ / dsigma = f(x~, sigma) = eps(sqrt(a) x~, t(sigma)),       a = 1 / (1 + sigma^2),
    d log p~_sigma(x~(sigma)) / dsigma = -div_x~ f = -sqrt(a) tr(d eps / dx).          (E1)

The returned number is log q_1(x) in the x coordinates at level t = 1 (a model is only defined for
t >= 1): the density of x_1, not of x_0 (docs/likelihood.md says why, and how far apart they are).
"""
import numpy as np
from autograd import make_vjp
from scipy.integrate import solve_ivp

from .arrays import as_count, as_points, as_real, check_rng
from .samplers import model_time

LOG_2PI = np.log(2 * np.pi)
DIVERGENCES = ("exact", "hutchinson")


def standard_normal_log_prob(x):
    """log N(x; 0, I) per row, the prior at t = T; shape (N,)."""
    return -0.5 * np.sum(x ** 2 + LOG_2PI, axis=1)


def eps_and_divergence(eps_fn, x, t, probes=None):
    """eps(x, t) and the divergence tr(d eps / dx) of every sample, exact or by Hutchinson (eq. (E3)).

    One forward pass, then vector-Jacobian products (autograd ``make_vjp``). The samples are
    independent (row n of eps depends on row n of x only), so one vjp with the cotangent v (N, D)
    returns v_n^T J_n for every sample n at once. Exact: D vjps with the one-hot rows e_i, whose
    i-th entries sum to tr J_n. Hutchinson (1989): z_n^T J_n z_n averaged over the K probes z.

    Parameters
    ----------
    eps_fn : callable (x (N, D), t (N,)) -> (N, D), differentiable by autograd in x
    x : float64 array (N, D); t : array (N,) of times in [1, T]
    probes : None (exact) or array (K, N, D) of Rademacher probes, one set for a whole solve

    Returns
    -------
    (eps (N, D), divergence (N,))
    """
    vjp, eps = make_vjp(lambda z: eps_fn(z, t))(x)
    eps = np.asarray(eps, dtype=np.float64)
    if eps.shape != x.shape:
        raise ValueError(f"eps_fn must return an array of shape {x.shape}, got {eps.shape}")
    n, d = x.shape
    if probes is None:
        div = np.zeros(n)
        for i in range(d):  # row i of J_n for all n: J_n^T e_i; its i-th entry is (J_n)_ii
            one_hot = np.zeros((n, d))
            one_hot[:, i] = 1.0
            div += np.asarray(vjp(one_hot))[:, i]
        return eps, div
    return eps, np.mean([np.sum(np.asarray(vjp(z)) * z, axis=1) for z in probes], axis=0)


def flow_to_prior(eps_fn, sched, x, probes=None, rtol=1e-6, atol=1e-8):
    """Integrate (E1) from sigma(1) up to sigma(T): x_T and the integrated divergence.

    The augmented system [x~, delta] with dx~/dsigma = eps(x, t(sigma)) and d delta/dsigma =
    sqrt(a) tr(d eps/dx) (eq. (E1)), solved by ``scipy.integrate.solve_ivp`` (RK45, tolerances on
    both parts) for the whole batch as one system, t = t(sigma) of (S6) clipped to [1, T] against
    bisection round-off, as in ``refdiff.samplers.ode_adaptive`` run backwards.

    Parameters
    ----------
    eps_fn : callable (x (N, D), t (N,) in [1, T]) -> (N, D), autograd-differentiable in x
    sched : Schedule with alpha_bar_T > 0; x : array (N, D) at t = 1
    probes : None, or (K, N, D) Rademacher probes (eq. (E3)); rtol, atol : solver tolerances

    Returns
    -------
    (x_T (N, D), delta (N,)) with delta = log p~_1(x~_1) - log p~_T(x~_T) = int sqrt(a) tr J dsigma
    """
    as_real(rtol, "rtol", above=0), as_real(atol, "atol", above=0)
    shape, T = x.shape, sched.T
    n = shape[0]
    s_1, s_T = float(sched.sigma_at(1)), float(sched.sigma_at(T))

    def rhs(sigma, state):
        a = 1.0 / (1.0 + sigma ** 2)
        t = model_time(sched, sigma)
        xt = np.sqrt(a) * state[:-n].reshape(shape)  # x = sqrt(a) x~
        eps, div = eps_and_divergence(eps_fn, xt, np.full(n, t), probes)
        return np.concatenate([eps.reshape(-1), np.sqrt(a) * div])  # (E1): d/dsigma [x~, delta]

    state = np.concatenate([x.reshape(-1) / np.sqrt(sched.alpha_bar[1]), np.zeros(n)])
    if T > 1:
        sol = solve_ivp(rhs, (s_1, s_T), state, method="RK45", rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed: {sol.message}")
        state = sol.y[:, -1]
    return np.sqrt(sched.alpha_bar[T]) * state[:-n].reshape(shape), state[-n:]


def log_likelihood(eps_fn, sched, x, divergence="exact", rng=None, n_probes=1, rtol=1e-6, atol=1e-8,
                   log_prior=standard_normal_log_prob):
    """log p_1(x) of the model's probability-flow ODE, in the x coordinates at t = 1 (eq. (E2)).

    log p_1(x) = log_prior(x_T) + D/2 log(alpha_bar_T / alpha_bar_1) + delta, with (x_T, delta)
    from ``flow_to_prior`` (eq. (E1)); the D/2 log terms are the Jacobians of x = sqrt(a) x~ at
    both ends. Song et al. (2021, score SDE), App. D.2, eq. 40.

    Parameters
    ----------
    eps_fn : callable (x (N, D), t (N,) real in [1, T]) -> eps (N, D), differentiable by autograd in x
    sched : Schedule with alpha_bar_T > 0; x : array (N, D), points at level t = 1
    divergence : "exact" (D vjps per evaluation) or "hutchinson" (n_probes vjps, eq. (E3))
    rng : numpy.random.Generator, for "hutchinson" only: the Rademacher probes, drawn once per call
    n_probes : probes averaged per evaluation ("hutchinson" only); rtol, atol : RK45 tolerances
    log_prior : callable x_T (N, D) -> (N,), the density at t = T; default N(0, I)

    Returns
    -------
    float64 array (N,)
    """
    x = as_points(x, "x").astype(np.float64)
    probes = _probes(divergence, rng, n_probes, x.shape)
    rtol, atol = as_real(rtol, "rtol", above=0), as_real(atol, "atol", above=0)
    if not callable(eps_fn):
        raise ValueError(f"eps_fn must be callable, got {type(eps_fn).__name__}")
    if not callable(log_prior):
        raise ValueError(f"log_prior must be callable, got {type(log_prior).__name__}")
    if not sched.alpha_bar[-1] > 0:
        raise ValueError("sched must have alpha_bar_T > 0: sigma(T) is infinite")
    x_T, delta = flow_to_prior(eps_fn, sched, x, probes, rtol, atol)
    log_jac = 0.5 * x.shape[1] * (np.log(sched.alpha_bar[-1]) - np.log(sched.alpha_bar[1]))
    return np.asarray(log_prior(x_T), dtype=np.float64) + log_jac + delta


def hutchinson_variance(J):
    """Var(z^T J z) for Rademacher z: sum_{i != j} (J_ij^2 + J_ij J_ji) (eq. (E3)); J (..., D, D)."""
    J = np.asarray(J, dtype=np.float64)
    off = J - np.einsum("...ii->...i", J)[..., None] * np.eye(J.shape[-1])
    return np.sum(off ** 2 + off * np.swapaxes(off, -1, -2), axis=(-2, -1))


def _probes(divergence, rng, n_probes, shape):
    """Validate the divergence options; the (K, N, D) Rademacher probes for "hutchinson", else None."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    n_probes = as_count(n_probes, "n_probes", low=1)
    if divergence == "exact":
        if rng is not None or n_probes != 1:
            raise ValueError("rng and n_probes are used by divergence='hutchinson' only; "
                             f"got rng={rng!r}, n_probes={n_probes} with divergence='exact'")
        return None
    check_rng(rng)
    return rng.choice(np.array([-1.0, 1.0]), size=(n_probes, *shape))
