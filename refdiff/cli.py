"""The ``refdiff`` command.

Every subcommand has ``--help``. A user's mistake (a bad argument, a bad value) prints one line,
``refdiff: error: ...``, to stderr and exits with status 2, never a traceback.
"""
import argparse
import ctypes
import json
import sys

import numpy as np

import toy_data

from . import __version__, bench
from .checkpoint import save_npz_atomic


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


class UsageError(Exception):
    """A mistake in the command line, reported in one line with exit status 2."""


def build_parser():
    parser = _Parser(prog="refdiff", description="A NumPy reference implementation of guided diffusion.")
    parser.add_argument("--version", action="version", version=f"refdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    data = sub.add_parser("data", help="list the built-in toy data sets, or write a sample of one to .npz",
                          description="Without NAME, list the data sets. With NAME, draw a labelled "
                                      "sample and write it to --out as an .npz with arrays x (n, 2) and y (n,).")
    data.add_argument("name", nargs="?", help="data set name (see the listing)")
    data.add_argument("-n", type=int, default=1000, help="number of points (default 1000)")
    data.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    data.add_argument("--out", help="output .npz path (required with NAME)")
    data.set_defaults(run=run_data)

    bench = sub.add_parser("bench", help="time training and guided sampling; measure learned models against the oracle",
                           description="Train the default 2D denoiser and noisy classifier on a Gaussian-mixture "
                                       "preset and print: median train-step times at batch 1024 (float64, float32), "
                                       "prediction times at N = 10,000 (unguided, CFG, classifier guidance), excess "
                                       "losses over the oracle's, and unguided DDPM samples against the truth.")
    bench.add_argument("--data", default="ring8", help="a Gaussian-mixture preset (default ring8)")
    bench.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    bench.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    bench.add_argument("--denoiser-steps", type=count, help="override the default denoiser budget")
    bench.add_argument("--classifier-steps", type=count, help="override the default classifier budget")
    bench.add_argument("--n-eval", type=count, default=100_000, help="draws for the excess losses (default 100000)")
    bench.add_argument("--images", action="store_true",
                       help="instead, train on the tiny images and judge the samples (several minutes)")
    bench.set_defaults(run=run_bench)
    return parser


def count(text):
    value = int(text)
    if value < 1:
        raise ValueError(f"expected an integer >= 1, got {text}")
    return value


def run_bench(args):
    if args.data not in toy_data.presets():
        raise ValueError(f"--data must be a Gaussian-mixture preset ({', '.join(toy_data.presets())}), got {args.data!r}")
    if args.images:
        figures = bench.run_images(args.seed, args.denoiser_steps, args.classifier_steps)
    else:
        figures = bench.run(args.data, args.seed, args.denoiser_steps, args.classifier_steps, args.n_eval)
    figures["malloc_tuned"] = MALLOC_TUNED
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        for name, value in figures.items():
            print(f"{name:36s} {value:.4g}" if isinstance(value, float) else f"{name:36s} {value}")
    return 0


def run_data(args):
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


def tune_malloc():
    """Keep freed large arrays in glibc's heap instead of returning them to the OS after every step.

    Training allocates and frees the same large temporaries every step; by default glibc unmaps
    them each time and the next step page-faults them back in. Raising the mmap and trim
    thresholds (mallopt M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1) removes those faults
    (docs/learned.md gives the measured effect). Only this process, and only on glibc.
    Returns True when applied.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 30)) and bool(libc.mallopt(-1, 1 << 30))
    except (OSError, AttributeError):
        return False


MALLOC_TUNED = False


def main(argv=None):
    """Run the command line; returns the exit status (0 ok, 2 a user's mistake)."""
    global MALLOC_TUNED
    MALLOC_TUNED = MALLOC_TUNED or tune_malloc()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return args.run(args)
    except (UsageError, ValueError, OSError) as err:
        print(f"refdiff: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
