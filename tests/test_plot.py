"""Plots (refdiff/plot.py): the artists drawn carry the library's numbers. The quiver's arrows are
the oracle's exact score (C3, O2), the contours its noised density (O1), the scatters the sweep's
samples in their labels' colours, the fidelity-diversity lines the sweep's rows (M7, M8)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.contour import ContourSet  # noqa: E402
from matplotlib.quiver import Quiver  # noqa: E402

import toy_data  # noqa: E402
from refdiff import plot  # noqa: E402
from refdiff.guidance import classifier_free_guidance  # noqa: E402
from refdiff.samplers import ddim  # noqa: E402
from refdiff.schedule import Schedule  # noqa: E402
from refdiff.sweep import mixture_measures, scale_sweep  # noqa: E402
from toy_data import images  # noqa: E402

SCHED = Schedule.linear(1000)
MIX = toy_data.mixture("three_gaussians")
MODEL = MIX.eps_model(SCHED)
WS = (0.0, 1.0, 3.0)
METHODS = ("classifier", "cfg")  # the two methods these plots sweep (the demo's)


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


@pytest.fixture(scope="module")
def sweep():
    """A small CFG / classifier-guidance sweep on three_overlapping: 60 samples, DDIM-10."""
    mix = toy_data.mixture("three_overlapping")
    n = 60
    y, x_T = np.arange(n) % 3, np.random.default_rng(0).standard_normal((n, 2))
    rows, samples = scale_sweep({"denoiser": mix.eps_model(SCHED), "classifier": mix.classifier(SCHED)}, SCHED, y, WS, x_T,
                                mixture_measures(mix, np.random.default_rng(1)),
                                METHODS, sample=lambda f, x: ddim(f, SCHED, x, 10))
    return rows, samples, y


def grid(lim, n):
    xs = np.linspace(-lim, lim, n)
    X, Y = np.meshgrid(xs, xs)
    return np.stack([X.ravel(), Y.ravel()], axis=1)


def only(ax, cls):
    found = [c for c in ax.collections if isinstance(c, cls)]
    assert len(found) == 1, f"expected one {cls.__name__}, got {ax.collections}"
    return found[0]


def test_label_colors_are_distinct_up_to_ten_and_cycle_after():
    c10 = plot.label_colors(10)
    assert c10.shape == (10, 4) and np.all(c10[:, 3] == 1)
    assert len({tuple(c) for c in c10}) == 10
    c13 = plot.label_colors(13)
    np.testing.assert_array_equal(c13[:10], c10)  # label k's colour does not depend on K
    np.testing.assert_array_equal(c13[10:], c10[:3])
    np.testing.assert_array_equal(plot.label_colors(3), c10[:3])


@pytest.mark.parametrize("y", [None, 1])
def test_quiver_draws_the_exact_score(ax, y):
    """Arrows = eps_to_score(eps*) (C3) = the oracle's score (O2); round-off only (float64, a
    multiply by -sqrt(1 - a) and its inverse: a few ulp of each component)."""
    t, n, lim = 300, 7, 2.5
    plot.vector_field(ax, lambda x, tt: MODEL(x, tt, y), SCHED, t, lim=lim, n=n)
    q = only(ax, Quiver)
    pts = grid(lim, n)
    assert q.N == n * n
    np.testing.assert_allclose(q.XY, pts, rtol=0, atol=1e-15)
    want = MIX.score(pts, SCHED.alpha_bar[t], y)
    got = np.stack([q.U, q.V], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max(),
                               err_msg=f"quiver (U, V) {got[:3]} vs oracle score {want[:3]}")
    assert ax.get_title() == "score, t = 300"
    assert ax.get_xlim() == (-lim, lim) and ax.get_ylim() == (-lim, lim) and ax.get_aspect() == 1.0
    assert not any(isinstance(c, ContourSet) for c in ax.collections)


def test_quiver_of_eps_is_the_raw_prediction(ax):
    plot.vector_field(ax, MODEL, SCHED, 50, n=5, what="eps")
    q = only(ax, Quiver)
    np.testing.assert_array_equal(np.stack([q.U, q.V], axis=1), MODEL(grid(3.0, 5), 50))


@pytest.mark.parametrize("t", [100, 300])
def test_guided_field_points_toward_the_guided_class(ax, t):
    """CFG for class 0 with w = 3: near class 0's noised mean sqrt(a) mu_0 the arrows point at it,
    and near the other classes' means they point toward class 0 too (mean cosine > 0.9), where the
    unguided score points at its own class (mean cosine at most 0.8: 0.03 at t = 100, 0.79 at 300)."""
    a, n = SCHED.alpha_bar[t], 21

    def mean_cosines(field_fn):
        plot.vector_field(ax, field_fn, SCHED, t, n=n)
        q = ax.collections[-1]
        arrows, to0 = np.stack([q.U, q.V], axis=1), np.sqrt(a) * MIX.means[0] - q.XY
        cos = np.sum(arrows * to0, 1) / (np.linalg.norm(arrows, axis=1) * np.linalg.norm(to0, axis=1))
        near0 = np.linalg.norm(to0, axis=1) < 1.0
        near_other = np.min(np.linalg.norm(q.XY[:, None] - np.sqrt(a) * MIX.means[None, 1:], axis=2), 1) < 0.5
        assert near0.sum() > 20 and near_other.sum() > 10
        return cos[near0].mean(), cos[near_other].mean()

    guided0, guided_other = mean_cosines(classifier_free_guidance(MODEL, 0, 3.0))
    _, plain_other = mean_cosines(MODEL)
    assert guided0 > 0.5, guided0
    assert guided_other > 0.9 and plain_other < 0.8, (guided_other, plain_other)


@pytest.mark.parametrize("y", [None, 2])
def test_contours_are_the_noised_density(ax, y):
    """One ContourSet, under the arrows, whose data range is that of log q_t(x [| y]) (O1) on the grid."""
    t, n = 200, 9
    plot.vector_field(ax, MODEL, SCHED, t, n=n, density=MIX, y=y, levels=6)
    cs = only(ax, ContourSet)
    log_q = MIX.log_prob_noised(grid(3.0, n), SCHED.alpha_bar[t], y)
    assert (cs.zmin, cs.zmax) == (log_q.min(), log_q.max())
    assert 3 <= len(cs.levels) <= 8  # "about 6": ax.contour picks nice levels
    assert ax.collections.index(cs) < ax.collections.index(only(ax, Quiver))


def test_stream_kind_draws_streamlines(ax):
    plot.vector_field(ax, MODEL, SCHED, 400, n=9, kind="stream")
    assert not any(isinstance(c, Quiver) for c in ax.collections)
    lines = only(ax, LineCollection)
    assert len(lines.get_segments()) > 0 and len(ax.patches) > 0  # streamlines and their arrows


def test_scale_sweep_grid_scatters_each_run_in_its_labels_colours(sweep):
    _, samples, y = sweep
    fig = plt.figure()
    try:
        axes = plot.scale_sweep_grid(fig, samples, y, METHODS, WS)
        assert axes.shape == (len(METHODS), len(WS)) and len(fig.axes) == len(METHODS) * len(WS)
        want_colors = plot.label_colors(3)[y]
        for i, method in enumerate(METHODS):
            for j, w in enumerate(WS):
                pc = only(axes[i, j], PathCollection)
                np.testing.assert_array_equal(pc.get_offsets(), samples[method, w])
                np.testing.assert_array_equal(pc.get_facecolors(), want_colors)
        assert [a.get_title() for a in axes[0]] == ["w = 0", "w = 1", "w = 3"]
        assert [a.get_ylabel() for a in axes[:, 0]] == ["classifier guidance (s = 1 + w)", "CFG"]
    finally:
        plt.close(fig)


@pytest.mark.parametrize("n, max_paths, every", [(7, 5, 3), (3, 50, 1)])
def test_trajectories_draw_the_first_paths(ax, n, max_paths, every):
    x_T = np.random.default_rng(2).standard_normal((n, 2))
    y = np.arange(n) % 3
    _, path = ddim(lambda x, t: MODEL(x, t, y), SCHED, x_T, 10, return_path=True)  # (11, n, 2)
    plot.trajectories(ax, path, y=y, every=every, max_paths=max_paths)
    m = min(n, max_paths)
    assert len(ax.lines) == m
    keep = np.unique(np.append(np.arange(0, 11, every), 10))  # the last state is always drawn
    for i, line in enumerate(ax.lines):
        np.testing.assert_array_equal(line.get_xydata(), path[keep, i])
        np.testing.assert_array_equal(matplotlib.colors.to_rgba(line.get_color()), plot.label_colors(3)[y[i]])
    start, end = [c for c in ax.collections if isinstance(c, PathCollection)]
    np.testing.assert_array_equal(start.get_offsets(), path[0, :m])
    np.testing.assert_array_equal(end.get_offsets(), path[-1, :m])
    assert end.get_sizes()[0] > start.get_sizes()[0]


def test_trajectories_without_labels(ax):
    path = np.random.default_rng(3).standard_normal((4, 6, 2))
    plot.trajectories(ax, path, max_paths=2)
    assert len(ax.lines) == 2


def test_image_grid_tiles_each_image_in_its_place(ax):
    x = images.sample(23, np.random.default_rng(0))[0] * 1.5  # pixels beyond [-1, 1] to be clipped
    plot.image_grid(ax, x, ncols=10)
    assert len(ax.images) == 1 and not ax.axison
    canvas = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
    assert canvas.shape == (3 * 9 - 1, 10 * 9 - 1)  # rows * (8 + 1) - 1, cols * (8 + 1) - 1
    for k in range(23):
        r, c = divmod(k, 10)
        np.testing.assert_array_equal(canvas[9 * r:9 * r + 8, 9 * c:9 * c + 8], np.clip(x[k].reshape(8, 8), -1, 1))
    assert np.all(np.isnan(canvas[8::9, :])) and np.all(np.isnan(canvas[:, 8::9]))  # separators
    assert np.all(np.isnan(canvas[18:, 27:]))  # the 7 cells after image 22 are empty
    assert ax.images[0].get_clim() == (-1, 1)


def test_image_grid_any_square_size(ax):
    x = np.arange(12.0).reshape(3, 4) / 12
    plot.image_grid(ax, x, ncols=5, vmin=0, vmax=1)
    canvas = ax.images[0].get_array()
    assert canvas.shape == (2, 3 * 3 - 1)
    np.testing.assert_array_equal(canvas[:2, 3:5], x[1].reshape(2, 2))


def test_fidelity_diversity_one_line_per_method_ordered_by_w(ax, sweep):
    rows = sweep[0]
    plot.fidelity_diversity(ax, rows[::-1])  # order of rows does not matter: sorted by w
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(containers) == len(METHODS)
    assert [c.get_label() for c in containers] == ["CFG", "classifier guidance (s = 1 + w)"]
    for c in containers:
        method = {"CFG": "cfg", "classifier guidance (s = 1 + w)": "classifier"}[c.get_label()]
        mine = [r for r in rows if r["method"] == method]
        want = np.array([[r["spread"], r["fidelity"]] for r in mine])
        np.testing.assert_array_equal(c.lines[0].get_xydata(), want)
        assert c.has_yerr
        half = [s[1, 1] - s[0, 1] for s in c.lines[2][0].get_segments()]
        # (f + se) - (f - se) with f <= 1: each end rounded to half an ulp of 1, so atol 1e-15
        np.testing.assert_allclose(half, [2 * r["fidelity_se"] for r in mine], rtol=0, atol=1e-15)
    # each point's marker is coloured by its w: the index of w among the sweep's strengths
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    for c, dots in zip(containers, points):
        np.testing.assert_array_equal(dots.get_offsets(), c.lines[0].get_xydata())
        np.testing.assert_array_equal(dots.get_array(), np.arange(len(WS)))
    assert ax.get_xlabel() == "per-class spread (M8)" and ax.get_ylabel() == "mean exact p(y | x0) (M7)"
    assert len(ax.get_legend().get_texts()) == len(METHODS)
    # the two methods told apart by line style (on exact models their points coincide, (G5))
    assert len({c.lines[0].get_linestyle() for c in containers}) == len(METHODS)


def test_fidelity_diversity_without_standard_errors(ax):
    rows = [{"method": "cfg", "w": w, "spread": 1 / (1 + w), "fidelity": 1 - 0.1 / (1 + w)} for w in (2, 0, 1)]
    plot.fidelity_diversity(ax, rows)
    (c,) = ax.containers
    assert not c.has_yerr
    np.testing.assert_array_equal(c.lines[0].get_xdata(), [1, 0.5, 1 / 3])


def test_normalized_quiver_has_unit_arrows_coloured_by_log_length(ax):
    a = SCHED.alpha_bar[200]
    plot.vector_field(ax, good_field, SCHED, 200, n=5, normalize=True)
    (q,) = [c for c in ax.collections if isinstance(c, Quiver)]
    xs = np.linspace(-3, 3, 5)
    X, Y = np.meshgrid(xs, xs)
    score = MIX.score(np.stack([X.ravel(), Y.ravel()], 1), a)
    step = 0.8 * (xs[1] - xs[0])  # every arrow 0.8 grid steps long, in data units
    np.testing.assert_allclose(np.hypot(q.U, q.V).ravel(), step, rtol=1e-12)
    np.testing.assert_allclose(np.stack([q.U.ravel(), q.V.ravel()], 1),
                               step * score / np.linalg.norm(score, axis=1, keepdims=True), rtol=1e-10, atol=1e-12)
    assert q.scale == 1.0 and q.scale_units == "xy"
    np.testing.assert_allclose(q.get_array().ravel(), np.log10(np.linalg.norm(score, axis=1)), rtol=1e-10)


def good_field(x, t):
    return MODEL(x, t)


@pytest.mark.parametrize("call, name", [
    (lambda ax: plot.vector_field(ax, lambda x, t: np.zeros((len(x), 3)), SCHED, 10, n=3), "field_fn"),
    (lambda ax: plot.vector_field(ax, lambda x, t: np.zeros((2, 2)), SCHED, 10, n=3), "field_fn"),
    (lambda ax: plot.vector_field(ax, lambda x, t: np.full(x.shape, np.nan), SCHED, 10, n=3), "field_fn"),
    (lambda ax: plot.vector_field(ax, good_field, SCHED, 10, what="x0"), "what"),
    (lambda ax: plot.vector_field(ax, good_field, SCHED, 10, kind="arrows"), "kind"),
    (lambda ax: plot.vector_field(ax, good_field, SCHED, 0), "t"),
    (lambda ax: plot.vector_field(ax, good_field, SCHED, 1001), "t"),
    (lambda ax: plot.vector_field(ax, good_field, SCHED, 10, lim=-1.0), "lim"),
    (lambda ax: plot.vector_field(ax, good_field, SCHED, 10, n=1), "n"),
    (lambda ax: plot.vector_field(ax, good_field, SCHED, 10, n=3, density=MIX, y=3), "y"),
    (lambda ax: plot.vector_field(ax, good_field, SCHED, 10, n=3, density=MIX, levels=0), "levels"),
    (lambda ax: plot.vector_field(ax, good_field, SCHED, 10, n=3, y=0), "density"),  # y would be ignored
    (lambda ax: plot.label_colors(0), "num_labels"),
    (lambda ax: plot.scale_sweep_grid(ax.figure, {("cfg", 0): np.zeros((4, 3))}, np.zeros(4, int), ["cfg"], [0]),
     "samples"),
    (lambda ax: plot.scale_sweep_grid(ax.figure, {("cfg", 0): np.zeros((4, 2))}, np.zeros(4, int), ["cfg"], [1]),
     "samples"),
    (lambda ax: plot.scale_sweep_grid(ax.figure, {("cfg", 0): np.zeros((4, 2))}, np.zeros(3, int), ["cfg"], [0]),
     "y"),
    (lambda ax: plot.scale_sweep_grid(ax.figure, {("cfg", 0): np.zeros((4, 2))}, np.full(4, -1), ["cfg"], [0]),
     "y"),
    (lambda ax: plot.scale_sweep_grid(ax.figure, {("x", 0): np.zeros((4, 2))}, np.zeros(4, int), ["x"], [0]),
     "methods"),
    (lambda ax: plot.trajectories(ax, np.zeros((5, 3, 3))), "path"),
    (lambda ax: plot.trajectories(ax, np.zeros((5, 3))), "path"),
    (lambda ax: plot.trajectories(ax, np.zeros((5, 3, 2)), y=np.zeros(4, int)), "y"),
    (lambda ax: plot.trajectories(ax, np.zeros((5, 3, 2)), every=0), "every"),
    (lambda ax: plot.trajectories(ax, np.zeros((5, 3, 2)), max_paths=0), "max_paths"),
    (lambda ax: plot.image_grid(ax, np.zeros((4, 63))), "x"),
    (lambda ax: plot.image_grid(ax, np.zeros(64)), "x"),
    (lambda ax: plot.image_grid(ax, np.zeros((0, 64))), "x"),
    (lambda ax: plot.image_grid(ax, np.zeros((4, 64)), ncols=0), "ncols"),
    (lambda ax: plot.image_grid(ax, np.zeros((4, 64)), vmin=1, vmax=-1), "vmin"),
    (lambda ax: plot.fidelity_diversity(ax, []), "rows"),
    (lambda ax: plot.fidelity_diversity(ax, [{"method": "cfg", "w": 0.0, "judged": 0.5, "spread": 1.0}]), "rows"),
])
def test_bad_inputs_raise_naming_the_argument(ax, call, name):
    with pytest.raises(ValueError, match=name):
        call(ax)


def test_each_function_returns_its_ax_and_the_figure_saves(tmp_path, sweep):
    rows, samples, y = sweep
    fig, axes = plt.subplots(2, 2)
    try:
        a = axes.ravel()
        assert plot.vector_field(a[0], MODEL, SCHED, 100, n=5, density=MIX) is a[0]
        assert plot.trajectories(a[0], np.random.default_rng(0).standard_normal((3, 4, 2)), y=[0, 1, 2, 0]) is a[0]
        assert plot.image_grid(a[1], np.zeros((3, 64))) is a[1]
        assert plot.fidelity_diversity(a[2], rows) is a[2]
        assert plot.vector_field(a[3], MODEL, SCHED, 100, n=5, kind="stream") is a[3]
        fig.savefig(tmp_path / "plots.png")
        grid_fig = plt.figure()
        plot.scale_sweep_grid(grid_fig, samples, y, ["cfg"], WS[:2])
        grid_fig.savefig(tmp_path / "grid.png")
        plt.close(grid_fig)
    finally:
        plt.close(fig)
    for name in ("plots.png", "grid.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
