"""Every scalar argument of the public API gets a non-number and a NaN and raises ValueError naming it.

The convention (docs/architecture.md, "Conventions", "Errors"): bad input raises ValueError with a message
that names the argument and what was expected, "<name> must be ...", which ``arrays.as_real`` and
``arrays.as_count`` write. A string or a NaN that reaches numpy instead gives a TypeError, a
ValueError that names nothing, or no error at all.

``REGISTRY`` is the table of public callables of refdiff and toy_data: for each, a cheap valid call
(tiny arrays, ``Schedule.linear(50)``, one training step) and the kind of each of its scalar
arguments. For every (callable, argument) pair each bad value of the argument's kind replaces the
valid one and the call must raise ValueError whose message says "<name> must" (or "<name> and
<other> must"). ``test_every_valid_call_succeeds`` is the control: the same calls with the valid
values succeed, so no bad-value test passes because the call was broken anyway. The bad values
are, per kind, a non-number and a NaN at least (BAD: "1", None, [1.0], 1 + 0j, NaN, +-inf, 1.5 for counts) and
numpy's spellings of them (NUMPY_BAD), every one for every pair; hypothesis adds numbers written
as strings, complex numbers and NaN or infinities of every float dtype (ANY_BAD), derandomized
under ``--hypothesis-profile=ci``.
``test_every_public_scalar_parameter_is_in_the_registry`` walks every public module and fails when
a public parameter with a real-number default has no entry.

The application entry points (``bench.run``, ``demo.run``, ...) train models for minutes; their
valid call runs until the first expensive step, which is replaced by one that raises ``Reached``,
so the control shows the valid arguments pass the checks and the bad-value tests show that the
checks run before anything expensive does.
"""
import functools
import glob
import importlib
import inspect
import numbers
import os
import re
from dataclasses import dataclass, field
from typing import Callable
from unittest import mock

import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import toy_data
from refdiff import (bench, clip, datasets, demo, demo_images, guidance, inverse, latent, likelihood, methods,
                     metrics, nn, oracle, plot, process, samplers, sweep, theory, theory_mixture, tilted, train, verify)
from refdiff.schedule import Schedule
from toy_data import images, two_d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN, INF = float("nan"), float("inf")

# ---- kinds of scalar argument and their bad values ---------------------------------------------
# Every kind gets a string that float() would accept, a complex number and NaN; the kinds that hold
# one number also a list (an array where a number belongs), and required ones None.
REAL = "real"                      # a finite real number
OPT_REAL = "optional real"         # None or a finite real number
COUNT = "count"                    # an integer (labels as a single int included)
TIMESTEP = "timestep"              # one integer timestep; a whole-valued float (2.0) is one too
OPT_COUNT = "optional count"       # None or an integer
TIMES = "times"                    # a real number or an array of them (a list is fine)
INTS = "ints"                      # an integer or an integer array (timesteps, labels)
OPT_INTS = "optional ints"         # None or an integer or an integer array
STEPS = "steps"                    # a step count or an explicit 1-D grid of times
OPT_STEPS = "optional steps"

BAD = {
    REAL: ("1", None, [1.0], 1 + 0j, NAN, INF, -INF),
    OPT_REAL: ("1", [1.0], 1 + 0j, NAN, INF, -INF),
    COUNT: ("1", None, [1], 1 + 0j, NAN, INF, 1.5),
    OPT_COUNT: ("1", [1], 1 + 0j, NAN, INF, 1.5),
    TIMESTEP: ("1", None, [1], 1 + 0j, NAN, INF, 1.5),
    TIMES: ("1", None, 1 + 0j, NAN, INF),
    INTS: ("1", None, 1 + 0j, NAN, INF, 1.5),
    OPT_INTS: ("1", 1 + 0j, NAN, INF, 1.5),
    STEPS: ("1", None, 1 + 0j, NAN, INF, 1.5),
    OPT_STEPS: ("1", 1 + 0j, NAN, INF, 1.5),
}
# numpy's spellings of the same bad values, and a bool (a bool is not a number here: as_real and
# as_count refuse it); tested with BAD
NUMPY_BAD = {
    REAL: (np.float64(NAN), np.float32(INF), np.str_("1"), np.complex128(1), np.array(NAN), True),
    COUNT: (np.float64(NAN), np.float64(2.0), np.str_("1"), np.complex64(1), True),
    TIMESTEP: (np.float64(NAN), np.str_("1"), np.complex64(1), np.float64(1.5), np.array([3]), True),
    TIMES: (np.float32(NAN), np.array([1.0, NAN]), np.str_("1"), np.array(["1"]), np.complex128(1), True),
    INTS: (np.float64(NAN), np.str_("1"), np.complex64(1), np.float64(1.5)),
    STEPS: (np.float64(NAN), np.str_("1"), np.complex64(1)),
}
NUMPY_BAD.update({OPT_REAL: NUMPY_BAD[REAL], OPT_COUNT: NUMPY_BAD[COUNT], OPT_STEPS: NUMPY_BAD[STEPS],
                  OPT_INTS: NUMPY_BAD[INTS]})
assert set(NUMPY_BAD) == set(BAD)
# Bad for every kind, drawn by hypothesis: a number written as a string, a complex number (even
# with imaginary part 0), and NaN or an infinity in any floating dtype.
ANY_BAD = st.one_of(
    st.one_of(st.integers(-10, 10), st.floats(-1e3, 1e3)).map(str),
    st.complex_numbers(max_magnitude=1e3, allow_nan=False),
    st.tuples(st.sampled_from([float, np.float16, np.float32, np.float64, np.longdouble]),
              st.sampled_from(["nan", "inf", "-inf"])).map(lambda pair: pair[0](pair[1])),
)


