"""Inpainting the tiny images: a learned pixel denoiser fills in masked pixels by DPS and by
reconstruction guidance (docs/inverse.md, (I4), (I5)).

It trains an unconditional pixel denoiser on 8 x 8 stroke images (``toy_data.images``; the
residual network of ``train.DENOISER_IMAGES_SMALL``, narrower and for fewer steps), takes n
held-out images, observes each through a mask of random pixels with a little noise
(y_obs = A x_0 + n, A the rows of the identity that the mask keeps), and samples with DDPM
(``demo_images.STEPS`` steps, the same x_T and noise for every rule): unguided, DPS at a tenth and
a hundredth of its own step size zeta = 1 / (2 noise_std^2) (at that size itself it diverges), and
reconstruction guidance, each only
at t <= T_MAX (from t = T they diverge with this learned denoiser: docs/inverse.md, "Learned models").

It prints, per rule, the RMS error on the observed pixels (how well the sample agrees with the
observation) and on the hidden ones (how well it guesses them), how often the rule-based judge
finds the held-out image's own class, and how many samples diverged (their eps overflowed; left
out of the other columns). No closed form exists here: docs/inverse.md measures the same
rules against the exact posterior on 2D data. It writes ``inpainting.png`` to --out: the held-out
images, what the mask shows of them, and each rule's samples.

Run:  python examples/inpainting.py [--keep 0.5] [--noise-std 0.1] [--t-max 600] [--denoiser-steps 1000] [-n 8]
                                   [--out inpainting]
About 12 s with the defaults (2-core AMD EPYC, one BLAS thread).
"""
import argparse
import os

import numpy as np
from matplotlib.figure import Figure

from refdiff import demo_images, inverse, plot, runtime
from refdiff.samplers import ddpm
from refdiff.schedule import Schedule
from refdiff.train import DENOISER_IMAGES_SMALL, train_denoiser
from toy_data import images

DENOISER = {**DENOISER_IMAGES_SMALL, "hidden": 128, "steps": 1000}
T_MAX = 600  # guide only at t <= T_MAX: above it the learned x0_hat's gradient is too wrong (docs/inverse.md)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=float, default=0.5, help="fraction of pixels observed (default 0.5)")
    parser.add_argument("--noise-std", type=float, default=0.1, help="observation noise std (default 0.1)")
    parser.add_argument("--denoiser-steps", type=int, default=DENOISER["steps"],
                        help=f"denoiser training steps (default {DENOISER['steps']})")
    parser.add_argument("--t-max", type=int, default=T_MAX,
                        help=f"guide only at t <= T_MAX (default {T_MAX}; 1000 guides from the start)")
    parser.add_argument("-n", type=int, default=8, help="held-out images to inpaint (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=int, default=runtime.DEFAULT_THREADS, help="BLAS threads (default 1)")
    parser.add_argument("--out", default="inpainting", help="folder for inpainting.png (default inpainting)")
    return parser.parse_args(argv)


def rules(den, sched, A, y_obs, noise_std, t_max):
    """{name: eps_fn} of the rules compared: unguided, DPS at two step sizes, reconstruction guidance."""
    zeta = 1 / (2 * noise_std ** 2)
    return {"unguided": lambda x, t: den(x, t),
            f"DPS, zeta = {zeta / 10:g}": inverse.dps_guidance(den, sched, A, y_obs, zeta / 10, t_max=t_max),
            f"DPS, zeta = {zeta / 100:g}": inverse.dps_guidance(den, sched, A, y_obs, zeta / 100, t_max=t_max),
            "reconstruction": inverse.reconstruction_guidance(den, sched, A, y_obs, noise_std, t_max=t_max)}


def inpaint_one(den, sched, truth, args, rng, x_T, seed):
    """Every rule's sample for one held-out image: {name: x (P,)}, the mask and the observation."""
    mask = rng.uniform(size=truth.size) < args.keep
    A = np.eye(truth.size)[mask]
    y_obs = A @ truth + args.noise_std * rng.standard_normal(A.shape[0])
    return {name: diverged_as_nan(eps_fn, sched, x_T, seed)
            for name, eps_fn in rules(den, sched, A, y_obs, args.noise_std, args.t_max).items()}, mask


def diverged_as_nan(eps_fn, sched, x_T, seed):
    """The DDPM sample (P,), or NaNs where the guided eps overflowed and the sampler refused it."""
    with np.errstate(all="ignore"):
        try:
            return ddpm(eps_fn, sched, x_T, np.random.default_rng(seed), steps=demo_images.STEPS)[0]
        except ValueError:
            return np.full(x_T.shape[1], np.nan)


def figure(truth, masks, samples, args):
    """Rows: held-out images, what the mask shows (hidden pixels grey), each rule's samples."""
    shown = np.where(masks, truth, 0.0)
    rows = {"held out": truth, f"observed ({args.keep:.0%} of pixels, noise {args.noise_std:g}; grey: hidden)": shown,
            **{name: np.array(x) for name, x in samples.items()}}
    fig = Figure(figsize=(1.0 * len(truth) + 0.6, 1.45 * len(rows) + 0.8), layout="constrained")
    for sub, (name, x) in zip(fig.subfigures(len(rows), 1)[:], rows.items()):
        lost = int(np.sum(~np.all(np.isfinite(x), axis=1)))
        plot.image_grid(sub.subplots(), np.nan_to_num(x, nan=0.0), ncols=len(x))
        sub.suptitle(name + (f" ({lost} diverged, drawn grey)" if lost else ""), fontsize=10)
    fig.suptitle(f"Inpainting tiny images with a learned denoiser ({args.denoiser_steps} training steps), "
                 f"DDPM-{demo_images.STEPS}\nDPS (I4) and reconstruction guidance (I5) at t <= {args.t_max}, docs/inverse.md")
    return fig


def main(argv=None):
    args = parse_args(argv)
    runtime.set_threads(args.threads)
    rng, sched = np.random.default_rng(args.seed), Schedule.linear(1000)
    x, _ = images.sample(20_000, rng)
    den = train_denoiser(x, None, sched, rng, verbose=False, **{**DENOISER, "steps": args.denoiser_steps})
    truth, classes = images.sample(args.n, rng)
    x_T, seed = rng.standard_normal((1, images.SIZE ** 2)), int(rng.integers(2 ** 31))
    results = [inpaint_one(den, sched, img, args, rng, x_T, seed) for img in truth]
    masks = np.array([m for _, m in results])
    samples = {name: [r[0][name] for r in results] for name in results[0][0]}
    print(f"{'rule':22s} {'RMS observed':>12s} {'RMS hidden':>10s} {'own class':>9s} {'diverged':>8s}")
    for name, xs in samples.items():
        xs = np.array(xs)
        ok = np.all(np.isfinite(xs), axis=1)
        err, observed, hidden, own = (xs - truth)[ok], np.nan, np.nan, np.nan
        if ok.any():
            observed, hidden = np.sqrt(np.mean(err[masks[ok]] ** 2)), np.sqrt(np.mean(err[~masks[ok]] ** 2))
            own = np.mean(images.judge(xs[ok]) == classes[ok])
        print(f"{name:22s} {observed:12.3f} {hidden:10.3f} {own:9.2f} {np.sum(~ok):8d}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "inpainting.png")
    figure(truth, masks, samples, args).savefig(path, dpi=80)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
