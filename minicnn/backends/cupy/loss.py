"""Losses on the GPU: ``kernels/loss.cu``.

The ops mirror ``backends/numpy/loss.py`` (the reference). The class losses (cross-entropy, NLL,
and the plain softmax cross-entropy) see their input (N, C, d1, ...) as (N, C, S) and reduce each
of the N*S rows of C scores in double, one thread or one block per row
(:func:`~.activation.row_launch`); the elementwise losses (BCE with logits, MSE, L1, smooth L1,
Huber) are one kernel each way with the loss as a number. A reduced loss is the per-block
partial sums added by one more block (``loss_total``), in double, so nothing leaves the device.

Targets and weights stay on the device (a host array is copied over once). A class index
outside [0, C) that is not ``ignore_index`` is never read through; the forward then raises a
ValueError naming it (the one check that reads a number back from the device: how many such
indices the kernel met). The layers (``nn.CrossEntropyLoss``, ``nn.NLLLoss``) check the range
before they call the op.

Written and compile-checked, and checked against the reference on the host CUDA emulator; not
yet run on a GPU.
"""
from __future__ import annotations

import numpy as np

from ._launch import DEFAULT_BLOCK as BLOCK
from ._launch import grid_1d, suffix
from .activation import REDUCE_BLOCK, native, prepare, row_launch

__all__ = [
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "nll_forward",
    "nll_backward",
    "bce_with_logits_forward",
    "bce_with_logits_backward",
    "mse_forward",
    "mse_backward",
    "l1_forward",
    "l1_backward",
    "smooth_l1_forward",
    "smooth_l1_backward",
    "huber_forward",
    "huber_backward",
]

FILE = "loss.cu"
# the elementwise losses, numbered as loss.cu's E_* enum
BCE, MSE, L1, SMOOTH_L1, HUBER = 0, 1, 2, 3, 4


def _check_reduction(reduction, where):
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{where}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def _total(rt, part, dt, mean, den_part=None, den_const=0.0):
    """A 0-d array of ``dt``: sum(part), divided for 'mean' by sum(den_part) (when given) or den_const."""
    out = rt.empty((), dt)
    den_count = 0 if den_part is None else den_part.size
    rt.kernel(FILE, f"loss_total_{suffix(dt)}")((1,), (REDUCE_BLOCK,),
                                                (part, np.int64(part.size), part if den_part is None else den_part,
                                                 np.int64(den_count), np.float64(den_const), np.int32(bool(mean)),
                                                 out))
    return out


# -- class losses ------------------------------------------------------------------------------------

