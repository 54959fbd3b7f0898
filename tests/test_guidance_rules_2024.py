"""The guidance methods of 2023-2024 in refdiff/guidance.py: Perp-Neg (G18), APG with momentum (G16m),
CFG-Zero* with zero-init (G17z), autoguidance (G19) and CFG++ (G21), with the per-sampling-call state
they share (``_PerCall``) and the blurred mixture that is autoguidance's exact weak model. Pure algebra
is checked by hypothesis over wide inputs, the rest on the oracle with fixed seeds. Each test names, in
a comment, a mutation of the code that it catches."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import toy_data
from refdiff import samplers
from refdiff.guidance import (_PerCall, apg_guidance, apg_rule, autoguidance, cfg_pp, cfg_rule, cfg_zero_star,
                              cfg_zero_star_rule, classifier_free_guidance, perp_neg_guidance, perp_neg_rule)
from refdiff.labels import NULL_LABEL
from refdiff.process import PREDICTIONS, eps_to_prediction, eps_to_x0, prediction_to_eps
from refdiff.schedule import Schedule
from strategies import EPS64, SHARES, assert_bounded, draw_specials, mixtures, points, schedules, seeds

SCHED = Schedule.linear(1000)
MIX = toy_data.mixture("three_gaussians")
MODEL = MIX.eps_model(SCHED)
weights = st.floats(-1e3, 1e3)  # CFG's w and Perp-Neg's w_neg: any finite real is allowed


@st.composite
def arrays_of_one_shape(draw, count, min_dim=2):
    """``count`` arrays of one shape (N, D) or (N, H, W), entries 0 or 1e-3 <= |e| <= 10, all times one
    drawn power of ten in 1e-6..1e6 (the rules are homogeneous of degree 1). Entries are kept away from
    the underflow range: where ||d_pos||^2 is subnormal or 0 (||d_pos|| < ~1e-154) the projection loses
    its precision or is dropped, a limit of float64 that this file does not test.

    Numpy draws the entries from a drawn seed (random signs, magnitudes log-uniform in [1e-3, 10]);
    hypothesis draws, per array, the share of zeros (none, a quarter, all), and the share of samples
    in which every array repeats the first (there the differences such as d_pos are exactly 0)."""
    shape = draw(st.sampled_from([(draw(st.integers(1, 6)), draw(st.integers(min_dim, 5))), (3, 2, 4)]))
    scale = 10.0 ** draw(st.integers(-6, 6))
    rng = np.random.default_rng(draw(seeds))
    arrays = [draw_specials(draw, rng, rng.choice([-1.0, 1.0], shape) * 10.0 ** rng.uniform(-3, 1, shape), [0.0])
              for _ in range(count)]
    same = rng.random(shape[0]) < draw(SHARES)  # (N,)
    for x in arrays[1:]:
        x[same] = arrays[0][same]
    return [scale * x for x in arrays]


def dot(a, b):
    """<a_i, b_i> per sample over all non-batch axes, shape (N, 1, ...)."""
    return np.sum(a * b, axis=tuple(range(1, a.ndim)), keepdims=True)


def mass(*arrays):
    """sum_i |a_i| per sample (an L1 norm, >= the L2 norm), summed over the arrays: the scale of round-off."""
    return sum(dot(np.abs(a), np.ones_like(a)) for a in arrays)


def along(a, onto):
    """<a, onto> / ||onto||^2 per sample, 0 where onto = 0: written out here, not guidance._projection."""
    oo = dot(onto, onto)
    return np.where(oo > 0, dot(a, onto) / np.where(oo > 0, oo, 1.0), 0.0)


def oracle_inputs(n=12, seed=0):
    """x (n, 2), t (n,) over the whole range 1..1000, labels y (n,) and negatives y_neg != y."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return rng.standard_normal((n, 2)), rng.integers(1, 1001, n), y, (y + 1 + rng.integers(0, 2, n)) % 3


def counted(model):
    """model wrapped to count its calls in ``.calls``."""
    def wrapped(x, t, y=None):
        wrapped.calls += 1
        return model(x, t, y)
    wrapped.calls = 0
    return wrapped


def predictions_at(x, t, y, prediction):
    """(cond, uncond) of the oracle at (x, t) as ``prediction``, from two separate calls."""
    return tuple(eps_to_prediction(SCHED, x, t, MODEL(x, t, labels), prediction) for labels in (y, NULL_LABEL))


# ---- (G18) Perp-Neg ----------------------------------------------------------------------------------
@given(arrays_of_one_shape(2), weights, weights)
def test_G18_a_null_negative_is_cfg_for_any_w_neg(arrays, w, w_neg):
    # catches: the positive part weighted by w instead of 1 + w, or a batch-wide projection
    cond, uncond = arrays
    out = perp_neg_rule(cond, uncond, uncond.copy(), w, w_neg)
    assert_bounded(out, cfg_rule(cond, uncond, w), 16 * EPS64 * (1 + 2 * abs(w)) * (np.abs(cond) + np.abs(uncond)),
                   "perp-neg with neg = uncond vs cfg")


