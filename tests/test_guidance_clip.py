"""CLIP guidance (refdiff/guidance.py: clip_guidance (G13) and clip_x0_guidance (G14)).

The acceptance identity: on the exact oracle, CLIP guidance whose score is the log-likelihood
ratio log p(x_t | y) - log p(x_t) (whose x-gradient is grad log p(y | x_t)) is classifier guidance
with the exact classifier, for every scale (hypothesis over random mixtures, schedules, points,
times and scales; the round-off bound of tests/test_guidance.py). The x0 variant is checked
against its formula derived by hand for an affine denoiser and a linear score, and against
central differences through a random network denoiser.
"""
import autograd.numpy as anp
import numpy as np
import pytest
from autograd.scipy.special import logsumexp
from hypothesis import given, strategies as st

from refdiff import clip
from refdiff.guidance import classifier_guidance, clip_guidance, clip_x0_guidance
from refdiff.nn import Denoiser, MLPConfig, param_shapes
from refdiff.oracle import GaussianMixture
from refdiff.process import eps_to_x0
from refdiff.schedule import Schedule

from strategies import EPS64, assert_bounded, mixtures, seeds

OPS = 64  # round-off allowance, as in tests/test_guidance.py
SCHEDULES = [Schedule.linear(1000), Schedule.cosine(1000), Schedule.linear(50), Schedule.cosine(20)]
RADII = [0.01, 1.0, 8.0, 30.0]
scales = st.one_of(st.just(0.0), st.just(1.0), st.floats(-30.0, 30.0))


@st.composite
def oracle_cases(draw, n=6):
    """A random mixture (1-5 components, D 1-4), a schedule, points within R of the origin (R from
    0.01 to 30: near the data and far beyond it), times over the whole chain and target labels."""
    p = draw(mixtures())
    sched = draw(st.sampled_from(SCHEDULES))
    rng = np.random.default_rng(draw(seeds))
    gm = p.gm
    radius = draw(st.sampled_from(RADII))
    x = rng.uniform(-radius, radius, (n, gm.dim))
    t = rng.integers(1, sched.T + 1, n)
    t[0] = draw(st.sampled_from([1, sched.T]))  # an end of the chain in every case
    y = rng.integers(0, gm.num_labels, n)
    return gm, sched, x, t, y


def eps_roundoff(gm, sched, x, t):
    """Round-off allowance for the oracle's eps at (x, t), shape (N, 1): tests/test_guidance.py's,
    plus a term for points far from the data.

    Every exact eps and sqrt(1 - a) times a gradient of a log-density is an average, with
    responsibilities as weights, of the K terms sqrt(1 - a) C_k^-1 (x - sqrt(a) mu_k); OPS ulps of
    K cond(C) max_k |term_k| bounds the difference of two such averages. Far from the data a
    component's log-density l_k ~ -m_k / 2 (m_k the Mahalanobis distance squared) is large, and
    each responsibility exp(l_k - logsumexp l) inherits its rounding, a relative error of ulps of
    |l_k|: OPS ulps of max_k m_k / 2 times the terms' size bounds that (test_guidance.py keeps x
    within 8 of the origin, where the first term dominates; here x reaches 30).
    """
    a = sched.alpha_bar[t][:, None, None, None]
    covs = a * gm.covs[None] + (1 - a) * np.eye(gm.dim)                         # (N, K, D, D)
    lam = np.linalg.eigvalsh(covs)                                              # (N, K, D)
    diff = x[:, None, :] - np.sqrt(a[:, :, 0, 0])[..., None] * gm.means[None]    # (N, K, D)
    solved = np.linalg.solve(covs, diff[..., None])[..., 0]                     # C_k^-1 (x - sqrt(a) mu_k)
    terms = np.linalg.norm(solved, axis=2)                                      # (N, K)
    half_maha = 0.5 * np.sum(diff * solved, axis=2).max(axis=1)                 # (N,) max_k m_k / 2
    cond = (lam[..., -1] / lam[..., 0]).max(axis=1)
    size = np.sqrt(1 - a[:, 0, 0, 0]) * terms.max(axis=1)
    return (OPS * EPS64 * (gm.num_components * cond + half_maha) * size)[:, None]


def likelihood_ratio(gm, sched, y):
    """score(x, t) = log p(x_t | y) - log p(x_t): its x-gradient is grad log p(y | x_t) (Bayes)."""
    def score(x, t):
        a = sched.alpha_bar[t]
        return gm.log_prob_noised(x, a, y) - gm.log_prob_noised(x, a)
    return score


