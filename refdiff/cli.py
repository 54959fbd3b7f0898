"""The ``refdiff`` command.

Every subcommand has ``--help``. A user's mistake (a bad argument, a bad value, a bad file, a
run too large for the memory) prints one line, ``refdiff: error: ...``, naming the flag or the
file, to stderr and exits with status 2, never a traceback; ``main`` is the one place that turns
the library's errors into those lines. No command writes over a file it reads. Long stages
print one progress line on stderr (``train.Progress``), which ``-q`` silences.
"""
import argparse
import inspect
import json
import os
import sys
import textwrap

import numpy as np

import toy_data

from . import __version__, bench, checkpoint, datasets, methods, runtime
from .labels import NULL_LABEL
from .metrics import class_spread, fidelity
from .npz import check_output, make_folder, save_npz_atomic, temp_target
from .samplers import SAMPLERS
from .process import PREDICTIONS
from .schedule import Schedule
from .train import (CLASSIFIER_2D, CLASSIFIER_DEMO, CLASSIFIER_IMAGES_SMALL, DENOISER_2D, DENOISER_DEMO,
                    DENOISER_IMAGES_SMALL, Progress, budget, train_classifier, train_denoiser)

IMAGES = "images"  # refdiff demo --data images: the tiny-image demo (demo_images.py)
FILE_MODELS = ("denoiser", "classifier")  # the models sample and field load: DIR/<name>.npz, or the oracle's
CLI_MODELS = FILE_MODELS + ("negative", "weak_denoiser")  # and what --negative and --weak-model (--weak-blur) give
WEAK_BLUR = 0.5  # without --model: autoguidance's weak model is the oracle blurred by this (each cov + 0.25 I)
ORACLE_DATA = "three_gaussians"  # the preset of sample and field without --model or --data
STRENGTHS = {"w": "the weight w", "s": "the scale s"}  # how --scale reads each convention of refdiff.methods
# The library's names for what an option sets, where they differ from the option's dest: a
# method's strength is "w" or "s" (refdiff.methods), the CLI's --scale.
LIBRARY_NAMES = {"w": "scale", "s": "scale"}
# Values that turn non-finite only when the guidance strength is too large for float64.
STRENGTH_RESULTS = ("eps", "x")
FIELD_RESULT = "field_fn's"  # plot.field_on_grid's name for the field, not finite when --lim (or --scale) is too large
SIZES = ("n", "n_per_label", "n_eval", "n_samples")  # the options that set how many samples are made
SCHEDULES = {"linear": Schedule.linear, "cosine": Schedule.cosine, "scaled_linear": Schedule.scaled_linear}  # train --schedule


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2, and every option is kept by its dest
    (``options``) so that an error of the library can be told by the flag the user typed."""

    def __init__(self, *args, **kwargs):
        self.options = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        action = super().add_argument(*names, **kwargs)
        if action.option_strings:
            self.options[action.dest] = action
        return action

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
        command.add_argument("-q", "--quiet", action="store_true", help="no progress line on stderr")
        command.set_defaults(run=run, options=command.options)
    return parser


def _training_options(parser, den_budget, clf_budget):
    """--seed and the two step counts that override a training budget."""
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
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
    parser.add_argument("--data",
                        help=f"a Gaussian-mixture preset: without --model, the oracle models (default {ORACLE_DATA}); "
                             "with --model, the preset the models were trained on, for the exact p(y | x0) and the "
                             "field's contours (default: none)")
    choices = guidance_choices()
    parser.add_argument("--guidance", choices=choices, default="none", help="guidance method (default none)")
    by_parameter = {p: [n for n in choices[1:] if methods.get(n).parameter == p] for p in methods.PARAMETERS}
    conventions = "; ".join(f"{STRENGTHS[p]} for {', '.join(names)}" for p, names in by_parameter.items() if names)
    parser.add_argument("--scale", type=float,
                        help=f"strength, in the method's own convention: {conventions} (the CFG weight w is "
                             "diffusers' guidance_scale - 1); required with guidance")
    parser.add_argument("--label", type=int,
                        help=f"the requested label (default: labels 0..K-1 in turn); {NULL_LABEL} for "
                             "unconditional samples without guidance")
    parser.add_argument("--negative", type=int,
                        help="the negative label of --guidance negative and perp_neg (required with them)")
    parser.add_argument("--weak-model", metavar="FILE",
                        help="with --model and --guidance autoguidance (required there): the weak denoiser, a "
                             "denoiser.npz trained with the same schedule and labels (smaller, or trained shorter)")
    parser.add_argument("--weak-blur", type=float, metavar="DELTA",
                        help=f"without --model, for --guidance autoguidance: the weak model is the oracle of the "
                             f"preset with every covariance widened by DELTA^2 I (default {WEAK_BLUR})")
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")


def count(text):
    """An option's value as an integer >= 1 (argparse names the option when this refuses it)."""
    return _integer(text, 1)


