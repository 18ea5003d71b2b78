"""``minicnn train digits|fashion-mnist``: train a small convnet, report, save the weights.

``digits``: the embedded 1797 8x8 digits are split (stratified, by ``--seed``) into 80% training
and 20% test images, and ``--val-size`` of the training part is held out for the per-epoch
validation score, so the test set is touched once, at the end. Training is SGD with Nesterov
momentum 0.9 (or Adam) and a cosine learning-rate decay stepped every batch.

``fashion-mnist``: the 60,000 training images of Debian's ``dataset-fashion-mnist`` (or
``--root``), the 10,000 test images scored once at the end; ``--arch convnet`` (the 83K-parameter
2-conv net) or ``convnet_bn`` (the same with batch norm). Adam, batch 128 and a cosine decay by
default; ``--augment`` adds a random horizontal flip and a random 28x28 crop of the image padded by
2. After every epoch the model, the optimizer, the scheduler and the random state go to a
checkpoint file, and ``--resume`` continues from it: every epoch's shuffling and augmentation come
from a generator seeded by ``(seed, epoch)``, so a resumed run gives the same weights as an
uninterrupted one.
"""
from __future__ import annotations

import math
import sys

from .train_folder import FOLDER_ARCHS, prepare_builtin
from .train_folder import add_arguments as add_folder_arguments
from .train_folder import run as run_folder

DATASETS = ("digits", "fashion-mnist")
DEFAULT_OUT = "weights/digits_convnet.safetensors"
DEFAULT_LR = {"sgd": 0.05, "adam": 0.01}
# fashion-mnist: --arch -> model factory; defaults that differ from the digits ones
FASHION_ARCHS = {"convnet": "fashion_convnet", "convnet_bn": "fashion_convnet_bn", "resnet": "fashion_resnet"}
FASHION_DEFAULTS = {"epochs": 20, "batch_size": 128, "optimizer": "adam", "val_size": 0.0}
FASHION_LR = {"sgd": 0.05, "adam": 0.002}
DIGITS_DEFAULTS = {"epochs": 15, "batch_size": 32, "optimizer": "sgd", "val_size": 0.1}


