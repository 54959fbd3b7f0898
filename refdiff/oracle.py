"""The Gaussian-mixture oracle: exact noised densities, scores, denoisers and noisy classifiers
(docs/oracle.md).

If x_0 ~ sum_k pi_k N(mu_k, Sigma_k), then x_t = sqrt(a) x_0 + sqrt(1 - a) eps (a = alpha_bar_t)
is again a mixture, sum_k pi_k N(sqrt(a) mu_k, a Sigma_k + (1 - a) I) (eq. (O1)). Everything here
follows from that in closed form. Each Sigma_k = U_k diag(lambda_k) U_k^T is diagonalised once, so
the noised covariance is U_k diag(a lambda_k + 1 - a) U_k^T at every a: the coordinates
z_k = U_k^T (x - sqrt(a) mu_k) of every component come from one matrix product of the
eigenvectors side by side, [U_1 ... U_K] (D, K D), with x, and the score from one product back.
Inside, arrays are component-major: one row per component (K, N) or per component and coordinate
(K D, N), so that the sums over the few components or coordinates run down columns, which numpy
does at full speed, where a short trailing axis would be slow. A batch that shares one a (a
sampler's step) keeps the variances per component, (K D, 1); a per-row a (real times, training
draws) makes them (K D, N), with the same formulas. The log-density path uses autograd.numpy, so
autograd can differentiate it in x (the tests check the analytic score against that gradient).
"""
import autograd.numpy as anp
import numpy as np
from autograd.extend import defvjp, primitive
from autograd.tracer import getval

from .arrays import (alpha_bar_of, as_count, as_int_batch, as_observation, as_points, as_real, as_times, check_rng,
                     is_real, log_sum_exp, numpy_for)
from .labels import NULL_LABEL, as_labels
from .process import eps_to_prediction, q_sample, target_of

LOG_2PI = np.log(2 * np.pi)


