"""Lesson 08: transfer learning the fastai way, with a backbone minicnn pretrains itself.

Pretrained networks are trained on one task and reused for another: the early layers (edges,
strokes, textures) are useful everywhere, only the head is task-specific. The recipe
(``minicnn.transfer.fine_tune``, after fastai's ``fine_tune``):

1. keep the pretrained body, put a new randomly initialised head on it;
2. freeze the body and train only the head, one epoch of one-cycle;
3. unfreeze everything and train on, with *discriminative* learning rates (small for the early
   layers, larger for the head) and one-cycle again.

Here minicnn first pretrains the digits convnet on the digits 0-4, then transfers its
convolutional body to a new task, the digits 5-9, and compares with training from scratch. With
``--weights resnet18.safetensors`` the same ``fine_tune`` call also fine-tunes ResNet-18 (new
5-way ``fc`` head) to tell the five sample photos apart from augmented crops.

    python docs/examples/08_transfer_learning.py --out out/08 [--weights resnet18.safetensors]

Writes 08_transfer_curves.png, 08_lr_schedule.png, 08_confusion.png (and 08_resnet_fine_tune.png
with --weights).
"""
import numpy as np

import _common
import minicnn as mc
from minicnn import augment, nn, optim, transfer, viz
from minicnn.data import load_digits
from minicnn.metrics import confusion_matrix
from minicnn.models.convnet import digits_convnet
from minicnn.train import DataLoader, evaluate, fit, predict


def one_cycle_fit(model, data, val, epochs, lr, seed):
    """Plain training with Adam and one-cycle: the baseline, and the pretraining."""
    loader = DataLoader(*data, batch_size=32, shuffle=True, seed=seed)
    opt = optim.Adam(model.parameters(), lr=lr)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
    return fit(model, nn.CrossEntropyLoss(), opt, loader, val, epochs=epochs, scheduler=sched, progress=False)


def trainable_table(model):
    """One line per parameter: name, shape, trainable or frozen."""
    rows = [f"    {name:10s} {tuple(p.shape)!s:16s} {'trainable' if p.requires_grad else 'frozen'}"
            for name, p in model.named_parameters()]
    return "\n".join(rows)


