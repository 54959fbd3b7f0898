"""(T12) of docs/theory.md: every sampler's exact output law on the 1D Gaussian pair, read off the
sampler itself by ``theory.sampler_output``.

Checked against the closed forms written from the formulas, (T2), (T3) and the (D8)/(D12)
recursions of tests/test_dpm_ancestral.py, to round-off; against 20,000 real samples of the
stochastic samplers within Monte Carlo error; against the limits (T5), (T6) as steps grow; and
every cell and ratio of the docs' tables.
"""
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refdiff import theory
from refdiff.guidance import classifier_free_guidance
from refdiff.samplers import SAMPLERS, ddim, dpmpp_2m, dpmpp_2m_sde, dpmpp_2s, edm, euler_ancestral, karras_times
from refdiff.schedule import Schedule

from test_dpm_ancestral import exact_dpmpp_2m, exact_dpmpp_2s

SCHED = Schedule.linear(1000)
MU, V = 1.0, 0.5
DOC = Path(__file__).resolve().parents[1] / "docs" / "theory.md"
pairs = dict(mu=st.floats(-3, 3), v=st.floats(0.05, 4), w=st.floats(0, 7))


def law(sample, mu=MU, v=V, w=0.0, draws=0):
    """theory.sampler_output of a callable (eps_fn, x_T, rng), with room for ``draws`` noise draws."""
    return np.array(theory.sampler_output(SCHED, sample, mu, v, w, max_draws=draws))


@given(steps=st.integers(1, 60), spacing=st.sampled_from(["leading", "trailing", "linspace"]),
       eta=st.sampled_from([0.0, 0.3, 1.0]), **pairs)
def test_T12_is_T2_for_ddim_and_euler_ancestral_with_the_same_eta(steps, spacing, eta, mu, v, w):
    ts = SCHED.timesteps(steps, spacing)
    want = theory.ddim_output(SCHED, ts, mu, v, w, eta=eta)
    got_ddim = law(lambda f, x, rng: ddim(f, SCHED, x, ts, eta=eta, rng=rng), mu, v, w, steps)
    got_ancestral = law(lambda f, x, rng: euler_ancestral(f, SCHED, x, ts, eta=eta, rng=rng), mu, v, w, steps)
    # both are sums of <= 60 steps' round-off, each a few ulps of |mean| + 1 (|mean| <= ~(1 + w) |mu| / v)
    scale = 1 + abs(want[0])
    np.testing.assert_allclose(got_ddim, want, rtol=1e-10, atol=1e-11 * scale)
    np.testing.assert_allclose(got_ancestral, want, rtol=1e-10, atol=1e-11 * scale)


@given(steps=st.integers(1, 40), **pairs)
def test_T12_is_T3_for_ddpm(steps, mu, v, w):
    ts = SCHED.timesteps(steps, "leading")
    want = theory.ddpm_output(SCHED, ts, mu, v, w)
    got = theory.sampler_output(SCHED, "ddpm", mu, v, w, steps=steps, max_draws=steps)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-11 * (1 + abs(want[0])))


@pytest.mark.parametrize("sampler, exact", [(dpmpp_2m, exact_dpmpp_2m), (dpmpp_2s, exact_dpmpp_2s)])
@pytest.mark.parametrize("grid", ["karras", "trailing", "leading"])
@settings(max_examples=8)  # (D12)'s recursion inverts sigma(t) at every midpoint: slow
@given(mu=st.floats(-3, 3), v=st.floats(0.05, 4))
def test_T12_is_the_formula_recursion_of_dpm_solver(sampler, exact, grid, mu, v):
    # unguided (w = 0) the pair's eps is the oracle's of N(mu, v), the data of the (D8)/(D12) recursions
    ts = karras_times(SCHED, 12) if grid == "karras" else SCHED.timesteps(12, grid)
    c, d = exact(ts, np.array([v]), np.array([mu]))
    got = law(lambda f, x, rng: sampler(f, SCHED, x, ts), mu, v)
    np.testing.assert_allclose(got, [d[0], c[0] ** 2], rtol=1e-9, atol=1e-11 * (1 + abs(mu)))