class GaussianMixture:
    """A labelled Gaussian mixture in any dimension, with its noised marginals in closed form.

    Parameters
    ----------
    weights : array, shape (K,)
        Positive component weights; normalised to sum to 1.
    means : array, shape (K, D)
    covs : array, shape (K, D, D)
        Symmetric positive definite covariances.
    labels : int array, shape (K,), optional
        The class of each component; labels must be 0..L-1, each owning at least one component
        (a label may own several). Default: component k has label k.
    """

    def __init__(self, weights, means, covs, labels=None):
        means = as_points(means, "means").astype(np.float64)
        K, D = means.shape
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (K,) or not np.all(np.isfinite(weights)) or not np.all(weights > 0):
            raise ValueError(f"weights must be {K} finite positive numbers (one per mean), got {weights}")
        covs = np.array(covs, dtype=np.float64)  # a copy: it is frozen below
        if covs.shape != (K, D, D) or not np.all(np.isfinite(covs)):
            raise ValueError(f"covs must be a finite array of shape {(K, D, D)}, got shape {covs.shape}")
        if not np.allclose(covs, np.swapaxes(covs, 1, 2), rtol=1e-12, atol=1e-12):
            raise ValueError("covs must be symmetric")
        lam, U = np.linalg.eigh(covs)  # (K, D), (K, D, D): covs[k] = U[k] diag(lam[k]) U[k]^T
        if not np.all(lam > 1e-12 * max(1.0, np.abs(lam).max())):
            raise ValueError(f"covs must be positive definite, got eigenvalues {lam.min():.3g} <= 0")
        labels = np.arange(K) if labels is None else as_int_batch(labels, K, "labels", "one integer per component")
        L = int(labels.max()) + 1
        if labels.min() < 0 or set(labels.tolist()) != set(range(L)):
            raise ValueError(f"labels must use each of 0..L-1 at least once, got {labels.tolist()}")
        self.weights = weights / weights.sum()
        self.means, self.covs, self.labels = means, covs, labels
        self._lam, self._U = lam, U
        self._U_all = np.concatenate(list(U), axis=1)  # (D, K D): column k D + e is U_k's column e
        self._lam_all = lam.reshape(-1, 1)  # (K D, 1): row k D + e is lambda_k's entry e
        self._mean_all = np.einsum("kd,kde->ke", means, U).reshape(-1, 1)  # (K D, 1): U_k^T mu_k, stacked
        self._blocks = np.repeat(np.eye(K), D, axis=0)  # (K D, K): row k D + e is 1 in column k
        # (K, L + 1): column y holds log pi_k where label k = y, else -inf; the last column, for the
        # null label, log pi_k everywhere
        owned = np.hstack([labels[:, None] == np.arange(L), np.ones((K, 1), dtype=bool)])
        self._log_prior = np.where(owned, np.log(self.weights)[:, None], -np.inf)
        self._one_hot = owned[:, :L].astype(np.float64)  # (K, L): component k belongs to label c
        self._by_label = np.argsort(labels, kind="stable")  # the components grouped by label, from label 0
        self._label_starts = np.searchsorted(labels[self._by_label], np.arange(L))
        self.num_components, self.dim, self.num_labels = K, D, L
        for arr in (self.weights, self.means, self.covs, self.labels, lam, U, self._U_all, self._lam_all, self._mean_all,
                    self._blocks, self._log_prior, self._one_hot, self._by_label, self._label_starts):
            arr.flags.writeable = False

    def __repr__(self):
        return (f"GaussianMixture(components={self.num_components}, labels={self.num_labels}, "
                f"dim={self.dim})")

    # ---- checks -----------------------------------------------------------------------------
    def _inputs(self, x, alpha_bar, y=None):
        """Validate x (N, D), alpha_bar (scalar or (N,)) in [0, 1] and labels; a is returned as one
        float64 when every row shares it, else as one per row, (N,)."""
        x = as_points(x, "x", dim=self.dim)
        n = x.shape[0]
        if not is_real(alpha_bar):
            raise ValueError(f"alpha_bar must be a number or an array of shape ({n},) in [0, 1], got {alpha_bar!r}")
        a = np.asarray(alpha_bar, dtype=np.float64)
        if a.shape not in ((), (n,)) or not ((a >= 0) & (a <= 1)).all():  # NaN fails both comparisons
            raise ValueError(f"alpha_bar must be a number or an array of shape ({n},) in [0, 1], got {alpha_bar}")
        y = as_labels(y, n, self.num_labels)
        if a.ndim == 0 and n > 0:  # a sampler's step: checked once, not once per row
            return x, np.float64(a), y
        a = np.broadcast_to(a, (n,))
        shared = n > 0 and bool((a == a[0]).all())
        return x, a[0] if shared else a, y

    def _mask(self, y, n):
        """Log-prior of each component given each row's label, shape (K, N): log pi_k or -inf."""
        if y is None:
            return np.broadcast_to(self._log_prior[:, -1:], (self.num_components, n))
        columns = np.where(y == NULL_LABEL, self.num_labels, y)
        return np.take(self._log_prior, columns, axis=1)  # a seventh of the time of fancy indexing

    # ---- the noised components (eq. (O1)) ---------------------------------------------------
    def _components(self, x, a):
        """Per-component log density and whitened coordinates at alpha_bar a (one float or (N,)).

        With the stacked coordinates z = U_k^T (x - sqrt(a) mu_k) and eigenvalues var = a lambda_k +
        1 - a of C_k ((K D, 1) for a shared a, (K D, N) for a per-row one), returns log N(x; sqrt(a)
        mu_k, C_k) of shape (K, N) and z / var, the coordinates of C_k^{-1} (x - sqrt(a) mu_k), (K D, N).
        """
        var = a * self._lam_all + (1 - a)
        xp = numpy_for(x)
        z = xp.dot(self._U_all.T, xp.transpose(x)) - np.sqrt(a) * self._mean_all
        scaled = z / var
        log_n = -0.5 * (self._per_component(z * scaled) + self._per_component(np.log(var)) + self.dim * LOG_2PI)
        return log_n, scaled

    def _per_component(self, values):
        """sum over each component's D rows of values (K D, N), shape (K, N): one product with the
        components' block indicator."""
        return numpy_for(values).dot(self._blocks.T, values)

    def _back(self, weights, scaled):
        """sum_k U_k (w_k scaled_k) for per-component weights w (K, N) and coordinates scaled (K D, N):
        one product with [U_1 ... U_K], returned as (N, D)."""
        xp = numpy_for(weights, scaled)
        return xp.dot(xp.transpose(xp.dot(self._blocks, weights) * scaled), self._U_all.T)

    def _responsibilities(self, x, a, y):
        """p(component k | x_t, y), shape (K, N), with the components' z / var for reuse."""
        log_n, scaled = self._components(x, a)
        w = np.exp(_shift_columns(self._mask(y, x.shape[0]) + log_n))
        w /= w.sum(axis=0)
        return w, scaled

    # ---- exact quantities ---------------------------------------------------------------------
    def log_prob_noised(self, x, alpha_bar, y=None):
        """log q_t(x_t), or log q_t(x_t | y), at alpha_bar_t = a (eq. (O1)); shape (N,).

        Differentiable in x by autograd.
        """
        x, a, y = self._inputs(x, alpha_bar, y)
        log_prior = self._mask(y, x.shape[0])
        log_n, _ = self._components(x, a)
        return (log_sum_exp(log_prior + log_n) - log_sum_exp(log_prior))[0]

    def log_prob(self, x, y=None):
        """log p(x_0), or log p(x_0 | y): eq. (O1) at a = 1; shape (N,)."""
        return self.log_prob_noised(x, 1.0, y)

    def score(self, x, alpha_bar, y=None):
        """grad_x log q_t(x_t [| y]) = -sum_k r_k C_k^{-1} (x - sqrt(a) mu_k) (eq. (O2)); shape (N, D)."""
        r, scaled = self._responsibilities(*self._inputs(x, alpha_bar, y))
        return -self._back(r, scaled)

    def eps(self, x, alpha_bar, y=None):
        """The optimal noise prediction eps*(x_t) = -sqrt(1 - a) * score (eq. (O3)); shape (N, D).

        With score = -sum_k U_k (r_k z_k / var_k) (``score``), eps = sqrt(1 - a) times that sum:
        the two sign flips are exact, so this is the product of (O3) bit for bit."""
        x, a, y = self._inputs(x, alpha_bar, y)
        r, scaled = self._responsibilities(x, a, y)
        return np.reshape(np.sqrt(1 - a), (-1, 1)) * self._back(r, scaled)

    def x0_mean(self, x, alpha_bar, y=None):
        """E[x_0 | x_t [, y]] from the components' Gaussian posteriors (eq. (O4)); shape (N, D).

        For component k, E[x_0 | x_t, k] = mu_k + sqrt(a) Sigma_k C_k^{-1} (x_t - sqrt(a) mu_k); the
        mixture weights these by the responsibilities. Independent of the score, so it checks
        Tweedie's formula (C7).
        """
        x, a, y = self._inputs(x, alpha_bar, y)
        r, scaled = self._responsibilities(x, a, y)
        return r.T @ self.means + self._back(r, np.sqrt(a) * self._lam_all * scaled)

    def log_classifier(self, x, alpha_bar):
        """The exact noisy classifier log p(y | x_t) for every label, shape (N, L) (eq. (O5)).

        log p(y | x_t) = logsumexp_{k: label k = y} (log pi_k + log N_k(x_t)) - log q_t(x_t).
        Differentiable in x by autograd, which takes its gradient in closed form (O5g): see
        ``_log_classifier``.
        """
        x, a, _ = self._inputs(x, alpha_bar)
        return _log_classifier(x, self, a)

    def _log_joint(self, x, a):
        """log pi_k + log N_k(x_t) less each point's maximum, (K, N), and log sum_{k: label k = c} of it
        for every label c, (L, N), with the components' z / var for reuse.

        Each label's sum is taken relative to its own largest term (``top``, a constant to autograd
        as in ``log_sum_exp``), so a label far less likely than the best one keeps a finite log.
        """
        log_n, scaled = self._components(x, a)
        log_joint = _shift_columns(np.log(self.weights)[:, None] + log_n)
        top = np.maximum.reduceat(getval(log_joint)[self._by_label], self._label_starts, axis=0)
        per_label = top + anp.log(anp.dot(self._one_hot.T, anp.exp(log_joint - top[self.labels])))
        return log_joint, per_label, scaled

    def _log_classifier_vjp(self, x, a, g):
        """sum_c g[:, c] grad_x log p(c | x_t) for a cotangent g (N, L), in closed form (eq. (O5g)).

        grad_x log p(c | x_t) = sum_k (r_{k|c} [label k = c] - r_k) grad_x log N_k(x_t), with r_k the
        responsibilities and r_{k|c} those within label c, and grad_x log N_k = -C_k^{-1} (x - sqrt(a) mu_k).
        Written in autograd.numpy, so it can be differentiated again.
        """
        log_joint, per_label, scaled = self._log_joint(x, a)
        g = anp.transpose(g)  # (L, N)
        coef = (g[self.labels] * anp.exp(log_joint - per_label[self.labels])
                - anp.sum(g, axis=0) * anp.exp(log_joint - log_sum_exp(log_joint)))  # (K, N)
        return -self._back(coef, scaled)

    def mean(self, y=None):
        """E[x_0 (| y)] = sum_k w_k mu_k over the (label's renormalised) weights (eq. (O6)); shape (D,)."""
        w = self._label_weights(y)
        return w @ self.means

    def cov(self, y=None):
        """Cov[x_0 (| y)] = sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T (eq. (O6)); shape (D, D)."""
        w, m = self._label_weights(y), self.mean(y)
        second = np.einsum("k,kde->de", w, self.covs + np.einsum("kd,ke->kde", self.means, self.means))
        return second - np.outer(m, m)

    def _label_weights(self, y):
        if y is None:
            return self.weights
        y = int(as_labels(y, 1, self.num_labels, allow_null=False)[0])
        w = np.where(self.labels == y, self.weights, 0.0)
        return w / w.sum()

    def blurred(self, delta):
        """This mixture with every covariance widened by delta^2 I: the law of x0 + delta z, z ~ N(0, I).

        Its oracle is the exact "weak model" of autoguidance (docs/guidance.md, (G19)): right
        about the means and the labels, too diffuse by delta^2 in every direction. delta = 0 gives the
        same mixture (its weights normalised again, equal to an ulp).
        """
        delta = as_real(delta, "delta", low=0)
        covs = self.covs + delta ** 2 * np.eye(self.dim)
        return GaussianMixture(self.weights, self.means, covs, self.labels)

    def posterior_given(self, A, y_obs, noise_std):
        """The exact posterior p(x_0 | y_obs) of y_obs = A x_0 + n, n ~ N(0, noise_std^2 I), as a
        GaussianMixture with this one's labels (docs/inverse.md, (I1)).

        Component k is the Gaussian conditioning of N(mu_k, Sigma_k) on A x_0 + n = y_obs: with
        S_k = A Sigma_k A^T + s^2 I and the gain G_k = Sigma_k A^T S_k^{-1}, its mean is
        mu_k + G_k (y_obs - A mu_k), its covariance Sigma_k - G_k A Sigma_k, and its weight
        pi_k N(y_obs; A mu_k, S_k), normalised.

        A : array (M, D), y_obs : array (M,), noise_std : float > 0
        """
        A, y_obs, s = self._observation(A, y_obs, noise_std)
        S = A @ self.covs @ A.T + s ** 2 * np.eye(len(y_obs))  # (K, M, M)
        gain = np.swapaxes(np.linalg.solve(S, A @ self.covs), 1, 2)  # (K, D, M): Sigma_k A^T S_k^{-1}
        residual = y_obs - self.means @ A.T  # (K, M)
        covs = self.covs - gain @ A @ self.covs
        return GaussianMixture(np.exp(_shift_columns(self._log_evidence(S, residual)[:, None])[:, 0]),
                               self.means + np.einsum("kdm,km->kd", gain, residual), (covs + np.swapaxes(covs, 1, 2)) / 2,
                               self.labels)

    def observation_log_likelihood(self, x, alpha_bar, A, y_obs, noise_std):
        """log p(y_obs | x_t) for y_obs = A x_0 + n, exactly (docs/inverse.md, (I2)); shape (N,).

        By Bayes' rule p(y_obs | x_t) = q_t(x_t | y_obs) p(y_obs) / q_t(x_t): the noised posterior
        (the noised ``posterior_given``, (O1)) over the noised prior, times the evidence
        p(y_obs) = sum_k pi_k N(y_obs; A mu_k, S_k). Differentiable in x by autograd.
        """
        A, y_obs, s = self._observation(A, y_obs, noise_std)
        S = A @ self.covs @ A.T + s ** 2 * np.eye(len(y_obs))
        evidence = log_sum_exp(self._log_evidence(S, y_obs - self.means @ A.T)[:, None])[0, 0]
        posterior = self.posterior_given(A, y_obs, noise_std)
        return posterior.log_prob_noised(x, alpha_bar) - self.log_prob_noised(x, alpha_bar) + evidence

    def _log_evidence(self, S, residual):
        """log pi_k + log N(y_obs; A mu_k, S_k) per component, (K,), from S (K, M, M) and y_obs - A mu_k (K, M)."""
        _, logdet = np.linalg.slogdet(S)
        quad = np.einsum("km,km->k", residual, np.linalg.solve(S, residual[:, :, None])[:, :, 0])
        return np.log(self.weights) - 0.5 * (quad + logdet + residual.shape[1] * LOG_2PI)

    def _observation(self, A, y_obs, noise_std):
        """(A, y_obs) checked by ``arrays.as_observation`` for this mixture's dimension, and noise_std > 0."""
        return (*as_observation(A, y_obs, self.dim), as_real(noise_std, "noise_std", above=0))

    def sample(self, n, rng, y=None):
        """Draw n points: a component k by its weight (within label y if given), then N(mu_k, Sigma_k).

        Returns (x, labels) of shapes (n, D) and (n,).
        """
        n, rng = as_count(n), check_rng(rng)
        y = as_labels(y, n, self.num_labels, allow_null=False)
        log_prior = self._mask(y, n)
        g = rng.gumbel(size=(n, self.num_components))  # Gumbel-max: argmax is a draw from the prior
        k = np.argmax(log_prior.T + g, axis=1)
        z = rng.standard_normal((n, self.dim))
        scale = self._U * np.sqrt(self._lam)[:, None, :]  # covs[k] = scale[k] scale[k]^T
        x = self.means[k] + np.einsum("nde,ne->nd", scale[k], z)
        return x, self.labels[k]

    # ---- the model callables of docs/architecture.md ---------------------------------------
    def eps_model(self, sched):
        """The exact denoiser as a model callable ``eps_model(x, t, y=None) -> eps`` (eq. (O3)).

        t is an int or an int array in 1..T, or real in [1, T] (alpha_bar from eq. (S6)); y is None,
        an int, or an array that may hold NULL_LABEL for rows that are unconditional.
        """
        def eps_model(x, t, y=None):
            x = as_points(x, "x", dim=self.dim)
            return self.eps(x, _alpha_bar(sched, t, x.shape[0]), y).astype(x.dtype)
        return eps_model

    def prediction_model(self, sched, target="eps"):
        """The Bayes-optimal prediction of ``target`` (process.PREDICTIONS) as ``model(x, t, y=None)``:
        E[target | x_t, y]. For eps and the score, (O3) and its conversion (C3); for x0, ``x0_mean``
        (O4); for v, sqrt(a) E[eps | x_t] - sqrt(1 - a) E[x0 | x_t] ((C5) is linear). Where
        alpha_bar > 0 these equal the conversions (C1), (C5) of the exact eps (at fixed x_t each is
        affine, docs/process.md); x0 and v hold at alpha_bar = 0 too (zero terminal SNR)."""
        eps_model = self.eps_model(sched)

        def model(x, t, y=None):
            if target not in ("x0", "v"):
                return eps_to_prediction(sched, x, t, eps_model(x, t, y), target)
            x = as_points(x, "x", dim=self.dim)
            x0 = self.x0_mean(x, _alpha_bar(sched, t, x.shape[0]), y).astype(x.dtype)
            return x0 if target == "x0" else target_of(sched, x0, t, eps_model(x, t, y), "v")
        return model

    def classifier(self, sched):
        """The exact noisy classifier as ``logits_model(x, t) -> (N, L)`` logits (eq. (O5)).

        The logits are log p(y | x_t) themselves, so their softmax is the exact posterior.
        """
        def logits_model(x, t):
            x = as_points(x, "x", dim=self.dim)
            return self.log_classifier(x, _alpha_bar(sched, t, x.shape[0])).astype(x.dtype)
        return logits_model

    def optimal_loss(self, sched, n, rng, conditional=False, target="eps"):
        """Monte Carlo estimate of the Bayes-optimal denoising loss and its standard error (eq. (O7)).

        L* = E_{t ~ U{1..T}, x_0, eps} [ ||eps - eps*(x_t, t)||^2 / D ], the per-coordinate mean
        squared error of the exact denoiser (the floor of the eps-MSE of Ho et al. 2020, eq. 14).
        With ``conditional=True`` the denoiser knows each sample's label (eps*(x_t, t, y)); with
        another ``target`` (process.PREDICTIONS) the floor of that target's loss, reached by the
        prediction eps* implies (``prediction_model``).

        Returns
        -------
        (loss, stderr) : the sample mean over n draws and its standard error std / sqrt(n).
        """
        x0, y, t, eps = self.denoising_draws(sched, as_count(n, low=2), rng)
        err = denoising_errors(self.eps_model(sched), sched, x0, y if conditional else None, t, eps, target)
        return float(err.mean()), float(err.std(ddof=1) / np.sqrt(n))

    def denoising_draws(self, sched, n, rng):
        """The draws of a denoising problem: x0, y ~ p; t ~ U{1..T}; eps ~ N(0, I). Shapes (n, D),
        (n,), (n,), (n, D)."""
        x0, y = self.sample(n, rng)
        return x0, y, rng.integers(1, sched.T + 1, size=n), rng.standard_normal(x0.shape)


