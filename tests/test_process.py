"""Tests for refdiff/process.py: every function against its formula written out here (the
posterior by Bayes' rule from precisions), round trips, dtypes, per-row timesteps, autograd,
and every error path.

Round-off bounds. With u the unit round-off of the working dtype, a sum of a few terms, each a
product of a few rounded factors, is within ~k u * (sum of |terms|) of the exact value, divided
by whatever it is divided by afterwards (1 / sqrt(a), 1 / sqrt(1 - a): the condition of each
conversion). So each reference below returns, beside the value, that magnitude ``scale`` and a
condition ``cond`` for the float64 tables themselves: alpha_bar_t is stored as the rounded
product alpha_t * alpha_bar_{t-1}, so 1 - a_t, which the posterior divides by, is off by up to
u64 a / (1 - a) relative (cond = 1 / (1 - a) for the posterior and p_mean, 1 elsewhere). The
bound is OPS * (eps + EPS64 * cond) * scale, where eps is the machine epsilon of the working
dtype (2u) and OPS = 8 counts the roundings generously.
"""
import inspect

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff import process
from refdiff.schedule import Schedule
from strategies import EPS32, EPS64, assert_bounded, cases, coefficients

OPS = 8
SUBNORMAL = np.finfo(np.float64).smallest_subnormal


def bayes_posterior(c, x0, xt):
    """q(x_{t-1} | x_t, x_0) as prior N(sqrt(a_prev) x0, 1 - a_prev) times likelihood
    N(x_t; sqrt(alpha_t) x_{t-1}, beta_t), a Gaussian in x_{t-1}: precisions add.

    Returns mean, var, and the coefficients (c0, c1) of x0 and x_t in the mean. At t = 1,
    a_prev = 1: the prior is a point mass at x0, so mean = x0 and var = 0.
    """
    first = c.t == 1
    prior_var = np.where(first, 1.0, 1.0 - c.a_prev)  # placeholder 1.0 where t = 1
    var = 1.0 / (1.0 / prior_var + c.alpha / c.beta)
    c0 = np.where(first, 1.0, var * np.sqrt(c.a_prev) / prior_var)
    c1 = np.where(first, 0.0, var * np.sqrt(c.alpha) / c.beta)
    return c0 * x0 + c1 * xt, np.where(first, 0.0, var), c0, c1


def ref_q_posterior(c, x0, xt):
    mean, var, c0, c1 = bayes_posterior(c, x0, xt)
    return (mean, var), (np.abs(c0 * x0) + np.abs(c1 * xt), var), 1 / (1 - c.a)


def ref_p_mean(c, xt, eps):
    # Ho et al. eq. 11 must equal the posterior mean (eqs. 6-7) at x0 = (x_t - s eps) / r.
    x0 = (xt - c.s * eps) / c.r
    mean, _, c0, c1 = bayes_posterior(c, x0, xt)
    scale = (np.abs(c0) * (np.abs(xt) + c.s * np.abs(eps)) / c.r + np.abs(c1 * xt)
             + (np.abs(xt) + c.beta / c.s * np.abs(eps)) / np.sqrt(c.alpha))
    # Below the normal range, alpha_bar_t = alpha_t alpha_bar_{t-1} is stored with an absolute
    # error up to half the smallest subnormal; dividing by sqrt(a) makes that relative / a.
    return (mean,), (scale,), 1 / (1 - c.a) + SUBNORMAL / EPS64 / c.a


