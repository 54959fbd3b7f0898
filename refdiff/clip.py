"""A toy CLIP: image and caption encoders trained with the symmetric InfoNCE loss (docs/clip.md).

Radford et al. (2021) at toy size. The image encoder is the noisy classifier's network (eq. (L4))
with `embed` outputs; the text encoder is an embedding bag (the mean of the caption's word
embeddings) followed by an MLP. Both outputs are normalised to unit length, and a learned
temperature scales their cosine into a logit (CL1). The noise-aware variant (GLIDE, Nichol et al.
2022, Sec. 2.4) sees x_t and t, as a noisy classifier does; the clean one always sees t = 0.

A caption is a string of vocabulary phrases (``labels.tokenize``), e.g. "thick vertical bar" for
the tiny images (``toy_data.captions.VOCAB``: the class names, thin/thick, left/right,
top/bottom) or "label 2" for 2D data (``label_vocab(K)``). Training captions are random parts of
each image's full description, so short captions ("vertical bar") and combined ones ("thick
vertical bar") both mean something.
"""
import math
from dataclasses import dataclass

import autograd.numpy as anp
import numpy as np
from autograd.extend import defvjp, primitive
from autograd.tracer import getval, isbox
from scipy.special import logsumexp

from .arrays import DTYPES, as_count, as_points, as_real, as_times, check_rng
from .labels import tokenize
from .nn import MLPConfig, classifier_forward, init_from_shapes, mean, mlp, mlp_shapes, param_shapes, subnet
from .npz import all_fields, config_from, fields_of, only_meta_fields, read_schedule
from .train import Progress, noised_batch, fit

MAX_LOGIT_SCALE = math.log(100.0)  # Radford et al. (2021), Sec. 2.5: exp(logit_scale) is clipped at 100
INIT_LOGIT_SCALE = math.log(1 / 0.07)  # ... and starts at 1 / 0.07
# Tiny-image budgets (refdiff demo --data images; docs/clip.md): each reaches zero-shot accuracy
# 1.0 on clean images in 1000 steps (about 12 s noise-aware and 6 s clean, one BLAS thread). The
# noise-aware image encoder is the noisy classifier's network (train.CLASSIFIER_IMAGES_SMALL, a
# 3 x 256 MLP), so CLIP and classifier guidance share a network and differ in objective and
# output (a unit-length embedding against K logits). The residual network (L2r) of the same width
# took twice as long to train and to guide with, and its CLIP guidance was judged no more
# accurate (docs/clip.md, "Measured").
CLIP_NOISE_AWARE_IMAGES = {"steps": 1000, "batch": 256, "lr": 5e-3, "hidden": 256, "depth": 3, "arch": "mlp"}
CLIP_CLEAN_IMAGES = {"steps": 1000, "batch": 256, "lr": 2e-3, "hidden": 128, "depth": 2, "arch": "mlp"}


def label_vocab(num_labels):
    """The vocabulary of labelled 2D data: "label 0", ..., "label K-1"."""
    as_count(num_labels, "num_labels")
    return tuple(f"label {k}" for k in range(num_labels))


def bags(captions, vocab):
    """The embedding-bag input of each caption: float64 (M, V), row m = mean of the one-hots of its tokens."""
    if isinstance(captions, str):
        captions = [captions]
    out = np.zeros((len(captions), len(vocab)))
    for m, caption in enumerate(captions):
        np.add.at(out[m], tokenize(caption, vocab), 1.0)
    return out / np.maximum(out.sum(axis=1, keepdims=True), 1.0)


def partial_bags(words, rng, p_keep):
    """Random training captions as bags (N, V): one of each row's words chosen uniformly, plus each
    of its other words with probability p_keep; then divided by the count (``bags``)."""
    as_real(p_keep, "p_keep", low=0, high=1)
    words = np.asarray(words, dtype=bool)
    if not words.any(axis=1).all():
        raise ValueError("words must give every image at least one word")
    first = np.argmax(rng.random(words.shape) * words, axis=1)  # a uniform choice among the row's words
    kept = words & (rng.random(words.shape) < p_keep)
    kept[np.arange(len(words)), first] = True
    return kept / kept.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ClipConfig:
    """A toy CLIP's shape: image dimension, vocabulary, embedding size and the two encoders.

    dim: D of the images; vocab: the phrases captions are made of (``labels.tokenize``); embed: E,
    the size of both encoders' unit-length features; hidden, depth, t_embed, arch: the image
    encoder, the noisy classifier's network (eq. (L4), ``image``); text_hidden, text_depth: the
    text encoder's MLP after the embedding bag; dtype: every parameter's.
    """
    dim: int
    vocab: tuple
    embed: int = 32
    hidden: int = 256
    depth: int = 3
    text_hidden: int = 64
    text_depth: int = 1
    t_embed: int = 32
    arch: str = "mlp"
    dtype: str = "float64"

    @property
    def image(self):
        """The image encoder's network: a noisy classifier with ``embed`` outputs (eq. (L4))."""
        return MLPConfig("classifier", self.dim, self.embed, self.hidden, self.depth, self.t_embed, self.dtype, self.arch)

    def __post_init__(self):
        if not (isinstance(self.vocab, tuple) and self.vocab and all(isinstance(w, str) and w.split() for w in self.vocab)):
            raise ValueError(f"vocab must be a non-empty tuple of non-blank strings, got {self.vocab!r}")
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError(f"vocab must not repeat a phrase, got {self.vocab!r}")
        for name in ("embed", "text_hidden", "text_depth"):  # embed before MLPConfig, which would call it num_labels
            object.__setattr__(self, name, as_count(getattr(self, name), name, low=1))
        self.image  # MLPConfig checks the rest