class Reached(Exception):
    """Raised by the stand-in for an application's first expensive step."""


@dataclass(frozen=True)
class Entry:
    """A public callable, its scalar arguments by kind, and a cheap valid call.

    ``make()`` returns (function, args, kwargs): the valid call is function(*args, **kwargs), and
    every scalar argument is in kwargs. ``stub``: the dotted name of the first expensive step of
    an application, replaced during the call by one that raises ``Reached``. ``named``: the name a
    message uses for an argument where the docs name it otherwise ({argument: name}).
    """
    module: str
    qualname: str
    scalars: dict
    make: Callable
    stub: str = None
    named: dict = field(default_factory=dict)

    @property
    def key(self):
        return f"{self.module.split('.')[-1]}.{self.qualname}"

    def call(self, **overrides):
        fn, args, kwargs = self.make()
        with (mock.patch(self.stub, side_effect=Reached) if self.stub else _nothing()):
            return fn(*args, **{**kwargs, **overrides})


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ---- tiny inputs, built once ---------------------------------------------------------------------
@functools.lru_cache(None)
def sched():
    return Schedule.linear(50)  # alpha_bar_T > 0, which the ODE samplers and karras_times need (T = 20 has 0)


@functools.lru_cache(None)
def mixture():
    return toy_data.mixture("three_gaussians")


@functools.lru_cache(None)
def mixture_1d():
    return theory_mixture.two_class_mixture()


def rng():
    return np.random.default_rng(0)


def x2():
    return np.array([[0.1, -0.2], [0.3, 0.4]])


@functools.lru_cache(None)
def data2d():
    return mixture().sample(8, np.random.default_rng(1))


@functools.lru_cache(None)
def denoiser():
    x, y = data2d()
    return train.train_denoiser(x, y, sched(), rng(), steps=1, batch=4, hidden=4, depth=1, verbose=False)


@functools.lru_cache(None)
def classifier():
    x, y = data2d()
    return train.train_classifier(x, y, sched(), rng(), steps=1, batch=4, hidden=4, depth=1, verbose=False)


@functools.lru_cache(None)
def clip_model():
    x, y = data2d()
    return clip.train_clip(x, np.eye(3, dtype=bool)[y], clip.label_vocab(3), rng(), sched=sched(), steps=1,
                           batch=4, embed=4, hidden=4, depth=1, verbose=False)


@functools.lru_cache(None)
def tiny_images():
    return images.sample(8, np.random.default_rng(2))


@functools.lru_cache(None)
def autoencoder():
    return latent.train_autoencoder(tiny_images()[0], rng(), steps=1, batch=4, latent=2, hidden=4, depth=1,
                                    verbose=False)


@functools.lru_cache(None)
def axes():
    from matplotlib.figure import Figure
    return Figure().add_subplot()


def zero_eps(x, t, y=None):
    return np.zeros_like(x)


def linear_eps(x, t):
    return 0.1 * x


def logits(x, t):
    return anp.stack([x[:, 0], -x[:, 0], x[:, 1]], axis=1)


def clip_score(x, t):
    return anp.sum(x, axis=1)


def clean_score(x):
    return anp.sum(x, axis=1)


def words():
    return np.eye(3, dtype=bool)[data2d()[1]]


def ae_config():
    return latent.AEConfig(dim=4, latent=2, hidden=4, depth=1)


# ---- the registry of public functions ------------------------------------------------------------
def E(module, qualname, scalars, make, stub=None, named=None):
    return Entry(module, qualname, scalars, make, stub, named or {})


