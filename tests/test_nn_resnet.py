"""The residual network (L2r) as one autograd primitive (refdiff/nn.py: ``resnet``, ``resnet_output``,
``resnet_trace``, ``resnet_backward``; docs/learned.md, "Networks").

The reference is the same network chained from the per-layer primitives ``nn.dense`` and
``nn.silu``, which autograd differentiates layer by layer. ``resnet_backward`` does the same
floating-point operations in the same order (the chain rule from the output down, the residual
and the block's gradient added once), so outputs and gradients agree bit for bit; then
``check_grads`` (finite differences), gradients of a subset of the arguments and of the whole
parameter dict, second derivatives refused, and float32 in, float32 out.
"""
import warnings
from types import SimpleNamespace

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from autograd.test_util import check_grads
from hypothesis import given
from hypothesis import strategies as st

import refdiff.nn as nn
from strategies import seeds


def chain(params, x, cond, depth):
    """(L2r) from nn.dense and nn.silu, one recorded operation per layer and activation."""
    h = nn.dense(x, params["W_in"], params["b_in"])
    c = anp.split(nn.dense(cond, params["W_cond"], params["b_cond"]), depth, axis=1)
    for i in range(depth):
        inner = nn.silu(nn.dense(nn.silu(h + c[i]), params[f"W{i}a"], params[f"b{i}a"]))
        h = h + nn.dense(inner, params[f"W{i}b"], params[f"b{i}b"])
    return nn.dense(nn.silu(h), params["W_out"], params["b_out"])


def make_case(dtype, depth, width, dim, cond_features, out, n, seed, scale=1.0):
    """A resnet with every weight random (init_params zeroes W_out and each W{i}b, which would make
    most gradients trivially 0), inputs spanning 1e-2..1e2, and a cotangent G."""
    rng = np.random.default_rng(seed)
    shapes = nn.param_shapes(nn.MLPConfig("classifier", dim, out, width, depth, t_embed=cond_features, arch="resnet"))
    params = {k: (scale * rng.standard_normal(v) / np.sqrt(v[0] if v else 1)).astype(dtype) for k, v in shapes.items()}
    x = (10.0 ** rng.uniform(-2, 2, (n, 1)) * rng.standard_normal((n, dim))).astype(dtype)
    return SimpleNamespace(params=params, x=x, cond=rng.standard_normal((n, cond_features)).astype(dtype),
                           G=rng.standard_normal((n, out)).astype(dtype), depth=depth, dtype=dtype)


@st.composite
def cases(draw):
    return make_case(draw(st.sampled_from(["float64", "float32"])), draw(st.integers(1, 4)), draw(st.integers(1, 12)),
                     draw(st.integers(1, 6)), 2 * draw(st.integers(1, 3)), draw(st.integers(1, 5)),
                     draw(st.integers(1, 10)), draw(seeds), 10.0 ** draw(st.floats(-1, 1)))


def gradients(forward, c):
    """d/d(params, x, cond) of sum(G * forward(params, x, cond, depth))."""
    f = lambda p, x, cond: anp.sum(c.G * forward(p, x, cond, c.depth))
    return autograd.grad(f, argnum=(0, 1, 2))(c.params, c.x, c.cond)


@given(cases())
def test_resnet_output_and_gradients_equal_the_per_layer_chain_bit_for_bit(c):
    out = nn.resnet(c.params, c.x, c.cond, c.depth)
    assert out.dtype == np.dtype(c.dtype) and np.array_equal(out, chain(c.params, c.x, c.cond, c.depth))
    (got_p, got_x, got_c), (want_p, want_x, want_c) = gradients(nn.resnet, c), gradients(chain, c)
    for name in nn.resnet_names(c.depth):
        assert got_p[name].dtype == np.dtype(c.dtype) and np.array_equal(got_p[name], want_p[name]), name
    assert np.array_equal(got_x, want_x) and np.array_equal(got_c, want_c)


