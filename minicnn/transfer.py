"""Transfer learning the fastai way: freeze, replace the head, train the head, unfreeze, fine-tune
with discriminative learning rates and the one-cycle schedule.

    from minicnn import transfer
    model = resnet18(weights="resnet18.safetensors")
    transfer.replace_head(model, num_classes=5)                  # new fc: 512 -> 5
    result = transfer.fine_tune(model, nn.CrossEntropyLoss(), (X, y), (Xv, yv),
                                epochs_head=1, epochs_all=3, base_lr=2e-3)

A model is cut into *layer groups* by ``splits``: the dotted module names at which a new group
starts, in forward order (``named_parameters`` order). The default for a ResNet is
``["layer3", "fc"]`` (stem..layer2, layer3..layer4, head), for any other model the name of its last
``Linear`` (body, head). Early groups hold generic features (edges, textures) that transfer to any
task and should move little; the head is new and must move a lot, hence one learning rate per
group, spaced geometrically (``slice(lo, hi)``, as in fastai).

Freezing sets ``requires_grad = False``: the layers then compute no weight gradient and the
optimizer never moves them, while the gradient with respect to their input still flows, so
layers below a frozen one can still train.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .nn.batchnorm import BatchNorm2d
from .nn.linear import Linear
from .nn.module import Module, Parameter

__all__ = [
    "freeze", "unfreeze", "freeze_to", "find_head", "replace_head", "default_splits", "layer_groups",
    "lr_range", "param_groups", "fine_tune", "FineTuneResult",
]


# -- freezing -------------------------------------------------------------------------------------

def _collect(obj, train_bn=False):
    """The Parameters of a Module, a Parameter, or an iterable of those (or of (name, Parameter))."""
    if isinstance(obj, Parameter):
        return [obj]
    if isinstance(obj, Module):
        if not train_bn:
            return list(obj.parameters())
        keep = {id(p) for m in obj.modules() if isinstance(m, BatchNorm2d) for p in m.parameters()}
        return [p for p in obj.parameters() if id(p) not in keep]
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], Parameter):
        return [obj[1]]
    if isinstance(obj, (str, bytes, np.ndarray)) or not hasattr(obj, "__iter__"):
        raise TypeError(f"expected a Module, a Parameter or an iterable of them, got {type(obj).__name__}")
    out, seen = [], set()
    for item in obj:
        for p in _collect(item, train_bn):
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def freeze(module_or_params, train_bn=False):
    """Mark parameters frozen (``requires_grad = False``) and drop their gradients; return the input.

    Accepts a Module, a Parameter, or an iterable of Modules/Parameters (``model.layer1``,
    ``[model.conv1, model.bn1]``, ``model.parameters()``). With ``train_bn=True`` the BatchNorm
    parameters inside frozen modules stay trainable (fastai's default when fine-tuning: the
    normalisation adapts to the new data at almost no cost).
    """
    for p in _collect(module_or_params, train_bn):
        p.requires_grad = False
        p.grad = None
    return module_or_params


def unfreeze(module_or_params):
    """Make parameters trainable again (``requires_grad = True``); return the input."""
    for p in _collect(module_or_params):
        p.requires_grad = True
    return module_or_params


# -- the head -------------------------------------------------------------------------------------

def find_head(model):
    """``(parent, name, module)`` of the classifier head: the last ``Linear`` in module order
    (``fc`` in a ResNet, the last layer of a Sequential)."""
    found = None
    # every path, not each module once: a Linear shared with an earlier place is still the head here
    for full, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, Linear) and full:
            found = full
    if found is None:
        raise ValueError(f"find_head: {type(model).__name__} has no Linear layer to act as its head")
    parent_name, _, name = found.rpartition(".")
    parent = model
    for part in filter(None, parent_name.split(".")):
        parent = parent._modules[part]
    return parent, name, parent._modules[name]


def _install(parent, name, module):
    """Put ``module`` at ``parent.<name>`` keeping the children's order (Sequential runs in order)."""
    setattr(parent, name, module)  # as in PyTorch, assigning to an existing child's name keeps its place


def replace_head(model, num_classes=None, head=None):
    """Swap the classifier head for a fresh one; return the new head.

    By default the new head is ``nn.Linear(in_features, num_classes)`` with PyTorch's
    initialisation (from minicnn's generator), in the model's dtype. Pass ``head`` to install any
    module instead (e.g. ``nn.Sequential(nn.Dropout(0.5), nn.Linear(512, 5))``). A
    ``num_classes`` attribute on the model is updated.
    """
    parent, name, old = find_head(model)
    if head is None:
        if num_classes is None or int(num_classes) < 1:
            raise ValueError(f"replace_head: num_classes must be a positive integer, got {num_classes!r}")
        head = Linear(old.in_features, int(num_classes), bias=old.bias is not None).to(model.dtype)
    elif not isinstance(head, Module):
        raise TypeError(f"replace_head: head must be a Module, got {type(head).__name__}")
    _install(parent, name, head)
    if hasattr(model, "num_classes") and num_classes is not None:
        object.__setattr__(model, "num_classes", int(num_classes))
    return head


