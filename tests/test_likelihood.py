"""Log-likelihoods through the probability-flow ODE (docs/likelihood.md, (E1)-(E3)).

References: the Gaussian-mixture oracle's closed-form log q_1 (the exact eps gives the exact
flow); for Gaussian data the flow's closed-form solution map (docs/samplers.md, (D5)), derived per
eigen-direction here independently of refdiff; autograd's full Jacobian for the divergences.
"""
import autograd.numpy as anp
import numpy as np
import pytest
from autograd import elementwise_grad, jacobian

import toy_data
from refdiff.likelihood import eps_and_divergence, hutchinson_variance, log_likelihood
from refdiff.schedule import Schedule
from refdiff.train import train_denoiser

LINEAR = Schedule.linear(1000)
A1, AT = LINEAR.alpha_bar[1], LINEAR.alpha_bar[-1]
S1, ST = np.sqrt((1 - A1) / A1), np.sqrt((1 - AT) / AT)


def oracle_eps_fn(mix, sched):
    """The exact eps = -sqrt(1 - a) grad log q_t (O3), autograd's gradient of the log-density itself,
    so that the reference comes from the density and not from the oracle's own eps path (which
    autograd can also differentiate, through ``arrays.numpy_for``), and can be differentiated again."""
    def eps_fn(x, t):
        a = sched.alpha_bar_at(np.asarray(t, dtype=np.float64))
        score = elementwise_grad(lambda z: anp.sum(mix.log_prob_noised(z, a)))(x)
        return -anp.sqrt(1 - a)[:, None] * score
    return eps_fn


def noised_draws(mix, n, rng):
    """x_1 = sqrt(a_1) x_0 + sqrt(1 - a_1) noise: points at the level where log_likelihood is exact."""
    x0, _ = mix.sample(n, rng)
    return np.sqrt(A1) * x0 + np.sqrt(1 - A1) * rng.standard_normal(x0.shape)


# ---- (E1), (E2): the oracle, whose exact flow has log q_1 in closed form ----------------------

@pytest.mark.parametrize("name", ["three_gaussians", "anisotropic"])
def test_oracle_log_likelihood_matches_closed_form(name):
    mix = toy_data.mixture(name)
    x = noised_draws(mix, 200, np.random.default_rng(0))
    rtol = 1e-8
    ll = log_likelihood(oracle_eps_fn(mix, LINEAR), LINEAR, x, rtol=rtol, atol=1e-10,
                        log_prior=lambda z: mix.log_prob_noised(z, AT))
    err = np.abs(ll - mix.log_prob_noised(x, A1))
    # Measured: max error 1.4e-7 = 14 rtol on both sets (rtol 1e-6: 4e-5; 1e-4: 4e-2). 100 rtol.
    assert err.max() < 100 * rtol, (err.max(), ll[:3], mix.log_prob_noised(x, A1)[:3])


@pytest.mark.parametrize("name", ["three_gaussians", "anisotropic"])
def test_standard_prior_mismatch_is_sqrt_alpha_bar_T_times_mean(name):
    """log q_T(x) - log N(x; 0, I) = sqrt(a_T) m^T x + O(a_T), m the data mean (docs (E2))."""
    mix = toy_data.mixture(name)
    rng = np.random.default_rng(1)
    x0, _ = mix.sample(2000, rng)
    xT = np.sqrt(AT) * x0 + np.sqrt(1 - AT) * rng.standard_normal(x0.shape)
    gap = mix.log_prob_noised(xT, AT) + 0.5 * np.sum(xT ** 2 + np.log(2 * np.pi), axis=1)
    rest = gap - np.sqrt(AT) * xT @ mix.mean()
    # The O(a_T) remainder, second order in sqrt(a_T): bounded by a_T (|x|^2 (lam + 1) + D (lam + 1) + |mu|^2)
    # with lam the largest covariance eigenvalue and |mu| the largest mean norm (docs (E2)).
    lam = max(np.linalg.eigvalsh(c).max() for c in mix.covs)
    bound = AT * (np.sum(xT ** 2, axis=1) * (lam + 1) + 2 * (lam + 1) + np.sum(mix.means ** 2, axis=1).max())
    assert np.all(np.abs(rest) <= bound), (np.abs(rest).max(), bound.max())


