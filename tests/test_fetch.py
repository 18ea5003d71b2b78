"""Downloads against a loopback HTTP server (good file, wrong hash, body cut short, 404, stall,
Ctrl-C), the cache logic of ``fetch_weights``, the real-URL path failing cleanly without network,
and the ``minicnn weights fetch|list`` commands."""
import hashlib
import http.server
import socket
import threading
import time
from collections import OrderedDict

import numpy as np
import pytest

from make_pth_fixtures import write_pth_zip
from minicnn.errors import DownloadError
from minicnn.io import fetch
from minicnn.io import safetensors as st
from minicnn.io.weights import expected_resnet_shapes
from torch_block import run_minicnn


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    hits: list = []
    release = threading.Event()

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        self.hits.append(self.path)
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        body, mode = route
        if mode == "stall":
            self.release.wait(10)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    """(base URL, routes dict, request log) of a loopback HTTP server running in a thread."""
    _Handler.routes, _Handler.hits = {}, []
    _Handler.release = threading.Event()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler.routes, _Handler.hits
    finally:
        _Handler.release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def resnet18_pth(tmp_path_factory):
    """Bytes of a torchvision-named resnet18 checkpoint, its sha256, and its state dict."""
    rng = np.random.default_rng(0)
    sd = OrderedDict((k, rng.standard_normal(s, dtype=np.float32)) for k, s in expected_resnet_shapes().items())
    path = tmp_path_factory.mktemp("pth") / "r18.pth"
    write_pth_zip(sd, path)
    body = path.read_bytes()
    return body, hashlib.sha256(body).hexdigest(), sd


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _names(d):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# -- download ---------------------------------------------------------------------------------------

def test_download_good_file_with_full_hash(server, tmp_path):
    base, routes, hits = server
    body = np.random.default_rng(1).bytes(300_000)
    routes["/f.bin"] = (body, "ok")
    out = fetch.download(base + "/f.bin", tmp_path / "f.bin", sha256=hashlib.sha256(body).hexdigest(),
                         progress=False)
    assert out == tmp_path / "f.bin" and out.read_bytes() == body
    assert _names(tmp_path) == ["f.bin"] and hits == ["/f.bin"]


def test_download_hash_mismatch_removes_part_and_keeps_old(server, tmp_path):
    base, routes, _ = server
    routes["/f.bin"] = (b"new contents", "ok")
    (tmp_path / "f.bin").write_bytes(b"old")
    with pytest.raises(DownloadError, match="sha256 mismatch: expected 00ff, got ") as ei:
        fetch.download(base + "/f.bin", tmp_path / "f.bin", sha256="00FF", progress=False)
    assert "\n" not in str(ei.value)
    with pytest.raises(DownloadError, match="expected a digest starting abcd"):
        fetch.download(base + "/f.bin", tmp_path / "f.bin", sha256_prefix="abcd", progress=False)
    assert _names(tmp_path) == ["f.bin"] and (tmp_path / "f.bin").read_bytes() == b"old"


def test_download_body_cut_short_leaves_nothing(server, tmp_path):
    base, routes, _ = server
    routes["/big.bin"] = (bytes(200_000), "truncate")
    with pytest.raises(DownloadError, match=r"connection closed after 100000 of 200000 bytes \(truncated download\)"):
        fetch.download(base + "/big.bin", tmp_path / "big.bin", progress=False)
    assert _names(tmp_path) == []


def test_download_404_and_refused(server, tmp_path):
    base, _, _ = server
    with pytest.raises(DownloadError, match=r"/nothing\.pth: HTTP 404 Not Found"):
        fetch.download(base + "/nothing.pth", tmp_path / "n.pth", progress=False)
    with pytest.raises(DownloadError, match="cannot reach http://127.0.0.1:.*Connection refused"):
        fetch.download(f"http://127.0.0.1:{_closed_port()}/x.pth", tmp_path / "x.pth", progress=False, timeout=2)
    assert _names(tmp_path) == []


def test_download_stalled_server_times_out(server, tmp_path):
    base, routes, _ = server
    routes["/slow.bin"] = (b"", "stall")
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        fetch.download(base + "/slow.bin", tmp_path / "slow.bin", progress=False, timeout=0.5)
    assert time.monotonic() - t0 < 8  # bounded by the timeout, not by the server
    assert _names(tmp_path) == []


def test_download_ctrl_c_removes_part(server, tmp_path, monkeypatch):
    base, routes, _ = server
    routes["/f.bin"] = (bytes(500_000), "ok")
    seen = []

    class InterruptingBar:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            seen.append(_names(tmp_path))  # the .part file exists while downloading
            raise KeyboardInterrupt

    monkeypatch.setattr(fetch, "tqdm", InterruptingBar)
    with pytest.raises(DownloadError, match="interrupted; nothing was kept"):
        fetch.download(base + "/f.bin", tmp_path / "f.bin")
    assert seen == [["f.bin.part"]]
    assert _names(tmp_path) == []


def test_download_bad_url(tmp_path):
    with pytest.raises(DownloadError, match="unknown url type"):
        fetch.download("nonsense://x/y.pth", tmp_path / "y.pth", progress=False)


