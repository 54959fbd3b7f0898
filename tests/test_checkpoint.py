"""Checkpoints: the file format, bit-exact round trips, one ValueError naming the file for every
bad file, and atomic writes (refdiff/checkpoint.py)."""
import contextlib
import dataclasses
import json
import os
import re
import tempfile
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff import checkpoint
from refdiff import clip as clip_module
from refdiff import latent as latent_module
from refdiff import nn as nn_module
from refdiff.arrays import DTYPES
from refdiff.checkpoint import load, save
from refdiff.npz import save_npz_atomic
from refdiff.npz import all_fields, config_from, fields_of, only_meta_fields, read_scale
from refdiff.nn import param_shapes
from refdiff.nn import Classifier, Denoiser, MLPConfig, init_params
from refdiff.schedule import Schedule
from refdiff.train import train_denoiser

MODELS = {"denoiser": Denoiser, "classifier": Classifier}


def random_model(config, seed=0, history=False):
    """A model whose every parameter is random: init_params zeroes the output layer, which would
    make every output 0 and the comparison of outputs after a round trip vacuous."""
    rng = np.random.default_rng(seed)
    params = {key: rng.standard_normal(value.shape).astype(value.dtype)
              for key, value in init_params(config, rng).items()}
    model = MODELS[config.kind](params, config, Schedule.cosine(int(rng.integers(1, 60))))
    if history:
        model.history = rng.random(int(rng.integers(1, 20)))
    return model


def small_model(kind="denoiser", num_labels=3, dtype="float64", seed=0, history=False):
    return random_model(MLPConfig(kind, 2, num_labels, hidden=8, depth=2, t_embed=4, dtype=dtype), seed, history)


def outputs(model, rng):
    """The model's outputs on one random batch: unconditional, and conditional where it has labels."""
    n, config = 6, model.config
    x, t = 3 * rng.standard_normal((n, config.dim)), rng.integers(1, model.sched.T + 1, n)
    if config.kind == "classifier":
        return [model(x, t)]
    labelled = [model(x, t, rng.integers(0, config.num_labels, n))] if config.num_labels else []
    return [model(x, t)] + labelled


def assert_round_trip(model, path):
    """save then load gives the same class, config, params (order, dtype, bits), betas, history
    and outputs (bit for bit)."""
    save(path, model)
    back = load(path)
    assert type(back) is type(model) and back.config == model.config
    assert list(back.params) == list(model.params)
    for key, value in model.params.items():
        got = back.params[key]
        assert got.dtype == value.dtype and np.array_equal(got, value), (key, got, value)
    assert np.array_equal(back.sched.betas, model.sched.betas)
    assert hasattr(back, "history") == hasattr(model, "history")
    if hasattr(model, "history"):
        assert back.history.dtype == model.history.dtype and np.array_equal(back.history, model.history)
    for want, got in zip(outputs(model, np.random.default_rng(1)), outputs(back, np.random.default_rng(1))):
        assert np.any(want != 0), "vacuous comparison: the outputs are all zero"
        assert got.dtype == want.dtype and np.array_equal(got, want), (got, want)


# -- the format and round trips -----------------------------------------------------------------

def test_the_file_holds_exactly_the_documented_entries(tmp_path):
    model, path = small_model(history=True), tmp_path / "m.npz"
    save(path, model)
    with np.load(path, allow_pickle=False) as f:
        entries = {key: f[key] for key in f.files}
    expected = {"meta", "schedule_betas", "history"} | {"param/" + key for key in model.params}
    assert set(entries) == expected, sorted(entries)
    meta = entries["meta"]
    assert meta.shape == () and meta.dtype.kind == "U"
    assert json.loads(meta.item()) == {"format": "refdiff-checkpoint", "version": 1, "kind": "denoiser",
                                       "config": model.config.to_dict()}
    assert np.array_equal(entries["schedule_betas"], model.sched.betas) and entries["schedule_betas"][0] == 0


