"""One forward pass, recorded layer by layer: what every module received and produced.

``trace(model, x)`` runs ``model`` on one image with a forward hook on every module and returns a
:class:`Trace`: the layers in the order they ran, each with its input(s), its output and its
parameters, as float32 numpy arrays without the batch axis. These are minicnn's own activations,
copied out of whatever backend is in force; the explain page shows them and nothing else.

A *layer* (a column of the page) is a module that computes something itself: every leaf module,
and a residual block (``BasicBlock``/``Bottleneck``), whose own arithmetic is the join
``relu(main + identity)``. Pure containers (``nn.Sequential``, a ResNet's ``layer1``) are groups:
they have no column, only a bracket around their layers' columns.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..backends import to_numpy
from ..grad_mode import no_grad

__all__ = ["Layer", "Trace", "trace", "is_block"]


def is_block(module) -> bool:
    """A residual block of ``minicnn.models.resnet`` (its output is ``relu(main + identity)``)."""
    from ..models.resnet import BasicBlock, Bottleneck

    return isinstance(module, (BasicBlock, Bottleneck))


def _is_leaf(module) -> bool:
    return not any(True for _ in module.children())


@dataclass
class Layer:
    """One module call of the traced forward pass.

    Attributes:
        name: the module's name in ``model.named_modules()``.
        module: the module itself.
        kind: its class name (``Conv2d``, ``ReLU``, ``BasicBlock``...).
        call: 0 for a module's first call in the pass, 1 for its second...
        inputs: for each input, the index of the layer that produced it (-1: the network input).
            A residual block has two: its main branch (the last batchnorm) and its identity
            (the downsample's output, or the block's input).
        x: the (first) input, float32, no batch axis.
        y: the output, float32, no batch axis.
    """

    name: str
    module: object
    kind: str
    call: int
    inputs: list
    x: np.ndarray
    y: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The name, with ``#2``, ``#3``... for a module's later calls."""
        return self.name if self.call == 0 else f"{self.name}#{self.call + 1}"

    def num_parameters(self) -> int:
        """Parameters of this layer alone (a block's are counted in its children)."""
        if is_block(self.module):
            return 0
        return int(sum(p.size for p in self.module.parameters()))


@dataclass
class Trace:
    """The layers of one forward pass, in the order they ran, and the network input."""

    model: object
    input: np.ndarray
    layers: list

    @property
    def logits(self) -> np.ndarray:
        """The network output (the last layer's output)."""
        return self.layers[-1].y

    def index(self, name: str, call: int = 0) -> int:
        """The position of layer ``name`` (its ``call``-th call) in :attr:`layers`."""
        for i, layer in enumerate(self.layers):
            if layer.name == name and layer.call == call:
                return i
        raise KeyError(f"no layer {name!r} in this trace; layers are {', '.join(l.label for l in self.layers)}")

    def layer(self, name: str, call: int = 0) -> Layer:
        """Layer ``name`` (see :meth:`index`)."""
        return self.layers[self.index(name, call)]

    def groups(self) -> list:
        """Names of the containers (modules with children that are not layers), in ``named_modules`` order."""
        names = {l.name for l in self.layers}
        return [n for n, m in self.model.named_modules() if n and n not in names and not _is_leaf(m)]

    def consumers(self, i: int) -> list:
        """Indices of the layers that read layer ``i``'s output (-1: the network input)."""
        return [j for j, l in enumerate(self.layers) if i in l.inputs]


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(to_numpy(a), dtype=np.float32)[0])


def trace(model, x) -> Trace:
    """Run ``model`` (eval mode, no gradients) on ``x`` (C, H, W) or (1, C, H, W) and record every layer.

    The model's train/eval mode is restored afterwards and the hooks removed.
    """
    x = np.asarray(to_numpy(x), dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"explain: expected one image (C, H, W) or (1, C, H, W), got shape {x.shape}")
    named = [(n, m) for n, m in model.named_modules() if n]
    records, keep, produced = [], [], {}
    calls = {}

    def producer(a):
        """The index of the layer whose output is ``a`` (-1: the input), by identity, else by value."""
        j = produced.get(id(a))
        if j is not None:
            return j
        flat = np.asarray(to_numpy(a)).ravel()
        for k in range(len(records) - 1, -1, -1):  # e.g. a ResNet flattens its pooled map without a module
            y = records[k].y
            if y.size == flat.size and np.array_equal(y.ravel(), flat):
                return k
        if x.size == flat.size and np.array_equal(x.ravel(), flat):
            return -1
        raise RuntimeError(f"explain: cannot tell which layer produced an input of shape {tuple(np.shape(a))}")

    def make_hook(name):
        def hook(module, args, out):
            leaf, block = _is_leaf(module), is_block(module)
            if not (leaf or block):
                return None
            call = calls.get(name, 0)
            calls[name] = call + 1
            if block:
                last = "bn3" if hasattr(module, "bn3") else "bn2"
                main = max(k for k, r in enumerate(records) if r.name == f"{name}.{last}")
                if module.downsample is not None:
                    ds = [k for k, r in enumerate(records) if r.name.startswith(f"{name}.downsample.")]
                    identity = max(ds)
                else:
                    identity = producer(args[0])
                inputs = [main, identity]
            else:
                inputs = [producer(args[0])]
            keep.append(out)
            produced[id(out)] = len(records)
            records.append(Layer(name, module, type(module).__name__, call, inputs, _f32(args[0]), _f32(out)))
            return None

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in named]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    produced[id(x)] = -1
    try:
        with no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    return Trace(model, x[0].copy(), records)
