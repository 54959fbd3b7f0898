"""Tests for the hand-written backward pass of refdiff/nn.py and the float32 training path.

1. ``nn.mlp`` as one autograd primitive (``mlp_output``, differentiated by ``mlp_backward``): its
   output against a plain-numpy forward pass written here; its gradients against the same network
   chained from the per-layer primitives ``nn.dense`` and ``nn.silu`` and against a plain-numpy
   backward pass written here; ``check_grads``; gradients with respect to a subset of the
   arguments (the early stop of ``mlp_backward``) and to the whole parameter dict (the path
   ``train.fit`` takes, and ``subnet``'s for two networks in one dict); second derivatives
   refused; float32 in, float32 out.
2. ``nn.sigmoid`` against 1 / (1 + exp(-h)) and ``nn.silu_derivative`` against its formula and a
   central difference, over |h| up to 1e4 and subnormals, in float32 and float64.
3. ``nn.in_chunks`` with a small CHUNK_ROWS: rows and per-row arguments split together, the
   Denoiser and Classifier calls equal to one whole-batch forward pass, one call when the batch
   fits, and gradients through the chunks.
4. ``nn.mean`` and the losses (train.denoising_loss, train.classifier_loss, clip.clip_loss,
   latent.autoencoder_loss) in float32: float32 gradients all the way through, and values equal
   to the float64-accumulated reference.
5. ``train.clip_by_global_norm`` and ``train.fit`` keep float32 gradients float32;
   ``train.lr_at`` is a Python float.
6. ``nn.log_softmax`` against scipy's, without overflow, and its gradient.

Round-off bounds are running error bounds (``reference_mlp``, ``reference_backward``): every
float operation contributes at most eps times the magnitude of what it combines, and the test
carries those magnitudes through the network alongside the reference values.
"""
import dataclasses
import math
import warnings
from types import SimpleNamespace

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from autograd.test_util import check_grads
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import expit, logsumexp
from scipy.special import log_softmax as scipy_log_softmax

import refdiff.nn as nn
from refdiff import clip, latent, train
from refdiff.labels import NULL_LABEL
from refdiff.schedule import Schedule
from strategies import EPS32, EPS64, assert_bounded, seeds

DTYPES = ["float64", "float32"]
EPS = {"float64": EPS64, "float32": EPS32}
TINY = {"float64": np.finfo(np.float64).smallest_subnormal, "float32": np.finfo(np.float32).smallest_subnormal}
SILU_DERIV_MAX = 1.1  # max of SiLU'(u) = 1.0998 (at u = 2.40); min -0.0998
SILU_CURV_MAX = 0.5  # max |SiLU''(u)| = 0.5, at u = 0
# nn.sigmoid(h) = 1 / (1 + exp(-h)) with e = exp(-h) within EXP_ULPS ulp (numpy's documented bound:
# 2.52 ulp for float32 exp, under 1 ulp for float64), the sum and the reciprocal each within eps/2.
# To first order the relative error of s is <= (EXP_ULPS (1 - s) + 1) eps (e / (1 + e) = 1 - s), so
# the absolute error is <= (EXP_ULPS s (1 - s) + s) eps <= (EXP_ULPS / 4 + 1) eps < SIGMOID_ERROR
# eps for every h: 2 eps absolute, and relative wherever s is a normal number.
EXP_ULPS = {"float64": 1.0, "float32": 2.52}
SIGMOID_ERROR = 2


def eps_of(dtype):
    return EPS[np.dtype(dtype).name]


def tiny_of(dtype):
    return TINY[np.dtype(dtype).name]


# ---- the networks and their independent references ------------------------------------------

def names(depth):
    """Parameter names in mlp_output's argument order: W0, b0, ..., W_out, b_out."""
    return [f"{kind}{i}" for i in range(depth) for kind in "Wb"] + ["W_out", "b_out"]


def random_params(rng, fan_in, width, depth, out, dtype, scale=1.0):
    """nn.mlp_shapes arrays: W ~ scale N(0, 1 / fan_in), b ~ N(0, 1/4): no zero layer."""
    params = {}
    for name, shape in nn.mlp_shapes(fan_in, width, depth, out).items():
        v = scale * rng.standard_normal(shape) / math.sqrt(shape[0]) if name[0] == "W" else 0.5 * rng.standard_normal(shape)
        params[name] = v.astype(dtype)
    return params


def reference_mlp(weights, h0, eps, e0=0.0):
    """(L2) in plain float64 numpy, SiLU(u) = u / (1 + exp(-u)), with a running round-off bound.

    weights = [W_0, b_0, ..., W_out, b_out]. Returns (out, E_out, layers): layers[j] = (h_j,
    E_j, u_j, Eu_j) with u_j = h_j W_j + b_j. E bounds |computed - exact| of a network evaluated
    in precision eps from inputs within e0 of h0 (first order):
      u = h W + b over fan_in n: |dot rounding| <= (n + 1) eps (|h| |W| + |b|) (gamma_{n+1}),
          plus the input error carried: E |W|;
      SiLU: the input error times max SiLU' (1.1), plus nn.silu's own rounding: the sigmoid
          is within SIGMOID_ERROR = 2 eps absolute and then times u, so <= 4 eps |u| (as
          tests/test_nn.py).
    """
    h = np.asarray(h0, dtype=np.float64)
    E = np.broadcast_to(np.asarray(e0, dtype=np.float64), h.shape)
    layers, count = [], len(weights) // 2
    for j in range(count):
        W, b = weights[2 * j].astype(np.float64), weights[2 * j + 1].astype(np.float64)
        u = h @ W + b
        Eu = E @ np.abs(W) + (W.shape[0] + 1) * eps * (np.abs(h) @ np.abs(W) + np.abs(b))
        layers.append((h, E, u, Eu))
        if j < count - 1:
            with np.errstate(over="ignore"):  # exp(-u) = inf for u < -709: u / inf = -0, the limit
                h = u / (1 + np.exp(-u))
            E = SILU_DERIV_MAX * Eu + 4 * eps * np.abs(u)
    return u, Eu, layers


