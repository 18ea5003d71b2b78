"""The cupy backend's kernels on the host: a CUDA emulator for tests and teaching.

:class:`EmuRuntime` fills the same :class:`~._runtime.Runtime` interface as ``CupyRuntime``,
with numpy arrays: ``rt.kernel("pool.cu", "maxpool2d_forward_f32")`` compiles ``kernels/pool.cu``
for the host with the system C++ compiler against ``kernels/cuda_emu.h`` and returns a callable
with CuPy's ``RawKernel`` convention, ``k(grid, block, args, shared_mem=0)``. A launch runs its
blocks one after another on the calling thread; the threads of a block run as coroutines in
order of their linear index, switching at ``__syncthreads()`` and at warp shuffles, so static
``__shared__`` arrays are shared by the block and a barrier only some threads reach is reported
as an error instead of hanging. ``cuda_emu.h`` lists what is emulated and what is not.

Its ``xp`` is numpy with one change: ``xp.empty``/``xp.empty_like`` return arrays filled with
NaN (integers: 0xa5 bytes), as uninitialised GPU memory holds garbage.

What a pass on the emulator proves: the kernel's indexing and arithmetic, its launch geometry and
its argument types (each launch checks every argument against the C parameter: dtype, C-order,
numpy scalar type). What it does not: speed, coalescing, occupancy, or that a missing
``__syncthreads`` would not race on a GPU; and nothing about compiling for the GPU, which
``_compile_check`` does with NVRTC (see docs/gpu.md).

Compiled files are cached on disk, keyed by a hash of the source, the headers, the compiler and
its flags: in ``$MINICNN_EMU_CACHE`` when set, else ``$XDG_CACHE_HOME/minicnn/cuda-emu``, else
``~/.cache/minicnn/cuda-emu``. The compiler is ``$CXX`` when set, else ``g++``, else ``c++``
(C++20: ``std::atomic_ref``).

A kernel whose ``extern "C"`` line follows a line ``// emulator: skip`` (inline PTX, tensor-core
code) is left out of the host build; asking for it raises ``NotImplementedError``.

Example::

    from minicnn.backends.cupy._emulator import EmuRuntime
    rt = EmuRuntime()
    k = rt.kernel("activation.cu", "relu_forward_f32")
    k((blocks,), (256,), (x, y, np.int64(x.size)))

``emulated_backend()`` is the whole cupy backend on this runtime, named ``"cupy-emu"``.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import types

import numpy as np

from ._runtime import KERNEL_DIR, Runtime

EMU_HEADER = os.path.join(KERNEL_DIR, "cuda_emu.h")

CXX_FLAGS = ("-std=c++20", "-O2", "-fPIC", "-shared", "-pthread", "-fvisibility=hidden", "-DMINICNN_EMULATE")

SKIP_MARKER = "// emulator: skip"

# the code of the emulator's generated part; bump when the table or launch protocol changes
_PROTOCOL = "1"

_KERNEL_RE = re.compile(r'extern\s*"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\(')

MAX_THREADS_PER_BLOCK = 1024
MAX_DYNAMIC_SHARED = 48 * 1024  # what a launch may ask without raising the kernel's attribute
_MAX_GRID = (2**31 - 1, 65535, 65535)
_MAX_BLOCK = (1024, 1024, 64)

# the C type named in an error message, per dtype code of cuda_emu.h's type_code
_C_NAMES = {"float32": "float", "float64": "double", "bool": "bool", "int8": "signed char", "uint8": "unsigned char",
            "int16": "short", "uint16": "unsigned short", "int32": "int", "uint32": "unsigned int",
            "int64": "long long", "uint64": "unsigned long long"}


def compiler() -> str | None:
    """The C++ compiler the emulator uses (``$CXX``, else ``g++``, else ``c++``), or None."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx)
    return shutil.which("g++") or shutil.which("c++")


def emulator_absent() -> str | None:
    """Why the emulator cannot run here (no C++ compiler), else None."""
    if compiler() is None:
        return "no C++ compiler (set CXX, or install g++) to build the CUDA emulator"
    return None


