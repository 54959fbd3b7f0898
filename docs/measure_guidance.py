"""Print the fidelity-diversity tables of docs/guidance.md: both guidance methods over a sweep of
strengths w (classifier guidance at s = 1 + w), with exact models and with learned ones; with
--rules, what every registered rule does on three_overlapping at matched fidelity, and its figure.

Run: python docs/measure_guidance.py [--learned] [--images] [--rules]
  (oracle only: ~20 s; --learned adds the 2D default budgets, ~2 min; --images adds the small
  tiny-image budget of refdiff/train.py, ~2 min; --rules ~1 min and writes
  docs/figures/guidance_rules.png; with one BLAS thread on 2 cores with one busy, as main sets it)
"""
import argparse
import os
import time

import numpy as np

import toy_data
from refdiff import methods as registry, plot, runtime
from refdiff.guidance import cfg_pp
from refdiff.metrics import fidelity
from refdiff.samplers import ddim, ddpm
from refdiff.schedule import Schedule
from refdiff.sweep import format_table, guided_eps_fn, image_measures, mixture_measures, scale_sweep
from refdiff.train import (CLASSIFIER_2D, CLASSIFIER_IMAGES_SMALL, DENOISER_2D, DENOISER_IMAGES_SMALL,
                           train_classifier, train_denoiser)
from toy_data import images

WS = (-1.0, 0.0, 0.5, 1.0, 3.0, 6.0)
PRESETS = ("three_overlapping", "three_gaussians")


def mixture_tables(learned, n=3000, seed=0):
    sched = Schedule.linear(1000)
    for name in PRESETS:
        mix, rng = toy_data.mixture(name), np.random.default_rng(seed)
        if learned:
            x0, y0 = mix.sample(20_000, rng)
            start = time.perf_counter()
            den = train_denoiser(x0, y0, sched, rng, verbose=False, **DENOISER_2D)
            clf = train_classifier(x0, y0, sched, rng, verbose=False, **CLASSIFIER_2D)
            kind = f"learned (default 2D budgets, trained in {time.perf_counter() - start:.0f} s)"
        else:
            den, clf, kind = mix.eps_model(sched), mix.classifier(sched), "exact"
        y = np.arange(n) % mix.num_labels
        rows, _ = scale_sweep({"denoiser": den, "classifier": clf}, sched, y, WS, rng.standard_normal((n, 2)), mixture_measures(mix, rng))
        print(f"\n{name}, {kind} models, DDIM-50, n = {n}:\n{format_table(rows)}")


def image_table(n=1400, seed=0):
    """The small image budget, sampled with DDPM respaced to 100 steps (the same noise for every
    run): at this budget DDIM-50 leaves residual noise that the judge rejects."""
    sched, rng = Schedule.linear(1000), np.random.default_rng(seed)
    x0, y0 = images.sample(20_000, rng)
    start = time.perf_counter()
    den = train_denoiser(x0, y0, sched, rng, verbose=False, **DENOISER_IMAGES_SMALL)
    clf = train_classifier(x0, y0, sched, rng, verbose=False, **CLASSIFIER_IMAGES_SMALL)
    y = np.arange(n) % images.NUM_CLASSES
    sample = lambda eps_fn, x_T: ddpm(eps_fn, sched, x_T, np.random.default_rng(seed + 1), steps=100)
    rows, _ = scale_sweep({"denoiser": den, "classifier": clf}, sched, y, WS, rng.standard_normal((n, x0.shape[1])), image_measures,
                          sample=sample)
    print(f"\ntiny images, learned models (small budget, trained in {time.perf_counter() - start:.0f} s), "
          f"DDPM-100, n = {n}:\n{format_table(rows)}")


RULE_WS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)
LAMS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)  # CFG++'s lam, indexed like w in the table
TARGET, WEAK_BLUR = 0.98, 0.5  # the matched fidelity (M7); autoguidance's weak model: the oracle blurred by 0.5


def rule_models(mix, sched, y):
    """The exact models every registered rule reads: the negative label of row i is the next class."""
    return {"denoiser": mix.eps_model(sched), "classifier": mix.classifier(sched), "negative": (y + 1) % mix.num_labels,
            "weak_denoiser": mix.blurred(WEAK_BLUR).eps_model(sched)}


def crossing(rows, fidelity_at, target, iterations=12):
    """The strength where a method's fidelity first reaches ``target``: the first pair of its rows
    (ordered by w) that brackets it, narrowed by bisection on ``fidelity_at(w)`` (the exact p(y | x0)
    of the samples from the common x_T, a deterministic function of w); None if no pair brackets it."""
    for lo, hi in zip(rows, rows[1:]):
        if lo["fidelity"] < target <= hi["fidelity"]:
            a, b = lo["w"], hi["w"]
            for _ in range(iterations):
                a, b = (a, (a + b) / 2) if fidelity_at((a + b) / 2) >= target else ((a + b) / 2, b)
            return b
    return None