def reference_backward(weights, layers, G, eps, EG=0.0):
    """The gradients of sum(G * out) by the chain rule in plain float64 numpy (expit for the
    sigmoid), with running bounds. Returns (grads, bounds), lists in mlp_output's argument order
    [d h_0, d W_0, d b_0, ..., d W_out, d b_out]; G is known to within EG.

    Per hidden layer, g <- g * SiLU'(u), SiLU'(u) = s (1 + u (1 - s)), s = expit(u) (1 - s as
    expit(-u): 1 - expit(u) cancels to 0 for u > 37). A computed SiLU' is off by at most
    (1 + |u|) * SIGMOID_ERROR eps (its sigmoid's absolute error, amplified by
    |d SiLU'/ds| = |1 + u (1 - 2 s)|), plus 4 eps (s + |u| s (1 - s)) for its three roundings,
    plus SILU_CURV_MAX times the error of u;
    then dW = h^T g (N terms), db = sum_n g (N terms), g <- g W^T (fan_out terms), each a sum
    within (terms + 1) eps of the sum of absolute values, which gm (|G| through |SiLU'| and |W|)
    carries.
    """
    count = len(weights) // 2
    grads, bounds = [None] * (2 * count + 1), [None] * (2 * count + 1)
    g = np.asarray(G, dtype=np.float64)
    gm = np.abs(g)
    eg = np.broadcast_to(np.asarray(EG, dtype=np.float64), g.shape)
    for j in reversed(range(count)):
        h, Eh, u, Eu = layers[j]
        W = weights[2 * j].astype(np.float64)
        if j < count - 1:
            s, sc = expit(u), expit(-u)  # s and 1 - s
            d = s * (1 + u * sc)
            dm = s + np.abs(u) * s * sc  # >= |SiLU'(u)|
            ed = (1 + np.abs(u)) * SIGMOID_ERROR * eps + 4 * eps * dm + SILU_CURV_MAX * Eu
            eg = eg * dm + gm * ed + eps * gm * dm
            g, gm = g * d, gm * dm
        n = len(g)
        grads[2 * j + 1] = h.T @ g
        bounds[2 * j + 1] = Eh.T @ gm + np.abs(h).T @ eg + (n + 1) * eps * (np.abs(h).T @ gm)
        grads[2 * j + 2] = g.sum(axis=0)
        bounds[2 * j + 2] = eg.sum(axis=0) + (n + 1) * eps * gm.sum(axis=0)
        Wa = np.abs(W)
        eg = eg @ Wa.T + (W.shape[1] + 1) * eps * (gm @ Wa.T)
        g, gm = g @ W.T, gm @ Wa.T
    grads[0], bounds[0] = g, eg
    return grads, bounds


def chain(params, x, cond, depth):
    """The same network from the per-layer autograd primitives nn.dense and nn.silu."""
    h = x if cond is None else anp.concatenate([x, cond], axis=1)
    for i in range(depth):
        h = nn.silu(nn.dense(h, params[f"W{i}"], params[f"b{i}"]))
    return nn.dense(h, params["W_out"], params["b_out"])


