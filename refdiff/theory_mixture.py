"""What CFG samples for a one-dimensional two-class mixture, and CFG as a predictor-corrector
(docs/theory_mixture.md).

For mixture data the guided eps is no longer affine, so the output laws of docs/theory.md have no
closed form. Here the tilted target p(x | y)^(1 + w) p(x)^(-w) is normalised by quadrature (T7),
the samplers are run with the exact oracle (T9), and both are summarised by the same numbers:
mean, variance, the "confidence" E[p(y | x_0)] and an entropy (T8). The second half writes the
reverse-SDE drift with the CFG score as a probability-flow (DDIM) drift for p(x | y) plus a
Langevin drift for p(x | y)^(2 gamma - 1) p(x)^(2 - 2 gamma) (T10, T11; Bradley & Nakkiran 2024).
"""
import autograd.numpy as anp
import numpy as np
from autograd import elementwise_grad
from scipy.integrate import quad_vec

from .arrays import as_count, as_real, is_real
from .guidance import classifier_free_guidance
from .oracle import GaussianMixture
from .samplers import ddim, ddpm, ode_adaptive

SAMPLERS = ("ddim", "ddpm", "ode")


def two_class_mixture():
    """p(x) = 1/2 N(-1, 1) + 1/2 N(+1, 1), label 0 the component at -1, label 1 the one at +1 (T7).

    Its exact classifier is p(y = 1 | x_0) = sigmoid(2 x_0) (the log-odds of the two unit-variance
    components are ((x + 1)^2 - (x - 1)^2) / 2 = 2x).
    """
    return GaussianMixture([1.0, 1.0], [[-1.0], [1.0]], [[[1.0]], [[1.0]]], labels=[0, 1])


def tilted_log_density(mixture, x, y, w):
    """(1 + w) log p(x | y) - w log p(x), the unnormalised log tilted density (eq. (T7)); shape (N,).

    x : (N, D); y : int label; w : float. Differentiable in x by autograd.
    """
    as_real(w, "w")
    return (1 + w) * mixture.log_prob(x, y) - w * mixture.log_prob(x)


def confidence(mixture, x, y):
    """The exact classifier's p(y | x_0) at each sample, eq. (O5) at alpha_bar = 1 (eq. (T8)); shape (N,)."""
    as_count(y, "y")
    return np.exp(mixture.log_classifier(x, 1.0)[:, y])


def gaussian_entropy(var):
    """The entropy of N(., var), 1/2 log(2 pi e var): an upper bound on any 1D density's differential
    entropy at that variance (eq. (T8))."""
    if not is_real(var) or not np.all(np.isfinite(var)) or np.any(np.asarray(var) < 0):
        raise ValueError(f"var must be a finite number >= 0 or an array of them, got {var!r}")
    return 0.5 * np.log(2 * np.pi * np.e * np.asarray(var, dtype=np.float64))


def tilted_moments(mixture, y, w, span=12.0):
    """Mean, variance, confidence and differential entropy of the normalised tilted density (eqs. (T7), (T8)).

    One vector quadrature (``scipy.integrate.quad_vec``) of f(x) [1, x, x^2, p(y | x), l(x)] with
    f = exp(l - l_max), l from ``tilted_log_density``, over [min mu - L, max mu + L] with
    L = span * max sd * (1 + |w|); l_max is the maximum of l on a grid of that interval, where the
    quadrature is split. With Z = int f: mean = int x f / Z, var = int x^2 f / Z - mean^2,
    confidence = int p(y | x) f / Z, entropy = -int (f / Z) log(f / Z) = log Z + l_max - int l f / Z.

    Parameters
    ----------
    mixture : GaussianMixture of dimension 1; y : int label; w : float; span : float > 0

    Returns
    -------
    dict with keys "mean", "var", "confidence", "entropy" (floats)
    """
    as_count(y, "y"), as_real(w, "w"), as_real(span, "span", above=0)
    if mixture.dim != 1:
        raise ValueError(f"tilted_moments needs a 1D mixture, got dim = {mixture.dim}")
    sd = float(np.sqrt(mixture.covs.max()))
    lo, hi = mixture.means.min() - span * sd * (1 + abs(w)), mixture.means.max() + span * sd * (1 + abs(w))
    grid = np.linspace(lo, hi, 4001)[:, None]
    log_grid = tilted_log_density(mixture, grid, y, w)
    l_max, mode = float(log_grid.max()), float(grid[np.argmax(log_grid), 0])

    def integrand(x):  # (5,): f(x) times [1, x, x^2, p(y | x), l(x)]
        point = np.array([[x]])
        log_f = tilted_log_density(mixture, point, y, w)[0]
        return np.exp(log_f - l_max) * np.array([1.0, x, x * x, confidence(mixture, point, y)[0], log_f])

    moments = sum(quad_vec(integrand, a, b, epsabs=0, epsrel=1e-11)[0] for a, b in ((lo, mode), (mode, hi)))
    Z = moments[0]
    mean = moments[1] / Z
    return {"mean": float(mean), "var": float(moments[2] / Z - mean ** 2), "confidence": float(moments[3] / Z),
            "entropy": float(np.log(Z) + l_max - moments[4] / Z)}


