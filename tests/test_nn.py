"""Tests for refdiff/nn.py: the SiLU and dense primitives against independent formulas, central
differences and autograd's check_grads; the time embedding (L1) against its formula; init_params
and MLPConfig; the Denoiser and Classifier callables against a forward pass written out here with
numpy and scipy (L2)-(L4), the null label that CFG's one batched call relies on, and every
ValueError."""
import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from autograd.test_util import check_grads
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import expit

from refdiff.labels import NULL_LABEL
from refdiff.nn import (ARCHS, Classifier, Denoiser, MLPConfig, classifier_forward, dense, denoiser_forward,
                        init_params, param_shapes, silu, time_embedding)
from refdiff.schedule import Schedule
from strategies import EPS32, EPS64, assert_bounded, seeds

EPS = {"float64": EPS64, "float32": EPS32}
TINY = {"float64": np.finfo(np.float64).smallest_subnormal, "float32": np.finfo(np.float32).smallest_subnormal}
# h = 0 exactly, saturated sigmoid (|h| >= ~37 in float64, ~17 in float32), exp(-h) overflowing
# (h < -709.8 in float64, -88.7 in float32), and far beyond.
SILU_EDGES = [0.0, -0.0, 1.0, -1.0, 20.0, -20.0, 50.0, -50.0, 1e3, -1e3, 1e30, -1e30]


def h_arrays(dtype, bound=50.0):
    """Arrays of 1..30 normal floats in [-bound, bound] of ``dtype``, with SILU_EDGES appended by
    the tests. Subnormal h has its own test (test_silu_derivative_at_subnormal_h)."""
    width = 64 if dtype == "float64" else 32
    return hnp.arrays(dtype, st.integers(1, 30),
                      elements=st.floats(-bound, bound, width=width, allow_subnormal=False))


def silu_grad(h):
    """d/dh SiLU(h) elementwise, by autograd through the primitive's VJP."""
    return autograd.grad(lambda v: anp.sum(silu(v)))(h)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@given(data=st.data())
def test_silu_is_h_times_expit(dtype, data):
    h = np.concatenate([data.draw(h_arrays(dtype)), np.array(SILU_EDGES, dtype=dtype)])
    got = silu(h)
    want = h.astype(np.float64) * expit(h.astype(np.float64))
    assert got.dtype == h.dtype
    # sigmoid(h) = 1 / (1 + exp(-h)) is within 2 eps absolute (tests/test_nn_backward.py,
    # SIGMOID_ERROR), so |error of h s| <= 2 eps |h|, plus the product's rounding (eps/2 of |h| s);
    # 4 eps |h| covers both, and TINY the last step of the subnormal grid.
    assert_bounded(got, want, 4 * EPS[dtype] * np.abs(h.astype(np.float64)) + TINY[dtype], "SiLU(h)")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@given(data=st.data())
def test_silu_derivative_is_analytic(dtype, data):
    h = np.concatenate([data.draw(h_arrays(dtype)), np.array(SILU_EDGES, dtype=dtype)])
    got = silu_grad(h)
    h64 = h.astype(np.float64)
    s = expit(h64)
    want = s * (1 + h64 * (1 - s))
    assert got.dtype == h.dtype and np.all(np.isfinite(got)), got
    # The VJP recovers s as SiLU(h) / h, so s carries SiLU's ~3 eps absolute error (above); the
    # derivative s (1 + h (1 - s)) amplifies an error in s by |1 + h (1 - 2 s)| <= 1 + |h|.
    assert_bounded(got, want, 8 * EPS[dtype] * (1 + np.abs(h64)), "SiLU'(h)")


