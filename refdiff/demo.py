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
from .npz import make_folder, save_npz_atomic, write_atomic
from .samplers import ddim
from .schedule import Schedule
from .sweep import data_measures, format_table, mixture_measures, scale_sweep
from .train import CLASSIFIER_DEMO, DENOISER_DEMO, Progress, train_classifier, train_denoiser

WS = (0.0, 0.5, 1.0, 3.0, 6.0)
FIELD_T = 200        # the level of the vector-field panels: noise std sqrt(1 - alpha_bar) ~ 0.6
FIELD_W = 3.0        # the strength of the guided panels and of the trajectories
SWEEP_STEPS = 50     # DDIM steps of the sweep (scale_sweep's default sampler)
METHODS = ("classifier", "cfg")  # the two rules the demo compares (every registered one: docs/measure_guidance.py)
FIELD_RULES = ("perp_neg", "apg")  # two rules of 2023-2025 that fields.png draws beside them


def run(data, out_dir, rng, den_opts=DENOISER_DEMO, clf_opts=CLASSIFIER_DEMO, ws=WS, n_per_label=300,
        say=print, verbose=True):
    """Train, sweep, measure and draw; returns the metrics dict also written to metrics.json.

    Parameters
    ----------
    data : datasets.Data with 2D points
    out_dir : folder for the outputs (created if missing)
    rng : numpy.random.Generator; ws : strengths w (classifier guidance at s = 1 + w)
    say : callable(str) told of each step; verbose : a progress line on stderr while training and
        sampling (train.Progress)
    """
    as_count(n_per_label, "n_per_label", low=1)
    if data.x.shape[1] != 2:
        raise ValueError(f"--data must hold 2D points for the demo, got dimension {data.x.shape[1]}")
    make_folder(out_dir)
    sched, start = Schedule.linear(1000), time.perf_counter()
    say(f"training the denoiser ({den_opts['steps']} steps) and the noisy classifier ({clf_opts['steps']} steps) "
        f"on {len(data.x)} points of {data.name}")
    den = train_denoiser(data.x, data.y, sched, rng, num_labels=data.num_labels, verbose=verbose, **den_opts)
    clf = train_classifier(data.x, data.y, sched, rng, num_labels=data.num_labels, verbose=verbose, **clf_opts)
    train_seconds = time.perf_counter() - start
    y = np.arange(n_per_label * data.num_labels) % data.num_labels
    x_T = rng.standard_normal((len(y), 2))
    measure = (mixture_measures(data.mixture, rng) if data.mixture is not None
               else data_measures(data.x, data.y, data.num_labels))
    models = {"denoiser": den, "classifier": clf}
    say(f"sampling {len(y)} points for each of {len(METHODS)} methods x {len(ws)} strengths "
        f"(DDIM-{SWEEP_STEPS})")
    rows, samples = _sweep(models, sched, y, ws, x_T, measure, verbose)
    metrics = {"data": data.name, "train_seconds": train_seconds, "n_per_label": n_per_label, "rows": rows}
    save_json(metrics, os.path.join(out_dir, "metrics.json"))
    save_npz_atomic(os.path.join(out_dir, "samples.npz"), y=y,
                    **{f"{method}_w{w:g}": x for (method, w), x in samples.items()})
    say("drawing the figures")
    _figures(out_dir, data, models, sched, samples, y, x_T, rows, ws)
    say(format_table(rows))
    say(f"wrote metrics.json, samples.npz and the figures to {out_dir} ({time.perf_counter() - start:.0f} s)")
    return metrics


def _sweep(models, sched, y, ws, x_T, measure, verbose):
    """``sweep.scale_sweep`` of the demo's METHODS, by DDIM-SWEEP_STEPS, with a progress line over
    all its steps (``verbose``)."""
    with Progress("guidance sweep", len(METHODS) * len(ws) * SWEEP_STEPS, verbose, verb="sample") as progress:
        step = lambda *_: progress.update()
        return scale_sweep(models, sched, y, ws, x_T, measure, METHODS,
                           sample=lambda eps_fn, x: ddim(eps_fn, sched, x, SWEEP_STEPS, callback=step))