def sample_cfg(mixture, sched, y, w, sampler, n, rng, steps=200):
    """n samples of a sampler run with CFG's eps (G5) on the exact oracle, from x_T ~ N(0, I) (eq. (T9)).

    sampler : "ddim" (eta = 0, ``steps`` leading steps, (D2)), "ddpm" (ancestral, beta_tilde, on the
    chain respaced to ``steps`` leading steps, (D1)) or "ode" (the probability-flow ODE by adaptive
    RK45, rtol 1e-5, atol 1e-7, (D5); ``steps`` unused). Returns x_0 of shape (n, D).
    """
    as_count(n, "n", low=1), as_count(steps, "steps", low=1)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    eps_fn = classifier_free_guidance(mixture.eps_model(sched), y, w)
    x_T = rng.standard_normal((n, mixture.dim))
    if sampler == "ddim":
        return ddim(eps_fn, sched, x_T, steps)
    if sampler == "ddpm":
        return ddpm(eps_fn, sched, x_T, rng, steps=steps)
    return ode_adaptive(eps_fn, sched, x_T, rtol=1e-5, atol=1e-7)


def sample_moments(mixture, x, y):
    """Mean, variance, confidence and Gaussian-fit entropy of 1D samples, with standard errors (eq. (T8)).

    SEs: sd / sqrt(n) for the mean and the confidence; sqrt((m4 - var^2) / n) for the variance
    (m4 the fourth central moment; the delta method); the Gaussian-fit entropy's is var's SE / (2 var).

    Returns
    -------
    dict with "mean", "var", "confidence", "entropy_gauss" and "<key>_se" for each, and "n"
    """
    x = np.asarray(x, dtype=np.float64)[:, 0]
    n, conf = len(x), confidence(mixture, x[:, None], y)
    mean, var = x.mean(), x.var(ddof=1)
    var_se = np.sqrt(np.mean((x - mean) ** 4) - var ** 2) / np.sqrt(n)
    return {"n": n, "mean": mean, "mean_se": np.sqrt(var / n), "var": var, "var_se": var_se,
            "confidence": conf.mean(), "confidence_se": conf.std(ddof=1) / np.sqrt(n),
            "entropy_gauss": float(gaussian_entropy(var)), "entropy_gauss_se": var_se / (2 * var)}


def cfg_table(sched, ws=(0.0, 1.0, 2.0, 4.0), seed=0, n=20_000, steps=200, n_ode=5_000, y=1):
    """The numbers of docs/theory_mixture.md: ``sample_moments`` of DDIM, DDPM and the ODE with CFG
    on ``two_class_mixture`` toward y, and ``tilted_moments``, for each w (eq. (T9)).

    One ``numpy.random.default_rng(seed)`` is consumed in the order w, then ddim, ddpm, ode.
    Returns a list of dicts {"w", "ddim", "ddpm", "ode", "tilted"}.
    """
    as_count(seed, "seed"), as_count(n, "n", low=1), as_count(steps, "steps", low=1)
    as_count(n_ode, "n_ode", low=1), as_count(y, "y")
    mixture, rng, rows = two_class_mixture(), np.random.default_rng(seed), []
    for w in ws:
        row = {"w": w, "tilted": tilted_moments(mixture, y, w)}
        for sampler, size in (("ddim", n), ("ddpm", n), ("ode", n_ode)):
            x = sample_cfg(mixture, sched, y, w, sampler, size, rng, steps)
            row[sampler] = sample_moments(mixture, x, y)
        rows.append(row)
    return rows


def format_table(rows):
    """The markdown table of docs/theory_mixture.md: confidence and variance per law, 3 decimals."""
    lines = ["| `w` | DDIM conf. | DDIM var | DDPM conf. | DDPM var | ODE conf. | ODE var | tilted conf. | tilted var |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k]['confidence']:.3f} | {r[k]['var']:.3f}" for k in ("ddim", "ddpm", "ode", "tilted")]
        lines.append(f"| {r['w']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- CFG as a predictor-corrector (Bradley & Nakkiran 2024) ---------------------------------------
def powered_score(mixture, x, alpha_bar, y, gamma):
    """grad_x log [p_t(x | y)^gamma p_t(x)^(1 - gamma)] by autograd of the log-densities (O1) (eq. (T10)).

    x : (N, D); alpha_bar : float in [0, 1]; y : int label; gamma : float. Returns (N, D).
    """
    as_real(gamma, "gamma")
    def log_powered(z):
        return gamma * mixture.log_prob_noised(z, alpha_bar, y) + (1 - gamma) * mixture.log_prob_noised(z, alpha_bar)
    return elementwise_grad(lambda z: anp.sum(log_powered(z)))(np.asarray(x, dtype=np.float64))


def cfg_score(mixture, sched, x, t, y, w):
    """The CFG score -eps_bar / sqrt(1 - alpha_bar_t), eps_bar from ``classifier_free_guidance`` on the
    exact oracle (G5, C3); x (N, D), t int in 1..T. Returns (N, D)."""
    as_count(t, "t", low=1), as_real(w, "w")
    eps = classifier_free_guidance(mixture.eps_model(sched), y, w)(x, np.full(len(x), t))
    return -eps / np.sqrt(1 - sched.alpha_bar[t])


def reverse_sde_drift(x, score, beta):
    """Drift of the reverse VP SDE in reverse time, -f(x) + g^2 score = beta x / 2 + beta score (eq. (T10))."""
    as_real(beta, "beta", low=0)
    return 0.5 * beta * x + beta * score


def pf_ode_drift(x, score, beta):
    """Drift of the probability-flow ODE in reverse time, -f(x) + g^2 score / 2 = beta (x + score) / 2 (eq. (T10))."""
    as_real(beta, "beta", low=0)
    return 0.5 * beta * (x + score)


def langevin_drift(score, beta):
    """Drift of Langevin dynamics dx = (eps / 2) score dtau + sqrt(eps) dW with step eps = g^2 dtau
    = beta dtau, per unit reverse time: beta score / 2 (eq. (T11))."""
    as_real(beta, "beta", low=0)
    return 0.5 * beta * score
