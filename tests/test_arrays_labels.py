"""Tests for refdiff/arrays.py and refdiff/labels.py: the input checks every module relies on."""
import math
import re
from fractions import Fraction

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff.arrays import as_count, as_int_batch, as_points, as_times, as_timesteps, check_rng
from refdiff.arrays import as_real, row_max
from refdiff.labels import NULL_LABEL, as_labels
from strategies import points, shapes

INT64 = st.integers(-2**63, 2**63 - 1)
NS = st.integers(1, 50)


# ---- as_points ------------------------------------------------------------------------------

@given(shapes(), st.data())
def test_as_points_keeps_floats_and_makes_ints_float64(shape, data):
    x = data.draw(points(*shape))
    np.testing.assert_array_equal(as_points(x), x)
    assert as_points(x).dtype == np.float64
    assert as_points(x.astype(np.float32)).dtype == np.float32
    ints = np.round(x).astype(np.int64)
    got = as_points(ints)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, ints)  # |ints| <= 1e8: exact in float64
    assert as_points(ints.astype(np.int32)).dtype == np.float64  # |x| <= 1e8 < 2^31
    np.testing.assert_array_equal(as_points(x.tolist(), dim=shape[1]), x)


def test_as_points_lets_gradients_through():
    x = np.arange(6.0).reshape(3, 2)
    grad = autograd.grad(lambda v: anp.sum(as_points(v) ** 2))(x)
    np.testing.assert_array_equal(grad, 2 * x)


def test_as_points_checks_the_value_inside_an_autograd_box():
    def f(v):
        return anp.sum(as_points(v * np.nan))
    with pytest.raises(ValueError, match="x must be finite"):
        autograd.grad(f)(np.ones((2, 2)))


@pytest.mark.parametrize("bad", [
    np.ones(3), np.ones((2, 2, 2)), 1.0, np.ones((2, 2), bool), np.full((2, 2), "a"),
    np.ones((2, 2), complex), np.array([[1, None]], dtype=object), [[1.0, np.nan]],
    [[np.inf, 0.0]], [[0.0, -np.inf]], [[1.0], [2.0, 3.0]]])
def test_as_points_errors_name_the_argument(bad):
    with pytest.raises(ValueError, match="xt must"):
        as_points(bad, name="xt")


def test_as_points_checks_the_dimension():
    assert as_points(np.ones((4, 3)), dim=3).shape == (4, 3)
    with pytest.raises(ValueError, match=r"x0 must have D = 2 columns, got shape \(4, 3\)"):
        as_points(np.ones((4, 3)), name="x0", dim=2)


# ---- as_int_batch, as_timesteps -------------------------------------------------------------

@given(INT64, NS)
def test_an_int_is_broadcast_to_every_row(v, n):
    for value in (v, np.int64(v), np.array(v)):
        got = as_int_batch(value, n, "y", "an int")
        assert got.dtype == np.int64 and got.shape == (n,)
        assert np.all(got == v)


@given(st.lists(st.integers(-2**31, 2**31 - 1), min_size=1, max_size=50))
def test_int_arrays_become_int64(values):
    for arr in (values, np.array(values, np.int32), np.array(values, np.int64)):
        got = as_int_batch(arr, len(values), "y", "ints")
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, values)


@given(st.lists(st.integers(-2**53, 2**53), min_size=1, max_size=50))
def test_whole_floats_are_accepted(values):
    # Integers up to 2^53 are exact in float64, so the float round trip is exact.
    got = as_int_batch(np.array(values, dtype=np.float64), len(values), "y", "ints")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, values)
    np.testing.assert_array_equal(as_int_batch(3.0, 2, "y", "ints"), [3, 3])


@pytest.mark.parametrize("bad", [
    2.5, [1.0, 2.5], np.nan, [1.0, np.inf], True, np.array([True, False]), "3", ["1", "2"],
    [1, 2, 3], [[1, 2]], np.ones((2, 1), int), [], None, 2**64, -2**63 - 1])
def test_as_int_batch_errors_name_the_argument(bad):
    with pytest.raises(ValueError, match="label"):
        as_int_batch(bad, 2, "label", "an integer class label")


def test_as_int_batch_message_says_what_is_expected():
    with pytest.raises(ValueError, match="label must be an integer class label, got 2.5"):
        as_int_batch(2.5, 2, "label", "an integer class label")


