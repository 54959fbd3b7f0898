"""``refdiff demo --data images``: four guidance methods on the tiny images, side by side.

Steps (each printed as it runs):
1. draw 20,000 tiny images with their attributes and train, on the small budgets: the pixel
   denoiser (label dropout) and noisy classifier (train.*_IMAGES_SMALL), a noise-aware and a clean
   toy CLIP (clip.CLIP_*_IMAGES), the autoencoder and the latent denoiser (latent.*_IMAGES);
2. measure the CLIPs' zero-shot accuracy and top-1 retrieval, and the autoencoder's
   reconstructions, on held-out images (and, at the end, the noise-aware CLIP's and the noisy
   classifier's class accuracy on those images noised to each of NOISY_T);
3. sample the four methods of METHODS (refdiff.methods) over the
   strengths ``ws`` with DDPM-100, n_per_label samples per class: classifier guidance and CLIP
   guidance (caption = the class name) at scale s = 1 + w on the unconditional branch, pixel
   CFG with weight w, and latent CFG with weight w, decoded; judge them;
4. steer the unconditional branch with captions that combine attributes (CAPTIONS), by both CLIP
   rules (G13, G14) over the scales, and count how often each attribute is matched;
5. write ``metrics.json``, ``samples.npz`` (the sweep's images, by method and w, and the labels),
   ``guidance_grid.png`` and ``captions.png`` to the output folder.
"""
import os
import time

import numpy as np

from toy_data import captions, images

from . import clip, latent, methods, plot
from .arrays import as_count
from .demo import save_figure, save_json
from .guidance import clip_guidance, clip_x0_guidance
from .npz import make_folder, save_npz_atomic
from .process import q_sample
from .runtime import default_jobs, run_tasks
from .samplers import ddpm
from .schedule import Schedule
from .sweep import image_measures
from .train import CLASSIFIER_IMAGES_SMALL, DENOISER_IMAGES_SMALL, Progress, train_classifier, train_denoiser

WS = (0.0, 1.0, 3.0, 6.0)
# The models the guidance methods read (refdiff.methods), and the methods they can run.
METHODS = ("classifier", "cfg", "clip", "latent_cfg")  # the rules the images demo compares, all it has models for
RULE_NAMES = {"noise_aware": "noise-aware CLIP at x_t (G13)", "x0": "clean CLIP at x0_hat (G14)"}
CAPTIONS = ("thick vertical bar", "left vertical bar", "thin horizontal bar", "thick top horizontal bar")
# The training budget of every model, in training order (the latent denoiser needs the autoencoder).
BUDGETS = {"denoiser": DENOISER_IMAGES_SMALL, "classifier": CLASSIFIER_IMAGES_SMALL,
           "clip_noise_aware": clip.CLIP_NOISE_AWARE_IMAGES, "clip_clean": clip.CLIP_CLEAN_IMAGES,
           "autoencoder": latent.AUTOENCODER_IMAGES, "latent_denoiser": latent.LATENT_DENOISER_IMAGES}
# The trainings as ``runtime.run_tasks`` runs them, the longest first (one process alone: denoiser
# 22 s, autoencoder then latent denoiser 22 s, noise-aware CLIP 15 s, classifier 9 s, clean CLIP
# 9 s; docs/clip.md); the latent denoiser trains on the autoencoder's codes, so the two are one task.
TRAINING_TASKS = (("denoiser",), ("autoencoder", "latent_denoiser"), ("clip_noise_aware",), ("classifier",),
                  ("clip_clean",))
TILE_INCHES = 0.38  # one image in the figures' grids: 30 pixels at save_figure's 80 dpi
CHAR_INCHES = 0.085  # the width of a character of 10-point text, for the margins of the grids' labels
NOISY_T = (100, 300, 500, 700)  # the noise levels of the noisy class accuracies
STEPS = 100  # DDPM steps: at the small budget DDIM-50 leaves noise the judge rejects (docs/guidance.md)


