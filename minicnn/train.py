"""The training loop: ``DataLoader`` batches, ``fit`` trains, ``evaluate`` scores, ``predict`` infers.

One training step is the whole of manual backprop in five lines::

    model.zero_grad()
    logits = model(xb)              # each layer keeps what its backward needs
    loss = loss_fn(logits, yb)      # a float: the batch mean
    model.backward_params(loss_fn.backward())   # every .grad; no dL/dx for the images
    optimizer.step()

(``model.backward(dy)`` would also return dL/dx, which only input-space methods such as
gradient ascent or saliency maps want.) Reported losses and metrics are averages over
*samples*, not over batches: every batch is weighted by its size, so a short last batch counts
for exactly its share. ``evaluate`` goes one step further and computes each metric once over
all the outputs of the data set.
See docs/training.md.
"""
from __future__ import annotations

import copy
import inspect
import math
import re
import time

import numpy as np

from . import metrics as _metrics
from .backends import to_numpy
from .errors import MinicnnError
from .grad_mode import no_grad
from .random import get_rng

__all__ = ["DataLoader", "History", "FitState", "fit", "evaluate", "predict", "format_epoch", "default_collate"]


# -- batches ---------------------------------------------------------------------------------

def _accepts_rng(fn) -> bool:
    try:
        return "rng" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False


def _is_dataset(obj) -> bool:
    """A map-style dataset: ``len(ds)`` and ``ds[i]`` giving one sample, but not an array."""
    is_array = hasattr(obj, "shape") and hasattr(obj, "dtype")
    return hasattr(obj, "__len__") and hasattr(obj, "__getitem__") and not is_array \
        and not isinstance(obj, (list, tuple, str, bytes, dict))


def default_collate(samples):
    """Stack a list of ``(x, y)`` samples into ``(xb, yb)`` arrays (a new leading batch axis)."""
    if not samples:
        raise ValueError("default_collate: got an empty batch")
    first = samples[0]
    if not isinstance(first, (tuple, list)) or len(first) != 2:
        raise ValueError(f"default_collate: a sample must be an (x, y) pair, got {type(first).__name__}")
    xs = [np.asarray(to_numpy(s[0])) for s in samples]
    ys = [np.asarray(to_numpy(s[1])) for s in samples]
    return np.stack(xs), np.stack(ys)