@given(st.integers(1, 2000), NS, st.data())
def test_as_timesteps_accepts_exactly_low_to_T(T, n, data):
    low = data.draw(st.sampled_from([0, 1]))
    t = data.draw(st.integers(low, T))
    np.testing.assert_array_equal(as_timesteps(t, n, T, low=low), np.full(n, t))
    rows = np.array(data.draw(st.lists(st.integers(low, T), min_size=n, max_size=n)))
    np.testing.assert_array_equal(as_timesteps(rows, n, T, low=low), rows)
    for bad in (low - 1, T + 1):
        with pytest.raises(ValueError, match=f"step must be in {low}..{T}, got {bad}"):
            as_timesteps(bad, n, T, name="step", low=low)
        with pytest.raises(ValueError, match=f"step must be in {low}..{T}"):
            as_timesteps(np.concatenate([rows[:-1], [bad]]), n, T, name="step", low=low)


INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


@given(st.integers(1, 2000), NS, st.sampled_from(INT_DTYPES + [np.float32, np.float64]), st.data())
def test_as_times_reads_every_integer_dtype_and_whole_floats_as_timesteps(T, n, dtype, data):
    # Integer and whole-valued input is a timestep (int64, exactly as_timesteps); other reals stay real.
    t = np.array(data.draw(st.lists(st.integers(1, min(T, 127)), min_size=n, max_size=n)), dtype=dtype)
    got = as_times(t, n, T)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, as_timesteps(t.astype(np.int64), n, T))
    if T > 1:
        real = np.full(n, 1.5)
        assert as_times(real, n, T).dtype == np.float64 and as_times(1.5, n, T).shape == (n,)


@pytest.mark.parametrize("bad", [True, np.ones(2, bool), "3", np.ones(2, complex), np.nan, [1.5, np.inf], 0.5, 1000.5])
def test_as_times_errors_name_the_argument(bad):
    with pytest.raises(ValueError, match=r"^t must be"):
        as_times(bad, 2, 1000)


@pytest.mark.parametrize("bad", [2.5, True, "3", np.nan, [1, 2, 3], None, 2**64 - 1])
def test_as_timesteps_errors_name_the_argument(bad):
    with pytest.raises(ValueError, match=r"\bt\b"):
        as_timesteps(bad, 2, 1000)


# ---- as_labels ------------------------------------------------------------------------------

@given(NS, st.integers(1, 100), st.data())
def test_as_labels_accepts_0_to_K_minus_1_and_the_null_label(n, K, data):
    assert as_labels(None, n, K) is None
    y = data.draw(st.integers(0, K - 1))
    np.testing.assert_array_equal(as_labels(y, n, K, allow_null=False), np.full(n, y))
    # one label for every row (the shortcut that checks it once) is the array of it, as int64
    for one in (y, np.int32(y), np.uint8(y) if y < 256 else y, NULL_LABEL):
        got = as_labels(one, n, K)
        assert got.dtype == np.int64 and np.array_equal(got, as_labels(np.full(n, int(one)), n, K))
    rows = data.draw(st.lists(st.integers(-1, K - 1), min_size=n, max_size=n))
    got = as_labels(np.array(rows), n, K)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, rows)
    np.testing.assert_array_equal(as_labels(np.array(rows, dtype=float), n, K), rows)


def test_null_label_is_minus_one():
    assert NULL_LABEL == -1
    np.testing.assert_array_equal(as_labels(NULL_LABEL, 3, 5), [-1, -1, -1])


@pytest.mark.parametrize("y, allow_null, match", [
    (-1, False, r"label must be in 0\.\.4, got -1"),
    ([0, -1, 2], False, r"label must be in 0\.\.4, got -1"),
    (-2, True, r"label must be in 0\.\.4 or NULL_LABEL \(-1\), got -2"),
    (5, True, "got 5"), ([0, 5, 1], False, "got 5"), (1.5, True, "label"), (True, True, "label"),
    ([0, 1], True, r"label must be an int or an array of shape \(3,\)"), ("1", True, "label"),
    (2**64 - 1, True, "label"), (np.uint64(2**64 - 1), True, "label")])
def test_as_labels_errors(y, allow_null, match):
    # 2^64 - 1 is not a label; it must not wrap around to -1 (NULL_LABEL) in int64.
    with pytest.raises(ValueError, match=match):
        as_labels(y, 3, 5, allow_null=allow_null, name="label")


# ---- as_count, check_rng --------------------------------------------------------------------

