"""Samplers (docs/samplers.md): exact arithmetic, exact finite-step distributions, and samples
from the oracle judged against the truth.

The strongest check is distributional and exact: for Gaussian data N(mu, Sigma) the exact eps is
linear in x, so DDPM and DDIM are linear-Gaussian maps and the distribution they output after a
*finite* number of steps is Gaussian with a mean and variance given by a scalar recursion per
eigen-direction of Sigma (written out below from the papers' update rules, independently of
refdiff). Sample moments are then compared with these exact moments within pure Monte Carlo
error, so the test catches any wrong coefficient without having to allow for discretisation bias.
"""
import numpy as np
import pytest

import toy_data
from refdiff.metrics import two_sample_test
from refdiff.oracle import GaussianMixture
from refdiff.samplers import SAMPLERS as REGISTERED, ddim, ddpm, edm
from refdiff.schedule import Schedule

LINEAR = Schedule.linear(1000)
COSINE = Schedule.cosine(1000)


def eps_fn_of(model, y=None):
    return lambda x, t: model(x, t, y)


# ---- the exact finite-step reference for Gaussian data ---------------------------------------

def gaussian_eps_coefs(a, lam, m):
    """eps*(x) = e1 * x + e0 per eigen-direction for data N(m, lam): eps* = sqrt(1-a)(x - sqrt(a) m)/(a lam + 1 - a)."""
    e1 = np.sqrt(1 - a) / (a * lam + 1 - a)
    return e1, -e1 * np.sqrt(a) * m


def exact_ddim_moments(alpha_bar, ts, eta, lam, m):
    """Mean and variance after DDIM (Song et al. 2021, eq. 12) from x_T ~ N(0, 1), per direction."""
    mean, var = np.zeros_like(m), np.ones_like(m)
    for t, t_prev in zip(ts, list(ts[1:]) + [0]):
        a, ap = alpha_bar[t], alpha_bar[t_prev]
        sigma2 = eta ** 2 * (1 - ap) / (1 - a) * (1 - a / ap)
        c = np.sqrt(1 - ap - sigma2)
        e1, e0 = gaussian_eps_coefs(a, lam, m)
        # x0_hat = (x - sqrt(1-a) eps) / sqrt(a);  x' = sqrt(ap) x0_hat + c eps + sqrt(sigma2) z
        A = np.sqrt(ap) * (1 - np.sqrt(1 - a) * e1) / np.sqrt(a) + c * e1
        B = -np.sqrt(ap) * np.sqrt(1 - a) * e0 / np.sqrt(a) + c * e0
        mean, var = A * mean + B, A ** 2 * var + sigma2
    return mean, var


def exact_ddpm_moments(alpha_bar, ts, variance, lam, m):
    """Mean and variance after ancestral DDPM (Ho et al. 2020, Alg. 2) on the timesteps ts (decreasing)."""
    mean, var = np.zeros_like(m), np.ones_like(m)
    ab = np.concatenate([[1.0], alpha_bar[np.sort(ts)]])  # the respaced alpha_bar (eq. S5)
    for j in range(len(ts), 0, -1):
        a, ap = ab[j], ab[j - 1]
        beta = 1 - a / ap
        e1, e0 = gaussian_eps_coefs(a, lam, m)
        # x' = (x - beta / sqrt(1-a) eps) / sqrt(1 - beta) + s z
        A = (1 - beta * e1 / np.sqrt(1 - a)) / np.sqrt(1 - beta)
        B = -beta * e0 / (np.sqrt(1 - a) * np.sqrt(1 - beta))
        s2 = 0.0 if j == 1 else ((1 - ap) / (1 - a) * beta if variance == "beta_tilde" else beta)
        mean, var = A * mean + B, A ** 2 * var + s2
    return mean, var


def exact_output(spec, mean, cov):
    """The exact N(mean', cov') that sampler ``spec`` outputs for data N(mean, cov) with exact eps.

    In the eigenbasis cov = U diag(lam) U^T the directions evolve independently (eps* is
    U diag(.) U^T applied to x - sqrt(a) mean, and every update is a combination of x and eps).
    """
    lam, U = np.linalg.eigh(cov)
    m = U.T @ mean
    ts = spec.timesteps()
    if spec.kind == "ddpm":
        mu, var = exact_ddpm_moments(spec.sched.alpha_bar, ts, spec.option, lam, m)
    else:
        mu, var = exact_ddim_moments(spec.sched.alpha_bar, ts, spec.option, lam, m)
    return U @ mu, (U * var) @ U.T


