"""Print the tables of docs/tilted.md: sequential Monte Carlo (refdiff.tilted, (F2)) against the tilted
density by quadrature (docs/theory_mixture.md, (T7)) on the 1D two-class mixture N(-1, 1), N(+1, 1)
toward label 1, and against an independent rejection sampler on three_overlapping in 2D.

Each 1D row: RUNS independent runs of tilted.sample with N particles and STEPS DDPM steps on
Schedule.linear(1000); the mean over runs of the resampled particles' mean, variance and P(x < 0),
with the standard error from the spread of the runs, and the smallest ESS / N of any step.

With --learned it prints instead (F5) with a denoiser trained on the 1D mixture (train.DENOISER_2D)
beside the oracle's eps and DDPM with CFG of each.

Run: python docs/measure_tilted.py [--learned]   (about 20 s; --learned about 3 min)
"""
import functools
import sys

import numpy as np

import toy_data
from refdiff import runtime, tilted, theory_mixture
from refdiff.guidance import classifier_free_guidance
from refdiff.metrics import two_sample_test
from refdiff.samplers import ddpm
from refdiff.schedule import Schedule
from refdiff.train import DENOISER_2D, train_denoiser

WS, RUNS, N, STEPS = (0.0, 1.0, 3.0, 7.0), 4, 2000, 100
SCHED = Schedule.linear(1000)


@functools.cache
def exact(w):
    """The tilted density's moments on the 1D mixture toward label 1 by quadrature (T7): computed once per w,
    as the 1D, (F5) and --learned rows all compare with them (a shared dict: read it, do not change it)."""
    return theory_mixture.tilted_moments(theory_mixture.two_class_mixture(), 1, w)


def one_d_rows(seed=0):
    """Per w: the exact moments by quadrature and the SMC estimates with their standard errors."""
    mix, rows = theory_mixture.two_class_mixture(), []
    for w in WS:
        runs = [tilted.sample(mix, SCHED, 1, w, N, np.random.default_rng(seed + r), steps=STEPS) for r in range(RUNS)]
        stats = np.array([(x.mean(), x.var(), np.mean(x < 0)) for x, _ in runs])
        rows.append({"w": w, "exact": exact(w), "smc": stats.mean(0), "se": stats.std(0, ddof=1) / np.sqrt(RUNS),
                     "ess": min(result.ess.min() for _, result in runs),
                     "below": _below_zero(mix, w)})
    return rows


FK_WS, FK_STEPS = (1.0, 3.0), (100, 400)


def fk_rows(seed=0):
    """Per w and step count: CFG's DDPM with the score-only Feynman-Kac weights (F5) on the oracle's eps,
    RUNS runs of N particles resampled at the end, against the tilted moments by quadrature."""
    mix, rows = theory_mixture.two_class_mixture(), []
    eps_model = mix.eps_model(SCHED)
    for w in FK_WS:
        for steps in FK_STEPS:
            stats = []
            for r in range(RUNS):
                rng = np.random.default_rng(seed + r)
                result = tilted.fk_cfg(eps_model, SCHED, 1, w, rng.standard_normal((N, 1)), rng, steps=steps)
                x = tilted.resampled(result, rng)
                stats.append((x.mean(), x.var()))
            stats = np.array(stats)
            rows.append({"w": w, "steps": steps, "exact": exact(w), "fk": stats.mean(0),
                         "se": stats.std(0, ddof=1) / np.sqrt(RUNS)})
    return rows


def fk_table(rows):
    """The (F5) rows as a Markdown table."""
    lines = ["| `w` | DDPM steps | mean: FK / exact | variance: FK / exact |", "|---|---|---|---|"]
    for r in rows:
        (m, v), (sm, sv), e = r["fk"], r["se"], r["exact"]
        lines.append(f"| {r['w']:g} | {r['steps']} | {m:.3f} ± {sm:.3f} / {e['mean']:.3f} | "
                     f"{v:.3f} ± {sv:.3f} / {e['var']:.3f} |")
    return "\n".join(lines)


