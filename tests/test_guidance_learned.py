"""Acceptance tests of guidance with learned models (issue 4; the rules are in docs/guidance.md).

Small models are trained here once per module, with fixed seeds, and sampled with
classifier-free guidance (CFG) at w = 3 and with classifier guidance (CG) at the matching scale
s = 1 + w = 4 (the denoiser's unconditional branch plus the noisy classifier's gradient):

- three_gaussians: the mean exact p(y | x_0) of the guided samples (from the analytic oracle) is
  >= 0.99 for both methods, and not below the unguided conditional model's (w = 0) mean.
- tiny images: the rule-based judge (toy_data.images.judge) finds the requested class in >= 95%
  of CFG samples, more often than in unguided ones (w = 0); CG at s = 4 is also judged right more
  often than unguided sampling (95% for CG needs a larger budget than a test affords; see below).

The budgets are the smallest found that pass with a margin for three training seeds (0, 1, 2);
the figures quoted in comments are from those seeds.
"""
import numpy as np
import pytest

import toy_data
from refdiff.guidance import classifier_free_guidance, classifier_guidance
from refdiff.samplers import ddim, ddpm
from refdiff.schedule import Schedule
from refdiff.train import CLASSIFIER_IMAGES_SMALL, DENOISER_IMAGES_SMALL, train_classifier, train_denoiser
from toy_data import images

SCHED = Schedule.linear(1000)
W = 3.0  # the CFG weight; classifier guidance runs at the matching scale s = 1 + W


def paired_gain(guided, unguided):
    """Mean of guided - unguided over samples that share their starting noise, and its standard
    error std(difference) / sqrt(n): the pairing is the test design, so no independence between
    the two runs is assumed."""
    d = np.asarray(guided, np.float64) - np.asarray(unguided, np.float64)
    return d.mean(), d.std(ddof=1) / np.sqrt(len(d))


# ---- three_gaussians: exact p(y | x_0) from the oracle -----------------------------------------
MIX = toy_data.mixture("three_gaussians")
N_2D = 1500  # 500 samples a class


@pytest.fixture(scope="module")
def gaussians():
    """A conditional denoiser (label dropout 0.3, so the unconditional branch that CG uses gets
    30% of the rows) and a noisy classifier, ~3 s together; DENOISER_2D takes 30-70 s. Enough, as
    the classes are 8.7 standard deviations apart: for training seeds 0-2 the unguided conditional
    samples had mean p(y | x_0) = 0.9992-0.9993 (a few samples between two classes) and both
    guided runs 1.000000. Even 200 denoiser steps met 0.99 at w = 3, but their guided samples
    collapsed to nearly a point per class (spread sqrt(trace cov) 0.03-0.07); at 1000 steps the
    unguided spread is the oracle's (0.40 against 0.39 for the oracle's DDIM-50 samples)."""
    rng = np.random.default_rng(0)
    x0, y = toy_data.sample("three_gaussians", 20000, rng)
    den = train_denoiser(x0, y, SCHED, rng, steps=1000, batch=256, lr=5e-3, p_uncond=0.3, hidden=64,
                         depth=3, dtype="float32", verbose=False)
    clf = train_classifier(x0, y, SCHED, rng, steps=300, batch=256, lr=2e-3, hidden=64, depth=3,
                           dtype="float32", verbose=False)
    target = np.arange(N_2D) % MIX.num_labels
    x_T = np.random.default_rng(1).standard_normal((N_2D, 2)).astype(np.float32)

    def fidelity(eps_fn):
        """Exact p(target | x_0) of each DDIM-50 sample (alpha_bar = 1: the clean-data posterior)."""
        x = ddim(eps_fn, SCHED, x_T, 50).astype(np.float64)
        return np.exp(MIX.log_classifier(x, 1.0))[np.arange(N_2D), target]

    return {"fidelity": fidelity, "unguided": fidelity(lambda x, t: den(x, t, target)),  # CFG at w = 0, one branch
            "cfg": classifier_free_guidance(den, target, W),
            "classifier": classifier_guidance(den, clf, SCHED, target, 1.0 + W)}


@pytest.mark.parametrize("method", ["cfg", "classifier"])
def test_three_gaussians_guided_samples_have_exact_class_posterior_above_099(gaussians, method):
    p = gaussians["fidelity"](gaussians[method])
    # The threshold on the mean exact p(y | x_0). Its standard error p.std() / sqrt(1500)
    # was ~1e-17 for the guided runs (6e-4 unguided), so 0.99 is decided by the model, not by the
    # sample.
    assert p.mean() >= 0.99, (p.mean(), p.min())
    # Guidance must not lower the fidelity of the conditional model it starts from (w = 0, same
    # x_T). A non-inferiority check: fail only if the guided mean is below the unguided one by
    # more than 2 standard errors of the paired difference (if both means were equal, sampling
    # noise alone would fail it ~2% of the time, one-sided). Measured: +7e-4 to +9e-4, SE 6e-4.
    gain, se = paired_gain(p, gaussians["unguided"])
    assert gain >= -2 * se, (gain, se, gaussians["unguided"].mean())


