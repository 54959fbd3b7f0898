"""``refdiff demo``: train a guided pair on 2D data, sweep both guidance methods, draw the figures.

Steps (each printed as it runs):
1. draw the data (a preset brings its oracle) and train the denoiser, with label dropout, and the
   noisy classifier on the demo budgets (train.DENOISER_DEMO, train.CLASSIFIER_DEMO);
2. sample every guidance method the two models can run (refdiff.methods: classifier guidance and
   CFG) over the strengths ``ws`` from one x_T with DDIM-50 (sweep.scale_sweep),
   n_per_label samples per label, and measure them: for a preset, the fidelity (M7), spread (M8)
   and energy distance to p(x | y); otherwise spread and energy distance to the data's classes;
3. write ``metrics.json``, ``samples.npz`` and the figures ``scale_sweep.png``, ``fields.png``,
   ``trajectories.png`` and (for a preset) ``fidelity_diversity.png`` to the output folder.
"""
import json
import os
import time

import numpy as np

from . import methods, plot
from .arrays import as_count
from .guidance import classifier_free_guidance
from .npz import save_npz_atomic
from .samplers import ddim
from .schedule import Schedule
from .sweep import data_measures, format_table, mixture_measures, scale_sweep
from .train import CLASSIFIER_DEMO, DENOISER_DEMO, train_classifier, train_denoiser

WS = (0.0, 0.5, 1.0, 3.0, 6.0)
FIELD_T = 200        # the level of the vector-field panels: noise std sqrt(1 - alpha_bar) ~ 0.6
FIELD_W = 3.0        # the strength of the guided panels and of the trajectories


def run(data, out_dir, rng, den_opts=DENOISER_DEMO, clf_opts=CLASSIFIER_DEMO, ws=WS, n_per_label=300,
        say=print):
    """Train, sweep, measure and draw; returns the metrics dict also written to metrics.json.

    Parameters
    ----------
    data : datasets.Data with 2D points
    out_dir : folder for the outputs (created if missing)
    rng : numpy.random.Generator; ws : strengths w (classifier guidance at s = 1 + w)
    say : callable(str) told of each step
    """
    as_count(n_per_label, "n_per_label", low=1)
    if data.x.shape[1] != 2:
        raise ValueError(f"--data must hold 2D points for the demo, got dimension {data.x.shape[1]}")
    os.makedirs(out_dir, exist_ok=True)
    sched, start = Schedule.linear(1000), time.perf_counter()
    say(f"training the denoiser ({den_opts['steps']} steps) and the noisy classifier ({clf_opts['steps']} steps) "
        f"on {len(data.x)} points of {data.name}")
    den = train_denoiser(data.x, data.y, sched, rng, num_labels=data.num_labels, verbose=False, **den_opts)
    clf = train_classifier(data.x, data.y, sched, rng, num_labels=data.num_labels, verbose=False, **clf_opts)
    train_seconds = time.perf_counter() - start
    y = np.arange(n_per_label * data.num_labels) % data.num_labels
    x_T = rng.standard_normal((len(y), 2))
    measure = (mixture_measures(data.mixture, rng) if data.mixture is not None
               else data_measures(data.x, data.y, data.num_labels))
    models = {"denoiser": den, "classifier": clf}
    say(f"sampling {len(y)} points for each of {len(methods.available(models))} methods x {len(ws)} strengths "
        "(DDIM-50)")
    rows, samples = scale_sweep(models, sched, y, ws, x_T, measure)
    metrics = {"data": data.name, "train_seconds": train_seconds, "n_per_label": n_per_label, "rows": rows}
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    save_npz_atomic(os.path.join(out_dir, "samples.npz"), y=y,
                    **{f"{method}_w{w:g}": x for (method, w), x in samples.items()})
    say("drawing the figures")
    _figures(out_dir, data, models, sched, samples, y, x_T, rows, ws)
    say(format_table(rows))
    say(f"wrote metrics.json, samples.npz and the figures to {out_dir} ({time.perf_counter() - start:.0f} s)")
    return metrics


def _figures(out_dir, data, models, sched, samples, y, x_T, rows, ws):
    """The demo's PNGs (matplotlib's Agg canvas, so no display is needed)."""
    from matplotlib.figure import Figure

    lim = float(np.ceil(np.abs(data.x).max() + 0.5))
    names = list(dict.fromkeys(method for method, _ in samples))
    fig = Figure(figsize=(2.6 * len(ws), 2.7 * len(names)))
    plot.scale_sweep_grid(fig, samples, y, names, ws, lim=lim)
    save_figure(fig, os.path.join(out_dir, "scale_sweep.png"))
    _fields_figure(os.path.join(out_dir, "fields.png"), data, models, sched, names, lim)

    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot(1, 1, 1)
    few = np.arange(min(60, len(y)))
    den = models["denoiser"]
    _, path = ddim(classifier_free_guidance(den, y[few], FIELD_W), sched, x_T[few], 50, return_path=True)
    plot.trajectories(ax, path, y=y[few])
    ax.set_title(f"DDIM-50 paths with CFG, w = {FIELD_W:g}")
    save_figure(fig, os.path.join(out_dir, "trajectories.png"))

    if data.mixture is not None:
        fig = Figure(figsize=(6, 5))
        plot.fidelity_diversity(fig.add_subplot(1, 1, 1), rows)
        save_figure(fig, os.path.join(out_dir, "fidelity_diversity.png"))


def _fields_figure(path, data, models, sched, names, lim, target=0):
    """fields.png: the unconditional score field and each method's, guided toward label ``target``
    at the common strength FIELD_W, at t = FIELD_T."""
    from matplotlib.figure import Figure

    den = models["denoiser"]
    fields = {"unconditional": lambda x, t: den(x, t)}
    for name in names:
        method = methods.get(name)
        value = method.value_at(FIELD_W)
        fields[f"{method.label} {method.parameter} = {value:g}, label {target}"] = method.eps_fn(
            models, sched, target, value)
    fig = Figure(figsize=(5 * len(fields), 5))
    for i, (title, field) in enumerate(fields.items()):
        ax = fig.add_subplot(1, len(fields), i + 1)
        plot.vector_field(ax, field, sched, FIELD_T, lim=lim, n=17, density=data.mixture, normalize=True)
        ax.set_title(f"{title}, t = {FIELD_T}")
    save_figure(fig, path)


def save_figure(fig, path):
    """Write a figure as PNG through a temporary file beside it, so an interrupted run leaves the old
    image or the new one, never half of one."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.tmp")
    try:
        fig.savefig(tmp, dpi=80, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

