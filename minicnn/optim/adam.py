"""Adam and AdamW: per-parameter step sizes from bias-corrected first and second moment estimates."""
from __future__ import annotations

import numpy as np

from .optimizer import Optimizer, _check_hparam, _lerp_


class Adam(Optimizer):
    """``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, maximize=False,
    decoupled_weight_decay=False)``.

    PyTorch's update at step t (equations in ``docs/optim.md``)::

        g = -g if maximize
        p = p * (1 - lr * weight_decay)  (decoupled, AdamW)   or   g = g + weight_decay * p
        m = m + (1 - beta1) * (g - m);    v = beta2 * v + (1 - beta2) * g * g
        amsgrad: v_max = max(v_max, v), used in place of v below
        p = p - (lr / (1 - beta1**t)) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    State: ``step`` (t), ``exp_avg`` (m), ``exp_avg_sq`` (v), ``max_exp_avg_sq`` (when amsgrad).
    ``betas[0]`` is what :class:`~minicnn.optim.lr_scheduler.OneCycleLR` cycles as momentum.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
                 maximize=False, decoupled_weight_decay=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=bool(amsgrad),
                        maximize=bool(maximize), decoupled_weight_decay=bool(decoupled_weight_decay))
        super().__init__(params, defaults)

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        name = type(self).__name__
        _check_hparam(name, "epsilon", group["eps"])
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
        for i, b in enumerate(betas):
            _check_hparam(name, f"beta parameter at index {i}", b, upper=1.0, upper_open=True)
        group["betas"] = (float(betas[0]), float(betas[1]))
        _check_hparam(name, "weight_decay", group["weight_decay"])

    def step(self, closure=None):
        """One Adam(W) update of every trainable parameter with a gradient; returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
            beta1, beta2 = (float(b) for b in group["betas"])
            for p in self._trainable(group):
                g = -p.grad if group["maximize"] else p.grad
                st = self._state_of(p)
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = np.zeros_like(p.data)
                    st["exp_avg_sq"] = np.zeros_like(p.data)
                if group["amsgrad"] and "max_exp_avg_sq" not in st:
                    st["max_exp_avg_sq"] = np.zeros_like(p.data)
                st["step"] += 1
                t = st["step"]
                if wd != 0:
                    if group["decoupled_weight_decay"]:
                        p.data *= 1 - lr * wd
                    else:
                        g = g + wd * p.data
                m, v = st["exp_avg"], st["exp_avg_sq"]
                _lerp_(m, g, 1 - beta1)
                v *= beta2
                v += (1 - beta2) * g * g
                bias_correction1 = 1 - beta1 ** t
                bias_correction2 = 1 - beta2 ** t
                step_size = lr / bias_correction1
                if group["amsgrad"]:
                    vmax = st["max_exp_avg_sq"]
                    np.maximum(vmax, v, out=vmax)
                    v = vmax
                denom = np.sqrt(v) / bias_correction2 ** 0.5
                denom += eps
                p.data -= step_size * m / denom
        return loss


class AdamW(Adam):
    """``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False)``.

    Adam with decoupled weight decay (Loshchilov & Hutter): the parameter shrinks by
    ``lr * weight_decay`` of itself before the Adam step, instead of the decay entering the gradient
    and so the moment estimates.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, decoupled_weight_decay=True)

    def _validate_group(self, group: dict) -> None:
        # a group (or a loaded state dict) cannot turn AdamW back into Adam
        group["decoupled_weight_decay"] = True
        super()._validate_group(group)


__all__ = ["Adam", "AdamW"]
