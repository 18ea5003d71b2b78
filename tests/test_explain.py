"""``minicnn explain``: the numbers behind every click recompute minicnn's activations, the page data
holds those activations bit for bit, the command's errors are one line, and, in a real headless
Chromium (skipped only where no chromium binary exists), the page loads without a console error,
has an element per layer, shows arithmetic that sums to minicnn's output, and the served digits
page updates its prediction after a drawn stroke. Screenshots go to the test's tmp_path.
"""
from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import minicnn as mc
from minicnn.cli import main
from minicnn.explain import (ExplainServer, build_data, decode, digits_input, load_input, load_model, make_server,
                             page_data, pixel_view, softmax, trace, write_page)
from minicnn.models import digits_convnet
from minicnn.models.resnet import resnet18, seeded_state_dict

IMAGES = Path(__file__).resolve().parent.parent / "minicnn" / "data" / "images"
F32 = np.finfo(np.float32).eps


def _close(value, output, scale):
    """Equal to float32 precision: the engine sums ``scale`` (the sum of |terms|) in float32."""
    return abs(value - output) <= 8 * F32 * scale + 1e-7


@pytest.fixture(scope="module")
def numpy_backend():
    with mc.backend("numpy"):
        yield


@pytest.fixture(scope="module")
def digits(numpy_backend):
    """The digits convnet (seeded weights), one embedded digit, and its trace."""
    from minicnn.data import load_digits

    mc.manual_seed(0)
    model = digits_convnet().eval()
    X, y = load_digits()
    return model, X[7], trace(model, X[7])


@pytest.fixture(scope="module")
def resnet(numpy_backend):
    """ResNet-18 with seeded weights on a 64x64 photo crop, and its trace."""
    from minicnn.io.images import load_image, preprocess

    model = resnet18(weights=seeded_state_dict("resnet18", 0)).eval()
    x = preprocess(load_image(IMAGES / "chelsea.jpg"), mode="center_crop", size=64)
    return model, x, trace(model, x)


@pytest.fixture(scope="module")
def fashion(numpy_backend):
    """The Fashion-MNIST net with its shipped, trained weights, a grey photo made into its 28x28
    input, and its trace."""
    from minicnn.explain import fashion_input
    from minicnn.io.images import load_image

    model, _, _, _ = load_model("fashion")
    x = fashion_input(np.asarray(load_image(IMAGES / "coffee.jpg").convert("L"), np.float64) / 255.0)
    return model, x, trace(model, x)


# -- the trace --------------------------------------------------------------------------------------

def test_trace_records_every_layer_of_the_forward_pass(digits):
    model, x, tr = digits
    assert [l.name for l in tr.layers] == [str(k) for k in range(11)]
    h = x[None]
    with mc.no_grad():
        for k, layer in enumerate(tr.layers):
            np.testing.assert_array_equal(layer.x, np.asarray(mc.to_numpy(h))[0])
            h = model[k](h)
            np.testing.assert_array_equal(layer.y, np.asarray(mc.to_numpy(h))[0])
    assert [l.inputs for l in tr.layers] == [[-1]] + [[k] for k in range(10)]
    assert sum(l.num_parameters() for l in tr.layers) == model.num_parameters() == 13706