def run(out_dir, rng, budgets=BUDGETS, ws=WS, n_per_label=50, n_caption=100, say=print, verbose=True, jobs=None):
    """Train, sample, measure and draw; returns the metrics dict also written to metrics.json.

    Parameters
    ----------
    out_dir : folder for the outputs (created if missing); rng : numpy.random.Generator, the only randomness
    budgets : {model name: training options}, the keys of BUDGETS
    ws : strengths w; n_per_label : samples per class and strength; n_caption : samples per caption and scale
    say : callable(str) told of each step; verbose : progress lines on stderr (train.Progress)
    jobs : processes for the trainings and sampling runs (``runtime.run_tasks``; default: the CPUs
        this process may use, ``runtime.default_jobs()``); the outputs do not depend on it
    """
    as_count(n_per_label, "n_per_label", low=1), as_count(n_caption, "n_caption", low=1)
    jobs = default_jobs() if jobs is None else as_count(jobs, "jobs", low=1)
    if set(budgets) != set(BUDGETS):
        raise ValueError(f"budgets must name exactly {sorted(BUDGETS)}, got {sorted(budgets)}")
    make_folder(out_dir)
    start = time.perf_counter()
    models, metrics = _train(rng, budgets, say, verbose, jobs)
    sched = models["sched"]
    held_out = images.sample(2000, rng, return_attributes=True)
    metrics.update(_held_out(models, *held_out))
    y = np.arange(n_per_label * images.NUM_CLASSES) % images.NUM_CLASSES
    say(f"sampling {len(y)} images for each of {len(METHODS)} methods x {len(ws)} strengths (DDPM-{STEPS})")
    with Progress("guidance sweep", len(METHODS) * len(ws) * STEPS, verbose, verb="sample") as progress:
        metrics["rows"], samples = _sweep(models, sched, y, ws, rng, progress, jobs)
    say(f"steering the unconditional model with {len(CAPTIONS)} captions, both CLIP rules")
    with Progress("captions", (1 + len(CAPTIONS) * len(RULE_NAMES) * len(ws)) * STEPS, verbose,
                  verb="sample") as progress:
        metrics["captions"], caption_samples = _captions(models, sched, ws, n_caption, rng, progress, jobs)
    metrics["noisy_class_accuracy"] = _noisy_accuracy(models, sched, *held_out[:2], rng)
    save_json(metrics, os.path.join(out_dir, "metrics.json"))
    save_npz_atomic(os.path.join(out_dir, "samples.npz"), y=y,
                    **{f"{method}_w{w:g}": x for (method, w), x in samples.items()})
    say("drawing the figures")
    _figures(out_dir, samples, caption_samples, y, ws)
    say(format_rows(metrics["rows"]))
    say(f"wrote metrics.json, samples.npz, guidance_grid.png and captions.png to {out_dir} "
        f"({time.perf_counter() - start:.0f} s)")
    return metrics


def _train(rng, budgets, say, verbose, jobs):
    """Every model of the demo, the seconds each took to train and its training loss (the mean over
    its last 100 steps); ``verbose``: each one's progress line.

    Each model trains from its own random stream (``rng.spawn``), so the models are the same for
    any number of processes ``jobs``; the trainings run as the tasks of TRAINING_TASKS.
    """
    sched = Schedule.linear(1000)
    trainers, streams = _trainers(rng, sched, verbose), dict(zip(BUDGETS, rng.spawn(len(BUDGETS))))

    def task(names):
        trained, seconds = {}, {}
        for name in names:
            begin = time.perf_counter()
            trained[name] = trainers[name](budgets[name], streams[name], trained)
            seconds[name] = time.perf_counter() - begin
        return trained, seconds

    processes = min(jobs, len(TRAINING_TASKS))
    say(f"training {len(BUDGETS)} models in {processes} process{'es' if processes > 1 else ''}: "
        + ", ".join(f"the {name.replace('_', ' ')} ({budgets[name]['steps']} steps)" for name in BUDGETS))
    models, seconds = {"sched": sched}, {}
    tasks = [lambda names=names: task(names) for names in TRAINING_TASKS]
    labels = [" then ".join(names).replace("_", " ") for names in TRAINING_TASKS]  # on the workers' lines
    for trained, took in run_tasks(tasks, jobs, labels=labels):
        models.update(trained)
        seconds.update(took)
    losses = {name: float(np.mean(models[name].history[-100:])) for name in BUDGETS}
    return models, {"data": "images", "train_seconds": {name: seconds[name] for name in BUDGETS}, "final_loss": losses}


