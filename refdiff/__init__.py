"""refdiff: a NumPy-only reference implementation of guided diffusion, checked against closed forms.

Modules (docs/README.md maps each equation to its function):
schedule (noise schedules, timestep spacing), process (forward process, posterior, eps/x0/score/v
conversions), oracle (the exact Gaussian-mixture oracle), samplers (DDPM, DDIM), metrics
(two-sample test, per-class moments, learned models against the oracle), nn and train (MLP
denoisers and noisy classifiers, Adam), checkpoint (.npz without pickle), guidance (classifier
and classifier-free guidance), bench and cli (the ``refdiff`` command), labels and arrays (input
checks).
"""
__version__ = "0.1.0"