@given(arrays_of_one_shape(3), weights)
def test_G18_a_negative_orthogonal_to_the_positive_with_w_neg_w_is_the_negative_prompt_rule(arrays, w):
    # catches: projecting d_neg onto cond (or onto neg) instead of d_pos, or w_neg scaling the wrong term
    cond, uncond, r = arrays
    d_pos = cond - uncond
    neg = uncond + (r - along(r, d_pos) * d_pos)  # d_neg orthogonal to d_pos, per sample
    out = perp_neg_rule(cond, uncond, neg, w, w)
    bound = 64 * EPS64 * (1 + 2 * abs(w)) * mass(cond, uncond, neg, r)  # round-off of (G18) and of the construction
    assert_bounded(out, cfg_rule(cond, neg, w), bound, "perp-neg, orthogonal negative vs negative prompt (G15)")


@given(arrays_of_one_shape(3), weights, weights)
def test_G18_is_cfg_minus_w_neg_times_the_part_of_d_neg_orthogonal_to_d_pos(arrays, w, w_neg):
    # catches: the projection subtracted with the wrong sign, onto cond instead of d_pos, or w_neg on d_neg
    cond, uncond, neg = arrays
    d_pos, d_neg = cond - uncond, neg - uncond
    out = perp_neg_rule(cond, uncond, neg, w, w_neg)
    scale = mass(uncond, (1 + abs(w)) * d_pos, (1 + abs(w_neg)) * d_neg)
    want = uncond + (1 + w) * d_pos - w_neg * (d_neg - along(d_neg, d_pos) * d_pos)
    assert_bounded(out, want, 64 * EPS64 * scale, "perp-neg vs (G18) written out")
    # what Perp-Neg adds to CFG is orthogonal to the positive direction
    added = out - (uncond + (1 + w) * d_pos)
    assert_bounded(dot(added, d_pos), 0.0, 64 * EPS64 * scale * mass(d_pos), "<perp-neg - cfg, d_pos>")


@given(arrays_of_one_shape(2), weights, weights, st.floats(-10.0, 10.0))
def test_G18_a_negative_parallel_to_the_positive_changes_nothing(arrays, w, w_neg, c):
    # catches: no projection at all (then Perp-Neg is the plain negative prompt rule and neg matters)
    cond, uncond = arrays
    neg = uncond + c * (cond - uncond)
    out = perp_neg_rule(cond, uncond, neg, w, w_neg)
    bound = 64 * EPS64 * (1 + 2 * abs(w) + abs(w_neg)) * mass(cond, uncond, neg)
    assert_bounded(out, cfg_rule(cond, uncond, w), bound, "perp-neg, parallel negative vs cfg")


@given(arrays_of_one_shape(3), weights, weights, seeds)
def test_G18_each_sample_is_guided_on_its_own(arrays, w, w_neg, seed):
    # catches: one projection coefficient over the whole batch (ComfyUI's PerpNeg sums <d_neg, d_pos> and
    # ||d_pos||^2 over every axis, batch included)
    cond, uncond, neg = arrays
    out = perp_neg_rule(cond, uncond, neg, w, w_neg)
    perm = np.random.default_rng(seed).permutation(len(cond))
    bound = 16 * EPS64 * (1 + abs(w) + abs(w_neg)) * mass(cond, uncond, neg)
    assert_bounded(perp_neg_rule(cond[perm], uncond[perm], neg[perm], w, w_neg), out[perm], bound[perm], "permuted rows")
    for i in range(len(cond)):
        alone = perp_neg_rule(cond[i:i + 1], uncond[i:i + 1], neg[i:i + 1], w, w_neg)
        assert_bounded(alone, out[i:i + 1], bound[i:i + 1], f"row {i} alone")