def clip_shapes(config):
    """The name and shape of every parameter: "image/..." (``nn.param_shapes`` of ``config.image``),
    "text/..." (the plain MLP (L2) from the vocabulary to ``embed``) and "logit_scale", 0-d."""
    shapes = {"image/" + k: v for k, v in param_shapes(config.image).items()}
    shapes.update(mlp_shapes(len(config.vocab), config.text_hidden, config.text_depth, config.embed, "text/"))
    shapes["logit_scale"] = ()
    return shapes


def init_clip(config, rng):
    """Parameters of the shapes ``clip_shapes(config)``; "logit_scale" starts at log(1 / 0.07).

    As ``nn.init_from_shapes``, except that both output layers are random too: a zero output
    layer would make every feature 0, where normalising has no direction to follow.
    """
    check_rng(rng)
    shapes = clip_shapes(config)
    params = init_from_shapes(shapes, config.dtype, rng)
    for name in ("image/W_out", "text/W_out"):
        fan_in = shapes[name][0]
        params[name] = (rng.standard_normal(shapes[name]) / math.sqrt(fan_in)).astype(DTYPES[config.dtype])
    params["logit_scale"] = np.array(INIT_LOGIT_SCALE, dtype=DTYPES[config.dtype])
    return params


def _unit(h):
    """Rows scaled to unit length (a zero row stays 0)."""
    return h / anp.sqrt(anp.sum(h * h, axis=1, keepdims=True) + 1e-30)


def image_features(params, config, x, t):
    """f(x_t, t): the image encoder's output, unit length; x (N, D), t an int or real array (N,) -> (N, E)."""
    return _unit(classifier_forward(subnet(params, "image/"), config.image, x, t))


def text_features(params, config, bag):
    """g(c): embedding bag (bag @ W0, the mean of the words' rows) then the MLP, unit length; (M, E)."""
    return _unit(mlp(subnet(params, "text/"), bag.astype(DTYPES[config.dtype]), None, config.text_depth))


def logit_scale(params):
    """log of the inverse temperature, clipped at log 100 (Radford et al. 2021, Sec. 2.5).

    Its derivative is 1 below log 100 and 0 from log 100 up, in the parameter's dtype (autograd's
    derivative of np.minimum is float64 whatever its inputs, and 1/2 at the tie).
    """
    return anp.clip(params["logit_scale"], -np.inf, MAX_LOGIT_SCALE)


def info_nce(logits):
    """The symmetric InfoNCE loss of an (N, N) logit matrix whose diagonal holds the pairs (CL2).

    L = (1 / 2N) sum_n [logsumexp_m S_nm - S_nn] + (1 / 2N) sum_m [logsumexp_n S_nm - S_mm]:
    cross-entropy of each image against the N captions and of each caption against the N images
    (Radford et al. 2021, Fig. 3). One autograd primitive, differentiated by ``info_nce_backward``.
    """
    plain = getval(logits)
    return info_nce_output(logits, rows=logsumexp(plain, axis=1), columns=logsumexp(plain, axis=0))


@primitive
def info_nce_output(logits, rows, columns):
    """(CL2) from the logits and their log-sum-exps along rows (axis 1) and columns (axis 0)."""
    diag = np.diagonal(logits)
    return 0.5 * (mean(rows - diag) + mean(columns - diag))


