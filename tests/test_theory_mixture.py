"""CFG on a 1D two-class mixture, and CFG as a predictor-corrector (refdiff/theory_mixture.py,
docs/theory_mixture.md (T7)-(T11)).

The tilted target (T7) is checked against an independent quadrature of N(x; 1, 1) sigmoid(2x)^w.
The samplers' laws (T9) come from one seeded run (``cfg_table``, shared by the tests below and
printed in the docs): n = 20000 for DDIM and DDPM, 5000 for the ODE. Monte Carlo tolerances are
k standard errors, the SEs of ``sample_moments``; at w = 0 the guided eps is affine, so (T2), (T3)
of docs/theory.md give the samplers' exact finite-step laws and the discretisation error exactly.
The predictor-corrector split (T10), (T11) is an identity, checked at float64 round-off.
"""
import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.integrate import quad
from scipy.special import expit

import toy_data
from refdiff import samplers, theory, theory_mixture as tm
from refdiff.guidance import classifier_free_guidance
from refdiff.schedule import Schedule

from strategies import EPS64, assert_bounded

SCHED = Schedule.linear(1000)
STEPS = 200
WS = (0.0, 1.0, 2.0, 4.0)
MIX = tm.two_class_mixture()
DOC = Path(__file__).resolve().parents[1] / "docs" / "theory_mixture.md"


def normal_logpdf(x, mean, var):
    """log N(x; mean, var) of one float, written out: quad calls it thousands of times per integral,
    where scipy.stats.norm's per-call checks took 98% of the time (same values to round-off)."""
    return -0.5 * (x - mean) * (x - mean) / var - 0.5 * math.log(2 * math.pi * var)


@pytest.fixture(scope="module")
def table():
    return tm.cfg_table(SCHED, ws=WS, seed=0, n=20_000, steps=STEPS, n_ode=5_000)


