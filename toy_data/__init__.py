"""Toy data for refdiff: labelled 2D data sets by name.

    >>> import numpy as np, toy_data
    >>> x, y = toy_data.sample("moons", 500, np.random.default_rng(0))   # (500, 2), (500,)
    >>> gm = toy_data.mixture("three_gaussians")                         # exact oracle

``REGISTRY`` is the single table of data sets; ``names``, ``sample``, ``mixture``, ``num_labels``
and ``describe`` read it. The constructions are in ``toy_data.two_d``.
"""
from types import MappingProxyType
from typing import Callable, NamedTuple

from .two_d import (anisotropic, check_sample_args, checkerboard, circles, moons, ring8, spirals,
                    swiss_roll, three_gaussians, three_overlapping)


class DataSet(NamedTuple):
    """A registry entry.

    ``make`` is ``() -> GaussianMixture`` when ``closed_form``, else ``(n, rng) -> (x, y)``.
    """
    make: Callable
    num_labels: int
    closed_form: bool
    description: str


REGISTRY = MappingProxyType({
    "three_gaussians": DataSet(three_gaussians, 3, True,
                               "3 isotropic Gaussians (std 0.3) on a circle of radius 1.5; "
                               "Ho & Salimans 2022, Fig. 2"),
    "three_overlapping": DataSet(three_overlapping, 3, True,
                                 "3 isotropic Gaussians (std 0.5) on a circle of radius 1, overlapping"),
    "ring8": DataSet(ring8, 8, True, "8 isotropic Gaussians (std 0.2) on a circle of radius 2"),
    "anisotropic": DataSet(anisotropic, 3, True,
                           "4 rotated elongated Gaussians, unequal weights, label 2 owns two"),
    "moons": DataSet(moons, 2, False, "two interleaving half circles, one class each"),
    "circles": DataSet(circles, 2, False, "two concentric circles (radii 1 and 2), one class each"),
    "spirals": DataSet(spirals, 3, False, "three interleaved spiral arms, one class each"),
    "checkerboard": DataSet(checkerboard, 2, False,
                            "uniform on a 4 x 4 board over [-2, 2]^2, label = square colour"),
    "swiss_roll": DataSet(swiss_roll, 3, False,
                          "2D swiss roll, label = which third of the angle range"),
})


def names():
    """All data-set names, sorted; a tuple of str."""
    return tuple(sorted(REGISTRY))


def presets():
    """The names with a closed form (Gaussian-mixture presets), sorted; a tuple of str."""
    return tuple(name for name in names() if REGISTRY[name].closed_form)


def _entry(name):
    """The registry entry of ``name``, raising ValueError listing the valid names."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"name must be one of {', '.join(names())}, got {name!r}")
    return REGISTRY[name]


def mixture(name):
    """The GaussianMixture of a preset; ValueError for a sample-only set (it has no closed form)."""
    entry = _entry(name)
    if not entry.closed_form:
        raise ValueError(f"name {name!r} has no closed form; presets are {', '.join(presets())}")
    return entry.make()


def sample(name, n, rng):
    """Draw n labelled points of data set ``name``.

    Parameters
    ----------
    name : str, one of ``names()``
    n : int >= 0
    rng : numpy.random.Generator

    Returns
    -------
    x : float64 array (n, 2); y : int64 array (n,) in 0..num_labels(name) - 1.
    For a preset this is ``mixture(name).sample(n, rng)``.
    """
    entry = _entry(name)
    check_sample_args(n, rng)
    return entry.make().sample(n, rng) if entry.closed_form else entry.make(n, rng)


def num_labels(name):
    """K, the number of labels of data set ``name`` (labels are 0..K-1)."""
    return _entry(name).num_labels


def describe(name):
    """A one-line description of data set ``name``, for listings."""
    return _entry(name).description


__all__ = ["DataSet", "REGISTRY", "names", "presets", "mixture", "sample", "num_labels", "describe",
           "three_gaussians", "ring8", "anisotropic", "moons", "circles", "spirals", "checkerboard",
           "swiss_roll"]
