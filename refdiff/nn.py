"""Small MLPs for denoisers and noisy classifiers, as plain dicts of arrays (docs/learned.md).

Parameters are a flat dict ``{"W0", "b0", ..., "W_out", "b_out"}`` of numpy arrays that
autograd differentiates, so a checkpoint is just those arrays plus a JSON config. The denoiser
sees [x, sinusoidal embedding of t, one-hot of y over K + 1 labels] and the classifier [x,
embedding of t]; both are MLPs with SiLU hidden layers. The one-hot's last entry is the null
label that unconditional predictions use (Ho & Salimans 2022, Sec. 3.2); the rows of W0 that it
multiplies are the label embedding (a one-hot times a matrix is a table look-up, and its gradient
a matrix product rather than a scatter-add).
"""
from functools import lru_cache
import math
from dataclasses import asdict, dataclass

import autograd.numpy as anp
import numpy as np
from autograd.extend import defvjp, defvjp_argnums, primitive
from autograd.tracer import getval, isbox

from .arrays import DTYPES, as_count, as_points, as_times, check_rng, is_real, row_max
from .labels import NULL_LABEL, as_labels
from .npz import config_from, config_object, read_schedule
from .process import PREDICTIONS, eps_to_prediction, prediction_to_eps, prediction_to_x0


def sigmoid(h):
    """sigmoid(h) = 1 / (1 + exp(-h)), the logistic function, as eq. (L2) of docs/learned.md writes it.

    Computed in place in one new array of h's floating dtype (float64 for integers and Python
    numbers). exp(-h) overflows to inf for h below about -709 (float64) or -88 (float32), where
    1 / inf = 0 is the limit, so that overflow is expected and silenced. On the AMD EPYC machines
    measured (docs/learned.md, "Speed") numpy's exp is 1.4-2.1 times faster than the
    tanh(h / 2) form of the same function.
    """
    s = np.negative(h, out=np.empty_like(h, dtype=np.result_type(np.asarray(h), np.float16)))
    with np.errstate(over="ignore"):
        np.exp(s, out=s)
    s += 1
    np.reciprocal(s, out=s)
    return s


def silu_derivative(s, a):
    """d SiLU/dh = s (1 + h (1 - s)) = s + a (1 - s), from s = sigmoid(h) and a = SiLU(h) = h s."""
    d = 1 - s
    d *= a
    d += s
    return d


@primitive
def silu(h):
    """SiLU(h) = h sigmoid(h) (eq. (L2)), one autograd primitive with the derivative ``silu_derivative``
    instead of ~4 recorded operations. With ``dense``, the per-layer building block for networks of
    one's own; ``mlp`` and ``resnet`` are checked against chains of the two (docs/learned.md)."""
    return h * sigmoid(h)


defvjp(silu, lambda ans, h: lambda g: g * silu_derivative(sigmoid(h), ans))


@primitive
def dense(h, W, b):
    """The affine layer h W + b for h (N, fan_in), W (fan_in, fan_out), b (fan_out,).

    A primitive whose derivatives are the three matrix products g W^T, h^T g and sum_n g: autograd's
    generic dot goes through tensordot, several times slower here (docs/learned.md).
    """
    return h @ W + b


defvjp(dense,
       lambda ans, h, W, b: lambda g: g @ W.T,
       lambda ans, h, W, b: lambda g: h.T @ g,
       lambda ans, h, W, b: lambda g: g.sum(axis=0))


def mean(values):
    """The mean of all entries of an autograd-differentiable array, as sum / size.

    Gradients stay in the entries' dtype: autograd's own gradient of np.mean divides by a NumPy
    int64 count, which NumPy 2 promotes to float64, and so ran every float32 backward pass in
    float64 (2x slower; docs/learned.md, "Speed").
    """
    return anp.sum(values) / values.size