@pytest.mark.parametrize("history", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind,num_labels", [("denoiser", 3), ("denoiser", 0), ("classifier", 3)])
def test_round_trip_is_bit_exact(kind, num_labels, dtype, history, tmp_path):
    assert_round_trip(small_model(kind, num_labels, dtype, history=history), tmp_path / "m.npz")


def test_round_trip_of_a_trained_denoiser(tmp_path):
    rng = np.random.default_rng(0)
    x0, y = rng.standard_normal((40, 2)), rng.integers(0, 3, 40)
    model = train_denoiser(x0, y, Schedule.linear(50), rng, steps=5, batch=16, hidden=16, depth=2,
                           dtype="float32", verbose=False)
    assert model.history.shape == (5,)
    assert_round_trip(model, tmp_path / "trained.npz")


@st.composite
def configs(draw):
    kind = draw(st.sampled_from(["denoiser", "classifier"]))
    return MLPConfig(kind, draw(st.integers(1, 8)), draw(st.integers(0 if kind == "denoiser" else 1, 6)),
                     hidden=draw(st.integers(1, 32)), depth=draw(st.integers(1, 3)),
                     t_embed=2 * draw(st.integers(1, 8)), dtype=draw(st.sampled_from(["float32", "float64"])),
                     arch=draw(st.sampled_from(["mlp", "resnet"])))


@given(configs(), st.integers(0, 2**32 - 1), st.booleans())
def test_round_trip_over_config_sizes(config, seed, history):
    model = random_model(config, seed, history)
    assert param_shapes(config) == {key: value.shape for key, value in model.params.items()}
    with tempfile.TemporaryDirectory() as folder:
        assert_round_trip(model, os.path.join(folder, "m.npz"))


# -- bad files ----------------------------------------------------------------------------------

def meta(**changes):
    """An edit of the valid entries that updates fields of 'meta'."""
    return lambda entries: {"meta": np.array(json.dumps({**json.loads(entries["meta"].item()), **changes}))}


def config(**changes):
    """An edit of the valid entries that updates fields of meta's 'config'."""
    def edit(entries):
        fields = json.loads(entries["meta"].item())["config"]
        return meta(config={**fields, **changes})(entries)
    return edit


def betas(*values):
    return lambda entries: {"schedule_betas": np.array(values)}


def param(key, value):
    """An edit that sets (value None: removes) parameter ``key``; value may be a function of the old one."""
    def edit(entries):
        old = entries.get("param/" + key)
        return {"param/" + key: value(old) if callable(value) else value}
    return edit


def poison(value):
    """Parameter b_out with its first entry set to value."""
    def set_first(b):
        b = b.copy()
        b[0] = value
        return b
    return param("b_out", set_first)


BAD_ENTRIES = [
    pytest.param(lambda e: {"meta": None}, "no 'meta' entry", id="no-meta"),
    pytest.param(lambda e: {"meta": np.array("{format: 1")}, "'meta' is not valid JSON", id="meta-not-json"),
    pytest.param(lambda e: {"meta": np.array("[1, 2]")}, "'meta' must be a JSON object, got list", id="meta-list"),
    pytest.param(lambda e: {"meta": np.array(1.0)}, "'meta' must be a 0-d unicode array", id="meta-number"),
    pytest.param(lambda e: {"meta": np.array(["{}"])}, "'meta' must be a 0-d unicode array", id="meta-1d"),
    pytest.param(meta(format="other"), "format must be 'refdiff-checkpoint', got 'other'", id="format"),
    pytest.param(meta(format=None), "format must be 'refdiff-checkpoint', got None", id="no-format"),
    pytest.param(meta(version=2), "unsupported version 2: this refdiff reads version 1", id="version-2"),
    pytest.param(meta(version="1"), "unsupported version '1'", id="version-string"),
    pytest.param(meta(version=True), "unsupported version True", id="version-bool"),
    pytest.param(meta(kind="unet"), "kind must be one of \\('denoiser', 'classifier', 'clip', 'autoencoder'\\), "
                                    "got 'unet'", id="kind"),
    pytest.param(meta(kind="classifier"), "config kind 'denoiser' differs from 'meta' kind 'classifier'",
                 id="kind-mismatch"),
    pytest.param(meta(config=[1]), "'meta' config must be a JSON object, got list", id="config-list"),
    pytest.param(config(hidden=0), "bad config \\(hidden must be an integer >= 1, got 0\\)", id="config-hidden-0"),
    pytest.param(config(dim=2.0), "bad config \\(dim must be an integer >= 1, got 2.0\\)", id="config-float"),
    pytest.param(config(dtype="float16"), "bad config \\(dtype must be one of", id="config-dtype"),
    pytest.param(config(width=3), "bad config .*unexpected keyword argument 'width'", id="config-extra-field"),
    pytest.param(meta(config={"kind": "denoiser"}), "bad config .*missing 2 required", id="config-short"),
    pytest.param(config(hidden=9), "parameter 'W0' must have shape \\(10, 9\\) and dtype float64, "
                                   "got shape \\(10, 8\\)", id="shapes-vs-config"),
    pytest.param(param("W_out", None), "missing \\['W_out'\\], unexpected \\[\\]", id="param-missing"),
    pytest.param(param("W9", np.zeros((8, 8))), "missing \\[\\], unexpected \\['W9'\\]", id="param-extra"),
    pytest.param(param("W1", lambda w: w.T[:, :5]), "parameter 'W1' must have shape \\(8, 8\\)", id="param-shape"),
    pytest.param(param("W0", lambda w: w.astype(np.float32)), "parameter 'W0' .* dtype float64, got .* dtype float32",
                 id="param-dtype"),
    pytest.param(poison(np.nan), "parameter 'b_out' is not finite", id="param-nan"),
    pytest.param(poison(-np.inf), "parameter 'b_out' is not finite", id="param-inf"),
    pytest.param(lambda e: {"schedule_betas": None}, "no 'schedule_betas' entry", id="no-betas"),
    pytest.param(betas(0.0, 0.5, 1.5), "bad 'schedule_betas' \\(betas must lie in \\(0, 1\\], got 1.5\\)",
                 id="beta-above-1"),
    pytest.param(betas(0.1, 0.5), "bad 'schedule_betas' \\(betas must be a 1-D array \\[0, beta_1", id="beta0-not-0"),
    pytest.param(betas(0.0, np.nan), "bad 'schedule_betas' \\(betas must be finite", id="beta-nan"),
    pytest.param(betas(0.0), "bad 'schedule_betas' \\(betas must be a 1-D array", id="betas-T-0"),
    pytest.param(lambda e: {"schedule_betas": np.array([0, 1])}, "'schedule_betas' must be float64, got dtype int",
                 id="betas-int"),
    pytest.param(lambda e: {"history": np.zeros((2, 2))}, "'history' must be a 1-D float array", id="history-2d"),
    pytest.param(lambda e: {"extra": np.zeros(1)}, "unexpected entries \\['extra'\\]", id="unknown-entry"),
]


@pytest.fixture
def good_entries(tmp_path):
    """The entries of a valid checkpoint: a denoiser with K = 3, hidden 8, depth 2, float64, a history."""
    path = tmp_path / "good.npz"
    save(path, small_model(history=True))
    with np.load(path, allow_pickle=False) as f:
        return {key: f[key] for key in f.files}


def assert_refused(path, problem):
    """load(path) raises ValueError whose message names the path, then the problem."""
    with pytest.raises(ValueError, match=f"^checkpoint {re.escape(str(path))}: .*{problem}"):
        load(path)


@pytest.mark.parametrize("edit,problem", BAD_ENTRIES)
def test_bad_entries_are_refused_naming_the_file_and_the_problem(edit, problem, good_entries, tmp_path):
    entries = dict(good_entries)
    for key, value in edit(good_entries).items():
        if value is None:
            del entries[key]
        else:
            entries[key] = value
    path = tmp_path / "bad.npz"
    np.savez(path, **entries)
    assert_refused(path, problem)


def test_the_unedited_entries_load(good_entries, tmp_path):
    """The control for the test above: its file, unedited, is a valid checkpoint."""
    np.savez(tmp_path / "bad.npz", **good_entries)
    assert load(tmp_path / "bad.npz").config.hidden == 8


def write_half(path):
    save(path, small_model())
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def write_npy(path):
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))


