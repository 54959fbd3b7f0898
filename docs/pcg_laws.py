"""Print the table of docs/theory_mixture.md, "PCG": the exact laws (T12) of predictor-corrector
guidance (samplers.pcg, (D14)) and of DDPM with CFG on 1D Gaussian data, p(x | y) = N(1, 0.5),
p(x) = N(0, 1), Schedule.linear(1000), leading grids, beside their common limit, the reverse SDE (T6).

PCG here is (T11) read as a sampler: a DDIM step with the conditional model, then one Langevin step
of size beta_j on the powered density with exponent 2 gamma - 1 (CFG with w = 2 gamma - 2).

Run: python docs/pcg_laws.py   (a few seconds)
"""
from refdiff import theory
from refdiff.guidance import classifier_free_guidance
from refdiff.samplers import pcg
from refdiff.schedule import Schedule

MU, V, GAMMAS, COUNTS = 1.0, 0.5, (2.0, 4.0), (50, 100, 250, 1000)
SCHED = Schedule.linear(1000)


def pcg_law(gamma, steps):
    """(mean, var) of PCG toward N(MU, V) at gamma with ``steps`` leading steps, exactly (T12)."""
    pair = theory.exact_pair(SCHED, MU, V)
    predictor = lambda x, t: pair(x, t, 0)
    corrector = classifier_free_guidance(pair, 0, 2 * gamma - 2)
    return theory.affine_output(SCHED, lambda f, x, rng: pcg(predictor, corrector, SCHED, x, steps, rng), predictor,
                                max_draws=steps)


def ddpm_law(gamma, steps):
    """(mean, var) of DDPM with CFG (w = gamma - 1) toward N(MU, V) with ``steps`` leading steps, exactly (T12)."""
    return theory.sampler_output(SCHED, "ddpm", MU, V, gamma - 1, steps=steps, max_draws=steps)


def laws():
    """Per gamma in GAMMAS: the (T6) limit as "limit", and the laws of PCG as "pcg" and of DDPM with CFG
    as "ddpm", one (mean, var) per step count in COUNTS; the table's numbers, computed once."""
    return {gamma: {"limit": theory.sde_limit(MU, V, gamma - 1), "pcg": [pcg_law(gamma, k) for k in COUNTS],
                    "ddpm": [ddpm_law(gamma, k) for k in COUNTS]} for gamma in GAMMAS}


def table(rows):
    """``laws()`` as rows per gamma and sampler, columns per step count: 'mean, var'; the (T6) limit last."""
    lines = ["| `gamma = 1 + w` | sampler | " + " | ".join(f"{k} steps" for k in COUNTS) + " | reverse SDE (T6) |",
             "|---" * (3 + len(COUNTS)) + "|"]
    for gamma, row in rows.items():
        limit = "{:.4f}, {:.4f}".format(*row["limit"])
        for key, name in (("pcg", "PCG (D14)"), ("ddpm", "DDPM, CFG")):
            lines.append(f"| {gamma:g} | {name} | " + " | ".join(f"{m:.4f}, {v:.4f}" for m, v in row[key]) + f" | {limit} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(laws()))
