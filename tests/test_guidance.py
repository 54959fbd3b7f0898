"""Guidance rules (refdiff/guidance.py, docs/guidance.md (G1)-(G10)).

On the exact oracle the rules have closed-form consequences: classifier guidance at scale 1 is the
conditional model (G4), CFG with weight w is classifier guidance with scale 1 + w (G5), guiding a
conditional model with scale s is CFG with w = s (G7), and the CFG rule is the same on eps, x0,
score and v (G8). These are hypothesis properties over random mixtures, points, times and labels;
the tolerance is float64 round-off scaled by the terms' sizes. The mean-shift form (G9) is checked
against the eps form through their exact relation (G10). Sampling with the exact models then
checks what guidance does: scale 1 reproduces p(x | y), and larger scales raise the exact
p(y | x_0) of the samples and shrink their per-class spread. On learned networks the rules are
checked against the formulas evaluated by hand; tests/test_guidance_learned.py trains models.
"""
import autograd.numpy as anp
import numpy as np
import pytest
from autograd import elementwise_grad, grad
from hypothesis import assume, given, strategies as st
from scipy.special import log_softmax

import toy_data
from refdiff import nn, process
from refdiff.guidance import (_sum_log_softmax_at, cfg_rule, classifier_free_guidance, classifier_grad,
                              classifier_guidance, interval_cfg, rescaled_cfg, w_from_guidance_scale)
from refdiff.metrics import two_sample_test
from refdiff.nn import Classifier, Denoiser, MLPConfig, init_params
from refdiff.samplers import ddim, ddpm
from refdiff.schedule import Schedule

from strategies import EPS64, assert_bounded, cases, coefficients, mixtures, seeds

SCHED = Schedule.linear(1000)
MIX = toy_data.mixture("anisotropic")  # a label owning two components, rotated covariances
OVERLAP = toy_data.mixture("three_overlapping")  # classes overlap at t = 0: room for guidance
# Round-off allowance for a few float64 operations on terms of the stated size.
OPS = 64


# ---- identities on the exact oracle ----------------------------------------------------------
ORACLE_SCHEDULES = st.sampled_from([SCHED, Schedule.cosine(1000), Schedule.linear(50)])  # built once


@st.composite
def oracle_cases(draw, n=6, min_dim=1):
    """A random mixture (1-5 components, D min_dim-4), its exact eps model and classifier on a random
    schedule, points within 8 of the origin, times over the whole chain and target labels."""
    p = draw(mixtures(min_dim=min_dim))
    sched = draw(ORACLE_SCHEDULES)
    rng = np.random.default_rng(draw(seeds))
    gm = p.gm
    x = rng.uniform(-8, 8, (n, gm.dim))
    t = rng.integers(1, sched.T + 1, n)
    t[0] = draw(st.sampled_from([1, sched.T]))  # an end of the chain in every case
    y = rng.integers(0, gm.num_labels, n)
    return gm, sched, x, t, y


def eps_roundoff(gm, sched, x, t):
    """Round-off allowance for the oracle's eps at (x, t), shape (N, 1).

    Every exact eps, conditional or not, and sqrt(1 - a) times the classifier's gradient are
    averages, with responsibilities as weights, of the K component terms
    sqrt(1 - a) C_k^-1 (x - sqrt(a) mu_k), C_k = a Sigma_k + (1 - a) I (docs/oracle.md (O2), (O5)).
    Each term is accurate to a few ulps times cond(C_k) of its size, and the average of K of them
    to K times that; OPS ulps of K cond max_k |term_k| bounds the difference of two such averages.
    """
    a = sched.alpha_bar[t][:, None, None, None]
    covs = a * gm.covs[None] + (1 - a) * np.eye(gm.dim)                         # (N, K, D, D)
    lam = np.linalg.eigvalsh(covs)                                              # (N, K, D)
    diff = x[:, None, :] - np.sqrt(a[:, :, 0, 0])[..., None] * gm.means[None]    # (N, K, D)
    terms = np.linalg.norm(np.linalg.solve(covs, diff[..., None])[..., 0], axis=2)  # (N, K)
    cond = (lam[..., -1] / lam[..., 0]).max(axis=1)
    size = np.sqrt(1 - a[:, 0, 0, 0]) * terms.max(axis=1)
    return (OPS * EPS64 * gm.num_components * cond * size)[:, None]