def test_trace_resnet_blocks_and_graph(resnet):
    model, x, tr = resnet
    with mc.no_grad():
        logits = np.asarray(mc.to_numpy(model(x[None])))[0]
    np.testing.assert_array_equal(tr.logits, logits)
    names = [l.name for l in tr.layers]
    leaves = [n for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    assert set(leaves) <= set(names)
    block = tr.layer("layer2.0")
    assert block.inputs == [tr.index("layer2.0.bn2"), tr.index("layer2.0.downsample.1")]
    assert tr.layer("layer2.1").inputs == [tr.index("layer2.1.bn2"), tr.index("layer2.0")]
    assert tr.layer("fc").inputs == [tr.index("avgpool")]  # found by value: the ResNet flattens without a module
    assert set(tr.groups()) == {"layer1", "layer2", "layer3", "layer4", "layer2.0.downsample",
                                "layer3.0.downsample", "layer4.0.downsample"}


# -- the arithmetic of a click ----------------------------------------------------------------------

def _positions(shape, rng, n=6):
    c, h, w = shape
    corners = [(0, 0, 0), (c - 1, h - 1, w - 1), (c // 2, 0, w - 1)]
    return corners + [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(n)]


@pytest.mark.parametrize("which", ["digits", "fashion", "resnet"])
def test_every_click_recomputes_minicnns_activation(which, request):
    """Conv: products are patch * kernel in float32, their sum + bias is the conv output; a pool
    window's pick (or mean) is the pooled value; batchnorm, relu, the residual join, flatten and
    linear give the layer's output; all to float32 precision."""
    _, _, tr = request.getfixturevalue(which)
    rng = np.random.default_rng(0)
    seen = set()
    for i, layer in enumerate(tr.layers):
        idxs = _positions(layer.y.shape, rng) if layer.y.ndim == 3 else [(0,), (layer.y.shape[0] - 1,)]
        for idx in idxs:
            v = pixel_view(tr, i, idx)
            out = float(layer.y[idx])
            assert v["output"] == out
            seen.add(v["op"])
            if v["op"] in ("conv", "linear"):
                np.testing.assert_array_equal(v["products"], (v["patch"] * v["kernel"]) if v["op"] == "conv"
                                              else v["x"] * v["weights"])
                assert v["products"].dtype == np.float32
                scale = float(np.abs(v["products"]).sum()) + abs(v["bias"])
                assert _close(v["sum"] + v["bias"], out, scale), (layer.label, idx, v["sum"] + v["bias"], out)
                assert v["value"] == v["sum"] + v["bias"]
            elif v["op"] == "maxpool":
                assert v["value"] == out  # the pick is the pooled value, exactly
                r, s = v["pick"]
                assert layer.x[idx[0], r, s] == out
            elif v["op"] == "avgpool":
                assert _close(v["value"], out, float(np.abs(v["window"]).sum()))
            elif v["op"] == "batchnorm":
                assert abs(v["value"] - out) <= 4e-6 * max(1.0, abs(out))
            else:
                assert _close(v["value"], out, abs(out) + 1.0), (layer.label, idx)
    expected = {"conv", "relu", "maxpool", "flatten", "linear", "identity"} if which in ("digits", "fashion") else \
        {"conv", "batchnorm", "relu", "maxpool", "join", "avgpool", "linear"}
    assert expected <= seen


def test_conv_patch_and_padding_by_hand(digits):
    """Output (c, 0, 0) of the first conv (3x3, pad 1): the patch's first row and column are padding."""
    model, x, tr = digits
    v = pixel_view(tr, 0, (3, 0, 0))
    assert v["origin"] == [-1, -1]
    np.testing.assert_array_equal(v["patch"][0, 0], 0.0)
    np.testing.assert_array_equal(v["patch"][0, :, 0], 0.0)
    np.testing.assert_array_equal(v["patch"][0, 1:, 1:], x[0, :2, :2])
    np.testing.assert_array_equal(v["kernel"], np.asarray(mc.to_numpy(model[0].weight.data))[3])


def test_softmax_of_logits_is_the_shown_probabilities(resnet):
    model, x, tr = resnet
    labels = [f"class {k}" for k in range(1000)]
    data = build_data(tr, model_name="resnet18", labels=labels, topk=5)
    z = decode(data["logits"]).astype(np.float64)
    np.testing.assert_array_equal(decode(data["logits"]), tr.logits)
    e = np.exp(z - z.max())
    p = e / e.sum()
    order = np.argsort(-p)[:5]
    assert [t["index"] for t in data["topk"]] == list(order)
    for t in data["topk"]:
        assert t["prob"] == pytest.approx(p[t["index"]], rel=1e-12)
        assert t["label"] == labels[t["index"]]
    np.testing.assert_allclose(softmax(tr.logits), p, rtol=1e-12)
    assert softmax(tr.logits).sum() == pytest.approx(1.0)


# -- the page data ----------------------------------------------------------------------------------

def test_page_data_holds_minicnns_float32_values(resnet):
    _, _, tr = resnet
    data = build_data(tr, model_name="resnet18", labels=[str(k) for k in range(1000)], channels=3)
    np.testing.assert_array_equal(decode(data["input"]["t"]), tr.input)
    for layer, d in zip(tr.layers, data["layers"]):
        assert d["name"] == layer.name and d["out_shape"] == list(layer.y.shape)
        rows = d["out"]["rows"]
        want = layer.y if rows is None else layer.y[rows]
        np.testing.assert_array_equal(decode(d["out"]), want)  # bit for bit: no rounding, no quantisation
        # what a click needs is whole: every conv's and linear layer's input
        if layer.kind in ("Conv2d", "Linear"):
            src = layer.inputs[0]
            assert src < 0 or data["layers"][src]["out"]["rows"] is None
    conv = tr.layer("layer3.0.conv1")
    d = data["layers"][tr.index("layer3.0.conv1")]
    assert d["weights"]["weight"]["rows"] == [0, 1, 2]
    np.testing.assert_array_equal(decode(d["weights"]["weight"]), np.asarray(mc.to_numpy(conv.module.weight.data))[:3])
    fc = data["layers"][-1]["weights"]["weight"]
    assert sorted(fc["rows"]) == sorted(t["index"] for t in data["topk"])


def test_html_is_self_contained(digits, tmp_path):
    model, x, _ = digits
    _, data = page_data(model, x, model_name="digits", labels=[str(k) for k in range(10)])
    size = write_page(tmp_path / "p.html", data)
    html = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert size == len(html.encode("utf-8"))
    for bad in ("<link", " src=", "http://", "https://", "@import", "/*JS*/", "/*DATA*/", "/*CSS*/"):
        assert bad not in html, bad
    start = html.index('id="explain-data">') + len('id="explain-data">')
    blob = json.loads(html[start:html.index("</script>", start)].replace("<\\/", "</"))
    assert blob["layers"][0]["name"] == "0" and blob["model"] == "digits"
    assert set(blob["gradcam"]["maps"]) == {str(t["index"]) for t in blob["topk"]}


def test_digits_input_rebuilds_a_dataset_image(numpy_backend):
    """A bar, by hand: its 24x8 bounding box scales by 32/24 to 32x11, centred at columns 10..20 of
    the 32x32 bitmap; the 4x4 blocks then count 8, 16, 16, 4 of 16 pixels in columns 2..5."""
    bitmap = np.zeros((40, 30))
    bitmap[5:29, 12:20] = 1.0
    x = digits_input(bitmap)
    assert x.shape == (1, 8, 8) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], np.tile([0, 0, 0.5, 1, 1, 0.25, 0, 0], (8, 1)))
    np.testing.assert_array_equal(digits_input(np.zeros((10, 10))), np.zeros((1, 8, 8), np.float32))


def test_load_model_and_input(tmp_path, digits_weights):
    from PIL import Image

    from minicnn.io.images import IMAGENET_MEAN, IMAGENET_STD, load_image, preprocess

    model, weights, warning, labels = load_model("digits", digits_weights)
    assert weights == str(digits_weights) and warning is None and labels == [str(k) for k in range(10)]
    for k, v in mc.load(digits_weights).items():
        np.testing.assert_array_equal(np.asarray(mc.to_numpy(model.state_dict()[k])), v)
    # dark ink on light paper is inverted: the network sees ink high, as in the data set
    paper = np.full((50, 40), 255, np.uint8)
    paper[10:40, 15:22] = 0
    Image.fromarray(paper).save(tmp_path / "bar.png")
    x, kind, norm = load_input("digits", tmp_path / "bar.png", model)
    np.testing.assert_array_equal(x, digits_input(1.0 - paper / 255.0))
    assert kind == "gray" and norm is None and x.max() == 1.0
    x, kind, norm = load_input("resnet18", IMAGES / "chelsea.jpg")
    np.testing.assert_array_equal(x, preprocess(load_image(IMAGES / "chelsea.jpg")))
    assert kind == "rgb" and norm == [list(IMAGENET_MEAN), list(IMAGENET_STD)]


def test_fashion_input_follows_the_data_sets_recipe(tmp_path):
    """A dark 60x30 block on light paper: trimmed to the block, its longest side scaled to 28 (28x14),
    centred (columns 7..20) and negated, so the garment is 1 on 0; a 28x28 image with a dark
    background (as the data set's own) passes unchanged."""
    from PIL import Image

    from minicnn.explain import fashion_input

    paper = np.full((100, 60), 255, np.uint8)
    paper[20:80, 10:40] = 0
    Image.fromarray(paper).save(tmp_path / "block.png")
    x, kind, norm = load_input("fashion", tmp_path / "block.png")
    want = np.zeros((1, 28, 28), np.float32)
    want[0, :, 7:21] = 1.0
    np.testing.assert_array_equal(x, want)
    assert kind == "gray" and norm is None and x.dtype == np.float32
    img = np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8)
    img[[0, 0, -1, -1], [0, -1, 0, -1]] = 0
    Image.fromarray(img).save(tmp_path / "own.png")
    np.testing.assert_array_equal(load_input("fashion", tmp_path / "own.png")[0], (img / 255.0).astype(np.float32)[None])
    np.testing.assert_array_equal(fashion_input(np.ones((5, 9))), np.zeros((1, 28, 28), np.float32))  # blank paper


