"""Training: the denoising loss with conditioning dropout, the noisy-classifier loss, and one Adam
loop with gradient clipping and an EMA of the weights (docs/learned.md).
"""
import contextlib
import math
import sys
import time

import numpy as np
from autograd import value_and_grad

from .arrays import as_count, as_points, as_real, check_rng
from .labels import as_labels
from .nn import (DTYPES, Classifier, Denoiser, MLPConfig, classifier_forward, denoiser_forward, init_params,
                 log_softmax, mean)
from .arrays import alpha_bar_of
from .process import PREDICTIONS, q_sample, target_of


# The default 2D budget (the defaults of train_denoiser and train_classifier; refdiff train and
# bench): measured on ring8 in docs/learned.md. float32 halves the step time; p_uncond = 0.3
# trains the unconditional branch, which classifier guidance runs on, to ~1.5% excess in these
# 4000 steps (9% at p_uncond = 0.1). The classifier is half as wide as the denoiser: its excess
# cross-entropy stays near 0.0015 nats, and classifier guidance costs 1.7 unguided predictions
# instead of 3 (docs/learned.md, "Speed").
DENOISER_2D = {"steps": 4000, "batch": 1024, "lr": 5e-3, "p_uncond": 0.3, "dtype": "float32"}
CLASSIFIER_2D = {"steps": 1000, "batch": 1024, "lr": 2e-3, "hidden": 64, "dtype": "float32"}
# The demo's budget (refdiff demo, within a minute in all): half the batch and steps of the 2D
# default, measured against it in docs/learned.md.
DENOISER_DEMO = {"steps": 2000, "batch": 512, "lr": 5e-3, "p_uncond": 0.3, "dtype": "float32"}
CLASSIFIER_DEMO = {"steps": 500, "batch": 512, "lr": 2e-3, "hidden": 64, "dtype": "float32"}
# The tiny-image budget (refdiff bench --images): the residual network (L2r), which the 64-pixel
# images need (a plain MLP of the same width reached half the judged accuracy; docs/learned.md).
DENOISER_IMAGES = {"steps": 30000, "batch": 256, "lr": 2e-3, "p_uncond": 0.2, "hidden": 256, "depth": 3,
                   "arch": "resnet", "dtype": "float32"}
CLASSIFIER_IMAGES = {"steps": 1000, "batch": 256, "lr": 2e-3, "hidden": 128, "dtype": "float32"}
# A small tiny-image budget (under a minute together; tests/test_guidance_learned.py): unguided
# samples are judged right only about 2/3 of the time, CFG at w = 3 about 98% (docs/guidance.md).
DENOISER_IMAGES_SMALL = {"steps": 2000, "batch": 256, "lr": 5e-3, "p_uncond": 0.3, "hidden": 192, "depth": 2,
                         "arch": "resnet", "dtype": "float32", "ema": 0.99}
CLASSIFIER_IMAGES_SMALL = {"steps": 1000, "batch": 256, "lr": 5e-3, "hidden": 256, "depth": 3, "dtype": "float32"}


def budget(default, steps):
    """A training budget (one of the dicts above) with its step count replaced when ``steps`` is given."""
    if steps is not None:
        as_count(steps, "steps")
    return {**default, "steps": steps or default["steps"]}


WEIGHTINGS = (None, "min_snr")


def denoising_loss(params, config, xt, t, y_index, target, weight=None):
    """The denoising loss (eq. (L5)): the mean over batch and coordinates of (target -
    f_theta(x_t, t, y))^2, each row times ``weight`` if given (eq. (L5w)); the network predicts
    ``config.prediction`` and ``target`` is its value (process.target_of). For eps this is the
    simple loss of Ho et al. (2020, eq. 14). y_index holds K for the dropped (null) labels."""
    residual = denoiser_forward(params, config, xt, t, y_index) - target
    squared = residual * residual
    return mean(squared if weight is None else weight * squared)


def loss_weights(sched, t, prediction, gamma):
    """Per-row min-SNR-gamma weights (Hang et al. 2023, eq. 10 and Sec. 3.4) for a network predicting
    ``prediction`` (eq. (L5w)): min(SNR, gamma) / (SNR k), SNR = a / (1 - a), where k is the factor by
    which that target's squared error exceeds the eps error it implies (docs/process.md, (C8)):
    min(SNR, gamma) / SNR (eps), min(SNR, gamma) (x0), min(SNR, gamma) / (SNR + 1) (v),
    (1 - a) min(SNR, gamma) / SNR (score). Every target's weighted loss is then min(SNR, gamma)
    times the x0 loss it implies. Written with min(1, gamma / SNR), finite where a = 0 (zero
    terminal SNR). Float64 column (N, 1)."""
    a = alpha_bar_of(sched, np.asarray(t))[:, None]
    snr = a / (1 - a)
    with np.errstate(divide="ignore"):
        ratio = np.minimum(1.0, gamma * (1 - a) / a)  # min(SNR, gamma) / SNR, 1 at SNR = 0
    return {"eps": ratio, "x0": np.minimum(snr, gamma), "v": np.minimum(snr, gamma) / (snr + 1),
            "score": ratio * (1 - a)}[prediction]


