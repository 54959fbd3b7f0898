"""Sampling the tilted density by sequential Monte Carlo, docs/tilted.md (F1)-(F4): the effective
sample size and the resampling on their own, the Langevin move's invariance, and what the sampler
outputs against the tilted density by quadrature (1D) and by rejection (2D): the docs' tables."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from refdiff import tilted, theory_mixture
from refdiff.guidance import classifier_free_guidance
from refdiff.oracle import GaussianMixture
from refdiff.schedule import Schedule
from strategies import seeds

SCHED = Schedule.linear(1000)
DOCS = Path(__file__).resolve().parents[1] / "docs"
_spec = importlib.util.spec_from_file_location("measure_tilted", DOCS / "measure_tilted.py")
measure_tilted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(measure_tilted)
log_weights = hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(-30, 30))


@given(log_weights)
def test_F3_ess_is_n_for_equal_weights_1_for_one_and_between_otherwise(lw):
    n = len(lw)
    assert tilted.effective_sample_size(np.zeros(n)) == pytest.approx(n)
    one = np.full(n, -1e3)
    one[0] = 0.0
    assert tilted.effective_sample_size(one) == pytest.approx(1.0)
    assert 1 - 1e-9 <= tilted.effective_sample_size(lw) <= n + 1e-9


@given(log_weights, seeds)
def test_systematic_resampling_keeps_each_particle_floor_or_ceil_of_n_w_times(lw, seed):
    # mutation caught: a multinomial draw (counts can stray by more than one)
    keep = tilted.systematic_resample(lw, np.random.default_rng(seed))
    w = np.exp(lw - lw.max())
    expected = len(lw) * w / w.sum()
    counts = np.bincount(keep, minlength=len(lw))
    assert len(keep) == len(lw) and np.all(counts >= np.floor(expected - 1e-9)) and np.all(counts <= np.ceil(expected + 1e-9))


def test_F4_a_langevin_move_leaves_pi_t_invariant():
    # 20,000 exact draws of q_t for a 1D Gaussian N(1, 0.5) at t = 300, ten MALA moves of a large step
    # (size 4): the mean and variance stay within 5 standard errors (sd / sqrt(n); var sqrt(2 / n));
    # mutation caught: the Metropolis test dropped (unadjusted Langevin with this step is biased)
    gm, t, n = GaussianMixture([1.0], [[1.0]], [[[0.5]]]), 300, 20_000
    a, rng = SCHED.alpha_bar[t], np.random.default_rng(0)
    mean, var = np.sqrt(a), a * 0.5 + 1 - a
    x = mean + np.sqrt(var) * rng.standard_normal((n, 1))
    log_target = lambda z, t: gm.log_prob_noised(z, SCHED.alpha_bar[t])
    eps_fn = lambda z, tt: gm.eps_model(SCHED)(z, tt)
    for _ in range(10):
        x = tilted.mala(eps_fn, log_target, SCHED, x, t, 4.0, rng).x
    assert abs(x.mean() - mean) < 5 * np.sqrt(var / n) and abs(x.var() - var) < 5 * var * np.sqrt(2 / n)


def test_mala_returns_log_pi_at_the_particles_it_returns():
    # smc carries log pi from one step to the next instead of evaluating it again: what mala
    # returns must be log_target at the returned particles, bit for bit (accepted moves and
    # rejected ones alike), and passing log pi in must change nothing.
    # Mutation caught: returning the log pi of the starting points.
    mix, t, rng = theory_mixture.two_class_mixture(), 400, np.random.default_rng(3)
    log_target = tilted.tilted_log_target(mix, SCHED, 1, 3.0)
    eps_fn = classifier_free_guidance(mix.eps_model(SCHED), 1, 3.0)
    x = rng.standard_normal((500, 1))
    moved = tilted.mala(eps_fn, log_target, SCHED, x, t, 4.0, np.random.default_rng(4))
    given = tilted.mala(eps_fn, log_target, SCHED, x, t, 4.0, np.random.default_rng(4), log_pi=log_target(x, t))
    assert 0 < np.mean(np.any(moved.x != x, axis=1)) < 1  # some moves accepted, some rejected
    np.testing.assert_array_equal(moved.log_pi, log_target(moved.x, t))
    np.testing.assert_array_equal(given.x, moved.x)
    np.testing.assert_array_equal(given.log_pi, moved.log_pi)


def test_F1_the_targets_score_is_cfgs_guided_score():
    # grad log pi_t = -eps_cfg / sqrt(1 - a) (the MALA drift relies on it), by central differences
    mix, w, t = theory_mixture.two_class_mixture(), 3.0, 250
    x, h = np.linspace(-3, 4, 15)[:, None], 1e-5
    log_pi = tilted.tilted_log_target(mix, SCHED, 1, w)
    numeric = (log_pi(x + h, t) - log_pi(x - h, t)) / (2 * h)
    eps = classifier_free_guidance(mix.eps_model(SCHED), 1, w)(x, np.full(len(x), t))
    np.testing.assert_allclose(numeric, -eps[:, 0] / np.sqrt(1 - SCHED.alpha_bar[t]), rtol=1e-6, atol=1e-6)


def test_docs_one_d_table_and_its_claims():
    # every SMC estimate within 2.5 of its standard errors (from 4 independent runs) of the quadrature
    rows = measure_tilted.one_d_rows()
    assert measure_tilted.table(rows) in (DOCS / "tilted.md").read_text()
    for r in rows:
        exact = np.array([r["exact"]["mean"], r["exact"]["var"], r["below"]])
        assert np.all(np.abs(r["smc"] - exact) <= 2.5 * np.maximum(r["se"], 1e-4)), r
    assert [r["ess"] >= 0.49 for r in rows] == [True] * len(rows)


def test_docs_two_d_check():
    test, ess = measure_tilted.two_d()
    assert test.passed and measure_tilted.two_d_line(test, ess) in (DOCS / "tilted.md").read_text()


def test_docs_prose_numbers():
    ts = SCHED.timesteps(100, "leading")
    assert (ts[-2], ts[-1]) == (11, 1)
    assert round((1 - SCHED.alpha_bar[1]) / (1 - SCHED.alpha_bar[11]), 3) == 0.046
    mix = theory_mixture.two_class_mixture()
    means = [tilted.sample(mix, SCHED, 1, 7.0, 2000, np.random.default_rng(s), steps=100, mala_steps=0)[0].mean()
             for s in range(4)]
    assert (round(np.mean(means), 2), round(np.std(means, ddof=1) / 2, 2)) == (1.86, 0.03)


def test_bad_arguments_are_named():
    mix = theory_mixture.two_class_mixture()
    for kwargs, name in (({"threshold": 1.5}, "threshold"), ({"mala_steps": -1}, "mala_steps"),
                         ({"mala_size": 0.0}, "mala_size"), ({"n": 0}, "n")):
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            tilted.sample(mix, SCHED, 1, 1.0, **{"n": 10, "rng": np.random.default_rng(0), "steps": 5, **kwargs})


def test_F5_the_fk_table_and_its_claims():
    rows = measure_tilted.fk_rows()
    assert measure_tilted.fk_table(rows) in (DOCS / "tilted.md").read_text()
    by = {(r["w"], r["steps"]): r for r in rows}
    for steps in (100, 400):  # w = 1: within 0.025 of the mean and 0.01 of the variance at both step counts
        r = by[1.0, steps]
        assert np.all(np.abs(r["fk"] - [r["exact"]["mean"], r["exact"]["var"]]) <= [0.025, 0.01]), r
    high, fine = by[3.0, 100], by[3.0, 400]  # w = 3: 0.095 too high at 100 steps, within one SE at 400
    assert round(high["fk"][0] - high["exact"]["mean"], 3) == 0.095
    assert abs(fine["fk"][0] - fine["exact"]["mean"]) <= fine["se"][0]


def test_F5_weights_are_the_score_gap_and_vanish_at_w_0():
    # one step replayed by hand: (beta_j / 2) gamma (gamma - 1) |eps_y - eps|^2 / (1 - a); at w = 0 none
    # (mutation caught: gamma (1 - gamma), the sign that favours the particles CFG already over-represents)
    mix = theory_mixture.two_class_mixture()
    eps = mix.eps_model(SCHED)
    x = np.linspace(-2, 3, 7)[:, None]
    result = tilted.fk_cfg(eps, SCHED, 1, 2.0, x, np.random.default_rng(0), steps=[700], threshold=0.0)
    sub, t = SCHED.respace(np.array([700])), 700
    gap = np.sum((eps(x, np.full(7, t), np.ones(7, int)) - eps(x, np.full(7, t))) ** 2, axis=1)
    np.testing.assert_allclose(result.log_weights, sub.betas[1] / 2 * 3 * 2 * gap / (1 - SCHED.alpha_bar[t]), rtol=1e-12)
    flat = tilted.fk_cfg(eps, SCHED, 1, 0.0, x, np.random.default_rng(0), steps=5)
    assert np.all(flat.log_weights == 0) and np.all(flat.ess == 1)


def test_learned_rows_machinery_on_a_small_budget():
    # the --learned table's function on a 50-step denoiser and few particles: every row and column,
    # finite, the oracle rows' (F5) mean nearer the tilted mean than DDPM with CFG's (its correction)
    rows = measure_tilted.learned_rows(budget={"steps": 50, "batch": 256, "p_uncond": 0.3, "dtype": "float32"},
                                       n=300, steps=50, n_base=500)
    assert [(r["w"], r["model"]) for r in rows] == [(w, m) for w in measure_tilted.FK_WS for m in ("oracle", "learned")]
    assert all(np.all(np.isfinite(np.concatenate([r["fk"], r["se"], r["ddpm"]]))) for r in rows)
    for r in rows:
        if r["model"] == "oracle":
            assert abs(r["fk"][0] - r["exact"]["mean"]) < abs(r["ddpm"][0] - r["exact"]["mean"]), r
    table = measure_tilted.learned_table(rows, steps=50)
    assert table.count("\n") == 1 + len(rows) and "(F5), 50 steps" in table
