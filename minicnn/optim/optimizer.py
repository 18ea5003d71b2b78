"""Optimizer: the base class every optimizer builds on (PyTorch's ``torch.optim.Optimizer`` semantics).

An optimizer holds ``param_groups``, a list of dicts. Each dict has ``"params"`` (a list of
:class:`~minicnn.nn.Parameter`) plus every hyper-parameter for that group; a group that does not name
a hyper-parameter takes the optimizer's default. Per-parameter state (momentum buffers, moment
estimates, step counts) lives in ``optimizer.state[param]`` and is created on the first step that
touches the parameter.

Arrays: an optimizer computes in the array type of its parameters, whatever backend holds them.
Updates are written in place into ``param.data`` with array operators and methods, and the few
functions they need are numpy's (``np.zeros_like``, ``np.sqrt``, ``np.maximum``) called on the
parameter's own arrays. That is the clearest of the ways to stay backend-neutral: the step reads
like the equations in ``docs/optim.md``, with no array-module lookup in every optimizer, and numpy
hands each call to the array's own library through its dispatch protocols (``__array_function__``
for ``zeros_like``, ``__array_ufunc__`` for the ufuncs): a CuPy array gets CuPy's function and
stays in device memory, an ndarray subclass keeps its class. So per-parameter state is created
from the parameter (``np.zeros_like(p.data)``, ``g.copy()``) and lives where the parameter lives.
Only ``state_dict`` brings state to the host (numpy copies, saveable anywhere); ``load_state_dict``
puts it back in the parameters' memory, through the ``asarray`` of the backend that owns them.
"""
from __future__ import annotations

import copy

import numpy as np

from .. import backends
from ..nn.module import Module, Parameter


