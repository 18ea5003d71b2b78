"""Elementwise activations and softmax: the readable reference.

ReLU, sigmoid and tanh have ops of their own whose backward takes the forward *output* y: their
derivatives are functions of y, and the layer keeps y anyway.

The other activations (``KINDS`` below: leaky_relu, elu, selu, gelu, gelu_tanh, silu, hardswish,
hardsigmoid, softplus, softsign) share one pair of ops, ``activation_forward(x, kind, params)``
and ``activation_backward(dy, x, kind, params)``. Each kind is two small functions here, the
activation and its derivative, one line each, and its parameters are a tuple of numbers. One pair
instead of twenty ops keeps the op table, the conformance cases and the fast kernel small: a new
activation is two functions here and two branches in the numba kernel. Their backwards take the
*input* x, because none of them can always recover it from y: a negative LeakyReLU slope or ELU
alpha gives y the wrong sign, and GELU, SiLU and hardswish are not one-to-one.

Derivatives at the kinks are PyTorch's (its autograd formulas): LeakyReLU uses the slope at 0,
ELU uses alpha at 0, hardswish is 0 at -3 and 1 at +3, hardsigmoid is 0 at both -3 and +3.

PReLU is LeakyReLU with a learned slope per channel (axis 1), so it has its own pair of ops that
also return the slope's gradient. Softmax and log-softmax work over any ``axis``; their backwards
take the output y (the Jacobian of softmax is a function of y alone).
"""
import math

import numpy as np

__all__ = [
    "relu_forward",
    "relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
    "add_relu_forward",
    "activation_forward",
    "activation_backward",
    "prelu_forward",
    "prelu_backward",
    "softmax_forward",
    "softmax_backward",
    "log_softmax_forward",
    "log_softmax_backward",
]


def relu_forward(x):
    return np.maximum(x, 0)


def relu_backward(dy, y):
    """The gradient passes where the unit was active (y > 0); PyTorch also uses 0 at x == 0."""
    return dy * (y > 0)


def sigmoid_forward(x):
    # split by sign so exp never overflows
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def sigmoid_backward(dy, y):
    return dy * y * (1 - y)


def tanh_forward(x):
    return np.tanh(x)


def tanh_backward(dy, y):
    return dy * (1 - y * y)


def add_relu_forward(a, b):
    return np.maximum(a + b, 0)


# -- the parametrised family: f(x, *params) and f'(x, *params) for each kind ----------------------

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
GELU_TANH_BETA = math.sqrt(2.0 / math.pi)
GELU_TANH_KAPPA = 0.044715
_erf = np.vectorize(math.erf, otypes=[np.float64])  # numpy has no erf; the reference can be slow


def _leaky_relu(x, negative_slope):
    return np.where(x > 0, x, x * negative_slope)


def _d_leaky_relu(x, negative_slope):
    return np.where(x > 0, 1.0, negative_slope)  # the slope at x == 0


def _elu(x, alpha, scale=1.0):
    return scale * np.where(x > 0, x, alpha * np.expm1(x))


def _d_elu(x, alpha, scale=1.0):
    return scale * np.where(x <= 0, alpha * np.exp(x), 1.0)  # alpha at x == 0


def _selu(x):
    return _elu(x, SELU_ALPHA, SELU_SCALE)


def _d_selu(x):
    return _d_elu(x, SELU_ALPHA, SELU_SCALE)


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))  # x * Phi(x), Phi the normal CDF


def _d_gelu(x):
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(GELU_TANH_BETA * (x + GELU_TANH_KAPPA * x**3)))