class DataLoader:
    """Iterate over ``(xb, yb)`` mini-batches of arrays ``X`` (N, ...), ``y`` (N, ...) or of a dataset.

    ``DataLoader(X, y, ...)`` batches two arrays; ``DataLoader(dataset, ...)`` batches any object
    with ``len(dataset)`` and ``dataset[i] -> (x, y)`` (``minicnn.data.ImageFolder``,
    ``ImageList``, your own), gathering each batch with ``collate`` (default: stack the ``x`` and
    the ``y`` of the samples, :func:`default_collate`).

    ``shuffle=True`` draws a new order every epoch (every ``iter()``). The order comes from a
    generator seeded with ``seed`` when one is given, so two loaders with the same seed yield the
    same batches epoch after epoch; with ``seed=None`` it comes from minicnn's global generator
    (``minicnn.manual_seed``). ``drop_last=True`` skips a final batch smaller than ``batch_size``.
    ``transform(xb)`` is applied to each input batch (e.g. a ``minicnn.augment`` transform); if it
    takes an ``rng`` keyword and the loader has a seed, the loader's generator is passed, so the
    augmentation is reproducible too (for a dataset, each batch gets its own generator seeded from
    the loader's, so the result does not depend on ``num_workers``). Batches are slices or
    gathered copies; the arrays are never modified.

    ``num_workers > 0`` (datasets only) loads, decodes, collates and transforms batches in that
    many threads while the caller computes (Pillow and numpy release the GIL); at most
    ``num_workers * prefetch_factor`` batches are in flight, so memory stays bounded whatever the
    dataset's size. Batches come out in order. :meth:`state_dict` / :meth:`load_state_dict` save
    and restore the seeded generator, so a resumed run shuffles as the uninterrupted one would.
    """

    def __init__(self, X, y=None, batch_size=32, shuffle=False, drop_last=False, seed=None, transform=None,
                 collate=None, num_workers=0, prefetch_factor=2):
        self.dataset = None
        if y is None and X is not None and _is_dataset(X):
            self.dataset = X
            self.X = self.y = None
        else:
            if X is None or y is None:
                raise ValueError("DataLoader: give X and y arrays, or one dataset (len(ds) and ds[i] -> (x, y))")
            if not hasattr(X, "shape"):
                X = np.asarray(X)
            if not hasattr(y, "shape"):
                y = np.asarray(y)
            if X.ndim < 1 or y.ndim < 1:
                raise ValueError(f"DataLoader: X and y need a leading sample axis, got shapes {tuple(X.shape)} and {tuple(y.shape)}")
            if X.shape[0] != y.shape[0]:
                raise ValueError(
                    f"DataLoader: X of shape {tuple(X.shape)} and y of shape {tuple(y.shape)} hold different "
                    f"numbers of samples ({X.shape[0]} vs {y.shape[0]})"
                )
            if collate is not None or num_workers:
                raise ValueError("DataLoader: collate and num_workers apply to a dataset, not to X and y arrays")
            self.X, self.y = X, y
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")
        if transform is not None and not callable(transform):
            raise ValueError(f"DataLoader: transform must be callable, got {type(transform).__name__}")
        if collate is not None and not callable(collate):
            raise ValueError(f"DataLoader: collate must be callable, got {type(collate).__name__}")
        for name, v in (("num_workers", num_workers), ("prefetch_factor", prefetch_factor)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if name == "num_workers" else 1):
                raise ValueError(f"DataLoader: {name} must be a {'non-negative' if name == 'num_workers' else 'positive'} "
                                 f"integer, got {v!r}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = seed
        self.transform = transform
        self.collate = collate if collate is not None else default_collate
        self.num_workers = int(num_workers)
        self.prefetch_factor = int(prefetch_factor)
        self._rng = np.random.default_rng(seed) if seed is not None else None
        self._transform_takes_rng = transform is not None and _accepts_rng(transform)

    def _n(self) -> int:
        return len(self.dataset) if self.dataset is not None else self.X.shape[0]

    @property
    def num_samples(self) -> int:
        """Samples yielded per epoch (fewer than the data holds when ``drop_last`` drops a short batch)."""
        n = self._n()
        return n - n % self.batch_size if self.drop_last else n

    def __len__(self) -> int:
        """Batches per epoch."""
        n = self._n()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def state_dict(self) -> dict:
        """The seeded generator's state (``{}`` when the loader uses the global generator)."""
        return {} if self._rng is None else {"rng": copy.deepcopy(self._rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the generator state saved by :meth:`state_dict`."""
        if not state:
            return
        if self._rng is None:
            raise ValueError("DataLoader.load_state_dict: this loader has no seed; build it with seed=... to resume "
                             "its shuffling")
        self._rng.bit_generator.state = copy.deepcopy(dict(state["rng"]))

    def _order(self, n):
        if not self.shuffle:
            return None
        rng = self._rng if self._rng is not None else get_rng()
        return rng.permutation(n)

    def __iter__(self):
        if self.dataset is not None:
            yield from self._iter_dataset()
            return
        n = self.X.shape[0]
        order = self._order(n)
        for start in range(0, self.num_samples, self.batch_size):
            stop = min(start + self.batch_size, n)
            if order is None:
                xb, yb = self.X[start:stop], self.y[start:stop]
            else:
                idx = order[start:stop]
                xb, yb = self.X[idx], self.y[idx]
            if self.transform is not None:
                if self._transform_takes_rng and self._rng is not None:
                    xb = self.transform(xb, rng=self._rng)
                else:
                    xb = self.transform(xb)
            yield xb, yb

    def _load_batch(self, idx, seed):
        xb, yb = self.collate([self.dataset[int(i)] for i in idx])
        if self.transform is not None:
            if self._transform_takes_rng and seed is not None:
                xb = self.transform(xb, rng=np.random.default_rng(seed))
            else:
                xb = self.transform(xb)
        return xb, yb

    def _batch_plan(self):
        """``(indices, seed)`` per batch, drawn in the caller's thread so workers change nothing."""
        n = len(self.dataset)
        order = self._order(n)
        idx_all = np.arange(n) if order is None else order
        seeded = self._transform_takes_rng and self._rng is not None
        for start in range(0, self.num_samples, self.batch_size):
            seed = int(self._rng.integers(2 ** 63)) if seeded else None
            yield idx_all[start:start + self.batch_size], seed

    def _iter_dataset(self):
        if self.num_workers == 0:
            for idx, seed in self._batch_plan():
                yield self._load_batch(idx, seed)
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        plan = self._batch_plan()
        pending = deque()
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="minicnn-loader")
        try:
            for idx, seed in plan:
                pending.append(pool.submit(self._load_batch, idx, seed))
                if len(pending) >= self.num_workers * self.prefetch_factor:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        what = f"dataset={type(self.dataset).__name__}" if self.dataset is not None else "arrays"
        return (f"DataLoader({what}, samples={self._n()}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, seed={self.seed})")


def _as_loader(data, batch_size, shuffle, what):
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return DataLoader(data[0], data[1], batch_size=batch_size, shuffle=shuffle)
    if _is_dataset(data):
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle)
    raise ValueError(f"{what} must be a DataLoader, a dataset or an (X, y) pair, got {type(data).__name__}"
                     + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))