def classifier_loss(params, config, xt, t, y):
    """Mean cross-entropy -log p_phi(y | x_t) of a classifier on noised inputs (eq. (L6))."""
    return -mean(log_softmax(classifier_forward(params, config, xt, t))[np.arange(len(y)), y])


def train_denoiser(x0, y, sched, rng, steps=DENOISER_2D["steps"], batch=DENOISER_2D["batch"],
                   lr=DENOISER_2D["lr"], p_uncond=DENOISER_2D["p_uncond"], num_labels=None, hidden=128, depth=3,
                   arch="mlp", dtype=DENOISER_2D["dtype"], ema=0.999, clip=1.0, verbose=True, on_step=None,
                   prediction="eps", weighting=None, min_snr_gamma=5.0):
    """Train f_theta(x_t, t, y) on data (x0, y) with labels dropped to null with prob. p_uncond.

    Each step draws a minibatch of the data, t ~ U{1..T}, eps ~ N(0, I), forms x_t by (P1) and
    takes an Adam step on (L5); the label of each row is replaced by the null label with
    probability p_uncond (Ho & Salimans 2022, Algorithm 1), so one network learns both
    eps(x, t, y) and eps(x, t) = eps(x, t, null). The defaults are the measured 2D budget, DENOISER_2D.
    The network predicts ``prediction`` (eps, x0, v or score; eq. (L3p)) on its own squared error,
    unweighted or with ``weighting="min_snr"`` (``loss_weights``, gamma = min_snr_gamma).

    Parameters
    ----------
    x0 : array (N, D); y : int array (N,) in 0..K-1, or None for an unconditional model; num_labels : K,
        default y.max() + 1; sched : Schedule; rng : numpy.random.Generator (the only randomness)
    hidden, depth, arch : the network (nn.MLPConfig; "resnet" suits tiny images)
    verbose : print one progress line to stderr; on_step : optional callable(step, loss) after each step

    Returns
    -------
    Denoiser with the EMA weights; ``.history`` holds the training loss per step.
    """
    x0, y, K = _data(x0, y, num_labels, conditional=True)
    config = MLPConfig("denoiser", x0.shape[1], K, hidden, depth, dtype=dtype, arch=arch, prediction=prediction)
    make_batch = _denoiser_batches(x0, y, sched, rng, config, as_count(batch, "batch", low=1),
                                   as_real(p_uncond, "p_uncond", low=0, high=1), weighting, min_snr_gamma)
    params, history = fit(lambda p, *b: denoising_loss(p, config, *b), init_params(config, rng),
                          make_batch, steps, lr, ema, clip, Progress("denoiser", steps, verbose), on_step)
    model = Denoiser(params, config, sched)
    model.history = history
    return model


