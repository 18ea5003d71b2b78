"""``CompiledOnnx``: an imported ONNX graph compiled for inference (``compile_inference(onnx_model)``).

The graph's steps (see ``minicnn.onnx.graph``) are rewritten once, at compile time:

* every ``Conv`` (an ``nn.Conv2d`` step that pads with zeros) becomes one call of
  ``ops.conv2d_fused_forward``, through the same ``_FusedConv`` a compiled ResNet uses;
* a ``BatchNormalization`` that is the *only* reader of that conv's output is folded into the
  conv's weight and bias (``inference.fold_conv_bn``); a conv whose output feeds a second step
  keeps its BatchNorm as a step of its own, since that other step must see the unnormalised map;
* a ``Relu`` that is the only reader of the (normalised) conv output goes into the conv's
  epilogue; so does an ``Add`` of another tensor (a residual shortcut) followed by a ``Relu``,
  the ResNet join ``relu(bn(conv(h)) + identity)``, or an ``Add`` alone;
* a ``MaxPool`` (floor mode) that alone reads such a chain's output (with no residual) runs inside
  the same call (the backend's ``conv2d_maxpool_fused``), as in a compiled ResNet's stem or a VGG;
* every other step runs as the eager graph runs it, in eval mode and under ``no_grad``.

A fused chain runs where its last absorbed step stood (the ``Add`` of a residual join comes after
the shortcut is computed); the steps are in topological order, so every input is ready then.

Activations that the fused convs write come from the compiled model's buffer pools
(``CompiledModel._pass``): one pass borrows a set no concurrent call uses, so several threads may
call one compiled model. A buffer goes back to the pool once the last step that reads it, or reads
anything an eager step derived from it (an eager step may return a view of its input), has run;
what the caller receives is never a pool buffer.
"""
from __future__ import annotations

import numpy as np

from .. import backends, ops
from ..grad_mode import no_grad
from ..inference import CompiledModel, _copy_without_caches, _FusedConv
from ..nn.activation import ReLU
from ..nn.batchnorm import BatchNorm2d
from ..nn.conv import Conv2d
from ..nn.pooling import MaxPool2d
from .graph import OnnxModel
from .host import HOST_OPS
from .nodes import Binary, _data

__all__ = ["CompiledOnnx"]


class _ConvEntry:
    """A fused conv step of the compiled plan: ``out = conv(x) [+ residual] [relu]``, or
    ``maxpool([relu](conv(x)))`` when ``pool`` holds the max pool's (kernel, stride, padding, dilation)."""

    __slots__ = ("conv", "inputs", "outputs", "residual", "pool", "absorbed")

    def __init__(self, conv, x, residual, pool, out, absorbed):
        self.conv, self.residual, self.pool, self.absorbed = conv, residual, pool, absorbed
        self.inputs = [x] + ([residual] if residual else [])
        self.outputs = [out]