@given(st.integers(0, 2**62))
def test_as_count(n):
    assert as_count(n) == n and type(as_count(np.int64(n))) is int
    with pytest.raises(ValueError, match=r"samples must be an integer >= 1"):
        as_count(n - 2**62 - 1, name="samples", low=1)


@pytest.mark.parametrize("bad", [True, 2.0, "3", None, -1])
def test_as_count_errors(bad):
    with pytest.raises(ValueError, match="num must be an integer >= 0"):
        as_count(bad, name="num")


def test_check_rng():
    rng = np.random.default_rng(0)
    assert check_rng(rng) is rng
    for bad in (0, None, np.random.RandomState(0), np.random):
        with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
            check_rng(bad)


# ---- as_real --------------------------------------------------------------------------------

# float(n) of an int n is finite exactly when |n| < 2^1024 - 2^970: from there on it rounds (half
# to even) to 2^1024, beyond float64's largest value (2 - 2^-52) 2^1023, and overflows.
FLOAT_INT_LIMIT = 2**1024 - 2**970
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
FLOATS = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)  # +-1.8e308 down to 5e-324, +-0
REALS = st.one_of(
    FLOATS,
    st.integers(-FLOAT_INT_LIMIT + 1, FLOAT_INT_LIMIT - 1),
    st.integers(-2**63, 2**63 - 1).map(np.int64),
    st.integers(0, 2**64 - 1).map(np.uint64),
    FLOATS.map(np.float64),
    st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True).map(np.float32),
    st.builds(Fraction, st.integers(-10**300, 10**300), st.integers(1, 10**320)),  # 1e300 down to 1e-320
)
OPS = {"low": ">=", "high": "<=", "above": ">", "below": "<"}


def same_float(a, b):
    """Equal as float64 bit patterns (so -0.0 differs from 0.0)."""
    return type(a) is float and a.hex() == b.hex()


def message(name, allowed, value):
    """as_real's message, as a full-match pattern."""
    return f"^{re.escape(f'{name} must be {allowed}, got {value!r}')}$"


@given(REALS, NAMES)
def test_as_real_returns_the_float_of_a_real_number(value, name):
    assert same_float(as_real(value, name), float(value)), (value, as_real(value, name))
    assert same_float(as_real(value, name, optional=True), float(value))


@given(FLOATS, FLOATS, st.sampled_from(sorted(OPS)), NAMES)
def test_as_real_each_bound_alone(value, bound, kind, name):
    inside = {"low": value >= bound, "high": value <= bound, "above": value > bound, "below": value < bound}[kind]
    if inside:
        assert same_float(as_real(value, name, **{kind: bound}), value)
    else:
        with pytest.raises(ValueError, match=message(name, f"a finite number {OPS[kind]} {bound:g}", value)):
            as_real(value, name, **{kind: bound})


@given(FLOATS, NAMES)
def test_as_real_at_a_bound_exactly_and_one_ulp_either_side(bound, name):
    """low and high are inclusive, above and below exclusive: at the bound itself and at its
    floating-point neighbours."""
    down, up = np.nextafter(bound, -np.inf), np.nextafter(bound, np.inf)
    for kind, accepts in {"low": (False, True, True), "high": (True, True, False),
                          "above": (False, False, True), "below": (True, False, False)}.items():
        for value, ok in zip((float(down), bound, float(up)), accepts):
            if not math.isfinite(value):
                continue
            if ok:
                assert same_float(as_real(value, name, **{kind: bound}), value), (kind, bound, value)
            else:
                with pytest.raises(ValueError, match=message(name, f"a finite number {OPS[kind]} {bound:g}", value)):
                    as_real(value, name, **{kind: bound})


@given(FLOATS, st.lists(FLOATS, min_size=2, max_size=2).map(sorted), st.sampled_from(["low", "above"]),
       st.sampled_from(["high", "below"]), NAMES)
def test_as_real_two_bounds(value, bounds, left, right, name):
    lo, hi = bounds
    inside = (value >= lo if left == "low" else value > lo) and (value <= hi if right == "high" else value < hi)
    kwargs = {left: lo, right: hi}
    if inside:
        assert same_float(as_real(value, name, **kwargs), value)
    else:
        brackets = ("[" if left == "low" else "(") + f"{lo:g}, {hi:g}" + ("]" if right == "high" else ")")
        with pytest.raises(ValueError, match=message(name, f"a number in {brackets}", value)):
            as_real(value, name, **kwargs)


