"""docs/measure_autoguidance.py: its machinery on a tiny budget (a few hundred training steps, 300
samples, DDIM-10). The full run's numbers are not checked here; these tests check that the table
holds every method and column, that the pieces compute what their docstrings say, and that the
bisection ends where it claims to."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

import toy_data
from refdiff.metrics import fidelity
from refdiff.schedule import Schedule
from refdiff.theory import ode_limit

DOCS = Path(__file__).resolve().parents[1] / "docs"
_spec = importlib.util.spec_from_file_location("measure_autoguidance", DOCS / "measure_autoguidance.py")
measure_autoguidance = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(measure_autoguidance)

TINY = {"steps": 300, "batch": 256, "lr": 5e-3, "p_uncond": 0.3, "hidden": 16, "dtype": "float32"}
TINY_WEAK = {"weak": {**TINY, "hidden": 8, "steps": 100}}
N, STEPS, WS = 300, 10, (0.0, 1.0, 4.0, 16.0)


@pytest.fixture(scope="module")
def run():
    """A tiny run: models, excess losses and the measured rows."""
    m = measure_autoguidance
    sched, mix = Schedule.linear(1000), toy_data.mixture("three_overlapping")
    learned, info = m.train_models(mix, sched, TINY, TINY_WEAK, 2, 2000, 0)
    models = m.with_exact(learned, mix, sched)
    excess = m.excess_losses(models, mix, sched, 8000, 0)
    rows, seconds = m.measure_all(models, mix, sched, N, 0, ws=WS, steps=STEPS)
    return {"sched": sched, "mix": mix, "learned": learned, "info": info, "models": models, "excess": excess,
            "rows": rows, "seconds": seconds}


def test_table_has_every_method_and_column(run):
    m = measure_autoguidance
    lines = m.table(run["rows"], run["excess"], run["info"]).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["guidance", "second branch", "excess loss (M5), % first / second",
                      f"w at fidelity {m.TARGET}", "fidelity (M7)", "spread (M8)", "energy distance (M1)",
                      "spread, ODE limit (T13)", "spread of the weak model alone"], header
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert all(len(cells) == len(header) for cells in body), body
    assert [cells[0] for cells in body] == [
        "conditional, good", "conditional, oracle", "CFG (G5), good", "autoguidance (G19), good",
        "autoguidance (G19), good", "CFG (G5), oracle", "autoguidance (G19), oracle"], body
    assert [cells[1] for cells in body] == [
        "", "", "good, null label (3 x 16, 300 steps)", "weak1 (3 x 8, 100 steps)", "weak2 (3 x 8, 100 steps)",
        "oracle, null label", f"oracle blurred by {m.WEAK_BLUR}"], body
    for cells in body:  # fidelity, spread and energy are numbers in every row
        assert all(np.isfinite(float(c)) for c in cells[4:7]), cells
    # (T13): the exact conditional law's spread is sqrt(2 * 0.25); no law for learned or CFG rows
    assert [cells[7] for cells in body][:6] == ["", f"{np.sqrt(0.5):.3f}", "", "", "", ""], body
    # the weak model's own spread: for autoguidance rows only
    assert [cells[8] != "" for cells in body] == [False, False, False, True, True, False, True], body
    assert len(run["seconds"]) == len(body) and list(run["info"]) == ["good", "weak1", "weak2"]


def test_replicates_differ_and_are_reproducible(run):
    """Each replicate has a generator of its own; the same seed trains the same bits."""
    m, mix, sched = measure_autoguidance, run["mix"], run["sched"]
    x = np.random.default_rng(5).standard_normal((50, 2))
    y = np.arange(50) % 3
    weak1, weak2 = run["learned"]["weak1"](x, 500, y), run["learned"]["weak2"](x, 500, y)
    assert not np.allclose(weak1, weak2)
    again, _ = m.train_models(mix, sched, {**TINY, "steps": 1}, TINY_WEAK, 2, 2000, 0)
    np.testing.assert_array_equal(again["weak1"](x, 500, y), weak1)


def test_the_oracle_has_no_excess_and_the_blurred_oracle_some(run):
    """(M5) of the oracle against itself is 0 up to float64 round-off of the same sum; blurring by 0.5
    costs a loss well above its standard error."""
    m, excess = measure_autoguidance, run["excess"]
    for at_null in (False, True):
        assert abs(excess[m.ORACLE, at_null].excess) < 1e-12, excess[m.ORACLE, at_null]
    blurred = excess[m.BLURRED, False]
    assert blurred.excess > 5 * blurred.stderr, blurred


@given(w=st.floats(-2.0, 50.0))
def test_autoguidance_by_the_model_itself_is_the_conditional_model(run, w):
    """weak = good: (1 + w) eps - w eps = eps for any w, up to float32 round-off of the three terms
    (the tiny networks run in float32; |(1 + w) eps| and |w eps| are at most (1 + |w|) |eps|)."""
    m, model = measure_autoguidance, run["learned"]["good"]
    x = np.random.default_rng(1).normal(0, 3, (64, 2))
    y, t = np.arange(64) % 3, np.random.default_rng(2).integers(1, 1001, 64)
    same = m.eps_fn_at({"good": model, "copy": model}, ("good", "copy", False), y)(w)(x, t)
    conditional = m.eps_fn_at({"good": model}, ("good", None, False), y)(w)(x, t)
    np.testing.assert_allclose(same, conditional, rtol=0, atol=4 * (1 + 2 * abs(w)) * np.finfo(np.float32).eps
                               * np.max(np.abs(conditional)))


def test_autoguidance_by_itself_never_reaches_the_target(run):
    """A method whose fidelity does not change with w reports 'not reached' with the conditional
    fidelity (the tiny model stays below 0.98), and its row at the largest w."""
    m = measure_autoguidance
    models = {**run["models"], "copy": run["learned"]["good"]}
    y, x_T = np.arange(N) % 3, np.random.default_rng([0, 0]).standard_normal((N, 2))
    sample = lambda eps_fn: m.ddim(eps_fn, run["sched"], x_T, STEPS)
    measure = lambda x: m.mixture_measures(run["mix"], np.random.default_rng(1))(x, y)
    fidelity_at = lambda x: fidelity(run["mix"], x, y)[0]
    row = m.matched_row(("good", "copy", False), m.eps_fn_at(models, ("good", "copy", False), y), sample,
                        measure, fidelity_at, WS)
    conditional = run["rows"][0]
    assert row["reached"] is False and row["w"] == WS[-1]
    assert conditional["fidelity"] < m.TARGET
    assert row["best"] == pytest.approx(conditional["fidelity"], abs=1e-5), (row, conditional)


def test_bisection_ends_where_it_claims(run):
    """Every guided row that reached the target: fidelity >= TARGET at the returned w, below it one
    bisection width (the bracketing rows' gap / 2^12) lower; ``crossing`` runs 12 halvings."""
    m = measure_autoguidance
    y, x_T = np.arange(N) % 3, np.random.default_rng([0, 0]).standard_normal((N, 2))
    reached = [r for r in run["rows"] if r["reached"]]
    assert {r["method"] for r in reached} >= {("good", "good", True), ("oracle", "oracle", True),
                                               ("oracle", m.BLURRED, False)}, reached
    for r in reached:
        fid = lambda w: fidelity(run["mix"], m.ddim(m.eps_fn_at(run["models"], r["method"], y)(w), run["sched"],
                                                    x_T, STEPS), y)[0]
        lo, hi = max(w for w in WS if w < r["w"]), min(w for w in WS if w >= r["w"])
        width = (hi - lo) / 2 ** 12
        assert fid(r["w"]) >= m.TARGET > fid(r["w"] - width), (r, fid(r["w"]), fid(r["w"] - width))
        assert r["fidelity"] == pytest.approx(fid(r["w"]), abs=1e-12)


def test_t13_spread_is_the_blurred_gaussian_law():
    """(T13) for autoguidance on N(mu, v I): spread sqrt(D v (v / (v + delta^2))^w), here with
    v = 0.25 (std 0.5) and delta = 0.5: 0.5 sqrt(2) 2^(-w/2); ode_limit integrates the same law."""
    m, mix = measure_autoguidance, toy_data.mixture("three_overlapping")
    for w in (0.0, 1.0, 1.63, 4.0):
        assert m.t13_spread(mix, w) == pytest.approx(0.5 * np.sqrt(2) * 2 ** (-w / 2), rel=1e-12)
        assert m.t13_spread(mix, w) == pytest.approx(np.sqrt(2 * ode_limit(0.0, 0.25, w, 0.0, 0.5)[1]), rel=1e-12)