def _denoiser_batches(x0, y, sched, rng, config, batch, p_uncond, weighting, gamma):
    """make_batch() for ``train_denoiser``: x_t, t, the label rows (null with prob. p_uncond), the
    target of config.prediction (process.target_of) and the loss weights (None, or ``loss_weights``)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    gamma, cast, prediction = as_real(gamma, "min_snr_gamma", above=0), DTYPES[config.dtype], config.prediction

    def make_batch():
        idx, xt, t, eps = noised_batch(x0, sched, rng, batch, cast)
        if y is None:
            y_index = np.full(batch, config.num_labels)
        else:
            y_index = np.where(rng.random(batch) < p_uncond, config.num_labels, y[idx])
        target = eps if prediction == "eps" else target_of(sched, x0[idx].astype(cast), t, eps, prediction)
        weight = None if weighting is None else loss_weights(sched, t, prediction, gamma).astype(cast)
        return xt, t, y_index, target, weight
    return make_batch


def train_classifier(x0, y, sched, rng, steps=CLASSIFIER_2D["steps"], batch=CLASSIFIER_2D["batch"],
                     lr=CLASSIFIER_2D["lr"], num_labels=None, hidden=CLASSIFIER_2D["hidden"], depth=3, arch="mlp",
                     dtype=CLASSIFIER_2D["dtype"], ema=0.999, clip=1.0, verbose=True, on_step=None):
    """Train a noisy classifier p_phi(y | x_t) on x_t = q_sample(x0, t, eps), t ~ U{1..T} (eq. (L6)).

    As guided-diffusion trains its noised classifier (Dhariwal & Nichol 2021, Sec. 4). Parameters
    as ``train_denoiser``, with the defaults of CLASSIFIER_2D; returns a Classifier with the EMA
    weights and ``.history``.
    """
    x0, y, K = _data(x0, y, num_labels, conditional=False)
    batch = as_count(batch, "batch", low=1)
    config = MLPConfig("classifier", x0.shape[1], K, hidden, depth, dtype=dtype, arch=arch)
    cast = DTYPES[dtype]

    def make_batch():
        idx, xt, t, _ = noised_batch(x0, sched, rng, batch, cast)
        return xt, t, y[idx]

    params, history = fit(lambda p, *b: classifier_loss(p, config, *b), init_params(config, rng),
                          make_batch, steps, lr, ema, clip, Progress("classifier", steps, verbose), on_step)
    model = Classifier(params, config, sched)
    model.history = history
    return model


def noised_batch(x0, sched, rng, batch, cast):
    """A minibatch: data rows idx, t ~ U{1..T}, eps ~ N(0, I) and x_t by (P1), in dtype ``cast``."""
    idx, t = rng.integers(0, len(x0), batch), rng.integers(1, sched.T + 1, batch)
    eps = rng.standard_normal((batch, x0.shape[1]))
    return idx, q_sample(sched, x0[idx], t, eps).astype(cast), t, eps.astype(cast)


def fit(loss, params, make_batch, steps, lr, ema, clip, progress=None, on_step=None):
    """Adam on loss(params, *make_batch()) with warm-up and cosine decay, clipping and an EMA (eq. (L7)).

    Each step k: the gradient clipped to global norm ``clip`` (``clip_by_global_norm``), an Adam
    step (``adam_update``) at the rate ``lr_at(k, steps, lr)``, and the EMA of the weights with
    decay ``ema_decay(k, ema)``. ``progress`` (a Progress) and ``on_step(step, loss)`` are told of
    every step. Returns (ema_params, losses).
    """
    steps = as_count(steps, "steps", low=1)
    lr, clip = as_real(lr, "lr", above=0), as_real(clip, "clip", above=0)
    ema = as_real(ema, "ema", low=0, below=1)
    loss_and_grad = value_and_grad(loss)
    params = {k: v.copy() for k, v in params.items()}  # updated in place (adam_update); the caller's stay
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v2 = {k: np.zeros_like(v) for k, v in params.items()}
    avg = {k: v.copy() for k, v in params.items()}
    losses = np.empty(steps)
    with progress or contextlib.nullcontext():
        for k in range(1, steps + 1):
            value, grads = loss_and_grad(params, *make_batch())
            rate, decay = lr_at(k, steps, lr), ema_decay(k, ema)
            for name, g in clip_by_global_norm(grads, clip).items():
                adam_update(params[name], g, m[name], v2[name], k, rate)
                avg[name] *= decay  # (L7) the EMA of the weights, decay avg + (1 - decay) params, in place
                avg[name] += (1 - decay) * params[name]
            losses[k - 1] = value
            if progress:
                progress.update(k, f"loss {value:.4f}")
            if on_step:
                on_step(k, value)
    return avg, losses


def lr_at(k, steps, lr):
    """The learning rate at step k of ``steps`` (eq. (L7)): lr min(1, k / W) (0.55 + 0.45 cos(pi k / steps)).

    A linear warm-up over the first W = max(1, steps // 50) steps (2%), then a half cosine from
    about lr down to lr / 10 at the last step.
    """
    return lr * min(1.0, k / max(1, steps // 50)) * (0.55 + 0.45 * math.cos(math.pi * k / steps))


def clip_by_global_norm(grads, clip):
    """Every gradient times min(1, clip / (||g|| + 1e-12)), ||g|| the norm of all of them together (eq. (L7)).

    A norm whose squares overflow float64 (entries beyond ~1e154) is taken of the gradients
    divided by their largest entry, then scaled back.
    """
    norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    if np.isinf(norm):
        big = max(float(np.max(np.abs(g))) for g in grads.values())
        norm = big * np.sqrt(sum(float(np.sum((g.astype(np.float64) / big) ** 2)) for g in grads.values()))
    scale = min(1.0, float(clip) / (float(norm) + 1e-12))  # a Python float keeps float32 gradients float32
    return {name: g * scale for name, g in grads.items()}


def adam_update(param, g, m, v, k, rate):
    """One Adam step at step k >= 1, Kingma & Ba (2015), Algorithm 1 (eq. (L7)): returns (param', m', v').

    m' = 0.9 m + 0.1 g, v' = 0.999 v + 0.001 g^2, and
    param' = param - rate (m' / (1 - 0.9^k)) / (sqrt(v' / (1 - 0.999^k)) + 1e-8).
    Computed in place: param, m and v are overwritten with param', m' and v', which keep their
    dtypes, and returned (0-d arrays too: a CLIP's logit scale); a few temporaries instead of about
    ten (docs/learned.md, "Speed").
    """
    m *= 0.9
    m += 0.1 * g
    v *= 0.999
    g2 = 0.001 * g
    g2 *= g
    v += g2
    step = m / (1 - 0.9 ** k)
    step *= rate
    root = np.sqrt(v / (1 - 0.999 ** k))
    root += 1e-8
    step /= root
    param -= step
    return param, m, v


def ema_decay(k, ema):
    """The EMA's decay at step k (eq. (L7)): min(ema, (1 + k) / (10 + k)), so early weights fade fast."""
    return min(ema, (1 + k) / (10 + k))


class Progress:
    """One progress line on stderr for a long stage: stage, step/total, rate, ETA (and a note, e.g. the loss).

    On a terminal the line is rewritten in place (\\r) at most every TTY_SECONDS and ends with a
    newline at ``close``; elsewhere (a log, a pipe) a plain line is written at most every
    PLAIN_SECONDS and a last one at ``close``. A stage shorter than that interval writes nothing.
    Used as ``with Progress(...) as p: ... p.update(step)``, or closed by hand.

    Parameters
    ----------
    label : what runs, after ``verb``: "denoiser" (the line says "train denoiser"), "ddim"
    total : int, the number of steps; enabled : False writes nothing (``refdiff -q``)
    verb : the stage's verb; unit : what a step is ("steps")
    stream : where to write (default sys.stderr); clock : callable() -> seconds (default time.perf_counter)
    """
    TTY_SECONDS, PLAIN_SECONDS = 0.25, 10.0

    def __init__(self, label, total, enabled=True, verb="train", unit="steps", stream=None, clock=None):
        self.stage, self.total, self.enabled, self.unit = f"{verb} {label}", total, enabled, unit
        self.out, self.clock = stream or sys.stderr, clock or time.perf_counter
        self.tty = self.out.isatty()
        self.interval = self.TTY_SECONDS if self.tty else self.PLAIN_SECONDS
        self.start = self.last = self.clock()
        self.step, self.note, self.width, self.written = 0, "", 0, False

    def update(self, step=None, note=""):
        """Step ``step`` (default: one more than the last) is done; ``note`` (str) is shown beside it."""
        self.step, self.note = self.step + 1 if step is None else step, note
        now = self.clock()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            self._write(self._line(now, done=False))

    def close(self):
        """End the line: the final state, if anything was written (a newline on a terminal)."""
        if self.enabled and self.written:
            self._write(self._line(self.clock(), done=True))
            if self.tty:
                self.out.write("\n")
            self.written = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _line(self, now, done):
        elapsed = max(now - self.start, 1e-9)
        rate = self.step / elapsed
        speed = f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"
        when = f"in {_duration(elapsed)}" if done else f"ETA {_duration((self.total - self.step) / max(rate, 1e-9))}"
        note = f"  {self.note}" if self.note else ""
        return f"{self.stage}: {self.step}/{self.total} {self.unit}{note}  {speed} {self.unit}/s  {when}"

    def _write(self, line):
        self.out.write("\r" + line.ljust(self.width) if self.tty else line + "\n")
        self.width = max(self.width, len(line))
        self.out.flush()
        self.written = True


def _duration(seconds):
    """Seconds for a progress line: '42s', '3m05s', '1h02m'."""
    s = int(round(seconds))
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def _data(x0, y, num_labels, conditional):
    """Validate training data; returns (x0 float64 (N, D), y int64 (N,) or None, K)."""
    x0 = as_points(x0, "x0").astype(np.float64)
    if len(x0) == 0:
        raise ValueError("x0 must hold at least one point")
    if y is None and not conditional:
        raise ValueError("y is required to train a classifier")
    if y is None:
        return x0, None, 0 if num_labels is None else as_count(num_labels, "num_labels")
    K = as_count(num_labels, "num_labels", low=1) if num_labels is not None else None
    y = as_labels(y, len(x0), K if K is not None else np.iinfo(np.int64).max, allow_null=False)
    return x0, y, K if K is not None else int(y.max()) + 1
