"""Guidance over a sweep of scales: samples and the fidelity-diversity table (docs/guidance.md).

Every method of the registry (refdiff.methods) is indexed by one strength: the CFG weight w, with
a classifier-scale method at s = 1 + w, which makes classifier guidance and CFG equal on exact
models (eq. (G5)). Every sample of a sweep starts from the same x_T, so the differences between
scales are the guidance's, not the draws'.
"""
import numpy as np

from toy_data import images

from . import methods as registry
from .arrays import as_count, check_rng
from .metrics import class_spread, energy_distance, fidelity
from .samplers import SAMPLERS


def guided_eps_fn(method, w, models, sched, y):
    """The eps_fn of the registered method ``method`` at the common strength w: its own strength is
    ``Method.value_at(w)``, w for CFG (G5) and s = 1 + w for classifier guidance (G3)."""
    chosen = registry.get(method)
    return chosen.eps_fn(models, sched, y, chosen.value_at(w))


def scale_sweep(models, sched, y, ws, x_T, measure, methods=None, sample=None):
    """Samples for every method and strength, and their measures.

    Parameters
    ----------
    models : mapping of model names to models, e.g. {"denoiser": eps_model, "classifier": logits_model}
        (refdiff.methods names what each method reads)
    y : int array (N,), the requested labels; ws : iterable of CFG weights w
    x_T : array (N, D), the common starting noise
    measure : callable (x, y) -> dict of floats, e.g. ``mixture_measures(...)``
    methods : names of registered methods; default every one that ``models`` can run
    sample : callable (eps_fn, x_T) -> x, or the name of a sampler of ``samplers.SAMPLERS`` (at its
        default steps; a stochastic one draws from ``numpy.random.default_rng(0)`` anew at every
        call); default "ddim", DDIM with 50 steps (eta = 0). A stochastic callable should draw its
        noise from a fresh generator with one seed per call, so that every run sees the same noise too.

    Returns
    -------
    rows : list of dicts {"method", "w", "scale", **measure(x, y)}, methods outer, w inner;
        scale is 1 + w for every method (the classifier scale, and diffusers' guidance_scale)
    samples : dict {(method, w): array (N, D)}
    """
    if methods is None:
        methods = registry.available(name for name, model in models.items() if model is not None)
    if sample is None or isinstance(sample, str):
        sample = _named_sample("ddim" if sample is None else sample, sched)
    rows, samples = [], {}
    for method in methods:
        for w in ws:
            x = sample(guided_eps_fn(method, w, models, sched, y), x_T)
            samples[method, w] = x
            rows.append({"method": method, "w": float(w), "scale": 1.0 + float(w), **measure(x, y)})
    return rows, samples


def _named_sample(name, sched):
    """The sampler ``name`` of samplers.SAMPLERS as a callable (eps_fn, x_T) -> x at its default steps,
    with a fresh generator of seed 0 at every call; ValueError names ``sample`` for an unknown name."""
    if name not in SAMPLERS:
        raise ValueError(f"sample must be a callable or one of {tuple(SAMPLERS)}, got {name!r}")
    run = SAMPLERS[name][1]
    return lambda eps_fn, x: run(eps_fn, sched, x, None, np.random.default_rng(0), None)


def mixture_measures(mixture, rng):
    """Measures of samples of a Gaussian-mixture preset: the fidelity (M7) with its standard error,
    the mean over classes of the spread (M8), and the mean over classes of the energy distance
    (M1) from each class's samples to as many fresh draws of p(x | y)."""
    check_rng(rng)

    def measure(x, y):
        mean, stderr = fidelity(mixture, x, y)
        energy = [energy_distance(x[y == k], mixture.sample(int(np.sum(y == k)), rng, y=k)[0])
                  for k in np.unique(y)]
        return {"fidelity": mean, "fidelity_se": stderr,
                "spread": float(np.nanmean(class_spread(x, y, mixture.num_labels))),
                "energy": float(np.mean(energy))}
    return measure


def data_measures(x_data, y_data, num_labels):
    """Measures of samples of a data set without a closed form: the mean over classes of the
    spread (M8), and of the energy distance (M1) from each class's samples to that class's data
    points (x_data, y_data)."""
    as_count(num_labels, "num_labels", low=1)

    def measure(x, y):
        energy = [energy_distance(x[y == k], x_data[y_data == k]) for k in np.unique(y)]
        return {"spread": float(np.nanmean(class_spread(x, y, num_labels))), "energy": float(np.mean(energy))}
    return measure


def image_measures(x, y):
    """Measures of tiny-image samples: how often the rule-based judge finds the requested class
    (with its binomial standard error), how often it finds none, the mean spread (M8) of the
    samples clipped to the pixel range [-1, 1] as they would be displayed, and the 99th percentile
    of |pixel|, which shows strong guidance pushing pixels beyond that range."""
    judged = images.judge(x)
    hit = float(np.mean(judged == y))
    return {"judged": hit, "judged_se": float(np.sqrt(hit * (1 - hit) / len(y))),
            "no_match": float(np.mean(judged == images.NO_MATCH)),
            "spread": float(np.nanmean(class_spread(np.clip(x, -1, 1), y, images.NUM_CLASSES))),
            "pixel_p99": float(np.percentile(np.abs(x), 99))}


def format_table(rows):
    """The rows of ``scale_sweep`` as a fixed-width text table, one line per row."""
    keys = [k for k in rows[0] if k not in ("method", "w", "scale")]
    lines = [f"{'method':10s} {'w':>5s} {'s=1+w':>6s} " + " ".join(f"{k:>11s}" for k in keys)]
    for r in rows:
        lines.append(f"{r['method']:10s} {r['w']:5.2f} {r['scale']:6.2f} " + " ".join(f"{r[k]:11.4f}" for k in keys))
    return "\n".join(lines)
