"""What guided samplers output, in closed form, for one-dimensional Gaussian data (docs/theory.md).

With p(x) = N(0, 1) and p(x | y) = N(mu, v), every exact eps is affine in x_t, so CFG's eps is
too (T1), and each DDIM or DDPM step maps a Gaussian to a Gaussian. The output law of a sampler
with finitely many steps is therefore a Gaussian whose mean and variance follow a recursion
(T2, T3). The "tilted" density p(x | y)^(1 + w) p(x)^(-w) that CFG is often said to sample is a
Gaussian too (T4); the recursions show that neither sampler outputs it. With infinitely many steps
DDIM becomes the probability-flow ODE and DDPM the reverse SDE, whose outputs are closed forms
(T5, T6). Every other sampler of refdiff.samplers is affine in x_T and its noise draws too, so its
output law is read off exactly by probing that map (T12).
"""
import numpy as np
from scipy.integrate import quad

from .arrays import alpha_bar_of, as_count, as_real, as_timesteps, is_real
from .labels import NULL_LABEL
from .oracle import GaussianMixture
from .samplers import SAMPLERS


def _check_pair(mu, v, w):
    """Raise ValueError naming the argument unless mu and w are finite numbers and v > 0."""
    as_real(mu, "mu"), as_real(v, "v", above=0), as_real(w, "w")


def exact_pair(sched, mu, v):
    """The exact denoiser of the pair: ``eps_model(x, t, y=None)`` with x of shape (N, 1), the oracle
    of p(x) = N(0, 1) for y = None or NULL_LABEL rows and of p(x | y) = N(mu, v) for the others.

    A batch of one kind (every row null, or none) asks only its own oracle: a row's eps does not
    depend on the other rows, so the bits are those of both oracles with the other's dropped.
    """
    _check_pair(mu, v, 0.0)
    prior = GaussianMixture([1.0], [[0.0]], [[[1.0]]]).eps_model(sched)
    cond = GaussianMixture([1.0], [[mu]], [[[v]]]).eps_model(sched)

    def eps_model(x, t, y=None):
        null = np.ones(len(x), bool) if y is None else np.broadcast_to(np.asarray(y) == NULL_LABEL, (len(x),))
        if null.all() or not null.any():
            return (prior if null.all() else cond)(x, t)
        return np.where(null[:, None], prior(x, t), cond(x, t))
    return eps_model


def cfg_eps_coefficients(a, mu, v, w):
    """CFG's eps for p(x) = N(0, 1), p(x | y) = N(mu, v): eps(x_t) = e1 x_t + e0 (eq. (T1)).

    The noised laws are p_t(x) = N(0, 1) and p_t(x | y) = N(sqrt(a) mu, a v + 1 - a), so by (O3)
    eps(x) = sqrt(1 - a) x and eps(x | y) = sqrt(1 - a) (x - sqrt(a) mu) / (a v + 1 - a), and
    (G5) combines them with weights 1 + w and -w.

    Parameters
    ----------
    a : float or array, alpha_bar_t in (0, 1]; mu : float; v : float > 0; w : float

    Returns
    -------
    (e1, e0) : floats or arrays shaped like a
    """
    if not is_real(a) or not np.all((np.asarray(a) >= 0) & (np.asarray(a) <= 1)):
        raise ValueError(f"a must be a number or an array of numbers in [0, 1] (alpha_bar_t), got {a!r}")
    _check_pair(mu, v, w)
    return _cfg_eps(np.asarray(a, dtype=np.float64), mu, v, w)


def _cfg_eps(a, mu, v, w):
    """(e1, e0) of ``cfg_eps_coefficients`` (T1) on checked arguments: the exact recursions below
    call it at every step of a chain, where checking a table's alpha_bar again would cost more."""
    s = np.sqrt(1 - a)
    var_y = a * v + 1 - a
    return s * ((1 + w) / var_y - w), -s * (1 + w) * np.sqrt(a) * mu / var_y


