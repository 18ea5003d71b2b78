"""``minicnn train DIR``: train a classifier on your own images, one subfolder per class.

    photos/cat/*.jpg, photos/dog/*.jpg   ->   minicnn train photos/ --out runs/pets

The folder is read with ``minicnn.data.ImageFolder`` (torchvision's layout and class order);
``--val-size`` of each class is held out (stratified, by ``--seed``) and scored after every
epoch. ``--arch resnet18`` (default) resizes to ``--image-size`` 224 and fine-tunes: with
``--weights FILE`` the ImageNet head is replaced by one for your classes, the first
``--freeze-epochs`` epochs train the head alone, then everything trains with discriminative
learning rates (``minicnn.transfer``: lr/100 for the stem up to lr for the head). ``--arch small``
is the digits convnet on small images (``--image-size`` 8..64), quick enough for tests.

Written to ``--out`` (a directory): ``model.safetensors`` (weights, with the arch and the class
names in the metadata), ``checkpoint.safetensors`` after every epoch (model, optimizer,
scheduler, shuffling and global generator state), ``metrics.json`` (history, final validation
scores, classes) and ``confusion_matrix.png`` (when matplotlib is installed). ``--resume
CHECKPOINT`` continues a run from its checkpoint with the same command line, and ends with the
same weights as a run that was never interrupted.

This module has no ``register``: ``minicnn train`` (``cli/train.py``) dispatches here when its
argument is a directory.
"""
from __future__ import annotations

import json
import os
import sys

FOLDER_ARCHS = ("resnet18", "small")
FOLDER_DEFAULTS = {"epochs": 5, "batch_size": 32, "optimizer": "adam", "val_size": 0.2}
FOLDER_LR = {"resnet18": {"sgd": 0.01, "adam": 1e-3}, "small": {"sgd": 0.05, "adam": 0.01}}


def add_arguments(p) -> None:
    """The options only image-folder training reads."""
    g = p.add_argument_group("image folder (DIR)")
    g.add_argument("--weights", default=None,
                   help="start from these weights (a resnet18 .safetensors/.pth, e.g. from `minicnn weights fetch`); "
                        "the head is replaced for your classes")
    g.add_argument("--freeze-epochs", type=int, default=None,
                   help="train only the new head for the first N epochs, then unfreeze everything (default: 0)")
    g.add_argument("--image-size", type=int, default=None,
                   help="side of the square network input (default: 224 for resnet18, 32 for small)")
    g.add_argument("--num-workers", type=int, default=None,
                   help="threads decoding images while the model trains (default: 2)")


FOLDER_ONLY = (("--weights", "weights"), ("--freeze-epochs", "freeze_epochs"), ("--image-size", "image_size"),
               ("--num-workers", "num_workers"))


def prepare_builtin(args) -> None:
    """For ``minicnn train digits|fashion-mnist``: refuse the image-folder options, and read
    ``--resume PATH`` as ``--checkpoint PATH --resume``."""
    given = [flag for flag, name in FOLDER_ONLY if getattr(args, name, None) is not None]
    if getattr(args, "arch", None) in FOLDER_ARCHS:
        given.insert(0, f"--arch {args.arch}")
    if given:
        raise ValueError(f"{', '.join(given)}: only for an image folder (minicnn train DIR), not for {args.dataset}")
    if isinstance(getattr(args, "resume", None), str):
        if getattr(args, "checkpoint", None) not in (None, args.resume):
            raise ValueError(f"--resume {args.resume} and --checkpoint {args.checkpoint} name different files")
        args.checkpoint, args.resume = args.resume, True


def _get(args, name, default=None):
    v = getattr(args, name, default)
    return default if v is None else v