def log_posterior(gm, sched, y):
    """score(x, t) = log softmax(oracle logits)[y], the trivial form: classifier guidance itself."""
    logits_model = gm.classifier(sched)

    def score(x, t):
        logits = logits_model(x, t)
        picked = anp.sum(logits * np.eye(logits.shape[1])[y], axis=1)
        return picked - logsumexp(logits, axis=1)
    return score


@pytest.mark.parametrize("make_score", [likelihood_ratio, log_posterior])
@given(case=oracle_cases(), s=scales)
def test_clip_guidance_with_the_exact_ratio_is_classifier_guidance(make_score, case, s):
    gm, sched, x, t, y = case
    model = gm.eps_model(sched)
    got = clip_guidance(model, make_score(gm, sched, y), sched, s)(x, t)
    want = classifier_guidance(model, gm.classifier(sched), sched, y, s)(x, t)
    # Both sides are eps minus s times such an average (the ratio's gradient is the difference of
    # two), so the bound is (1 + 2|s|) times the allowance, as in the G5 test.
    assert_bounded(got, want, (1 + 2 * abs(s)) * eps_roundoff(gm, sched, x, t), f"CLIP({s}) vs CG({s})")


@given(case=oracle_cases())
def test_clip_guidance_at_scale_1_with_the_ratio_is_the_conditional_eps(case):
    gm, sched, x, t, y = case
    model = gm.eps_model(sched)
    got = clip_guidance(model, likelihood_ratio(gm, sched, y), sched, 1.0)(x, t)
    assert_bounded(got, model(x, t, y), 3 * eps_roundoff(gm, sched, x, t), "CLIP(1) vs conditional")


def test_clip_guidance_at_scale_0_is_the_unconditional_eps_exactly():
    gm = _three_blobs()
    sched = SCHEDULES[0]
    rng = np.random.default_rng(0)
    x, t = rng.uniform(-6, 6, (50, 2)), rng.integers(1, sched.T + 1, 50)
    model = gm.eps_model(sched)
    got = clip_guidance(model, likelihood_ratio(gm, sched, np.zeros(50, np.int64)), sched, 0.0)(x, t)
    np.testing.assert_array_equal(got, model(x, t))  # eps - sigma * 0 * g, with g finite
    assert not np.array_equal(clip_guidance(model, likelihood_ratio(gm, sched, 0 * t), sched, 1.0)(x, t), got)


def _three_blobs():
    return GaussianMixture([1, 1, 2], [[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]], np.stack([np.eye(2)] * 3) * 0.5)


# ---- the x0 variant ------------------------------------------------------------------------------
@st.composite
def affine_cases(draw, n=5):
    """An affine eps(x) = x M + b with M not symmetric (so J^T and J differ), a score c . x0, a
    schedule and times with alpha_bar_t >= 1e-6, points of size up to 10^3."""
    d = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(seeds))
    sched = draw(st.sampled_from(SCHEDULES))
    allowed = np.flatnonzero(sched.alpha_bar[1:] >= 1e-6) + 1
    t = rng.choice(allowed, n)
    t[0] = draw(st.sampled_from([allowed[0], allowed[-1]]))
    x = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-3, 3, (n, 1))
    return sched, t, x, rng.standard_normal((d, d)), rng.standard_normal(d), rng.standard_normal(d)


@given(case=affine_cases(), s=scales)
def test_clip_x0_guidance_with_an_affine_denoiser_and_a_linear_score(case, s):
    # x0_hat(x) = (x - sigma eps(x)) / r with r = sqrt(a), sigma = sqrt(1 - a) (C1). With the
    # score c . x0_hat and J = d eps / d x, grad_x score = (c - sigma J^T c) / r, so
    # eps_bar = eps - sigma s (c - sigma J^T c) / r (G14). In rows, eps = x M + b gives
    # eps_i = sum_j x_j M_ji: J = M^T and J^T c = M c.
    sched, t, x, m, b, c = case
    eps_model = lambda z, tt, y=None: anp.dot(z, m) + b  # noqa: E731
    got = clip_x0_guidance(eps_model, lambda x0: anp.dot(x0, c), sched, s)(x, t)
    a = sched.alpha_bar[t][:, None]
    r, sigma = np.sqrt(a), np.sqrt(1 - a)
    eps = x @ m + b
    want = eps - sigma * s * (c - sigma * (m @ c)) / r
    # Each side adds a few float64 operations on terms of these sizes.
    size = np.abs(x) @ np.abs(m) + np.abs(b) + abs(s) * sigma * (np.abs(c) + sigma * (np.abs(m) @ np.abs(c))) / r
    assert_bounded(got, want, OPS * EPS64 * size, "x0-guided eps")