# -- metrics by name -------------------------------------------------------------------------

_TOPK = re.compile(r"^top_?(\d+)(_accuracy)?$")


def _resolve_metrics(metrics):
    """``[(name, fn(output, target) -> float)]`` from names, callables or a {name: callable} dict.

    Asking for ``accuracy`` also reports ``error_rate`` (it is one minus it, and the history
    keeps both so either can be plotted).
    """
    if metrics is None:
        return []
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    items = list(metrics.items()) if isinstance(metrics, dict) else [(None, m) for m in metrics]
    out = []
    for i, (name, m) in enumerate(items):
        if callable(m):
            if name is None:
                name = getattr(m, "__name__", "") or f"metric{i}"
                if name == "<lambda>":
                    name = f"metric{i}"
            out.append((str(name), m))
            continue
        if not isinstance(m, str):
            raise ValueError(f"metric {m!r} is neither a name nor a callable")
        key = m.strip().lower()
        if key in ("accuracy", "acc"):
            out.append(("accuracy", _metrics.accuracy))
        elif key in ("error_rate", "error", "err"):
            out.append(("error_rate", _metrics.error_rate))
        elif _TOPK.match(key):
            k = int(_TOPK.match(key).group(1))

            def topk(output, target, k=k):
                return _metrics.top_k_accuracy(output, target, k)

            out.append((f"top{k}_accuracy", topk))
        else:
            raise ValueError(f"unknown metric {m!r}; use accuracy, error_rate, top5_accuracy (any k) or a callable")
    names = [n for n, _ in out]
    if "accuracy" in names and "error_rate" not in names:
        out.insert(names.index("accuracy") + 1, ("error_rate", _metrics.error_rate))
    if len(set(n for n, _ in out)) != len(out):
        raise ValueError(f"metric names must be unique, got {[n for n, _ in out]}")
    return out


def _loss_total(loss_fn, loss: float, n: int) -> float:
    """The summed loss of a batch of ``n`` samples, from what the loss function returned."""
    return float(loss) if getattr(loss_fn, "reduction", "mean") == "sum" else float(loss) * n


# -- history ---------------------------------------------------------------------------------

