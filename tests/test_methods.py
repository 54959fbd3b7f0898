"""The guidance registry (refdiff/methods.py): the built-in methods, their scale conventions and
titles; each method's eps_fn is the guidance function it wraps, bit for bit, on the exact oracle;
CFG at w is classifier guidance at value_at(w) (G5); the registry's errors; and a rule registered
once appears in ``refdiff sample`` / ``refdiff field``, the sweeps and the plots."""
import contextlib
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

import toy_data
from refdiff import cli, demo, methods, plot, sweep
from refdiff.guidance import (apg_guidance, autoguidance, cfg_zero_star, classifier_free_guidance, classifier_guidance,
                              clip_guidance, negative_prompt_guidance, perp_neg_guidance)
from refdiff.samplers import ddim
from refdiff.schedule import Schedule
from strategies import assert_bounded, points, seeds
from test_guidance import eps_roundoff, oracle_cases

SCHED = Schedule.linear(1000)
MIX = toy_data.mixture("three_overlapping")
OTHER = toy_data.mixture("three_gaussians")  # the latent denoiser: a different model, so a swap shows
CAPTIONS = ("a blob on the right", "a blob up left", "a blob down left")
BUILT_IN = {  # name: (label, parameter, needs), as documented in refdiff/methods.py
    "classifier": ("classifier guidance", "s", ("denoiser", "classifier")),
    "cfg": ("CFG", "w", ("denoiser",)),
    "clip": ("CLIP guidance, class name", "s", ("denoiser", "clip", "captions")),
    "latent_cfg": ("latent CFG", "w", ("latent_denoiser",)),
    "negative": ("negative label", "w", ("denoiser", "negative")),
    "perp_neg": ("Perp-Neg", "w", ("denoiser", "negative")),
    "apg": ("APG (x0, eta = 0)", "w", ("denoiser",)),
    "cfg_zero_star": ("CFG-Zero*", "w", ("denoiser",)),
    "autoguidance": ("autoguidance", "w", ("denoiser", "weak_denoiser")),
}
NEGATIVE, BLUR = 2, 0.5  # the negative label and the weak model's blur of all_models()
NEW_IN_CLI = "negative,perp_neg,apg,cfg_zero_star,autoguidance"  # the rules of 2023-2025 that sample and field offer
# Every real: huge, tiny, subnormal, signed zeros; value_at must not care what the strength is.
REALS = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)


class FakeClip:
    """A noise-aware CLIP stand-in for the oracle: ``score_fn(captions)`` records the captions and
    returns the exact log-likelihood ratio log p(x_t | y) - log p(x_t), y the label whose caption
    each row got (one caption: every row), as tests/test_guidance_clip.py does. Its x-gradient is
    grad log p(y | x_t), so CLIP guidance with it is classifier guidance (G13 = G3)."""
    noise_aware = True

    def __init__(self, gm, sched, captions):
        self.gm, self.sched, self.captions, self.calls = gm, sched, tuple(captions), []

    def score_fn(self, captions):
        self.calls.append(list(captions))
        labels = np.array([self.captions.index(c) for c in captions])

        def score(x, t):
            a = self.sched.alpha_bar[t]
            y = int(labels[0]) if len(labels) == 1 else labels
            return self.gm.log_prob_noised(x, a, y) - self.gm.log_prob_noised(x, a)
        score.noise_aware, score.sched = True, self.sched  # what refdiff's checks read
        return score


def all_models(gm=MIX, sched=SCHED):
    """Every model a built-in method reads, each distinguishable from the others."""
    return {"denoiser": gm.eps_model(sched), "classifier": gm.classifier(sched),
            "clip": FakeClip(gm, sched, CAPTIONS), "captions": CAPTIONS,
            "latent_denoiser": OTHER.eps_model(sched), "negative": NEGATIVE,
            "weak_denoiser": gm.blurred(BLUR).eps_model(sched)}


@contextlib.contextmanager
def registered(*new):
    """Register Methods for the duration of a with-block and always unregister them."""
    try:
        for method in new:
            methods.register(method)
        yield new
    finally:
        for method in new:
            methods.METHODS.pop(method.name, None)
    assert not {m.name for m in new} & set(methods.METHODS)