def write_raw_meta(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("meta", b'{"format": "refdiff-checkpoint"}')


@pytest.mark.parametrize("write,problem", [
    pytest.param(lambda p: None, "no such file", id="missing"),
    pytest.param(lambda p: p.mkdir(), "is a folder, not a file", id="directory"),
    pytest.param(lambda p: p.write_bytes(b""), "not an .npz archive: the file is empty", id="empty"),
    pytest.param(lambda p: p.write_bytes(np.random.default_rng(0).bytes(500)), "not an .npz archive: no zip signature",
                 id="random-bytes"),
    pytest.param(write_npy, "not an .npz archive: it holds a single .npy array \\(numpy.save\\)", id="npy-not-npz"),
    pytest.param(write_half, "not a valid .npz archive, truncated or corrupt \\(BadZipFile", id="truncated"),
    pytest.param(write_raw_meta, "entry 'meta' is not a .npy array", id="raw-zip-member"),
])
def test_damaged_files_are_refused_naming_the_file_and_the_problem(write, problem, tmp_path):
    path = tmp_path / "bad.npz"
    write(path)
    assert_refused(path, problem)


UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)


class Trap:
    """An object whose unpickling calls _record_unpickling."""

    def __reduce__(self):
        return _record_unpickling, ()


def test_a_pickled_object_array_is_refused_and_never_unpickled(good_entries, tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, **good_entries, trap=np.array([Trap()], dtype=object))
    assert_refused(path, "entry 'trap' holds Python objects, which only pickle could read")
    assert UNPICKLED == []
    with np.load(path, allow_pickle=True) as f:  # the control: the trap does fire when unpickled
        f["trap"]
    assert UNPICKLED == [True]


# -- saving ---------------------------------------------------------------------------------------

def test_overwriting_a_checkpoint_replaces_it(tmp_path):
    path = tmp_path / "m.npz"
    save(path, small_model("denoiser", seed=1))
    new = small_model("classifier", dtype="float32", seed=2)
    assert_round_trip(new, path)
    assert os.listdir(tmp_path) == ["m.npz"]


def savez_half_then_fail(f, **arrays):
    f.write(b"PK\x03\x04 the first half of a checkpoint")
    raise OSError("disk full")


def interrupt(*args):
    raise KeyboardInterrupt


def refuse(*args):
    raise OSError("rename refused")


@pytest.mark.parametrize("module,name,fake,error", [  # an OSError comes out as a ValueError naming the file
    (np, "savez", savez_half_then_fail, ValueError),
    (os, "fsync", interrupt, KeyboardInterrupt),
    (os, "replace", refuse, ValueError),
])
def test_a_failed_save_leaves_the_old_file_and_no_temporary_file(module, name, fake, error, tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    save(path, small_model(seed=1))
    before = path.read_bytes()
    monkeypatch.setattr(module, name, fake)
    with pytest.raises(error, match=f"^cannot write {re.escape(str(path))}: " if error is ValueError else None):
        save(path, small_model("classifier", seed=2))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]


def test_a_new_file_gets_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        save(tmp_path / "m.npz", small_model())
    finally:
        os.umask(old)
    assert oct((tmp_path / "m.npz").stat().st_mode & 0o777) == oct(0o644)


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"folder {re.escape(str(tmp_path / 'nope'))} does not exist"):
        save(tmp_path / "nope" / "m.npz", small_model())
    assert os.listdir(tmp_path) == []


def nan_model():
    model = small_model(dtype="float32", history=True)
    model.params["W0"][0, 0] = np.nan
    return model


@pytest.mark.parametrize("model,problem", [
    pytest.param({"W0": np.zeros(2)}, "model must be a Denoiser, Classifier, Clip or Autoencoder, got dict",
                 id="not-a-model"),
    pytest.param(Denoiser({"W0": np.zeros((1, 1))}, small_model().config, Schedule.linear(20)),
                 "missing \\['W1', 'W_out', 'b0', 'b1', 'b_out'\\], unexpected \\[\\]", id="wrong-params"),
    pytest.param(nan_model(), "parameter 'W0' is not finite", id="nan-param"),
])
def test_save_refuses_what_load_would_refuse_and_writes_nothing(model, problem, tmp_path):
    path = tmp_path / "m.npz"
    with pytest.raises(ValueError, match=f"^cannot save {re.escape(str(path))}: .*{problem}"):
        save(path, model)
    assert os.listdir(tmp_path) == []


def test_save_npz_atomic_refuses_object_arrays(tmp_path):
    with pytest.raises(ValueError, match="object arrays \\['obj'\\] would need pickle"):
        save_npz_atomic(tmp_path / "a.npz", x=np.zeros(2), obj=np.array([None], dtype=object))
    assert os.listdir(tmp_path) == []


# -- CLIP and autoencoder checkpoints -------------------------------------------------------------

from refdiff.clip import Clip, ClipConfig, clip_shapes, init_clip, train_clip  # noqa: E402
from refdiff.latent import AEConfig, Autoencoder, autoencoder_shapes, train_autoencoder  # noqa: E402


def random_params(shapes, dtype, rng):
    """Every parameter drawn from N(0, 1), so that no output is 0 by construction."""
    return {key: rng.standard_normal(shape).astype(dtype) for key, shape in shapes.items()}


def random_clip(config, seed=0, noise_aware=True, history=False):
    rng = np.random.default_rng(seed)
    sched = Schedule.cosine(int(rng.integers(1, 60))) if noise_aware else None
    model = Clip(random_params(clip_shapes(config), config.dtype, rng), config, sched)
    if history:
        model.history = rng.random(int(rng.integers(1, 20))).astype(config.dtype)
    return model


def random_autoencoder(config, seed=0, scale=None, history=False):
    rng = np.random.default_rng(seed)
    scale = float(np.exp(rng.normal())) if scale is None else scale
    model = Autoencoder(random_params(autoencoder_shapes(config), config.dtype, rng), config, scale)
    if history:
        model.history = rng.random(int(rng.integers(1, 20)))
    return model


def small_clip(noise_aware=True, dtype="float64", seed=0, history=False, vocab=("red", "blue bar", "thin")):
    config = ClipConfig(2, tuple(vocab), embed=3, hidden=8, depth=2, text_hidden=5, text_depth=1, t_embed=4,
                        dtype=dtype)
    return random_clip(config, seed, noise_aware, history)


def small_autoencoder(dtype="float64", seed=0, history=False):
    return random_autoencoder(AEConfig(dim=6, latent=3, hidden=8, depth=2, kl_weight=1e-3, dtype=dtype), seed,
                              history=history)