S, T, O = "refdiff.schedule", "refdiff.train", "refdiff.oracle"
REGISTRY = [
    # schedule
    E(S, "Schedule.linear", {"T": COUNT, "beta_start": REAL, "beta_end": REAL},
      lambda: (Schedule.linear, (), dict(T=20, beta_start=1e-4, beta_end=0.02))),
    E(S, "Schedule.scaled_linear", {"T": COUNT, "beta_start": REAL, "beta_end": REAL},
      lambda: (Schedule.scaled_linear, (), dict(T=20, beta_start=0.00085, beta_end=0.012))),
    E(S, "Schedule.cosine", {"T": COUNT, "s": REAL, "max_beta": REAL},
      lambda: (Schedule.cosine, (), dict(T=20, s=0.008, max_beta=0.999))),
    E(S, "Schedule.timesteps", {"steps": COUNT}, lambda: (sched().timesteps, (), dict(steps=5))),
    E(S, "Schedule.alpha_bar_at", {"t": TIMES}, lambda: (sched().alpha_bar_at, (), dict(t=2.5))),
    E(S, "Schedule.sigma_at", {"t": TIMES}, lambda: (sched().sigma_at, (), dict(t=2.5))),
    E(S, "Schedule.t_of_sigma", {"sigma": TIMES}, lambda: (sched().t_of_sigma, (), dict(sigma=0.5))),
    # process
    E("refdiff.process", "q_sample", {"t": INTS}, lambda: (process.q_sample, (sched(), x2()), dict(t=3, eps=x2()))),
    E("refdiff.process", "q_posterior", {"t": INTS},
      lambda: (process.q_posterior, (sched(), x2(), x2()), dict(t=3))),
    E("refdiff.process", "eps_to_x0", {"t": INTS}, lambda: (process.eps_to_x0, (sched(), x2()), dict(t=3, eps=x2()))),
    E("refdiff.process", "p_mean", {"t": INTS}, lambda: (process.p_mean, (sched(), x2()), dict(t=3, eps=x2()))),
    # oracle
    *[E(O, f"GaussianMixture.{name}", {"alpha_bar": TIMES},
        lambda name=name: (getattr(mixture(), name), (x2(),), dict(alpha_bar=0.5)))
      for name in ("log_prob_noised", "score", "eps", "x0_mean", "log_classifier")],
    E(O, "GaussianMixture.sample", {"n": COUNT}, lambda: (mixture().sample, (), dict(n=3, rng=rng()))),
    E(O, "GaussianMixture.optimal_loss", {"n": COUNT},
      lambda: (mixture().optimal_loss, (sched(),), dict(n=4, rng=rng()))),
    E(O, "GaussianMixture.denoising_draws", {"n": COUNT},
      lambda: (mixture().denoising_draws, (sched(),), dict(n=3, rng=rng()))),
    E(O, "GaussianMixture.mean", {"y": OPT_INTS}, lambda: (mixture().mean, (), dict(y=1))),
    E(O, "GaussianMixture.cov", {"y": OPT_INTS}, lambda: (mixture().cov, (), dict(y=1))),
    # samplers
    E("refdiff.samplers", "sampling_grid", {"steps": STEPS}, lambda: (samplers.sampling_grid, (sched(),), dict(steps=5))),
    E("refdiff.samplers", "ddpm", {"steps": OPT_STEPS},
      lambda: (samplers.ddpm, (zero_eps, sched(), x2(), rng()), dict(steps=5))),
    E("refdiff.samplers", "ddim", {"steps": STEPS, "eta": REAL},
      lambda: (samplers.ddim, (zero_eps, sched(), x2()), dict(steps=5, eta=0.5, rng=rng()))),
    E("refdiff.samplers", "ode", {"steps": STEPS}, lambda: (samplers.ode, (zero_eps, sched(), x2()), dict(steps=5))),
    E("refdiff.samplers", "euler_ancestral", {"steps": STEPS, "eta": REAL},
      lambda: (samplers.euler_ancestral, (zero_eps, sched(), x2()), dict(steps=5, eta=0.5, rng=rng()))),
    E("refdiff.samplers", "dpmpp_2m", {"steps": STEPS},
      lambda: (samplers.dpmpp_2m, (zero_eps, sched(), x2()), dict(steps=5))),
    E("refdiff.samplers", "edm", {"steps": STEPS, "s_churn": REAL, "s_tmin": REAL, "s_tmax": OPT_REAL, "s_noise": REAL},
      lambda: (samplers.edm, (zero_eps, sched(), x2()), dict(steps=5, s_churn=1.0, s_tmin=0.0, s_tmax=50.0,
                                                             s_noise=1.0, rng=rng()))),
    E("refdiff.samplers", "dpmpp_2s", {"steps": STEPS},
      lambda: (samplers.dpmpp_2s, (zero_eps, sched(), x2()), dict(steps=5))),
    E("refdiff.samplers", "dpmpp_2m_sde", {"steps": STEPS, "eta": REAL},
      lambda: (samplers.dpmpp_2m_sde, (zero_eps, sched(), x2()), dict(steps=5, eta=0.5, rng=rng()))),
    E("refdiff.samplers", "ddim_invert", {"steps": STEPS},
      lambda: (samplers.ddim_invert, (zero_eps, sched(), x2()), dict(steps=5))),
    E("refdiff.samplers", "thresholded", {"percentile": REAL, "max_value": REAL},
      lambda: (samplers.thresholded, (zero_eps, sched()), dict(percentile=0.9, max_value=2.0))),
    E("refdiff.samplers", "clipped", {"low": REAL, "high": REAL},
      lambda: (samplers.clipped, (zero_eps, sched()), dict(low=-1.0, high=1.0))),
    E("refdiff.samplers", "karras_times", {"steps": COUNT, "rho": REAL},
      lambda: (samplers.karras_times, (sched(),), dict(steps=5, rho=7.0))),
    E("refdiff.samplers", "ode_adaptive", {"steps": OPT_STEPS, "rtol": REAL, "atol": REAL},
      lambda: (samplers.ode_adaptive, (linear_eps, sched(), x2()), dict(steps=3, rtol=1e-3, atol=1e-5))),
    E("refdiff.samplers", "model_time", {"sigma": REAL}, lambda: (samplers.model_time, (sched(),), dict(sigma=1.0))),
    # guidance and the registry of methods
    E("refdiff.guidance", "classifier_grad", {"scale": REAL},
      lambda: (guidance.classifier_grad, (logits, sched(), 0), dict(scale=1.0))),
    E("refdiff.guidance", "classifier_guidance", {"scale": REAL},
      lambda: (guidance.classifier_guidance, (zero_eps, logits, sched(), 0), dict(scale=1.0))),
    E("refdiff.guidance", "clip_guidance", {"scale": REAL},
      lambda: (guidance.clip_guidance, (zero_eps, clip_score, sched()), dict(scale=1.0))),
    E("refdiff.guidance", "clip_x0_guidance", {"scale": REAL},
      lambda: (guidance.clip_x0_guidance, (zero_eps, clean_score, sched()), dict(scale=1.0))),
    E("refdiff.guidance", "classifier_free_guidance", {"w": REAL},
      lambda: (guidance.classifier_free_guidance, (zero_eps, 0), dict(w=1.0))),
    E("refdiff.guidance", "rescaled_cfg", {"w": REAL, "phi": REAL},
      lambda: (guidance.rescaled_cfg, (zero_eps, 0), dict(w=1.0, phi=0.7))),
    E("refdiff.guidance", "interval_cfg", {"w": REAL, "t_low": COUNT, "t_high": COUNT},
      lambda: (guidance.interval_cfg, (zero_eps, 0), dict(w=1.0, t_low=2, t_high=10))),
    E("refdiff.guidance", "w_from_guidance_scale", {"guidance_scale": REAL},
      lambda: (guidance.w_from_guidance_scale, (), dict(guidance_scale=7.5))),
    E("refdiff.guidance", "cfg_rule", {"w": REAL}, lambda: (guidance.cfg_rule, (x2(), x2()), dict(w=1.0))),
    E("refdiff.guidance", "apg_rule", {"w": REAL, "eta": REAL, "norm_threshold": OPT_REAL},
      lambda: (guidance.apg_rule, (x2(), x2()), dict(w=1.0, eta=0.5, norm_threshold=2.0))),
    E("refdiff.guidance", "cfg_zero_star_rule", {"w": REAL}, lambda: (guidance.cfg_zero_star_rule, (x2(), x2()), dict(w=1.0))),
    E("refdiff.guidance", "apg_guidance", {"w": REAL, "eta": REAL, "norm_threshold": OPT_REAL, "momentum": REAL},
      lambda: (guidance.apg_guidance, (zero_eps, sched(), 0), dict(w=1.0, eta=0.5, norm_threshold=2.0, momentum=-0.5))),
    E("refdiff.guidance", "cfg_zero_star", {"w": REAL, "zero_steps": COUNT},
      lambda: (guidance.cfg_zero_star, (zero_eps, sched(), 0), dict(w=1.0, zero_steps=1))),
    E("refdiff.guidance", "perp_neg_rule", {"w": REAL, "w_neg": REAL},
      lambda: (guidance.perp_neg_rule, (x2(), x2(), x2()), dict(w=1.0, w_neg=0.5))),
    E("refdiff.guidance", "perp_neg_guidance", {"w": REAL, "w_neg": OPT_REAL},
      lambda: (guidance.perp_neg_guidance, (zero_eps, 0, 1), dict(w=1.0, w_neg=0.5))),
    E("refdiff.guidance", "autoguidance", {"w": REAL}, lambda: (guidance.autoguidance, (zero_eps, zero_eps, 0), dict(w=1.0))),
    E("refdiff.guidance", "cfg_pp", {"lam": REAL}, lambda: (guidance.cfg_pp, (zero_eps, sched(), 0), dict(lam=0.5))),
    E("refdiff.guidance", "weight_schedule", {"w_start": REAL, "w_end": REAL},
      lambda: (guidance.weight_schedule, (sched(),), dict(w_start=3.0, w_end=0.0))),
    E("refdiff.guidance", "interval_weight", {"w": REAL, "t_low": COUNT, "t_high": COUNT},
      lambda: (guidance.interval_weight, (), dict(w=1.0, t_low=2, t_high=10))),
    E("refdiff.guidance", "steps_interval", {"start": REAL, "stop": REAL},
      lambda: (guidance.steps_interval, (sched(), 10), dict(start=0.1, stop=0.9))),
    E("refdiff.guidance", "log_likelihood_guidance", {"scale": REAL},
      lambda: (guidance.log_likelihood_guidance, (zero_eps, lambda x, t: x[:, 0], sched()), dict(scale=1.0))),
    E("refdiff.guidance", "x0_log_likelihood_guidance", {"scale": REAL, "t_max": OPT_COUNT},
      lambda: (guidance.x0_log_likelihood_guidance, (zero_eps, lambda x0, t: x0[:, 0], sched()),
               dict(scale=1.0, t_max=10))),
    E("refdiff.inverse", "likelihood_guidance", {"noise_std": REAL, "scale": REAL},
      lambda: (inverse.likelihood_guidance, (zero_eps, mixture(), sched(), [[1.0, 0.0]], [0.5]),
               dict(noise_std=0.3, scale=1.0))),
    E("refdiff.inverse", "dps_guidance", {"zeta": REAL, "t_max": OPT_COUNT},
      lambda: (inverse.dps_guidance, (zero_eps, sched(), [[1.0, 0.0]], [0.5]), dict(zeta=1.0, t_max=10))),
    E("refdiff.inverse", "reconstruction_guidance", {"noise_std": REAL, "scale": REAL, "t_max": OPT_COUNT},
      lambda: (inverse.reconstruction_guidance, (zero_eps, sched(), [[1.0, 0.0]], [0.5]),
               dict(noise_std=0.3, scale=1.0, t_max=10))),
    E("refdiff.oracle", "GaussianMixture.posterior_given", {"noise_std": REAL},
      lambda: (mixture().posterior_given, ([[1.0, 0.0]], [0.5]), dict(noise_std=0.3))),
    E("refdiff.samplers", "pcg", {"steps": STEPS, "langevin_steps": COUNT, "step_scale": REAL},
      lambda: (samplers.pcg, (linear_eps, linear_eps, sched(), x2()), dict(steps=3, rng=rng(), langevin_steps=1,
                                                                          step_scale=1.0))),
    E("refdiff.tilted", "tilted_log_target", {"w": REAL},
      lambda: (tilted.tilted_log_target, (mixture(), sched(), 0), dict(w=1.0))),
    E("refdiff.tilted", "smc", {"threshold": REAL, "mala_steps": COUNT, "mala_size": REAL},
      lambda: (tilted.smc, (linear_eps, lambda x, t: -0.5 * (x ** 2).sum(1), sched(), x2(), rng()),
               dict(steps=3, threshold=0.5, mala_steps=1, mala_size=1.0))),
    E("refdiff.tilted", "fk_cfg", {"w": REAL, "steps": OPT_STEPS, "threshold": REAL},
      lambda: (tilted.fk_cfg, (zero_eps, sched(), 0), dict(w=1.0, x_T=x2(), rng=rng(), steps=3, threshold=0.5))),
    E("refdiff.tilted", "sample", {"n": COUNT, "steps": OPT_STEPS, "threshold": REAL, "mala_steps": COUNT, "mala_size": REAL},
      lambda: (tilted.sample, (mixture(), sched(), 0, 1.0), dict(n=4, rng=rng(), steps=3, threshold=0.5, mala_steps=1,
                                                                  mala_size=1.0))),
    E("refdiff.methods", "Method.value_at", {"w": REAL}, lambda: (methods.get("classifier").value_at, (), dict(w=1.0))),
    E("refdiff.methods", "Method.eps_fn", {"value": REAL},
      lambda: (methods.get("cfg").eps_fn, ({"denoiser": zero_eps}, sched(), 0), dict(value=1.0)),
      named={"value": "w"}),  # the strength in the method's convention: CFG's w (refdiff.methods)
    # networks and training
    E("refdiff.nn", "time_embedding", {"t": TIMES, "dim": COUNT}, lambda: (nn.time_embedding, (), dict(t=3, dim=4))),
    E("refdiff.nn", "MLPConfig", {"dim": COUNT, "num_labels": COUNT, "hidden": COUNT, "depth": COUNT, "t_embed": COUNT},
      lambda: (nn.MLPConfig, ("denoiser",), dict(dim=2, num_labels=3, hidden=4, depth=1, t_embed=4))),
    E("refdiff.nn", "Denoiser.__call__", {"t": TIMES}, lambda: (denoiser(), (x2(),), dict(t=3, y=0))),
    E("refdiff.nn", "Classifier.__call__", {"t": TIMES}, lambda: (classifier(), (x2(),), dict(t=3))),
    E(T, "train_denoiser", {"steps": COUNT, "batch": COUNT, "lr": REAL, "p_uncond": REAL, "num_labels": OPT_COUNT,
                            "hidden": COUNT, "depth": COUNT, "ema": REAL, "clip": REAL, "min_snr_gamma": REAL},
      lambda: (train.train_denoiser, (*data2d(), sched(), rng()),
               dict(steps=1, batch=4, lr=1e-3, p_uncond=0.2, num_labels=3, hidden=4, depth=1, ema=0.9, clip=1.0,
                    verbose=False))),
    E(T, "train_classifier", {"steps": COUNT, "batch": COUNT, "lr": REAL, "num_labels": OPT_COUNT, "hidden": COUNT,
                              "depth": COUNT, "ema": REAL, "clip": REAL},
      lambda: (train.train_classifier, (*data2d(), sched(), rng()),
               dict(steps=1, batch=4, lr=1e-3, num_labels=3, hidden=4, depth=1, ema=0.9, clip=1.0, verbose=False))),
    E(T, "fit", {"steps": COUNT, "lr": REAL, "ema": REAL, "clip": REAL},
      lambda: (train.fit, (lambda p: anp.sum(p["a"] ** 2), {"a": np.ones(2)}, lambda: ()),
               dict(steps=1, lr=1e-3, ema=0.9, clip=1.0))),
    E(T, "budget", {"steps": OPT_COUNT}, lambda: (train.budget, (train.DENOISER_2D,), dict(steps=5))),
    # clip
    E("refdiff.clip", "label_vocab", {"num_labels": COUNT}, lambda: (clip.label_vocab, (), dict(num_labels=3))),
    E("refdiff.clip", "partial_bags", {"p_keep": REAL}, lambda: (clip.partial_bags, (words(), rng()), dict(p_keep=0.5))),
    E("refdiff.clip", "ClipConfig", {"dim": COUNT, "embed": COUNT, "hidden": COUNT, "depth": COUNT,
                                     "text_hidden": COUNT, "text_depth": COUNT, "t_embed": COUNT},
      lambda: (clip.ClipConfig, (), dict(dim=2, vocab=("a", "b"), embed=4, hidden=4, depth=1, text_hidden=4,
                                         text_depth=1, t_embed=4))),
    E("refdiff.clip", "train_clip", {"steps": COUNT, "batch": COUNT, "lr": REAL, "p_keep": REAL, "embed": COUNT,
                                     "hidden": COUNT, "depth": COUNT, "ema": REAL, "clip": REAL},
      lambda: (clip.train_clip, (data2d()[0], words(), clip.label_vocab(3), rng()),
               dict(sched=sched(), steps=1, batch=4, lr=1e-3, p_keep=0.5, embed=4, hidden=4, depth=1, ema=0.9,
                    clip=1.0, verbose=False))),
    E("refdiff.clip", "Clip.image_features", {"t": TIMES}, lambda: (clip_model().image_features, (x2(),), dict(t=3))),
    E("refdiff.clip", "Clip.logits", {"t": TIMES},
      lambda: (clip_model().logits, (x2(), ["label 0", "label 1"]), dict(t=3))),
    # latent
    E("refdiff.latent", "AEConfig", {"dim": COUNT, "latent": COUNT, "hidden": COUNT, "depth": COUNT, "kl_weight": REAL},
      lambda: (latent.AEConfig, (), dict(dim=4, latent=2, hidden=4, depth=1, kl_weight=1e-3))),
    E("refdiff.latent", "Autoencoder", {"scale": REAL},
      lambda: (latent.Autoencoder, (autoencoder().params, autoencoder().config), dict(scale=0.5))),
    E("refdiff.latent", "train_autoencoder", {"steps": COUNT, "batch": COUNT, "lr": REAL, "latent": COUNT,
                                              "hidden": COUNT, "depth": COUNT, "kl_weight": REAL, "ema": REAL,
                                              "clip": REAL},
      lambda: (latent.train_autoencoder, (tiny_images()[0], rng()),
               dict(steps=1, batch=4, lr=1e-3, latent=2, hidden=4, depth=1, kl_weight=1e-3, ema=0.9, clip=1.0,
                    verbose=False))),
    E("refdiff.latent", "train_latent_denoiser", {"num_labels": OPT_COUNT},
      lambda: (latent.train_latent_denoiser, (autoencoder(), *tiny_images(), sched(), rng()),
               dict(num_labels=7, steps=1, batch=4, hidden=4, depth=1, verbose=False))),
    # metrics and likelihood
    E("refdiff.metrics", "two_sample_test", {"n_perm": COUNT, "alpha": REAL},
      lambda: (metrics.two_sample_test, (x2(), x2() + 1, rng()), dict(n_perm=9, alpha=0.1))),
    E("refdiff.metrics", "class_moments", {"num_labels": COUNT},
      lambda: (metrics.class_moments, data2d(), dict(num_labels=3))),
    E("refdiff.metrics", "class_spread", {"num_labels": COUNT},
      lambda: (metrics.class_spread, data2d(), dict(num_labels=3))),
    E("refdiff.metrics", "denoiser_excess", {"n": COUNT},
      lambda: (metrics.denoiser_excess, (mixture().eps_model(sched()), mixture(), sched()), dict(n=4, rng=rng()))),
    E("refdiff.metrics", "classifier_excess", {"n": COUNT},
      lambda: (metrics.classifier_excess, (mixture().classifier(sched()), mixture(), sched()), dict(n=4, rng=rng()))),
    E("refdiff.likelihood", "log_likelihood", {"n_probes": COUNT, "rtol": REAL, "atol": REAL},
      lambda: (likelihood.log_likelihood, (linear_eps, sched(), x2()),
               dict(divergence="hutchinson", rng=rng(), n_probes=2, rtol=1e-3, atol=1e-5))),
    E("refdiff.likelihood", "flow_to_prior", {"rtol": REAL, "atol": REAL},
      lambda: (likelihood.flow_to_prior, (linear_eps, sched(), x2()), dict(rtol=1e-3, atol=1e-5))),
    # theory
    E("refdiff.theory", "exact_pair", {"mu": REAL, "v": REAL}, lambda: (theory.exact_pair, (sched(),), dict(mu=1.0, v=0.5))),
    E("refdiff.theory", "cfg_eps_coefficients", {"a": TIMES, "mu": REAL, "v": REAL, "w": REAL},
      lambda: (theory.cfg_eps_coefficients, (), dict(a=0.5, mu=1.0, v=0.5, w=1.0))),
    E("refdiff.theory", "ddim_output", {"mu": REAL, "v": REAL, "w": REAL, "eta": REAL},
      lambda: (theory.ddim_output, (sched(), [10, 5]), dict(mu=1.0, v=0.5, w=1.0, eta=0.5))),
    E("refdiff.theory", "ddpm_output", {"mu": REAL, "v": REAL, "w": REAL},
      lambda: (theory.ddpm_output, (sched(), [10, 5]), dict(mu=1.0, v=0.5, w=1.0))),
    E("refdiff.theory", "sampler_output", {"mu": REAL, "v": REAL, "w": REAL, "max_draws": OPT_COUNT},
      lambda: (theory.sampler_output, (sched(), "ddim"), dict(mu=1.0, v=0.5, w=1.0, max_draws=3))),
    *[E("refdiff.theory", name, {"mu": REAL, "v": REAL, "w": REAL},
        lambda name=name: (getattr(theory, name), (), dict(mu=1.0, v=0.5, w=1.0)))
      for name in ("tilted", "sde_limit")],
    E("refdiff.theory", "ode_limit", {"mu": REAL, "v": REAL, "w": REAL, "mu_other": REAL, "v_other": REAL},
      lambda: (theory.ode_limit, (), dict(mu=1.0, v=0.5, w=1.0, mu_other=0.5, v_other=0.8))),
    E("refdiff.theory", "affine_output", {"max_draws": OPT_COUNT},
      lambda: (theory.affine_output, (sched(), "ddim", lambda x, t: 0 * x), dict(max_draws=3))),
    # theory_mixture
    E("refdiff.theory_mixture", "tilted_log_density", {"w": REAL},
      lambda: (theory_mixture.tilted_log_density, (mixture_1d(), x2()[:, :1], 1), dict(w=1.0))),
    E("refdiff.theory_mixture", "confidence", {"y": COUNT},
      lambda: (theory_mixture.confidence, (mixture_1d(), x2()[:, :1]), dict(y=1))),
    E("refdiff.theory_mixture", "gaussian_entropy", {"var": TIMES},
      lambda: (theory_mixture.gaussian_entropy, (), dict(var=0.5))),
    E("refdiff.theory_mixture", "tilted_moments", {"y": COUNT, "w": REAL, "span": REAL},
      lambda: (theory_mixture.tilted_moments, (mixture_1d(),), dict(y=1, w=1.0, span=6.0))),
    E("refdiff.theory_mixture", "sample_cfg", {"y": COUNT, "w": REAL, "n": COUNT, "steps": COUNT},
      lambda: (theory_mixture.sample_cfg, (mixture_1d(), sched()), dict(y=1, w=1.0, sampler="ddim", n=3, rng=rng(),
                                                                       steps=2))),
    E("refdiff.theory_mixture", "sample_moments", {"y": COUNT},
      lambda: (theory_mixture.sample_moments, (mixture_1d(), np.linspace(-2, 2, 9)[:, None]), dict(y=1))),
    E("refdiff.theory_mixture", "cfg_table", {"seed": COUNT, "n": COUNT, "steps": COUNT, "n_ode": COUNT, "y": COUNT},
      lambda: (theory_mixture.cfg_table, (sched(),), dict(ws=(1.0,), seed=0, n=16, steps=2, n_ode=16, y=1))),
    E("refdiff.theory_mixture", "powered_score", {"alpha_bar": TIMES, "gamma": REAL},
      lambda: (theory_mixture.powered_score, (mixture_1d(), x2()[:, :1]), dict(alpha_bar=0.5, y=1, gamma=2.0))),
    E("refdiff.theory_mixture", "cfg_score", {"t": COUNT, "w": REAL},
      lambda: (theory_mixture.cfg_score, (mixture_1d(), sched(), x2()[:, :1]), dict(t=3, y=1, w=1.0))),
    E("refdiff.theory_mixture", "reverse_sde_drift", {"beta": REAL},
      lambda: (theory_mixture.reverse_sde_drift, (x2(), x2()), dict(beta=0.1))),
    E("refdiff.theory_mixture", "pf_ode_drift", {"beta": REAL},
      lambda: (theory_mixture.pf_ode_drift, (x2(), x2()), dict(beta=0.1))),
    E("refdiff.theory_mixture", "langevin_drift", {"beta": REAL},
      lambda: (theory_mixture.langevin_drift, (x2(),), dict(beta=0.1))),
    # sweep
    E("refdiff.sweep", "guided_eps_fn", {"w": REAL},
      lambda: (sweep.guided_eps_fn, ("cfg",), dict(w=1.0, models={"denoiser": zero_eps}, sched=sched(), y=0))),
    E("refdiff.sweep", "data_measures", {"num_labels": COUNT},
      lambda: (sweep.data_measures, data2d(), dict(num_labels=3))),
    # plot
    E("refdiff.plot", "label_colors", {"num_labels": COUNT}, lambda: (plot.label_colors, (), dict(num_labels=3))),
    E("refdiff.plot", "vector_field", {"t": TIMESTEP, "lim": REAL, "n": COUNT, "levels": COUNT},
      lambda: (plot.vector_field, (axes(), zero_eps, sched()), dict(t=3, lim=2.0, n=2, levels=2))),
    E("refdiff.plot", "field_on_grid", {"t": TIMESTEP, "lim": REAL, "n": COUNT},
      lambda: (plot.field_on_grid, (zero_eps, sched()), dict(t=3, lim=2.0, n=2, what="eps"))),
    E("refdiff.plot", "scale_sweep_grid", {"lim": REAL, "s": REAL},
      lambda: (plot.scale_sweep_grid, (_figure(), {("cfg", 0.0): x2()}, [0, 1], ["cfg"], [0.0]), dict(lim=2.0, s=2))),
    E("refdiff.plot", "trajectories", {"every": COUNT, "max_paths": COUNT},
      lambda: (plot.trajectories, (axes(), np.stack([x2(), x2()])), dict(every=1, max_paths=2))),
    E("refdiff.plot", "image_grid", {"ncols": COUNT, "vmin": REAL, "vmax": REAL},
      lambda: (plot.image_grid, (axes(), tiny_images()[0][:2]), dict(ncols=2, vmin=-1.0, vmax=1.0))),
    # data
    E("refdiff.datasets", "load", {"n": COUNT}, lambda: (datasets.load, ("moons",), dict(n=3, rng=rng()))),
    E("toy_data", "sample", {"n": COUNT}, lambda: (toy_data.sample, ("moons",), dict(n=3, rng=rng()))),
    E("toy_data.two_d", "check_sample_args", {"n": COUNT}, lambda: (two_d.check_sample_args, (), dict(n=3, rng=rng()))),
    *[E("toy_data.two_d", name, {"n": COUNT}, lambda name=name: (getattr(two_d, name), (), dict(n=3, rng=rng())))
      for name in ("moons", "circles", "spirals", "checkerboard", "swiss_roll")],
    E("toy_data.images", "sample", {"n": COUNT}, lambda: (images.sample, (), dict(n=3, rng=rng()))),
    E("toy_data.images", "judge", {"min_score": OPT_REAL, "min_contrast": OPT_REAL},
      lambda: (images.judge, (tiny_images()[0],), dict(min_score=0.7, min_contrast=0.5))),
    E("toy_data.images", "judge_attributes", {"min_score": OPT_REAL, "min_contrast": OPT_REAL},
      lambda: (images.judge_attributes, (tiny_images()[0],), dict(min_score=0.7, min_contrast=0.5))),
    # the identities, and the applications (stopped at their first expensive step)
    E("refdiff.verify", "run_checks", {"seed": COUNT}, lambda: (verify.run_checks, (), dict(seed=0, labels=["S1"]))),
    E("refdiff.bench", "median_times", {"repeats": COUNT},
      lambda: (bench.median_times, ({"none": lambda: None},), dict(repeats=1))),
    E("refdiff.bench", "run", {"seed": COUNT, "denoiser_steps": OPT_COUNT, "classifier_steps": OPT_COUNT,
                               "n_eval": COUNT, "n_samples": COUNT},
      lambda: (bench.run, ("ring8",), dict(seed=0, denoiser_steps=1, classifier_steps=1, n_eval=2, n_samples=2)),
      stub="refdiff.bench.step_times"),
    E("refdiff.bench", "run_images", {"seed": COUNT, "denoiser_steps": OPT_COUNT, "classifier_steps": OPT_COUNT,
                                      "n_samples": COUNT},
      lambda: (bench.run_images, (), dict(seed=0, denoiser_steps=1, classifier_steps=1, n_samples=2)),
      stub="refdiff.bench._train_pair"),
    E("refdiff.demo", "run", {"n_per_label": COUNT},
      lambda: (demo.run, (datasets.load("three_gaussians", 6, rng()), _out_dir(), rng()), dict(n_per_label=2)),
      stub="refdiff.demo.train_denoiser"),
    E("refdiff.demo_images", "run", {"n_per_label": COUNT, "n_caption": COUNT},
      lambda: (demo_images.run, (_out_dir(), rng()), dict(n_per_label=2, n_caption=2)),
      stub="refdiff.demo_images._train"),
]