def test_G18_perp_neg_guidance_is_the_rule_of_the_three_oracle_predictions_from_one_call():
    # catches: the null and negative labels swapped in the batched call, w_neg defaulting to anything
    # but w, or three model calls instead of one
    x, t, y, y_neg = oracle_inputs()
    model = counted(MODEL)
    want = perp_neg_rule(MODEL(x, t, y), MODEL(x, t, NULL_LABEL), MODEL(x, t, y_neg), 2.0, 0.5)
    got = perp_neg_guidance(model, y, y_neg, 2.0, 0.5)(x, t)
    assert model.calls == 1
    assert_bounded(got, want, 1e-12 * (1 + np.abs(want)), "perp_neg_guidance vs perp_neg_rule")
    np.testing.assert_array_equal(perp_neg_guidance(MODEL, y, y_neg, 2.0)(x, t),
                                  perp_neg_guidance(MODEL, y, y_neg, 2.0, 2.0)(x, t))
    # a null negative is CFG (G5)
    cfg = classifier_free_guidance(MODEL, y, 2.0)(x, t)
    assert_bounded(perp_neg_guidance(MODEL, y, NULL_LABEL, 2.0, 0.5)(x, t), cfg, 1e-13 * (1 + np.abs(cfg)),
                   "perp-neg with y_neg = NULL_LABEL vs cfg")
    # float32 in, float32 out
    assert perp_neg_guidance(MODEL, y, y_neg, 2.0)(x.astype(np.float32), t).dtype == np.float32


def test_G18_refuses_bad_arguments_by_name():
    c = np.ones((2, 3))
    for w, w_neg, name in ((np.nan, 1.0, "w"), (1.0, np.inf, "w_neg"), ("2", 1.0, "w"), (1.0, True, "w_neg")):
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            perp_neg_rule(c, c, c, w, w_neg)
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            perp_neg_guidance(MODEL, 0, 1, w, w_neg)
    x, t = np.zeros((2, 2)), 500
    for y_neg in (None, -2, [0, 1, 2], 1.5):
        with pytest.raises(ValueError, match=r"\by_neg\b"):
            perp_neg_guidance(MODEL, 0, y_neg, 1.0)(x, t)


# ---- _PerCall: one sampling call's state -------------------------------------------------------------
@st.composite
def sampling_calls(draw):
    """A list of sampling calls, each (shape, times): times non-increasing (repeats allowed, as Heun's
    second evaluation), integers or reals; each call starts at a later time than the previous call's
    last time, or on another batch shape."""
    shapes, real = [(4, 2), (3, 2), (4, 3)], draw(st.booleans())
    time = st.floats(1.0, 1000.0) if real else st.integers(1, 1000)
    calls = []
    for _ in range(draw(st.integers(1, 5))):
        times = sorted(draw(st.lists(st.one_of(time, st.sampled_from([1, 1000])), min_size=1, max_size=8)), reverse=True)
        times += [times[-1]] * draw(st.integers(0, 1))  # sometimes a repeat at the end
        shape = draw(st.sampled_from(shapes))
        if calls and times[0] <= calls[-1][1][-1] and shape == calls[-1][0]:
            shape = shapes[(shapes.index(shape) + 1) % len(shapes)]  # not later: restart by the shape
        calls.append((shape, times))
    return calls


@given(sampling_calls(), seeds)
def test_PerCall_counts_distinct_times_within_a_sampling_call_and_restarts_between_calls(calls, seed):
    # catches: a repeated time counted as a new step (>= for >), a restart only on the time (shape
    # ignored), the value kept across a restart, or t's first row read instead of its largest
    rng = np.random.default_rng(seed)
    state, sentinel = _PerCall(), object()
    for shape, times in calls:
        seen = []
        for k, time in enumerate(times):
            seen += [] if time in seen else [time]
            t = rng.uniform(0, time, shape[0]) if isinstance(time, float) else rng.integers(1, time + 1, shape[0])
            t[rng.integers(shape[0])] = time  # the largest row is the call's time
            x = rng.standard_normal(shape)  # a new state at every call, as a sampler's
            start = (t, x.copy()) if k == 0 else start
            assert state.advance(t, x) == len(seen), (shape, times, k)
            assert (state.value is None) if k == 0 else (state.value is sentinel), "the value restarts with the call"
            state.value = sentinel
    # the last sampling call made again starts at its (t, x): a restart, not a continuation
    assert state.advance(*start) == 1 and state.value is None, "the call made again did not restart"


@given(st.lists(st.integers(1, 1000), min_size=1, max_size=20, unique=True))
def test_PerCall_restarts_at_every_call_when_times_increase(times):
    # catches: a restart only on a new shape (DDIM inversion calls at increasing times)
    state = _PerCall()
    for time in sorted(times):
        assert state.advance(np.full(3, time), np.zeros((3, 2))) == 1
        assert state.value is None
        state.value = time