class CompiledOnnx(CompiledModel):
    """An ``OnnxModel`` compiled for eval-mode inference; ``fast(x)`` gives what ``model.eval()(x)`` gives.

    Built by ``minicnn.inference.compile_inference(model)``; how the graph is rewritten is in this
    module's docstring. The weights are snapshotted (BatchNorm folded into the convs, the other
    steps deep-copied in eval mode): compile again after changing them. ``forward_features`` and
    ``embed`` return the stages ``model.activations`` calls ``layer4`` (the input of the last
    GlobalAveragePool) and ``avgpool`` (its output, flattened to (N, C)), and stop computing there.
    ``convs()`` lists the fused convs; ``variants()`` and ``buffer_bytes()`` are as for a compiled
    ResNet, and so is thread safety.

    Args:
        model: the ``OnnxModel`` that ``minicnn.onnx.load`` returned.
        autotune: time the backend's conv variants on each new input shape and keep the fastest
            (see ``compile_inference``).
    """

    _channels_last_ok = False  # the imported graph's other nodes read NCHW

    def __init__(self, model: OnnxModel, autotune: bool = True):
        if not isinstance(model, OnnxModel):
            raise TypeError(f"CompiledOnnx takes the OnnxModel minicnn.onnx.load returns, got {type(model).__name__}")
        snap = _copy_without_caches(model).eval()
        self._model = snap
        self.dtype = np.dtype(snap.dtype)
        self.model_name = type(model).__name__
        self.arch = getattr(model, "arch", self.model_name)
        self.num_classes = getattr(model, "num_classes", None)
        self.training = False
        self.input_names = list(snap.input_names)
        self.output_names = list(snap.output_names)
        self.plan = self._build_plan(snap)
        # the modules the fused convs replaced hold a second copy of their weights: drop them
        kept = {e.name for e in self.plan if not isinstance(e, _ConvEntry)}
        for step in snap.steps:
            if step.kind in ("layer", "node") and step.name not in kept and step.name in snap._modules:
                delattr(snap, step.name)
        self._views: dict = {}
        self._init_buffers(autotune)

    # -- compile time -------------------------------------------------------------------------
    @staticmethod
    def _build_plan(model):
        """The steps with each conv chain replaced by one ``_ConvEntry`` at its last step's place."""
        steps, mods = model.steps, model._modules
        readers: dict = {}
        for i, s in enumerate(steps):
            for t in s.inputs:
                if t:
                    readers.setdefault(t, []).append(i)
        outputs = set(model.output_names)

        def sole_reader(t):
            """The one step that reads ``t`` (once), or None when ``t`` has other readers or is an output."""
            r = readers.get(t, ())
            return r[0] if len(r) == 1 and t not in outputs else None

        def layer_of(j, cls):
            s = steps[j]
            m = mods.get(s.name) if s.kind in ("layer", "node") else None
            return m if isinstance(m, cls) else None

        def plain_relu(j):
            return j is not None and steps[j].kind == "layer" and type(mods.get(steps[j].name)) is ReLU

        chains = {}  # index of a chain's last step -> entry
        absorbed = set()
        for i, s in enumerate(steps):
            conv = mods.get(s.name) if s.kind == "layer" else None
            if type(conv) is not Conv2d or conv._pads is not None:
                continue  # a conv with a pad step inside (reflect padding, odd 'same') stays eager
            taken, cur, bn, relu, residual = [i], s.outputs[0], None, False, None
            j = sole_reader(cur)
            m = layer_of(j, BatchNorm2d) if j is not None and steps[j].kind == "layer" else None
            if m is not None and m.track_running_stats and m.num_features == conv.out_channels:
                bn, cur = m, steps[j].outputs[0]
                taken.append(j)
                j = sole_reader(cur)
            if plain_relu(j):
                relu, cur = True, steps[j].outputs[0]
                taken.append(j)
            else:
                # an Add of two conv outputs (a downsample shortcut) goes to the conv that reaches it first
                free = j is not None and j not in absorbed and steps[j].kind == "node"
                add = layer_of(j, Binary) if free else None
                if add is not None and add.op == "add" and add.constant is None:
                    other = [t for t in steps[j].inputs if t != cur]
                    if len(other) == 1 and other[0]:
                        residual, cur = other[0], steps[j].outputs[0]
                        taken.append(j)
                        k = sole_reader(cur)
                        if plain_relu(k):
                            relu, cur = True, steps[k].outputs[0]
                            taken.append(k)
            pool = None
            k = sole_reader(cur) if residual is None else None
            mp = mods.get(steps[k].name) if k is not None and steps[k].kind == "layer" else None
            if type(mp) is MaxPool2d and not mp.ceil_mode and not mp.return_indices:
                # the pool reads the conv's output while it is in cache (a ResNet stem, a VGG stage's end)
                pool, cur = (mp.kernel_size, mp.stride, mp.padding, mp.dilation), steps[k].outputs[0]
                taken.append(k)
            name = s.name + "".join(f"+{steps[t].name}" for t in taken[1:])
            entry = _ConvEntry(_FusedConv(conv, bn, relu, name), s.inputs[0], residual, pool, cur, len(taken))
            chains[taken[-1]] = entry
            absorbed.update(taken)
        plan = []
        for i, s in enumerate(steps):
            if i in chains:
                plan.append(chains[i])
            elif i not in absorbed:
                plan.append(s)
        return plan

    def _view(self, targets):
        """(number of plan entries to run, {tensor: index of the entry that reads it last}) for computing
        ``targets``; a tensor nobody reads is dropped after the entry that makes it."""
        view = self._views.get(targets)
        if view is not None:
            return view
        made = {}
        for i, e in enumerate(self.plan):
            for t in e.outputs:
                made[t] = i
        stop = max((made.get(t, -1) for t in targets), default=-1) + 1
        last = {}
        for i, e in enumerate(self.plan[:stop]):
            for t in e.outputs:
                last.setdefault(t, i)
            for t in e.inputs:
                if t:
                    last[t] = i
        for t in targets:
            last.pop(t, None)  # kept to the end: the caller's
        view = self._views[targets] = (stop, last)
        return view

    # -- run time -----------------------------------------------------------------------------
    def _check(self, x):
        return self._model._prepare_input(x)

    def _run(self, xs, targets):
        """Run the plan up to ``targets``; returns them as fresh arrays on the backend in force."""
        if len(xs) != len(self.input_names):
            raise ValueError(f"compiled {self.arch}: the graph takes {len(self.input_names)} input(s) "
                             f"({', '.join(self.input_names)}), got {len(xs)}")
        stop, last = self._view(targets)
        model = self._model
        mods = model._modules
        env = dict(model._constants)
        for name, x in zip(self.input_names, xs):
            env[name] = self._check(x)
        refs: dict = {}  # tensor -> ids of the pool buffers it may share memory with
        live: dict = {}  # id -> [buffer, number of live tensors that may share its memory]
        with no_grad(), self._pass() as ctx:
            for i, e in enumerate(self.plan[:stop]):
                if isinstance(e, _ConvEntry):
                    out = env[e.outputs[0]] = self._conv(e, env, ctx)
                    ids = {id(out)}
                    live[id(out)] = [out, 0]
                else:
                    self._step(e, env, mods, model.opset)
                    ids = set().union(*(refs.get(t, ()) for t in e.inputs if t))
                for t in e.outputs:
                    if ids:
                        refs[t] = ids
                        for b in ids:
                            live[b][1] += 1
                for t in set(e.inputs + e.outputs):
                    if last.get(t) == i:
                        env.pop(t, None)
                        for b in refs.pop(t, ()):
                            live[b][1] -= 1
                            if live[b][1] == 0:
                                ctx.done_with(live.pop(b)[0])
            be = backends.current()
            result = []
            for t in targets:
                y = env[t]
                if t in refs:  # may share a pool buffer, which the next call overwrites
                    y = y.copy()
                elif not be.is_native(y):  # computed on the host (shape arithmetic)
                    y = be.asarray(np.asarray(y, dtype=self.dtype))
                result.append(y)
        return result

    def _conv(self, e, env, ctx):
        x = _data(env[e.inputs[0]], self.dtype)
        if e.pool is not None:
            return e.conv.pooled(x, ctx, ctx.be.conv2d_maxpool_fused, e.pool)
        if e.residual is None:
            return e.conv(x, ctx)
        r = env[e.residual]
        w = e.conv.arrays(ctx.be)[0]
        if tuple(r.shape) == e.conv._out_shape(x, w) and r.dtype == self.dtype:
            return e.conv(x, ctx, residual=r)
        # the Add broadcasts: the epilogue cannot take it, so conv + bias, then add (and ReLU) as the graph does
        c = e.conv
        b = c.arrays(ctx.be)[1]
        y = ctx.fused(x, w, b, c.stride, c.padding, c.dilation, c.groups, None, False) + _data(r, self.dtype)
        return ops.relu_forward(y) if c.relu else y

    @staticmethod
    def _step(s, env, mods, opset):
        """One step as ``OnnxModel._run`` runs it."""
        kind = s.kind
        if kind == "layer":
            env[s.outputs[0]] = mods[s.name](env[s.inputs[0]])
        elif kind == "node":
            env[s.outputs[0]] = mods[s.name](*[env[i] if i else None for i in s.inputs])
        elif kind == "alias":
            env[s.outputs[0]] = env[s.inputs[0]]
        else:
            try:
                outs = HOST_OPS[s.op]([env[i] if i else None for i in s.inputs], s.attrs, opset)
            except (ValueError, IndexError, TypeError) as err:
                raise ValueError(f"compiled OnnxModel: node {s.node!r} ({s.op}) failed on this input: {err}") from None
            for name, value in zip(s.outputs, outs):
                env[name] = value

    def forward(self, *xs):
        """The graph's output for inputs ``xs`` (a tuple when the graph has several outputs)."""
        outs = self._run(xs, tuple(self.output_names))
        return outs[0] if len(outs) == 1 else tuple(outs)

    __call__ = forward

    def forward_features(self, x):
        """The ``layer4`` stage: the input of the graph's last GlobalAveragePool."""
        return self._run((x,), (self._model._stage_tensor("layer4"),))[0]

    def embed(self, x):
        """The ``avgpool`` stage: the last GlobalAveragePool's output, flattened to (N, C)."""
        y = self._run((x,), (self._model._stage_tensor("avgpool"),))[0]
        return y.reshape(y.shape[0], -1)

    def convs(self):
        """Every fused conv, in execution order (named by the steps each one took in: ``conv3+bn3+relu2``)."""
        return [e.conv for e in self.plan if isinstance(e, _ConvEntry)]

    def fused_steps(self) -> int:
        """How many steps of the imported graph the fused convs replaced (convs, batchnorms, adds, relus)."""
        return sum(e.absorbed for e in self.plan if isinstance(e, _ConvEntry))

    def __repr__(self):
        return (f"CompiledOnnx({self.arch}, {len(self.convs())} fused convs, "
                f"{len(self.plan)} steps for the graph's {len(self._model.steps)})")