def _check_hparam(owner: str, name: str, value, upper: float | None = None, upper_open: bool = False) -> float:
    """Return ``value`` as a float after checking ``0 <= value`` (and ``value < upper`` or ``<= upper``).

    ``not 0 <= value`` is used on purpose so that NaN is rejected too.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not 0.0 <= v:
        raise ValueError(f"{owner}: invalid {name} value: {value} (must be >= 0)")
    if upper is not None:
        if upper_open and not v < upper:
            raise ValueError(f"{owner}: invalid {name} value: {value} (must be in [0, {upper}))")
        if not upper_open and not v <= upper:
            raise ValueError(f"{owner}: invalid {name} value: {value} (must be in [0, {upper}])")
    return v


def _array_like(ref, value):
    """A copy of ``value`` (a host array, or any backend's) with the dtype and array type of ``ref``.

    The copy is made on the host and brought into ``ref``'s memory by the ``asarray`` of the
    backend that owns ``ref`` (``backends.owner``; a host copy when no backend claims it).
    """
    host = np.array(backends.to_numpy(value), dtype=ref.dtype, copy=True)
    be = backends.owner(ref)
    return host if be is None else be.asarray(host)


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad`` and state (de)serialisation.

    ``params`` is an iterable of :class:`Parameter` (for example ``model.parameters()``), an iterable of
    ``(name, Parameter)`` pairs (``model.named_parameters()``), or a list of dicts
    ``{"params": [...], "lr": 0.01, ...}`` giving each group its own hyper-parameters (discriminative
    learning rates). ``defaults`` holds the hyper-parameters a group gets when it does not name them.

    Subclasses implement :meth:`_validate_group` (raise on bad hyper-parameters) and :meth:`step`.
    Parameters whose ``requires_grad`` is False or whose ``grad`` is None are skipped by ``step``:
    they are never moved and get no state.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.state: dict = {}
        self.param_groups: list[dict] = []
        if isinstance(params, (Parameter, Module, np.ndarray)) or not hasattr(params, "__iter__"):
            hint = " (pass model.parameters())" if isinstance(params, Module) else ""
            raise TypeError(
                f"{type(self).__name__}: params must be an iterable of Parameters or of param-group dicts, "
                f"got {type(params).__name__}{hint}"
            )
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__}: optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    # -- groups --------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        """Add a group ``{"params": [...], **hyper_parameters}``; unnamed hyper-parameters take the defaults.

        Useful when unfreezing layers during fine-tuning: add their parameters as a new group, maybe
        with a smaller learning rate. A parameter may belong to only one group.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"{type(self).__name__}: param_group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{type(self).__name__}: param_group needs a 'params' entry")
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(
                f"{type(self).__name__}: parameters must be given in an ordered collection, not a set "
                "(set order changes between runs); use a list"
            )
        elif isinstance(params, Module):
            raise TypeError(f"{type(self).__name__}: param_group 'params' got a Module; pass module.parameters()")
        params = list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        params = [p[1] if isinstance(p, tuple) else p for p in params]
        if names:
            if len(names) != len(params):
                raise ValueError(f"{type(self).__name__}: give either all parameters with names or none")
            group["param_names"] = names
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{type(self).__name__}: can only optimize Parameters, but item {i} of the group is "
                    f"{type(p).__name__}"
                )
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{type(self).__name__}: a parameter group contains the same parameter twice")
        for other in self.param_groups:
            if ("param_names" in other) != ("param_names" in group):
                raise ValueError(f"{type(self).__name__}: all parameter groups must be given with names, or none")
            if {id(p) for p in other["params"]} & {id(p) for p in params}:
                raise ValueError(f"{type(self).__name__}: some parameters appear in more than one parameter group")
        group["params"] = params
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self._validate_group(group)
        self.param_groups.append(group)

    def _validate_group(self, group: dict) -> None:
        """Raise ValueError/TypeError when a group's hyper-parameters are invalid (subclasses extend)."""
        _check_hparam(type(self).__name__, "learning rate", group["lr"])

    # -- stepping ------------------------------------------------------------------------------
    def step(self, closure=None):
        """Apply one update to every parameter that has a gradient; return ``closure()`` if given."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step")

    def _trainable(self, group: dict):
        """The parameters of ``group`` that this step moves: trainable and with a gradient."""
        for i, p in enumerate(group["params"]):
            if not p.requires_grad or p.grad is None:
                continue
            if tuple(p.grad.shape) != tuple(p.data.shape):
                label = group["param_names"][i] if "param_names" in group else f"parameter {i} of its group"
                raise ValueError(
                    f"{type(self).__name__}.step: gradient of {label} has shape {tuple(p.grad.shape)}, "
                    f"the parameter has shape {tuple(p.data.shape)}"
                )
            yield p

    def _state_of(self, p: Parameter) -> dict:
        """``self.state[p]``, with its arrays moved to ``p.data``'s array type if the model moved backend."""
        st = self.state.setdefault(p, {})
        for k, v in st.items():
            if hasattr(v, "shape") and type(v) is not type(p.data):
                st[k] = _array_like(p.data, v)
        return st

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every parameter in every group (``None``, or zeros in place)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad[...] = 0

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimizer state as ``{"state": {index: {...}}, "param_groups": [{..., "params": [index]}]}``.

        Parameters are replaced by their running index over all groups (PyTorch's layout). Arrays are
        returned as numpy copies, so the dict can be saved whatever backend produced it.
        """
        index: dict = {}
        groups = []
        for g in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            for p in g["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in g["params"]]
            groups.append(packed)
        state = {}
        for g in self.param_groups:
            for p in g["params"]:
                if p in self.state:
                    state[index[id(p)]] = {
                        k: (np.array(backends.to_numpy(v), copy=True) if hasattr(v, "shape") else v)
                        for k, v in self.state[p].items()
                    }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore state saved by :meth:`state_dict` into an optimizer built over the same parameters.

        The group count, each group's parameter count and every state array's shape must match; the
        hyper-parameters are taken from the saved groups. Arrays are cast to each parameter's dtype
        and array type.
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups'")
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}.load_state_dict: saved state has {len(saved_groups)} parameter groups, "
                f"this optimizer has {len(self.param_groups)}"
            )
        for i, (g, s) in enumerate(zip(self.param_groups, saved_groups)):
            if len(g["params"]) != len(s["params"]):
                raise ValueError(
                    f"{name}.load_state_dict: parameter group {i} has {len(s['params'])} parameters in the "
                    f"saved state and {len(g['params'])} in this optimizer"
                )
        id_map = {}
        for g, s in zip(self.param_groups, saved_groups):
            for j, (p, key) in enumerate(zip(g["params"], s["params"])):
                label = g["param_names"][j] if "param_names" in g else f"parameter {key}"
                id_map[key] = (p, label)
        new_state: dict = {}
        for key, entry in state_dict["state"].items():
            if key not in id_map:
                raise ValueError(f"{name}.load_state_dict: state for unknown parameter index {key!r}")
            p, label = id_map[key]
            restored = {}
            for k, v in entry.items():
                if hasattr(v, "shape") and v.ndim > 0:
                    if tuple(v.shape) != tuple(p.shape):
                        raise ValueError(
                            f"{name}.load_state_dict: state '{k}' of {label} has shape {tuple(v.shape)}, "
                            f"the parameter has shape {tuple(p.shape)}"
                        )
                    restored[k] = _array_like(p.data, v)
                elif hasattr(v, "shape"):  # a 0-d array, e.g. a step count saved as an array
                    restored[k] = v.item()
                else:
                    restored[k] = copy.deepcopy(v)
            new_state[p] = restored
        for g, s in zip(self.param_groups, saved_groups):
            s["params"] = g["params"]
            if "param_names" in g and "param_names" not in s:
                s["param_names"] = g["param_names"]
        for s in saved_groups:
            # a state saved by an older version may lack newer hyper-parameters: take the defaults
            for k, default in self.defaults.items():
                s.setdefault(k, default)
            self._validate_group(s)
        self.param_groups[:] = saved_groups
        self.state = new_state

    # -- printing ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k not in ("params", "param_names"):
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


def _lerp_(a, b, weight: float) -> None:
    """``a <- a + weight * (b - a)`` in place, rounded as PyTorch's ``lerp_`` rounds it.

    PyTorch picks one of two algebraically equal forms by the size of ``weight``; using the same
    one keeps float32 results within an ulp of PyTorch's.
    """
    if abs(weight) < 0.5:
        a += weight * (b - a)
    else:
        a[...] = b - (b - a) * (1.0 - weight)


__all__ = ["Optimizer"]