def _trainers(rng, sched, verbose):
    """{model name: train(options, rng, trained)} on 20,000 tiny images drawn from ``rng``, with
    their attribute words for the CLIPs; ``trained`` holds the models its task trained before
    (the latent denoiser reads the autoencoder)."""
    x, y, attrs = images.sample(20_000, rng, return_attributes=True)
    words, K = captions.image_words(y, attrs), images.NUM_CLASSES
    return {
        "denoiser": lambda opts, r, trained: train_denoiser(x, y, sched, r, num_labels=K, verbose=verbose, **opts),
        "classifier": lambda opts, r, trained: train_classifier(x, y, sched, r, num_labels=K, verbose=verbose, **opts),
        "clip_noise_aware": lambda opts, r, trained: clip.train_clip(x, words, captions.VOCAB, r, sched=sched,
                                                                     verbose=verbose, **opts),
        "clip_clean": lambda opts, r, trained: clip.train_clip(x, words, captions.VOCAB, r, verbose=verbose, **opts),
        "autoencoder": lambda opts, r, trained: latent.train_autoencoder(x, r, verbose=verbose, **opts),
        "latent_denoiser": lambda opts, r, trained: latent.train_latent_denoiser(
            trained["autoencoder"], x, y, sched, r, num_labels=K, verbose=verbose, **opts),
    }


def _held_out(models, x, y, attributes):
    """On held-out images: both CLIPs' zero-shot accuracy per word group and top-1 retrieval (the
    noise-aware one at t = 1), and the autoencoder's reconstruction error and judged accuracy."""
    words = captions.image_words(y, attributes)
    clips = (("clip_clean", None), ("clip_noise_aware", 1))
    ae = models["autoencoder"]
    recon = ae.decode(ae.encode(x))
    return {"zero_shot": {name: clip.zero_shot_accuracy(models[name], x, words, captions.GROUPS, t=t)
                          for name, t in clips},
            "retrieval": {name: clip.retrieval_accuracy(models[name], x[:1000], words[:1000], t=t) for name, t in clips},
            "autoencoder": {"latent": ae.config.latent, "scale": float(ae.scale),
                            "mse": float(np.mean((recon - x) ** 2)),
                            "judged_reconstructions": float(np.mean(images.judge(recon) == y))}}


def _noisy_accuracy(models, sched, x, y, rng):
    """Class accuracy on held-out images noised to x_t (P1) at NOISY_T: the noise-aware CLIP's
    zero-shot pick among the class names, and the noisy classifier's argmax; the two scores that
    (G13) and (G3) differentiate."""
    rows = []
    for t in NOISY_T:
        x_t = q_sample(sched, x, t, rng.standard_normal(x.shape))
        picked = clip.zero_shot(models["clip_noise_aware"], x_t, list(images.CLASS_NAMES), t)
        logits = models["classifier"](x_t, t)
        rows.append({"t": t, "clip": float(np.mean(picked == y)),
                     "classifier": float(np.mean(np.argmax(logits, axis=1) == y))})
    return rows