def seed(text):
    """A --seed as an integer >= 0, what numpy.random.default_rng takes."""
    return _integer(text, 0)


def _integer(text, low):
    """int(text) if it is at least low, else argparse's ArgumentTypeError saying what was expected."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
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
        figures = bench.run_images(args.seed, args.denoiser_steps, args.classifier_steps, args.n_samples or 700,
                                   verbose=not args.quiet)
    else:
        figures = bench.run(args.data, args.seed, args.denoiser_steps, args.classifier_steps, args.n_eval,
                            args.n_samples or 2000, verbose=not args.quiet)
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
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
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
    check_output(args.out)
    x, y = toy_data.sample(args.name, args.n, np.random.default_rng(args.seed))
    save_npz_atomic(args.out, x=x, y=y)
    print(f"wrote {len(x)} points of {args.name} to {args.out}")
    return 0


def demo_options(parser):
    parser.add_argument("--out", default="refdiff-demo", help="output folder (default refdiff-demo)")
    parser.add_argument("--data", default="three_gaussians",
                        help="a toy data set name (see refdiff data), an .npz with arrays x and y, or "
                             f"{IMAGES} for the tiny images (default three_gaussians)")
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    for model, two_d, small in (("denoiser", DENOISER_DEMO, DENOISER_IMAGES_SMALL),
                                ("classifier", CLASSIFIER_DEMO, CLASSIFIER_IMAGES_SMALL)):
        parser.add_argument(f"--{model}-steps", type=count,
                            help=f"{model} steps (default {two_d['steps']}; {small['steps']} with --data {IMAGES})")
    parser.add_argument("--n-per-label", type=count,
                        help=f"samples per label and strength (default 300; 50 with --data {IMAGES})")
    parser.add_argument("--jobs", type=count,
                        help=f"with --data {IMAGES}: processes that train the models and sample side by side (default "
                             "the CPUs refdiff may use; the outputs are the same for any number)")


def run_demo(args):
    """Train a guided pair, sweep the guidance methods, write figures and metrics.

    Train a denoiser (with label dropout) and a noisy classifier on 2D data, sample every
    guidance method they can run (classifier guidance and CFG) over a sweep of strengths, and
    write figures, metrics.json and samples.npz to --out: 10-30 s on 2 cores with another
    process busy on one (the README says on which machines). With --data images: on the tiny
    images, pixel CFG, classifier guidance, CLIP guidance and latent CFG side by side, and
    captions steering the unconditional model (guidance_grid.png, captions.png, metrics.json,
    samples.npz; about 85 s with one core busy, training and sampling in --jobs processes); there
    --denoiser-steps and --classifier-steps override the pixel models' budgets.
    """
    if args.data == IMAGES:
        from . import demo_images
        budgets = {**demo_images.BUDGETS, "denoiser": budget(DENOISER_IMAGES_SMALL, args.denoiser_steps),
                   "classifier": budget(CLASSIFIER_IMAGES_SMALL, args.classifier_steps)}
        demo_images.run(args.out, np.random.default_rng(args.seed), budgets,
                        n_per_label=args.n_per_label or 50, verbose=not args.quiet, jobs=args.jobs)
        return 0
    if args.jobs is not None:
        raise ValueError(f"--jobs is used only with --data {IMAGES} (the 2D demo trains and samples in one process)")
    from . import demo
    _refuse_overwriting({os.path.join(args.out, name): "--out" for name in ("samples.npz", "metrics.json")},
                        {args.data: "--data"})
    data = datasets.load(args.data, 20_000, np.random.default_rng(args.seed))
    demo.run(data, args.out, np.random.default_rng(args.seed + 1), n_per_label=args.n_per_label or 300,
             den_opts=budget(DENOISER_DEMO, args.denoiser_steps),
             clf_opts=budget(CLASSIFIER_DEMO, args.classifier_steps), verbose=not args.quiet)
    return 0


def train_options(parser):
    _data_option(parser, "three_gaussians")
    parser.add_argument("--out", default="refdiff-model", help="output folder (default refdiff-model)")
    _training_options(parser, DENOISER_2D, CLASSIFIER_2D)
    parser.add_argument("--prediction", choices=PREDICTIONS, default="eps",
                        help="what the denoiser's network predicts (default eps; docs/process.md (C8))")
    parser.add_argument("--weighting", choices=("none", "min_snr"), default="none",
                        help="the denoising loss's weights: none, or min-SNR-5 (Hang et al. 2023; docs/learned.md)")
    parser.add_argument("--schedule", choices=tuple(SCHEDULES),
                        help="the noise schedule at T = 1000 (default linear; docs/schedule.md)")
    parser.add_argument("--zero-snr", action="store_true", help="rescale it to zero terminal SNR (Lin et al. 2024)")
    parser.add_argument("--scheduler-config", metavar="FILE",
                        help="a diffusers scheduler_config.json to take the schedule from instead (docs/schedule.md (S9))")


def _schedule(args):
    """The training schedule: --scheduler-config FILE, or --schedule (at T = 1000) with --zero-snr."""
    if args.scheduler_config is None:
        sched = SCHEDULES[args.schedule or "linear"](1000)
        return sched.rescale_zero_terminal_snr() if args.zero_snr else sched
    if args.schedule is not None or args.zero_snr:
        raise ValueError("--scheduler-config names the whole schedule: give it without --schedule or --zero-snr")
    try:
        return Schedule.from_diffusers_config(args.scheduler_config)
    except ValueError as err:
        raise ValueError(f"--scheduler-config {args.scheduler_config}: {err}") from None


def run_train(args):
    """Train a denoiser and a noisy classifier and save them as checkpoints.

    Train the denoiser (label dropout 0.3) and the noisy classifier with the default 2D budgets
    and write DIR/denoiser.npz and DIR/classifier.npz. The denoiser may predict eps, x0, v or
    the score; the schedule may be linear, cosine or Stable Diffusion's, or a diffusers config's.
    """
    outputs = {name: os.path.join(args.out, f"{name}.npz") for name in CLI_MODELS}
    _refuse_overwriting({path: "--out" for path in outputs.values()}, {args.data: "--data"})
    rng = np.random.default_rng(args.seed)
    data = datasets.load(args.data, 20_000, rng)
    sched = _schedule(args)
    make_folder(args.out)
    den = train_denoiser(data.x, data.y, sched, rng, num_labels=data.num_labels, verbose=not args.quiet,
                         prediction=args.prediction, weighting=None if args.weighting == "none" else args.weighting,
                         **budget(DENOISER_2D, args.denoiser_steps))
    clf = train_classifier(data.x, data.y, sched, rng, num_labels=data.num_labels, verbose=not args.quiet,
                           **budget(CLASSIFIER_2D, args.classifier_steps))
    for name, model in (("denoiser", den), ("classifier", clf)):
        checkpoint.save(outputs[name], model)
    print(f"wrote denoiser.npz and classifier.npz to {args.out} ({len(data.x)} points of {data.name}, "
          f"final losses {den.history[-1]:.4f} and {clf.history[-1]:.4f})")
    return 0


def _guided(args, num=None):
    """The models the options name and the guided eps_fn: (eps_fn, sched, labels, mixture, dim).

    labels is an int array of num requested labels (num given, as for sample), or one int (num
    None, as for field); None means unconditional. Only the models the method needs are loaded,
    each checked to be of its kind; mixture is the preset of --data (None with --model unless
    --data names one). --out is checked first: a file name that is not one of the models read.
    """
    check_output(args.out)
    if (args.scale is None) != (args.guidance == "none"):
        guided = " or ".join(guidance_choices()[1:])
        raise ValueError(f"--scale is required with --guidance {guided}, and only then")
    needs = ("denoiser",) if args.guidance == "none" else methods.get(args.guidance).needs
    _check_extras(args, needs)
    if args.model is None:
        models, sched, num_labels, dim, source, mixture = _oracle(args.data or ORACLE_DATA, args.weak_blur)
    else:
        models, sched, num_labels, dim, source = _checkpoints(args, [n for n in needs if n in FILE_MODELS])
        mixture = _reference(args, num_labels, dim)
        if "weak_denoiser" in needs:
            _refuse_overwriting({args.out: "--out"}, {args.weak_model: "--weak-model"})
            models["weak_denoiser"] = _weak_model(args.weak_model, models["denoiser"])
    labels = _labels(args, num, num_labels, source)
    if args.negative is not None and not (0 <= args.negative < num_labels or args.negative == NULL_LABEL):
        raise ValueError(f"--negative must be in 0..{num_labels - 1} (or {NULL_LABEL}), got {args.negative}")
    models["negative"] = args.negative
    if args.guidance == "none":
        den = models["denoiser"]
        eps_fn = lambda x, t: den(x, t, labels)
    else:
        eps_fn = methods.get(args.guidance).eps_fn(models, sched, labels, args.scale)
    return eps_fn, sched, labels, mixture, dim


def _oracle(data, weak_blur=None):
    """The exact models of a preset: (models, sched, num_labels, dim, source, mixture); the weak
    denoiser is the oracle of the preset blurred by ``weak_blur`` (default WEAK_BLUR)."""
    if data not in toy_data.presets():
        raise ValueError(f"--data must be a Gaussian-mixture preset ({', '.join(toy_data.presets())}) "
                         f"without --model, got {data!r}")
    mixture, sched = toy_data.mixture(data), Schedule.linear(1000)
    if weak_blur is not None and not (np.isfinite(weak_blur) and weak_blur >= 0):
        raise ValueError(f"--weak-blur must be a finite number >= 0, got {weak_blur}")
    weak = mixture.blurred(WEAK_BLUR if weak_blur is None else weak_blur)
    models = {"denoiser": mixture.eps_model(sched), "classifier": mixture.classifier(sched),
              "weak_denoiser": weak.eps_model(sched)}
    return models, sched, mixture.num_labels, mixture.dim, f"the oracle of {data}", mixture


def _check_extras(args, needs):
    """--negative exactly with the methods that read a negative label; --weak-model exactly with
    autoguidance on --model, --weak-blur only with it on the oracle."""
    for flag, value, model, on_model in (("--negative", args.negative, "negative", False),
                                         ("--weak-model", args.weak_model, "weak_denoiser", True)):
        needed = model in needs and (args.model is not None or not on_model)
        if needed != (value is not None):
            users = " or ".join(n for n in methods.available(CLI_MODELS) if model in methods.get(n).needs)
            raise ValueError(f"{flag} is {'required' if needed else 'used only'} with --guidance {users}"
                             + (" and --model" if on_model else ""))
    if args.weak_blur is not None and ("weak_denoiser" not in needs or args.model is not None):
        raise ValueError("--weak-blur is used only with --guidance autoguidance without --model (the oracle)")


def _weak_model(path, den):
    """--weak-model: a denoiser checkpoint with the schedule, dimension and labels of --model's denoiser."""
    weak = checkpoint.load(path, kind="denoiser")
    if (weak.config.dim, weak.config.num_labels) != (den.config.dim, den.config.num_labels) or not np.array_equal(
            weak.sched.betas, den.sched.betas):
        raise ValueError(f"--weak-model {path} must have the dimension, labels and schedule of --model's denoiser "
                         f"(got {weak.config.dim}D, {weak.config.num_labels} labels)")
    return weak