def new_kind_outputs(model, rng):
    """A CLIP's logits (every image with every vocabulary phrase); an autoencoder's mean and sampled
    latents and its decoding."""
    n = 5
    if isinstance(model, Clip):
        x = 3 * rng.standard_normal((n, model.config.dim))
        t = rng.integers(1, model.sched.T + 1, n) if model.noise_aware else None
        return [model.logits(x, list(model.config.vocab), t)]
    x, z = rng.standard_normal((n, model.config.dim)), rng.standard_normal((n, model.config.latent))
    return [model.encode(x), model.encode(x, np.random.default_rng(2)), model.decode(z)]


def assert_new_kind_round_trip(model, path):
    """save then load gives the same class, config, params (order, dtype, bits), schedule or its
    absence, scale, history and outputs (bit for bit)."""
    save(path, model)
    back = load(path)
    assert type(back) is type(model) and back.config == model.config
    assert list(back.params) == list(model.params)
    for key, value in model.params.items():
        got, value = back.params[key], np.asarray(value)
        assert isinstance(got, np.ndarray) and got.dtype == value.dtype, (key, got, value)
        assert np.array_equal(got, value), (key, got, value)
    if isinstance(model, Clip):
        assert isinstance(back.config.vocab, tuple)
        assert (back.sched is None) == (model.sched is None)
        assert model.sched is None or np.array_equal(back.sched.betas, model.sched.betas)
    else:
        assert type(back.scale) is float and back.scale == model.scale, (back.scale, model.scale)
    assert hasattr(back, "history") == hasattr(model, "history")
    if hasattr(model, "history"):
        assert back.history.dtype == model.history.dtype and np.array_equal(back.history, model.history)
    # An extreme scale may overflow both alike; a subnormal one is 0 in float32, so decoding divides
    # by zero and gives inf and NaN in both alike (compared with equal_nan below).
    with np.errstate(all="ignore"):
        wants = new_kind_outputs(model, np.random.default_rng(1))
        gots = new_kind_outputs(back, np.random.default_rng(1))
    # (a scale of 5e-324 may make one output all 0, not all of them)
    assert any(np.any(want != 0) for want in wants), "vacuous comparison: the outputs are all zero"
    for want, got in zip(wants, gots):
        assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True), (got, want)


def saved_entries(path):
    with np.load(path, allow_pickle=False) as f:
        return {key: f[key] for key in f.files}


@pytest.mark.parametrize("noise_aware", [True, False])
def test_a_clip_file_holds_exactly_the_documented_entries(noise_aware, tmp_path):
    model, path = small_clip(noise_aware, history=True), tmp_path / "c.npz"
    save(path, model)
    entries = saved_entries(path)
    expected = {"meta", "history"} | {"param/" + key for key in clip_shapes(model.config)}
    assert set(entries) == expected | ({"schedule_betas"} if noise_aware else set()), sorted(entries)
    config = {"dim": 2, "vocab": ["red", "blue bar", "thin"], "embed": 3, "hidden": 8, "depth": 2, "text_hidden": 5,
              "text_depth": 1, "t_embed": 4, "arch": "mlp", "dtype": "float64"}
    assert json.loads(entries["meta"].item()) == {"format": "refdiff-checkpoint", "version": 1, "kind": "clip",
                                                  "config": config, "noise_aware": noise_aware}
    assert entries["param/logit_scale"].shape == ()
    if noise_aware:
        assert np.array_equal(entries["schedule_betas"], model.sched.betas)


def test_an_autoencoder_file_holds_exactly_the_documented_entries(tmp_path):
    model, path = small_autoencoder(history=True), tmp_path / "a.npz"
    save(path, model)
    entries = saved_entries(path)
    expected = {"meta", "scale", "history"} | {"param/" + key for key in autoencoder_shapes(model.config)}
    assert set(entries) == expected, sorted(entries)
    assert json.loads(entries["meta"].item()) == {"format": "refdiff-checkpoint", "version": 1, "kind": "autoencoder",
                                                  "config": model.config.to_dict()}
    assert entries["scale"].shape == () and entries["scale"].dtype == np.float64
    assert entries["scale"].item() == model.scale


@pytest.mark.parametrize("history", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("make", [lambda **k: small_clip(True, **k), lambda **k: small_clip(False, **k),
                                  small_autoencoder], ids=["clip-noise-aware", "clip-clean", "autoencoder"])
def test_new_kinds_round_trip_bit_exactly(make, dtype, history, tmp_path):
    assert_new_kind_round_trip(make(dtype=dtype, history=history), tmp_path / "m.npz")


def test_round_trip_of_a_clip_from_init_clip(tmp_path):
    """init_clip's parameters, logit_scale included, as training starts from them."""
    config = small_clip().config
    model = Clip(init_clip(config, np.random.default_rng(0)), config, Schedule.linear(20))
    assert_new_kind_round_trip(model, tmp_path / "c.npz")


@pytest.mark.parametrize("noise_aware", [True, False])
def test_round_trip_of_trained_clips(noise_aware, tmp_path):
    """train_clip's EMA leaves logit_scale a numpy scalar: it comes back a 0-d array, same dtype and bits."""
    rng = np.random.default_rng(0)
    x, words = rng.standard_normal((30, 2)), np.eye(3, dtype=bool)[rng.integers(0, 3, 30)]
    model = train_clip(x, words, ("a", "b", "c"), rng, sched=Schedule.linear(30) if noise_aware else None, steps=3,
                       batch=8, embed=4, hidden=8, depth=1, dtype="float32", verbose=False)
    assert model.history.shape == (3,)
    assert_new_kind_round_trip(model, tmp_path / "c.npz")


def test_round_trip_of_a_trained_autoencoder(tmp_path):
    rng = np.random.default_rng(0)
    model = train_autoencoder(rng.random((30, 6)), rng, steps=3, batch=8, latent=2, hidden=8, depth=1,
                              dtype="float32", verbose=False)
    assert model.history.shape == (3,) and model.scale != 1.0
    assert_new_kind_round_trip(model, tmp_path / "a.npz")


# Any unicode, as JSON must carry it: every code point but the surrogates (category Cs), which is the
# alphabet of st.text()'s default characters(codec="utf-8") and draws the same strings, without
# hypothesis first encoding all 1.1M code points to build the codec's table, 2.4 s of CPU in every
# process that starts without a .hypothesis/ folder (a clean checkout, as .ci/run).
phrases = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8).filter(lambda s: s.split())


