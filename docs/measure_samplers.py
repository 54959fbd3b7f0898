"""Print the energy distances of docs/samplers.md: oracle samplers against the truth on three_gaussians.

Run: python docs/measure_samplers.py   (about a minute on 2 cores)
"""
import numpy as np

import toy_data
from refdiff.metrics import two_sample_test
from refdiff.samplers import ddim, ddpm
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


if __name__ == "__main__":
    main()