def _checkpoints(args, needs):
    """The checkpoints of --model DIR that a method needs, each of its kind and trained together:
    (models, sched, num_labels, dim, source), the labels those of the classifier if one is read
    (classifier guidance runs the denoiser unconditionally), else the denoiser's."""
    paths = {name: os.path.join(args.model, f"{name}.npz") for name in needs}
    _refuse_overwriting({args.out: "--out"}, {path: "--model" for path in paths.values()})
    models = {name: checkpoint.load(path, kind=name) for name, path in paths.items()}
    den, clf = models["denoiser"], models.get("classifier")
    if clf is not None and (clf.config.dim != den.config.dim or not np.array_equal(clf.sched.betas, den.sched.betas)):
        raise ValueError(f"--model {args.model}: {paths['classifier']} and {paths['denoiser']} were not trained "
                         f"together (dimensions {clf.config.dim} and {den.config.dim}, or other schedules)")
    labelled = "classifier" if clf is not None else "denoiser"
    return models, den.sched, models[labelled].config.num_labels, den.config.dim, paths[labelled]


def _reference(args, num_labels, dim):
    """The preset --data names beside --model, which must have the models' labels and dimension; or None."""
    if args.data is None:
        return None
    if args.data not in toy_data.presets():
        raise ValueError(f"--data beside --model must be a Gaussian-mixture preset ({', '.join(toy_data.presets())}),"
                         f" the one the models were trained on, got {args.data!r}")
    mixture = toy_data.mixture(args.data)
    if mixture.dim != dim or (num_labels and mixture.num_labels != num_labels):
        raise ValueError(f"--data {args.data} has {mixture.num_labels} labels in {mixture.dim}D, the models of "
                         f"--model {args.model} {num_labels} labels in {dim}D: name the preset they were trained on")
    return mixture