def learned_rows(seed=0, budget=None, n=2000, steps=400, n_base=8000):
    """(F5) with the oracle's eps and with a denoiser trained on 20,000 points of the 1D mixture
    (train.DENOISER_2D unless ``budget``), beside DDPM with CFG of the same model, per w in FK_WS."""
    mix, rng = theory_mixture.two_class_mixture(), np.random.default_rng(seed)
    x0, y0 = mix.sample(20_000, rng)
    learned = train_denoiser(x0, y0, SCHED, rng, num_labels=2, verbose=False, **(budget or DENOISER_2D))
    rows = []
    for w in FK_WS:
        for name, model in (("oracle", mix.eps_model(SCHED)), ("learned", learned)):
            stats = []
            for r in range(RUNS):
                g = np.random.default_rng(seed + r)
                x = tilted.resampled(tilted.fk_cfg(model, SCHED, 1, w, g.standard_normal((n, 1)), g, steps=steps), g)
                stats.append((x.mean(), x.var()))
            g = np.random.default_rng(seed + RUNS)
            base = ddpm(classifier_free_guidance(model, 1, w), SCHED, g.standard_normal((n_base, 1)), g, steps=steps)
            rows.append({"w": w, "model": name, "fk": np.mean(stats, 0), "se": np.std(stats, 0, ddof=1) / np.sqrt(RUNS),
                         "ddpm": (base.mean(), base.var()), "exact": exact(w)})
    return rows


def learned_table(rows, steps=400):
    """The rows of ``learned_rows`` as a Markdown table."""
    lines = [f"| `w` | eps | (F5), {steps} steps: mean, var | DDPM with CFG: mean, var | exact: mean, var |",
             "|---|---|---|---|---|"]
    for r in rows:
        (m, v), (sm, sv), (bm, bv), e = r["fk"], r["se"], r["ddpm"], r["exact"]
        lines.append(f"| {r['w']:g} | {r['model']} | {m:.3f} ± {sm:.3f}, {v:.3f} ± {sv:.3f} | {bm:.3f}, {bv:.3f} | "
                     f"{e['mean']:.3f}, {e['var']:.3f} |")
    return "\n".join(lines)


def _below_zero(mix, w):
    """P(x < 0) under the tilted density, by quadrature of (T7) on a fine grid."""
    grid = np.linspace(-12.0, 16.0, 280001)[:, None]
    log_f = theory_mixture.tilted_log_density(mix, grid, 1, w)
    f = np.exp(log_f - log_f.max())
    return float(f[grid[:, 0] < 0].sum() / f.sum())


def table(rows):
    """The 1D rows as a Markdown table."""
    lines = ["| `w` | mean: SMC / exact | variance: SMC / exact | P(x < 0): SMC / exact | smallest ESS / N |",
             "|---|---|---|---|---|"]
    for r in rows:
        (m, v, p), (sm, sv, sp), e = r["smc"], r["se"], r["exact"]
        lines.append(f"| {r['w']:g} | {m:.3f} ± {sm:.3f} / {e['mean']:.3f} | {v:.3f} ± {sv:.3f} / {e['var']:.3f} | "
                     f"{p:.4f} ± {sp:.4f} / {r['below']:.4f} | {r['ess']:.2f} |")
    return "\n".join(lines)


def rejection_tilted(mix, y, w, n, rng):
    """n draws of p(x | y)^(1 + w) p(x)^(-w) = p(x | y) (p(y | x) / p(y))^w by rejection from p(x | y):
    accept x with probability p(y | x)^w <= 1 (an independent check of (F2))."""
    out = []
    while sum(len(o) for o in out) < n:
        x = mix.sample(4 * n, rng, y=y)[0]
        keep = np.log(rng.uniform(size=len(x))) < w * mix.log_classifier(x, 1.0)[:, y]
        out.append(x[keep])
    return np.concatenate(out)[:n]


def two_d(seed=0, n=1500, w=3.0):
    """SMC on three_overlapping toward label 0 against rejection draws: the two-sample test's result."""
    mix, rng = toy_data.mixture("three_overlapping"), np.random.default_rng(seed)
    x, result = tilted.sample(mix, SCHED, 0, w, n, rng, steps=STEPS)
    return two_sample_test(x, rejection_tilted(mix, 0, w, n, rng), rng), result.ess.min()


def two_d_line(test, ess):
    """The docs' line for ``two_d``'s result, to 4 significant figures: its last digits are round-off."""
    return (f"three_overlapping, w = 3, label 0: SMC against rejection sampling: energy distance "
            f"{test.statistic:.4g}, threshold {test.threshold:.4g} (alpha {test.alpha:g}, {test.n_perm} permutations), "
            f"p = {test.p_value:.3f}, passed {test.passed}; smallest ESS / N {ess:.2f}")


def main():
    runtime.set_threads(1)
    if "--learned" in sys.argv[1:]:
        print(learned_table(learned_rows()))
        return
    print(table(one_d_rows()))
    print("\n" + fk_table(fk_rows()))
    print("\n" + two_d_line(*two_d()))


if __name__ == "__main__":
    main()
