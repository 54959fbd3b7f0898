"""Guidance: turn a denoiser (and a noisy classifier, or a CLIP score) into a guided ``eps_fn(x, t)``
(docs/guidance.md; CLIP guidance in docs/clip.md).

Each function wraps model callables and returns a plain ``eps_fn`` that every sampler takes, or,
for the mean-shift form, the gradient that ``samplers.ddpm(..., mean_shift=...)`` adds to its mean.
Scales follow docs/architecture.md, "Scales": classifier guidance's ``scale`` s multiplies grad log p(y | x_t);
classifier-free guidance's ``w`` is Ho & Salimans' (2022) weight, and diffusers'
``guidance_scale`` equals 1 + w (eq. (G6)).
"""
import autograd.numpy as anp
import numpy as np
from autograd import grad
from autograd.tracer import getval

from .arrays import alpha_bar_of, as_points, as_real, as_times
from .labels import NULL_LABEL, as_labels
from .nn import log_softmax
from .process import eps_to_x0

APG_FORMS = ("paper", "diffusers")  # apg_rule: the guided prediction built on cond, or on uncond at 1 + w


def classifier_grad(logits_model, sched, y, scale):
    """g(x_t, t) = scale * grad_x log softmax(logits(x_t, t))[y], eq. (G2).

    Guided-diffusion's ``cond_fn``: the classifier's log-probability of the target label, not its
    probability (Dhariwal & Nichol 2021, Algorithms 1-2). Autograd differentiates the batch sum of
    the per-row log-probabilities in one backward pass; that is each row's own gradient because a
    classifier scores every row independently.

    Parameters
    ----------
    logits_model : callable (x, t) -> (N, K) logits, differentiable by autograd in x
    sched : Schedule the classifier was trained with; t must be in 1..sched.T
    y : int or int array (N,) of target labels in 0..K-1
    scale : finite float, s

    Returns
    -------
    grad_fn : callable (x (N, D), t) -> (N, D)
    """
    scale = as_real(scale, "scale")
    _check_schedule(logits_model, sched, "logits_model")

    def grad_fn(x, t):
        x, t, _ = _guidance_inputs(x, t, None, sched)
        labels = _target_labels(y, x.shape[0])
        return scale * grad(lambda z: _sum_log_softmax_at(logits_model(z, t), labels))(x)
    return grad_fn


def classifier_guidance(eps_model, logits_model, sched, y, scale, conditional=False):
    """eps_bar = eps(x_t, t) - sqrt(1 - alpha_bar_t) * scale * grad_x log p(y | x_t), eq. (G3).

    Dhariwal & Nichol (2021), Algorithm 2, with the gradient of eq. (G2). The denoiser is
    evaluated unconditionally (y=None), so that scale 1 gives the conditional model (G4). With
    ``conditional=True`` it is evaluated at y, and scale s then equals CFG with w = s (G7).

    Parameters
    ----------
    eps_model : callable (x, t, y=None) -> (N, D)
    logits_model : callable (x, t) -> (N, K), differentiable by autograd in x
    sched : Schedule both models were trained with
    y : int or int array (N,) of target labels; scale : finite float, s

    Returns
    -------
    eps_fn : callable (x (N, D), t) -> (N, D)
    """
    grad_fn = classifier_grad(logits_model, sched, y, scale)
    return _shifted(eps_model, grad_fn, sched, y if conditional else None)


def clip_guidance(eps_model, score_fn, sched, scale):
    """eps_bar = eps(x_t, t) - sqrt(1 - alpha_bar_t) * scale * grad_x score(x_t, t), eq. (G13).

    GLIDE's CLIP guidance (Nichol et al. 2022, Sec. 2.4) in the eps form of (G3): the score is a
    noise-aware CLIP's logit exp(logit_scale) f(x_t, t) . g(c) (``clip.Clip.score_fn``, eq. (CL3)),
    and eps is the unconditional prediction. Any score whose x-gradient is grad log p(c | x_t)
    makes this classifier guidance (G4): the exact log-likelihood ratio log p(x_t | y) - log p(x_t)
    of the oracle does (docs/clip.md).

    Parameters
    ----------
    eps_model : callable (x, t, y=None) -> (N, D), evaluated unconditionally
    score_fn : callable (x (N, D), t) -> (N,), differentiable by autograd in x
    sched : Schedule; scale : finite float

    Returns
    -------
    eps_fn : callable (x (N, D), t) -> (N, D)
    """
    scale = as_real(scale, "scale")
    _check_score(score_fn, sched, noise_aware=True)

    def grad_fn(x, t):
        return scale * grad(lambda z: anp.sum(score_fn(z, t)))(x)
    return _shifted(eps_model, grad_fn, sched)


