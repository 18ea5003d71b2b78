"""The op seam itself: the table a backend fills, how ``backends.load`` checks it, the defaults of
the optional entries, what the CPU backends refuse, and that nothing above the seam knows a
backend by name.

A backend is its table and nothing else (``minicnn/ops.py``): every op of ``OP_NAMES``, the array
functions of ``ARRAY_FUNCS`` and any of the ``OPTIONAL`` entries, whose defaults live in
``minicnn/backends/_defaults.py``. What each op computes is the conformance suite's business
(``tests/test_conformance.py``); here it is the table's shape and the rules around it.
"""
from __future__ import annotations

import ast
import inspect
import sys
import types

import numpy as np
import pytest

import minicnn as mc
from minicnn import backends, inference, nn
from minicnn.backends import _defaults
from minicnn.models.resnet import ResNet
from minicnn.ops import ARRAY_FUNCS, OP_NAMES, OPTIONAL, TABLE

from conftest import backend_params

REF = backends.load("numpy")


def _module(table, **attrs):
    """A stand-in for a backend package: a module whose ``OPS`` is ``table``."""
    mod = types.ModuleType("fake_backend")
    mod.OPS = table
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


def _numpy_table(drop=(), **extra):
    table = {k: v for k, v in REF.module.OPS.items() if k not in drop}
    table.update(extra)
    return table


# -- the table ---------------------------------------------------------------------------------------


def test_the_declared_table_is_ops_then_array_functions_then_optional_entries():
    assert TABLE == OP_NAMES + ARRAY_FUNCS + OPTIONAL
    assert len(set(TABLE)) == len(TABLE), "a name is declared twice"
    assert set(_defaults.DEFAULTS) == set(OPTIONAL), "every optional entry has a default, and only those"
    import minicnn.ops as ops_module

    for name in OP_NAMES:  # every op has a dispatcher and a line in the contract
        assert callable(getattr(ops_module, name)), name
        assert f"{name}(" in ops_module.__doc__, f"{name} has no contract line in minicnn/ops.py"


@pytest.mark.parametrize("name", backend_params())
def test_every_backend_loads_with_the_whole_table(name):
    """Each declared backend loads here (CuPy may be skipped only where it or a GPU is absent) and
    its table holds every declared entry, each callable and readable as an attribute."""
    be = backends.load(name)
    assert isinstance(be, backends.Backend) and be.NAME == name
    assert set(be.OPS) == set(TABLE)
    for entry in TABLE:
        assert callable(be.OPS[entry]), entry
        assert getattr(be, entry) is be.OPS[entry]
    with pytest.raises(AttributeError, match=f"backend '{name}' has no table entry 'gelu_forward_v0'"):
        be.gelu_forward_v0  # noqa: B018
    assert backends.load(name) is be  # loaded once


def test_unknown_backend_name_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'tpu'; choose one of numpy, numba, cupy"):
        backends.load("tpu")


@pytest.mark.parametrize("drop", ["relu_backward", "conv2d_fused_forward", "empty", "to_numpy"])
def test_a_table_lacking_an_entry_is_refused_by_name(drop):
    with pytest.raises(RuntimeError, match=f"backend 'fake' lacks table entries: {drop}$"):
        backends.make_backend("fake", _module(_numpy_table(drop=(drop,))))
    with pytest.raises(RuntimeError, match="lacks table entries: mse_backward, is_native$"):
        backends.make_backend("fake", _module(_numpy_table(drop=("is_native", "mse_backward"))))


def test_a_table_with_an_undeclared_entry_is_refused_by_name():
    table = _numpy_table(gelu_forward_v0=lambda x: x, fast_path=lambda x: x)
    with pytest.raises(RuntimeError, match="backend 'fake' has table entries minicnn.ops does not declare: "
                                           "fast_path, gelu_forward_v0$"):
        backends.make_backend("fake", _module(table))


