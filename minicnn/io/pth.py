"""Read PyTorch checkpoints (``torch.save`` files) without importing torch, and without running code.

Two container layouts exist (see ``docs/weights.md``):

- zip (PyTorch >= 1.6): ``<name>/data.pkl`` is a pickle of the saved object in which every tensor
  refers to a storage by key; ``<name>/data/<key>`` holds that storage's raw bytes and
  ``<name>/byteorder`` says ``little`` or ``big``.
- legacy: five things back to back in one file: a pickled magic number, a pickled protocol version
  (1001), a pickled dict of system info, the pickle of the object, a pickled list of storage keys;
  then, for each key in that order, an 8-byte little-endian element count and the raw elements.

A pickle is a small program: the default unpickler will import and call any function it names,
which is how a hostile ``.pth`` runs code. We unpickle with :class:`RestrictedUnpickler`, whose
``find_class`` hands back our own harmless stand-ins for exactly the globals a state dict needs
(:data:`ALLOWED_GLOBALS`) and raises ``WeightFormatError`` naming any other global, before it is
imported. Tensors are rebuilt as numpy arrays from (storage, offset, size, stride) after checking
that every view stays inside its storage.
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
import zipfile
from collections import OrderedDict

import numpy as np

from ..errors import WeightFormatError
from .safetensors import bf16_to_float32

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# A tensor may legally have more elements than its storage (an ``expand``-ed view has stride 0);
# past this many elements such a view is refused rather than materialised, so a hostile size
# cannot make us allocate without bound.
MAX_EXPANDED_ELEMENTS = 1 << 26


class _DType:
    """Stand-in for a torch dtype: how its elements are stored (numpy dtype) and if it is bfloat16."""

    __slots__ = ("name", "np", "bf16")

    def __init__(self, name, np_dtype, bf16=False):
        self.name, self.np, self.bf16 = name, np.dtype(np_dtype), bf16

    def __setstate__(self, state):
        raise WeightFormatError("pickle tried to modify a dtype object")

    def __repr__(self):
        return f"torch.{self.name}"


_DTYPES = {
    "float64": _DType("float64", "<f8"),
    "float32": _DType("float32", "<f4"),
    "float16": _DType("float16", "<f2"),
    "bfloat16": _DType("bfloat16", "<u2", bf16=True),
    "int64": _DType("int64", "<i8"),
    "int32": _DType("int32", "<i4"),
    "int16": _DType("int16", "<i2"),
    "int8": _DType("int8", "i1"),
    "uint8": _DType("uint8", "u1"),
    "uint16": _DType("uint16", "<u2"),
    "uint32": _DType("uint32", "<u4"),
    "uint64": _DType("uint64", "<u8"),
    "bool": _DType("bool", "?"),
}


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only says which dtype the storage holds."""

    __slots__ = ("name", "dtype")

    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype

    def __setstate__(self, state):
        raise WeightFormatError("pickle tried to modify a storage type")

    def __repr__(self):
        return f"torch.{self.name}"


_STORAGE_TYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class _Storage:
    """A storage named in the pickle; its bytes arrive later (legacy) or are read on demand (zip)."""

    __slots__ = ("key", "dtype", "numel", "array")

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel, self.array = key, dtype, numel, None

    def __setstate__(self, state):
        raise WeightFormatError("pickle tried to modify a storage")


class _StorageView:
    """A legacy-format storage view: ``numel`` elements of ``base`` from ``offset``."""

    __slots__ = ("base", "offset", "numel")

    def __init__(self, base, offset, numel):
        self.base, self.offset, self.numel = base, offset, numel

    def __setstate__(self, state):
        raise WeightFormatError("pickle tried to modify a storage")


class _LazyTensor:
    """A tensor as the pickle describes it; becomes a numpy array once storages are read."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage, offset, size, stride, dtype=None):
        self.storage, self.offset, self.size, self.stride, self.dtype = storage, offset, size, stride, dtype

    def __setstate__(self, state):
        raise WeightFormatError("pickle tried to modify a tensor")


def _rebuild_tensor(storage, storage_offset, size, stride):
    """Stand-in for ``torch._utils._rebuild_tensor``."""
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``; autograd flags and hooks are dropped."""
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    """Stand-in for ``torch._utils._rebuild_tensor_v3`` (an untyped storage viewed as ``dtype``)."""
    if not isinstance(dtype, _DType):
        raise WeightFormatError(f"_rebuild_tensor_v3 got dtype {_clip(repr(dtype))}, not a torch dtype")
    return _LazyTensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    """Stand-in for ``torch._utils._rebuild_parameter``: a Parameter is read as its tensor."""
    if not isinstance(data, _LazyTensor):
        raise WeightFormatError(f"_rebuild_parameter expects a tensor, got {type(data).__name__}")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    """Stand-in for ``torch._utils._rebuild_parameter_with_state`` (the extra state is dropped)."""
    return _rebuild_parameter(data, requires_grad, backward_hooks)


