"""The data the explain page reads: a trace turned into JSON with float32 arrays in base64.

Every array is minicnn's own float32 values, little-endian, base64-encoded (``encode``); nothing
is rounded or quantised. To keep a ResNet-18 page small, a layer's output is shipped whole only
where a click view needs all of its channels (it feeds a convolution, a linear layer or a flatten)
or where it is small; otherwise only the sampled channels (the first ``channels``) are shipped,
and the served page fetches the others when asked. Convolution weights are shipped whole when
small, else the rows of the sampled channels; a large linear layer ships the rows of the top-k
classes.
"""
from __future__ import annotations

import base64

import numpy as np

from ..backends import to_numpy
from .arithmetic import softmax
from .trace import is_block

__all__ = ["encode", "decode", "build_data", "tensor_channels", "weight_rows", "FULL_LIMIT", "DEFAULT_CHANNELS"]

FULL_LIMIT = 32768          # elements: an output this small is shipped whole
WEIGHT_LIMIT = 65536        # elements: a weight this small is shipped whole
DEFAULT_CHANNELS = 8        # channels shipped for the other layers (static page)
_WIDE_INPUT = ("Conv2d", "Linear", "Flatten")


def encode(a, rows=None) -> dict:
    """``{"shape", "rows", "b64"}``: ``a`` as float32 (little-endian, base64), or only ``a[rows]``
    (``rows`` lists which; ``shape`` stays the full array's)."""
    a = np.asarray(a, dtype=np.float32)
    part = a if rows is None else a[np.asarray(rows, dtype=np.int64)]
    data = np.ascontiguousarray(part, dtype="<f4").tobytes()
    return {"shape": list(a.shape), "rows": None if rows is None else [int(r) for r in rows],
            "b64": base64.b64encode(data).decode("ascii")}


def decode(t: dict) -> np.ndarray:
    """The array of an ``encode`` result: the full array, or ``(len(rows),) + shape[1:]`` of the shipped rows."""
    a = np.frombuffer(base64.b64decode(t["b64"]), dtype="<f4")
    shape = list(t["shape"])
    if t.get("rows") is not None:
        shape[0] = len(t["rows"])
    return a.reshape(shape).astype(np.float32)


def _np(a):
    return np.asarray(to_numpy(a))


def _config(layer) -> dict:
    m, kind = layer.module, layer.kind
    if kind == "Conv2d":
        return {"kernel_size": list(m.kernel_size), "stride": list(m.stride), "padding": list(m._conv_padding()),
                "dilation": list(m.dilation), "groups": m.groups, "pad_op": m._pads is not None,
                "in_channels": m.in_channels, "out_channels": m.out_channels}
    if kind in ("MaxPool2d", "AvgPool2d"):
        return {"kernel_size": list(m.kernel_size), "stride": list(m.stride), "padding": list(m.padding),
                "dilation": list(getattr(m, "dilation", (1, 1))), "ceil_mode": m.ceil_mode,
                "count_include_pad": getattr(m, "count_include_pad", True),
                "divisor_override": getattr(m, "divisor_override", None)}
    if kind.startswith("Adaptive"):
        return {"output_size": list(layer.y.shape[1:])}
    if kind == "BatchNorm2d":
        return {"eps": m.eps}
    if kind == "Linear":
        return {"in_features": m.in_features, "out_features": m.out_features}
    if kind == "Dropout":
        return {"p": m.p}
    return {}


def _params(layer, rows) -> dict:
    """The layer's parameters as the click views need them (``rows``: output channels/rows to ship, None: all)."""
    m, kind = layer.module, layer.kind
    out = {}
    if kind in ("Conv2d", "Linear"):
        w = _np(m.weight.data)
        out["weight"] = encode(w, None if w.size <= WEIGHT_LIMIT else rows)
        if m.bias is not None:
            out["bias"] = encode(_np(m.bias.data))
    elif kind == "BatchNorm2d":
        out["running_mean"] = encode(_np(m.running_mean))
        out["running_var"] = encode(_np(m.running_var))
        if m.weight is not None:
            out["weight"] = encode(_np(m.weight.data))
            out["bias"] = encode(_np(m.bias.data))
    return out