def _check(args):
    arch = _get(args, "arch", "resnet18")
    if arch not in FOLDER_ARCHS:
        raise ValueError(f"--arch {arch!r}: for an image folder choose one of {', '.join(FOLDER_ARCHS)}")
    for k, v in FOLDER_DEFAULTS.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 < args.val_size < 1.0:
        raise ValueError(f"--val-size must lie in (0, 1) for an image folder, got {args.val_size}")
    fe = _get(args, "freeze_epochs", 0)
    if not 0 <= fe < args.epochs:
        raise ValueError(f"--freeze-epochs must lie in [0, --epochs={args.epochs}), got {fe}")
    if fe and not _get(args, "weights"):
        raise ValueError("--freeze-epochs needs --weights: a fresh network has no features worth freezing")
    if arch == "small" and _get(args, "weights"):
        raise ValueError("--weights is for --arch resnet18; the small convnet trains from scratch")
    size = _get(args, "image_size", 224 if arch == "resnet18" else 32)
    if arch == "small" and (size < 4 or size % 4):
        raise ValueError(f"--image-size for --arch small must be a positive multiple of 4, got {size}")
    if size < 1:
        raise ValueError(f"--image-size must be positive, got {size}")
    lr = _get(args, "lr", FOLDER_LR[arch][args.optimizer])
    if not lr > 0:
        raise ValueError(f"--lr must be positive, got {lr}")
    workers = _get(args, "num_workers", 2)
    if workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {workers}")
    resume = getattr(args, "resume", None)
    if resume is True:
        raise ValueError("--resume needs the checkpoint file for an image folder: --resume OUT/checkpoint.safetensors")
    if resume and not os.path.isfile(resume):
        raise ValueError(f"--resume {resume!r}: no such checkpoint file")
    return arch, size, lr, fe, workers, (resume or None)


def _build_model(arch, num_classes, size, weights):
    from minicnn import transfer
    from minicnn.models import digits_convnet, resnet18

    if arch == "small":
        return digits_convnet(num_classes=num_classes, in_channels=3, image_size=size)
    if weights is None:
        return resnet18(num_classes=num_classes)
    from minicnn.errors import WeightFormatError
    from minicnn.io.checks import foreign_weights, require_weights_file

    require_weights_file(weights)
    why = foreign_weights(weights, None, archs=("resnet18",), wanted="resnet18 weights")
    if why:
        raise WeightFormatError(why)
    model = resnet18(weights=weights)
    if model.fc.out_features != num_classes:
        transfer.replace_head(model, num_classes)
    return model


def _phases(epochs, freeze_epochs):
    """``[(first_epoch, last_epoch, name)]``: the head-only phase (if any), then everything."""
    out = []
    if freeze_epochs:
        out.append((0, freeze_epochs, "head"))
    out.append((freeze_epochs, epochs, "all"))
    return out


def _optimizer(args, model, phase, lr, fine_tune):
    from minicnn import optim, transfer

    if phase == "head":
        transfer.freeze_to(model, -1)
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        transfer.unfreeze(model)
        params = transfer.param_groups(model, lrs=slice(lr / 100, lr)) if fine_tune else model.parameters()
    if args.optimizer == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    return optim.Adam(params, lr=lr)


