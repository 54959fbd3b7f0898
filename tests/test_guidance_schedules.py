"""Guidance schedules, docs/guidance.md (G20) and (G20d): CFG with a weight per time, its shapes, the
interval (G12) as one of them, and diffusers' start/stop fractions of the steps mapped to times."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import toy_data
from refdiff.guidance import (WEIGHT_SHAPES, cfg_rule, classifier_free_guidance, interval_cfg, interval_weight,
                              scheduled_cfg, steps_interval, weight_schedule)
from refdiff.samplers import sampling_grid
from refdiff.schedule import Schedule

SCHED = Schedule.linear(1000)
MODEL = toy_data.mixture("three_gaussians").eps_model(SCHED)
weights = st.floats(-1.0, 20.0)


@given(weights, weights, st.sampled_from(WEIGHT_SHAPES), st.integers(1, 1000))
def test_G20_shapes_run_from_w_start_at_T_to_w_end_at_0(w_start, w_end, shape, t):
    # catches: the ramp reversed (w_start at t = 0), or the cosine's half-period wrong (u instead of u / 2 ...)
    weight = weight_schedule(SCHED, w_start, w_end, shape)
    np.testing.assert_allclose(weight(np.array([SCHED.T, 0])), [w_start, w_end], rtol=1e-12, atol=1e-12)
    u = t / SCHED.T
    ramp = u if shape == "linear" else (1 - np.cos(np.pi * u)) / 2
    np.testing.assert_allclose(weight(np.array([t])), [w_end + (w_start - w_end) * ramp], rtol=1e-12, atol=1e-12)
    if shape == "cosine":  # symmetric about the middle, and flat at both ends
        assert abs(weight(np.array([SCHED.T / 2]))[0] - (w_start + w_end) / 2) <= 1e-12 * (1 + abs(w_start) + abs(w_end))
    assert weight_schedule(SCHED, w_start, w_start, shape)(np.array([t]))[0] == pytest.approx(w_start, abs=1e-12)


@given(weights, st.integers(1, 1000))
def test_G20_a_constant_schedule_is_cfg_and_w_0_rows_are_the_conditional_model(w, t):
    rng = np.random.default_rng(t)
    x, y = rng.standard_normal((6, 2)), rng.integers(0, 3, 6)
    got = scheduled_cfg(MODEL, y, lambda tt: np.full(len(tt), w))(x, t)
    np.testing.assert_array_equal(got, classifier_free_guidance(MODEL, y, w)(x, t))
    zero = scheduled_cfg(MODEL, y, lambda tt: np.zeros(len(tt)))(x, t)
    np.testing.assert_array_equal(zero, MODEL(x, np.full(6, t), y))


def test_G20_per_row_times_get_per_row_weights():
    # rows at different times, each guided by its own weight (mutation: the first row's weight for all)
    rng = np.random.default_rng(1)
    x, y, t = rng.standard_normal((8, 2)), rng.integers(0, 3, 8), rng.integers(1, 1001, 8)
    weight = weight_schedule(SCHED, 6.0, 0.0)
    got = scheduled_cfg(MODEL, y, weight)(x, t)
    for i in range(8):
        w = float(weight(t[i:i + 1])[0])
        want = cfg_rule(MODEL(x[i:i + 1], t[i:i + 1], y[i:i + 1]), MODEL(x[i:i + 1], t[i:i + 1]), w)
        np.testing.assert_allclose(got[i:i + 1], want, rtol=1e-12, atol=1e-12)


def test_G12_interval_is_the_schedule_w_inside_0_outside():
    rng = np.random.default_rng(2)
    x, y, t = rng.standard_normal((30, 2)), rng.integers(0, 3, 30), rng.integers(1, 1001, 30)
    weight = interval_weight(3.0, 100, 400)
    np.testing.assert_array_equal(weight(t), np.where((t >= 100) & (t <= 400), 3.0, 0.0))
    np.testing.assert_array_equal(interval_cfg(MODEL, y, 3.0, 100, 400)(x, t), scheduled_cfg(MODEL, y, weight)(x, t))


def test_G20_refuses_bad_schedules_by_name():
    for call, name in ((lambda: weight_schedule(SCHED, 1.0, 0.0, "sigmoid"), "shape"),
                       (lambda: weight_schedule(SCHED, np.nan, 0.0), "w_start"),
                       (lambda: scheduled_cfg(MODEL, 0, 3.0), "weight"),
                       (lambda: scheduled_cfg(MODEL, 0, lambda t: np.full(len(t), np.inf))(np.zeros((2, 2)), 5), "weight"),
                       (lambda: scheduled_cfg(MODEL, 0, lambda t: 1.0)(np.zeros((2, 2)), 5), "weight"),
                       (lambda: steps_interval(SCHED, 10, -0.1, 0.5), "start"),
                       (lambda: steps_interval(SCHED, 10, 0.1, 1.5), "stop")):
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            call()


@given(st.integers(1, 60), st.floats(0, 1), st.floats(0, 1), st.sampled_from(["leading", "trailing", "linspace"]))
def test_G20d_diffusers_start_and_stop_are_the_interval_of_the_steps_they_guide(steps, start, stop, spacing):
    # diffusers' guider at step i (0 the first of S) guides when int(start S) <= i < int(stop S); replayed
    # step by step, the guided times are exactly those of the interval steps_interval returns
    grid = sampling_grid(SCHED, steps, spacing, discrete=True)
    guided = [int(t) for i, t in enumerate(grid) if int(start * len(grid)) <= i < int(stop * len(grid))]
    interval = steps_interval(SCHED, steps, start, stop, spacing)
    if not guided:
        assert interval is None
    else:
        t_low, t_high = interval
        assert [int(t) for t in grid if t_low <= t <= t_high] == guided, (interval, guided)
