"""Print the energy distances of docs/samplers.md: oracle samplers against the truth on three_gaussians;
with --heun, the (D6) table of Euler against Heun at equal model evaluations; with --thresholding,
the (D10) table: CFG with and without thresholding on data inside [-1, 1]^2 (BOXED).

Run: python docs/measure_samplers.py [--heun | --thresholding]   (about a minute on 2 cores each;
--thresholding a few seconds)
"""
import sys

import numpy as np

import toy_data
from refdiff.guidance import classifier_free_guidance
from refdiff.metrics import class_spread, fidelity, two_sample_test
from refdiff.oracle import GaussianMixture
from refdiff.samplers import clipped, ddim, ddpm, ode, ode_adaptive, thresholded
from refdiff.schedule import Schedule

# Three overlapping labelled Gaussians inside [-1, 1]^2, as image data in [-1, 1] are: std 0.2 about
# (+-0.25, -0.2) and (0, 0.25), so the box's nearest edge is 3.75 std away (about 1e-4 of the mass
# outside).
BOXED = GaussianMixture(np.ones(3), [[-0.25, -0.2], [0.25, -0.2], [0.0, 0.25]], np.tile(0.04 * np.eye(2), (3, 1, 1)),
                        labels=[0, 1, 2])
BOXED_WS, BOXED_N = (0.0, 3.0, 7.0, 15.0, 30.0), 3000


def main():
    mix, sched = toy_data.mixture("three_gaussians"), Schedule.linear(1000)
    model = mix.eps_model(sched)
    eps_fn = lambda x, t: model(x, t)
    runs = {"truth vs truth": lambda x_T, rng: mix.sample(len(x_T), rng)[0],
            "ddpm 1000": lambda x_T, rng: ddpm(eps_fn, sched, x_T, rng),
            "ddpm respaced 100": lambda x_T, rng: ddpm(eps_fn, sched, x_T, rng, steps=100),
            "ddim 50": lambda x_T, rng: ddim(eps_fn, sched, x_T, 50),
            "ddim 100": lambda x_T, rng: ddim(eps_fn, sched, x_T, 100)}
    for n in (2000, 10000):
        rng = np.random.default_rng(0)
        x_T, truth = rng.standard_normal((n, 2)), mix.sample(n, rng)[0]
        for name, run in runs.items():
            r = two_sample_test(run(x_T, rng), truth, rng, n_perm=200)
            print(f"n={n:6d} {name:18s} distance {r.statistic:.4f} threshold {r.threshold:.4f} p {r.p_value:.3f}")


def heun_table():
    """Mean error against ode_adaptive (rtol 1e-9) of Euler with 2k steps / Heun with k steps."""
    mix = toy_data.mixture("three_gaussians")
    x_T = np.random.default_rng(0).standard_normal((200, 2))
    for name, sched, spacing in (("linear", Schedule.linear(1000), "linspace"), ("linear", Schedule.linear(1000), "karras"),
                                 ("cosine", Schedule.cosine(1000), "karras")):
        eps_fn = lambda x, t: mix.eps_model(sched)(x, t)
        ref = ode_adaptive(eps_fn, sched, x_T, rtol=1e-9, atol=1e-12)
        cells = []
        for k in (5, 10, 20):
            euler, heun = ode(eps_fn, sched, x_T, 2 * k, spacing=spacing), ode(eps_fn, sched, x_T, k, "heun", spacing=spacing)
            cells.append(" / ".join(f"{np.linalg.norm(z - ref, axis=1).mean():.3f}" for z in (euler, heun)))
        print(f"{name}, {spacing}: " + " | ".join(cells))


def boxed_runs(w, n=BOXED_N):
    """{variant: x_0} of DDIM-50 with CFG at w on BOXED from one x_T (seed 0), for the variants of the
    (D10) table: plain, clipped to [-1, 1], and thresholded with max_value 1 (the default) and 2."""
    sched = Schedule.linear(1000)
    x_T, y = np.random.default_rng(0).standard_normal((n, 2)), np.arange(n) % 3
    f = classifier_free_guidance(BOXED.eps_model(sched), y, w)
    variants = {"plain": f, "clipped": clipped(f, sched, -1.0, 1.0), "thresholded": thresholded(f, sched),
                "thresholded, max_value 2": thresholded(f, sched, max_value=2.0)}
    return {name: ddim(g, sched, x_T, 50) for name, g in variants.items()}, y


def boxed_cell(x, y):
    """'fidelity (M7) / mean spread (M8) / % of samples outside the box (beyond round-off)'."""
    outside = np.mean(np.abs(x).max(axis=1) > 1 + 1e-12)
    return f"{fidelity(BOXED, x, y)[0]:.3f} / {class_spread(x, y, 3).mean():.3f} / {100 * outside:.1f}%"


def thresholding_table():
    """The (D10) table: one row per w, one column per variant of ``boxed_runs``."""
    print("| w | plain | clipped (= thresholded, max_value 1) | thresholded, max_value 2 |\n|---|---|---|---|")
    for w in BOXED_WS:
        runs, y = boxed_runs(w)
        print(f"| {w:g} | " + " | ".join(boxed_cell(runs[v], y) for v in ("plain", "clipped", "thresholded, max_value 2")) + " |")


if __name__ == "__main__":
    options = sys.argv[1:]
    heun_table() if "--heun" in options else thresholding_table() if "--thresholding" in options else main()
