"""(T13) and (T14) of docs/theory.md: what the guidance rules of 2023-2025 sample on 1D Gaussian data.

The closed forms of (T13) (another Gaussian in the second branch: negative labels, autoguidance)
against the moment equations integrated numerically; DDIM's approach to them; every finite-step
law of ``theory.affine_output`` against 20,000 samples; CFG++'s step-count dependence (T14); and
every cell and number of the docs' tables and prose.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.integrate import solve_ivp

from refdiff import guidance, theory
from refdiff.oracle import GaussianMixture
from refdiff.samplers import ddim, ddpm, euler_ancestral
from refdiff.schedule import Schedule

SCHED = Schedule.linear(1000)
MU, V = 1.0, 0.5
DOCS = Path(__file__).resolve().parents[1] / "docs"
_spec = importlib.util.spec_from_file_location("rule_laws", DOCS / "rule_laws.py")
rule_laws = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rule_laws)
gaussians = dict(mu=st.floats(-3, 3), v=st.floats(0.05, 4), w=st.floats(0, 7), mu_o=st.floats(-3, 3),
                 v_o=st.floats(0.05, 4))


def gaussian(mu, v):
    return GaussianMixture([1.0], [[mu]], [[[v]]])


# ---- (T13) the closed forms ------------------------------------------------------------------
@given(**gaussians)
def test_T13_by_integrating_the_moment_equations(mu, v, w, mu_o, v_o):
    # dx/da = (x + (1 + w) score_1 - w score_2) / (2a), score_i = -(x - sqrt(a) mu_i) / s_i, integrated
    # in log a from a = 1e-14 (x ~ N(0, 1)) to 1 with tolerance 1e-10: an independent route to (T13).
    # Mutations caught: phi with s_2^(+w/2), the mean integrand without -w mu_o / s_2.
    def rhs(log_a, state):
        a = np.exp(log_a)
        s1, s2 = 1 + a * (v - 1), 1 + a * (v_o - 1)
        slope = 1 - (1 + w) / s1 + w / s2
        shift = np.sqrt(a) * ((1 + w) * mu / s1 - w * mu_o / s2)
        m, var = state
        return [(slope * m + shift) / 2, slope * var]
    sol = solve_ivp(rhs, (np.log(1e-14), 0.0), [0.0, 1.0], rtol=1e-10, atol=1e-12)
    mean, var = theory.ode_limit(mu, v, w, mu_o, v_o)
    # starting at 1e-14 moves the mean by about sqrt(1e-14) (|mu| + |mu_o|)(1 + 2w) ~ 1e-7 of that
    scale = (abs(mu) + abs(mu_o) + 1) * (1 + 2 * w) * max(1.0, var ** 0.5, (v / v_o) ** (w / 2) * v ** 0.5)
    np.testing.assert_allclose(sol.y[:, -1], [mean, var], rtol=1e-6, atol=1e-6 * scale)


@given(mu=st.floats(-3, 3), v=st.floats(0.05, 4), w=st.floats(0, 7), delta=st.floats(0, 2))
def test_T13_autoguidance_keeps_the_mean_and_sharpens_by_v_over_v_plus_delta2_to_the_w(mu, v, w, delta):
    mean, var = theory.ode_limit(mu, v, w, mu, v + delta ** 2)
    np.testing.assert_allclose([mean, var], [mu, v ** (1 + w) * (v + delta ** 2) ** (-w)], rtol=1e-9, atol=1e-9)


@given(**gaussians)
def test_T13_a_negative_of_the_same_variance_translates_p_x_given_y(mu, v, w, mu_o, v_o):
    mean, var = theory.ode_limit(mu, v, w, mu_o, v)
    np.testing.assert_allclose([mean, var], [(1 + w) * mu - w * mu_o, v], rtol=1e-9, atol=1e-9 * (1 + w) * (1 + abs(mu_o)))


def test_T13_a_negative_of_the_same_variance_is_the_exact_model_of_the_translate():
    # the guided eps is the oracle eps of N((1 + w) mu - w mu_o, v) at every t (mutation: 1 + w on the negative)
    rng, w = np.random.default_rng(0), 2.5
    two = GaussianMixture([1.0, 1.0], [[MU], [-1.0]], [[[V]], [[V]]]).eps_model(SCHED)
    x, t = rng.normal(0, 3, (50, 1)), rng.integers(1, SCHED.T + 1, 50)
    got = guidance.negative_prompt_guidance(two, 0, 1, w)(x, t)
    np.testing.assert_allclose(got, gaussian((1 + w) * MU + w, V).eps_model(SCHED)(x, t), rtol=1e-12, atol=1e-12)


def test_T13_ddim_approaches_it_at_first_order():
    # autoguidance at w = 2, delta = 0.5: the variance error of DDIM with S steps falls about as 1 / S
    eps_fn, (mu_o, v_o) = rule_laws.rule_eps(rule_laws.RULES[2], 2.0)
    limit = theory.ode_limit(MU, V, 2.0, mu_o, v_o)[1]
    err = [abs(theory.affine_output(SCHED, "ddim", eps_fn, steps=k, max_draws=1)[1] - limit) for k in (200, 1000)]
    assert 0.1 < err[1] / err[0] < 0.3 and err[1] < 0.01 * limit, err


# ---- every finite-step law against samples --------------------------------------------------------
def cases():
    pair, two = theory.exact_pair(SCHED, MU, V), GaussianMixture([1.0, 1.0], [[MU], [-1.0]], [[[V]], [[V]]])
    good = gaussian(MU, V)
    e_pp, x0_pp = guidance.cfg_pp(pair, SCHED, 0, 0.6)
    return {
        "negative, DDPM-50": (guidance.negative_prompt_guidance(two.eps_model(SCHED), 0, 1, 2.0),
                              lambda f, x, rng: ddpm(f, SCHED, x, rng, steps=50)),
        "autoguidance, DDIM-50": (guidance.autoguidance(good.eps_model(SCHED), good.blurred(0.5).eps_model(SCHED), 0, 3.0),
                                  lambda f, x, rng: ddim(f, SCHED, x, 50)),
        "CFG++, DDIM-20": (e_pp, lambda f, x, rng: ddim(f, SCHED, x, 20, x0_fn=x0_pp)),
        "CFG++, Euler ancestral-20": (e_pp, lambda f, x, rng: euler_ancestral(f, SCHED, x, 20, rng=rng, x0_fn=x0_pp)),
        "linear schedule, DDPM-50": (guidance.scheduled_cfg(pair, 0, guidance.weight_schedule(SCHED, 6.0, 0.0)),
                                     lambda f, x, rng: ddpm(f, SCHED, x, rng, steps=50)),
        "interval, DDIM-50": (guidance.interval_cfg(pair, 0, 3.0, 100, 600), lambda f, x, rng: ddim(f, SCHED, x, 50)),
    }


@pytest.mark.parametrize("name", list(cases()))
def test_finite_step_laws_against_20000_samples(name):
    # 20,000 samples: the mean within 5 standard errors sqrt(var / n), the variance within 5 of its
    # sqrt(2 / (n - 1)) var; a false alarm has probability below 1e-6 per check.
    eps_fn, sample = cases()[name]
    mean, var = theory.affine_output(SCHED, sample, eps_fn, max_draws=50)
    n, rng = 20_000, np.random.default_rng(7)
    x = sample(eps_fn, rng.standard_normal((n, 1)), rng)[:, 0]
    assert abs(x.mean() - mean) <= 5 * np.sqrt(var / n), (name, x.mean(), mean)
    assert abs(x.var(ddof=1) - var) <= 5 * var * np.sqrt(2 / (n - 1)), (name, x.var(ddof=1), var)


def test_cfg_zero_star_in_one_dimension_is_the_conditional_model_where_uncond_is_not_0():
    # s* uncond is the projection of cond onto uncond, which in 1D is cond itself: (1 + w) cond - w cond.
    # Where uncond = 0 the projection is 0 and the rule is (1 + w) cond, so it is not affine in x there
    # (affine_output refuses it: its probe row x_T = 0 is such a point).
    pair, rng = theory.exact_pair(SCHED, MU, V), np.random.default_rng(3)
    x, t = rng.normal(0, 2, (200, 1)), rng.integers(1, SCHED.T + 1, 200)
    got = guidance.cfg_zero_star(pair, SCHED, 0, 5.0, zero_steps=0)(x, t)
    np.testing.assert_allclose(got, pair(x, t, 0), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="affine"):
        theory.affine_output(SCHED, "ddim", guidance.cfg_zero_star(pair, SCHED, 0, 5.0, zero_steps=0), steps=10)


def test_affine_output_refuses_an_eps_fn_that_is_not_affine():
    with pytest.raises(ValueError, match="eps_fn must be affine"):
        theory.affine_output(SCHED, "ddim", lambda x, t: np.tanh(3 * x), steps=10)
    # the check does not refuse an affine one, far from 0 too
    theory.affine_output(SCHED, "ddim", lambda x, t: 0.9 * x + 40.0, steps=10)


# ---- (T14) CFG++ and the docs -------------------------------------------------------------------
@pytest.fixture(scope="module")
def laws():
    """docs/rule_laws.py's (T13) laws, computed once: the docs' table and the prose's claims read the same numbers."""
    return rule_laws.rule_laws()


