"""Write the small PyTorch checkpoints in tests/fixtures/pth/ (needs torch), and a torch-free writer.

    python tests/make_pth_fixtures.py

writes, from fixed seeds:

- ``tiny_zip.pth`` / ``tiny_legacy.pth``: one state dict in both ``torch.save`` formats, with every
  common dtype, a 0-d and an empty tensor, a transposed and a strided view, a stride-0 ``expand``,
  two tensors sharing one storage, a bfloat16 tensor and an ``nn.Parameter``;
- ``wrapped_zip.pth`` / ``wrapped_legacy.pth``: ``{"state_dict": DataParallel(model).state_dict(),
  "epoch": 7, "best_acc": 0.5}`` (``module.`` prefixes, the state dict's ``_metadata`` attribute);
- ``expected.npz``: the arrays the reader must return (``tiny/<key>``, ``wrapped/<key>``; bfloat16
  widened to float32 exactly).

``write_pth_zip`` (no torch) writes a state dict in the zip format from raw pickle opcodes; tests
use it to build full-size ResNet checkpoints and crafted hostile files on machines without torch,
and a torch test checks that ``torch.load`` reads its output.
"""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "pth"

_STORAGE = {
    np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage", np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def _int(n: int) -> bytes:
    if -(2 ** 31) <= n < 2 ** 31:
        return b"J" + struct.pack("<i", n)
    b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b


def _tuple(items) -> bytes:
    return b"(" + b"".join(_int(i) for i in items) + b"t" if items else b")"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def state_dict_pickle(entries, legacy: bool = False) -> bytes:
    """Protocol-2 pickle of an OrderedDict of tensors as torch writes it.

    ``entries``: (name, storage_type, storage_key, storage_numel, offset, size, stride) tuples.
    ``legacy`` writes the legacy format's storage references (a sixth field, no view).
    """
    out = bytearray(b"\x80\x02" + _global("collections", "OrderedDict") + b")R(")
    for name, stype, key, numel, offset, size, stride in entries:
        out += _str(name) + _global("torch._utils", "_rebuild_tensor_v2") + b"("
        out += b"(" + _str("storage") + _global("torch", stype) + _str(key) + _str("cpu") + _int(numel) + (b"N" if legacy else b"") + b"tQ"
        out += _int(offset) + _tuple(size) + _tuple(stride) + b"\x89"
        out += _global("collections", "OrderedDict") + b")R" + b"tR"
    out += b"u."
    return bytes(out)


def write_zip_archive(path, data_pkl: bytes, records: dict, archive: str = "archive") -> None:
    """A zip checkpoint: ``archive/data.pkl``, ``archive/data/<key>`` records, byteorder, version."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", data_pkl)
        z.writestr(f"{archive}/byteorder", "little")
        for key, raw in records.items():
            z.writestr(f"{archive}/data/{key}", raw)
        z.writestr(f"{archive}/version", "3\n")


def write_pth_zip(state: dict, path) -> None:
    """Save ``{name: numpy array}`` the way ``torch.save(state_dict, path)`` does, without torch."""
    entries, records = [], {}
    for i, (name, arr) in enumerate(state.items()):
        arr = np.asarray(arr, order="C")
        stype = _STORAGE[arr.dtype]
        stride = [1] * arr.ndim
        for d in range(arr.ndim - 2, -1, -1):
            stride[d] = stride[d + 1] * arr.shape[d + 1]
        key = str(i)
        entries.append((name, stype, key, arr.size, 0, arr.shape, tuple(stride)))
        records[key] = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    write_zip_archive(path, state_dict_pickle(entries), records)


def _tiny_state(torch):
    from collections import OrderedDict

    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 5, generator=g)
    shared = torch.arange(10, dtype=torch.float32)
    sd = OrderedDict()
    sd["conv.weight"] = torch.randn(2, 3, 2, 2, generator=g)
    sd["shared.full"] = shared
    sd["shared.slice"] = shared[3:7]  # same storage, storage_offset 3
    sd["transposed"] = base.t()  # non-contiguous
    sd["strided"] = base[::2, 1::2]  # offset and steps in both dims
    sd["expanded"] = torch.arange(3.0).unsqueeze(0).expand(4, 3)  # stride 0
    sd["double"] = torch.randn(3, generator=g, dtype=torch.float64)
    sd["half"] = torch.randn(2, 3, generator=g).half()
    sd["bf16"] = torch.tensor([1.0, -2.5, 3.140625, 1e30], dtype=torch.bfloat16)
    sd["long"] = torch.tensor([0, -1, 2 ** 40, -(2 ** 62)], dtype=torch.int64)
    sd["int"] = torch.tensor([7, -(2 ** 31)], dtype=torch.int32)
    sd["short"] = torch.tensor([-300, 300], dtype=torch.int16)
    sd["char"] = torch.tensor([-128, 127], dtype=torch.int8)
    sd["byte"] = torch.tensor([0, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(42)
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(3, generator=g))
    return sd


def _expected(torch, sd, prefix):
    out = {}
    for k, t in sd.items():
        t = t.detach()
        out[f"{prefix}/{k}"] = (t.float() if t.dtype == torch.bfloat16 else t).contiguous().numpy()
    return out


def main() -> None:
    """Write every fixture file (see the module docstring)."""
    import torch

    FIXTURES.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tiny = _tiny_state(torch)
    torch.save(tiny, FIXTURES / "tiny_zip.pth")
    torch.save(tiny, FIXTURES / "tiny_legacy.pth", _use_new_zipfile_serialization=False)

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    model.train()
    model(torch.randn(4, 2, 2, 2))  # give the running statistics real values
    wrapped_sd = torch.nn.DataParallel(model).state_dict()
    ckpt = {"state_dict": wrapped_sd, "epoch": 7, "best_acc": 0.5}
    torch.save(ckpt, FIXTURES / "wrapped_zip.pth")
    torch.save(ckpt, FIXTURES / "wrapped_legacy.pth", _use_new_zipfile_serialization=False)

    expected = _expected(torch, tiny, "tiny")
    expected.update(_expected(torch, {k[len("module."):]: v for k, v in wrapped_sd.items()}, "wrapped"))
    np.savez(FIXTURES / "expected.npz", **expected)
    for p in sorted(FIXTURES.iterdir()):
        print(f"{p.relative_to(HERE.parent)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
