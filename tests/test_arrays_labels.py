"""Tests for refdiff/arrays.py and refdiff/labels.py: the input checks every module relies on."""
import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff.arrays import as_count, as_int_batch, as_points, as_timesteps, check_rng
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
