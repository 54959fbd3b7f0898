"""Guidance for inverse problems: sampling p(x_0 | y_obs) for a linear observation
y_obs = A x_0 + n, n ~ N(0, noise_std^2 I) (docs/inverse.md).

The exact posterior of a Gaussian mixture and the exact likelihood p(y_obs | x_t) are in the
oracle (``GaussianMixture.posterior_given``, ``observation_log_likelihood``, (I1), (I2)). Here are
the guidance rules that use them or approximate them: the exact likelihood score (I3), which with
the exact prior is the posterior's own eps, and the two approximations that put the likelihood at
the predicted clean point, DPS (I4) and reconstruction guidance (I5).
"""
import autograd.numpy as anp
import numpy as np

from .arrays import alpha_bar_of, as_observation, as_real
from .guidance import log_likelihood_guidance, x0_log_likelihood_guidance


def likelihood_guidance(eps_model, mixture, sched, A, y_obs, noise_std, scale=1.0):
    """eps_bar = eps - sqrt(1 - a) scale grad_x log p(y_obs | x_t) with the exact likelihood (I2) of
    ``mixture``'s prior, eq. (I3): classifier guidance (G3) with the observation as the condition.

    At scale 1 with the exact prior's eps it is the posterior's eps, so every sampler samples the
    posterior as well as it samples any mixture; the constant log p(y_obs) is left out (no gradient).
    """
    posterior = mixture.posterior_given(A, y_obs, noise_std)

    def log_likelihood(x, t):
        a = alpha_bar_of(sched, t)
        return posterior.log_prob_noised(x, a) - mixture.log_prob_noised(x, a)
    return log_likelihood_guidance(eps_model, log_likelihood, sched, scale)


def dps_guidance(eps_model, sched, A, y_obs, zeta, t_max=None):
    """eps_bar with the likelihood at the predicted clean point, log p(y_obs | x_t) ~ -zeta
    ||y_obs - A x0_hat(x_t)||^2 per sample, eq. (I4): diffusion posterior sampling, Chung et al.
    (2023), eq. 11 and Alg. 1, in the eps form (G3) (docs/inverse.md relates its step size).

    zeta = 1 / (2 noise_std^2) is DPS's own approximation, p(y_obs | x_t) ~ p(y_obs | x0_hat).
    ``t_max``: guide only at t <= t_max (``guidance.x0_log_likelihood_guidance``), which a learned
    denoiser needs.
    """
    A, y_obs = as_observation(A, y_obs)
    zeta = as_real(zeta, "zeta", low=0)
    return x0_log_likelihood_guidance(
        eps_model, lambda x0, t: -zeta * anp.sum((y_obs - x0 @ A.T) ** 2, axis=1), sched, 1.0, t_max)


def reconstruction_guidance(eps_model, sched, A, y_obs, noise_std, scale=1.0, t_max=None):
    """eps_bar with log p(y_obs | x_t) ~ log N(y_obs; A x0_hat(x_t), noise_std^2 I + (1 - a) A A^T),
    eq. (I5): the likelihood at the predicted clean point with the spread of x_0 around it.

    (1 - a) is Var[x_0 | x_t] for data of unit variance, the choice of Song et al. (2023, PiGDM);
    reconstruction guidance of Ho et al. (2022, video diffusion, eq. 7) puts a fixed weight
    where this puts the covariance. As t -> 0 it becomes the exact likelihood of x_0. ``t_max`` as
    in ``dps_guidance``.
    """
    A, y_obs = as_observation(A, y_obs)
    s = as_real(noise_std, "noise_std", above=0)

    def log_likelihood(x0, t):
        a = alpha_bar_of(sched, t)
        cov = s ** 2 * np.eye(len(y_obs)) + (1 - a[:, None, None]) * (A @ A.T)  # (N, M, M)
        residual = y_obs - x0 @ A.T
        precision = np.linalg.inv(cov)
        return -0.5 * anp.einsum("nm,nmk,nk->n", residual, precision, residual)
    return x0_log_likelihood_guidance(eps_model, log_likelihood, sched, scale, t_max)
