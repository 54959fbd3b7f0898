"""Sampler runs pinned bit for bit across the refactor of issue 12 (tests/test_sampler_grids.py).

``runs(grid)`` runs every fixed-grid sampler on an affine eps_fn: the exact eps of Gaussian data
N(m, v) per coordinate, sqrt(1 - a) (x - sqrt(a) m) / (a v + 1 - a), written with +, -, *, / and
sqrt only, on ``Schedule.linear`` (built by linspace and cumprod) and integer grids. Every
operation is then correctly rounded IEEE arithmetic, so the bits do not depend on the CPU or the
BLAS. tests/data/pinned_trajectories.npz holds ``runs(grid=False)`` computed by commit 3bf2bdb,
the last before the samplers took explicit grids (``python tests/pinned_runs.py`` rewrote it
then); whether those numbers are right is the business of test_samplers.py and test_ode.py,
which check the same samplers against exact finite-step laws.
"""
import os

import numpy as np

from refdiff.samplers import ddim, ddpm, ode
from refdiff.schedule import Schedule

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "pinned_trajectories.npz")
MEAN, VAR = np.array([0.7, -1.2]), np.array([0.3, 0.05])


def affine_eps(sched, dtype=np.float64):
    """The exact eps of N(MEAN, diag(VAR)) at integer t, with +, -, *, /, sqrt only."""
    def eps_fn(x, t):
        a = sched.alpha_bar[t][:, None]
        return (np.sqrt(1 - a) * (x - np.sqrt(a) * MEAN) / (a * VAR + 1 - a)).astype(dtype)
    return eps_fn


def affine_shift(sched):
    """A mean shift g(x, t) for ddpm's mean_shift option: affine in x as well."""
    def g(x, t):
        return 0.5 * (MEAN - x) * np.sqrt(sched.alpha_bar[t][:, None])
    return g


def runs(grid):
    """{name: final state or path} for each pinned configuration. With ``grid`` the samplers get
    the explicit array ``sched.timesteps(steps, spacing)`` instead of the int step count."""
    sched = Schedule.linear(1000)
    rng = np.random.default_rng(20261203)
    x64 = rng.standard_normal((6, 2))
    x32 = x64.astype(np.float32)
    eps64, eps32 = affine_eps(sched), affine_eps(sched, np.float32)

    def steps(k, spacing="leading"):
        return sched.timesteps(k, spacing) if grid else k

    def spaced(spacing):  # the spacing argument goes with an int step count only
        return {} if grid else {"spacing": spacing}

    out = {}
    if grid:
        out["ddpm_1000"] = ddpm(eps64, sched, x64, np.random.default_rng(1), steps=np.arange(1000, 0, -1))
    else:
        out["ddpm_1000"] = ddpm(eps64, sched, x64, np.random.default_rng(1))
    out["ddpm_50_trailing_beta"] = ddpm(eps64, sched, x64, np.random.default_rng(2), variance="beta",
                                        steps=steps(50, "trailing"), return_path=True, **spaced("trailing"))[1]
    out["ddpm_20_mean_shift"] = ddpm(eps64, sched, x64, np.random.default_rng(3), steps=steps(20),
                                     mean_shift=affine_shift(sched), return_path=True)[1]
    out["ddpm_20_float32"] = ddpm(eps32, sched, x32, np.random.default_rng(4), steps=steps(20), return_path=True)[1]
    out["ddim_50"] = ddim(eps64, sched, x64, steps(50), return_path=True)[1]
    out["ddim_25_eta1_linspace"] = ddim(eps64, sched, x64, steps(25, "linspace"), eta=1.0,
                                        rng=np.random.default_rng(5), return_path=True, **spaced("linspace"))[1]
    out["ddim_20_float32"] = ddim(eps32, sched, x32, steps(20), return_path=True)[1]
    out["ode_30_heun"] = ode(eps64, sched, x64, steps(30), method="heun", return_path=True)[1]
    out["ode_40_euler_trailing"] = ode(eps64, sched, x64, steps(40, "trailing"), return_path=True,
                                       **spaced("trailing"))[1]
    return out


if __name__ == "__main__":
    np.savez(FIXTURE, **runs(grid=False))
    print(f"wrote {FIXTURE}")