# ---- the built-in methods ------------------------------------------------------------------
def test_the_built_in_methods_names_order_parameters_and_needs():
    assert tuple(methods.METHODS)[:len(BUILT_IN)] == tuple(BUILT_IN), tuple(methods.METHODS)
    for name, (label, parameter, needs) in BUILT_IN.items():
        method = methods.get(name)
        assert isinstance(method, methods.Method) and method is methods.METHODS[name]
        got = (method.name, method.label, method.parameter, tuple(method.needs))
        assert got == (name, label, parameter, needs), (got, (name, label, parameter, needs))
    assert methods.PARAMETERS == ("w", "s")
    assert methods.available(("denoiser", "classifier")) == ("classifier", "cfg", "apg", "cfg_zero_star")
    assert methods.available(["latent_denoiser"]) == ("latent_cfg",)
    assert methods.available(set(all_models()))[:len(BUILT_IN)] == tuple(BUILT_IN)
    assert methods.available(()) == ()


@given(st.one_of(REALS, st.integers(-2**53, 2**53), REALS.map(np.float64),
                 st.floats(width=32, allow_nan=False, allow_infinity=False).map(np.float32)))
def test_value_at_is_w_for_w_methods_and_1_plus_w_for_s_methods(w):
    for name, (_, parameter, _) in BUILT_IN.items():
        got, want = methods.get(name).value_at(w), float(w) if parameter == "w" else 1.0 + float(w)
        assert type(got) is float and (got == want), (name, w, got, want)


def test_titles():
    want = {"classifier": "classifier guidance (s = 1 + w)", "cfg": "CFG",
            "clip": "CLIP guidance, class name (s = 1 + w)", "latent_cfg": "latent CFG"}
    split = {"classifier": "classifier guidance\n(s = 1 + w)", "cfg": "CFG",
             "clip": "CLIP guidance, class name\n(s = 1 + w)", "latent_cfg": "latent CFG"}
    for name in BUILT_IN:  # a "w" method's title is its label, unsplit
        if BUILT_IN[name][1] == "w":
            want[name] = split[name] = BUILT_IN[name][0]
    for name in BUILT_IN:
        got = (methods.get(name).title(), methods.get(name).title("\n"))
        assert got == (want[name], split[name]), (name, got)


# ---- each method is the guidance function it wraps ----------------------------------------------
@st.composite
def method_cases(draw, n=5):
    """Points over 4 decades either side of 1 (and zeros), times over the whole chain (an end in
    every case), labels as one int or one per row, and a strength over [-30, 30] with 0 and 1."""
    rng = np.random.default_rng(draw(seeds))
    x = draw(points(n, 2, max_decade=2))
    t = rng.integers(1, SCHED.T + 1, n)
    t[0] = draw(st.sampled_from([1, SCHED.T]))
    y = draw(st.one_of(st.integers(0, 2), st.just(None)))
    y = rng.integers(0, 3, n) if y is None else y
    value = draw(st.one_of(st.sampled_from([0.0, 1.0, -1.0]), st.floats(-30.0, 30.0)))
    return x, t, y, value


def wrapped(name, models, y, value):
    """The guidance function each built-in method documents that it wraps."""
    if name == "classifier":
        return classifier_guidance(models["denoiser"], models["classifier"], SCHED, y, value)  # (G3)
    if name == "cfg":
        return classifier_free_guidance(models["denoiser"], y, value)  # (G5)
    if name == "latent_cfg":
        return classifier_free_guidance(models["latent_denoiser"], y, value)  # (G5), (LD6)
    if name == "negative":
        return negative_prompt_guidance(models["denoiser"], y, NEGATIVE, value)  # (G15)
    if name == "perp_neg":
        return perp_neg_guidance(models["denoiser"], y, NEGATIVE, value, value)  # (G18), w_neg = w
    if name == "apg":
        return apg_guidance(models["denoiser"], SCHED, y, value, eta=0.0, norm_threshold=None, momentum=0.0,
                            form="paper", prediction="x0")  # (G16) on x0
    if name == "cfg_zero_star":
        return cfg_zero_star(models["denoiser"], SCHED, y, value, zero_steps=1, prediction="eps")  # (G17), (G17z)
    if name == "autoguidance":
        return autoguidance(models["denoiser"], models["weak_denoiser"], y, value)  # (G19)
    captions = [models["captions"][k] for k in np.atleast_1d(y)]
    return clip_guidance(models["denoiser"], models["clip"].score_fn(captions), SCHED, value)  # (G13)