def _figure():
    from matplotlib.figure import Figure
    return Figure()


@functools.lru_cache(None)
def _out_dir():
    import tempfile
    return tempfile.mkdtemp(prefix="refdiff-public-scalars-")


# Parameters with a real-number default that are not user scalars, so they have no entry above.
EXCLUDED = {
    # The bounds of the validators themselves: library code passes them to say what it accepts
    # (as_count(n, "n", low=1)); they are never user input, and the validated value is the
    # first argument, whose bad values tests/test_arrays_labels.py checks.
    ("refdiff.arrays", "as_count", "low"),
    ("refdiff.arrays", "as_timesteps", "low"),
    ("refdiff.arrays", "as_times", "low"),
}

PAIRS = [(entry, name) for entry in REGISTRY for name in entry.scalars]


def _expect_named(entry, name, bad):
    """None if entry called with name=bad raises ValueError saying "<name> must" (or "<name> and
    <other> must"), else a description of what happened."""
    said = entry.named.get(name, name)
    pattern = rf"(?<![\w.]){re.escape(said)}\b(?: and \w+)* must\b"
    try:
        entry.call(**{name: bad})
    except ValueError as err:
        return None if re.search(pattern, str(err)) else f"ValueError not naming {said}: {err}"
    except Exception as err:  # noqa: BLE001 - reported as the failure it is
        return f"{type(err).__name__}: {err}"
    return "no error"


