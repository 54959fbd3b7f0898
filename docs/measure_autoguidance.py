"""Autoguidance (G19) with learned weak models against CFG (G5) at matched fidelity on three_overlapping.

Trains on 20,000 points of three_overlapping (seed 0) a good denoiser with the default 2D budget
(refdiff.train.DENOISER_2D: 3 x 128, 4000 steps at batch 1024) and, three times each (seeds of their
own), two weak ones of the same recipe, narrower and trained shorter (WEAK_BUDGETS; Karras et al.
2024, Sec. 3): "weak A" 3 x 64 for 1000 steps, "weak B" 3 x 32 for 250 steps. Samples DDIM-50 from one
x_T, 1000 per class, and prints one Markdown table and the timings. Its rows: the unguided
conditional models; CFG with the good model's own null branch; autoguidance of the good model by
each weak one; as references CFG and autoguidance (weak model: the oracle blurred by 0.5) with exact
models. Each guided row is at the w where the mean exact p(y | x0) (M7) of its samples first reaches
0.98 (``crossing`` of docs/measure_guidance.py; if it never does, its row at the largest w), with the
spread (M8), the energy distance (M1; the same reference draws for every row), the spread of the
ODE limit (T13) for the exact rows that have one, the spread of each weak model's own conditional
samples, and the excess denoising loss (M5) of each branch over the oracle's (20,000 draws common to
every model): how weak "weak" is.

Run: python docs/measure_autoguidance.py
  (2.5 min with one BLAS thread on a 2-core machine, 50 s of it training the good model)
"""
import importlib.util
import os
import time

import numpy as np

import toy_data
from refdiff import runtime
from refdiff.guidance import autoguidance, classifier_free_guidance
from refdiff.metrics import denoiser_excess, fidelity
from refdiff.samplers import ddim
from refdiff.schedule import Schedule
from refdiff.sweep import mixture_measures
from refdiff.theory import ode_limit
from refdiff.train import DENOISER_2D, train_denoiser

_spec = importlib.util.spec_from_file_location(
    "measure_guidance", os.path.join(os.path.dirname(os.path.abspath(__file__)), "measure_guidance.py"))
measure_guidance = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(measure_guidance)

SEED, N_TRAIN, N_SAMPLES, N_EXCESS, STEPS, REPLICATES = 0, 20_000, 3000, 20_000, 50, 3
TARGET, WEAK_BLUR = 0.98, 0.5  # the matched fidelity (M7); the exact weak model: the oracle blurred by 0.5
WS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 16.0)
GOOD_BUDGET = DENOISER_2D  # with train_denoiser's defaults hidden = 128, depth = 3
# The same recipe (batch, lr, label dropout, EMA, float32), a narrower network trained shorter.
WEAK_BUDGETS = {"weak A": {**DENOISER_2D, "hidden": 64, "steps": 1000},
                "weak B": {**DENOISER_2D, "hidden": 32, "steps": 250}}
ORACLE, BLURRED = "oracle", f"oracle blurred by {WEAK_BLUR}"


def train_models(mix, sched, good_budget, weak_budgets, replicates, n_train, seed):
    """The good denoiser ("good") and ``replicates`` of each weak one ("weak A1", ...) on n_train
    draws of ``mix``, each model from its own generator (seed, i), independent of the others.

    Returns ({name: model}, {name: (description, seconds)}), e.g. "3 x 64, 1000 steps" (depth x width).
    """
    x0, y0 = mix.sample(n_train, np.random.default_rng(seed))
    budgets = {"good": good_budget, **{f"{name}{r + 1}": budget for name, budget in weak_budgets.items()
                                       for r in range(replicates)}}
    models, info = {}, {}
    for i, (name, budget) in enumerate(budgets.items()):
        start = time.perf_counter()
        models[name] = train_denoiser(x0, y0, sched, np.random.default_rng([seed, i + 1]),
                                      num_labels=mix.num_labels, verbose=False, **budget)
        config = models[name].config
        info[name] = (f"{config.depth} x {config.hidden}, {budget['steps']} steps", time.perf_counter() - start)
    return models, info


def excess_losses(models, mix, sched, n, seed):
    """{(name, at_null): Excess} of every model's loss over the Bayes floor (M5), at the label and at
    the null label, on the same n draws for every model."""
    return {(name, at_null): denoiser_excess(model, mix, sched, n, np.random.default_rng(seed), not at_null)
            for name, model in models.items() for at_null in (False, True)}


def with_exact(models, mix, sched):
    """The learned models and the exact ones: the oracle's eps (docs/oracle.md) and that of the oracle
    blurred by WEAK_BLUR (``GaussianMixture.blurred``)."""
    return {**models, ORACLE: mix.eps_model(sched), BLURRED: mix.blurred(WEAK_BLUR).eps_model(sched)}


def guidance_methods(names):
    """[(first, second, at_null)] over the models ``names`` of ``with_exact``: the unguided conditional
    models (second None), CFG with the good model's null branch, autoguidance of the good model by
    each weak one, and CFG and autoguidance by the blurred oracle with exact models."""
    methods = [("good", None, False), (ORACLE, None, False), ("good", "good", True)]
    methods += [("good", name, False) for name in names if name not in ("good", ORACLE, BLURRED)]
    return methods + [(ORACLE, ORACLE, True), (ORACLE, BLURRED, False)]


def eps_fn_at(models, method, y):
    """w -> eps_fn of a method of ``guidance_methods``: the conditional model (w ignored), CFG (G5) or
    autoguidance (G19)."""
    first, second, at_null = method
    if second is None:
        return lambda w: lambda x, t: models[first](x, t, y)
    if at_null:
        return lambda w: classifier_free_guidance(models[first], y, w)
    return lambda w: autoguidance(models[first], models[second], y, w)


