"""Print how close denoisers trained to predict eps, x0, v or the score come to the Bayes floor in each target's loss.

On three_gaussians and ring8 (20,000 training points, seed 0) this trains, with the 2D budget
DENOISER_2D and training seed 1, one denoiser per variant: prediction eps, x0, v and score on
their own unweighted loss, and v and score with min-SNR-5 weighting (docs/learned.md, (L5w)). It
measures each model's excess over the exact oracle (eq. (M5), ``metrics.denoiser_excess``) in
the loss of each target (docs/process.md, (C8)), conditional and unconditional, on the same
100,000 draws (seed 2) for every model. For each data set and branch it prints the Bayes floor of
each target loss, then a markdown table: one row per variant, one column per target loss with
"excess (stderr)", and the training wall time. --quick trains 400 steps and measures on 10,000
draws, as a smoke run.

Run: python docs/measure_predictions.py [--quick]   (8-9 minutes on 2 cores with one busy;
--quick about a minute)
"""
import sys
import time

import numpy as np

import toy_data
from refdiff import runtime
from refdiff.metrics import denoiser_excess
from refdiff.process import PREDICTIONS
from refdiff.schedule import Schedule
from refdiff.train import DENOISER_2D, train_denoiser

DATA_SETS = ("three_gaussians", "ring8")
VARIANTS = (("eps", None), ("x0", None), ("v", None), ("score", None), ("v", "min_snr"), ("score", "min_snr"))
N_TRAIN, N_MEASURE, QUICK_STEPS, QUICK_MEASURE = 20_000, 100_000, 400, 10_000


def train_variants(mix, sched, steps):
    """{(prediction, weighting): (Denoiser, training wall time in s)} on N_TRAIN points of ``mix``."""
    x0, y = mix.sample(N_TRAIN, np.random.default_rng(0))
    trained = {}
    for prediction, weighting in VARIANTS:
        start = time.perf_counter()
        model = train_denoiser(x0, y, sched, np.random.default_rng(1), **{**DENOISER_2D, "steps": steps},
                               verbose=False, prediction=prediction, weighting=weighting)
        trained[prediction, weighting] = model, time.perf_counter() - start
    return trained


def excesses(model, mix, sched, n, conditional):
    """{target: Excess} of ``model`` in every target's loss, each on the same n draws (seed 2)."""
    return {target: denoiser_excess(model, mix, sched, n, np.random.default_rng(2), conditional, target)
            for target in PREDICTIONS}


def table(trained, found):
    """The Bayes floors, then the markdown table of ``found`` = {variant: {target: Excess}}."""
    floors = next(iter(found.values()))
    lines = ["Bayes floor: " + ", ".join(f"{t} {floors[t].floor:.4g}" for t in PREDICTIONS), "",
             "| prediction | " + " | ".join(f"{t} loss" for t in PREDICTIONS) + " | training, s |",
             "|---" * (len(PREDICTIONS) + 2) + "|"]
    for (prediction, weighting), cells in found.items():
        name = prediction + (f", {weighting}" if weighting else "")
        lines.append(f"| {name} | " + " | ".join(f"{c.excess:.3f} ({c.stderr:.3f})" for c in cells.values())
                     + f" | {trained[prediction, weighting][1]:.0f} |")
    return "\n".join(lines)


def main():
    runtime.set_threads(1)
    runtime.tune_malloc()
    quick = "--quick" in sys.argv
    steps, n = (QUICK_STEPS, QUICK_MEASURE) if quick else (DENOISER_2D["steps"], N_MEASURE)
    sched = Schedule.linear(1000)
    for name in DATA_SETS:
        mix = toy_data.mixture(name)
        trained = train_variants(mix, sched, steps)
        for conditional in (True, False):
            found = {v: excesses(model, mix, sched, n, conditional) for v, (model, _) in trained.items()}
            print(f"\n### {name}, {'conditional' if conditional else 'unconditional'} "
                  f"({steps} steps, {n} draws)\n\n{table(trained, found)}", flush=True)


if __name__ == "__main__":
    main()