@given(cases())
def test_resnet_gradient_of_the_whole_traced_dict_is_the_per_weight_gradient(c):
    """The parameters traced as one dict and x and cond not (train.fit): ``whole_params_output``'s
    one resnet_backward gives the per-weight path's arrays (x and cond traced too) bit for bit."""
    want, _, _ = gradients(nn.resnet, c)
    seen, backward = [], nn.whole_params_backward
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(nn, "whole_params_backward", lambda g, params, names, *rest:
                            seen.append(names) or backward(g, params, names, *rest))
        got = autograd.grad(lambda p: anp.sum(c.G * nn.resnet(p, c.x, c.cond, c.depth)))(c.params)
    assert seen == [nn.resnet_names(c.depth)], seen  # the traced-dict path, every weight
    assert set(got) == set(c.params)
    for name in c.params:
        assert got[name].dtype == np.dtype(c.dtype) and np.array_equal(got[name], want[name]), name


@pytest.mark.parametrize("depth", [1, 3])
def test_resnet_check_grads_in_every_argument(depth):
    c = make_case("float64", depth, 5, 3, 4, 2, 6, seed=1)
    check_grads(lambda v: nn.resnet(c.params, v, c.cond, depth), modes=["rev"], order=1)(c.x)
    check_grads(lambda v: nn.resnet(c.params, c.x, v, depth), modes=["rev"], order=1)(c.cond)
    for name in nn.resnet_names(depth):
        check_grads(lambda w: nn.resnet({**c.params, name: w}, c.x, c.cond, depth), modes=["rev"],
                    order=1)(c.params[name])


SUBSETS = [("x",), ("cond",), ("W_out",), ("b_out",), ("W_in",), ("b_cond",), ("W0a",), ("b0b",), ("x", "W_out"),
           ("cond", "W0b"), ("b_in", "W_cond")]


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("subset", SUBSETS, ids="+".join)
def test_resnet_gradient_of_a_subset_equals_full_gradient_entries(depth, subset, monkeypatch):
    c = make_case("float64", depth, 4, 3, 4, 2, 5, seed=2)
    full_p, full_x, full_c = gradients(nn.resnet, c)
    seen, backward = [], nn.resnet_backward
    monkeypatch.setattr(nn, "resnet_backward", lambda g, trace, args, argnums: seen.append(argnums)
                        or backward(g, trace, args, argnums))
    order = ["x", "cond"] + nn.resnet_names(depth)  # resnet_output's argument numbers

    def f(*values):  # a function of the subset only; the other arguments are plain constants
        given_ = dict(zip(subset, values))
        p = {k: given_.get(k, v) for k, v in c.params.items()}
        return anp.sum(c.G * nn.resnet(p, given_.get("x", c.x), given_.get("cond", c.cond), depth))

    start = {"x": c.x, "cond": c.cond, **c.params}
    got = autograd.grad(f, argnum=tuple(range(len(subset))))(*[start[n] for n in subset])
    assert seen == [tuple(sorted(order.index(n) for n in subset))], seen  # only the subset asked for
    for name, g in zip(subset, got):
        want = {"x": full_x, "cond": full_c}.get(name, full_p.get(name))
        assert np.array_equal(g, want), name  # the same operations as the full backward pass


def test_resnet_refuses_second_derivatives():
    """resnet_backward is plain NumPy on the kept forward pass: a derivative of it must raise, never
    come back silently wrong."""
    c = make_case("float64", 2, 4, 3, 4, 2, 5, seed=3)
    f = lambda p, v: anp.sum(nn.resnet(p, v, c.cond, 2) ** 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # autograd's "Output seems independent of input" is a silent zero
        with pytest.raises(NotImplementedError):
            autograd.grad(lambda v: anp.sum(autograd.grad(f, 1)(c.params, v)))(c.x)
        with pytest.raises(NotImplementedError):
            autograd.grad(lambda w: anp.sum(autograd.grad(f, 1)({**c.params, "W_in": w}, c.x)))(c.params["W_in"])


def test_resnet_float32_in_float32_gradients():
    c = make_case("float32", 2, 4, 3, 4, 2, 5, seed=4)
    for name in nn.resnet_names(2):  # each argument alone, as a bare array: autograd returns the VJP's own
        g = autograd.grad(lambda w: anp.sum(c.G * nn.resnet({**c.params, name: w}, c.x, c.cond, 2)))(c.params[name])
        assert g.dtype == np.float32, (name, g.dtype)
    g = autograd.grad(lambda v: anp.sum(c.G * nn.resnet(c.params, v, c.cond, 2)))(c.x)
    assert g.dtype == np.float32