@pytest.fixture(scope="module")
def denoiser_and_score():
    """A random float64 denoiser (every weight and bias random, so eps is not 0) and a random
    clean toy CLIP's score for a caption: a smooth nonlinear score of x0."""
    sched = Schedule.linear(200)
    config = MLPConfig("denoiser", 3, 2, hidden=16, depth=2, t_embed=8, dtype="float64")
    rng = np.random.default_rng(0)
    params = {name: rng.standard_normal(shape) / np.sqrt(shape[0]) for name, shape in param_shapes(config).items()}
    den = Denoiser(params, config, sched)
    cfg = clip.ClipConfig(dim=3, vocab=("a", "b"), embed=4, hidden=8, depth=1, text_hidden=4, t_embed=4)
    clip_model = clip.Clip(clip.init_clip(cfg, rng), cfg)
    return sched, den, clip_model.score_fn("a b")


@pytest.mark.parametrize("s", [-2.0, 0.5, 3.0])
def test_clip_x0_guidance_through_a_network_against_central_differences(denoiser_and_score, s):
    sched, den, score = denoiser_and_score
    rng = np.random.default_rng(1)
    n = 8
    x, t = rng.standard_normal((n, 3)), rng.integers(1, 120, n)  # alpha_bar_t >= 0.22: 1 / r <= 2.2
    total = lambda z: score(eps_to_x0(sched, z, t, den(z, t)))  # (N,): row n depends on z_n only  # noqa: E731
    h = 1e-5
    g = np.zeros_like(x)
    for d in range(3):
        step = np.zeros(3)
        step[d] = h
        g[:, d] = (total(x + step) - total(x - step)) / (2 * h)
    sigma = np.sqrt(1 - sched.alpha_bar[t])[:, None]
    want = den(x, t) - sigma * s * g
    got = clip_x0_guidance(den, score, sched, s)(x, t)
    # Central differences with h = 1e-5: truncation h^2 |f'''| / 6 ~ 2e-11 |f'''| (the score is a
    # logit up to exp(logit_scale) = 14 of x0, and 1 / r <= 2.2), round-off eps |f| / h ~ 2e-16 *
    # 14 / 1e-5 = 3e-10. 1e-7 (times 1 + |s|) is far above both and far below the gradient term (O(1)).
    assert_bounded(got, want, 1e-7 * (1 + abs(s)), "x0 guidance vs central differences")
    assert np.abs(got - den(x, t)).max() > 1e-2  # the gradient term is not negligible


def test_clip_x0_guidance_at_scale_0_is_eps():
    sched = Schedule.linear(50)
    m = np.array([[1.0, 2.0], [-0.5, 0.3]])
    eps_model = lambda z, tt, y=None: anp.dot(z, m)  # noqa: E731
    x, t = np.random.default_rng(2).standard_normal((4, 2)), np.array([1, 10, 30, 50])
    np.testing.assert_array_equal(clip_x0_guidance(eps_model, lambda x0: anp.sum(x0, axis=1), sched, 0.0)(x, t),
                                  x @ m)


# ---- bad inputs --------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", [clip_guidance, clip_x0_guidance])
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf"), "1", True, None, [1.0]])
def test_non_finite_or_non_numeric_scale_raises(rule, scale):
    sched = Schedule.linear(50)
    with pytest.raises(ValueError, match=r"^scale must be a finite number"):
        rule(lambda x, t, y=None: x, lambda x, t=None: anp.sum(x, axis=1), sched, scale)


def test_clip_x0_guidance_needs_an_integer_t():
    sched = Schedule.linear(50)
    eps_fn = clip_x0_guidance(lambda z, t, y=None: 0.5 * z, lambda x0: anp.sum(x0, axis=1), sched, 1.0)
    x = np.ones((2, 2))
    assert eps_fn(x, 3).shape == (2, 2)
    for t in (2.5, np.array([3.0, 4.5])):
        with pytest.raises(ValueError, match=r"^t must be an integer timestep"):
            eps_fn(x, t)
    with pytest.raises(ValueError, match=r"^t must be in 1..50"):
        eps_fn(x, 51)