class _Callable:
    """Wraps a stand-in function so a pickle's BUILD opcode cannot change it: a bare function
    would accept new ``__defaults__`` from a hostile file and keep them for every later load."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __setstate__(self, state):
        raise WeightFormatError(f"pickle tried to modify {self.fn.__name__}")


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _Callable(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Callable(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor_v3"): _Callable(_rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): _Callable(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Callable(_rebuild_parameter_with_state),
    ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", _DTYPES["uint8"]),
    ("torch", "UntypedStorage"): _StorageType("UntypedStorage", _DTYPES["uint8"]),
}
ALLOWED_GLOBALS.update({("torch", name): _StorageType(name, _DTYPES[dt]) for name, dt in _STORAGE_TYPES.items()})
ALLOWED_GLOBALS.update({("torch", name): dt for name, dt in _DTYPES.items()})
"""Every global a checkpoint may name, mapped to the stand-in we return for it. Nothing else loads."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only build dicts, lists, tuples, scalars and (lazy) tensors.

    ``find_class`` is the one door through which a pickle reaches code; it opens only for
    :data:`ALLOWED_GLOBALS` and otherwise raises ``WeightFormatError`` naming the global.
    ``storages`` receives every storage the pickle refers to (``legacy`` selects that format's
    six-field persistent ids, which may describe views of a storage).
    """

    def __init__(self, file, where: str, storages: dict | None = None, legacy: bool = False):
        super().__init__(file, fix_imports=False, encoding="utf-8")
        self.where, self.storages, self.legacy = where, storages, legacy

    def find_class(self, module, name):
        """Our stand-in for an allowed global; any other global is refused, never imported."""
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            pass
        qualified = _clip(f"{module}.{name}" if isinstance(module, str) and isinstance(name, str)
                          else f"{module!r}.{name!r}")
        raise WeightFormatError(
            f"{self.where}: refusing to load global '{qualified}': a weight file may only hold "
            f"tensors, dicts, lists and numbers (the file is hostile, or is not a plain state dict)")

    def persistent_load(self, pid):
        """Resolve a ``("storage", type, key, location, numel[, view])`` reference to a storage record."""
        where = self.where
        if self.storages is None:
            raise WeightFormatError(f"{where}: unexpected storage reference outside the data pickle")
        if not isinstance(pid, tuple) or len(pid) != (6 if self.legacy else 5):
            raise WeightFormatError(f"{where}: malformed storage reference {_clip(repr(pid))}")
        kind, storage_type, key, location, numel = pid[:5]
        if isinstance(kind, bytes):
            kind = kind.decode("ascii", "replace")
        if kind != "storage":
            raise WeightFormatError(f"{where}: unknown persistent id kind {_clip(repr(kind))}")
        if not isinstance(storage_type, _StorageType):
            raise WeightFormatError(f"{where}: storage {_clip(repr(key))} has no storage type "
                                    f"(got {_clip(repr(storage_type))})")
        if not isinstance(key, str) or not isinstance(location, str):
            raise WeightFormatError(f"{where}: malformed storage reference {_clip(repr(pid))}")
        if not _is_int(numel) or numel < 0:
            raise WeightFormatError(f"{where}: storage {key!r} has invalid size {_clip(repr(numel))}")
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = _Storage(key, storage_type.dtype, numel)
        elif st.dtype is not storage_type.dtype or st.numel != numel:
            raise WeightFormatError(f"{where}: storage {key!r} is described twice with different types or sizes")
        if self.legacy and pid[5] is not None:
            view = pid[5]
            if (not isinstance(view, tuple) or len(view) != 3 or not isinstance(view[0], str)
                    or not _is_int(view[1]) or not _is_int(view[2])):
                raise WeightFormatError(f"{where}: malformed storage view {_clip(repr(view))}")
            _, off, size = view
            if off < 0 or size < 0 or off + size > numel:
                raise WeightFormatError(f"{where}: storage view [{off}, {off + size}) lies outside storage "
                                        f"{key!r} of {numel} elements")
            return _StorageView(st, off, size)
        return st


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _unpickle(file, where, storages=None, legacy=False):
    try:
        return RestrictedUnpickler(file, where, storages, legacy).load()
    except WeightFormatError as e:
        if str(e).startswith(f"{where}: "):
            raise
        raise WeightFormatError(f"{where}: {e}") from None  # raised by a stand-in, which has no path
    except EOFError:
        raise WeightFormatError(f"{where}: file is truncated (pickle ended early)") from None
    except Exception as e:  # noqa: BLE001 - whatever a corrupt pickle trips over is a format error
        raise WeightFormatError(f"{where}: corrupt pickle ({type(e).__name__}: {_one_line(e)})") from None


def _unpickle_at(data: bytes, pos: int, where, storages=None, legacy=False):
    """Unpickle the pickle starting at ``data[pos]``; returns ``(object, end position)``.

    A first pass walks the opcodes with ``pickletools.genops``, which executes nothing: it finds
    where the pickle ends and checks that every length field fits in the bytes that are left, so
    a corrupt length can never make the unpickler allocate more than the file holds.
    """
    bio = io.BytesIO(data)
    bio.seek(pos)
    try:
        for _ in pickletools.genops(bio):
            pass
    except Exception as e:  # noqa: BLE001 - genops reports damage as ValueError and friends
        if pos >= len(data):
            raise WeightFormatError(f"{where}: file is truncated (a pickle is missing at byte {pos})") from None
        raise WeightFormatError(f"{where}: corrupt pickle at byte {pos} ({type(e).__name__}: {_one_line(e)})") \
            from None
    end = bio.tell()
    return _unpickle(io.BytesIO(data[pos:end]), where, storages, legacy), end


def _clip(text: str, limit: int = 120) -> str:
    """``text`` on one line (control characters escaped) and at most ``limit`` characters."""
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(e) -> str:
    return _clip(" ".join(str(e).split()), 200)


# -- materialising tensors --------------------------------------------------------------------------

def _tensor(t: _LazyTensor, name: str, where: str) -> np.ndarray:
    st = t.storage
    if isinstance(st, _StorageView):
        base, start, count = st.base, st.offset, st.numel
    elif isinstance(st, _Storage):
        base, start, count = st, 0, st.numel
    else:
        raise WeightFormatError(f"{where}: tensor {name!r} is not backed by a storage (got {type(st).__name__})")
    if base.array is None:
        raise WeightFormatError(f"{where}: tensor {name!r}: data of storage {base.key!r} is missing")
    arr = base.array[start:start + count]
    dtype = base.dtype
    if t.dtype is not None and t.dtype is not dtype:
        # _rebuild_tensor_v3: reinterpret the storage's bytes as the tensor's dtype
        raw = arr.view(np.uint8)
        if raw.size % t.dtype.np.itemsize:
            raise WeightFormatError(f"{where}: tensor {name!r}: storage of {raw.size} bytes is not a whole "
                                    f"number of {t.dtype.name} elements")
        dtype = t.dtype
        arr = raw.view(dtype.np if base.array.dtype.byteorder != ">" else dtype.np.newbyteorder(">"))
    offset, size, stride = t.offset, t.size, t.stride
    if not _is_int(offset) or offset < 0:
        raise WeightFormatError(f"{where}: tensor {name!r}: invalid storage offset {_clip(repr(offset))}")
    if (not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride)
            or not all(_is_int(s) and s >= 0 for s in size) or not all(_is_int(s) and s >= 0 for s in stride)):
        raise WeightFormatError(f"{where}: tensor {name!r}: invalid size {_clip(repr(size))} / stride {_clip(repr(stride))}")
    numel = int(np.prod(size, dtype=object))
    if numel == 0:
        out = np.zeros(size, dtype=np.float32 if dtype.bf16 else dtype.np.newbyteorder("="))
        return out
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= arr.size:
        raise WeightFormatError(
            f"{where}: tensor {name!r}: size {size} with stride {stride} from offset {offset} reaches element "
            f"{last}, past the end of its storage of {arr.size} elements")
    if numel > arr.size and numel > MAX_EXPANDED_ELEMENTS:
        raise WeightFormatError(f"{where}: tensor {name!r} claims {numel} elements over a storage of {arr.size}")
    item = arr.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(arr[offset:], shape=size, strides=tuple(s * item for s in stride),
                                           writeable=False)
    if dtype.bf16:
        return bf16_to_float32(view).reshape(size)
    return np.array(view, dtype=view.dtype.newbyteorder("="), order="C", copy=True)


def _materialise(obj, name: str, where: str):
    if isinstance(obj, _LazyTensor):
        return _tensor(obj, name, where)
    if isinstance(obj, (_Storage, _StorageView)):
        st = obj
        numel = st.numel
        return _tensor(_LazyTensor(st, 0, (numel,), (1,)), name, where)
    if isinstance(obj, _DType):
        return obj.np.newbyteorder("=") if not obj.bf16 else "bfloat16"
    if isinstance(obj, _StorageType):
        return repr(obj)
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialise(v, f"{name}.{k}" if name else str(k), where)
        return out
    if isinstance(obj, list):
        return [_materialise(v, f"{name}[{i}]", where) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(_materialise(v, f"{name}[{i}]", where) for i, v in enumerate(obj))
    return obj


# -- containers ---------------------------------------------------------------------------------------

def detect(path) -> str | None:
    """``"pth-zip"``, ``"pth-legacy"`` or ``None`` from the first bytes of the file at ``path``."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] == b"PK\x03\x04":
        return "pth-zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pth-legacy"
    return None


