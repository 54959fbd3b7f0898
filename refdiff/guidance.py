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
from autograd.extend import defvjp, primitive
from autograd.tracer import getval

from .arrays import alpha_bar_of, as_count, as_points, as_real, as_times, row_max
from .labels import NULL_LABEL, as_labels
from .nn import log_softmax
from .process import PREDICTIONS, eps_to_prediction, eps_to_x0, prediction_to_eps
from .samplers import sampling_grid

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
    return log_likelihood_guidance(eps_model, score_fn, sched, scale)


def log_likelihood_guidance(eps_model, log_likelihood, sched, scale):
    """eps_bar = eps(x_t, t) - sqrt(1 - a) * scale * grad_x log_likelihood(x_t, t): (G3) with any
    differentiable log-likelihood of a condition at x_t in place of log p(y | x_t).

    CLIP guidance (G13) and the exact likelihood of an observation (docs/inverse.md, (I3)) are
    this; eps is the unconditional prediction.

    Parameters
    ----------
    eps_model : callable (x, t, y=None) -> (N, D), evaluated unconditionally
    log_likelihood : callable (x (N, D), t) -> (N,), differentiable by autograd in x
    sched : Schedule; scale : finite float
    """
    scale = as_real(scale, "scale")

    def grad_fn(x, t):
        return scale * grad(lambda z: anp.sum(log_likelihood(z, t)))(x)
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
    _check_score(score_fn, sched, noise_aware=False)
    return x0_log_likelihood_guidance(eps_model, lambda x0, t: score_fn(x0), sched, scale)


def x0_log_likelihood_guidance(eps_model, log_likelihood, sched, scale, t_max=None):
    """eps_bar = eps - sqrt(1 - a) * scale * grad_x log_likelihood(x0_hat(x_t), t), x0_hat by (C1):
    (G3) with a log-likelihood of the predicted clean point, differentiated back through the
    denoiser (one backward pass per step; t an integer timestep).

    Clean-CLIP guidance (G14), DPS and reconstruction guidance (docs/inverse.md, (I4), (I5)) are this.
    With ``t_max`` the term is applied only where every row's t <= t_max, and eps alone above: x0_hat
    divides by sqrt(alpha_bar), so at high noise a learned eps's Jacobian errors reach the gradient
    magnified (docs/inverse.md, "Learned models").

    Parameters
    ----------
    eps_model : callable (x, t, y=None) -> (N, D), differentiable by autograd in x
    log_likelihood : callable (x0 (N, D), t (N,)) -> (N,), differentiable by autograd in x0
    sched : Schedule; scale : finite float; t_max : None (every t) or an integer in 1..T
    """
    scale = as_real(scale, "scale")
    t_max = sched.T if t_max is None else as_count(t_max, "t_max", low=1)
    _check_schedule(eps_model, sched, "eps_model")

    def eps_fn(x, t):
        x = as_points(x, "x")
        t = as_times(t, x.shape[0], sched.T)
        if np.max(t) > t_max:
            return eps_model(x, t)
        kept = {}

        def total(z):
            eps = eps_model(z, t)
            kept["eps"] = getval(eps)
            return anp.sum(log_likelihood(eps_to_x0(sched, z, t, eps), t))
        g = grad(total)(x)
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


def _projection(a, onto):
    """The projection of each a_i onto onto_i, (<a_i, onto_i> / ||onto_i||^2) onto_i, over all
    non-batch axes; 0 where onto_i = 0 (nothing to project onto). onto_i is divided by its largest
    |entry| first (the projection does not change), so tiny or huge vectors neither underflow nor overflow."""
    axes = tuple(range(1, onto.ndim))
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = np.nan_to_num(onto / np.max(np.abs(onto), axis=axes, keepdims=True), nan=0.0)
        along = np.nan_to_num(_per_sample_dot(a, unit) / _per_sample_dot(unit, unit), nan=0.0, posinf=0.0, neginf=0.0)
    return along * unit


