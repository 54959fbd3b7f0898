"""Plots: vector fields, sample scatters, trajectories, image grids and the fidelity-diversity
curve (docs/architecture.md, "apps").

Every function draws on an ``ax`` (``scale_sweep_grid`` on a ``fig``) that the caller made, and
returns it; nothing here creates a figure, picks a backend or shows a window, so all of it runs
under Agg. The functions compute nothing the library does not expose: a field is the caller's
``eps_fn`` evaluated on a grid and turned into a score by ``process.eps_to_score`` (C3), a density
is ``GaussianMixture.log_prob_noised`` (O1), and the fidelity-diversity numbers come from
``sweep.scale_sweep`` (M7, M8). A label has the same colour in every plot (``label_colors``; grey
for ``NULL_LABEL``), explained by a legend (``label_handles``); a guidance method is named by its
registry entry (``refdiff.methods``, ``Method.title``) and its strength by ``CONVENTIONS``. Every
figure stands alone: axis labels, a legend for colours and markers, a colourbar for a colour scale.
"""
import math

import matplotlib
import numpy as np
from matplotlib.lines import Line2D

from . import methods as registry
from .arrays import as_count, as_int_batch, as_points, as_real, as_timesteps
from .labels import NULL_LABEL
from .process import eps_to_score

FIELDS = ("score", "eps")
KINDS = ("quiver", "stream")
# What a strength means in each convention of the registry (docs/guidance.md, (G3), (G5), (G6)).
CONVENTIONS = {"w": "w as in CFG: (1 + w) eps(x, y) - w eps(x) (G5); diffusers' guidance_scale = 1 + w",
               "s": "s: score + s grad log p(y | x_t) (G3); on exact models CFG with w = s - 1"}
# The measures of a sweep's rows (sweep.mixture_measures, docs/metrics.md) as axis labels.
MEASURES = {"fidelity": "mean exact p(y | x0) (M7)", "spread": "per-class spread (M8)",
            "energy": "energy distance to p(x | y) (M1)"}
COORDINATES = ("$x_1$", "$x_2$")  # the axis labels of 2D points
NULL_COLOR = "0.55"  # unconditional rows
CONTOUR_COLOR = "0.6"  # the contours of a density under a field
_LABELS_OR_NULL = f"integer labels >= 0, or NULL_LABEL ({NULL_LABEL}) for an unconditional row"
MARKER_SIZE = 4  # points of a scatter of samples
EDGE_MARKER = "x"  # a sample beyond the frame, drawn at its edge
DECADES = 3  # the colour scale of a field's log10 length spans at most this many decades, down from its top
FLAT = 0.01  # a fidelity spanning less than this over a sweep is called flat
STYLES = (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--"), ("X", ":"), ("*", "-."))  # per
# method: marker, line style (eight methods apart)
LEGEND_COLUMNS = 4  # the most entries a legend above the axes puts in a row
LEGEND_RIGHT = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0}  # beside the axes
TITLE_PAD = 10  # points between an axes and a title wider than it: clears the top y tick label
LEGEND_ABOVE = {"loc": "lower center", "bbox_to_anchor": (0.5, 1.02), "borderaxespad": 0.0}  # above the axes


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


def label_handles(labels):
    """Legend entries for labels: a dot in each label's colour named "y = k", a grey one named
    "unconditional" for NULL_LABEL.

    Parameters
    ----------
    labels : sequence of ints, each >= 0 or NULL_LABEL, in the order of the legend

    Returns
    -------
    handles : list of matplotlib Line2D, one per label
    """
    labels = np.asarray(labels)
    colors = _colors_of(labels, len(labels), allow_null=True)  # (K, 4)
    return [Line2D([], [], linestyle="", marker="o", color=c, label="unconditional" if k == NULL_LABEL else f"y = {k}")
            for k, c in zip(labels.tolist(), colors)]


