"""The shape arithmetic exporters emit, evaluated in plain numpy on small host arrays.

``torch.onnx.export`` writes ``x.view(x.size(0), -1)`` as Shape -> Gather -> Unsqueeze -> Concat
-> Reshape, and padding or resize arguments as chains of Constant, ConstantOfShape, Slice, Cast.
The loader folds every such node whose inputs are all known at load time into a constant; a node
that reads a runtime shape (Shape of the input, when the batch size is dynamic) runs here on each
forward pass, on integers, with no gradient. ``HOST_OPS[op](inputs, attrs, opset)`` returns the
list of outputs.
"""
from __future__ import annotations

import numpy as np

from .nodes import slice_index

__all__ = ["HOST_OPS", "reshape_rule", "flatten_rule", "squeeze_rule", "unsqueeze_rule", "TENSOR_DTYPES"]

# the most elements a shape-arithmetic node may create: a hostile file asking ConstantOfShape,
# Expand or Range for 10^12 elements is refused instead of exhausting memory
MAX_HOST_ELEMENTS = 1 << 28


def _check_size(shape, op):
    n = 1
    for s in shape:
        if int(s) < 0:
            raise ValueError(f"{op}: negative dimension in {tuple(int(v) for v in shape)}")
        n *= int(s)
    if n > MAX_HOST_ELEMENTS:
        raise ValueError(f"{op}: shape {tuple(int(v) for v in shape)} has {n} elements, more than the "
                         f"{MAX_HOST_ELEMENTS} allowed")


# ONNX TensorProto data types this package reads, as numpy dtypes
TENSOR_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
                 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def reshape_rule(shape, target, allowzero=0):
    """ONNX Reshape's output shape: 0 copies the input's size on that axis (unless allowzero),
    one -1 is inferred."""
    target = [int(t) for t in np.asarray(target).reshape(-1)]
    out = [shape[i] if (t == 0 and not allowzero) else t for i, t in enumerate(target)]
    if out.count(-1) > 1:
        raise ValueError(f"Reshape: more than one -1 in target shape {target}")
    if -1 in out:
        known = int(np.prod([t for t in out if t != -1], dtype=np.int64))
        total = int(np.prod(shape, dtype=np.int64))
        if known == 0 or total % known:
            raise ValueError(f"Reshape: cannot reshape {tuple(shape)} to {target}")
        out[out.index(-1)] = total // known
    if int(np.prod(out, dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"Reshape: cannot reshape {tuple(shape)} to {target}")
    return tuple(out)


def flatten_rule(shape, axis=1):
    """ONNX Flatten: (prod(shape[:axis]), prod(shape[axis:]))."""
    axis = axis % (len(shape) + 1) if axis < 0 else axis
    return (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))


def squeeze_rule(shape, axes=None):
    """ONNX Squeeze: drop the listed axes (each of size 1), or every axis of size 1."""
    if axes is None or len(np.asarray(axes).reshape(-1)) == 0:
        return tuple(s for s in shape if s != 1)
    axes = {int(a) % len(shape) for a in np.asarray(axes).reshape(-1)}
    for a in axes:
        if shape[a] != 1:
            raise ValueError(f"Squeeze: axis {a} of shape {tuple(shape)} is not 1")
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def unsqueeze_rule(shape, axes):
    """ONNX Unsqueeze: insert axes of size 1 at the listed positions of the output."""
    axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    n = len(shape) + len(axes)
    axes = sorted(a % n for a in axes)
    out = list(shape)
    for a in axes:
        out.insert(a, 1)
    return tuple(out)


def _broadcast_ok(op):
    def run(ins, attrs, opset):
        a, b = ins
        return [op(a, b)]
    return run


def _shape(ins, attrs, opset):
    shape = np.asarray(ins[0].shape if hasattr(ins[0], "shape") else np.shape(ins[0]), dtype=np.int64)
    start, end = attrs.get("start", 0), attrs.get("end", None)
    return [shape[start:end]]


def _gather(ins, attrs, opset):
    data, idx = np.asarray(ins[0]), np.asarray(ins[1], dtype=np.int64)
    axis = attrs.get("axis", 0) % max(data.ndim, 1)
    idx = np.where(idx < 0, idx + data.shape[axis], idx)
    return [np.take(data, idx, axis=axis)]


