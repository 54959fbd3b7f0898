"""Print the tables of docs/theory.md, (T12): what every sampler of refdiff.samplers outputs with
CFG's exact eps on the 1D Gaussian pair p(x) = N(0, 1), p(x | y) = N(1, 0.5), Schedule.linear(1000),
at 10, 20 and 50 steps on leading and trailing grids, unguided and at w = 3; exact, by
refdiff.theory.sampler_output, with the limits (T5), (T6) and the tilted density (T4) beside.

Run: python docs/sampler_laws.py   (a few seconds)
"""
from refdiff import theory
from refdiff.samplers import SAMPLERS
from refdiff.schedule import Schedule

MU, V, WS, COUNTS, SPACINGS = 1.0, 0.5, (0.0, 3.0), (10, 20, 50), ("leading", "trailing")


def cell(sched, name, spacing, count, w):
    """'mean, var' of sampler ``name`` on the grid of ``count`` steps that ``spacing`` chooses."""
    mean, var = theory.sampler_output(sched, name, MU, V, w, steps=sched.timesteps(count, spacing))
    return f"{mean:.3f}, {var:.3f}"


def main():
    sched = Schedule.linear(1000)
    for w in WS:
        ode, sde, tilt = theory.ode_limit(MU, V, w), theory.sde_limit(MU, V, w), theory.tilted(MU, V, w)
        print(f"\nw = {w:g}: ODE limit (T5) {ode[0]:.3f}, {ode[1]:.4f}; SDE limit (T6) {sde[0]:.3f}, {sde[1]:.3f}; "
              f"tilted (T4) {tilt[0]:.3f}, {tilt[1]:.3f}\n")
        print("| sampler | " + " | ".join(f"{s}, {c}" for s in SPACINGS for c in COUNTS) + " |")
        print("|---" * (1 + len(SPACINGS) * len(COUNTS)) + "|")
        for name in SAMPLERS:
            print(f"| `{name}` | " + " | ".join(cell(sched, name, s, c, w) for s in SPACINGS for c in COUNTS) + " |")


if __name__ == "__main__":
    main()