def test_fashion_model_is_the_shipped_net(tmp_path):
    from minicnn.data import FashionMNIST
    from minicnn.models.fashion import WEIGHTS_DIR

    model, weights, warning, labels = load_model("fashion")
    assert weights == str(Path(WEIGHTS_DIR) / "fashion_convnet.safetensors") and warning is None
    assert labels == list(FashionMNIST.classes) and labels[6] == "Shirt"
    for k, v in mc.load(weights).items():
        np.testing.assert_array_equal(np.asarray(mc.to_numpy(model.state_dict()[k])), v)
    mc.save(seeded_state_dict("resnet18", 0), tmp_path / "r.safetensors")
    with pytest.raises(mc.errors.MinicnnError, match="not fashion_convnet weights"):
        load_model("fashion", tmp_path / "r.safetensors")


def test_fashion_page_of_a_real_test_image(capsys, tmp_path):
    """The first shirt of the Fashion-MNIST test set, written as a PNG: the page's input is the data
    set's image bit for bit, and the net calls it a shirt. Skips when Debian's files are absent."""
    from PIL import Image

    from minicnn.data import FashionMNIST

    try:
        test = FashionMNIST(train=False)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist; .ci/run does)")
    Image.fromarray(test.data[4]).save(tmp_path / "shirt.png")
    rc, out, err = _cli(capsys, "explain", tmp_path / "shirt.png", "--model", "fashion", "--out", tmp_path / "p.html")
    assert rc == 0, err
    assert "prediction Shirt" in out
    html = (tmp_path / "p.html").read_text()
    start = html.index('id="explain-data">') + len('id="explain-data">')
    blob = json.loads(html[start:html.index("</script>", start)].replace("<\\/", "</"))
    np.testing.assert_array_equal(decode(blob["input"]["t"]), test[4][0])
    assert blob["model"] == "fashion" and blob["labels"][6] == "Shirt"