def vector_field(ax, field_fn, sched, t, lim=3.0, n=21, what="score", kind="quiver", density=None,
                 y=None, levels=8, normalize=False):
    """The score (C3) or the eps of ``field_fn`` at timestep t on an n x n grid over [-lim, lim]^2.

    For a guided eps_fn the score is the guided score. With ``density`` the noised log-density
    (O1) at alpha_bar_t is drawn as contours under the arrows, named in the x label. The title is
    "<what>, t = <t>"; a caller that knows what field_fn is replaces it with a title saying so.

    Parameters
    ----------
    ax : matplotlib Axes; sched : Schedule; t : int in 1..sched.T
    field_fn : callable (x (M, 2), t (M,) ints) -> eps (M, 2), an eps_fn (guided or not)
    lim : float > 0; n : int >= 2, grid points per side (M = n * n)
    what : "score" (eps_to_score, eq. (C3)) or "eps" (the raw prediction)
    kind : "quiver" (ax.quiver, one arrow per grid point) or "stream" (ax.streamplot)
    density : GaussianMixture or None; y : None (the marginal q_t) or an int label (q_t( . | y))
    levels : int >= 1, the number of contour levels asked of ax.contour
    normalize : bool; colour the arrows or streamlines by log10 of the field's length (at most
        DECADES decades down from its largest), with a colourbar beside ax, and draw quiver arrows at
        unit length. Far from the data the score grows like |x| / (1 - alpha_bar), so plain arrows
        near the modes shrink to dots.

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
    _coordinates(ax)
    if density is not None:
        _contours(ax, X, Y, density.log_prob_noised(np.stack([X.ravel(), Y.ravel()], axis=1), sched.alpha_bar[t], y),
                  y, levels)  # log q_t (M,), eq. (O1)
    _arrows(ax, X, Y, U, V, kind, normalize, what)
    ax.set_title(f"{what}, t = {t}", pad=TITLE_PAD)
    return _square(ax, lim)


def _contours(ax, X, Y, log_q, y, levels):
    """Light grey contours of log q_t (M,) on the grid (X, Y), named by a second line of the x label:
    off the arrows, which a legend inside the axes would hide, and laid out with the label."""
    ax.contour(X, Y, log_q.reshape(X.shape), levels=levels, colors=CONTOUR_COLOR, linewidths=0.8,
               linestyles="solid")
    given = "" if y is None else f" | y = {y}"
    ax.set_xlabel(f"{COORDINATES[0]}\nlight grey lines: contours of the exact log q_t(x{given})")


def _arrows(ax, X, Y, U, V, kind, normalize, what):
    """The field (U, V) at the grid (X, Y) as arrows ("quiver") or as streamlines ("stream"); with
    ``normalize`` coloured by log10 of the length, with a colourbar, quiver arrows at unit length."""
    length = np.hypot(U, V)  # (n, n)
    log_length = np.log10(np.maximum(length, 1e-300))
    if kind == "quiver" and normalize:
        unit = np.where(length > 0, length, 1.0) / (0.8 * (X[0, 1] - X[0, 0]))  # 0.8 grid steps long
        drawn = ax.quiver(X, Y, U / unit, V / unit, log_length, angles="xy", scale_units="xy", scale=1.0,
                          pivot="mid", cmap="viridis")
    elif kind == "quiver":
        drawn = ax.quiver(X, Y, U, V, angles="xy", color="0.15")
    else:
        drawn = ax.streamplot(X, Y, U, V, color=log_length if normalize else "0.15", cmap="viridis", linewidth=0.8,
                              density=1.0).lines
    if normalize:
        top = log_length.max()
        drawn.set_clim(max(log_length.min(), top - DECADES), top)  # a zero of the field would stretch it
        unit_note = ", arrows drawn at unit length" if kind == "quiver" else ""
        ax.figure.colorbar(drawn, ax=ax, label=f"log10 |{what}| (colour{unit_note})",
                           extend="min" if log_length.min() < top - DECADES else "neither")


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

    Rows are named by their method (the first column's y label), columns by w (the first row's
    titles); the coordinates label the bottom row and the last column, and a legend below the
    grid names the label colours. A sample beyond [-lim, lim]^2 is drawn again at the frame's
    edge as an EDGE_MARKER, which the legend then explains.

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
    beyond = False  # any sample beyond the frame
    for (i, method), (j, w) in ((row, col) for row in enumerate(methods) for col in enumerate(ws)):
        x = as_points(samples[method, w], f"samples[{method!r}, {w!r}]", dim=2)
        if len(x) != len(colors):
            raise ValueError(f"samples[{method!r}, {w!r}] must have {len(colors)} rows (one per label in y), "
                             f"got {len(x)}")
        beyond |= _scatter_framed(axes[i, j], x, colors, lim, s)
    _name_grid(axes, methods, ws)
    edge = [Line2D([], [], linestyle="", marker=EDGE_MARKER, color="0.3", label="beyond the frame,\ndrawn at its edge")]
    handles = label_handles(np.unique(y)) + edge * beyond
    fig.legend(handles=handles, title="requested label", loc="outside lower center", ncol=len(handles))
    return axes


def _name_grid(axes, methods, ws):
    """A sweep grid's labels: w above the first row, the method left of each row, the coordinates
    below the bottom row and right of the last column."""
    for (i, method), (j, w) in ((row, col) for row in enumerate(methods) for col in enumerate(ws)):
        axes[i, j].set_title(f"w = {w:g}" if i == 0 else "")
        axes[i, j].set_xlabel(COORDINATES[0] if i == len(methods) - 1 else "")
    for i, method in enumerate(methods):
        axes[i, 0].set_ylabel(registry.get(method).title() + ("" if len(ws) > 1 else f", {COORDINATES[1]}"))
        if len(ws) > 1:
            axes[i, -1].yaxis.set_label_position("right")
            axes[i, -1].set_ylabel(COORDINATES[1])


def _scatter_framed(ax, x, colors, lim, s):
    """x (N, 2) in its colours (N, 4) on ax with limits [-lim, lim]^2, and the points beyond them
    again at their nearest point of the frame, as EDGE_MARKER; returns whether there were any."""
    _square(ax, lim)
    ax.scatter(x[:, 0], x[:, 1], s=s, c=colors, linewidths=0)
    beyond = np.any(np.abs(x) > lim, axis=1)  # (N,)
    if beyond.any():
        edge = np.clip(x[beyond], -lim, lim)
        ax.scatter(edge[:, 0], edge[:, 1], s=4 * s + 4, c=colors[beyond], marker=EDGE_MARKER, linewidths=0.8,
                   clip_on=False, zorder=3)
    return bool(beyond.any())


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
    """Sample paths as lines, x_T marked by a small ring and x_0 by a larger dot, both named in a
    legend beside the axes with the label colours.

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
    ax.scatter(path[0, :m, 0], path[0, :m, 1], s=12, facecolors="none", edgecolors=colors[:m], linewidths=0.8,
               zorder=3)  # x_T
    ax.scatter(path[-1, :m, 0], path[-1, :m, 1], s=25, c=colors[:m], linewidths=0, zorder=3)  # x_0
    ends = [Line2D([], [], linestyle="", marker="o", markersize=math.sqrt(size), color="0.3", markerfacecolor=face,
                   markeredgewidth=0.8 if face == "none" else 0, label=name)
            for size, face, name in ((12, "none", "x_T, the start (noise)"), (25, "0.3", "x_0, the end (sample)"))]
    labels = [] if y is None else label_handles(np.unique(np.asarray(y)[:m]))
    ax.legend(handles=labels + ends, title=None if y is None else "requested label", **LEGEND_RIGHT)
    _coordinates(ax)
    ax.set_aspect("equal", adjustable="datalim")
    return ax


