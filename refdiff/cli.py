"""The ``refdiff`` command.

Every subcommand has ``--help``. A user's mistake (a bad argument, a bad value) prints one line,
``refdiff: error: ...``, to stderr and exits with status 2, never a traceback.
"""
import argparse
import inspect
import json
import os
import sys

import numpy as np

import toy_data

from . import __version__, bench, checkpoint, datasets, methods, runtime
from .labels import NULL_LABEL
from .metrics import class_spread, fidelity
from .npz import save_npz_atomic
from .samplers import ddim, ddpm
from .schedule import Schedule
from .train import (CLASSIFIER_2D, CLASSIFIER_DEMO, CLASSIFIER_IMAGES_SMALL, DENOISER_2D, DENOISER_DEMO,
                    DENOISER_IMAGES_SMALL, budget, train_classifier, train_denoiser)

IMAGES = "images"  # refdiff demo --data images: the tiny-image demo (demo_images.py)
CLI_MODELS = ("denoiser", "classifier")  # the models sample and field load: DIR/<name>.npz, or the oracle's
STRENGTHS = {"w": "the weight w", "s": "the scale s"}  # how --scale reads each convention of refdiff.methods


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


class UsageError(Exception):
    """A mistake in the command line, reported in one line with exit status 2."""


def build_parser():
    """The ``refdiff`` parser: one subcommand per (options, run) pair of COMMANDS.

    A subcommand is named after its ``run_<name>`` function, whose docstring is its help: the
    first line in the list of subcommands, the rest as the description of ``refdiff <name> --help``.
    """
    parser = _Parser(prog="refdiff", description="A NumPy reference implementation of guided diffusion.")
    parser.add_argument("--version", action="version", version=f"refdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for options, run in COMMANDS:
        summary, _, description = inspect.getdoc(run).partition("\n\n")
        command = sub.add_parser(run.__name__[len("run_"):], help=summary[0].lower() + summary[1:].rstrip("."),
                                 description=description)
        options(command)
        command.add_argument("--threads", type=count,
                             help=f"BLAS threads (default ${runtime.THREADS_VARIABLE}, else {runtime.DEFAULT_THREADS}: "
                                  "faster on these small matrices, and robust when another process holds a core)")
        command.set_defaults(run=run)
    return parser


def _training_options(parser, den_budget, clf_budget):
    """--seed and the two step counts that override a training budget."""
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--denoiser-steps", type=count, help=f"denoiser steps (default {den_budget['steps']})")
    parser.add_argument("--classifier-steps", type=count, help=f"classifier steps (default {clf_budget['steps']})")


def _data_option(parser, default):
    parser.add_argument("--data", default=default,
                        help=f"a toy data set name (see refdiff data) or an .npz with arrays x and y (default {default})")


def guidance_choices():
    """--guidance's choices: "none", then every registered method (refdiff.methods) that needs only CLI_MODELS."""
    return ("none",) + methods.available(CLI_MODELS)


def _model_options(parser):
    """The options that choose the models and the guidance, shared by sample and field."""
    parser.add_argument("--model", help="a folder written by refdiff train; without it, the exact oracle of --data")
    parser.add_argument("--data", default="three_gaussians",
                        help="a Gaussian-mixture preset: the oracle models without --model, and the exact "
                             "p(y | x0) reported with it (default three_gaussians)")
    choices = guidance_choices()
    parser.add_argument("--guidance", choices=choices, default="none", help="guidance method (default none)")
    conventions = ", ".join(f"{STRENGTHS[methods.get(name).parameter]} for {name}" for name in choices[1:])
    parser.add_argument("--scale", type=float,
                        help=f"strength, in the method's own convention: {conventions} (the CFG weight w is "
                             "diffusers' guidance_scale - 1); required with guidance")
    parser.add_argument("--label", type=int,
                        help=f"the requested label (default: labels 0..K-1 in turn); {NULL_LABEL} for "
                             "unconditional samples without guidance")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def count(text):
    value = int(text)
    if value < 1:
        raise ValueError(f"expected an integer >= 1, got {text}")
    return value


def bench_options(parser):
    parser.add_argument("--data", default="ring8", help="a Gaussian-mixture preset (default ring8)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    _training_options(parser, DENOISER_2D, CLASSIFIER_2D)
    parser.add_argument("--n-eval", type=count, default=100_000, help="draws for the excess losses (default 100000)")
    parser.add_argument("--n-samples", type=count, help="samples judged against the truth (default 2000; 700 with "
                        "--images)")
    parser.add_argument("--images", action="store_true",
                        help="instead, train on the tiny images and judge the samples (several minutes)")


def run_bench(args):
    """Time training and guided sampling; measure learned models against the oracle.

    Train the default 2D denoiser and noisy classifier on a Gaussian-mixture preset and print:
    median train-step times at batch 1024 (float64, float32), prediction times at N = 10,000
    (unguided and each guidance method), excess losses over the oracle's, and unguided DDPM
    samples against the truth.
    """
    if args.data not in toy_data.presets():
        raise ValueError(f"--data must be a Gaussian-mixture preset ({', '.join(toy_data.presets())}), got {args.data!r}")
    if args.images:
        figures = bench.run_images(args.seed, args.denoiser_steps, args.classifier_steps, args.n_samples or 700)
    else:
        figures = bench.run(args.data, args.seed, args.denoiser_steps, args.classifier_steps, args.n_eval,
                            args.n_samples or 2000)
    figures["malloc_tuned"] = MALLOC_TUNED
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        for name, value in figures.items():
            print(f"{name:36s} {value:.4g}" if isinstance(value, float) else f"{name:36s} {value}")
    return 0


def data_options(parser):
    parser.add_argument("name", nargs="?", help="data set name (see the listing)")
    parser.add_argument("-n", type=int, default=1000, help="number of points (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", help="output .npz path (required with NAME)")


def run_data(args):
    """List the built-in toy data sets, or write a sample of one to .npz.

    Without NAME, list the data sets. With NAME, draw a labelled sample and write it to --out as
    an .npz with arrays x (n, 2) and y (n,).
    """
    if args.name is None:
        for name in toy_data.names():
            kind = "mixture" if name in toy_data.presets() else "samples"
            print(f"{name:16s} {toy_data.num_labels(name)} labels  {kind:8s} {toy_data.describe(name)}")
        return 0
    if args.out is None:
        raise ValueError("--out is required with a data set name")
    x, y = toy_data.sample(args.name, args.n, np.random.default_rng(args.seed))
    save_npz_atomic(args.out, x=x, y=y)
    print(f"wrote {len(x)} points of {args.name} to {args.out}")
    return 0


def demo_options(parser):
    parser.add_argument("--out", default="refdiff-demo", help="output folder (default refdiff-demo)")
    parser.add_argument("--data", default="three_gaussians",
                        help="a toy data set name (see refdiff data), an .npz with arrays x and y, or "
                             f"{IMAGES} for the tiny images (default three_gaussians)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    for model, two_d, small in (("denoiser", DENOISER_DEMO, DENOISER_IMAGES_SMALL),
                                ("classifier", CLASSIFIER_DEMO, CLASSIFIER_IMAGES_SMALL)):
        parser.add_argument(f"--{model}-steps", type=count,
                            help=f"{model} steps (default {two_d['steps']}; {small['steps']} with --data {IMAGES})")
    parser.add_argument("--n-per-label", type=count,
                        help=f"samples per label and strength (default 300; 50 with --data {IMAGES})")


def run_demo(args):
    """Train a guided pair, sweep the guidance methods, write figures and metrics.

    Train a denoiser (with label dropout) and a noisy classifier on 2D data, sample every
    guidance method they can run (classifier guidance and CFG) over a sweep of strengths, and
    write figures, metrics.json and samples.npz to --out. About 12 s, also with another process
    busy on one of 2 cores. With --data images: on the tiny images, pixel CFG, classifier
    guidance, CLIP guidance and latent CFG side by side, and captions steering the unconditional
    model (about 85 s; guidance_grid.png,
    captions.png, metrics.json, samples.npz); there --denoiser-steps and --classifier-steps
    override the pixel models' budgets.
    """
    if args.data == IMAGES:
        from . import demo_images
        budgets = {**demo_images.BUDGETS, "denoiser": budget(DENOISER_IMAGES_SMALL, args.denoiser_steps),
                   "classifier": budget(CLASSIFIER_IMAGES_SMALL, args.classifier_steps)}
        demo_images.run(args.out, np.random.default_rng(args.seed), budgets, n_per_label=args.n_per_label or 50)
        return 0
    from . import demo
    data = datasets.load(args.data, 20_000, np.random.default_rng(args.seed))
    demo.run(data, args.out, np.random.default_rng(args.seed + 1), n_per_label=args.n_per_label or 300,
             den_opts=budget(DENOISER_DEMO, args.denoiser_steps),
             clf_opts=budget(CLASSIFIER_DEMO, args.classifier_steps))
    return 0


def train_options(parser):
    _data_option(parser, "three_gaussians")
    parser.add_argument("--out", default="refdiff-model", help="output folder (default refdiff-model)")
    _training_options(parser, DENOISER_2D, CLASSIFIER_2D)


def run_train(args):
    """Train a denoiser and a noisy classifier and save them as checkpoints.

    Train the denoiser (label dropout 0.3) and the noisy classifier with the default 2D budgets
    and write DIR/denoiser.npz and DIR/classifier.npz.
    """
    rng = np.random.default_rng(args.seed)
    data = datasets.load(args.data, 20_000, rng)
    os.makedirs(args.out, exist_ok=True)
    sched = Schedule.linear(1000)
    den = train_denoiser(data.x, data.y, sched, rng, num_labels=data.num_labels,
                         **budget(DENOISER_2D, args.denoiser_steps))
    clf = train_classifier(data.x, data.y, sched, rng, num_labels=data.num_labels,
                           **budget(CLASSIFIER_2D, args.classifier_steps))
    for name, model in (("denoiser", den), ("classifier", clf)):
        checkpoint.save(os.path.join(args.out, f"{name}.npz"), model)
    print(f"wrote denoiser.npz and classifier.npz to {args.out} ({len(data.x)} points of {data.name}, "
          f"final losses {den.history[-1]:.4f} and {clf.history[-1]:.4f})")
    return 0


def _guided(args, num=None):
    """The models the options name and the guided eps_fn: (eps_fn, sched, labels, mixture, dim).

    labels is an int array of num requested labels (num given, as for sample), or one int (num
    None, as for field); None means unconditional. Only the models the method needs are loaded.
    """
    mixture = toy_data.mixture(args.data) if args.data in toy_data.presets() else None
    loaders, sched, num_labels, dim = _model_loaders(args, mixture)
    labels = _labels(args, num, num_labels)
    if (args.scale is None) != (args.guidance == "none"):
        guided = " or ".join(guidance_choices()[1:])
        raise ValueError(f"--scale is required with --guidance {guided}, and only then")
    if args.guidance == "none":
        den = loaders["denoiser"]()
        eps_fn = lambda x, t: den(x, t, labels)
    else:
        method = methods.get(args.guidance)
        models = {name: loaders[name]() for name in method.needs}
        eps_fn = method.eps_fn(models, sched, labels, args.scale)
    return eps_fn, sched, labels, mixture if mixture is not None and mixture.dim == dim else None, dim


def _model_loaders(args, mixture):
    """{name: () -> model} for CLI_MODELS, and the schedule, number of labels and dimension they share:
    the checkpoints of --model DIR (the denoiser read at once), or else the exact models of --data."""
    if args.model is None:
        if mixture is None:
            raise ValueError(f"--data must be a Gaussian-mixture preset ({', '.join(toy_data.presets())}) "
                             f"without --model, got {args.data!r}")
        sched = Schedule.linear(1000)
        loaders = {"denoiser": lambda: mixture.eps_model(sched), "classifier": lambda: mixture.classifier(sched)}
        return loaders, sched, mixture.num_labels, mixture.dim
    den = checkpoint.load(os.path.join(args.model, "denoiser.npz"))
    loaders = {"denoiser": lambda: den,
               "classifier": lambda: checkpoint.load(os.path.join(args.model, "classifier.npz"))}
    return loaders, den.sched, den.config.num_labels, den.config.dim


def _labels(args, num, num_labels):
    """--label checked against the model: every label in turn (sample), one label, or None."""
    if args.label is None and num is not None:
        return np.arange(num) % num_labels
    if args.label is None or (args.label == NULL_LABEL and args.guidance == "none"):
        if args.guidance != "none":
            raise ValueError("--label is required with guidance here: the field is guided toward one label")
        return None
    if not 0 <= args.label < num_labels:
        raise ValueError(f"--label must be in 0..{num_labels - 1}"
                         f"{f' (or {NULL_LABEL} without guidance)' if args.guidance == 'none' else ''}, got {args.label}")
    return args.label if num is None else np.full(num, args.label)


def sample_options(parser):
    _model_options(parser)
    parser.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim", help="sampler (default ddim)")
    parser.add_argument("--steps", type=count, help="sampling steps (default: 50 for ddim, every step for ddpm)")
    parser.add_argument("-n", type=count, default=1000, help="number of samples (default 1000)")
    parser.add_argument("--out", default="samples.npz", help="output .npz (default samples.npz)")


def run_sample(args):
    """Draw guided or unguided samples from a checkpoint or the oracle.

    Sample with DDIM or DDPM from trained models (--model) or, without --model, from the exact
    models of the --data preset; write x and the requested labels y to --out.
    """
    eps_fn, sched, labels, mixture, dim = _guided(args, args.n)
    rng = np.random.default_rng(args.seed)
    x_T = rng.standard_normal((args.n, dim))
    x = (ddim(eps_fn, sched, x_T, args.steps or 50) if args.sampler == "ddim"
         else ddpm(eps_fn, sched, x_T, rng, steps=args.steps))
    y = np.full(args.n, NULL_LABEL) if labels is None else labels
    save_npz_atomic(args.out, x=x, y=y)
    report = f"wrote {args.n} samples to {args.out}"
    if labels is not None:
        spread = np.nanmean(class_spread(x, labels, int(labels.max()) + 1))
        report += f"; per-class spread {spread:.4f}"
        if mixture is not None:
            report += f", mean exact p(y | x0) {fidelity(mixture, x, labels)[0]:.4f}"
    print(report)
    return 0


def field_options(parser):
    _model_options(parser)
    parser.add_argument("--t", type=count, default=200, help="timestep in 1..T (default 200)")
    parser.add_argument("--what", choices=("score", "eps"), default="score", help="the field drawn (default score)")
    parser.add_argument("--kind", choices=("quiver", "stream"), default="quiver", help="arrows or streamlines")
    parser.add_argument("--lim", type=float, default=3.0, help="the grid spans [-lim, lim]^2 (default 3)")
    parser.add_argument("--normalize", action="store_true",
                        help="draw unit arrows coloured by log10 of their length (quiver only)")
    parser.add_argument("--out", default="field.png", help="output PNG (default field.png)")


def run_field(args):
    """Draw the (guided) score field of a checkpoint or the oracle.

    Plot the score (or eps) of the chosen model and guidance on a grid at timestep --t, over the
    contours of the oracle's noised density when --data is a preset; write a PNG.
    """
    from matplotlib.figure import Figure

    from . import plot
    from .demo import save_figure
    eps_fn, sched, label, mixture, dim = _guided(args)
    if dim != 2:
        raise ValueError(f"refdiff field draws 2D fields; the model's data has dimension {dim}")
    if args.t > sched.T:
        raise ValueError(f"--t must be in 1..{sched.T}, got {args.t}")
    fig = Figure(figsize=(6, 6))
    plot.vector_field(fig.add_subplot(1, 1, 1), eps_fn, sched, args.t, lim=args.lim, what=args.what,
                      kind=args.kind, density=mixture, y=label, normalize=args.normalize)
    save_figure(fig, args.out)
    print(f"wrote {args.out}")
    return 0


def verify_options(parser):
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--only", nargs="+", metavar="LABEL", help="only these docs labels, e.g. G5 C3")


def run_verify(args):
    """Check the identities of docs/ on fresh random inputs.

    Run the oracle identity checks of docs/ and print each identity with its largest error and
    tolerance. Exit status 1 if any fails.
    """
    from . import verify
    results = verify.run_checks(args.seed, args.only)
    print(verify.format_results(results))
    return 0 if all(r.passed for r in results) else 1


COMMANDS = ((data_options, run_data), (bench_options, run_bench), (demo_options, run_demo),
            (train_options, run_train), (sample_options, run_sample), (field_options, run_field),
            (verify_options, run_verify))


MALLOC_TUNED = False


def main(argv=None):
    """Run the command line; returns the exit status (0 ok, 2 a user's mistake).

    Before the subcommand runs, BLAS uses ``--threads`` threads (default $REFDIFF_THREADS, else
    runtime.DEFAULT_THREADS) and glibc keeps freed arrays (``runtime.tune_malloc``).
    """
    global MALLOC_TUNED
    MALLOC_TUNED = MALLOC_TUNED or runtime.tune_malloc()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        runtime.set_threads(runtime.threads_from(args.threads))
        return args.run(args)
    except (UsageError, ValueError, OSError) as err:
        print(f"refdiff: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
