"""Print the fidelity-diversity tables of docs/guidance.md: both guidance methods over a sweep of
strengths w (classifier guidance at s = 1 + w), with exact models and with learned ones.

Run: python docs/measure_guidance.py [--learned] [--images]
  (oracle only: ~20 s; --learned adds the 2D default budgets, ~2 min; --images adds the small
  tiny-image budget of refdiff/train.py, ~2 min; 3-4 min for all with one BLAS thread on 2 cores
  with one busy, as main sets it)
"""
import argparse
import time

import numpy as np

import toy_data
from refdiff import runtime
from refdiff.samplers import ddpm
from refdiff.schedule import Schedule
from refdiff.sweep import format_table, image_measures, mixture_measures, scale_sweep
from refdiff.train import (CLASSIFIER_2D, CLASSIFIER_IMAGES_SMALL, DENOISER_2D, DENOISER_IMAGES_SMALL,
                           train_classifier, train_denoiser)
from toy_data import images

WS = (-1.0, 0.0, 0.5, 1.0, 3.0, 6.0)
PRESETS = ("three_overlapping", "three_gaussians")


def mixture_tables(learned, n=3000, seed=0):
    sched = Schedule.linear(1000)
    for name in PRESETS:
        mix, rng = toy_data.mixture(name), np.random.default_rng(seed)
        if learned:
            x0, y0 = mix.sample(20_000, rng)
            start = time.perf_counter()
            den = train_denoiser(x0, y0, sched, rng, verbose=False, **DENOISER_2D)
            clf = train_classifier(x0, y0, sched, rng, verbose=False, **CLASSIFIER_2D)
            kind = f"learned (default 2D budgets, trained in {time.perf_counter() - start:.0f} s)"
        else:
            den, clf, kind = mix.eps_model(sched), mix.classifier(sched), "exact"
        y = np.arange(n) % mix.num_labels
        rows, _ = scale_sweep({"denoiser": den, "classifier": clf}, sched, y, WS, rng.standard_normal((n, 2)), mixture_measures(mix, rng))
        print(f"\n{name}, {kind} models, DDIM-50, n = {n}:\n{format_table(rows)}")


def image_table(n=1400, seed=0):
    """The small image budget, sampled with DDPM respaced to 100 steps (the same noise for every
    run): at this budget DDIM-50 leaves residual noise that the judge rejects."""
    sched, rng = Schedule.linear(1000), np.random.default_rng(seed)
    x0, y0 = images.sample(20_000, rng)
    start = time.perf_counter()
    den = train_denoiser(x0, y0, sched, rng, verbose=False, **DENOISER_IMAGES_SMALL)
    clf = train_classifier(x0, y0, sched, rng, verbose=False, **CLASSIFIER_IMAGES_SMALL)
    y = np.arange(n) % images.NUM_CLASSES
    sample = lambda eps_fn, x_T: ddpm(eps_fn, sched, x_T, np.random.default_rng(seed + 1), steps=100)
    rows, _ = scale_sweep({"denoiser": den, "classifier": clf}, sched, y, WS, rng.standard_normal((n, x0.shape[1])), image_measures,
                          sample=sample)
    print(f"\ntiny images, learned models (small budget, trained in {time.perf_counter() - start:.0f} s), "
          f"DDPM-100, n = {n}:\n{format_table(rows)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learned", action="store_true", help="also train the 2D models and sweep them")
    parser.add_argument("--images", action="store_true", help="also train the tiny-image models and sweep them")
    args = parser.parse_args()
    runtime.set_threads(1)  # refdiff's own default (docs/learned.md, "Speed"): 2 threads stall when a core is busy
    mixture_tables(learned=False)
    if args.learned:
        mixture_tables(learned=True)
    if args.images:
        image_table()


if __name__ == "__main__":
    main()
