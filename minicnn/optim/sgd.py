"""Stochastic gradient descent with optional momentum, dampening, Nesterov and weight decay."""
from __future__ import annotations

from .optimizer import Optimizer, _check_hparam


class SGD(Optimizer):
    """``SGD(params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False)``.

    PyTorch's update, for each parameter ``p`` with gradient ``g`` (equations in ``docs/optim.md``)::

        g = -g if maximize;   g = g + weight_decay * p
        b = g (first step)  or  b = momentum * b + (1 - dampening) * g      (when momentum != 0)
        g = g + momentum * b (nesterov)  or  g = b
        p = p - lr * g

    The momentum buffer is kept in ``state[p]["momentum_buffer"]``.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=bool(nesterov), maximize=bool(maximize))
        super().__init__(params, defaults)

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        _check_hparam("SGD", "momentum", group["momentum"])
        _check_hparam("SGD", "weight_decay", group["weight_decay"])
        if isinstance(group["dampening"], bool) or not isinstance(group["dampening"], (int, float)):
            raise TypeError(f"SGD: dampening must be a real number, got {group['dampening']!r}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"SGD: Nesterov momentum requires a momentum > 0 and zero dampening "
                f"(got momentum={group['momentum']}, dampening={group['dampening']})"
            )

    def step(self, closure=None):
        """One SGD update of every trainable parameter with a gradient; returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            # plain floats keep float32 parameters in float32 (a numpy float64 scalar would promote)
            lr, momentum = float(group["lr"]), float(group["momentum"])
            dampening, wd = float(group["dampening"]), float(group["weight_decay"])
            for p in self._trainable(group):
                g = -p.grad if group["maximize"] else p.grad
                if wd != 0:
                    g = g + wd * p.data
                if momentum != 0:
                    st = self._state_of(p)
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = st["momentum_buffer"] = g.copy()
                    else:
                        buf *= momentum
                        # g itself when there is no dampening (1.0 * g is g exactly): no temporary
                        buf += (1 - dampening) * g if dampening != 0 else g
                    g = g + momentum * buf if group["nesterov"] else buf
                p.data -= lr * g
        return loss


__all__ = ["SGD"]
