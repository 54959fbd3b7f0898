"""Latent diffusion at toy scale: a KL-regularised autoencoder and a denoiser on its latents (docs/latent.md).

Rombach et al. (2022) train the diffusion model not on pixels but on the latents of a frozen
autoencoder. Here the encoder E maps an image x (N, 64) to a diagonal Gaussian posterior
N(mu, diag sigma^2) over a small latent (N, latent), the decoder maps a latent back, and the
latents are rescaled by one number so that they have unit variance like the prior N(0, I) the
diffusion ends in. The denoiser trained on the scaled latents is an ordinary ``nn.Denoiser`` of
D = latent, so guidance and samplers run on it unchanged; sampling an image is

    z = samplers.ddpm(guidance.classifier_free_guidance(den, y, w), sched, x_T, rng, steps=100)
    images = ae.decode(z)                                   # x_T: (N, latent), z / scale decoded

Parameters are one flat dict with names "encoder/W0", ..., "decoder/b_out": two plain MLPs of
eq. (L2) built by ``nn.mlp_shapes`` / ``nn.init_from_shapes`` and run by ``nn.mlp``.
"""
from dataclasses import asdict, dataclass

import autograd.numpy as anp
import numpy as np

from .arrays import DTYPES, as_count, as_points, as_real, check_rng
from .nn import init_from_shapes, mean, mlp, mlp_shapes, subnet
from .npz import all_fields, config_from, fields_of, only_meta_fields, read_scale
from .train import Progress, fit, train_denoiser

# The tiny-image autoencoder (docs/latent.md, "Measured"; ~6 s with one BLAS thread): held-out
# reconstructions have MSE 0.004 and are all judged the right class (seeds 0-2). Of latent 4, 8
# and 16, 8 gave the latent denoiser below the best unguided samples (95% judged right against
# 91% and 87%); kl_weight 1e-2 cost 9 points there, 1e-4 changed nothing.
AUTOENCODER_IMAGES = {"steps": 1500, "batch": 256, "lr": 5e-3, "latent": 8, "hidden": 128, "depth": 2,
                      "kl_weight": 1e-3, "dtype": "float32", "ema": 0.99}
# The latent denoiser (~12 s): train.DENOISER_IMAGES_SMALL with hidden 128 instead of 192, half the
# training and sampling time for 2 points less unguided (95.6% against 97.6% judged right, seed 0;
# CFG at w >= 1 reaches 99.4-100% either way). The pixel model with DENOISER_IMAGES_SMALL: 65%.
LATENT_DENOISER_IMAGES = {"steps": 2000, "batch": 256, "lr": 5e-3, "p_uncond": 0.3, "hidden": 128, "depth": 2,
                          "arch": "resnet", "dtype": "float32", "ema": 0.99}
# Stable Diffusion's clamp of the log-variance (ldm DiagonalGaussianDistribution): exp() stays finite.
LOGVAR_RANGE = (-30.0, 20.0)