def clip_x0_guidance(eps_model, score_fn, sched, scale):
    """eps_bar = eps - sqrt(1 - alpha_bar_t) * scale * grad_x score(x0_hat(x_t)), eq. (G14).

    The clean-image variant: x0_hat(x_t) = (x_t - sqrt(1 - alpha_bar_t) eps(x_t, t)) / sqrt(alpha_bar_t)
    (eq. (C1)) is scored by a CLIP trained on clean images only, and the gradient flows back
    through the denoiser, as in Bansal et al.'s (2023) forward universal guidance. Each step costs
    a backward pass through the denoiser; t must be an integer timestep.

    Parameters
    ----------
    eps_model : callable (x, t, y=None) -> (N, D), differentiable by autograd in x
    score_fn : callable (x0 (N, D)) -> (N,), differentiable by autograd
    sched : Schedule; scale : finite float

    Returns
    -------
    eps_fn : callable (x (N, D), t) -> (N, D)
    """
    scale = as_real(scale, "scale")
    _check_schedule(eps_model, sched, "eps_model")
    _check_score(score_fn, sched, noise_aware=False)

    def eps_fn(x, t):
        x = as_points(x, "x")
        t = as_times(t, x.shape[0], sched.T)
        kept = {}

        def total_score(z):
            eps = eps_model(z, t)
            kept["eps"] = getval(eps)
            return anp.sum(score_fn(eps_to_x0(sched, z, t, eps)))
        g = grad(total_score)(x)
        return kept["eps"] - _sigma(sched, t, x) * scale * g
    return eps_fn


def _shifted(eps_model, grad_fn, sched, y=None):
    """eps_fn(x, t) = eps(x, t, y) - sqrt(1 - alpha_bar_t) grad_fn(x, t): the eps form of (G3) and (G13).

    y None evaluates the denoiser unconditionally; otherwise at the target labels y.
    """
    _check_schedule(eps_model, sched, "eps_model")

    def eps_fn(x, t):
        x, t, labels = _guidance_inputs(x, t, y, sched)
        return eps_model(x, t, labels) - _sigma(sched, t, x) * grad_fn(x, t)
    return eps_fn


def _sigma(sched, t, x):
    """sqrt(1 - alpha_bar_t) as a column (N, 1) in the dtype of x."""
    return np.sqrt(1 - alpha_bar_of(sched, t)).reshape(-1, 1).astype(x.dtype)


def cfg_rule(cond, uncond, w):
    """(1 + w) cond - w uncond, eq. (G5): Ho & Salimans (2022), eq. 6.

    The weights sum to 1, so the rule commutes with any map that is affine in the prediction:
    it gives the same guided model applied to eps, x0, score or v predictions (G8).
    """
    as_real(w, "w")
    return (1 + w) * cond - w * uncond


def classifier_free_guidance(eps_model, y, w):
    """eps_bar = (1 + w) eps(x_t, t, y) - w eps(x_t, t, null), eq. (G5).

    Ho & Salimans (2022), eq. 6 and Algorithm 2. Both predictions come from one batched call on
    [x; x] with labels [y; NULL_LABEL]. w = 0 is the conditional model, w = -1 the unconditional
    one; diffusers' guidance_scale is 1 + w (G6, ``w_from_guidance_scale``).

    Parameters
    ----------
    eps_model : callable (x, t, y=None) -> (N, D), trained with label dropout to NULL_LABEL
    y : int or int array (N,) of target labels; w : finite float

    Returns
    -------
    eps_fn : callable (x (N, D), t) -> (N, D)
    """
    w = as_real(w, "w")

    def eps_fn(x, t):
        return cfg_rule(*_both(eps_model, x, t, y), w)
    return eps_fn


