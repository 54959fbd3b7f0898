"""Plots: vector fields, sample scatters, trajectories, image grids and the fidelity-diversity
curve (docs/architecture.md, "apps").

Every function draws on an ``ax`` (``scale_sweep_grid`` on a ``fig``) that the caller made, and
returns it; nothing here creates a figure, picks a backend or shows a window, so all of it runs
under Agg. The functions compute nothing the library does not expose: a field is the caller's
``eps_fn`` evaluated on a grid and turned into a score by ``process.eps_to_score`` (C3), a density
is ``GaussianMixture.log_prob_noised`` (O1), and the fidelity-diversity numbers come from
``sweep.scale_sweep`` (M7, M8). A label has the same colour in every plot (``label_colors``); a
guidance method is named by its registry entry (``refdiff.methods``, ``Method.title``).
"""
import math

import matplotlib
import numpy as np

from . import methods as registry
from .arrays import as_count, as_int_batch, as_points, as_real, as_timesteps
from .process import eps_to_score

FIELDS = ("score", "eps")
KINDS = ("quiver", "stream")


def label_colors(num_labels):
    """One fixed RGBA colour per label, from matplotlib's "tab10", cycling for more than 10 labels.

    Label k's colour does not depend on num_labels, so plots of different label counts agree.

    Parameters
    ----------
    num_labels : int >= 1, K

    Returns
    -------
    colors : float array (K, 4), RGBA in [0, 1]
    """
    K = as_count(num_labels, "num_labels", low=1)
    base = matplotlib.colors.to_rgba_array(matplotlib.colormaps["tab10"].colors)  # (10, 4)
    return base[np.arange(K) % len(base)]


