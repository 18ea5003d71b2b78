"""Optimizers and learning-rate schedulers with PyTorch's names, defaults and update rules.

    from minicnn import optim
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=1000)
    ...; model.backward(loss_fn.backward()); opt.step(); opt.zero_grad(); sched.step()

Per-group hyper-parameters: ``optim.Adam([{"params": body, "lr": 1e-4}, {"params": head}], lr=1e-3)``.
The update equations are in ``docs/optim.md``.
"""
from . import lr_scheduler
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam", "AdamW", "lr_scheduler"]