def _zip_read(zf, info, nbytes, where) -> bytes:
    """Up to ``nbytes`` (all if None) of a zip member; a damaged member is a WeightFormatError."""
    try:
        with zf.open(info) as f:
            return f.read() if nbytes is None else f.read(nbytes)
    except Exception as e:  # noqa: BLE001 - bad CRC, unknown compression, encryption, truncation...
        raise WeightFormatError(f"{where}: cannot read {info.filename!r} ({type(e).__name__}: {_one_line(e)})") \
            from None


def _read_zip(path, where):
    try:
        zf = zipfile.ZipFile(path)
    except Exception as e:  # noqa: BLE001 - zipfile raises many types on a damaged directory
        raise WeightFormatError(f"{where}: corrupt zip archive ({type(e).__name__}: {_one_line(e)})") from None
    with zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkls:
            if any(n.endswith("constants.pkl") for n in names):
                raise WeightFormatError(f"{where}: a TorchScript archive, not a state dict; in PyTorch, save "
                                        f"model.state_dict() with torch.save instead")
            raise WeightFormatError(f"{where}: zip archive has no <name>/data.pkl: not a PyTorch checkpoint")
        if len(pkls) > 1:
            raise WeightFormatError(f"{where}: zip archive has several data.pkl records: {', '.join(pkls)}")
        prefix = pkls[0][: -len("data.pkl")]
        order = "little"
        if prefix + "byteorder" in names:
            order = _zip_read(zf, zf.getinfo(prefix + "byteorder"), 16, where).decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise WeightFormatError(f"{where}: unknown byteorder {order!r}")
        data_pkl = _zip_read(zf, zf.getinfo(pkls[0]), None, where)
        storages: dict = {}
        obj, _ = _unpickle_at(data_pkl, 0, where, storages)
        for key, st in storages.items():
            record = f"{prefix}data/{key}"
            dtype = st.dtype.np if order == "little" else st.dtype.np.newbyteorder(">")
            nbytes = st.numel * dtype.itemsize
            try:
                info = zf.getinfo(record)
            except KeyError:
                raise WeightFormatError(f"{where}: storage {key!r} has no record {record!r} (file truncated?)") from None
            if info.file_size < nbytes:
                raise WeightFormatError(f"{where}: storage record {record!r} holds {info.file_size} bytes, "
                                        f"{st.numel} elements of {st.dtype.name} need {nbytes}")
            buf = _zip_read(zf, info, nbytes, where)
            if len(buf) != nbytes:
                raise WeightFormatError(f"{where}: storage record {record!r} is truncated "
                                        f"({len(buf)} of {nbytes} bytes)")
            st.array = np.frombuffer(buf, dtype=dtype)
    return obj