def denoising_errors(eps_model, sched, x0, y, t, eps, target="eps"):
    """Per-sample squared error ||target - prediction||^2 / D at x_t from (P1); shape (n,).

    The prediction of ``target`` (process.PREDICTIONS) is the one eps_model(x_t, t, y) implies
    ((C1), (C3), (C5)), the truth process.target_of(x0, eps). For eps the mean is the loss (L5)
    that training minimises (Ho et al. 2020, eq. 14); for another target, that target's own loss.
    """
    xt = q_sample(sched, x0, t, eps)
    prediction = eps_model(xt, t, y)
    if target != "eps":
        prediction = eps_to_prediction(sched, xt, t, prediction, target)
    return np.mean((target_of(sched, x0, t, eps, target) - prediction) ** 2, axis=1)


def _alpha_bar(sched, t, n):
    """alpha_bar_t, one per row, shape (n,): a table lookup for integer t in 1..T, eq. (S6) for
    real t in [1, T]."""
    return alpha_bar_of(sched, as_times(t, n, sched.T))


@primitive
def _log_classifier(x, mixture, a):
    """``mixture.log_classifier`` at alpha_bar a (a float or (N,)) on checked points x, (N, L) (eq. (O5)).

    One autograd primitive: its forward pass runs on plain arrays and its gradient is the closed form
    ``_log_classifier_vjp`` (O5g), not a trace of the log-sum-exps. Classifier guidance on the oracle
    differentiates this at every step of a chain; with the closed form a gradient there takes 0.4-0.9
    times as long as the traced one did (docs/learned.md, "Speed").
    """
    log_joint, per_label, _ = mixture._log_joint(x, a)
    return anp.transpose(per_label - log_sum_exp(log_joint))


defvjp(_log_classifier, lambda ans, x, mixture, a: lambda g: mixture._log_classifier_vjp(x, a, g))


def _shift_columns(log_joint):
    """log_joint minus each column's maximum, shape (K, N): a point's components are a column.

    Far from the data the log densities reach -1e6 or below, where a normaliser computed on the
    raw values is only stored to the nearest float at that size and the normalised weights no
    longer sum to 1; shifted, the largest entry of each column is exactly 0.
    """
    return log_joint - np.max(getval(log_joint), axis=0)
