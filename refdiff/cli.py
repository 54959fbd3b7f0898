"""The ``refdiff`` command.

Every subcommand has ``--help``. A user's mistake (a bad argument, a bad value) prints one line,
``refdiff: error: ...``, to stderr and exits with status 2, never a traceback.
"""
import argparse
import sys

import numpy as np

import toy_data

from . import __version__
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
    return parser


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


def main(argv=None):
    """Run the command line; returns the exit status (0 ok, 2 a user's mistake)."""
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