def register(subparsers) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="train a small convnet on the embedded digits or on Fashion-MNIST, or a classifier on your images",
        description="Train the digits convnet on the embedded 8x8 handwritten digits (UCI, 1797 images), or a "
                    "2-conv net on Fashion-MNIST (Debian's dataset-fashion-mnist: 60,000 + 10,000 28x28 images): "
                    "prints per-epoch progress, the test accuracy and confusion matrix, and saves the weights. "
                    "`minicnn train DIR` trains on a folder of images, one subfolder per class (see "
                    "minicnn/cli/train_folder.py): weights, checkpoint, metrics.json and a confusion matrix go to --out.",
    )
    p.add_argument("dataset", metavar="DATASET",
                   help="digits, fashion-mnist, or DIR: a folder of your images, one subfolder per class")
    p.add_argument("--epochs", type=int, default=None,
                   help="passes over the training set (default: 15 for digits, 20 for fashion-mnist)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="mini-batch size (default: 32 for digits, 128 for fashion-mnist)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate, decayed by a cosine schedule (default: digits 0.05 for sgd, 0.01 "
                        "for adam; fashion-mnist 0.05 for sgd, 0.002 for adam)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                   help="sgd (Nesterov momentum 0.9) or adam (default: sgd for digits, adam for fashion-mnist)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and shuffling (default: 0)")
    p.add_argument("--val-size", type=float, default=None,
                   help="fraction of the training images held out for validation, 0 for none "
                        "(default: 0.1 for digits, 0 for fashion-mnist)")
    p.add_argument("--out", default=None, help="where to save the weights (safetensors; a directory gets the model's "
                   "file name inside; default: weights/<model>.safetensors)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar; print one line per epoch")
    f = p.add_argument_group("fashion-mnist")
    f.add_argument("--arch", choices=tuple(FASHION_ARCHS) + FOLDER_ARCHS, default=None,
                   help="convnet: 2 conv + pooling, 83K parameters; convnet_bn: the same with batch norm; resnet: a narrow "
                        "ResNet (3x3 stem, three stages of two BasicBlocks, 16/32/64 channels, 175K parameters) "
                        "(default: convnet); "
                        "for DIR: resnet18 (default) or small (the digits convnet)")
    f.add_argument("--root", default=None,
                   help="folder of the four IDX files (default: /usr/share/datasets/fashion-mnist, from "
                        "`apt-get install dataset-fashion-mnist`)")
    f.add_argument("--augment", nargs="?", const="flip+crop", default=None, choices=("flip", "flip+crop"),
                   help="per sample: a random horizontal flip (flip), and a random 28x28 crop of the image padded "
                        "by 2 (flip+crop, what --augment alone means)")
    f.add_argument("--dropout", type=float, default=None,
                   help="dropout rate before the classifier of convnet/convnet_bn (default: 0)")
    f.add_argument("--hidden", type=int, default=None,
                   help="convnet/convnet_bn: a hidden linear layer of this width before the classifier "
                        "(default: 0, none, the table's net)")
    f.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay: PyTorch's L2 term for sgd, decoupled (AdamW) for adam (default: 0)")
    f.add_argument("--train-size", type=int, default=None,
                   help="train on the first N training images only (default: all 60,000)")
    f.add_argument("--checkpoint", default=None,
                   help="checkpoint written after every epoch (default: the --out path with .ckpt.safetensors)")
    f.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run saved in --checkpoint, or in CHECKPOINT (same command line otherwise)")
    add_folder_arguments(p)
    p.set_defaults(func=run)


def _resolve_out(out: str, default_name: str = "digits_convnet.safetensors") -> str:
    """The weights path for ``--out``, checked before training so a bad path cannot waste a run.

    A directory (existing, or written with a trailing separator) gets the default file name inside it.
    """
    import os
    import tempfile

    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        out = os.path.join(out, default_name)
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out!r}: cannot create directory {parent!r} ({e.strerror or e})") from None
    try:  # a real write, since permission bits say nothing for root or for special filesystems
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise ValueError(f"--out {out!r}: cannot write in {parent!r} ({e.strerror or e})") from None
    return out


def _check_common(args, default_lr: dict) -> float:
    """Check the options both datasets share; return the learning rate."""
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    lr = default_lr[args.optimizer] if args.lr is None else args.lr
    if not lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if not 0.0 <= args.val_size < 1.0:
        raise ValueError(f"--val-size must lie in [0, 1), got {args.val_size}")
    return lr


def _fill_defaults(args, defaults: dict) -> None:
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def run(args) -> int:
    """Train, evaluate on the held-out test split, print the confusion matrix, save the weights."""
    if args.dataset not in DATASETS:  # a folder of images: minicnn/cli/train_folder.py
        return run_folder(args)
    prepare_builtin(args)
    if args.dataset == "fashion-mnist":
        return run_fashion(args)
    return run_digits(args)


def run_digits(args) -> int:
    """``minicnn train digits``."""
    import time

    import minicnn as mc
    from minicnn import nn, optim
    from minicnn.data import load_digits, train_test_split
    from minicnn.metrics import confusion_matrix, format_confusion_matrix
    from minicnn.models import digits_convnet
    from minicnn.train import DataLoader, evaluate, fit, format_epoch, predict

    _fill_defaults(args, DIGITS_DEFAULTS)
    given = [flag for flag, v in (("--arch", args.arch), ("--root", args.root), ("--augment", args.augment),
                                  ("--dropout", args.dropout), ("--weight-decay", args.weight_decay),
                                  ("--hidden", args.hidden), ("--train-size", args.train_size),
                                  ("--checkpoint", args.checkpoint), ("--resume", args.resume)) if v not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)}: only for fashion-mnist, not for digits")
    lr = _check_common(args, DEFAULT_LR)
    out = _resolve_out(DEFAULT_OUT if args.out is None else args.out)

    mc.manual_seed(args.seed)
    X_train, y_train, X_test, y_test = load_digits("both", test_size=0.2, seed=args.seed)
    val = None
    if args.val_size > 0:
        X_train, y_train, X_val, y_val = train_test_split(X_train, y_train, args.val_size, seed=args.seed)
        val = DataLoader(X_val, y_val, batch_size=256)
    loader = DataLoader(X_train, y_train, batch_size=args.batch_size, shuffle=True, seed=args.seed)

    model = digits_convnet()
    loss_fn = nn.CrossEntropyLoss()
    if args.optimizer == "sgd":
        opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    else:
        opt = optim.Adam(model.parameters(), lr=lr)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * len(loader))

    n_val = 0 if val is None else val.num_samples
    print(f"digits: {len(X_train)} train / {n_val} val / {len(X_test)} test images of 8x8; "
          f"digits_convnet ({model.num_parameters():,} parameters); {args.optimizer} lr {lr:g} cosine, "
          f"{args.epochs} epochs, batch {args.batch_size}, backend {mc.get_backend()}")
    sys.stdout.flush()

    callbacks = []
    if args.no_progress:
        clock = [time.perf_counter()]

        def print_epoch(epoch, logs):
            now = time.perf_counter()
            print(format_epoch(epoch, args.epochs, logs, now - clock[0]), flush=True)
            clock[0] = now

        callbacks.append(print_epoch)
    t0 = time.perf_counter()
    fit(model, loss_fn, opt, loader, val=val, epochs=args.epochs, scheduler=sched, scheduler_step="batch",
        progress=not args.no_progress, callbacks=callbacks)
    train_s = time.perf_counter() - t0

    scores = evaluate(model, loss_fn, (X_test, y_test))
    pred = predict(model, X_test).argmax(axis=1)
    cm = confusion_matrix(y_test, pred, num_classes=10)
    correct = int(cm.trace())
    print(f"trained in {train_s:.1f} s")
    print(f"test accuracy: {scores['accuracy']:.4f} ({correct}/{len(y_test)})  test loss: {scores['loss']:.4f}")
    print("confusion matrix (test set; rows: true digit, columns: predicted):")
    print(format_confusion_matrix(cm))
    mc.save(model, out, metadata={
        "model": "digits_convnet",
        "dataset": "digits",
        "epochs": str(args.epochs),
        "seed": str(args.seed),
        "test_accuracy": f"{scores['accuracy']:.4f}",
    })
    print(f"saved weights to {out}")
    return 0


