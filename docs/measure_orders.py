"""Print the convergence tables of docs/samplers.md, (D8), and draw docs/figures/sampler_orders.png.

The global error of x_0 of the deterministic samplers (Euler = DDIM, Heun, DPM-Solver++(2M) and
(2S)) with the oracle's exact eps on three_gaussians, against the probability-flow ODE solved by
RK45 at rtol 1e-10, all from one x_T: by default on Karras grids (D6) at 10-160 steps, unguided and
with CFG at w = 3, with the slope fitted over 40-160 steps; --linspace on grids uniform in t;
--table at 10, 20 and 50 steps for w = 0, 1, 3, 7; --figure the log-log figure of the default
table's errors.

Run: python docs/measure_orders.py [--linspace | --table | --figure]   (20-40 s on 2 cores)
"""
import os
import sys

import numpy as np
from matplotlib.figure import Figure

import toy_data
from refdiff import plot
from refdiff.demo import save_figure
from refdiff.guidance import classifier_free_guidance
from refdiff.samplers import dpmpp_2m, dpmpp_2s, karras_times, ode, ode_adaptive
from refdiff.schedule import Schedule

COUNTS = (10, 20, 40, 80, 160)
N, SEED = 400, 0
SAMPLERS = {"Euler (= DDIM)": lambda f, s, x, g: ode(f, s, x, g), "Heun": lambda f, s, x, g: ode(f, s, x, g, "heun"),
            "DPM-Solver++(2M)": dpmpp_2m, "DPM-Solver++(2S)": dpmpp_2s}


def errors(ws, counts, grid):
    """{(sampler, w): [RMS error of x_0 at each count]} against RK45 at rtol 1e-10."""
    sched, mix = Schedule.linear(1000), toy_data.mixture("three_gaussians")
    x_T, y = np.random.default_rng(SEED).standard_normal((N, 2)), np.arange(N) % mix.num_labels
    out = {}
    for w in ws:
        eps_fn = classifier_free_guidance(mix.eps_model(sched), y, w)
        reference = ode_adaptive(eps_fn, sched, x_T, rtol=1e-10, atol=1e-12)
        for name, sample in SAMPLERS.items():
            out[name, w] = [np.sqrt(np.mean((sample(eps_fn, sched, x_T, grid(sched, s)) - reference) ** 2))
                            for s in counts]
    return out


def table(found, counts, slope):
    """The markdown rows of ``found``, with the slope over the last three counts if asked."""
    lines = ["| sampler | w | " + " | ".join(f"{s} steps" for s in counts) + (" | slope, 40-160 |" if slope else " |")]
    for (name, w), errs in found.items():
        fit = f" {-np.polyfit(np.log(counts[-3:]), np.log(errs[-3:]), 1)[0]:.2f} |" if slope else ""
        lines.append(f"| {name} | {w:g} | " + " | ".join(f"{e:.1e}" for e in errs) + " |" + fit)
    return "\n".join(lines)


def figure(found, path):
    """Log-log error against steps, one panel per w, one line per sampler, with order-1 and -2 guides."""
    ws = sorted({w for _, w in found})
    fig = Figure(figsize=(11, 5.0), layout="constrained")
    for i, w in enumerate(ws):
        ax = fig.add_subplot(1, len(ws), i + 1)
        for (name, marker) in zip(SAMPLERS, "osD^"):
            ax.loglog(COUNTS, found[name, w], marker=marker, label=name)
        for order, style in ((1, ":"), (2, "--")):
            ax.loglog(COUNTS, found["Heun", w][-1] * 4 * (np.array(COUNTS) / COUNTS[-1]) ** -order, style,
                      color="0.6", label=f"slope -{order}")
        ax.set_xlabel("sampling steps (Karras grid, D6)")
        ax.set_ylabel("RMS error of x_0 against RK45")
        ax.set_title("unguided" if w == 0 else f"CFG w = {w:g}")
    fig.legend(handles=fig.axes[0].get_lines(), loc="outside lower center", ncol=6, fontsize="small")
    fig.suptitle("Discretisation error of the deterministic samplers with the exact eps of three_gaussians "
                 f"({N} points, one x_T)\n{plot.CONVENTIONS['w']}")
    save_figure(fig, path)


def main():
    if "--table" in sys.argv:
        counts = (10, 20, 50)
        print(table(errors((0.0, 1.0, 3.0, 7.0), counts, karras_times), counts, slope=False))
        return
    linspace = lambda sched, s: np.linspace(sched.T, 1, s)
    found = errors((0.0, 3.0), COUNTS, linspace if "--linspace" in sys.argv else karras_times)
    if "--figure" in sys.argv:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures", "sampler_orders.png")
        figure(found, path)
        print(f"wrote {path}")
        return
    print(table(found, COUNTS, slope=True))


if __name__ == "__main__":
    main()