# -- layer groups and their learning rates -----------------------------------------------------

def default_splits(model):
    """Where layer groups start: ``["layer3", "fc"]`` for a ResNet, else ``[<head name>]``."""
    names = dict(model.named_children())
    if all(k in names for k in ("layer1", "layer2", "layer3", "layer4", "fc")):
        return ["layer3", "fc"]
    parent, name, _ = find_head(model)
    prefix = next(full for full, m in model.named_modules() if m is parent)
    return [f"{prefix}.{name}" if prefix else name]


def layer_groups(model, splits=None):
    """Cut ``model.named_parameters()`` into consecutive groups; each split names the module (or
    parameter) where a new group starts. Returns a list of ``[(name, Parameter), ...]``.

    ``layer_groups(resnet, ["layer3", "fc"])`` gives [stem..layer2], [layer3, layer4], [fc]."""
    splits = default_splits(model) if splits is None else list(splits)
    named = list(model.named_parameters())
    starts = []
    for s in splits:
        idx = next((i for i, (n, _) in enumerate(named) if n == s or n.startswith(s + ".")), None)
        if idx is None:
            raise ValueError(f"layer_groups: split {s!r} names no parameter of {type(model).__name__} "
                             f"(first names: {', '.join(n for n, _ in named[:4])}, ...)")
        starts.append(idx)
    if starts != sorted(set(starts)) or (starts and starts[0] == 0):
        raise ValueError(f"layer_groups: splits {splits} must name distinct modules in forward order, "
                         "after the first parameter")
    bounds = [0] + starts + [len(named)]
    return [named[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def lr_range(lrs, n):
    """One learning rate per group from a number, a list, or ``slice(lo, hi)`` / ``(lo, hi)``.

    ``slice(lo, hi)`` spaces the rates geometrically from lo (first group) to hi (head), fastai's
    discriminative learning rates; ``slice(hi)`` gives hi/10 to every group but the last."""
    if isinstance(lrs, slice):
        lo, hi = lrs.start, lrs.stop
        if hi is None:
            raise ValueError("lr_range: a slice of learning rates needs a stop value")
        if lo is None:
            return [hi / 10.0] * (n - 1) + [float(hi)]
        lrs = (lo, hi)
    if isinstance(lrs, tuple) and len(lrs) == 2 and n != 2:
        lo, hi = float(lrs[0]), float(lrs[1])
        if lo <= 0 or hi <= 0:
            raise ValueError(f"lr_range: learning rates must be positive, got {lrs}")
        if n == 1:
            return [hi]
        return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    if isinstance(lrs, (list, tuple)):
        if len(lrs) != n:
            raise ValueError(f"lr_range: {len(lrs)} learning rates for {n} layer groups")
        return [float(v) for v in lrs]
    return [float(lrs)] * n


def param_groups(model, splits=None, lrs=1e-3):
    """Optimizer parameter groups ``[{"params": [...], "lr": lr, "name": "..."}]``, one per layer
    group (see ``layer_groups``), for discriminative learning rates::

        opt = optim.Adam(param_groups(model, ["layer3", "fc"], slice(1e-5, 1e-3)))
    """
    groups = layer_groups(model, splits)
    rates = lr_range(lrs, len(groups))
    out = []
    for g, lr in zip(groups, rates):
        first, last = g[0][0].rsplit(".", 1)[0], g[-1][0].rsplit(".", 1)[0]
        out.append({"params": [p for _, p in g], "lr": lr, "name": first if first == last else f"{first}..{last}"})
    return out


def freeze_to(model, n, splits=None, train_bn=False):
    """Freeze the first ``n`` layer groups and unfreeze the rest (``n = -1``: all but the head)."""
    groups = layer_groups(model, splits)
    n = len(groups) + n if n < 0 else n
    for i, g in enumerate(groups):
        params = [p for _, p in g]
        if i < n:
            bn_ids = set()
            if train_bn:
                bn_ids = {id(p) for m in model.modules() if isinstance(m, BatchNorm2d) for p in m.parameters()}
            freeze([p for p in params if id(p) not in bn_ids])
            unfreeze([p for p in params if id(p) in bn_ids])
        else:
            unfreeze(params)
    return model


# -- fine_tune ----------------------------------------------------------------------------------

@dataclass
class FineTuneResult:
    """What ``fine_tune`` did: the History of each phase and the learning rate of every group at
    every optimizer step (``lrs_head``, ``lrs_all``: lists of per-group lists)."""

    head: object
    all: object
    lrs_head: list = field(default_factory=list)
    lrs_all: list = field(default_factory=list)

    @property
    def history(self) -> dict:
        """Both phases' epochs in one dict of lists (plots with ``viz.learning_curves``)."""
        keys = list(self.head) if self.head else list(self.all)
        return {k: list(self.head.get(k, [])) + list(self.all.get(k, [])) for k in keys}


class _RecordingScheduler:
    """Steps a scheduler and records the rates each optimizer step used."""

    def __init__(self, sched, total_steps, log):
        self.sched, self.total, self.log = sched, total_steps, log
        self.taken = 0
        log.append(list(sched.get_last_lr()))

    def step(self):
        self.taken += 1
        self.sched.step()
        if self.taken < self.total:
            self.log.append(list(self.sched.get_last_lr()))


def _make_optimizer(optimizer, groups, weight_decay):
    from . import optim

    if callable(optimizer) and not isinstance(optimizer, str):
        return optimizer(groups)
    name = str(optimizer).lower()
    if name == "adamw":
        return optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=weight_decay)
    if name == "adam":
        return optim.Adam(groups, lr=groups[0]["lr"], weight_decay=weight_decay)
    if name == "sgd":
        return optim.SGD(groups, lr=groups[0]["lr"], momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"fine_tune: optimizer must be 'adamw', 'adam', 'sgd' or a callable, got {optimizer!r}")


def _one_cycle_fit(model, loss_fn, loader, val, epochs, groups, opt_spec, weight_decay, pct_start, div_factor,
                   final_div_factor, log, fit_kwargs):
    from .optim.lr_scheduler import OneCycleLR
    from .train import History, fit

    if epochs <= 0:
        return History()
    opt = _make_optimizer(opt_spec, groups, weight_decay)
    total = epochs * len(loader)
    sched = OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=total, pct_start=float(pct_start),
                       div_factor=div_factor, final_div_factor=final_div_factor)
    rec = _RecordingScheduler(sched, total, log)
    return fit(model, loss_fn, opt, loader, val, epochs=epochs, scheduler=rec, scheduler_step="batch", **fit_kwargs)