def test_seeded_resnet_weights_are_flagged(tmp_path):
    mc.save(seeded_state_dict("resnet18", 0), tmp_path / "s.safetensors", metadata={"source": "seeded"})
    _, _, warning, labels = load_model("resnet18", tmp_path / "s.safetensors")
    assert "untrained" in warning and len(labels) == 1000


# -- the command --------------------------------------------------------------------------------------

def _cli(capsys, *argv):
    with mc.backend("numpy"):
        rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def digits_weights(tmp_path_factory, numpy_backend):
    path = tmp_path_factory.mktemp("explain") / "digits.safetensors"
    mc.manual_seed(1)
    mc.save(digits_convnet().state_dict(), path)
    return path


def test_cli_writes_the_page(capsys, tmp_path, digits_weights):
    img = tmp_path / "digit.png"
    from PIL import Image

    Image.fromarray(np.kron(255 - (np.eye(8) * 255), np.ones((4, 4))).astype(np.uint8)).save(img)
    rc, out, err = _cli(capsys, "explain", img, "--model", "digits", "--weights", digits_weights,
                        "--out", tmp_path / "p.html")
    assert rc == 0, err
    assert "wrote" in out and (tmp_path / "p.html").stat().st_size > 10_000


@pytest.mark.parametrize("args, needle", [
    (["{missing}", "--model", "digits", "--weights", "{w}", "--out", "{o}"], "cannot read image"),
    (["{corrupt}", "--model", "digits", "--weights", "{w}", "--out", "{o}"], "cannot read image"),
    (["{img}", "--model", "alexnet", "--out", "{o}"], "unknown model 'alexnet'"),
    (["{img}", "--model", "digits", "--weights", "{nofile}", "--out", "{o}"], "does not exist"),
    (["{img}", "--model", "digits", "--out", "{o}"], "the digits model needs trained weights"),
    (["{img}", "--model", "resnet18", "--out", "{o}"], "resnet18 needs weights"),
    (["{img}", "--model", "fashion", "--weights", "{w}", "--out", "{o}"], "not fashion_convnet weights"),
    (["{img}", "--model", "digits", "--weights", "{w}"], "give --out FILE.html"),
    (["{img}", "--model", "digits", "--weights", "{w}", "--out", "{o}", "--channels", "0"], "--channels"),
    (["{img}", "--model", "resnet18", "--weights", "{w}", "--out", "{o}"], ""),
])
def test_cli_errors_are_one_line(args, needle, capsys, tmp_path, monkeypatch, digits_weights):
    monkeypatch.chdir(tmp_path)  # no weights/digits_convnet.safetensors here
    monkeypatch.setenv("MINICNN_HOME", str(tmp_path / "home"))  # no cached resnet18 weights
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    shutil.copy(IMAGES / "coffee.jpg", tmp_path / "img.jpg")
    subs = {"missing": tmp_path / "nope.png", "corrupt": tmp_path / "corrupt.png", "img": tmp_path / "img.jpg",
            "w": digits_weights, "nofile": tmp_path / "nope.safetensors", "o": tmp_path / "p.html"}
    rc, out, err = _cli(capsys, "explain", *[a.format(**subs) for a in args])
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minicnn explain: error: "), err
    assert needle in lines[0]
    assert not (tmp_path / "p.html").exists()