def digits_transfer(args, out):
    """Pretrain on digits 0-4, fine-tune on 5-9, compare with training from scratch."""
    X, y, Xt, yt = load_digits("both")
    src, src_t = y < 5, yt < 5
    pre_epochs, epochs_head, epochs_all = (2, 1, 1) if args.quick else (10, 1, 5)

    # 1. the "pretrained" backbone: a convnet trained on digits 0-4
    mc.manual_seed(args.seed)
    pretrained = digits_convnet(num_classes=5)
    with _common.Timer("pretraining on digits 0-4"):
        one_cycle_fit(pretrained, (X[src], y[src]), None, pre_epochs, 5e-3, args.seed)
    acc = evaluate(pretrained, nn.CrossEntropyLoss(), (Xt[src_t], yt[src_t]))["accuracy"]
    print(f"  pretrained model: test accuracy {acc:.3f} on digits 0-4")

    # 2. new task, digits 5-9 (labels 0-4): the pretrained conv body under a fresh dense head
    train, val = (X[~src], y[~src] - 5), (Xt[~src_t], yt[~src_t] - 5)
    mc.manual_seed(args.seed + 1)
    model = digits_convnet(num_classes=5)
    body = {k: v for k, v in pretrained.state_dict().items() if k.split(".")[0] in ("0", "3")}
    model.load_state_dict(body, strict=False)
    splits = ["7"]  # layer groups: [conv body] [dense head]
    print("  layer groups: " + " | ".join(g["name"] for g in transfer.param_groups(model, splits)))
    transfer.freeze_to(model, 1, splits)
    print("  during the head phase:\n" + trainable_table(model))

    with _common.Timer("fine_tune on digits 5-9"):
        res = transfer.fine_tune(model, nn.CrossEntropyLoss(), train, val, splits=splits, epochs_head=epochs_head,
                                 epochs_all=epochs_all, base_lr=3e-2, lr_mult=3, seed=args.seed)
    mc.manual_seed(args.seed + 1)
    scratch = digits_convnet(num_classes=5)
    with _common.Timer("training from scratch on digits 5-9"):
        base = one_cycle_fit(scratch, train, val, epochs_head + epochs_all, 5e-3, args.seed)
    ft_acc, sc_acc = res.history["val_accuracy"], base["val_accuracy"]
    print(f"  test accuracy after epoch 1: fine-tuned {ft_acc[0]:.3f}, from scratch {sc_acc[0]:.3f}")
    print(f"  test accuracy at the end:   fine-tuned {ft_acc[-1]:.3f}, from scratch {sc_acc[-1]:.3f}")

    fig = viz.new_figure((11, 4))
    for i, key in enumerate(("val_accuracy", "val_loss")):
        ax = fig.add_subplot(1, 2, i + 1)
        ep = np.arange(1, len(ft_acc) + 1)
        ax.plot(ep, res.history[key], "o-", label="pretrained body + new head (fine_tune)")
        ax.plot(ep, base[key], "s--", label="from scratch")
        ax.axvline(epochs_head + 0.5, color="grey", lw=0.8)
        ax.text(epochs_head + 0.55, ax.get_ylim()[0], " unfreeze", color="grey", va="bottom", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("val_", "test "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("digits 5-9 with a conv body pretrained on digits 0-4")
    _common.save(fig, out, "08_transfer_curves.png")

    fig = viz.new_figure((10, 3.8))
    for i, (phase, lrs) in enumerate((("head phase (body frozen)", res.lrs_head), ("all layers", res.lrs_all))):
        ax = fig.add_subplot(1, 2, i + 1)
        lrs = np.asarray(lrs)
        for g, name in enumerate(["conv body", "dense head"]):
            ax.semilogy(lrs[:, g], label=name + (" (frozen)" if i == 0 and g == 0 else ""))
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{phase}: one-cycle per group")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("discriminative learning rates: slice(base_lr / lr_mult, base_lr) over the layer groups")
    _common.save(fig, out, "08_lr_schedule.png")

    cm = confusion_matrix(val[1], predict(model, val[0]).argmax(axis=1), 5)
    _common.save(viz.confusion_matrix_plot(cm, class_names=[str(d) for d in range(5, 10)],
                                           title="fine-tuned on digits 5-9: test confusion matrix"),
                 out, "08_confusion.png")


def resnet_transfer(args, out):
    """The same fine_tune on ResNet-18: tell the five sample photos apart from augmented crops."""
    from minicnn.models.resnet import resnet18

    model = resnet18(weights=args.weights)
    # small crops and few of them: training all of ResNet-18 on a CPU costs about a second a batch
    size = 48 if args.quick else 64
    per_train, per_val = (4, 2) if args.quick else (10, 4)
    names = list(_common.SAMPLES)
    base = np.stack([_common.photo(n, 2 * size) for n in names])
    aug = augment.Compose([augment.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.8, 1.2)),
                           augment.RandomHorizontalFlip()])
    rng = np.random.default_rng(args.seed)

    def crops(k):
        xs = aug(np.repeat(base, k, axis=0), rng=rng)
        return augment.resize(xs, size).astype(np.float32), np.repeat(np.arange(len(names)), k)

    train, val = crops(per_train), crops(per_val)
    head = transfer.replace_head(model, len(names))
    print(f"  ResNet-18 with a new head {head}; layer groups: "
          + " | ".join(g["name"] for g in transfer.param_groups(model)))
    with _common.Timer(f"fine_tune ResNet-18 on {len(train[0])} crops of {size}x{size}"):
        res = transfer.fine_tune(model, nn.CrossEntropyLoss(), train, val, epochs_head=1, epochs_all=1 if args.quick else 2,
                                 base_lr=2e-3, batch_size=10, seed=args.seed)
    print(f"  test accuracy per epoch: {np.round(res.history['val_accuracy'], 3).tolist()}")
    fig = viz.learning_curves(res, title=f"ResNet-18 fine-tuned to name the 5 sample photos "
                                         f"(weights: {args.weights.rsplit('/', 1)[-1]})")
    _common.save(fig, out, "08_resnet_fine_tune.png")


def main():
    """Parse the options, run the lesson, write its figures."""
    args = _common.parser(__doc__.splitlines()[0], "08", weights=True).parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    digits_transfer(args, out)
    if args.weights:
        resnet_transfer(args, out)
    else:
        print("(pass --weights resnet18.safetensors to fine-tune ResNet-18 with the same code)")


if __name__ == "__main__":
    _common.run(main)
