"""Lesson 11: semantic segmentation with a U-Net - a class for every pixel, mean IoU, overlays.

Segmentation asks for a label per pixel instead of per image. A U-Net (Ronneberger et al., 2015)
gets there in two halves: an encoder (here a ResNet-18 body, tapped after every stage) shrinks the
image to a coarse map of *what* is there, and a decoder climbs back to full resolution, at each
step upsampling (a 2x2 stride-2 transposed convolution) and concatenating the encoder's map of the
same size, which still knows *where* the edges are. A 1x1 convolution then gives one score per
class per pixel, and cross-entropy is taken over the class axis of the (N, C, H, W) scores against
(N, H, W) masks: the same loss as for images, once per pixel (docs/losses.md).

The data are generated (``minicnn.data.shapes.make_shapes``): 32x32 images with up to three
shapes, the mask holding each pixel's shape kind (0 = background). The score is the
**intersection over union** per class, |predicted & true| / |predicted | true| over all held-out
pixels, and its mean over the classes, **mIoU** (``minicnn.metrics.iou_per_class``,
``mean_iou``); pixel accuracy alone would look good for a model that answers "background".

    python docs/examples/11_segmentation_unet.py --out out/11

Writes 11_overlays.png (test images, true and predicted masks drawn over them), 11_metrics.png
(learning curve and per-class IoU) and 11_results.npz (masks, predictions and the reported
numbers, which the tests recompute).
"""
import numpy as np

import _common
import minicnn as mc
from minicnn import nn, optim, viz
from minicnn.data.shapes import make_shapes
from minicnn.metrics import iou_per_class, mean_iou
from minicnn.models.segmentation import UNet
from minicnn.train import DataLoader, fit, predict

COLOURS = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200]]) / 255.0
COLOUR_NAMES = ("red", "green", "yellow", "blue")  # of classes 1..4


def overlay(image, mask, alpha=0.75):
    """An (H, W, 3) picture: ``image`` (3, H, W, centred near 0) in grey, each non-background class of
    ``mask`` painted over it in its colour (grey, so that the shapes' own colours do not mix in)."""
    rgb = np.repeat(np.clip(image.mean(axis=0) + 0.5, 0, 1)[..., None], 3, axis=2)
    tint = COLOURS[mask]
    on = (mask > 0)[..., None]
    return np.where(on, (1 - alpha) * rgb + alpha * tint, rgb)


def main():
    """Parse the options, run the lesson, write its figures."""
    args = _common.parser(__doc__.splitlines()[0], "11").parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    n_train, n_test, epochs = (96, 32, 2) if args.quick else (1024, 256, 15)
    train = make_shapes(n_train, 32, seed=args.seed)
    test = make_shapes(n_test, 32, seed=args.seed + 1000)
    names = ("background",) + train.kinds
    share = np.bincount(train.masks.ravel(), minlength=len(names)) / train.masks.size
    print("share of training pixels per class: " + ", ".join(f"{k} {v:.3f}" for k, v in zip(names, share)))

    mc.manual_seed(args.seed)
    model = UNet("resnet18", num_classes=len(names), width=8)
    print(f"{model.arch}: {sum(p.data.size for p in model.parameters()):,} parameters")
    loader = DataLoader(train.images, train.masks, batch_size=16, shuffle=True, seed=args.seed)
    opt = optim.Adam(model.parameters(), lr=5e-3)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=epochs * len(loader))
    with _common.Timer(f"training, {epochs} epochs"):
        hist = fit(model, nn.CrossEntropyLoss(), opt, loader, (test.images, test.masks), epochs=epochs,
                   scheduler=sched, metrics=None, progress=False)
    scores = predict(model, test.images)  # (N, C, H, W)
    pred = scores.argmax(axis=1)
    iou = iou_per_class(test.masks, pred, len(names))
    miou = mean_iou(test.masks, pred, len(names))
    pixel_acc = float((pred == test.masks).mean())
    for k, v in zip(names, iou):
        print(f"  {k:10s} IoU {v:.3f}")
    print(f"  mIoU {miou:.3f}; pixel accuracy {pixel_acc:.3f} (all background would score "
          f"{(test.masks == 0).mean():.3f} accuracy, mIoU {mean_iou(test.masks, np.zeros_like(pred), len(names)):.3f})")
    np.savez(out / "11_results.npz", masks=test.masks, pred=pred, iou=iou, miou=miou)

    fig = viz.new_figure((11, 3.8))
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(np.arange(1, epochs + 1), hist["loss"], "o--", label="train")
    ax.plot(np.arange(1, epochs + 1), hist["val_loss"], "s-", label="test")
    ax.set_xlabel("epoch")
    ax.set_title("per-pixel cross-entropy")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    ax.bar(np.arange(len(names)), np.nan_to_num(iou), color=COLOURS[:len(names)].clip(0.3, 1.0), edgecolor="k")
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"test IoU per class (mIoU {miou:.3f})")
    fig.suptitle("U-Net on a ResNet-18 encoder (width 8), generated shapes")
    _common.save(fig, out, "11_metrics.png")

    show = np.arange(6)
    cells, titles = [], []
    for i in show:
        cells += [np.clip(test.images[i].transpose(1, 2, 0) + 0.5, 0, 1), overlay(test.images[i], test.masks[i]),
                  overlay(test.images[i], pred[i])]
        one = np.nanmean(iou_per_class(test.masks[i], pred[i], len(names)))
        titles += ["image", "true mask", f"predicted (mIoU {one:.2f})"]
    _common.save(viz.image_grid(cells, titles=titles, ncols=6, cell_inches=1.8,
                                title="held-out images; " + ", ".join(f"{c} {k}" for c, k in zip(COLOUR_NAMES, names[1:]))),
                 out, "11_overlays.png")


if __name__ == "__main__":
    _common.run(main)