def log_softmax(logits):
    """log softmax of each row, logits - logsumexp(logits) over axis 1, differentiable by autograd.

    The row maximum m is subtracted first as a constant: logsumexp(z) = m + log sum exp(z - m) for
    any m, so the value cannot overflow and the gradient, softmax(z), does not depend on m. Four
    NumPy operations instead of scipy's logsumexp, which took 2 ms of a 10,000-row classifier
    gradient.
    """
    shifted = logits - row_max(getval(logits))
    return shifted - anp.log(anp.sum(anp.exp(shifted), axis=1, keepdims=True))


def time_embedding(t, dim):
    """Sinusoidal embedding [sin(t w_i), cos(t w_i)], w_i = 10000^(-i / (dim/2)), i < dim/2 (eq. (L1)).

    Vaswani et al. (2017), as Ho et al. (2020) use it for t; defined for real t too. Shape (N, dim).
    Integer t is looked up in a table computed once.
    """
    as_count(dim, "dim", low=1)
    if not is_real(t) or not np.all(np.isfinite(t)):
        raise ValueError(f"t must be a finite real number or array of them, got {t!r}")
    t = np.asarray(t).reshape(-1)
    if np.issubdtype(t.dtype, np.integer) and t.size and t.min() >= 0:
        return _time_table(dim, 1 << int(t.max()).bit_length())[t]
    return _sinusoids(t.astype(np.float64), dim)


def _sinusoids(t, dim):
    half = dim // 2
    args = t[:, None] * np.exp(-math.log(10000.0) * np.arange(half) / half)
    return np.concatenate([np.sin(args), np.cos(args)], axis=1)


@lru_cache(maxsize=16)
def _time_table(dim, size):
    """eq. (L1) for t = 0..size-1, read-only."""
    table = _sinusoids(np.arange(size, dtype=np.float64), dim)
    table.flags.writeable = False
    return table


@dataclass(frozen=True)
class MLPConfig:
    """The shape of a denoiser or classifier network.

    dim: D of x; num_labels: K (the denoiser's label embedding has K + 1 rows, the classifier K
    outputs; K = 0 is an unconditional denoiser); hidden, depth: width and number of hidden
    layers (residual blocks for "resnet"); t_embed: size of the time embedding; dtype: "float64"
    or "float32"; arch: "mlp" (eq. (L2)) or "resnet" (eq. (L2r)); prediction: what a denoiser's
    network outputs, one of process.PREDICTIONS (eq. (L3p)); a classifier's is "eps" and unused.
    """
    kind: str
    dim: int
    num_labels: int
    hidden: int = 128
    depth: int = 3
    t_embed: int = 32
    dtype: str = "float64"
    arch: str = "mlp"
    prediction: str = "eps"

    def __post_init__(self):
        if self.kind not in ("denoiser", "classifier"):
            raise ValueError(f"kind must be 'denoiser' or 'classifier', got {self.kind!r}")
        lowest = {"num_labels": 0 if self.kind == "denoiser" else 1}
        for name in ("dim", "num_labels", "hidden", "depth", "t_embed"):  # numpy ints stored as ints (JSON)
            object.__setattr__(self, name, as_count(getattr(self, name), name, low=lowest.get(name, 1)))
        if self.t_embed % 2:
            raise ValueError(f"t_embed must be even, got {self.t_embed}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {tuple(ARCHS)}, got {self.arch!r}")
        if self.prediction not in (PREDICTIONS if self.kind == "denoiser" else ("eps",)):
            raise ValueError(f"prediction must be one of {PREDICTIONS} for a denoiser ('eps' for a classifier), "
                             f"got {self.prediction!r}")

    @property
    def cond_features(self):
        """Size of the conditioning vector [emb(t), one-hot of y] (no one-hot for a classifier)."""
        return self.t_embed + (self.num_labels + 1 if self.kind == "denoiser" else 0)

    @property
    def in_features(self):
        return self.dim + self.cond_features

    @property
    def out_features(self):
        return self.dim if self.kind == "denoiser" else self.num_labels

    def to_dict(self):
        return asdict(self)


