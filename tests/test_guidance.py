"""Guidance rules on the exact oracle (docs/guidance.md arrives with the guidance issue)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import toy_data
from refdiff.guidance import classifier_free_guidance, classifier_guidance, w_from_guidance_scale
from refdiff.schedule import Schedule

SCHED = Schedule.linear(1000)
MIX = toy_data.mixture("anisotropic")  # a label owning two components, rotated covariances


def _case(seed, n=16):
    rng = np.random.default_rng(seed)
    return (3 * rng.standard_normal((n, 2)), rng.integers(1, SCHED.T + 1, n),
            rng.integers(0, MIX.num_labels, n))


@given(st.integers(0, 2 ** 32 - 1))
def test_classifier_guidance_at_scale_1_with_the_exact_classifier_is_the_conditional_eps(seed):
    # grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t) (Bayes), so with s = 1 the rule
    # turns the exact unconditional eps into the exact conditional one; float64 round-off only.
    x, t, y = _case(seed)
    model = MIX.eps_model(SCHED)
    guided = classifier_guidance(model, MIX.classifier(SCHED), SCHED, y, 1.0)(x, t)
    np.testing.assert_allclose(guided, model(x, t, y), rtol=1e-9, atol=1e-9)


@given(st.integers(0, 2 ** 32 - 1), st.floats(-1.0, 10.0))
def test_cfg_with_weight_w_is_classifier_guidance_with_scale_1_plus_w(seed, w):
    # (1 + w) eps(y) - w eps = eps - sqrt(1 - a) (1 + w) grad log p(y | x_t) on exact models.
    x, t, y = _case(seed)
    model = MIX.eps_model(SCHED)
    cfg = classifier_free_guidance(model, y, w)(x, t)
    cg = classifier_guidance(model, MIX.classifier(SCHED), SCHED, y, 1.0 + w)(x, t)
    np.testing.assert_allclose(cfg, cg, rtol=1e-8, atol=1e-8 * (1 + abs(w)))


def test_cfg_end_points_and_the_diffusers_scale():
    x, t, y = _case(3)
    model = MIX.eps_model(SCHED)
    np.testing.assert_allclose(classifier_free_guidance(model, y, 0.0)(x, t), model(x, t, y), rtol=1e-12)
    np.testing.assert_allclose(classifier_free_guidance(model, y, -1.0)(x, t), model(x, t), rtol=1e-12, atol=1e-15)
    assert w_from_guidance_scale(7.5) == 6.5


@pytest.mark.parametrize("call,match", [
    (lambda m: classifier_free_guidance(m, 0, float("nan")), "w"),
    (lambda m: classifier_guidance(m, MIX.classifier(SCHED), SCHED, 0, float("inf")), "scale"),
    (lambda m: classifier_free_guidance(m, None, 1.0)(np.zeros((2, 2)), 5), "y"),
    (lambda m: w_from_guidance_scale("7"), "guidance_scale"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call(MIX.eps_model(SCHED))
