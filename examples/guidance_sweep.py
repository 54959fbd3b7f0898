"""The 2D guidance sweep: several guidance methods over a range of strengths on a toy data set.

The methods are every one that ``refdiff.methods`` registers for a denoiser and a noisy
classifier (classifier guidance at s = 1 + w; CFG, APG and CFG-Zero* at weight w), and CFG applied only for
t in an interval (docs/guidance.md, (G12)), which this script registers itself the way
docs/architecture.md, "How to add a guidance rule", says: once registered, the same sweep, table
and figures take it with no other change. The models are the exact ones of a Gaussian-mixture
preset (the oracle), so what differs between the rows is the rule, not the training; and on
exact models classifier guidance and CFG sample the same points (G5).

It prints the table of ``sweep.scale_sweep`` (the fidelity (M7), the per-class spread (M8) and
the energy distance to p(x | y) of each method and strength) and writes two figures to --out:
``samples.png`` (one row per method, one column per w) and ``fidelity_diversity.png``.

Run:  python examples/guidance_sweep.py [--data three_overlapping] [--ws 0 0.5 1 3] [--out guidance-sweep]
About 5 s with the defaults (2-core AMD EPYC, one BLAS thread).
"""
import argparse
import os

import numpy as np
from matplotlib.figure import Figure

import toy_data
from refdiff import methods, plot, runtime
from refdiff.guidance import interval_cfg
from refdiff.samplers import ddim
from refdiff.schedule import Schedule
from refdiff.sweep import format_table, mixture_measures, scale_sweep


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="three_overlapping", choices=toy_data.presets(),
                        help="a Gaussian-mixture preset (default three_overlapping)")
    parser.add_argument("--ws", type=float, nargs="+", default=[0.0, 0.5, 1.0, 3.0],
                        help="CFG weights w; classifier guidance runs at s = 1 + w (default 0 0.5 1 3)")
    parser.add_argument("--interval", type=int, nargs=2, default=[100, 600], metavar=("T_LOW", "T_HIGH"),
                        help="the timesteps where interval CFG guides (default 100 600)")
    parser.add_argument("--n-per-label", type=int, default=300, help="samples per label and strength (default 300)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=int, default=runtime.DEFAULT_THREADS, help="BLAS threads (default 1)")
    parser.add_argument("--out", default="guidance-sweep", help="folder for the figures (default guidance-sweep)")
    return parser.parse_args(argv)


def register_interval_cfg(t_low, t_high):
    """Register (G12) with the interval [t_low, t_high] as a CFG-weight method; returns its name."""
    name = "interval"
    methods.register(methods.Method(name, f"CFG for t in [{t_low}, {t_high}]", "w", ("denoiser",),
                                    lambda m, sched, y, w: interval_cfg(m["denoiser"], y, w, t_low, t_high)))
    return name


def samples_figure(samples, y, names, ws, args):
    """The sweep's samples, rows by method and columns by w (``plot.scale_sweep_grid``)."""
    fig = Figure(figsize=(2.4 * len(ws) + 2.0, 2.4 * len(names) + 0.6), layout="constrained")
    plot.scale_sweep_grid(fig, samples, y, names, ws)
    fig.suptitle(f"{args.data}, exact models: DDIM-{args.steps}, {args.n_per_label} samples per label, one x_T")
    return fig


def main(argv=None):
    args = parse_args(argv)
    runtime.set_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    sched, mix = Schedule.linear(1000), toy_data.mixture(args.data)
    interval = register_interval_cfg(*args.interval)
    models = {"denoiser": mix.eps_model(sched), "classifier": mix.classifier(sched)}
    names = methods.available(models)  # the registry's order: classifier, cfg, apg, cfg_zero_star, then interval
    y = np.arange(args.n_per_label * mix.num_labels) % mix.num_labels
    x_T = rng.standard_normal((len(y), 2))
    rows, samples = scale_sweep(models, sched, y, args.ws, x_T, mixture_measures(mix, rng),
                                sample=lambda eps_fn, x: ddim(eps_fn, sched, x, args.steps))
    print(format_table(rows))

    os.makedirs(args.out, exist_ok=True)
    samples_figure(samples, y, names, args.ws, args).savefig(os.path.join(args.out, "samples.png"), dpi=80)
    fig = Figure(figsize=(6.5, 5), layout="constrained")
    drawn = [r for r in rows if r["method"] != "classifier"]  # on exact models its points are CFG's (G5)
    plot.fidelity_diversity(fig.add_subplot(), drawn)
    fig.suptitle(f"{args.data}, exact models, DDIM-{args.steps}, {args.n_per_label} samples per label\n"
                 "classifier guidance at s = 1 + w is CFG at w on exact models (G5): not drawn")
    fig.savefig(os.path.join(args.out, "fidelity_diversity.png"), dpi=80)
    print(f"wrote samples.png and fidelity_diversity.png to {args.out}")


if __name__ == "__main__":
    main()
