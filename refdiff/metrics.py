"""Sample-quality metrics: energy distance, its permutation two-sample test, per-class moments,
and the fidelity and diversity of guided samples (docs/metrics.md).

The energy distance of Szekely & Rizzo (2013, "Energy statistics: a class of statistics based on
distances", J. Statist. Plann. Inference 143) between X ~ F and Y ~ G is
E(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Euclidean norms, X' an independent copy of X),
which is >= 0 and is zero iff F = G (for finite first moments). Here it is estimated by the
V-statistic (M1), the energy distance between the two *empirical* distributions, because
  * it is >= 0 and exactly 0 for identical samples, like the population quantity;
  * it equals scipy.stats.energy_distance(u, v) ** 2 in 1-D (scipy returns the square root);
  * it is the statistic of Szekely & Rizzo's energy test, which scales it by nm / (n + m), a
    constant factor that leaves a permutation test unchanged.
Its price is a bias: E[(M1)] = E(X, Y) + E|X - X'| / n + E|Y - Y'| / m, so compare values only at
equal sample sizes (the unbiased U-statistic can be negative). The permutation test gets every
permuted statistic from one pooled distance matrix with matrix products (M2).
"""
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

from .arrays import as_count, as_points, as_real, check_rng
from .labels import as_labels
from .oracle import denoising_errors
from .process import q_sample

# Permuted statistics within TIE_RTOL * (mean pooled distance) of the observed one count as ties
# (i.e. as ">= observed"): (M2) and the observed statistic reach the same value through different
# round-off, and counting near-ties keeps the p-value conservative.
TIE_RTOL = 1e-9
# Permutations are processed in batches of at most this many (N, B) floats (8 MiB) at a time.
BATCH_FLOATS = 2 ** 20


@dataclass(frozen=True)
class TwoSampleResult:
    """Outcome of `two_sample_test`; ``passed`` means "no evidence that the samples differ"."""
    statistic: float   # observed energy distance (M1)
    threshold: float   # permutation (1 - alpha) quantile (M3); inf if n_perm is too small
    p_value: float     # (M3), in (0, 1]
    passed: bool       # p_value > alpha
    n_perm: int
    alpha: float


def energy_distance(x, y):
    """Energy distance between two samples, the V-statistic of Szekely & Rizzo (2013) (eq. (M1)).

    (M1)  E_nm = 2/(n m) sum_ij |x_i - y_j| - 1/n^2 sum_ik |x_i - x_k| - 1/m^2 sum_jl |y_j - y_l|

    Parameters
    ----------
    x : array (n, D), n >= 2, finite
    y : array (m, D), m >= 2, finite, the same D

    Returns
    -------
    float, >= 0 up to round-off; exactly 0.0 when y is a copy of x.
    """
    x, y = _check_samples(x, y)
    return float(2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean())


def partition_energies(dist, member):
    """Energy distance (M1) of every split of a pooled sample, by matrix products (eq. (M2)).

    With s the 0/1 membership column of a split (n ones, m = N - n zeros) and 1 the ones vector,
    (M2)  S_xx = s^T Dist s,  S_xy = s^T Dist 1 - S_xx,  S_yy = 1^T Dist 1 - S_xx - 2 S_xy,
          E = 2 S_xy / (n m) - S_xx / n^2 - S_yy / m^2,
    so B splits cost one (N, N) by (N, B) product.

    Parameters
    ----------
    dist : array (N, N), the pooled pairwise distances |z_i - z_j|
    member : bool array (N, B); column b marks the rows of "x" in split b (1 <= n_b <= N - 1)

    Returns
    -------
    array (B,), the energy distance of each split.
    """
    s = np.asarray(member, dtype=np.float64)                   # (N, B)
    n = s.sum(axis=0)                                           # (B,)
    m = s.shape[0] - n
    row = dist.sum(axis=1)                                      # (N,) = Dist 1
    within_x = np.einsum("ib,ib->b", s, dist @ s)               # s^T Dist s
    cross = row @ s - within_x
    within_y = row.sum() - within_x - 2 * cross
    return 2 * cross / (n * m) - within_x / n ** 2 - within_y / m ** 2