def test_hash_prefix_from_url():
    assert fetch.hash_prefix_from_url(fetch.URLS["resnet18"]) == "f37072fd"
    assert fetch.hash_prefix_from_url(fetch.URLS["resnet34"]) == "b627a593"
    assert fetch.hash_prefix_from_url("http://h/weights.pth") is None


# -- fetch_weights ------------------------------------------------------------------------------------

def test_fetch_weights_downloads_converts_and_reuses(server, tmp_path, resnet18_pth):
    base, routes, hits = server
    body, sha, sd = resnet18_pth
    name = f"resnet18-{sha[:8]}.pth"
    routes["/models/" + name] = (body, "ok")
    url = f"{base}/models/{name}"
    out = fetch.fetch_weights("resnet18", dest=tmp_path, url=url, progress=False)
    assert out == tmp_path / "resnet18.safetensors"
    tensors, meta = st.load(out)
    assert meta["architecture"] == "resnet18" and meta["sha256"] == sha and meta["source"] == name
    np.testing.assert_array_equal(tensors["layer3.1.conv2.weight"], sd["layer3.1.conv2.weight"])
    assert _names(tmp_path) == sorted([name, "resnet18.safetensors"]) and len(hits) == 1

    assert fetch.fetch_weights("resnet18", dest=tmp_path, url=url, progress=False) == out
    assert len(hits) == 1  # the converted file is reused
    out.unlink()
    assert fetch.fetch_weights("resnet18", dest=tmp_path, url=url, progress=False) == out
    assert len(hits) == 1  # the downloaded checkpoint is reused
    out.unlink()
    (tmp_path / name).write_bytes(b"damaged")
    assert fetch.fetch_weights("resnet18", dest=tmp_path, url=url, progress=False) == out
    assert len(hits) == 2  # a cached file with the wrong hash is fetched again
    assert (tmp_path / name).read_bytes() == body


def test_fetch_weights_wrong_hash_refused(server, tmp_path, resnet18_pth):
    base, routes, _ = server
    routes["/resnet18-deadbeef.pth"] = (resnet18_pth[0], "ok")
    with pytest.raises(DownloadError, match="expected a digest starting deadbeef") as ei:
        fetch.fetch_weights("resnet18", dest=tmp_path, url=base + "/resnet18-deadbeef.pth", progress=False)
    assert "minicnn convert resnet18-deadbeef.pth resnet18.safetensors" in str(ei.value)
    assert _names(tmp_path) == []


def test_fetch_weights_cut_short_leaves_no_half_file(server, tmp_path, resnet18_pth):
    base, routes, _ = server
    body, sha, _ = resnet18_pth
    routes[f"/resnet18-{sha[:8]}.pth"] = (body, "truncate")
    with pytest.raises(DownloadError, match="truncated download"):
        fetch.fetch_weights("resnet18", dest=tmp_path, url=f"{base}/resnet18-{sha[:8]}.pth", progress=False)
    assert _names(tmp_path) == []


def test_fetch_weights_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="no known weights for 'resnet50'; choose one of resnet18, resnet34"):
        fetch.fetch_weights("resnet50", dest=tmp_path)


@pytest.fixture
def no_network(monkeypatch):
    """Send every non-loopback request to a dead proxy: the real URLs fail at once, network or not."""
    dead = f"http://127.0.0.1:{_closed_port()}"
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, dead)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return dead


def test_real_url_fails_cleanly_and_quickly(tmp_path, no_network):
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as ei:
        fetch.fetch_weights("resnet18", dest=tmp_path, progress=False, timeout=2)
    msg = str(ei.value)
    assert msg.startswith("cannot reach https://download.pytorch.org/models/resnet18-f37072fd.pth")
    assert "minicnn convert resnet18-f37072fd.pth resnet18.safetensors" in msg and str(tmp_path) in msg
    assert "\n" not in msg
    assert time.monotonic() - t0 < 10
    assert _names(tmp_path) == []


# -- command line ---------------------------------------------------------------------------------------

def test_cli_fetch_without_network(tmp_path, no_network):
    r = run_minicnn(["weights", "fetch", "resnet34", "--dest", tmp_path, "--timeout", "2", "--quiet"])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minicnn weights: error: cannot reach https://download.pytorch.org")
    assert "minicnn convert resnet34-b627a593.pth resnet34.safetensors" in lines[0]
    assert _names(tmp_path) == []


def test_cli_fetch_mirror_then_list(server, tmp_path, resnet18_pth):
    base, routes, _ = server
    body, sha, _ = resnet18_pth
    name = f"resnet18-{sha[:8]}.pth"
    routes["/" + name] = (body, "ok")
    env = {"MINICNN_HOME": str(tmp_path / "home")}
    r = run_minicnn(["weights", "fetch", "resnet18", "--url", f"{base}/{name}", "--quiet"], extra_env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "home" / "resnet18.safetensors")
    r = run_minicnn(["weights", "list"], extra_env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == str(tmp_path / "home")
    assert any(line.split()[0] == "resnet18.safetensors" and "architecture=resnet18" in line
               and f"source={name}" in line for line in lines[1:])
    assert any(line.split()[0] == name and "MiB" in line for line in lines[1:])
    r = run_minicnn(["weights", "list", "--dest", tmp_path / "empty"], extra_env=env)
    assert r.returncode == 0 and "no weights yet" in r.stdout
