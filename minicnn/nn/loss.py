"""Losses with PyTorch's names, arguments and semantics: ``loss = loss_fn(input, target)`` for the
value, then ``loss_fn.backward()`` for dL/dinput.

With ``reduction='mean'`` or ``'sum'`` a loss returns a Python float and ``backward(dloss=1.0)``
takes the upstream gradient as a number; with ``reduction='none'`` it returns the array of
per-element losses and ``backward(dloss)`` takes an array of that shape. Derivations:
docs/softmax_cross_entropy.md and docs/losses.md.
"""
import numpy as np

from .. import backends, ops
from .module import Module

_REDUCTIONS = ("none", "mean", "sum")


class _Loss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def _float_pair(self, pred, target):
        pred = self._prepare_input(pred)
        target = self._prepare_input(target)
        if pred.shape != target.shape:
            raise ValueError(
                f"{self._short()}: prediction shape {tuple(pred.shape)} and target shape "
                f"{tuple(target.shape)} must be equal"
            )
        return pred, target

    def _result(self, loss):
        """A float for 'mean'/'sum', the backend array of per-element losses for 'none'."""
        return loss if self.reduction == "none" else float(loss)

    def _upstream(self, dloss, shape):
        """dloss as the ops take it: a float, or for 'none' an array of the loss's ``shape``."""
        if self.reduction != "none":
            if np.ndim(dloss) != 0:
                raise ValueError(f"{self._short()}: dloss must be a number, got shape {tuple(np.shape(dloss))}")
            return float(dloss)
        g = self._prepare_input(dloss)
        if tuple(g.shape) != tuple(shape):
            raise ValueError(f"{self._short()}: backward needs dloss of the loss's shape {tuple(shape)} "
                             f"(reduction='none'), got {tuple(g.shape)}")
        return g

    def _tensor_buffer(self, name, value, ndim=None):
        """Register ``value`` (None or array-like of reals) as a buffer in this module's dtype."""
        if value is not None:
            v = backends.to_numpy(value) if not isinstance(value, (list, tuple, float, int)) else value
            v = np.asarray(v)
            if v.dtype.kind not in "biuf":
                raise TypeError(f"{type(self).__name__}: {name} must be real numbers, got dtype {v.dtype}")
            if ndim is not None and v.ndim != ndim:
                raise ValueError(f"{type(self).__name__}: {name} must be {ndim}-D, got shape {v.shape}")
            value = v if v.dtype.kind == "f" else v.astype(self.dtype)  # floats keep their precision until .to()
        self.register_buffer(name, value)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class _ClassLoss(_Loss):
    """What cross-entropy and NLL share: class weights, ``ignore_index``, the target checks."""

    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(reduction)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"{type(self).__name__}: ignore_index must be an int, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)
        self._tensor_buffer("weight", weight, ndim=1)

    def _batched(self, x, target):
        """(x, target, unbatched): an unbatched (C,) input with a 0-d target becomes a batch of one."""
        if x.ndim == 0:
            raise ValueError(f"{self._short()}: input must be (C,), (N, C) or (N, C, d1, ...), got a 0-d array")
        if x.ndim == 1:
            t = target if backends.current().is_native(target) else backends.current().asarray(target)
            if t.ndim == 0:
                return x.reshape(1, -1), t.reshape(1), True
            if t.dtype.kind == "f" and t.shape == x.shape:
                return x.reshape(1, -1), t.reshape(1, -1), True
            raise ValueError(f"{self._short()}: an unbatched input of shape {tuple(x.shape)} needs a 0-d target "
                             f"(or probabilities of shape {tuple(x.shape)}), got shape {tuple(t.shape)}")
        return x, target, False

    def _check_weight(self, C):
        if self.weight is not None and self.weight.shape != (C,):
            raise ValueError(f"{self._short()}: weight should be defined for all {C} classes or no classes, "
                             f"got weight of shape {tuple(self.weight.shape)}")

    def _class_targets(self, x, target, allow_soft):
        """(targets on the backend, soft, maybe_ignored), checked once.

        Class indices: integer (an integer-valued float array is taken as indices), shape
        (N, d1, ...), each in [0, C) or ``ignore_index``. Class probabilities (``allow_soft``):
        floats of the input's shape, with no ``ignore_index`` >= 0 (PyTorch's rule).
        ``maybe_ignored`` is False only when no target can equal ``ignore_index``.
        """
        be = backends.current()
        t = target if be.is_native(target) else be.asarray(target)
        N, C = x.shape[:2]
        want = (N,) + tuple(x.shape[2:])
        if t.dtype.kind in "c":
            raise TypeError(f"{self._short()}: complex targets are not supported (got {t.dtype})")
        if allow_soft and tuple(t.shape) == tuple(x.shape):
            if t.dtype.kind != "f":
                raise ValueError(f"{self._short()}: targets of the input's shape {tuple(x.shape)} are class "
                                 f"probabilities and must be floating point, got dtype {t.dtype}")
            if self.ignore_index >= 0:
                raise ValueError(f"{self._short()}: ignore_index={self.ignore_index} is not supported for "
                                 "class-probability targets")
            return (t if t.dtype == self.dtype else t.astype(self.dtype)), True, False
        if tuple(t.shape) != want:
            raise ValueError(f"{self._short()}: input of shape {tuple(x.shape)} needs class-index targets of "
                             f"shape {want}" + (" (or class probabilities of the input's shape)" if allow_soft else "")
                             + f", got {tuple(t.shape)}")
        if t.dtype.kind == "f":
            if t.size and not bool((t == t.round()).all()):
                raise ValueError(f"{self._short()}: class-index targets must be integers, got dtype {t.dtype} "
                                 "with non-integer values")
            t = t.astype(np.int64)
        elif t.dtype.kind not in "iu":
            raise ValueError(f"{self._short()}: class-index targets must be integers, got dtype {t.dtype}")
        ignore_in_range = 0 <= self.ignore_index < C
        if t.size == 0:
            return t, False, False
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= C:  # only now look for the culprit, sparing ignore_index
            bad = (t < 0) | (t >= C)
            if not ignore_in_range:
                bad &= t != self.ignore_index
            if bool(bad.any()):
                v = int(t[bad][0])
                raise ValueError(f"{self._short()}: target {v} is out of bounds: targets must lie in [0, {C}) or "
                                 f"equal ignore_index={self.ignore_index}, got min {lo} max {hi}")
        return t, False, lo < 0 or ignore_in_range

    def extra_repr(self):
        parts = []
        if self.weight is not None:
            parts.append(f"weight=<{self.weight.shape[0]} classes>")
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        parts.append(f"reduction={self.reduction!r}")
        return ", ".join(parts)