def param_shapes(config):
    """The name and shape of every parameter, in order (H = hidden, C = cond_features).

    "mlp": W_i (fan_in, H), b_i (H,) for i < depth, fan_in = D + C for i = 0, else H.
    "resnet": W_in (D, H), b_in; W_cond (C, depth H), b_cond; per block i < depth, W{i}a, W{i}b
    (H, H) and b{i}a, b{i}b (H,). Both end with W_out (H, out_features), b_out (out_features,).
    Computed from the config alone, so a checkpoint claiming a huge network is refused before
    anything that size is built.
    """
    H = config.hidden
    if config.arch == "mlp":
        return mlp_shapes(config.in_features, H, config.depth, config.out_features)
    shapes = {"W_in": (config.dim, H), "b_in": (H,), "W_cond": (config.cond_features, config.depth * H),
              "b_cond": (config.depth * H,)}
    for i in range(config.depth):
        for half in "ab":
            shapes[f"W{i}{half}"], shapes[f"b{i}{half}"] = (H, H), (H,)
    shapes["W_out"], shapes["b_out"] = (H, config.out_features), (config.out_features,)
    return shapes


def mlp_shapes(in_features, hidden, depth, out_features, prefix=""):
    """The shapes of eq. (L2)'s plain MLP: W_i (fan_in, H), b_i (H,) for i < depth, fan_in =
    in_features for i = 0, else H; then W_out (H, out_features), b_out; names start with ``prefix``."""
    sizes, shapes = [in_features] + [hidden] * depth, {}
    for i in range(depth):
        shapes[f"{prefix}W{i}"], shapes[f"{prefix}b{i}"] = (sizes[i], hidden), (hidden,)
    shapes[f"{prefix}W_out"], shapes[f"{prefix}b_out"] = (hidden, out_features), (out_features,)
    return shapes


@primitive
def subnet(params, prefix):
    """The parameters of one network of several in one flat dict: the names that start with
    ``prefix`` ("image/"), with the prefix removed. On a dict autograd traces as a whole, one
    primitive, whose derivative puts the sub-dict's gradient back under the prefixed names (zeros
    for the others), so the network sees a whole traced dict too (``network_output``)."""
    return {name[len(prefix):]: value for name, value in params.items() if name.startswith(prefix)}


defvjp(subnet, lambda ans, params, prefix: lambda g: {
    name: g[name[len(prefix):]] if name.startswith(prefix) else np.zeros_like(value) for name, value in params.items()})


def init_params(config, rng):
    """Random parameters of the shapes ``param_shapes(config)``, drawn by ``init_from_shapes``."""
    return init_from_shapes(param_shapes(config), config.dtype, rng)


def init_from_shapes(shapes, dtype, rng):
    """Parameters {name: array of shape shapes[name]} of dtype ``dtype`` ("float32" or "float64"):
    weights W ~ N(0, 1 / fan_in), except zeros for the output layer (a name ending in "W_out") and
    the last layer of every residual block (a name ending in "b" after the W); biases zero.

    So an untrained denoiser predicts eps = 0, an untrained classifier the uniform distribution,
    and every residual block starts as the identity: a neutral start. Names may carry a prefix
    ("image/W0") when one dict holds several networks.
    """
    check_rng(rng)
    params = {}
    for name, shape in shapes.items():
        leaf = name.rsplit("/", 1)[-1]
        random = leaf.startswith("W") and leaf != "W_out" and not leaf.endswith("b")
        params[name] = rng.standard_normal(shape) / math.sqrt(shape[0]) if random else np.zeros(shape)
    return {name: value.astype(DTYPES[dtype]) for name, value in params.items()}


def mlp(params, x, cond, depth):
    """h_0 = [x, cond] (x alone if cond is None); depth layers h <- SiLU(h W_i + b_i); then
    h W_out + b_out (eq. (L2)).

    The forward pass runs on plain arrays (``mlp_trace``) and reaches autograd as one primitive,
    ``mlp_output``, whose derivative is ``mlp_backward``: no per-layer bookkeeping, and the
    sigmoids the backward pass needs are kept from the forward pass (docs/learned.md, "Speed").
    """
    h = x if cond is None else anp.concatenate([x, cond], axis=1)
    names = [f"{kind}{i}" for i in range(depth) for kind in "Wb"] + ["W_out", "b_out"]
    return network_output(mlp_output, mlp_trace, mlp_backward, (h,), params, names)


