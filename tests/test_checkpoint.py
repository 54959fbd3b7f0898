"""Checkpoints: the file format, bit-exact round trips, one ValueError naming the file for every
bad file, and atomic writes (refdiff/checkpoint.py)."""
import json
import os
import re
import tempfile
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff.checkpoint import load, save, save_npz_atomic
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
    pytest.param(meta(kind="unet"), "kind must be one of \\('denoiser', 'classifier'\\), got 'unet'", id="kind"),
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
    pytest.param(lambda p: p.mkdir(), "cannot be read \\(Is a directory\\)", id="directory"),
    pytest.param(lambda p: p.write_bytes(b""), "not an .npz archive: the file is empty", id="empty"),
    pytest.param(lambda p: p.write_bytes(np.random.default_rng(0).bytes(500)), "not an .npz archive: no zip signature",
                 id="random-bytes"),
    pytest.param(write_npy, "not an .npz archive: no zip signature", id="npy-not-npz"),
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
    assert_refused(path, "entry 'trap' cannot be read \\(ValueError: .*allow_pickle=False")
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


@pytest.mark.parametrize("module,name,fake,error", [
    (np, "savez", savez_half_then_fail, OSError),
    (os, "fsync", interrupt, KeyboardInterrupt),
    (os, "replace", refuse, OSError),
])
def test_a_failed_save_leaves_the_old_file_and_no_temporary_file(module, name, fake, error, tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    save(path, small_model(seed=1))
    before = path.read_bytes()
    monkeypatch.setattr(module, name, fake)
    with pytest.raises(error):
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
    pytest.param({"W0": np.zeros(2)}, "model must be a Denoiser or Classifier, got dict", id="not-a-model"),
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
