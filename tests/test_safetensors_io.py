"""Our safetensors reader/writer: exact round trips, interoperability with the reference
``safetensors`` package in both directions, and a one-line WeightFormatError for every kind of
damaged file."""
import json
import os
import struct
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minicnn.errors import WeightFormatError
from minicnn.io import safetensors as ours

# the safetensors package is the reference for the interop tests only: minicnn does not depend on it
try:
    import safetensors.numpy as st_numpy
except ImportError:
    st_numpy = None
needs_reference = pytest.mark.skipif(st_numpy is None, reason="the safetensors package (a test-only reference) "
                                                                "is not installed")

ALL_DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_]


def _sample(dtype, shape, rng):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def _assert_same(a, b):
    a, b = OrderedDict(a), OrderedDict(b)
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _mixed(rng):
    d = OrderedDict()
    for i, dt in enumerate(ALL_DTYPES):
        d[f"t{i}.{np.dtype(dt).name}"] = _sample(dt, (2, 3, i % 3 + 1), rng)
    d["scalar"] = np.array(7, dtype=np.int64)
    d["empty"] = np.zeros((0, 4), np.float32)
    d["view"] = np.arange(24, dtype=np.float32).reshape(4, 6)[::2, 1::2].T  # non-contiguous input
    return d


def test_round_trip_every_dtype_and_order(tmp_path):
    d = _mixed(np.random.default_rng(0))
    path = tmp_path / "a.safetensors"
    ours.save_file(d, path, {"k": "v", "ünï": "cödé"})
    tensors, meta = ours.load(path)
    _assert_same(tensors, d)
    assert meta == {"k": "v", "ünï": "cödé"}
    for v in tensors.values():
        assert v.flags.c_contiguous and v.flags.writeable


@needs_reference
def test_files_we_write_are_read_by_the_reference_package(tmp_path):
    d = _mixed(np.random.default_rng(1))
    path = tmp_path / "ours.safetensors"
    ours.save_file(d, path, {"format": "minicnn"})
    ref = st_numpy.load_file(str(path))
    _assert_same(OrderedDict((k, ref[k]) for k in d), d)
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"format": "minicnn"}


@needs_reference
def test_files_the_reference_package_writes_are_read_by_us(tmp_path):
    d = _mixed(np.random.default_rng(2))
    path = tmp_path / "ref.safetensors"
    # the reference numpy writer stores a strided view's underlying buffer, not its elements
    # (checked with safetensors 0.8), so it is handed C-ordered copies
    st_numpy.save_file({k: np.asarray(v, order="C") for k, v in d.items()}, str(path), metadata={"a": "b"})
    tensors, meta = ours.load(path)
    assert meta == {"a": "b"}
    _assert_same(OrderedDict((k, tensors[k]) for k in d), d)
    # the reference writer orders data differently from ours; the bytes are still equivalent
    assert ours.load_bytes(path.read_bytes())[0].keys() == tensors.keys()