@given(h_arrays("float64"))
@example(np.array([0.0, 1e-300, -1e-300, 40.0, -40.0]))
def test_silu_derivative_matches_central_difference(h):
    delta = 1e-5 * np.maximum(1.0, np.abs(h))
    fd = (silu(h + delta) - silu(h - delta)) / (2 * delta)
    # Truncation delta^2 |SiLU'''| / 6 <= 1e-10 max(1, h^2) * 0.1 with |SiLU'''| <= 0.5 decaying
    # like h^2 e^-|h|; round-off eps |SiLU(h)| / delta <= 2.2e-16 * 50 / 5e-4 ~ 2e-11. 1e-9 covers
    # both; a wrong derivative formula (e.g. s alone) is off by up to 0.1.
    assert_bounded(silu_grad(h), fd, 1e-9, "SiLU'(h) vs central difference")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_silu_derivative_at_subnormal_h(dtype):
    """sigmoid(h) = 1/2 to within 1e-38 for subnormal h, so SiLU'(h) = 1/2 (to eps)."""
    tiny, normal = TINY[dtype], np.finfo(dtype).smallest_normal
    h = np.array([tiny, -tiny, 3 * tiny, 1001 * tiny, 0.5 * normal, normal], dtype=dtype)
    assert_bounded(silu_grad(h), 0.5, 4 * EPS[dtype], f"SiLU'(h) at subnormal h = {h}")


def test_check_grads_silu_and_dense():
    rng = np.random.default_rng(0)
    h = np.concatenate([[0.0, -0.0], 5 * rng.standard_normal(40)])
    check_grads(silu, modes=["rev"], order=1)(h)
    args = rng.standard_normal((5, 3)), rng.standard_normal((3, 4)), rng.standard_normal(4)
    for argnum in range(3):  # the VJPs with respect to h, W and b
        check_grads(dense, argnum, modes=["rev"], order=1)(*args)


@given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8), seeds, st.floats(-3, 3),
       st.sampled_from(["float64", "float32"]))
def test_dense_is_affine(n, fan_in, fan_out, seed, decade, dtype):
    rng = np.random.default_rng(seed)
    h = (10.0 ** decade * rng.standard_normal((n, fan_in))).astype(dtype)
    W, b = rng.standard_normal((fan_in, fan_out)).astype(dtype), rng.standard_normal(fan_out).astype(dtype)
    got = dense(h, W, b)
    # dense is defined as h W + b: the same operations in the same order, so equal bit for bit.
    assert got.dtype == h.dtype and np.array_equal(got, h @ W + b), (got, h @ W + b)


even_dims = st.integers(1, 128).map(lambda k: 2 * k)


@given(hnp.arrays(st.sampled_from([np.int64, np.int32, np.uint16]), st.integers(1, 40),
                  elements=st.integers(0, 2000)), even_dims)
@example(np.arange(2001), 2)
@example(np.arange(2001), 32)
@example(np.arange(2001), 128)
def test_time_embedding_table_equals_real_path(t, dim):
    got = time_embedding(t, dim)
    assert got.shape == (len(t), dim)
    # Both paths evaluate the same float64 expression of t; 4 eps (a few ulp of values <= 1)
    # allows only for a vectorised sin rounding differently in a loop's tail.
    assert_bounded(got, time_embedding(t.astype(np.float64), dim), 4 * EPS64, "table vs real t")


def embedding_formula(t, dim):
    """[sin(t w_i), cos(t w_i)], w_i = 10000^(-i / (dim/2)), i < dim/2 (eq. (L1)), written out here."""
    half = dim // 2
    w = 10000.0 ** (-np.arange(half) / half)
    arg = np.asarray(t, dtype=np.float64).reshape(-1, 1) * w
    return np.concatenate([np.sin(arg), np.cos(arg)], axis=1)


@given(st.one_of(hnp.arrays(np.int64, st.integers(1, 40), elements=st.integers(0, 2000)),
                 hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(-3000, 3000))), even_dims)
def test_time_embedding_formula(t, dim):
    # w_i by a power here and by exp(log) in refdiff agree to ~2 ulp, so the arguments t w_i agree
    # to ~3 eps |t|, and sin, cos are 1-Lipschitz: 4 eps (1 + |t|).
    bound = 4 * EPS64 * (1 + np.abs(t.astype(np.float64)))[:, None]
    assert_bounded(time_embedding(t, dim), embedding_formula(t, dim), bound, f"embedding, dim {dim}")