@st.composite
def clip_configs(draw):
    return ClipConfig(draw(st.integers(1, 6)), tuple(draw(st.lists(phrases, min_size=1, max_size=5, unique=True))),
                      embed=draw(st.integers(1, 6)), hidden=draw(st.integers(1, 16)), depth=draw(st.integers(1, 3)),
                      text_hidden=draw(st.integers(1, 8)), text_depth=draw(st.integers(1, 2)),
                      t_embed=2 * draw(st.integers(1, 4)), arch=draw(st.sampled_from(["mlp", "resnet"])),
                      dtype=draw(st.sampled_from(["float32", "float64"])))


@st.composite
def ae_configs(draw):
    return AEConfig(draw(st.integers(1, 8)), draw(st.integers(1, 4)), draw(st.integers(1, 16)),
                    draw(st.integers(1, 3)), draw(st.floats(min_value=0, allow_infinity=False)),
                    draw(st.sampled_from(["float32", "float64"])))


@given(clip_configs(), st.integers(0, 2**32 - 1), st.booleans(), st.booleans())
def test_clip_round_trip_over_configs(config, seed, noise_aware, history):
    model = random_clip(config, seed, noise_aware, history)
    made = init_clip(config, np.random.default_rng(0))
    assert clip_shapes(config) == {key: np.shape(value) for key, value in made.items()}
    with tempfile.TemporaryDirectory() as folder:
        assert_new_kind_round_trip(model, os.path.join(folder, "c.npz"))


@given(ae_configs(), st.integers(0, 2**32 - 1), st.floats(min_value=0, exclude_min=True, allow_infinity=False),
       st.booleans())
def test_autoencoder_round_trip_over_configs_and_scales(config, seed, scale, history):
    """Any finite kl_weight >= 0 and scale > 0, subnormal to 1.8e308, come back bit for bit (JSON floats and
    a float64 entry are exact)."""
    with tempfile.TemporaryDirectory() as folder:
        assert_new_kind_round_trip(random_autoencoder(config, seed, scale, history), os.path.join(folder, "a.npz"))


def set_entry(key, value):
    """An edit that sets (value None: removes) entry ``key``."""
    return lambda entries: {key: value}


def clip_vocab(vocab):
    return config(vocab=vocab)


def clip_config_without(field):
    def edit(entries):
        fields = json.loads(entries["meta"].item())["config"]
        return meta(config={k: v for k, v in fields.items() if k != field})(entries)
    return edit


def poison_entry(key, value):
    def edit(entries):
        array = entries[key].copy()
        array.reshape(-1)[0] = value
        return {key: array}
    return edit


BAD_CLIP_ENTRIES = [
    pytest.param(meta(noise_aware=None), "'meta' noise_aware must be true or false, got None", id="noise-aware-null"),
    pytest.param(meta(noise_aware=1), "'meta' noise_aware must be true or false, got 1", id="noise-aware-int"),
    pytest.param(set_entry("schedule_betas", None), "a noise-aware CLIP needs a 'schedule_betas' entry", id="no-betas"),
    pytest.param(meta(noise_aware=False), "a clean CLIP \\('meta' noise_aware false\\) must have no 'schedule_betas'",
                 id="clean-with-betas"),
    pytest.param(betas(0.0, 0.5, 1.5), "bad 'schedule_betas' \\(betas must lie in \\(0, 1\\], got 1.5\\)",
                 id="beta-bad"),
    pytest.param(meta(scale=2.0), "unexpected 'meta' fields \\['scale'\\] for kind 'clip'", id="meta-extra"),
    pytest.param(meta(kind="autoencoder"), "unexpected 'meta' fields \\['noise_aware'\\] for kind 'autoencoder'",
                 id="kind-autoencoder"),
    pytest.param(meta(kind="denoiser"), "bad config .*unexpected keyword argument 'vocab'", id="kind-denoiser"),
    pytest.param(meta(config=[1]), "'meta' config must be a JSON object, got list", id="config-list"),
    pytest.param(clip_config_without("text_depth"),
                 "bad config \\(fields of ClipConfig missing \\['text_depth'\\], unexpected \\[\\]\\)",
                 id="field-missing"),
    pytest.param(config(width=3), "bad config \\(fields of ClipConfig missing \\[\\], unexpected \\['width'\\]\\)",
                 id="field-extra"),
    pytest.param(clip_vocab("red"), "bad config \\(vocab must be a JSON list of strings, got 'red'\\)", id="vocab-str"),
    pytest.param(clip_vocab([]), "bad config \\(vocab must be a non-empty tuple", id="vocab-empty"),
    pytest.param(clip_vocab(["red", 1, "thin"]), "bad config \\(vocab must be a non-empty tuple", id="vocab-number"),
    pytest.param(clip_vocab(["red", " ", "thin"]), "bad config \\(vocab must be a non-empty tuple", id="vocab-blank"),
    pytest.param(clip_vocab(["red", "red", "thin"]), "bad config \\(vocab must not repeat", id="vocab-repeat"),
    pytest.param(clip_vocab(["red", "blue bar", "thin", "wide"]), "parameter 'text/W0' must have shape \\(4, 5\\) "
                 "and dtype float64, got shape \\(3, 5\\)", id="vocab-vs-params"),
    pytest.param(config(text_depth=0), "bad config \\(text_depth must be an integer >= 1, got 0\\)", id="text-depth-0"),
    pytest.param(config(text_hidden=True), "bad config \\(text_hidden must be an integer >= 1, got True\\)",
                 id="text-hidden-bool"),
    pytest.param(config(dim=2.0), "bad config \\(dim must be an integer >= 1, got 2.0\\)", id="dim-float"),
    pytest.param(config(arch="unet"), "bad config \\(arch must be one of", id="arch"),
    pytest.param(config(dtype="float16"), "bad config \\(dtype must be one of", id="dtype"),
    pytest.param(config(embed=4), "parameter 'image/W_out' must have shape \\(8, 4\\)", id="embed-vs-params"),
    pytest.param(param("logit_scale", np.zeros(1)), "parameter 'logit_scale' must have shape \\(\\) and dtype float64, "
                 "got shape \\(1,\\)", id="logit-scale-1d"),
    pytest.param(param("logit_scale", np.array(np.nan)), "parameter 'logit_scale' is not finite", id="logit-scale-nan"),
    pytest.param(poison_entry("param/text/b_out", np.inf), "parameter 'text/b_out' is not finite", id="param-inf"),
    pytest.param(param("image/W0", lambda w: w.astype(np.float32)), "parameter 'image/W0' .* dtype float64, got .* "
                 "dtype float32", id="param-dtype"),
    pytest.param(param("text/b_out", None), "missing \\['text/b_out'\\], unexpected \\[\\]", id="param-missing"),
    pytest.param(param("W0", np.zeros((2, 8))), "missing \\[\\], unexpected \\['W0'\\]", id="param-unprefixed"),
    pytest.param(set_entry("scale", np.array(1.0)), "unexpected entries \\['scale'\\]", id="scale-entry"),
    pytest.param(set_entry("history", np.zeros(3, dtype=int)), "'history' must be a 1-D float array", id="history-int"),
]