def test_a_module_without_a_table_is_refused():
    with pytest.raises(RuntimeError, match="backend 'fake' is not implemented in this version"):
        backends.make_backend("fake", types.ModuleType("fake"))
    with pytest.raises(RuntimeError, match="no OPS table"):
        backends.make_backend("fake", _module(list(REF.OPS)))


def test_load_checks_the_table_and_the_backends_own_reason(monkeypatch):
    """``load`` refuses, by name, a backend package whose table lacks an op, and one that says it
    cannot run here (``unusable_reason``); neither is kept."""
    monkeypatch.setattr(backends, "_loaded", {k: v for k, v in backends._loaded.items() if k != "cupy"})
    monkeypatch.setitem(sys.modules, "minicnn.backends.cupy", _module(_numpy_table(drop=("tanh_forward",))))
    with pytest.raises(RuntimeError, match="backend 'cupy' lacks table entries: tanh_forward"):
        backends.load("cupy")
    monkeypatch.setitem(sys.modules, "minicnn.backends.cupy",
                        _module(_numpy_table(), unusable_reason=lambda: "no CUDA device"))
    with pytest.raises(RuntimeError, match="backend 'cupy' is not usable here: no CUDA device"):
        backends.load("cupy")
    assert "cupy" not in backends._loaded
    monkeypatch.setitem(sys.modules, "minicnn.backends.cupy", _module(_numpy_table(), unusable_reason=lambda: None))
    assert set(backends.load("cupy").OPS) == set(TABLE)


# -- the optional entries and their defaults ---------------------------------------------------------


def test_missing_optional_entries_get_the_defaults():
    bare = backends.make_backend("bare", _module(_numpy_table(drop=OPTIONAL)))
    for entry in OPTIONAL:
        assert bare.OPS[entry] is _defaults.DEFAULTS[entry], entry
    assert bare.threads() == 1
    assert bare.conv_variants((1, 3, 8, 8), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1) == {}
    assert bare.release_unpicked(np.zeros((4, 3, 3, 3), np.float32), {"op"}) == 0
    mc.manual_seed(5)
    assert bare.generator() is mc.random.get_rng()
    assert bare.generator().random() == np.random.default_rng(5).random()
    # the reference fills none of them; the numba backend overrides all but the generator and
    # graph capture (a CPU backend has no device work to record)
    assert all(REF.OPS[e] is _defaults.DEFAULTS[e] for e in OPTIONAL)
    numba_be = backends.load("numba")
    assert [e for e in OPTIONAL if numba_be.OPS[e] is _defaults.DEFAULTS[e]] == ["generator", "capture_graph", "synchronize", "tuning_key"]
    with mc.backend("numpy"), pytest.raises(RuntimeError, match=r"^backend 'numpy' cannot capture a graph: "):
        REF.capture_graph(lambda x: x, np.zeros(3, np.float32))
    # a backend's own entry wins over the default
    own = lambda: 7  # noqa: E731
    assert backends.make_backend("own", _module(_numpy_table(threads=own))).threads is own