def _labels(args, num, num_labels, source):
    """--label checked against the model: every label in turn (sample), one label, or None."""
    if num_labels == 0:  # an unconditional denoiser
        if args.guidance != "none" or args.label not in (None, NULL_LABEL):
            what = f"--guidance {args.guidance}" if args.guidance != "none" else f"--label {args.label}"
            raise ValueError(f"{what} needs a model with labels; {source} was trained without labels")
        return None
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


def _refuse_overwriting(outputs, inputs):
    """ValueError if a file the command would write is one it reads; both are {path: the flag naming it}."""
    for out, out_flag in outputs.items():
        for path, in_flag in inputs.items():
            if os.path.exists(out) and os.path.exists(path) and os.path.samefile(out, path):
                raise ValueError(f"{out_flag} {out} is the file {in_flag} reads ({path}); "
                                 "write the output elsewhere, nothing was written")


def sample_options(parser):
    _model_options(parser)
    parser.add_argument("--sampler", choices=tuple(SAMPLERS), default="ddim",
                        help="sampler (default ddim; docs/samplers.md, (D1), (D2), (D7), (D8), (D11)-(D13))")
    parser.add_argument("--steps", type=count, help="sampling steps (default: every step for ddpm, 50 for the others)")
    parser.add_argument("-n", type=count, default=1000, help="number of samples (default 1000)")
    parser.add_argument("--out", default="samples.npz", help="output .npz (default samples.npz)")