def two_sample_test(x, y, rng, n_perm=499, alpha=0.01):
    """Permutation test of equal distributions with the energy distance (M1) as statistic (M2, M3).

    Under H0 (x and y from one distribution) the split of the pooled sample into x and y is
    uniformly random, so the observed (M1) is compared with (M1) on n_perm random splits:
    (M3)  p = (1 + #{b : E_b >= E_obs}) / (1 + n_perm),   reject iff p <= alpha.
    The +1 counts the observed split as one of the equally likely ones: P(p <= alpha) <= alpha
    exactly under H0 for any n_perm, and p is never 0. ``threshold`` is the ceil((1 - alpha)
    (n_perm + 1))-th smallest E_b, so ``statistic > threshold`` iff rejected (up to TIE_RTOL);
    it is inf when n_perm + 1 < 1 / alpha, where no p can reach alpha.
    Cost: one (N, N) distance matrix (N = n + m; 128 MB at N = 4000) and N^2 (n_perm + 1) flops.

    Parameters
    ----------
    x, y : arrays (n, D) and (m, D), as in `energy_distance`
    rng : numpy.random.Generator, the only source of randomness
    n_perm : int >= 1; take n_perm + 1 a multiple of 1 / alpha (at least 1 / alpha), e.g. 499
    alpha : float in (0, 1), the level

    Returns
    -------
    TwoSampleResult(statistic, threshold, p_value, passed, n_perm, alpha)
    """
    x, y = _check_samples(x, y)
    _check_test_options(rng, n_perm, alpha)
    z = np.concatenate([x, y]).astype(np.float64)               # (N, D)
    dist = cdist(z, z)                                          # (N, N)
    member = np.tile(np.arange(len(z))[:, None] < len(x), n_perm + 1)  # (N, 1 + n_perm) bool
    member[:, 1:] = rng.permuted(member[:, 1:], axis=0)        # column 0 stays the observed split
    size = max(1, BATCH_FLOATS // len(z))                       # columns per batch
    energies = np.concatenate([partition_energies(dist, member[:, i:i + size])
                               for i in range(0, n_perm + 1, size)])
    return _decide(energies[0], energies[1:], TIE_RTOL * dist.mean(), alpha)


def class_moments(x, y, num_labels):
    """Per-class sample counts, means and covariances (eq. (M4)).

    (M4)  mu_k = 1/n_k sum_{y_i = k} x_i,   C_k = 1/(n_k - 1) sum_{y_i = k} (x_i - mu_k)(x_i - mu_k)^T

    A class with no point has NaN mean and covariance; one with a single point has NaN covariance
    (ddof = 1 is undefined there). NaN rather than an error, so that a sampler that misses a class
    still gets a report in which that class stands out.

    Parameters
    ----------
    x : array (N, D), finite
    y : int array (N,), labels in 0..num_labels-1 (or one int for every row)
    num_labels : int >= 1, K

    Returns
    -------
    counts : int array (K,);  means : float64 array (K, D);  covs : float64 array (K, D, D)
    """
    x = as_points(x, "x")
    num_labels = as_count(num_labels, "num_labels", low=1)
    if y is None:
        raise ValueError(f"y must be integer labels in 0..{num_labels - 1}, got None")
    labels = as_labels(y, len(x), num_labels, allow_null=False)
    counts = np.bincount(labels, minlength=num_labels)          # (K,)
    means = np.full((num_labels, x.shape[1]), np.nan)           # (K, D)
    covs = np.full((num_labels, x.shape[1], x.shape[1]), np.nan)  # (K, D, D)
    for k in np.flatnonzero(counts):
        xk = x[labels == k].astype(np.float64)                  # (n_k, D)
        means[k] = xk.mean(axis=0)
        if counts[k] >= 2:
            dev = xk - means[k]
            covs[k] = dev.T @ dev / (counts[k] - 1)
    return counts, means, covs


def fidelity(mixture, x, y):
    """Mean exact p(y_i | x_i) of samples x with requested labels y, and its standard error (eq. (M7)).

    The oracle's classifier (O5) on clean data (alpha_bar = 1): how surely the true distribution
    assigns each sample to the label it was asked for. Guidance trades diversity for this.

    Parameters
    ----------
    mixture : oracle.GaussianMixture; x : array (N, D), N >= 2; y : int or int array (N,)

    Returns
    -------
    (mean, stderr) : floats; stderr = std(ddof=1) / sqrt(N)
    """
    x = as_points(x, "x", dim=mixture.dim)
    if len(x) < 2:
        raise ValueError(f"x must hold at least 2 samples for a standard error, got {len(x)}")
    if y is None:
        raise ValueError(f"y must be the requested labels in 0..{mixture.num_labels - 1}, got None")
    labels = as_labels(y, len(x), mixture.num_labels, allow_null=False)
    p = np.exp(mixture.log_classifier(x, 1.0)[np.arange(len(x)), labels])
    return float(p.mean()), float(p.std(ddof=1) / np.sqrt(len(x)))


def class_spread(x, y, num_labels):
    """Per-class spread sqrt(trace C_k), the root-mean-square distance to the class mean (eq. (M8)).

    C_k is the class covariance of (M4) (ddof = 1); NaN for a class with fewer than 2 points. The
    diversity half of guidance's fidelity-diversity trade-off. Shape (K,).
    """
    _, _, covs = class_moments(x, y, num_labels)
    return np.sqrt(np.trace(covs, axis1=1, axis2=2))


def _decide(observed, null, tie_atol, alpha):
    """p-value, threshold and verdict of (M3) from the observed and the permuted statistics."""
    n_perm = len(null)
    p_value = (1 + int(np.count_nonzero(null >= observed - tie_atol))) / (1 + n_perm)
    # the largest count c of permuted E_b >= E_obs that still rejects: (1 + c) / (1 + n_perm) <= alpha
    c = int(np.count_nonzero((1 + np.arange(n_perm)) / (1 + n_perm) <= alpha)) - 1
    threshold = float(np.sort(null)[n_perm - 1 - c]) if c >= 0 else np.inf
    return TwoSampleResult(float(observed), threshold, p_value, p_value > alpha, n_perm, float(alpha))


def _check_samples(x, y):
    """Validate two samples (n, D) and (m, D) with n, m >= 2 and return them as arrays."""
    x = as_points(x, "x")
    y = as_points(y, "y", dim=x.shape[1])
    for name, arr in (("x", x), ("y", y)):
        if len(arr) < 2:
            raise ValueError(f"{name} must have at least 2 rows (points), got shape {arr.shape}")
    return x, y


def _check_test_options(rng, n_perm, alpha):
    """Raise ValueError unless rng is a Generator, n_perm an int >= 1 and alpha in (0, 1)."""
    check_rng(rng)
    as_count(n_perm, "n_perm", low=1)
    as_real(alpha, "alpha", above=0, below=1)


@dataclass(frozen=True)
class Excess:
    """A learned model's loss beside the oracle's on the same draws (eqs. (M5), (M6))."""
    loss: float     # the model's mean loss
    floor: float    # the oracle's (Bayes-optimal) mean loss on the same draws
    excess: float   # loss / floor - 1
    stderr: float   # standard error of ``excess`` from the paired per-sample differences


def _paired(model_losses, oracle_losses):
    """Excess R - 1 = mean(model) / mean(oracle) - 1 of paired per-sample losses.

    Its standard error is the delta method's for a ratio of means, std(model - R oracle) /
    (sqrt(n) mean(oracle)); common draws make it small.
    """
    loss, floor = float(model_losses.mean()), float(oracle_losses.mean())
    ratio = loss / floor
    spread = np.std(model_losses - ratio * oracle_losses, ddof=1)
    return Excess(loss, floor, ratio - 1, float(spread / np.sqrt(len(model_losses))) / floor)


def denoiser_excess(eps_model, mixture, sched, n, rng, conditional=True, target="eps"):
    """A denoiser's loss (L5) over the Bayes floor (O7), on n common draws (eq. (M5)).

    With ``conditional`` both are given each draw's label, else both predict unconditionally
    (the branch a dropout-trained model learns for y=None). ``target`` (process.PREDICTIONS)
    measures both in that target's own loss, through the predictions their eps imply.
    """
    x0, y, t, eps = mixture.denoising_draws(sched, as_count(n, low=2), check_rng(rng))
    y = y if conditional else None
    return _paired(denoising_errors(eps_model, sched, x0, y, t, eps, target),
                   denoising_errors(mixture.eps_model(sched), sched, x0, y, t, eps, target))


def classifier_excess(logits_model, mixture, sched, n, rng):
    """A noisy classifier's cross-entropy -log p(y | x_t) over the exact classifier's (O5), on n
    common draws of (x0, y, t, eps) (eq. (M6))."""
    x0, y, t, eps = mixture.denoising_draws(sched, as_count(n, low=2), check_rng(rng))
    xt = q_sample(sched, x0, t, eps)
    losses = [logsumexp(m(xt, t), axis=1) - m(xt, t)[np.arange(len(y)), y]
              for m in (logits_model, mixture.classifier(sched))]
    return _paired(*losses)
