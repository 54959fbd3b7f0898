"""Print the tables of docs/theory.md, (T13) and (T14): what the guidance rules of 2023-2025 sample
on one-dimensional Gaussian data, exactly.

p(x | y) = N(1, 0.5); a negative label's p(x | y_neg) = N(-1, 0.5); autoguidance's weak model the
same class blurred by delta = 0.5 (GaussianMixture.blurred), N(1, 0.75); Schedule.linear(1000).
Each rule's eps is affine in x, so refdiff.theory.affine_output gives each sampler's output law
exactly; the ODE limits are refdiff.theory.ode_limit (T13).

Run: python docs/rule_laws.py   (a few seconds)
"""
import numpy as np

from refdiff import guidance, theory
from refdiff.oracle import GaussianMixture
from refdiff.samplers import ddim, euler_ancestral
from refdiff.schedule import Schedule

MU, V, MU_NEG, DELTA = 1.0, 0.5, -1.0, 0.5
WS, COUNTS, LAMS = (1.0, 3.0), (10, 20, 50, 100), (0.2, 0.6, 1.0)
SCHED = Schedule.linear(1000)
CLASSES = GaussianMixture([1.0, 1.0], [[MU], [MU_NEG]], [[[V]], [[V]]])  # label 0 = y, label 1 = y_neg
RULES = ("CFG (G5)", "negative label (G15)", "autoguidance (G19)")
COLUMNS = (("ddim", 50), ("ddim", 1000), ("ddpm", 50), ("ddpm", 200))  # (sampler, steps) of the (T13) table
SCHEDULES = {"constant w = 3": lambda: guidance.weight_schedule(SCHED, 3.0, 3.0),
             "linear 6 -> 0": lambda: guidance.weight_schedule(SCHED, 6.0, 0.0),
             "linear 0 -> 6": lambda: guidance.weight_schedule(SCHED, 0.0, 6.0),
             "cosine 6 -> 0": lambda: guidance.weight_schedule(SCHED, 6.0, 0.0, "cosine"),
             "interval w = 3, 100..600 (G12)": lambda: guidance.interval_weight(3.0, 100, 600)}


def rule_eps(rule, w):
    """The guided eps_fn of ``rule`` toward label 0 at weight w, and its other Gaussian (mu, v) for (T13)."""
    if rule == RULES[0]:
        return guidance.classifier_free_guidance(theory.exact_pair(SCHED, MU, V), 0, w), (0.0, 1.0)
    if rule == RULES[1]:
        return guidance.negative_prompt_guidance(CLASSES.eps_model(SCHED), 0, 1, w), (MU_NEG, V)
    good = GaussianMixture([1.0], [[MU]], [[[V]]])
    return guidance.autoguidance(good.eps_model(SCHED), good.blurred(DELTA).eps_model(SCHED), 0, w), (MU, V + DELTA ** 2)


def law(eps_fn, sample, steps, draws=0):
    """(mean, var) of a sampler's output, exactly (T12); ``draws`` noise draws at most (DDPM: one per step)."""
    draws = steps if sample == "ddpm" else draws
    return theory.affine_output(SCHED, sample, eps_fn, steps=steps, max_draws=draws)


def cell(mean_var):
    """A table cell 'mean, var' of a law."""
    mean, var = mean_var
    return f"{mean:.3f}, {var:.4g}"


def rule_laws():
    """(T13): {(rule, w): {"ODE": its ODE limit, (sampler, steps): its law for each of COLUMNS}}."""
    laws = {}
    for rule in RULES:
        for w in WS:
            eps_fn, (mu_o, v_o) = rule_eps(rule, w)
            laws[rule, w] = {"ODE": theory.ode_limit(MU, V, w, mu_o, v_o)}
            laws[rule, w].update({c: law(eps_fn, *c) for c in COLUMNS})
    return laws


def rules_table(laws):
    """(T13) from ``rule_laws()``: each rule at each w, its ODE limit, DDIM's laws at 50 and 1000 steps and
    DDPM's at 50 and 200."""
    lines = ["| rule | `w` | ODE limit (T13) | DDIM, 50 | DDIM, 1000 | DDPM, 50 | DDPM, 200 |", "|---" * 7 + "|"]
    for (rule, w), row in laws.items():
        mean, var = row["ODE"]
        cells = " | ".join(cell(row[c]) for c in COLUMNS)
        lines.append(f"| {rule} | {w:g} | {mean:.3f}, {var:.4f} | {cells} |")
    return "\n".join(lines)


def schedules_table():
    """(G20): CFG toward N(1, 0.5) under each schedule of w, DDIM's and DDPM's laws at 50 steps."""
    pair = theory.exact_pair(SCHED, MU, V)
    lines = ["| schedule of `w` | DDIM, 50 | DDPM, 50 |", "|---|---|---|"]
    for name, weight in SCHEDULES.items():
        eps_fn = guidance.scheduled_cfg(pair, 0, weight())
        lines.append(f"| {name} | {cell(law(eps_fn, 'ddim', 50))} | {cell(law(eps_fn, 'ddpm', 50))} |")
    return "\n".join(lines)


def cfg_pp_law(lam, steps, sampler):
    """'mean, var' of CFG++ at lam with ``steps`` leading steps of ddim or euler_ancestral (eta = 1)."""
    eps_fn, x0_fn = guidance.cfg_pp(theory.exact_pair(SCHED, MU, V), SCHED, 0, lam)
    run = {"ddim": lambda f, x, rng: ddim(f, SCHED, x, steps, x0_fn=x0_fn),
           "euler_ancestral": lambda f, x, rng: euler_ancestral(f, SCHED, x, steps, rng=rng, x0_fn=x0_fn)}[sampler]
    return cell(law(eps_fn, run, steps, steps if sampler == "euler_ancestral" else 0))


def effective_weights(lam, steps):
    """(G21): 1 + w_t = lam sigma_t / (sigma_t - sigma_prev) of DDIM over a leading grid, last step excluded."""
    ts = SCHED.timesteps(steps, "leading")
    sigma = np.sqrt((1 - SCHED.alpha_bar[ts]) / SCHED.alpha_bar[ts])
    g = lam * sigma[:-1] / (sigma[:-1] - sigma[1:])
    return f"{g.min():.2f}-{g.max():.2f}"


def cfg_pp_table():
    """(T14): CFG++ on DDIM and Euler ancestral at each lam over the step counts, and DDIM's weights (G21)."""
    head = " | ".join(f"{k} steps" for k in COUNTS)
    lines = [f"| `lam` | sampler | {head} |", "|---" * (2 + len(COUNTS)) + "|"]
    for lam in LAMS:
        for sampler in ("ddim", "euler_ancestral"):
            lines.append(f"| {lam:g} | {sampler} | " + " | ".join(cfg_pp_law(lam, k, sampler) for k in COUNTS) + " |")
        lines.append(f"| {lam:g} | DDIM's `1 + w_t` (G21) | " + " | ".join(effective_weights(lam, k) for k in COUNTS) + " |")
    return "\n".join(lines)


def main():
    print(rules_table(rule_laws()), schedules_table(), cfg_pp_table(), sep="\n\n")


if __name__ == "__main__":
    main()
