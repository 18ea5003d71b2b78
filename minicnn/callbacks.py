"""Callbacks for :func:`minicnn.train.fit`, checkpoints that resume exactly, and the learning-rate range test.

    from minicnn.callbacks import EarlyStopping, ModelCheckpoint, ReduceLROnPlateau
    fit(model, loss, opt, train_loader, val, epochs=30, callbacks=[
        ModelCheckpoint("runs/best.safetensors", monitor="val_accuracy"),
        EarlyStopping(monitor="val_loss", patience=5),
        ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)])

A callback receives ``on_epoch_end(epoch, logs)`` after every epoch (``epoch`` counts from 1,
``logs`` holds ``loss``, ``val_loss``, ``val_accuracy``, ``lr``, ...); returning True stops
training. Before the first epoch ``fit`` hands each callback a :class:`~minicnn.train.FitState`
(``set_fit_state``) holding the model, optimizer, scheduler and loaders, which is how a
checkpoint callback reaches what it saves.

A checkpoint (:func:`save_checkpoint`) holds the model's, optimizer's, scheduler's and training
loader's state dicts, minicnn's global generator state (dropout, shuffling of unseeded loaders),
the epoch and the history, in one safetensors file written by ``minicnn.save``. Restoring it with
:func:`load_checkpoint` and calling ``fit(..., initial_epoch=ckpt["epoch"])`` ends with the same
weights as a run that was never interrupted.
"""
from __future__ import annotations

import copy
import math
import os

import numpy as np

from .errors import MinicnnError

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau", "save_checkpoint",
           "load_checkpoint", "lr_find", "LRFinderResult"]