@given(oracle_cases())
def test_G4_scale_1_with_the_exact_classifier_is_the_conditional_eps(case):
    # (G1): grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t), so with s = 1 the rule
    # turns the exact unconditional eps into the exact conditional one.
    gm, sched, x, t, y = case
    model = gm.eps_model(sched)
    guided = classifier_guidance(model, gm.classifier(sched), sched, y, 1.0)(x, t)
    assert_bounded(guided, model(x, t, y), eps_roundoff(gm, sched, x, t), "s = 1 guided vs conditional")


@given(oracle_cases(), st.floats(-1.0, 20.0))
def test_G5_cfg_weight_w_is_classifier_guidance_with_scale_1_plus_w(case, w):
    # (1 + w) eps(y) - w eps = eps - sqrt(1 - a) (1 + w) grad log p(y | x_t) on exact models.
    gm, sched, x, t, y = case
    model = gm.eps_model(sched)
    cfg = classifier_free_guidance(model, y, w)(x, t)
    cg = classifier_guidance(model, gm.classifier(sched), sched, y, 1.0 + w)(x, t)
    # Each side combines such averages with weights of total size 1 + 2|w|.
    assert_bounded(cfg, cg, (1 + 2 * abs(w)) * eps_roundoff(gm, sched, x, t), "CFG(w) vs CG(1 + w)")


@given(oracle_cases(), st.floats(-2.0, 20.0))
def test_G7_guiding_the_conditional_model_with_scale_s_is_cfg_with_w_equal_s(case, s):
    gm, sched, x, t, y = case
    model = gm.eps_model(sched)
    cond_cg = classifier_guidance(model, gm.classifier(sched), sched, y, s, conditional=True)(x, t)
    assert_bounded(cond_cg, classifier_free_guidance(model, y, s)(x, t),
                   (1 + 2 * abs(s)) * eps_roundoff(gm, sched, x, t), "conditional CG(s) vs CFG(w = s)")


def test_cfg_end_points_and_the_diffusers_scale():
    rng = np.random.default_rng(3)
    x, t, y = 3 * rng.standard_normal((16, 2)), rng.integers(1, SCHED.T + 1, 16), rng.integers(0, 3, 16)
    model = MIX.eps_model(SCHED)
    np.testing.assert_allclose(classifier_free_guidance(model, y, 0.0)(x, t), model(x, t, y), rtol=1e-12)
    np.testing.assert_allclose(classifier_free_guidance(model, y, -1.0)(x, t), model(x, t), rtol=1e-12, atol=1e-15)
    # diffusers: uncond + guidance_scale (cond - uncond), with guidance_scale = 1 + w (G6).
    cond, uncond = model(x, t, y), model(x, t)
    np.testing.assert_allclose(cfg_rule(cond, uncond, w_from_guidance_scale(7.5)),
                               uncond + 7.5 * (cond - uncond), rtol=1e-12, atol=1e-12)
    assert w_from_guidance_scale(7.5) == 6.5 and w_from_guidance_scale(1) == 0.0


# The three maps from an eps prediction; each is affine in eps for fixed (x_t, t): f(e) = A + B e.
CONVERSIONS = {
    "x0": (lambda s, xt, t, e: process.eps_to_x0(s, xt, t, e), lambda c, xt: (xt / c.r, c.s / c.r)),
    "score": (lambda s, xt, t, e: process.eps_to_score(s, t, e), lambda c, xt: (0 * xt, 1 / c.s)),
    "v": (lambda s, xt, t, e: process.eps_to_v(s, xt, t, e), lambda c, xt: (c.s / c.r * xt, 1 / c.r)),
}