def apg_rule(cond, uncond, w, eta=0.0, norm_threshold=None, form="paper"):
    """Adaptive projected guidance, eq. (G16): Sadat et al. (2024), Alg. 1 without momentum.

    d = cond - uncond, scaled per sample to norm at most ``norm_threshold`` (None: no threshold,
    which diffusers writes 0 and the paper infinity); d_par = (<d, cond> /
    ||cond||^2) cond (0 where cond = 0) and d_perp = d - d_par, norms and products per sample over
    all non-batch axes. form "paper": cond + w (d_perp + eta d_par); form "diffusers": uncond +
    (1 + w)(d_perp + eta d_par) (diffusers' ``normalized_guidance`` at guidance_scale 1 + w, its
    default ``use_original_formulation=False``). eta = 1 without a threshold is CFG (G5) in both.
    """
    settings = _apg_settings(w, eta, norm_threshold, form)
    return _apg_combine(cond, uncond, cond - uncond, *settings)


def _apg_settings(w, eta, norm_threshold, form):
    """(w, eta, threshold, form) of (G16) checked, each named."""
    w, eta = as_real(w, "w"), as_real(eta, "eta")
    threshold = as_real(norm_threshold, "norm_threshold", above=0, optional=True)
    if form not in APG_FORMS:
        raise ValueError(f"form must be one of {APG_FORMS}, got {form!r}")
    return w, eta, threshold, form


def _apg_combine(cond, uncond, d, w, eta, threshold, form):
    """(G16) from a guidance difference d: cond - uncond, or its momentum average (G16m)."""
    if threshold is not None:
        norm = np.sqrt(_per_sample_dot(d, d))
        with np.errstate(divide="ignore", invalid="ignore"):
            d = d * np.where(norm > threshold, threshold / norm, 1.0)
    parallel = _projection(d, cond)
    update = (d - parallel) + eta * parallel
    return cond + w * update if form == "paper" else uncond + (1 + w) * update


def apg_guidance(eps_model, sched, y, w, eta=0.0, norm_threshold=None, momentum=0.0, form="paper", prediction="x0"):
    """eps_bar of adaptive projected guidance, (G16) with momentum (G16m): Sadat et al. (2024), Alg. 1.

    Both predictions (one batched call) are converted to ``prediction`` (process.PREDICTIONS; the
    paper's x0, eq. (C1)), combined by (G16) with the difference d replaced by its running average
    d_avg = d + momentum * d_avg_prev (the paper's reverse momentum uses momentum < 0; 0 is
    ``apg_rule``), and converted back to eps. The average lives for one sampling call
    (``_PerCall``): it restarts when the eps_fn is called at a later time than the last call's, with
    another batch shape, or at the (t, x) the current call started from, and is updated at every
    call (like diffusers' ``MomentumBuffer``).
    """
    settings = _apg_settings(w, eta, norm_threshold, form)
    momentum = as_real(momentum, "momentum")
    _check_prediction(prediction)
    _check_schedule(eps_model, sched, "eps_model")
    state = _PerCall()

    def eps_fn(x, t):
        x, tt, _ = _guidance_inputs(x, t, None, sched)
        cond, uncond = (eps_to_prediction(sched, x, tt, e, prediction) for e in _both(eps_model, x, tt, y))
        state.advance(tt, x)
        d = cond - uncond
        state.value = d if state.value is None else d + momentum * state.value  # (G16m)
        return prediction_to_eps(sched, x, tt, _apg_combine(cond, uncond, state.value, *settings), prediction)
    return eps_fn


class _PerCall:
    """What a guided eps_fn keeps across the steps of one sampling call: APG's momentum average
    (``value``) and the count of distinct times seen (``steps``, for CFG-Zero*'s first steps).

    A sampler's times never increase within a call, every call starts at its largest time, and no
    call comes back to the (t, x) it started from. So the state restarts at a call at a later time
    than the last one, on a batch of another shape, or at the very (t, x) the current sampling call
    started from (the same call made again). Another evaluation at the same time with another x
    (Heun's at the next grid time) is the same step. An eps_fn with this state serves one sampling
    call at a time (not two threads); under DDIM inversion (increasing times) it restarts at every call.
    """

    def __init__(self):
        self.time, self.start, self.steps, self.value = None, None, 0, None

    def advance(self, t, x):
        """Note a call at times t (one per row) on the batch x; return the step's number, 1 first."""
        time = float(np.max(t))
        start_time, start_x = self.start if self.start is not None else (None, None)
        if (self.time is None or time > self.time or x.shape != start_x.shape
                or (time == start_time and np.array_equal(x, start_x))):
            self.steps, self.value, self.start = 0, None, (time, x.copy())
        if self.steps == 0 or time != self.time:
            self.steps += 1
        self.time = time
        return self.steps