def test_time_embedding_known_values_and_shapes():
    assert_bounded(time_embedding(1, 4), [[np.sin(1), np.sin(0.01), np.cos(1), np.cos(0.01)]], 2 * EPS64, "t=1")
    assert_bounded(time_embedding(np.array([2.5]), 2), [[np.sin(2.5), np.cos(2.5)]], 2 * EPS64, "t=2.5")
    assert time_embedding(7, 8).shape == (1, 8)
    assert time_embedding([1, 2, 3], 6).shape == (3, 6)
    assert time_embedding(np.array([-3, 2]), 8).shape == (2, 8)  # negative t: the real-valued path


CONFIGS = [MLPConfig("denoiser", 2, 3, hidden=16, depth=2, t_embed=8),
           MLPConfig("denoiser", 3, 0, hidden=8, depth=1, t_embed=4, dtype="float32"),
           MLPConfig("classifier", 2, 4, hidden=32, depth=3, t_embed=32),
           MLPConfig("classifier", 5, 1, hidden=8, depth=1, t_embed=2, dtype="float32")]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_init_params(config):
    params = init_params(config, np.random.default_rng(0))
    labels = config.num_labels + 1 if config.kind == "denoiser" else 0
    sizes = [config.dim + config.t_embed + labels] + [config.hidden] * config.depth
    assert config.in_features == sizes[0]
    want = {f"W{i}": (sizes[i], sizes[i + 1]) for i in range(config.depth)}
    want |= {f"b{i}": (sizes[i + 1],) for i in range(config.depth)}
    want |= {"W_out": (config.hidden, config.out_features), "b_out": (config.out_features,)}
    assert {k: v.shape for k, v in params.items()} == want
    assert all(v.dtype == np.dtype(config.dtype) for v in params.values())
    assert not params["W_out"].any() and not params["b_out"].any()
    assert not any(params[f"b{i}"].any() for i in range(config.depth))
    # W ~ N(0, 1 / fan_in): fan_in * W^2 averages 1 with standard error sqrt(2 / size) (chi-square).
    W = np.concatenate([params[f"W{i}"].ravel() * np.sqrt(sizes[i]) for i in range(config.depth)])
    assert abs(np.mean(W.astype(np.float64) ** 2) - 1) < 5 * np.sqrt(2 / W.size), np.mean(W ** 2)
    same, other = init_params(config, np.random.default_rng(0)), init_params(config, np.random.default_rng(1))
    assert all(np.array_equal(params[k], same[k]) for k in params)
    assert not np.array_equal(params["W0"], other["W0"])


def test_untrained_networks_are_neutral():
    """A zero output layer: the denoiser predicts eps = 0 and the classifier uniform logits."""
    sched, rng = Schedule.linear(1000), np.random.default_rng(0)
    x, t = 10 * rng.standard_normal((50, 2)), rng.integers(1, 1001, 50)
    den = Denoiser(init_params(CONFIGS[0], rng), CONFIGS[0], sched)
    clf = Classifier(init_params(CONFIGS[2], rng), CONFIGS[2], sched)
    assert np.array_equal(den(x, t), np.zeros((50, 2))) and np.array_equal(den(x, t, 1), np.zeros((50, 2)))
    assert np.array_equal(clf(x, t), np.zeros((50, 4)))


@pytest.mark.parametrize("kwargs, name", [
    ({"kind": "Denoiser"}, "kind"), ({"kind": None}, "kind"),
    ({"dim": 0}, "dim"), ({"dim": 2.0}, "dim"), ({"dim": True}, "dim"), ({"dim": "2"}, "dim"),
    ({"num_labels": -1}, "num_labels"), ({"num_labels": 1.5}, "num_labels"),
    ({"kind": "classifier", "num_labels": 0}, "num_labels"),
    ({"hidden": 0}, "hidden"), ({"hidden": 8.0}, "hidden"), ({"hidden": False}, "hidden"),
    ({"depth": 0}, "depth"), ({"depth": -1}, "depth"),
    ({"t_embed": 7}, "t_embed"), ({"t_embed": 0}, "t_embed"), ({"t_embed": 8.0}, "t_embed"),
    ({"dtype": "float16"}, "dtype"), ({"dtype": np.float32}, "dtype"), ({"dtype": None}, "dtype"),
])
def test_config_rejects_bad_fields(kwargs, name):
    fields = {"kind": "denoiser", "dim": 2, "num_labels": 3, "hidden": 8, "depth": 1, "t_embed": 4}
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        MLPConfig(**(fields | kwargs))