@pytest.fixture(scope="module")
def tables(laws):
    """The three tables of docs/rule_laws.py, computed once."""
    return {"rules": rule_laws.rules_table(laws), "schedules": rule_laws.schedules_table(),
            "cfg_pp": rule_laws.cfg_pp_table()}


def test_T14_cfg_pp_guides_more_with_more_steps(tables):
    # the cells of the (T14) table at lam = 0.6 over rule_laws.COUNTS: cfg_pp_law's and effective_weights'
    rows = {}
    for line in tables["cfg_pp"].splitlines()[2:]:
        lam, sampler, *cells = (c.strip() for c in line.strip(" |").split("|"))
        rows[lam, sampler] = cells
    ddim_laws = [tuple(map(float, c.split(", "))) for c in rows["0.6", "ddim"]]
    variances = [var for _, var in ddim_laws]
    assert all(a > b for a, b in zip(variances, variances[1:])), variances
    assert (round(variances[0], 2), round(variances[-1], 4)) == (0.28, 0.0009), variances
    assert ddim_laws[rule_laws.COUNTS.index(50)][0] > theory.ode_limit(MU, V, 3.0)[0]
    top = [float(c.split("-")[1]) for c in rows["0.6", "DDIM's `1 + w_t` (G21)"]]
    assert all(a < b for a, b in zip(top, top[1:])), top


