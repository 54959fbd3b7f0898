"""The identities of docs/, checked on fresh random inputs: ``refdiff verify``.

Each check is one function ``run(rng) -> (max_error, tolerance)`` and one entry of ``CHECKS``.
Inputs: both schedules at T = 1000 (linear, cosine), random timesteps (t = 1 and T always among
them), points over twelve decades for the conversions and in the box |x| <= 4 for the oracle
(the mixtures three_gaussians, anisotropic, three_overlapping). The error is the largest
|lhs - rhs| over all inputs divided by the size of the terms (each check says which), so the
tolerance is a stated multiple of float64 eps; for the finite difference (O2) it is the
truncation plus round-off bound of the step, and for sampling (D1) the permutation test's
threshold. Functions are looked up on their modules at call time, so a test can replace one.
"""
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

import toy_data

from . import guidance, metrics, process, samplers, schedule, theory
from .arrays import as_count
from .labels import NULL_LABEL

EPS = np.finfo(np.float64).eps
# Round-off allowance: a few float64 operations on terms of the stated size (tests/ use the same).
OPS = 64
N = 100                      # rows per (schedule, mixture) case
BOX = 4.0                    # oracle points in [-BOX, BOX]^D: well conditioned, far tails included
MIXTURES = ("three_gaussians", "anisotropic", "three_overlapping")
H = 1e-5                     # the step of the finite difference in (O2)


@dataclass(frozen=True)
class Check:
    label: str                                       # docs label(s), e.g. "G5" or "C3/C4"
    statement: str
    run: Callable[[np.random.Generator], tuple]      # rng -> (max_error, tolerance)


@dataclass(frozen=True)
class Result:
    label: str
    statement: str
    max_error: float
    tolerance: float
    passed: bool


# ---- inputs -----------------------------------------------------------------------------------
def _cases(rng, count=2, width=3):
    """Per schedule: (sched, t (N,), coefficient columns, `count` arrays (N, width) over 1e-6..1e6)."""
    for sched in (schedule.Schedule.linear(1000), schedule.Schedule.cosine(1000)):
        t = rng.integers(1, sched.T + 1, N)
        t[:2] = 1, sched.T
        wide = [rng.choice([-1.0, 1.0], (N, width)) * 10.0 ** rng.uniform(-6, 6, (N, width)) for _ in range(count)]
        yield sched, t, _coefficients(sched, t), wide


def _coefficients(sched, t):
    """a = alpha_bar_t, a_prev, alpha_t, beta_t as float64 columns (N, 1), read from the tables."""
    col = lambda table, i: table[i][:, None]
    return dict(a=col(sched.alpha_bar, t), a_prev=col(sched.alpha_bar, t - 1),
                alpha=col(sched.alphas, t), beta=col(sched.betas, t))


def _oracle_cases(rng):
    """Per mixture and schedule: (gm, sched, x (N, D) in the box, t (N,), labels (N,))."""
    for name in MIXTURES:
        gm = toy_data.mixture(name)
        for sched, t, _, _ in _cases(rng):
            yield gm, sched, rng.uniform(-BOX, BOX, (N, gm.dim)), t, rng.integers(0, gm.num_labels, N)


def _oracle_tolerance():
    """OPS ulps x K x cond(C_k): every exact eps, score, classifier gradient or posterior mean is a
    responsibility-weighted average of K component terms C_k^-1 (x - sqrt(a) mu_k), each accurate
    to a few ulps times cond(C_k) of its size (tests/test_guidance.py, eps_roundoff).
    cond(a Sigma + (1 - a) I) lies between 1 and cond(Sigma), so cond(Sigma_k) bounds it."""
    return OPS * EPS * max(gm.num_components * np.linalg.cond(gm.covs).max()
                           for gm in map(toy_data.mixture, MIXTURES))


def _components(gm, x, a):
    """The noised components (O1) recomputed with numpy.linalg, independently of the oracle.

    Returns terms C_k^-1 (x - sqrt(a) mu_k) (N, K, D), C_k^-1 (N, K, D, D) and log pi_k N_k(x) (N, K).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 1, 1, 1)
    cov = a * gm.covs[None] + (1 - a) * np.eye(gm.dim)                     # (N, K, D, D)
    inv = np.linalg.inv(cov)
    diff = x[:, None, :] - np.sqrt(a[:, :, 0]) * gm.means[None]             # (N, K, D)
    terms = np.einsum("nkde,nke->nkd", inv, diff)
    log_n = -0.5 * (np.sum(diff * terms, axis=2) + np.linalg.slogdet(cov)[1] + gm.dim * np.log(2 * np.pi))
    return terms, inv, np.log(gm.weights) + log_n


def _size(terms):
    """max_k |C_k^-1 (x - sqrt(a) mu_k)| per row, shape (N, 1): the size of a score's terms."""
    return np.linalg.norm(terms, axis=2).max(axis=1)[:, None]


