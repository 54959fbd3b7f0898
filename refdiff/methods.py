"""The guidance methods by name: one table that the CLI, the sweeps, the demos and the plots read.

A method turns the models a caller has into a guided ``eps_fn(x, t)`` at a strength given in its
own convention (docs/architecture.md, "Scales"): the CFG weight w (``parameter = "w"``) or the
classifier scale s (``parameter = "s"``). Sweeps index every method by one strength, the CFG
weight w, and give an "s" method the scale s = 1 + w, at which classifier guidance of the
unconditional model equals CFG on exact models (eq. (G5)).

``models`` is a mapping from names to what the caller has; a method names the entries it reads:
"denoiser" (``eps_model(x, t, y=None)``), "classifier" (``logits_model(x, t)``), "clip" (a
noise-aware ``clip.Clip``), "captions" (one caption per label, for "clip"),
"latent_denoiser" (a denoiser on an autoencoder's latents, whose samples the caller decodes),
"negative" (the negative label, an int or one per row, for "negative" and "perp_neg") and
"weak_denoiser" (autoguidance's weaker denoiser of the same labels, e.g. the oracle of
``GaussianMixture.blurred``).

To add a rule: write it in guidance.py, then ``register(Method(...))`` it here; it appears in
``refdiff sample --guidance``, the sweeps and the figures (docs/architecture.md, "How to add a
guidance rule").
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .arrays import as_real
from .guidance import (apg_guidance, autoguidance, cfg_zero_star, classifier_free_guidance, classifier_guidance,
                       clip_guidance, negative_prompt_guidance, perp_neg_guidance)

PARAMETERS = ("w", "s")  # the CFG weight w; the classifier scale s


@dataclass(frozen=True)
class Method:
    """A guidance method: its name, what it reads, its scale convention and how it is built.

    name : the key ("cfg"); label : the display name ("CFG"); parameter : "w" or "s";
    needs : the names of the ``models`` entries it reads;
    build : callable (models, sched, y, value) -> eps_fn, value the strength in its convention.
    """
    name: str
    label: str
    parameter: str
    needs: tuple
    build: Callable

    def __post_init__(self):
        if self.parameter not in PARAMETERS:
            raise ValueError(f"parameter must be one of {PARAMETERS}, got {self.parameter!r}")

    def value_at(self, w):
        """The method's own strength at the common strength w: w, or s = 1 + w (eq. (G5))."""
        w = as_real(w, "w")
        return w if self.parameter == "w" else 1.0 + w

    def title(self, sep=" "):
        """The display name in a sweep over w: "CFG" (its strength is w itself), or with the
        conversion for an "s" method, "classifier guidance (s = 1 + w)"; ``sep`` precedes the bracket."""
        return self.label if self.parameter == "w" else f"{self.label}{sep}(s = 1 + w)"

    def eps_fn(self, models, sched, y, value):
        """The guided eps_fn at strength ``value`` (in the method's convention) for the labels y."""
        as_real(value, self.parameter)  # named in the method's convention: "w must be ...", "s must be ..."
        missing = [name for name in self.needs if models.get(name) is None]
        if missing:
            raise ValueError(f"method {self.name!r} needs the models {list(self.needs)}, missing {missing}")
        return self.build(models, sched, y, value)


METHODS = {}  # name -> Method, in registration order: the order of the sweeps' rows


def register(method):
    """Add a Method to METHODS; a name already taken raises ValueError. Returns the method."""
    if not isinstance(method, Method):
        raise ValueError(f"method must be a Method, got {type(method).__name__}")
    if method.name in METHODS:
        raise ValueError(f"a guidance method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get(name):
    """The registered Method called ``name``; ValueError lists the names."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {name!r}")
    return METHODS[name]


def available(model_names):
    """The names of the registered methods that need only models among ``model_names``, in order."""
    have = set(model_names)
    return tuple(name for name, method in METHODS.items() if set(method.needs) <= have)


def _clip_of_labels(models, sched, y, s):
    """(G13) toward the caption of each requested label, models["captions"][y]."""
    captions = [models["captions"][k] for k in np.atleast_1d(y)]
    return clip_guidance(models["denoiser"], models["clip"].score_fn(captions), sched, s)


register(Method("classifier", "classifier guidance", "s", ("denoiser", "classifier"),
                lambda m, sched, y, s: classifier_guidance(m["denoiser"], m["classifier"], sched, y, s)))  # (G3)
register(Method("cfg", "CFG", "w", ("denoiser",),
                lambda m, sched, y, w: classifier_free_guidance(m["denoiser"], y, w)))  # (G5)
register(Method("clip", "CLIP guidance, class name", "s", ("denoiser", "clip", "captions"), _clip_of_labels))
register(Method("latent_cfg", "latent CFG", "w", ("latent_denoiser",),
                lambda m, sched, y, w: classifier_free_guidance(m["latent_denoiser"], y, w)))  # (G5), (LD6)
register(Method("negative", "negative label", "w", ("denoiser", "negative"),
                lambda m, sched, y, w: negative_prompt_guidance(m["denoiser"], y, m["negative"], w)))  # (G15)
register(Method("perp_neg", "Perp-Neg", "w", ("denoiser", "negative"),
                lambda m, sched, y, w: perp_neg_guidance(m["denoiser"], y, m["negative"], w)))  # (G18), w_neg = w
register(Method("apg", "APG (x0, eta = 0)", "w", ("denoiser",),
                lambda m, sched, y, w: apg_guidance(m["denoiser"], sched, y, w)))  # (G16): no cap, no momentum
register(Method("cfg_zero_star", "CFG-Zero*", "w", ("denoiser",),
                lambda m, sched, y, w: cfg_zero_star(m["denoiser"], sched, y, w)))  # (G17), one zeroed step
register(Method("autoguidance", "autoguidance", "w", ("denoiser", "weak_denoiser"),
                lambda m, sched, y, w: autoguidance(m["denoiser"], m["weak_denoiser"], y, w)))  # (G19)