def cache_dir() -> str:
    """Where compiled kernel files are kept (see the module docstring)."""
    env = os.environ.get("MINICNN_EMU_CACHE")
    if env:
        return os.path.expanduser(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = os.path.expanduser(xdg) if xdg else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "minicnn", "cuda-emu")


@functools.lru_cache(maxsize=None)
def _compiler_id(cxx: str) -> str:
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    return cxx + "\n" + out.stdout.splitlines()[0] if out.stdout else cxx


def _kernel_extent(src: str, start: int) -> int:
    """The index just past the body of the function whose declaration starts at ``start``
    (braces in comments, string and character literals do not count)."""
    i, depth, n = start, 0, len(src)
    seen_body = False
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            i = src.find("\n", i)
            i = n if i < 0 else i
            continue
        if src.startswith("/*", i):
            j = src.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            i = j + 1
            continue
        if c == "{":
            depth += 1
            seen_body = True
        elif c == "}":
            depth -= 1
            if seen_body and depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced braces after an '// emulator: skip' kernel")


def strip_skipped(src: str) -> tuple[str, list[str]]:
    """``src`` with every kernel marked ``// emulator: skip`` blanked out (newlines kept, so the
    compiler's line numbers still match the file), and the names of those kernels."""
    skipped = []
    lines = src.split("\n")
    offsets = np.cumsum([0] + [len(ln) + 1 for ln in lines]).tolist()
    cuts = []
    for i, ln in enumerate(lines[:-1]):
        if ln.strip() != SKIP_MARKER:
            continue
        start = offsets[i + 1]
        m = _KERNEL_RE.match(src, start + len(lines[i + 1]) - len(lines[i + 1].lstrip()))
        if m is None:
            raise ValueError(f"line {i + 1}: '{SKIP_MARKER}' must be right above an extern \"C\" __global__ line")
        skipped.append(m.group(1))
        cuts.append((start, _kernel_extent(src, start)))
    out = src
    for a, b in reversed(cuts):
        out = out[:a] + re.sub(r"[^\n]", " ", out[a:b]) + out[b:]
    return out, skipped