def _ratio(diff, scale):
    return float(np.max(np.abs(diff) / scale))


# ---- the schedule and the process (docs/schedule.md, docs/process.md) --------------------------
def check_s1(rng):
    # The product taken in the opposite order: two products of up to T = 1000 rounded factors,
    # each within T eps / 2 relative of the exact one, so within T eps of each other (allowed: 2 T eps).
    err = 0.0
    for sched, t, _, _ in _cases(rng):
        t = np.concatenate([[0], t])
        ref = np.array([np.prod((1.0 - sched.betas[1:i + 1])[::-1]) for i in t])
        err = max(err, _ratio(sched.alpha_bar[t] - ref, ref), _ratio(sched.alphas - (1 - sched.betas), 1.0))
    return err, 2 * 1000 * EPS


def check_p1_c1(rng):
    # x_t = q_sample(x0, eps), then (C1) at x_t: terms |x0| and sqrt((1 - a) / a) |eps|.
    err = 0.0
    for sched, t, c, (x0, eps) in _cases(rng):
        back = process.eps_to_x0(sched, process.q_sample(sched, x0, t, eps), t, eps)
        err = max(err, _ratio(back - x0, np.abs(x0) + np.sqrt((1 - c["a"]) / c["a"]) * np.abs(eps)))
    return err, OPS * EPS


def _kappa(sched, t):
    """1 / (1 - alpha_bar_{max(t - 1, 1)}): alpha_bar is stored, so 1 - alpha_bar, which the
    posterior divides by, is off by up to eps / (1 - alpha_bar) relative (largest at t = 1, 2)."""
    return 1.0 / (1.0 - sched.alpha_bar[np.maximum(t - 1, 1)][:, None])


def check_p2_p3(rng):
    # Bayes' rule in x_{t-1}: prior N(sqrt(a_prev) x0, 1 - a_prev), likelihood
    # N(x_t; sqrt(alpha) x_{t-1}, beta); precisions add. At t = 1 the prior is a point mass at x0.
    err = 0.0
    for sched, t, c, (x0, xt) in _cases(rng):
        first = t[:, None] == 1
        prior_var = np.where(first, 1.0, 1.0 - c["a_prev"])             # placeholder at t = 1
        var = np.where(first, 0.0, 1.0 / (1.0 / prior_var + c["alpha"] / c["beta"]))
        linear = np.sqrt(c["a_prev"]) / prior_var * x0 + np.sqrt(c["alpha"]) / c["beta"] * xt
        mean = np.where(first, x0, var * linear)
        got_mean, got_var = process.q_posterior(sched, x0, xt, t)
        kappa = _kappa(sched, t)
        err = max(err, _ratio(got_mean - mean, kappa * (np.abs(x0) + np.abs(xt))),
                  _ratio(got_var - var, kappa * c["beta"]))
    return err, OPS * EPS


def check_p4(rng):
    # (P2) at x0 = (C1); terms (|x_t| + |eps|) / sqrt(alpha_t), times the condition of 1 - alpha_bar.
    err = 0.0
    for sched, t, c, (xt, eps) in _cases(rng):
        want = process.q_posterior(sched, process.eps_to_x0(sched, xt, t, eps), xt, t)[0]
        scale = _kappa(sched, t) * (np.abs(xt) + np.abs(eps)) / np.sqrt(c["alpha"])
        err = max(err, _ratio(process.p_mean(sched, xt, t, eps) - want, scale))
    return err, OPS * EPS


def check_c2(rng):
    # eps -> x0 (C1) -> eps (C2); terms |eps| and |x_t| / sqrt(1 - a).
    err = 0.0
    for sched, t, c, (xt, eps) in _cases(rng):
        back = process.x0_to_eps(sched, xt, t, process.eps_to_x0(sched, xt, t, eps))
        err = max(err, _ratio(back - eps, np.abs(eps) + np.abs(xt) / np.sqrt(1 - c["a"])))
    return err, OPS * EPS


