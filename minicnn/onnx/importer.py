"""Read an ONNX file into an ``OnnxModel`` built from minicnn layers.

    model = minicnn.onnx.load("resnet18.onnx")     # a path, bytes, or a binary file object
    logits = model(x)                             # any backend
    dx = model.backward(dlogits)                  # gradients, as for any minicnn module

What is checked before anything is built, so that a bad file fails at load time with one line:
the bytes parse as an ONNX ``ModelProto`` with a graph and a default-domain opset from 7 to the
newest the installed ``onnx`` knows; every initializer has a supported data type, non-negative
dimensions, at most 2^31 elements, and exactly the bytes its dimensions need; external data
names a file inside the model's own folder and a range inside that file; every node's operator
and attributes are ones this package converts (``convert.CONVERTERS``, ``convert.ATTRS``), in the
default domain; the graph has no cycle. Nodes whose inputs are all constants (the shape
arithmetic exporters emit) are evaluated here and become constants.
"""
from __future__ import annotations

import os
from collections import Counter

import numpy as np

from ..errors import MinicnnError
from . import _require_onnx
from .convert import ATTRS, CONVERTERS
from .graph import OnnxModel, Step
from .host import HOST_OPS, TENSOR_DTYPES

__all__ = ["load", "OnnxImportError", "MIN_OPSET"]

MIN_OPSET = 7
MAX_ELEMENTS = 1 << 31
_FLOAT_INPUTS = {1: np.float32, 10: np.float16, 11: np.float64}


class OnnxImportError(MinicnnError, ValueError):
    """An ONNX file is malformed, hostile, or uses something this package does not convert."""


def _type_name(onnx, code):
    try:
        return onnx.TensorProto.DataType.Name(code)
    except ValueError:
        return str(code)


def _read_bytes(f):
    """(bytes, folder for external data or None)."""
    if isinstance(f, (bytes, bytearray, memoryview)):
        return bytes(f), None
    if isinstance(f, (str, os.PathLike)):
        path = os.fspath(f)
        if not os.path.isfile(path):
            raise OnnxImportError(f"no such ONNX file: {path}")
        with open(path, "rb") as fh:
            return fh.read(), os.path.dirname(os.path.abspath(path))
    if hasattr(f, "read"):
        data = f.read()
        if not isinstance(data, (bytes, bytearray)):
            raise OnnxImportError("minicnn.onnx.load: the file object must be opened in binary mode")
        name = getattr(f, "name", None)
        return bytes(data), (os.path.dirname(os.path.abspath(name)) if isinstance(name, str) else None)
    raise TypeError(f"minicnn.onnx.load takes a path, bytes or a binary file object, got {type(f).__name__}")


