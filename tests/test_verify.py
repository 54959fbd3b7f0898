"""Tests for refdiff/verify.py: every check passes on the library as it is, for several seeds, and
fails on a library with one subtle mistake put in (a mutation per check, through monkeypatch,
which works because the checks look functions up on their modules at call time); the table, the
label filter and determinism.
"""
import numpy as np
import pytest

from refdiff import guidance, process, samplers, theory
from refdiff.oracle import GaussianMixture
from refdiff.schedule import Schedule
from refdiff.verify import CHECKS, Result, format_results, run_checks

ORIGINAL = {name: getattr(process, name) for name in ("q_posterior", "eps_to_x0", "x0_to_eps", "eps_to_score")}
CFG_RULE, CLASSIFIER_GRAD = guidance.cfg_rule, guidance.classifier_grad
CLASSIFIER_GUIDANCE, CLIP_GUIDANCE = guidance.classifier_guidance, guidance.clip_guidance
SCORE, LOG_CLASSIFIER, POST_INIT = GaussianMixture.score, GaussianMixture.log_classifier, Schedule.__post_init__


@pytest.fixture(scope="module")
def seed0():
    return run_checks(0)


# ---- on the library as it is -------------------------------------------------------------------
def test_every_check_passes_for_several_seeds(seed0):
    for results in (seed0, run_checks(1), run_checks(2)):
        assert [r.label for r in results] == [c.label for c in CHECKS]
        bad = [r for r in results if not (r.passed and r.max_error <= r.tolerance)]
        assert not bad, format_results(bad)


def test_a_filtered_run_reproduces_the_full_one(seed0):
    again = run_checks(0, ["G5", "C3", "D3"])
    assert [r.label for r in again] == ["C3/C4", "D3", "G5"]
    full = {r.label: r for r in seed0}
    assert all(r == full[r.label] for r in again)
    assert run_checks(0, ["C3/C4"]) == run_checks(0, "C4") == [full["C3/C4"]]
    assert run_checks(1, ["C3"])[0].max_error != full["C3/C4"].max_error  # another seed, other inputs


@pytest.mark.parametrize("labels,match", [(["G5", "G99"], r"labels .*unknown \['G99'\]"), (["g5"], "labels"),
                                          (["C3/C5"], "labels")])
def test_unknown_label_raises(labels, match):
    with pytest.raises(ValueError, match=match):
        run_checks(0, labels)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seed_raises(seed):
    with pytest.raises(ValueError, match="seed"):
        run_checks(seed, ["S1"])


def test_table_has_a_header_and_one_line_per_result(seed0):
    failed = Result("G5", "CFG(w) = classifier guidance(s = 1 + w)", 1e-3, 1e-12, False)
    results = seed0[:3] + [failed]
    lines = format_results(results).splitlines()
    assert len(lines) == len(results) + 1
    assert lines[0].split() == ["label", "identity", "max", "error", "tolerance", "result"]
    for line, r in zip(lines[1:], results):
        assert line.startswith(r.label) and r.statement in line
        assert line.split()[-1] == ("ok" if r.passed else "FAIL")
    assert "1.00e-03" in lines[-1] and "1.00e-12" in lines[-1]
    assert len({line.rindex(" ") for line in lines}) == 1  # fixed width: the last column lines up
    assert len(format_results([]).splitlines()) == 1


# ---- each check fails on a subtly wrong library --------------------------------------------------
def _coef(sched, t, like):
    """a = alpha_bar_t and beta_t as columns (N, 1) for the mutants."""
    t = np.broadcast_to(np.asarray(t), (len(like),))
    return sched.alpha_bar[t][:, None], sched.betas[t][:, None]


def alpha_bar_off_by_one(self):
    POST_INIT(self)  # alpha_bar_t = prod_{s < t} alpha_s: the product stops one factor short
    shifted = np.concatenate([[1.0], self.alpha_bar[:-1]])
    object.__setattr__(self, "alpha_bar", shifted)