def run(args) -> int:
    """Train on the image folder ``args.dataset``; write weights, checkpoint, metrics and plot to ``--out``."""
    import numpy as np

    import minicnn as mc
    from minicnn import nn, optim
    from minicnn.callbacks import ModelCheckpoint, load_checkpoint
    from minicnn.data.folder import ImageFolder, Subset, image_transform, split_indices
    from minicnn.metrics import confusion_matrix, format_confusion_matrix
    from minicnn.train import DataLoader, evaluate, fit, format_epoch, predict

    root = args.dataset
    if not os.path.isdir(root):
        raise ValueError(f"dataset {root!r}: not digits, fashion-mnist or a folder of images"
                         f"{' (it is a file)' if os.path.exists(root) else ' (no such directory)'}; an image folder "
                         "holds one subfolder per class")
    arch, size, lr, freeze_epochs, workers, resume = _check(args)
    out = _get(args, "out", os.path.join("runs", os.path.basename(os.path.normpath(root)) or "folder"))
    if os.path.isfile(out):
        raise ValueError(f"--out {out!r}: for an image folder --out is a directory, and this is a file")
    os.makedirs(out, exist_ok=True)

    mc.manual_seed(args.seed)
    # the small convnet sees pixels in [0, 1] like the digits; resnet18 ImageNet-normalised ones
    tf = image_transform(size, mean=None) if arch == "small" else image_transform(size)
    ds = ImageFolder(root, transform=tf)
    k = len(ds.classes)
    if k < 2:
        raise ValueError(f"{root}: found {k} class folder ({', '.join(ds.classes)}); a classifier needs at least two")
    train_idx, val_idx = split_indices(ds.targets, args.val_size, seed=args.seed)
    train_ds, val_ds = Subset(ds, train_idx), Subset(ds, val_idx)
    loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, seed=args.seed, num_workers=workers)
    val_loader = DataLoader(val_ds, batch_size=max(args.batch_size, 64), num_workers=workers)

    weights = _get(args, "weights")
    model = _build_model(arch, k, size, weights)
    loss_fn = nn.CrossEntropyLoss()
    ckpt = None
    if resume:
        ckpt = mc.load(resume)
        extra = ckpt.get("extra", {}) if isinstance(ckpt, dict) else {}
        if not isinstance(ckpt, dict) or "epoch" not in ckpt:
            raise ValueError(f"--resume {resume!r}: not a minicnn checkpoint")
        if list(extra.get("classes", [])) != ds.classes or extra.get("arch") != arch:
            raise ValueError(f"--resume {resume!r}: the checkpoint is for arch {extra.get('arch')!r} with classes "
                             f"{list(extra.get('classes', []))}, this run is {arch!r} with {ds.classes}")
        if ckpt["epoch"] >= args.epochs:
            raise ValueError(f"--resume {resume!r}: the checkpoint already holds {ckpt['epoch']} epochs; "
                             f"ask for more with --epochs")

    print(f"{root}: {len(ds)} images in {k} classes ({', '.join(ds.classes[:8])}{', ...' if k > 8 else ''}); "
          f"{len(train_ds)} train / {len(val_ds)} val; {arch} at {size}x{size} ({model.num_parameters():,} "
          f"parameters){', weights ' + weights if weights else ''}; {args.optimizer} lr {lr:g}, {args.epochs} epochs"
          f"{f' ({freeze_epochs} head only)' if freeze_epochs else ''}, batch {args.batch_size}, "
          f"backend {mc.get_backend()}")
    sys.stdout.flush()

    ckpt_path = os.path.join(out, "checkpoint.safetensors")
    history = None if ckpt is None else ckpt.get("history")
    start = 0 if ckpt is None else int(ckpt["epoch"])
    progress = not getattr(args, "no_progress", False)
    for first, last, phase in _phases(args.epochs, freeze_epochs):
        if last <= start:
            continue
        opt = _optimizer(args, model, phase, lr, fine_tune=weights is not None)
        sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=last - first)
        if ckpt is not None and start >= first:
            # restores the model always; the optimizer and scheduler only inside the phase that wrote them
            inside = start > first
            ckpt = load_checkpoint(resume, model, opt if inside else None, sched if inside else None, loader)
            history = ckpt.get("history")
            ckpt = None
        saver = ModelCheckpoint(ckpt_path, monitor="val_accuracy", save_best_only=False,
                                extra={"arch": arch, "classes": ds.classes, "image_size": size})
        callbacks = [saver]
        if not progress:
            callbacks.append(lambda epoch, logs: print(format_epoch(epoch, args.epochs, logs), flush=True))
        history = fit(model, loss_fn, opt, loader, val=val_loader, epochs=last, initial_epoch=max(first, start),
                      scheduler=sched, scheduler_step="epoch", progress=progress, callbacks=callbacks,
                      history=history)
        start = last

    scores = evaluate(model, loss_fn, val_loader)
    y_val = np.asarray([ds.targets[i] for i in val_idx])
    pred = predict(model, val_loader).argmax(axis=1)
    cm = confusion_matrix(y_val, pred, num_classes=k)
    print(f"validation accuracy: {scores['accuracy']:.4f} ({int(cm.trace())}/{len(y_val)})  "
          f"loss: {scores['loss']:.4f}")
    print("confusion matrix (validation; rows: true class, columns: predicted):")
    print(format_confusion_matrix(cm, labels=ds.classes if k <= 20 else None))
    model_path = os.path.join(out, "model.safetensors")
    mc.save(model, model_path, metadata={"model": "digits_convnet" if arch == "small" else arch, "arch": arch, "classes": json.dumps(ds.classes),
                                         "image_size": str(size), "source": "trained", "dataset": os.path.abspath(root),
                                         "val_accuracy": f"{scores['accuracy']:.4f}"})
    metrics = {"arch": arch, "classes": ds.classes, "image_size": size, "epochs": args.epochs,
               "train_size": len(train_ds), "val_size": len(val_ds), "val_accuracy": scores["accuracy"],
               "val_loss": scores["loss"], "confusion_matrix": cm.tolist(),
               "history": {kk: list(v) for kk, v in dict(history or {}).items()}}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    png = os.path.join(out, "confusion_matrix.png")
    try:
        from minicnn import viz

        viz.confusion_matrix_plot(cm, class_names=ds.classes, title="validation", save=png)
        wrote = f", {png}"
    except ImportError:
        wrote = " (no confusion_matrix.png: matplotlib is not installed)"
    print(f"saved {model_path}, {ckpt_path}, {os.path.join(out, 'metrics.json')}{wrote}")
    return 0