# ---- (G16m) APG with momentum ---------------------------------------------------------------------------
def apg_by_hand(cond, uncond, d, w, eta, threshold, form):
    """(G16) from the difference d, written out: threshold, split along cond, recombine."""
    if threshold is not None:
        norm = np.sqrt(dot(d, d))
        d = d * np.minimum(1.0, threshold / np.where(norm > 0, norm, 1.0))
    parallel = along(d, cond) * cond
    update = (d - parallel) + eta * parallel
    return cond + w * update if form == "paper" else uncond + (1 + w) * update


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_G16m_without_momentum_is_apg_rule_on_the_chosen_prediction(prediction):
    # catches: the rule applied to eps whatever ``prediction`` says (APG is not affine in the prediction,
    # so the parametrisation matters), or a conversion back with the wrong target
    x, t, y, _ = oracle_inputs()
    cond, uncond = predictions_at(x, t, y, prediction)
    for form, threshold in (("paper", None), ("paper", 0.5), ("diffusers", 0.5)):
        want = prediction_to_eps(SCHED, x, t, apg_rule(cond, uncond, 3.0, 0.3, threshold, form), prediction)
        f = apg_guidance(MODEL, SCHED, y, 3.0, eta=0.3, norm_threshold=threshold, form=form, prediction=prediction)
        for _ in range(2):  # momentum 0: a second call at the same time is the same
            assert_bounded(f(x, t), want, 1e-12 * (1 + np.abs(want)), f"apg_guidance, {prediction}, {form}")


@pytest.mark.parametrize("momentum, threshold, form", [(0.5, None, "paper"), (-0.5, 0.3, "paper"),
                                                       (0.9, 0.3, "diffusers")])
def test_G16m_the_difference_at_step_k_is_the_sum_of_beta_to_the_k_minus_j_times_d_j(momentum, threshold, form):
    # catches: momentum applied after the threshold (the average of thresholded d's), d_avg = beta d + d_prev,
    # the average restarted at every step, or kept in eps instead of the chosen prediction (x0)
    x_T, y = np.random.default_rng(1).standard_normal((8, 2)), np.arange(8) % 3
    f = apg_guidance(MODEL, SCHED, y, 2.0, eta=0.0, norm_threshold=threshold, momentum=momentum, form=form)
    calls = []

    def recorded(x, t):
        calls.append((x, t, f(x, t)))
        return calls[-1][2]
    samplers.ddim(recorded, SCHED, x_T, 10)
    ds = []
    for k, (x, t, got) in enumerate(calls):
        cond, uncond = predictions_at(x, t, y, "x0")
        ds.append(cond - uncond)
        d_avg = sum(momentum ** (k - j) * d for j, d in enumerate(ds))  # (G16m), unrolled
        want = prediction_to_eps(SCHED, x, t, apg_by_hand(cond, uncond, d_avg, 2.0, 0.0, threshold, form), "x0")
        assert_bounded(got, want, 1e-10 * (1 + np.abs(want)), f"apg with momentum, step {k} (t = {t[0]})")
    assert len(calls) == 10


def test_G16m_the_average_restarts_with_each_sampling_call_and_with_a_new_batch_shape():
    # catches: the state created once per process or never restarted, or restarted on the time only
    x_T, y = np.random.default_rng(2).standard_normal((6, 2)), 1
    f = apg_guidance(MODEL, SCHED, y, 2.0, norm_threshold=1.0, momentum=0.7)
    first = samplers.ddim(f, SCHED, x_T, 10)
    np.testing.assert_array_equal(samplers.ddim(f, SCHED, x_T, 10), first)
    np.testing.assert_array_equal(samplers.ddim(apg_guidance(MODEL, SCHED, y, 2.0, norm_threshold=1.0, momentum=0.7),
                                                SCHED, x_T, 10), first)
    # a smaller batch at an earlier time is a new call, not the next step of the last one
    f(x_T, 500)
    fresh = apg_guidance(MODEL, SCHED, y, 2.0, norm_threshold=1.0, momentum=0.7)
    np.testing.assert_array_equal(f(x_T[:4], 400), fresh(x_T[:4], 400))


def test_G16m_a_second_one_step_sampling_call_gives_the_same_bits():
    # The second call starts at the (t, x) the first started from: a new sampling call, not the same step
    # (catches a restart only on a later time)
    x_T = np.random.default_rng(3).standard_normal((4, 2))
    f = apg_guidance(MODEL, SCHED, 1, 2.0, momentum=0.5)
    first = samplers.ddim(f, SCHED, x_T, [500])
    np.testing.assert_array_equal(samplers.ddim(f, SCHED, x_T, [500]), first)


@given(st.floats(-1.0, 50.0), st.sampled_from(["paper", "diffusers"]))
def test_G16m_eta_1_without_a_threshold_or_momentum_on_eps_is_cfg(w, form):
    # catches: eta ignored (the parallel part always dropped), or eta scaling d_perp instead of d_par
    x, t, y, _ = oracle_inputs()
    cfg = classifier_free_guidance(MODEL, y, w)(x, t)
    got = apg_guidance(MODEL, SCHED, y, w, eta=1.0, form=form, prediction="eps")(x, t)
    assert_bounded(got, cfg, 64 * EPS64 * (1 + 2 * abs(w)) * (1 + np.abs(cfg)), "apg eta = 1 vs cfg")