class EmuKernel:
    """One compiled kernel, callable as CuPy's ``RawKernel``: ``k(grid, block, args, shared_mem=0)``.

    ``grid`` and ``block`` are ints or 1-3 tuples; ``args`` a tuple with one entry per kernel
    parameter: a C-contiguous numpy array of the pointer's element type (or None, a null pointer)
    or a numpy scalar of the parameter's type (``np.int32`` for ``int``, ``np.int64`` for
    ``long long``, ``np.uint64``, ``np.float32``, ``np.float64``). Anything else raises before the
    launch: a mismatch would read garbage on a GPU.
    """

    def __init__(self, lib, index: int, name: str, file: str, params: list[str]):
        self._lib = lib
        self._index = index
        self.name = name
        self.file = file
        self.params = params

    def __repr__(self):
        return f"<emulated kernel {self.name}({', '.join(_c_param(p) for p in self.params)}) of {self.file}>"

    def _where(self) -> str:
        return f"kernel {self.name} ({self.file})"

    def _dims(self, v, what: str, limits) -> tuple:
        t = (v,) if isinstance(v, (int, np.integer)) else v
        if not isinstance(t, tuple) or not 1 <= len(t) <= 3 or not all(isinstance(d, (int, np.integer)) for d in t):
            raise TypeError(f"{self._where()}: {what} must be an int or a tuple of 1 to 3 ints, got {v!r}")
        t = tuple(int(d) for d in t) + (1,) * (3 - len(t))
        if min(t) < 1:
            raise ValueError(f"{self._where()}: {what} {v!r} has a dimension below 1 (CUDA refuses an empty launch; "
                             "skip the launch when there is no work)")
        for d, lim, axis in zip(t, limits, "xyz"):
            if d > lim:
                raise ValueError(f"{self._where()}: {what}.{axis} = {d} exceeds CUDA's limit {lim}")
        return t

    def __call__(self, grid, block, args, *, shared_mem=0):
        g = self._dims(grid, "grid", _MAX_GRID)
        b = self._dims(block, "block", _MAX_BLOCK)
        if b[0] * b[1] * b[2] > MAX_THREADS_PER_BLOCK:
            raise ValueError(f"{self._where()}: block {block!r} has {b[0] * b[1] * b[2]} threads, "
                             f"more than {MAX_THREADS_PER_BLOCK}")
        if not isinstance(shared_mem, (int, np.integer)) or not 0 <= shared_mem <= MAX_DYNAMIC_SHARED:
            raise ValueError(f"{self._where()}: shared_mem must be an int in [0, {MAX_DYNAMIC_SHARED}], "
                             f"got {shared_mem!r}")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"{self._where()}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.params):
            raise TypeError(f"{self._where()} takes {len(self.params)} arguments "
                            f"({', '.join(_c_param(p) for p in self.params)}), got {len(args)}")
        keep = []  # what the pointers in `slots` point into, alive until the launch returns
        slots = (ctypes.c_void_p * max(1, len(args)))()
        for i, (a, p) in enumerate(zip(args, self.params)):
            slot = self._marshal(i, a, p)
            keep.append(slot)
            slots[i] = ctypes.addressof(slot) if isinstance(slot, ctypes.c_void_p) else slot.ctypes.data
        err = ctypes.create_string_buffer(4096)
        grid_c = (ctypes.c_uint * 3)(*g)
        block_c = (ctypes.c_uint * 3)(*b)
        rc = self._lib.minicnn_emu_launch(self._index, grid_c, block_c, int(shared_mem), slots, err, len(err))
        if rc != 0:
            raise RuntimeError(f"{self._where()}: {err.value.decode(errors='replace')}")

    def _marshal(self, i: int, a, p: str):
        """The storage whose address goes into the launch's argument array for argument ``i``."""
        what = f"{self._where()}: argument {i} ({_c_param(p)})"
        if p[0] in "pP":
            dtype = np.dtype(p[1:])
            if a is None:
                return ctypes.c_void_p(None)
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{what} must be a numpy array, got {type(a).__module__}.{type(a).__name__}")
            if a.dtype != dtype:
                raise TypeError(f"{what} must be a {dtype.name} array, got {a.dtype.name}")
            if not a.flags.c_contiguous:
                raise ValueError(f"{what} must be C-contiguous (np.ascontiguousarray), got strides {a.strides}")
            if p[0] == "p" and not a.flags.writeable:
                raise ValueError(f"{what}: the kernel may write through this pointer, but the array is read-only")
            return ctypes.c_void_p(a.ctypes.data)
        dtype = np.dtype(p)
        if not isinstance(a, np.generic) or a.dtype != dtype:
            got = f"a {a.dtype.name} scalar" if isinstance(a, np.generic) else f"a {type(a).__name__}"
            raise TypeError(f"{what} must be np.{dtype.name}(...), got {got}")
        return np.array(a, dtype=dtype)


def _c_param(p: str) -> str:
    if p[0] == "P":
        return f"const {_C_NAMES[p[1:]]}*"
    if p[0] == "p":
        return f"{_C_NAMES[p[1:]]}*"
    return _C_NAMES[p]


def _poison(a: np.ndarray) -> np.ndarray:
    """Fill ``a`` as memory nobody wrote: NaN for floating dtypes, 0xa5 bytes for the others."""
    if a.dtype.kind in "fc":
        a.fill(np.nan)
    elif a.size:
        a.reshape(-1, order="A").view(np.uint8).fill(0xA5)  # a view: np.empty is C- or F-contiguous
    return a