def gaussian_eps_fn(m, cov):
    """eps* of N(m, cov) data, linear in x (O3), written out with autograd: sqrt(1-a) C^-1 (x - sqrt(a) m)."""
    lam, U = np.linalg.eigh(cov)

    def eps_fn(x, t):
        a = LINEAR.alpha_bar_at(np.asarray(t, dtype=np.float64))[:, None]
        z = anp.dot(x - anp.sqrt(a) * m, U) / (a * lam + 1 - a)
        return anp.sqrt(1 - a) * anp.dot(z, U.T)
    return eps_fn


GAUSS_M, GAUSS_COV = np.array([0.7, -1.2, 0.3]), np.array([[0.3, 0.12, 0.0], [0.12, 0.08, 0.02], [0.0, 0.02, 0.5]])


def test_gaussian_log_likelihood_matches_the_exact_flow_of_the_standard_prior():
    """Per eigen-direction u = U^T x~: u_1 - mu = (u_T - mu) r, r = sqrt((lam + s_1^2)/(lam + s_T^2)),
    u_T ~ N(0, 1/a_T); so the model's x_1 = sqrt(a_1) U u_1 is N(sqrt(a_1) U mu (1 - r), a_1 U diag(r^2/a_T) U^T)."""
    lam, U = np.linalg.eigh(GAUSS_COV)
    r = np.sqrt((lam + S1 ** 2) / (lam + ST ** 2))
    mean, var = np.sqrt(A1) * (U.T @ GAUSS_M) * (1 - r), A1 * r ** 2 / AT  # in u-coordinates (orthonormal U)
    x = np.random.default_rng(2).normal(size=(50, 3)) * 2
    u = x @ U
    expected = -0.5 * np.sum((u - mean) ** 2 / var + np.log(2 * np.pi * var), axis=1)
    ll = log_likelihood(gaussian_eps_fn(GAUSS_M, GAUSS_COV), LINEAR, x, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(ll, expected, rtol=0, atol=1e-6)


# ---- (E3): Hutchinson's estimator --------------------------------------------------------------

def test_hutchinson_divergence_is_unbiased_with_the_stated_variance():
    """At one point of a map with a non-symmetric Jacobian: K probes' mean within 5 SE of tr J and
    their variance within 5 SE of sum_{i != j} (J_ij^2 + J_ij J_ji)."""
    W = np.array([[0.9, -1.3, 0.4], [0.2, 0.5, -1.1], [1.4, 0.3, -0.6]])
    eps_fn = lambda x, t: anp.tanh(anp.dot(x, W)) * (1 + 0.1 * x ** 2)  # noqa: E731
    x, K = np.array([[0.3, -0.8, 0.5]]), 20000
    J = jacobian(lambda z: eps_fn(z[None], None)[0])(x[0])
    probes = np.random.default_rng(3).choice([-1.0, 1.0], size=(1, K, 3))  # one probe per row
    _, exact = eps_and_divergence(eps_fn, x, None)
    np.testing.assert_allclose(exact, np.trace(J), rtol=1e-12)
    _, est = eps_and_divergence(eps_fn, np.repeat(x, K, axis=0), None, probes)  # K estimates z^T J z
    var, centred = est.var(ddof=1), est - est.mean()
    se_var = np.sqrt((np.mean(centred ** 4) - var ** 2) / K)
    assert abs(est.mean() - exact[0]) < 5 * est.std(ddof=1) / np.sqrt(K), (est.mean(), exact)
    assert abs(var - hutchinson_variance(J)) < 5 * se_var, (var, hutchinson_variance(J), se_var)


def test_hutchinson_log_likelihood_is_unbiased_with_the_integrated_jacobian_variance():
    """The x~ trajectory does not depend on the probe, so the estimate is exact + z^T B z - tr B with
    B = int sqrt(a) J dsigma; for Gaussian data B = U diag(log((lam + s_T^2)/(lam + s_1^2)) / 2) U^T."""
    lam, U = np.linalg.eigh(GAUSS_COV)
    B = U @ np.diag(0.5 * np.log((lam + ST ** 2) / (lam + S1 ** 2))) @ U.T
    n = 4000
    x = np.repeat(np.array([[0.5, -1.0, 0.2]]), n, axis=0)  # one point, one probe per row: n estimates
    eps_fn = gaussian_eps_fn(GAUSS_M, GAUSS_COV)
    exact = log_likelihood(eps_fn, LINEAR, x[:1], rtol=1e-9, atol=1e-11)[0]
    est = log_likelihood(eps_fn, LINEAR, x, "hutchinson", np.random.default_rng(4), rtol=1e-9, atol=1e-11)
    var, centred = est.var(ddof=1), est - est.mean()
    se_var = np.sqrt((np.mean(centred ** 4) - var ** 2) / n)
    assert abs(est.mean() - exact) < 5 * est.std(ddof=1) / np.sqrt(n), (est.mean(), exact)
    assert abs(var - hutchinson_variance(B)) < 5 * se_var + 1e-9, (var, hutchinson_variance(B), se_var)


# ---- a learned model ----------------------------------------------------------------------------

def test_learned_model_average_log_likelihood_is_below_the_oracle(capsys):
    """E_q[log p_model] <= E_q[log q] (Gibbs), so on held-out x_1 ~ q_1 the paired difference's mean
    must be <= 3 SE. Measured (seed 0, float32): model -2.122, oracle -1.501, difference -0.620 (SE 0.030)."""
    mix = toy_data.mixture("three_gaussians")
    rng = np.random.default_rng(0)
    x0, y = mix.sample(4000, rng)
    model = train_denoiser(x0, y, LINEAR, rng, steps=500, batch=256, hidden=64, p_uncond=0.3, verbose=False)
    x = noised_draws(mix, 500, rng)
    # rtol 1e-3: the mean moves 0.002 from rtol 1e-4 (10x slower), against SE 0.03.
    ll = log_likelihood(lambda z, t: model(z, t), LINEAR, x, rtol=1e-3, atol=1e-5)
    diff = ll - mix.log_prob_noised(x, A1)
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    with capsys.disabled():
        print(f"\nlearned {ll.mean():.3f}, oracle {mix.log_prob_noised(x, A1).mean():.3f}, "
              f"difference {diff.mean():.3f} (SE {se:.3f})")
    assert diff.mean() <= 3 * se, (ll.mean(), diff.mean(), se)
    assert diff.mean() > -2.0, (ll.mean(), diff.mean(), se)  # not vacuous: the model learned something


# ---- input checks -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    (dict(divergence="trace"), "divergence"), (dict(divergence="hutchinson"), "rng"),
    (dict(divergence="hutchinson", rng=np.random.default_rng(0), n_probes=0), "n_probes"),
    (dict(rng=np.random.default_rng(0)), "rng"), (dict(rtol=0.0), "rtol"), (dict(atol=np.nan), "atol"),
    (dict(x=np.zeros(3)), "x"), (dict(x=[[np.inf, 0.0]]), "x"), (dict(eps_fn=3), "eps_fn"),
    (dict(log_prior="normal"), "log_prior"), (dict(sched=Schedule.from_betas([0.5, 1.0])), "sched"),
])
def test_bad_input_raises_naming_the_argument(kwargs, name):
    args = dict(eps_fn=gaussian_eps_fn(GAUSS_M[:2], GAUSS_COV[:2, :2]), sched=LINEAR, x=np.zeros((2, 2)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{name}"):
        log_likelihood(args.pop("eps_fn"), args.pop("sched"), args.pop("x"), **args)