@pytest.mark.parametrize("name", BUILT_IN)
@given(case=method_cases())
def test_each_method_is_the_guidance_function_it_wraps_bit_for_bit(name, case):
    x, t, y, value = case
    models = all_models()
    got = methods.get(name).eps_fn(models, SCHED, y, value)(x, t)
    if name == "clip":  # the method asked the CLIP for the captions of the requested labels
        asked = models["clip"].calls
        assert asked == [[CAPTIONS[k] for k in np.atleast_1d(y)]], (asked, y)
    want = wrapped(name, models, y, value)(x, t)
    assert got.shape == want.shape == x.shape and np.all(np.isfinite(want))
    assert np.array_equal(got, want), f"{name} at {value}: computed\n{got}\nexpected\n{want}"


def test_clip_method_with_the_exact_ratio_is_classifier_guidance_and_reads_the_captions_by_label():
    """The captions reach the CLIP in the order of the requested labels: with the exact ratio, the
    "clip" method equals the "classifier" method at the same s (round-off of tests/test_guidance.py,
    (1 + 2|s|) times, as in its G5 test), and differs from it for any other order of the captions."""
    rng = np.random.default_rng(0)
    x, t, y, s = rng.uniform(-3, 3, (30, 2)), rng.integers(1, SCHED.T + 1, 30), rng.integers(0, 3, 30), 2.5
    models = all_models()
    got = methods.get("clip").eps_fn(models, SCHED, y, s)(x, t)
    want = methods.get("classifier").eps_fn(models, SCHED, y, s)(x, t)
    assert_bounded(got, want, (1 + 2 * s) * eps_roundoff(MIX, SCHED, x, t), "CLIP method vs classifier method")
    shuffled = methods.get("clip").eps_fn({**models, "captions": CAPTIONS[1:] + CAPTIONS[:1]}, SCHED, y, s)(x, t)
    assert np.max(np.abs(shuffled - want)) > 1e-3, "the captions' order made no difference"


@given(oracle_cases(), st.floats(-1.0, 20.0))
def test_G5_cfg_at_w_is_classifier_guidance_at_value_at_w(case, w):
    """(G5) through the registry: CFG at w and the classifier method at its own value_at(w) = 1 + w
    agree on exact models (random mixtures and schedules of tests/test_guidance.py) to the
    oracle's round-off there: each side combines averages of the K component terms with weights of
    total size 1 + 2|w|, so (1 + 2|w|) times eps_roundoff bounds the difference."""
    gm, sched, x, t, y = case
    models = {"denoiser": gm.eps_model(sched), "classifier": gm.classifier(sched)}
    cfg, clf = methods.get("cfg"), methods.get("classifier")
    got = cfg.eps_fn(models, sched, y, cfg.value_at(w))(x, t)
    want = clf.eps_fn(models, sched, y, clf.value_at(w))(x, t)
    assert_bounded(got, want, (1 + 2 * abs(w)) * eps_roundoff(gm, sched, x, t), f"CFG({w}) vs CG({1 + w})")


# ---- the registry's errors -------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILT_IN)
def test_missing_models_raise_naming_the_method_and_the_model(name):
    models = all_models()
    for missing in BUILT_IN[name][2]:
        for without in ({k: v for k, v in models.items() if k != missing}, {**models, missing: None}):
            with pytest.raises(ValueError, match=rf"method '{name}' needs .*missing \['{missing}'\]"):
                methods.get(name).eps_fn(without, SCHED, 0, 1.0)
    with pytest.raises(ValueError, match=rf"method '{name}' .*missing " + re.escape(str(list(BUILT_IN[name][2])))):
        methods.get(name).eps_fn({}, SCHED, 0, 1.0)


def test_register_refuses_a_duplicate_and_a_non_method_and_get_refuses_an_unknown_name():
    before = dict(methods.METHODS)
    twin = methods.Method("cfg", "another CFG", "w", ("denoiser",), lambda m, sched, y, w: None)
    with pytest.raises(ValueError, match="a guidance method named 'cfg' is already registered"):
        methods.register(twin)
    for bad in (("dummy", "d", "w", (), None), {"name": "dummy"}, "dummy", None):
        with pytest.raises(ValueError, match="method must be a Method, got"):
            methods.register(bad)
    assert methods.METHODS == before and methods.get("cfg") is before["cfg"]
    for unknown in ("dalle", "CFG", "", None):
        with pytest.raises(ValueError, match=r"method must be one of \('classifier', 'cfg', 'clip', 'latent_cfg'"):
            methods.get(unknown)


