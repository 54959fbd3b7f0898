"""Figures stand alone (issue 14): every PNG that ``refdiff demo``, ``refdiff demo --data images``,
``refdiff field``, ``refdiff plot`` and docs/theory_figure.py write is built here by the same
function, on exact models and tiny inputs, and checked for what a reader needs: legend entries,
a colourbar where colour is a scale, axis labels, titles that state the settings, and that no
two drawn texts overlap, no text is cut off by the figure's edge and no legend covers an axes.

The figures are caught on their way to ``save_figure`` (monkeypatched), then drawn with Agg at
save_figure's 80 dpi. The texts checked are those actually drawn (``Text.draw`` is wrapped while
the canvas draws), tick labels included: ``Figure.findobj(Text)`` would also return the stale
tick labels matplotlib keeps outside the view limits, which are never drawn.
"""
import importlib.util
import os
from unittest import mock

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

import toy_data  # noqa: E402
from refdiff import demo, demo_images, methods, plot  # noqa: E402
from refdiff.cli import main  # noqa: E402
from refdiff.datasets import Data  # noqa: E402
from refdiff.npz import save_npz_atomic  # noqa: E402
from refdiff.schedule import Schedule  # noqa: E402
from toy_data import images  # noqa: E402

SCHED = Schedule.linear(1000)
MIX = toy_data.mixture("three_gaussians")
MODELS = {"denoiser": MIX.eps_model(SCHED), "classifier": MIX.classifier(SCHED)}  # exact: no training here
WS = (0.0, 1.0, 6.0)
DPI = 80  # demo.save_figure's
LABELS = ["y = 0", "y = 1", "y = 2"]
CONVENTION_W = "diffusers' guidance_scale = 1 + w"  # plot.CONVENTIONS["w"] ends so
CONVENTION_S = "on exact models CFG with w = s - 1"  # plot.CONVENTIONS["s"] ends so


# ---- the checks --------------------------------------------------------------------------------

def drawn_texts(fig):
    """Draw fig as save_figure would (Agg, DPI) and return every Text drawn (visible, non-empty) with
    its window extent in pixels. Only a figure's first draw counts: constrained layout can place
    things differently on a second one, and save_figure draws once, so a figure is drawn here once."""
    assert not getattr(fig, "drawn_by_test", False), "drawn twice: a second layout is not what save_figure writes"
    fig.drawn_by_test = True
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.set_dpi(DPI)
    drawn, draw = {}, Text.draw

    def record(self, renderer):
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn[id(self)] = self

    with mock.patch.object(Text, "draw", record):
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [(t, t.get_window_extent(renderer)) for t in drawn.values()]


def stumbles(fig):
    """What a reader would stumble on, from fig's one draw: "overlapping" pairs of drawn texts whose
    window extents overlap (touching counts), texts "cut off" by the figure's edge (by more than
    half a pixel), and "legends on axes": the entries of each legend whose box meets an axes' area."""
    texts = drawn_texts(fig)
    renderer, edge = fig.canvas.get_renderer(), fig.bbox.padded(0.5)
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return {"overlapping": [f"{a.get_text()!r} {tuple(np.round(ba.extents))} and {b.get_text()!r} "
                            f"{tuple(np.round(bb.extents))}"
                            for i, (a, ba) in enumerate(texts) for b, bb in texts[i + 1:] if ba.overlaps(bb)],
            "cut off": [t.get_text() for t, box in texts
                        if not (edge.x0 <= box.x0 and box.x1 <= edge.x1 and edge.y0 <= box.y0 and box.y1 <= edge.y1)],
            "legends on axes": [[t.get_text() for t in leg.get_texts()] for leg in legends
                                if any(leg.get_window_extent(renderer).overlaps(ax.bbox) for ax in fig.axes)]}


def assert_readable(fig):
    """No two drawn texts overlap, none is cut off, no legend lies on an axes (fig's first draw)."""
    found = {kind: items for kind, items in stumbles(fig).items() if items}
    assert not found, found


def legend_texts(legend):
    return [t.get_text() for t in legend.get_texts()]


def colourbar_of(ax):
    """The colourbar of ax's colour-mapped artist (its mappable), or None."""
    bars = [c.colorbar for c in ax.collections if getattr(c, "colorbar", None) is not None]
    assert len(bars) <= 1, bars
    return bars[0] if bars else None


