"""``refdiff bench``: speed and quality figures for the learned 2D models (docs/learned.md).

Speed: the median time of one training step at batch 1024, and of one guided or unguided
prediction at N = 10,000. Quality: a denoiser and a noisy classifier trained with the default 2D
budget (train.DENOISER_2D, train.CLASSIFIER_2D) on a Gaussian-mixture preset, measured against
the oracle: excess loss over the Bayes floor (M5), cross-entropy over the exact classifier's (M6),
and unguided DDPM samples judged by the two-sample test (M3) beside the oracle sampler's.
Also: the BLAS thread setting and what one process spinning on a core (a "busy" machine) does
to a training step and a prediction at 1 and 2 threads, and the oracle's eps against a direct closed form written
here (one Cholesky factor per component and matrix products).
Benchmarks, not tests: machines are shared and noisy, so compare ratios taken in one run.
"""
import subprocess
import sys
import time

import numpy as np
from scipy.special import logsumexp

import toy_data
from toy_data import images

from . import methods, runtime
from .arrays import as_count
from .metrics import classifier_excess, denoiser_excess, two_sample_test
from .samplers import ddim, ddpm
from .schedule import Schedule
from .train import (CLASSIFIER_2D, CLASSIFIER_IMAGES, DENOISER_2D, DENOISER_IMAGES, budget, train_classifier,
                    train_denoiser)


def step_times(train, x0, y, sched, rng, **options):
    """Per-step wall times (s) of a training run, from on_step time stamps; shape (steps - 1,)."""
    stamps = []
    train(x0, y, sched, rng, verbose=False, on_step=lambda k, loss: stamps.append(time.perf_counter()), **options)
    return np.diff(stamps)


def _train_pair(x0, y, sched, rng, den_opts, clf_opts, out, prefix, verbose):
    """Train the denoiser and the noisy classifier, recording each one's wall time in ``out``;
    ``verbose``: each one's progress line on stderr (train.Progress)."""
    models = []
    for name, train, opts in (("denoiser", train_denoiser, den_opts), ("classifier", train_classifier, clf_opts)):
        start = time.perf_counter()
        models.append(train(x0, y, sched, rng, verbose=verbose, **opts))
        out[f"{prefix}train_seconds_{name}"] = time.perf_counter() - start
    return models


def median_times(fns, repeats):
    """Median wall time (s) of each callable in the dict ``fns`` over ``repeats`` rounds that call
    every one once, in turn, after one warm-up round: a load that comes and goes during the
    measurement slows all of them alike, so their ratios hold."""
    as_count(repeats, "repeats", low=1)
    times = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def run(data="ring8", seed=0, denoiser_steps=None, classifier_steps=None, n_eval=100_000, n_samples=2000,
        verbose=False):
    """All the figures as a dict of plain numbers (what ``refdiff bench --json`` prints); ``verbose``:
    a progress line on stderr while the models train."""
    as_count(seed, "seed"), as_count(n_eval, "n_eval", low=2), as_count(n_samples, "n_samples", low=2)
    for name, steps in (("denoiser_steps", denoiser_steps), ("classifier_steps", classifier_steps)):
        if steps is not None:
            as_count(steps, name)
    mix, sched, rng = toy_data.mixture(data), Schedule.linear(1000), np.random.default_rng(seed)
    x0, y = mix.sample(50_000, rng)
    den_opts, clf_opts = budget(DENOISER_2D, denoiser_steps), budget(CLASSIFIER_2D, classifier_steps)
    out = {"data": data, "seed": seed, "batch": DENOISER_2D["batch"]}
    for dtype in ("float64", "float32"):
        for name, train, opts in (("denoiser", train_denoiser, den_opts), ("classifier", train_classifier, clf_opts)):
            times = step_times(train, x0, y, sched, rng, **{**opts, "steps": 21, "dtype": dtype})
            out[f"train_step_ms_{name}_{dtype}"] = 1e3 * float(np.median(times))
    out.update(_threads(x0, y, sched, rng, den_opts))
    den, clf = _train_pair(x0, y, sched, rng, den_opts, clf_opts, out, "", verbose)
    out.update(_quality(mix, sched, den, clf, rng, n_eval, n_samples, den_opts["p_uncond"]))
    out.update(_sampling_speed(den, clf, sched, mix.num_labels, rng))
    out.update(_oracle_speed(mix, sched, rng))
    return out