@pytest.mark.parametrize("parameter", ["W", "scale", "", None, ("w",), 1])
def test_method_with_a_bad_parameter_raises(parameter):
    with pytest.raises(ValueError, match=r"parameter must be one of \('w', 's'\)"):
        methods.Method("dummy", "dummy rule", parameter, ("denoiser",), lambda m, sched, y, w: None)


def test_registered_returns_the_method_and_unregistering_restores_the_table():
    before = tuple(methods.METHODS)
    method = methods.Method("dummy", "dummy rule", "w", ("denoiser",), lambda m, sched, y, w: None)
    try:
        assert methods.register(method) is method and tuple(methods.METHODS) == before + ("dummy",)
    finally:
        del methods.METHODS["dummy"]
    assert tuple(methods.METHODS) == before


# ---- a rule registered once appears everywhere ---------------------------------------------------
def dummy_build(calls):
    """CFG with twice the weight, recording what it was built with."""
    def build(models, sched, y, w):
        calls.append((sched, np.array(y), w))
        return classifier_free_guidance(models["denoiser"], y, 2 * w)
    return build


@pytest.fixture
def dummy():
    calls = []
    method = methods.Method("dummy", "dummy rule", "w", ("denoiser",), dummy_build(calls))
    with registered(method):
        yield calls