def _mode_for(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "min" if ("loss" in monitor or "error" in monitor) else "max"
    return mode


def _monitored(owner, monitor, logs):
    if monitor not in logs:
        raise KeyError(f"{owner}: monitored value {monitor!r} is not in the epoch's logs "
                       f"({', '.join(logs)}); pass validation data to fit for val_* values")
    return float(logs[monitor])


class Callback:
    """Base class: every hook does nothing. ``self.state`` is the :class:`~minicnn.train.FitState`."""

    state = None

    def set_fit_state(self, state) -> None:
        self.state = state

    def on_train_begin(self) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict):
        pass

    def on_train_end(self) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    Args:
        monitor: a key of the epoch logs (``val_loss``, ``val_accuracy``, ...).
        mode: ``"min"``, ``"max"`` or ``"auto"`` (losses and error rates are minimised).
        patience: how many epochs in a row without improvement stop training (Keras's meaning).
        min_delta: the smallest change that counts as an improvement.
        restore_best_weights: at the end of training, load the weights of the best epoch.

    After training, ``stopped_epoch`` is the epoch that stopped it (0 if none) and ``best_epoch``,
    ``best`` the best epoch and value.
    """

    def __init__(self, monitor="val_loss", mode="auto", patience=3, min_delta=0.0, restore_best_weights=False):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be a non-negative integer, got {patience!r}")
        if not min_delta >= 0:
            raise ValueError(f"EarlyStopping: min_delta must be >= 0, got {min_delta!r}")
        self.monitor, self.mode = monitor, _mode_for(monitor, mode)
        self.patience, self.min_delta = patience, float(min_delta)
        self.restore_best_weights = bool(restore_best_weights)
        self.on_train_begin()

    def on_train_begin(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch, self.wait, self.stopped_epoch = 0, 0, 0
        self._best_weights = None

    def _improved(self, value) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs):
        value = _monitored("EarlyStopping", self.monitor, logs)
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights and self.state is not None:
                self._best_weights = copy.deepcopy(self.state.model.state_dict())
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self) -> None:
        if self.restore_best_weights and self._best_weights is not None:
            self.state.model.load_state_dict(self._best_weights)


class ModelCheckpoint(Callback):
    """Write a resumable checkpoint (:func:`save_checkpoint`) after epochs.

    Args:
        path: the file to write; ``{epoch}`` and any log key (``{val_loss:.3f}``) are formatted in.
        monitor: the log value that decides which epoch is best.
        mode: ``"min"``, ``"max"`` or ``"auto"``.
        save_best_only: write only when ``monitor`` improved (True), or after every epoch (False).
        extra: a dict of plain values stored with the checkpoint (``ckpt["extra"]``).

    ``best``, ``best_epoch`` and ``last_path`` tell what was written.
    """

    def __init__(self, path, monitor="val_loss", mode="auto", save_best_only=True, extra=None):
        self.extra = dict(extra or {})
        self.path, self.monitor, self.mode = os.fspath(path), monitor, _mode_for(monitor, mode)
        self.save_best_only = bool(save_best_only)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch, self.last_path = 0, None

    def on_epoch_end(self, epoch, logs):
        if self.state is None:
            raise MinicnnError("ModelCheckpoint: no model to save; use it as a callback of minicnn.train.fit")
        value = _monitored("ModelCheckpoint", self.monitor, logs) if (self.save_best_only or self.monitor in logs) else None
        improved = value is not None and (value < self.best if self.mode == "min" else value > self.best)
        if improved:
            self.best, self.best_epoch = value, epoch
        if improved or not self.save_best_only:
            path = self.path.format(epoch=epoch, **logs)
            s = self.state
            save_checkpoint(path, s.model, s.optimizer, s.scheduler, s.train_loader, epoch=epoch,
                            history=s.history, best={self.monitor: self.best, "epoch": self.best_epoch}, **self.extra)
            self.last_path = path
        return False


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` stops improving (PyTorch's semantics).

    As ``torch.optim.lr_scheduler.ReduceLROnPlateau``: a value is better than the best when, for
    ``mode="min"`` and ``threshold_mode="rel"``, it is below ``best * (1 - threshold)`` (``"abs"``:
    below ``best - threshold``; ``"max"`` mirrors both). After more than ``patience`` epochs
    without improvement each group's rate becomes ``max(lr * factor, min_lr)`` (changes smaller
    than ``eps`` are skipped), then ``cooldown`` epochs pass before counting again.

    Use it as a callback of ``fit`` (it reads ``logs[monitor]`` and takes the optimizer from
    ``fit``), or on its own like PyTorch's: ``sched = ReduceLROnPlateau(optimizer); sched.step(val_loss)``.
    """

    def __init__(self, optimizer=None, monitor="val_loss", mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
        if not factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor should be < 1.0, got {factor!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.optimizer = optimizer
        self.monitor, self.mode, self.factor = monitor, mode, float(factor)
        self.patience, self.threshold, self.threshold_mode = patience, threshold, threshold_mode
        self.cooldown, self.eps = cooldown, eps
        self._min_lr_arg = min_lr
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs, self.cooldown_counter, self.last_epoch = 0, 0, 0
        self._last_lr = None

    def set_fit_state(self, state) -> None:
        self.state = state
        if self.optimizer is None:
            self.optimizer = state.optimizer

    def _min_lrs(self):
        n = len(self.optimizer.param_groups)
        if isinstance(self._min_lr_arg, (list, tuple)):
            if len(self._min_lr_arg) != n:
                raise ValueError(f"ReduceLROnPlateau: expected {n} min_lr values, got {len(self._min_lr_arg)}")
            return list(self._min_lr_arg)
        return [self._min_lr_arg] * n

    def _is_better(self, a) -> bool:
        if self.mode == "min":
            return a < (self.best * (1.0 - self.threshold) if self.threshold_mode == "rel" else self.best - self.threshold)
        return a > (self.best * (self.threshold + 1.0) if self.threshold_mode == "rel" else self.best + self.threshold)

    def step(self, metrics) -> None:
        """Record one epoch's monitored value and reduce the rates if it has plateaued."""
        if self.optimizer is None:
            raise MinicnnError("ReduceLROnPlateau: no optimizer; pass one, or use it as a callback of fit")
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group, min_lr in zip(self.optimizer.param_groups, self._min_lrs()):
                old = float(group["lr"])
                new = max(old * self.factor, min_lr)
                if old - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self) -> list:
        return list(self._last_lr or [g["lr"] for g in self.optimizer.param_groups])

    def on_epoch_end(self, epoch, logs):
        self.step(_monitored("ReduceLROnPlateau", self.monitor, logs))
        return False

    def state_dict(self) -> dict:
        """Every attribute but the optimizer and the fit state."""
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "state")}

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(state_dict)


# -- checkpoints -------------------------------------------------------------------------------

def save_checkpoint(path, model, optimizer=None, scheduler=None, loader=None, epoch=0, history=None, **extra) -> None:
    """Write everything a resumed run needs to ``path`` (one safetensors file, see ``minicnn.save``).

    Keys: ``model``, ``optimizer``, ``scheduler``, ``loader`` (state dicts, None when not given),
    ``rng`` (minicnn's global generator), ``epoch``, ``history`` (dict of lists) and ``extra``.
    """
    from .random import get_rng
    from .serialization import save

    ckpt = {
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "loader": None if loader is None or not hasattr(loader, "state_dict") else loader.state_dict(),
        "rng": get_rng().bit_generator.state,
        "history": None if history is None else {k: list(v) for k, v in dict(history).items()},
        "extra": dict(extra),
    }
    save(ckpt, path, metadata={"kind": "checkpoint"})