class History(dict):
    """Per-epoch results of ``fit``: a dict of lists, one entry per epoch.

    Keys: ``loss`` and each training metric (``accuracy``, ``error_rate``, ...) averaged over the
    epoch's samples as they were trained on (the model changes during the epoch), then
    ``val_loss``, ``val_accuracy``, ... measured by ``evaluate`` after the epoch when validation
    data is given, and ``lr``, the learning rate in force at the start of the epoch. Values are
    also readable as attributes (``history.val_accuracy``); ``history.seconds`` holds each epoch's
    wall time. Being a plain dict underneath, it plots with ``minicnn.viz.learning_curves``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds: list = []

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"History has no key {name!r}; keys: {', '.join(self) or '(none yet)'}") from None

    @property
    def history(self) -> "History":
        """This same dict, for code written against Keras's ``fit(...).history["loss"]``."""
        return self

    @property
    def epochs(self) -> int:
        """Number of epochs recorded."""
        return len(next(iter(self.values()))) if self else 0

    def append(self, logs: dict, seconds: float | None = None) -> None:
        """Record one epoch's values (every epoch must report the same keys)."""
        if self and set(logs) != set(self):
            raise ValueError(f"History.append: epoch keys {sorted(logs)} differ from earlier epochs' {sorted(self)}")
        for k, v in logs.items():
            self.setdefault(k, []).append(float(v))
        self.seconds.append(float("nan") if seconds is None else float(seconds))

    def last(self) -> dict:
        """The most recent epoch's values as ``{key: float}``."""
        return {k: v[-1] for k, v in self.items() if v}

    def best(self, key: str = "val_loss", mode: str | None = None):
        """``(epoch, value)`` of the best epoch by ``key`` (epochs count from 1).

        ``mode`` is ``"min"`` or ``"max"``; by default losses and error rates are minimised and
        everything else is maximised.
        """
        if key not in self:
            raise KeyError(f"History has no key {key!r}; keys: {', '.join(self)}")
        if mode is None:
            mode = "min" if ("loss" in key or "error" in key) else "max"
        if mode not in ("min", "max"):
            raise ValueError(f"History.best: mode must be 'min' or 'max', got {mode!r}")
        vals = np.asarray(self[key], dtype=np.float64)
        i = int(np.nanargmin(vals) if mode == "min" else np.nanargmax(vals))
        return i + 1, float(vals[i])

    def __repr__(self) -> str:
        return f"History(epochs={self.epochs}, keys={list(self)})"


def format_epoch(epoch: int, epochs: int, logs: dict, seconds: float | None = None) -> str:
    """One line per epoch: ``epoch  3/10  loss 0.1234  acc 0.9712  val_loss 0.0981  val_acc 0.9722  lr 0.01  (1.2 s)``.

    ``accuracy`` is shortened to ``acc``; an ``error_rate`` is left out when its accuracy is shown
    (it is one minus it, and still in the History).
    """
    width = len(str(epochs))
    parts = [f"epoch {epoch:>{width}}/{epochs}"]
    for k, v in logs.items():
        if k == "lr":
            parts.append(f"lr {v:.3g}")
        elif k.endswith("error_rate") and k[: -len("error_rate")] + "accuracy" in logs:
            continue
        else:
            parts.append(f"{k.replace('accuracy', 'acc')} {v:.4f}")
    if seconds is not None:
        parts.append(f"({seconds:.1f} s)")
    return "  ".join(parts)


def _current_lr(optimizer) -> float:
    groups = getattr(optimizer, "param_groups", None)
    if groups:
        return float(groups[0]["lr"])
    lr = getattr(optimizer, "lr", None)
    return float(lr) if lr is not None else float("nan")


def _call_callbacks(callbacks, epoch, logs) -> bool:
    """Run each callback; True when one of them asks to stop training."""
    stop = False
    for cb in callbacks:
        fn = getattr(cb, "on_epoch_end", None) or cb
        if fn(epoch, logs) is True:
            stop = True
    return stop


class FitState:
    """What a callback may reach during :func:`fit`: ``model``, ``optimizer``, ``scheduler``,
    ``loss_fn``, ``train_loader``, ``val_loader``, ``history``, ``epochs`` and ``epoch`` (the last
    finished one). Callbacks with a ``set_fit_state(state)`` method receive it before the first epoch."""

    def __init__(self, **kw):
        self.epoch = 0
        self.__dict__.update(kw)

    def __repr__(self) -> str:
        return f"FitState(epoch={self.epoch}, epochs={self.epochs})"


# -- the loop ----------------------------------------------------------------------------------