def run_sample(args):
    """Draw guided or unguided samples from a checkpoint or the oracle.

    Sample with DDIM or DDPM from trained models (--model) or, without --model, from the exact
    models of the --data preset; write x, the requested labels y and the settings (a line of
    text, which refdiff plot puts in its title) to --out.
    """
    eps_fn, sched, labels, mixture, dim = _guided(args, args.n)
    rng = np.random.default_rng(args.seed)
    x_T = rng.standard_normal((args.n, dim))
    name, sample = SAMPLERS[args.sampler]
    total = args.steps or (sched.T if args.sampler == "ddpm" else 50)
    with Progress(args.sampler, total, not args.quiet, verb="sample") as progress:
        x = sample(eps_fn, sched, x_T, args.steps, rng, lambda t, x, eps: progress.update())
    y = np.full(args.n, NULL_LABEL) if labels is None else labels
    source, guidance = _settings(args)
    settings = f"{source}; {guidance}; {name}, {total} steps; seed {args.seed}"
    save_npz_atomic(args.out, x=x, y=y, settings=np.array(settings))
    report = f"wrote {args.n} samples to {args.out}"
    if labels is not None:
        spread = class_spread(x, labels, int(labels.max()) + 1)
        spread = spread[np.isfinite(spread)]  # a class of fewer than 2 samples has no spread (NaN)
        report += f"; per-class spread {spread.mean():.4f}" if spread.size else ""
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
                        help="colour the arrows or streamlines by log10 of the field's length, with a colourbar "
                             "(arrows are then drawn at unit length)")
    parser.add_argument("--out", default="field.png", help="output .png (default field.png; replaced if it exists)")


