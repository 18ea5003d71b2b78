"""Verified downloads, and torchvision's ResNet weights fetched into the cache and converted.

``download`` streams into ``<dst>.part``, hashing as it goes, and renames onto ``dst`` only when
the body is complete and the hash matches; on any failure the ``.part`` file is removed and
``DownloadError`` says why. ``fetch_weights("resnet18")`` downloads torchvision's official file
(checked, as torchvision does, against the hex prefix in its name), converts it with
``minicnn.io.weights.convert`` and returns the converted file; later calls reuse the cache.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import DownloadError, WeightFormatError

URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
}
"""torchvision's ImageNet weights (``IMAGENET1K_V1``) by architecture."""

_CHUNK = 1 << 16
# torchvision names files <name>-<first hex digits of their sha256>.<ext>
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def hash_prefix_from_url(url: str) -> str | None:
    """The sha256 prefix encoded in a torchvision-style file name (``resnet18-f37072fd.pth`` ->
    ``f37072fd``), or None."""
    m = _HASH_IN_NAME.search(os.path.basename(urllib.parse.urlparse(url).path))
    return m.group(1) if m else None


def _opener(url: str):
    host = urllib.parse.urlparse(url).hostname or ""
    if host in _LOOPBACK:
        # a proxy from the environment must not intercept a loopback address
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def download(url: str, dst, sha256: str | None = None, sha256_prefix: str | None = None,
             progress: bool = True, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dst`` through ``dst + ".part"``; returns ``Path(dst)``.

    ``sha256`` (full hex digest) or ``sha256_prefix`` (its first digits) are checked before the
    file is moved into place. ``timeout`` (seconds) bounds connecting and each read. Any failure
    (HTTP error, unreachable host, a body shorter than its Content-Length, hash mismatch, Ctrl-C)
    removes the ``.part`` file and raises ``DownloadError``; ``dst`` is then untouched.
    """
    from .. import __version__

    dst = os.fspath(dst)
    part = dst + ".part"
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    name = os.path.basename(dst)
    digest = hashlib.sha256()
    received = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": f"minicnn/{__version__}"})
        try:
            response = _opener(url).open(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            err = DownloadError(f"{url}: HTTP {e.code} {e.reason}")
            err.http_status = e.code
            raise err from None
        except urllib.error.URLError as e:
            raise DownloadError(f"cannot reach {url}: {e.reason}") from None
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with open(part, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                             desc=name, disable=not progress, file=sys.stderr) as bar:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise DownloadError(f"{url}: connection closed after {received} of {total} bytes (truncated download)")
        got = digest.hexdigest()
        if sha256 is not None and got != sha256.lower():
            raise DownloadError(f"{url}: sha256 mismatch: expected {sha256.lower()}, got {got}")
        if sha256_prefix is not None and not got.startswith(sha256_prefix.lower()):
            raise DownloadError(f"{url}: sha256 mismatch: expected a digest starting {sha256_prefix.lower()}, "
                                f"got {got}")
        os.replace(part, dst)
    except DownloadError:
        _remove(part)
        raise
    except KeyboardInterrupt:
        _remove(part)
        raise DownloadError(f"download of {url} interrupted; nothing was kept") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        _remove(part)
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DownloadError(f"download of {url} failed: {reason}") from None
    return Path(dst)


def _cached_conversion_ok(path: Path, arch: str, prefix: str | None) -> bool:
    from .safetensors import read_metadata

    try:
        meta = read_metadata(path)
    except (WeightFormatError, OSError):
        return False
    return (meta.get("format") == "minicnn" and meta.get("architecture") == arch
            and (prefix is None or meta.get("sha256", "").startswith(prefix)))


def fetch_weights(name: str, dest=None, progress: bool = True, timeout: float = 30.0,
                  url: str | None = None) -> Path:
    """Return the path of converted ImageNet weights for ``name`` (``resnet18`` or ``resnet34``).

    Looks in ``dest`` (default :func:`minicnn.io.weights.weights_home`) for ``<name>.safetensors``
    converted from the expected file; otherwise downloads torchvision's checkpoint there (or
    reuses one already downloaded whose hash matches), converts it, and returns the new file.
    ``url`` overrides the download address (a mirror); its file name's hash prefix, if any, is
    checked. Without network the ``DownloadError`` explains how to convert a file fetched elsewhere.
    """
    from .weights import convert, sha256_file, weights_home

    if name not in URLS:
        raise ValueError(f"no known weights for {name!r}; choose one of {', '.join(URLS)}")
    url = url or URLS[name]
    home = Path(dest).expanduser() if dest is not None else weights_home()
    home.mkdir(parents=True, exist_ok=True)
    out = home / f"{name}.safetensors"
    prefix = hash_prefix_from_url(url)
    if out.is_file() and _cached_conversion_ok(out, name, prefix):
        return out
    filename = os.path.basename(urllib.parse.urlparse(url).path) or f"{name}.pth"
    raw = home / filename
    if not (raw.is_file() and (prefix is None or sha256_file(raw).startswith(prefix))):
        try:
            download(url, raw, sha256_prefix=prefix, progress=progress, timeout=timeout)
        except DownloadError as e:
            status = getattr(e, "http_status", None)
            if status is not None:
                what = "no such file there" if status in (404, 410) else "the server refused it"
                raise DownloadError(
                    f"{e} ({what}; check the address{' given with --url' if url != URLS[name] else ''}). "
                    f"If you have {filename} from elsewhere, run 'minicnn convert {filename} {name}.safetensors' and "
                    f"put {name}.safetensors in {home}") from None
            raise DownloadError(
                f"{e}. Without network, get {filename} elsewhere (from {url}), then run "
                f"'minicnn convert {filename} {name}.safetensors' and put {name}.safetensors in {home}") from None
    convert(raw, out, arch=name)
    return out
