"""Print the convergence table of docs/samplers.md, (D8): the global error of x_0 of Euler, Heun,
DPM-Solver++(2M) and (2S) with the oracle's exact eps on three_gaussians, unguided and with CFG at w = 3,
against the probability-flow ODE solved by RK45 at rtol 1e-10, on Karras grids (D6) and, with
--linspace, on grids uniform in t; with the slope fitted over 40-160 steps.

Run: python docs/measure_orders.py [--linspace]   (about 20 s on 2 cores)
"""
import sys

import numpy as np

import toy_data
from refdiff.guidance import classifier_free_guidance
from refdiff.samplers import dpmpp_2m, dpmpp_2s, karras_times, ode, ode_adaptive
from refdiff.schedule import Schedule

COUNTS = (10, 20, 40, 80, 160)
N, SEED = 400, 0


def main():
    sched, mix = Schedule.linear(1000), toy_data.mixture("three_gaussians")
    grid = (lambda s: np.linspace(sched.T, 1, s)) if "--linspace" in sys.argv else (lambda s: karras_times(sched, s))
    x_T, y = np.random.default_rng(SEED).standard_normal((N, 2)), np.arange(N) % mix.num_labels
    samplers = {"Euler (= DDIM)": lambda f, g: ode(f, sched, x_T, g), "Heun": lambda f, g: ode(f, sched, x_T, g, "heun"),
                "DPM-Solver++(2M)": lambda f, g: dpmpp_2m(f, sched, x_T, g),
                "DPM-Solver++(2S)": lambda f, g: dpmpp_2s(f, sched, x_T, g)}
    print("| sampler | w | " + " | ".join(f"{s} steps" for s in COUNTS) + " | slope, 40-160 |")
    for w in (0.0, 3.0):
        eps_fn = classifier_free_guidance(mix.eps_model(sched), y, w)
        reference = ode_adaptive(eps_fn, sched, x_T, rtol=1e-10, atol=1e-12)
        for name, sample in samplers.items():
            errors = [np.sqrt(np.mean((sample(eps_fn, grid(s)) - reference) ** 2)) for s in COUNTS]
            slope = -np.polyfit(np.log(COUNTS[2:]), np.log(errors[2:]), 1)[0]
            print(f"| {name} | {w:g} | " + " | ".join(f"{e:.1e}" for e in errors) + f" | {slope:.2f} |")


if __name__ == "__main__":
    main()