def rules_at_matched_fidelity(n=3000, seed=0, name="three_overlapping", methods=None):
    """Every registered rule (or those of ``methods``) and CFG++ over lam ("cfg_pp") on the exact
    models of ``name``, DDIM-50 from one x_T: the sweep's rows, and per rule the measures at the
    strength that reaches TARGET."""
    sched, mix, rng = Schedule.linear(1000), toy_data.mixture(name), np.random.default_rng(seed)
    y, x_T = np.arange(n) % mix.num_labels, rng.standard_normal((n, 2))
    models = rule_models(mix, sched, y)
    measure = lambda x, y: mixture_measures(mix, np.random.default_rng(seed + 1))(x, y)  # one reference sample for all
    registered = [m for m in (methods or registry.available(models)) if m != "cfg_pp"]
    rows, samples = scale_sweep(models, sched, y, RULE_WS, x_T, measure, registered)

    def sample(method, w):  # each strength sampled once: the matched one is the sweep's or the bisection's last
        if (method, w) not in samples:
            if method == "cfg_pp":
                eps_fn, x0_fn = cfg_pp(models["denoiser"], sched, y, w)
                samples[method, w] = ddim(eps_fn, sched, x_T, 50, x0_fn=x0_fn)
            else:
                samples[method, w] = ddim(guided_eps_fn(method, w, models, sched, y), sched, x_T, 50)
        return samples[method, w]
    if methods is None or "cfg_pp" in methods:
        rows += [{"method": "cfg_pp", "w": lam, **measure(sample("cfg_pp", lam), y)} for lam in LAMS]
    matched = []
    for method in dict.fromkeys(r["method"] for r in rows):
        strength = crossing([r for r in rows if r["method"] == method],
                            lambda w: fidelity(mix, sample(method, w), y)[0], TARGET)
        matched.append({"method": method, "w": strength, **({} if strength is None else measure(sample(method, strength), y))})
    return rows, matched


def rules_table(matched, rows):
    """The matched rows as a Markdown table (cfg_pp: CFG++, its strength lam); a rule that never reaches
    TARGET shows its best fidelity."""
    lines = [f"| rule | strength at fidelity {TARGET} | fidelity (M7) | spread (M8) | energy distance (M1) |",
             "|---|---|---|---|---|"]
    for r in matched:
        name = f"`{r['method']}`"
        if r["w"] is None:
            best = max(x["fidelity"] for x in rows if x["method"] == r["method"])
            lines.append(f"| {name} | not reached (best {best:.3f}) | | | |")
        else:
            lines.append(f"| {name} | {r['w']:.2f} | {r['fidelity']:.3f} | {r['spread']:.3f} | {r['energy']:.4f} |")
    return "\n".join(lines)


def rules_figure(rows, path):
    """Spread against fidelity for every rule over its strengths (plot.fidelity_diversity)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9.5, 7.5), layout="constrained")
    ax = plot.fidelity_diversity(fig.add_subplot(), [r for r in rows if r["method"] != "cfg_pp"])
    ax.axhline(TARGET, color="grey", lw=0.8, ls=":")
    fig.suptitle(f"Every registered rule on three_overlapping, exact models, DDIM-50 from one x_T\n"
                 f"classifier guidance (s = 1 + w) lies under CFG (G5); dotted: the matched fidelity {TARGET}\n"
                 f"negative label: the next class; autoguidance: the oracle blurred by {WEAK_BLUR}\n"
                 f"{plot.CONVENTIONS['w']}")
    fig.savefig(path, dpi=80)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learned", action="store_true", help="also train the 2D models and sweep them")
    parser.add_argument("--images", action="store_true", help="also train the tiny-image models and sweep them")
    parser.add_argument("--rules", action="store_true",
                        help="only: every registered rule at matched fidelity, and docs/figures/guidance_rules.png")
    args = parser.parse_args()
    runtime.set_threads(1)  # refdiff's own default (docs/learned.md, "Speed"): 2 threads stall when a core is busy
    if args.rules:
        rows, matched = rules_at_matched_fidelity()
        print(rules_table(matched, rows))
        rules_figure(rows, os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures", "guidance_rules.png"))
        return
    mixture_tables(learned=False)
    if args.learned:
        mixture_tables(learned=True)
    if args.images:
        image_table()


if __name__ == "__main__":
    main()