# -- the server ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served_digits(digits):
    model, x, _ = digits
    state = ExplainServer(model, x, model_name="digits", labels=[str(k) for k in range(10)], weights="seeded",
                          warning=None, input_kind="gray", input_norm=None)
    server = make_server(state, port=0)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.status, r.read()


def _post(url, body):
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_server_answers_with_minicnns_numbers(served_digits):
    state, url = served_digits
    status, body = _get(f"{url}/api/tensor?layer=3&rows=5,7")
    assert status == 200
    np.testing.assert_array_equal(decode(json.loads(body)), state.trace.layers[3].y[[5, 7]])
    status, body = _get(f"{url}/api/weight?layer=7&rows=2")
    np.testing.assert_array_equal(decode(json.loads(body)),
                                  np.asarray(mc.to_numpy(state.model[7].weight.data))[[2]])
    ink = np.zeros((64, 64))
    ink[8:56, 28:36] = 1.0
    status, body = _post(f"{url}/api/forward", json.dumps({"ink": ink.ravel().tolist(), "h": 64, "w": 64}).encode())
    assert status == 200
    data = json.loads(body)
    np.testing.assert_array_equal(decode(data["input"]["t"]), digits_input(ink))
    with mc.backend("numpy"), mc.no_grad():
        logits = np.asarray(mc.to_numpy(state.model(digits_input(ink)[None])))[0]
    np.testing.assert_array_equal(decode(data["logits"]), logits)
    assert _post(f"{url}/api/forward", b"{not json")[0] == 400
    assert _post(f"{url}/api/forward", json.dumps({"ink": [1, 2], "h": 64, "w": 64}).encode())[0] == 400
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(f"{url}/api/tensor?layer=99")
    assert e.value.code == 400


# -- in a real browser --------------------------------------------------------------------------------