def perp_neg_rule(cond, uncond, neg, w, w_neg):
    """uncond + (1 + w) d_pos - w_neg d_neg_perp, eq. (G18): Perp-Neg, Armandpour et al. (2023), Alg. 1
    with their w_pos = 1 + w (CFG's weight, (G6)).

    d_pos = cond - uncond, d_neg = neg - uncond, and d_neg_perp = d_neg minus its projection onto
    d_pos, per sample over all non-batch axes (all of d_neg where d_pos = 0). A negative that is
    orthogonal to the positive (d_neg_perp = d_neg) with w_neg = w is the negative prompt (G15); a
    null negative (neg = uncond) is CFG (G5).
    """
    w, w_neg = as_real(w, "w"), as_real(w_neg, "w_neg")
    d_pos, d_neg = cond - uncond, neg - uncond
    return uncond + (1 + w) * d_pos - w_neg * (d_neg - _projection(d_neg, d_pos))


def perp_neg_guidance(eps_model, y, y_neg, w, w_neg=None):
    """eps_bar of Perp-Neg, (G18), from one batched call on [x; x; x] with labels [y; null; y_neg];
    w_neg defaults to w (then a negative orthogonal to the positive is (G15))."""
    w = as_real(w, "w")
    w_neg = w if w_neg is None else as_real(w_neg, "w_neg")

    def eps_fn(x, t):
        x = as_points(x, "x")
        n = x.shape[0]
        labels = [_target_labels(y, n), np.full(n, NULL_LABEL), _target_labels(y_neg, n, "y_neg", allow_null=True)]
        tt = np.broadcast_to(np.asarray(t), (n,))
        out = eps_model(np.concatenate([x, x, x]), np.concatenate([tt, tt, tt]), np.concatenate(labels))
        return perp_neg_rule(out[:n], out[n:2 * n], out[2 * n:], w, w_neg)
    return eps_fn


def cfg_zero_star_rule(cond, uncond, w):
    """(1 + w) cond - w s* uncond with s* = <cond, uncond> / ||uncond||^2 per sample over all non-batch
    axes (0 where uncond = 0), eq. (G17): CFG-Zero* of Fan et al. (2025), its optimised scale.

    s* uncond is the projection of cond onto uncond, so s* = 1 (cond - uncond orthogonal to uncond)
    is CFG (G5), bit for bit.
    """
    w = as_real(w, "w")
    return cfg_rule(cond, _projection(cond, uncond), w)


def cfg_zero_star(eps_model, sched, y, w, zero_steps=1, prediction="eps"):
    """eps_bar of CFG-Zero*, (G17) with zero-init (G17z): Fan et al. (2025), Sec. 4 and Alg. 1.

    The rule is applied to ``prediction`` (process.PREDICTIONS; diffusers' guider applies it to
    what the model outputs, eps for an eps model). At the first ``zero_steps`` distinct times of a
    sampling call (``_PerCall``) the paper zeroes the flow-matching velocity; for a VP model that
    is eps = x_t / (sqrt(a) + sqrt(1 - a)) (G17z), with which a DDIM step leaves the
    rectified-flow state x_t / (sqrt(a) + sqrt(1 - a)) where it is. (eps = 0 instead would give
    x0_hat = x_t / sqrt(a).)
    """
    w = as_real(w, "w")
    zero_steps = as_count(zero_steps, "zero_steps", low=0)
    _check_prediction(prediction)
    _check_schedule(eps_model, sched, "eps_model")
    state = _PerCall()

    def eps_fn(x, t):
        x, tt, _ = _guidance_inputs(x, t, None, sched)
        if state.advance(tt, x) <= zero_steps:  # (G17z)
            a = alpha_bar_of(sched, tt).reshape(-1, 1)
            return (x / (np.sqrt(a) + np.sqrt(1 - a))).astype(x.dtype)
        cond, uncond = (eps_to_prediction(sched, x, tt, e, prediction) for e in _both(eps_model, x, tt, y))
        return prediction_to_eps(sched, x, tt, cfg_zero_star_rule(cond, uncond, w), prediction)
    return eps_fn