def network_output(output, trace, backward, inputs, params, names):
    """The network primitive ``output`` (``mlp_output``, ``resnet_output``) on ``inputs`` and the
    weights params[name] for ``names``, its forward pass run once by ``trace`` on plain arrays.

    When autograd traces params as a whole dict (``train.fit``) and not the inputs, the output
    reaches it through ``whole_params_output``, whose derivative is the whole dict's gradient from
    one call of ``backward``. Otherwise each weight is an argument of ``output`` and ``backward``
    computes only the gradients asked for. The two give the same arrays bit for bit.
    """
    values = getval(params)
    weights = [getval(values[name]) for name in names]
    kept = trace(*[getval(i) for i in inputs], weights)
    if isbox(params) and not any(isbox(i) for i in inputs):
        return whole_params_output(params, names, inputs, backward, kept, output(*inputs, *weights, trace=kept))
    return output(*inputs, *[params[name] for name in names], trace=kept)


@primitive
def whole_params_output(params, names, inputs, backward, trace, out):
    """``out``, the output of a network primitive whose forward pass is ``trace``, as a function of
    the dict params as a whole. Autograd takes a traced dict's entries one primitive each, and
    each entry's gradient is then added into a dict of all of them, a cost that grows with the
    square of the number of entries; this primitive's derivative is the dict itself, and the
    named budgets' training steps are 3-18% shorter for it (docs/learned.md, "Speed")."""
    return out


def whole_params_backward(g, params, names, inputs, backward, trace):
    """The gradient of sum(g * out) with respect to the dict params: ``backward`` for every weight in
    ``names`` (the inputs come first in its argument numbers), and zeros for any other entry."""
    first = len(inputs)  # the first weight's argument number
    got = backward(g, trace, (*inputs, *[params[name] for name in names]), tuple(range(first, first + len(names))))
    grads = dict(zip(names, got))
    return {name: grads[name] if name in grads else np.zeros_like(value) for name, value in params.items()}


defvjp(whole_params_output, lambda ans, params, names, inputs, backward, trace, out:
       lambda g: whole_params_backward(g, params, names, inputs, backward, trace))


def mlp_trace(h, weights):
    """The forward pass of (L2) on plain arrays, weights = [W_0, b_0, ..., W_out, b_out].

    Returns (inputs, sigmoids): inputs[j] is the input h_j of layer j and inputs[-1] the output;
    sigmoids[j] = sigmoid(h_j W_j + b_j) for each hidden layer j, so h_{j+1} = (h_j W_j + b_j) sigmoids[j].
    """
    inputs, sigmoids = [h], []
    hidden = len(weights) // 2 - 1
    for j in range(hidden + 1):
        u = inputs[j] @ weights[2 * j]
        u += weights[2 * j + 1]
        if j < hidden:
            sigmoids.append(sigmoid(u))
            u *= sigmoids[j]
        inputs.append(u)
    return inputs, sigmoids


@primitive
def mlp_output(h, *weights, trace):
    """The output of the MLP (L2) on h with ``weights``, whose forward pass ``trace`` (``mlp_trace``)
    has already run: the primitive autograd differentiates by ``mlp_backward``."""
    return trace[0][-1]