def _threads(x0, y, sched, rng, den_opts, steps=31, n_predict=10_000):
    """Median denoiser train-step and 10,000-point prediction times at 1 and 2 BLAS threads, idle
    and with one other process spinning on a core, and the busy / idle ratios at the thread setting
    in use (restored after)."""
    setting = sorted(set(runtime.blas_threads().values())) or [None]
    out = {"threads": setting[0] if len(setting) == 1 else setting}
    model = train_denoiser(x0, y, sched, rng, verbose=False, **{**den_opts, "steps": 2})
    x, labels = rng.standard_normal((n_predict, x0.shape[1])), y[rng.integers(0, len(y), n_predict)]
    for load in ("idle", "busy"):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
        try:
            for n in (1, 2):
                runtime.set_threads(n)
                times = step_times(train_denoiser, x0, y, sched, rng, **{**den_opts, "steps": steps})
                out[f"train_step_ms_threads{n}_{load}"] = 1e3 * float(np.median(times))
                predict = median_times({"predict": lambda: model(x, sched.T // 2, labels)}, 9)["predict"]
                out[f"predict_ms_threads{n}_{load}"] = 1e3 * predict
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    if isinstance(out["threads"], int):
        runtime.set_threads(out["threads"])
        n = min(out["threads"], 2)
        for work in ("train_step", "predict"):
            out[f"busy_over_idle_{work}"] = out[f"{work}_ms_threads{n}_busy"] / out[f"{work}_ms_threads{n}_idle"]
    return out


def closed_form_eps(mix, x, a):
    """The exact eps of a Gaussian mixture at one alpha_bar a, written directly (the yardstick of
    ``_oracle_speed``): per component the Cholesky factor L_k of C_k = a Sigma_k + (1 - a) I,
    u = L_k^-1 (x - sqrt(a) mu_k), log N_k = -|u|^2 / 2 - log det L_k - D log(2 pi) / 2, and
    C_k^-1 (x - sqrt(a) mu_k) = L_k^-T u; the score is minus their responsibility-weighted sum (O2)."""
    terms, logs = [], []
    for k in range(mix.num_components):
        L = np.linalg.cholesky(a * mix.covs[k] + (1 - a) * np.eye(mix.dim))
        L_inv = np.linalg.inv(L)
        u = (x - np.sqrt(a) * mix.means[k]) @ L_inv.T
        logs.append(np.log(mix.weights[k]) - 0.5 * np.sum(u * u, axis=1) - np.sum(np.log(np.diag(L)))
                    - 0.5 * mix.dim * np.log(2 * np.pi))
        terms.append(u @ L_inv)
    r = np.exp(np.stack(logs, axis=1) - logsumexp(np.stack(logs, axis=1), axis=1, keepdims=True))
    return np.sqrt(1 - a) * sum(r[:, k:k + 1] * terms[k] for k in range(mix.num_components))


def _oracle_speed(mix, sched, rng, n=100_000, t=500):
    """Median time of the oracle's eps at n points sharing one t, against ``closed_form_eps``, and
    their largest difference."""
    x, a = 2 * rng.standard_normal((n, mix.dim)), float(sched.alpha_bar[t])
    model = mix.eps_model(sched)
    ms = {name: 1e3 * s for name, s in median_times({"oracle": lambda: model(x, t),
                                                     "closed_form": lambda: closed_form_eps(mix, x, a)}, 7).items()}
    return {"oracle_eps_ms": ms["oracle"], "closed_form_eps_ms": ms["closed_form"],
            "oracle_over_closed_form": ms["oracle"] / ms["closed_form"],
            "oracle_closed_form_max_diff": float(np.max(np.abs(model(x, t) - closed_form_eps(mix, x, a))))}


def _quality(mix, sched, den, clf, rng, n_eval, n_samples, p_uncond):
    """Excess losses against the oracle and the unguided-DDPM two-sample figures."""
    cond = denoiser_excess(den, mix, sched, n_eval, np.random.default_rng(rng.integers(2 ** 32)), True)
    uncond = denoiser_excess(den, mix, sched, n_eval, np.random.default_rng(rng.integers(2 ** 32)), False)
    # The loss the network was trained on weighs the two branches (1 - p_uncond) : p_uncond.
    loss = (1 - p_uncond) * cond.loss + p_uncond * uncond.loss
    floor = (1 - p_uncond) * cond.floor + p_uncond * uncond.floor
    ce = classifier_excess(clf, mix, sched, n_eval, rng)
    x_T, truth = rng.standard_normal((n_samples, mix.dim)), mix.sample(n_samples, rng)[0]
    learned = two_sample_test(ddpm(lambda x, t: den(x, t), sched, x_T, rng), truth, rng, n_perm=200)
    oracle_model = mix.eps_model(sched)
    exact = two_sample_test(ddpm(lambda x, t: oracle_model(x, t), sched, x_T, rng), truth, rng, n_perm=200)
    return {"denoiser_excess_conditional": cond.excess, "denoiser_excess_conditional_se": cond.stderr,
            "denoiser_excess_unconditional": uncond.excess, "denoiser_excess_unconditional_se": uncond.stderr,
            "denoiser_excess_trained_mix": loss / floor - 1,
            "classifier_cross_entropy": ce.loss, "classifier_cross_entropy_oracle": ce.floor,
            "classifier_excess": ce.excess,
            "ddpm_distance_learned": learned.statistic, "ddpm_p_value_learned": learned.p_value,
            "ddpm_passed_learned": learned.passed, "ddpm_distance_oracle": exact.statistic,
            "ddpm_distance_ratio": learned.statistic / exact.statistic, "ddpm_threshold": learned.threshold}


def _sampling_speed(den, clf, sched, num_labels, rng, n=10_000, w=3.0):
    """Median time of one prediction at N = n: unguided, and each guidance method the two models can
    run (refdiff.methods) at the common strength w, with its ratio to unguided.

    Each method is called once at t + 1 first, so that a rule with per-call state is timed at a
    later step of a sampling call: CFG-Zero*'s first step calls no model at all (G17z)."""
    x, t = rng.standard_normal((n, den.config.dim)), sched.T // 2
    y = rng.integers(0, num_labels, n)
    models = {"denoiser": den, "classifier": clf}
    fns = {"unguided": lambda: den(x, t, y)}
    for name in methods.available(models):
        method = methods.get(name)
        eps_fn = method.eps_fn(models, sched, y, method.value_at(w))
        eps_fn(x, t + 1)
        fns[name] = lambda eps_fn=eps_fn: eps_fn(x, t)
    ms = {name: 1e3 * s for name, s in median_times(fns, 15).items()}
    out = {f"sample_step_ms_{name}": value for name, value in ms.items()}
    out.update({f"sample_step_ratio_{name}": ms[name] / ms["unguided"] for name in fns if name != "unguided"})
    return out


def run_images(seed=0, denoiser_steps=None, classifier_steps=None, n_samples=700, verbose=False):
    """Tiny-image figures: training times, the noisy classifier's accuracy on clean images, and how
    often the rule-based judge (toy_data.images.judge) finds the requested class in unguided
    conditional samples (DDIM with 50 steps, DDPM with 1000), with the time per sample; ``verbose``:
    a progress line on stderr while the models train."""
    as_count(seed, "seed"), as_count(n_samples, "n_samples", low=1)
    for name, steps in (("denoiser_steps", denoiser_steps), ("classifier_steps", classifier_steps)):
        if steps is not None:
            as_count(steps, name)
    sched, rng = Schedule.linear(1000), np.random.default_rng(seed)
    x0, y = images.sample(20_000, rng)
    den_opts, clf_opts = budget(DENOISER_IMAGES, denoiser_steps), budget(CLASSIFIER_IMAGES, classifier_steps)
    out = {"images_seed": seed, "images_denoiser_steps": den_opts["steps"]}
    den, clf = _train_pair(x0, y, sched, rng, den_opts, clf_opts, out, "images_", verbose)
    x_test, y_test = images.sample(2000, rng)
    out["images_classifier_accuracy_clean"] = float(np.mean(clf(x_test, 1).argmax(axis=1) == y_test))
    wanted = np.arange(n_samples) % images.NUM_CLASSES
    eps_fn = lambda x, t: den(x, t, wanted)
    samplers = {"ddim50": lambda x_T: ddim(eps_fn, sched, x_T, 50), "ddpm1000": lambda x_T: ddpm(eps_fn, sched, x_T, rng)}
    for name, sample in samplers.items():
        start = time.perf_counter()
        judged = images.judge(sample(rng.standard_normal((n_samples, x0.shape[1]))))
        out[f"images_ms_per_sample_{name}"] = 1e3 * (time.perf_counter() - start) / n_samples
        out[f"images_judged_requested_class_{name}"] = float(np.mean(judged == wanted))
        out[f"images_judged_no_match_{name}"] = float(np.mean(judged == images.NO_MATCH))
    return out
