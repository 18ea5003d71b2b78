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
maxpool2d_forward(x, kernel_size, stride, padding, dilation, need_argmax=True, ceil_mode=False) -> (y, argmax)
    argmax: int64 array shaped like y, flat index h*W+w of the winner in its (n, c) plane;
    None when need_argmax=False (no backward will run: inference skips computing it).
    As PyTorch: the first maximum in scan order wins, a NaN wins (and propagates), and the first
    real (non-padding) input is taken even if it is -inf. MaxPool2d refuses windows that see only
    padding; called directly on one, the op returns -inf with argmax -1, which backward ignores.
maxpool2d_backward(dy, argmax, x_shape) -> dx      (also the backward of adaptive max pooling)
avgpool2d_forward(x, kernel_size, stride, padding, count_include_pad, ceil_mode=False) -> y
avgpool2d_backward(dy, x_shape, kernel_size, stride, padding, count_include_pad, ceil_mode=False) -> dx
    ceil_mode (both pools): output size rounded up as ``shapes.conv_output_size``; with
    count_include_pad the divisor is the window clipped to the padded input
adaptive_avgpool2d_forward(x, output_size) -> y
adaptive_avgpool2d_backward(dy, x_shape) -> dx
adaptive_maxpool2d_forward(x, output_size) -> (y, argmax)
maxunpool2d_forward(x, indices, output_size) -> y
    y (N,C,OH,OW) zeros with y[n,c].flat[indices[n,c,i,j]] = x[n,c,i,j] (a repeated index keeps the
    last value in scan order); indices int64 shaped like x, each in [0, OH*OW) else ValueError
maxunpool2d_backward(dy, indices) -> dx     dx[n,c,i,j] = dy[n,c].flat[indices[n,c,i,j]]
pad2d_forward(x, pads, mode, value) -> y
    pads (left, right, top, bottom) on the last two axes of x (N,C,H,W); mode "constant" (fills
    ``value``), "reflect", "replicate" or "circular"; a negative pad crops; PyTorch's limits