def test_G16m_float32_stays_float32_and_bad_arguments_are_named():
    # catches: the average kept in float64 (a float64 array leaking into the float32 path)
    x, t, y, _ = oracle_inputs()
    f = apg_guidance(MODEL, SCHED, y, 2.0, norm_threshold=1.0, momentum=0.5)
    out = samplers.ddim(f, SCHED, x.astype(np.float32), 5)
    assert out.dtype == np.float32
    assert f(x.astype(np.float32), t).dtype == np.float32
    for kwargs, name in (({"momentum": np.nan}, "momentum"), ({"prediction": "noise"}, "prediction"),
                         ({"w": np.inf}, "w"), ({"form": "comfy"}, "form"), ({"norm_threshold": -1.0}, "norm_threshold")):
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            apg_guidance(MODEL, SCHED, y, **{"w": 1.0, **kwargs})


# ---- (G17z) CFG-Zero* with zero-init ------------------------------------------------------------------
def rf_state(x, a):
    """x / (sqrt(a) + sqrt(1 - a)): the rectified-flow state that a zero velocity keeps."""
    return x / (np.sqrt(a) + np.sqrt(1 - a))


def never_called(x, t, y=None):
    raise AssertionError("the model was called during a zero-init step")


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_G17z_zero_steps_0_is_cfg_zero_star_rule_on_the_chosen_prediction(prediction):
    # catches: the rule applied to eps whatever ``prediction`` says (s* projects, so it is not affine)
    x, t, y, _ = oracle_inputs()
    cond, uncond = predictions_at(x, t, y, prediction)
    want = prediction_to_eps(SCHED, x, t, cfg_zero_star_rule(cond, uncond, 3.0), prediction)
    f = cfg_zero_star(MODEL, SCHED, y, 3.0, zero_steps=0, prediction=prediction)
    assert_bounded(f(x, t), want, 1e-12 * (1 + np.abs(want)), f"cfg-zero*, {prediction}")


@st.composite
def zero_init_cases(draw):
    """A schedule, t with alpha_bar_t > 1e-10, t_prev in 0..t-1, and points x."""
    sched = draw(schedules())
    allowed = np.flatnonzero(sched.alpha_bar[1:] > 1e-10) + 1
    assume(allowed.size > 0)
    t = int(allowed[draw(st.integers(0, allowed.size - 1))])
    n, d = draw(st.integers(1, 8)), draw(st.integers(1, 4))
    return sched, t, draw(st.integers(0, t - 1)), draw(points(n, d))


@given(zero_init_cases())
def test_G17z_a_zero_init_ddim_step_keeps_x_over_sqrt_a_plus_sqrt_1_minus_a(case):
    # catches: eps = 0 at the zero step (x0_hat = x / sqrt(a), the state moves), sqrt(1 - a) alone in the
    # denominator, or the model called at a zero step
    sched, t, t_prev, x = case
    a, a_prev = sched.alpha_bar[t], sched.alpha_bar[t_prev]
    f = cfg_zero_star(never_called, sched, 0, 5.0, zero_steps=2)
    states = []
    grid = [t] if t_prev == 0 else [t, t_prev]
    out = samplers.ddim(f, sched, x, grid, callback=lambda t_, x_, eps: states.append(x_))
    # (C1) divides by sqrt(a): relative round-off up to a few ulps times sqrt((1 - a) / a) per step
    bound = 64 * EPS64 * (1 + np.sqrt((1 - a) / a)) * np.abs(rf_state(x, a))
    assert_bounded(rf_state(states[0], a_prev), rf_state(x, a), bound, f"one zero-init DDIM step {t} -> {t_prev}")
    assert_bounded(out, rf_state(x, a), 2 * bound, "x_0 after zero-init steps only")


@pytest.mark.parametrize("zero_steps", [0, 1, 3, 10])
def test_G17z_the_first_zero_steps_of_ddim_keep_the_rectified_flow_state_and_the_next_moves_it(zero_steps):
    # catches: an off-by-one in ``advance(...) <= zero_steps``, or zero-init counted per call not per step
    x_T, y = np.random.default_rng(4).standard_normal((6, 2)), np.arange(6) % 3
    model = counted(MODEL)
    f = cfg_zero_star(model, SCHED, y, 3.0, zero_steps=zero_steps)
    out, path = samplers.ddim(f, SCHED, x_T, 10, return_path=True)
    a = SCHED.alpha_bar[np.append(samplers.sampling_grid(SCHED, 10), 0)]
    states = [rf_state(path[j], a[j]) for j in range(11)]
    for j in range(10):
        change = np.max(np.abs(states[j + 1] - states[j]) / np.abs(states[j]))
        if j < zero_steps:
            assert change <= 1e-13, (j, change)
        else:
            assert change > 1e-3, (j, change)
    assert model.calls == 10 - zero_steps  # one batched call per guided step, none at the zero steps
    np.testing.assert_array_equal(samplers.ddim(f, SCHED, x_T, 10), out)  # a second call: the same bits