@pytest.mark.parametrize("kernel,stride,padding,relu,pool", [
    (7, 2, 3, True, (3, 2, 1)),    # a ResNet stem
    (3, 1, 1, False, (2, 2, 0)),
    (1, 1, 0, True, (3, 1, 1)),
])
@pytest.mark.parametrize("bias", [True, False])
def test_default_conv_maxpool_equals_conv_then_pool_on_numpy(kernel, stride, padding, relu, pool, bias):
    rng = np.random.default_rng(kernel * 10 + stride)
    x = rng.standard_normal((2, 3, 15, 13)).astype(np.float32)
    x[1, 2, 5, 6] = np.nan  # propagates through both ways
    w = rng.standard_normal((4, 3, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32) if bias else None
    args = (x, w, b, (stride,) * 2, (padding,) * 2, (1, 1), 1)
    pool_args = ((pool[0],) * 2, (pool[1],) * 2, (pool[2],) * 2, (1, 1))
    z = REF.OPS["conv2d_forward"](*args)
    if relu:
        z = REF.OPS["relu_forward"](z)
    want, _ = REF.OPS["maxpool2d_forward"](z, *pool_args)
    with mc.backend("numpy"):
        got = REF.conv2d_maxpool_fused(*args, relu, *pool_args)
        out = np.full(want.shape, -7.0, np.float32)
        assert REF.conv2d_maxpool_fused(*args, relu, *pool_args, out=out) is out
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.array_equal(got, want, equal_nan=True) and np.isnan(got[1]).any()
    assert np.array_equal(out, want, equal_nan=True)


def _small_resnet():
    mc.manual_seed(4)
    model = ResNet(num_classes=10, width=8)
    rng = np.random.default_rng(4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = rng.uniform(0.5, 1.5, c).astype(np.float32)
            m.bias.data = (rng.standard_normal(c) * 0.1).astype(np.float32)
            m._set_buffer("running_mean", (rng.standard_normal(c) * 0.1).astype(np.float32))
            m._set_buffer("running_var", rng.uniform(0.5, 1.5, c).astype(np.float32))
    return model.eval()


def test_compile_inference_on_a_backend_without_optional_entries(monkeypatch):
    """A compiled ResNet runs on a backend whose table is the reference's ops and array functions
    alone, through the defaults (counted here), and gives the eval model's logits."""
    model = _small_resnet()
    x = np.random.default_rng(5).standard_normal((2, 3, 40, 36)).astype(np.float32)
    with mc.backend("numpy"), mc.no_grad():
        want = model(x)
    bare = backends.make_backend("bare", _module(_numpy_table(drop=OPTIONAL)))
    calls = {e: 0 for e in OPTIONAL}

    def counted(entry, fn):
        def f(*a, **k):
            calls[entry] += 1
            return fn(*a, **k)
        return f

    for e in OPTIONAL:  # the defaults, counted
        assert bare.OPS[e] is _defaults.DEFAULTS[e]
        bare.OPS[e] = counted(e, bare.OPS[e])
    fast = inference.compile_inference(model)
    monkeypatch.setattr(backends, "current", lambda: bare)
    got = fast(x)
    again = fast(x)
    assert got.shape == want.shape == (2, 10) and got.dtype == np.float32
    rel = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    assert rel < 1e-5, f"compiled logits off by {rel:.2e} relative"
    assert np.array_equal(got, again)
    # the stem went through the default fused conv + pool, every conv asked for variants (none
    # offered: the op is kept), the autotuner keyed its picks on the default thread count, and on
    # one thread no call split its batch (threads asked twice per call: the split, then the pass)
    assert calls["conv2d_maxpool_fused"] == 2
    assert calls["conv_variants"] == len(fast.convs()) - 1  # the stem is not autotuned
    assert calls["threads"] == 4 and calls["map_one_thread"] == 0
    assert calls["release_unpicked"] == calls["conv_variants"] and calls["generator"] == 0
    assert all(v == "op" for picks in fast.variants().values() for v in picks.values())


# -- device arrays and the CPU backends ----------------------------------------------------------------


class _DeviceArray:
    """Stands for a GPU array: it carries ``__cuda_array_interface__`` (no device behind it) and
    keeps its values on the host for the fake GPU backend below."""

    def __init__(self, host):
        self.host = np.array(host)
        self.shape, self.dtype = self.host.shape, self.host.dtype

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (0, False), "version": 3}


def _fake_gpu():
    return backends.make_backend("fakegpu", _module(_numpy_table(
        asarray=lambda a: a if isinstance(a, _DeviceArray) else _DeviceArray(a),
        is_native=lambda a: isinstance(a, _DeviceArray),
        to_numpy=lambda a: a.host.copy(),
        empty=lambda shape, dtype: _DeviceArray(np.empty(shape, dtype)))))


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_cpu_backends_refuse_a_device_array(name):
    be = backends.load(name)
    dev = _DeviceArray(np.ones((2, 3), np.float32))
    msg = (rf"backend '{name}' computes on host memory but got a {__name__}\._DeviceArray on a GPU: "
           r"bring it to the host with minicnn\.to_numpy\(x\), or select the 'cupy' backend")
    with pytest.raises(TypeError, match=msg):
        be.asarray(dev)
    with pytest.raises(TypeError, match=msg):
        be.to_numpy(dev)
    with mc.backend(name), pytest.raises(TypeError, match=msg):  # a layer's input is not moved either
        nn.ReLU()(dev)


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_move_still_brings_parameters_to_the_host(name, monkeypatch):
    """Parameters left on a device (by an earlier run on a GPU backend) move to the backend in
    force the first time their layer runs there: ``backends.move`` asks the backend that owns them."""
    monkeypatch.setitem(backends._loaded, "fakegpu", _fake_gpu())
    be = backends.load(name)
    rng = np.random.default_rng(6)
    w, b = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(2).astype(np.float32)
    moved = backends.move(_DeviceArray(w), be)
    assert type(moved) is np.ndarray and np.array_equal(moved, w)
    assert backends.to_numpy(_DeviceArray(w)).tolist() == w.tolist()
    host = np.ones(3, np.float32)
    assert backends.move(host, be) is host
    layer = nn.Linear(3, 2)
    layer.weight.data, layer.bias.data = _DeviceArray(w), _DeviceArray(b)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    with mc.backend(name), mc.no_grad():
        y = layer(x)
    assert type(layer.weight.data) is np.ndarray and type(layer.bias.data) is np.ndarray
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-6, atol=1e-6)