def ddim_output(sched, ts, mu, v, w, eta=0.0):
    """Mean and variance of DDIM's output with CFG's exact eps from x_T ~ N(0, 1) (eq. (T2)).

    Each step of (D2) is x' = A x + B + sigma z, with A and B from (T1), so
    mean' = A mean + B and var' = A^2 var + sigma^2 (Song et al. 2021, eqs. 12 and 16).

    Parameters
    ----------
    sched : Schedule; ts : decreasing ints, the steps visited (``sched.timesteps(steps, spacing)``)
    mu, v, w : as in ``cfg_eps_coefficients``; eta : float >= 0

    Returns
    -------
    (mean, var) : floats
    """
    _check_pair(mu, v, w)
    as_real(eta, "eta", low=0)
    ts = as_timesteps(ts, len(ts), sched.T, "ts")
    mean, var = 0.0, 1.0
    for t, t_prev in zip(ts, np.append(ts[1:], 0)):
        a, ap = sched.alpha_bar[t], sched.alpha_bar[t_prev]
        sigma2 = eta ** 2 * (1 - ap) / (1 - a) * (1 - a / ap)
        e1, e0 = _cfg_eps(a, mu, v, w)
        c = np.sqrt(1 - ap - sigma2)
        # x' = sqrt(ap) (x - sqrt(1 - a) eps) / sqrt(a) + c eps + sigma z,  eps = e1 x + e0
        A = np.sqrt(ap / a) * (1 - np.sqrt(1 - a) * e1) + c * e1
        B = (c - np.sqrt(ap / a) * np.sqrt(1 - a)) * e0
        mean, var = A * mean + B, A ** 2 * var + sigma2
    return float(mean), float(var)


def ddpm_output(sched, ts, mu, v, w, variance="beta_tilde", mean_shift=False):
    """Mean and variance of ancestral DDPM's output with exact guidance from x_T ~ N(0, 1) (eq. (T3)).

    On the chain respaced to ts (S5), each step of (D1) is
    x' = (x - beta / sqrt(1 - a) eps) / sqrt(1 - beta) + sigma z, with no noise at the last step,
    and eps is CFG's (T1). With ``mean_shift`` the same strength is applied as Dhariwal & Nichol's
    Algorithm 1 instead (G9): eps is the unconditional one (T1 at w = -1) and the mean moves by
    sigma^2 g, g = (1 + w) grad log p(y | x_t) = -(1 + w) (eps(x | y) - eps(x)) / sqrt(1 - a) by (G1).
    """
    _check_pair(mu, v, w)
    ts = as_timesteps(ts, len(ts), sched.T, "ts")
    sub = sched.respace(ts)
    var_table = sub.posterior_variance() if variance == "beta_tilde" else sub.betas
    mean, var = 0.0, 1.0
    for j in range(sub.T, 0, -1):
        a, beta = sub.alpha_bar[j], sub.betas[j]
        e1, e0 = _cfg_eps(a, mu, v, -1.0 if mean_shift else w)
        A = (1 - beta / np.sqrt(1 - a) * e1) / np.sqrt(1 - beta)
        B = -beta / np.sqrt(1 - a) * e0 / np.sqrt(1 - beta)
        if mean_shift:
            (c1, c0), (u1, u0) = _cfg_eps(a, mu, v, 0.0), (e1, e0)
            A, B = A - var_table[j] * (1 + w) * (c1 - u1) / np.sqrt(1 - a), B - var_table[j] * (1 + w) * (c0 - u0) / np.sqrt(1 - a)
        mean, var = A * mean + B, A ** 2 * var + (var_table[j] if j > 1 else 0.0)
    return float(mean), float(var)