def data_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def saved_by(module, monkeypatch):
    """{file name: Figure} that module's save_figure is handed from now on (nothing written)."""
    saved = {}
    monkeypatch.setattr(module, "save_figure", lambda fig, path: saved.__setitem__(os.path.basename(path), fig))
    return saved


# ---- the checks can fail -----------------------------------------------------------------------

def test_the_checks_report_overlapping_texts_cut_off_texts_and_legends_on_data():
    def figure(stumbling):
        fig = Figure(figsize=(4, 3), layout="constrained")
        ax = fig.add_subplot(1, 1, 1)
        ax.set_title("a title")
        ax.set_xlabel("x")
        ax.plot([0, 1], [0, 1], label="a curve")
        ax.legend(**plot.LEGEND_RIGHT if not stumbling else {"loc": "center"})
        if stumbling:
            ax.text(0.5, 1.01, "on the title", transform=ax.transAxes, ha="center", va="bottom")
            fig.text(0.9, 0.5, "beyond the right edge")  # a figure's text: not laid out
        return fig

    assert stumbles(figure(False)) == {"overlapping": [], "cut off": [], "legends on axes": []}
    found = stumbles(figure(True))
    assert len(found["overlapping"]) == 1 and "'on the title'" in found["overlapping"][0], found
    assert found["cut off"] == ["beyond the right edge"] and found["legends on axes"] == [["a curve"]], found
    with pytest.raises(AssertionError):
        assert_readable(figure(True))
    fig = figure(False)
    drawn_texts(fig)
    with pytest.raises(AssertionError, match="drawn twice"):
        assert_readable(fig)