BAD_AUTOENCODER_ENTRIES = [
    pytest.param(set_entry("scale", None), "no 'scale' entry", id="no-scale"),
    pytest.param(set_entry("scale", np.array(0.0)), "'scale' must be finite and > 0, got 0.0", id="scale-0"),
    pytest.param(set_entry("scale", np.array(-2.0)), "'scale' must be finite and > 0, got -2.0", id="scale-negative"),
    pytest.param(set_entry("scale", np.array(np.nan)), "'scale' must be finite and > 0, got nan", id="scale-nan"),
    pytest.param(set_entry("scale", np.array(np.inf)), "'scale' must be finite and > 0, got inf", id="scale-inf"),
    pytest.param(set_entry("scale", np.array(1.5, dtype=np.float32)),
                 "'scale' must be a 0-d float64 array, got shape \\(\\) dtype float32", id="scale-float32"),
    pytest.param(set_entry("scale", np.array(2)), "'scale' must be a 0-d float64 array, got shape \\(\\) dtype int",
                 id="scale-int"),
    pytest.param(set_entry("scale", np.array([1.5])), "'scale' must be a 0-d float64 array, got shape \\(1,\\)",
                 id="scale-1d"),
    pytest.param(set_entry("schedule_betas", np.array([0.0, 0.5])), "unexpected entries \\['schedule_betas'\\]",
                 id="betas-entry"),
    pytest.param(meta(noise_aware=False), "unexpected 'meta' fields \\['noise_aware'\\] for kind 'autoencoder'",
                 id="meta-extra"),
    pytest.param(meta(kind="clip"), "'meta' noise_aware must be true or false, got None", id="kind-clip"),
    pytest.param(meta(kind="classifier"), "bad config .*unexpected keyword argument 'latent'", id="kind-classifier"),
    pytest.param(clip_config_without("kl_weight"),
                 "bad config \\(fields of AEConfig missing \\['kl_weight'\\], unexpected \\[\\]\\)",
                 id="field-missing"),
    pytest.param(config(kind="denoiser"), "bad config \\(fields of AEConfig missing \\[\\], unexpected \\['kind'\\]\\)",
                 id="field-extra"),
    pytest.param(config(kl_weight=float("nan")), "bad config \\(kl_weight must be a finite number >= 0, got nan\\)",
                 id="kl-nan"),
    pytest.param(config(kl_weight=-1e-3), "bad config \\(kl_weight must be a finite number >= 0", id="kl-negative"),
    pytest.param(config(kl_weight="0.001"), "bad config \\(kl_weight must be a finite number >= 0, got '0.001'\\)",
                 id="kl-string"),
    pytest.param(config(latent=0), "bad config \\(latent must be an integer >= 1, got 0\\)", id="latent-0"),
    pytest.param(config(depth=1.0), "bad config \\(depth must be an integer >= 1, got 1.0\\)", id="depth-float"),
    pytest.param(config(dtype="float16"), "bad config \\(dtype must be one of", id="dtype"),
    pytest.param(config(latent=4), "parameter 'encoder/W_out' must have shape \\(8, 8\\) and dtype float64, "
                 "got shape \\(8, 6\\)", id="latent-vs-params"),
    pytest.param(config(dtype="float32"), "parameter 'encoder/W0' .* dtype float32, got .* dtype float64",
                 id="dtype-vs-params"),
    pytest.param(poison_entry("param/decoder/b_out", np.nan), "parameter 'decoder/b_out' is not finite",
                 id="param-nan"),
    pytest.param(param("encoder/W0", None), "missing \\['encoder/W0'\\], unexpected \\[\\]", id="param-missing"),
    pytest.param(param("decoder/W9", np.zeros((8, 8))), "missing \\[\\], unexpected \\['decoder/W9'\\]",
                 id="param-extra"),
    pytest.param(set_entry("history", np.zeros((2, 2))), "'history' must be a 1-D float array", id="history-2d"),
    pytest.param(set_entry("extra", np.zeros(1)), "unexpected entries \\['extra'\\]", id="unknown-entry"),
]


def refuse_edited(good, edit, problem, path):
    """Write ``good`` with ``edit`` applied (a None value removes the entry), then check that load refuses it."""
    entries = dict(good)
    for key, value in edit(good).items():
        if value is None:
            del entries[key]
        else:
            entries[key] = value
    np.savez(path, **entries)
    assert_refused(path, problem)


@pytest.fixture
def good_clip_entries(tmp_path):
    """A valid noise-aware CLIP checkpoint: vocab of 3 phrases, text_hidden 5, float64, a history."""
    save(tmp_path / "good.npz", small_clip(True, history=True))
    return saved_entries(tmp_path / "good.npz")


@pytest.fixture
def good_ae_entries(tmp_path):
    """A valid autoencoder checkpoint: dim 6, latent 3, hidden 8, float64, a history."""
    save(tmp_path / "good.npz", small_autoencoder(history=True))
    return saved_entries(tmp_path / "good.npz")


@pytest.mark.parametrize("edit,problem", BAD_CLIP_ENTRIES)
def test_bad_clip_entries_are_refused_naming_the_file_and_the_problem(edit, problem, good_clip_entries, tmp_path):
    refuse_edited(good_clip_entries, edit, problem, tmp_path / "bad.npz")