def sampler_output(sched, sample, mu, v, w, steps=None, max_draws=None):
    """Mean and variance of any sampler's output with CFG's exact eps from x_T ~ N(0, 1) (eq. (T12)).

    ``affine_output`` with the eps of (T1).

    Parameters
    ----------
    sched : Schedule; mu, v, w : as in ``cfg_eps_coefficients``
    sample : a name in samplers.SAMPLERS, or a callable (eps_fn, x_T, rng) -> x_0 that draws its
        noise only as rng.standard_normal(x.shape, dtype=x.dtype)
    steps : for a name, its steps as ``samplers.SAMPLERS`` takes them (None: its default)
    max_draws : the most noise draws expected (default sched.T + 1, one per step of any grid)

    Returns
    -------
    (mean, var) : floats
    """
    _check_pair(mu, v, w)

    def eps_fn(x, t):
        e1, e0 = _cfg_eps(alpha_bar_of(sched, t)[:, None], mu, v, w)
        return e1 * x + e0
    return affine_output(sched, sample, eps_fn, steps, max_draws)


def affine_output(sched, sample, eps_fn, steps=None, max_draws=None):
    """Mean and variance of a sampler's output from x_T ~ N(0, 1) in one dimension, exactly, for any
    eps_fn affine in x (the exact eps of Gaussian data under any rule that combines predictions
    linearly: CFG, negative prompts, autoguidance, schedules of w; CFG++ through ``sample``) (eq. (T12)).

    Every step of every sampler in refdiff.samplers combines x, eps and fresh noise linearly, so the
    output is x_0 = c x_T + sum_k g_k z_k + d, exactly Gaussian with mean d and variance
    c^2 + sum_k g_k^2. One call reads the map off probe rows: row 0 starts at x_T = 0, row 1 at
    x_T = 1, and the k-th noise draw is 1 in row 2 + k and 0 elsewhere (``_UnitDraws``), so
    d = x_0[0], c = x_0[1] - d and g_k = x_0[2 + k] - d. A last row at x_T = -2 checks the map:
    ValueError if its output is not d - 2c (eps_fn not affine in x).

    sample : a name in samplers.SAMPLERS (at ``steps``), or a callable (eps_fn, x_T, rng) -> x_0 that
        draws its noise only as rng.standard_normal(x.shape, dtype=x.dtype)
    eps_fn : callable (x (N, 1), t (N,)) -> (N, 1); max_draws : as in ``sampler_output``
    """
    if isinstance(sample, str):
        if sample not in SAMPLERS:
            raise ValueError(f"sample must be one of {sorted(SAMPLERS)} or a callable, got {sample!r}")
        call = SAMPLERS[sample][1]
        sample = (lambda f, x, rng, call=call: call(f, sched, x, steps, rng, None))
    elif not callable(sample):
        raise ValueError(f"sample must be a sampler's name or a callable (eps_fn, x_T, rng), got {sample!r}")
    draws = as_count(sched.T + 1 if max_draws is None else max_draws, "max_draws")
    x_T = np.zeros((3 + draws, 1))
    x_T[1], x_T[-1] = 1.0, -2.0
    out = np.asarray(sample(eps_fn, x_T, _UnitDraws(draws)), dtype=np.float64)[:, 0]
    d, c, g = out[0], out[1] - out[0], out[2:-1] - out[0]
    if not np.isclose(out[-1], d - 2 * c, rtol=1e-9, atol=1e-9 * (abs(d) + abs(c))):
        raise ValueError(f"eps_fn must be affine in x: the output at x_T = -2 is {out[-1]:.6g}, not {d - 2 * c:.6g}")
    return float(d), float(c * c + g @ g)


class _UnitDraws(np.random.Generator):
    """A Generator whose k-th standard_normal draw (k = 0, 1, ...) is 1 in row 2 + k and 0 elsewhere,
    the probe of ``sampler_output``; it refuses a draw past ``draws``."""

    def __init__(self, draws):
        super().__init__(np.random.PCG64(0))
        self.draws, self.count = draws, 0

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        if self.count == self.draws:
            raise ValueError(f"the sampler drew noise more than max_draws = {self.draws} times")
        z = np.zeros(size, dtype)
        z[2 + self.count] = 1
        self.count += 1
        return z