@pytest.mark.parametrize("entry", REGISTRY, ids=lambda e: e.key)
def test_every_valid_call_succeeds(entry):
    if entry.stub:
        with pytest.raises(Reached):  # past every check, at the first expensive step
            entry.call()
    else:
        entry.call()


@pytest.mark.parametrize("entry, name", PAIRS, ids=[f"{e.key}-{n}" for e, n in PAIRS])
def test_a_bad_scalar_raises_value_error_naming_it(entry, name):
    kind = entry.scalars[name]
    failures = {repr(bad): _expect_named(entry, name, bad) for bad in BAD[kind] + NUMPY_BAD[kind]}
    failures = {bad: what for bad, what in failures.items() if what}
    assert not failures, f"{entry.module}.{entry.qualname}({name}=...): {failures}"


@given(st.sampled_from(PAIRS), ANY_BAD)
def test_any_numeric_string_complex_or_non_finite_value_raises_too(pair, bad):
    entry, name = pair
    what = _expect_named(entry, name, bad)
    assert what is None, f"{entry.module}.{entry.qualname}({name}={bad!r}): {what}"


# ---- the registry covers every public scalar parameter --------------------------------------------
def public_modules():
    """refdiff's modules (refdiff/*.py) and the toy_data package and its modules, by name."""
    names = []
    for package in ("refdiff", "toy_data"):
        names.append(package)
        for path in sorted(glob.glob(os.path.join(ROOT, package, "*.py"))):
            stem = os.path.basename(path)[:-3]
            if not stem.startswith("_"):
                names.append(f"{package}.{stem}")
    return names


