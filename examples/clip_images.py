"""CLIP guidance on the tiny images: captions that no label names steer an unconditional denoiser.

On 8 x 8 stroke images (``toy_data.images``) it trains, at budgets small enough for seconds, a
pixel denoiser (the residual network of ``train.DENOISER_IMAGES_SMALL``, narrower and for fewer
steps) and a noise-aware toy CLIP (``refdiff.clip``) on captions made of each image's attribute
words (``toy_data.captions``). It then samples with CLIP guidance (docs/clip.md, (G13)) toward
each caption at each scale s with DDPM (``demo_images.STEPS`` steps, the same x_T and noise for
every caption and scale; s = 0 is the unconditional model) and judges the samples with the
rule-based matcher, ``captions.caption_match``.

It prints, per caption and scale, the mean CLIP score (CL3) of the samples at t = 1, which the
guidance climbs, and what the judge makes of them: the fraction of samples matching each word
group the caption names ("class", "thickness", "horizontal", "vertical") and all of them. It writes
``captions.png`` to --out: the first samples of each caption (rows) at each scale (columns).
``refdiff demo --data images`` does the same with the demo's budgets and a clean CLIP beside.

Run:  python examples/clip_images.py [--caption "thick vertical bar" ...] [--scales 0 3 10]
                                     [--denoiser-steps 1000] [--clip-steps 500] [--out clip-images]
About 12 s with the defaults (2-core AMD EPYC, one BLAS thread).
"""
import argparse
import os

import numpy as np
from matplotlib.figure import Figure

from refdiff import clip, demo_images, plot, runtime
from refdiff.guidance import clip_guidance
from refdiff.samplers import ddpm
from refdiff.schedule import Schedule
from refdiff.train import DENOISER_IMAGES_SMALL, train_denoiser
from toy_data import captions, images

DENOISER = {**DENOISER_IMAGES_SMALL, "hidden": 128, "steps": 1000}
NOISE_AWARE_CLIP = {"steps": 500, "batch": 256, "lr": 5e-3, "hidden": 128, "depth": 2}
SHOWN = 16  # samples drawn per caption and scale, in a 4 x 4 grid


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--caption", action="append", dest="captions",
                        help=f"a caption of words from {', '.join(captions.VOCAB)}; repeat for more "
                             f"(default: {'; '.join(demo_images.CAPTIONS[:2])})")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 3.0, 10.0],
                        help="CLIP guidance scales s (default 0 3 10)")
    parser.add_argument("--denoiser-steps", type=int, default=DENOISER["steps"],
                        help=f"denoiser training steps (default {DENOISER['steps']})")
    parser.add_argument("--clip-steps", type=int, default=NOISE_AWARE_CLIP["steps"],
                        help=f"CLIP training steps (default {NOISE_AWARE_CLIP['steps']})")
    parser.add_argument("-n", type=int, default=100, help="samples per caption and scale (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=int, default=runtime.DEFAULT_THREADS, help="BLAS threads (default 1)")
    parser.add_argument("--out", default="clip-images", help="folder for captions.png (default clip-images)")
    args = parser.parse_args(argv)
    args.captions = args.captions or list(demo_images.CAPTIONS[:2])
    return args


def train(args, rng, sched):
    """The unconditional pixel denoiser and the noise-aware CLIP, trained on 20,000 images."""
    x, y, attributes = images.sample(20_000, rng, return_attributes=True)
    den = train_denoiser(x, None, sched, rng, verbose=False, **{**DENOISER, "steps": args.denoiser_steps})
    text_model = clip.train_clip(x, captions.image_words(y, attributes), captions.VOCAB, rng, sched=sched,
                                 verbose=False, **{**NOISE_AWARE_CLIP, "steps": args.clip_steps})
    return den, text_model


def figure(samples, args):
    """One row of image grids per caption, one column per scale, each titled with its match."""
    fig = Figure(figsize=(2.8 * len(args.scales) + 0.4, 3.2 * len(args.captions) + 0.6), layout="constrained")
    for row, caption in zip(fig.subfigures(len(args.captions), 1, squeeze=False)[:, 0], args.captions):
        row.suptitle(f'caption "{caption}"')
        for ax, s in zip(row.subplots(1, len(args.scales), squeeze=False)[0], args.scales):
            x, match = samples[caption, s]
            plot.image_grid(ax, x[:SHOWN], ncols=4)
            ax.set_title(f"s = {s:g}: {match['all']:.0%} match the caption", fontsize=10)
    fig.suptitle(f"CLIP guidance (G13) of an unconditional denoiser, DDPM-{demo_images.STEPS}\n"
                 f"denoiser {args.denoiser_steps} steps, noise-aware CLIP {args.clip_steps} steps; "
                 "matches by captions.caption_match")
    return fig


def main(argv=None):
    args = parse_args(argv)
    runtime.set_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    sched = Schedule.linear(1000)
    den, text_model = train(args, rng, sched)
    x_T, seed = rng.standard_normal((args.n, images.SIZE ** 2)), int(rng.integers(2 ** 31))
    samples = {}
    print(f"{'caption':28s} {'s':>5s} {'clip score':>10s}  fraction matching each word group")
    for caption in args.captions:
        score_fn = text_model.score_fn(caption)
        for s in args.scales:
            x = ddpm(clip_guidance(den, score_fn, sched, s), sched, x_T, np.random.default_rng(seed),
                     steps=demo_images.STEPS)
            match, score = captions.caption_match(x, caption), float(np.mean(score_fn(x, 1)))
            samples[caption, s] = x, match
            groups = "  ".join(f"{group} {value:.2f}" for group, value in match.items())
            print(f"{caption:28s} {s:5g} {score:10.2f}  {groups}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "captions.png")
    figure(samples, args).savefig(path, dpi=80)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