# -- fashion-mnist -------------------------------------------------------------------------------

def _config(args, lr: float) -> dict:
    """What a checkpoint must agree on with the command that resumes it (str -> str)."""
    keys = ("arch", "epochs", "batch_size", "optimizer", "seed", "val_size", "augment", "dropout", "train_size")
    cfg = {k: str(getattr(args, k)) for k in keys}
    # only when given, so checkpoints written before these flags existed still resume
    if args.weight_decay:
        cfg["weight_decay"] = repr(float(args.weight_decay))
    if args.hidden:
        cfg["hidden"] = str(args.hidden)
    cfg["lr"] = repr(float(lr))
    return cfg


def save_checkpoint(path: str, model, optimizer, scheduler, epoch: int, config: dict, history: list) -> None:
    """Write model, optimizer and scheduler state after ``epoch`` to one safetensors file.

    Arrays go in as tensors (``model.<name>``, ``optimizer.<index>.<key>``); everything else (the
    optimizer's scalar state and parameter groups, the scheduler, minicnn's generator state, the
    epoch, the run's configuration, the per-epoch logs) as JSON in the metadata. The file is
    written beside its final name and renamed, so a run killed mid-write leaves the previous one.
    """
    import json
    import os

    import numpy as np

    import minicnn as mc
    from minicnn.random import get_rng

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars = {}
    for idx, entry in opt["state"].items():
        for k, v in entry.items():
            if hasattr(v, "shape") and np.ndim(v) > 0:
                tensors[f"optimizer.{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v.item() if hasattr(v, "item") else v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "param_names"}
              for g in opt["param_groups"]]
    sched = scheduler.state_dict()
    meta = {
        "kind": "minicnn-checkpoint",
        "epoch": str(epoch),
        "config": json.dumps(config, sort_keys=True),
        "optimizer_scalars": json.dumps(scalars),
        "optimizer_groups": json.dumps(groups),
        "scheduler": json.dumps(sched),
        "rng": json.dumps(get_rng().bit_generator.state),
        "history": json.dumps(history),
    }
    tmp = path + ".partial"
    mc.save(tensors, tmp, metadata=meta)
    os.replace(tmp, path)