def info_nce_backward(g, logits, rows, columns):
    """g dL/dS of (CL2): g ((P_row - I) / 2N + (P_col - I) / 2N), P = exp(S - logsumexp) along rows
    and along columns. The terms are formed and added in the order autograd's chain through the
    formula of (CL2) takes, the columns' and the diagonal's first, so the gradient is the same bit
    for bit (docs/learned.md, "Speed"). First derivatives only."""
    if isbox(g) or isbox(logits):  # an outer autograd trace wants derivatives of this VJP
        raise NotImplementedError("info_nce has no second derivatives (its VJP is plain NumPy)")
    c = 0.5 * g / logits.shape[0]
    grad = c * np.exp(logits - columns[None, :])
    grad[np.diag_indices_from(grad)] -= 2 * c
    grad += c * np.exp(logits - rows[:, None])
    return grad


defvjp(info_nce_output, lambda ans, logits, rows, columns: lambda g: info_nce_backward(g, logits, rows, columns))


def clip_loss(params, config, x, t, bag):
    """(CL2) on S = exp(logit_scale) f(x_t, t) g(c)^T (CL1), for a batch of N pairs."""
    scores = image_features(params, config, x, t) @ text_features(params, config, bag).T
    return info_nce(anp.exp(logit_scale(params)) * scores)


def clip_entries(model):
    """A Clip's own checkpoint entries (refdiff/checkpoint.py): the fields of 'meta' (its ClipConfig,
    whether it is noise-aware) and 'schedule_betas' for a noise-aware one."""
    meta = {"config": fields_of(model.config, ClipConfig), "noise_aware": model.sched is not None}
    return meta, {} if model.sched is None else {"schedule_betas": model.sched.betas}


def clip_from_entries(meta, arrays):
    """A Clip's ClipConfig, Schedule (None if clean) and parameter shapes from checkpoint entries,
    strictly: 'meta' holds noise_aware and every ClipConfig field, and 'schedule_betas' is there
    exactly when noise_aware is true. Pops 'schedule_betas' from ``arrays``."""
    only_meta_fields(meta, {"noise_aware"})
    noise_aware = meta.get("noise_aware")
    if type(noise_aware) is not bool:
        raise ValueError(f"'meta' noise_aware must be true or false, got {noise_aware!r}")
    fields = all_fields(meta, ClipConfig)
    if not isinstance(fields["vocab"], list):
        raise ValueError(f"bad config (vocab must be a JSON list of strings, got {fields['vocab']!r})")
    config = config_from(ClipConfig, {**fields, "vocab": tuple(fields["vocab"])})
    betas = arrays.pop("schedule_betas", None)
    if noise_aware != (betas is not None):
        raise ValueError("a noise-aware CLIP needs a 'schedule_betas' entry" if noise_aware else
                         "a clean CLIP ('meta' noise_aware false) must have no 'schedule_betas' entry")
    return config, read_schedule(betas) if noise_aware else None, clip_shapes(config)


class Clip:
    """A trained toy CLIP: parameters, config, and the Schedule if noise-aware (None if clean).

    A noise-aware model's image encoder takes t in 1..sched.T; a clean one's always sees t = 0.
    """

    def __init__(self, params, config, sched=None):
        self.params, self.config, self.sched = params, config, sched

    @property
    def noise_aware(self):
        return self.sched is not None

    @property
    def temperature(self):
        """tau = 1 / exp(logit_scale), the softmax temperature of (CL1)."""
        return float(np.exp(-logit_scale(self.params)))

    def image_features(self, x, t=None):
        """f(x_t, t), unit rows (N, E); t is required (in 1..T) for a noise-aware model, refused for a clean one."""
        x = as_points(x, "x", dim=self.config.dim)
        if self.noise_aware == (t is None):
            raise ValueError("t must be given for a noise-aware CLIP and omitted for a clean one, "
                             f"got t = {t!r} for a {'noise-aware' if self.noise_aware else 'clean'} model")
        t = as_times(t, x.shape[0], self.sched.T) if self.noise_aware else np.zeros(x.shape[0], np.int64)
        return image_features(self.params, self.config, x.astype(DTYPES[self.config.dtype]), t)

    def text_features(self, captions):
        """g(c), unit rows (M, E), for a caption or a list of M captions."""
        return text_features(self.params, self.config, bags(captions, self.config.vocab))

    def logits(self, x, captions, t=None):
        """exp(logit_scale) f(x_t, t) g(c_m)^T for every image and caption: (N, M), eq. (CL1)."""
        return anp.exp(logit_scale(self.params)) * (self.image_features(x, t) @ self.text_features(captions).T)

    def score_fn(self, captions):
        """The guidance score of image n with caption n, eq. (CL3): a callable (x, t) -> (N,) for a
        noise-aware model, x -> (N,) for a clean one, differentiable in x by autograd.

        ``captions`` is one caption for every row, or a list with one per row.
        """
        text = self.text_features(captions)  # (1 or N, E), computed once

        def score(x, t=None):
            f = self.image_features(x, t)
            if len(text) not in (1, f.shape[0]):
                raise ValueError(f"captions must be one caption or one per row ({f.shape[0]}), got {len(text)}")
            return anp.exp(logit_scale(self.params)) * anp.sum(f * text, axis=1)
        fn = score if self.noise_aware else (lambda x: score(x))
        fn.sched, fn.noise_aware = self.sched, self.noise_aware  # for the guidance rules' checks
        return fn