def test_T7_the_exact_classifier_is_sigmoid_2x():
    x = np.linspace(-9, 9, 37)[:, None]
    np.testing.assert_allclose(tm.confidence(MIX, x, 1), expit(2 * x[:, 0]), rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(tm.confidence(MIX, x, 0), expit(-2 * x[:, 0]), rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("w", [0.0, 0.5, 4.0, 10.0])
def test_T7_T8_tilted_moments_match_an_independent_quadrature(w):
    # p(x | 1)^(1 + w) p(x)^(-w) = p(x | 1) (p(x | 1) / p(x))^w, proportional to N(x; 1, 1) sigmoid(2x)^w
    def integral(g):
        return quad(lambda x: g(x) * math.exp(normal_logpdf(x, 1, 1)) * expit(2 * x) ** w, -np.inf, np.inf, epsabs=0,
                    epsrel=1e-12)[0]
    Z = integral(lambda x: 1.0)
    mean = integral(lambda x: x) / Z
    want = {"mean": mean, "var": integral(lambda x: (x - mean) ** 2) / Z,
            "confidence": integral(lambda x: expit(2 * x)) / Z,
            "entropy": -integral(lambda x: normal_logpdf(x, 1, 1) - w * np.logaddexp(0, -2 * x) - np.log(Z)) / Z}
    got = tm.tilted_moments(MIX, 1, w)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-8, abs=1e-10), (key, got[key], want[key])


def test_T7_at_w_0_is_p_x_given_y():
    got = tm.tilted_moments(MIX, 1, 0.0)
    assert (got["mean"], got["var"]) == pytest.approx((1.0, 1.0), abs=1e-10)
    assert got["entropy"] == pytest.approx(0.5 * np.log(2 * np.pi * np.e), abs=1e-10)


def test_T8_the_gaussian_fit_entropy_is_an_upper_bound_with_a_small_bias(table):
    # H_G - H = KL(tilted || its Gaussian fit) >= 0; docs/theory_mixture.md prints it to 4 decimals
    bias = [float(tm.gaussian_entropy(r["tilted"]["var"]) - r["tilted"]["entropy"]) for r in table]
    np.testing.assert_allclose(bias, [0.0, 0.0038, 0.0087, 0.0153], atol=5e-5)


def test_T9_sample_cfg_rejects_unknown_samplers():
    with pytest.raises(ValueError, match="sampler must be one of"):
        tm.sample_cfg(MIX, SCHED, 1, 1.0, "euler", 10, np.random.default_rng(0))


@pytest.mark.parametrize("law", ["ddim", "ddpm", "ode"])
def test_T9_confidence_rises_and_spread_falls_with_w(table, law):
    # each consecutive change exceeds 4 SEs of the difference (independent runs: SEs add in quadrature)
    for lo, hi in zip(table, table[1:]):
        a, b = lo[law], hi[law]
        for key, sign in (("confidence", 1), ("var", -1), ("entropy_gauss", -1)):
            se = np.hypot(a[key + "_se"], b[key + "_se"])
            assert sign * (b[key] - a[key]) > 4 * se, (law, lo["w"], hi["w"], key, a[key], b[key], se)
    tilted = [r["tilted"] for r in table]
    assert all(np.diff([t["confidence"] for t in tilted]) > 0) and all(np.diff([t["var"] for t in tilted]) < 0)
    assert all(np.diff([t["entropy"] for t in tilted]) < 0)


@pytest.mark.parametrize("key", ["mean", "var", "confidence"])
def test_T9_ddim_ddpm_and_the_tilted_density_differ_under_guidance(table, key):
    # at w >= 1 every pair is more than 5 SEs apart (the tilted moments are exact: SE 0)
    for row in table[1:]:
        ddim, ddpm, tilted = row["ddim"], row["ddpm"], row["tilted"]
        for (a, se_a), (b, se_b) in [((ddim[key], ddim[key + "_se"]), (ddpm[key], ddpm[key + "_se"])),
                                     ((ddim[key], ddim[key + "_se"]), (tilted[key], 0.0)),
                                     ((ddpm[key], ddpm[key + "_se"]), (tilted[key], 0.0))]:
            assert abs(a - b) > 5 * np.hypot(se_a, se_b), (row["w"], key, a, b, np.hypot(se_a, se_b))


@pytest.mark.parametrize("law", ["ddim", "ddpm", "ode"])
def test_T9_at_w_0_every_law_is_p_x_given_y_up_to_discretisation(table, law):
    # At w = 0 the guided eps is the conditional N(1, 1)'s, affine in x, so DDIM's and DDPM's outputs
    # are Gaussian with the moments (T2), (T3) of docs/theory.md (mu = 1, v = 1). The samples must
    # match those within 4 SE; their distance from N(1, 1) is the discretisation error, exactly.
    got, target = table[0][law], table[0]["tilted"]
    ts = SCHED.timesteps(STEPS, "leading")
    exact = {"ddim": theory.ddim_output(SCHED, ts, 1.0, 1.0, 0.0),
             "ddpm": theory.ddpm_output(SCHED, ts, 1.0, 1.0, 0.0),
             "ode": (1 - np.sqrt(SCHED.alpha_bar[-1]), 1.0)}[law]   # for N(1, 1): dx/da = 1 / (2 sqrt(a)) from a_T
    m, v = exact
    conf = quad(lambda x: expit(2 * x) * math.exp(normal_logpdf(x, m, v)), -np.inf, np.inf)[0]
    for key, want in (("mean", m), ("var", v), ("confidence", conf)):
        assert abs(got[key] - want) < 4 * got[key + "_se"], (law, key, got[key], want, got[key + "_se"])
        discretisation = abs(want - target[key])
        assert abs(got[key] - target[key]) < 4 * got[key + "_se"] + discretisation, (law, key, got[key], target[key])
    assert abs(exact[1] - 1.0) < 0.05   # 200 steps: DDIM's variance is 0.982, DDPM's 0.958


def test_the_printed_table_is_what_cfg_table_computes(table):
    text = DOC.read_text()
    printed = re.search(r"^\| `w` \| DDIM conf\..*?(?=\n\n)", text, flags=re.M | re.S)
    assert printed is not None, "table not found in docs/theory_mixture.md"
    assert printed.group(0) == tm.format_table(table), "\n" + tm.format_table(table)


# ---- (T10), (T11) CFG as a predictor-corrector ---------------------------------------------------
MIXTURES = {"1d": MIX, "anisotropic": toy_data.mixture("anisotropic")}


@given(st.sampled_from(sorted(MIXTURES)), st.integers(1, 1000), st.floats(-3, 10), st.integers(0, 2),
       st.lists(st.floats(-8, 8), min_size=6, max_size=6))
def test_T10_T11_the_reverse_sde_with_cfg_is_a_pf_ode_plus_a_langevin_drift(name, t, gamma, label, coords):
    mixture = MIXTURES[name]
    y = label % mixture.num_labels
    x = np.array(coords).reshape(-1, mixture.dim)
    a, beta = SCHED.alpha_bar[t], SCHED.betas[t]
    lhs = tm.reverse_sde_drift(x, tm.cfg_score(mixture, SCHED, x, t, y, gamma - 1), beta)
    s_y = mixture.score(x, a, y)
    rhs = tm.pf_ode_drift(x, s_y, beta) + tm.langevin_drift(tm.powered_score(mixture, x, a, y, 2 * gamma - 1), beta)
    # round-off: a few hundred ulps of the largest per-component term |C^-1 (x - sqrt(a) mu_k)| <= (|x| + |mu|) / var_min,
    # times the weights (up to 1 + 4 |gamma|), times beta
    var_min = a * np.linalg.eigvalsh(mixture.covs).min() + 1 - a   # the noised covariances' smallest eigenvalue
    term = (np.abs(x).max() + np.abs(mixture.means).max()) / var_min
    assert_bounded(lhs, rhs, 256 * EPS64 * beta * (np.abs(x).max() + (1 + 4 * abs(gamma)) * term), "PC split")


@pytest.mark.parametrize("name", sorted(MIXTURES))
def test_T11_the_corrector_exponent_is_2_gamma_minus_1_not_gamma(name):
    mixture, t, gamma = MIXTURES[name], 300, 3.0
    x = np.linspace(-2, 2, 4 * mixture.dim).reshape(-1, mixture.dim)
    a, beta = SCHED.alpha_bar[t], SCHED.betas[t]
    lhs = tm.reverse_sde_drift(x, tm.cfg_score(mixture, SCHED, x, t, 1, gamma - 1), beta)
    pf = tm.pf_ode_drift(x, mixture.score(x, a, 1), beta)
    wrong = pf + tm.langevin_drift(tm.powered_score(mixture, x, a, 1, gamma), beta)
    assert np.abs(lhs - wrong).max() > 1e-3 * beta
    np.testing.assert_allclose(tm.powered_score(mixture, x, a, 1, 1.0), mixture.score(x, a, 1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(tm.powered_score(mixture, x, a, 1, 0.0), mixture.score(x, a),
                               rtol=1e-10, atol=1e-12)


# ---- PCG: (T11) as a sampler (samplers.pcg, (D14)) --------------------------------------------------
_spec = importlib.util.spec_from_file_location("pcg_laws", DOC.parent / "pcg_laws.py")
pcg_laws = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pcg_laws)


@pytest.fixture(scope="module")
def pcg_table():
    """The laws the docs' PCG table prints (docs/pcg_laws.py), computed once for the tests below."""
    return pcg_laws.laws()


def test_pcg_table_converges_to_the_reverse_sde_and_its_ratios(pcg_table):
    assert pcg_laws.table(pcg_table) in DOC.read_text()
    for gamma, row in pcg_table.items():
        limit, pcg, ddpm = np.array(row["limit"]), np.array(row["pcg"]), np.array(row["ddpm"])
        for law in (pcg, ddpm):  # first order: the error falls about 4x from 250 to 1000 steps
            err = np.abs(law - limit).max(axis=1)
            assert np.all(np.diff(err) < 0) and 2.5 < err[2] / err[3] < 6, (gamma, err)
        rel = np.abs(pcg[0] / limit - 1), np.abs(ddpm[0] / limit - 1)  # 50 steps: "(mean, var)" relative errors
        assert rel[0][1] < 0.024 and 22 <= round(100 * rel[1][1]) <= 31, (gamma, rel)
    assert pcg_laws.COUNTS[0] == 50 and (pcg_laws.MU, pcg_laws.V) == (1.0, 0.5)
    pcg4, ddpm4, limit4 = pcg_table[4.0]["pcg"][0], pcg_table[4.0]["ddpm"][0], 1.875
    assert round(1 - pcg4[0] / limit4, 3) == 0.018 and round(ddpm4[0] / limit4 - 1, 3) == 0.008


def test_pcg_without_a_corrector_is_ddim_and_its_samples_follow_its_law(pcg_table):
    pair = theory.exact_pair(pcg_laws.SCHED, 1.0, 0.5)
    predictor, corrector = (lambda x, t: pair(x, t, 0)), classifier_free_guidance(pair, 0, 2.0)
    x = np.random.default_rng(0).standard_normal((50, 1))
    assert np.array_equal(samplers.pcg(predictor, corrector, pcg_laws.SCHED, x, 20, np.random.default_rng(1), langevin_steps=0),
                          samplers.ddim(predictor, pcg_laws.SCHED, x, 20))
    # 20,000 samples against the exact law (T12): mean within 5 sd / sqrt(n), variance within 5 var sqrt(2 / n)
    n, rng = 20_000, np.random.default_rng(2)
    got = samplers.pcg(predictor, corrector, pcg_laws.SCHED, rng.standard_normal((n, 1)), 50, rng)[:, 0]
    mean, var = pcg_table[2.0]["pcg"][pcg_laws.COUNTS.index(50)]  # pcg_law(2.0, 50), the table's
    assert abs(got.mean() - mean) < 5 * np.sqrt(var / n) and abs(got.var() - var) < 5 * var * np.sqrt(2 / n)
    for kwargs, name in (({"langevin_steps": -1}, "langevin_steps"), ({"step_scale": 0.0}, "step_scale")):
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            samplers.pcg(predictor, corrector, pcg_laws.SCHED, x, 5, rng, **kwargs)