def test_config_accepts_unconditional_denoiser_and_round_trips():
    config = MLPConfig("denoiser", 2, 0, hidden=4, depth=1, t_embed=2)
    assert config.in_features == 2 + 2 + 1 and config.out_features == 2
    assert MLPConfig(**config.to_dict()) == config


def random_params(config, rng):
    """init_params plus N(0, 0.25) noise on every array, so no layer (output included) is zero."""
    return {k: v + (0.5 * rng.standard_normal(v.shape)).astype(v.dtype)
            for k, v in init_params(config, rng).items()}


def reference_forward(params, config, x, t, rows=None):
    """Eqs. (L1)-(L4) written out with numpy and scipy's expit, sharing no code with refdiff.nn:
    an MLP with SiLU layers on [x, embedding of t (, one-hot of the label row over K + 1)]."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    inputs = [x.astype(np.float64), embedding_formula(np.broadcast_to(t, len(x)), config.t_embed)]
    if config.kind == "denoiser":
        inputs.append((rows[:, None] == np.arange(config.num_labels + 1)).astype(np.float64))
    h = np.concatenate(inputs, axis=1)
    for i in range(config.depth):
        z = h @ p[f"W{i}"] + p[f"b{i}"]
        h = z * expit(z)
    return h @ p["W_out"] + p["b_out"]


@st.composite
def networks(draw, dtype="float64"):
    """(model, x, t, y, rows): a random small network of either kind, a batch for it, and labels
    y (None, an int, or per-row with NULL_LABEL) with the embedding row each one selects."""
    kind = draw(st.sampled_from(["denoiser", "classifier"]))
    K = draw(st.integers(0 if kind == "denoiser" else 1, 4))
    config = MLPConfig(kind, draw(st.integers(1, 4)), K, hidden=draw(st.integers(1, 16)),
                       depth=draw(st.integers(1, 3)), t_embed=draw(st.sampled_from([2, 4, 8, 32])), dtype=dtype)
    T, n = draw(st.integers(1, 2000)), draw(st.integers(1, 20))
    rng = np.random.default_rng(draw(seeds))
    model = (Denoiser if kind == "denoiser" else Classifier)(
        random_params(config, rng), config, Schedule.from_betas(np.full(T, 0.01)))
    x = 10.0 ** draw(st.floats(-2, 1)) * rng.standard_normal((n, config.dim))
    t = draw(st.one_of(st.integers(1, T), st.just(rng.integers(1, T + 1, n))))
    y = draw(st.sampled_from([None, "int", "rows"])) if K else draw(st.sampled_from([None, NULL_LABEL]))
    if y == "int":
        y = int(rng.integers(0, K))
    elif y == "rows":
        y = rng.integers(NULL_LABEL, K, n)
    labels = np.broadcast_to(NULL_LABEL if y is None else y, (n,))
    rows = np.where(labels == NULL_LABEL, K, labels)
    return model, x, t, y, rows


def call(model, x, t, y):
    return model(x, t, y) if model.config.kind == "denoiser" else model(x, t)


@given(networks())
def test_forward_matches_independent_mlp(case):
    model, x, t, y, rows = case
    got, want = call(model, x, t, y), reference_forward(model.params, model.config, x, t, rows)
    assert got.shape == (len(x), model.config.out_features) and got.dtype == np.float64
    # float64 round-off over sums of <= 50 terms and three layers, with the SiLU within
    # 4 eps |z| of z expit(z): measured <= 3.6e-14 of the largest output over 1500 examples. 1e-12
    # of it is far below what a wrong row, sign or frequency changes (>= 1e-3).
    assert_bounded(got, want, 1e-12 * (1 + np.abs(want).max()), f"{model.config}")


@given(networks(dtype="float32"))
def test_float32_network(case):
    model, x, t, y, rows = case
    got = call(model, x, t, y)
    assert got.dtype == np.float32, got.dtype
    want = reference_forward(model.params, model.config, x.astype(np.float32), t, rows)
    # float32 round-off eps32 = 1.2e-7 per operation, over sums of <= 50 terms and three layers of
    # inputs up to ~10 times the outputs: <= ~2e-5 of the largest output (measured <= 2.4e-6 over
    # 1500 examples); bound 1e-4 of it.
    assert_bounded(got, want, 1e-4 * (1 + np.abs(want).max()), f"{model.config}")


def small_denoiser(num_labels=3, dtype="float64", T=100):
    config = MLPConfig("denoiser", 2, num_labels, hidden=16, depth=2, t_embed=8, dtype=dtype)
    return Denoiser(random_params(config, np.random.default_rng(0)), config, Schedule.from_betas(np.full(T, 0.02)))


def batch(n=64, T=100, seed=1):
    rng = np.random.default_rng(seed)
    return 3 * rng.standard_normal((n, 2)), rng.integers(1, T + 1, n)


def test_null_label_forms_agree():
    """y=None, y=NULL_LABEL and a NULL_LABEL row all select the null embedding row K."""
    model, (x, t) = small_denoiser(), batch()
    null_row = denoiser_forward(model.params, model.config, x, t, np.full(len(x), 3))
    for y in (None, NULL_LABEL, np.full(len(x), NULL_LABEL), [NULL_LABEL] * len(x)):
        assert np.array_equal(model(x, t, y), null_row), y


def test_mixed_labels_equal_separate_calls_row_by_row():
    """CFG asks for conditional and unconditional rows in one call; each row must be what it
    would be in a call of its own kind (same batch shape, so the same BLAS kernel: bit for bit)."""
    model, (x, t) = small_denoiser(), batch()
    y = np.random.default_rng(2).integers(NULL_LABEL, 3, len(x))
    got = model(x, t, y)
    for label in (NULL_LABEL, 0, 1, 2):
        rows = y == label
        alone = model(x, t, None if label == NULL_LABEL else label)
        assert np.array_equal(got[rows], alone[rows]), (label, got[rows], alone[rows])
    # One row at a time: a matrix-vector product sums in another order (round-off ~1e-14).
    single = np.concatenate([model(x[i:i + 1], t[i:i + 1], y[i:i + 1]) for i in range(len(x))])
    assert_bounded(single, got, 1e-12 * (1 + np.abs(got).max()), "single-row calls")


@pytest.mark.parametrize("y", [3, -2, np.array([0, 1, 3] + [0] * 61), 1.5, np.zeros(63, int), "a"])
def test_denoiser_rejects_bad_labels(y):
    model, (x, t) = small_denoiser(), batch()
    with pytest.raises(ValueError, match=r"\by\b"):
        model(x, t, y)


def test_unconditional_denoiser_takes_only_the_null_label():
    model, (x, t) = small_denoiser(num_labels=0), batch()
    assert np.array_equal(model(x, t), model(x, t, NULL_LABEL))
    assert np.array_equal(model(x, t), model(x, t, np.full(len(x), NULL_LABEL)))
    for y in (0, 1, np.zeros(len(x), int)):
        with pytest.raises(ValueError, match=r"\by\b"):
            model(x, t, y)


@pytest.mark.parametrize("x, t, name", [
    (np.zeros((4, 3)), 1, "x"), (np.zeros(4), 1, "x"), (np.full((4, 2), np.nan), 1, "x"),
    (np.zeros((4, 2)), 0, "t"), (np.zeros((4, 2)), 101, "t"), (np.zeros((4, 2)), [1, 2, 0, 3], "t"),
    (np.zeros((4, 2)), [1, 2], "t"), (np.zeros((4, 2)), 0.5, "t"),  # real t is allowed in [1, T] (S6)
])
def test_networks_reject_bad_inputs(x, t, name):
    config = MLPConfig("classifier", 2, 3, hidden=4, depth=1, t_embed=4)
    classifier = Classifier(init_params(config, np.random.default_rng(0)), config, Schedule.from_betas(np.full(100, 0.02)))
    for model in (small_denoiser(), classifier):
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            model(x, t)


def test_network_dtypes_and_shapes():
    x, t = batch()
    f32, f64 = small_denoiser(dtype="float32"), small_denoiser()
    assert f32(x, t, 1).dtype == np.float32 and f32(x.astype(int), t).dtype == np.float32
    assert f64(x.astype(np.float32), t).dtype == np.float64
    assert f64(x, 5).shape == (64, 2)
    config = MLPConfig("classifier", 2, 5, hidden=4, depth=1, t_embed=4, dtype="float32")
    clf = Classifier(init_params(config, np.random.default_rng(0)), config, f64.sched)
    assert clf(x, t).shape == (64, 5) and clf(x, t).dtype == np.float32
    with pytest.raises(ValueError, match="config"):
        Denoiser(clf.params, config, f64.sched)
    with pytest.raises(ValueError, match="config"):
        Classifier(f64.params, f64.config, f64.sched)


def test_check_grads_through_the_callables_in_x():
    """Guidance differentiates the models in x (classifier guidance: grad_x log p(y | x_t))."""
    model, (x, t) = small_denoiser(), batch(n=8)
    check_grads(lambda v: model(v, t, np.array([0, 1, 2, NULL_LABEL] * 2)), modes=["rev"], order=1)(x)
    config = MLPConfig("classifier", 2, 3, hidden=8, depth=2, t_embed=4)
    clf = Classifier(random_params(config, np.random.default_rng(3)), config, model.sched)
    check_grads(lambda v: clf(v, t), modes=["rev"], order=1)(x)


# ---- the residual architecture (eq. (L2r)) ---------------------------------------------------

def _resnet_reference(params, x, cond, depth):
    """(L2r) written out with plain numpy and scipy's expit, independently of refdiff.nn."""
    act = lambda v: v * expit(v)
    H = params["b_in"].shape[0]
    h = x @ params["W_in"] + params["b_in"]
    c = cond @ params["W_cond"] + params["b_cond"]
    for i in range(depth):
        u = act(h + c[:, i * H:(i + 1) * H])
        h = h + act(u @ params[f"W{i}a"] + params[f"b{i}a"]) @ params[f"W{i}b"] + params[f"b{i}b"]
    return act(h) @ params["W_out"] + params["b_out"]