def test_G17z_a_second_evaluation_at_the_same_time_is_the_same_step_and_bad_zero_steps_are_named():
    # catches: every call counted as a step (Heun's second evaluation at t would leave zero-init early)
    x, y = np.random.default_rng(5).standard_normal((3, 2)), 0
    f = cfg_zero_star(never_called, SCHED, y, 2.0, zero_steps=1)
    np.testing.assert_array_equal(f(x, 900), rf_state(x, SCHED.alpha_bar[900]))
    t = np.array([900, 850, 900])  # its largest row is 900 again: the same step, still zero-init
    np.testing.assert_array_equal(f(x, t), rf_state(x, SCHED.alpha_bar[t][:, None]))
    with pytest.raises(AssertionError, match="zero-init"):  # the next time is a guided step
        f(x, 800)
    assert f(x.astype(np.float32), 1000).dtype == np.float32
    for bad in (-1, 1.5, True, None, "1"):
        with pytest.raises(ValueError, match=r"\bzero_steps\b"):
            cfg_zero_star(MODEL, SCHED, y, 2.0, zero_steps=bad)
    with pytest.raises(ValueError, match=r"\bprediction\b"):
        cfg_zero_star(MODEL, SCHED, y, 2.0, prediction="velocity")


# ---- (G19) autoguidance -----------------------------------------------------------------------------
@given(st.floats(-1e3, 1e3))
def test_G19_a_weak_model_equal_to_the_good_one_is_the_conditional_model_for_any_w(w):
    # catches: the weak model evaluated unconditionally (then this is CFG, not the conditional model)
    x, t, y, _ = oracle_inputs()
    good = MODEL(x, t, y)
    got = autoguidance(MODEL, MODEL, y, w)(x, t)
    assert_bounded(got, good, 4 * EPS64 * (1 + 2 * abs(w)) * np.abs(good), "autoguidance, weak = good")


@pytest.mark.parametrize("delta", [0.0, 0.3, 1.0])
def test_G19_with_the_blurred_oracle_as_weak_model_is_cfg_rule_of_good_and_weak(delta):
    # catches: a sign flip or w and 1 + w swapped (both invisible when weak = good), or the weak model
    # given the null label
    x, t, y, _ = oracle_inputs()
    weak = MIX.blurred(delta).eps_model(SCHED)
    good_eps, weak_eps = MODEL(x, t, y), weak(x, t, y)
    got = autoguidance(MODEL, weak, y, 2.5)(x, t)
    np.testing.assert_array_equal(got, cfg_rule(good_eps, weak_eps, 2.5))
    if delta == 0:  # the copy is the same mixture: the conditional model
        assert_bounded(got, good_eps, 1e-14 * (1 + np.abs(good_eps)), "autoguidance, delta = 0")
    else:
        assert np.max(np.abs(got - good_eps)) > 1e-3  # non-vacuous: the weak model differs
    with pytest.raises(ValueError, match=r"\bw\b"):
        autoguidance(MODEL, weak, y, np.nan)


# ---- (G21) CFG++ ------------------------------------------------------------------------------------
SAMPLER_ETAS = [(samplers.ddim, 0.0), (samplers.ddim, 1.0), (samplers.euler_ancestral, 1.0),
                (samplers.euler_ancestral, 0.5)]


def sigmas_of_step(grid, sampler, eta):
    """sigma_t, sigma_up and sigma_down of each step t -> t_prev in Karras et al.'s variables, from the
    schedule's table: sigma = sqrt((1 - a) / a); sigma_up of k-diffusion's get_ancestral_step (Euler
    ancestral) or DDIM's eq. 16 sigma carried to x~ = x / sqrt(a_prev)."""
    a, a_prev = SCHED.alpha_bar[grid], SCHED.alpha_bar[np.append(grid[1:], 0)]
    s, s_prev = np.sqrt((1 - a) / a), np.sqrt((1 - a_prev) / a_prev)
    if sampler is samplers.euler_ancestral:
        s_up = np.minimum(s_prev, eta * np.sqrt(s_prev ** 2 * (s ** 2 - s_prev ** 2) / s ** 2))
    else:
        s_up = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev)) / np.sqrt(a_prev)
    return s, s_up, np.sqrt(np.maximum(s_prev ** 2 - s_up ** 2, 0.0))