class CrossEntropyLoss(_ClassLoss):
    r"""Softmax and cross-entropy in one numerically stable op, as ``torch.nn.CrossEntropyLoss``.

    For class-index targets, with :math:`\log p = \mathrm{log\_softmax}(x)` over the class dim,
    class weights :math:`w` and label smoothing :math:`\varepsilon`:

    .. math::
        \ell_n = -\sum_c w_c \left((1-\varepsilon)[c = t_n] + \tfrac{\varepsilon}{C}\right) \log p_{n,c}

    (0 where :math:`t_n` is ``ignore_index``); ``'mean'`` divides the sum by
    :math:`\sum_n w_{t_n}` over the targets kept. Class-probability targets :math:`y` use
    :math:`w_c((1-\varepsilon) y_{n,c} + \varepsilon / C)` and ``'mean'`` divides by the number of
    positions.

    Args:
        weight: per-class weights (C,), or None.
        ignore_index: a class-index target equal to it adds nothing to the loss or the mean.
        reduction: 'none' | 'mean' | 'sum'.
        label_smoothing: :math:`\varepsilon` in [0, 1].

    Shape:
        input (N, C) or (N, C, d1, ...) logits (or (C,) unbatched); target (N,) or (N, d1, ...)
        integer class indices, or class probabilities of the input's shape; output a float, or
        (N, d1, ...) with ``reduction='none'``. ``backward(dloss)`` returns dL/dinput.
    """

    def __init__(self, weight=None, *, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(weight, ignore_index, reduction)
        label_smoothing = float(label_smoothing)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        x, target, unbatched = self._batched(self._prepare_input(input), target)
        self._check_weight(x.shape[1])
        t, soft, maybe_ignored = self._class_targets(x, target, allow_soft=True)
        plain = (x.ndim == 2 and x.shape[0] > 0 and not soft and not maybe_ignored and self.weight is None
                 and self.label_smoothing == 0.0 and self.reduction != "none")
        if plain:  # the fast fused op (a training step's loss)
            loss, probs = ops.softmax_cross_entropy_forward(x, t)
            if self.reduction == "sum":
                loss = float(loss) * x.shape[0]
            self._save(("plain", probs, t, unbatched))
            return float(loss)
        loss, lse = ops.cross_entropy_forward(x, t, self.weight, self.ignore_index, self.label_smoothing,
                                              self.reduction)
        self._save(("general", (x, lse), t, unbatched))
        if unbatched and self.reduction == "none":
            loss = loss.reshape(())
        return self._result(loss)

    def backward(self, dloss=1.0):
        kind, saved, t, unbatched = self._saved()
        shape = (saved[0].shape[0],) + tuple(saved[0].shape[2:]) if kind == "general" else None
        g = self._upstream(dloss, () if unbatched else shape)
        if unbatched and self.reduction == "none":
            g = g.reshape(1)
        if kind == "plain":
            d = ops.softmax_cross_entropy_backward(saved, t)
            scale = g * (saved.shape[0] if self.reduction == "sum" else 1)
            if scale != 1.0:
                d = d * scale
        else:
            x, lse = saved
            d = ops.cross_entropy_backward(x, lse, t, self.weight, self.ignore_index, self.label_smoothing,
                                           self.reduction, g)
        return d.reshape(d.shape[1:]) if unbatched else d

    def extra_repr(self):
        s = super().extra_repr()
        return s + (f", label_smoothing={self.label_smoothing}" if self.label_smoothing else "")


class NLLLoss(_ClassLoss):
    r"""Negative log-likelihood of log-probabilities, as ``torch.nn.NLLLoss``.

    .. math:: \ell_n = -w_{t_n} \, x_{n, t_n}

    (0 where :math:`t_n` is ``ignore_index``); ``'mean'`` divides the sum by :math:`\sum_n w_{t_n}`
    over the targets kept. Put a log-softmax before it, or use :class:`CrossEntropyLoss`, which
    fuses the two.

    Args:
        weight: per-class weights (C,), or None.
        ignore_index: a target equal to it adds nothing to the loss or the mean.
        reduction: 'none' | 'mean' | 'sum'.

    Shape:
        input (N, C) or (N, C, d1, ...) log-probabilities (or (C,) unbatched); target (N,) or
        (N, d1, ...) integer class indices; output a float, or (N, d1, ...) with
        ``reduction='none'``.
    """

    def __init__(self, weight=None, *, ignore_index=-100, reduction="mean"):
        super().__init__(weight, ignore_index, reduction)

    def forward(self, input, target):
        x, target, unbatched = self._batched(self._prepare_input(input), target)
        self._check_weight(x.shape[1])
        t, _, _ = self._class_targets(x, target, allow_soft=False)
        loss = ops.nll_forward(x, t, self.weight, self.ignore_index, self.reduction)
        self._save((x, t, unbatched))
        if unbatched and self.reduction == "none":
            loss = loss.reshape(())
        return self._result(loss)

    def backward(self, dloss=1.0):
        x, t, unbatched = self._saved()
        g = self._upstream(dloss, () if unbatched else t.shape)
        if unbatched and self.reduction == "none":
            g = g.reshape(1)
        d = ops.nll_backward(x, t, self.weight, self.ignore_index, self.reduction, g)
        return d.reshape(d.shape[1:]) if unbatched else d


class BCEWithLogitsLoss(_Loss):
    r"""Sigmoid and binary cross-entropy in one stable op (multi-label heads), as
    ``torch.nn.BCEWithLogitsLoss``.

    .. math:: \ell = -w \left[p\, t \log \sigma(x) + (1 - t) \log(1 - \sigma(x))\right]

    computed as :math:`w\,(p\, t\, \mathrm{softplus}(-x) + (1-t)\,\mathrm{softplus}(x))`, finite
    for any logit. ``'mean'`` averages over all elements.

    Args:
        weight: rescaling weight broadcast to the input's shape, or None.
        reduction: 'none' | 'mean' | 'sum'.
        pos_weight: weight :math:`p` of the positive term, broadcast to the input's shape (a (C,)
            vector weighs the classes of an (N, C) input; use (C, 1, 1) for (N, C, H, W)), or None.

    Shape:
        input and target of one shape (targets in [0, 1]); output a float, or the input's shape
        with ``reduction='none'``.
    """

    def __init__(self, weight=None, *, reduction="mean", pos_weight=None):
        super().__init__(reduction)
        self._tensor_buffer("weight", weight)
        self._tensor_buffer("pos_weight", pos_weight)

    def _check_broadcast(self, shape):
        for name in ("weight", "pos_weight"):
            v = getattr(self, name)
            if v is None:
                continue
            try:
                ok = np.broadcast_shapes(tuple(v.shape), tuple(shape)) == tuple(shape)
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{self._short()}: {name} of shape {tuple(v.shape)} does not broadcast to the "
                                 f"input's shape {tuple(shape)}")

    def forward(self, input, target):
        x, t = self._float_pair(input, target)
        self._check_broadcast(x.shape)
        self._save((x, t))
        return self._result(ops.bce_with_logits_forward(x, t, self.weight, self.pos_weight, self.reduction))

    def backward(self, dloss=1.0):
        x, t = self._saved()
        return ops.bce_with_logits_backward(x, t, self.weight, self.pos_weight, self.reduction,
                                            self._upstream(dloss, x.shape))

    def extra_repr(self):
        s = f"reduction={self.reduction!r}"
        if self.pos_weight is not None:
            s += f", pos_weight=<shape {tuple(self.pos_weight.shape)}>"
        return s


