"""Parameter, Module and the containers (Sequential, ModuleList, ModuleDict): the tree every model is built from.

A Module keeps its parameters, buffers and child modules in insertion order, so ``state_dict()``
keys come out in the same order and with the same dotted names as PyTorch's (``layer1.0.bn1.weight``).
``forward(x)`` stores exactly what ``backward(dy)`` needs; ``backward`` returns dL/dx and *adds*
each parameter's gradient into ``param.grad``.

Input dtype, the one documented rule: every module has a compute dtype (float32 unless
``module.to(np.float64)`` was called, which gradient checks do). Input arrays of any real dtype
(float16/64, integers, bool) are converted to that dtype on entry; complex input raises TypeError.
"""
from __future__ import annotations

import itertools
import operator
import threading
from collections import OrderedDict, namedtuple
from collections.abc import Mapping
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
# memory. Under ``no_grad`` nothing is pushed, and older passes' caches are dropped all the same
# (a backward after a no_grad forward raises instead of using the pass before it). One backward
# (the outermost ``backward``/``backward_params`` call and everything it calls, or a
# ``backward_pass()`` block) must pop caches of a single pass: if another forward pass ran one of
# its modules in between, the backward raises instead of mixing two passes' caches into wrong
# gradients. A method that runs a forward pass without ``__call__`` (``ResNet.embed``) wraps it in
# ``forward_pass()``; a layer's ``forward`` called directly is a pass of its own.
_pass_ids = itertools.count(1)


class _PassState(threading.local):
    """Per thread: ``depth`` of nested module calls (0 outside any), ``pass_id`` of the pass in
    progress, ``bwd_depth`` of nested backward calls, and ``bwd_pass``, the pass the backward in
    progress pops from (None until its first pop)."""

    depth = 0
    pass_id = 0
    bwd_depth = 0
    bwd_pass = None


_state = _PassState()


class forward_pass:
    """Run a block as one forward pass: module calls inside it share one pass.

    What a model method other than ``__call__`` wraps its work in (``ResNet.embed``, a Grad-CAM
    loop that runs a Sequential's children one by one), so that a module called twice in the block
    keeps both caches. A plain class rather than a generator context manager: it is cheap to enter.
    """

    __slots__ = ()

    def __enter__(self):
        st = _state
        if st.depth == 0:
            st.pass_id = next(_pass_ids)
        st.depth += 1
        return self

    def __exit__(self, *exc):
        _state.depth -= 1
        return False


class backward_pass:
    """Run a block as one backward: every cache popped inside it must come from one forward pass.

    ``backward``/``backward_params`` of every Module subclass already do this for their own call;
    this is for code that walks a model's children by hand (``minicnn.gradcam`` on a Sequential).
    """

    __slots__ = ()

    def __enter__(self):
        st = _state
        if st.bwd_depth == 0:
            st.bwd_pass = None
        st.bwd_depth += 1
        return self

    def __exit__(self, *exc):
        _state.bwd_depth -= 1
        return False


def _backward_entry(fn):
    """Wrap a subclass's ``backward``/``backward_params`` so the outermost call checks that every
    cache it pops comes from one forward pass (see the note above)."""

    def wrapper(self, *args, **kwargs):
        st = _state
        depth = st.bwd_depth
        if depth == 0:
            st.bwd_pass = None
        st.bwd_depth = depth + 1
        try:
            return fn(self, *args, **kwargs)
        finally:
            st.bwd_depth = depth

    wrapper.__name__, wrapper.__qualname__, wrapper.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    wrapper.__module__ = fn.__module__
    wrapper.__wrapped__ = fn
    wrapper._pass_checked = True
    return wrapper