def tensor_channels(tr, i: int, rows=None) -> dict:
    """Output of layer ``i`` (-1: the network input), whole or the channels/rows ``rows``, encoded."""
    a = tr.input if i < 0 else tr.layers[i].y
    return encode(a, rows)


def weight_rows(tr, i: int, rows=None) -> dict:
    """Weight of layer ``i`` (a convolution or a linear layer), whole or its rows ``rows``, encoded."""
    layer = tr.layers[i]
    if layer.kind not in ("Conv2d", "Linear"):
        raise ValueError(f"explain: {layer.label} ({layer.kind}) has no weight rows")
    return encode(_np(layer.module.weight.data), rows)


def build_data(tr, *, model_name: str, labels, weights: str = "", warning: str | None = None, channels=None,
               topk: int = 5, gradcam: dict | None = None, input_kind: str = "gray", input_norm=None,
               served: bool = False) -> dict:
    """The page's data for trace ``tr``.

    Args:
        model_name: ``digits`` or ``resnet18`` (shown, and tells the page which controls it has).
        labels: the class names, one per output.
        weights: where the weights came from (shown).
        warning: a line shown at the top of the page (e.g. untrained weights), or None.
        channels: channels shipped for layers that are not shipped whole (default 8); ``"all"``
            ships every layer whole.
        topk: how many classes the prediction lists.
        gradcam: ``{"layer": name, "maps": {class: (H, W) array}}`` or None.
        input_kind: ``gray`` or ``rgb`` (how the input column draws the image).
        input_norm: ``(mean, std)`` per channel that undo the normalisation for display, or None.
        served: whether a server answers the page's requests for the rest.
    """
    layers = tr.layers
    if channels is None:
        channels = DEFAULT_CHANNELS
    whole_all = channels == "all"
    wide = set()
    for layer in layers:
        if layer.kind in _WIDE_INPUT:
            wide.update(layer.inputs)
    logits = np.asarray(layers[-1].y, dtype=np.float32).ravel()
    probs = softmax(logits)
    order = np.argsort(-probs, kind="stable")[:topk]
    out_layers = []
    for i, layer in enumerate(layers):
        y = layer.y
        whole = whole_all or y.size <= FULL_LIMIT or i in wide or y.ndim == 1
        sample = list(range(min(int(channels), y.shape[0]))) if not whole_all else None
        rows = None if whole else sample
        prow = sample  # weight rows, where the weight is too large to ship whole
        if layer.kind == "Linear" and layer is layers[-1] and not whole_all:
            prow = sorted(int(k) for k in order)
        out_layers.append({
            "name": layer.name, "label": layer.label, "kind": layer.kind, "call": layer.call,
            "block": bool(is_block(layer.module)), "inputs": list(layer.inputs),
            "in_shape": list(layer.x.shape), "out_shape": list(y.shape),
            "params": layer.num_parameters(), "config": _config(layer),
            "out": encode(y, rows), "weights": _params(layer, prow),
        })
    first_conv = next((i for i, l in enumerate(layers) if l.kind == "Conv2d"), None)
    data = {
        "model": model_name, "weights": weights, "warning": warning, "served": served,
        "input": {"kind": input_kind, "norm": input_norm, "t": encode(tr.input)},
        "layers": out_layers, "groups": tr.groups(),
        "labels": [str(s) for s in labels], "logits": encode(logits),
        "topk": [{"index": int(k), "label": str(labels[k]), "prob": float(probs[k])} for k in order],
        "first_conv": first_conv,
        "total_params": int(tr.model.num_parameters()),
    }
    if gradcam is not None:
        data["gradcam"] = {"layer": str(gradcam["layer"]),
                           "maps": {str(k): encode(v) for k, v in gradcam["maps"].items()}}
    return data