def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """Headless Chromium driven over the DevTools protocol (a websocket, JSON messages)."""

    def __init__(self, binary):
        import websocket  # websocket-client, in the test extra: missing, it is an error, not a skip
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        self.profile = tempfile.mkdtemp(prefix="minicnn-chromium-")
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", f"--user-data-dir={self.profile}", f"--remote-debugging-port={port}",
             "--window-size=1600,1200", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2) as r:
                    tabs = json.loads(r.read())
                page = next(t for t in tabs if t.get("type") == "page")
                break
            except (OSError, StopIteration, ValueError):
                if time.time() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("headless chromium did not start")
                time.sleep(0.3)
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=180, suppress_origin=True)
        self.n, self.events = 0, []
        for domain in ("Runtime", "Page", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method, **params):
        self.n += 1
        mid = self.n
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def errors(self):
        """Console errors and uncaught exceptions so far."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"])[:500])
            elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append(json.dumps(p["args"])[:500])
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(p["entry"].get("text", ""))
        return out

    def wait(self, expr, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            v = self.eval(expr)
            if v:
                return v
            time.sleep(0.1)
        raise TimeoutError(expr)

    def goto(self, url):
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && !!(window.minicnnExplain && window.minicnnExplain.ready)")

    def mouse(self, kind, x, y, buttons=1):
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left" if kind != "mouseMoved" else "none",
                  buttons=buttons, clickCount=1 if kind != "mouseMoved" else 0)

    def click(self, x, y):
        self.mouse("mouseMoved", x, y, 0)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y, 0)

    def rect(self, selector):
        return self.eval(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: "center", inline: "center"}});
            const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }})()""")

    def screenshot(self, path):
        r = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        Path(path).write_bytes(base64.b64decode(r["data"]))

    def close(self):
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary (Debian: apt-get install chromium)")
    b = Browser(binary)
    yield b
    b.close()


def _click_pixel(browser, tr, name, c, h, w):
    """Click output pixel (c, h, w) of layer ``name``'s map; returns the detail panel's numbers."""
    i = tr.index(name)
    sel = f'.column[data-index="{i}"] canvas[data-channel="{c}"]'
    r = browser.rect(sel)
    for _ in range(64):  # page through the channels with the column's own control
        if r is not None:
            break
        b = browser.rect(f'.column[data-index="{i}"] .pager button[data-step="1"]')
        assert b is not None, f"no map {sel} and no pager"
        browser.click(b[0] + b[2] / 2, b[1] + b[3] / 2)
        time.sleep(0.05)
        r = browser.rect(sel)
    assert r is not None, f"no map {sel}"
    H, W = tr.layers[i].y.shape[1:]
    browser.click(r[0] + (w + 0.5) * r[2] / W, r[1] + (h + 0.5) * r[3] / H)
    browser.wait(f"document.getElementById('detail').dataset.index === '{c},{h},{w}' && "
                 f"document.getElementById('detail').dataset.layer === {json.dumps(name)} && "
                 "!!document.querySelector('#detail [data-role=total]')")
    return browser.eval("""Object.fromEntries(Array.from(document.querySelectorAll('#detail [data-role]'))
        .map(e => [e.dataset.role + (e.closest('.step') ? ':step' : ''), Number(e.dataset.value)]))""")


def _assert_page_basics(browser, tr, shot):
    assert browser.errors() == []
    names = set(browser.eval("Array.from(document.querySelectorAll('[data-layer]')).map(e => e.dataset.layer)"))
    missing = [n for n, _ in tr.model.named_modules() if n and n not in names]
    assert missing == [], f"no data-layer element for {missing}"
    browser.screenshot(shot)