def run_field(args):
    """Draw the (guided) score field of a checkpoint or the oracle.

    Plot the score (or eps) of the chosen model and guidance on a grid at timestep --t, over the
    contours of the oracle's noised density when --data is a preset; write a PNG titled with
    those settings.
    """
    from matplotlib.figure import Figure

    from . import plot
    from .demo import save_figure
    _png_output(args.out)
    eps_fn, sched, label, mixture, dim = _guided(args)
    if dim != 2:
        raise ValueError(f"refdiff field draws 2D fields; the model's data has dimension {dim}")
    if args.t > sched.T:
        raise ValueError(f"--t must be in 1..{sched.T}, got {args.t}")
    fig = Figure(figsize=(7.2, 6.2) if args.normalize else (6.4, 6.8), layout="compressed")  # a square axes
    ax = plot.vector_field(fig.add_subplot(1, 1, 1), eps_fn, sched, args.t, lim=args.lim, what=args.what,
                           kind=args.kind, density=mixture, y=None if mixture is None else label,
                           normalize=args.normalize)
    ax.set_title(_field_title(args, label, mixture), fontsize="medium", pad=plot.TITLE_PAD)
    save_figure(fig, args.out)
    print(f"wrote {args.out}")
    return 0


def _field_title(args, label, mixture):
    """The settings of refdiff field as its figure's title: the models (and the contours' preset),
    the field and t, the guidance with its strength's convention (plot.CONVENTIONS), the label."""
    from . import plot
    source, guidance = _settings(args)
    contours = f"; contours: the exact density of {args.data}" if args.model and mixture is not None else ""
    target = "unconditional" if label is None else f"label {label}"
    title = f"the {args.what} of {source} at t = {args.t}{contours}\n"
    if args.guidance == "none":
        return title + f"{guidance}, {target}"
    return title + f"{guidance} toward {target}\n{plot.CONVENTIONS[methods.get(args.guidance).parameter]}"


def _settings(args):
    """What sample and field ran on, in words: (the models, the guidance and its strength)."""
    source = f"model {args.model}" if args.model else f"the oracle of {args.data or ORACLE_DATA}"
    if args.guidance == "none":
        return source, "no guidance"
    method, extras = methods.get(args.guidance), ""
    if args.negative is not None:
        extras = f", negative label {args.negative}"
    elif "weak_denoiser" in method.needs:
        extras = f", weak model {args.weak_model}" if args.model else \
            f", weak model: the oracle blurred by {WEAK_BLUR if args.weak_blur is None else args.weak_blur:g}"
    return source, f"{method.label} {method.parameter} = {args.scale:g}{extras}"


def _png_output(path):
    """--out of a figure: a .png file name (so no .npz is written over) in an existing folder."""
    if not os.fspath(path).lower().endswith(".png"):
        raise ValueError(f"--out must name a .png file, got {path!r}")
    return check_output(path)


def plot_options(parser):
    parser.add_argument("samples", metavar="SAMPLES", help="an .npz written by refdiff sample: x (N, 2) and y (N,)")
    parser.add_argument("--out", help="output .png (default SAMPLES with .png for .npz; replaced if it exists)")