@pytest.mark.parametrize("bad", [
    True, False, np.True_, "1.0", "", "nan", None, [1.0], (1.0,), {1.0}, np.array(1.0), np.array([1.0]),
    1 + 0j, 1j, np.complex128(1), float("nan"), float("inf"), -float("inf"), np.float32("nan"), np.float64("inf"),
    -np.float32("inf"), FLOAT_INT_LIMIT, -FLOAT_INT_LIMIT, 2**5000, np.float16("inf"),
    Fraction(10**400), Fraction(-10**400, 3), object()],
    ids=lambda bad: type(bad).__name__ + ":" + repr(bad)[:20])
def test_as_real_refuses_what_is_not_a_finite_real_naming_the_argument(bad):
    with pytest.raises(ValueError, match=message("lr", "a finite number", bad)):
        as_real(bad, "lr")
    with pytest.raises(ValueError, match=message("lr", "a finite number > 0", bad)):
        as_real(bad, "lr", above=0)
    if bad is not None:
        with pytest.raises(ValueError, match=message("lr", "None or a finite number", bad)):
            as_real(bad, "lr", optional=True)


@given(st.one_of(st.integers(FLOAT_INT_LIMIT, 2**1100), st.integers(-2**1100, -FLOAT_INT_LIMIT)), NAMES)
def test_as_real_refuses_ints_beyond_the_float64_range(value, name):
    with pytest.raises(ValueError, match=message(name, "a finite number", value)):
        as_real(value, name)
    nearest = FLOAT_INT_LIMIT - 1 if value > 0 else 1 - FLOAT_INT_LIMIT  # the last int that fits
    assert as_real(nearest, name) == (1 if value > 0 else -1) * np.finfo(np.float64).max


def test_as_real_optional_and_the_documented_messages():
    assert as_real(None, "min_score", optional=True) is None
    assert as_real(None, "min_score", optional=True, low=0, below=1) is None
    for call, text in [
            (lambda: as_real("x", "lr", above=0), "lr must be a finite number > 0, got 'x'"),
            (lambda: as_real(float("nan"), "p_uncond", low=0, high=1), "p_uncond must be a number in [0, 1], got nan"),
            (lambda: as_real(1, "p", low=0, below=1), "p must be a number in [0, 1), got 1"),
            (lambda: as_real(float("inf"), "min_score", optional=True), "min_score must be None or a finite number, got inf"),
            (lambda: as_real(-1, "clip", above=0, optional=True), "clip must be None or a finite number > 0, got -1"),
            (lambda: as_real(None, "scale"), "scale must be a finite number, got None"),
            (lambda: as_real(2.0, "ema", above=0, below=1), "ema must be a number in (0, 1), got 2.0"),
            (lambda: as_real(-2, "kl_weight", low=0), "kl_weight must be a finite number >= 0, got -2"),
            (lambda: as_real(3, "t", high=2.5), "t must be a finite number <= 2.5, got 3"),
            (lambda: as_real(0, "x", below=-1e-300), "x must be a finite number < -1e-300, got 0")]:
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == text, (str(err.value), text)


def test_as_real_names_the_argument_for_an_int_too_long_to_print():
    # repr of an int of more than 4300 digits raises Python's own ValueError; the message describes it instead
    with pytest.raises(ValueError, match="^lr must be a finite number"):
        as_real(10**5000, "lr")


@given(st.integers(1, 3000), st.integers(1, 70), st.integers(0, 2 ** 32 - 1), st.booleans())
def test_row_max_is_numpys_row_maximum_nan_and_inf_included(n, k, seed, float32):
    # Both branches (columns <= 32 and above), any sign, infinities and NaNs placed at random:
    # the maximum is exact, so equality (NaN in a row gives NaN, as np.max).
    rng = np.random.default_rng(seed)
    big = 30 if float32 else 300  # the float32 range ends near 3e38
    v = rng.standard_normal((n, k)) * 10.0 ** rng.integers(-big, big, (n, k))
    v[rng.random((n, k)) < 0.01] = np.nan
    v[rng.random((n, k)) < 0.01] = -np.inf
    v[rng.random((n, k)) < 0.01] = np.inf
    v = v.astype(np.float32) if float32 else v
    got = row_max(v)
    assert got.shape == (n, 1) and got.dtype == v.dtype
    np.testing.assert_array_equal(got, np.max(v, axis=1, keepdims=True))