@dataclass(frozen=True)
class AEConfig:
    """The shape of the autoencoder: dim (D of x), latent (size of z), hidden and depth of both MLPs,
    kl_weight (beta of (LD3), a finite number >= 0) and dtype ("float64" or "float32")."""
    dim: int = 64
    latent: int = 8
    hidden: int = 128
    depth: int = 2
    kl_weight: float = 1e-3
    dtype: str = "float64"

    def __post_init__(self):
        for name in ("dim", "latent", "hidden", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        as_real(self.kl_weight, "kl_weight", low=0)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")

    def to_dict(self):
        return asdict(self)


def autoencoder_shapes(config):
    """Encoder "encoder/..." (dim -> hidden x depth -> 2 latent) and decoder "decoder/..."
    (latent -> hidden x depth -> dim), each the plain MLP of eq. (L2)."""
    return {**mlp_shapes(config.dim, config.hidden, config.depth, 2 * config.latent, "encoder/"),
            **mlp_shapes(config.latent, config.hidden, config.depth, config.dim, "decoder/")}


def encoder_forward(params, config, x):
    """The posterior of eq. (LD1): (mu, log sigma^2), each (N, latent), from x (N, dim).

    The encoder's 2 latent outputs are split into mean and log-variance; the log-variance is
    clipped to LOGVAR_RANGE as Stable Diffusion does.
    """
    out = mlp(subnet(params, "encoder/"), x, None, config.depth)
    mu, logvar = anp.split(out, 2, axis=1)
    return mu, anp.clip(logvar, *LOGVAR_RANGE)


def decoder_forward(params, config, z):
    """The decoder D(z): (N, latent) unscaled latents -> (N, dim) images, eq. (L2)."""
    return mlp(subnet(params, "decoder/"), z, None, config.depth)


def kl_to_standard_normal(mu, logvar):
    """KL(N(mu, diag sigma^2) || N(0, I)) per row, eq. (LD2).

    KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2), the closed form of Kingma & Welling
    (2014), Appendix B, which Rombach et al. (2022, Appendix G) use for the KL-reg autoencoder.

    Parameters
    ----------
    mu, logvar : arrays (N, L), the posterior mean and log sigma^2

    Returns
    -------
    kl : array (N,), >= 0

    sigma^2 - 1 is computed as expm1(log sigma^2): near sigma = 1 the difference exp(.) - 1 would
    cancel to round-off and could make the sum slightly negative.
    """
    return 0.5 * anp.sum(mu * mu + (anp.expm1(logvar) - logvar), axis=1)


def autoencoder_loss(params, config, x, noise):
    """Reconstruction error plus beta times the KL term, eq. (LD3).

    loss = mean_n [ (1/D) ||x_n - D(z_n)||^2 + beta KL(q(z | x_n) || N(0, I)) ],
    z_n = mu_n + sigma_n * noise_n (eq. (LD1), the reparameterisation of Kingma & Welling 2014),
    beta = config.kl_weight.

    Parameters
    ----------
    params : dict of the encoder's and decoder's arrays; config : AEConfig
    x : array (N, dim), the images; noise : array (N, latent), N(0, I) draws

    Returns
    -------
    loss : scalar
    """
    mu, logvar = encoder_forward(params, config, x)
    z = mu + anp.exp(0.5 * logvar) * noise
    residual = decoder_forward(params, config, z) - x
    return mean(residual * residual) + config.kl_weight * mean(kl_to_standard_normal(mu, logvar))


def latent_scale(params, config, x, rng):
    """s = 1 / std(z) over every entry of posterior samples z = mu + sigma * noise of x, eq. (LD4).

    Rombach et al. (2022), Appendix G; why: their Sec. 4.3.2 and Appendix D.1 (CompVis'
    ``scale_by_std``; Stable Diffusion's 0.18215). Scaled latents s z have unit variance like the
    prior N(0, I), so the schedule's signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) means
    what it means for unit-scale data.

    Parameters
    ----------
    params, config : the autoencoder (AEConfig); x : array (N, dim), the training images
    rng : numpy.random.Generator for the posterior noise

    Returns
    -------
    s : float > 0; the std is over all N * latent entries, centred, ddof = 0
    """
    z = Autoencoder(params, config).encode(x, rng)  # (N, latent), scale 1
    std = float(np.std(z.astype(np.float64)))
    if not std > 0:
        raise ValueError(f"x must give latents of nonzero spread to fix the scale, got std {std}")
    return 1.0 / std


def autoencoder_entries(model):
    """An Autoencoder's own checkpoint entries (refdiff/checkpoint.py): the fields of 'meta' (its
    AEConfig) and 'scale', a 0-d float64 array (the factor of (LD4))."""
    return {"config": fields_of(model.config, AEConfig)}, {"scale": np.array(model.scale, np.float64)}


def autoencoder_from_entries(meta, arrays):
    """An Autoencoder's AEConfig, scale and parameter shapes from checkpoint entries, strictly:
    'meta' holds every AEConfig field and nothing else. Pops 'scale' from ``arrays``."""
    only_meta_fields(meta, set())
    config = config_from(AEConfig, all_fields(meta, AEConfig))
    return config, read_scale(arrays.pop("scale", None)), autoencoder_shapes(config)


class Autoencoder:
    """A trained autoencoder: params, config (AEConfig) and scale (the factor of (LD4))."""

    def __init__(self, params, config, scale=1.0):
        if not isinstance(config, AEConfig):
            raise ValueError(f"config must be an AEConfig, got {type(config).__name__}")
        self.params, self.config, self.scale = params, config, as_real(scale, "scale", above=0)

    def encode(self, x, rng=None):
        """Scaled latents (N, latent) of images x (N, dim): scale * mu, or with ``rng`` a posterior
        sample scale * (mu + sigma * noise) (eqs. (LD1), (LD5))."""
        x = as_points(x, "x", dim=self.config.dim).astype(DTYPES[self.config.dtype], copy=False)
        mu, logvar = encoder_forward(self.params, self.config, x)
        if rng is None:
            return self.scale * mu
        noise = check_rng(rng).standard_normal(mu.shape).astype(mu.dtype)
        return self.scale * (mu + np.exp(0.5 * logvar) * noise)

    def decode(self, z):
        """Images (N, dim) = D(z / scale) of scaled latents z (N, latent), eq. (LD5)."""
        z = as_points(z, "z", dim=self.config.latent).astype(DTYPES[self.config.dtype], copy=False)
        return decoder_forward(self.params, self.config, z / np.asarray(self.scale, dtype=z.dtype))


def train_autoencoder(x, rng, steps=1500, batch=256, lr=5e-3, latent=8, hidden=128, depth=2, kl_weight=1e-3,
                      dtype="float64", ema=0.999, clip=1.0, verbose=True):
    """Train the KL-regularised autoencoder on images x with Adam on (LD3), then fit its scale (LD4).

    Each step draws a minibatch of x and the reparameterisation noise from ``rng``; ``train.fit``
    runs Adam with warm-up, cosine decay, clipping and an EMA of the weights.

    Parameters
    ----------
    x : array (N, dim), training images; rng : numpy.random.Generator (the only randomness)
    latent, hidden, depth, kl_weight, dtype : the AEConfig
    steps, batch, lr, ema, clip : the optimiser (train.fit); verbose : a progress line on stderr

    Returns
    -------
    Autoencoder with the EMA weights and ``scale`` from posterior samples of all of x;
    ``.history`` holds the training loss per step.
    """
    x = as_points(x, "x").astype(np.float64)
    if len(x) == 0:
        raise ValueError("x must hold at least one image")
    check_rng(rng)
    batch = as_count(batch, "batch", low=1)
    config = AEConfig(x.shape[1], latent, hidden, depth, kl_weight, dtype)
    cast = DTYPES[dtype]

    def make_batch():
        idx = rng.integers(0, len(x), batch)
        return x[idx].astype(cast), rng.standard_normal((batch, latent)).astype(cast)

    params, history = fit(lambda p, *b: autoencoder_loss(p, config, *b),
                          init_from_shapes(autoencoder_shapes(config), dtype, rng), make_batch, steps, lr,
                          ema, clip, Progress("autoencoder", steps, verbose))
    model = Autoencoder(params, config, latent_scale(params, config, x, rng))
    model.history = history
    return model


def train_latent_denoiser(ae, x, y, sched, rng, num_labels=None, **denoiser_options):
    """Train a denoiser on the scaled latents ae.encode(x, rng) of the images x, eq. (LD6).

    The images are encoded once, each to one posterior sample, and ``train.train_denoiser`` runs on
    those latents with its label dropout (``p_uncond``); the autoencoder stays frozen, as for
    Rombach et al.'s L_LDM (2022, Sec. 3.2, eq. 2).

    Parameters
    ----------
    ae : Autoencoder; x : array (N, dim), images; y : int array (N,) of labels (or None)
    sched : Schedule; rng : numpy.random.Generator; num_labels : K, default y.max() + 1
    denoiser_options : the rest of ``train.train_denoiser`` (e.g. LATENT_DENOISER_IMAGES)

    Returns
    -------
    nn.Denoiser with D = ae.config.latent, and ``.history``
    """
    if not isinstance(ae, Autoencoder):
        raise ValueError(f"ae must be an Autoencoder, got {type(ae).__name__}")
    z = ae.encode(x, check_rng(rng))  # (N, latent)
    return train_denoiser(z, y, sched, rng, num_labels=num_labels, **denoiser_options)
