"""The explain page: one self-contained HTML file (the template, its style, its script and its data
inline; nothing is loaded from anywhere else), and the data it shows for an input."""
from __future__ import annotations

import json
from importlib import resources

import numpy as np

from .payload import build_data
from .trace import trace

__all__ = ["render_html", "page_data", "write_page"]


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def render_html(data: dict) -> str:
    """The page for ``data`` (from :func:`page_data`), as one HTML string."""
    # "</" inside the JSON would end the <script> element; "<\/" is the same string to JSON
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    title = f"minicnn explain: {data['model']}"
    html = _asset("page.html")
    # the script and the data go in last, so a marker in them is never replaced
    for marker, text in (("/*TITLE*/", title), ("/*CSS*/", _asset("explain.css"))):
        html = html.replace(marker, text, 1)
    head, rest = html.split("/*DATA*/", 1)
    mid, tail = rest.split("/*JS*/", 1)
    return head + blob + mid + _asset("explain.js") + tail


def gradcam_maps(model, x, classes, layer=None) -> dict:
    """``{"layer", "maps"}``: minicnn's Grad-CAM of input ``x`` for each class in ``classes``
    (one batched forward and backward pass), upsampled to the input size."""
    from ..gradcam import _default_layer, grad_cam

    xb = np.repeat(np.asarray(x, dtype=np.float32)[None], len(classes), axis=0)
    if layer is None:
        layer = "layer4" if hasattr(model, "backward_from") else _default_layer(model, xb[:1])
    cams = grad_cam(model, xb, class_idx=list(classes), layer=layer)
    return {"layer": layer, "maps": {int(k): cams[n] for n, k in enumerate(classes)}}


def page_data(model, x, *, model_name, labels, weights="", warning=None, channels=None, topk=5,
              served=False, input_kind="gray", input_norm=None):
    """Trace ``model`` on ``x`` and return ``(trace, data)``: the page's data with Grad-CAM maps
    for the top-k classes."""
    tr = trace(model, x)
    probs_order = np.argsort(-np.asarray(tr.logits, dtype=np.float64).ravel(), kind="stable")[:topk]
    cam = gradcam_maps(model, tr.input, [int(k) for k in probs_order])
    data = build_data(tr, model_name=model_name, labels=labels, weights=weights, warning=warning,
                      channels=channels, topk=topk, gradcam=cam, input_kind=input_kind, input_norm=input_norm,
                      served=served)
    return tr, data


def write_page(path, data: dict) -> int:
    """Write the page for ``data`` to ``path``; returns its size in bytes."""
    text = render_html(data)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return len(text.encode("utf-8"))