def scatter_samples(ax, x, y=None):
    """Samples as points in the colours of their labels, a legend beside the axes naming the
    labels, the coordinates as axis labels, equal aspect and limits from the data.

    Parameters
    ----------
    ax : matplotlib Axes
    x : array (N, 2), N >= 1
    y : None (every row unconditional) or int array (N,) of labels >= 0, NULL_LABEL marking an
        unconditional row (as ``refdiff sample`` writes them)

    Returns
    -------
    ax
    """
    x = as_points(x, "x", dim=2)
    if len(x) == 0:
        raise ValueError("x must hold at least one point, got shape (0, 2)")
    y = np.full(len(x), NULL_LABEL) if y is None else as_int_batch(y, len(x), "y", _LABELS_OR_NULL)
    ax.scatter(x[:, 0], x[:, 1], s=MARKER_SIZE, c=_colors_of(y, len(x), allow_null=True), linewidths=0)
    ax.legend(handles=label_handles(np.unique(y)), title="requested label", **LEGEND_RIGHT)
    _coordinates(ax)
    ax.set_aspect("equal", adjustable="datalim")
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

    Each point is coloured by its w, explained by a colourbar below ax; the methods are told apart
    by marker and line style, in a legend above ax. Error bars are fidelity_se where every row of
    the method has one. One ErrorbarContainer per method (its data line is
    ``container.lines[0]``). When the fidelity spans less than FLAT over the rows, the y limits
    are 2 FLAT wide with the points in the upper half, and a note in the lower half says the
    fidelity is flat and why (the spread moves instead).

    Parameters
    ----------
    ax : matplotlib Axes
    rows : list of dicts with "method", "w", "spread", "fidelity" (and optionally "fidelity_se"),
        as ``sweep.scale_sweep`` returns with ``sweep.mixture_measures``

    Returns
    -------
    ax
    """
    rows = _check_rows(rows, ("spread", "fidelity"))
    points = _curves(ax, rows, "spread", "fidelity")
    ws = sorted({float(r["w"]) for r in rows})
    bar = ax.figure.colorbar(points, ax=ax, location="bottom", ticks=range(len(ws)), label="guidance strength w",
                             shrink=0.8, aspect=40)
    bar.ax.set_xticklabels([f"{w:g}" for w in ws])
    ax.set_xlabel(MEASURES["spread"])
    ax.set_ylabel(MEASURES["fidelity"])
    ax.ticklabel_format(axis="y", useOffset=False)
    fid = [float(r["fidelity"]) for r in rows]
    if max(fid) - min(fid) < FLAT:
        ax.set_ylim(max(fid) - 2 * FLAT, max(fid) + FLAT / 5)
        ax.text(0.5, 0.25, f"flat: mean p(y | x0) >= {math.floor(min(fid) * 1e4) / 1e4:.4f} at every w.\n"
                "Almost every sample already lies where its class\ndominates; guidance moves the spread.",
                transform=ax.transAxes, ha="center", va="center")
    ax.legend(**LEGEND_ABOVE, ncol=min(len(ax.containers), LEGEND_COLUMNS))
    return ax


def measure_by_strength(ax, rows, key):
    """One measure of a sweep's rows against the strength w, one line per method, in the markers,
    line styles and w colours of ``fidelity_diversity``, with a legend above ax.

    Parameters
    ----------
    ax : matplotlib Axes
    rows : list of dicts with "method", "w" and ``key``, as ``sweep.scale_sweep`` returns
    key : the measure on the y axis, one of MEASURES ("fidelity", "spread", "energy")

    Returns
    -------
    ax
    """
    if key not in MEASURES:
        raise ValueError(f"key must be one of {tuple(MEASURES)}, got {key!r}")
    _curves(ax, _check_rows(rows, (key,)), "w", key)
    ax.set_xlabel("guidance strength w")
    ax.set_ylabel(MEASURES[key])
    ax.legend(**LEGEND_ABOVE, ncol=min(len(ax.containers), LEGEND_COLUMNS))
    return ax


def _curves(ax, rows, x_key, y_key):
    """Per method (in first-seen order), the rows' (x_key, y_key) ordered by w as a grey line with
    error bars (y_key + "_se", where every row of the method has one) and markers coloured by the
    index of w among all rows' strengths; returns the last method's markers (a mappable)."""
    ws = sorted({float(r["w"]) for r in rows})
    colours = matplotlib.colors.ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(ws))))
    norm = matplotlib.colors.BoundaryNorm(np.arange(len(ws) + 1) - 0.5, len(ws))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["w"])
        x, y = (np.array([r[key] for r in mine], dtype=float) for key in (x_key, y_key))
        se = [r[y_key + "_se"] for r in mine] if all(y_key + "_se" in r for r in mine) else None
        marker, line = STYLES[i % len(STYLES)]
        ax.errorbar(x, y, yerr=se, marker=marker, linestyle=line, color="0.35", markerfacecolor="white", markersize=7,
                    capsize=0, label=registry.get(method).title() if method in registry.METHODS else str(method))
        points = ax.scatter(x, y, c=[ws.index(float(r["w"])) for r in mine], cmap=colours, norm=norm, marker=marker,
                            s=36, edgecolors="0.2", linewidths=0.5, zorder=3)
    return points


def _check_rows(rows, keys):
    """rows as a list, raising ValueError unless it is non-empty and every row has method, w and keys."""
    rows = list(rows)
    if not rows:
        raise ValueError("rows must hold at least one row")
    for r in rows:
        missing = [k for k in ("method", "w", *keys) if k not in r]
        if missing:
            raise ValueError(f"rows must have keys method, w, {', '.join(keys)}; a row lacks {missing}")
    return rows


def _one_timestep(t, sched):
    """t as an int, raising ValueError unless it is one integer timestep in 1..T (not an array of one)."""
    if np.ndim(t) != 0:
        raise ValueError(f"t must be an integer timestep in 1..{sched.T}, got {t!r}")
    return int(as_timesteps(t, 1, sched.T)[0])



def _colors_of(y, n, allow_null=False):
    """label_colors of integer labels y (>= 0; NULL_LABEL too, in grey, with ``allow_null``), one
    RGBA row per point: shape (n, 4)."""
    y = as_int_batch(y, n, "y", _LABELS_OR_NULL if allow_null else "integer labels >= 0")
    low = NULL_LABEL if allow_null else 0
    if n and y.min() < low:
        raise ValueError(f"y must be {_LABELS_OR_NULL if allow_null else 'labels >= 0'}, got {y.min()}")
    colors = label_colors(max(int(y.max()) + 1, 1) if n else 1)[np.maximum(y, 0)]  # (n, 4)
    colors[y == NULL_LABEL] = matplotlib.colors.to_rgba(NULL_COLOR)
    return colors


def _coordinates(ax):
    """The coordinates of 2D points as ax's axis labels."""
    ax.set_xlabel(COORDINATES[0])
    ax.set_ylabel(COORDINATES[1])


def _square(ax, lim):
    """Equal aspect and limits [-lim, lim] on both axes; returns ax."""
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    return ax