def help_text(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


@pytest.mark.parametrize("command", ["sample", "field"])
def test_a_registered_rule_appears_in_the_help_of_sample_and_field(dummy, capsys, command):
    text = help_text(capsys, command)
    assert f"--guidance {{none,classifier,cfg,{NEW_IN_CLI},dummy}}" in text, text
    assert (f"the weight w for cfg, {NEW_IN_CLI.replace(',', ', ')}, dummy; the scale s for classifier (the CFG "
            "weight w is diffusers' guidance_scale - 1)") in text, text
    assert cli.guidance_choices() == ("none", "classifier", "cfg", *NEW_IN_CLI.split(","), "dummy")


def test_without_the_rule_the_help_does_not_name_it(capsys):
    text = help_text(capsys, "sample")
    assert f"--guidance {{none,classifier,cfg,{NEW_IN_CLI}}}" in text and "dummy" not in text, text


def test_a_method_needing_a_model_the_cli_cannot_load_is_not_a_choice(capsys, tmp_path):
    needs_clip = methods.Method("dummy_clip", "dummy CLIP rule", "s", ("denoiser", "clip"),
                                lambda m, sched, y, s: m["denoiser"])
    with registered(needs_clip):
        assert "dummy_clip" not in cli.guidance_choices()
        for command in ("sample", "field"):
            assert "dummy_clip" not in help_text(capsys, command)
        argv = ["sample", "--guidance", "dummy_clip", "--scale", "1", "-n", "3", "--out", str(tmp_path / "s.npz")]
        assert cli.main(argv) == 2
        assert "invalid choice: 'dummy_clip'" in capsys.readouterr().err
        assert "dummy_clip" not in methods.available(("denoiser", "classifier"))


def test_refdiff_sample_runs_a_registered_rule(dummy, tmp_path, capsys):
    out = tmp_path / "s.npz"
    argv = ["sample", "--data", "three_overlapping", "--guidance", "dummy", "--scale", "1", "-n", "6",
            "--seed", "4", "--out", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    with np.load(out, allow_pickle=False) as f:
        x, y = f["x"], f["y"]
    labels = np.arange(6) % 3                                      # every label in turn
    x_T = np.random.default_rng(4).standard_normal((6, 2))         # run_sample's x_T
    want = ddim(classifier_free_guidance(MIX.eps_model(SCHED), labels, 2.0), SCHED, x_T, 50)
    assert np.array_equal(y, labels), y
    assert np.array_equal(x, want), f"computed\n{x}\nexpected\n{want}"
    ((sched, built_y, w),) = dummy
    assert np.array_equal(sched.betas, SCHED.betas) and np.array_equal(built_y, labels) and w == 1.0
    plain_cfg = ddim(classifier_free_guidance(MIX.eps_model(SCHED), labels, 1.0), SCHED, x_T, 50)
    assert np.max(np.abs(x - plain_cfg)) > 1e-3, "the dummy rule ran as plain CFG"


def test_refdiff_field_runs_a_registered_rule(dummy, tmp_path, capsys):
    out = tmp_path / "f.png"
    argv = ["field", "--data", "three_overlapping", "--guidance", "dummy", "--scale", "0.5", "--label", "2",
            "--out", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert out.stat().st_size > 0 and len(dummy) == 1 and dummy[0][1] == 2 and dummy[0][2] == 0.5, dummy


def test_the_sweep_has_rows_of_a_registered_rule_after_the_built_ins(dummy):
    n, ws = 6, (0.0, 2.0)
    y, x_T = np.arange(n) % 3, np.random.default_rng(0).standard_normal((n, 2))
    models = {"denoiser": MIX.eps_model(SCHED), "classifier": MIX.classifier(SCHED)}
    sample = lambda eps_fn, x: ddim(eps_fn, SCHED, x, 5)
    rows, samples = sweep.scale_sweep(models, SCHED, y, ws, x_T, lambda x, y: {"x00": float(x[0, 0])},
                                      sample=sample)
    assert [(r["method"], r["w"], r["scale"]) for r in rows] == [
        (m, w, 1 + w) for m in methods.available(models) for w in ws], rows
    assert methods.available(models)[-1] == "dummy"
    for w in ws:  # value_at(w): w for a "w" method (the dummy's CFG at 2w), s = 1 + w for classifier guidance
        want = sample(classifier_free_guidance(models["denoiser"], y, 2 * w), x_T)
        assert np.array_equal(samples["dummy", w], want), (w, samples["dummy", w], want)
        want = sample(classifier_guidance(models["denoiser"], models["classifier"], SCHED, y, 1 + w), x_T)
        assert np.array_equal(samples["classifier", w], want), (w, samples["classifier", w], want)
    assert [w for _, _, w in dummy] == list(ws)


@pytest.mark.parametrize("parameter, title", [("w", "dummy rule"), ("s", "dummy rule (s = 1 + w)")])
def test_the_plots_label_a_registered_rule_with_its_title(parameter, title):
    """With parameter "s" the title differs from the label, so a plot using the label shows."""
    method = methods.Method("dummy", "dummy rule", parameter, ("denoiser",), dummy_build([]))
    y = np.arange(6) % 3
    samples = {(m, w): np.random.default_rng(i).standard_normal((6, 2))
               for i, (m, w) in enumerate((m, w) for m in ("cfg", "dummy") for w in (0.0, 1.0))}
    rows = [{"method": m, "w": w, "spread": float(i), "fidelity": 0.5} for i, (m, w) in enumerate(samples)]
    with registered(method):
        fig = Figure()
        axes = plot.scale_sweep_grid(fig, samples, y, ["cfg", "dummy"], [0.0, 1.0])
        assert [a.get_ylabel() for a in axes[:, 0]] == ["CFG", title], [a.get_ylabel() for a in axes[:, 0]]
        ax = Figure().add_subplot(1, 1, 1)
        plot.fidelity_diversity(ax, rows)
        labels = [c.get_label() for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert labels == ["CFG", title], labels
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["CFG", title]


def test_the_demo_fields_figure_has_a_panel_for_a_registered_rule(dummy, monkeypatch, tmp_path):
    saved = []
    monkeypatch.setattr(demo, "save_figure", lambda fig, path: saved.append(fig))
    data = type("Data", (), {"mixture": MIX, "name": "three_gaussians", "num_labels": 3})()
    models = {"denoiser": MIX.eps_model(SCHED), "classifier": MIX.classifier(SCHED)}
    demo._fields_figure(str(tmp_path / "fields.png"), data, models, SCHED, ["cfg", "dummy"], 3.0)
    titles = [ax.get_title() for ax in saved[0].axes if ax.get_title()]
    assert titles == ["unconditional, t = 200", "CFG w = 3, label 0, t = 200",
                      "dummy rule w = 3, label 0, t = 200"], titles
    assert [(int(y), w) for _, y, w in dummy] == [(0, demo.FIELD_W)]