@pytest.mark.parametrize("kind,num_labels", [("denoiser", 3), ("denoiser", 0), ("classifier", 4)])
def test_resnet_matches_an_independent_forward_and_its_gradients(kind, num_labels):
    config = MLPConfig(kind, 3, num_labels, hidden=6, depth=2, t_embed=4, arch="resnet")
    rng = np.random.default_rng(0)
    params = {k: 0.5 * rng.standard_normal(s) for k, s in param_shapes(config).items()}  # no zero layers
    x, t = rng.standard_normal((5, 3)), rng.integers(1, 100, 5)
    cond = time_embedding(t, 4)
    if kind == "denoiser":
        y_index = rng.integers(0, num_labels + 1, 5)
        cond = np.concatenate([cond, np.eye(num_labels + 1)[y_index]], axis=1)
        out = denoiser_forward(params, config, x, t, y_index)
    else:
        out = classifier_forward(params, config, x, t)
    # float64 round-off over a few products of O(1) terms
    np.testing.assert_allclose(out, _resnet_reference(params, x, cond, 2), rtol=1e-12, atol=1e-12)
    check_grads(lambda p: ARCHS["resnet"](p, x, cond, 2), modes=["rev"], order=1)(params)
    check_grads(lambda z: ARCHS["resnet"](params, z, cond, 2), modes=["rev"], order=1)(x)


def test_resnet_starts_as_identity_blocks_with_a_zero_output():
    config = MLPConfig("denoiser", 2, 3, hidden=8, depth=2, t_embed=4, arch="resnet")
    params = init_params(config, np.random.default_rng(0))
    assert all(not params[f"W{i}b"].any() for i in range(2)) and not params["W_out"].any()
    assert params["W_in"].any() and params["W_cond"].any() and params["W0a"].any()
    out = ARCHS["resnet"](params, np.ones((4, 2)), np.ones((4, config.cond_features)), 2)
    assert not out.any()


def test_unknown_arch_is_named():
    with pytest.raises(ValueError, match="arch must be one of"):
        MLPConfig("denoiser", 2, 3, arch="transformer")