class _EmulatedNumpy(types.ModuleType):
    """numpy, except that ``empty`` and ``empty_like`` return poisoned arrays (:func:`_poison`).

    On a GPU ``cupy.empty`` hands back whatever the memory pool held; numpy often hands back
    zeroed pages. So an op that leaves part of an output unwritten would pass on the host where
    the expected value is zero; with the poison it shows as NaN against the reference.
    """

    def __init__(self):
        super().__init__("numpy", np.__doc__)

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float, order="C"):
        return _poison(np.empty(shape, dtype=dtype, order=order))

    @staticmethod
    def empty_like(prototype, dtype=None, order="K", subok=True, shape=None):
        return _poison(np.empty_like(prototype, dtype=dtype, order=order, subok=subok, shape=shape))


class EmuRuntime(Runtime):
    """numpy arrays and host-compiled kernels; see the module docstring.

    ``xp`` is numpy, except that ``xp.empty`` and ``xp.empty_like`` (and so ``empty``) fill the
    new array with NaN (or 0xa5 bytes for integer dtypes), as uninitialised GPU memory would
    hold garbage: an output element no kernel writes shows against the reference.

    Args:
        kernel_dirs: where ``kernel(file, ...)`` looks for ``file``, first match wins (default:
            the backend's ``kernels/``); the backend's ``kernels/`` is always on the include path.
    """

    name = "cupy-emu"
    xp = _EmulatedNumpy()

    def __init__(self, kernel_dirs=None):
        self.kernel_dirs = [os.path.abspath(d) for d in (kernel_dirs or [KERNEL_DIR])]
        self._files: dict = {}
        self._lock = threading.Lock()

    # -- kernels ---------------------------------------------------------------------------------

    def kernel(self, file: str, name: str):
        kernels, skipped = self._file(file)
        if name in skipped:
            raise NotImplementedError(f"kernel {name} ({file}) is marked '{SKIP_MARKER}': it runs on a GPU only")
        k = kernels.get(name)
        if k is None:
            raise ValueError(f"{file} has no kernel {name!r}; it has: {', '.join(sorted(kernels)) or 'none'}")
        return k

    def _path(self, file: str) -> str:
        for d in self.kernel_dirs:
            p = os.path.join(d, file)
            if os.path.isfile(p):
                return p
        raise FileNotFoundError(f"no kernel file {file!r} in {', '.join(self.kernel_dirs)}")

    def _file(self, file: str):
        got = self._files.get(file)
        if got is None:
            with self._lock:
                got = self._files.get(file)
                if got is None:
                    got = self._files[file] = self._build(file)
        return got

    def _include_dirs(self, path: str) -> list[str]:
        dirs = [os.path.dirname(path)]
        return dirs + ([KERNEL_DIR] if KERNEL_DIR not in dirs else [])

    def _build(self, file: str):
        path = self._path(file)
        with open(path, encoding="utf-8") as f:
            src, skipped = strip_skipped(f.read())
        cxx = compiler()
        if cxx is None:
            raise RuntimeError(emulator_absent())
        incs = self._include_dirs(path)
        h = hashlib.sha256()
        for part in (_PROTOCOL, _compiler_id(cxx), " ".join(CXX_FLAGS), path, src):
            h.update(part.encode() + b"\0")
        for d in incs:  # every header a file may include
            for hname in sorted(os.listdir(d)):
                if hname.endswith((".h", ".cuh")):
                    with open(os.path.join(d, hname), "rb") as f:
                        h.update(hname.encode() + b"\0" + f.read() + b"\0")
        out = os.path.join(cache_dir(), f"{os.path.splitext(file)[0]}-{h.hexdigest()[:20]}.so")
        if not os.path.exists(out):
            self._compile(cxx, path, src, incs, out)
        lib = ctypes.CDLL(out)
        lib.minicnn_emu_count.restype = ctypes.c_int
        lib.minicnn_emu_name.restype = ctypes.c_char_p
        lib.minicnn_emu_name.argtypes = [ctypes.c_int]
        lib.minicnn_emu_signature.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        lib.minicnn_emu_launch.restype = ctypes.c_int
        lib.minicnn_emu_launch.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                           ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        kernels = {}
        for i in range(lib.minicnn_emu_count()):
            name = lib.minicnn_emu_name(i).decode()
            buf = ctypes.create_string_buffer(4096)
            lib.minicnn_emu_signature(i, buf, len(buf))
            sig = buf.value.decode()
            kernels[name] = EmuKernel(lib, i, name, file, sig.split(",") if sig else [])
        return kernels, set(skipped)

    def _compile(self, cxx: str, path: str, src: str, incs: list[str], out: str) -> None:
        inc_flags = [f"-I{d}" for d in incs]
        pre = subprocess.run([cxx, "-E", "-P", "-x", "c++", "-std=c++20", "-DMINICNN_EMULATE", *inc_flags, "-"],
                             input=src, capture_output=True, text=True, check=False)
        if pre.returncode != 0:
            raise RuntimeError(f"emulator: preprocessing {path} failed:\n{_tail(pre.stderr)}")
        names = list(dict.fromkeys(_KERNEL_RE.findall(pre.stdout)))
        table = "".join(f"MINICNN_EMU_ENTRY({n}) " for n in names)
        text = (f'#line 1 "{path}"\n{src}\n#line 1 "<emulator kernel table>"\n'
                + (f"MINICNN_EMU_TABLE({table})\n" if names else _EMPTY_TABLE))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with tempfile.TemporaryDirectory(dir=os.path.dirname(out)) as tmp:
            cpp = os.path.join(tmp, "kernels.cpp")
            with open(cpp, "w", encoding="utf-8") as f:
                f.write(text)
            tmp_out = os.path.join(tmp, "kernels.so")
            cmd = [cxx, *CXX_FLAGS, "-include", EMU_HEADER, *inc_flags, "-x", "c++", cpp, "-o", tmp_out]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"emulator: compiling {path} for the host failed:\n{_tail(res.stderr)}")
            os.replace(tmp_out, out)  # atomic: a process building the same file at once loses nothing

    # -- arrays ----------------------------------------------------------------------------------

    def asarray(self, a):
        from .. import refuse_device_array

        refuse_device_array(a, self.name)
        return np.asarray(a)

    def is_native(self, a) -> bool:
        return isinstance(a, np.ndarray)

    def to_numpy(self, a):
        return np.asarray(a)

    def generator(self):
        from ...random import backend_generator

        return backend_generator(self.name, np.random.default_rng)


