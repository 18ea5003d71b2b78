"""``OnnxModel``: an imported ONNX graph as a minicnn ``Module``.

The graph's nodes became steps, in topological order. A step is one of

* ``layer``: a one-input module (``nn.Conv2d``, ``nn.ReLU``, ...) called as ``module(x)``;
* ``node``: a module of ``minicnn.onnx.nodes`` called with the node's inputs, whose backward
  returns one gradient per input;
* ``host``: shape arithmetic (``Shape`` of a tensor whose batch size is only known at run time,
  and what is computed from it) run in numpy on small integer arrays, with no gradient;
* ``alias``: Identity, Dropout (an identity at inference), a float Cast: the output is the input.

``forward`` runs the steps in order; ``backward`` walks them in reverse, handing each module the
gradient of its output and summing the gradients of a tensor that feeds several steps (a residual
shortcut, a Concat). The modules are children of the model, named by their kind and position
(``conv3``, ``bn3``, ``relu5``, ...), so ``summary``, ``parameters``, ``to``, ``train``/``eval``,
``freeze`` and ``minicnn.inference.fold_batchnorm`` (a conv whose only reader is a BatchNorm is
named ``conv<i>`` and the BatchNorm ``bn<i>``) work as on any model. ``state_dict`` keys are the
ONNX initializer names (``layer1.0.conv1.weight`` for a file PyTorch wrote, ``onnx::Conv_193`` for
a folded one), each holding the initializer's value in its ONNX shape.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import backends
from ..nn.module import Module, backward_pass
from .host import HOST_OPS

__all__ = ["OnnxModel", "Step"]


class Step:
    """One node of the graph at run time (see the module docstring)."""

    __slots__ = ("kind", "name", "op", "inputs", "outputs", "attrs", "node")

    def __init__(self, kind, name, op, inputs, outputs, attrs=None, node=""):
        self.kind, self.name, self.op = kind, name, op
        self.inputs, self.outputs, self.attrs, self.node = list(inputs), list(outputs), attrs or {}, node

    def __repr__(self):
        return f"Step({self.kind}, {self.name or self.op}, {self.inputs} -> {self.outputs})"


class OnnxModel(Module):
    """A model read from an ONNX file by ``minicnn.onnx.load``; see the module docstring.

    Attributes:
        input_names, output_names: the graph's tensor names.
        input_shapes: each input's declared shape, None where a dimension is symbolic (the batch).
        opset: the file's ONNX opset; producer: the program that wrote it.
    """

    def __init__(self, steps, input_names, output_names, input_shapes, constants, data_tensors, keys, opset,
                 producer="", aliases=None):
        super().__init__()
        object.__setattr__(self, "steps", list(steps))
        object.__setattr__(self, "input_names", list(input_names))
        object.__setattr__(self, "output_names", list(output_names))
        object.__setattr__(self, "input_shapes", [tuple(s) if s is not None else None for s in input_shapes])
        object.__setattr__(self, "_constants", dict(constants))
        object.__setattr__(self, "_data_tensors", frozenset(data_tensors))
        # initializer name -> (internal state_dict key, transform from the ONNX array to the slot)
        object.__setattr__(self, "_keys", OrderedDict(keys))
        # a slot that shares another's parameter (one initializer read by two nodes) -> the owner's key
        object.__setattr__(self, "_aliases", dict(aliases or {}))
        object.__setattr__(self, "opset", int(opset))
        object.__setattr__(self, "producer", producer)

    def extra_repr(self):
        return f"opset={self.opset}, inputs={self.input_names}, outputs={self.output_names}"

    # -- forward / backward -------------------------------------------------------------------
    def forward(self, *xs):
        """The graph's output for inputs ``xs`` (one array per graph input, in order); a tuple
        when the graph has several outputs."""
        outs = [self._run(xs)[name] for name in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)

    # -- stages: what minicnn.gradcam and the CLI's embed ask for --------------------------------
    def _pool_step(self):
        return next((s for s in reversed(self.steps) if s.op == "GlobalAveragePool"), None)

    def _stage_tensor(self, name):
        """The tensor a stage name stands for: ``fc`` the graph's (first) output, ``avgpool`` the
        output of the last GlobalAveragePool, ``layer4`` its input; any data tensor by its name."""
        if name == "fc":
            return self.output_names[0]
        if name in ("layer4", "avgpool"):
            pool = self._pool_step()
            if pool is None:
                raise ValueError(f"this ONNX model has no GlobalAveragePool node, so it has no {name!r} stage; "
                                 "name a tensor of the graph instead, or use the output (fc)")
            return pool.inputs[0] if name == "layer4" else pool.outputs[0]
        if name in self._data_tensors:
            return name
        raise ValueError(f"OnnxModel: unknown stage {name!r}: give 'layer4', 'avgpool', 'fc' or a tensor name of "
                         "the graph")

    def _producer(self, tensor):
        """Index of the step that makes ``tensor`` (-1 for a graph input)."""
        for i in range(len(self.steps) - 1, -1, -1):
            if tensor in self.steps[i].outputs:
                return i
        return -1

    def activations(self, x, upto="fc"):
        """One forward pass; the stages by name, as ``ResNet.activations`` gives them (what the CLI's
        ``embed`` and ``minicnn.gradcam`` read): ``layer4`` (the input of the last
        GlobalAveragePool), ``avgpool`` (its output, flattened to (N, C)), ``fc`` (the output),
        and with ``upto="fc"`` every other tensor of the graph by its name too. ``upto`` may be a
        tensor name. A ``backward_from`` may follow."""
        from collections import OrderedDict

        from ..nn.module import forward_pass

        self._stage_tensor(upto)  # refuse an unknown stage before running anything
        self._move_to_backend()
        with forward_pass():
            env = self._run((x,))
        out = OrderedDict()
        pool = self._pool_step()
        if pool is not None:
            out["layer4"] = env[pool.inputs[0]]
            pooled = env[pool.outputs[0]]
            out["avgpool"] = pooled.reshape(pooled.shape[0], -1)
        if upto in out:
            return OrderedDict((k, v) for k, v in out.items() if k == "layer4" or upto == "avgpool")
        if upto != "fc":
            return OrderedDict([(upto, env[upto])])
        for step in self.steps:
            for name in step.outputs:
                if name in env and name in self._data_tensors:
                    out.setdefault(name, env[name])
        out["fc"] = env[self.output_names[0]]
        return out

    def backward_from(self, name, grad, to=None):
        """Backpropagate ``grad`` (dL/d stage ``name``, see :meth:`activations`) toward the input;
        returns dL/dx, or dL/d stage ``to`` when given (Grad-CAM takes ``to="layer4"``). Parameter
        gradients of the steps passed through accumulate."""
        start = self._stage_tensor(name)
        stop = None if to is None else self._stage_tensor(to)
        if name == "avgpool" and grad.ndim == 2:
            grad = grad.reshape(grad.shape + (1, 1))
        hi = self._producer(start)
        lo = -1 if stop is None else self._producer(stop)
        if lo > hi:
            raise ValueError(f"OnnxModel: stage {to!r} comes after {name!r}; backward runs toward the input")
        with backward_pass():
            shapes = self._saved()
            grads = self._walk_back({start: grad}, hi, lo)
        if stop is not None:
            g = grads.get(stop)
            return g if g is not None else None
        return self._input_grads(grads, shapes)

    def _run(self, xs):
        """Run every step; returns the tensors by name (outputs on the backend in force)."""
        if len(xs) != len(self.input_names):
            raise ValueError(f"OnnxModel: the graph takes {len(self.input_names)} input(s) "
                             f"({', '.join(self.input_names)}), got {len(xs)}")
        env = dict(self._constants)
        shapes = []
        for name, x in zip(self.input_names, xs):
            x = self._prepare_input(x)
            env[name] = x
            shapes.append(x.shape)
        mods = self._modules
        for step in self.steps:
            kind = step.kind
            if kind == "layer":
                env[step.outputs[0]] = mods[step.name](env[step.inputs[0]])
            elif kind == "node":
                env[step.outputs[0]] = mods[step.name](*[env[i] if i else None for i in step.inputs])
            elif kind == "alias":
                env[step.outputs[0]] = env[step.inputs[0]]
            else:
                try:
                    outs = HOST_OPS[step.op]([env[i] if i else None for i in step.inputs], step.attrs, self.opset)
                except (ValueError, IndexError, TypeError) as e:
                    raise ValueError(f"OnnxModel: node {step.node!r} ({step.op}) failed on this input: {e}") from None
                for name, value in zip(step.outputs, outs):
                    env[name] = value
        be = backends.current()
        for name in self.output_names:
            if not be.is_native(env[name]):
                env[name] = be.asarray(np.asarray(env[name], dtype=self.dtype))
        self._save(shapes)
        return env

    def backward(self, *dys):
        """dL/d(inputs) from dL/d(outputs): one gradient per output (None for an output the loss
        does not read); returns one array per graph input (a tuple when there are several).
        Every parameter's ``.grad`` accumulates, as for any module."""
        if len(dys) == 1 and isinstance(dys[0], (tuple, list)):
            dys = tuple(dys[0])
        if len(dys) != len(self.output_names):
            raise ValueError(f"OnnxModel: backward takes one gradient per output ({len(self.output_names)}), "
                             f"got {len(dys)}")
        be = backends.current()
        init = {}
        for name, dy in zip(self.output_names, dys):
            if dy is not None:
                dy = dy if be.is_native(dy) else be.asarray(np.asarray(dy, dtype=self.dtype))
                init[name] = init[name] + dy if name in init else dy
        with backward_pass():
            shapes = self._saved()
            grads = self._walk_back(init, len(self.steps) - 1, -1)
        return self._input_grads(grads, shapes)

    def _input_grads(self, grads, shapes):
        dxs = []
        for name, shape in zip(self.input_names, shapes):
            g = grads.get(name)
            dxs.append(g if g is not None else np.zeros(shape, dtype=self.dtype))
        return dxs[0] if len(dxs) == 1 else tuple(dxs)

    def _walk_back(self, grads, hi, lo):
        """Steps ``hi`` down to ``lo + 1`` in reverse: each gets its output's gradient, and the
        gradients of a tensor read by several steps add up. Returns the gradients left (those of
        tensors made at or before step ``lo``, the graph inputs among them)."""
        data = self._data_tensors
        grads = {k: v for k, v in grads.items() if k in data}

        def add(name, g):
            if g is None or not name or name not in data:
                return
            grads[name] = grads[name] + g if name in grads else g

        mods = self._modules
        for i in range(hi, lo, -1):
            step = self.steps[i]
            if step.kind == "host":
                continue
            dy = grads.pop(step.outputs[0], None)
            if dy is None:
                continue
            if step.kind == "alias":
                add(step.inputs[0], dy)
            elif step.kind == "layer":
                add(step.inputs[0], mods[step.name].backward(dy))
            else:
                for name, g in zip(step.inputs, mods[step.name].backward(dy)):
                    add(name, g)
        return grads

    # -- state: ONNX initializer names --------------------------------------------------------
    @staticmethod
    def _to_onnx(a, transform):
        if transform is None:
            return a
        if transform == "T":
            return np.ascontiguousarray(a.T)
        kind, shape = transform
        if kind == "reshape":
            return a.reshape(shape)
        return np.full(shape, a.reshape(-1)[0], dtype=a.dtype)  # "first": a broadcast scalar

    @staticmethod
    def _from_onnx(a, transform):
        a = np.asarray(backends.to_numpy(a))
        if transform is None:
            return a
        if transform == "T":
            return np.ascontiguousarray(a.T)
        kind, _ = transform
        return a.reshape(-1)

    def state_dict(self):
        """Every initializer the layers hold, under its ONNX name and in its ONNX shape (numpy
        copies), then anything else (a folded conv's new bias) under the module's own name."""
        inner = super().state_dict()
        out = OrderedDict()
        used = set(self._aliases)
        for init, (key, transform) in self._keys.items():
            if key in inner:
                out[init] = self._to_onnx(inner[key], transform)
                used.add(key)
        for key, value in inner.items():
            if key not in used and not key.endswith("num_batches_tracked"):
                out[key] = value
        return out

    def load_state_dict(self, state_dict, strict: bool = True):
        """Load arrays keyed by ONNX initializer name (as ``state_dict`` gives them); keys of the
        modules' own names are accepted too."""
        inner = OrderedDict()
        for k, v in state_dict.items():
            if k in self._keys:
                key, transform = self._keys[k]
                inner[key] = self._from_onnx(v, transform)
            else:
                inner[k] = v
        for alias, owner in self._aliases.items():
            if owner in inner and alias not in inner:
                inner[alias] = inner[owner]
        return super().load_state_dict(inner, strict=strict)

    def summary(self, input_shape=None, file=None) -> str:
        """The layer table (see ``Module.summary``); ``input_shape`` defaults to the graph's
        declared input shape with batch 1."""
        if input_shape is None:
            shape = self.input_shapes[0] if self.input_shapes else None
            if shape is None or any(s is None for s in shape[1:]):
                raise ValueError(f"OnnxModel: the input shape {shape} is not fully declared; pass input_shape")
            input_shape = (1,) + tuple(shape[1:])
        return super().summary(input_shape, file=file)
