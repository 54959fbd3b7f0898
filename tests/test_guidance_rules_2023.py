"""The guidance rules of 2023-2025 in refdiff/guidance.py: negative prompts (G15), adaptive projected
guidance (G16) and CFG-Zero* (G17), each by its identities with CFG (G5) and its defining
geometry, on random predictions (hypothesis) and on the oracle; the projection they share, at
tiny and huge sizes. The rest of (G16)-(G21): tests/test_guidance_rules_2024.py."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import toy_data
from refdiff.guidance import (apg_rule, cfg_rule, cfg_zero_star_rule, classifier_free_guidance, negative_prompt_guidance,
                              perp_neg_rule)
from refdiff.labels import NULL_LABEL
from refdiff.schedule import Schedule
from strategies import EPS64, assert_bounded

SCHED = Schedule.linear(1000)
MIX = toy_data.mixture("three_gaussians")
weights = st.floats(-1.0, 20.0)


@st.composite
def pairs(draw, min_dim=2):
    """(cond, uncond) of one shape (N, D) or (N, H, W), entries within [-10, 10]."""
    shape = draw(st.sampled_from([(draw(st.integers(1, 6)), draw(st.integers(min_dim, 5))), (3, 2, 4)]))
    elements = st.floats(-10, 10, allow_subnormal=False)
    return draw(hnp.arrays(np.float64, shape, elements=elements)), draw(hnp.arrays(np.float64, shape, elements=elements))


def dot(a, b):
    return np.sum(a * b, axis=tuple(range(1, a.ndim)), keepdims=True)


def projection(a, onto):
    """(<a, onto> / ||onto||^2) onto per sample, 0 where onto = 0, in numpy's long double: its wider
    exponent range keeps ||onto||^2 from underflowing for the tiny entries hypothesis draws (an
    independent route to guidance._projection, which rescales instead)."""
    a, onto = a.astype(np.longdouble), onto.astype(np.longdouble)
    squared = dot(onto, onto)
    return (np.where(squared > 0, dot(a, onto) / np.where(squared > 0, squared, 1), 0) * onto).astype(np.float64)


# ---- (G15) negative prompts ---------------------------------------------------------------------
def test_G15_a_null_negative_is_cfg_bit_for_bit_and_a_label_replaces_the_unconditional_branch():
    rng = np.random.default_rng(0)
    x, t, y = rng.standard_normal((40, 2)), rng.integers(1, 1001, 40), rng.integers(0, 3, 40)
    model = MIX.eps_model(SCHED)
    assert np.array_equal(negative_prompt_guidance(model, y, NULL_LABEL, 3.0)(x, t),
                          classifier_free_guidance(model, y, 3.0)(x, t))
    y_neg = (y + 1) % 3
    np.testing.assert_array_equal(negative_prompt_guidance(model, y, y_neg, 3.0)(x, t),
                                  cfg_rule(model(x, t, y), model(x, t, y_neg), 3.0))
    with pytest.raises(ValueError, match=r"\by_neg\b"):
        negative_prompt_guidance(model, y, None, 3.0)(x, t)


# ---- (G16) APG -------------------------------------------------------------------------------------
@given(pairs(), weights)
def test_G16_eta_1_without_a_threshold_is_cfg_in_both_forms(pair, w):
    cond, uncond = pair
    scale = (1 + 2 * abs(w)) * (np.abs(cond) + np.abs(uncond) + 1)  # a few ulps of the terms
    for form in ("paper", "diffusers"):
        assert_bounded(apg_rule(cond, uncond, w, eta=1.0, form=form), cfg_rule(cond, uncond, w), 64 * EPS64 * scale, form)


@given(pairs(), weights, st.floats(0.0, 2.0), st.floats(0.01, 50.0))
def test_G16_parallel_part_scaled_by_eta_orthogonal_part_kept_threshold_applied_first(pair, w, eta, threshold):
    # paper form: out - cond = w (d_perp + eta d_par), with d the thresholded cond - uncond: its part
    # along cond is eta <d, cond> / ||cond||^2 times cond, and what is left is orthogonal to cond
    cond, uncond = pair
    out = apg_rule(cond, uncond, w, eta=eta, norm_threshold=threshold)
    d = cond - uncond
    norm = np.sqrt(dot(d, d))
    d = d * np.minimum(1.0, threshold / np.where(norm > 0, norm, 1.0))
    parallel = projection(d, cond)
    update = (d - parallel) + eta * parallel
    scale = (1 + abs(w)) * (1 + eta) * (np.abs(cond) + np.abs(uncond) + 1)
    assert_bounded(out, cond + w * update, 256 * EPS64 * scale, "apg, paper")
    assert np.all(np.sqrt(dot(d, d)) <= threshold * (1 + 1e-12))
    # diffusers' form builds on uncond at 1 + w
    other = apg_rule(cond, uncond, w, eta=eta, norm_threshold=threshold, form="diffusers")
    assert_bounded(other, uncond + (1 + w) * update, 256 * EPS64 * scale, "apg, diffusers")


def test_G16_in_one_dimension_the_orthogonal_part_vanishes_and_a_zero_cond_keeps_all_of_d():
    cond, uncond = np.array([[2.0], [-1.0]]), np.array([[0.5], [1.0]])
    np.testing.assert_allclose(apg_rule(cond, uncond, 3.0, eta=0.25), cond + 3.0 * 0.25 * (cond - uncond), rtol=1e-15)
    zero = np.zeros((1, 3))
    np.testing.assert_array_equal(apg_rule(zero, np.ones((1, 3)), 2.0, eta=0.0), 2.0 * -np.ones((1, 3)))


def test_G16_refuses_bad_arguments_by_name():
    c = np.ones((2, 3))
    for kwargs, name in (({"w": np.inf}, "w"), ({"eta": np.nan}, "eta"), ({"norm_threshold": 0.0}, "norm_threshold"), ({"norm_threshold": np.inf}, "norm_threshold"),
                         ({"form": "torch"}, "form")):
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            apg_rule(c, c, **{"w": 1.0, **kwargs})


# ---- (G17) CFG-Zero* -------------------------------------------------------------------------------
def test_G17_s_star_1_is_cfg_bit_for_bit_and_uncond_0_is_the_scaled_conditional():
    uncond, cond = np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[1.0, 5.0], [-3.0, 2.0]])  # <c, u> = ||u||^2
    assert np.array_equal(cfg_zero_star_rule(cond, uncond, 4.0), cfg_rule(cond, uncond, 4.0))
    np.testing.assert_array_equal(cfg_zero_star_rule(cond, np.zeros_like(cond), 4.0), 5.0 * cond)


@given(pairs(min_dim=1), weights)
def test_G17_subtracts_the_projection_of_cond_onto_uncond(pair, w):
    cond, uncond = pair
    out = cfg_zero_star_rule(cond, uncond, w)
    along = projection(cond, uncond)
    scale = (1 + 2 * abs(w)) * (np.abs(cond) + np.abs(uncond) + 1) * (1 + np.sqrt(dot(cond, cond)))
    assert_bounded(out, (1 + w) * cond - w * along, 256 * EPS64 * scale, "cfg-zero*")
    # what CFG-Zero* pushes away from is orthogonal to what is left of cond
    residual = cond - along
    assert np.all(np.abs(dot(residual, along)) <= 1e-9 * (1 + dot(cond, cond)))


@pytest.mark.parametrize("size", [1e-170, 1e-160, 1e160])
def test_projections_of_tiny_and_huge_vectors_neither_underflow_nor_overflow(size):
    # ||onto||^2 of these under- or overflows in float64; the projection itself is well inside the range.
    # A parallel negative changes nothing in Perp-Neg; CFG-Zero* with uncond parallel to cond is the conditional.
    d_pos = np.array([[size, 0.0]])
    got = perp_neg_rule(d_pos, np.zeros((1, 2)), np.array([[1.0, 0.0]]), 1.0, 2.0)
    np.testing.assert_allclose(got, 2 * d_pos, rtol=1e-15, atol=0)
    cond = np.array([[3.0 * size, -size]])
    np.testing.assert_allclose(cfg_zero_star_rule(cond, 0.5 * cond, 4.0), cond, rtol=1e-14, atol=0)
    np.testing.assert_allclose(apg_rule(cond, -cond, 2.0, eta=0.5), cond + 2.0 * 0.5 * 2 * cond, rtol=1e-14, atol=0)
