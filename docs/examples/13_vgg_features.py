"""Lesson 13: VGG16 as a frozen feature extractor, a new head, then fine-tuning its last block (the Keras recipe).

VGG16's ``features`` (13 convolutions in five blocks, each block closed by a 2x2 max pool) turn an
image into a stack of feature maps; its ``classifier`` turns those into ImageNet's 1000 classes.
The transfer recipe of the Keras course keeps the first and replaces the second:

1. **feature extraction**: freeze ``features`` (Keras's ``include_top=False`` with ``trainable =
   False``) and train only a small new head on its output. Since the body never changes, its output
   is computed once per image (in eval mode, so batch norm uses its stored statistics) and the head
   trains on those stored features: seconds instead of a pass through 13 convolutions per step.
2. **fine-tuning**: unfreeze the last conv block (conv5_1..conv5_3) and train it together with the
   head at a learning rate ten times smaller, so the pretrained filters move only a little; the
   earlier blocks, whose edge and texture detectors suit any task, stay frozen, and again their
   output is computed once.

ImageNet weights cannot be downloaded here, so minicnn pretrains the body itself, as lesson 08
does: a VGG16 with batch norm (``vgg16_bn``, at 1/8 of the width; the plain VGG16 at that width,
from scratch, stayed at chance in short CPU runs, its loss at ln 4) learns to tell four shapes
apart (circle, square, triangle, cross), then the recipe transfers it to four other shapes (ring,
diamond, horizontal and vertical bar) from a small training set, against the same network trained
from scratch. The data are generated (``minicnn.data.shapes``). With converted torchvision weights
(``mc.models.vgg16_bn(weights="vgg16_bn.safetensors")``, or ``vgg16`` and its file) the same calls
run at full size on a body pretrained on ImageNet.

    python docs/examples/13_vgg_features.py --out out/13

Writes 13_curves.png (test accuracy per epoch, transfer against from scratch), 13_confusion.png and
13_results.npz (labels, logits, the reported accuracy, and how far the frozen and the fine-tuned
weights moved, which the tests check).
"""
import numpy as np

import _common
import minicnn as mc
from minicnn import nn, optim, viz
from minicnn.data.shapes import SHAPES, make_shapes
from minicnn.metrics import accuracy, confusion_matrix
from minicnn.models.vgg import vgg16_bn
from minicnn.train import DataLoader, fit, predict

SMALL = dict(width=8, hidden=64)  # 1/8 of VGG16's channels, 64-unit hidden layers


def single_label(n, kinds, seed):
    """Images with exactly one shape, and its index in ``kinds``."""
    s = make_shapes(n, 32, kinds=kinds, min_shapes=1, max_shapes=1, seed=seed)
    return s.images, s.labels.argmax(axis=1)


def train(model, params, data, val, epochs, seed):
    """Adam with one-cycle over ``params`` (a list of parameter groups); returns the History."""
    loader = DataLoader(*data, batch_size=32, shuffle=True, seed=seed)
    opt = optim.Adam(params, lr=max(g["lr"] for g in params))
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in params], total_steps=epochs * len(loader))
    return fit(model, nn.CrossEntropyLoss(), opt, loader, val, epochs=epochs, scheduler=sched, progress=False)


def small_head(channels, num_classes):
    """Global average pooling and a small classifier, in place of VGG's 7x7 pooling and 4096-unit layers.

    (VGG's own classifier starts its Linear weights at N(0, 0.01^2), right for 4096 units; at this
    width three such layers would pass back gradients too small to train ``features``.)"""
    return nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(channels, 32), nn.ReLU(),
                         nn.Dropout(0.3), nn.Linear(32, num_classes))


def last_block_start(features):
    """Index in ``features`` of the last block's first conv: one past the fourth max pool."""
    pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    return pools[3] + 1


def conv_weights(modules):
    """Copies of the conv weights among ``modules``."""
    return [np.array(mc.to_numpy(m.weight.data)) for m in modules if isinstance(m, nn.Conv2d)]