def negative_prompt_guidance(eps_model, y, y_neg, w):
    """eps_bar = (1 + w) eps(x_t, t, y) - w eps(x_t, t, y_neg), eq. (G15): CFG (G5) pushed away from a
    negative label instead of from the unconditional model; y_neg = NULL_LABEL is CFG, bit for bit.

    Both predictions come from one batched call, as in ``classifier_free_guidance``; y and y_neg are
    ints or int arrays (N,) (y_neg may hold NULL_LABEL).
    """
    w = as_real(w, "w")

    def eps_fn(x, t):
        return cfg_rule(*_both(eps_model, x, t, y, y_neg), w)
    return eps_fn


def _both(eps_model, x, t, y, y_other=NULL_LABEL):
    """(eps(x, t, y), eps(x, t, y_other)) from one batched call on [x; x] with labels [y; y_other]
    (y_other the null label: the unconditional prediction)."""
    x = as_points(x, "x")
    n = x.shape[0]
    labels, others = _target_labels(y, n), _target_labels(y_other, n, "y_neg", allow_null=True)
    tt = np.broadcast_to(np.asarray(t), (n,))
    both = eps_model(np.concatenate([x, x]), np.concatenate([tt, tt]), np.concatenate([labels, others]))
    return both[:n], both[n:]


def _per_sample_dot(a, b):
    """<a_i, b_i> over all non-batch axes, shape (N, 1, ..., 1) to broadcast against a."""
    return np.sum(a * b, axis=tuple(range(1, a.ndim)), keepdims=True)


def apg_rule(cond, uncond, w, eta=0.0, norm_threshold=None, form="paper"):
    """Adaptive projected guidance, eq. (G16): Sadat et al. (2024), Alg. 1 without momentum.

    d = cond - uncond, scaled per sample to norm at most ``norm_threshold`` (None: no threshold,
    which diffusers writes 0 and the paper infinity); d_par = (<d, cond> /
    ||cond||^2) cond (0 where cond = 0) and d_perp = d - d_par, norms and products per sample over
    all non-batch axes. form "paper": cond + w (d_perp + eta d_par); form "diffusers": uncond +
    (1 + w)(d_perp + eta d_par) (diffusers' ``normalized_guidance`` at guidance_scale 1 + w, its
    default ``use_original_formulation=False``). eta = 1 without a threshold is CFG (G5) in both.
    """
    w, eta = as_real(w, "w"), as_real(eta, "eta")
    threshold = as_real(norm_threshold, "norm_threshold", above=0, optional=True)
    if form not in APG_FORMS:
        raise ValueError(f"form must be one of {APG_FORMS}, got {form!r}")
    d = cond - uncond
    norm = np.sqrt(_per_sample_dot(d, d))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = d if threshold is None else d * np.where(norm > threshold, threshold / norm, 1.0)
        along = np.nan_to_num(_per_sample_dot(d, cond) / _per_sample_dot(cond, cond), nan=0.0, posinf=0.0, neginf=0.0)
    parallel = along * cond
    update = (d - parallel) + eta * parallel
    return cond + w * update if form == "paper" else uncond + (1 + w) * update


def cfg_zero_star_rule(cond, uncond, w):
    """(1 + w) cond - w s* uncond with s* = <cond, uncond> / ||uncond||^2 per sample over all non-batch
    axes (0 where uncond = 0), eq. (G17): CFG-Zero* of Fan et al. (2025), its optimised scale.

    s* uncond is the projection of cond onto uncond, so s* = 1 (cond - uncond orthogonal to uncond)
    is CFG (G5), bit for bit.
    """
    w = as_real(w, "w")
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.nan_to_num(_per_sample_dot(cond, uncond) / _per_sample_dot(uncond, uncond), nan=0.0,
                              posinf=0.0, neginf=0.0)
    return cfg_rule(cond, scale * uncond, w)


def rescaled_cfg(eps_model, y, w, phi):
    """CFG with the rescale of Lin et al. (2024), Sec. 3.4, eq. (G11).

    eps_cfg from (G5) is scaled so that each sample's standard deviation over its coordinates
    matches the conditional prediction's, and blended: phi * eps_cfg * std(cond) / std(eps_cfg)
    + (1 - phi) * eps_cfg. phi = 0 is plain CFG; Lin et al. use phi = 0.7 (on v-predictions;
    diffusers' ``guidance_rescale`` applies it to eps as here). Not affine in the predictions, so
    unlike (G5) it depends on the parametrisation it is applied to (G8).
    """
    w, phi = as_real(w, "w"), as_real(phi, "phi")

    def eps_fn(x, t):
        cond, uncond = _both(eps_model, x, t, y)
        guided = cfg_rule(cond, uncond, w)
        ratio = np.std(cond, axis=1, keepdims=True) / np.std(guided, axis=1, keepdims=True)
        return phi * guided * ratio + (1 - phi) * guided
    return eps_fn