@pytest.mark.parametrize("edit,problem", BAD_AUTOENCODER_ENTRIES)
def test_bad_autoencoder_entries_are_refused_naming_the_file_and_the_problem(edit, problem, good_ae_entries, tmp_path):
    refuse_edited(good_ae_entries, edit, problem, tmp_path / "bad.npz")


def test_a_clean_clip_file_with_betas_is_refused(tmp_path):
    save(tmp_path / "clean.npz", small_clip(False))
    refuse_edited(saved_entries(tmp_path / "clean.npz"), betas(0.0, 0.5), "a clean CLIP \\('meta' noise_aware false\\) "
                  "must have no 'schedule_betas' entry", tmp_path / "bad.npz")


def test_a_clean_clip_file_claiming_noise_awareness_is_refused(tmp_path):
    save(tmp_path / "clean.npz", small_clip(False))
    refuse_edited(saved_entries(tmp_path / "clean.npz"), meta(noise_aware=True),
                  "a noise-aware CLIP needs a 'schedule_betas' entry", tmp_path / "bad.npz")


def test_the_unedited_clip_and_autoencoder_entries_load(good_clip_entries, good_ae_entries, tmp_path):
    """The controls for the tests above: their files, unedited, are valid checkpoints."""
    np.savez(tmp_path / "c.npz", **good_clip_entries)
    np.savez(tmp_path / "a.npz", **good_ae_entries)
    assert load(tmp_path / "c.npz").config.text_hidden == 5 and load(tmp_path / "a.npz").config.latent == 3


def nan_clip():
    model = small_clip(dtype="float32")
    model.params["logit_scale"] = np.array(np.nan, dtype=np.float32)
    return model


def bad_scale_autoencoder():
    model = small_autoencoder()
    model.scale = -1.0  # Autoencoder checks its scale when made, not afterwards
    return model


def float32_param_autoencoder():
    model = small_autoencoder()
    model.params["decoder/W0"] = model.params["decoder/W0"].astype(np.float32)
    return model


@pytest.mark.parametrize("model,problem", [
    pytest.param(nan_clip(), "parameter 'logit_scale' is not finite", id="clip-nan"),
    pytest.param(Clip({}, {"dim": 2}, None), "config must be a ClipConfig, got dict",
                 id="clip-dict-config"),
    pytest.param(bad_scale_autoencoder(), "'scale' must be finite and > 0, got -1.0", id="ae-scale"),
    pytest.param(float32_param_autoencoder(), "parameter 'decoder/W0' .* dtype float64, got .* dtype float32",
                 id="ae-dtype"),
])
def test_save_refuses_a_bad_clip_or_autoencoder_and_writes_nothing(model, problem, tmp_path):
    path = tmp_path / "m.npz"
    with pytest.raises(ValueError, match=f"^cannot save {re.escape(str(path))}: .*{problem}"):
        save(path, model)
    assert os.listdir(tmp_path) == []


def test_overwriting_across_kinds(tmp_path):
    path = tmp_path / "m.npz"
    save(path, small_model())
    assert_new_kind_round_trip(small_autoencoder(dtype="float32"), path)
    assert_new_kind_round_trip(small_clip(False), path)
    assert_round_trip(small_model("classifier"), path)
    assert os.listdir(tmp_path) == ["m.npz"]


# -- a model kind of one's own (checkpoint.register_kind) and the table of kinds --------------------


@dataclasses.dataclass(frozen=True)
class PolyConfig:
    """A user's config: a frozen dataclass with a dtype field (docs/architecture.md, "How to add a
    model kind")."""
    dim: int
    degree: int
    dtype: str = "float64"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")


def poly_shapes(config):
    return {"coef": (config.degree + 1, config.dim), "shift": (config.dim,)}


class Poly:
    """A user's model: x -> gain * sum_j coef_j x^j + shift, coordinatewise; params, a config and
    one extra value (gain), constructed as cls(params, config, extra)."""

    def __init__(self, params, config, gain):
        self.params, self.config, self.gain = params, config, gain

    def __call__(self, x):
        powers = x[..., None] ** np.arange(self.config.degree + 1)  # (N, D, J)
        return self.gain * np.einsum("ndj,jd->nd", powers, self.params["coef"]) + self.params["shift"]


def poly_to_entries(model):
    return {"config": fields_of(model.config, PolyConfig)}, {"gain": np.array(model.gain, np.float64)}


def poly_from_entries(meta, arrays):
    only_meta_fields(meta, set())
    config = config_from(PolyConfig, all_fields(meta, PolyConfig))
    return config, read_scale(arrays.pop("gain", None)), poly_shapes(config)


POLY = checkpoint.Kind(Poly, poly_to_entries, poly_from_entries)
BUILT_IN_KINDS = ("denoiser", "classifier", "clip", "autoencoder")


@contextlib.contextmanager
def poly_registered():
    """The kind "poly" in checkpoint.KINDS for the with-block, removed afterwards whatever happens."""
    checkpoint.register_kind("poly", POLY)
    try:
        yield
    finally:
        del checkpoint.KINDS["poly"]
    assert tuple(checkpoint.KINDS) == BUILT_IN_KINDS


def random_poly(dim, degree, dtype, seed, gain, history):
    """Parameters over 60 decades (float64; 40 in float32), signed, with exact zeros, -0.0 and a
    subnormal, so that any conversion on the way would change some bits."""
    rng = np.random.default_rng(seed)
    tiny = np.finfo(DTYPES[dtype]).smallest_subnormal
    params = {}
    for key, shape in poly_shapes(PolyConfig(dim, degree, dtype)).items():
        decades = 30 if dtype == "float64" else 18
        value = rng.choice([-1.0, 1.0], shape) * 10.0 ** rng.uniform(-decades, decades, shape)
        value.flat[rng.integers(0, value.size)] = rng.choice([0.0, -0.0, tiny, -tiny])
        params[key] = value.astype(dtype)
    model = Poly(params, PolyConfig(dim, degree, dtype), gain)
    if history:
        model.history = rng.standard_normal(int(rng.integers(1, 9)))
    return model