@pytest.mark.parametrize("sampler, eta", SAMPLER_ETAS)
def test_G21_cfg_pp_is_cfg_with_the_step_weight_lam_sigma_over_sigma_minus_sigma_down(sampler, eta):
    # catches: x0_fn used only where alpha_bar = 0 (ddim's old rule) or not at all (euler_ancestral),
    # eps_fn returning the guided eps, lam used as w, or a step re-noising with sigma_prev, not sigma_down
    x_T, y, lam, seed = np.random.default_rng(6).standard_normal((10, 2)), np.arange(10) % 3, 0.6, 7
    grid = samplers.sampling_grid(SCHED, 15, discrete=True)
    s, s_up, s_down = sigmas_of_step(grid, sampler, eta)
    weight = dict(zip(grid.tolist(), lam * s / (s - s_down) - 1))  # (G21): 1 + w = lam sigma / (sigma - sigma_down)
    assert weight[grid[-1]] == pytest.approx(lam - 1, rel=1e-15)  # last step: sigma_down = 0

    def stepwise_cfg(x, t):
        return cfg_rule(MODEL(x, t, y), MODEL(x, t, NULL_LABEL), weight[int(t[0])])
    rng = (lambda: np.random.default_rng(seed)) if eta > 0 else (lambda: None)
    eps_fn, x0_fn = cfg_pp(MODEL, SCHED, y, lam)
    _, path = sampler(eps_fn, SCHED, x_T, grid, eta=eta, rng=rng(), x0_fn=x0_fn, return_path=True)
    _, cfg_path = sampler(stepwise_cfg, SCHED, x_T, grid, eta=eta, rng=rng(), return_path=True)
    assert_bounded(path, cfg_path, 1e-10 * (1 + np.abs(cfg_path)), "cfg++ path vs cfg path at the step weights")
    # step by step, by hand, from the CFG++ state: x~_prev = x~ + (sigma_down - sigma) eps_w + sigma_up z
    draws = np.random.default_rng(seed) if eta > 0 else None
    for k, (t, t_prev) in enumerate(zip(grid, np.append(grid[1:], 0))):
        x, tt = path[k], np.full(len(x_T), t)
        z = draws.standard_normal(x.shape) if s_up[k] > 0 else 0.0
        x_tilde = x / np.sqrt(SCHED.alpha_bar[t]) + (s_down[k] - s[k]) * stepwise_cfg(x, tt) + s_up[k] * z
        want = np.sqrt(SCHED.alpha_bar[t_prev]) * x_tilde
        assert_bounded(path[k + 1], want, 1e-10 * (1 + np.abs(want)), f"step {k}: {t} -> {t_prev}")


@pytest.mark.parametrize("sampler, eta", SAMPLER_ETAS)
def test_G21_lam_0_is_the_unconditional_model_with_one_model_call_per_step(sampler, eta):
    # catches: x0 from cond at lam = 0 (lam read as 1 - lam), or the cache missing so that x0_fn calls
    # the model again (two calls per step)
    x_T, y = np.random.default_rng(8).standard_normal((10, 2)), 2
    rng = (lambda: np.random.default_rng(9)) if eta > 0 else (lambda: None)
    model = counted(MODEL)
    eps_fn, x0_fn = cfg_pp(model, SCHED, y, 0.0)
    got = sampler(eps_fn, SCHED, x_T, 12, eta=eta, rng=rng(), x0_fn=x0_fn)
    assert model.calls == 12
    want = sampler(lambda x, t: MODEL(x, t, None), SCHED, x_T, 12, eta=eta, rng=rng())
    assert_bounded(got, want, 1e-12 * (1 + np.abs(want)), "cfg++ at lam = 0 vs the unconditional model")


def test_G21_ddim_with_the_C1_x0_of_its_own_eps_is_plain_ddim():
    # catches: x0_fn called at t_prev or on the updated x, or its x0 given another coefficient than (C1)'s
    x_T, y = np.random.default_rng(10).standard_normal((10, 2)), 0
    f = classifier_free_guidance(MODEL, y, 2.0)
    want = samplers.ddim(f, SCHED, x_T, 12)
    got = samplers.ddim(f, SCHED, x_T, 12, x0_fn=lambda x, t: eps_to_x0(SCHED, x, t, f(x, t)))
    assert_bounded(got, want, 1e-13 * (1 + np.abs(want)), "ddim with x0_fn = (C1) of eps_fn")


def test_G21_float32_stays_float32_and_lam_outside_0_1_is_refused_by_name():
    eps_fn, x0_fn = cfg_pp(MODEL, SCHED, 1, 0.5)
    x = np.random.default_rng(11).standard_normal((4, 2)).astype(np.float32)
    assert samplers.ddim(eps_fn, SCHED, x, 5, x0_fn=x0_fn).dtype == np.float32
    for lam in (-0.1, 1.1, np.nan, np.inf, "0.5", True):
        with pytest.raises(ValueError, match=r"\blam\b"):
            cfg_pp(MODEL, SCHED, 1, lam)


