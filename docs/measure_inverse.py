"""Print the table of docs/inverse.md and draw docs/figures/inverse.png: how close each guidance rule
for a linear observation comes to the exact posterior, on three_overlapping observed in its first
coordinate (x_1 = 0.5, noise_std 0.3), with the exact prior (the oracle).

Every rule samples with DDPM from the same x_T and noise; the energy distance (M1) is to 2000 exact
posterior draws (GaussianMixture.posterior_given), the same for every row, beside the distance
between two independent exact samples (the Monte Carlo floor).

Run: python docs/measure_inverse.py   (about a minute)
"""
import os

import numpy as np

import toy_data
from refdiff import inverse, plot, runtime
from refdiff.metrics import energy_distance
from refdiff.samplers import ddpm
from refdiff.schedule import Schedule

A, Y_OBS, NOISE_STD, N, STEPS = np.array([[1.0, 0.0]]), np.array([0.5]), 0.3, 2000, (50, 200)
ZETAS = (0.5, 1 / (2 * NOISE_STD ** 2), 20.0)  # DPS's log-likelihood weight; the middle one is 1 / (2 s^2)
SCHED, MIX = Schedule.linear(1000), toy_data.mixture("three_overlapping")


def rules():
    """{name: eps_fn} of every rule of docs/inverse.md on the exact prior."""
    eps = MIX.eps_model(SCHED)
    out = {"exact likelihood (I3)": inverse.likelihood_guidance(eps, MIX, SCHED, A, Y_OBS, NOISE_STD)}
    out.update({f"DPS (I4), zeta = {z:.3g}": inverse.dps_guidance(eps, SCHED, A, Y_OBS, z) for z in ZETAS})
    out["reconstruction (I5)"] = inverse.reconstruction_guidance(eps, SCHED, A, Y_OBS, NOISE_STD)
    return out


def measure(seed=0):
    """(rows, samples): per rule and step count the energy distance to the exact posterior; the
    posterior sample; and the floor, two exact samples' distance."""
    rng = np.random.default_rng(seed)
    posterior = MIX.posterior_given(A, Y_OBS, NOISE_STD)
    reference, floor = posterior.sample(N, rng)[0], posterior.sample(N, rng)[0]
    x_T = rng.standard_normal((N, 2))
    rows, samples = [], {"exact posterior": floor}
    for name, eps_fn in rules().items():
        for steps in STEPS:
            x = ddpm(eps_fn, SCHED, x_T, np.random.default_rng(seed + 1), steps=steps)
            rows.append((name, steps, energy_distance(x, reference)))
            samples[name] = x
    return rows, samples, energy_distance(floor, reference)


def table(rows, floor):
    """The rows as a Markdown table, one column per step count."""
    lines = ["| rule | " + " | ".join(f"DDPM-{k}" for k in STEPS) + " |", "|---" * (1 + len(STEPS)) + "|"]
    for name in dict.fromkeys(r[0] for r in rows):
        lines.append(f"| {name} | " + " | ".join(f"{d:.4f}" for n, _, d in rows if n == name) + " |")
    lines.append(f"| two exact samples (the floor) | " + " | ".join(f"{floor:.4f}" for _ in STEPS) + " |")
    return "\n".join(lines)


def figure(samples, path):
    """One scatter per rule of its sample at the last step count, beside exact posterior draws."""
    from matplotlib.figure import Figure
    cols = 3
    rows = -(-len(samples) // cols)
    fig = Figure(figsize=(3.3 * cols, 3.4 * rows + 0.5), layout="constrained")
    for i, (name, x) in enumerate(samples.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.scatter(x[:, 0], x[:, 1], s=2, color="C0", alpha=0.5)
        ax.axvline(Y_OBS[0], color="grey", lw=0.8, ls=":")
        ax.set(xlim=(-3, 3), ylim=(-3, 3), xlabel="$x_1$", ylabel="$x_2$", title=name.replace(", ", "\n"))
    fig.suptitle(f"three_overlapping observed in x_1 = {Y_OBS[0]} with noise_std {NOISE_STD} (dotted)\n"
                 f"{N} samples each, DDPM-{STEPS[-1]} with the exact prior; first panel: exact posterior draws")
    fig.savefig(path, dpi=80)


def main():
    runtime.set_threads(1)
    rows, samples, floor = measure()
    print(table(rows, floor))
    figure(samples, os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures", "inverse.png"))


if __name__ == "__main__":
    main()