def test_tick_labels_are_checked_too():
    fig = Figure(figsize=(1.5, 1.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xticks(np.arange(20), [f"tick {k}" for k in range(20)])  # twenty long labels on 1.5 inches
    assert stumbles(fig)["overlapping"]


# ---- refdiff demo --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_figures():
    """demo._figures on exact models, 4 points per label and fake samples (some beyond the frame)."""
    rng = np.random.default_rng(0)
    data = Data("three_gaussians", *toy_data.sample("three_gaussians", 60, rng), 3, MIX)
    y = np.arange(12) % 3
    samples = {(m, w): MIX.means[y] + (1 + w) * 0.3 * rng.standard_normal((12, 2)) for m in ("classifier", "cfg")
               for w in WS}
    samples["cfg", 6.0][0] = (9.0, -1.0)  # beyond the frame
    rows = fake_rows(flat=False)
    with pytest.MonkeyPatch.context() as patch:
        saved = saved_by(demo, patch)
        demo._figures("unused", data, MODELS, SCHED, samples, y, rng.standard_normal((12, 2)), rows, WS)
    return saved


def fake_rows(flat):
    """A sweep's rows for both methods: fidelity flat at 1 (as on three_gaussians) or moving."""
    return [{"method": m, "w": w, "spread": 0.4 + 0.05 * w + 0.01 * i, "energy": 0.1 * w + 0.02 * i,
             "fidelity": 1.0 - (1e-6 if flat else 0.1) / (1 + w), "fidelity_se": 1e-3 / (1 + w)}
            for i, m in enumerate(("classifier", "cfg")) for w in WS]


def test_demo_writes_its_four_figures(demo_figures):
    assert sorted(demo_figures) == ["fidelity_diversity.png", "fields.png", "scale_sweep.png", "trajectories.png"]


def test_scale_sweep_figure(demo_figures):
    fig = demo_figures["scale_sweep.png"]
    (legend,) = fig.legends
    assert legend_texts(legend) == LABELS + ["beyond the frame,\ndrawn at its edge"]
    assert legend.get_title().get_text() == "requested label"
    axes = np.array(fig.axes).reshape(2, len(WS))
    assert [ax.get_title() for ax in axes[0]] == ["w = 0", "w = 1", "w = 6"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["classifier guidance (s = 1 + w)", "CFG"]
    assert [ax.get_xlabel() for ax in axes[-1]] == ["$x_1$"] * len(WS)
    assert [ax.get_ylabel() for ax in axes[:, -1]] == ["$x_2$"] * 2
    title = fig.get_suptitle()
    for needle in ("DDIM-50", "three_gaussians", "4 per label", "strength w", CONVENTION_W):
        assert needle in title, (needle, title)
    assert_readable(fig)


def test_fields_figure(demo_figures):
    fig = demo_figures["fields.png"]
    axes = data_axes(fig)
    assert len(axes) == 5 and axes[0].get_title() == "unconditional, t = 200"
    for ax in axes:
        assert "t = 200" in ax.get_title() and ax.get_ylabel() == "$x_2$"
        assert ax.get_xlabel() == "$x_1$\nlight grey lines: contours of the exact log q_t(x)"
        bar = colourbar_of(ax)
        assert bar is not None and bar.ax.get_ylabel().startswith("log10 |score|"), ax.get_title()
        assert "arrows drawn at unit length" in bar.ax.get_ylabel()
    w = demo.FIELD_W
    assert [ax.get_title() for ax in axes[1:]] == [f"classifier guidance s = {1 + w:g}, label 0, t = 200",
                                                   f"CFG w = {w:g}, label 0, t = 200",
                                                   f"Perp-Neg w = {w:g}, label 0, negative 1, t = 200",
                                                   f"APG (x0, eta = 0) w = {w:g}, label 0, t = 200"]
    title = fig.get_suptitle()
    for needle in ("score", "three_gaussians", "t = 200", "label 0", CONVENTION_W, CONVENTION_S):
        assert needle in title, (needle, title)
    assert_readable(fig)


def test_trajectories_figure(demo_figures):
    fig = demo_figures["trajectories.png"]
    (ax,) = fig.axes
    assert legend_texts(ax.get_legend()) == LABELS + ["x_T, the start (noise)", "x_0, the end (sample)"]
    assert ax.get_legend().get_title().get_text() == "requested label"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("$x_1$", "$x_2$")
    for needle in ("DDIM-50", "three_gaussians", f"CFG w = {demo.FIELD_W:g}", CONVENTION_W):
        assert needle in ax.get_title(), (needle, ax.get_title())
    assert_readable(fig)


def test_trajectories_figure_at_the_demo_size(monkeypatch):
    """The demo's 60 paths of 900 rows (here the oracle's): a title wider than the axes clears its top tick label."""
    saved = saved_by(demo, monkeypatch)
    y = np.arange(900) % 3
    demo._trajectories_figure("trajectories.png", Data("three_gaussians", None, None, 3, MIX), MODELS["denoiser"],
                              SCHED, y, np.random.default_rng(1).standard_normal((900, 2)))
    assert_readable(saved["trajectories.png"])


@pytest.mark.parametrize("flat", [False, True])
def test_fidelity_figure(monkeypatch, flat):
    saved = saved_by(demo, monkeypatch)
    demo._fidelity_figure("fidelity_diversity.png", Data("three_gaussians", None, None, 3, MIX), fake_rows(flat))
    fig = saved["fidelity_diversity.png"]
    left, right = data_axes(fig)
    titles = ["classifier guidance (s = 1 + w)", "CFG"]
    assert legend_texts(left.get_legend()) == titles and legend_texts(right.get_legend()) == titles
    bar = colourbar_of(left)
    assert bar is not None and bar.ax.get_xlabel() == "guidance strength w"
    assert [t.get_text() for t in bar.ax.get_xticklabels()] == ["0", "1", "6"]
    assert (left.get_xlabel(), left.get_ylabel()) == (plot.MEASURES["spread"], plot.MEASURES["fidelity"])
    assert (right.get_xlabel(), right.get_ylabel()) == ("guidance strength w", plot.MEASURES["energy"])
    notes = [t.get_text() for t in left.texts]
    assert (len(notes) == 1 and notes[0].startswith("flat: mean p(y | x0) >= 0.9999 at every w")) if flat else not notes
    assert "three_gaussians" in fig.get_suptitle() and "guidance strength" in fig.get_suptitle()
    assert_readable(fig)


# ---- refdiff demo --data images --------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_figures():
    """demo_images._figures on random images: 2 per class and method and w, 8 per caption cell."""
    rng = np.random.default_rng(1)
    y = np.arange(2 * images.NUM_CLASSES) % images.NUM_CLASSES
    samples = {(m, w): rng.uniform(-1, 1, (len(y), images.SIZE ** 2)) for m in demo_images.METHODS
               for w in demo_images.WS}
    scales = (0.0,) + tuple(1 + w for w in demo_images.WS)
    captions = {(c, r, s): rng.uniform(-1, 1, (8, images.SIZE ** 2)) for c in demo_images.CAPTIONS
                for r in demo_images.RULE_NAMES for s in scales}
    with pytest.MonkeyPatch.context() as patch:
        saved = saved_by(demo_images, patch)
        demo_images._figures("unused", samples, captions, y, demo_images.WS)
    return saved


def check_tiles(fig, ncols, row_labels, col_labels):
    """Readable (assert_readable); tiles at least 0.3 inch wide; column labels the first row's titles;
    row labels in normal text size, left of the images; the texts of the last column right of them."""
    axes = np.array(fig.axes).reshape(len(row_labels), len(col_labels))
    assert [ax.get_title() for ax in axes[0]] == col_labels
    assert [[t.get_text() for t in ax.texts][:1] for ax in axes[:, 0]] == [[r] for r in row_labels]
    for ax in axes[:, 0]:
        assert ax.texts[0].get_fontsize() >= matplotlib.rcParams["font.size"]
    assert_readable(fig)  # draws
    tile = axes[0, 0].get_window_extent().width / DPI / ncols  # inches per image, separators included
    assert tile >= 0.3, tile
    renderer = fig.canvas.get_renderer()
    for first, last in zip(axes[:, 0], axes[:, -1]):  # images.imshow fills its axes: the axes' box is the images'
        assert first.texts[0].get_window_extent(renderer).x1 < first.get_window_extent(renderer).x0
        assert all(t.get_window_extent(renderer).x0 > last.get_window_extent(renderer).x1
                   for t in last.texts if t is not last.texts[0] or len(col_labels) > 1), last.texts


def test_guidance_grid_figure(image_figures):
    fig = image_figures["guidance_grid.png"]
    rows = [methods.get(m).title("\n") for m in demo_images.METHODS]
    check_tiles(fig, 2, rows, [f"w = {w:g}" for w in demo_images.WS])
    last = fig.axes[len(demo_images.WS) - 1]
    assert [t.get_text() for t in last.texts] == list(images.CLASS_NAMES)  # a name for each line of images
    for needle in ("DDPM-100", "guidance method (rows)", "strength w (columns)", "2 per class"):
        assert needle in fig.get_suptitle(), (needle, fig.get_suptitle())


def test_captions_figure(image_figures):
    fig = image_figures["captions.png"]
    rows = [f'"{c}"\n{demo_images.RULE_NAMES[r]}' for c in demo_images.CAPTIONS for r in demo_images.RULE_NAMES]
    check_tiles(fig, 4, rows, ["s = 0"] + [f"s = {1 + w:g}" for w in demo_images.WS])
    for needle in ("DDPM-100", "CLIP guidance toward a caption", "s = 0 is unguided"):
        assert needle in fig.get_suptitle(), (needle, fig.get_suptitle())


# ---- refdiff field and refdiff plot ------------------------------------------------------------------

@pytest.mark.parametrize("argv, needles", [
    (["--guidance", "cfg", "--scale", "3", "--label", "0"], ["CFG w = 3 toward label 0", CONVENTION_W]),
    (["--guidance", "cfg", "--scale", "3", "--label", "0", "--normalize"], ["CFG w = 3 toward label 0"]),
    (["--guidance", "cfg", "--scale", "3", "--label", "0", "--kind", "stream", "--normalize"], ["CFG w = 3"]),
    (["--guidance", "classifier", "--scale", "4", "--label", "1", "--what", "eps", "--kind", "stream"],
     ["classifier guidance s = 4 toward label 1", CONVENTION_S, "the eps of"]),
    (["--t", "50"], ["no guidance, unconditional", "t = 50"]),
])
def test_field_figure(monkeypatch, tmp_path, argv, needles):
    saved = saved_by(demo, monkeypatch)
    assert main(["field", "-q", *argv, "--out", str(tmp_path / "f.png")]) == 0
    fig = saved["f.png"]
    (ax,) = data_axes(fig)
    what = "eps" if "eps" in argv else "score"
    for needle in [f"the {what} of the oracle of three_gaussians", "t = 200" if "--t" not in argv else "", *needles]:
        assert needle in ax.get_title(), (needle, ax.get_title())
    given = f" | y = {argv[argv.index('--label') + 1]}" if "--label" in argv else ""
    assert ax.get_xlabel() == f"$x_1$\nlight grey lines: contours of the exact log q_t(x{given})"
    assert ax.get_ylabel() == "$x_2$"
    bar = colourbar_of(ax)
    if "--normalize" in argv:  # honoured by either kind: the arrows or streamlines carry the colour scale
        assert bar is not None and bar.ax.get_ylabel().startswith(f"log10 |{what}|")
        assert bar.mappable.get_array() is not None and bar.mappable.axes is ax
    else:
        assert bar is None and len(fig.axes) == 1
    assert_readable(fig)


def test_plot_figure(monkeypatch, tmp_path):
    saved = saved_by(demo, monkeypatch)
    rng = np.random.default_rng(2)
    y = np.array([-1, 0, 1, 2] * 5)
    save_npz_atomic(tmp_path / "s.npz", x=MIX.means[np.maximum(y, 0)] + 0.3 * rng.standard_normal((20, 2)), y=y)
    assert main(["plot", str(tmp_path / "s.npz"), "--out", str(tmp_path / "s.png")]) == 0
    fig = saved["s.png"]
    (ax,) = fig.axes
    assert legend_texts(ax.get_legend()) == ["unconditional"] + LABELS
    assert ax.get_legend().get_title().get_text() == "requested label"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("$x_1$", "$x_2$")
    assert ax.get_title() == "s.npz: 20 samples in 2D\nunconditional: 5, y = 0: 5, y = 1: 5, y = 2: 5"
    assert_readable(fig)


def test_plot_titles_the_settings_sample_recorded(monkeypatch, tmp_path, capsys):
    saved = saved_by(demo, monkeypatch)
    assert main(["sample", "--guidance", "classifier", "--scale", "4", "--label", "1", "--sampler", "ddpm", "--steps",
                 "20", "-n", "30", "--seed", "3", "--out", str(tmp_path / "s.npz"), "-q"]) == 0
    assert main(["plot", str(tmp_path / "s.npz")]) == 0  # --out defaults to SAMPLES with .png
    (ax,) = saved["s.png"].axes
    assert ax.get_title() == ("s.npz: 30 samples in 2D\nthe oracle of three_gaussians; classifier guidance s = 4; "
                              "DDPM, 20 steps; seed 3\ny = 1: 30")
    assert legend_texts(ax.get_legend()) == ["y = 1"]
    assert_readable(saved["s.png"])


# ---- docs/theory_figure.py ---------------------------------------------------------------------

def test_theory_figure(monkeypatch, capsys):
    path = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "theory_figure.py")
    spec = importlib.util.spec_from_file_location("theory_figure", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = saved_by(module, monkeypatch)
    module.main()
    fig = saved["what_guidance_samples.png"]
    (legend,) = fig.legends
    assert legend_texts(legend) == ["p(x | y)", "tilted p(x | y)^(1 + w) p(x)^(-w) (T4)",
                                    "reverse SDE = DDPM limit (T6)", "probability-flow ODE = DDIM limit (T5)"]
    assert [ax.get_title() for ax in fig.axes] == [f"CFG, w = {w:g}" for w in module.WS]
    for ax in fig.axes:
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("x", "density")
        low, high = ax.get_xlim()
        for line in ax.get_lines():  # every law inside the frame: its density at both edges is below 1e-3 of its peak
            x, p = line.get_data()
            assert x[0] >= low and x[-1] <= high and max(p[0], p[-1]) < 1e-3 * p.max(), line.get_label()
    for needle in ("p(x) = N(0, 1)", f"p(x | y) = N({module.MU:g}, {module.V:g})", CONVENTION_W):
        assert needle in fig.get_suptitle(), (needle, fig.get_suptitle())
    assert_readable(fig)


# ---- docs/measure_orders.py --------------------------------------------------------------------

def test_sampler_orders_figure(monkeypatch):
    path = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "measure_orders.py")
    spec = importlib.util.spec_from_file_location("measure_orders", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = saved_by(module, monkeypatch)
    counts = np.array(module.COUNTS, dtype=float)
    found = {(name, w): list(0.1 * (k + 1) * counts ** -(1 + (k > 0))) for w in (0.0, 3.0)
             for k, name in enumerate(module.SAMPLERS)}  # the figure's data, made up: the test is of the drawing
    module.figure(found, "sampler_orders.png")
    fig = saved["sampler_orders.png"]
    (legend,) = fig.legends
    assert legend_texts(legend) == list(module.SAMPLERS) + ["slope -1", "slope -2"]
    assert [ax.get_title() for ax in fig.axes] == ["unguided", "CFG w = 3"]
    for ax in fig.axes:
        assert ax.get_xscale() == ax.get_yscale() == "log" and ax.get_xlabel() and ax.get_ylabel()
        for name, line in zip(module.SAMPLERS, ax.get_lines()):
            assert list(line.get_ydata()) == found[name, 0.0 if ax.get_title() == "unguided" else 3.0]
    assert "three_gaussians" in fig.get_suptitle() and CONVENTION_W in fig.get_suptitle()
    assert_readable(fig)