def _external_bytes(t, base_dir, nbytes, where):
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location")
    if not loc:
        raise OnnxImportError(f"{where}: external data without a location")
    if base_dir is None:
        raise OnnxImportError(f"{where}: external data ({loc!r}) needs the model to be loaded from a file path")
    if os.path.isabs(loc) or "\x00" in loc:
        raise OnnxImportError(f"{where}: external data location {loc!r} must be a relative path")
    root = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(root, loc))
    if os.path.commonpath([root, path]) != root:
        raise OnnxImportError(f"{where}: external data location {loc!r} points outside the model's folder")
    if not os.path.isfile(path):
        raise OnnxImportError(f"{where}: external data file {loc!r} does not exist")
    try:
        offset = int(info.get("offset", 0))
        length = int(info.get("length", nbytes))
    except ValueError:
        raise OnnxImportError(f"{where}: external data offset/length are not integers") from None
    size = os.path.getsize(path)
    if offset < 0 or length != nbytes or offset + length > size:
        raise OnnxImportError(f"{where}: external data range (offset {offset}, length {length}) does not fit "
                              f"{loc!r} ({size} bytes) and the {nbytes} bytes the dimensions need")
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def tensor_to_array(onnx, t, base_dir, where):
    """A TensorProto as a numpy array, after checking it is what it says it is."""
    where = f"{where} {t.name!r}" if t.name else where
    if t.data_type not in TENSOR_DTYPES:
        raise OnnxImportError(f"{where}: data type {_type_name(onnx, t.data_type)} is not supported")
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims):
        raise OnnxImportError(f"{where}: negative dimension in {dims}")
    n = 1
    for d in dims:
        n *= d
    if n > MAX_ELEMENTS:
        raise OnnxImportError(f"{where}: dimensions {dims} give {n} elements, more than the {MAX_ELEMENTS} allowed")
    dtype = np.dtype(TENSOR_DTYPES[t.data_type])
    nbytes = n * dtype.itemsize
    if t.data_location == onnx.TensorProto.EXTERNAL:
        raw = _external_bytes(t, base_dir, nbytes, where)
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(dims)
    if t.HasField("raw_data"):
        if len(t.raw_data) != nbytes:
            raise OnnxImportError(f"{where}: holds {len(t.raw_data)} bytes but dimensions {dims} of "
                                  f"{_type_name(onnx, t.data_type)} need {nbytes}")
        return np.frombuffer(t.raw_data, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(dims)
    field = {np.dtype(np.float32): "float_data", np.dtype(np.float64): "double_data",
             np.dtype(np.int64): "int64_data", np.dtype(np.uint64): "uint64_data",
             np.dtype(np.uint32): "uint64_data"}.get(dtype, "int32_data")
    count = len(getattr(t, field))
    if count != n:
        raise OnnxImportError(f"{where}: holds {count} values but dimensions {dims} need {n}")
    from onnx import numpy_helper

    return np.array(numpy_helper.to_array(t), dtype=dtype).reshape(dims)


def _parse(onnx, data):
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise OnnxImportError(f"not an ONNX model: the bytes do not parse as an ONNX ModelProto ({e})") from None
    if model.ir_version < 3 or not model.HasField("graph") or not model.graph.node:
        raise OnnxImportError("not an ONNX model: no IR version or no graph nodes (truncated, or another file type)")
    return model


class Builder:
    """What the converters see: the constants and kinds of tensors, and ``add`` for new steps."""

    def __init__(self, onnx, model, base_dir):
        self.onnx = onnx
        graph = model.graph
        opsets = {o.domain: o.version for o in model.opset_import}
        opset = opsets.get("", opsets.get("ai.onnx"))
        if opset is None:
            raise OnnxImportError("the model imports no version of the default ONNX operator set")
        newest = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= opset <= newest:
            raise OnnxImportError(f"opset {opset} is not supported (opsets {MIN_OPSET} to {newest} are)")
        self.opset = int(opset)
        if len(graph.sparse_initializer):
            raise OnnxImportError("sparse initializers are not supported")
        self.values = {}
        self.initializers = set()
        self.init_order = {}
        for t in graph.initializer:
            self.values[t.name] = tensor_to_array(onnx, t, base_dir, "initializer")
            self.initializers.add(t.name)
            self.init_order.setdefault(t.name, len(self.init_order))
        self.base_dir = base_dir
        self.kinds = {name: "const" for name in self.values}
        self.inputs, self.input_shapes, self.input_dtype = [], [], None
        for vi in graph.input:
            if vi.name in self.values:
                continue  # an initializer listed as an input too (older exporters)
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type") or tt.elem_type not in _FLOAT_INPUTS:
                what = _type_name(onnx, tt.elem_type) if vi.type.HasField("tensor_type") else "not a tensor"
                raise OnnxImportError(f"graph input {vi.name!r} has type {what}; only float inputs are supported")
            dtype = np.dtype(_FLOAT_INPUTS[tt.elem_type])
            self.input_dtype = dtype if self.input_dtype is None else max(self.input_dtype, dtype, key=lambda d: d.itemsize)
            shape = None
            if tt.HasField("shape"):
                shape = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim)
            self.inputs.append(vi.name)
            self.input_shapes.append(shape)
            self.kinds[vi.name] = "data"
        if not self.inputs:
            raise OnnxImportError("the graph has no input")
        self.outputs = [o.name for o in graph.output]
        self.steps, self.modules, self.keys = [], [], []
        self.counters = Counter()
        self.consumers = Counter(i for node in graph.node for i in node.input if i)
        self.consumers.update(self.outputs)
        self.producer_step = {}  # tensor -> module name of the layer step that made it
        self.param_of = {}  # initializer -> (Parameter, its key): shared when an initializer feeds several nodes
        self.aliases = {}  # key of a shared slot -> key of the slot that owns the parameter
        self.tmp_count = 0
        self._attrs = {}
        self.dtype = np.dtype(np.float64) if self.input_dtype == np.float64 else np.dtype(np.float32)

    # -- for the converters --------------------------------------------------------------------
    def refuse(self, node, why):
        raise OnnxImportError(f"node {node.name or '(unnamed)'!r} ({node.op_type}): {why}")

    def attrs(self, node):
        key = id(node)
        if key not in self._attrs:
            from onnx import helper

            out = {}
            for a in node.attribute:
                if a.type in (a.GRAPH, a.GRAPHS, a.SPARSE_TENSOR, a.SPARSE_TENSORS, a.TYPE_PROTO, a.TYPE_PROTOS):
                    self.refuse(node, f"attribute {a.name!r} of type {a.type} is not supported")
                if a.type == a.TENSOR:
                    out[a.name] = tensor_to_array(self.onnx, a.t, self.base_dir, f"attribute {a.name!r}")
                else:
                    v = helper.get_attribute_value(a)
                    out[a.name] = v.decode() if isinstance(v, bytes) else v
            self._attrs[key] = out
        return self._attrs[key]

    def attr(self, node, key, default=None):
        return self.attrs(node).get(key, default)

    def kind(self, name):
        return self.kinds.get(name)

    def is_const(self, name):
        return bool(name) and self.kinds.get(name) == "const"

    def is_initializer(self, name):
        return name in self.initializers

    def value(self, name):
        return self.values[name]

    def used(self, name):
        return self.consumers[name] > 0

    def const(self, node, pos, what):
        if len(node.input) <= pos or not node.input[pos]:
            self.refuse(node, f"{what} (input {pos}) is missing")
        name = node.input[pos]
        if not self.is_const(name):
            self.refuse(node, f"{what} ({name!r}) must be a constant (an initializer), not computed at run time")
        v = np.asarray(self.values[name])
        if v.dtype.kind != "f":
            self.refuse(node, f"{what} ({name!r}) has dtype {v.dtype}; only float weights are supported")
        return v

    def tmp(self, node, tag):
        self.tmp_count += 1
        return f"{node.output[0]}::{tag}{self.tmp_count}"

    def alias(self, out, inp):
        self.steps.append(Step("alias", None, "Identity", [inp], [out]))
        self.kinds[out] = self.kinds.get(inp, "data")

    def _module_name(self, prefix, node, inputs):
        if prefix == "bn":
            src = self.producer_step.get(inputs[0])
            if src is not None and src.startswith("conv") and self.consumers[inputs[0]] == 1:
                partner = "bn" + src[4:]
                if partner not in self.names:
                    return partner
            prefix = "norm"
        while True:
            name = f"{prefix}{self.counters[prefix]}"
            self.counters[prefix] += 1
            if name not in self.names:
                return name

    @property
    def names(self):
        return {n for n, _ in self.modules}

    def add(self, module, prefix, node, inputs, output, kind="layer", params=()):

        name = self._module_name(prefix, node, inputs)
        for attr, init, value, transform in params:
            value = np.asarray(value)
            if attr in ("running_mean", "running_var"):
                module._set_buffer(attr, np.ascontiguousarray(value, dtype=self.dtype))
            elif attr != "constant":
                slot = getattr(module, attr)
                if tuple(slot.shape) != tuple(value.shape):
                    self.refuse(node, f"{attr} {init!r} has shape {value.shape}, expected {tuple(slot.shape)}")
                shared = self.param_of.get((init, transform))
                if shared is not None:
                    setattr(module, attr, shared[0])
                    self.aliases[f"{name}.{attr}"] = shared[1]
                else:
                    slot.data = np.ascontiguousarray(value, dtype=self.dtype)
                    self.param_of[(init, transform)] = (slot, f"{name}.{attr}")
            if init in self.initializers and init not in dict(self.keys):
                self.keys.append((init, (f"{name}.{attr}", transform)))
        self.modules.append((name, module))
        self.steps.append(Step(kind, name, node.op_type, inputs, [output], node=node.name))
        self.kinds[output] = "data"
        if prefix == "conv" and kind == "layer":
            # a conv whose weight is shared with another node must not be folded with a batchnorm
            shared = any(self.consumers[node.input[i]] > 1 for i in (1, 2) if len(node.input) > i and node.input[i])
            if not shared and output not in self.outputs:
                self.producer_step[output] = name
        return name