def q_sample_with_1_minus_a(sched, x0, t, eps):
    a, _ = _coef(sched, t, x0)
    return np.sqrt(a) * x0 + (1 - a) * eps  # 1 - a for sqrt(1 - a)


def q_posterior_with_beta(sched, x0, xt, t):
    mean, _ = ORIGINAL["q_posterior"](sched, x0, xt, t)
    return mean, _coef(sched, t, x0)[1]  # beta_t for beta_tilde_t


def p_mean_with_alpha_bar(sched, xt, t, eps):
    a, beta = _coef(sched, t, xt)
    return (xt - beta / np.sqrt(1 - a) * eps) / np.sqrt(a)  # sqrt(alpha_bar_t) for sqrt(alpha_t)


def tweedie_with_sqrt(sched, xt, t, score):
    a, _ = _coef(sched, t, xt)
    return (xt + np.sqrt(1 - a) * score) / np.sqrt(a)  # sqrt(1 - a) for 1 - a


def v_to_eps_with_a(sched, xt, t, v):
    a, _ = _coef(sched, t, xt)
    return np.sqrt(1 - a) * xt + a * v  # a for sqrt(a)


def classifier_without_label_prior(self, x, alpha_bar):
    # Bayes' rule with the label prior p(y) left out: softmax of log q_t(x | y) instead.
    prior = np.array([self.weights[self.labels == y].sum() for y in range(self.num_labels)])
    return LOG_CLASSIFIER(self, x, alpha_bar) - np.log(prior)


def classifier_guidance_ignoring_conditional(eps_model, logits_model, sched, y, scale, conditional=False):
    return CLASSIFIER_GUIDANCE(eps_model, logits_model, sched, y, scale)  # conditional silently dropped


def classifier_guidance_with_sqrt_beta(eps_model, logits_model, sched, y, scale, conditional=False):
    grad_fn = CLASSIFIER_GRAD(logits_model, sched, y, scale)
    labels = y if conditional else None
    # Errata 6: sqrt(beta_t) for sqrt(1 - alpha_bar_t).
    return lambda x, t: eps_model(x, t, labels) - np.sqrt(_coef(sched, t, x)[1]) * grad_fn(x, t)


def scaled(fn, factor):
    return lambda *args: factor * fn(*args)


def negated_classifier_grad(*args):
    return scaled(CLASSIFIER_GRAD(*args), -1.0)  # Errata 4: the sign


def clip_guidance_with_the_sign_flipped(eps_model, score_fn, sched, scale):
    return CLIP_GUIDANCE(eps_model, score_fn, sched, -scale)  # Errata 4 of guidance.md, for CLIP


def cfg_with_w_plus_1(cond, uncond, w):
    return CFG_RULE(cond, uncond, w + 1)


def cfg_weights_not_summing_to_1(cond, uncond, w):
    return (1 + w) * cond + w * uncond


def eps_to_x0_clipped(*args):
    return np.clip(ORIGINAL["eps_to_x0"](*args), -1, 1)  # guided-diffusion's clip_denoised


def ddim_x0_with_eps_off(sched, xt, t, eps):
    return ORIGINAL["eps_to_x0"](sched, xt, t, 1.001 * eps)


def noise_std_equal_to_variance(table, t, like):
    return process.column(table, t, like) ** 2  # ddpm takes sqrt of this column for the noise


# (label, mutation, where, name, replacement). samplers imports p_mean and eps_to_x0 by name, so
# the sampler mutations replace samplers' own references.
CFG_COEFFICIENTS, SDE_LIMIT = theory._cfg_eps, theory.sde_limit  # (T1) itself, under the public check


def cfg_coefficients_with_w_plus_a_tenth(a, mu, v, w):
    return CFG_COEFFICIENTS(a, mu, v, w + 0.1)


def sde_variance_without_the_1_plus_2w(mu, v, w):
    mean, var = SDE_LIMIT(mu, v, w)
    return mean, var * (1 + 2 * w) / (2 + 2 * w)