def guidance_models(models):
    """The demo's trained models under the names refdiff.methods reads: the noise-aware CLIP as
    "clip", with the class names as the captions of the labels."""
    return {"denoiser": models["denoiser"], "classifier": models["classifier"], "clip": models["clip_noise_aware"],
            "captions": images.CLASS_NAMES, "latent_denoiser": models["latent_denoiser"]}


def _sweep(models, sched, y, ws, rng, progress, jobs):
    """DDPM-100 samples of every method and strength from one x_T (one z_T in latent space) and one
    noise seed, judged; rows carry the wall-clock seconds per sample, decoding included. The cells
    are tasks of ``runtime.run_tasks`` in ``jobs`` processes (the same samples for any number);
    ``progress`` (a train.Progress) is told of each cell's steps as it comes back."""
    ae = models["autoencoder"]
    starts = {False: rng.standard_normal((len(y), images.SIZE ** 2)),
              True: rng.standard_normal((len(y), ae.config.latent))}
    seed, available, cells = int(rng.integers(2 ** 31)), guidance_models(models), [(m, w) for m in METHODS for w in ws]

    def cell(name, w):
        method = methods.get(name)
        in_latent = "latent_denoiser" in method.needs  # sampled in latent space, then decoded
        begin = time.perf_counter()
        x = ddpm(method.eps_fn(available, sched, y, method.value_at(w)), sched, starts[in_latent],
                 np.random.default_rng(seed), steps=STEPS)
        return (ae.decode(x) if in_latent else x), (time.perf_counter() - begin) / len(y)

    done = run_tasks([lambda c=c: cell(*c) for c in cells], jobs, lambda i, _: progress.update((i + 1) * STEPS))
    rows = [{"method": name, "w": float(w), "scale": methods.get(name).value_at(w), **image_measures(x, y),
             "seconds_per_sample": seconds} for (name, w), (x, seconds) in zip(cells, done)]
    return rows, {c: x for c, (x, _) in zip(cells, done)}


def _captions(models, sched, ws, n, rng, progress, jobs):
    """Both CLIP rules on the unconditional branch for each caption and scale s = 1 + w (and s = 0):
    how often the samples match each of the caption's attributes (captions.caption_match);
    ``progress`` is told of each run's steps, the runs being tasks of ``runtime.run_tasks``.

    Every cell starts from the same x_T and noise seed, so s = 0, where both rules are the
    unconditional eps (G13, G14), is one unguided run, shared by every caption and rule.
    """
    den = models["denoiser"]
    x_T, seed = rng.standard_normal((n, images.SIZE ** 2)), int(rng.integers(2 ** 31))
    rules = {"noise_aware": lambda caption, s: clip_guidance(den, models["clip_noise_aware"].score_fn(caption),
                                                             sched, s),
             "x0": lambda caption, s: clip_x0_guidance(den, models["clip_clean"].score_fn(caption), sched, s)}
    guided = [(caption, rule, 1.0 + w) for caption in CAPTIONS for rule in rules for w in ws]

    def sample(eps_fn):
        return ddpm(eps_fn, sched, x_T, np.random.default_rng(seed), steps=STEPS)
    tasks = [lambda: sample(lambda x, t: den(x, t))] + [lambda c=c: sample(rules[c[1]](c[0], c[2])) for c in guided]
    unguided, *runs = run_tasks(tasks, jobs, lambda i, _: progress.update((i + 1) * STEPS))
    runs = dict(zip(guided, runs))
    samples = {(caption, rule, s): unguided if s == 0 else runs[caption, rule, s]  # s = 0 first
               for caption in CAPTIONS for rule in rules for s in (0.0,) + tuple(1.0 + w for w in ws)}
    rows = [{"caption": caption, "rule": rule, "scale": s, **captions.caption_match(x, caption)}
            for (caption, rule, s), x in samples.items()]
    return rows, samples


