"""Two-dimensional labelled toy data: Gaussian-mixture presets and sample-only sets.

The presets (``three_gaussians``, ``three_overlapping``, ``ring8``, ``anisotropic``) are ``refdiff.oracle.GaussianMixture``
objects, so the exact oracle (scores, optimal eps, noisy classifier) applies to them. The
sample-only sets (``moons``, ``circles``, ``spirals``, ``checkerboard``, ``swiss_roll``) have no
closed form; each is a function ``f(n, rng) -> (x, y)`` with x float64 of shape (n, 2) and y int64
of shape (n,) in 0..K-1. Each draws its labels i.i.d. uniform on 0..K-1 first, then a point given
its label, so the classes are equally likely.

Every set is roughly unit scale (coordinate std of order 1, all points within |x| <= 4 up to
Gaussian tails beyond five standard deviations), so the default diffusion schedules suit it.
Randomness comes only from the explicit ``rng: numpy.random.Generator``; the same seed gives
bit-identical output.
"""
import numpy as np

from refdiff.arrays import as_count, check_rng
from refdiff.oracle import GaussianMixture


# ---- shared pieces ----------------------------------------------------------------------------
def check_sample_args(n, rng):
    """Raise ValueError unless n is an int >= 0 (not a bool) and rng is a numpy Generator."""
    as_count(n)
    check_rng(rng)


def _polar(r, theta):
    """Points (r cos theta, r sin theta); r and theta broadcast to shape (N,); returns (N, 2)."""
    return np.stack(np.broadcast_arrays(r * np.cos(theta), r * np.sin(theta)), axis=1)


def _rotated_cov(stds, degrees):
    """Sigma = R diag(stds^2) R^T with R the rotation by ``degrees``; shape (2, 2)."""
    R = _polar(1.0, np.deg2rad([degrees, degrees + 90.0])).T  # columns: the principal axes
    return R @ np.diag(np.square(stds)) @ R.T


def _curve_sample(n, rng, num_labels, curve, noise):
    """Sample a set made of labelled curves: y ~ U{0..K-1}, u ~ U(0, 1), x = curve(y, u) + noise * z.

    ``curve(y, u)`` maps labels (N,) and curve parameters (N,) to points (N, 2); z ~ N(0, I).
    Returns x float64 (n, 2) and y int64 (n,).
    """
    check_sample_args(n, rng)
    y = rng.integers(num_labels, size=n, dtype=np.int64)  # (n,)
    u = rng.random(n)  # (n,)
    x = curve(y, u) + noise * rng.standard_normal((n, 2))  # (n, 2)
    return x.astype(np.float64), y


# ---- Gaussian-mixture presets (exact oracle) --------------------------------------------------
def _isotropic_ring(num, radius, std):
    """Equal-weight mixture of ``num`` isotropic Gaussians, component k has label k.

    mu_k = radius * (cos theta_k, sin theta_k), theta_k = pi/2 + 2 pi k / num, Sigma_k = std^2 I.
    """
    means = _polar(radius, np.pi / 2 + 2 * np.pi * np.arange(num) / num)  # (num, 2)
    covs = np.repeat((std ** 2 * np.eye(2))[None], num, axis=0)  # (num, 2, 2)
    return GaussianMixture(np.ones(num), means, covs, labels=np.arange(num))


def three_gaussians():
    """Three isotropic Gaussians on a circle, one class each (Ho & Salimans 2022, Figure 2).

    Parameters: none. Returns: a GaussianMixture with 3 components and 3 labels.

    Construction: weights 1/3 each; mu_k = 1.5 (cos theta_k, sin theta_k) with
    theta_k = pi/2 + 2 pi k / 3; Sigma_k = 0.3^2 I. Neighbouring means are 1.5 sqrt(3) ~ 2.6 apart,
    about 8.7 standard deviations: separated at t = 0, overlapping once the noise std nears 1.
    """
    return _isotropic_ring(3, radius=1.5, std=0.3)


def three_overlapping():
    """Three overlapping isotropic Gaussians on a circle, one class each.

    Parameters: none. Returns: a GaussianMixture with 3 components and 3 labels.

    Construction: as ``three_gaussians`` with radius 1 and std 0.5. Neighbouring means are
    sqrt(3) ~ 1.73 apart, about 3.5 standard deviations, so the classes overlap even at t = 0:
    the mean exact p(y | x_0) of p(x | y) samples is about 0.89, and guidance has room to raise it
    (the fidelity-diversity trade-off of docs/guidance.md).
    """
    return _isotropic_ring(3, radius=1.0, std=0.5)


def ring8():
    """Eight isotropic Gaussians on a circle, one class each.

    Parameters: none. Returns: a GaussianMixture with 8 components and 8 labels.

    Construction: weights 1/8 each; mu_k = 2 (cos theta_k, sin theta_k) with
    theta_k = pi/2 + 2 pi k / 8; Sigma_k = 0.2^2 I. Neighbouring means are 4 sin(pi/8) ~ 1.53
    apart, about 7.7 standard deviations, so the classes are clearly separated.
    """
    return _isotropic_ring(8, radius=2.0, std=0.2)


# (label, weight, mean, principal stds, rotation of the first principal axis in degrees)
_ANISOTROPIC = (
    (0, 0.35, (-1.4, 0.9), (0.45, 0.12), 30.0),
    (1, 0.25, (1.4, 0.9), (0.40, 0.15), -45.0),
    (2, 0.15, (-1.0, -1.2), (0.35, 0.12), 75.0),
    (2, 0.25, (1.1, -1.1), (0.45, 0.15), 10.0),
)


