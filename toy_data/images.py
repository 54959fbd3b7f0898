"""Tiny labelled images: 8 x 8 grayscale strokes (bars, diagonals, square, plus, cross) and a judge.

    >>> import numpy as np
    >>> from toy_data import images
    >>> x, y, attrs = images.sample(500, np.random.default_rng(0), return_attributes=True)
    >>> x.shape, y.shape, sorted(attrs)                 # (500, 64), (500,), attribute names
    >>> images.judge(x)                                 # labels by template matching

Pixels lie in [-1, 1]: background -1, strokes +1 at full brightness. Images are flattened row by
row to D = SIZE * SIZE = 64 (docs/architecture.md, "Arrays"); ``x.reshape(-1, 8, 8)`` shows them.

Classes. Each class is a stroke mask of thickness t in {1, 2} drawn in a small bounding box of
h x w pixels; with L = LENGTH = 6 and (i, j) the (row, column) inside the box, pixel (i, j) is on iff

    0 horizontal bar    box (t, L)           always
    1 vertical bar      box (L, t)           always
    2 diagonal          box (L, L + t - 1)   0 <= j - i < t               (top left to bottom right)
    3 anti-diagonal     box (L, L + t - 1)   0 <= (L + t - 2 - j) - i < t (the diagonal mirrored)
    4 square outline    box (L, L)           min(i, j, L - 1 - i, L - 1 - j) < t
    5 plus sign         box (4 + t, 4 + t)   2 <= i < 2 + t  or  2 <= j < 2 + t
    6 diagonal cross    box (L, L + t - 1)   the diagonal or the anti-diagonal

The box's top-left corner sits at (row, col), any offset keeping it inside the image:
row in 0..SIZE - h, col in 0..SIZE - w. These masks at every allowed offset form the template bank
(``templates()``), which both ``sample`` and ``judge`` use.

This module is not in the ``toy_data`` registry: the registry's sets are 2D points of unit scale,
and every registry-wide test and the CLI assume so.
"""
import numpy as np

from refdiff.arrays import as_count, as_points, as_real, check_rng
from refdiff.labels import as_labels

SIZE = 8  # images are SIZE x SIZE, flattened to SIZE * SIZE pixels
LENGTH = 6  # L, the length of every stroke
THICKNESSES = (1, 2)
BRIGHTNESS = (0.6, 1.0)  # stroke brightness b ~ U(0.6, 1); the stroke pixel value is 2 b - 1
NOISE_STD = 0.05  # pixel noise, before clipping to [-1, 1]
NO_MATCH = -1  # judge's label for an image that matches no template well enough
MIN_SCORE = 0.7  # judge's default min_score (a Pearson correlation); see judge() for why
MIN_CONTRAST = 0.5  # judge's default min_contrast (fitted stroke minus background); see judge()

_L = LENGTH


def _slanted_box(t):
    """The (h, w) box of the diagonal, anti-diagonal and cross of thickness t: (L, L + t - 1)."""
    return _L, _L + t - 1


def _diagonal(i, j, t):
    """The band 0 <= j - i < t, top left to bottom right."""
    return (0 <= j - i) & (j - i < t)


def _anti_diagonal(i, j, t):
    """The diagonal mirrored left to right inside its box: column j -> L + t - 2 - j."""
    return _diagonal(i, _L + t - 2 - j, t)


def _band(v, t):
    """The plus sign's arm: 2 <= v < 2 + t, centred in a box of size 4 + t."""
    return (2 <= v) & (v < 2 + t)


def _everywhere(i, j, t):
    """The whole box (a bar is its own bounding box)."""
    return np.ones_like(i, dtype=bool)


# One row a class: (name, box (h, w) of thickness t, pixel predicate on box coordinates (i, j)).
_SHAPES = (
    ("horizontal bar", lambda t: (t, _L), _everywhere),
    ("vertical bar", lambda t: (_L, t), _everywhere),
    ("diagonal", _slanted_box, _diagonal),
    ("anti-diagonal", _slanted_box, _anti_diagonal),
    ("square outline", lambda t: (_L, _L),
     lambda i, j, t: np.minimum.reduce([i, j, _L - 1 - i, _L - 1 - j]) < t),
    ("plus sign", lambda t: (4 + t, 4 + t), lambda i, j, t: _band(i, t) | _band(j, t)),
    ("diagonal cross", _slanted_box, lambda i, j, t: _diagonal(i, j, t) | _anti_diagonal(i, j, t)),
)
CLASS_NAMES = tuple(name for name, _, _ in _SHAPES)
NUM_CLASSES = len(CLASS_NAMES)
_BOXES = np.array([[box(t) for t in THICKNESSES] for _, box, _ in _SHAPES])  # (K, 2, 2): (h, w) per class, t