def main():
    """Parse the options, run the lesson, write its figures."""
    args = _common.parser(__doc__.splitlines()[0], "13").parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    n_pre, n_new, n_test = (128, 64, 64) if args.quick else (2048, 256, 512)
    pre_epochs, head_epochs, tune_epochs = (2, 2, 1) if args.quick else (10, 10, 6)
    source_kinds, target_kinds = SHAPES[:4], SHAPES[4:]

    # 0. the "pretrained" VGG16: features + a small head, trained on the first four shapes
    mc.manual_seed(args.seed)
    base = vgg16_bn(**SMALL)
    features, channels = base.features, base.num_features  # 13 convs with batch norm; 64 output channels
    pretrained = nn.Sequential(*features, small_head(channels, 4))
    X, y = single_label(n_pre, source_kinds, args.seed)
    Xv, yv = single_label(n_test, source_kinds, args.seed + 1)
    with _common.Timer(f"pretraining VGG16-bn (width 8) on {', '.join(source_kinds)}"):
        train(pretrained, [{"params": list(pretrained.parameters()), "lr": 3e-3}], (X, y), None, pre_epochs, args.seed)
    print(f"  pretrained: test accuracy {accuracy(predict(pretrained, Xv), yv):.3f} on its own task")

    # the new task: four other shapes, from fewer examples
    (Xn, yn), (Xt, yt) = single_label(n_new, target_kinds, args.seed + 2), single_label(n_test, target_kinds, args.seed + 3)
    cut = last_block_start(features)
    body, block = nn.Sequential(*list(features)[:cut]), nn.Sequential(*list(features)[cut:])
    body_before, block_before = conv_weights(body), conv_weights(block)

    # 1. feature extraction: the frozen features' output, once per image, and a new head trained on it
    features.freeze()
    mc.manual_seed(args.seed + 4)
    head = small_head(channels, len(target_kinds))
    with _common.Timer("computing the frozen features once"):
        F, Ft = predict(features, Xn), predict(features, Xt)  # eval mode: batch norm's stored statistics
    print(f"  phase 1: stored features {F.shape[1:]} per image; the head's {sum(p.data.size for p in head.parameters()):,} "
          f"parameters train, the body's {sum(p.data.size for p in features.parameters()):,} do not")
    with _common.Timer(f"phase 1, head only, {head_epochs} epochs"):
        h1 = train(head, [{"params": list(head.parameters()), "lr": 3e-3}], (F, yn), (Ft, yt), head_epochs, args.seed)

    # 2. fine-tuning: the last conv block and the head on the (still frozen) earlier blocks' stored output
    block.unfreeze()
    tune = nn.Sequential(*block, *head)
    with _common.Timer(f"computing features[:{cut}] once"):
        G, Gt = predict(body, Xn), predict(body, Xt)
    groups = [{"params": list(block.parameters()), "lr": 3e-4}, {"params": list(head.parameters()), "lr": 3e-3}]
    print(f"  phase 2: features[{cut}:] ({len(conv_weights(block))} convs) at a tenth of the head's learning rate")
    with _common.Timer(f"phase 2, last block + head, {tune_epochs} epochs"):
        h2 = train(tune, groups, (G, yn), (Gt, yt), tune_epochs, args.seed)
    body_change = max(float(np.abs(a - b).max()) for a, b in zip(conv_weights(body), body_before))
    block_change = max(float(np.abs(a - b).max()) for a, b in zip(conv_weights(block), block_before))
    print(f"  largest weight change: frozen blocks {body_change:.3g}, last block {block_change:.3g}")
    model = nn.Sequential(*features, *head)  # the transferred network, end to end
    logits = predict(model, Xt)
    acc = accuracy(logits, yt)

    # the baseline: the same network from random weights, trained end to end for as many epochs
    mc.manual_seed(args.seed + 4)
    scratch = nn.Sequential(*vgg16_bn(**SMALL).features, small_head(channels, len(target_kinds)))
    with _common.Timer(f"from scratch, {head_epochs + tune_epochs} epochs"):
        hs = train(scratch, [{"params": list(scratch.parameters()), "lr": 3e-3}], (Xn, yn), (Xt, yt),
                   head_epochs + tune_epochs, args.seed)
    print(f"  test accuracy on {', '.join(target_kinds)}: transferred {acc:.3f}, from scratch {hs['val_accuracy'][-1]:.3f}")
    np.savez(out / "13_results.npz", labels=yt, logits=logits, accuracy=acc, frozen_change=body_change,
             block_change=block_change)

    fig = viz.new_figure((7, 4))
    ax = fig.add_subplot(1, 1, 1)
    ep = np.arange(1, head_epochs + tune_epochs + 1)
    ax.plot(ep, list(h1["val_accuracy"]) + list(h2["val_accuracy"]), "o-", label="pretrained VGG16: head, then last block")
    ax.plot(ep, hs["val_accuracy"], "s--", label="from scratch")
    ax.axvline(head_epochs + 0.5, color="grey", lw=0.8)
    ax.text(head_epochs + 0.55, 0.02, " unfreeze the last block", color="grey", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("epoch")
    ax.set_title(f"test accuracy on {', '.join(target_kinds)} ({n_new} training images)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _common.save(fig, out, "13_curves.png")
    cm = confusion_matrix(yt, logits.argmax(axis=1), len(target_kinds))
    _common.save(viz.confusion_matrix_plot(cm, class_names=list(target_kinds),
                                           title="transferred VGG16: test confusion matrix"), out, "13_confusion.png")


if __name__ == "__main__":
    _common.run(main)