class Spec:
    """A sampler configuration: kind "ddpm" (option = variance) or "ddim" (option = eta)."""

    def __init__(self, kind, sched, steps=None, spacing="leading", option=None):
        self.kind, self.sched, self.steps, self.spacing = kind, sched, steps, spacing
        self.option = option if option is not None else ("beta_tilde" if kind == "ddpm" else 0.0)

    def timesteps(self):
        return np.arange(self.sched.T, 0, -1) if self.steps is None else self.sched.timesteps(self.steps, self.spacing)

    def run(self, eps_fn, x_T, rng):
        if self.kind == "ddpm":
            spacing = None if self.steps is None else self.spacing
            return ddpm(eps_fn, self.sched, x_T, rng, variance=self.option, steps=self.steps, spacing=spacing)
        return ddim(eps_fn, self.sched, x_T, self.steps, eta=self.option, spacing=self.spacing, rng=rng)


SAMPLERS = {  # the four the foundation issue names, then variants over schedules, spacings, options
    "ddpm-1000": Spec("ddpm", LINEAR),
    "ddpm-respaced-100": Spec("ddpm", LINEAR, steps=100),
    "ddim-50": Spec("ddim", LINEAR, steps=50),
    "ddim-100": Spec("ddim", LINEAR, steps=100),
}
VARIANTS = {
    "ddpm-100-beta": Spec("ddpm", LINEAR, steps=100, option="beta"),
    "ddpm-50-cosine-trailing": Spec("ddpm", COSINE, steps=50, spacing="trailing"),
    "ddim-20-eta0.5-cosine-linspace": Spec("ddim", COSINE, steps=20, spacing="linspace", option=0.5),
    "ddim-25-eta1-trailing": Spec("ddim", LINEAR, steps=25, spacing="trailing", option=1.0),
}
GAUSS = GaussianMixture([1.0], [[0.7, -1.2]], [[[0.3, 0.12], [0.12, 0.08]]])


@pytest.mark.parametrize("name", [*SAMPLERS, *VARIANTS])
def test_gaussian_output_matches_exact_finite_step_moments(name):
    spec, n = {**SAMPLERS, **VARIANTS}[name], 20000
    rng = np.random.default_rng(7)
    x = spec.run(eps_fn_of(GAUSS.eps_model(spec.sched)), rng.standard_normal((n, 2)), rng)
    mean, cov = exact_output(spec, GAUSS.means[0], GAUSS.covs[0])
    lam, U = np.linalg.eigh(cov)
    z = (x - mean) @ U  # independent N(0, lam_d) coordinates if the sampler is right
    # The output is exactly Gaussian, so each coordinate's sample mean has SE sqrt(lam / n) and
    # its sample variance SE lam * sqrt(2 / (n - 1)); 5 SE: a two-sided false-alarm rate ~6e-7.
    np.testing.assert_allclose(z.mean(0), 0.0, atol=5 * np.sqrt(lam / n).max())
    np.testing.assert_allclose(z.var(0, ddof=1), lam, rtol=5 * np.sqrt(2 / (n - 1)))


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_exact_reference_converges_to_the_data(kind):
    # A check of the reference itself, not of refdiff: as the step count grows the finite-step
    # variance tends to the data's at first order (measured worst relative errors, DDPM: 4.4% at
    # T = 1000, 1.3% at 4000; DDIM: 1.8%, 0.5%), and the mean error stays below the prior
    # mismatch sqrt(alpha_bar_T) |mean| that starting from N(0, I) instead of q(x_T) leaves.
    errors = []
    for T in (1000, 4000):
        spec = Spec(kind, Schedule.linear(T), steps=T)
        mean, cov = exact_output(spec, GAUSS.means[0], GAUSS.covs[0])
        errors.append(np.abs(np.diag(cov) / np.diag(GAUSS.covs[0]) - 1).max())
        assert np.abs(mean - GAUSS.means[0]).max() <= np.sqrt(spec.sched.alpha_bar[-1]) * np.abs(GAUSS.means[0]).max()
    assert errors[1] < errors[0] / 2.5, errors


# ---- samples from the oracle judged against the truth -----------------------------------------

def moment_tolerance(truth, n):
    """5 Monte Carlo standard errors of a sample mean and covariance of n points, estimated from
    a large sample of the truth (for the covariance: the std of the products (x_i - m_i)(x_j - m_j));
    5 SE keeps each check's false-alarm rate near 6e-7."""
    c = truth - truth.mean(0)
    prods = c[:, :, None] * c[:, None, :]
    return 5 * truth.std(0) / np.sqrt(n), 5 * prods.std(0) / np.sqrt(n)