class RemovableHandle:
    """What ``register_forward_hook`` and ``register_forward_pre_hook`` return: ``remove()``
    takes the hook out again (a second ``remove`` does nothing). Also a context manager that
    removes the hook on exit."""

    _ids = itertools.count()

    def __init__(self, hooks: "OrderedDict"):
        self._hooks = hooks
        self.id = next(RemovableHandle._ids)

    def remove(self) -> None:
        self._hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


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
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())

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
        # as PyTorch: a name keeps its place in its own store (state_dict order), and an array or
        # None assigned to a buffer's name updates the buffer
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            buffers.pop(name, None)
            modules.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            modules[name] = value
        elif name in buffers and (value is None or (hasattr(value, "shape") and hasattr(value, "dtype"))):
            buffers[name] = value
        else:
            params.pop(name, None)
            buffers.pop(name, None)
            modules.pop(name, None)
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            store.pop(name, None)
        object.__delattr__(self, name)

    def _check_new_name(self, kind: str, name, value_ok: bool, value) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() before register_{kind}")
        if not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}.register_{kind}: name must be a str, got {type(name).__name__}")
        if not name or "." in name:
            raise KeyError(f"{type(self).__name__}.register_{kind}: {kind} name must be non-empty and contain no '.', "
                           f"got {name!r}")
        if not value_ok:
            want = "a Parameter" if kind == "parameter" else "an array"
            raise TypeError(f"{type(self).__name__}.register_{kind}: {name!r} must be {want} or None, "
                            f"got {type(value).__name__}")
        own = {"parameter": self._parameters, "buffer": self._buffers}[kind]
        if name not in own and (name in self._parameters or name in self._buffers or name in self._modules):
            raise KeyError(f"{type(self).__name__}.register_{kind}: attribute {name!r} already exists")

    def register_buffer(self, name: str, value, persistent: bool = True) -> None:
        """A non-trainable array that belongs to the state (e.g. batchnorm running stats).

        ``persistent=False`` keeps it out of ``state_dict``. ``value`` may be None (a slot listed by
        nothing until it is set). As in PyTorch, the name must be a str without '.', and must not be
        taken by a parameter or child module (KeyError).
        """
        self._check_new_name("buffer", name, value is None or (hasattr(value, "shape") and hasattr(value, "dtype")),
                             value)
        self.__setattr__(name, value)
        self._buffers[name] = value
        if not persistent:
            self._non_persistent.add(name)

    def _set_buffer(self, name: str, value) -> None:
        """Replace a buffer's array (used by layers that update running statistics)."""
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    def register_parameter(self, name: str, param) -> None:
        """Add ``param`` (a Parameter, or None) under ``name``, as ``self.name = param`` does."""
        self._check_new_name("parameter", name, param is None or isinstance(param, Parameter), param)
        self.__setattr__(name, param)
        if param is None:
            self._parameters.pop(name, None)

    def add_module(self, name: str, module: "Module") -> None:
        """Add a child module under ``name`` (None is allowed and lists nothing). As in PyTorch the
        name must be a non-empty str without '.' that is not already another attribute (KeyError)."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.add_module: {name!r} must be a Module or None, "
                            f"got {type(module).__name__}")
        if not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}.add_module: module name must be a str, got {type(name).__name__}")
        if not name or "." in name:
            raise KeyError(f"{type(self).__name__}.add_module: module name must be non-empty and contain no '.', "
                           f"got {name!r}")
        if name not in self._modules and hasattr(self, name):
            raise KeyError(f"{type(self).__name__}.add_module: attribute {name!r} already exists")
        self.__setattr__(name, module)
        if module is None:
            self._modules[name] = None

    register_module = add_module

    # -- calling -----------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        """Run ``forward`` as (part of) a forward pass, with the registered hooks around it.

        A call from outside any other module call starts a new pass (see "passes" above); the
        hooks run inside it, so a module a hook calls belongs to the same pass.
        """
        self._move_to_backend()
        st = _state
        depth = st.depth
        if depth == 0:
            st.pass_id = next(_pass_ids)
        st.depth = depth + 1
        try:
            if self._forward_pre_hooks:
                args = self._run_pre_hooks(args)
            out = self.forward(*args, **kwargs)
            if self._forward_hooks:
                out = self._run_hooks(args, out)
        finally:
            st.depth = depth
        return out

    def _run_pre_hooks(self, args):
        for hook in list(self._forward_pre_hooks.values()):
            result = hook(self, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
        return args

    def _run_hooks(self, args, out):
        for hook in list(self._forward_hooks.values()):
            result = hook(self, args, out)
            if result is not None:
                out = result
        return out

    def register_forward_hook(self, hook) -> RemovableHandle:
        """Call ``hook(module, args, output)`` after every forward call; ``args`` is the tuple of
        positional inputs. A hook that returns something other than None replaces the output (the
        backward is still this module's: a replacement must not change what it is the gradient
        of, as with PyTorch's in-place caveats). Hooks run in registration order. Returns a handle
        whose ``remove()`` unregisters the hook.
        """
        if not callable(hook):
            raise TypeError(f"{type(self).__name__}.register_forward_hook: hook must be callable, "
                            f"got {type(hook).__name__}")
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    def register_forward_pre_hook(self, hook) -> RemovableHandle:
        """Call ``hook(module, args)`` before every forward call; a non-None return replaces the
        positional inputs (a single value is taken as a one-element tuple). Returns a handle whose
        ``remove()`` unregisters the hook."""
        if not callable(hook):
            raise TypeError(f"{type(self).__name__}.register_forward_pre_hook: hook must be callable, "
                            f"got {type(hook).__name__}")
        handle = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[handle.id] = hook
        return handle

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
        st = _state
        pid = st.pass_id if st.depth else next(_pass_ids)
        stack = self._saved_stack
        if stack and stack[-1][0] != pid:
            stack.clear()  # caches of an older pass that no backward consumed
        if is_grad_enabled():
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
        st = _state
        if st.bwd_depth:
            want = st.bwd_pass
            if want is None:
                st.bwd_pass = pid
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
    # As in PyTorch, a module reachable along several paths (one ReLU used twice in a Sequential) is
    # listed once, under its first name; ``remove_duplicate=False`` lists it along every path
    # (what ``state_dict`` does, so a shared layer's weights appear under each of its names).
    def children(self) -> Iterator["Module"]:
        """The direct child modules, each once."""
        for _, m in self.named_children():
            yield m

    def named_children(self):
        """(name, module) for each direct child, each module once (under its first name)."""
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        """(dotted name, module) for this module and every one below it, depth first, in
        definition order; ``memo`` is a set of ids already listed (PyTorch's signature)."""
        if memo is None:
            memo = set()
        if id(self) in memo:
            return
        if remove_duplicate:
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else name, remove_duplicate)

    def modules(self):
        """This module and every module below it, each once."""
        for _, m in self.named_modules():
            yield m

    def apply(self, fn) -> "Module":
        """Call ``fn(module)`` on every child (recursively, children first) and then on this
        module, as PyTorch's ``apply`` (e.g. ``model.apply(init_weights)``); returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def _named_members(self, store, prefix, recurse, remove_duplicate):
        seen = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for mprefix, m in mods:
            for name, v in getattr(m, store).items():
                if v is None or (remove_duplicate and id(v) in seen):
                    continue
                seen.add(id(v))
                yield (f"{mprefix}.{name}" if mprefix else name), v

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """(dotted name, Parameter), each parameter once (a shared layer's under its first name)."""
        return self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """(dotted name, array) for every buffer that is not None, persistent or not, each once."""
        return self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameters and persistent buffers by dotted name, as numpy arrays (copies)."""
        out = OrderedDict()
        for mprefix, m in self.named_modules(remove_duplicate=False):
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
        modified. A BatchNorm's ``num_batches_tracked`` (PyTorch's state dicts carry one per
        BatchNorm) is accepted when present and not loaded, and not missing when absent; the same
        name under a module that has no such buffer is an unexpected key. With ``strict=False`` missing
        and unexpected keys are returned as ``IncompatibleKeys(missing_keys, unexpected_keys)``;
        shape mismatches always raise. Values are cast to each slot's dtype.
        """
        targets = OrderedDict()
        counters = set()  # keys of the num_batches_tracked buffers: accepted, never loaded nor required
        for mprefix, m in self.named_modules(remove_duplicate=False):
            for name in m._parameters:
                targets[f"{mprefix}.{name}" if mprefix else name] = (m, name, "param")
            for name, b in m._buffers.items():
                key = f"{mprefix}.{name}" if mprefix else name
                if name == "num_batches_tracked":
                    counters.add(key)
                elif b is not None and name not in m._non_persistent:
                    targets[key] = (m, name, "buffer")
        given = {k: v for k, v in state_dict.items() if k not in counters}
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
        (see :meth:`Module.backward_params`); the modules before it are not visited. A module that
        appears more than once gets a backward for each of its uses from that first one on (a
        shared layer pops one cache per use, newest first)."""
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
        return mods[_index(self, idx, len(mods))]

    def __setitem__(self, idx, module) -> None:
        """``seq[i] = module`` replaces the i-th module in place, keeping its name (PyTorch's
        ``model.classifier[6] = nn.Linear(4096, 10)``)."""
        if not isinstance(module, Module):
            raise TypeError(f"Sequential takes Modules, got {type(module).__name__}")
        name = list(self._modules)[_index(self, idx, len(self._modules))]
        setattr(self, name, module)


def _index(container, idx, size: int) -> int:
    """``idx`` as a position in 0..size-1, with Python's negative indices; IndexError otherwise."""
    try:
        i = operator.index(idx)
    except TypeError:
        raise TypeError(f"{type(container).__name__} indices must be integers or slices, "
                        f"got {type(idx).__name__}") from None
    if not -size <= i < size:
        raise IndexError(f"{type(container).__name__}: index {i} is out of range for {size} modules")
    return i + size if i < 0 else i


class ModuleList(Module):
    """A list of modules, registered as children ``0``, ``1``, ... so their parameters appear in
    ``parameters()`` and ``state_dict()`` (``0.weight``, ``1.bias``), as PyTorch's ``nn.ModuleList``.

    It has no ``forward``: the module that holds it decides how to run its entries (and runs its
    backward in reverse). Indexing, slicing (a new ModuleList of the same modules), ``len``,
    iteration, ``append``, ``extend``, ``insert``, ``pop``, ``del``, ``+=`` and ``+`` work as on a
    list; the entries are renumbered after an insertion or a deletion.
    """

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _renumber(self, mods) -> None:
        for name in list(self._modules):
            self.__dict__.pop(name, None)
        self._modules.clear()
        for i, m in enumerate(mods):
            self.add_module(str(i), m)

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(mods[idx])
        return mods[_index(self, idx, len(mods))]

    def __setitem__(self, idx, module) -> None:
        self.add_module(str(_index(self, idx, len(self._modules))), module)

    def __delitem__(self, idx) -> None:
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            del mods[idx]
        else:
            del mods[_index(self, idx, len(mods))]
        self._renumber(mods)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __iadd__(self, modules) -> "ModuleList":
        return self.extend(modules)

    def __add__(self, other) -> "ModuleList":
        return ModuleList(list(self) + list(other))

    def append(self, module: Module) -> "ModuleList":
        """Add ``module`` at the end; returns self."""
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules) -> "ModuleList":
        """Append every module of an iterable; returns self."""
        if isinstance(modules, Module) and not isinstance(modules, (ModuleList, Sequential)):
            raise TypeError(f"ModuleList.extend should be called with an iterable of Modules, "
                            f"but got {type(modules).__name__}")
        try:
            items = list(modules)
        except TypeError:
            raise TypeError(f"ModuleList.extend should be called with an iterable of Modules, "
                            f"but got {type(modules).__name__}") from None
        for m in items:
            self.append(m)
        return self

    def insert(self, index: int, module: Module) -> None:
        """Insert ``module`` before position ``index`` (as ``list.insert``)."""
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList.insert: expected a Module, got {type(module).__name__}")
        mods = list(self._modules.values())
        mods.insert(operator.index(index), module)
        self._renumber(mods)

    def pop(self, idx: int = -1) -> Module:
        """Remove and return the module at ``idx`` (the last by default)."""
        mods = list(self._modules.values())
        m = mods.pop(_index(self, idx, len(mods)))
        self._renumber(mods)
        return m


class ModuleDict(Module):
    """An ordered dict of modules, registered as children under their keys so their parameters
    appear in ``parameters()`` and ``state_dict()`` (``encoder.weight``), as PyTorch's
    ``nn.ModuleDict``. Insertion order is kept; ``update`` takes a mapping or (key, module) pairs.

    It has no ``forward``: the module that holds it decides how to run its entries.
    """

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        self.add_module(key, module)

    def __delitem__(self, key: str) -> None:
        del self._modules[key]
        self.__dict__.pop(key, None)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key) -> bool:
        return key in self._modules

    def clear(self) -> None:
        for key in list(self._modules):
            del self[key]

    def pop(self, key: str) -> Module:
        """Remove ``key`` and return its module (KeyError if absent)."""
        m = self[key]
        del self[key]
        return m

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()

    def update(self, modules) -> None:
        """Add or replace entries from a mapping (in its order) or an iterable of (key, module) pairs."""
        if isinstance(modules, (Mapping, ModuleDict)):
            for key, m in modules.items():
                self[key] = m
            return
        try:
            entries = list(modules)
        except TypeError:
            raise TypeError(f"ModuleDict.update should be called with an iterable of key/value pairs, "
                            f"but got {type(modules).__name__}") from None
        for j, entry in enumerate(entries):
            try:
                pair = tuple(entry)
            except TypeError:
                raise TypeError(f"ModuleDict update sequence element #{j} should be a (key, module) pair, "
                                f"but got {type(entry).__name__}") from None
            if len(pair) != 2:
                raise ValueError(f"ModuleDict update sequence element #{j} has length {len(pair)}; 2 is required")
            self[pair[0]] = pair[1]