STOCHASTIC = {
    "euler_ancestral": lambda f, x, rng: euler_ancestral(f, SCHED, x, 20, rng=rng),
    "dpmpp_2m_sde": lambda f, x, rng: dpmpp_2m_sde(f, SCHED, x, SCHED.timesteps(20, "trailing"), rng=rng),
    "dpmpp_2m_sde, eta 0.5": lambda f, x, rng: dpmpp_2m_sde(f, SCHED, x, 20, eta=0.5, rng=rng),
    "edm, churn 10": lambda f, x, rng: edm(f, SCHED, x, karras_times(SCHED, 20), s_churn=10.0, rng=rng),
}


@pytest.mark.parametrize("w", [0.0, 3.0])
@pytest.mark.parametrize("name", STOCHASTIC)
def test_T12_stochastic_samplers_output_that_law(name, w):
    # 20,000 samples with CFG on the exact pair (the eps of guidance.py, not (T1)'s coefficients):
    # the mean within 5 standard errors sqrt(var / n) and the variance within 5 of its
    # sqrt(2 / (n - 1)) var (normal data); a wrong g_k (e.g. the noise left out) moves the variance
    # by far more than 5 sqrt(2 / n) = 5%.
    n, rng, sample = 20_000, np.random.default_rng(4), STOCHASTIC[name]
    mean, var = law(sample, w=w, draws=25)
    eps_fn = classifier_free_guidance(theory.exact_pair(SCHED, MU, V), 0, w)
    x = sample(eps_fn, rng.standard_normal((n, 1)), rng)[:, 0]
    assert abs(x.mean() - mean) <= 5 * np.sqrt(var / n), (x.mean(), mean)
    assert abs(x.var(ddof=1) - var) <= 5 * var * np.sqrt(2 / (n - 1)), (x.var(ddof=1), var)


def test_T12_samplers_approach_their_limits_as_steps_grow():
    # At w = 3 on trailing grids the deterministic samplers approach the probability-flow limit (T5)
    # and the stochastic ones the reverse-SDE limit (T6): the variance's relative error falls at every
    # refinement 50 -> 200 -> 500 steps, to below 0.2% (second order: 2M 0.02%, 2S 0.12%, Heun 0.09%),
    # 0.5% (2M SDE: 0.38%) or 5% (Euler ancestral, first order: 4.5%).
    ode, sde = theory.ode_limit(MU, V, 3.0)[1], theory.sde_limit(MU, V, 3.0)[1]
    for name, limit, bound in (("dpmpp_2m", ode, 2e-3), ("dpmpp_2s", ode, 2e-3), ("edm", ode, 2e-3),
                               ("dpmpp_2m_sde", sde, 5e-3), ("euler_ancestral", sde, 5e-2)):
        errors = [abs(theory.sampler_output(SCHED, name, MU, V, 3.0, steps=SCHED.timesteps(k, "trailing"),
                                            max_draws=0 if limit == ode else k)[1] / limit - 1) for k in (50, 200, 500)]
        assert errors[0] > errors[1] > errors[2] and errors[2] < bound, (name, errors)


def test_T12_refuses_bad_arguments():
    with pytest.raises(ValueError, match=r"\bsample\b.*'heun'"):
        theory.sampler_output(SCHED, "heun", MU, V, 1.0)
    with pytest.raises(ValueError, match=r"\bsample\b"):
        theory.sampler_output(SCHED, 3, MU, V, 1.0)
    with pytest.raises(ValueError, match=r"\bmax_draws = 5\b"):  # 20 steps draw 19 times
        theory.sampler_output(SCHED, "euler_ancestral", MU, V, 1.0, steps=20, max_draws=5)
    with pytest.raises(ValueError, match=r"\bmax_draws\b"):
        theory.sampler_output(SCHED, "ddim", MU, V, 1.0, max_draws=-1)
    with pytest.raises(ValueError, match=r"\bv\b"):
        theory.sampler_output(SCHED, "ddim", MU, 0.0, 1.0)