def check_c3_c4(rng):
    err = 0.0
    for sched, t, _, (_, eps) in _cases(rng):
        back = process.score_to_eps(sched, t, process.eps_to_score(sched, t, eps))
        err = max(err, _ratio(back - eps, np.abs(eps)))
    return err, OPS * EPS


def check_c5_c6(rng):
    # eps -> v (C5) -> eps (C6); terms |eps| and sqrt(1 - a) |x_t|.
    err = 0.0
    for sched, t, c, (xt, eps) in _cases(rng):
        back = process.v_to_eps(sched, xt, t, process.eps_to_v(sched, xt, t, eps))
        err = max(err, _ratio(back - eps, np.abs(eps) + np.sqrt(1 - c["a"]) * np.abs(xt)))
    return err, OPS * EPS


def check_c7_o4(rng):
    # Tweedie with the exact score against (O4); terms |mu_k| and
    # (|x| + (1 - a) |C_k^-1 (x - sqrt(a) mu_k)|) / sqrt(a), the oracle's round-off tolerance.
    err = 0.0
    for gm, sched, x, t, _ in _oracle_cases(rng):
        a = sched.alpha_bar[t]
        got = process.tweedie_x0(sched, x, t, gm.score(x, a))
        terms = _components(gm, x, a)[0]
        scale = np.abs(gm.means).max() + (np.abs(x) + (1 - a[:, None]) * _size(terms)) / np.sqrt(a[:, None])
        err = max(err, _ratio(got - gm.x0_mean(x, a), scale))
    return err, _oracle_tolerance()


# ---- the oracle (docs/oracle.md) ---------------------------------------------------------------
def check_o2(rng):
    # Central difference of log q_t [| y] along each axis. Truncation: h^2 / 6 max |f'''|, and for
    # f = log sum_k exp(g_k) with quadratic g_k, f''' = kappa_3(s) - 3 Cov(s, p) under the
    # responsibilities, s_k = d g_k (range R over the step), p_k = -d^2 g_k (range P): |f'''| <=
    # R^3 + R P. Round-off: log densities of size L, each within OPS ulps, divided by 2h.
    err = tol = 0.0
    for gm, sched, x, t, y in _oracle_cases(rng):
        a, y = sched.alpha_bar[t], np.where(rng.random(N) < 0.5, y, NULL_LABEL)  # half unconditional
        score = gm.score(x, a, y)
        terms, inv, log_n = _components(gm, x, a)
        size, size_of_logs = _size(terms)[:, 0], np.abs(log_n).max(axis=1) + 1
        for d in range(gm.dim):
            xp, xm = x.copy(), x.copy()
            xp[:, d] += H
            xm[:, d] -= H
            fd = (gm.log_prob_noised(xp, a, y) - gm.log_prob_noised(xm, a, y)) / (xp[:, d] - xm[:, d])
            s, p = terms[:, :, d], inv[:, :, d, d]
            P = p.max(axis=1) - p.min(axis=1)
            R = s.max(axis=1) - s.min(axis=1) + H * P
            bound = H ** 2 / 6 * (R ** 3 + R * P) + OPS * EPS * size_of_logs / H
            err, tol = max(err, _ratio(fd - score[:, d], size)), max(tol, float(np.max(bound / size)))
    return err, tol


def check_o5(rng):
    # Probabilities from log densities of size L (each within a few ulps per term, K terms summed):
    # error relative to L, tolerance OPS ulps x K.
    err = 0.0
    for gm, sched, x, t, _ in _oracle_cases(rng):
        a = sched.alpha_bar[t]
        prior = np.array([gm.weights[gm.labels == y].sum() for y in range(gm.num_labels)])
        joint = np.stack([gm.log_prob_noised(x, a, y) for y in range(gm.num_labels)], axis=1) + np.log(prior)
        size_of_logs = np.abs(_components(gm, x, a)[2]).max(axis=1, keepdims=True) + 1
        err = max(err, _ratio(_softmax(gm.classifier(sched)(x, t)) - _softmax(joint), size_of_logs))
    return err, OPS * EPS * max(toy_data.mixture(name).num_components for name in MIXTURES)


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---- the samplers (docs/samplers.md) -----------------------------------------------------------
def check_d1(rng):
    # Energy distance (M1) of 1000 DDPM samples to 1000 true ones against the permutation test's
    # threshold (M3) at level 0.001: under H0 a false failure happens once in 1000 seeds.
    gm, sched = toy_data.mixture("three_gaussians"), schedule.Schedule.linear(1000)
    model = gm.eps_model(sched)
    x = samplers.ddpm(lambda x, t: model(x, t), sched, rng.standard_normal((1000, gm.dim)), rng)
    result = metrics.two_sample_test(x, gm.sample(1000, rng)[0], rng, n_perm=999, alpha=0.001)
    return result.statistic, result.threshold