# name -> (argument names, reference(c, *arrays) -> (values, scales, cond), needs alpha_bar > 0)
REFERENCES = {
    "q_sample": (("x0", "eps"), lambda c, x0, e: (
        (c.r * x0 + c.s * e,), (c.r * abs(x0) + c.s * abs(e),), 1), False),
    "eps_to_x0": (("xt", "eps"), lambda c, xt, e: (
        ((xt - c.s * e) / c.r,), ((abs(xt) + c.s * abs(e)) / c.r,), 1), True),
    "x0_to_eps": (("xt", "x0"), lambda c, xt, x0: (
        ((xt - c.r * x0) / c.s,), ((abs(xt) + c.r * abs(x0)) / c.s,), 1), False),
    "eps_to_score": (("eps",), lambda c, e: ((-e / c.s,), (abs(e) / c.s,), 1), False),
    "score_to_eps": (("score",), lambda c, sc: ((-c.s * sc,), (c.s * abs(sc),), 1), False),
    "eps_to_v": (("xt", "eps"), lambda c, xt, e: (
        ((e - c.s * xt) / c.r,), ((abs(e) + c.s * abs(xt)) / c.r,), 1), True),
    "v_to_eps": (("xt", "v"), lambda c, xt, v: (
        (c.s * xt + c.r * v,), (c.s * abs(xt) + c.r * abs(v),), 1), False),
    "tweedie_x0": (("xt", "score"), lambda c, xt, sc: (
        ((xt + (1 - c.a) * sc) / c.r,), ((abs(xt) + (1 - c.a) * abs(sc)) / c.r,), 1), True),
    "p_mean": (("xt", "eps"), ref_p_mean, True),
    "q_posterior": (("x0", "xt"), ref_q_posterior, False),
}
NAMES = sorted(REFERENCES)


def call(name, sched, t, arrays):
    """process.<name> with keyword arguments; always returns a tuple of outputs."""
    out = getattr(process, name)(sched, t=t, **dict(zip(REFERENCES[name][0], arrays)))
    return out if isinstance(out, tuple) else (out,)


