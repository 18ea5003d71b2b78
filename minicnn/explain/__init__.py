"""``minicnn explain``: watch a CNN compute, layer by layer, in the browser, from minicnn's own numbers.

    from minicnn.explain import load_model, load_input, page_data, write_page
    model, weights, warning, labels = load_model("digits")
    x, kind, norm = load_input("digits", "seven.png", model)
    tr, data = page_data(model, x, model_name="digits", labels=labels, weights=weights, input_kind=kind)
    write_page("seven.html", data)

``trace`` records every layer's input and output of one forward pass; ``pixel_view`` is the
arithmetic behind one output number (what the page shows on a click); ``build_data`` turns a trace
into the page's data (float32 arrays in base64); ``render_html`` inlines template, style, script and
data into one self-contained HTML file; ``make_server`` serves it with live recomputation.
"""
from .arithmetic import pixel_view, softmax
from .models import MODELS, digits_input, fashion_input, load_input, load_model
from .page import page_data, render_html, write_page
from .payload import build_data, decode, encode
from .server import ExplainServer, make_server
from .trace import Layer, Trace, trace

__all__ = ["trace", "Trace", "Layer", "pixel_view", "softmax", "build_data", "encode", "decode", "render_html",
           "page_data", "write_page", "load_model", "load_input", "digits_input", "fashion_input", "MODELS",
           "ExplainServer", "make_server"]