pad2d_backward(dy, x_shape, pads, mode) -> dx  the adjoint: dy summed onto the cells each padded cell copied
conv_transpose2d_forward(x, w, b, stride, padding, output_padding, dilation, groups) -> y
    x (N,C,H,W), w (C,K/groups,R,S) (PyTorch's layout), b (K,) or None -> y (N,K,OH,OW),
    OH = (H-1)*stride - 2*padding + dilation*(R-1) + output_padding + 1 (``shapes.conv_transpose_output_size``);
    the adjoint of conv2d_forward with the same w: y = conv2d_backward's dx of dy = x
conv_transpose2d_backward(dy, x, w, stride, padding, output_padding, dilation, groups, need_dx, need_dw, need_db)
    -> (dx, dw, db)   entries not needed are None
upsample_nearest2d_forward(x, output_size, scales=None) -> y
    x (N,C,H,W) -> y (N,C,OH,OW), output_size (OH, OW); y[i, j] = x[rows[i], cols[j]] with the maps of
    ``shapes.nearest_source_index``; scales (scale_h, scale_w): the scale factors the caller gave (each
    float or None), which PyTorch's index rule uses instead of in/out
upsample_nearest2d_backward(dy, x_shape, scales=None) -> dx   the adjoint (scatter-add through the maps)
upsample_bilinear2d_forward(x, output_size, align_corners, scales=None) -> y
    the 2x2 blend of ``shapes.linear_source_index`` (PyTorch's bilinear, align_corners True or False)
upsample_bilinear2d_backward(dy, x_shape, align_corners, scales=None) -> dx   the adjoint
batchnorm2d_forward_train(x, gamma, beta, eps) -> (y, mean, var)
    batch statistics over (N,H,W); var is the biased variance used to normalise
batchnorm2d_backward_train(dy, x, gamma, mean, var, eps, need_dx, need_dparams) -> (dx, dgamma, dbeta)
batchnorm2d_forward_eval(x, gamma, beta, running_mean, running_var, eps) -> y
batchnorm2d_backward_eval(dy, x, gamma, running_mean, running_var, eps, need_dx, need_dparams) -> (dx, dgamma, dbeta)
relu_forward(x) -> y;        relu_backward(dy, y) -> dx
sigmoid_forward(x) -> y;     sigmoid_backward(dy, y) -> dx
tanh_forward(x) -> y;        tanh_backward(dy, y) -> dx
add_relu_forward(a, b) -> y  (y = max(a + b, 0), the residual join)
activation_forward(x, kind, params=()) -> y
    one of the parametrised activations, by name, with its params tuple: 'leaky_relu'
    (negative_slope,), 'elu' (alpha,), 'selu', 'gelu', 'gelu_tanh', 'silu', 'hardswish',
    'hardsigmoid', 'softplus' (beta, threshold), 'softsign'; unknown kind or wrong params: ValueError
activation_backward(dy, x, kind, params=()) -> dx   dy * f'(x), from the input x; PyTorch's values at kinks
prelu_forward(x, weight) -> y       weight (1,) shared, or (C,) one slope per channel along axis 1 of x
prelu_backward(dy, x, weight, need_dx=True, need_dw=True) -> (dx, dweight)   dweight shaped like weight
linear_forward(x, w, b) -> y        x (N,F), w (O,F), b (O,) or None
linear_backward(dy, x, w, need_dx, need_dw, need_db) -> (dx, dw, db)
dropout_forward(x, p, rng) -> (y, mask)   mask holds 0 or 1/(1-p); rng is the backend's ``generator()``
dropout_backward(dy, mask) -> dx
dropout2d_forward(x, p, rng) -> (y, mask)  x (N,C,...); mask (N,C) of 0 or 1/(1-p) from rng.random((N, C)) >= p,
                                           each (n, c) plane scaled by its entry
dropout2d_backward(dy, mask) -> dx
softmax_forward(x, axis=1) -> y       softmax over ``axis`` (x has at least one axis)
softmax_backward(dy, y, axis=1) -> dx  from the forward output y: y * (dy - sum(dy * y))
log_softmax_forward(x, axis=1) -> y
log_softmax_backward(dy, y, axis=1) -> dx   from the output y: dy - exp(y) * sum(dy)
softmax_cross_entropy_forward(logits, targets) -> (loss, probs)
    the plain case: logits (N,C), integer targets (N,) in [0, C); loss is the mean over the batch (0-d array)
softmax_cross_entropy_backward(probs, targets) -> dlogits   (p - onehot) / N
Losses with a ``reduction`` ('none' | 'mean' | 'sum'): forward returns a 0-d array, or for 'none'
the loss per element (per position for the class losses); backward takes ``dloss`` last, a number
for 'mean'/'sum' or an array of the loss's shape for 'none', and returns the input's gradient.
cross_entropy_forward(logits, targets, weight, ignore_index, label_smoothing, reduction) -> (loss, lse)
    logits (N,C,d1,...); targets integer class indices (N,d1,...) (each in [0, C) or ignore_index),
    or float class probabilities of the logits' shape; weight (C,) or None; lse (N,d1,...) is the
    log-sum-exp over classes; 'mean' divides by the kept targets' total weight (probabilities: by N*d1*...)
cross_entropy_backward(logits, lse, targets, weight, ignore_index, label_smoothing, reduction, dloss) -> dlogits
nll_forward(logp, targets, weight, ignore_index, reduction) -> loss   logp log-probabilities (N,C,d1,...)
nll_backward(logp, targets, weight, ignore_index, reduction, dloss) -> dlogp
bce_with_logits_forward(logits, targets, weight=None, pos_weight=None, reduction='mean') -> loss
    stable for any logit; weight and pos_weight broadcast to the logits' shape
bce_with_logits_backward(logits, targets, weight=None, pos_weight=None, reduction='mean', dloss=1.0) -> dlogits
mse_forward(pred, target, reduction='mean') -> loss
mse_backward(pred, target, reduction='mean', dloss=1.0) -> dpred
l1_forward(pred, target, reduction='mean') -> loss
l1_backward(pred, target, reduction='mean', dloss=1.0) -> dpred
smooth_l1_forward(pred, target, beta=1.0, reduction='mean') -> loss
smooth_l1_backward(pred, target, beta=1.0, reduction='mean', dloss=1.0) -> dpred
huber_forward(pred, target, delta=1.0, reduction='mean') -> loss
huber_backward(pred, target, delta=1.0, reduction='mean', dloss=1.0) -> dpred

Besides the ops, a backend's table holds array functions (required) and optional entries
(a backend that leaves one out gets the default from ``backends/_defaults.py``):

asarray(a) -> array          bring a host (numpy) array or scalar into the backend's memory; an
                             array on another device is refused with a TypeError naming it
is_native(a) -> bool         True for the backend's own array type
to_numpy(a) -> np.ndarray    a host copy (no copy for numpy input)
empty(shape, dtype) -> array uninitialised array in the backend's memory
generator() -> rng           the random generator dropout draws from, seeded by ``minicnn.manual_seed``
                             (default: the library's numpy Generator). A device backend keeps its own
                             with ``minicnn.random.backend_generator(NAME, make)``: rebuilt by
                             ``make(seed)`` after each ``manual_seed``, the same object in between
threads() -> int             threads the kernels run on (default 1); part of an autotuned pick's key
map_one_thread(fn, items) -> list
                             ``[fn(item) for item in items]``, the calls in parallel, each on a thread
                             whose kernels run on that thread alone (numba: helper threads with one
                             kernel thread each); for independent parts of a batch, which then need
                             no barrier between kernels. ``fn`` runs on another thread: it must
                             enter the backend itself. Default: one after another on the calling thread
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
synchronize() -> None        wait until the work the backend has queued is done (a device backend runs
                             asynchronously; timing a kernel needs this); default: nothing to wait for
compiled_only() -> context   a context manager: inside it (this thread), a call that would first
                             have to compile code raises ``compiled_only.refusal`` (an exception
                             class) instead; what is compiled or cached runs. The autotuner times
                             its candidates inside it (numba: a cold cache leaves out variants whose
                             kernels would compile). Default: nothing is refused (``refusal = ()``)
tuning_key() -> tuple        what besides the call's shapes, dtype and ``threads()`` decides which
                             ``conv_variants`` apply or win (cupy: the precision mode); part of an
                             autotuned pick's key; default ``()``
channels_last() -> bool      whether compiled models should keep activations channels-last, (N, H, W, C),
                             between layers and call the three entries below (numba: True; its
                             channels-last kernels vectorise over channels). Default: False
conv2d_fused_forward_cl(x, w, b, stride, padding, dilation, groups, residual, relu, out=None) -> y
                             ``conv2d_fused_forward`` on channels-last arrays: x (N,H,W,C), residual and
                             y (N,P,Q,K); w stays (K,C/groups,R,S). Default: the NCHW op through transposes
conv_variants_cl(x_shape, w_shape, stride, padding, dilation, groups) -> {name: fn}
                             ``conv_variants`` for ``conv2d_fused_forward_cl`` (x_shape (N,H,W,C));
                             default: none
to_channels_last(x, out=None) -> y  x (N,C,H,W) copied to (N,H,W,C), the layout the ``*_cl``
                             entries read (a compiled model's input); ``out``: a C-contiguous array of
                             that shape and x's dtype to write to. Default: numpy-style transposing copy
maxpool2d_forward_cl(x, kernel_size, stride, padding, dilation=(1, 1), ceil_mode=False, out=None,
                     bias=None, relu=False) -> y
                             ``maxpool2d_forward``'s values (no argmax) on channels-last x (N,H,W,C) ->
                             (N,P,Q,C), then + bias (C,) and ReLU when given (a ResNet stem's conv
                             epilogue moved after its pool). Default: the NCHW op through transposes
capture_graph(fn, example) -> replay
                             record the device work of ``fn(x)`` once, for inputs of ``example``'s
                             shape and dtype (an array of this backend), and return
                             ``replay(x) -> y``: the recording rerun on ``x``, its result in a new
                             array. ``fn`` must not wait for the device (no copy to the host) and
                             must allocate alike on every call; the backend runs it first to warm
                             up. Default: refused with a RuntimeError (a backend that runs each op
                             as it is called has nothing to record)
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
    "maxunpool2d_forward",
    "maxunpool2d_backward",
    "pad2d_forward",
    "pad2d_backward",
    "conv_transpose2d_forward",
    "conv_transpose2d_backward",
    "upsample_nearest2d_forward",
    "upsample_nearest2d_backward",
    "upsample_bilinear2d_forward",
    "upsample_bilinear2d_backward",
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
    "activation_forward",
    "activation_backward",
    "prelu_forward",
    "prelu_backward",
    "linear_forward",
    "linear_backward",
    "dropout_forward",
    "dropout_backward",
    "dropout2d_forward",
    "dropout2d_backward",
    "softmax_forward",
    "softmax_backward",
    "log_softmax_forward",
    "log_softmax_backward",
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "bce_with_logits_forward",
    "bce_with_logits_backward",
    "mse_forward",
    "mse_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "nll_forward",
    "nll_backward",
    "l1_forward",
    "l1_backward",
    "smooth_l1_forward",
    "smooth_l1_backward",
    "huber_forward",
    "huber_backward",
)

# the array functions every backend's table holds (see the docstring)
ARRAY_FUNCS = ("asarray", "is_native", "to_numpy", "empty")

# entries a backend may leave out; backends.load fills them from backends/_defaults.py
OPTIONAL = ("generator", "threads", "conv_variants", "release_unpicked", "conv2d_maxpool_fused", "capture_graph",
            "synchronize", "tuning_key", "compiled_only", "map_one_thread", "channels_last",
            "conv2d_fused_forward_cl", "conv_variants_cl", "maxpool2d_forward_cl", "to_channels_last")

TABLE = OP_NAMES + ARRAY_FUNCS + OPTIONAL


def _dispatcher(name: str):
    def op(*args, **kwargs):
        return backends.current().OPS[name](*args, **kwargs)

    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"Dispatch ``{name}`` to the backend in force (see the module docstring for its contract)."
    return op


for _name in OP_NAMES:
    globals()[_name] = _dispatcher(_name)
del _name

# last: the backends package reads this module's tables while it loads (imported here once, not
# inside every op call)
from . import backends  # noqa: E402