def tilted(mu, v, w):
    """Mean and variance of the tilted density p(x | y)^(1 + w) p(x)^(-w), normalised (eq. (T4)).

    Exponents add: its precision is (1 + w) / v - w and its precision-weighted mean (1 + w) mu / v.
    ValueError when the precision is not positive (no normalisable density).
    """
    _check_pair(mu, v, w)
    precision = (1 + w) / v - w
    if not precision > 0:
        raise ValueError(f"w = {w} with v = {v}: (1 + w) / v - w = {precision} <= 0, the tilted density "
                         "is not normalisable")
    return (1 + w) * mu / v / precision, 1 / precision


def ode_limit(mu, v, w, mu_other=0.0, v_other=1.0):
    """Mean and variance of the probability-flow ODE's output under (1 + w) eps(. | N(mu, v)) -
    w eps(. | N(mu_other, v_other)) with exact eps: CFG (T5) by default, where the other model is the
    prior N(0, 1); a negative label's Gaussian (G15) or a blurred weak model (G19, autoguidance:
    mu_other = mu, v_other = v + delta^2) otherwise (eq. (T13)).

    In a = alpha_bar the VP probability-flow ODE is dx/da = (x + score) / (2a) (Song et al. 2021,
    eq. 13). With s_i = 1 + a (v_i - 1) each score is -(x - sqrt(a) mu_i) / s_i, and
    (1 - 1/s_i) / a = d log s_i / da, so the integrating factor is phi(a) = s_1^((1 + w)/2) s_2^(-w/2)
    and, from x ~ N(0, 1) at a = 0: var = phi(1)^2 = v^(1 + w) v_other^(-w), and
    mean = phi(1) int_0^1 ((1 + w) mu / s_1 - w mu_other / s_2) / (2 sqrt(b) phi(b)) db.
    """
    _check_pair(mu, v, w)
    as_real(mu_other, "mu_other"), as_real(v_other, "v_other", above=0)

    def integrand(b):
        s1, s2 = 1 + b * (v - 1), 1 + b * (v_other - 1)
        return ((1 + w) * mu / s1 - w * mu_other / s2) * s1 ** (-(1 + w) / 2) * s2 ** (w / 2) / 2
    integral = quad(integrand, 0, 1, weight="alg", wvar=(-0.5, 0), epsabs=0, epsrel=1e-12)[0]
    phi = v ** ((1 + w) / 2) * v_other ** (-w / 2)
    return phi * integral, phi ** 2


def sde_limit(mu, v, w):
    """Mean and variance of the reverse SDE's output with CFG's exact score (eq. (T6)).

    In a = alpha_bar the reverse VP SDE is dx = (x + 2 score) / (2a) da + dW with Var(dW) = da / a
    (Anderson 1982; Song et al. 2021, eq. 6). With (T1) its mean and variance solve linear ODEs,
    and from a = 0 to a = 1: mean = mu r(1 + w), var = v r(1 + 2w) / (1 + 2w), where
    r(k) = (v^k - 1) / (v - 1) (r(k) = k at v = 1).
    """
    _check_pair(mu, v, w)
    return mu * _geometric(v, 1 + w), v * _geometric(v, 1 + 2 * w, per_k=True)


def _geometric(v, k, per_k=False):
    """(v^k - 1) / (v - 1), or that over k, continuous in v and k: at v = 1 it is k (1 over k),
    at k = 0 (per_k) it is log(v) / (v - 1). Computed with expm1, without cancellation."""
    log_v = np.log(v)
    ratio_over_k = 1.0 if log_v == 0 else (log_v if k == 0 else np.expm1(k * log_v) / k) / np.expm1(log_v)
    return float(ratio_over_k if per_k else k * ratio_over_k)