class _PointwiseLoss(_Loss):
    """A loss of (pred - target) per element; subclasses name the op pair and its extra argument."""

    _op = None

    def _args(self):
        return ()

    def forward(self, input, target):
        x, t = self._float_pair(input, target)
        self._save((x, t))
        return self._result(getattr(ops, f"{self._op}_forward")(x, t, *self._args(), self.reduction))

    def backward(self, dloss=1.0):
        x, t = self._saved()
        return getattr(ops, f"{self._op}_backward")(x, t, *self._args(), self.reduction, self._upstream(dloss, x.shape))


class L1Loss(_PointwiseLoss):
    r"""Mean absolute error, as ``torch.nn.L1Loss``: :math:`\ell = |x - y|` per element.

    Args:
        reduction: 'none' | 'mean' | 'sum'.

    Shape: input and target of one shape; output a float, or that shape with ``reduction='none'``.
    """

    _op = "l1"

    def __init__(self, *, reduction="mean"):
        super().__init__(reduction)


class MSELoss(_PointwiseLoss):
    r"""Mean squared error, as ``torch.nn.MSELoss``: :math:`\ell = (x - y)^2` per element.

    Args:
        reduction: 'none' | 'mean' | 'sum'.

    Shape: input and target of one shape; output a float, or that shape with ``reduction='none'``.
    """

    _op = "mse"

    def __init__(self, *, reduction="mean"):
        super().__init__(reduction)


