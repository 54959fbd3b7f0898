"""refdiff: a NumPy-only reference implementation of guided diffusion, checked against closed forms.

Modules by layer (docs/architecture.md says what each may import; docs/README.md maps every
equation to its function):

core            arrays (input checks, dtypes), labels (labels, the null label, captions),
                schedule (noise schedules, timestep spacing, continuous time), process (forward
                process, posterior, eps/x0/score/v conversions), npz (.npz files and checkpoint
                entries), runtime (BLAS threads, malloc settings)
exact models    oracle (the Gaussian-mixture oracle); the toy_data package (2D sets, tiny
                images, their captions)
learned models  nn (MLP denoisers and classifiers), train (losses, Adam), clip (a toy CLIP),
                latent (autoencoder, latent denoiser), checkpoint (the file format and its kinds)
sampling        samplers (DDPM, DDIM, the probability-flow ODE), guidance (the guidance rules),
                methods (the registry of guidance methods by name), inverse (guidance for a
                linear observation: exact likelihood, DPS, reconstruction guidance), tilted
                (sequential Monte Carlo for the tilted density)
analysis        metrics (two-sample test, moments, fidelity, learned against exact), likelihood
                (exact log-likelihood by the ODE), theory and theory_mixture (what guidance
                samples, in closed form), sweep (guidance over a sweep of strengths), verify
                (the identities, checked on fresh inputs)
apps            plot (figures), demo and demo_images (refdiff demo), bench (refdiff bench),
                datasets (what --data names), cli (the refdiff command)
"""
__version__ = "0.1.0"