def check_d3(rng):
    # Both chains take the same affine step with different roundings, OPS ulps of the state
    # (size 1 + |x|) per step, over T = 1000 steps. The reverse steps of these mixtures (every
    # covariance eigenvalue below 1) do not amplify the differences much; 1e-13 measured.
    err = 0.0
    gm = toy_data.mixture("anisotropic")
    for sched in (schedule.Schedule.linear(1000), schedule.Schedule.cosine(1000)):
        model, y = gm.eps_model(sched), rng.integers(0, gm.num_labels, 64)
        eps_fn = lambda x, t: model(x, t, y)
        x_T, seed = rng.standard_normal((64, gm.dim)), int(rng.integers(2 ** 32))
        a = samplers.ddpm(eps_fn, sched, x_T, np.random.default_rng(seed))
        b = samplers.ddim(eps_fn, sched, x_T, sched.T, eta=1.0, rng=np.random.default_rng(seed))
        err = max(err, _ratio(a - b, 1 + np.abs(a)))
    return err, OPS * EPS * 1000


# ---- guidance (docs/guidance.md) ---------------------------------------------------------------
def _eps_size(gm, x, a):
    """sqrt(1 - a) max_k |C_k^-1 (x - sqrt(a) mu_k)|, shape (N, 1): the size of an eps's terms."""
    return np.sqrt(1 - a)[:, None] * _size(_components(gm, x, a)[0])


def check_g4(rng):
    err = 0.0
    for gm, sched, x, t, y in _oracle_cases(rng):
        model = gm.eps_model(sched)
        guided = guidance.classifier_guidance(model, gm.classifier(sched), sched, y, 1.0)(x, t)
        err = max(err, _ratio(guided - model(x, t, y), _eps_size(gm, x, sched.alpha_bar[t])))
    return err, _oracle_tolerance()


def _guided_gap(rng, pair):
    """The largest |a - b| over the oracle cases, relative to (1 + 2|s|) times the size of an eps,
    for the guided eps_fns ``pair(gm, sched, y, s) -> (a, b)`` at a random strength s in [-1, 8]:
    each side combines responsibility-weighted averages with weights of total size 1 + 2|s|."""
    err = 0.0
    for gm, sched, x, t, y in _oracle_cases(rng):
        s = rng.uniform(-1, 8)
        a, b = pair(gm, sched, y, s)
        err = max(err, _ratio(a(x, t) - b(x, t), (1 + 2 * abs(s)) * _eps_size(gm, x, sched.alpha_bar[t])))
    return err, _oracle_tolerance()


def check_g5(rng):
    return _guided_gap(rng, lambda gm, sched, y, w: (
        guidance.classifier_free_guidance(gm.eps_model(sched), y, w),
        guidance.classifier_guidance(gm.eps_model(sched), gm.classifier(sched), sched, y, 1 + w)))


def check_g7(rng):
    return _guided_gap(rng, lambda gm, sched, y, s: (
        guidance.classifier_guidance(gm.eps_model(sched), gm.classifier(sched), sched, y, s, conditional=True),
        guidance.classifier_free_guidance(gm.eps_model(sched), y, s)))


def check_g13(rng):
    # CLIP guidance with the exact log-likelihood ratio as its score (docs/clip.md): the ratio's
    # gradient is grad log p(y | x_t), so the rule is classifier guidance at the same scale.
    def pair(gm, sched, y, s):
        def ratio(z, tt):
            return gm.log_prob_noised(z, sched.alpha_bar[tt], y) - gm.log_prob_noised(z, sched.alpha_bar[tt])
        return (guidance.clip_guidance(gm.eps_model(sched), ratio, sched, s),
                guidance.classifier_guidance(gm.eps_model(sched), gm.classifier(sched), sched, y, s))
    return _guided_gap(rng, pair)


