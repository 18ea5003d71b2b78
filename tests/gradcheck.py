"""Numerical gradient checks in the CS231n style, for any minicnn layer or loss.

``eval_numerical_gradient_array(f, x, df)`` is the central difference of ``sum(f(x) * df)``
with respect to every entry of ``x``; ``check_layer(layer, x)`` compares a layer's hand-written
backward (dL/dx and every trainable parameter's ``.grad``) against it, in float64.
"""
from __future__ import annotations

import numpy as np

import minicnn as mc


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """d/dx of sum(f(x) * df) by central differences; ``x`` is perturbed in place and restored.

    ``f`` maps an array shaped like ``x`` to an array (or scalar) shaped like ``df``.
    """
    x = np.asarray(x)
    grad = np.zeros(x.shape, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        old = x[ix]
        x[ix] = old + h
        pos = np.array(mc.to_numpy(f(x)), dtype=np.float64, copy=True)
        x[ix] = old - h
        neg = np.array(mc.to_numpy(f(x)), dtype=np.float64, copy=True)
        x[ix] = old
        # an output that did not move has zero slope, even when it is +-inf (a max-pool window
        # of only padding), where pos - neg would be NaN
        with np.errstate(invalid="ignore"):
            diff = np.where(pos == neg, 0.0, pos - neg)
        grad[ix] = np.sum(diff * df) / (2 * h)
        it.iternext()
    return grad


def rel_error(analytic, numeric) -> float:
    """||a - n|| / (||a|| + ||n||): scale-free, and not fooled by entries that are ~0 in both."""
    a = np.asarray(mc.to_numpy(analytic), dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    if a.shape != n.shape:
        raise AssertionError(f"gradient shape {a.shape} differs from numerical gradient shape {n.shape}")
    denom = np.linalg.norm(a) + np.linalg.norm(n)
    if denom == 0.0:
        return 0.0
    return float(np.linalg.norm(a - n) / denom)


def _agrees(analytic, numeric, tol, atol) -> bool:
    """Relative error below ``tol``, or every entry within ``atol``: a gradient that is truly ~0
    (a conv bias feeding batch norm) leaves only round-off to compare, so its ratio means nothing."""
    if rel_error(analytic, numeric) < tol:
        return True
    return float(np.max(np.abs(np.asarray(mc.to_numpy(analytic)) - numeric), initial=0.0)) < atol


def _analytic(layer, forward, x, dy):
    """Forward on ``x``, backward ``dy`` from zeroed grads: {"y", "x" (dL/dx), param name: grad}."""
    layer.zero_grad()
    out = {"y": forward(x)}  # the cache backward reads must come from this exact input
    out["x"] = np.array(mc.to_numpy(layer.backward(dy)), copy=True)
    for name, p in layer.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            raise AssertionError(f"{name}: backward left .grad None on a trainable parameter")
        out[name] = np.array(mc.to_numpy(p.grad), copy=True)
    return out


def check_layer(layer, x, *, reseed=None, tol=1e-6, atol=1e-8, rng=None, dy=None, against="auto"):
    """Check ``layer.backward`` in float64; return ``{name: rel_error}``.

    ``x`` is the input; a random upstream gradient ``dy`` (unless given) defines the scalar
    ``sum(layer(x) * dy)``. ``reseed`` (an int) re-seeds the library RNG before every forward, so
    random layers (Dropout) see one fixed mask. Checked: ``"x"`` (the returned dL/dx) and every
    parameter with ``requires_grad``, by dotted name.

    ``against="numeric"`` compares with central differences on the backend in force;
    ``against="reference"`` compares output and gradients with the numpy backend's (itself
    checked numerically), which costs one pass instead of two per input entry. ``"auto"`` takes
    numeric on numpy and for seeded layers (another backend may draw its mask differently),
    reference otherwise. Raises AssertionError naming each entry whose relative error is not
    below ``tol`` (unless it agrees entrywise within ``atol``).
    """
    rng = rng or np.random.default_rng(1)
    layer.to(np.float64)
    x = np.array(x, dtype=np.float64, copy=True)
    if against == "auto":
        against = "numeric" if reseed is not None or mc.get_backend() == "numpy" else "reference"

    def forward(inp):
        if reseed is not None:
            mc.manual_seed(reseed)
        return mc.to_numpy(layer(inp))

    if dy is None:
        dy = rng.standard_normal(forward(x).shape)
    dy = np.asarray(dy, dtype=np.float64)
    analytic = _analytic(layer, forward, x, dy)
    if against == "reference":
        with mc.backend("numpy"):
            expected = _analytic(layer, forward, x, dy)
        layer._move_to_backend()
        tol, atol = min(tol, 1e-10), min(atol, 1e-12)  # same math, only the summation order differs
    elif against == "numeric":
        analytic.pop("y")
        expected = {"x": eval_numerical_gradient_array(forward, x.copy(), dy)}
        for name, p in layer.named_parameters():
            if name not in analytic:
                continue
            base = np.array(mc.to_numpy(p.data), dtype=np.float64, copy=True)

            def f_param(v, p=p):
                p.data = np.array(v, copy=True)  # the next call moves it onto the backend in force
                return forward(x)

            expected[name] = eval_numerical_gradient_array(f_param, base.copy(), dy)
            p.data = base
    else:
        raise ValueError(f"against must be 'auto', 'numeric' or 'reference', got {against!r}")
    errors = {k: rel_error(analytic[k], expected[k]) for k in analytic}
    bad = {k: errors[k] for k in analytic if not _agrees(analytic[k], expected[k], tol, atol)}
    if bad:
        raise AssertionError(
            f"{layer._short()} on {mc.get_backend()}: gradient check against {against} failed "
            f"(rel error >= {tol}): {bad}"
        )
    return errors


def check_loss(loss_fn, pred, target, *, dloss=0.7, tol=1e-6):
    """Check ``loss_fn.backward(dloss)`` (dL/dpred) against central differences of ``dloss * loss``."""
    loss_fn.to(np.float64)
    pred = np.array(pred, dtype=np.float64, copy=True)

    def f(p):
        return np.asarray(loss_fn(p, target), dtype=np.float64)

    f(pred)
    analytic = mc.to_numpy(loss_fn.backward(dloss))
    numeric = eval_numerical_gradient_array(f, pred.copy(), np.float64(dloss))
    err = rel_error(analytic, numeric)
    if not err < tol:
        raise AssertionError(f"{type(loss_fn).__name__}: gradient check failed: rel error {err} >= {tol}")
    return err


def windows_reach_input(size, kernel, stride, padding, dilation) -> bool:
    """True when every pooling window along one axis has at least one real (non-padding) tap.

    Dilated max-pool windows can step over the whole input; MaxPool2d refuses those, so random
    configurations are filtered with this.
    """
    n_out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if n_out < 1:
        return False
    taps = np.arange(n_out)[:, None] * stride - padding + np.arange(kernel)[None, :] * dilation
    return bool(((taps >= 0) & (taps < size)).any(axis=1).all())