class _ClassCall:
    """The arrays of one cross-entropy / NLL call, on the device and ready for the class kernels."""

    def __init__(self, rt, x, targets, weight, ignore_index, label_smoothing, where, allow_soft, has_ignore=True):
        x = native(rt, x)
        if x.ndim < 2:
            raise ValueError(f"{where}: input must be (N, C) or (N, C, d1, ...), got shape {tuple(x.shape)}")
        self.rt, self.where = rt, where
        self.dt = x.dtype
        self.sfx = suffix(self.dt)
        self.shape = tuple(x.shape)
        self.N, self.C = (int(s) for s in x.shape[:2])
        self.S = int(np.prod(x.shape[2:], dtype=np.int64))
        self.out_shape = (self.N,) + tuple(x.shape[2:])
        self.z = prepare(rt, x, self.dt)
        targets = native(rt, targets)
        self.soft = targets.dtype.kind == "f"
        if self.soft:
            if not allow_soft or tuple(targets.shape) != self.shape:
                raise ValueError(f"{where}: class-probability targets must have the input's shape "
                                 f"{self.shape}, got {tuple(targets.shape)}")
            self.y = prepare(rt, targets, self.dt)
            self.t = rt.xp.zeros((1,), np.int64)  # not read
        else:
            if targets.dtype.kind not in "iu":
                raise ValueError(f"{where}: targets must be integer class indices, got dtype {targets.dtype}")
            if tuple(targets.shape) != self.out_shape:
                raise ValueError(f"{where}: the input needs targets of shape {self.out_shape}, "
                                 f"got {tuple(targets.shape)}")
            self.t = prepare(rt, targets, np.dtype(np.int64))
            self.y = self.z  # not read
        if weight is None:
            self.w, self.has_w = self.z, False  # not read
        else:
            self.w, self.has_w = prepare(rt, weight, self.dt), True
            if tuple(self.w.shape) != (self.C,):
                raise ValueError(f"{where}: weight must have one entry per class ({self.C}), "
                                 f"got shape {tuple(self.w.shape)}")
        self.has_ignore = bool(has_ignore)
        self.ignore = int(ignore_index) if has_ignore else 0
        self.eps = float(label_smoothing)

    @property
    def rows(self):
        return self.N * self.S

    def _common(self):
        return (np.int64(self.N), np.int64(self.C), np.int64(self.S), np.int32(self.soft), np.int32(self.has_w),
                np.int32(self.has_ignore), np.int64(self.ignore), np.float64(self.eps))

    def forward(self, reduction, log_input, store_probs=False, den_const=None):
        """(loss, lse, probs): lse (the out shape) unless ``log_input``, probs (the input's shape)
        when ``store_probs``; 'mean' divides by den_const when given, else as the reference."""
        _check_reduction(reduction, self.where)
        rt, dt = self.rt, self.dt
        team, grid, block = row_launch(self.rows, self.C, self.S) if self.rows else (1, (1,), (REDUCE_BLOCK,))
        part_loss = rt.xp.zeros(grid, np.float64)
        part_w = rt.xp.zeros(grid, np.float64)
        bad = rt.xp.zeros((1,), np.int32)
        lse = None if log_input else rt.empty(self.out_shape, dt)
        per = rt.empty(self.out_shape, dt) if reduction == "none" else None
        probs = rt.empty(self.shape, dt) if store_probs else None
        if self.rows:
            dummy = self.z  # stands for the outputs not asked for: never written
            rt.kernel(FILE, f"class_forward_{self.sfx}")(
                grid, block,
                (self.z, self.t, self.y, self.w, dummy if lse is None else lse, dummy if per is None else per,
                 dummy if probs is None else probs, part_loss, part_w, bad) + self._common()
                + (np.int32(bool(log_input)), np.int32(lse is not None), np.int32(per is not None),
                   np.int32(store_probs), np.int32(team)))
            if int(bad[0]):
                raise self._bad_index()
        if reduction == "none":
            loss = per
        elif den_const is not None:
            loss = _total(rt, part_loss, dt, reduction == "mean", den_const=den_const)
        elif self.soft:
            loss = _total(rt, part_loss, dt, reduction == "mean", den_const=float(self.rows))
        else:
            loss = _total(rt, part_loss, dt, reduction == "mean", den_part=part_w)
        return loss, lse, probs

    def _bad_index(self):
        """The ValueError naming the first class index outside [0, C) that is not ignore_index."""
        t = self.t.reshape(-1)
        bad = (t < 0) | (t >= self.C)
        if self.has_ignore:
            bad &= t != self.ignore
        return ValueError(f"{self.where}: target {int(t[bad][0])} is out of bounds: targets must lie in "
                          f"[0, {self.C}), got min {int(t.min())} max {int(t.max())}")

    def backward(self, lse, reduction, dloss, log_input):
        _check_reduction(reduction, self.where)
        rt, dt = self.rt, self.dt
        d = rt.empty(self.shape, dt)
        if self.z.size == 0:
            return d
        has_den = False
        den = rt.xp.zeros((1,), np.float64)  # not read unless has_den
        if reduction == "none":
            g = native(rt, dloss)
            if tuple(g.shape) != self.out_shape:
                raise ValueError(f"{self.where}: with reduction='none' dloss must have the loss's shape "
                                 f"{self.out_shape}, got {tuple(g.shape)}")
            g, gs, has_g = prepare(rt, g, dt), 1.0, True
        else:
            g, gs, has_g = self.z, float(dloss), False
            if reduction == "mean":
                if self.soft:
                    gs = gs / self.rows
                else:  # the kept targets' total weight, added up on the device
                    grid = grid_1d(self.rows, REDUCE_BLOCK)
                    part_w = rt.empty(grid, np.float64)
                    rt.kernel(FILE, f"class_weight_sum_{self.sfx}")(
                        grid, (REDUCE_BLOCK,), (self.t, self.w, part_w, np.int64(self.rows), np.int64(self.C),
                                         np.int32(self.has_w), np.int32(self.has_ignore), np.int64(self.ignore)))
                    den, has_den = _total(rt, part_w, np.dtype(np.float64), False).reshape(1), True
        lse = self.z if log_input else prepare(rt, native(rt, lse), dt)
        team, grid, block = row_launch(self.rows, self.C, self.S)
        rt.kernel(FILE, f"class_backward_{self.sfx}")(
            grid, block,
            (self.z, lse, self.t, self.y, self.w, g, den, d) + self._common()
            + (np.int32(bool(log_input)), np.int32(has_g), np.float64(gs), np.int32(has_den), np.int32(team)))
        return d


