"""docs/guidance.md, "What each rule does": docs/measure_guidance.py --rules finds each rule's strength
at the matched fidelity by bisection, and the docs' table, ratios and explanations are what the
code gives (recomputed for the rows named here, which share the full run's x_T and reference draws)."""
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

import toy_data
from refdiff import guidance, process
from refdiff.schedule import Schedule

DOCS = Path(__file__).resolve().parents[1] / "docs"
_spec = importlib.util.spec_from_file_location("measure_guidance", DOCS / "measure_guidance.py")
measure_guidance = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(measure_guidance)
NAMED = ("cfg", "negative", "apg", "autoguidance")


def doc_rows():
    """{rule: cells} of the table in docs/guidance.md, "What each rule does"."""
    section = (DOCS / "guidance.md").read_text().split("## What each rule does")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+)` \|", line)
        if match:
            rows[match.group(1)] = [c.strip() for c in line.strip().strip("|").split("|")[1:]]
    return rows


@pytest.fixture(scope="module")
def recomputed():
    return measure_guidance.rules_at_matched_fidelity(methods=NAMED)


def test_crossing_bisects_to_the_first_bracketed_strength_and_says_when_there_is_none():
    # a monotone fidelity 1 - exp(-w): reaches 0.98 at w = log 50 = 3.912; mutations: the last bracket, no bisection
    rows = [{"w": w, "fidelity": 1 - np.exp(-w)} for w in (0.0, 1.0, 2.0, 5.0, 8.0)]
    got = measure_guidance.crossing(rows, lambda w: 1 - np.exp(-w), 0.98, iterations=30)
    assert abs(got - np.log(50)) < 1e-8, got
    assert measure_guidance.crossing(rows[:3], lambda w: 1 - np.exp(-w), 0.98) is None
    bumpy = [{"w": 0.0, "fidelity": 0.9}, {"w": 1.0, "fidelity": 0.99}, {"w": 2.0, "fidelity": 0.9}, {"w": 3.0, "fidelity": 0.99}]
    assert measure_guidance.crossing(bumpy, lambda w: 0.9 + 0.09 * min(w, 1.0), 0.98) <= 1.0


def test_the_docs_rows_are_what_the_code_gives(recomputed):
    rows, matched = recomputed
    docs = doc_rows()
    for r in matched:
        cells = docs[r["method"]]
        if r["w"] is None:
            best = max(x["fidelity"] for x in rows if x["method"] == r["method"])
            assert cells[0] == f"not reached (best {best:.3f})", cells
        else:
            assert cells == [f"{r['w']:.2f}", f"{r['fidelity']:.3f}", f"{r['spread']:.3f}", f"{r['energy']:.4f}"], cells
            assert abs(r["fidelity"] - measure_guidance.TARGET) < 1e-3  # the bisection hit the target


def test_the_docs_prose(recomputed):
    rows, matched = recomputed
    docs = doc_rows()
    energy = {name: float(cells[3]) for name, cells in docs.items() if not cells[0].startswith("not")}
    ratios = {name: energy[name] / energy["cfg"] for name in energy}
    assert round(ratios["negative"]) == 5 and round(ratios["perp_neg"]) == 4, ratios
    assert round(ratios["autoguidance"] - 1, 1) == 0.3 and round(ratios["cfg_pp"] - 1, 1) == 0.4, ratios
    assert docs["classifier"] == docs["cfg"]
    unguided = next(r for r in rows if r["method"] == "cfg" and r["w"] == 0.0)
    assert docs["negative"][2] == f"{unguided['spread']:.3f}" == "0.665"  # the negative rule keeps the spread
    assert min(float(c[2]) for c in docs.values() if c[2]) == float(docs["autoguidance"][2])  # the narrowest
    assert docs["apg"] == ["not reached (best 0.956)", "", "", ""]
    assert float(docs["cfg_zero_star"][0]) > 2 * float(docs["cfg"][0])
    apg = [r for r in rows if r["method"] == "apg"]
    assert max(apg, key=lambda r: r["fidelity"])["w"] == 8.0


def test_the_docs_explanations_of_apg_and_cfg_zero_star():
    # on x_t of the forward process of three_overlapping (3000 points, seed 0): the share of the squared
    # x0 guidance difference parallel to the conditional x0, and |cond - s* uncond| / |cond - uncond|
    sched, mix, rng = Schedule.linear(1000), toy_data.mixture("three_overlapping"), np.random.default_rng(0)
    x0, y = mix.sample(3000, rng)
    eps = mix.eps_model(sched)
    share, shorter = {}, {}
    for t in (100, 300, 500, 800):
        tt = np.full(3000, t)
        xt = process.q_sample(sched, x0, tt, rng.standard_normal(x0.shape))
        cond, uncond = eps(xt, tt, y), eps(xt, tt)
        d = process.eps_to_x0(sched, xt, tt, cond) - process.eps_to_x0(sched, xt, tt, uncond)
        share[t] = np.sum(guidance._projection(d, process.eps_to_x0(sched, xt, tt, cond)) ** 2) / np.sum(d ** 2)
        shorter[t] = (np.mean(np.linalg.norm(cond - guidance._projection(cond, uncond), axis=1))
                      / np.mean(np.linalg.norm(cond - uncond, axis=1)))
    assert [round(100 * share[t]) for t in (300, 500, 800, 100)] == [75, 96, 100, 27], share
    assert sorted(round(100 * (1 - v)) for v in shorter.values()) == [28, 30, 35, 36], shorter  # "28-36% shorter"