def _build_bank():
    """Every class x thickness x allowed offset: masks bool (M, 64) and int64 (M,) attributes.

    Templates are ordered by class, then thickness, then row, then column, so each class and each
    (class, thickness) group is a contiguous block.
    """
    masks, attrs = [], []
    for label, (_, box, on) in enumerate(_SHAPES):
        for t in THICKNESSES:
            h, w = box(t)
            shape = on(*np.indices((h, w)), t)  # (h, w) bool
            for row in range(SIZE - h + 1):
                for col in range(SIZE - w + 1):
                    image = np.zeros((SIZE, SIZE), bool)
                    image[row:row + h, col:col + w] = shape
                    masks.append(image.ravel())
                    attrs.append((label, t, row, col))
    labels, thickness, rows, cols = np.array(attrs, dtype=np.int64).T
    return np.array(masks), {"label": labels, "thickness": thickness, "row": rows, "col": cols}


_MASKS, _ATTRS = _build_bank()  # (M, 64) bool; dict of (M,) int64
_GROUP = _ATTRS["label"] * len(THICKNESSES) + _ATTRS["thickness"] - 1  # (M,) (class, t) group id
_GROUP_START = np.searchsorted(_GROUP, np.arange(NUM_CLASSES * len(THICKNESSES)))  # (K * 2,)
_GROUP_COUNT = np.bincount(_GROUP)  # (K * 2,) allowed offsets of each group
_CLASS_START = np.searchsorted(_ATTRS["label"], np.arange(NUM_CLASSES))  # (K,)
_centred = _MASKS - _MASKS.mean(axis=1, keepdims=True)
_BANK_NORM = np.linalg.norm(_centred, axis=1)  # (M,) ||m - mean(m)||
_UNIT_BANK = _centred / _BANK_NORM[:, None]  # (M, 64), v_m: rows of unit norm and mean 0


def templates():
    """The template bank: every class's clean mask at every thickness and allowed offset.

    Returns
    -------
    masks : float64 array (M, 64) of 0 (background) and 1 (stroke), one template a row
    attributes : dict of int64 arrays (M,): "label", "thickness", "row", "col" (the box's top-left)
    """
    return _MASKS.astype(np.float64), {key: value.copy() for key, value in _ATTRS.items()}


def sample(n, rng, y=None, return_attributes=False):
    """Draw n labelled 8 x 8 stroke images with random offset, thickness and brightness.

    Parameters
    ----------
    n : int >= 0, the number of images
    rng : numpy.random.Generator, the only source of randomness
    y : None, int or int array (n,) in 0..NUM_CLASSES - 1
        The classes to draw; None draws each label uniformly from 0..NUM_CLASSES - 1.
    return_attributes : bool, also return the attributes each image was drawn with

    Returns
    -------
    x : float64 array (n, 64) in [-1, 1]; y : int64 array (n,)
    attributes (only if return_attributes) : dict of arrays (n,): "thickness" (int64, 1 or 2),
        "row", "col" (int64, top-left of the shape's box) and "intensity" (float64, b in [0.6, 1))

    Construction, per image: y ~ U{0..K-1} unless given; t ~ U{1, 2}; (row, col) uniform over the
    offsets keeping the box inside the image; b ~ U(0.6, 1); then with m the 0/1 mask of the shape
    at that offset and z ~ N(0, I_64), x = clip(-1 + 2 b m + NOISE_STD z, -1, 1).
    """
    n = as_count(n)
    check_rng(rng)
    if not isinstance(return_attributes, bool):
        raise ValueError(f"return_attributes must be True or False, got {return_attributes!r}")
    if y is None:
        y = rng.integers(NUM_CLASSES, size=n, dtype=np.int64)  # (n,)
    else:
        y = as_labels(y, n, NUM_CLASSES, allow_null=False)
    thickness = rng.choice(np.array(THICKNESSES, dtype=np.int64), size=n)  # (n,)
    group = y * len(THICKNESSES) + thickness - 1
    index = _GROUP_START[group] + rng.integers(0, _GROUP_COUNT[group])  # (n,) a template each
    intensity = rng.uniform(*BRIGHTNESS, size=n)  # (n,)
    noise = NOISE_STD * rng.standard_normal((n, SIZE * SIZE))  # (n, 64)
    x = np.clip(-1.0 + 2.0 * intensity[:, None] * _MASKS[index] + noise, -1.0, 1.0)
    if not return_attributes:
        return x, y
    return x, y, {"thickness": thickness, "row": _ATTRS["row"][index], "col": _ATTRS["col"][index],
                  "intensity": intensity}


def _correlations(x):
    """Pearson correlation of each image with each template, and each image's centred norm.

    Returns corr, float64 (N, M), and ||x - mean(x)||, float64 (N,); a constant image has
    u = 0 below, so it correlates 0 with every template.
    """
    x = as_points(x, "x", dim=SIZE * SIZE).astype(np.float64)
    centred = x - x.mean(axis=1, keepdims=True)  # (N, 64)
    norm = np.linalg.norm(centred, axis=1, keepdims=True)  # (N, 1)
    unit = np.divide(centred, norm, out=np.zeros_like(centred), where=norm > 0)  # u, (N, 64)
    return unit @ _UNIT_BANK.T, norm[:, 0]  # one matmul: (N, 64) @ (64, M)