@pytest.mark.parametrize("name", SAMPLERS)
def test_oracle_samples_reproduce_the_mixture(name):
    mix, n = toy_data.mixture("three_gaussians"), 2000
    rng = np.random.default_rng(11)
    x = SAMPLERS[name].run(eps_fn_of(mix.eps_model(LINEAR)), rng.standard_normal((n, 2)), rng)
    truth = mix.sample(200_000, rng)[0]
    result = two_sample_test(x, truth[:n], rng, n_perm=200, alpha=0.01)
    assert result.passed, result
    tol_mean, tol_cov = moment_tolerance(truth, n)
    np.testing.assert_allclose(x.mean(0), mix.mean(), atol=tol_mean.max())
    assert np.all(np.abs(np.cov(x.T) - mix.cov()) <= tol_cov), (np.cov(x.T), mix.cov(), tol_cov)


@pytest.mark.parametrize("name", SAMPLERS)
def test_oracle_samples_reproduce_each_conditional(name):
    # Each class of three_gaussians is one Gaussian, so conditional sampling is exactly the
    # Gaussian case: the samples must match the exact finite-step output N(m', C') (two-sample
    # test and moments within Monte Carlo error). Against the truth itself a coarse sampler is
    # off by its discretisation error (DDIM-50 shrinks the class variance 0.09 by ~14%), which a
    # two-sample test of 1000 points is at the edge of detecting: comparing with the exact
    # finite-step output is the test that cannot be passed by luck.
    mix, spec, n = toy_data.mixture("three_gaussians"), SAMPLERS[name], 3000
    rng = np.random.default_rng(12)
    y = np.arange(n) % mix.num_labels
    x = spec.run(eps_fn_of(mix.eps_model(LINEAR), y), rng.standard_normal((n, 2)), rng)
    for label in range(mix.num_labels):
        xs = x[y == label]
        mean, cov = exact_output(spec, mix.means[label], mix.covs[label])
        exact = rng.multivariate_normal(mean, cov, size=100_000)
        result = two_sample_test(xs, exact[:len(xs)], rng, n_perm=200, alpha=0.01)
        assert result.passed, (label, result)
        tol_mean, tol_cov = moment_tolerance(exact, len(xs))
        np.testing.assert_allclose(xs.mean(0), mean, atol=tol_mean.max())
        assert np.all(np.abs(np.cov(xs.T) - cov) <= tol_cov), (np.cov(xs.T), cov, tol_cov)
        # The exact output's mean is off the class mean only by the prior mismatch
        # sqrt(alpha_bar_T) |mean| (|mean| = 1.5 here); its covariance carries the sampler's
        # discretisation error, which docs/samplers.md tabulates.
        np.testing.assert_allclose(mean, mix.means[label], atol=np.sqrt(LINEAR.alpha_bar[-1]) * 1.5)


def test_oracle_samples_reproduce_a_two_component_conditional():
    # "anisotropic": rotated covariances and a label owning two components, so p(x | y) is itself
    # a mixture; DDPM with all 1000 steps against the truth.
    mix, n = toy_data.mixture("anisotropic"), 3000
    rng = np.random.default_rng(12)
    y = np.arange(n) % mix.num_labels
    x = SAMPLERS["ddpm-1000"].run(eps_fn_of(mix.eps_model(LINEAR), y), rng.standard_normal((n, 2)), rng)
    for label in range(mix.num_labels):
        xs = x[y == label]
        truth = mix.sample(100_000, rng, y=label)[0]
        result = two_sample_test(xs, truth[:len(xs)], rng, n_perm=200, alpha=0.01)
        assert result.passed, (label, result)
        tol_mean, _ = moment_tolerance(truth, len(xs))
        np.testing.assert_allclose(xs.mean(0), mix.mean(label), atol=tol_mean.max())


def test_two_sample_test_has_power_against_a_wrong_coefficient():
    # The same judgement as above must reject a sampler whose eps is off by 10%: otherwise
    # passing it would say nothing.
    mix, n = toy_data.mixture("three_gaussians"), 2000
    rng = np.random.default_rng(13)
    model = mix.eps_model(LINEAR)
    x = ddim(lambda x, t: 0.9 * model(x, t), LINEAR, rng.standard_normal((n, 2)), 50)
    assert not two_sample_test(x, mix.sample(n, rng)[0], rng, n_perm=200, alpha=0.01).passed


# ---- exact arithmetic and plumbing -----------------------------------------------------------

SMALL = Schedule.linear(40)
SMALL_MIX = GaussianMixture([1, 2], [[1.0, 0.0], [-1.0, 0.5]], [np.eye(2) * 0.2, np.eye(2) * 0.1])