def load_checkpoint(path, model=None, optimizer=None, scheduler=None, loader=None, restore_rng=True) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` and restore the objects given.

    Returns the checkpoint dict; ``ckpt["epoch"]`` is the ``initial_epoch`` for ``fit`` and
    ``ckpt["history"]`` its ``history``. ``restore_rng`` also restores minicnn's global generator.
    """
    from .random import get_rng
    from .serialization import load

    ckpt = load(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "epoch" not in ckpt:
        raise MinicnnError(f"{os.fspath(path)}: not a minicnn checkpoint (a weights file? load it with "
                           "model.load_state_dict(minicnn.load(path)))")
    if model is not None:
        model.load_state_dict(ckpt["model"])
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("loader", loader)):
        if obj is not None:
            if ckpt.get(name) is None:
                raise MinicnnError(f"{os.fspath(path)}: the checkpoint holds no {name} state")
            obj.load_state_dict(ckpt[name])
    if restore_rng and ckpt.get("rng"):
        get_rng().bit_generator.state = dict(ckpt["rng"])
    if ckpt.get("history") is not None:
        from .train import History

        ckpt["history"] = History({k: list(v) for k, v in ckpt["history"].items()})
    return ckpt


# -- learning-rate range test -----------------------------------------------------------------

class LRFinderResult:
    """``lrs`` and smoothed ``losses`` of a range test, and ``suggestion``: the rate of steepest descent."""

    def __init__(self, lrs, losses, suggestion):
        self.lrs, self.losses, self.suggestion = list(lrs), list(losses), suggestion

    def plot(self, ax=None):
        """Loss against learning rate (log axis) with the suggestion marked; needs matplotlib."""
        if ax is None:
            from .viz import new_figure  # ImportError with the install hint when matplotlib is missing

            ax = new_figure(figsize=(5, 3.5)).add_subplot()
        ax.plot(self.lrs, self.losses)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        if self.suggestion is not None:
            ax.axvline(self.suggestion, color="tab:red", linestyle="--", label=f"suggestion {self.suggestion:.2g}")
            ax.legend()
        return ax

    def __repr__(self) -> str:
        sug = "None" if self.suggestion is None else f"{self.suggestion:.3g}"
        return f"LRFinderResult(steps={len(self.lrs)}, suggestion={sug})"


def lr_find(model, loss_fn, optimizer, train, start_lr=1e-7, end_lr=10.0, num_iter=100, smooth=0.98,
            diverge=4.0, batch_size=32) -> LRFinderResult:
    """fastai's learning-rate range test (Smith 2015): train with a rate growing exponentially from
    ``start_lr`` to ``end_lr`` over ``num_iter`` batches and record the loss.

    The loss is smoothed by an exponential moving average (``smooth``, bias-corrected); the test
    stops early once it exceeds ``diverge`` times the best smoothed loss. The suggestion is the
    rate where the smoothed loss falls fastest (the steepest negative slope against log lr).
    The model's weights, the optimizer's state, the loader's generator and minicnn's global
    generator are restored afterwards, so the test changes nothing; ``train`` is a DataLoader, a
    dataset or an ``(X, y)`` pair (cycled if too short).
    """
    from .random import get_rng
    from .train import _as_loader

    if not 0 < start_lr < end_lr:
        raise ValueError(f"lr_find: need 0 < start_lr < end_lr, got {start_lr!r} and {end_lr!r}")
    if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 2:
        raise ValueError(f"lr_find: num_iter must be an integer >= 2, got {num_iter!r}")
    loader = _as_loader(train, batch_size, True, "lr_find: train")
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    loader_state = loader.state_dict()
    rng_state = copy.deepcopy(get_rng().bit_generator.state)  # unseeded shuffles and dropout draw from it
    was_training = model.training
    ratio = (end_lr / start_lr) ** (1.0 / (num_iter - 1))
    lrs, losses = [], []
    avg, best = 0.0, math.inf
    try:
        model.train()
        it = iter(loader)
        for i in range(num_iter):
            lr = start_lr * ratio ** i
            for g in optimizer.param_groups:
                g["lr"] = lr
            try:
                xb, yb = next(it)
            except StopIteration:
                it = iter(loader)
                xb, yb = next(it)
            model.zero_grad()
            loss = float(loss_fn(model(xb), yb))
            if not math.isfinite(loss):
                break
            model.backward_params(loss_fn.backward())
            optimizer.step()
            avg = smooth * avg + (1 - smooth) * loss
            smoothed = avg / (1 - smooth ** (i + 1))
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            if smoothed > diverge * best:
                break
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(opt_state)
        loader.load_state_dict(loader_state)
        get_rng().bit_generator.state = rng_state
        model.train(was_training)
    suggestion = None
    if len(losses) >= 3:
        slopes = np.gradient(np.asarray(losses), np.log(np.asarray(lrs)))
        suggestion = float(lrs[int(np.argmin(slopes))])
    return LRFinderResult(lrs, losses, suggestion)