def autoguidance(eps_model, weak_model, y, w):
    """eps_bar = (1 + w) eps(x_t, t, y) - w eps_weak(x_t, t, y), eq. (G19): Karras et al. (2024),
    eq. 2, whose w_K is 1 + w (the (G6) convention).

    CFG (G5) with the unconditional branch replaced by a weaker model of the same condition, which
    errs more where the good one errs; weak_model = eps_model is the conditional model (any w).
    """
    w = as_real(w, "w")

    def eps_fn(x, t):
        x = as_points(x, "x")
        labels = _target_labels(y, x.shape[0])
        return cfg_rule(eps_model(x, t, labels), weak_model(x, t, labels), w)
    return eps_fn


def cfg_pp(eps_model, sched, y, lam):
    """CFG++, eq. (G21): Chung et al. (2024), Alg. 1 (DDIM) and its Euler ancestral form; returns
    the pair (eps_fn, x0_fn) that ``samplers.ddim`` and ``samplers.euler_ancestral`` take.

    x0_fn gives x0_hat (C1) of the interpolation uncond + lam (cond - uncond), lam in [0, 1] ((G5)
    with w = lam - 1); eps_fn gives the unconditional eps, with which the step re-noises. On DDIM
    this is DDIM-CFG with the step-dependent weight 1 + w = lam sigma_t / (sigma_t - sigma_down)
    (sigma of (D4); sigma_down = sigma_prev at eta = 0), (G21). One batched call serves both: the
    predictions at the last (x, t) are kept, and the other function reuses them when asked at equal x and t.
    """
    lam = as_real(lam, "lam", low=0, high=1)
    _check_schedule(eps_model, sched, "eps_model")
    last = {"x": None}

    def both(x, t):
        if last["x"] is None or not (np.array_equal(last["x"], x) and np.array_equal(last["t"], t)):
            last.update(zip(("x", "t", "pair"), (np.array(x), np.array(t), _both(eps_model, x, t, y))))
        return last["pair"]

    def x0_fn(x, t):
        cond, uncond = both(x, t)
        return eps_to_x0(sched, x, t, cfg_rule(cond, uncond, lam - 1))
    return (lambda x, t: both(x, t)[1]), x0_fn


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


WEIGHT_SHAPES = ("linear", "cosine")  # weight_schedule: how w moves from w_start at t = T to w_end at t = 0


def scheduled_cfg(eps_model, y, weight):
    """eps_bar = (1 + w(t)) eps(x_t, t, y) - w(t) eps(x_t, t, null), eq. (G20): CFG (G5) with a weight
    that depends on the time, the one wrapper for every guidance schedule.

    ``weight(t) -> w`` takes the times (N,) of a call and returns one finite weight per row
    (``weight_schedule``, ``interval_weight``, or any callable); w = 0 rows are the conditional
    model. Both predictions come from one batched call.
    """
    if not callable(weight):
        raise ValueError(f"weight must be a callable t -> w, got {weight!r}")

    def eps_fn(x, t):
        cond, uncond = _both(eps_model, x, t, y)
        ws = np.asarray(weight(np.broadcast_to(np.asarray(t), (len(cond),))), dtype=np.float64)
        if ws.shape != (len(cond),) or not np.all(np.isfinite(ws)):
            raise ValueError(f"weight must return {len(cond)} finite weights (one per row), got {ws!r}")
        guided = np.empty_like(cond)
        for w in np.unique(ws):  # one (G5) per distinct weight: a sampler's call has one
            rows = ws == w
            guided[rows] = cfg_rule(cond[rows], uncond[rows], float(w))
        return guided
    return eps_fn


def weight_schedule(sched, w_start, w_end, shape="linear"):
    """w(t) from w_start at t = T to w_end at t = 0, eq. (G20): with u = t / T,
    linear: w_end + (w_start - w_end) u; cosine: w_end + (w_start - w_end) (1 - cos(pi u)) / 2.
    w_start = w_end is the constant weight. For ``scheduled_cfg``.
    """
    w_start, w_end = as_real(w_start, "w_start"), as_real(w_end, "w_end")
    if shape not in WEIGHT_SHAPES:
        raise ValueError(f"shape must be one of {WEIGHT_SHAPES}, got {shape!r}")

    def weight(t):
        u = np.asarray(t, dtype=np.float64) / sched.T
        ramp = u if shape == "linear" else (1 - np.cos(np.pi * u)) / 2
        return w_end + (w_start - w_end) * ramp
    return weight