@pytest.mark.parametrize("target", CONVERSIONS)
@given(cases(3, min_alpha_bar=1e-12), st.floats(-1.0, 20.0))
def test_G8_cfg_is_the_same_rule_on_eps_x0_score_and_v(target, case, w):
    # The weights 1 + w and -w sum to 1, so the rule commutes with every affine map of eps.
    sched, t, (xt, cond, uncond) = case
    convert, affine = CONVERSIONS[target]
    c = coefficients(sched, t, len(xt))
    a, b = affine(c, xt)
    guided_then_converted = convert(sched, xt, t, cfg_rule(cond, uncond, w))
    converted_then_guided = cfg_rule(convert(sched, xt, t, cond), convert(sched, xt, t, uncond), w)
    # Both sides add (1 + 2|w|)-weighted terms of size |A| + |B| (|cond| + |uncond|).
    bound = OPS * EPS64 * (1 + 2 * abs(w)) * (np.abs(a) + np.abs(b) * (np.abs(cond) + np.abs(uncond)))
    assert_bounded(guided_then_converted, converted_then_guided, bound, target)


# ---- the classifier gradient and the mean-shift form -----------------------------------------
def test_G2_classifier_grad_is_the_gradient_of_the_log_probability_of_y():
    # Central differences of log softmax(logits)[y] with the exact classifier; step 1e-5 gives a
    # truncation error ~ 1e-10 |third derivative| and a round-off error ~ 1e-16 / 1e-5 = 1e-11.
    rng = np.random.default_rng(5)
    x, t, y = rng.uniform(-3, 3, (20, 2)), rng.integers(1, SCHED.T + 1, 20), rng.integers(0, 3, 20)
    logits = MIX.classifier(SCHED)
    g = classifier_grad(logits, SCHED, y, 2.5)(x, t)
    h = 1e-5
    for d in range(2):
        step = np.zeros(2)
        step[d] = h
        lp = [log_softmax(logits(x + sign * step, t), axis=1)[np.arange(20), y] for sign in (1, -1)]
        np.testing.assert_allclose(g[:, d], 2.5 * (lp[0] - lp[1]) / (2 * h), rtol=1e-6, atol=1e-6)


def _traced_sum_log_softmax_at(logits, labels):
    """sum_n log softmax(logits_n)[labels_n] traced by autograd through nn.log_softmax: the chain
    that guidance's primitive _sum_log_softmax_at stands for."""
    return anp.sum(nn.log_softmax(logits)[np.arange(len(labels)), labels])


@given(seeds, st.integers(1, 40), st.integers(1, 5), st.sampled_from(["float64", "float32"]), st.floats(-3.0, 4.0),
       st.booleans())
def test_G2_closed_form_gradient_is_autograds_chain_bit_for_bit(seed, n, k, dtype, decade, underflow):
    # The value, the gradient in the logits and through a map into them (dtype and the sign of
    # zeros included), and a second derivative equal the traced chain's bit for bit. Logits up to
    # 1e4 apart, and with `underflow` a column at -1e30 whose exp is 0.
    rng = np.random.default_rng(seed)
    z, w = rng.standard_normal((n, k)).astype(dtype), rng.standard_normal((k, k)).astype(dtype)
    if underflow:
        z[:, 0] = -1e30
    labels, scale = rng.integers(0, k, n), 10.0 ** decade
    for into in (lambda v: v, lambda v: anp.dot(v, w) * scale):
        got, want = (grad(lambda v: f(into(v), labels))(z) for f in (_sum_log_softmax_at, _traced_sum_log_softmax_at))
        assert got.dtype == want.dtype == z.dtype
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    assert _sum_log_softmax_at(z, labels) == _traced_sum_log_softmax_at(z, labels)
    v = rng.standard_normal((n, k))
    second = [elementwise_grad(lambda u: anp.sum(grad(lambda q: f(anp.sin(q), labels))(u) * v))(z.astype(np.float64))
              for f in (_sum_log_softmax_at, _traced_sum_log_softmax_at)]
    np.testing.assert_array_equal(*second)


