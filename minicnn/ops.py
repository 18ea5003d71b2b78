"""The op seam: every computation a layer needs, by name, dispatched to the backend in force.

Layers call ``ops.conv2d_forward(...)`` and never compute themselves; each backend folder
(``backends/numpy``, ``backends/numba``, ``backends/cupy``) implements every op below with the
same signature. Shapes are NCHW, tuples are ``(h, w)`` pairs, and every op returns new arrays.
The numpy backend is the reference: read ``backends/numpy/*.py`` for what each op computes.

Op contract (x, y, dy, dx are arrays; "need_*" flags let frozen parameters skip work):

conv2d_forward(x, w, b, stride, padding, dilation, groups) -> y
    x (N,C,H,W), w (K,C/groups,R,S), b (K,) or None -> y (N,K,P,Q)
conv2d_backward(dy, x, w, stride, padding, dilation, groups, need_dx, need_dw, need_db) -> (dx, dw, db)
    entries not needed are None
conv2d_fused_forward(x, w, b, stride, padding, dilation, groups, residual, relu, out=None) -> y
    inference epilogue: y = conv(x) + b (+ residual) (then ReLU if relu); with ``out`` (an
    array of y's shape and dtype from the backend's ``empty``, overlapping neither x nor the
    residual) the result is written there and ``out`` is returned
maxpool2d_forward(x, kernel_size, stride, padding, dilation, need_argmax=True) -> (y, argmax)
    argmax: int64 array shaped like y, flat index h*W+w of the winner in its (n, c) plane;
    None when need_argmax=False (no backward will run: inference skips computing it).
    As PyTorch: the first maximum in scan order wins, a NaN wins (and propagates), and the first
    real (non-padding) input is taken even if it is -inf. MaxPool2d refuses windows that see only
    padding; called directly on one, the op returns -inf with argmax -1, which backward ignores.
maxpool2d_backward(dy, argmax, x_shape) -> dx      (also the backward of adaptive max pooling)
avgpool2d_forward(x, kernel_size, stride, padding, count_include_pad) -> y
avgpool2d_backward(dy, x_shape, kernel_size, stride, padding, count_include_pad) -> dx
adaptive_avgpool2d_forward(x, output_size) -> y
adaptive_avgpool2d_backward(dy, x_shape) -> dx
adaptive_maxpool2d_forward(x, output_size) -> (y, argmax)
batchnorm2d_forward_train(x, gamma, beta, eps) -> (y, mean, var)
    batch statistics over (N,H,W); var is the biased variance used to normalise
batchnorm2d_backward_train(dy, x, gamma, mean, var, eps, need_dx, need_dparams) -> (dx, dgamma, dbeta)
batchnorm2d_forward_eval(x, gamma, beta, running_mean, running_var, eps) -> y
batchnorm2d_backward_eval(dy, x, gamma, running_mean, running_var, eps, need_dx, need_dparams) -> (dx, dgamma, dbeta)
relu_forward(x) -> y;        relu_backward(dy, y) -> dx
sigmoid_forward(x) -> y;     sigmoid_backward(dy, y) -> dx
tanh_forward(x) -> y;        tanh_backward(dy, y) -> dx
add_relu_forward(a, b) -> y  (y = max(a + b, 0), the residual join)
linear_forward(x, w, b) -> y        x (N,F), w (O,F), b (O,) or None
linear_backward(dy, x, w, need_dx, need_dw, need_db) -> (dx, dw, db)
dropout_forward(x, p, rng) -> (y, mask)   mask holds 0 or 1/(1-p); rng is the backend's ``generator()``
dropout_backward(dy, mask) -> dx
softmax_forward(x) -> y       softmax over axis 1
log_softmax_forward(x) -> y
softmax_cross_entropy_forward(logits, targets) -> (loss, probs)
    logits (N,C), integer targets (N,); loss is the mean over the batch (0-d array)
softmax_cross_entropy_backward(probs, targets) -> dlogits   (p - onehot) / N
bce_with_logits_forward(logits, targets) -> loss   mean over all elements, stable for any logit
bce_with_logits_backward(logits, targets) -> dlogits
mse_forward(pred, target) -> loss                  mean over all elements
mse_backward(pred, target) -> dpred

Besides the ops, a backend's table holds array functions (required) and optional entries
(a backend that leaves one out gets the default from ``backends/_defaults.py``):

asarray(a) -> array          bring a host (numpy) array or scalar into the backend's memory; an
                             array on another device is refused with a TypeError naming it
is_native(a) -> bool         True for the backend's own array type
to_numpy(a) -> np.ndarray    a host copy (no copy for numpy input)
empty(shape, dtype) -> array uninitialised array in the backend's memory
generator() -> rng           the random generator dropout draws from, seeded by ``minicnn.manual_seed``
                             (default: the library's numpy Generator)
threads() -> int             threads the kernels run on (default 1); part of an autotuned pick's key
conv_variants(x_shape, w_shape, stride, padding, dilation, groups) -> {name: fn}
                             forward conv algorithms with the ``conv2d_fused_forward`` signature
                             that can compute this shape, for an autotuner (default: none)
release_unpicked(w, picked) -> int
                             drop what the backend cached for constant filter ``w`` for variants
                             not in ``picked``; returns bytes freed (default: nothing cached, 0)
conv2d_maxpool_fused(x, w, b, stride, padding, dilation, groups, relu, pool_kernel, pool_stride,
                     pool_padding, pool_dilation, out=None) -> y
                             maxpool(relu?(conv(x) + b)) (a ResNet stem); default: the fused conv
                             then ``maxpool2d_forward`` without argmax
"""
from __future__ import annotations

OP_NAMES = (
    "conv2d_forward",
    "conv2d_backward",
    "conv2d_fused_forward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "adaptive_avgpool2d_forward",
    "adaptive_avgpool2d_backward",
    "adaptive_maxpool2d_forward",
    "batchnorm2d_forward_train",
    "batchnorm2d_backward_train",
    "batchnorm2d_forward_eval",
    "batchnorm2d_backward_eval",
    "relu_forward",
    "relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
    "add_relu_forward",
    "linear_forward",
    "linear_backward",
    "dropout_forward",
    "dropout_backward",
    "softmax_forward",
    "log_softmax_forward",
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "bce_with_logits_forward",
    "bce_with_logits_backward",
    "mse_forward",
    "mse_backward",
)

# the array functions every backend's table holds (see the docstring)
ARRAY_FUNCS = ("asarray", "is_native", "to_numpy", "empty")

# entries a backend may leave out; backends.load fills them from backends/_defaults.py
OPTIONAL = ("generator", "threads", "conv_variants", "release_unpicked", "conv2d_maxpool_fused")

TABLE = OP_NAMES + ARRAY_FUNCS + OPTIONAL


def _dispatcher(name: str):
    def op(*args, **kwargs):
        from . import backends

        return backends.current().OPS[name](*args, **kwargs)

    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"Dispatch ``{name}`` to the backend in force (see the module docstring for its contract)."
    return op


for _name in OP_NAMES:
    globals()[_name] = _dispatcher(_name)
del _name