def _read_legacy(path, where):
    # The whole file is held in memory: each pickle is checked by _unpickle_at before it is
    # unpickled, and the storages are then zero-copy views into the same bytes.
    with open(path, "rb") as f:
        data = f.read()
    magic, pos = _unpickle_at(data, 0, where)
    if magic != MAGIC_NUMBER:
        raise WeightFormatError(f"{where}: not a PyTorch checkpoint (bad magic number)")
    version, pos = _unpickle_at(data, pos, where)
    if version != PROTOCOL_VERSION:
        raise WeightFormatError(f"{where}: unsupported legacy checkpoint protocol {_clip(repr(version))}")
    sys_info, pos = _unpickle_at(data, pos, where)
    if not isinstance(sys_info, dict):
        raise WeightFormatError(f"{where}: malformed system-info record")
    if sys_info.get("little_endian", True) is not True:
        raise WeightFormatError(f"{where}: written on a big-endian machine by an old PyTorch; not supported")
    storages: dict = {}
    obj, pos = _unpickle_at(data, pos, where, storages, legacy=True)
    keys, pos = _unpickle_at(data, pos, where)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise WeightFormatError(f"{where}: malformed storage key list")
    for key in keys:
        st = storages.get(key)
        if st is None:
            raise WeightFormatError(f"{where}: storage key {key!r} is listed but never used")
        if st.array is not None:
            raise WeightFormatError(f"{where}: storage key {key!r} is listed twice")
        if pos + 8 > len(data):
            raise WeightFormatError(f"{where}: file is truncated before storage {key!r}")
        (count,) = struct.unpack_from("<q", data, pos)
        pos += 8
        if count != st.numel:
            raise WeightFormatError(f"{where}: storage {key!r} has {count} elements on disk, "
                                    f"the pickle says {st.numel}")
        nbytes = count * st.dtype.np.itemsize
        if pos + nbytes > len(data):
            raise WeightFormatError(f"{where}: file is truncated inside storage {key!r} "
                                    f"({len(data) - pos} of {nbytes} bytes)")
        st.array = np.frombuffer(data, dtype=st.dtype.np, count=count, offset=pos)
        pos += nbytes
    unread = [k for k, st in storages.items() if st.array is None]
    if unread:
        raise WeightFormatError(f"{where}: storages {', '.join(map(repr, unread))} are used but not stored")
    return obj