def train_clip(x, words, vocab, rng, sched=None, steps=2000, batch=256, lr=2e-3, p_keep=0.5, embed=32, hidden=256,
               depth=3, arch="mlp", dtype="float32", ema=0.99, clip=1.0, verbose=True, on_step=None):
    """Train a toy CLIP on images x (N, D) described by ``words`` (bool (N, V) over ``vocab``).

    Each step draws a minibatch, a random caption for each image (``partial_bags``) and, if
    ``sched`` is given (noise-aware), t ~ U{1..T} and x_t by (P1); then an Adam step on (CL2).

    Returns
    -------
    Clip with the EMA weights and ``.history``, the loss per step. Chance level of (CL2) is log(batch).
    """
    x = as_points(x, "x").astype(np.float64)
    if len(x) == 0:
        raise ValueError("x must hold at least one image")
    words = np.asarray(words)
    if words.dtype != bool or words.shape != (len(x), len(vocab)):
        raise ValueError(f"words must be a bool array of shape ({len(x)}, {len(vocab)}), got {words.dtype} {words.shape}")
    partial_bags(words[:1], np.random.default_rng(0), p_keep)  # checks p_keep before any training
    as_count(batch, "batch", low=1)
    config = ClipConfig(x.shape[1], tuple(vocab), embed, hidden, depth, arch=arch, dtype=dtype)
    cast = DTYPES[dtype]

    def make_batch():
        if sched is None:
            idx = rng.integers(0, len(x), batch)
            xt, t = x[idx].astype(cast), np.zeros(batch, np.int64)
        else:
            idx, xt, t, _ = noised_batch(x, sched, rng, batch, cast)
        return xt, t, partial_bags(words[idx], rng, p_keep).astype(cast)

    params, history = fit(lambda p, *b: clip_loss(p, config, *b), init_clip(config, rng), make_batch, steps, lr,
                          ema, clip, Progress("clip", steps, verbose), on_step)
    model = Clip(params, config, sched)
    model.history = history
    return model


def zero_shot(model, x, captions, t=None):
    """The index of the best caption for each image, argmax_m of (CL1): int64 (N,)."""
    return np.argmax(model.logits(x, captions, t), axis=1)


def zero_shot_accuracy(model, x, words, groups, t=None):
    """Zero-shot accuracy for each word group: how often the best of the group's words is the image's own.

    ``groups`` maps a group's name to its words, e.g. ``toy_data.captions.GROUPS``. Only images with a word of the group count (a horizontally centred image has neither "left"
    nor "right"). Returns {group: (accuracy, number of images counted)}, the accuracy None when
    no image counts.
    """
    vocab = model.config.vocab
    out = {}
    for group, group_words in groups.items():
        columns = [vocab.index(w) for w in group_words]
        own = np.asarray(words)[:, columns]  # (N, G)
        has = own.any(axis=1)
        if not has.any():
            out[group] = (None, 0)
            continue
        pick = zero_shot(model, x[has], list(group_words), t if t is None or np.ndim(t) == 0 else t[has])
        out[group] = (float(np.mean(own[has][np.arange(has.sum()), pick])), int(has.sum()))
    return out


def retrieval_accuracy(model, x, words, t=None):
    """Top-1 retrieval between N images and their N full captions (every word each image has).

    Image to text: the caption with the largest logit (CL1) among the N; text to image: the image
    with the largest logit for each caption. A pick counts as right when its caption has the same
    words as the true one (two images may share a full caption). Chance is about the frequency
    of the commonest full caption.

    Returns {"image_to_text": fraction, "text_to_image": fraction}.
    """
    words = np.asarray(words, dtype=bool)
    if words.ndim != 2 or len(words) != len(x) or not words.any(axis=1).all():
        raise ValueError(f"words must be a bool array with a row of at least one word per image, got shape {words.shape}")
    bag = words / words.sum(axis=1, keepdims=True)
    text = text_features(model.params, model.config, bag)  # (N, E)
    logits = np.exp(logit_scale(model.params)) * (model.image_features(x, t) @ text.T)  # (N, N)
    same = (words[:, None, :] == words[None, :, :]).all(axis=2)  # (N, N): identical full captions
    n = np.arange(len(words))
    return {"image_to_text": float(same[n, np.argmax(logits, axis=1)].mean()),
            "text_to_image": float(same[np.argmax(logits, axis=0), n].mean())}