def check_g8(rng):
    # Each map is A + B eps; both sides add (1 + 2|w|)-weighted terms of size |A| + |B| (|cond| + |uncond|).
    err = 0.0
    for sched, t, c, (xt, cond, uncond) in _cases(rng, count=3):
        w, r, s = rng.uniform(-1, 8), np.sqrt(c["a"]), np.sqrt(1 - c["a"])
        maps = ((lambda e: process.eps_to_x0(sched, xt, t, e), np.abs(xt) / r, s / r),
                (lambda e: process.eps_to_score(sched, t, e), 0.0, 1 / s),
                (lambda e: process.eps_to_v(sched, xt, t, e), s / r * np.abs(xt), 1 / r))
        for f, A, B in maps:
            lhs = f(guidance.cfg_rule(cond, uncond, w))
            rhs = guidance.cfg_rule(f(cond), f(uncond), w)
            err = max(err, _ratio(lhs - rhs, (1 + 2 * abs(w)) * (A + B * (np.abs(cond) + np.abs(uncond)))))
    return err, OPS * EPS


def check_g10(rng):
    # p_mean(eps - sqrt(1 - a) g) - p_mean(eps) against (beta_t / sqrt(alpha_t)) g, with the guided
    # eps from classifier_guidance and g from classifier_grad; terms of p_mean's size.
    err = 0.0
    for gm, sched, x, t, y in _oracle_cases(rng):
        model, logits, s, c = gm.eps_model(sched), gm.classifier(sched), rng.uniform(0, 8), _coefficients(sched, t)
        eps, guided = model(x, t), guidance.classifier_guidance(model, logits, sched, y, s)(x, t)
        shift = process.p_mean(sched, x, t, guided) - process.p_mean(sched, x, t, eps)
        want = c["beta"] / np.sqrt(c["alpha"]) * guidance.classifier_grad(logits, sched, y, s)(x, t)
        scale = (np.abs(x) + c["beta"] / np.sqrt(1 - c["a"]) * (np.abs(eps) + np.abs(guided))) / np.sqrt(c["alpha"])
        err = max(err, _ratio(shift - want, scale))
    return err, OPS * EPS


def check_t2_t3(rng):
    """Sampled means and variances of DDIM-50 and DDPM-100 with CFG (w = 1) on the 1D Gaussian pair
    against (T2), (T3), in standard errors (sqrt(var / n) and var sqrt(2 / (n - 1)), n = 20000)."""
    sched, n, mu, v, w = schedule.Schedule.linear(1000), 20_000, 1.0, 0.5, 1.0
    eps_fn = guidance.classifier_free_guidance(theory.exact_pair(sched, mu, v), 0, w)
    x_T = rng.standard_normal((n, 1))
    runs = ((samplers.ddim(eps_fn, sched, x_T, 50), theory.ddim_output(sched, sched.timesteps(50, "leading"), mu, v, w)),
            (samplers.ddpm(eps_fn, sched, x_T, rng, steps=100),
             theory.ddpm_output(sched, sched.timesteps(100, "leading"), mu, v, w)))
    z = [max(abs(x.mean() - m) / np.sqrt(var / n), abs(x.var(ddof=1) - var) / (var * np.sqrt(2 / (n - 1))))
         for x, (m, var) in runs]
    return max(z), 5.0


def check_t5_t6(rng):
    """DDIM and DDPM with every step of Schedule.cosine(4000), on (T2), (T3), against the ODE and SDE
    limits (T5), (T6): first-order methods, measured within 0.3% (tolerance 1%), relative."""
    sched, full = schedule.Schedule.cosine(4000), np.arange(4000, 0, -1)
    errors = []
    for mu, v, w in ((1.0, 0.5, 1.0), (-0.5, 2.0, 3.0), (rng.uniform(-2, 2), rng.uniform(0.2, 2), rng.uniform(0, 4))):
        got = np.concatenate([theory.ddim_output(sched, full, mu, v, w), theory.ddpm_output(sched, full, mu, v, w)])
        want = np.concatenate([theory.ode_limit(mu, v, w), theory.sde_limit(mu, v, w)])
        errors.append(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-3)))
    return max(errors), 1e-2