def _alpha_of_original_t(sched, steps):
    """alpha of the DDPM chain (respaced when steps is given) at each original timestep it visits."""
    ts = np.arange(sched.T, 0, -1) if steps is None else sched.timesteps(steps, "leading")
    sub = sched.respace(ts)
    return dict(zip(ts.tolist(), sub.alphas[sub.T:0:-1]))


@pytest.mark.parametrize("steps", [None, 40])
def test_G10_mean_shift_with_beta_and_g_over_sqrt_alpha_is_the_eps_form(steps):
    # (G10): the eps form moves the DDPM mean by (beta_t / sqrt(alpha_t)) g; the mean-shift form
    # moves it by Sigma_t g. With Sigma_t = beta_t and g / sqrt(alpha_t) in place of g they are the
    # same chain, so with one seed the samples agree to round-off.
    rng = np.random.default_rng(7)
    n, s = 300, 3.0
    y, x_T = np.arange(n) % 3, rng.standard_normal((n, 2))
    model, logits = OVERLAP.eps_model(SCHED), OVERLAP.classifier(SCHED)
    alpha = _alpha_of_original_t(SCHED, steps)
    g = classifier_grad(logits, SCHED, y, s)
    shift = lambda x, t: g(x, t) / np.sqrt(alpha[int(t[0])])
    eps_form = ddpm(classifier_guidance(model, logits, SCHED, y, s), SCHED, x_T, np.random.default_rng(1),
                    variance="beta", steps=steps)
    mean_form = ddpm(lambda x, t: model(x, t), SCHED, x_T, np.random.default_rng(1), variance="beta",
                     steps=steps, mean_shift=shift)
    np.testing.assert_allclose(mean_form, eps_form, rtol=1e-9, atol=1e-9)
    unguided = ddpm(lambda x, t: model(x, t), SCHED, x_T, np.random.default_rng(1), variance="beta", steps=steps)
    assert np.abs(unguided - eps_form).max() > 0.1  # the guidance did move the samples


@pytest.mark.parametrize("steps", [None, 40])
def test_G10_mean_shift_with_beta_tilde_vanishes_at_t_1(steps):
    # beta_tilde_1 = beta_1 (1 - alpha_bar_0) / (1 - alpha_bar_1) = 0: the last step's mean is the
    # unguided mu(x_1, eps) even for a huge g, while the earlier steps did move.
    rng = np.random.default_rng(8)
    model = OVERLAP.eps_model(SCHED)
    eps_fn = lambda x, t: model(x, t)
    huge = lambda x, t: np.full_like(x, 1e3)
    x, path = ddpm(eps_fn, SCHED, rng.standard_normal((50, 2)), rng, steps=steps, mean_shift=huge, return_path=True)
    x1 = path[-2]
    last_t = 1 if steps is None else int(SCHED.timesteps(steps, "leading")[-1])
    sub = SCHED.respace(np.arange(SCHED.T, 0, -1) if steps is None else SCHED.timesteps(steps, "leading"))
    np.testing.assert_array_equal(x, process.p_mean(sub, x1, 1, eps_fn(x1, np.full(50, last_t))))
    assert np.all(path[-2] > 10)  # earlier steps each added Sigma_t * 1e3


def test_mean_shift_form_guides_toward_the_label():
    # The form of Algorithm 1 at scale 3 raises the exact p(y | x_0) of DDPM samples above that of
    # the conditional model's (about 0.99 against 0.89 on this mixture).
    rng = np.random.default_rng(9)
    n = 1500
    y, x_T = np.arange(n) % 3, rng.standard_normal((n, 2))
    model, logits = OVERLAP.eps_model(SCHED), OVERLAP.classifier(SCHED)
    plain = ddpm(lambda x, t: model(x, t, y), SCHED, x_T, np.random.default_rng(1), steps=100)
    shifted = ddpm(lambda x, t: model(x, t), SCHED, x_T, np.random.default_rng(1), steps=100,
                   mean_shift=classifier_grad(logits, SCHED, y, 3.0))
    p_plain, p_shifted = _p_label(plain, y), _p_label(shifted, y)
    diff = p_shifted - p_plain  # paired by the common noise; 5 SE of its mean
    assert diff.mean() > 5 * diff.std(ddof=1) / np.sqrt(n), (p_plain.mean(), p_shifted.mean())