def _d_gelu_tanh(x):
    t = np.tanh(GELU_TANH_BETA * (x + GELU_TANH_KAPPA * x**3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_TANH_BETA * (1.0 + 3.0 * GELU_TANH_KAPPA * x * x)


def _silu(x):
    return x * sigmoid_forward(x)


def _d_silu(x):
    s = sigmoid_forward(x)
    return s * (1.0 + x * (1.0 - s))


def _hardswish(x):
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _d_hardswish(x):
    return np.where(x <= -3.0, 0.0, np.where(x < 3.0, x / 3.0 + 0.5, 1.0))  # 0 at -3, 1 at +3


def _hardsigmoid(x):
    return np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _d_hardsigmoid(x):
    return np.where((x > -3.0) & (x < 3.0), 1.0 / 6.0, 0.0)  # 0 at both kinks


def _softplus(x, beta, threshold):
    # linear past the threshold, where log(1 + e^(beta x)) / beta equals x to rounding
    return np.where(x * beta > threshold, x, np.log1p(np.exp(x * beta)) / beta)


def _d_softplus(x, beta, threshold):
    z = np.exp(x * beta)
    return np.where(x * beta > threshold, 1.0, z / (z + 1.0))


def _softsign(x):
    return x / (1.0 + np.abs(x))


def _d_softsign(x):
    return 1.0 / (1.0 + np.abs(x)) ** 2


# kind -> (activation, derivative, names of its parameters in order)
KINDS = {
    "leaky_relu": (_leaky_relu, _d_leaky_relu, ("negative_slope",)),
    "elu": (_elu, _d_elu, ("alpha",)),
    "selu": (_selu, _d_selu, ()),
    "gelu": (_gelu, _d_gelu, ()),
    "gelu_tanh": (_gelu_tanh, _d_gelu_tanh, ()),
    "silu": (_silu, _d_silu, ()),
    "hardswish": (_hardswish, _d_hardswish, ()),
    "hardsigmoid": (_hardsigmoid, _d_hardsigmoid, ()),
    "softplus": (_softplus, _d_softplus, ("beta", "threshold")),
    "softsign": (_softsign, _d_softsign, ()),
}


def _kind(kind, params, where):
    if kind not in KINDS:
        raise ValueError(f"{where}: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    f, df, names = KINDS[kind]
    if len(params) != len(names):
        raise ValueError(f"{where}: kind {kind!r} takes params ({', '.join(names)}), got {tuple(params)}")
    return f, df


def activation_forward(x, kind, params=()):
    """y = f(x) for the activation ``kind`` with its ``params`` (see ``KINDS``)."""
    f, _ = _kind(kind, params, "activation_forward")
    # np.where computes both branches; the one not taken may overflow (exp of a large x): no warning
    with np.errstate(all="ignore"):
        return np.asarray(f(x, *params)).astype(x.dtype, copy=False)


def activation_backward(dy, x, kind, params=()):
    """dx = dy * f'(x)."""
    _, df = _kind(kind, params, "activation_backward")
    with np.errstate(all="ignore"):
        return (dy * df(x, *params)).astype(np.result_type(dy, x), copy=False)


# -- PReLU: a learned slope, one for all or one per channel ---------------------------------------

def _slopes(x, weight, where):
    """``weight`` shaped to broadcast against x: one slope for every element, or one per channel."""
    if weight.ndim != 1 or (weight.size != 1 and (x.ndim < 2 or x.shape[1] != weight.size)):
        raise ValueError(
            f"{where}: weight of shape {tuple(weight.shape)} needs input with {weight.size} channels along "
            f"axis 1 (or a single slope), got input shape {tuple(x.shape)}"
        )
    if weight.size == 1:
        return weight.reshape(())
    return weight.reshape((1, -1) + (1,) * (x.ndim - 2))


def prelu_forward(x, weight):
    """y = x where x > 0, else a_c * x with a_c the slope of x's channel."""
    a = _slopes(x, weight, "prelu_forward")
    return np.where(x > 0, x, a * x)


def prelu_backward(dy, x, weight, need_dx=True, need_dw=True):
    """dx = dy where x > 0, else a_c * dy; da_c = sum of x * dy over the elements of channel c with x <= 0."""
    a = _slopes(x, weight, "prelu_backward")
    dx = np.where(x > 0, dy, a * dy) if need_dx else None
    dw = None
    if need_dw:
        per_element = np.where(x > 0, 0, x * dy)
        axes = tuple(i for i in range(x.ndim) if weight.size == 1 or i != 1)
        dw = per_element.sum(axis=axes).reshape(weight.shape)
    return dx, dw


# -- softmax over one axis --------------------------------------------------------------------------

def softmax_forward(x, axis=1):
    z = x - x.max(axis=axis, keepdims=True)  # the largest exponent is 0: exp cannot overflow
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(dy, y, axis=1):
    """dx = y * (dy - sum(dy * y)): the Jacobian diag(y) - y y^T applied to dy."""
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def log_softmax_forward(x, axis=1):
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def log_softmax_backward(dy, y, axis=1):
    """dx = dy - softmax(x) * sum(dy), with softmax(x) = exp(y)."""
    return dy - np.exp(y) * dy.sum(axis=axis, keepdims=True)
