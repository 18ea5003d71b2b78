"""Our own reader and writer of the safetensors format (no dependency on the ``safetensors`` package).

Layout of a file::

    8 bytes    N, the header length, unsigned little-endian
    N bytes    UTF-8 JSON object: {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
                                   ..., "__metadata__": {"str": "str"}}   (metadata optional)
    rest       the data region; each tensor's bytes lie at [begin, end) relative to its start,
               little-endian, C order, and together the tensors cover the region exactly

The reader trusts nothing: every field is checked before a byte of data is interpreted, and any
problem raises :class:`minicnn.errors.WeightFormatError` with a one-line message that names it.
The writer never leaves a partial file: it writes a temporary file beside the target and renames
it into place only when complete (:func:`atomic_write`).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import struct
from collections import OrderedDict
from typing import Mapping

import numpy as np

from ..errors import WeightFormatError

# safetensors dtype name -> numpy dtype of the stored bytes (always little-endian)
DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # numpy has no bfloat16: read as raw 16-bit patterns, widened to float32
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

# numpy dtype -> safetensors name, for the writer (bfloat16 cannot come from numpy)
_NUMPY_TO_ST = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64",
    np.dtype(np.uint32): "U32",
    np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}

# The reference implementation refuses headers above 100 MB; a larger length is a corrupt file,
# and refusing it early avoids allocating whatever a damaged length field claims.
MAX_HEADER_BYTES = 100_000_000

_METADATA_KEY = "__metadata__"


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bit patterns (uint16) to float32: bfloat16 is float32's top half."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bit patterns (uint16), round-to-nearest-even, NaN kept NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    nan = np.isnan(x)
    return np.where(nan, (bits >> 16) | 0x0040, rounded).astype(np.uint16)


# -- reading ----------------------------------------------------------------------------------------

def _fail(where: str, msg: str):
    raise WeightFormatError(f"{where}: {msg}")


def _no_duplicates(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise _DuplicateKey(k)
        seen[k] = v
    return seen


class _DuplicateKey(Exception):
    pass


def _is_int(v) -> bool:
    # JSON true/false decode to bool, which is an int subclass; a shape of [true] is not a shape
    return isinstance(v, int) and not isinstance(v, bool)


class TensorInfo:
    """One header entry after validation: name, safetensors dtype, shape and byte range."""

    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name, dtype, shape, begin, end):
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return self.end - self.begin

    def __repr__(self) -> str:
        return f"TensorInfo({self.name!r}, {self.dtype}, shape={self.shape}, offsets=[{self.begin}, {self.end}])"


def parse_header(raw: bytes, data_size: int, where: str = "safetensors"):
    """Validate a header's bytes against a data region of ``data_size`` bytes.

    Returns ``(infos, metadata)``: a list of :class:`TensorInfo` ordered by position in the data
    region, and the ``__metadata__`` dict (empty if absent). Raises ``WeightFormatError``.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(where, f"header is not valid UTF-8 (byte {e.start})")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        _fail(where, f"header has duplicate key {e.args[0]!r}")
    except (json.JSONDecodeError, RecursionError) as e:
        msg = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
        _fail(where, f"header is not valid JSON ({msg})")
    if not isinstance(header, dict):
        _fail(where, f"header must be a JSON object, got {type(header).__name__}")

    metadata = header.pop(_METADATA_KEY, None)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        _fail(where, f"__metadata__ must be an object of strings, got {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(v, str):
            _fail(where, f"__metadata__[{k!r}] must be a string, got {type(v).__name__}")

    infos = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            _fail(where, f"tensor {name!r}: entry must be an object, got {type(entry).__name__}")
        missing = [f for f in ("dtype", "shape", "data_offsets") if f not in entry]
        if missing:
            _fail(where, f"tensor {name!r}: entry lacks {', '.join(missing)}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            _fail(where, f"tensor {name!r}: unknown dtype {dtype!r} (supported: {', '.join(DTYPES)})")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            _fail(where, f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(o) and o >= 0 for o in offsets)):
            _fail(where, f"tensor {name!r}: data_offsets must be two non-negative integers, got {offsets!r}")
        begin, end = offsets
        if begin > end:
            _fail(where, f"tensor {name!r}: data_offsets [{begin}, {end}] run backwards")
        if end > data_size:
            _fail(where, f"tensor {name!r}: data_offsets [{begin}, {end}] lie beyond the data region "
                         f"of {data_size} bytes (file truncated?)")
        expected = int(np.prod(shape, dtype=object)) * DTYPES[dtype].itemsize
        if end - begin != expected:
            _fail(where, f"tensor {name!r}: data_offsets [{begin}, {end}] hold {end - begin} bytes, but "
                         f"shape {tuple(shape)} of {dtype} needs {expected}")
        infos.append(TensorInfo(name, dtype, tuple(shape), begin, end))

    # Tensors must tile the data region: no overlap (two names aliasing bytes), no gaps, no tail.
    infos.sort(key=lambda t: (t.begin, t.end))
    pos = 0
    for t in infos:
        if t.begin < pos:
            _fail(where, f"tensor {t.name!r}: data_offsets [{t.begin}, {t.end}] overlap the previous tensor "
                         f"(which ends at {pos})")
        if t.begin > pos:
            _fail(where, f"data region has a gap of {t.begin - pos} bytes before tensor {t.name!r} "
                         f"(offsets do not cover the data)")
        pos = t.end
    if pos != data_size:
        _fail(where, f"data region is {data_size} bytes but the tensors cover only {pos} "
                     f"(offsets do not cover the data)")
    return infos, metadata


def _decode(info: TensorInfo, buf, offset: int) -> np.ndarray:
    if info.nbytes == 0:
        return np.zeros(info.shape, dtype=np.float32 if info.dtype == "BF16" else DTYPES[info.dtype])
    raw = np.frombuffer(buf, dtype=DTYPES[info.dtype], count=info.nbytes // DTYPES[info.dtype].itemsize,
                        offset=offset + info.begin)
    if info.dtype == "BF16":
        arr = bf16_to_float32(raw)
    else:
        # copy: the result owns aligned, writable, native-order memory, independent of the buffer
        arr = raw.astype(raw.dtype.newbyteorder("="), copy=True)
    return arr.reshape(info.shape)


def _read_prefix(f, size: int, where: str):
    if size == 0:
        _fail(where, "file is empty")
    if size < 8:
        _fail(where, f"file is truncated: {size} bytes, too short for the 8-byte header length")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > MAX_HEADER_BYTES:
        _fail(where, f"header length {n} is absurd (limit {MAX_HEADER_BYTES}); not a safetensors file?")
    if n > size - 8:
        _fail(where, f"header length {n} is larger than the {size - 8} bytes that follow it "
                     f"(file truncated or not safetensors)")
    if n == 0:
        _fail(where, "header length is 0; a header is at least '{}'")
    raw = f.read(n)
    if len(raw) != n:
        _fail(where, "file is truncated inside the header")
    return raw, size - 8 - n


def read_header(path) -> tuple[list, dict]:
    """Validate the header of the safetensors file at ``path`` without reading tensor data.

    Returns ``(infos, metadata)`` as :func:`parse_header` does.
    """
    where = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        raw, data_size = _read_prefix(f, size, where)
    return parse_header(raw, data_size, where)


def read_metadata(path) -> dict:
    """The ``__metadata__`` dict (str -> str) of a safetensors file; empty if it has none."""
    return read_header(path)[1]


def load(path) -> tuple["OrderedDict[str, np.ndarray]", dict]:
    """Read every tensor and the metadata: ``(tensors, metadata)``.

    Tensors come back in the order they are laid out in the file (for files we write, the order
    they were given in), as native-order numpy arrays; BF16 tensors are widened to float32.
    """
    where = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        raw, data_size = _read_prefix(f, size, where)
        infos, metadata = parse_header(raw, data_size, where)
        data = bytearray(data_size)
        got = f.readinto(data)
        if got != data_size:
            _fail(where, f"file is truncated: data region has {got} of {data_size} bytes")
    tensors = OrderedDict((t.name, _decode(t, data, 0)) for t in infos)
    return tensors, metadata


def load_file(path) -> "OrderedDict[str, np.ndarray]":
    """Read every tensor of a safetensors file into numpy arrays (see :func:`load`)."""
    return load(path)[0]


def load_bytes(data: bytes, where: str = "<bytes>") -> tuple["OrderedDict[str, np.ndarray]", dict]:
    """Parse a whole safetensors file held in memory: ``(tensors, metadata)``."""
    import io

    size = len(data)
    f = io.BytesIO(data)
    raw, data_size = _read_prefix(f, size, where)
    infos, metadata = parse_header(raw, data_size, where)
    start = 8 + len(raw)
    return OrderedDict((t.name, _decode(t, data, start)) for t in infos), metadata


# -- writing ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_write(path):
    """Open a temporary file beside ``path`` for binary writing; on success rename it onto ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path`` is
    left as it was, so a reader never sees a half-written file.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    # os.open with mode 0o666 lets the umask decide permissions, as a plain open() would
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _as_storable(name, value) -> np.ndarray:
    from ..backends import to_numpy

    if not isinstance(name, str):
        raise TypeError(f"tensor names must be strings, got {type(name).__name__} {name!r}")
    if name == _METADATA_KEY:
        raise ValueError(f"{_METADATA_KEY!r} is reserved for metadata and cannot name a tensor")
    arr = np.asarray(to_numpy(value))
    dt = arr.dtype.newbyteorder("=") if arr.dtype.byteorder not in ("=", "|") else arr.dtype
    if dt not in _NUMPY_TO_ST:
        raise TypeError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored in safetensors "
                        f"(supported: {', '.join(str(d) for d in _NUMPY_TO_ST)})")
    # the format is little-endian C order (np.ascontiguousarray would turn 0-d arrays into 1-d)
    return np.asarray(arr, dtype=dt.newbyteorder("<"), order="C")


def _check_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict of str -> str, got {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str -> str; entry {k!r}: {type(v).__name__} {v!r}")
    return dict(metadata)


def _build(tensors: Mapping, metadata) -> tuple[bytes, list]:
    metadata = _check_metadata(metadata)
    arrays = [(name, _as_storable(name, value)) for name, value in tensors.items()]
    header = {}
    if metadata:
        header[_METADATA_KEY] = metadata
    pos = 0
    for name, arr in arrays:
        header[name] = {"dtype": _NUMPY_TO_ST[arr.dtype.newbyteorder("=")], "shape": list(arr.shape),
                        "data_offsets": [pos, pos + arr.nbytes]}
        pos += arr.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    # pad with spaces so the data region starts 8-byte aligned, as the reference writer does
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw, arrays


def save_file(tensors: Mapping, path, metadata: Mapping | None = None) -> None:
    """Write ``tensors`` (name -> numpy array) and optional ``metadata`` (str -> str) to ``path``.

    Arrays are stored in the order given, little-endian, C order, with their own dtype (float64,
    float32, float16, signed/unsigned ints, bool). The file appears only once fully written.
    """
    prefix, arrays = _build(tensors, metadata)
    with atomic_write(path) as f:
        f.write(prefix)
        for _, arr in arrays:
            f.write(arr.reshape(-1).view(np.uint8))


def save_bytes(tensors: Mapping, metadata: Mapping | None = None) -> bytes:
    """The bytes :func:`save_file` would write, as one ``bytes`` object."""
    prefix, arrays = _build(tensors, metadata)
    return prefix + b"".join(arr.tobytes() for _, arr in arrays)