def vector_field(ax, field_fn, sched, t, lim=3.0, n=21, what="score", kind="quiver", density=None,
                 y=None, levels=8, normalize=False):
    """The score (C3) or the eps of ``field_fn`` at timestep t on an n x n grid over [-lim, lim]^2.

    For a guided eps_fn the score is the guided score. With ``density`` the noised log-density
    (O1) at alpha_bar_t is drawn as contours under the arrows.

    Parameters
    ----------
    ax : matplotlib Axes; sched : Schedule; t : int in 1..sched.T
    field_fn : callable (x (M, 2), t (M,) ints) -> eps (M, 2), an eps_fn (guided or not)
    lim : float > 0; n : int >= 2, grid points per side (M = n * n)
    what : "score" (eps_to_score, eq. (C3)) or "eps" (the raw prediction)
    kind : "quiver" (ax.quiver, one arrow per grid point) or "stream" (ax.streamplot)
    density : GaussianMixture or None; y : None (the marginal q_t) or an int label (q_t( . | y))
    levels : int >= 1, the number of contour levels asked of ax.contour
    normalize : bool; with kind "quiver", draw every arrow at unit length and colour it by log10 of
        its length. Far from the data the score grows like |x| / (1 - alpha_bar), so plain arrows
        near the modes shrink to dots; normalised ones show the direction everywhere.

    Returns ax.
    """
    if what not in FIELDS:
        raise ValueError(f"what must be one of {FIELDS}, got {what!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if y is not None and density is None:
        raise ValueError(f"y={y!r} selects the class of density's contours; pass density too")
    t = _one_timestep(t, sched)
    lim, n, levels = as_real(lim, "lim", above=0), as_count(n, "n", low=2), as_count(levels, "levels", low=1)
    X, Y, U, V = field_on_grid(field_fn, sched, t, lim, n, what)
    if density is not None:
        grid = np.stack([X.ravel(), Y.ravel()], axis=1)
        log_q = density.log_prob_noised(grid, sched.alpha_bar[t], y)  # (M,), eq. (O1)
        ax.contour(X, Y, log_q.reshape(n, n), levels=levels, colors="0.6", linewidths=0.8, linestyles="solid")
    _arrows(ax, X, Y, U, V, kind, normalize)
    ax.set_title(f"t = {t}")
    return _square(ax, lim)


def _arrows(ax, X, Y, U, V, kind, normalize):
    """The field (U, V) at the grid (X, Y) as arrows ("quiver"; unit ones coloured by log10 of the
    length with ``normalize``) or as streamlines ("stream")."""
    if kind == "quiver" and normalize:
        length = np.hypot(U, V)
        unit = np.where(length > 0, length, 1.0) / (0.8 * (X[0, 1] - X[0, 0]))  # 0.8 grid steps long
        ax.quiver(X, Y, U / unit, V / unit, np.log10(np.maximum(length, 1e-300)), angles="xy",
                  scale_units="xy", scale=1.0, pivot="mid", cmap="viridis")
    elif kind == "quiver":
        ax.quiver(X, Y, U, V, angles="xy", color="0.15")
    else:
        ax.streamplot(X, Y, U, V, color="0.15", linewidth=0.8, density=1.0)


def field_on_grid(field_fn, sched, t, lim, n, what):
    """The score (C3) or the eps of ``field_fn`` at integer timestep t on the n x n grid over [-lim, lim]^2.

    Returns (X, Y, U, V), each (n, n): the grid's coordinates (X[i, j] = xs[j], Y[i, j] = xs[i] for
    xs = linspace(-lim, lim, n)) and the field's two components there.
    """
    t, lim, n = _one_timestep(t, sched), as_real(lim, "lim"), as_count(n, "n", low=1)
    xs = np.linspace(-lim, lim, n)
    X, Y = np.meshgrid(xs, xs)  # (n, n) each
    grid = np.stack([X.ravel(), Y.ravel()], axis=1)  # (M, 2), row-major over (i, j)
    tt = np.full(len(grid), t)
    out = np.asarray(field_fn(grid, tt))
    if out.shape != grid.shape:
        raise ValueError(f"field_fn must return an array of shape {grid.shape}, got shape {out.shape}")
    out = as_points(out, "field_fn's output")
    field = eps_to_score(sched, tt, out) if what == "score" else out  # (M, 2)
    return X, Y, field[:, 0].reshape(n, n), field[:, 1].reshape(n, n)


def scale_sweep_grid(fig, samples, y, methods, ws, lim=3.0, s=2):
    """Scatters of guided samples, one row per method and one column per strength w, coloured by
    the requested labels: Ho & Salimans (2022), Fig. 2, from samples of ``sweep.scale_sweep``.

    Parameters
    ----------
    fig : matplotlib Figure (subplots are added to it)
    samples : dict {(method, w): array (N, 2)}, as ``scale_sweep`` returns
    y : int array (N,), the requested labels (>= 0)
    methods : sequence of names of registered guidance methods (``refdiff.methods``); ws : sequence of w
    lim : float > 0, the axes limits [-lim, lim]; s : marker size

    Returns
    -------
    axes : object array (len(methods), len(ws)) of Axes
    """
    methods, ws = list(methods), list(ws)
    _check_sweep(samples, methods, ws)
    lim = as_real(lim, "lim", above=0)
    as_real(s, "s", low=0)
    first = as_points(samples[methods[0], ws[0]], f"samples[{methods[0]!r}, {ws[0]!r}]", dim=2)
    colors = _colors_of(y, len(first))  # (N, 4)
    axes = fig.subplots(len(methods), len(ws), squeeze=False, sharex=True, sharey=True)
    for i, method in enumerate(methods):
        for j, w in enumerate(ws):
            x = as_points(samples[method, w], f"samples[{method!r}, {w!r}]", dim=2)
            if len(x) != len(colors):
                raise ValueError(f"samples[{method!r}, {w!r}] must have {len(colors)} rows (one per label in y), "
                                 f"got {len(x)}")
            ax = axes[i, j]
            ax.scatter(x[:, 0], x[:, 1], s=s, c=colors, linewidths=0)
            _square(ax, lim)
            if i == 0:
                ax.set_title(f"w = {w:g}")
            if j == 0:
                ax.set_ylabel(registry.get(method).title())
    return axes


def _check_sweep(samples, methods, ws):
    """Raise ValueError unless methods are registered, ws is non-empty and samples has every (method, w)."""
    bad = [m for m in methods if m not in registry.METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty sequence of {tuple(registry.METHODS)}, got {methods}")
    if not ws:
        raise ValueError("ws must hold at least one strength w")
    missing = [(m, w) for m in methods for w in ws if (m, w) not in samples]
    if missing:
        raise ValueError(f"samples has no entry for (method, w) = {missing[0]}")


def trajectories(ax, path, y=None, every=1, max_paths=50):
    """Sample paths as lines, x_T marked by a small dot and x_0 by a larger one.

    Draw a ``vector_field`` on the same ax first to see the paths follow the field.

    Parameters
    ----------
    ax : matplotlib Axes
    path : array (steps + 1, N, 2), x_T first (``ddpm``/``ddim`` with ``return_path=True``)
    y : None or int array (N,) of labels (>= 0), colouring each path by label_colors
    every : int >= 1, draw every ``every``-th state (the last state is always drawn)
    max_paths : int >= 1, draw the first min(N, max_paths) paths

    Returns
    -------
    ax
    """
    path = np.asarray(path)
    if path.ndim != 3 or path.shape[0] < 1 or path.shape[2] != 2:
        raise ValueError(f"path must have shape (steps + 1, N, 2), got shape {path.shape}")
    as_points(path.reshape(-1, 2), "path")  # numeric and finite
    every, max_paths = as_count(every, "every", low=1), as_count(max_paths, "max_paths", low=1)
    m = min(path.shape[1], max_paths)
    colors = np.tile(matplotlib.colors.to_rgba("0.3"), (path.shape[1], 1)) if y is None \
        else _colors_of(y, path.shape[1])
    keep = np.unique(np.append(np.arange(0, path.shape[0], every), path.shape[0] - 1))
    for i in range(m):
        ax.plot(path[keep, i, 0], path[keep, i, 1], color=colors[i], linewidth=0.8, alpha=0.7)
    ax.scatter(path[0, :m, 0], path[0, :m, 1], s=4, c=colors[:m], linewidths=0, zorder=3)   # x_T
    ax.scatter(path[-1, :m, 0], path[-1, :m, 1], s=16, c=colors[:m], linewidths=0, zorder=3)  # x_0
    return ax


def image_grid(ax, x, ncols=10, vmin=-1.0, vmax=1.0):
    """Flattened square images tiled row by row into one picture, one imshow artist, axes off.

    Tiles are separated by 1-pixel lines; the separators and the empty cells after the last image
    are NaN, drawn white. Pixel values are clipped to [vmin, vmax] for display.

    Parameters
    ----------
    ax : matplotlib Axes
    x : array (N, P), N >= 1, P = h * h (tiny images: P = 64, pixels in [-1, 1])
    ncols : int >= 1, images per row (the grid has min(N, ncols) columns, ceil(N / ncols) rows)
    vmin, vmax : finite floats, vmin < vmax

    Returns
    -------
    ax ; the picture has shape (rows * (h + 1) - 1, cols * (h + 1) - 1)
    """
    x = as_points(x, "x")
    h = math.isqrt(x.shape[1])
    if h * h != x.shape[1] or len(x) == 0:
        raise ValueError(f"x must have shape (N, h * h) with N >= 1, got shape {x.shape}")
    ncols = as_count(ncols, "ncols", low=1)
    vmin, vmax = as_real(vmin, "vmin"), as_real(vmax, "vmax")
    if not vmin < vmax:
        raise ValueError(f"vmin and vmax must be finite with vmin < vmax, got {vmin}, {vmax}")
    rows, cols = -(-len(x) // ncols), min(len(x), ncols)
    canvas = np.full((rows * (h + 1) - 1, cols * (h + 1) - 1), np.nan)
    for k, img in enumerate(np.clip(x, vmin, vmax).reshape(-1, h, h)):
        r, c = divmod(k, ncols)
        canvas[r * (h + 1):r * (h + 1) + h, c * (h + 1):c * (h + 1) + h] = img
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    ax.imshow(canvas, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    return ax


def fidelity_diversity(ax, rows):
    """The fidelity-diversity trade-off: per method, (spread (M8), fidelity (M7)) ordered by w.

    Each point is annotated "w=..."; error bars are fidelity_se where every row of the method has
    one. One ErrorbarContainer per method (its data line is ``container.lines[0]``).

    Parameters
    ----------
    ax : matplotlib Axes
    rows : list of dicts with "method", "w", "spread", "fidelity" (and optionally "fidelity_se"),
        as ``sweep.scale_sweep`` returns with ``sweep.mixture_measures``

    Returns
    -------
    ax
    """
    rows = list(rows)
    if not rows:
        raise ValueError("rows must hold at least one row")
    for r in rows:
        missing = [k for k in ("method", "w", "spread", "fidelity") if k not in r]
        if missing:
            raise ValueError(f"rows must have keys method, w, spread, fidelity; a row lacks {missing}")
    styles = [("o", "-", (4, 4)), ("s", "--", (4, -10))]  # marker, line, label offset: both stay visible
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):  # first-seen order
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["w"])
        spread = np.array([r["spread"] for r in mine], dtype=float)
        fid = np.array([r["fidelity"] for r in mine], dtype=float)
        se = [r["fidelity_se"] for r in mine] if all("fidelity_se" in r for r in mine) else None
        marker, line, offset = styles[i % len(styles)]
        ax.errorbar(spread, fid, yerr=se, marker=marker, linestyle=line, markersize=4, capsize=0,
                    label=registry.get(method).title() if method in registry.METHODS else str(method))
        for r, sx, fy in zip(mine, spread, fid):
            ax.annotate(f"w={r['w']:g}", (sx, fy), xytext=offset, textcoords="offset points", fontsize=7)
    ax.set_xlabel("per-class spread (M8)")
    ax.set_ylabel("mean exact p(y | x0) (M7)")
    ax.legend()
    return ax


def _one_timestep(t, sched):
    """t as an int, raising ValueError unless it is one integer timestep in 1..T (not an array of one)."""
    if np.ndim(t) != 0:
        raise ValueError(f"t must be an integer timestep in 1..{sched.T}, got {t!r}")
    return int(as_timesteps(t, 1, sched.T)[0])


def _colors_of(y, n):
    """label_colors of integer labels y (>= 0), one RGBA row per point: shape (n, 4)."""
    y = as_int_batch(y, n, "y", "integer labels >= 0")
    if n and y.min() < 0:
        raise ValueError(f"y must be labels >= 0, got {y.min()}")
    return label_colors(int(y.max()) + 1 if n else 1)[y]


def _square(ax, lim):
    """Equal aspect and limits [-lim, lim] on both axes; returns ax."""
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    return ax
