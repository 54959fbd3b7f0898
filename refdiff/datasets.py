"""What ``--data`` names: a built-in toy set, or a user's ``.npz`` of labelled points.

A built-in Gaussian-mixture preset also brings its oracle (exact models and exact p(y | x_0));
a sample-only set or a user's file brings points and labels only.
"""
import os
from typing import NamedTuple, Optional

import numpy as np

import toy_data

from .arrays import as_count, as_points, check_rng
from .npz import read_npz
from .oracle import GaussianMixture


class Data(NamedTuple):
    """Labelled training points and, for a preset, the exact mixture they are drawn from."""
    name: str
    x: np.ndarray                        # (N, D) float64
    y: np.ndarray                        # (N,) int64 in 0..K-1
    num_labels: int                      # K
    mixture: Optional[GaussianMixture]   # the oracle, for a preset; else None


def load(spec, n, rng):
    """The data a ``--data`` value names.

    Parameters
    ----------
    spec : str, a name of ``toy_data.names()`` (n points are drawn) or the path of an ``.npz``
        holding ``x`` (N, D) finite floats and ``y`` (N,) integer labels 0..K-1 (all of it is used)
    n : int >= 1, points drawn from a built-in set
    rng : numpy.random.Generator

    Returns
    -------
    Data
    """
    check_rng(rng)
    if isinstance(spec, str) and spec in toy_data.names():
        x, y = toy_data.sample(spec, as_count(n, "n", low=1), rng)
        mixture = toy_data.mixture(spec) if spec in toy_data.presets() else None
        return Data(spec, x, y, toy_data.num_labels(spec), mixture)
    if isinstance(spec, str) and spec.endswith(".npz"):
        return _load_npz(spec)
    raise ValueError(f"--data must be one of {', '.join(toy_data.names())} or a .npz file with arrays x and y, "
                     f"got {spec!r}")


def _load_npz(path):
    """A user's labelled points from an .npz, read without pickle (npz.read_npz) and checked."""
    try:
        arrays = read_npz(path)
    except ValueError as err:
        raise ValueError(f"--data {path}: {err}") from None
    missing = {"x", "y"} - set(arrays)
    if missing:
        raise ValueError(f"--data {path}: needs arrays x and y, missing {', '.join(sorted(missing))}")
    x, y = as_points(arrays["x"], f"--data {path}: x").astype(np.float64), arrays["y"]
    if len(x) == 0:
        raise ValueError(f"--data {path}: x must hold at least one point")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError(f"--data {path}: y must be {len(x)} integer labels >= 0 (one per row of x), "
                         f"got shape {y.shape} and dtype {y.dtype}")
    num_labels = int(y.max()) + 1
    if len(np.unique(y)) != num_labels:
        raise ValueError(f"--data {path}: y must use every label 0..{num_labels - 1}")
    return Data(os.path.basename(path), x, y.astype(np.int64), num_labels, None)