# ---- sampling with exact models -------------------------------------------------------------
def _p_label(x, y):
    """Exact p(y_i | x_i) of clean samples under OVERLAP (O5 at alpha_bar = 1), shape (N,)."""
    return np.exp(OVERLAP.log_classifier(x, 1.0)[np.arange(len(x)), y])


@pytest.mark.parametrize("method", ["classifier", "cfg"])
def test_scale_1_reproduces_p_x_given_y(method):
    # DDPM with all 1000 steps (variance ratio to the truth ~0.99 for these classes, docs/samplers.md):
    # each class's samples against 20x as many true points by the calibrated permutation test.
    rng = np.random.default_rng(10)
    n = 1800
    y = np.arange(n) % 3
    model, logits = OVERLAP.eps_model(SCHED), OVERLAP.classifier(SCHED)
    eps_fn = (classifier_guidance(model, logits, SCHED, y, 1.0) if method == "classifier"
              else classifier_free_guidance(model, y, 0.0))
    x = ddpm(eps_fn, SCHED, rng.standard_normal((n, 2)), rng)
    for label in range(3):
        truth = OVERLAP.sample(n // 3, rng, y=label)[0]
        result = two_sample_test(x[y == label], truth, rng, n_perm=200, alpha=0.01)
        assert result.passed, (label, result)


STRENGTHS = (0.5, 1.0, 1.5, 2.0, 3.0)  # gamma = s = 1 + w


def _sweep(method, n=3000):
    """Samples of OVERLAP at each strength from one x_T (and one noise seed): common random numbers,
    so differences between strengths are the guidance's, not the draws'."""
    y, x_T = np.arange(n) % 3, np.random.default_rng(11).standard_normal((n, 2))
    model, logits = OVERLAP.eps_model(SCHED), OVERLAP.classifier(SCHED)
    runs = {
        "classifier": lambda g: ddim(classifier_guidance(model, logits, SCHED, y, g), SCHED, x_T, 50),
        "cfg": lambda g: ddim(classifier_free_guidance(model, y, g - 1), SCHED, x_T, 50),
        "mean-shift": lambda g: ddpm(lambda x, t: model(x, t), SCHED, x_T, np.random.default_rng(1), steps=100,
                                     mean_shift=classifier_grad(logits, SCHED, y, g)),
    }
    return y, [runs[method](g) for g in STRENGTHS]


def _sq_dist_to_class_mean(x, y):
    """||x_i - mean of x's class||^2, shape (N,)."""
    means = np.stack([x[y == k].mean(0) for k in range(3)])
    return np.sum((x - means[y]) ** 2, axis=1)


@pytest.mark.parametrize("method", ["classifier", "cfg", "mean-shift"])
def test_fidelity_rises_and_spread_falls_with_the_scale(method):
    # The fidelity-diversity trade-off. Each step up in strength must raise the mean exact
    # p(y | x_0) and lower every class's mean squared distance to its class mean (the squared
    # spread of (M8)) by more than 3 standard errors of the paired per-sample difference.
    y, samples = _sweep(method)
    for lo, hi, g in zip(samples, samples[1:], STRENGTHS[1:]):
        dp = _p_label(hi, y) - _p_label(lo, y)
        assert dp.mean() > 3 * dp.std(ddof=1) / np.sqrt(len(dp)), (method, g, dp.mean())
        dd = _sq_dist_to_class_mean(hi, y) - _sq_dist_to_class_mean(lo, y)
        for k in range(3):
            d = dd[y == k]
            assert d.mean() < -3 * d.std(ddof=1) / np.sqrt(len(d)), (method, g, k, d.mean())


# ---- every guided eps_fn with every sampler, on the oracle and on networks --------------------
SAMPLERS = {
    "ddpm": lambda f, x_T, rng: ddpm(f, SCHED, x_T, rng),
    "ddpm-respaced": lambda f, x_T, rng: ddpm(f, SCHED, x_T, rng, steps=25),
    "ddim": lambda f, x_T, rng: ddim(f, SCHED, x_T, 25),
}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_takes_a_guided_eps_fn_unchanged(sampler):
    # With the exact classifier at s = 1 (or CFG at w = 0) the guided eps is the conditional eps
    # to round-off (G4), so each sampler's guided chain matches its conditional chain.
    n = 60
    y = np.arange(n) % 3
    model, logits = MIX.eps_model(SCHED), MIX.classifier(SCHED)
    x_T = np.random.default_rng(12).standard_normal((n, 2))
    run = lambda f: SAMPLERS[sampler](f, x_T, np.random.default_rng(2))
    want = run(lambda x, t: model(x, t, y))
    for eps_fn in (classifier_guidance(model, logits, SCHED, y, 1.0), classifier_free_guidance(model, y, 0.0)):
        np.testing.assert_allclose(run(eps_fn), want, rtol=1e-7, atol=1e-7)


def _networks(dtype):
    """An untrained denoiser and classifier with random (nonzero) output layers, so the rules have
    something to combine."""
    rng = np.random.default_rng(13)
    nets = []
    for cls, kind in ((Denoiser, "denoiser"), (Classifier, "classifier")):
        config = MLPConfig(kind, dim=2, num_labels=3, hidden=16, depth=2, dtype=dtype)
        params = {k: v + 0.3 * rng.standard_normal(v.shape).astype(v.dtype)
                  for k, v in init_params(config, rng).items()}
        nets.append(cls(params, config, SCHED))
    return nets


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rules_on_networks_are_the_formulas(dtype):
    den, clf = _networks(dtype)
    rng = np.random.default_rng(14)
    x = rng.standard_normal((40, 2)).astype(dtype)
    t, y = rng.integers(1, SCHED.T + 1, 40), rng.integers(0, 3, 40)
    rtol = 1e-5 if dtype == "float32" else 1e-10
    cfg = classifier_free_guidance(den, y, 2.0)(x, t)
    assert cfg.dtype == np.dtype(dtype)
    np.testing.assert_allclose(cfg, 3 * den(x, t, y) - 2 * den(x, t), rtol=rtol, atol=rtol)
    grad = elementwise_grad(lambda z: log_softmax_at(clf(z, t), y))(x.astype(np.float64))
    want = den(x, t) - np.sqrt(1 - SCHED.alpha_bar[t])[:, None] * 1.5 * grad
    cg = classifier_guidance(den, clf, SCHED, y, 1.5)(x, t)
    assert cg.dtype == np.dtype(dtype)
    np.testing.assert_allclose(cg, want, rtol=100 * rtol, atol=100 * rtol)


def log_softmax_at(logits, y):
    """log softmax(logits)[y] per row, in autograd.numpy (an independent spelling of (G2)'s)."""
    top = anp.max(logits, axis=1, keepdims=True)
    return logits[np.arange(len(y)), y] - (top[:, 0] + anp.log(anp.sum(anp.exp(logits - top), axis=1)))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_networks_with_every_sampler(sampler):
    den, clf = _networks("float32")
    n = 30
    y, x_T = np.arange(n) % 3, np.random.default_rng(15).standard_normal((n, 2)).astype(np.float32)
    for eps_fn in (classifier_guidance(den, clf, SCHED, y, 2.0), classifier_free_guidance(den, y, 2.0)):
        x = SAMPLERS[sampler](eps_fn, x_T, np.random.default_rng(3))
        assert x.shape == (n, 2) and x.dtype == np.float32 and np.all(np.isfinite(x))


# ---- variants: CFG rescale (G11) and guidance in an interval (G12) -----------------------------
@given(oracle_cases(min_dim=2), st.floats(-1.0, 10.0), st.floats(0.0, 1.0))  # D = 1 rows have no spread
def test_G11_rescaled_cfg_is_the_formula_and_phi_0_is_cfg(case, w, phi):
    gm, sched, x, t, y = case
    model = gm.eps_model(sched)
    cond, uncond = model(x, t, y), model(x, t)
    guided = (1 + w) * cond - w * uncond
    assume(np.all(np.std(guided, axis=1) > 1e-12))  # one-coordinate rows have no spread to rescale
    want = phi * guided * np.std(cond, axis=1, keepdims=True) / np.std(guided, axis=1, keepdims=True) + (1 - phi) * guided
    np.testing.assert_allclose(rescaled_cfg(model, y, w, phi)(x, t), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(rescaled_cfg(model, y, w, 0.0)(x, t), classifier_free_guidance(model, y, w)(x, t))
    if phi == 1.0:  # fully rescaled: each row's spread is the conditional prediction's
        np.testing.assert_allclose(np.std(rescaled_cfg(model, y, w, 1.0)(x, t), axis=1), np.std(cond, axis=1), rtol=1e-9)


def test_G12_interval_cfg_guides_only_inside_the_interval():
    rng = np.random.default_rng(16)
    x, y = rng.standard_normal((40, 2)), rng.integers(0, 3, 40)
    t = np.repeat([1, 99, 100, 400, 401, 1000], [5, 5, 10, 10, 5, 5])
    model = MIX.eps_model(SCHED)
    got = interval_cfg(model, y, 3.0, 100, 400)(x, t)
    inside = (t >= 100) & (t <= 400)
    np.testing.assert_array_equal(got[inside], classifier_free_guidance(model, y, 3.0)(x, t)[inside])
    np.testing.assert_array_equal(got[~inside], model(x, t, y)[~inside])
    assert 0 < inside.sum() < len(t)


# ---- bad input --------------------------------------------------------------------------------
def _bad_calls():
    model, logits = MIX.eps_model(SCHED), MIX.classifier(SCHED)
    den, clf = _networks("float64")
    x = np.zeros((2, 2))
    return [
        (lambda: classifier_free_guidance(model, 0, float("nan")), "w"),
        (lambda: classifier_guidance(model, logits, SCHED, 0, float("inf")), "scale"),
        (lambda: classifier_grad(logits, SCHED, 0, "3"), "scale"),
        (lambda: classifier_free_guidance(model, None, 1.0)(x, 5), "y"),
        (lambda: classifier_guidance(model, logits, SCHED, None, 1.0)(x, 5), "y"),
        (lambda: classifier_guidance(model, logits, SCHED, 3, 1.0)(x, 5), "y must be in 0..2"),
        (lambda: classifier_guidance(model, logits, SCHED, -1, 1.0)(x, 5), "y"),
        (lambda: classifier_free_guidance(model, 7, 1.0)(x, 5), "y"),
        (lambda: classifier_guidance(model, logits, SCHED, 0, 1.0)(x, 0), "t must be in 1..1000"),
        (lambda: classifier_guidance(model, logits, SCHED, 0, 1.0)(x, 1001), "t"),
        (lambda: classifier_free_guidance(den, 0, 1.0)(x, 1001), "t"),
        (lambda: classifier_guidance(model, logits, SCHED, 0, 1.0)(np.zeros(2), 5), "x"),
        (lambda: classifier_guidance(den, clf, Schedule.linear(500), 0, 1.0), "schedule"),
        (lambda: classifier_guidance(den, logits, Schedule.cosine(1000), 0, 1.0), "eps_model"),
        (lambda: w_from_guidance_scale("7"), "guidance_scale"),
        (lambda: rescaled_cfg(model, 0, 1.0, float("nan")), "phi"),
        (lambda: interval_cfg(model, 0, 1.0, 400, 100), "t_low"),
        (lambda: interval_cfg(model, 0, 1.0, 0, 100), "t_low"),
        (lambda: w_from_guidance_scale(True), "guidance_scale"),
        (lambda: ddpm(lambda x, t: model(x, t), SCHED, np.zeros((3, 2)), np.random.default_rng(0),
                      mean_shift=lambda x, t: np.zeros(3)), "mean_shift"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_input_raises(index):
    call, match = _bad_calls()[index]
    with pytest.raises(ValueError, match=match):
        call()