def test_G21_the_cached_predictions_follow_x_changed_in_place():
    # catches a cache keyed on the identity of x rather than its values
    eps_fn, _ = cfg_pp(MODEL, SCHED, 1, 0.5)
    x = np.random.default_rng(12).standard_normal((4, 2))
    eps_fn(x, 500)
    x *= 2.0
    np.testing.assert_array_equal(eps_fn(x, 500), MODEL(x, 500, NULL_LABEL))


# ---- GaussianMixture.blurred ------------------------------------------------------------------------
@given(mixtures(), st.one_of(st.just(0.0), st.floats(1e-6, 1e3)))
def test_blurred_adds_delta_squared_to_every_covariance_and_keeps_the_rest(params, delta):
    # catches: delta I added instead of delta^2 I, or weights/means/labels not carried over
    gm = params.gm
    blurred = gm.blurred(delta)
    want = params.covs + delta ** 2 * np.eye(params.dim)
    assert_bounded(blurred.covs, want, 2 * EPS64 * np.abs(want), "blurred covs")
    for name in ("means", "labels"):
        np.testing.assert_array_equal(getattr(blurred, name), getattr(gm, name), err_msg=name)
    # the constructor normalises the (already normalised) weights again: equal to an ulp or two
    assert_bounded(blurred.weights, gm.weights, 4 * EPS64 * gm.weights, "blurred weights")
    assert blurred is not gm
    if delta == 0:
        np.testing.assert_array_equal(blurred.covs, gm.covs)


def test_blurred_refuses_a_bad_delta_by_name():
    for delta in (-0.1, np.nan, np.inf, "1", None):
        with pytest.raises(ValueError, match=r"\bdelta\b"):
            MIX.blurred(delta)


def test_blurred_samples_have_the_mean_and_covariance_of_data_plus_delta_noise():
    # catches: delta I instead of delta^2 I in the covariances (0.7 vs 0.49 is ~50 standard errors here)
    # Tolerance: 5 Monte Carlo standard errors of n = 200_000 draws (a mean: sqrt(var / n); a covariance
    # entry: the sample std of (x_i - m_i)(x_j - m_j) over sqrt(n)), on both samples when two are compared.
    n, delta = 200_000, 0.7
    rng = np.random.default_rng(13)
    blurred, _ = MIX.blurred(delta).sample(n, rng)
    data, _ = MIX.sample(n, rng)
    noisy = data + delta * rng.standard_normal(data.shape)
    mean, cov = MIX.mean(), MIX.cov() + delta ** 2 * np.eye(2)

    def moments(x):
        centred = x - x.mean(0)
        products = centred[:, :, None] * centred[:, None, :]
        return x.mean(0), np.cov(x.T), np.sqrt(np.diag(np.cov(x.T)) / n), products.std(0) / np.sqrt(n)
    (m_b, c_b, se_mb, se_cb), (m_n, c_n, se_mn, se_cn) = moments(blurred), moments(noisy)
    assert_bounded(m_b, mean, 5 * se_mb, "blurred sample mean vs closed form")
    assert_bounded(c_b, cov, 5 * se_cb, "blurred sample cov vs closed form")
    assert_bounded(m_b, m_n, 5 * np.hypot(se_mb, se_mn), "blurred vs data + delta z, mean")
    assert_bounded(c_b, c_n, 5 * np.hypot(se_cb, se_cn), "blurred vs data + delta z, cov")


def test_errata_10_zero_init_as_eps_0_inflates_the_state():
    # docs/guidance.md, errata 10: one DDIM step from the first time of a 50-step leading grid with eps = 0
    # multiplies x by sqrt(a_prev / a); with (G17z) by (sqrt(a_prev) + sqrt(1 - a_prev)) / (sqrt(a) + sqrt(1 - a))
    t, t_prev = SCHED.timesteps(50, "leading")[:2]
    x = np.random.default_rng(0).standard_normal((5, 2))
    zero = samplers.ddim(lambda x, t: np.zeros_like(x), SCHED, x, np.array([t, t_prev]), return_path=True)[1][1]
    init = samplers.ddim(cfg_zero_star(MODEL, SCHED, 1, 3.0, zero_steps=2), SCHED, x, np.array([t, t_prev]),
                         return_path=True)[1][1]
    assert (t, t_prev) == (981, 961)
    assert round(float(np.mean(zero / x)), 3) == 1.217 and np.allclose(zero / x, zero[0, 0] / x[0, 0], rtol=1e-12)
    assert round(float(np.mean(init / x)), 4) == 1.0016 and np.allclose(init / x, init[0, 0] / x[0, 0], rtol=1e-12)