def run_plot(args):
    """Draw the samples refdiff sample wrote: points coloured by their requested label.

    Read x (N, 2) and the requested labels y (N,; -1 for an unconditional row) from SAMPLES and
    write a PNG (--out): the points in their labels' colours with a legend, axis labels, and a
    title saying what the file holds and the settings refdiff sample recorded in it.
    """
    from matplotlib.figure import Figure

    from . import plot
    from .demo import save_figure
    from .npz import read_npz
    out = _png_output(args.out or os.path.splitext(args.samples)[0] + ".png")
    _refuse_overwriting({out: "--out"}, {args.samples: "SAMPLES"})
    fig = Figure(figsize=(7, 5.8), layout="constrained")
    try:
        arrays = read_npz(args.samples)
        if not {"x", "y"} <= arrays.keys():
            raise ValueError(f"needs arrays x and y, as refdiff sample writes them; it holds {sorted(arrays)}")
        ax = plot.scatter_samples(fig.add_subplot(1, 1, 1), arrays["x"], arrays["y"])
    except ValueError as err:
        raise ValueError(f"{args.samples}: {err}") from None
    labels, counts = np.unique(arrays["y"], return_counts=True)
    held = ", ".join(f"{'unconditional' if k == NULL_LABEL else f'y = {k}'}: {c}" for k, c in zip(labels, counts))
    recorded = arrays.get("settings", np.zeros(0))
    settings = "".join("\n" + line for line in textwrap.wrap(str(recorded), 84)) if recorded.dtype.kind == "U" else ""
    ax.set_title(f"{os.path.basename(args.samples)}: {len(arrays['x'])} samples in 2D{settings}\n{held}",
                 fontsize="medium")
    save_figure(fig, out)
    print(f"wrote {out}")
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
    total = len(verify.select_checks(args.only))
    with Progress("identities", total, not args.quiet, verb="verify", unit="checks") as progress:
        results = verify.run_checks(args.seed, args.only, on_check=lambda result: progress.update(note=result.label))
    print(verify.format_results(results))
    return 0 if all(r.passed for r in results) else 1


COMMANDS = ((data_options, run_data), (bench_options, run_bench), (demo_options, run_demo),
            (train_options, run_train), (sample_options, run_sample), (field_options, run_field),
            (plot_options, run_plot), (verify_options, run_verify))


MALLOC_TUNED = False


def main(argv=None):
    """Run the command line; returns the exit status (0 ok, 2 a user's mistake, 130 interrupted).

    Before the subcommand runs, BLAS uses ``--threads`` threads (default $REFDIFF_THREADS, else
    runtime.DEFAULT_THREADS) and glibc keeps freed arrays (``runtime.tune_malloc``). NumPy's
    floating-point warnings are off: a value that overflows is caught by the finiteness checks
    of the library (models, samplers, checkpoints), which ``_message`` tells by its flag.
    """
    global MALLOC_TUNED
    MALLOC_TUNED = MALLOC_TUNED or runtime.tune_malloc()
    parser, args = build_parser(), None
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        runtime.set_threads(runtime.threads_from(args.threads))
        with np.errstate(all="ignore"):
            return args.run(args)
    except (UsageError, ValueError, OSError, MemoryError) as err:
        print(f"refdiff: error: {_message(err, args)}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("refdiff: interrupted", file=sys.stderr)
        return 130


def _message(err, args):
    """The line an error of a run becomes, by the flag the user typed.

    A ValueError that starts with a library argument's name gets the option's flag instead
    ("steps must be ..." -> "--steps must be ..."), a non-finite result of guidance names
    --scale, a field not finite on its grid names --lim (and --scale), an OSError names its file
    (the target, for a temporary file of npz.temp_path), and a MemoryError names the size options
    given.
    """
    options = getattr(args, "options", {})
    if isinstance(err, MemoryError):
        given = [f"{options[d].option_strings[-1]} {getattr(args, d)}" for d in SIZES
                 if d in options and getattr(args, d) != options[d].default]
        return (f"out of memory ({err or 'MemoryError'}); "
                + (f"{' and '.join(given)} may be too large" if given else "free memory or raise the limit (ulimit -v)"))
    if isinstance(err, OSError):
        named = isinstance(err.filename, (str, bytes, os.PathLike)) and err.filename and err.strerror
        return f"{temp_target(os.fsdecode(err.filename))}: {err.strerror}" if named else err.strerror or str(err)
    name, _, rest = str(err).partition(" ")
    dest = LIBRARY_NAMES.get(name, name)
    if name in STRENGTH_RESULTS and getattr(args, "scale", None) is not None:
        return f"--scale {args.scale:g} is too strong for float64 here: {err}; try a smaller --scale"
    if name == FIELD_RESULT and "lim" in options:
        strength = f" and --scale {args.scale:g}" if args.scale is not None else ""
        return (f"--lim {args.lim:g}{strength} {'are' if strength else 'is'} too large for float64 here: the "
                f"field is not finite on the grid; try a smaller --lim{' or --scale' if strength else ''}")
    return f"{options[dest].option_strings[-1]} {rest}" if rest and dest in options else str(err)


if __name__ == "__main__":
    sys.exit(main())