def _slice(ins, attrs, opset):
    data = np.asarray(ins[0])
    if opset < 10:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = ins[1], ins[2]
        axes = ins[3] if len(ins) > 3 and ins[3] is not None else None
        steps = ins[4] if len(ins) > 4 and ins[4] is not None else None
    return [data[slice_index(data.shape, np.asarray(starts).reshape(-1), np.asarray(ends).reshape(-1),
                             None if axes is None else np.asarray(axes).reshape(-1),
                             None if steps is None else np.asarray(steps).reshape(-1))].copy()]


def _cast(ins, attrs, opset):
    to = attrs["to"]
    if to not in TENSOR_DTYPES:
        raise ValueError(f"Cast to ONNX data type {to} is not supported")
    return [np.asarray(ins[0]).astype(TENSOR_DTYPES[to])]


def _constant_of_shape(ins, attrs, opset):
    value = attrs.get("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value)
    shape = tuple(int(s) for s in np.asarray(ins[0]).reshape(-1))
    _check_size(shape, "ConstantOfShape")
    return [np.full(shape, value.reshape(-1)[0], dtype=value.dtype)]


def _concat(ins, attrs, opset):
    arrays = [np.asarray(a) for a in ins]
    return [np.concatenate(arrays, axis=attrs.get("axis", 0) % max(arrays[0].ndim, 1))]


def _axes_from(ins, attrs, opset, pos=1):
    if opset >= 13:
        return ins[pos] if len(ins) > pos and ins[pos] is not None else None
    return attrs.get("axes")


def _unsqueeze(ins, attrs, opset):
    a = np.asarray(ins[0])
    return [a.reshape(unsqueeze_rule(a.shape, _axes_from(ins, attrs, opset)))]


def _squeeze(ins, attrs, opset):
    a = np.asarray(ins[0])
    return [a.reshape(squeeze_rule(a.shape, _axes_from(ins, attrs, opset)))]


def _reshape(ins, attrs, opset):
    a = np.asarray(ins[0])
    target = ins[1] if opset >= 5 else attrs["shape"]
    return [a.reshape(reshape_rule(a.shape, target, attrs.get("allowzero", 0)))]


def _flatten(ins, attrs, opset):
    a = np.asarray(ins[0])
    return [a.reshape(flatten_rule(a.shape, attrs.get("axis", 1)))]


def _transpose(ins, attrs, opset):
    return [np.transpose(np.asarray(ins[0]), attrs.get("perm"))]


def _range(ins, attrs, opset):
    start, limit, delta = (np.asarray(v).reshape(()) for v in ins)
    if delta == 0:
        raise ValueError("Range: delta is 0")
    _check_size((max(int(np.ceil((limit - start) / delta)), 0),), "Range")
    return [np.arange(start, limit, delta, dtype=np.result_type(start, limit, delta))]


def _expand(ins, attrs, opset):
    a = np.asarray(ins[0])
    shape = tuple(int(s) for s in np.asarray(ins[1]).reshape(-1))
    out = np.broadcast_shapes(a.shape, shape)
    _check_size(out, "Expand")
    return [np.broadcast_to(a, out).copy()]


def _div(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return np.trunc(a / b).astype(np.result_type(a, b))
    return a / b


def _unary(fn):
    return lambda ins, attrs, opset: [fn(np.asarray(ins[0]))]


def _min_max(fn):
    def run(ins, attrs, opset):
        out = np.asarray(ins[0])
        for a in ins[1:]:
            out = fn(out, np.asarray(a))
        return [out]
    return run


HOST_OPS = {
    "Shape": _shape,
    "Gather": _gather,
    "Slice": _slice,
    "Cast": _cast,
    "ConstantOfShape": _constant_of_shape,
    "Concat": _concat,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Identity": lambda ins, attrs, opset: [np.asarray(ins[0])],
    "Range": _range,
    "Expand": _expand,
    "Add": _broadcast_ok(np.add),
    "Sub": _broadcast_ok(np.subtract),
    "Mul": _broadcast_ok(np.multiply),
    "Div": _broadcast_ok(_div),
    "Equal": _broadcast_ok(np.equal),
    "Less": _broadcast_ok(np.less),
    "Greater": _broadcast_ok(np.greater),
    "Where": lambda ins, attrs, opset: [np.where(*[np.asarray(a) for a in ins])],
    "Neg": _unary(np.negative),
    "Abs": _unary(np.abs),
    "Sqrt": _unary(np.sqrt),
    "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil),
    "Not": _unary(np.logical_not),
    "Min": _min_max(np.minimum),
    "Max": _min_max(np.maximum),
    "Sum": _min_max(np.add),
}