def load_checkpoint(path: str, model, optimizer, scheduler, config: dict):
    """Restore what :func:`save_checkpoint` wrote; return ``(epoch, history)``.

    Refuses, in one line, a missing file, a file that is not a checkpoint, or one written by a run
    with a different configuration (naming the options that differ).
    """
    import json
    import os

    import minicnn as mc
    from minicnn.random import get_rng
    from minicnn.serialization import load_metadata

    if not os.path.isfile(path):
        raise ValueError(f"--resume: no checkpoint at {path}")
    meta = load_metadata(path)
    if meta.get("kind") != "minicnn-checkpoint":
        raise ValueError(f"--resume: {path} is not a minicnn training checkpoint")
    saved = json.loads(meta["config"])
    diff = [f"--{k.replace('_', '-')} {saved.get(k)} (now {v})" for k, v in config.items() if saved.get(k) != v]
    if diff:
        raise ValueError(f"--resume: {path} was written by a run with other options: {'; '.join(diff)}")
    tensors = mc.load(path)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(weights)
    # Module.load_state_dict skips num_batches_tracked; a resumed run needs the counts back
    for mname, m in model.named_modules():
        key = f"{mname}.num_batches_tracked" if mname else "num_batches_tracked"
        if key in weights:
            m._set_buffer("num_batches_tracked", weights[key].astype("int64").reshape(()))
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optimizer."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    for idx, entry in json.loads(meta["optimizer_scalars"]).items():
        state.setdefault(int(idx), {}).update(entry)
    groups = json.loads(meta["optimizer_groups"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(json.loads(meta["scheduler"]))
    get_rng().bit_generator.state = json.loads(meta["rng"])
    return int(meta["epoch"]), json.loads(meta["history"])


def run_fashion(args) -> int:
    """``minicnn train fashion-mnist``: train with a checkpoint per epoch, score the 10,000 test images once."""
    import time

    import minicnn as mc
    from minicnn import augment, models, nn, optim
    from minicnn.data import FashionMNIST, train_test_split
    from minicnn.metrics import confusion_matrix, format_confusion_matrix
    from minicnn.train import DataLoader, evaluate, fit, format_epoch, predict

    _fill_defaults(args, FASHION_DEFAULTS)
    if args.arch is None:
        args.arch = "convnet"
    if args.arch == "resnet" and (args.dropout or args.hidden):
        raise ValueError("--dropout and --hidden are for --arch convnet/convnet_bn, not the resnet")
    if args.hidden is None:
        args.hidden = 0
    if args.hidden < 0:
        raise ValueError(f"--hidden must be a width >= 0, got {args.hidden}")
    if args.dropout is None:
        args.dropout = 0.0
    if args.weight_decay is None:
        args.weight_decay = 0.0
    lr = _check_common(args, FASHION_LR)
    if not 0.0 <= args.dropout < 1.0:
        raise ValueError(f"--dropout must lie in [0, 1), got {args.dropout}")
    if not (args.weight_decay >= 0.0 and math.isfinite(args.weight_decay)):
        raise ValueError(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    if args.train_size is not None and args.train_size < 1:
        raise ValueError(f"--train-size must be at least 1, got {args.train_size}")
    name = FASHION_ARCHS[args.arch]
    out = _resolve_out(f"weights/{name}.safetensors" if args.out is None else args.out, f"{name}.safetensors")
    ckpt = args.checkpoint or (out[:-len(".safetensors")] if out.endswith(".safetensors") else out) + ".ckpt.safetensors"

    train_ds, test_ds = FashionMNIST(args.root, train=True), FashionMNIST(args.root, train=False)
    X_train, y_train = train_ds.arrays()
    X_test, y_test = test_ds.arrays()
    if args.train_size is not None:
        X_train, y_train = X_train[:args.train_size], y_train[:args.train_size]
    val = None
    if args.val_size > 0:
        X_train, y_train, X_val, y_val = train_test_split(X_train, y_train, args.val_size, seed=args.seed)
        val = DataLoader(X_val, y_val, batch_size=256)
    transform = None
    if args.augment == "flip":
        transform = augment.RandomHorizontalFlip()
    elif args.augment == "flip+crop":
        transform = augment.Compose([augment.RandomHorizontalFlip(), augment.RandomCrop(28, padding=2)])

    def loader_for(epoch):
        # one generator per epoch, seeded by (seed, epoch): a resumed run shuffles and augments as the original
        return DataLoader(X_train, y_train, batch_size=args.batch_size, shuffle=True, seed=[args.seed, epoch],
                          transform=transform)

    mc.manual_seed(args.seed)
    model = getattr(models, name)() if args.arch == "resnet" else getattr(models, name)(dropout=args.dropout,
                                                                                        hidden=args.hidden)
    loss_fn = nn.CrossEntropyLoss()
    wd = args.weight_decay
    if args.optimizer == "sgd":
        opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    else:
        opt = optim.Adam(model.parameters(), lr=lr, weight_decay=wd, decoupled_weight_decay=True)
    steps = len(loader_for(1))
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps)
    config = _config(args, lr)

    done, history = 0, []
    if args.resume:
        done, history = load_checkpoint(ckpt, model, opt, sched, config)
        print(f"resumed from {ckpt} after epoch {done}/{args.epochs}")
    n_val = 0 if val is None else val.num_samples
    print(f"fashion-mnist: {len(X_train)} train / {n_val} val / {len(X_test)} test images of 28x28; "
          f"{name} ({model.num_parameters():,} parameters); {args.optimizer} lr {lr:g} cosine, "
          f"{args.epochs} epochs, batch {args.batch_size}, augment {args.augment or 'none'}, "
          f"dropout {args.dropout:g}, weight decay {args.weight_decay:g}, backend {mc.get_backend()}", flush=True)

    t0 = time.perf_counter()
    for epoch in range(done + 1, args.epochs + 1):
        h = fit(model, loss_fn, opt, loader_for(epoch), val=val, epochs=1, scheduler=sched, scheduler_step="batch",
                progress=not args.no_progress)
        logs, seconds = h.last(), h.seconds[-1]
        history.append({**{k: float(v) for k, v in logs.items()}, "seconds": float(seconds)})
        save_checkpoint(ckpt, model, opt, sched, epoch, config, history)
        print(format_epoch(epoch, args.epochs, logs, seconds), flush=True)
    train_s = time.perf_counter() - t0
    total_s = sum(e["seconds"] for e in history)

    scores = evaluate(model, loss_fn, (X_test, y_test))
    pred = predict(model, X_test).argmax(axis=1)
    cm = confusion_matrix(y_test, pred, num_classes=10)
    correct = int(cm.trace())
    print(f"trained in {train_s:.1f} s this session, {total_s:.1f} s over all {len(history)} epochs")
    print(f"test accuracy: {correct / len(y_test):.4f} ({correct}/{len(y_test)})  test loss: {scores['loss']:.4f}")
    print("confusion matrix (test set; rows: true class, columns: predicted):")
    print(format_confusion_matrix(cm))
    print("classes: " + ", ".join(f"{i} {c}" for i, c in enumerate(FashionMNIST.classes)))
    mc.save(model, out, metadata={
        "model": name,
        "dataset": "fashion-mnist",
        "config": " ".join(f"{k}={v}" for k, v in sorted(config.items())),
        "train_seconds": f"{total_s:.1f}",
        "test_accuracy": f"{correct / len(y_test):.4f}",
        "test_correct": f"{correct}/{len(y_test)}",
    })
    print(f"saved weights to {out} (checkpoint: {ckpt})")
    return 0