def softmax_cross_entropy_forward(rt, logits, targets):
    """(loss, probs): the batch mean of logsumexp(z) - z[t] (a 0-d array), and softmax(z)."""
    logits = native(rt, logits)
    if logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy_forward: logits must be (N, C), got shape {tuple(logits.shape)}")
    call = _ClassCall(rt, logits, targets, None, 0, 0.0, "softmax_cross_entropy_forward", False, has_ignore=False)
    loss, _, probs = call.forward("mean", log_input=False, store_probs=True, den_const=float(call.N))
    return loss, probs


def softmax_cross_entropy_backward(rt, probs, targets):
    """dlogits = (probs - onehot(targets)) / N."""
    p = native(rt, probs)
    if p.ndim != 2:
        raise ValueError(f"softmax_cross_entropy_backward: probs must be (N, C), got shape {tuple(p.shape)}")
    t = native(rt, targets)
    if t.dtype.kind not in "iu":
        raise ValueError(f"softmax_cross_entropy_backward: targets must be integer class indices, got dtype {t.dtype}")
    if tuple(t.shape) != tuple(p.shape[:1]):
        raise ValueError(f"softmax_cross_entropy_backward: the input needs targets of shape {tuple(p.shape[:1])}, "
                         f"got {tuple(t.shape)}")
    dt = p.dtype
    sfx = suffix(dt)
    p, t = prepare(rt, p, dt), prepare(rt, t, np.dtype(np.int64))
    d = rt.empty(p.shape, dt)
    if p.size:
        rt.kernel(FILE, f"softmax_ce_backward_{sfx}")(grid_1d(p.size), (BLOCK,),
                                                      (p, t, d, np.int64(p.shape[0]), np.int64(p.shape[1])))
    return d


def cross_entropy_forward(rt, logits, targets, weight, ignore_index, label_smoothing, reduction):
    """(loss, lse): softmax cross-entropy per position, reduced; lse = logsumexp over classes (N, d1, ...)."""
    call = _ClassCall(rt, logits, targets, weight, ignore_index, label_smoothing, "cross_entropy_forward", True)
    loss, lse, _ = call.forward(reduction, log_input=False)
    return loss, lse


def cross_entropy_backward(rt, logits, lse, targets, weight, ignore_index, label_smoothing, reduction, dloss):
    """dlogits = u (Q softmax(z) - q) per position (see class_backward in loss.cu)."""
    call = _ClassCall(rt, logits, targets, weight, ignore_index, label_smoothing, "cross_entropy_backward", True)
    return call.backward(lse, reduction, dloss, log_input=False)


def nll_forward(rt, logp, targets, weight, ignore_index, reduction):
    """-w_t logp[t] per position (0 where ignored), reduced ('mean' divides by the kept weights' sum)."""
    call = _ClassCall(rt, logp, targets, weight, ignore_index, 0.0, "nll_forward", False)
    return call.forward(reduction, log_input=True)[0]


def nll_backward(rt, logp, targets, weight, ignore_index, reduction, dloss):
    """dlogp = -u w_t at each position's target class, 0 elsewhere."""
    call = _ClassCall(rt, logp, targets, weight, ignore_index, 0.0, "nll_backward", False)
    return call.backward(None, reduction, dloss, log_input=True)


# -- elementwise losses ------------------------------------------------------------------------------

def _pair(rt, a, b, where):
    a, b = native(rt, a), native(rt, b)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{where}: prediction shape {tuple(a.shape)} and target shape {tuple(b.shape)} differ")
    dt = a.dtype
    suffix(dt)
    return prepare(rt, a, dt), prepare(rt, b, dt), dt


def _spread(rt, v, a, dt, name, where):
    """(array, present): optional ``v`` broadcast to a's shape, contiguous (``a`` stands in for None)."""
    if v is None:
        return a, False
    v = native(rt, v)
    try:
        v = rt.xp.broadcast_to(v, a.shape)
    except ValueError:
        raise ValueError(f"{where}: {name} of shape {tuple(v.shape)} does not broadcast to the input's shape "
                         f"{tuple(a.shape)}") from None
    return prepare(rt, v, dt), True


