"""``minicnn train digits``: train the digits convnet on the embedded data, report, save the weights.

The 1797 digits are split (stratified, by ``--seed``) into 80% training and 20% test images, and
``--val-size`` of the training part is held out for the per-epoch validation score, so the test
set is touched once, at the end. Training is SGD with Nesterov momentum 0.9 (or Adam) and a
cosine learning-rate decay stepped every batch.
"""
from __future__ import annotations

import sys

DATASETS = ("digits",)
DEFAULT_OUT = "weights/digits_convnet.safetensors"
DEFAULT_LR = {"sgd": 0.05, "adam": 0.01}


def register(subparsers) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="train a small convnet on an embedded dataset (digits)",
        description="Train the digits convnet on the embedded 8x8 handwritten digits (UCI, 1797 images): "
                    "prints per-epoch progress, the test accuracy and confusion matrix, and saves the weights.",
    )
    p.add_argument("dataset", choices=DATASETS, help="dataset to train on")
    p.add_argument("--epochs", type=int, default=15, help="passes over the training set (default: 15)")
    p.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default: 32)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 0.05 for sgd, 0.01 for adam), decayed by a cosine schedule")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="sgd (Nesterov momentum 0.9) or adam (default: sgd)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and shuffling (default: 0)")
    p.add_argument("--val-size", type=float, default=0.1,
                   help="fraction of the training images held out for validation, 0 for none (default: 0.1)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"where to save the weights (safetensors; a directory gets digits_convnet.safetensors inside; "
                        f"default: {DEFAULT_OUT})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar; print one line per epoch")
    p.set_defaults(func=run)


def _resolve_out(out: str) -> str:
    """The weights path for ``--out``, checked before training so a bad path cannot waste a run.

    A directory (existing, or written with a trailing separator) gets the default file name inside it.
    """
    import os
    import tempfile

    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        out = os.path.join(out, os.path.basename(DEFAULT_OUT))
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


def run(args) -> int:
    """Train, evaluate on the held-out test split, print the confusion matrix, save the weights."""
    import time

    import minicnn as mc
    from minicnn import nn, optim
    from minicnn.data import load_digits, train_test_split
    from minicnn.metrics import confusion_matrix, format_confusion_matrix
    from minicnn.models import digits_convnet
    from minicnn.train import DataLoader, evaluate, fit, format_epoch, predict

    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    if not lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if not 0.0 <= args.val_size < 1.0:
        raise ValueError(f"--val-size must lie in [0, 1), got {args.val_size}")
    out = _resolve_out(args.out)

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
