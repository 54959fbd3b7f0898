"""Draw docs/figures/what_guidance_samples.png: for 1D Gaussian data, the law of CFG samples under
the probability-flow ODE (T5), the reverse SDE (T6) and the tilted density (T4), beside p(x | y).

Run: python docs/theory_figure.py   (a second; closed forms only)
"""
import os

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import norm

from refdiff import plot, theory
from refdiff.demo import save_figure

MU, V, WS = 1.0, 0.5, (1.0, 3.0)
SPAN = 4.0  # the x axis covers every law drawn to this many of its standard deviations


def main():
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    for i, w in enumerate(WS):
        ax = fig.add_subplot(1, len(WS), i + 1)
        laws = {"p(x | y)": (MU, V), "tilted p(x | y)^(1 + w) p(x)^(-w) (T4)": theory.tilted(MU, V, w),
                "reverse SDE = DDPM limit (T6)": theory.sde_limit(MU, V, w),
                "probability-flow ODE = DDIM limit (T5)": theory.ode_limit(MU, V, w)}
        low = min(mean - SPAN * np.sqrt(var) for mean, var in laws.values())
        high = max(mean + SPAN * np.sqrt(var) for mean, var in laws.values())
        x = np.linspace(low, high, 600)
        for (name, (mean, var)), style in zip(laws.items(), (":", "-", "--", "-.")):
            ax.plot(x, norm.pdf(x, mean, np.sqrt(var)), style, label=name)
        ax.set_xlim(low, high)
        ax.set_title(f"CFG, w = {w:g}", fontsize=10)
        ax.set_xlabel("x")
        ax.set_ylabel("density")
    fig.legend(handles=fig.axes[0].get_lines(), loc="outside lower center", ncol=2, fontsize=9)
    fig.suptitle(f"What CFG samples in the limit of many steps: p(x) = N(0, 1), p(x | y) = N({MU:g}, {V:g})\n"
                 f"{plot.CONVENTIONS['w']}", fontsize=10)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures", "what_guidance_samples.png")
    save_figure(fig, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