def _figures(out_dir, data, models, sched, samples, y, x_T, rows, ws):
    """The demo's PNGs, each titled with its settings (matplotlib's Agg canvas, so no display is needed)."""
    from matplotlib.figure import Figure

    lim = float(np.ceil(np.abs(data.x).max() + 0.5))
    names = list(dict.fromkeys(method for method, _ in samples))
    fig = Figure(figsize=(2.4 * len(ws) + 0.9, 2.4 * len(names) + 1.6), layout="constrained")  # legend below
    plot.scale_sweep_grid(fig, samples, y, names, ws, lim=lim)
    fig.suptitle(f"DDIM-50 samples of the learned models on {data.name}, {len(y) // data.num_labels} per label, "
                 f"all from one x_T\nrows: guidance method; columns: strength w\n{plot.CONVENTIONS['w']}")
    save_figure(fig, os.path.join(out_dir, "scale_sweep.png"))
    _fields_figure(os.path.join(out_dir, "fields.png"), data, models, sched, names + list(FIELD_RULES), lim)
    _trajectories_figure(os.path.join(out_dir, "trajectories.png"), data, models["denoiser"], sched, y, x_T)
    if data.mixture is not None:
        _fidelity_figure(os.path.join(out_dir, "fidelity_diversity.png"), data, rows)


def _fields_figure(path, data, models, sched, names, lim, target=0):
    """fields.png: the unconditional score field and each method's, guided toward label ``target``
    (away from the next label, for a method that reads a negative one) at the common strength
    FIELD_W, at t = FIELD_T, as unit arrows coloured by log10 of the length; three panels a row."""
    from matplotlib.figure import Figure

    den, negative = models["denoiser"], (target + 1) % data.num_labels
    fields = {"unconditional": lambda x, t: den(x, t)}
    for name in names:
        method = methods.get(name)
        value, away = method.value_at(FIELD_W), f", negative {negative}" if "negative" in method.needs else ""
        fields[f"{method.label} {method.parameter} = {value:g}, label {target}{away}"] = method.eps_fn(
            {**models, "negative": negative}, sched, target, value)
    rows, cols = -(-len(fields) // 3), min(3, len(fields))
    fig = Figure(figsize=(5.2 * cols, 4.9 * rows), layout="compressed")  # square axes: their colourbars fit at once
    for i, (title, field) in enumerate(fields.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        plot.vector_field(ax, field, sched, FIELD_T, lim=lim, n=17, density=data.mixture, normalize=True)
        ax.set_title(f"{title}, t = {FIELD_T}", pad=plot.TITLE_PAD)
    conventions = "\n".join(plot.CONVENTIONS[p] for p in dict.fromkeys(methods.get(n).parameter for n in names))
    fig.suptitle(f"The score of the learned models on {data.name} at t = {FIELD_T}, unguided and guided toward label "
                 f"{target}\n{conventions}")
    fig.draw_without_rendering()  # lay out twice: the first layout of colourbars under a suptitle cuts the x labels
    save_figure(fig, path)


def _trajectories_figure(path, data, den, sched, y, x_T):
    """trajectories.png: the DDIM-50 paths of the first 60 rows of x_T under CFG at w = FIELD_W."""
    from matplotlib.figure import Figure

    few = np.arange(min(60, len(y)))
    _, states = ddim(classifier_free_guidance(den, y[few], FIELD_W), sched, x_T[few], 50, return_path=True)
    fig = Figure(figsize=(7.6, 6), layout="constrained")
    ax = plot.trajectories(fig.add_subplot(1, 1, 1), states, y=y[few])
    ax.set_title(f"DDIM-50 paths of the learned denoiser on {data.name}, CFG w = {FIELD_W:g}\n"
                 f"{plot.CONVENTIONS['w']}", fontsize="medium", pad=plot.TITLE_PAD)
    save_figure(fig, path)


def _fidelity_figure(path, data, rows):
    """fidelity_diversity.png: every method's fidelity against its spread, and its energy distance
    to p(x | y) against w."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    plot.fidelity_diversity(left, rows)
    plot.measure_by_strength(right, rows, "energy")
    fig.suptitle(f"DDIM-50 samples of the learned models on {data.name}: fidelity, diversity and the distance to "
                 "the true p(x | y), by guidance strength")
    save_figure(fig, path)


def save_figure(fig, path):
    """Write a figure as PNG through a temporary file beside it, so an interrupted run leaves the old
    image or the new one, never half of one."""
    write_atomic(path, lambda f: fig.savefig(f, dpi=80, format="png"))


def save_json(metrics, path):
    """Write a dict of plain numbers as indented JSON through a temporary file (npz.write_atomic)."""
    write_atomic(path, lambda f: f.write(json.dumps(metrics, indent=1).encode()))