def public_callables(module_name):
    """(qualname, callable) of every public function, class (its constructor) and public method
    (classmethods and staticmethods too) defined in the module."""
    module = importlib.import_module(module_name)
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj):
            yield name, obj
            for attr, member in vars(obj).items():
                if isinstance(member, (classmethod, staticmethod)):
                    member = member.__func__
                if inspect.isfunction(member) and (not attr.startswith("_") or attr == "__call__"):
                    yield f"{name}.{attr}", member


def real_default_parameters():
    """(module, qualname, parameter) for every public parameter whose default is an int or a float."""
    found = set()
    for module_name in public_modules():
        for qualname, obj in public_callables(module_name):
            try:
                params = inspect.signature(obj).parameters.values()
            except (TypeError, ValueError):
                continue
            for p in params:
                if isinstance(p.default, numbers.Real) and not isinstance(p.default, bool):
                    found.add((module_name, qualname, p.name))
    return found


def test_every_public_scalar_parameter_is_in_the_registry():
    covered = {(e.module, e.qualname, name) for e in REGISTRY for name in e.scalars}
    found = real_default_parameters()
    assert len(found) > 80  # the walk found the library (about 100 such parameters)
    missing = sorted(found - covered - EXCLUDED)
    assert not missing, f"public scalar parameters without a REGISTRY entry: {missing}"
    stale = sorted(EXCLUDED - found)
    assert not stale, f"EXCLUDED names parameters that no longer exist: {stale}"


def test_every_registry_entry_names_real_parameters():
    for entry in REGISTRY:
        obj = importlib.import_module(entry.module)
        for part in entry.qualname.split("."):
            obj = getattr(obj, part)
        params = inspect.signature(obj).parameters
        unknown = [name for name in entry.scalars if name not in params]
        assert not unknown, f"{entry.module}.{entry.qualname} has no parameters {unknown}"
    assert len({(e.module, e.qualname) for e in REGISTRY}) == len(REGISTRY)
