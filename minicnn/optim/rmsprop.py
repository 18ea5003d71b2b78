"""RMSprop: divide the gradient by a running root-mean-square of recent gradients."""
from __future__ import annotations

import numpy as np

from .optimizer import Optimizer, _check_hparam, _lerp_


class RMSprop(Optimizer):
    """``RMSprop(params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, maximize=False)``.

    PyTorch's update (equations in ``docs/optim.md``)::

        g = -g if maximize;   g = g + weight_decay * p
        v = alpha * v + (1 - alpha) * g * g
        centered: m = m + (1 - alpha) * (g - m);   d = sqrt(v - m * m) + eps
        otherwise:                                 d = sqrt(v) + eps
        momentum > 0: b = momentum * b + g / d;  p = p - lr * b
        otherwise:                               p = p - lr * g / d

    State: ``step``, ``square_avg`` (v), ``grad_avg`` (m, when centered), ``momentum_buffer`` (b, when
    momentum > 0).
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 maximize=False):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=bool(centered), maximize=bool(maximize))
        super().__init__(params, defaults)

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        for name in ("eps", "momentum", "weight_decay", "alpha"):
            _check_hparam("RMSprop", name, group[name])

    def step(self, closure=None):
        """One RMSprop update of every trainable parameter with a gradient; returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, alpha, eps = float(group["lr"]), float(group["alpha"]), float(group["eps"])
            wd, momentum = float(group["weight_decay"]), float(group["momentum"])
            for p in self._trainable(group):
                g = -p.grad if group["maximize"] else p.grad
                st = self._state_of(p)
                if not st:
                    st["step"] = 0
                    st["square_avg"] = np.zeros_like(p.data)
                # buffers start at zero the first time they are needed, so a scheduler may switch
                # momentum on after the first step
                if momentum > 0 and "momentum_buffer" not in st:
                    st["momentum_buffer"] = np.zeros_like(p.data)
                if group["centered"] and "grad_avg" not in st:
                    st["grad_avg"] = np.zeros_like(p.data)
                st["step"] += 1
                if wd != 0:
                    g = g + wd * p.data
                v = st["square_avg"]
                v *= alpha
                v += (1 - alpha) * g * g
                if group["centered"]:
                    m = st["grad_avg"]
                    _lerp_(m, g, 1 - alpha)
                    avg = np.sqrt(v - m * m)
                else:
                    avg = np.sqrt(v)
                avg += eps
                if momentum > 0:
                    buf = st["momentum_buffer"]
                    buf *= momentum
                    buf += g / avg
                    p.data -= lr * buf
                else:
                    p.data -= lr * g / avg
        return loss


__all__ = ["RMSprop"]
