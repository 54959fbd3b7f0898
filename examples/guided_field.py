"""A guided vector field from a trained checkpoint: a learned denoiser's CFG score beside the exact one.

The denoiser comes from --checkpoint, a denoiser checkpoint such as the ``denoiser.npz`` that
``refdiff train --data three_gaussians --out refdiff-model`` writes; without it, a denoiser is
trained here on --data with label dropout (the demo's budget, ``train.DENOISER_DEMO``, with
--steps steps) and saved to OUT/denoiser.npz, which a second run can load. At noise level --t the
figure draws, with ``refdiff.plot.vector_field``, the unconditional score and the CFG score
(docs/guidance.md, (G5)) toward each label: the top row from the learned denoiser, the bottom row
from the oracle's exact model of the --data preset, over the contours of the exact noised density.
Arrows are of unit length, coloured by the log of the score's length.

It prints the learned denoiser's loss over the Bayes floor (docs/metrics.md, (M5)) with its
standard error, for the conditional and the unconditional branch, which CFG combines.

Run:  python examples/guided_field.py [--checkpoint refdiff-model/denoiser.npz] [--data three_gaussians]
                                      [--w 3] [--t 200] [--steps 2000] [--out guided-field]
About 10 s with the defaults when it trains (2-core AMD EPYC, one BLAS thread), 3 s when it loads.
"""
import argparse
import os

import numpy as np
from matplotlib.figure import Figure

import toy_data
from refdiff import checkpoint, nn, plot, runtime
from refdiff.guidance import classifier_free_guidance
from refdiff.metrics import denoiser_excess
from refdiff.schedule import Schedule
from refdiff.train import DENOISER_DEMO, budget, train_denoiser

LIM = 3.5  # the plotted square [-LIM, LIM]^2
GRID = 16  # arrows per side, even: none on the centre of symmetric presets, where the exact score is 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a denoiser checkpoint (.npz) of 2D data; default: train one")
    parser.add_argument("--data", default="three_gaussians", choices=toy_data.presets(),
                        help="the preset to train on; its exact model and density are drawn (default three_gaussians)")
    parser.add_argument("--steps", type=int, default=DENOISER_DEMO["steps"],
                        help=f"training steps without --checkpoint (default {DENOISER_DEMO['steps']})")
    parser.add_argument("--w", type=float, default=3.0, help="the CFG weight w (default 3)")
    parser.add_argument("--t", type=int, default=200, help="the noise level, a timestep in 1..1000 (default 200)")
    parser.add_argument("--n-eval", type=int, default=20_000, help="draws for the excess loss (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=int, default=runtime.DEFAULT_THREADS, help="BLAS threads (default 1)")
    parser.add_argument("--out", default="guided-field", help="folder for field.png (default guided-field)")
    return parser.parse_args(argv)


def denoiser(args, mix, rng):
    """The checkpoint's denoiser, or one trained on the preset and saved to OUT/denoiser.npz."""
    if args.checkpoint is not None:
        den = checkpoint.load(args.checkpoint)
        if not isinstance(den, nn.Denoiser) or den.config.dim != 2 or den.config.num_labels != mix.num_labels:
            raise SystemExit(f"--checkpoint {args.checkpoint}: expected a denoiser of 2D points with "
                             f"{mix.num_labels} labels (--data {args.data})")
        return den
    x0, y = mix.sample(20_000, rng)
    den = train_denoiser(x0, y, Schedule.linear(1000), rng, verbose=False, **budget(DENOISER_DEMO, args.steps))
    checkpoint.save(os.path.join(args.out, "denoiser.npz"), den)
    return den


def draw(fig, models, mix, sched, args):
    """Rows: the models; columns: unconditional, then CFG toward each label."""
    columns = [("unconditional", None)] + [(f"CFG w = {args.w:g}, label {k}", k) for k in range(mix.num_labels)]
    axes = fig.subplots(len(models), len(columns), squeeze=False, sharex=True, sharey=True)
    for i, (row, model) in enumerate(models.items()):
        for j, (column, label) in enumerate(columns):
            field = ((lambda x, t, m=model: m(x, t)) if label is None
                     else classifier_free_guidance(model, label, args.w))
            ax = plot.vector_field(axes[i, j], field, sched, args.t, lim=LIM, n=GRID, density=mix, y=label,
                                   normalize=True)
            ax.set_title(f"{row}: {column}", fontsize=10)
    fig.suptitle(f"{args.data}: the score at t = {args.t} (noise std sqrt(1 - alpha_bar_t) = "
                 f"{np.sqrt(1 - sched.alpha_bar[args.t]):.2f}) as unit arrows, of the learned denoiser (top) and "
                 "the exact one (bottom)\n"
                 "CFG: eps = (1 + w) eps(x, t, y) - w eps(x, t) (G5); grey: the exact noised density")


def main(argv=None):
    args = parse_args(argv)
    runtime.set_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    mix = toy_data.mixture(args.data)
    den = denoiser(args, mix, np.random.default_rng(args.seed))
    sched = den.sched
    draws = np.random.default_rng([args.seed, 1])  # the same draws whether the model was trained or loaded
    for branch, conditional in (("conditional", True), ("unconditional", False)):
        excess = denoiser_excess(den, mix, sched, args.n_eval, draws, conditional=conditional)
        print(f"{branch} excess loss over the Bayes floor: {excess.excess:.4f} +- {excess.stderr:.4f}")
    fig = Figure(figsize=(4.2 * (mix.num_labels + 1) + 1.5, 8.6), layout="constrained")
    draw(fig, {"learned": den, "exact": mix.eps_model(sched)}, mix, sched, args)
    path = os.path.join(args.out, "field.png")
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