def interval_cfg(eps_model, y, w, t_low, t_high):
    """CFG with weight w only for t_low <= t <= t_high, the conditional model elsewhere (G12).

    Kynkaanniemi et al. (2024) apply guidance in a limited interval of noise levels: strong
    guidance at high noise collapses diversity and at low noise adds little. refdiff states the
    interval in timesteps, t_low <= t_high in 1..T (sigma of (S6) is increasing in t).
    """
    w = as_real(w, "w")
    if not (isinstance(t_low, (int, np.integer)) and isinstance(t_high, (int, np.integer)) and 1 <= t_low <= t_high
            and not isinstance(t_low, bool) and not isinstance(t_high, bool)):
        raise ValueError(f"t_low and t_high must be integers with 1 <= t_low <= t_high, got {t_low!r}, {t_high!r}")

    def eps_fn(x, t):
        cond, uncond = _both(eps_model, x, t, y)
        tt = np.broadcast_to(np.asarray(t), (len(cond),))
        inside = (tt >= t_low) & (tt <= t_high)
        return np.where(inside[:, None], cfg_rule(cond, uncond, w), cond)
    return eps_fn


def w_from_guidance_scale(guidance_scale):
    """Ho & Salimans' w from diffusers' guidance_scale, eq. (G6): w = guidance_scale - 1.

    diffusers computes uncond + guidance_scale * (cond - uncond), which is (G5) with 1 + w in
    place of guidance_scale; guidance_scale = 1 is the conditional model, as is w = 0.
    """
    return as_real(guidance_scale, "guidance_scale") - 1.0


def _guidance_inputs(x, t, y, sched):
    """x as (N, D); t as int64 (N,) in 1..T, or float64 in [1, T] if real; the target labels as
    int64 (N,), or None when y is None (the unconditional model)."""
    x = as_points(x, "x")
    return x, as_times(t, x.shape[0], sched.T), None if y is None else _target_labels(y, x.shape[0])


def _sum_log_softmax_at(logits, labels):
    """sum_n log softmax(logits_n)[labels_n] (``nn.log_softmax``), differentiable by autograd."""
    num_labels = logits.shape[1]
    if labels.max() >= num_labels:
        raise ValueError(f"y must be in 0..{num_labels - 1} (the classifier's labels), got {labels.max()}")
    return anp.sum(log_softmax(logits)[np.arange(len(labels)), labels])


def _target_labels(y, n, name="y", allow_null=False):
    """y as int64 (n,), each >= 0 (or NULL_LABEL, if allowed); the models check the upper end
    against their own K."""
    labels = as_labels(y, n, np.iinfo(np.int64).max, allow_null=allow_null, name=name)
    if labels is None:
        raise ValueError(f"{name} must be a label (int or int array) for guidance, got None")
    return labels


def _check_schedule(model, sched, name):
    """A trained network carries its Schedule; guiding it with another one is a silent error."""
    own = getattr(model, "sched", None)
    if own is not None and not np.array_equal(own.betas, sched.betas):
        raise ValueError(f"{name} was trained with a different schedule (T = {own.T}) from sched (T = {sched.T})")


def _check_score(score_fn, sched, noise_aware):
    """A CLIP score (``Clip.score_fn``) carries its model's kind and Schedule: (G13) needs a
    noise-aware one trained with ``sched``, (G14) a clean one. Plain callables pass unchecked."""
    kind = getattr(score_fn, "noise_aware", noise_aware)
    if kind != noise_aware:
        want, got = ("noise-aware", "clean") if noise_aware else ("clean", "noise-aware")
        raise ValueError(f"score_fn must be a {want} CLIP's score here, got a {got} one "
                         f"(clip_guidance takes noise-aware scores, clip_x0_guidance clean ones)")
    if noise_aware:
        _check_schedule(score_fn, sched, "score_fn")