MUTATIONS = [
    ("S1", "alpha_bar stops one factor short", Schedule, "__post_init__", alpha_bar_off_by_one),
    ("P1/C1", "q_sample with 1 - a for sqrt(1 - a)", process, "q_sample", q_sample_with_1_minus_a),
    ("P1/C1", "eps_to_x0 off by 1.001", process, "eps_to_x0", scaled(ORIGINAL["eps_to_x0"], 1.001)),
    ("P2/P3", "q_posterior variance beta for beta_tilde", process, "q_posterior", q_posterior_with_beta),
    ("P4", "p_mean with sqrt(alpha_bar) for sqrt(alpha)", process, "p_mean", p_mean_with_alpha_bar),
    ("C2", "x0_to_eps off by 1.001", process, "x0_to_eps", scaled(ORIGINAL["x0_to_eps"], 1.001)),
    ("C3/C4", "eps_to_score off by 1.001", process, "eps_to_score", scaled(ORIGINAL["eps_to_score"], 1.001)),
    ("C5/C6", "v_to_eps with a for sqrt(a)", process, "v_to_eps", v_to_eps_with_a),
    ("C7/O4", "tweedie_x0 with sqrt(1 - a) for 1 - a", process, "tweedie_x0", tweedie_with_sqrt),
    ("C7/O4", "oracle score off by 1.001", GaussianMixture, "score", scaled(SCORE, 1.001)),
    ("O2", "oracle score off by 1.001", GaussianMixture, "score", scaled(SCORE, 1.001)),
    ("O5", "classifier without the label prior", GaussianMixture, "log_classifier", classifier_without_label_prior),
    ("D1", "DDPM noise std = variance", samplers, "column", noise_std_equal_to_variance),
    ("D3", "DDIM's x0_hat with eps off by 1.001", samplers, "eps_to_x0", ddim_x0_with_eps_off),
    ("G4", "classifier gradient with the wrong sign", guidance, "classifier_grad", negated_classifier_grad),
    ("G5", "CFG with w + 1 for w", guidance, "cfg_rule", cfg_with_w_plus_1),
    ("G7", "conditional=True ignored", guidance, "classifier_guidance", classifier_guidance_ignoring_conditional),
    ("G8", "eps_to_x0 clipped to [-1, 1]", process, "eps_to_x0", eps_to_x0_clipped),
    ("G8", "CFG with weights 1 + w and +w", guidance, "cfg_rule", cfg_weights_not_summing_to_1),
    ("G10", "p_mean with sqrt(alpha_bar) for sqrt(alpha)", process, "p_mean", p_mean_with_alpha_bar),
    ("G10", "eps form with sqrt(beta) for sqrt(1 - a)", guidance, "classifier_guidance",
     classifier_guidance_with_sqrt_beta),
    ("G13", "CLIP guidance with the sign of its gradient flipped", guidance, "clip_guidance",
     clip_guidance_with_the_sign_flipped),
    ("T2/T3", "(T1) with w + 0.1 for w", theory, "_cfg_eps", cfg_coefficients_with_w_plus_a_tenth),
    ("T5/T6", "(T6) variance over 2 + 2w for 1 + 2w", theory, "sde_limit", sde_variance_without_the_1_plus_2w),
]


def test_every_check_has_a_mutation():
    assert sorted({m[0] for m in MUTATIONS}) == sorted(c.label for c in CHECKS)


@pytest.mark.parametrize("label,where,name,replacement", [(m[0], *m[2:]) for m in MUTATIONS],
                         ids=[f"{m[0]}: {m[1]}" for m in MUTATIONS])
def test_each_check_fails_on_a_subtly_wrong_library(monkeypatch, label, where, name, replacement):
    monkeypatch.setattr(where, name, replacement)
    (result,) = run_checks(0, [label])
    assert not result.passed, format_results([result])
    assert not result.max_error <= result.tolerance
    assert "FAIL" in format_results([result]).splitlines()[1]