def test_docs_tables_are_what_the_code_computes(tables):
    section = (DOCS / "theory.md").read_text()
    for table in tables.values():
        assert table in section, table


def test_docs_schedule_prose(tables):
    rows = {line.split(" | ")[0].strip("| "): [tuple(map(float, c.split(", "))) for c in line.strip(" |").split(" | ")[1:]]
            for line in tables["schedules"].splitlines()[2:]}
    for k in (0, 1):  # DDIM, DDPM: a weight large early keeps more variance, the reverse ramp less
        assert rows["cosine 6 -> 0"][k][1] > rows["linear 6 -> 0"][k][1] > rows["constant w = 3"][k][1] \
            > rows["linear 0 -> 6"][k][1]
    ddim_means = [cells[0][0] for cells in rows.values()]
    assert max(ddim_means) - min(ddim_means) < 0.15, ddim_means


def test_docs_closed_case_prose(laws):
    # negative label of equal variance: the unguided variances of (T12); autoguidance: the mean off only by the
    # start. Read off the laws of the table's rows (w = 1, 3) at 50 steps.
    unguided = {name: theory.sampler_output(SCHED, name, MU, V, 0.0, steps=50, max_draws=50)[1] for name in ("ddim", "ddpm")}
    for w in rule_laws.WS:
        for name in ("ddim", "ddpm"):
            np.testing.assert_allclose(laws[rule_laws.RULES[1], w][name, 50][1], unguided[name], rtol=1e-9)
        for name, bound in (("ddpm", 1e-4), ("ddim", 0.005)):
            assert abs(laws[rule_laws.RULES[2], w][name, 50][0] - MU) < bound
    assert round(np.sqrt(SCHED.alpha_bar[SCHED.T]), 4) == 0.0064