def check_against_reference(name, sched, t, arrays, dtype):
    names, reference, _ = REFERENCES[name]
    got = call(name, sched, t, [x.astype(dtype) for x in arrays])
    # The reference sees exactly the inputs the function saw, in float64.
    exact_inputs = [x.astype(dtype).astype(np.float64) for x in arrays]
    c = coefficients(sched, t, arrays[0].shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        wants, scales, cond = reference(c, *exact_inputs)
    eps = np.finfo(dtype).eps
    for g, want, scale in zip(got, wants, scales):
        assert g.dtype == dtype
        assert g.shape == np.broadcast_shapes(want.shape, (arrays[0].shape[0], 1))
        assert_bounded(g, want, OPS * (eps + EPS64 * cond) * scale, f"{name} at t={t}")


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_matches_formula_float64(name, data):
    names, _, needs_alpha_bar = REFERENCES[name]
    sched, t, arrays = data.draw(cases(len(names), 0.0 if needs_alpha_bar else None))
    check_against_reference(name, sched, t, arrays, np.float64)


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_matches_formula_float32(name, data):
    # Float32 results are as accurate as float32 allows when the coefficients come from the
    # float64 tables; alpha_bar >= 1e-20 keeps sqrt(a) and the results in float32's range.
    names = REFERENCES[name][0]
    sched, t, arrays = data.draw(cases(len(names), 1e-20))
    check_against_reference(name, sched, t, arrays, np.float32)


# ---- round trips (float64) ------------------------------------------------------------------

# Two arrays of one shape, at timesteps with alpha_bar > 0, with the coefficients there.
POSITIVE_CASES = cases(2, min_alpha_bar=0.0).map(
    lambda case: (*case, coefficients(case[0], case[1], case[2][0].shape[0])))


def round_trip(forward, inverse, sched, t, xt, value):
    """inverse(forward(value)) for conversions that take x_t, e.g. eps -> x0 -> eps."""
    return inverse(sched, xt, t, forward(sched, xt, t, value))


@given(POSITIVE_CASES)
def test_round_trips(case):
    sched, t, (xt, value), c = case
    r, s, tol = c.r, c.s, OPS * EPS64
    # eps -> x0 -> eps: x0 is off by ~3u (|xt| + s|eps|) / r; times r, minus from x_t, over s.
    got = round_trip(process.eps_to_x0, process.x0_to_eps, sched, t, xt, value)
    assert_bounded(got, value, tol * (abs(xt) / s + abs(value)), "eps -> x0 -> eps")
    # x0 -> eps -> x0: the same with r and s exchanged.
    got = round_trip(process.x0_to_eps, process.eps_to_x0, sched, t, xt, value)
    assert_bounded(got, value, tol * (abs(xt) / r + abs(value)), "x0 -> eps -> x0")
    # eps -> v -> eps: v is off by ~3u (|eps| + s|xt|) / r, and is multiplied back by r.
    got = round_trip(process.eps_to_v, process.v_to_eps, sched, t, xt, value)
    assert_bounded(got, value, tol * (abs(value) + s * abs(xt)), "eps -> v -> eps")
    # eps -> score -> eps: divide by s, multiply by s.
    got = process.score_to_eps(sched, t, process.eps_to_score(sched, t, value))
    assert_bounded(got, value, tol * abs(value), "eps -> score -> eps")


@given(POSITIVE_CASES)
def test_q_sample_then_eps_to_x0_gives_x0(case):
    sched, t, (x0, eps), c = case
    xt = process.q_sample(sched, x0, t, eps)
    # x_t is off by ~2u (r|x0| + s|eps|); subtracting s eps and dividing by r recovers x0.
    assert_bounded(process.eps_to_x0(sched, xt, t, eps), x0,
                   OPS * EPS64 * (abs(x0) + c.s * abs(eps) / c.r), "q_sample -> eps_to_x0")


@given(POSITIVE_CASES)
def test_v_is_sqrt_a_eps_minus_sqrt_one_minus_a_x0(case):
    sched, t, (x0, eps), c = case
    xt = c.r * x0 + c.s * eps  # off by ~u (r|x0| + s|eps|), which eps_to_v scales by s / r
    want = c.r * eps - c.s * x0  # Salimans & Ho (2022), Sec. 4
    scale = (abs(eps) + c.s * (abs(xt) + c.r * abs(x0) + c.s * abs(eps))) / c.r + abs(want)
    assert_bounded(process.eps_to_v(sched, xt, t, eps), want, OPS * EPS64 * scale, "v")


@given(POSITIVE_CASES)
def test_tweedie_is_eps_to_x0_with_eps_from_score(case):
    sched, t, (xt, score), c = case
    eps = -c.s * score  # the optimal eps for this score
    # s * s differs from 1 - a by ~2u relative: same bound as eps_to_x0's.
    assert_bounded(process.tweedie_x0(sched, xt, t, score), process.eps_to_x0(sched, xt, t, eps),
                   OPS * EPS64 * (abs(xt) + c.s * abs(eps)) / c.r, "tweedie vs eps_to_x0")


# ---- dtypes, per-row timesteps, autograd ----------------------------------------------------

SCHED = Schedule.linear(1000)
T_ROWS = np.array([1, 10, 500, 1000])


def inputs(name, *dtypes):
    rng = np.random.default_rng(0)
    return [rng.normal(size=(4, 3)).astype(dt) for dt in dtypes[:len(REFERENCES[name][0])]]


@pytest.mark.parametrize("name", NAMES)
def test_dtypes(name):
    k = len(REFERENCES[name][0])
    for dtypes, want in [((np.float32,) * 2, np.float32), ((np.float64,) * 2, np.float64),
                         ((np.int64,) * 2, np.float64), ((np.int32,) * 2, np.float64),
                         ((np.float32, np.float64), np.float64 if k == 2 else np.float32),
                         ((np.float64, np.float32), np.float64)]:
        for out in call(name, SCHED, T_ROWS, inputs(name, *dtypes)):
            assert out.dtype == want, (dtypes, out.dtype)


@pytest.mark.parametrize("name", NAMES)
def test_row_i_uses_t_i(name):
    arrays = inputs(name, np.float64, np.float64)
    batched = call(name, SCHED, T_ROWS, arrays)
    for i, t in enumerate(T_ROWS):
        alone = call(name, SCHED, int(t), [x[i:i + 1] for x in arrays])
        for b, a in zip(batched, alone):
            np.testing.assert_array_equal(b[i:i + 1], a)  # the same arithmetic: bit-identical


def test_autograd_through_eps_to_x0_and_q_sample():
    x, eps = inputs("q_sample", np.float64, np.float64)
    r = np.sqrt(SCHED.alpha_bar[T_ROWS])[:, None] * np.ones((1, 3))
    s = np.sqrt(1 - SCHED.alpha_bar[T_ROWS])[:, None] * np.ones((1, 3))
    grads = {
        "d eps_to_x0 / d xt": (autograd.grad(lambda v: anp.sum(
            process.eps_to_x0(SCHED, v, T_ROWS, eps)))(x), 1 / r),
        "d eps_to_x0 / d eps": (autograd.grad(lambda v: anp.sum(
            process.eps_to_x0(SCHED, x, T_ROWS, v)))(eps), -s / r),
        "d q_sample / d x0": (autograd.grad(lambda v: anp.sum(
            process.q_sample(SCHED, v, T_ROWS, eps)))(x), r),
        "d q_sample / d eps": (autograd.grad(lambda v: anp.sum(
            process.q_sample(SCHED, x, T_ROWS, v)))(eps), s),
    }
    # The gradient of a sum of linear terms is the coefficient, up to two roundings.
    for what, (got, want) in grads.items():
        np.testing.assert_allclose(got, want, rtol=4 * EPS64, atol=0, err_msg=what)


def test_autograd_with_mixed_dtypes():
    x32, eps = inputs("q_sample", np.float32, np.float64)
    got = autograd.grad(lambda v: anp.sum(process.q_sample(SCHED, v, T_ROWS, eps)))(x32)
    want = np.sqrt(SCHED.alpha_bar[T_ROWS])[:, None] * np.ones((1, 3))
    np.testing.assert_allclose(got, want, rtol=4 * EPS32)  # one cast of the gradient to float32


# ---- error paths ----------------------------------------------------------------------------

def bad_cases(name):
    """(description, t, arrays, regex for the argument the message must name)."""
    names = REFERENCES[name][0]
    good = [np.ones((4, 3)) for _ in names]
    for i, arg in enumerate(names):
        others = good[:i] + good[i + 1:]
        for what, bad in [("1-D", np.ones(4)), ("3-D", np.ones((4, 3, 1))), ("0-D", 1.0),
                          ("NaN", np.full((4, 3), np.nan)), ("inf", np.full((4, 3), -np.inf)),
                          ("bool", np.ones((4, 3), bool)), ("str", np.full((4, 3), "a"))]:
            yield f"{arg} {what}", T_ROWS, others[:i] + [bad] + others[i:], arg
    if len(names) == 2:
        yield "shape mismatch", T_ROWS, [good[0], np.ones((4, 2))], names[1]
        yield "rows mismatch", T_ROWS, [good[0], np.ones((3, 3))], names[1]
    for what, t in [("t = 0", 0), ("t = T + 1", 1001), ("t < 0", -1), ("t float", 2.5),
                    ("t bool", True), ("t NaN", np.nan), ("t str", "5"), ("t row 0", [1, 2, 0, 3]),
                    ("t too many rows", [1, 2, 3, 4, 5]), ("t too few rows", [1, 2]),
                    ("t 2-D", np.ones((4, 1), int)), ("t float rows", [1.0, 2.5, 3.0, 4.0])]:
        yield what, t, good, r"\bt\b"


BAD_CASES = [(name, *case) for name in NAMES for case in bad_cases(name)]


@pytest.mark.parametrize("name, what, t, arrays, arg", BAD_CASES,
                         ids=[f"{case[0]}: {case[1]}" for case in BAD_CASES])
def test_errors_name_the_argument(name, what, t, arrays, arg):
    with pytest.raises(ValueError, match=arg):
        call(name, SCHED, t, arrays)


def test_signatures_take_sched_first_and_t():
    for name in NAMES:
        params = list(inspect.signature(getattr(process, name)).parameters)
        assert params[0] == "sched" and "t" in params
        assert set(params) - {"sched", "t"} == set(REFERENCES[name][0]), name
