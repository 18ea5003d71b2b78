"""Parameter, Module and Sequential: the tree every model is built from.

A Module keeps its parameters, buffers and child modules in insertion order, so ``state_dict()``
keys come out in the same order and with the same dotted names as PyTorch's (``layer1.0.bn1.weight``).
``forward(x)`` stores exactly what ``backward(dy)`` needs; ``backward`` returns dL/dx and *adds*
each parameter's gradient into ``param.grad``.

Input dtype, the one documented rule: every module has a compute dtype (float32 unless
``module.to(np.float64)`` was called, which gradient checks do). Input arrays of any real dtype
(float16/64, integers, bool) are converted to that dtype on entry; complex input raises TypeError.
"""
from __future__ import annotations

import contextlib
import itertools
import threading
from collections import OrderedDict, namedtuple
from typing import Iterator

import numpy as np

from .. import backends
from ..grad_mode import is_grad_enabled


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


# -- passes: which forward a cache belongs to ----------------------------------------------------
#
# A module keeps a *stack* of caches: each forward call pushes what its backward needs and each
# backward call pops the newest, so a module used k times in one forward pass (a shared ReLU, a
# Linear applied in a loop) gets k backward calls in reverse order, which is the order a manual
# backward walks anyway. Every call of a module from outside any other module call starts a new
# *pass* (a number); a cache is tagged with its pass, and the first push of a new pass drops the
# module's older caches, so forward calls without a backward (eval without no_grad) never grow
# memory. One backward (the outermost ``backward``/``backward_params`` call and everything it
# calls) must pop caches of a single pass: if another forward pass ran one of its modules in
# between, the backward raises instead of mixing two passes' caches into wrong gradients.
_pass_ids = itertools.count(1)
_state = threading.local()  # depth (nested module calls), pass_id, bwd_depth, bwd_pass


def _pass_depth() -> int:
    return getattr(_state, "depth", 0)


def _enter_pass() -> None:
    depth = getattr(_state, "depth", 0)
    if depth == 0:
        _state.pass_id = next(_pass_ids)
    _state.depth = depth + 1


def _exit_pass() -> None:
    _state.depth -= 1


@contextlib.contextmanager
def forward_pass():
    """Run a block as one forward pass: module calls inside it share one pass (what a model method
    other than ``__call__``, such as ``ResNet.embed``, wraps its work in)."""
    _enter_pass()
    try:
        yield
    finally:
        _exit_pass()


def _backward_entry(fn):
    """Wrap a subclass's ``backward``/``backward_params`` so the outermost call checks that every
    cache it pops comes from one forward pass (see the note above)."""

    def wrapper(self, *args, **kwargs):
        depth = getattr(_state, "bwd_depth", 0)
        if depth == 0:
            _state.bwd_pass = None
        _state.bwd_depth = depth + 1
        try:
            return fn(self, *args, **kwargs)
        finally:
            _state.bwd_depth = depth

    wrapper.__name__, wrapper.__qualname__, wrapper.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    wrapper.__wrapped__ = fn
    wrapper._pass_checked = True
    return wrapper


class StateDictError(ValueError, RuntimeError):
    """``load_state_dict`` refused a state dict: a ValueError, and a RuntimeError as in PyTorch."""


class Parameter:
    """A trainable array: ``.data`` (ndarray), ``.grad`` (ndarray or None), ``.requires_grad``.

    A parameter with ``requires_grad=False`` is frozen: layers compute no gradient for it and
    optimizers skip it, while the gradient with respect to the layer input still flows.
    """

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data, requires_grad: bool = True):
        self.data = np.array(data, dtype=np.float32) if not hasattr(data, "dtype") else data
        self.grad = None
        self.requires_grad = bool(requires_grad)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return int(self.data.size)

    def accumulate(self, g) -> None:
        """Add ``g`` into ``.grad`` (PyTorch accumulates until ``zero_grad``)."""
        if g is None or not self.requires_grad:
            return
        if self.grad is None:
            self.grad = g.astype(self.data.dtype, copy=True)
        else:
            self.grad += g

    def __repr__(self) -> str:
        return f"Parameter(shape={tuple(self.shape)}, dtype={self.dtype}, requires_grad={self.requires_grad})"