def mlp_backward(g, trace, args, argnums):
    """The gradients of sum(g * out) for out = mlp_output(*args), args = (h_0, W_0, b_0, ..., W_out,
    b_out), with respect to the arguments numbered ``argnums`` (0 is h_0; W_j is 2j + 1, b_j 2j + 2).

    The chain rule through (L2) from the output layer down: at layer j, g the gradient at its
    output, first g <- g * SiLU'(h_j W_j + b_j) for a hidden layer (``silu_derivative`` of the
    kept sigmoid and h_{j+1}); then dW_j = h_j^T g, db_j = sum_n g, and g <- g W_j^T for the layer
    below, stopping once no wanted argument lies below. First derivatives only.
    """
    if isbox(g) or any(isbox(a) for a in args):  # an outer autograd trace wants derivatives of this VJP
        raise NotImplementedError("mlp_output has no second derivatives (its VJP is plain NumPy)")
    inputs, sigmoids = trace
    weights = args[1:]
    grads, lowest = {}, min(argnums)
    for j in reversed(range(len(weights) // 2)):
        if j < len(sigmoids):
            d = silu_derivative(sigmoids[j], inputs[j + 1])
            d *= g
            g = d
        if 2 * j + 1 in argnums:
            grads[2 * j + 1] = inputs[j].T @ g
        if 2 * j + 2 in argnums:
            grads[2 * j + 2] = g.sum(axis=0)
        if lowest > 2 * j:
            break
        g = g @ weights[2 * j].T
    grads[0] = g
    return tuple(grads[i] for i in argnums)


defvjp_argnums(mlp_output, lambda argnums, ans, args, kwargs:
               lambda g: mlp_backward(g, kwargs["trace"], args, argnums))


def resnet(params, x, cond, depth):
    """Residual blocks with the conditioning added to each block's input (eq. (L2r)).

    h = x W_in + b_in;  c_i = the i-th H-wide slice of cond W_cond + b_cond;
    per block: h <- h + SiLU(SiLU(h + c_i) W_ia + b_ia) W_ib + b_ib;  out = SiLU(h) W_out + b_out.

    Like ``mlp``, one autograd primitive, ``resnet_output``: the forward pass runs on plain arrays
    (``resnet_trace``) and ``resnet_backward`` is its derivative, so a training step records no
    per-layer operation (docs/learned.md, "Speed").
    """
    return network_output(resnet_output, resnet_trace, resnet_backward, (x, cond), params, resnet_names(depth))


def resnet_names(depth):
    """The parameters of (L2r) in the order ``resnet_output`` takes them: W_in, b_in, W_cond, b_cond,
    then W{i}a, b{i}a, W{i}b, b{i}b for each block i < depth, then W_out, b_out."""
    blocks = [f"{kind}{i}{half}" for i in range(depth) for half in "ab" for kind in "Wb"]
    return ["W_in", "b_in", "W_cond", "b_cond"] + blocks + ["W_out", "b_out"]


def resnet_trace(x, cond, weights):
    """The forward pass of (L2r) on plain arrays, weights in the order of ``resnet_names``.

    Returns (out, kept): kept["blocks"][i] = (s_i, a_i, block_i) with s_i = sigmoid(h_i + c_i),
    a_i = SiLU(h_i + c_i) and block_i the ``mlp_trace`` of the block's two layers on a_i;
    kept["top"] = (sigmoid(h), SiLU(h)) of the last h.
    """
    depth = (len(weights) - 6) // 4
    h = x @ weights[0] + weights[1]
    c = np.split(cond @ weights[2] + weights[3], depth, axis=1)
    blocks = []
    for i in range(depth):
        u = h + c[i]
        s = sigmoid(u)
        a = u * s
        block = mlp_trace(a, weights[4 + 4 * i:8 + 4 * i])
        blocks.append((s, a, block))
        h = h + block[0][-1]
    s = sigmoid(h)
    top = h * s
    return top @ weights[-2] + weights[-1], {"blocks": blocks, "top": (s, top)}


@primitive
def resnet_output(x, cond, *weights, trace):
    """The output of (L2r) on (x, cond) with ``weights``, whose forward pass ``trace``
    (``resnet_trace``) has already run: the primitive autograd differentiates by ``resnet_backward``."""
    return trace[0]


def resnet_backward(g, trace, args, argnums):
    """The gradients of sum(g * out) for out = resnet_output(*args), args = (x, cond, *weights) with
    the weights in the order of ``resnet_names``, with respect to the arguments numbered ``argnums``.

    The chain rule through (L2r) from the output down: dW_out = SiLU(h)^T g, g <- g W_out^T SiLU'(h);
    through block i (the last first) ``mlp_backward`` of its two layers gives the gradient at a_i,
    which times SiLU'(h_i + c_i) is g_i, the gradient at c_i, and h_i's gradient is g + g_i (the
    residual path and the block's); then x's layer, and cond's from [g_1, ..., g_depth]. Only
    what ``argnums`` needs is computed. First derivatives only.
    """
    if isbox(g) or any(isbox(a) for a in args):  # an outer autograd trace wants derivatives of this VJP
        raise NotImplementedError("resnet_output has no second derivatives (its VJP is plain NumPy)")
    x, cond, weights = args[0], args[1], args[2:]
    blocks, (s, top) = trace[1]["blocks"], trace[1]["top"]
    out = len(args) - 2  # W_out's argument number; W_in is 2, W_cond 4, block i's W{i}a 6 + 4 i
    grads = {out: top.T @ g, out + 1: g.sum(axis=0)} if out in argnums or out + 1 in argnums else {}
    per_block = []
    if min(argnums) < out:
        g = g @ weights[-2].T
        g *= silu_derivative(s, top)
        for i in reversed(range(len(blocks))):
            s, a, block = blocks[i]
            wanted = [0] + [j for j in range(1, 5) if 5 + 4 * i + j in argnums]
            inner = mlp_backward(g, block, (a, *weights[4 + 4 * i:8 + 4 * i]), wanted)
            grads.update({5 + 4 * i + j: d for j, d in zip(wanted[1:], inner[1:])})
            per_block.insert(0, inner[0] * silu_derivative(s, a))
            g = g + per_block[0]
        g_cond = np.concatenate(per_block, axis=1)
        layers = {0: lambda: g @ weights[0].T, 2: lambda: x.T @ g, 3: lambda: g.sum(axis=0),
                  1: lambda: g_cond @ weights[2].T, 4: lambda: cond.T @ g_cond, 5: lambda: g_cond.sum(axis=0)}
        grads.update({i: layers[i]() for i in argnums if i in layers})
    return tuple(grads[i] for i in argnums)


defvjp_argnums(resnet_output, lambda argnums, ans, args, kwargs:
               lambda g: resnet_backward(g, kwargs["trace"], args, argnums))


ARCHS = {"mlp": mlp, "resnet": resnet}


def denoiser_forward(params, config, x, t, y_index):
    """eps_theta(x, t, y) for label rows y_index in 0..K (K = null); x (N, D) -> (N, D) (eq. (L3)).

    The conditioning is [emb(t), one-hot of y over K + 1 labels].
    """
    dtype = DTYPES[config.dtype]
    one_hot = np.eye(config.num_labels + 1, dtype=dtype)[y_index]
    cond = np.concatenate([time_embedding(t, config.t_embed).astype(dtype), one_hot], axis=1)
    return ARCHS[config.arch](params, x, cond, config.depth)


def classifier_forward(params, config, x, t):
    """Logits of p_phi(y | x_t) conditioned on emb(t); x (N, D) -> (N, K) (eq. (L4))."""
    cond = time_embedding(t, config.t_embed).astype(DTYPES[config.dtype])
    return ARCHS[config.arch](params, x, cond, config.depth)


def label_rows(y, n, num_labels):
    """Row of the label embedding for each sample: y itself, or K for None / NULL_LABEL; shape (n,)."""
    y = as_labels(y, n, num_labels)
    if y is None:
        return np.full(n, num_labels)
    return np.where(y == NULL_LABEL, num_labels, y)


# Rows per forward pass: a chunk's activations stay in cache. Measured with the default 2D
# denoiser, float32, one thread: 1.38 us per row at 2048 rows, 1.64 at 10,000, 1.82 at 20,000.
CHUNK_ROWS = 2048


def in_chunks(forward, x, *per_row):
    """forward(x, *per_row) on consecutive chunks of at most CHUNK_ROWS rows, concatenated.

    x may be an autograd box; ``per_row`` are plain arrays with one entry per row of x.
    ``anp.split`` rather than slices: the gradient of a split is one concatenate.
    """
    cuts = list(range(CHUNK_ROWS, x.shape[0], CHUNK_ROWS))
    if not cuts:
        return forward(x, *per_row)
    chunks = zip(anp.split(x, cuts), *(np.split(a, cuts) for a in per_row))
    return anp.concatenate([forward(*chunk) for chunk in chunks])


class Network:
    """Parameters, config and the Schedule a network was trained with; t must be in [1, sched.T]
    (an integer, or real: eq. (L1) is defined for real t). Calls are evaluated ``in_chunks``."""

    def __init__(self, params, config, sched):
        if config.kind != self.kind:
            raise ValueError(f"config must describe a {self.kind}, got kind {config.kind!r}")
        self.params, self.config, self.sched = params, config, sched

    def _inputs(self, x, t):
        """x as (N, D) in the network's dtype; t as int64 (N,) in 1..T, or float64 in [1, T] if real."""
        x = as_points(x, "x", dim=self.config.dim).astype(DTYPES[self.config.dtype], copy=False)
        return x, as_times(t, x.shape[0], self.sched.T)


def network_entries(model):
    """A Denoiser's or Classifier's own checkpoint entries (refdiff/checkpoint.py): the fields of
    'meta' (its MLPConfig) and the other arrays ('schedule_betas', its Schedule's betas)."""
    return {"config": model.config.to_dict()}, {"schedule_betas": model.sched.betas}


def network_from_entries(meta, arrays):
    """A Denoiser's or Classifier's MLPConfig, Schedule and parameter shapes from checkpoint
    entries; 'meta' kind and the config's kind must agree. Pops 'schedule_betas' from ``arrays``."""
    config = config_from(MLPConfig, config_object(meta))
    if config.kind != meta.get("kind"):
        raise ValueError(f"config kind {config.kind!r} differs from 'meta' kind {meta.get('kind')!r}")
    return config, read_schedule(arrays.pop("schedule_betas", None)), param_shapes(config)


class Denoiser(Network):
    """A denoiser as the model callable of docs/architecture.md: ``model(x, t, y=None) -> eps`` (N, D).

    Its network predicts ``config.prediction`` (eq. (L3p)); a call returns the eps that prediction
    implies ((C2), (C4), (C6)), so every sampler and guidance rule takes any prediction type, and
    ``predict`` returns any target.
    """
    kind = "denoiser"

    def __call__(self, x, t, y=None):
        return self.predict(x, t, y, "eps")

    def predict(self, x, t, y=None, target="eps"):
        """The prediction of ``target`` in process.PREDICTIONS at (x, t, y): the network's own output
        for its own target; x0 by ``process.prediction_to_x0`` (from a v or x0 model also where
        alpha_bar_t = 0); else converted through eps ((C1)-(C6); x0 and v need alpha_bar_t > 0)."""
        x, t = self._inputs(x, t)
        rows = label_rows(y, x.shape[0], self.config.num_labels)
        out = in_chunks(lambda *chunk: denoiser_forward(self.params, self.config, *chunk), x, t, rows)
        own = self.config.prediction
        if target == own:
            return out
        if target == "x0":  # directly, so that a v model gives x0 at alpha_bar = 0 too
            return prediction_to_x0(self.sched, x, t, out, own)
        eps = out if own == "eps" else prediction_to_eps(self.sched, x, t, out, own)
        return eps_to_prediction(self.sched, x, t, eps, target)


class Classifier(Network):
    """A noisy classifier as the model callable of docs/architecture.md: ``model(x, t) -> logits`` (N, K)."""
    kind = "classifier"

    def __call__(self, x, t):
        x, t = self._inputs(x, t)
        return in_chunks(lambda *chunk: classifier_forward(self.params, self.config, *chunk), x, t)