def test_ddim_eta1_with_every_step_is_ddpm():
    # eq. (D3): eta = 1 over all timesteps gives sigma_t^2 = beta_tilde_t, and both samplers draw
    # their noise in the same order (none at the last step), so the chains agree to round-off.
    f = eps_fn_of(SMALL_MIX.eps_model(SMALL))
    x_T = np.random.default_rng(0).standard_normal((64, 2))
    a = ddpm(f, SMALL, x_T, np.random.default_rng(1))
    b = ddim(f, SMALL, x_T, SMALL.T, eta=1.0, rng=np.random.default_rng(1))
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_respaced_ddpm_with_every_step_is_plain_ddpm():
    f = eps_fn_of(SMALL_MIX.eps_model(SMALL))
    x_T = np.random.default_rng(0).standard_normal((32, 2))
    a = ddpm(f, SMALL, x_T, np.random.default_rng(1))
    b = ddpm(f, SMALL, x_T, np.random.default_rng(1), steps=SMALL.T)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("run", [
    lambda f, x, seed: ddpm(f, SMALL, x, np.random.default_rng(seed), steps=10),
    lambda f, x, seed: ddpm(f, SMALL, x, np.random.default_rng(seed), variance="beta"),
    lambda f, x, seed: ddim(f, SMALL, x, 10, eta=0.7, rng=np.random.default_rng(seed)),
], ids=["ddpm-respaced", "ddpm-beta", "ddim-eta0.7"])
def test_same_seed_same_bits_other_seed_other_samples(run):
    f = eps_fn_of(SMALL_MIX.eps_model(SMALL))
    x_T = np.random.default_rng(0).standard_normal((16, 2))
    assert np.array_equal(run(f, x_T, 5), run(f, x_T, 5))
    assert not np.allclose(run(f, x_T, 5), run(f, x_T, 6))