class Module:
    """Base class of every layer and model.

    Subclasses set parameters, buffers and children as attributes (``self.weight = Parameter(...)``,
    ``self.register_buffer("running_mean", ...)``, ``self.conv1 = Conv2d(...)``) and implement
    ``forward(x)`` and ``backward(dy)``.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "dtype", np.dtype(np.float32))
        object.__setattr__(self, "_saved_stack", [])  # [(pass id, cache)], see "passes" above
        object.__setattr__(self, "_forward_hooks", OrderedDict())

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("backward", "backward_params"):
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_pass_checked", False):
                setattr(cls, name, _backward_entry(fn))

    # -- attribute bookkeeping -------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        for store in (self._parameters, self._buffers, self._modules):
            store.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            store.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value, persistent: bool = True) -> None:
        """A non-trainable array that belongs to the state (e.g. batchnorm running stats)."""
        self.__setattr__(name, value)
        self._buffers[name] = value
        if not persistent:
            self._non_persistent.add(name)

    def _set_buffer(self, name: str, value) -> None:
        """Replace a buffer's array (used by layers that update running statistics)."""
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    def add_module(self, name: str, module: "Module") -> None:
        self.__setattr__(name, module)

    # -- calling -----------------------------------------------------------------------------
    def __call__(self, x, *args, **kwargs):
        self._move_to_backend()
        _enter_pass()
        try:
            out = self.forward(x, *args, **kwargs)
        finally:
            _exit_pass()
        if self._forward_hooks:
            for hook in list(self._forward_hooks.values()):
                result = hook(self, (x, *args), out)
                if result is not None:
                    out = result
        return out

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def backward_params(self, dy) -> None:
        """Accumulate the ``.grad`` of every trainable parameter from dL/d(output), without dL/dx.

        What a training step needs: nothing upstream of the model wants the gradient of its input
        (PyTorch likewise skips it for an input that does not require grad). Layers whose input
        gradient is separate work (convolution, linear) skip it; containers stop backpropagating at
        their first trainable module, so a frozen backbone costs nothing. This default runs
        ``backward`` and drops its result. Returns None.
        """
        self.backward(dy)

    def has_trainable(self) -> bool:
        """True when this module or one it contains has a parameter with ``requires_grad``."""
        return any(p.requires_grad for p in self.parameters())

    def _move_to_backend(self) -> None:
        """Keep this module's own arrays in the memory of the backend in force (moves at most once)."""
        be = backends.current()
        for p in self._parameters.values():
            if not be.is_native(p.data):
                p.data = backends.move(p.data, be)
                if p.grad is not None:
                    p.grad = backends.move(p.grad, be)
        for name, b in list(self._buffers.items()):
            if b is not None and not be.is_native(b):
                self._set_buffer(name, backends.move(b, be))

    def _prepare_input(self, x):
        """Convert input to this module's dtype and the backend's array type (see module doc)."""
        be = backends.current()
        if not be.is_native(x):
            x = be.asarray(x)
        if x.dtype.kind not in "biuf" + "c":
            raise TypeError(f"{self._short()}: input must be a real numeric array, got dtype {x.dtype}")
        if x.dtype.kind == "c":
            raise TypeError(f"{self._short()}: complex input is not supported (got {x.dtype})")
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        return x

    def _save(self, cache) -> None:
        """Push what this call's backward needs (nothing under ``no_grad``); see "passes" above."""
        if not is_grad_enabled():
            return
        stack = self._saved_stack
        pid = getattr(_state, "pass_id", 0) if _pass_depth() else next(_pass_ids)
        if stack and stack[-1][0] != pid:
            stack.clear()  # caches of an older pass that no backward consumed
        stack.append((pid, cache))

    def _saved(self):
        """Pop the newest cache for a backward call; raise if there is none or it belongs to
        another forward pass than the rest of this backward."""
        stack = self._saved_stack
        if not stack:
            raise RuntimeError(
                f"{self._short()}: backward() called before forward(), or more times than forward() was called "
                "in the last forward pass (or the forward pass ran under minicnn.no_grad(), which keeps nothing "
                "for backward)"
            )
        pid, cache = stack[-1]
        if getattr(_state, "bwd_depth", 0):
            want = _state.bwd_pass
            if want is None:
                _state.bwd_pass = pid
            elif want != pid:
                raise RuntimeError(
                    f"{self._short()}: this backward does not match its forward pass: the module was run by "
                    "another forward pass since (a module shared between models, or two forward passes "
                    "before one backward); run the forward pass again before its backward"
                )
        stack.pop()
        return cache

    def _has_saved(self) -> bool:
        """True when a forward call left a cache that no backward has consumed yet."""
        return bool(self._saved_stack)

    def _need_forward(self):
        """Deprecated spelling of :meth:`_saved`."""
        return self._saved()

    def _short(self) -> str:
        extra = self.extra_repr()
        return f"{type(self).__name__}({extra})"

    # -- modes ---------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad[...] = 0

    def requires_grad_(self, flag: bool = True) -> "Module":
        for p in self.parameters():
            p.requires_grad = bool(flag)
        return self

    def freeze(self) -> "Module":
        """Mark every parameter frozen (no grad, no optimizer step); dx still flows through."""
        return self.requires_grad_(False)

    def unfreeze(self) -> "Module":
        return self.requires_grad_(True)

    def to(self, dtype) -> "Module":
        """Cast parameters, grads and floating buffers to ``dtype`` and compute in it."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"modules compute in a floating dtype, got {dtype}")
        for m in self.modules():
            object.__setattr__(m, "dtype", dtype)
            for p in m._parameters.values():
                p.data = p.data.astype(dtype)
                if p.grad is not None:
                    p.grad = p.grad.astype(dtype)
            for name, b in list(m._buffers.items()):
                if b is not None and b.dtype.kind == "f":
                    m._set_buffer(name, b.astype(dtype))
        return self

    def double(self) -> "Module":
        return self.to(np.float64)

    def float(self) -> "Module":
        return self.to(np.float32)

    # -- traversal -----------------------------------------------------------------------------
    def children(self) -> Iterator["Module"]:
        return iter(self._modules.values())

    def named_children(self):
        return iter(self._modules.items())

    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mprefix, m in mods:
            for name, p in m._parameters.items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mprefix}.{name}" if mprefix else name), p

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = ""):
        for mprefix, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{mprefix}.{name}" if mprefix else name), b

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameters and persistent buffers by dotted name, as numpy arrays (copies)."""
        out = OrderedDict()
        for mprefix, m in self.named_modules():
            def key(n):
                return f"{mprefix}.{n}" if mprefix else n

            for name, p in m._parameters.items():
                out[key(name)] = np.array(backends.to_numpy(p.data), copy=True)
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    out[key(name)] = np.array(backends.to_numpy(b), copy=True)
        return out

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays from ``state_dict`` into this module.

        With ``strict=True`` any missing, unexpected or mis-shaped key raises one ``StateDictError``
        (a ValueError and a RuntimeError) that lists them all, with both shapes, and nothing is
        modified. Keys ending in ``num_batches_tracked`` are ignored. With ``strict=False`` missing
        and unexpected keys are returned as ``IncompatibleKeys(missing_keys, unexpected_keys)``;
        shape mismatches always raise. Values are cast to each slot's dtype.
        """
        targets = OrderedDict()
        for mprefix, m in self.named_modules():
            for name in m._parameters:
                targets[f"{mprefix}.{name}" if mprefix else name] = (m, name, "param")
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent and name != "num_batches_tracked":
                    targets[f"{mprefix}.{name}" if mprefix else name] = (m, name, "buffer")
        given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
        missing = [k for k in targets if k not in given]
        unexpected = [k for k in given if k not in targets]
        mismatched = []
        for k, (m, name, kind) in targets.items():
            if k in given:
                cur = m._parameters[name].data if kind == "param" else m._buffers[name]
                shape = tuple(np.shape(given[k]))
                if shape != tuple(cur.shape):
                    mismatched.append(f"{k}: checkpoint has shape {shape}, model expects {tuple(cur.shape)}")
        problems = []
        if mismatched:
            problems.append("size mismatch for " + "; ".join(mismatched))
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if problems:
            raise StateDictError(f"load_state_dict into {type(self).__name__} failed: " + " | ".join(problems))
        for k, (m, name, kind) in targets.items():
            if k not in given:
                continue
            val = np.asarray(backends.to_numpy(given[k]))
            if kind == "param":
                p = m._parameters[name]
                p.data = np.array(val, dtype=p.data.dtype, copy=True)
            else:
                cur = m._buffers[name]
                m._set_buffer(name, np.array(val, dtype=cur.dtype, copy=True))
        return IncompatibleKeys(missing, unexpected)

    # -- printing ------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            lines[0] = f"{type(self).__name__}("
            for name, child in self._modules.items():
                child_repr = repr(child).replace("\n", "\n  ")
                lines.append(f"  ({name}): {child_repr}")
            lines.append(")")
            return "\n".join(lines)
        return lines[0] + ")"

    def summary(self, input_shape, file=None) -> str:
        """Print (and return) a Keras-style table: layer, output shape, parameter count.

        ``input_shape`` is one sample's shape (C, H, W) or a full (N, C, H, W). The table is made
        by running a forward pass on zeros in eval mode and recording each leaf module's output.
        """
        from .summary import summarize

        text = summarize(self, input_shape)
        print(text, file=file)
        return text


class WeightBiasLayer(Module):
    """A layer with a ``weight`` and an optional ``bias`` whose backward is one op returning
    (dx, dw, db) (convolution, linear). Subclasses implement ``_grads``; this class asks for only
    the gradients that are wanted, accumulates ``.grad`` and returns dx."""

    def backward(self, dy):
        return self._backward(dy, True)

    def backward_params(self, dy) -> None:
        """dW and db only: no dL/dx (for the first layer of a network)."""
        self._backward(dy, False)

    def _grads(self, dy, x, need_dx, need_dw, need_db):
        """(dx, dw, db) from the op; entries not needed may be None."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _grads")

    def _backward(self, dy, need_dx):
        x = self._saved()
        need_dw = self.weight.requires_grad
        need_db = self.bias is not None and self.bias.requires_grad
        if not (need_dx or need_dw or need_db):
            return None
        dx, dw, db = self._grads(dy, x, need_dx, need_dw, need_db)
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            for name, m in modules[0].items():
                self.add_module(str(name), m)
        else:
            for i, m in enumerate(modules):
                if not isinstance(m, Module):
                    raise TypeError(f"Sequential takes Modules, got {type(m).__name__} at position {i}")
                self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, dy):
        for m in reversed(self._modules.values()):
            dy = m.backward(dy)
        return dy

    def backward_params(self, dy) -> None:
        """Backward down to the first module with a trainable parameter, which skips its own dL/dx
        (see :meth:`Module.backward_params`); the modules before it are not visited."""
        mods = list(self._modules.values())
        first = next((i for i, m in enumerate(mods) if m.has_trainable()), None)
        if first is None:
            return None
        for m in reversed(mods[first + 1:]):
            dy = m.backward(dy)
        mods[first].backward_params(dy)
        return None

    def append(self, module: Module) -> "Sequential":
        self.add_module(str(len(self._modules)), module)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        return mods[idx]