def format_rows(rows):
    """The judged accuracy of every method and strength as a text table (methods as columns)."""
    ws = sorted({r["w"] for r in rows})
    cell = {(r["method"], r["w"]): r for r in rows}
    lines = [f"{'w':>5s} " + " ".join(f"{m:>14s}" for m in METHODS)]
    for w in ws:
        lines.append(f"{w:5.1f} " + " ".join(f"{cell[m, w]['judged']:8.3f}±{cell[m, w]['judged_se']:.3f}"
                                             for m in METHODS))
    return "judged accuracy (± binomial SE)\n" + "\n".join(lines)


def _figures(out_dir, samples, caption_samples, y, ws):
    """guidance_grid.png: methods x strengths, each cell one row per class (named on the right) with
    two samples of it (one if that is all there is); captions.png: caption and rule x scale, the
    first 8 samples per cell."""
    per_class = min(2, len(y) // images.NUM_CLASSES)
    pick = np.array([np.flatnonzero(y == k)[i] for k in range(images.NUM_CLASSES) for i in range(per_class)])
    cells = {(methods.get(m).title("\n"), f"w = {w:g}"): samples[m, w][pick] for m in METHODS for w in ws}
    _tiled(cells, os.path.join(out_dir, "guidance_grid.png"), per_class,
           f"DDPM-{STEPS} samples of the models trained on the tiny images,\nby guidance method (rows) and "
           f"strength w (columns); {per_class} per class", images.CLASS_NAMES)
    cells = {(f'"{caption}"\n{RULE_NAMES[rule]}', f"s = {s:g}"): x[:8]
             for (caption, rule, s), x in caption_samples.items()}
    _tiled(cells, os.path.join(out_dir, "captions.png"), 4,
           f"DDPM-{STEPS} samples of the unconditional model under CLIP guidance toward a caption (rows: the caption "
           "and the CLIP rule),\nby scale s (columns; s = 0 is unguided), from the same noise in every cell")


def _tiled(cells, path, ncols, title, line_labels=()):
    """One image grid of ncols columns (TILE_INCHES an image) per cell {(row label, column label):
    images}, rows and columns in the order they first occur, labels on the left and on top in
    normal text size, ``line_labels`` (one per line of images in a cell) right of the last column."""
    from matplotlib.figure import Figure

    rows, cols = list(dict.fromkeys(r for r, _ in cells)), list(dict.fromkeys(c for _, c in cells))
    lines = max(-(-len(x) // ncols) for x in cells.values())  # lines of images in the fullest cell
    cell_w, cell_h, gap = ncols * TILE_INCHES, lines * TILE_INCHES, 0.15
    left = 0.2 + CHAR_INCHES * max(len(part) for r in rows for part in r.split("\n"))
    right = 0.2 + CHAR_INCHES * max((len(name) for name in line_labels), default=0)
    top = 0.4 + 0.2 * (title.count("\n") + 1)
    width = left + len(cols) * cell_w + (len(cols) - 1) * gap + right
    height = top + len(rows) * cell_h + (len(rows) - 1) * gap + 0.1
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(len(rows), len(cols), squeeze=False, gridspec_kw={
        "left": left / width, "right": 1 - right / width, "top": 1 - top / height, "bottom": 0.1 / height,
        "wspace": gap / cell_w, "hspace": gap / cell_h})
    for (row, col), x in cells.items():
        i, j = rows.index(row), cols.index(col)
        plot.image_grid(axes[i, j], x, ncols=ncols)
        if i == 0:
            axes[i, j].set_title(col)
        if j == 0:
            axes[i, j].text(-0.04, 0.5, row, transform=axes[i, j].transAxes, ha="right", va="center")
        for k, name in enumerate(line_labels if j == len(cols) - 1 else ()):  # images.SIZE + 1 pixels a line
            h = images.SIZE
            axes[i, j].text(ncols * (h + 1), k * (h + 1) + (h - 1) / 2, name, ha="left", va="center")
    fig.suptitle(title, y=1 - 0.1 / height, va="top")
    save_figure(fig, path)
