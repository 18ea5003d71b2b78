"""``minicnn explain --serve``: the explain page on 127.0.0.1, with minicnn answering its requests.

    GET  /                          the page, with the data of the current input
    GET  /api/tensor?layer=I&rows=  output channels (rows) of layer I (-1: the input), float32 base64
    GET  /api/weight?layer=I&rows=  weight rows of layer I (a convolution or a linear layer)
    GET  /api/gradcam?class=K       Grad-CAM map of class K for the current input
    POST /api/forward               {"ink": [h*w values in 0..1], "h": h, "w": w}: the digits model
                                    runs on the drawn digit; answers the page's new data

The server holds one current input (the last one posted), so it is meant for one person's
browser; requests are served one at a time.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np

from .page import gradcam_maps, page_data, render_html
from .payload import encode, tensor_channels, weight_rows

__all__ = ["ExplainServer", "make_server"]

MAX_BODY = 1 << 22  # bytes of a posted drawing (a 64x64 canvas is about 40 KB of JSON)


class ExplainServer:
    """The state behind the served page: the model, the current input, its trace and data."""

    def __init__(self, model, x, *, model_name, labels, weights, warning, input_kind, input_norm, channels=None):
        self.model, self.model_name, self.labels = model, model_name, labels
        self.kw = dict(model_name=model_name, labels=labels, weights=weights, warning=warning, channels=channels,
                       served=True, input_kind=input_kind, input_norm=input_norm)
        self.lock = threading.Lock()
        self.forwards = 0
        self.set_input(x)

    def set_input(self, x):
        """Run the forward pass (and Grad-CAM) on ``x``; the page's data for it."""
        with self.lock:
            self.trace, self.data = page_data(self.model, x, **self.kw)
            self.forwards += 1
            return self.data

    def rows(self, q, n):
        raw = q.get("rows", [""])[0]
        if raw == "":
            return None
        try:
            rows = [int(v) for v in raw.split(",")]
        except ValueError:
            raise ValueError(f"rows must be comma-separated integers, got {raw!r}") from None
        bad = [r for r in rows if not 0 <= r < n]
        if bad:
            raise ValueError(f"rows {bad} out of range 0..{n - 1}")
        return rows

    def layer(self, q):
        try:
            i = int(q.get("layer", [""])[0])
        except ValueError:
            raise ValueError("layer must be an integer (a position in the page's layer list, -1 for the input)") from None
        if not -1 <= i < len(self.trace.layers):
            raise ValueError(f"layer {i} out of range -1..{len(self.trace.layers) - 1}")
        return i

    def handle_get(self, path, q):
        with self.lock:
            if path == "/api/tensor":
                i = self.layer(q)
                a = self.trace.input if i < 0 else self.trace.layers[i].y
                return tensor_channels(self.trace, i, self.rows(q, a.shape[0]))
            if path == "/api/weight":
                i = self.layer(q)
                if i < 0:
                    raise ValueError("the input has no weights")
                w = self.trace.layers[i].module.weight
                return weight_rows(self.trace, i, self.rows(q, w.shape[0]))
            if path == "/api/gradcam":
                try:
                    k = int(q.get("class", [""])[0])
                except ValueError:
                    raise ValueError("class must be an integer") from None
                if not 0 <= k < len(self.labels):
                    raise ValueError(f"class {k} out of range 0..{len(self.labels) - 1}")
                cam = gradcam_maps(self.model, self.trace.input, [k])
                return encode(cam["maps"][k])
        raise LookupError(path)

    def handle_forward(self, body):
        if self.model_name != "digits":
            raise ValueError("drawing is for the digits model")
        from .models import digits_input

        try:
            doc = json.loads(body)
            h, w = int(doc["h"]), int(doc["w"])
            ink = np.asarray(doc["ink"], dtype=np.float64)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"expected JSON {{'ink': [...], 'h': H, 'w': W}}: {e}") from None
        if not (0 < h <= 1024 and 0 < w <= 1024) or ink.size != h * w or not np.isfinite(ink).all():
            raise ValueError(f"ink must hold h*w finite values (h, w at most 1024), got {ink.size} for {h}x{w}")
        x = digits_input(np.clip(ink.reshape(h, w), 0.0, 1.0), getattr(self.model, "image_size", 8))
        return self.set_input(x)


def make_server(state: ExplainServer, port: int = 8000, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server for ``state`` on ``host:port`` (port 0: any free port; see ``server_address``)."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code, body, ctype):
            data = body.encode("utf-8") if isinstance(body, str) else body
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _json(self, obj):
            self._send(200, json.dumps(obj, separators=(",", ":")), "application/json")

        def do_GET(self):  # noqa: N802 - http.server's name
            url = urlparse(self.path)
            try:
                if url.path in ("/", "/index.html"):
                    with state.lock:
                        html = render_html(state.data)
                    self._send(200, html, "text/html; charset=utf-8")
                elif url.path == "/favicon.ico":
                    self._send(204, b"", "image/x-icon")
                else:
                    self._json(state.handle_get(url.path, parse_qs(url.query)))
            except LookupError:
                self._send(404, f"no such page: {url.path}", "text/plain; charset=utf-8")
            except ValueError as e:
                self._send(400, str(e), "text/plain; charset=utf-8")

        def do_POST(self):  # noqa: N802
            url = urlparse(self.path)
            if url.path != "/api/forward":
                self._send(404, f"no such endpoint: {url.path}", "text/plain; charset=utf-8")
                return
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                n = -1
            if n < 0:
                self._send(400, "a POST needs a Content-Length", "text/plain; charset=utf-8")
                return
            if n > MAX_BODY:
                self._send(413, f"body of {n} bytes is more than {MAX_BODY}", "text/plain; charset=utf-8")
                return
            try:
                self._json(state.handle_forward(self.rfile.read(n)))
            except ValueError as e:
                self._send(400, str(e), "text/plain; charset=utf-8")

        def log_message(self, fmt, *args):  # quiet: the terminal shows the address, not every request
            return

    return ThreadingHTTPServer((host, port), Handler)