def anisotropic():
    """Four rotated, elongated Gaussians with unequal weights; label 2 owns two of them.

    Parameters: none. Returns: a GaussianMixture with 4 components and 3 labels
    (component labels 0, 1, 2, 2).

    Construction: component k has weight w_k, mean mu_k and Sigma_k = R(phi_k) diag(s_k^2)
    R(phi_k)^T, R(phi) the rotation by phi, with (w, mu, s, phi) =
    (0.35, (-1.4, 0.9), (0.45, 0.12), 30 deg), (0.25, (1.4, 0.9), (0.40, 0.15), -45 deg),
    (0.15, (-1.0, -1.2), (0.35, 0.12), 75 deg), (0.25, (1.1, -1.1), (0.45, 0.15), 10 deg).
    Label 2 is bimodal, with weight 0.4.
    """
    labels, weights, means, stds, degrees = zip(*_ANISOTROPIC)
    covs = np.stack([_rotated_cov(s, d) for s, d in zip(stds, degrees)])  # (4, 2, 2)
    return GaussianMixture(weights, np.array(means), covs, labels=np.array(labels))


# ---- sample-only sets -------------------------------------------------------------------------
def moons(n, rng):
    """Two interleaving half circles ("moons"), one class each.

    Parameters: n (int >= 0), the number of points; rng (numpy.random.Generator).
    Returns: x, float64 (n, 2); y, int64 (n,) in {0, 1}.

    Construction: y ~ U{0, 1}, theta = pi u with u ~ U(0, 1), p = (cos theta, sin theta). The
    upper moon (y = 0) is q = p, the lower moon (y = 1) is q = (1, 1/2) - p; then
    x = 1.5 (q - (1/2, 1/4)) + 0.1 z, z ~ N(0, I) (centred on the pair, scaled to unit order).
    """
    def curve(y, u):
        upper = _polar(1.0, np.pi * u)
        lower = np.array([1.0, 0.5]) - upper
        return 1.5 * (np.where(y[:, None] == 0, upper, lower) - np.array([0.5, 0.25]))
    return _curve_sample(n, rng, 2, curve, noise=0.1)


def circles(n, rng):
    """Two concentric circles, inner class 0 and outer class 1.

    Parameters: n (int >= 0), the number of points; rng (numpy.random.Generator).
    Returns: x, float64 (n, 2); y, int64 (n,) in {0, 1}.

    Construction: y ~ U{0, 1}, theta = 2 pi u with u ~ U(0, 1), radius r_y with r = (1, 2);
    x = r_y (cos theta, sin theta) + 0.1 z, z ~ N(0, I).
    """
    radii = np.array([1.0, 2.0])
    return _curve_sample(n, rng, 2, lambda y, u: _polar(radii[y], 2 * np.pi * u), noise=0.1)


def spirals(n, rng):
    """Three interleaved spiral arms from the origin, one class each.

    Parameters: n (int >= 0), the number of points; rng (numpy.random.Generator).
    Returns: x, float64 (n, 2); y, int64 (n,) in {0, 1, 2}.

    Construction: y ~ U{0, 1, 2}, s = sqrt(u) with u ~ U(0, 1) (so points are near uniform along
    the arm's length); radius r = 2.5 s, angle theta = 2 pi (y / 3 + s) (one full turn per arm);
    x = r (cos theta, sin theta) + 0.08 z, z ~ N(0, I). Along a ray, neighbouring arms are
    2.5 / 3 ~ 0.83 apart.
    """
    def curve(y, u):
        s = np.sqrt(u)
        return _polar(2.5 * s, 2 * np.pi * (y / 3 + s))
    return _curve_sample(n, rng, 3, curve, noise=0.08)


def checkerboard(n, rng):
    """Uniform points on [-2, 2]^2 cut into a 4 x 4 board; the label is the colour of the square.

    Parameters: n (int >= 0), the number of points; rng (numpy.random.Generator).
    Returns: x, float64 (n, 2); y, int64 (n,) in {0, 1}.

    Construction: y ~ U{0, 1}; column i ~ U{0..3}; row j = 2 b + ((i + y) mod 2) with b ~ U{0, 1},
    so (i + j) mod 2 = y and each of the 8 squares of colour y is equally likely;
    x = (i, j) - 2 + v with v ~ U([0, 1)^2). Together the classes are uniform on the board.
    """
    check_sample_args(n, rng)
    y = rng.integers(2, size=n, dtype=np.int64)  # (n,)
    i = rng.integers(4, size=n)
    j = 2 * rng.integers(2, size=n) + (i + y) % 2
    x = np.stack([i, j], axis=1) - 2.0 + rng.random((n, 2))  # (n, 2)
    return x, y


def swiss_roll(n, rng):
    """A 2D swiss roll (one spiral arm) cut by angle into three classes.

    Parameters: n (int >= 0), the number of points; rng (numpy.random.Generator).
    Returns: x, float64 (n, 2); y, int64 (n,) in {0, 1, 2}, increasing outwards.

    Construction: y ~ U{0, 1, 2}, u ~ U(0, 1); the angle t = 1.5 pi + 3 pi (y + u) / 3 covers
    [1.5 pi, 4.5 pi] uniformly, label y owning its y-th third; x = (3 t / (4.5 pi)) (cos t, sin t)
    + 0.08 z, z ~ N(0, I): radius from 1 to 3, consecutive windings 4/3 apart.
    """
    def curve(y, u):
        t = 1.5 * np.pi + np.pi * (y + u)
        return _polar(3.0 * t / (4.5 * np.pi), t)
    return _curve_sample(n, rng, 3, curve, noise=0.08)