CHECKS = (
    Check("S1", "alpha_bar_t = prod_{s <= t} (1 - beta_s)", check_s1),
    Check("P1/C1", "eps_to_x0(q_sample(x0, eps), eps) = x0", check_p1_c1),
    Check("P2/P3", "q_posterior = Bayes' rule, precisions add", check_p2_p3),
    Check("P4", "p_mean(x_t, eps) = posterior mean at eps_to_x0", check_p4),
    Check("C2", "x0_to_eps(eps_to_x0(eps)) = eps", check_c2),
    Check("C3/C4", "score_to_eps(eps_to_score(eps)) = eps", check_c3_c4),
    Check("C5/C6", "v_to_eps(eps_to_v(eps)) = eps", check_c5_c6),
    Check("C7/O4", "tweedie_x0(exact score) = oracle E[x0 | x_t]", check_c7_o4),
    Check("O2", "oracle score = central difference of log q_t", check_o2),
    Check("O5", "softmax(exact logits) = p(y) q_t(x | y) normalised", check_o5),
    Check("D1", "DDPM-1000 samples of p(x) pass the energy test", check_d1),
    Check("D3", "ddim(eta = 1, every step) = ddpm, same seed", check_d3),
    Check("G4", "classifier guidance(s = 1) = eps(x_t, t, y)", check_g4),
    Check("G5", "CFG(w) = classifier guidance(s = 1 + w)", check_g5),
    Check("G7", "conditional classifier guidance(s) = CFG(w = s)", check_g7),
    Check("G8", "CFG commutes with eps -> x0, score, v", check_g8),
    Check("G10", "eps form moves the DDPM mean by beta / sqrt(alpha) g", check_g10),
    Check("G13", "CLIP guidance(log p(x_t | y) / p(x_t)) = classifier guidance", check_g13),
    Check("T2/T3", "DDIM/DDPM with CFG output (T2)/(T3), in SE", check_t2_t3),
    Check("T5/T6", "every-step DDIM/DDPM near the ODE/SDE laws", check_t5_t6),
)


def run_checks(seed=0, labels=None, on_check=None):
    """Run the checks (all, or those whose docs label is in ``labels``) with inputs drawn from ``seed``.

    Each check draws from its own generator, seeded by (seed, its label), so a filtered run
    reproduces the numbers of the full one.

    Parameters
    ----------
    seed : int >= 0
    labels : None, or docs labels such as ["G5", "C3"]; "C3" selects the check labelled "C3/C4"
    on_check : None or callable(Result), told of each result as it comes (a progress line)

    Returns
    -------
    list of Result, in the order of CHECKS
    """
    seed = as_count(seed, "seed")
    chosen = select_checks(labels)
    results = []
    for check in chosen:
        rng = np.random.default_rng([seed, zlib.crc32(check.label.encode())])
        max_error, tolerance = check.run(rng)
        results.append(Result(check.label, check.statement, float(max_error), float(tolerance),
                              bool(max_error <= tolerance)))
        if on_check:
            on_check(results[-1])
    return results


def select_checks(labels=None):
    """The checks of CHECKS a run with these docs labels makes (all for None), in their order;
    ValueError names an unknown label."""
    if labels is None:
        return CHECKS
    try:
        labels = [labels] if isinstance(labels, str) else list(labels)
    except TypeError:
        raise ValueError(f"labels must be a list of docs labels such as ['G5'], got {labels!r}") from None
    known = set().union(*(_parts(check) for check in CHECKS))
    unknown = [label for label in labels if label not in known]
    if unknown:
        names = ", ".join(check.label for check in CHECKS)
        raise ValueError(f"labels must be docs labels of the checks ({names}), got unknown {unknown}")
    return tuple(check for check in CHECKS if _parts(check) & set(labels))


def _parts(check):
    """The labels that select a check: "C3/C4" is selected by "C3/C4", "C3" and "C4"."""
    return {check.label, *check.label.split("/")}


def format_results(results):
    """A fixed-width table, one line per result after the header: label, identity, max error,
    tolerance, ok / FAIL."""
    width = max([len("identity")] + [len(r.statement) for r in results])
    lines = [f"{'label':6s} {'identity':{width}s} {'max error':>10s} {'tolerance':>10s}  result"]
    for r in results:
        lines.append(f"{r.label:6s} {r.statement:{width}s} {r.max_error:10.2e} {r.tolerance:10.2e}  "
                     f"{'ok' if r.passed else 'FAIL'}")
    return "\n".join(lines)