def judge_scores(x):
    """Per class, the best correlation between each image and any template of that class.

    Parameters
    ----------
    x : array (N, 64), finite; any scale (the score is invariant to x -> a + c x for c > 0)

    Returns
    -------
    scores : float64 array (N, NUM_CLASSES) in [-1, 1]; 0 for a constant image

    Construction: with u = (x - mean(x)) / ||x - mean(x)|| and v_m the same for template m,
    score_k(x) = max over the templates m of class k of <u, v_m>, the Pearson correlation of the
    image with the template. Equivalently, fitting x ~ a + c m by least squares leaves the residual
    (1 - corr^2) ||x - mean(x)||^2, and corr > 0 means strokes brighter than the background.
    """
    corr, _ = _correlations(x)
    return np.maximum.reduceat(corr, _CLASS_START, axis=1)  # (N, K): max over each class's block


def judge(x, min_score=MIN_SCORE, min_contrast=MIN_CONTRAST):
    """Label images by template matching: the class of the best-correlated template, or NO_MATCH.

    Parameters
    ----------
    x : array (N, 64), finite
    min_score : float or None
        NO_MATCH where the best correlation (``judge_scores(x).max(axis=1)``) is below it.
    min_contrast : float or None
        NO_MATCH where the stroke amplitude c fitted to the best template is below it.
        None switches a check off; with both None the label is always the argmax.

    Returns
    -------
    labels : int64 array (N,), the class of m* = argmax_m corr(x, m), or NO_MATCH (-1) if
        corr(x, m*) < min_score or c < min_contrast, where c = corr(x, m*) ||x - mean(x)|| /
        ||m* - mean(m*)|| is the least-squares c of x ~ a + c m*. A constant image correlates 0
        with every template and has c = 0: NO_MATCH by default, label 0 with both checks off.

    Why the defaults. Images from ``sample`` score above 0.95 and have c = 2 b >= 1.2 (the noise
    std 0.05 is small next to that contrast). Pure noise x ~ N(0, I) has, for each template,
    r^2 ~ Beta(1/2, 31) (a coordinate of a uniform direction in the 63-dimensional centred
    space), so P(r > 0.7) ~ 6e-11 per template and < 2e-8 for any of the M templates. A blank
    background with the pixel noise of ``sample`` can correlate above 0.7 with a thin template
    (about 1 in 10^4 images), but its contrast c stays below 0.1, far under 0.5. Inverted images
    (dark strokes on white) correlate negatively, so they are NO_MATCH too.
    """
    return judge_attributes(x, min_score, min_contrast)["label"]


def judge_attributes(x, min_score=MIN_SCORE, min_contrast=MIN_CONTRAST):
    """The attributes of the best-correlated template m* of each image, as ``judge`` picks it.

    Parameters as ``judge``. Returns a dict of int64 arrays (N,): "label", "thickness", "row" and
    "col" of m* (the attributes ``sample`` draws), each NO_MATCH (-1) where ``judge`` rejects the
    image. ``judge(x)`` is this dict's "label".
    """
    min_score = as_real(min_score, "min_score", optional=True)
    min_contrast = as_real(min_contrast, "min_contrast", optional=True)
    corr, norm = _correlations(x)  # (N, M), (N,)
    best = np.argmax(corr, axis=1)  # (N,) m*
    score = corr[np.arange(len(best)), best]
    reject = np.zeros(len(best), dtype=bool)
    if min_score is not None:
        reject |= score < min_score
    if min_contrast is not None:
        reject |= score * norm / _BANK_NORM[best] < min_contrast  # c < min_contrast
    return {key: np.where(reject, NO_MATCH, _ATTRS[key][best]) for key in ("label", "thickness", "row", "col")}


def box_centre(y, thickness, row, col):
    """The centre (row, column) of the shape's h x w box, in pixel coordinates 0..SIZE - 1.

    centre = (row + (h - 1) / 2, col + (w - 1) / 2), with (h, w) the box of class y at that
    thickness (module docstring); the image's own centre is ((SIZE - 1) / 2, (SIZE - 1) / 2) = (3.5, 3.5).
    Every shape is symmetric about its box's centre, so this is also the centroid of its stroke.

    Parameters
    ----------
    y, thickness, row, col : int arrays (N,), as ``sample(..., return_attributes=True)`` or
        ``judge_attributes`` give them (no NO_MATCH entries)

    Returns
    -------
    centre_row, centre_col : float64 arrays (N,)
    """
    y = as_labels(y, np.size(y), NUM_CLASSES, allow_null=False)
    thickness = np.asarray(thickness)
    if not np.all(np.isin(thickness, THICKNESSES)):
        raise ValueError(f"thickness must hold values in {THICKNESSES}, got {np.unique(thickness)}")
    h, w = _BOXES[y, thickness - 1].T  # (N,), (N,)
    return np.asarray(row) + (h - 1) / 2, np.asarray(col) + (w - 1) / 2