def _elem_forward(rt, kind, pred, target, reduction, where, param=0.0, weight=None, pos_weight=None):
    _check_reduction(reduction, where)
    a, b, dt = _pair(rt, pred, target, where)
    w, has_w = _spread(rt, weight, a, dt, "weight", where)
    pw, has_pw = _spread(rt, pos_weight, a, dt, "pos_weight", where)
    grid = grid_1d(a.size, REDUCE_BLOCK) if a.size else (1,)
    partial = rt.xp.zeros(grid, np.float64)
    per = rt.empty(a.shape, dt) if reduction == "none" else None
    if a.size:
        rt.kernel(FILE, f"elem_forward_{suffix(dt)}")(
            grid, (REDUCE_BLOCK,),
            (np.int32(kind), a, b, w, pw, np.int32(has_w), np.int32(has_pw), np.float64(param),
             a if per is None else per, np.int32(per is not None), partial, np.int64(a.size)))
    if reduction == "none":
        return per
    return _total(rt, partial, dt, reduction == "mean", den_const=float(a.size))


def _elem_backward(rt, kind, pred, target, reduction, dloss, where, param=0.0, weight=None, pos_weight=None):
    _check_reduction(reduction, where)
    a, b, dt = _pair(rt, pred, target, where)
    w, has_w = _spread(rt, weight, a, dt, "weight", where)
    pw, has_pw = _spread(rt, pos_weight, a, dt, "pos_weight", where)
    if reduction == "none":
        g = native(rt, dloss)
        if tuple(g.shape) != tuple(a.shape):
            raise ValueError(f"{where}: with reduction='none' dloss must have the loss's shape {tuple(a.shape)}, "
                             f"got {tuple(g.shape)}")
        g, gs, has_g = prepare(rt, g, dt), 1.0, True
    else:
        g, gs, has_g = a, float(dloss), False
    d = rt.empty(a.shape, dt)
    if a.size == 0:
        return d
    if reduction == "mean":
        gs = gs / a.size
    rt.kernel(FILE, f"elem_backward_{suffix(dt)}")(
        grid_1d(a.size), (BLOCK,), (np.int32(kind), a, b, w, pw, np.int32(has_w), np.int32(has_pw),
                                    np.float64(param), g, np.int32(has_g), np.float64(gs), d, np.int64(a.size)))
    return d


def bce_with_logits_forward(rt, logits, targets, weight=None, pos_weight=None, reduction="mean"):
    """w (pw t softplus(-x) + (1 - t) softplus(x)) per element: -w [pw t log s(x) + (1-t) log(1-s(x))]."""
    return _elem_forward(rt, BCE, logits, targets, reduction, "bce_with_logits_forward", weight=weight,
                         pos_weight=pos_weight)


def bce_with_logits_backward(rt, logits, targets, weight=None, pos_weight=None, reduction="mean", dloss=1.0):
    """g w (sigmoid(x) (pw t + 1 - t) - pw t)."""
    return _elem_backward(rt, BCE, logits, targets, reduction, dloss, "bce_with_logits_backward", weight=weight,
                          pos_weight=pos_weight)


def mse_forward(rt, pred, target, reduction="mean"):
    """(pred - target)^2 per element."""
    return _elem_forward(rt, MSE, pred, target, reduction, "mse_forward")


def mse_backward(rt, pred, target, reduction="mean", dloss=1.0):
    """g * 2 (pred - target)."""
    return _elem_backward(rt, MSE, pred, target, reduction, dloss, "mse_backward")


def l1_forward(rt, pred, target, reduction="mean"):
    """|pred - target| per element."""
    return _elem_forward(rt, L1, pred, target, reduction, "l1_forward")


def l1_backward(rt, pred, target, reduction="mean", dloss=1.0):
    """g * sign(pred - target) (0 where they are equal)."""
    return _elem_backward(rt, L1, pred, target, reduction, dloss, "l1_backward")


def smooth_l1_forward(rt, pred, target, beta=1.0, reduction="mean"):
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (d = pred - target); beta = 0 is L1."""
    return _elem_forward(rt, SMOOTH_L1, pred, target, reduction, "smooth_l1_forward", param=beta)


def smooth_l1_backward(rt, pred, target, beta=1.0, reduction="mean", dloss=1.0):
    """g * d / beta inside the band, g * sign(d) outside."""
    return _elem_backward(rt, SMOOTH_L1, pred, target, reduction, dloss, "smooth_l1_backward", param=beta)


def huber_forward(rt, pred, target, delta=1.0, reduction="mean"):
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta)."""
    return _elem_forward(rt, HUBER, pred, target, reduction, "huber_forward", param=delta)


def huber_backward(rt, pred, target, delta=1.0, reduction="mean", dloss=1.0):
    """g * d clipped to [-delta, delta]."""
    return _elem_backward(rt, HUBER, pred, target, reduction, dloss, "huber_backward", param=delta)