# ---- tiny images: the rule-based judge ----------------------------------------------------------
N_IMAGES = 1400  # 200 images a class


@pytest.fixture(scope="module")
def tiny_images():
    """The small image budget of refdiff/train.py: a residual denoiser (2 blocks x 192, 2000 steps,
    ~20-40 s) and a noisy classifier (~6 s).

    Why this budget: the CFG samples below (w = 3) were judged right 97.6 / 97.8 / 98.1% of the
    time for training seeds 0 / 1 / 2; 1500 steps gave 96.4% on seed 2 (700 other samples), and a
    3 x 128 resnet needed 3000 steps, ~1.3x the time, for 98%. lr 5e-3 rather than 2e-3, and an
    EMA capped at 0.99 (a ~100-step horizon; the default's warm-up decay gives ~220 at step 2000)
    each gave 2-3 points more (one seed, 3 x 128, DDIM-50); p_uncond = 0.3 as in DENOISER_2D,
    since CG runs on the unconditional branch.
    Why DDPM and not DDIM: at this budget deterministic DDIM-50 leaves residual noise that the
    judge rejects (w = 3: 88-90% judged right with DDIM-50 against 98% with DDPM-100, same
    models); the stochastic sampler's fresh noise corrects it, and 100 respaced steps cost ~2 s.
    """
    rng = np.random.default_rng(0)
    x0, y = images.sample(20000, rng)
    den = train_denoiser(x0, y, SCHED, rng, verbose=False, **DENOISER_IMAGES_SMALL)
    clf = train_classifier(x0, y, SCHED, rng, verbose=False, **CLASSIFIER_IMAGES_SMALL)
    target = np.arange(N_IMAGES) % images.NUM_CLASSES
    x_T = np.random.default_rng(1).standard_normal((N_IMAGES, images.SIZE ** 2)).astype(np.float32)

    def judged_right(eps_fn):
        """1.0 where the judge finds the requested class in the DDPM-100 sample, else 0.0."""
        x = ddpm(eps_fn, SCHED, x_T, np.random.default_rng(2), steps=100)
        return (images.judge(x.astype(np.float64)) == target).astype(np.float64)

    return {"judged_right": judged_right,
            "unguided": judged_right(lambda x, t: den(x, t, target)),  # the conditional model: CFG at w = 0
            "cfg": classifier_free_guidance(den, target, W),
            "classifier": classifier_guidance(den, clf, SCHED, target, 1.0 + W)}


def assert_above_unguided(right, unguided):
    # "Above the unguided rate", one-sided: the gain must exceed 2 standard errors of the paired
    # difference (same x_T and DDPM noise, so the pairs are not independent; the paired SE needs
    # no assumption about that). If guidance changed nothing, a gain that large would come from
    # sampling noise ~2% of the time. Measured: SE 1.3-1.4 points, gains 19-33 points.
    gain, se = paired_gain(right, unguided)
    assert gain > 2 * se, (right.mean(), unguided.mean(), gain, se)


def test_images_cfg_samples_are_judged_the_requested_class_95_percent(tiny_images):
    right = tiny_images["judged_right"](tiny_images["cfg"])
    # The threshold. The standard error of a rate near 0.95 from 1400 images is
    # sqrt(0.95 * 0.05 / 1400) = 0.6 points; the measured 97.6-98.1% sit 4.5-5 SE above it.
    assert right.mean() >= 0.95, right.mean()
    assert_above_unguided(right, tiny_images["unguided"])  # unguided: 64-67% judged right


def test_images_classifier_guidance_beats_unguided_sampling(tiny_images):
    # Classifier guidance at s = 4 on this budget is judged right 86-87% of the time (seeds 0-2),
    # not 95%, so the test does not ask for 95%. The unconditional branch is the weak part: the
    # conditional branch plus 3 x the same classifier gradient (the same target by Bayes' rule)
    # was judged right 96-97%, and 3x the denoiser steps (with a 2000-step classifier) lifted
    # s = 4 only to 92% (seed 0). What the small budget does show is that the classifier gradient
    # moves samples to the requested class, well beyond unguided sampling.
    right = tiny_images["judged_right"](tiny_images["classifier"])
    assert_above_unguided(right, tiny_images["unguided"])  # unguided: 64-67% judged right
