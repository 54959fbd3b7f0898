"""Guidance: turn a denoiser (and a noisy classifier) into a guided ``eps_fn(x, t)``.

Each function wraps model callables and returns a plain ``eps_fn`` that every sampler takes.
Scales follow DESIGN.md: classifier guidance's ``scale`` s multiplies grad log p(y | x_t);
classifier-free guidance's ``w`` is Ho & Salimans' (2022) weight, and diffusers'
``guidance_scale`` equals 1 + w.
"""
import autograd.numpy as anp
import numpy as np
from autograd import grad
from autograd.scipy.special import logsumexp

from .arrays import as_points
from .labels import NULL_LABEL, as_labels


def classifier_guidance(eps_model, logits_model, sched, y, scale, conditional=False):
    """eps_bar = eps(x_t, t) - sqrt(1 - alpha_bar_t) * scale * grad_x log p(y | x_t).

    Dhariwal & Nichol (2021), Algorithm 2. The gradient of log softmax(logits)[y] comes from
    autograd through ``logits_model``, one backward pass for the whole batch per call. The
    denoiser is evaluated unconditionally (y=None) unless ``conditional``.

    Parameters
    ----------
    eps_model : callable (x, t, y=None) -> (N, D)
    logits_model : callable (x, t) -> (N, K), differentiable by autograd in x
    sched : Schedule; y : int or int array (N,) of target labels; scale : finite float
    """
    scale = _finite(scale, "scale")

    def eps_fn(x, t):
        x = as_points(x, "x")
        labels = _target_labels(y, x.shape[0])
        a = sched.alpha_bar[np.asarray(t)]
        g = grad(lambda z: _sum_log_softmax_at(logits_model(z, t), labels))(x)
        eps = eps_model(x, t, labels if conditional else None)
        return eps - (np.sqrt(1 - a) * scale).reshape(-1, 1).astype(x.dtype) * g
    return eps_fn


def classifier_free_guidance(eps_model, y, w):
    """eps_bar = (1 + w) eps(x_t, t, y) - w eps(x_t, t, null), Ho & Salimans (2022), eq. 6.

    Both predictions come from one batched call on [x; x] with labels [y; NULL_LABEL]. w = 0 is
    the conditional model, w = -1 the unconditional one.
    """
    w = _finite(w, "w")

    def eps_fn(x, t):
        x = as_points(x, "x")
        n = x.shape[0]
        labels = _target_labels(y, n)
        tt = np.broadcast_to(np.asarray(t), (n,))
        both = eps_model(np.concatenate([x, x]), np.concatenate([tt, tt]),
                         np.concatenate([labels, np.full(n, NULL_LABEL)]))
        return (1 + w) * both[:n] - w * both[n:]
    return eps_fn


def w_from_guidance_scale(guidance_scale):
    """Ho & Salimans' w from diffusers' guidance_scale s: their rule uncond + s (cond - uncond)
    equals (1 + w) cond - w uncond with w = s - 1."""
    return _finite(guidance_scale, "guidance_scale") - 1.0


def _sum_log_softmax_at(logits, labels):
    """sum_n log softmax(logits_n)[labels_n], written with autograd.numpy so it differentiates."""
    return anp.sum(logits[np.arange(len(labels)), labels] - logsumexp(logits, axis=1))


def _target_labels(y, n):
    labels = as_labels(y, n, np.iinfo(np.int64).max, allow_null=False)
    if labels is None:
        raise ValueError("y must be a label (int or int array) for guidance, got None")
    return labels


def _finite(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)