def fit(model, loss_fn, optimizer, train, val=None, epochs=1, metrics=("accuracy",), batch_size=32,
        scheduler=None, scheduler_step="batch", progress=True, callbacks=None, initial_epoch=0,
        history=None) -> History:
    """Train ``model`` for ``epochs`` passes over ``train``; return a :class:`History`.

    ``train`` and ``val`` are DataLoaders or ``(X, y)`` pairs; a pair is batched by ``batch_size``,
    the training pair shuffled each epoch from minicnn's global generator. Each step: train mode,
    ``model.zero_grad()``, forward, ``loss_fn``, ``model.backward_params(loss_fn.backward())``,
    ``optimizer.step()``, then ``scheduler.step()`` when ``scheduler_step="batch"``
    (``"epoch"`` steps it once after each epoch instead).

    ``metrics`` are names (``"accuracy"``, ``"error_rate"``, ``"top5_accuracy"``) or callables
    ``fn(logits, targets) -> float`` (a callable's batch values are averaged weighted by batch
    size). With ``progress=True`` a tqdm bar shows the running loss and accuracy and each epoch
    ends with one printed line (see :func:`format_epoch`). ``callbacks`` are callables
    ``cb(epoch, logs)`` (or objects with ``on_epoch_end(epoch, logs)``) run after every epoch,
    ``epoch`` counting from 1 and ``logs`` that epoch's dict; returning True stops training.
    Callbacks may also have ``set_fit_state(state)`` (called first with a :class:`FitState`),
    ``on_train_begin()`` and ``on_train_end()``; see ``minicnn.callbacks`` (EarlyStopping,
    ModelCheckpoint, ReduceLROnPlateau).

    Resuming (Keras's ``initial_epoch``): after restoring the model, optimizer, scheduler and
    loader from a checkpoint written after epoch ``k`` (``minicnn.callbacks.load_checkpoint``),
    ``fit(..., epochs=n, initial_epoch=k, history=saved_history)`` runs epochs ``k+1..n`` and
    appends them to ``history``.
    A loss that becomes NaN or infinite stops training with a MinicnnError naming the epoch
    and batch. The model is left in train mode.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative integer, got {epochs!r}")
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer)) or initial_epoch < 0:
        raise ValueError(f"fit: initial_epoch must be a non-negative integer, got {initial_epoch!r}")
    if scheduler_step not in ("batch", "epoch"):
        raise ValueError(f"fit: scheduler_step must be 'batch' or 'epoch', got {scheduler_step!r}")
    train_loader = _as_loader(train, batch_size, True, "fit: train")
    val_loader = None if val is None else _as_loader(val, batch_size, False, "fit: val")
    metric_fns = _resolve_metrics(metrics)
    callbacks = [] if callbacks is None else (list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks])
    if history is None:
        history = History()
    elif not isinstance(history, History):
        history = History(history)
    state = FitState(model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
                     train_loader=train_loader, val_loader=val_loader, history=history, epochs=int(epochs))
    state.epoch = int(initial_epoch)
    for cb in callbacks:
        if hasattr(cb, "set_fit_state"):
            cb.set_fit_state(state)
        if hasattr(cb, "on_train_begin"):
            cb.on_train_begin()
    if progress:
        from tqdm import tqdm
    for epoch in range(int(initial_epoch) + 1, int(epochs) + 1):
        t0 = time.perf_counter()
        model.train()
        lr = _current_lr(optimizer)
        seen, loss_sum = 0, 0.0
        metric_sums = {name: 0.0 for name, _ in metric_fns}
        bar = None
        if progress:
            bar = tqdm(total=len(train_loader), desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                       dynamic_ncols=True)
        for b, (xb, yb) in enumerate(train_loader, start=1):
            n = int(xb.shape[0])
            model.zero_grad()
            out = model(xb)
            loss = loss_fn(out, yb)
            if not math.isfinite(loss):
                if bar is not None:
                    bar.close()
                raise MinicnnError(
                    f"fit: the loss became {loss} at epoch {epoch}, batch {b}; lower the learning rate "
                    f"(now {lr:g}) or check the inputs for NaN/inf"
                )
            model.backward_params(loss_fn.backward())
            optimizer.step()
            if scheduler is not None and scheduler_step == "batch":
                scheduler.step()
            seen += n
            loss_sum += _loss_total(loss_fn, loss, n)
            if metric_fns:
                out_np, yb_np = to_numpy(out), to_numpy(yb)
                for name, fn in metric_fns:
                    metric_sums[name] += float(fn(out_np, yb_np)) * n
            if bar is not None:
                post = {"loss": f"{loss_sum / seen:.4f}"}
                if "accuracy" in metric_sums:
                    post["acc"] = f"{metric_sums['accuracy'] / seen:.4f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
        if bar is not None:
            bar.close()
        if seen == 0:
            raise ValueError(f"fit: the training data yielded no batches ({train_loader!r})")
        logs = {"loss": loss_sum / seen}
        logs.update({name: s / seen for name, s in metric_sums.items()})
        if val_loader is not None:
            scores = evaluate(model, loss_fn, val_loader, metrics=dict(metric_fns))
            logs.update({f"val_{k}": v for k, v in scores.items()})
            model.train()
        logs["lr"] = lr
        if scheduler is not None and scheduler_step == "epoch":
            scheduler.step()
        seconds = time.perf_counter() - t0
        history.append(logs, seconds)
        if progress:
            tqdm.write(format_epoch(epoch, epochs, logs, seconds))
        state.epoch = epoch
        if _call_callbacks(callbacks, epoch, dict(logs)):
            break
    for cb in callbacks:
        if hasattr(cb, "on_train_end"):
            cb.on_train_end()
    return history


def _batches(data, batch_size, what):
    """Input batches (and target batches, or None) from a DataLoader, an (X, y) pair or an array X."""
    if isinstance(data, DataLoader):
        yield from data
        return
    if isinstance(data, (tuple, list)) and len(data) == 2:
        yield from DataLoader(data[0], data[1], batch_size=batch_size)
        return
    if _is_dataset(data):
        yield from DataLoader(data, batch_size=batch_size)
        return
    if hasattr(data, "shape"):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"{what}: batch_size must be a positive integer, got {batch_size!r}")
        for start in range(0, data.shape[0], int(batch_size)):
            yield data[start:start + int(batch_size)], None
        return
    raise ValueError(f"{what}: expected a DataLoader, an (X, y) pair or an array, got {type(data).__name__}")


def evaluate(model, loss_fn, data, metrics=("accuracy",), batch_size=256) -> dict:
    """Score ``model`` on ``data`` (a DataLoader or ``(X, y)``) in eval mode without gradients.

    Returns ``{"loss": ..., "accuracy": ..., "error_rate": ...}``: the loss averaged over samples
    (left out when ``loss_fn`` is None) and each metric computed once over all outputs. The
    model's train/eval mode is restored afterwards.
    """
    metric_fns = _resolve_metrics(metrics)
    was_training = model.training
    model.eval()
    outputs, targets = [], []
    loss_sum, seen = 0.0, 0
    try:
        with no_grad():
            for xb, yb in _batches(data, batch_size, "evaluate"):
                if yb is None:
                    raise ValueError("evaluate: data must carry targets, an (X, y) pair or a DataLoader")
                out = model(xb)
                n = int(xb.shape[0])
                if loss_fn is not None:
                    loss_sum += _loss_total(loss_fn, loss_fn(out, yb), n)
                seen += n
                if metric_fns:
                    outputs.append(np.array(to_numpy(out)))
                    targets.append(np.asarray(to_numpy(yb)))
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate: the data holds no samples")
    result = {}
    if loss_fn is not None:
        result["loss"] = loss_sum / seen
    if metric_fns:
        out_all, y_all = np.concatenate(outputs), np.concatenate(targets)
        for name, fn in metric_fns:
            result[name] = float(fn(out_all, y_all))
    return result


def predict(model, X, batch_size=256) -> np.ndarray:
    """The model's outputs (logits) for every sample of ``X``, as one numpy array.

    ``X`` is an array (N, ...) or a DataLoader (its inputs are used, targets ignored). Runs in
    eval mode without gradients, ``batch_size`` samples at a time, and restores the mode after.
    """
    was_training = model.training
    model.eval()
    outs = []
    try:
        with no_grad():
            for xb, _ in _batches(X, batch_size, "predict"):
                outs.append(np.array(to_numpy(model(xb))))
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("predict: the input holds no samples")
    return np.concatenate(outs)
