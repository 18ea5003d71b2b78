"""What a backend gets for each optional entry of its table that it leaves out (see ``minicnn.ops``).

Each default is written against the op seam only, so it is right for any backend; a backend
overrides one when it can do better (numba: aligned buffers, conv variants, a fused stem).
"""
from __future__ import annotations

import contextlib


def generator():
    """The library's numpy Generator (``minicnn.manual_seed`` reseeds it)."""
    from ..random import get_rng

    return get_rng()


def threads() -> int:
    """One: a backend that does not say otherwise is not multi-threaded."""
    return 1


def map_one_thread(fn, items) -> list:
    """One call after another on the calling thread: a single-threaded backend has no parts to overlap."""
    return [fn(item) for item in items]


def conv_variants(x_shape, w_shape, stride, padding, dilation, groups) -> dict:
    """No alternative algorithms: an autotuner keeps ``conv2d_fused_forward``."""
    return {}


def release_unpicked(w, picked) -> int:
    """Nothing is cached per filter, so nothing is freed."""
    return 0


def compiled_only():
    """Nothing to refuse: a backend that compiles nothing at first use runs every call."""
    return contextlib.nullcontext()


compiled_only.refusal = ()


def conv2d_maxpool_fused(x, w, b, stride, padding, dilation, groups, relu, pool_kernel, pool_stride,
                         pool_padding, pool_dilation, out=None):
    """maxpool(relu?(conv(x) + b)) as two ops of the backend in force."""
    from .. import ops

    y = ops.conv2d_fused_forward(x, w, b, stride, padding, dilation, groups, None, relu)
    pooled, _ = ops.maxpool2d_forward(y, pool_kernel, pool_stride, pool_padding, pool_dilation, need_argmax=False)
    if out is None:
        return pooled
    out[...] = pooled
    return out


def channels_last() -> bool:
    """False: compiled models keep NCHW activations and call the NCHW ops."""
    return False


def channels_last_through(op, x, w, b, stride, padding, dilation, groups, residual, relu, out):
    """A channels-last fused conv computed by the NCHW ``op``: x and the residual viewed as NCHW,
    the result transposed back (into ``out`` when given). Right for any backend's arrays."""
    res = None if residual is None else residual.transpose(0, 3, 1, 2)
    y = op(x.transpose(0, 3, 1, 2), w, b, stride, padding, dilation, groups, residual=res, relu=relu)
    y = y.transpose(0, 2, 3, 1)
    if out is None:
        return y.copy()
    out[...] = y
    return out


def conv2d_fused_forward_cl(x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """The backend's NCHW ``conv2d_fused_forward`` through transposes (``channels_last_through``)."""
    from .. import ops

    return channels_last_through(ops.conv2d_fused_forward, x, w, b, stride, padding, dilation, groups,
                                 residual, relu, out)


def conv_variants_cl(x_shape, w_shape, stride, padding, dilation, groups) -> dict:
    """No alternative algorithms: an autotuner keeps ``conv2d_fused_forward_cl``."""
    return {}


def maxpool2d_forward_cl(x, kernel_size, stride, padding, dilation=(1, 1), ceil_mode=False, out=None,
                         bias=None, relu=False):
    """The backend's NCHW ``maxpool2d_forward`` (no argmax) through transposes, then ``+ bias``
    (broadcast along the last axis, the channels) and the backend's ``relu_forward``."""
    from .. import ops

    y, _ = ops.maxpool2d_forward(x.transpose(0, 3, 1, 2), kernel_size, stride, padding, dilation,
                                 need_argmax=False, ceil_mode=ceil_mode)
    y = y.transpose(0, 2, 3, 1)
    if bias is not None or relu:
        y = y + bias if bias is not None else y.copy()  # C-ordered for the relu kernel
        if relu:
            y = ops.relu_forward(y)
    if out is None:
        return y.copy()
    out[...] = y
    return out


def to_channels_last(x, out=None):
    """x (N, C, H, W) as a new (N, H, W, C) array (or into ``out``) by a transposing copy."""
    y = x.transpose(0, 2, 3, 1)
    if out is None:
        return y.copy()
    out[...] = y
    return out


def capture_graph(fn, example):
    """Refuse: this backend runs each op as it is called, so there is no device work to record."""
    from . import current

    raise RuntimeError(
        f"backend {current().NAME!r} cannot capture a graph: it runs each op as it is called; "
        "graph capture needs a GPU backend that records its launches"
    )


def synchronize() -> None:
    """Nothing to wait for: the backend's ops are done when they return."""


def tuning_key() -> tuple:
    """Nothing besides shapes, dtype and threads decides an autotuned pick."""
    return ()


DEFAULTS = {
    "generator": generator,
    "threads": threads,
    "map_one_thread": map_one_thread,
    "conv_variants": conv_variants,
    "release_unpicked": release_unpicked,
    "conv2d_maxpool_fused": conv2d_maxpool_fused,
    "compiled_only": compiled_only,
    "capture_graph": capture_graph,
    "synchronize": synchronize,
    "tuning_key": tuning_key,
    "channels_last": channels_last,
    "conv2d_fused_forward_cl": conv2d_fused_forward_cl,
    "conv_variants_cl": conv_variants_cl,
    "maxpool2d_forward_cl": maxpool2d_forward_cl,
    "to_channels_last": to_channels_last,
}