def test_browser_static_digits_page(browser, digits, tmp_path):
    model, x, tr = digits
    _, data = page_data(model, x, model_name="digits", labels=[str(k) for k in range(10)])
    write_page(tmp_path / "digits.html", data)
    browser.goto((tmp_path / "digits.html").as_uri())
    _assert_page_basics(browser, tr, tmp_path / "digits.png")
    for name, c, h, w in (("0", 5, 3, 4), ("0", 0, 0, 7), ("3", 9, 1, 2)):
        shown = _click_pixel(browser, tr, name, c, h, w)
        v = pixel_view(tr, tr.index(name), (c, h, w))
        out = float(tr.layer(name).y[c, h, w])
        assert shown["output"] == out  # minicnn's activation, shown as it is
        assert shown["bias"] == np.float32(v["bias"])
        scale = float(np.abs(v["products"]).sum()) + abs(v["bias"])
        assert _close(shown["sum"], v["sum"], scale) and _close(shown["total"], out, scale), (shown, out)
        # then ReLU, and the 2x2 max-pool window that holds the pixel: its pick is the pooled value
        steps = browser.eval("""Array.from(document.querySelectorAll('#detail .step [data-role=total]'))
            .map(e => Number(e.dataset.value))""")
        relu, pooled = tr.layers[tr.index(name) + 1].y[c, h, w], tr.layers[tr.index(name) + 2].y[c, h // 2, w // 2]
        assert steps == [max(float(np.float32(shown["output"])), 0.0), float(pooled)]
        assert float(relu) == max(shown["output"], 0.0)
        assert shown["output:step"] == float(pooled)
        assert browser.eval("!!document.querySelector('#detail [data-step=pool]')")
    browser.screenshot(tmp_path / "digits_click.png")
    assert browser.errors() == []


def test_browser_static_fashion_page(browser, fashion, tmp_path):
    """The trained Fashion-MNIST net's page: every layer has its element, and clicks on both
    convolutions (a corner of conv1, the middle of conv2) show sums equal to minicnn's activations."""
    from minicnn.data import FashionMNIST

    model, x, tr = fashion
    _, data = page_data(model, x, model_name="fashion", labels=list(FashionMNIST.classes))
    write_page(tmp_path / "fashion.html", data)
    browser.goto((tmp_path / "fashion.html").as_uri())
    _assert_page_basics(browser, tr, tmp_path / "fashion.png")
    for name, c, h, w in (("0", 31, 27, 0), ("3", 5, 7, 9)):
        shown = _click_pixel(browser, tr, name, c, h, w)
        v = pixel_view(tr, tr.index(name), (c, h, w))
        out = float(tr.layer(name).y[c, h, w])
        assert shown["output"] == out
        scale = float(np.abs(v["products"]).sum()) + abs(v["bias"])
        assert _close(shown["sum"], v["sum"], scale) and _close(shown["total"], out, scale), (shown, out)
    browser.screenshot(tmp_path / "fashion_click.png")
    assert browser.errors() == []


def test_browser_static_resnet_page(browser, resnet, tmp_path):
    model, x, tr = resnet
    labels = [f"class {k}" for k in range(1000)]
    _, data = page_data(model, x, model_name="resnet18", labels=labels, input_kind="rgb",
                        warning="seeded, untrained weights")
    write_page(tmp_path / "resnet.html", data)
    browser.goto((tmp_path / "resnet.html").as_uri())
    _assert_page_basics(browser, tr, tmp_path / "resnet.png")
    assert browser.eval("document.getElementById('warning').hidden") is False
    shown = _click_pixel(browser, tr, "layer1.0.conv1", 2, 5, 0)
    v = pixel_view(tr, tr.index("layer1.0.conv1"), (2, 5, 0))
    scale = float(np.abs(v["products"]).sum())
    assert shown["output"] == float(tr.layer("layer1.0.conv1").y[2, 5, 0])
    assert _close(shown["total"], shown["output"], scale)
    # batchnorm, maxpool and the residual join have their own views
    for name, idx in (("bn1", (1, 3, 3)), ("maxpool", (4, 2, 2)), ("layer2.0", (0, 1, 1))):
        shown = _click_pixel(browser, tr, name, *idx)
        out = float(tr.layer(name).y[idx])
        assert shown["output"] == out
        assert abs(shown["total"] - out) <= 4e-6 * max(1.0, abs(out)), (name, shown, out)
    # the top class: dense layer arithmetic and softmax
    top = data["topk"][0]
    r = browser.rect(f'#topk li[data-class="{top["index"]}"]')
    browser.click(r[0] + 10, r[1] + r[3] / 2)
    browser.wait("!!document.querySelector('#detail [data-role=prob]')")
    prob = browser.eval("Number(document.querySelector('#detail [data-role=prob]').dataset.value)")
    assert prob == pytest.approx(top["prob"], rel=1e-6)
    assert browser.eval("document.getElementById('gradcam').dataset.class") == str(top["index"])
    browser.screenshot(tmp_path / "resnet_softmax.png")
    assert browser.errors() == []


def test_browser_served_digits_canvas_updates_the_prediction(browser, served_digits, tmp_path):
    state, url = served_digits
    browser.goto(url + "/")
    _assert_page_basics(browser, state.trace, tmp_path / "served.png")
    before = state.forwards
    r = browser.rect("#draw")
    assert r is not None
    # one stroke: a vertical bar down the middle of the canvas
    x0 = r[0] + r[2] / 2
    browser.mouse("mouseMoved", x0, r[1] + 30, 0)
    browser.mouse("mousePressed", x0, r[1] + 30)
    for k in range(1, 13):
        browser.mouse("mouseMoved", x0 + k, r[1] + 30 + k * (r[3] - 60) / 12)
    browser.mouse("mouseReleased", x0 + 12, r[1] + r[3] - 30, 0)
    browser.wait("document.getElementById('prediction').dataset.updates === '1'")
    assert state.forwards == before + 1
    shown_top = int(browser.eval("document.getElementById('prediction').dataset.top"))
    shown_prob = browser.eval("Number(document.querySelector('#topk li [data-role=prob]').dataset.value)")
    probs = softmax(state.trace.logits)
    assert shown_top == int(np.argmax(probs))
    assert shown_prob == pytest.approx(float(probs.max()), rel=1e-12)
    # the drawn digit is what minicnn ran on: a vertical stroke lights the middle columns
    x = state.trace.input[0]
    assert x[:, 3:5].sum() > x[:, :2].sum() + x[:, 6:].sum()
    # a click in the served page still recomputes minicnn's activation of the new input
    shown = _click_pixel(browser, state.trace, "3", 1, 2, 2)
    assert shown["output"] == float(state.trace.layer("3").y[1, 2, 2])
    browser.screenshot(tmp_path / "served_after_stroke.png")
    assert browser.errors() == []


def test_browser_served_resnet_fetches_what_the_file_lacks(browser, resnet, tmp_path):
    """Served, the page asks minicnn for channels and weight rows it was not sent: page to channel 10
    of a 64-channel conv (8 are sent) and click it; the arithmetic still sums to minicnn's output."""
    model, x, tr = resnet
    state = ExplainServer(model, x, model_name="resnet18", labels=[f"class {k}" for k in range(1000)],
                          weights="seeded", warning=None, input_kind="rgb", input_norm=None)
    server = make_server(state, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        _assert_page_basics(browser, tr, tmp_path / "served_resnet.png")
        for name, c, h, w in (("layer2.0.conv1", 10, 3, 4), ("layer1.0.bn1", 12, 0, 0)):
            assert tr.layer(name).y.shape[0] > 8
            shown = _click_pixel(browser, tr, name, c, h, w)
            out = float(tr.layer(name).y[c, h, w])
            assert shown["output"] == out
            if "conv" in name:
                v = pixel_view(tr, tr.index(name), (c, h, w))
                assert _close(shown["total"], out, float(np.abs(v["products"]).sum()))
            else:
                assert abs(shown["total"] - out) <= 4e-6 * max(1.0, abs(out))
        browser.screenshot(tmp_path / "served_resnet_click.png")
        assert browser.errors() == []
    finally:
        server.shutdown()
        server.server_close()


def test_cli_serve_answers_on_the_port_it_prints(tmp_path, digits_weights):
    """``minicnn explain --serve --port 0`` prints its address and serves the page there."""
    import os
    import sys

    img = tmp_path / "d.png"
    shutil.copy(IMAGES / "camera.jpg", img)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, "-m", "minicnn", "--backend", "numpy", "explain", str(img), "--model",
                             "digits", "--weights", str(digits_weights), "--serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving the explain page on http://127.0.0.1:"), (line, proc.stderr.read() if
                                                                                 proc.poll() is not None else "")
        url = line.split(" on ", 1)[1].split()[0]
        status, body = _get(url)
        assert status == 200 and b'id="explain-data"' in body and b'"served":true' in body
    finally:
        proc.terminate()
        proc.wait(30)