def interval_weight(w, t_low, t_high):
    """w(t) = w for t_low <= t <= t_high and 0 elsewhere: the guidance interval (G12) as a schedule
    (G20), t_low <= t_high integers in 1..T."""
    w = as_real(w, "w")
    if not (isinstance(t_low, (int, np.integer)) and isinstance(t_high, (int, np.integer)) and 1 <= t_low <= t_high
            and not isinstance(t_low, bool) and not isinstance(t_high, bool)):
        raise ValueError(f"t_low and t_high must be integers with 1 <= t_low <= t_high, got {t_low!r}, {t_high!r}")
    return lambda t: np.where((np.asarray(t) >= t_low) & (np.asarray(t) <= t_high), w, 0.0)


def interval_cfg(eps_model, y, w, t_low, t_high):
    """CFG with weight w only for t_low <= t <= t_high, the conditional model elsewhere (G12).

    Kynkaanniemi et al. (2024) apply guidance in a limited interval of noise levels: strong
    guidance at high noise collapses diversity and at low noise adds little. refdiff states the
    interval in timesteps, t_low <= t_high in 1..T (sigma of (S6) is increasing in t): the
    schedule (G20) ``interval_weight``; ``steps_interval`` gives it for diffusers' start and stop.
    """
    return scheduled_cfg(eps_model, y, interval_weight(w, t_low, t_high))


def steps_interval(sched, steps, start, stop, spacing=None):
    """(t_low, t_high) of the steps that diffusers' guiders guide with ``start`` and ``stop`` (eq. (G20d)),
    or None when they guide none.

    A guider with start, stop in [0, 1] guides step i (0 the first, noisiest, of S) when
    int(start S) <= i < int(stop S) and returns the conditional prediction at the others; on the
    grid t_0 > ... > t_{S-1} of ``samplers.sampling_grid(sched, steps, spacing, discrete=True)``
    those are the times t_{int(stop S) - 1} <= t <= t_{int(start S)}, the interval of (G12).
    """
    start, stop = as_real(start, "start", low=0, high=1), as_real(stop, "stop", low=0, high=1)
    grid = sampling_grid(sched, steps, spacing, discrete=True)
    first, end = int(start * len(grid)), int(stop * len(grid))
    return (int(grid[end - 1]), int(grid[first])) if first < end else None


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


@primitive
def _sum_log_softmax_at(logits, labels):
    """sum_n log softmax(logits_n)[labels_n] (``nn.log_softmax``), the objective of eq. (G2).

    One autograd primitive whose gradient is the closed form ``_sum_log_softmax_at_vjp``, equal bit
    for bit to autograd's trace of the seven operations (log-softmax, pick, sum) that it replaces:
    the oracle's classifier gradient took 0.73 ms instead of 0.96 ms at 64 points, 2.1 instead of
    3.0 ms at 1800 (one BLAS thread, a shared machine).
    """
    num_labels = logits.shape[1]
    if labels.max() >= num_labels:
        raise ValueError(f"y must be in 0..{num_labels - 1} (the classifier's labels), got {labels.max()}")
    return np.sum(log_softmax(logits)[np.arange(len(labels)), labels])


def _sum_log_softmax_at_vjp(ans, logits, labels):
    """g ([k = labels_n] - softmax(logits_n)_k), (N, K): the derivative of ``_sum_log_softmax_at``
    (eq. (G2)) as autograd's chain through ``nn.log_softmax`` computes it, bit for bit.

    The chain gives the picked entries g (+0.0 elsewhere) and, through log, sum and exp, e -g / s
    with e = exp(logits - row max) and s its row sum; it adds the two in that order. Written in
    autograd.numpy, so it can be differentiated again.
    """
    e = anp.exp(logits - row_max(getval(logits)))                  # (N, K)
    s = anp.sum(e, axis=1, keepdims=True)                          # (N, 1)
    picked = np.arange(logits.shape[1]) == labels[:, None]         # (N, K)
    return lambda g: anp.where(picked, g, 0.0) + e * (-g / s)


defvjp(_sum_log_softmax_at, _sum_log_softmax_at_vjp)


def _target_labels(y, n, name="y", allow_null=False):
    """y as int64 (n,), each >= 0 (or NULL_LABEL, if allowed); the models check the upper end
    against their own K."""
    labels = as_labels(y, n, np.iinfo(np.int64).max, allow_null=allow_null, name=name)
    if labels is None:
        raise ValueError(f"{name} must be a label (int or int array) for guidance, got None")
    return labels


def _check_prediction(prediction):
    """A rule applied to a parametrisation: one of process.PREDICTIONS."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


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