# ---- the docs' tables ----------------------------------------------------------------------------
def doc_tables():
    """{w: {sampler: {(spacing, steps): (mean, var)}}} from the (T12) section of docs/theory.md."""
    section = DOC.read_text().split("## (T12)")[1].split("\n## ")[0]
    tables, w = {}, iter([0.0, 3.0])
    for block in re.findall(r"\| sampler \|.*?\n\n", section, flags=re.S):
        lines = block.strip().splitlines()
        columns = [tuple(c.strip().split(", ")) for c in lines[0].strip("|").split("|")[1:]]
        rows = {}
        for line in lines[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = {(s, int(k)): tuple(map(float, c.split(", "))) for (s, k), c in zip(columns, cells[1:])}
        tables[next(w)] = rows
    return tables


def test_docs_T12_tables_and_their_ratios():
    tables = doc_tables()
    assert set(tables) == {0.0, 3.0} and all(set(rows) == set(SAMPLERS) for rows in tables.values())
    laws = {}
    for w, rows in tables.items():
        for name, cells in rows.items():
            for (spacing, k), printed in cells.items():
                got = theory.sampler_output(SCHED, name, MU, V, w, steps=SCHED.timesteps(k, spacing), max_draws=k)
                np.testing.assert_allclose(got, printed, atol=5e-4 + 1e-12, err_msg=f"{name}, {spacing} {k}, w = {w}")
                laws[name, spacing, k, w] = got
    # the prose, on the laws of the cells just checked: ratios to the target variance 0.5, to (T5)'s
    # 0.0625 and to (T6)'s
    var = lambda name, spacing, k, w: laws[name, spacing, k, w][1]
    sde = theory.sde_limit(MU, V, 3.0)[1]
    assert round(var("dpmpp_2m", "leading", 10, 0.0) / 0.5, 2) == 1.86 and round(var("dpmpp_2m", "leading", 20, 0.0) / 0.5, 2) == 1.35
    assert round(var("dpmpp_2m_sde", "leading", 10, 0.0) / 0.5, 2) == 2.70
    assert round(var("dpmpp_2m_sde", "leading", 20, 0.0) / 0.5, 2) == 1.97
    assert round(var("dpmpp_2m", "leading", 10, 3.0) / 0.0625, 1) == 5.7
    assert abs(var("dpmpp_2m", "trailing", 20, 0.0) / 0.5 - 1) < 0.025 and abs(var("dpmpp_2m", "trailing", 50, 0.0) / 0.5 - 1) < 0.007
    assert abs(var("dpmpp_2m", "trailing", 50, 3.0) / 0.0625 - 1) < 0.03
    assert all(abs(var(n, "trailing", 50, 3.0) / 0.0625 - 1) < 0.04 for n in ("dpmpp_2m", "dpmpp_2s", "edm"))
    assert abs(var("dpmpp_2m_sde", "trailing", 50, 3.0) / sde - 1) < 0.09
    assert round(1 - var("ddim", "trailing", 50, 3.0) / 0.0625, 2) == 0.19 and round(1 - var("ddpm", "trailing", 50, 3.0) / sde, 2) == 0.31
    sigma = lambda t: np.sqrt((1 - SCHED.alpha_bar[t]) / SCHED.alpha_bar[t])
    h, h_prev = np.log(sigma(101) / sigma(1)), np.log(sigma(201) / sigma(101))  # the leading 10-step grid's last two
    assert (round(h, 2), round(h_prev, 2), round(h / (2 * h_prev), 1)) == (3.53, 0.75, 2.4)