def _topological(b, graph):
    """The nodes in an order where every input is made before it is read; refuses a cycle or a
    tensor nothing makes."""
    made = set(b.values) | set(b.inputs) | {""}
    pending = list(graph.node)
    order = []
    while pending:
        rest = []
        for node in pending:
            if all(i in made for i in node.input):
                order.append(node)
                made.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            node = rest[0]
            missing = [i for i in node.input if i not in made]
            b.refuse(node, f"input(s) {missing} are made by no node (or the graph has a cycle)")
        pending = rest
    for name in b.outputs:
        if name not in made:
            raise OnnxImportError(f"graph output {name!r} is made by no node")
    return order


def _check_node(b, node):
    if node.domain not in ("", "ai.onnx"):
        b.refuse(node, f"operators of domain {node.domain!r} are not supported")
    op = node.op_type
    if op not in CONVERTERS and op not in HOST_OPS and op != "Constant":
        b.refuse(node, "operator not supported")
    allowed = ATTRS.get(op, set())
    for a in node.attribute:
        if a.name not in allowed:
            b.refuse(node, f"attribute {a.name!r} is not supported")


def _constant(b, node):
    attrs = b.attrs(node)
    if "value" in attrs:
        return np.asarray(attrs["value"])
    if "value_float" in attrs:
        return np.asarray(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.asarray(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.asarray(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.asarray(attrs["value_ints"], dtype=np.int64)
    b.refuse(node, "no supported value attribute (value, value_float(s), value_int(s))")


def build(onnx, model, base_dir):
    """An ``OnnxModel`` from a parsed, not yet trusted ``ModelProto``."""
    b = Builder(onnx, model, base_dir)
    for node in model.graph.node:
        _check_node(b, node)
    for node in _topological(b, model.graph):
        op = node.op_type
        ins = [i for i in node.input if i]
        if op == "Constant":
            b.values[node.output[0]] = _constant(b, node)
            b.kinds[node.output[0]] = "const"
            continue
        kinds = {b.kinds.get(i) for i in ins}
        if op in HOST_OPS and "data" not in kinds and (op not in CONVERTERS or kinds <= {"const", "host"}):
            if kinds <= {"const"}:  # fold now
                try:
                    outs = HOST_OPS[op]([b.values.get(i) if i else None for i in node.input], b.attrs(node),
                                        b.opset)
                except (ValueError, IndexError, TypeError, KeyError) as e:
                    b.refuse(node, f"cannot evaluate on its constant inputs: {e}")
                for name, value in zip(node.output, outs):
                    b.values[name] = np.asarray(value)
                    b.kinds[name] = "const"
                continue
            b.steps.append(Step("host", None, op, node.input, node.output, dict(b.attrs(node)), node.name))
            for name in node.output:
                b.kinds[name] = "host"
            continue
        if op == "Shape":  # of a data tensor: its size is only known at run time
            b.steps.append(Step("host", None, op, node.input, node.output, dict(b.attrs(node)), node.name))
            b.kinds[node.output[0]] = "host"
            continue
        if op not in CONVERTERS:
            b.refuse(node, "operator not supported on data tensors (only in shape arithmetic)")
        b.attrs(node)
        CONVERTERS[op](b, node)
    # constants the steps read at run time (shape operands, graph outputs that are constants)
    needed = {i for s in b.steps for i in s.inputs if i and b.kinds.get(i) == "const"}
    needed |= {o for o in b.outputs if b.kinds.get(o) == "const"}
    constants = {n: b.values[n] for n in needed}
    data = {n for n, k in b.kinds.items() if k == "data"}
    producer = f"{model.producer_name} {model.producer_version}".strip()
    keys = sorted(b.keys, key=lambda kv: b.init_order[kv[0]])  # the file's order (PyTorch's state_dict order)
    net = OnnxModel(b.steps, b.inputs, b.outputs, b.input_shapes, constants, data, keys, b.opset, producer,
                    b.aliases)
    for name, module in b.modules:
        net.add_module(name, module)
    net.to(b.dtype)
    return net.eval()


def load(f, check: bool = True) -> OnnxModel:
    """Read an ONNX model (a path, bytes, or a binary file object) into an ``OnnxModel``.

    ``check`` also runs ``onnx.checker`` on the parsed model (structure and operator schemas).
    Raises ``OnnxImportError`` (a ValueError) naming what is wrong: a file that is not ONNX or is
    truncated, an initializer whose bytes do not match its dimensions or whose external data lies
    outside the model's folder, an opset outside 7..newest, or a node whose operator, attribute or
    data type this package does not convert (naming the node and its op type). The model comes
    back in eval mode.
    """
    onnx = _require_onnx()
    data, base_dir = _read_bytes(f)
    model = _parse(onnx, data)
    if check:
        try:
            onnx.checker.check_model(model)
        except Exception as e:  # onnx.checker.ValidationError and the C++ errors it wraps
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OnnxImportError(f"invalid ONNX model: {first}") from None
    return build(onnx, model, base_dir)