_EMPTY_TABLE = """
MINICNN_EMU_EXPORT int minicnn_emu_count() { return 0; }
MINICNN_EMU_EXPORT const char* minicnn_emu_name(int) { return ""; }
MINICNN_EMU_EXPORT int minicnn_emu_signature(int, char*, size_t) { return 0; }
MINICNN_EMU_EXPORT int minicnn_emu_launch(int, const unsigned*, const unsigned*, size_t, void**, char*, size_t) {
    return 1;
}
"""


def _tail(log: str, lines: int = 80) -> str:
    parts = log.strip().splitlines()
    return "\n".join(parts[:lines] + ([f"... ({len(parts) - lines} more lines)"] if len(parts) > lines else []))


@functools.lru_cache(maxsize=None)
def emulated_runtime() -> EmuRuntime:
    """The one :class:`EmuRuntime` of the ``cupy-emu`` backend."""
    return EmuRuntime()


def emulated_table() -> dict:
    """The cupy backend's op table bound to :func:`emulated_runtime` (whatever ops it has)."""
    from . import OP_MODULES
    from ._runtime import build_table

    return build_table(emulated_runtime(), OP_MODULES)


def emulated_backend():
    """The cupy backend on the emulator: a :class:`minicnn.backends.Backend` named ``"cupy-emu"``.

    ``minicnn.backends.register("cupy-emu", emulated_module())`` makes it selectable by
    name (``with minicnn.backend("cupy-emu"):``). Raises RuntimeError when the table is incomplete.
    """
    from .. import make_backend

    return make_backend("cupy-emu", emulated_module())


def emulated_module():
    """A module-like object (``NAME``, ``OPS``, ``unusable_reason``) for ``backends.register``."""
    return types.SimpleNamespace(NAME="cupy-emu", OPS=emulated_table(), unusable_reason=emulator_absent)