@given(st.integers(1, 5), st.integers(0, 3), st.sampled_from(["float64", "float32"]), st.integers(0, 2**32 - 1),
       st.floats(min_value=0, exclude_min=True, allow_infinity=False), st.booleans())
def test_a_registered_kind_round_trips_bit_for_bit(dim, degree, dtype, seed, gain, history):
    model = random_poly(dim, degree, dtype, seed, gain, history)
    with poly_registered(), tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "p.npz")
        save(path, model)
        entries = saved_entries(path)
        back = load(path)
    assert set(entries) == {"meta", "gain", "param/coef", "param/shift"} | ({"history"} if history else set())
    assert json.loads(entries["meta"].item()) == {
        "format": "refdiff-checkpoint", "version": 1, "kind": "poly",
        "config": {"dim": dim, "degree": degree, "dtype": dtype}}, entries["meta"]
    assert type(back) is Poly and back.config == model.config and list(back.params) == ["coef", "shift"]
    for key, value in model.params.items():
        got = back.params[key]
        assert got.dtype == value.dtype and got.shape == value.shape and got.tobytes() == value.tobytes(), (
            key, got, value)
    assert type(back.gain) is float and back.gain == gain, (back.gain, gain)
    assert hasattr(back, "history") == history
    if history:
        assert back.history.tobytes() == model.history.tobytes(), (back.history, model.history)
    x = np.random.default_rng(seed).uniform(-2, 2, (4, dim)).astype(dtype)
    with np.errstate(all="ignore"):  # huge params and gains overflow alike on both sides
        want, got = model(x), back(x)
    assert got.tobytes() == want.tobytes(), (got, want)


def test_an_unregistered_kind_is_neither_written_nor_read(tmp_path):
    model, path = random_poly(2, 1, "float64", 0, 1.5, False), tmp_path / "p.npz"
    with pytest.raises(ValueError, match="model must be a Denoiser, Classifier, Clip or Autoencoder, got Poly"):
        save(path, model)
    with poly_registered():
        save(path, model)
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {path}: 'meta' kind must be one of {BUILT_IN_KINDS}, "
                                                   "got 'poly'")):
        load(path)


def test_register_kind_refuses_a_taken_name_and_a_non_kind():
    for name in BUILT_IN_KINDS + ("", None, 3):
        with pytest.raises(ValueError, match=r"name must be a new kind's name \(not one of"):
            checkpoint.register_kind(name, POLY)
    for bad in (tuple(POLY), list(POLY), Poly, None):
        with pytest.raises(ValueError, match="kind must be a checkpoint.Kind, got"):
            checkpoint.register_kind("poly", bad)
    assert tuple(checkpoint.KINDS) == BUILT_IN_KINDS
    with poly_registered():
        with pytest.raises(ValueError, match="not one of .*'poly'.*got 'poly'"):
            checkpoint.register_kind("poly", POLY)
        assert checkpoint.KINDS["poly"] is POLY
    assert checkpoint.KINDS["denoiser"].cls is Denoiser


def test_kinds_holds_exactly_the_four_built_ins_in_order():
    assert list(checkpoint.KINDS) == list(BUILT_IN_KINDS)
    want = {"denoiser": (nn_module.Denoiser, nn_module.network_entries, nn_module.network_from_entries),
            "classifier": (nn_module.Classifier, nn_module.network_entries, nn_module.network_from_entries),
            "clip": (Clip, clip_module.clip_entries, clip_module.clip_from_entries),
            "autoencoder": (Autoencoder, latent_module.autoencoder_entries, latent_module.autoencoder_from_entries)}
    for name, kind in checkpoint.KINDS.items():
        assert isinstance(kind, checkpoint.Kind) and tuple(kind) == want[name], (name, kind)


CLIP_CONFIG = {"dim": 2, "vocab": ["red", "blue bar", "thin"], "embed": 3, "hidden": 8, "depth": 2, "text_hidden": 5,
               "text_depth": 1, "t_embed": 4, "arch": "mlp", "dtype": "float64"}


@pytest.mark.parametrize("name, make, meta, arrays", [
    ("denoiser", lambda: small_model("denoiser"), lambda m: {"config": m.config.to_dict()},
     lambda m: {"schedule_betas": m.sched.betas}),
    ("classifier", lambda: small_model("classifier"), lambda m: {"config": m.config.to_dict()},
     lambda m: {"schedule_betas": m.sched.betas}),
    ("clip", lambda: small_clip(True), lambda m: {"config": CLIP_CONFIG, "noise_aware": True},
     lambda m: {"schedule_betas": m.sched.betas}),
    ("clip", lambda: small_clip(False), lambda m: {"config": CLIP_CONFIG, "noise_aware": False}, lambda m: {}),
    ("autoencoder", small_autoencoder, lambda m: {"config": m.config.to_dict()},
     lambda m: {"scale": np.array(m.scale)}),
], ids=["denoiser", "classifier", "clip-noise-aware", "clip-clean", "autoencoder"])
def test_each_built_in_kinds_entries_are_the_documented_ones(name, make, meta, arrays):
    """to_entries gives the kind's meta fields ("config" among them) and its arrays other than the
    parameters and the history (module docstring: 'schedule_betas' float64 (T + 1,), 'scale' 0-d
    float64); from_entries reads them back, popping its arrays, with the config's parameter shapes."""
    model = make()
    model.history = np.ones(3)  # checkpoint itself stores the history: not among the kind's entries
    kind = checkpoint.KINDS[name]
    got_meta, got_arrays = kind.to_entries(model)
    assert got_meta == meta(model), (got_meta, meta(model))
    want_arrays = arrays(model)
    assert set(got_arrays) == set(want_arrays), sorted(got_arrays)
    for key, value in want_arrays.items():
        got = np.asarray(got_arrays[key])
        assert got.dtype == np.float64 and got.shape == value.shape and np.array_equal(got, value), (key, got, value)
    left = dict(got_arrays)
    config, extra, shapes = kind.from_entries(json.loads(json.dumps({"kind": name, **got_meta})), left)
    assert left == {} and config == model.config, (left, config)
    assert shapes == {key: np.shape(value) for key, value in model.params.items()}, shapes
    if name == "autoencoder":
        assert extra == model.scale
    else:
        assert (extra is None) == (model.sched is None)
        assert extra is None or np.array_equal(extra.betas, model.sched.betas)