def read_pth(path):
    """Load a ``torch.save`` file (zip or legacy) as plain Python: every tensor becomes a numpy array.

    Dicts keep their order; float16 stays float16 and bfloat16 widens to float32. Raises
    ``WeightFormatError`` for anything that is not a well-formed checkpoint of tensors, dicts,
    lists and numbers, including any pickle that names a global outside :data:`ALLOWED_GLOBALS`.
    """
    where = os.fspath(path)
    size = os.path.getsize(path)
    if size == 0:
        raise WeightFormatError(f"{where}: file is empty")
    kind = detect(path)
    if kind == "pth-zip":
        obj = _read_zip(path, where)
    elif kind == "pth-legacy":
        obj = _read_legacy(path, where)
    else:
        with open(path, "rb") as f:
            head = f.read(262)
        if head[257:262] == b"ustar":
            raise WeightFormatError(f"{where}: a tar-format checkpoint from PyTorch < 0.1.10; re-save it with a "
                                    f"recent PyTorch")
        raise WeightFormatError(f"{where}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        return _materialise(obj, "", where)
    except RecursionError:
        raise WeightFormatError(f"{where}: checkpoint is nested too deeply") from None


# Keys under which training scripts commonly wrap the state dict, most specific first.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "model_state")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def extract_state_dict(obj, where: str = "checkpoint") -> "OrderedDict[str, np.ndarray]":
    """Find the state dict in a loaded checkpoint and undo ``DataParallel``'s ``module.`` prefix.

    Accepts a bare state dict or one wrapped (possibly twice) under a key of :data:`WRAPPER_KEYS`,
    e.g. ``{"state_dict": ..., "epoch": 3}`` or ``{"model": ...}``.
    """
    cur = obj
    for _ in range(3):
        if _is_state_dict(cur):
            break
        if not isinstance(cur, dict):
            raise WeightFormatError(f"{where}: holds a {type(cur).__name__}, not a state dict")
        inner = next((cur[k] for k in WRAPPER_KEYS if isinstance(cur.get(k), dict)), None)
        if inner is None:
            bad = next(((k, v) for k, v in cur.items() if not isinstance(v, np.ndarray)), None)
            keys = ", ".join(map(repr, list(cur)[:8])) + (", ..." if len(cur) > 8 else "")
            raise WeightFormatError(f"{where}: no state dict found: entry {_clip(repr(bad[0]))} is a {type(bad[1]).__name__}, "
                                    f"not a tensor, and none of {', '.join(WRAPPER_KEYS)} holds one "
                                    f"(top-level keys: {keys})")
        cur = inner
    else:
        raise WeightFormatError(f"{where}: no state dict found within three levels of wrapping")
    sd = OrderedDict(cur)
    if sd and all(k.startswith("module.") for k in sd):
        sd = OrderedDict((k[len("module."):], v) for k, v in sd.items())
    return sd


def load_pth(path) -> "OrderedDict[str, np.ndarray]":
    """The state dict of a ``torch.save`` file as ``{name: numpy array}`` (see :func:`read_pth`)."""
    return extract_state_dict(read_pth(path), os.fspath(path))