def fine_tune(model, loss_fn, train, val=None, epochs_head=1, epochs_all=3, base_lr=2e-3, splits=None,
              lr_mult=100.0, optimizer="adamw", weight_decay=0.01, pct_start=0.3, div_factor=5.0,
              head_pct_start=0.99, head_div_factor=25.0, div_final=1e5, train_bn=True, batch_size=32,
              metrics=("accuracy",), progress=False, callbacks=None, seed=None):
    """fastai's ``fine_tune``: train the new head on a frozen body, then everything, gently.

    1. Freeze every layer group but the last (BatchNorm stays trainable when ``train_bn``) and run
       ``epochs_head`` epochs of one-cycle with peak rate ``base_lr`` on the head
       (``pct_start=head_pct_start``: warm up for almost the whole phase).
    2. Halve ``base_lr``, unfreeze everything and run ``epochs_all`` epochs of one-cycle with
       discriminative peak rates ``slice(base_lr / lr_mult, base_lr)`` over the layer groups.

    Each phase uses a fresh optimizer (``"adamw"``, ``"adam"``, ``"sgd"`` or a callable
    ``groups -> Optimizer``) over ``param_groups(model, splits, ...)`` and ``OneCycleLR`` stepped
    every batch; a phase starts at ``peak / div_factor`` and ends at ``peak / div_final`` (fastai's
    ``div`` and ``div_final``). ``train`` and ``val`` are DataLoaders or ``(X, y)`` pairs (a pair
    is batched by ``batch_size`` and shuffled, seeded by ``seed`` when given). The same code
    fine-tunes ResNet-18 with real weights and the digits convnet. Returns a
    :class:`FineTuneResult`; the model ends unfrozen.
    """
    from .train import DataLoader

    if isinstance(train, DataLoader):
        loader = train
    elif isinstance(train, (tuple, list)) and len(train) == 2:
        loader = DataLoader(train[0], train[1], batch_size=batch_size, shuffle=True, seed=seed)
    else:
        raise ValueError(f"fine_tune: train must be a DataLoader or an (X, y) pair, got {type(train).__name__}")
    if base_lr <= 0 or lr_mult < 1:
        raise ValueError(f"fine_tune: need base_lr > 0 and lr_mult >= 1, got {base_lr} and {lr_mult}")
    n_groups = len(layer_groups(model, splits))
    fit_kwargs = dict(metrics=metrics, progress=progress, callbacks=callbacks, batch_size=batch_size)
    result = FineTuneResult(head=None, all=None)

    freeze_to(model, n_groups - 1, splits, train_bn=train_bn)
    groups = param_groups(model, splits, slice(base_lr))
    result.head = _one_cycle_fit(model, loss_fn, loader, val, epochs_head, groups, optimizer, weight_decay,
                                 head_pct_start, head_div_factor, div_final / head_div_factor, result.lrs_head,
                                 fit_kwargs)
    base_lr = base_lr / 2.0
    unfreeze(model)
    groups = param_groups(model, splits, slice(base_lr / lr_mult, base_lr))
    result.all = _one_cycle_fit(model, loss_fn, loader, val, epochs_all, groups, optimizer, weight_decay,
                                pct_start, div_factor, div_final / div_factor, result.lrs_all, fit_kwargs)
    return result
