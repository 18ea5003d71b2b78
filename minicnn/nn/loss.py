"""Losses: call ``loss_fn(pred, target)`` for the value, then ``loss_fn.backward()`` for dL/dpred."""
import numpy as np

from .. import backends, ops
from .module import Module


class _Loss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"{type(self).__name__}: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def _scale(self, n):
        """Ops return the mean; 'sum' multiplies by the count the mean was taken over."""
        return 1.0 if self.reduction == "mean" else float(n)

    def _float_pair(self, pred, target):
        pred = self._prepare_input(pred)
        target = self._prepare_input(target)
        if pred.shape != target.shape:
            raise ValueError(
                f"{type(self).__name__}: prediction shape {tuple(pred.shape)} and target shape "
                f"{tuple(target.shape)} must be equal"
            )
        return pred, target

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(_Loss):
    """Softmax + negative log-likelihood over integer class targets, fused and numerically stable.

    ``loss_fn(logits, targets)`` with logits (N, C) and integer targets (N,) in [0, C); returns the
    mean (or sum) loss as a float. ``backward()`` returns dL/dlogits = (softmax - onehot) / N.
    """

    def forward(self, logits, targets):
        logits = self._prepare_input(logits)
        if logits.ndim != 2:
            raise ValueError(f"CrossEntropyLoss: expected logits of shape (N, C), got {tuple(logits.shape)}")
        t = backends.to_numpy(targets) if not backends.current().is_native(targets) else targets
        t = np.asarray(backends.to_numpy(t))
        if t.dtype.kind not in "iu":
            if t.dtype.kind == "f" and np.all(t == np.round(t)):
                t = t.astype(np.int64)
            else:
                raise ValueError(f"CrossEntropyLoss: targets must be integer class indices, got dtype {t.dtype}")
        if t.shape != (logits.shape[0],):
            raise ValueError(
                f"CrossEntropyLoss: logits {tuple(logits.shape)} need targets of shape ({logits.shape[0]},), got {t.shape}"
            )
        if t.size and (t.min() < 0 or t.max() >= logits.shape[1]):
            raise ValueError(f"CrossEntropyLoss: targets must lie in [0, {logits.shape[1]}), got min {t.min()} max {t.max()}")
        t = backends.current().asarray(t.astype(np.int64))
        loss, probs = ops.softmax_cross_entropy_forward(logits, t)
        self._save((probs, t))
        return float(loss) * self._scale(logits.shape[0])

    def backward(self, dloss=1.0):
        probs, t = self._saved()
        return ops.softmax_cross_entropy_backward(probs, t) * (dloss * self._scale(probs.shape[0]))


class BCEWithLogitsLoss(_Loss):
    """Sigmoid + binary cross-entropy per element (multi-label heads), stable for any logit."""

    def forward(self, logits, targets):
        logits, targets = self._float_pair(logits, targets)
        self._save((logits, targets))
        return float(ops.bce_with_logits_forward(logits, targets)) * self._scale(logits.size)

    def backward(self, dloss=1.0):
        logits, targets = self._saved()
        return ops.bce_with_logits_backward(logits, targets) * (dloss * self._scale(logits.size))


class MSELoss(_Loss):
    """Mean squared error."""

    def forward(self, pred, target):
        pred, target = self._float_pair(pred, target)
        self._save((pred, target))
        return float(ops.mse_forward(pred, target)) * self._scale(pred.size)

    def backward(self, dloss=1.0):
        pred, target = self._saved()
        return ops.mse_backward(pred, target) * (dloss * self._scale(pred.size))
