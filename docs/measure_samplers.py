"""Print the energy distances of docs/samplers.md: oracle samplers against the truth on three_gaussians;
with --heun, the (D6) table of Euler against Heun at equal model evaluations.

Run: python docs/measure_samplers.py [--heun]   (about a minute on 2 cores each)
"""
import sys

import numpy as np

import toy_data
from refdiff.metrics import two_sample_test
from refdiff.samplers import ddim, ddpm, ode, ode_adaptive
from refdiff.schedule import Schedule


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


if __name__ == "__main__":
    heun_table() if "--heun" in sys.argv[1:] else main()
