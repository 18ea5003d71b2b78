"""Lesson 12: keypoint regression - a ResNet-18 with a two-output head predicts where a point is.

Classification heads choose among classes; a regression head outputs numbers. Here the numbers
are the (x, y) coordinates of one point in the image, as in the head-pose example this project
grew from (where the point is the centre of a face). The network is ResNet-18's (at 1/8 width so
that it trains on a CPU) with ``fc`` giving 2 outputs, trained on coordinates scaled to [-1, 1]
(``2 * p / (size - 1) - 1``): targets of order one suit the default initialisation and learning rates.

The loss is smooth L1 (``nn.SmoothL1Loss``, Huber's loss with delta 1): quadratic near the target,
linear far from it, so the few wild guesses early in training do not dominate the gradient
(docs/losses.md). The score is the **mean pixel error**, the average Euclidean distance between
the predicted and the true point, against the baseline of always answering the training set's
mean point.

The data are generated (``minicnn.data.shapes.make_blobs``): 32x32 images with one soft bright
blob, whose centre is the target, and a dimmer square as a distractor.

    python docs/examples/12_keypoints.py --out out/12

Writes 12_points.png (test images with true and predicted points), 12_errors.png (learning curve,
predicted against true coordinates, error histogram) and 12_results.npz (true and predicted points
and the reported error, which the tests recompute).
"""
import numpy as np

import _common
import minicnn as mc
from minicnn import nn, optim, viz
from minicnn.data.shapes import make_blobs
from minicnn.models.resnet import ResNet
from minicnn.train import DataLoader, fit, predict

SIZE = 32


def to_unit(points):
    """Pixel coordinates (0 .. SIZE - 1) to [-1, 1]."""
    return (2.0 * points / (SIZE - 1) - 1.0).astype(np.float32)


def to_pixels(u):
    """[-1, 1] back to pixel coordinates."""
    return (np.asarray(u, np.float64) + 1.0) * (SIZE - 1) / 2.0


def main():
    """Parse the options, run the lesson, write its figures."""
    args = _common.parser(__doc__.splitlines()[0], "12").parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    n_train, n_test, epochs = (192, 64, 2) if args.quick else (2048, 512, 15)
    train = make_blobs(n_train, SIZE, seed=args.seed)
    test = make_blobs(n_test, SIZE, seed=args.seed + 1000)

    mc.manual_seed(args.seed)
    model = ResNet((2, 2, 2, 2), num_classes=2, width=8)  # ResNet-18 at 1/8 width, fc: 64 -> 2
    print(f"{model.arch}: {sum(p.data.size for p in model.parameters()):,} parameters, head {model.fc}")
    loader = DataLoader(train.images, to_unit(train.points), batch_size=32, shuffle=True, seed=args.seed)
    opt = optim.Adam(model.parameters(), lr=3e-3)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * len(loader))
    with _common.Timer(f"training, {epochs} epochs"):
        hist = fit(model, nn.SmoothL1Loss(), opt, loader, (test.images, to_unit(test.points)), epochs=epochs,
                   scheduler=sched, metrics=None, progress=False)
    pred = to_pixels(predict(model, test.images))
    err = np.linalg.norm(pred - test.points, axis=1)
    base = np.linalg.norm(train.points.mean(axis=0) - test.points, axis=1)
    print(f"  mean pixel error {err.mean():.2f} px (median {np.median(err):.2f}); always answering the "
          f"training mean point: {base.mean():.2f} px")
    np.savez(out / "12_results.npz", points=test.points, pred=pred, mean_error=err.mean())

    fig = viz.new_figure((14, 3.8))
    ax = fig.add_subplot(1, 3, 1)
    ax.plot(np.arange(1, epochs + 1), hist["loss"], "o--", label="train")
    ax.plot(np.arange(1, epochs + 1), hist["val_loss"], "s-", label="test")
    ax.set_xlabel("epoch")
    ax.set_title("smooth L1 on coordinates in [-1, 1]")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 3, 2)
    for d, (name, mark) in enumerate((("x", "o"), ("y", "s"))):
        ax.scatter(test.points[:, d], pred[:, d], s=8, marker=mark, alpha=0.6, label=name)
    ax.plot([0, SIZE - 1], [0, SIZE - 1], "k--", lw=0.8)
    ax.set_xlabel("true (px)")
    ax.set_ylabel("predicted (px)")
    ax.set_title("test coordinates")
    ax.legend()
    ax = fig.add_subplot(1, 3, 3)
    ax.hist(err, bins=20, alpha=0.8, label=f"model: mean {err.mean():.2f} px")
    ax.hist(base, bins=20, alpha=0.5, label=f"mean point: mean {base.mean():.2f} px")
    ax.set_xlabel("distance to the true point (px)")
    ax.set_title("test errors")
    ax.legend(fontsize=8)
    fig.suptitle("keypoint regression: ResNet-18 body (width 8), 2 outputs")
    _common.save(fig, out, "12_errors.png")

    show = np.arange(12)
    fig = viz.new_figure((12, 4.6))
    for j, i in enumerate(show):
        ax = fig.add_subplot(2, 6, j + 1)
        ax.imshow(np.clip(test.images[i].transpose(1, 2, 0) + 0.5, 0, 1))
        ax.plot(*test.points[i], "o", mfc="none", mec="lime", ms=10, mew=2)
        ax.plot(*pred[i], "x", color="red", ms=9, mew=2)
        ax.set_title(f"error {err[i]:.1f} px", fontsize=9)
        ax.axis("off")
    fig.suptitle("test images: true centre (green circle), predicted (red cross)")
    _common.save(fig, out, "12_points.png")


if __name__ == "__main__":
    _common.run(main)