@needs_reference
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_dicts_round_trip_both_ways(data):
    n = data.draw(st.integers(0, 5))
    names = data.draw(st.lists(st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__"),
                               min_size=n, max_size=n, unique=True))
    d = OrderedDict()
    for name in names:
        dtype = data.draw(st.sampled_from(ALL_DTYPES))
        shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        d[name] = data.draw(hnp.arrays(dtype, shape))
    meta = data.draw(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
    blob = ours.save_bytes(d, meta)
    back, back_meta = ours.load_bytes(blob)
    _assert_same(back, d)
    assert back_meta == meta
    ref = st_numpy.load(blob)  # the reference package parses the same bytes to the same arrays
    _assert_same(OrderedDict((k, ref[k]) for k in d), d)
    back2 = ours.load_bytes(st_numpy.save(dict(d), metadata=meta or None))[0]
    _assert_same(OrderedDict((k, back2[k]) for k in d), d)


def _raw_text(header: str, data: bytes = b"") -> bytes:
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _raw_file(header, data: bytes) -> bytes:
    return _raw_text(json.dumps(header), data)


def test_bf16_widens_to_float32_exactly(tmp_path):
    # bfloat16 bit patterns and the float32 values they denote
    bits = np.array([0x3F80, 0xC020, 0x4049, 0x0000, 0x8000, 0x7F80, 0xFF80, 0x0001], dtype="<u2")
    want = np.array([1.0, -2.5, 3.140625, 0.0, -0.0, np.inf, -np.inf, 9.183549615799121e-41], dtype=np.float32)
    blob = _raw_file({"x": {"dtype": "BF16", "shape": [2, 4], "data_offsets": [0, 16]}}, bits.tobytes())
    got = ours.load_bytes(blob)[0]["x"]
    assert got.dtype == np.float32 and got.shape == (2, 4)
    np.testing.assert_array_equal(got.view(np.uint32), want.reshape(2, 4).view(np.uint32))
    nan = _raw_file({"n": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, b"\xc0\x7f")
    assert np.isnan(ours.load_bytes(nan)[0]["n"][0])


@pytest.mark.torch
def test_bf16_written_by_torch_reads_as_its_float32_value(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    t = torch.randn(5, 7).to(torch.bfloat16)
    path = tmp_path / "bf.safetensors"
    save_file({"w": t}, str(path))
    got = ours.load_file(path)["w"]
    np.testing.assert_array_equal(got, t.float().numpy())


@pytest.mark.torch
def test_float32_to_bf16_rounds_to_nearest_even():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32) * 1e3
    x[:4] = [np.nan, np.inf, -np.inf, 0.0]
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = ours.float32_to_bf16(x)
    np.testing.assert_array_equal(got[4:], ref[4:])
    assert np.isnan(ours.bf16_to_float32(got[:1])[0])


# -- damaged files ------------------------------------------------------------------------------------

def _valid_blob():
    return ours.save_bytes(OrderedDict(a=np.arange(6, dtype=np.float32).reshape(2, 3),
                                       b=np.array([1, 2], dtype=np.int64)), {"m": "x"})


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


BAD = {
    "empty": (b"", "file is empty"),
    "short": (b"\x05\x00\x00", "too short for the 8-byte header length"),
    "header longer than file": (struct.pack("<Q", 500) + b"{}", "header length 500 is larger"),
    "absurd header length": (struct.pack("<Q", 2 ** 62) + b"{}", "is absurd"),
    "zero header length": (struct.pack("<Q", 0) + b"{}", "header length is 0"),
    "not utf-8": (struct.pack("<Q", 4) + b"{\xff\xfe}", "not valid UTF-8"),
    "not json": (struct.pack("<Q", 5) + b"{abc}", "not valid JSON"),
    "json list": (_raw_file([], b""), "must be a JSON object"),  # type: ignore[arg-type]
    "duplicate key": (_raw_text('{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},'
                                '"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}'), "duplicate key 'a'"),
    "unknown dtype": (_raw_file({"a": _entry(dtype="F128")}, bytes(8)), "unknown dtype 'F128'"),
    "dtype not a string": (_raw_file({"a": _entry(dtype=3)}, bytes(8)), "unknown dtype 3"),
    "negative dim": (_raw_file({"a": _entry(shape=(-2,))}, bytes(8)), "shape must be a list of non-negative"),
    "float dim": (_raw_file({"a": _entry(shape=(2.0,))}, bytes(8)), "shape must be a list of non-negative"),
    "bool dim": (_raw_file({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4)),
                 "shape must be a list"),
    "shape not a list": (_raw_file({"a": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, bytes(8)),
                         "shape must be a list"),
    "missing field": (_raw_file({"a": {"dtype": "F32", "shape": [2]}}, bytes(8)), "entry lacks data_offsets"),
    "entry not object": (_raw_file({"a": [1, 2]}, bytes(8)), "entry must be an object"),
    "offsets wrong length": (_raw_file({"a": _entry(offsets=(0, 4, 8))}, bytes(8)), "two non-negative integers"),
    "offsets backwards": (_raw_file({"a": _entry(offsets=(8, 0))}, bytes(8)), "run backwards"),
    "offsets past end": (_raw_file({"a": _entry(offsets=(0, 8))}, bytes(4)), "beyond the data region"),
    "offsets vs shape": (_raw_file({"a": _entry(shape=(3,), offsets=(0, 8))}, bytes(8)), "needs 12"),
    "overlap": (_raw_file({"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(4, 12))}, bytes(12)), "overlap"),
    "gap": (_raw_file({"a": _entry(offsets=(4, 12))}, bytes(12)), "gap of 4 bytes"),
    "tail not covered": (_raw_file({"a": _entry()}, bytes(12)), "cover only 8"),
    "metadata not strings": (_raw_file({"__metadata__": {"a": 1}}, b""), "__metadata__['a'] must be a string"),
    "metadata not object": (_raw_file({"__metadata__": "x"}, b""), "__metadata__ must be an object"),
    "truncated copy": (_valid_blob()[:-3], "beyond the data region"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_damaged_file_raises_one_line_error(tmp_path, case):
    blob, needle = BAD[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    for call in (lambda: ours.load(path), lambda: ours.load_bytes(blob)):
        with pytest.raises(WeightFormatError) as ei:
            call()
        msg = str(ei.value)
        assert needle in msg, msg
        assert "\n" not in msg


@settings(max_examples=150, deadline=None)
@given(pos=st.integers(0, 10_000), byte=st.integers(0, 255), cut=st.integers(0, 10_000))
def test_corrupted_bytes_never_escape_as_other_errors(pos, byte, cut):
    blob = bytearray(_valid_blob())
    blob[pos % len(blob)] = byte
    blob = bytes(blob[: max(1, len(blob) - cut % 40)])
    try:
        tensors, meta = ours.load_bytes(blob)
    except WeightFormatError as e:
        assert "\n" not in str(e)
    else:  # what we accept, the reference package accepts and decodes to the same arrays
        if st_numpy is None:
            return
        ref = st_numpy.load(blob)
        assert sorted(ref) == sorted(tensors)
        for k in tensors:
            assert ref[k].dtype == tensors[k].dtype and ref[k].shape == tensors[k].shape
            np.testing.assert_array_equal(ref[k], tensors[k])


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_random_bytes_are_refused_cleanly(blob):
    try:
        ours.load_bytes(blob)
    except WeightFormatError as e:
        assert "\n" not in str(e)


def test_writer_refuses_bad_input_and_leaves_nothing(tmp_path):
    path = tmp_path / "w.safetensors"
    with pytest.raises(TypeError, match="tensor 'c': dtype complex128"):
        ours.save_file({"a": np.zeros(2), "c": np.zeros(2, complex)}, path)
    with pytest.raises(TypeError, match="metadata must map str -> str"):
        ours.save_file({"a": np.zeros(2)}, path, {"k": 1})
    with pytest.raises(TypeError, match="tensor names must be strings"):
        ours.save_file({1: np.zeros(2)}, path)
    with pytest.raises(ValueError, match="reserved"):
        ours.save_file({"__metadata__": np.zeros(2)}, path)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    ours.save_file({"old": np.ones(3, np.float32)}, path)
    before = path.read_bytes()

    class Boom:
        def reshape(self, *a):
            raise KeyboardInterrupt

    real_build = ours._build

    def build(tensors, metadata):
        prefix, arrays = real_build(tensors, metadata)
        return prefix, arrays[:1] + [("x", Boom())]

    monkeypatch.setattr(ours, "_build", build)
    with pytest.raises(KeyboardInterrupt):
        ours.save_file({"new": np.zeros(3, np.float32), "x": np.zeros(1)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_written_file_respects_umask(tmp_path):
    path = tmp_path / "p.safetensors"
    old = os.umask(0o022)
    try:
        ours.save_file({"a": np.zeros(1)}, path)
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_read_header_and_metadata_without_data(tmp_path):
    path = tmp_path / "h.safetensors"
    ours.save_file(OrderedDict(a=np.zeros((2, 3), np.float16), b=np.zeros(4, np.uint8)), path, {"x": "y"})
    infos, meta = ours.read_header(path)
    assert [(t.name, t.dtype, t.shape, t.begin, t.end) for t in infos] == [
        ("a", "F16", (2, 3), 0, 12), ("b", "U8", (4,), 12, 16)]
    assert ours.read_metadata(path) == {"x": "y"} == meta
    # the data region starts 8-byte aligned, as the reference writer arranges
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert (8 + n) % 8 == 0