class SmoothL1Loss(_PointwiseLoss):
    r"""Smooth L1, as ``torch.nn.SmoothL1Loss``: with :math:`d = x - y`,

    .. math:: \ell = 0.5\, d^2 / \beta \text{ if } |d| < \beta, \text{ else } |d| - 0.5\,\beta

    (:math:`\beta = 0` is L1).

    Args:
        reduction: 'none' | 'mean' | 'sum'.
        beta: where the quadratic part ends (>= 0).

    Shape: input and target of one shape; output a float, or that shape with ``reduction='none'``.
    """

    _op = "smooth_l1"

    def __init__(self, *, reduction="mean", beta=1.0):
        super().__init__(reduction)
        beta = float(beta)
        if not beta >= 0:
            raise ValueError(f"SmoothL1Loss: beta must be >= 0, got {beta}")
        self.beta = beta

    def _args(self):
        return (self.beta,)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, beta={self.beta}"


class HuberLoss(_PointwiseLoss):
    r"""Huber loss, as ``torch.nn.HuberLoss``: with :math:`d = x - y`,

    .. math:: \ell = 0.5\, d^2 \text{ if } |d| < \delta, \text{ else } \delta\,(|d| - 0.5\,\delta)

    (:math:`\delta` times :class:`SmoothL1Loss` with :math:`\beta = \delta`).

    Args:
        reduction: 'none' | 'mean' | 'sum'.
        delta: where the quadratic part ends (> 0).

    Shape: input and target of one shape; output a float, or that shape with ``reduction='none'``.
    """

    _op = "huber"

    def __init__(self, *, reduction="mean", delta=1.0):
        super().__init__(reduction)
        delta = float(delta)
        if not delta > 0:
            raise ValueError(f"HuberLoss: delta must be > 0, got {delta}")
        self.delta = delta

    def _args(self):
        return (self.delta,)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, delta={self.delta}"