def t13_spread(mix, w):
    """The spread (M8) of autoguidance by the oracle blurred by WEAK_BLUR in the ODE limit (T13); w = 0
    is the conditional law. Each class of three_overlapping is one isotropic Gaussian N(mu, v I),
    sampled as N(mu, v^(1 + w) (v + delta^2)^(-w) I)."""
    v = float(mix.covs[0][0, 0])
    return float(np.sqrt(mix.dim * ode_limit(1.0, v, w, 1.0, v + WEAK_BLUR ** 2)[1]))


def matched_row(method, eps_fn_of_w, sample, measure, fidelity_at, ws):
    """A method swept over ws, and its measures at the w that first reaches TARGET (an unguided one
    at w = 0 only; ``reached`` None); one that never does gives its row at the largest w and its best
    fidelity over the sweep."""
    row = {"method": method}
    if method[1] is None:
        return {**row, "w": 0.0, "reached": None, **measure(sample(eps_fn_of_w(0.0)))}
    sweep = [{"w": w, **measure(sample(eps_fn_of_w(w)))} for w in ws]
    w = measure_guidance.crossing(sweep, lambda w: fidelity_at(sample(eps_fn_of_w(w))), TARGET)
    if w is None:
        return {**row, "reached": False, "best": max(r["fidelity"] for r in sweep), **sweep[-1]}
    return {**row, "w": w, "reached": True, **measure(sample(eps_fn_of_w(w)))}


def measure_all(models, mix, sched, n, seed, ws=WS, steps=STEPS):
    """Every method of ``guidance_methods`` on ``models`` (of ``with_exact``), DDIM with ``steps`` steps
    from one x_T, n // K samples per class; returns the rows of ``matched_row``, with the (T13) spread
    where it applies and, for autoguidance, the spread of the weak model's own conditional samples,
    and the seconds each method took."""
    y, x_T = np.arange(n) % mix.num_labels, np.random.default_rng([seed, 0]).standard_normal((n, mix.dim))
    sample = lambda eps_fn: ddim(eps_fn, sched, x_T, steps)
    measure = lambda x: mixture_measures(mix, np.random.default_rng([seed, 1]))(x, y)  # one reference for all rows
    fidelity_at = lambda x: fidelity(mix, x, y)[0]
    rows, seconds = [], []
    for method in guidance_methods(models):
        start = time.perf_counter()
        row = matched_row(method, eps_fn_at(models, method, y), sample, measure, fidelity_at, ws)
        if method[0] == ORACLE and method[1] in (None, BLURRED) and row["reached"] is not False:
            row["law_spread"] = t13_spread(mix, row["w"])
        if method[1] is not None and not method[2]:  # autoguidance: the weak model's own conditional samples
            row["weak_spread"] = measure(sample(eps_fn_at(models, (method[1], None, False), y)(0.0)))["spread"]
        rows.append(row)
        seconds.append(time.perf_counter() - start)
    return rows, seconds


def percent(e):
    """An Excess as 'excess ± stderr' in percent."""
    return f"{100 * e.excess:.2f} ± {100 * e.stderr:.2f}"


def table(rows, excess, info):
    """The rows of ``measure_all`` as a Markdown table, with the excess loss (M5, ``excess_losses``)
    of each branch and the size and training steps (``info``) of each learned second branch."""
    lines = [f"| guidance | second branch | excess loss (M5), % first / second | w at fidelity {TARGET} "
             "| fidelity (M7) | spread (M8) | energy distance (M1) | spread, ODE limit (T13) "
             "| spread of the weak model alone |", "|---" * 9 + "|"]
    for r in rows:
        first, second, at_null = r["method"]
        kind = "conditional" if second is None else "CFG (G5)" if at_null else "autoguidance (G19)"
        branch = "" if second is None else f"{second}, null label" if at_null else second
        if second in info:
            branch += f" ({info[second][0]})"
        losses = percent(excess[first, False]) + ("" if second is None else " / " + percent(excess[second, at_null]))
        w = ("0" if r["reached"] is None else f"{r['w']:.2f}" if r["reached"]
             else f"not reached (best {r['best']:.3f}); at w = {r['w']:g}:")
        law, weak = (f"{r[key]:.3f}" if key in r else "" for key in ("law_spread", "weak_spread"))
        lines.append(f"| {kind}, {first} | {branch} | {losses} | {w} | {r['fidelity']:.3f} | {r['spread']:.3f} "
                     f"| {r['energy']:.4f} | {law} | {weak} |")
    return "\n".join(lines)


def main():
    runtime.set_threads(1)  # refdiff's default (docs/learned.md, "Speed")
    start = time.perf_counter()
    sched, mix = Schedule.linear(1000), toy_data.mixture("three_overlapping")
    learned, info = train_models(mix, sched, GOOD_BUDGET, WEAK_BUDGETS, REPLICATES, N_TRAIN, SEED)
    models = with_exact(learned, mix, sched)
    excess_start = time.perf_counter()
    excess = excess_losses(models, mix, sched, N_EXCESS, SEED)
    excess_seconds = time.perf_counter() - excess_start
    rows, seconds = measure_all(models, mix, sched, N_SAMPLES, SEED)
    print(f"three_overlapping, {N_TRAIN} training points (seed {SEED}); good: {info['good'][0]}; "
          f"DDIM-{STEPS} from one x_T, n = {N_SAMPLES}:\n\n{table(rows, excess, info)}\n")
    timings = [f"training {name} {s:.1f} s" for name, (_, s) in info.items()]
    timings += [f"excess losses {excess_seconds:.1f} s"]
    timings += [f"{r['method'][0]}/{r['method'][1]} {s:.1f} s" for r, s in zip(rows, seconds)]
    print("timings: " + "; ".join(timings) + f"; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