@st.composite
def mlp_cases(draw):
    """A random MLP (depth 1..4, width 1..16, fan-in 1..6 of x plus 0..5 of cond, i.e. cond=None
    for 0), a batch of 1..12 rows of x spanning 1e-3..1e3 with some exact zeros, and a cotangent G."""
    dtype = draw(st.sampled_from(DTYPES))
    depth, width = draw(st.integers(1, 4)), draw(st.integers(1, 16))
    fan_x, fan_c, out, n = draw(st.integers(1, 6)), draw(st.integers(0, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(seeds))
    params = random_params(rng, fan_x + fan_c, width, depth, out, dtype, scale=10.0 ** draw(st.floats(-1, 1)))
    x = 10.0 ** draw(st.floats(-3, 3)) * rng.standard_normal((n, fan_x))
    x[rng.random(x.shape) < 0.2] = 0.0
    cond = rng.standard_normal((n, fan_c)).astype(dtype) if fan_c else None
    return SimpleNamespace(dtype=dtype, depth=depth, params=params, x=x.astype(dtype), cond=cond,
                           G=rng.standard_normal((n, out)).astype(dtype), fan_x=fan_x)


def h0_of(case):
    return case.x if case.cond is None else np.concatenate([case.x, case.cond], axis=1)


def weights_of(case):
    return [case.params[k] for k in names(case.depth)]


# ---- 1. nn.mlp: one primitive with a hand-written VJP ------------------------------------------

@given(mlp_cases())
def test_mlp_output_matches_plain_numpy_forward(case):
    got = nn.mlp(case.params, case.x, case.cond, case.depth)
    want, bound, _ = reference_mlp(weights_of(case), h0_of(case), eps_of(case.dtype))
    assert got.dtype == np.dtype(case.dtype) and got.shape == want.shape
    # nn.mlp and the reference are each within ``bound`` of the exact network (float64 reference:
    # its own bound, eps64, is at most nn.mlp's): 2 * bound.
    assert_bounded(got, want, 2 * bound + tiny_of(case.dtype), f"mlp depth {case.depth}, {case.dtype}")


def full_gradients(forward, case):
    """(dict of parameter gradients, x gradient) of sum(G * forward(params, x, cond, depth))."""
    f = lambda p, v: anp.sum(case.G * forward(p, v, case.cond, case.depth))
    return autograd.grad(f, argnum=(0, 1))(case.params, case.x)


@given(mlp_cases())
def test_mlp_gradients_match_dense_silu_chain_and_plain_numpy_backward(case):
    d_params, d_x = full_gradients(nn.mlp, case)
    c_params, c_x = full_gradients(chain, case)
    _, _, layers = reference_mlp(weights_of(case), h0_of(case), eps_of(case.dtype))
    want, bounds = reference_backward(weights_of(case), layers, case.G, eps_of(case.dtype))
    # Each of the three computations is within ``bounds`` of the exact gradient: 2 * bounds apart.
    for i, name in enumerate(names(case.depth), start=1):
        assert d_params[name].dtype == np.dtype(case.dtype)
        assert_bounded(d_params[name], c_params[name], 2 * bounds[i] + tiny_of(case.dtype), f"d {name}: mlp vs chain")
        assert_bounded(d_params[name], want[i], 2 * bounds[i] + tiny_of(case.dtype), f"d {name}: mlp vs numpy")
    bx = 2 * bounds[0][:, :case.fan_x] + tiny_of(case.dtype)
    assert d_x.dtype == np.dtype(case.dtype)
    assert_bounded(d_x, c_x, bx, "d x: mlp vs chain")
    assert_bounded(d_x, want[0][:, :case.fan_x], bx, "d x: mlp vs numpy")


def fixed_case(depth, with_cond, dtype="float64", seed=0, n=7):
    rng = np.random.default_rng(seed)
    fan_x, fan_c = 3, 2 if with_cond else 0
    params = random_params(rng, fan_x + fan_c, 5, depth, 4, dtype)
    return SimpleNamespace(dtype=dtype, depth=depth, params=params, fan_x=fan_x,
                           x=(2 * rng.standard_normal((n, fan_x))).astype(dtype),
                           cond=rng.standard_normal((n, fan_c)).astype(dtype) if with_cond else None,
                           G=rng.standard_normal((n, 4)).astype(dtype))


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("with_cond", [False, True])
def test_mlp_check_grads_in_x_and_weights(depth, with_cond):
    c = fixed_case(depth, with_cond)
    check_grads(lambda v: nn.mlp(c.params, v, c.cond, depth), modes=["rev"], order=1)(c.x)
    for name in ("W0", "b0", f"W{depth - 1}", "W_out", "b_out"):
        check_grads(lambda w: nn.mlp({**c.params, name: w}, c.x, c.cond, depth), modes=["rev"], order=1)(c.params[name])


def argnum_of(name):
    """mlp_output's argument number: 0 for x (h_0), W_i 2i + 1, b_i 2i + 2, W_out/b_out last."""
    if name == "x":
        return 0
    if name in ("W_out", "b_out"):
        return None  # depends on depth: resolved in the test
    return 2 * int(name[1:]) + (1 if name[0] == "W" else 2)


SUBSETS = [("x",), ("W_out",), ("b_out",), ("W0",), ("b0",), ("W1",), ("b1",), ("x", "W_out"), ("W0", "b_out"),
           ("b1", "W_out")]


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("with_cond", [False, True])
@pytest.mark.parametrize("subset", SUBSETS, ids="+".join)
def test_mlp_gradient_of_a_subset_equals_full_gradient_entries(depth, with_cond, subset, monkeypatch):
    if any(n[1:] == "1" and depth < 2 for n in subset):
        subset = tuple("W0" if n == "W1" else "b0" if n == "b1" else n for n in subset)
    c = fixed_case(depth, with_cond)
    full_p, full_x = full_gradients(nn.mlp, c)
    seen, backward = [], nn.mlp_backward
    monkeypatch.setattr(nn, "mlp_backward", lambda g, trace, w, argnums: seen.append(argnums) or backward(g, trace, w, argnums))

    def f(*values):  # a function of the subset only; the other arguments are plain constants
        p, x = dict(c.params), c.x
        for name, value in zip(subset, values):
            if name == "x":
                x = value
            else:
                p[name] = value
        return anp.sum(c.G * nn.mlp(p, x, c.cond, depth))

    got = autograd.grad(f, argnum=tuple(range(len(subset))))(*[c.x if n == "x" else c.params[n] for n in subset])
    last = {"W_out": 2 * depth + 1, "b_out": 2 * depth + 2}
    assert seen == [tuple(sorted(last.get(n) or argnum_of(n) for n in subset))], seen  # only the subset asked for
    for name, g in zip(subset, got):
        # The same operations on the same arrays as the full backward pass, which only goes on
        # further down: equal bit for bit.
        want = full_x if name == "x" else full_p[name]
        assert np.array_equal(g, want), (name, g, want)


def spy_on_whole_params(monkeypatch):
    """A list to which every call of nn.whole_params_backward (the traced-dict path) appends the names."""
    seen, backward = [], nn.whole_params_backward
    monkeypatch.setattr(nn, "whole_params_backward", lambda g, params, names, *rest:
                        seen.append(list(names)) or backward(g, params, names, *rest))
    return seen


@given(mlp_cases())
def test_mlp_gradient_of_the_whole_traced_dict_is_the_per_weight_gradient(case):
    """train.fit traces the parameters as one dict and not x: ``network_output`` then goes through
    ``whole_params_output``, one mlp_backward for every weight, which must give the arrays of the
    per-weight path (x traced too, in full_gradients) bit for bit, and zeros of its dtype for an
    entry the network does not use."""
    want, _ = full_gradients(nn.mlp, case)
    params = {**case.params, "unused": np.ones((2, 3), case.dtype)}
    with pytest.MonkeyPatch.context() as monkeypatch:
        seen = spy_on_whole_params(monkeypatch)
        got = autograd.grad(lambda p: anp.sum(case.G * nn.mlp(p, case.x, case.cond, case.depth)))(params)
    assert len(seen) == 1 and set(seen[0]) == set(case.params), seen  # the traced-dict path, every weight
    assert set(got) == set(params)
    for name in case.params:
        assert got[name].dtype == np.dtype(case.dtype) and np.array_equal(got[name], want[name]), name
    assert got["unused"].dtype == np.dtype(case.dtype) and not got["unused"].any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_subnet_of_a_traced_dict_gives_each_network_its_gradients(dtype, monkeypatch):
    """Two networks and a scalar in one dict (as in CLIP and the autoencoder): through ``subnet``'s
    primitive each network sees a whole traced dict, and the gradients are the arrays that taking
    the entries one by one gives, in their dtype."""
    a, b = fixed_case(2, True, dtype, seed=3), fixed_case(1, False, dtype, seed=4)
    params = {**{f"a/{k}": v for k, v in a.params.items()}, **{f"b/{k}": v for k, v in b.params.items()},
              "s": np.array(0.7, dtype)}

    def loss(p, take):
        out_a = nn.mlp(take(p, "a/"), a.x, a.cond, a.depth)
        return anp.sum(a.G * out_a) + p["s"] * anp.sum(b.G * nn.mlp(take(p, "b/"), b.x, None, b.depth))

    one_by_one = lambda p, prefix: {k[len(prefix):]: p[k] for k in p if k.startswith(prefix)}  # plain dict of boxes
    want = autograd.grad(loss)(params, one_by_one)
    seen = spy_on_whole_params(monkeypatch)
    got = autograd.grad(loss)(params, nn.subnet)
    assert len(seen) == 2, seen  # each network took the traced-dict path
    assert set(got) == set(params)
    for name in params:
        assert got[name].dtype == np.dtype(dtype) and np.array_equal(got[name], want[name]), name
    assert nn.subnet(params, "b/").keys() == b.params.keys()  # plain arrays in, plain dict out


def second_order_cases(c, depth):
    f = lambda p, v: anp.sum(nn.mlp(p, v, c.cond, depth))
    f2 = lambda p, v: anp.sum(nn.mlp(p, v, c.cond, depth) ** 2)
    return {
        # the outer derivative reaches mlp_backward's cotangent g (it depends on x)
        "hessian x, sum(out^2)": lambda: autograd.grad(lambda v: anp.sum(autograd.grad(f2, 1)(c.params, v)))(c.x),
        # g is constant (a linear objective): the outer derivative reaches only mlp_output's arguments
        "hessian x, sum(out)": lambda: autograd.grad(lambda v: anp.sum(autograd.grad(f, 1)(c.params, v)))(c.x),
        "d/dW0 of grad_x": lambda: autograd.grad(
            lambda w: anp.sum(autograd.grad(f, 1)({**c.params, "W0": w}, c.x)))(c.params["W0"]),
        "d/dW_out of grad_x": lambda: autograd.grad(
            lambda w: anp.sum(autograd.grad(f, 1)({**c.params, "W_out": w}, c.x)))(c.params["W_out"]),
    }


@pytest.mark.parametrize("which", list(second_order_cases(fixed_case(2, True), 2)))
def test_mlp_refuses_second_derivatives(which):
    """mlp_backward is plain NumPy on the kept forward pass: a derivative of it must raise, never
    come back silently wrong (the true second derivatives here are nonzero)."""
    c = fixed_case(2, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # autograd's "Output seems independent of input" is a silent zero
        with pytest.raises(NotImplementedError):
            second_order_cases(c, 2)[which]()


def spy_on_backward(monkeypatch):
    """A list to which every call of nn.mlp_backward appends [dtype of g, dtypes of what it returns]."""
    seen, backward = [], nn.mlp_backward

    def spy(g, trace, args, argnums):
        out = backward(g, trace, args, argnums)
        seen.append([g.dtype] + [o.dtype for o in out])
        return out

    monkeypatch.setattr(nn, "mlp_backward", spy)
    return seen


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("with_cond", [False, True])
def test_mlp_float32_in_float32_gradients(depth, with_cond, monkeypatch):
    c = fixed_case(depth, with_cond, dtype="float32")
    seen = spy_on_backward(monkeypatch)
    # Each argument alone, as a bare array: autograd hands back mlp_backward's own array (a dict
    # of parameters would be cast to the parameters' dtype by autograd's dict accumulation).
    for name in ["x"] + names(depth):
        if name == "x":
            g = autograd.grad(lambda v: anp.sum(c.G * nn.mlp(c.params, v, c.cond, depth)))(c.x)
        else:
            g = autograd.grad(lambda w: anp.sum(c.G * nn.mlp({**c.params, name: w}, c.x, c.cond, depth)))(c.params[name])
        assert g.dtype == np.float32, (name, g.dtype)
    assert len(seen) == 2 * depth + 3 and all(d == np.float32 for row in seen for d in row), seen


# ---- 2. sigmoid and the SiLU derivative ---------------------------------------------------------

EDGES = [0.0, -0.0, 1.0, -1.0, 17.0, -17.0, 20.0, -20.0, 36.925, -36.925, 40.0, -40.0, 88.0, -88.0, 104.0, -104.0, 710.0, -710.0,
         746.0, -746.0, 1e4, -1e4]


def wide_h(dtype):
    """1..40 floats in [-1e4, 1e4] of ``dtype`` (hypothesis' floats reach the edges, tiny values
    and subnormals), with EDGES and the smallest subnormal and normal numbers appended."""
    width = 64 if dtype == "float64" else 32
    edges = EDGES + [TINY[dtype], -TINY[dtype], 3 * TINY[dtype], float(np.finfo(dtype).smallest_normal)]
    return hnp.arrays(dtype, st.integers(1, 40), elements=st.floats(-1e4, 1e4, width=width)).map(
        lambda h: np.concatenate([h, np.array(edges, dtype=dtype)]))


def logistic(h):
    """1 / (1 + exp(-h)) in float64; scipy's expit where exp(-h) overflows (h < -709.78)."""
    h = h.astype(np.float64)
    with np.errstate(over="ignore"):
        e = np.exp(-h)
    return np.where(np.isfinite(e), 1 / (1 + np.where(np.isfinite(e), e, 0.0)), expit(h))


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_sigmoid_is_logistic_to_a_few_ulps(dtype, data):
    h = data.draw(wide_h(dtype))
    before = h.copy()
    got = nn.sigmoid(h)
    assert got.dtype == h.dtype and got.shape == h.shape
    assert np.array_equal(h, before), "sigmoid wrote into its input"
    # The relative bound above, (EXP_ULPS (1 - s) + 1) eps s, plus the float64 reference's own
    # <= 2.5 eps64 s, and the smallest normal number where s is subnormal or exp(-h) overflows
    # (h < -88.7 in float32, s < 3e-39). Relative also for h << 0: the tanh form
    # (1 + tanh(h / 2)) / 2 fails this (sigmoid(-20) = 3e-8 in float32, not 2e-9).
    want = logistic(h)
    bound = (EXP_ULPS[dtype] * (1 - want) + 1) * EPS[dtype] * want + 2.5 * EPS64 * want
    assert_bounded(got, want, bound + float(np.finfo(dtype).smallest_normal), f"sigmoid, {dtype}")
    assert np.all((got >= 0) & (got <= 1)) and np.all(got[h == 0] == 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_silu_derivative_formula_and_central_difference(dtype, data):
    h = data.draw(wide_h(dtype))
    s = nn.sigmoid(h)
    a = h * s
    s_before, a_before = s.copy(), a.copy()
    got = nn.silu_derivative(s, a)
    assert got.dtype == h.dtype and np.array_equal(s, s_before) and np.array_equal(a, a_before)
    eps, h64, s64 = EPS[dtype], h.astype(np.float64), s.astype(np.float64)
    # The same s: s + (h s)(1 - s) against s (1 + h (1 - s)) in float64. h s, 1 - s and the
    # product round to 1.5 eps of |h| s (1 - s), the sum to eps/2 of the result: <= 2 eps times
    # s + |h| s (1 - s).
    formula = s64 * (1 + h64 * (1 - s64))
    assert_bounded(got, formula, 2 * eps * (s64 + np.abs(h64) * s64 * (1 - s64)) + TINY[dtype],
                   "silu_derivative vs s (1 + h (1 - s))")
    # Against the derivative of SiLU(v) = v / (1 + exp(-v)) (float64, overflow-safe for v < -709
    # as v / inf = -0) by a central difference at step delta = 1e-5 max(1, |h|): truncation
    # delta^2 |SiLU'''| / 6 <= 1e-10 max(1, h^2) |SiLU'''(h)| / 6 <= 1.1e-11 (max over u of
    # max(1, u^2) |SiLU'''(u)| = 0.66, at u = 1.86); round-off: h +- delta and each SiLU within
    # 3.6 eps64 (|h| + delta), over 2 delta: <= 3.6 eps64 (1e5 + 1) = 8e-11. 1e-10 covers both
    # (measured 3.4e-11). The error of sigmoid(h), SIGMOID_ERROR eps, enters s + (h s)(1 - s)
    # times |1 + h (1 - 2s)| <= 1 + |h|, and its roundings 2 eps (s + |h| s (1 - s)) as above.
    true_s, true_sc = expit(h64), expit(-h64)
    delta = 1e-5 * np.maximum(1.0, np.abs(h64))
    with np.errstate(over="ignore"):
        silu = lambda v: v / (1 + np.exp(-v))
        fd = (silu(h64 + delta) - silu(h64 - delta)) / (2 * delta)
    bound = ((1 + np.abs(h64)) * SIGMOID_ERROR * eps + 2 * eps * (true_s + np.abs(h64) * true_s * true_sc)
             + 1e-10 + TINY[dtype])
    assert_bounded(got, fd, bound, "silu_derivative vs central difference")


# ---- 3. in_chunks ---------------------------------------------------------------------------------

@given(st.integers(1, 6), st.integers(1, 25), st.integers(0, 2), seeds)
@example(3, 3, 1, 0)  # N = CHUNK_ROWS
@example(3, 9, 2, 0)  # a multiple
@example(5, 13, 2, 0)
def test_in_chunks_splits_rows_and_per_row_arguments_together(k, n, extra, seed):
    rng = np.random.default_rng(seed)
    x = np.column_stack([np.arange(n, dtype=np.float64), rng.standard_normal(n)])
    per_row = [10 * np.arange(n) + i for i in range(extra)]  # row r holds 10 r + i
    calls = []

    def forward(xc, *pc):
        calls.append((xc, pc))
        for i, a in enumerate(pc):  # each per-row chunk belongs to the same rows as the x chunk
            assert np.array_equal(a, 10 * xc[:, 0].astype(int) + i), (xc[:, 0], a)
        return np.column_stack([3 * xc] + [a.astype(float) for a in pc])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nn, "CHUNK_ROWS", k)
        got = nn.in_chunks(forward, x, *per_row)
    want = forward(x, *per_row)  # elementwise: equal bit for bit
    calls.pop()
    assert np.array_equal(got, want)
    sizes = [len(xc) for xc, _ in calls]
    assert sizes == [k] * (n // k) + ([n % k] if n % k else []), sizes
    assert np.array_equal(np.concatenate([xc[:, 0] for xc, _ in calls]), np.arange(n))  # in order
    if n <= k:  # one call, on the arrays themselves
        assert len(calls) == 1 and calls[0][0] is x and all(a is b for a, b in zip(calls[0][1], per_row))


@given(st.integers(1, 6), st.integers(1, 25), seeds)
def test_in_chunks_gradient_routes_rows(k, n, seed):
    rng = np.random.default_rng(seed)
    x, w, c = rng.standard_normal((n, 3)), rng.standard_normal((n, 3)), rng.standard_normal(n)
    f = lambda v, cc: v * v * cc[:, None]  # elementwise: the gradient 2 x c w equals bit for bit
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nn, "CHUNK_ROWS", k)
        got = autograd.grad(lambda v: anp.sum(w * nn.in_chunks(f, v, c)))(x)
    assert np.array_equal(got, autograd.grad(lambda v: anp.sum(w * f(v, c)))(x))


def small_model(kind, dtype, seed=0, T=50):
    rng = np.random.default_rng(seed)
    num_labels = 3
    config = nn.MLPConfig(kind, 2, num_labels, hidden=6, depth=2, t_embed=4, dtype=dtype)
    params = {k: v + (0.5 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in nn.init_params(config, rng).items()}
    model = (nn.Denoiser if kind == "denoiser" else nn.Classifier)(params, config, Schedule.from_betas(np.full(T, 0.02)))
    return model, rng


def model_inputs(model, rng, n):
    """x, distinct t per row, labels with NULL_LABEL among them, the embedding rows, and h_0."""
    config, dtype = model.config, nn.DTYPES[model.config.dtype]
    x = (3 * rng.standard_normal((n, config.dim))).astype(dtype)
    t = rng.permutation(np.arange(1, model.sched.T + 1))[:n]
    y = rng.integers(NULL_LABEL, config.num_labels, n)
    rows = nn.label_rows(y, n, config.num_labels)
    parts = [x, nn.time_embedding(t, config.t_embed).astype(dtype)]
    if config.kind == "denoiser":
        parts.append(np.eye(config.num_labels + 1, dtype=dtype)[rows])
    return x, t, y, rows, np.concatenate(parts, axis=1)


def call(model, x, t, y):
    return model(x, t, y) if model.config.kind == "denoiser" else model(x, t)


def direct(model, x, t, rows):
    if model.config.kind == "denoiser":
        return nn.denoiser_forward(model.params, model.config, x, t, rows)
    return nn.classifier_forward(model.params, model.config, x, t)


FORWARD = {"denoiser": "denoiser_forward", "classifier": "classifier_forward"}


@pytest.mark.parametrize("kind", ["denoiser", "classifier"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, n", [(3, 13), (5, 13), (3, 10), (5, 10), (13, 13), (20, 13)])
def test_network_calls_in_chunks_equal_one_whole_batch_pass(kind, dtype, k, n, monkeypatch):
    model, rng = small_model(kind, dtype)
    x, t, y, rows, h0 = model_inputs(model, rng, n)
    want = direct(model, x, t, rows)
    original, calls = getattr(nn, FORWARD[kind]), []

    def spy(params, config, xc, tc, *rc):
        calls.append((xc, tc) + rc)
        return original(params, config, xc, tc, *rc)

    monkeypatch.setattr(nn, FORWARD[kind], spy)
    monkeypatch.setattr(nn, "CHUNK_ROWS", k)
    got = call(model, x, t, y)
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    assert len(calls) == -(-n // k) and [len(c[0]) for c in calls] == [min(k, n - i) for i in range(0, n, k)]
    # t and the label rows travel with their rows of x
    assert np.array_equal(np.concatenate([c[0] for c in calls]), x)
    assert np.array_equal(np.concatenate([c[1] for c in calls]), t)
    if kind == "denoiser":
        assert np.array_equal(np.concatenate([c[2] for c in calls]), rows)
    # To round-off, not bit for bit: BLAS may sum a row's dot products in another order for
    # another number of rows (tests/test_nn.py: single-row calls), and the time table of a chunk
    # (sized by the chunk's largest t) may round sin in another SIMD lane: an input error of
    # <= eps |h_0|. Both passes are within ``bound`` of the exact network. (Observed: float64
    # chunks of 1 and 3 rows differ from the whole batch by up to 1.8e-15; float32 agreed bit for bit.)
    _, bound, _ = reference_mlp([model.params[nm] for nm in names(2)], h0, eps_of(dtype), e0=eps_of(dtype) * np.abs(h0))
    assert_bounded(got, want, 2 * bound, f"{kind} in chunks of {k}")


@pytest.mark.parametrize("kind", ["denoiser", "classifier"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_network_gradient_in_x_through_chunks(kind, dtype, k, monkeypatch):
    model, rng = small_model(kind, dtype, seed=1)
    n = 11
    x, t, y, rows, h0 = model_inputs(model, rng, n)
    G = rng.standard_normal((n, model.config.out_features)).astype(dtype)  # a different weight per row
    grad = lambda: autograd.grad(lambda v: anp.sum(G * call(model, v, t, y)))(x)
    monkeypatch.setattr(nn, "CHUNK_ROWS", 10**9)
    whole = grad()
    monkeypatch.setattr(nn, "CHUNK_ROWS", k)
    got = grad()
    assert got.dtype == np.dtype(dtype) and whole.dtype == np.dtype(dtype)
    weights, eps = [model.params[nm] for nm in names(2)], eps_of(dtype)
    _, _, layers = reference_mlp(weights, h0, eps, e0=eps * np.abs(h0))
    _, bounds = reference_backward(weights, layers, G, eps)
    assert_bounded(got, whole, 2 * bounds[0][:, :model.config.dim], f"d x, {kind} in chunks of {k}")


# ---- 4. nn.mean and the float32 losses ----------------------------------------------------------
# Replacing nn.mean by anp.mean (in train, clip and latent) makes test_losses_backpropagate_float32
# fail for the denoising, CLIP and autoencoder losses (checked by running it): autograd's gradient
# of np.mean divides by a NumPy int64 count, which NumPy 2 promotes to float64, so float64
# cotangents reach mlp_backward (the spy below). The per-entry dtype check alone would still pass:
# autograd accumulates a dict's gradients into zeros of each entry's dtype, casting them back to
# float32 at the very end. (The classifier loss does not leak even with anp.mean: the gradient of
# its label look-up is scattered into zeros of the logits' dtype, float32, before the network.)

@given(hnp.array_shapes(min_dims=0, max_dims=3, max_side=6), seeds, st.floats(-20, 20))
def test_mean_is_sum_over_size_in_the_entries_dtype(shape, seed, decade):
    rng = np.random.default_rng(seed)
    v = (10.0 ** decade * rng.standard_normal(shape)).astype(np.float32)
    got = nn.mean(v)
    assert np.asarray(got).dtype == np.float32
    # float32 summation of n terms: <= n eps32 sum |v|; the division eps32/2 more.
    assert_bounded(got, np.mean(v.astype(np.float64)), (v.size + 1) * EPS32 * np.mean(np.abs(v.astype(np.float64))),
                   "mean")
    g = autograd.grad(nn.mean)(v)
    assert g.dtype == np.float32 and np.array_equal(g, np.full(shape, np.float32(1) / np.float32(v.size)))


def noisy(params, rng):
    return {k: v + (0.5 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in params.items()}


def loss_problem(which, n=12, seed=0):
    """(loss, params, data, terms_reference) for a small float32 problem; terms_reference(params,
    data) computes the loss from refdiff's float32 network outputs, accumulated in float64, and a
    bound on its distance from the float32 loss."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    if which == "denoising":
        config = nn.MLPConfig("denoiser", 2, 3, hidden=8, depth=2, t_embed=4, dtype="float32")
        data = ((2 * rng.standard_normal((n, 2))).astype(f32), rng.integers(1, 100, n), rng.integers(0, 4, n),
                rng.standard_normal((n, 2)).astype(f32))

        def reference(p, d):
            r = nn.denoiser_forward(p, config, d[0], d[1], d[2]) - d[3]  # float32, as in the loss
            terms = r.astype(np.float64) ** 2
            # squares eps/2 each, the float32 sum of n terms <= n eps, the division eps/2
            return terms.mean(), (terms.size + 2) * EPS32 * terms.mean()

        return (lambda p, *d: train.denoising_loss(p, config, *d)), noisy(nn.init_params(config, rng), rng), data, reference, config
    if which == "classifier":
        config = nn.MLPConfig("classifier", 2, 4, hidden=8, depth=2, t_embed=4, dtype="float32")
        data = ((2 * rng.standard_normal((n, 2))).astype(f32), rng.integers(1, 100, n), rng.integers(0, 4, n))

        def reference(p, d):
            z = nn.classifier_forward(p, config, d[0], d[1]).astype(np.float64)
            terms = logsumexp(z, axis=1) - z[np.arange(n), d[2]]
            # log softmax of K = 4 logits in float32: the shift, exp, a 4-term sum and its log are
            # within ~(K + 4) eps32 of the logits' spread plus 1; then the mean as above.
            spread = np.ptp(z, axis=1) + 1
            return terms.mean(), (z.shape[1] + 4) * EPS32 * spread.mean() + (n + 2) * EPS32 * np.abs(terms).mean()

        return (lambda p, *d: train.classifier_loss(p, config, *d)), noisy(nn.init_params(config, rng), rng), data, reference, config
    if which == "clip":
        config = clip.ClipConfig(dim=3, vocab=("red", "green", "blue", "big"), embed=4, hidden=8, depth=1,
                                 text_hidden=6, text_depth=1, t_embed=4, dtype="float32")
        words = rng.random((n, 4)) < 0.5
        words[np.arange(n), rng.integers(0, 4, n)] = True
        data = ((2 * rng.standard_normal((n, 3))).astype(f32), rng.integers(1, 100, n), words / words.sum(1, keepdims=True))

        def reference(p, d):
            S = (np.exp(np.minimum(np.float64(p["logit_scale"]), clip.MAX_LOGIT_SCALE))
                 * (clip.image_features(p, config, d[0], d[1]).astype(np.float64)
                    @ clip.text_features(p, config, d[2]).astype(np.float64).T))
            diag = np.diag(S)
            value = 0.5 * (np.mean(logsumexp(S, axis=1) - diag) + np.mean(logsumexp(S, axis=0) - diag))
            # float32: the scale exp (eps), the feature products (E + 2 terms of unit vectors,
            # each feature within ~(fan_in + 8) eps of unit length), then log-sum-exp over n
            # (n + 4) eps of the logits' magnitude: (n + E + 30) eps32 (max |S| + 1) per term.
            return value, (n + 4 + 30) * EPS32 * (np.abs(S).max() + 1)

        params = clip.init_clip(config, rng)
        params = {k: (v if k == "logit_scale" else noisy({k: v}, rng)[k]) for k, v in params.items()}
        return (lambda p, *d: clip.clip_loss(p, config, *d)), params, data, reference, config
    config = latent.AEConfig(dim=5, latent=2, hidden=8, depth=1, kl_weight=0.1, dtype="float32")
    data = ((2 * rng.standard_normal((n, 5))).astype(f32), rng.standard_normal((n, 2)).astype(f32))

    def reference(p, d):
        mu, logvar = latent.encoder_forward(p, config, d[0])
        z = mu + anp.exp(0.5 * logvar) * d[1]  # float32, as in the loss
        r = (latent.decoder_forward(p, config, z) - d[0]).astype(np.float64)
        mu64, lv64 = mu.astype(np.float64), logvar.astype(np.float64)
        kl_terms = mu64 ** 2 + np.expm1(lv64) - lv64
        value = np.mean(r ** 2) + config.kl_weight * np.mean(0.5 * kl_terms.sum(1))
        # each mean: n-term float32 sums (n eps); KL's L + 1 terms per row of |mu^2| + |expm1| + |lv|,
        # expm1 within 2 eps: (n + L + 6) eps32 of the absolute terms
        abs_kl = np.mean(0.5 * (mu64 ** 2 + np.abs(np.expm1(lv64)) + np.abs(lv64)).sum(1))
        return value, (r.size + 2) * EPS32 * np.mean(r ** 2) + config.kl_weight * (n + 2 + 6) * EPS32 * abs_kl

    shapes = latent.autoencoder_shapes(config)
    return ((lambda p, *d: latent.autoencoder_loss(p, config, *d)), noisy(nn.init_from_shapes(shapes, "float32", rng), rng),
            data, reference, config)


LOSSES = ["denoising", "classifier", "clip", "autoencoder"]


@pytest.mark.parametrize("which", LOSSES)
def test_losses_backpropagate_float32(which, monkeypatch):
    loss, params, data, _, _ = loss_problem(which)
    seen = spy_on_backward(monkeypatch)
    value, grads = autograd.value_and_grad(loss)(params, *data)
    assert np.asarray(value).dtype == np.float32, np.asarray(value).dtype
    assert set(grads) == set(params) and all(g.dtype == np.float32 for g in grads.values()), \
        {k: g.dtype for k, g in grads.items()}
    # every cotangent reaching the MLP and every gradient it returns: float32 (2 networks in CLIP and the autoencoder)
    assert len(seen) == (2 if which in ("clip", "autoencoder") else 1), seen
    assert all(d == np.float32 for row in seen for d in row), seen


@pytest.mark.parametrize("which", LOSSES)
def test_float32_losses_equal_float64_accumulation(which):
    loss, params, data, reference, config = loss_problem(which)
    value, grads = autograd.value_and_grad(loss)(params, *data)
    want, bound = reference(params, data)
    assert_bounded(value, want, bound, f"{which} loss vs float64 accumulation")
    # The gradients against the same loss in float64 (the same numbers as float64 arrays): a
    # first-order estimate, not a running bound. Each entry is a sum of products along paths of
    # at most K = sum over layers of (fan_in + fan_out + 8) + n operations, each within eps32;
    # with the path sums no more than 10 times the largest entry (no heavy cancellation: these
    # are small random networks), |error| <= 10 K eps32 max|entry| per array.
    config64 = dataclasses.replace(config, dtype="float64")
    loss64 = {"denoising": lambda p, *d: train.denoising_loss(p, config64, *d),
              "classifier": lambda p, *d: train.classifier_loss(p, config64, *d),
              "clip": lambda p, *d: clip.clip_loss(p, config64, *d),
              "autoencoder": lambda p, *d: latent.autoencoder_loss(p, config64, *d)}[which]
    as64 = lambda a: a.astype(np.float64) if np.asarray(a).dtype == np.float32 else a
    value64, grads64 = autograd.value_and_grad(loss64)({k: as64(v) for k, v in params.items()}, *map(as64, data))
    K = sum(v.shape[0] + v.shape[1] + 8 for k, v in params.items() if v.ndim == 2) + len(data[0])
    for name, g in grads.items():
        assert_bounded(g, grads64[name], 10 * K * EPS32 * np.abs(grads64[name]).max() + TINY["float32"],
                       f"{which}: d {name}, float32 vs float64")
    assert_bounded(value, value64, 10 * K * EPS32 * abs(value64), f"{which} loss, float32 vs float64")


# ---- 5. clipping, the learning rate and fit keep float32 ----------------------------------------

@given(st.lists(st.tuples(hnp.array_shapes(min_dims=0, max_dims=2, max_side=5), st.floats(-20, 20)), min_size=1,
                max_size=4), seeds, st.floats(-3, 3))
@example([((3,), 0.0)], 0, 3.0)  # no clipping
@example([((3,), 0.0), ((2, 2), 10.0)], 0, -3.0)  # clipping
def test_clip_by_global_norm_keeps_float32(arrays, seed, ratio_decade):
    rng = np.random.default_rng(seed)
    grads = {f"g{i}": (10.0 ** dec * rng.standard_normal(shape)).astype(np.float32) for i, (shape, dec) in enumerate(arrays)}
    norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    clip_to = max(norm, 1e-30) * 10.0 ** ratio_decade  # clip above and below the norm
    out = train.clip_by_global_norm(grads, clip_to)
    assert set(out) == set(grads)
    assert all(out[k].dtype == np.float32 and out[k].shape == g.shape for k, g in grads.items())
    if norm + 1e-12 <= clip_to:  # scale 1.0: unchanged
        assert all(np.array_equal(out[k], g) for k, g in grads.items())
    else:  # g times clip / (norm + 1e-12) (the same float64 norm as here): the scale rounded to
        # float32 and the product, each within u = eps32 / 2 relative: (1 + u)^2 - 1 <= 1.01 eps32
        scale = clip_to / (norm + 1e-12)
        for k, g in grads.items():
            assert_bounded(out[k], g.astype(np.float64) * scale, 1.01 * EPS32 * np.abs(g.astype(np.float64)) * scale
                           + TINY["float32"], f"clipped {k}")


@given(st.integers(1, 10**6), st.data(), st.floats(1e-8, 10))
def test_lr_at_is_a_python_float(steps, data, lr):
    k = data.draw(st.integers(1, steps))
    rate = train.lr_at(k, steps, lr)
    assert type(rate) is float and 0 < rate <= lr, rate
    # why it matters: a NumPy float64 rate would turn a float32 Adam step into float64
    assert (np.ones(3, np.float32) * rate).dtype == np.float32


def test_fit_keeps_float32_gradients_and_moments(monkeypatch):
    loss, params, data, _, _ = loss_problem("denoising")
    seen, adam, clip_norm = [], train.adam_update, train.clip_by_global_norm

    def adam_spy(param, g, m, v, k, rate):
        out = adam(param, g, m, v, k, rate)
        seen.append((type(rate), g.dtype, m.dtype, v.dtype) + tuple(o.dtype for o in out))
        return out

    clipped = []
    monkeypatch.setattr(train, "adam_update", adam_spy)
    monkeypatch.setattr(train, "clip_by_global_norm",
                        lambda grads, c: clipped.append(c) or clip_norm(grads, c))
    # clip = 1e-6 so that every step clips (the gradients here have norms ~1)
    avg, losses = train.fit(loss, params, lambda: data, 3, 1e-3, 0.9, 1e-6)
    assert len(clipped) == 3 and len(seen) == 3 * len(params) and len(losses) == 3
    assert all(row[0] is float and all(d == np.float32 for d in row[1:]) for row in seen), seen
    assert all(v.dtype == np.float32 for v in avg.values()) and all(v.dtype == np.float32 for v in params.values())


# ---- 6. log_softmax --------------------------------------------------------------------------------

@given(seeds, st.integers(1, 30), st.integers(1, 9), st.floats(-30, 30), st.sampled_from(["float32", "float64"]))
def test_log_softmax_matches_scipy(seed, n, k, spread, dtype):
    logits = (np.random.default_rng(seed).standard_normal((n, k)) * 10.0 ** (spread / 10)).astype(dtype)
    want = scipy_log_softmax(logits.astype(np.float64), axis=1)
    # A shift, k exps, a sum of k terms in [0, k] and a log: a few ulps of the largest |entry|
    # and of log k per row; 8 ulps of their sum bounds it.
    bound = 8 * EPS[dtype] * (np.max(np.abs(logits), axis=1, keepdims=True) + np.log(k) + 1)
    got = nn.log_softmax(logits)
    assert got.dtype == np.dtype(dtype)
    assert_bounded(got, want, bound, "log_softmax")


def test_log_softmax_does_not_overflow_and_its_gradient_is_onehot_minus_softmax():
    logits = np.array([[1e4, 0.0, -1e4], [800.0, 800.0, 0.0]])   # exp(800) overflows float64
    assert np.all(np.isfinite(nn.log_softmax(logits)))
    g = autograd.grad(lambda z: anp.sum(nn.log_softmax(z)[np.arange(2), [0, 1]]))(logits)
    assert_bounded(g, np.eye(3)[[0, 1]] - np.exp(scipy_log_softmax(logits, axis=1)), 4 * EPS64, "d log_softmax")


@pytest.mark.parametrize("h, dtype", [(0.0, np.float64), (np.float32(2.0), np.float32), (np.array(-1.5), np.float64),
                                      (np.array([1, 2]), np.float64), (np.ones(3, np.float16), np.float16)])
def test_sigmoid_and_silu_take_scalars_zero_d_and_integer_arrays(h, dtype):
    assert nn.sigmoid(h).dtype == dtype and nn.silu(h).dtype == dtype
    assert_bounded(nn.sigmoid(h), expit(np.asarray(h, np.float64)), 4 * np.finfo(dtype).eps, "sigmoid")
