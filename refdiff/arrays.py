"""Input checks shared by every module: batch-first points, timesteps, counts, real scalars and
the floating dtypes (docs/notation.md; docs/architecture.md, "Conventions"); and ``row_max`` and
``log_sum_exp``, the reductions over a row (the networks' logits) and over a column (the oracle's
components, one row per component)."""
import numbers

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval, isbox

DTYPES = {"float64": np.float64, "float32": np.float32}  # the precisions a model or a sampler may use
INT_KINDS = "iu"  # numpy's dtype kinds of integers, signed and unsigned (not bool, "b")
REAL_KINDS = INT_KINDS + "f"  # and of real numbers: integers and floats


def numpy_for(*values):
    """autograd.numpy where any of ``values`` is an autograd box (a gradient is being traced through
    it), else plain numpy: autograd's wrapper costs a few microseconds a call even on plain arrays,
    11-13% of an oracle eps call at 64 points (docs/learned.md, "Speed")."""
    return anp if any(isbox(v) for v in values) else np


def as_points(x, name="x", dim=None):
    """Return x as a finite floating array of shape (N, D), raising ValueError otherwise.

    Integer input becomes float64; float32 stays float32 (docs/architecture.md, "Precision"). An autograd
    box is checked through its value and returned as it is, so gradients flow through every
    function that validates its input this way.
    """
    if getval(x) is not x:
        as_points(getval(x), name, dim)
        return x
    arr = _asarray(x, name, "a numeric array of shape (N, D)")
    if arr.dtype.kind not in REAL_KINDS:
        raise ValueError(f"{name} must be a numeric array of shape (N, D), got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} must have D = {dim} columns, got shape {arr.shape}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return arr


def as_int_batch(v, n, name, expected):
    """Return an int or integer array as int64 of shape (n,), an int being broadcast to every row.

    Whole-valued floats (labels read back from a file) are accepted; anything else raises a
    ValueError naming ``name`` and ``expected``.
    """
    arr = _asarray(v, name, expected)
    kind = arr.dtype.kind
    integral = kind in INT_KINDS or (kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all())
    if not integral:
        raise ValueError(f"{name} must be {expected}, got {arr if arr.ndim == 0 else arr.dtype}")
    if arr.dtype != np.int64:
        as_int64 = arr.astype(np.int64)
        if not (as_int64 == arr).all():  # a value beyond int64 would wrap around
            raise ValueError(f"{name} must be {expected}, got a value outside the int64 range")
        arr = as_int64
    if arr.ndim == 0:
        arr = np.full(n, int(arr), dtype=np.int64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be an int or an array of shape ({n},), got shape {arr.shape}")
    return arr


def as_timesteps(t, n, T, name="t", low=1):
    """Return integer timesteps as an int64 array of shape (n,), each in low..T."""
    arr = as_int_batch(t, n, name, f"an integer timestep in {low}..{T}")
    bad = arr[(arr < low) | (arr > T)]
    if bad.size:
        raise ValueError(f"{name} must be in {low}..{T}, got {bad[0]}")
    return arr


def as_times(t, n, T, name="t", low=1):
    """Return times as shape (n,): int64 for integer (or whole-valued) input, else float64.

    Integer timesteps go through ``as_timesteps`` unchanged, so integer callers see exactly the
    old behaviour; real times (continuous time, docs/schedule.md (S6)) must be finite and in
    [low, T]. A Python or numpy scalar is broadcast to every row.
    """
    arr = _asarray(t, name, f"a timestep in [{low}, {T}]")
    if arr.dtype.kind in INT_KINDS:
        return as_timesteps(arr, n, T, name, low)
    if arr.dtype.kind != "f":
        raise ValueError(f"{name} must be a real or integer timestep in [{low}, {T}], got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    if (arr == np.round(arr)).all():
        return as_timesteps(arr, n, T, name, low)
    arr = arr.astype(np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a number or an array of shape ({n},), got shape {arr.shape}")
    bad = arr[(arr < low) | (arr > T)]
    if bad.size:
        raise ValueError(f"{name} must be in [{low}, {T}], got {bad[0]}")
    return arr


def alpha_bar_of(sched, t):
    """sched.alpha_bar[t] for int64 t (bit-identical table lookup), sched.alpha_bar_at(t) for real t (eq. (S6))."""
    return sched.alpha_bar[t] if t.dtype.kind in INT_KINDS else sched.alpha_bar_at(t)


def as_count(n, name="n", low=0):
    """Return n as an int, raising ValueError unless it is an integer >= low (a bool is not)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {n!r}")
    return int(n)


def as_real(value, name, low=None, high=None, above=None, below=None, optional=False):
    """Return value as a float, raising ValueError naming ``name`` unless it is a finite real number
    within the bounds given: low <= value <= high, above < value < below (each optional). With
    ``optional``, None is allowed too and returned as it is.

    A real number is an int, a float or a numpy scalar of either, not a bool, a string or an array.
    The message states the range: "lr must be a finite number > 0, got 'x'", "p_uncond must be a
    number in [0, 1], got nan", "min_score must be None or a finite number, got inf".
    """
    if optional and value is None:
        return None
    number = _float_or_nan(value)  # the bounds are compared with value itself: exact for ints and Fractions
    if not (np.isfinite(number) and (low is None or value >= low) and (high is None or value <= high)
            and (above is None or value > above) and (below is None or value < below)):
        allowed = ("None or " if optional else "") + _range_text(low, high, above, below)
        raise ValueError(f"{name} must be {allowed}, got {_shown(value)}")
    return number


def is_real(value):
    """Whether ``np.asarray(value)`` holds real numbers: an integer or floating dtype, not bool, str,
    object or complex (``np.asarray("1", dtype=float)`` would quietly read a string as a number)."""
    try:
        return np.asarray(value).dtype.kind in REAL_KINDS
    except (TypeError, ValueError):  # ragged
        return False


def _shown(value):
    """repr(value) for a message, or a description of an int too long for Python to print."""
    try:
        return repr(value)
    except ValueError:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"


def _float_or_nan(value):
    """float(value) for a real number (an int beyond float64's range is inf), NaN for anything else."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return np.nan
    try:
        return float(value)
    except OverflowError:
        return np.inf


def _range_text(low, high, above, below):
    """'a finite number', 'a finite number > 0' or 'a number in [0, 1)' for the bounds of ``as_real``."""
    lower = ("[", ">=", low) if low is not None else ("(", ">", above) if above is not None else None
    upper = ("]", "<=", high) if high is not None else (")", "<", below) if below is not None else None
    if lower and upper:
        return f"a number in {lower[0]}{lower[2]:g}, {upper[2]:g}{upper[0]}"
    side = lower or upper
    return "a finite number" + (f" {side[1]} {side[2]:g}" if side else "")


def check_rng(rng, name="rng"):
    """Return rng, raising ValueError unless it is a numpy.random.Generator (docs/architecture.md, "Randomness")."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{name} must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def row_max(values):
    """The maximum of each row of a 2-D array, shape (N, 1); NaN where a row holds one, like np.max.

    NumPy reduces a short trailing axis slowly: np.max over 2 columns of 40,000 rows took 1.4 ms,
    a running np.maximum over the columns 0.03 ms (8 columns: 0.87 against 0.08; docs/learned.md,
    "Speed"). Past about 32 columns np.max is the faster again and is used.
    """
    if values.shape[1] > 32:
        return np.max(values, axis=1, keepdims=True)
    out = values[:, 0].copy()
    for k in range(1, values.shape[1]):
        np.maximum(out, values[:, k], out=out)
    return out[:, None]


def log_sum_exp(values):
    """log sum_k exp(values[k]) of each column of a 2-D array (K, N), shape (1, N), differentiable by
    autograd.

    The column maximum m is subtracted first as a constant: log sum exp(v) = m + log sum exp(v - m)
    for any m, so nothing overflows and the gradient, softmax(v), does not depend on m. A column of
    -inf gives -inf (m is then taken as 0). Down columns numpy reduces at full speed (``row_max``).
    """
    m = np.max(getval(values), axis=0, keepdims=True)
    m[~np.isfinite(m)] = 0
    with np.errstate(divide="ignore"):
        return m + anp.log(anp.sum(anp.exp(values - m), axis=0, keepdims=True))


def _asarray(value, name, expected):
    """np.asarray, with a ragged or otherwise unconvertible input reported as a ValueError naming ``name``."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name} must be {expected}, got something numpy cannot convert ({err})") from None


def as_observation(A, y_obs, dim=None):
    """A linear observation y_obs = A x (+ noise): A as a finite float (M, D) array (D = dim if given)
    and y_obs as a finite (M,) one, each named when it is not (docs/inverse.md)."""
    shape = f"(M, {'D' if dim is None else dim})"
    if not is_real(A) or np.ndim(A) != 2 or (dim is not None and np.shape(A)[1] != dim) or not np.all(np.isfinite(A)):
        raise ValueError(f"A must be a finite array of shape {shape}, got {np.shape(A)}")
    A = np.asarray(A, dtype=np.float64)
    if not is_real(y_obs) or np.shape(y_obs) != (A.shape[0],) or not np.all(np.isfinite(y_obs)):
        raise ValueError(f"y_obs must be a finite array of shape ({A.shape[0]},) (one value per row of A), "
                         f"got {np.shape(y_obs)}")
    return A, np.asarray(y_obs, dtype=np.float64)