@pytest.mark.parametrize("rule", [clip_guidance, clip_x0_guidance])
def test_a_denoiser_trained_with_another_schedule_raises(rule):
    config = MLPConfig("denoiser", 2, 0, hidden=4, depth=1, t_embed=4)
    den = Denoiser({k: np.zeros(v) for k, v in param_shapes(config).items()}, config, Schedule.linear(50))
    with pytest.raises(ValueError, match=r"^eps_model was trained with a different schedule \(T = 50\)"):
        rule(den, lambda x, t=None: anp.sum(x, axis=1), Schedule.linear(1000), 1.0)
    rule(den, lambda x, t=None: anp.sum(x, axis=1), Schedule.linear(50), 1.0)  # its own schedule is fine


def test_clip_guidance_with_a_noise_aware_clip_score_matches_its_gradient():
    # The rule with a real noise-aware CLIP: eps - sigma s grad score, the gradient by central
    # differences of Clip.score_fn (h = 1e-5; errors ~1e-9 as above, bound 1e-7).
    sched = Schedule.linear(100)
    cfg = clip.ClipConfig(dim=2, vocab=clip.label_vocab(3), embed=4, hidden=8, depth=1, text_hidden=4, t_embed=4)
    model = clip.Clip(clip.init_clip(cfg, np.random.default_rng(3)), cfg, sched)
    score = model.score_fn("label 1")
    gm = _three_blobs()
    eps_model = gm.eps_model(sched)
    rng = np.random.default_rng(4)
    x, t = rng.uniform(-3, 3, (10, 2)), rng.integers(1, 101, 10)
    g = np.zeros_like(x)
    for d in range(2):
        step = np.zeros(2)
        step[d] = 1e-5
        g[:, d] = (score(x + step, t) - score(x - step, t)) / 2e-5
    want = eps_model(x, t) - np.sqrt(1 - sched.alpha_bar[t])[:, None] * 2.5 * g
    assert_bounded(clip_guidance(eps_model, score, sched, 2.5)(x, t), want, 1e-7 * 3.5, "CLIP guidance vs FD")


def test_clip_guidance_refuses_a_noise_aware_clip_trained_with_another_schedule():
    # As classifier_guidance refuses a classifier trained with another schedule: a noise-aware
    # CLIP trained for T = 1000 under a T = 50 schedule would read t as a different noise level.
    cfg = clip.ClipConfig(dim=2, vocab=clip.label_vocab(3), embed=4, hidden=8, depth=1, text_hidden=4, t_embed=4)
    model = clip.Clip(clip.init_clip(cfg, np.random.default_rng(5)), cfg, Schedule.linear(1000))
    sched = Schedule.linear(50)
    with pytest.raises(ValueError, match=r"^score_fn was trained with a different schedule \(T = 1000\)"):
        clip_guidance(_three_blobs().eps_model(sched), model.score_fn("label 0"), sched, 1.0)(np.ones((2, 2)), 3)


def test_each_rule_refuses_the_other_kind_of_clip_score():
    # (G13) differentiates a noise-aware score at (x_t, t); (G14) a clean score at x0_hat. A
    # Clip.score_fn says which it is, and the wrong kind is refused by name before any sampling.
    sched = Schedule.linear(100)
    cfg = clip.ClipConfig(dim=2, vocab=clip.label_vocab(3), embed=4, hidden=8, depth=1, text_hidden=4, t_embed=4)
    params = clip.init_clip(cfg, np.random.default_rng(6))
    noisy, clean = clip.Clip(params, cfg, sched).score_fn("label 0"), clip.Clip(params, cfg).score_fn("label 0")
    eps_model = _three_blobs().eps_model(sched)
    with pytest.raises(ValueError, match=r"^score_fn must be a noise-aware CLIP's score here, got a clean one"):
        clip_guidance(eps_model, clean, sched, 1.0)
    with pytest.raises(ValueError, match=r"^score_fn must be a clean CLIP's score here, got a noise-aware one"):
        clip_x0_guidance(eps_model, noisy, sched, 1.0)
    clip_guidance(eps_model, noisy, sched, 1.0)(np.ones((2, 2)), 3)  # the right kinds run