# -- nothing above the seam knows a backend ------------------------------------------------------------


def _past_the_table(source: str) -> list:
    """What in ``source`` reaches past the op table: a backend's name outside docstrings and
    comments, an import from a backend package, ``inspect``, getattr/hasattr on a backend."""
    tree = ast.parse(source)
    names = set(backends.AVAILABLE)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words = set(node.value.lower().replace("'", " ").replace('"', " ").split())
            found += [f"the string {node.value!r}" for n in names if n in words]
        elif isinstance(node, ast.Attribute) and node.attr in names:
            found.append(f"attribute .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and names & set((node.module or "").split(".")):
            found.append(f"import from {node.module}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and "inspect" in (
                [a.name for a in node.names] + [getattr(node, "module", None)]):
            found.append("import inspect")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr") and node.args):
            target = ast.unparse(node.args[0])
            if target.split(".")[-1] in ("be", "backend", "backends", "mod", "module"):
                found.append(f"{node.func.id}({target}, ...)")
    return sorted(set(found))


def test_the_source_check_finds_what_inference_used_to_do():
    """The probes inference.py made before the table declared its optional entries are found."""
    old = """
import inspect
from .backends.numpy.conv import conv2d_forward
def pick(be, x):
    \"\"\"Runs on 'cupy' too.\"\"\"
    fused = getattr(be, "conv2d_maxpool_fused", None)  # numba only
    if be.NAME == "cupy" or hasattr(ctx.be, "conv_variants"):
        return be.numba
"""
    assert _past_the_table(old) == [
        "attribute .numba", "getattr(be, ...)", "hasattr(ctx.be, ...)", "import from backends.numpy.conv",
        "import inspect", "the string 'cupy'"]
    assert _past_the_table('"""Works on numba and cupy."""\nx = getattr(model, "arch", None)  # numba\n') == []


def test_inference_uses_only_the_table():
    """inference.py names no backend and probes none: everything it asks of a backend goes through
    the table (``be.OPS[...]``, ``be.empty``, the optional entries)."""
    found = _past_the_table(inspect.getsource(inference))
    assert not found, f"inference.py reaches past the table: {', '.join(found)}"