@pytest.mark.parametrize("name", [*REGISTERED, "edm, churn"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_registered_sampler_keeps_the_dtype_and_same_seed_gives_same_bits(name, dtype):
    # each sampler of samplers.SAMPLERS (and edm with churn), at 8 steps: float32 in, float32 out;
    # the same seed twice gives the same bits, and another seed other samples exactly when the sampler
    # draws noise
    f = eps_fn_of(SMALL_MIX.eps_model(SMALL))
    x_T = np.random.default_rng(0).standard_normal((16, 2)).astype(dtype)
    if name == "edm, churn":
        run = lambda seed: edm(f, SMALL, x_T, 8, s_churn=5.0, rng=np.random.default_rng(seed))
    else:
        run = lambda seed: REGISTERED[name][1](f, SMALL, x_T, 8, np.random.default_rng(seed), None)
    first = run(5)
    assert first.dtype == dtype and np.array_equal(first, run(5))
    stochastic = name in ("ddpm", "euler_ancestral", "dpmpp_2m_sde", "edm, churn")
    assert np.array_equal(first, run(6)) != stochastic


def test_ddim_eta0_is_deterministic_without_rng():
    f = eps_fn_of(SMALL_MIX.eps_model(SMALL))
    x_T = np.random.default_rng(0).standard_normal((16, 2))
    assert np.array_equal(ddim(f, SMALL, x_T, 10), ddim(f, SMALL, x_T, 10, rng=np.random.default_rng(3)))


@pytest.mark.parametrize("sampler,kwargs,steps", [
    (ddpm, {"rng": np.random.default_rng(0)}, SMALL.T),
    (ddpm, {"rng": np.random.default_rng(0), "steps": 7, "spacing": "trailing"}, 7),
    (ddim, {"steps": 9, "spacing": "linspace"}, 9),
])
def test_path_and_callback(sampler, kwargs, steps):
    f = eps_fn_of(SMALL_MIX.eps_model(SMALL))
    x_T = np.random.default_rng(0).standard_normal((5, 2))
    seen = []
    x, path = sampler(f, SMALL, x_T, return_path=True, callback=lambda t, x, eps: seen.append((t, x.copy(), eps)), **kwargs)
    assert path.shape == (steps + 1, 5, 2)
    assert np.array_equal(path[0], x_T) and np.array_equal(path[-1], x)
    ts = [t for t, _, _ in seen]
    assert len(ts) == steps and ts == sorted(ts, reverse=True) and ts[0] <= SMALL.T and ts[-1] >= 1
    for k, (_, xs, eps) in enumerate(seen):
        assert np.array_equal(xs, path[k + 1]) and eps.shape == (5, 2)


def test_eps_fn_gets_original_timesteps_on_a_respaced_chain():
    calls = []

    def f(x, t):
        calls.append(t.copy())
        return np.zeros_like(x)

    ddpm(f, LINEAR, np.zeros((3, 2)), np.random.default_rng(0), steps=10)
    assert [c[0] for c in calls] == list(LINEAR.timesteps(10)) and all(c.shape == (3,) for c in calls)


@pytest.mark.parametrize("run", [
    lambda f, x: ddpm(f, SMALL, x, np.random.default_rng(0)),
    lambda f, x: ddim(f, SMALL, x, 10, eta=0.5, rng=np.random.default_rng(0)),
])
def test_float32_in_float32_out(run):
    f = eps_fn_of(SMALL_MIX.eps_model(SMALL))
    x_T = np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32)
    assert run(f, x_T).dtype == np.float32


def test_float32_follows_float64_on_a_deterministic_chain():
    # DDIM with eta = 0 draws no noise, so the float32 chain must track the float64 one to
    # float32 round-off accumulated over 10 steps (each ~1e-7 relative; 1e-4 leaves room for the
    # 1/sqrt(alpha_bar) amplification ~ 100 at t near T).
    f = eps_fn_of(SMALL_MIX.eps_model(SMALL))
    x_T = np.random.default_rng(0).standard_normal((8, 2))
    out = ddim(f, SMALL, x_T.astype(np.float32), 10)
    np.testing.assert_allclose(out, ddim(f, SMALL, x_T, 10), atol=1e-4)


@pytest.mark.parametrize("call,match", [
    (lambda f, x: ddpm(f, SMALL, x, np.random.default_rng(0), variance="learned"), "variance"),
    (lambda f, x: ddpm(f, SMALL, x, rng=None), "rng"),
    (lambda f, x: ddpm(f, SMALL, x, 123), "rng"),
    (lambda f, x: ddpm(f, SMALL, x, np.random.default_rng(0), steps=0), "steps"),
    (lambda f, x: ddpm(f, SMALL, x, np.random.default_rng(0), steps=41), "steps"),
    (lambda f, x: ddpm(f, SMALL, x, np.random.default_rng(0), steps=5, spacing="even"), "spacing"),
    (lambda f, x: ddpm(f, SMALL, x, np.random.default_rng(0), spacing="trailing"), "spacing"),
    (lambda f, x: ddim(f, SMALL, x, 10, eta=-0.1), "eta"),
    (lambda f, x: ddim(f, SMALL, x, 10, eta=float("nan")), "eta"),
    (lambda f, x: ddim(f, SMALL, x, 10, eta=0.5), "rng"),
    (lambda f, x: ddim(f, SMALL, x, 10, eta=3.0, rng=np.random.default_rng(0)), "eta"),
    (lambda f, x: ddim(f, SMALL, x[:, :1], 10), "eps_fn"),
    (lambda f, x: ddim(f, SMALL, x[0], 10), "x_T"),
    (lambda f, x: ddim(f, SMALL, np.full((2, 2), np.nan), 10), "x_T"),
])
def test_bad_input_raises(call, match):
    f = eps_fn_of(SMALL_MIX.eps_model(SMALL))
    x = np.zeros((4, 2))
    if match == "eps_fn":  # an eps_fn that returns the wrong shape
        f = lambda x, t: np.zeros((x.shape[0], 2))
    with pytest.raises(ValueError, match=match):
        call(f, x)


def test_docs_variance_table():
    # docs/samplers.md tabulates the exact output variance ratio of each sampler for one class of
    # three_gaussians; recompute it from the reference recursion (3 decimals, as printed).
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "samplers.md").read_text()
    rows = dict(re.findall(r"^\| (dd\w+, [^|]+?) \| ([0-9.]+) \|$", text, flags=re.M))
    specs = {"ddpm, 1000 steps": SAMPLERS["ddpm-1000"],
             "ddpm, respaced to 100 steps": SAMPLERS["ddpm-respaced-100"],
             'ddpm, respaced to 100 steps, variance="beta"': VARIANTS["ddpm-100-beta"],
             "ddim, 50 steps": SAMPLERS["ddim-50"], "ddim, 100 steps": SAMPLERS["ddim-100"]}
    assert set(rows) == set(specs), rows
    mix = toy_data.mixture("three_gaussians")
    for name, spec in specs.items():
        _, cov = exact_output(spec, mix.means[0], mix.covs[0])
        assert abs(cov[0, 0] / 0.09 - float(rows[name])) <= 5e-4, (name, cov[0, 0] / 0.09, rows[name])
