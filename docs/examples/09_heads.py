"""Lesson 09: one body, other heads - multi-label classification and bounded regression.

The loss decides what a network's outputs mean. Softmax + cross-entropy (lessons 07, 08) says
"exactly one class". Two other heads on the same digits convnet body:

* **multi-label**: four yes/no questions about each digit (even? at least 5? prime? has a closed
  loop?), any number of which can be true. One logit per question, a sigmoid on each and binary
  cross-entropy (``nn.BCEWithLogitsLoss``); the gradient per logit is sigmoid(z) - t.
* **regression**: how many degrees was the digit rotated? One output squashed into the valid range
  by a scaled sigmoid, ``lo + (hi - lo) * sigmoid(z)``, and mean squared error. The scaled
  sigmoid is a new layer written here in six lines, forward and manual backward.

    python docs/examples/09_heads.py --out out/09

Writes 09_multilabel.png, 09_multilabel_examples.png, 09_regression.png,
09_regression_examples.png. Derivations: docs/softmax_cross_entropy.md, docs/dense.md.
"""
import numpy as np

import _common
import minicnn as mc
from minicnn import augment, nn, optim, viz
from minicnn.data import load_digits
from minicnn.models.convnet import digits_convnet
from minicnn.train import DataLoader, fit, predict

QUESTIONS = ("even", ">= 5", "prime", "closed loop")


def attributes(labels):
    """The four answers for each digit, as float targets in {0, 1}."""
    d = np.asarray(labels)
    return np.stack([d % 2 == 0, d >= 5, np.isin(d, [2, 3, 5, 7]), np.isin(d, [0, 6, 8, 9])], axis=1).astype(np.float32)


class ScaledSigmoid(nn.Module):
    """``lo + (hi - lo) * sigmoid(x)``: a regression output that cannot leave (lo, hi)."""

    def __init__(self, lo, hi):
        super().__init__()
        self.lo, self.hi = float(lo), float(hi)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return self.lo + (self.hi - self.lo) * self.sigmoid(x)

    def backward(self, dy):
        # d/dx [lo + (hi - lo) s(x)] = (hi - lo) s'(x); the sigmoid layer applies s'(x) itself
        return self.sigmoid.backward(dy * (self.hi - self.lo))


def label_accuracy(out, target):
    """Fraction of the (sample, question) answers right: logit > 0 means yes."""
    return float(((np.asarray(out) > 0) == (np.asarray(target) > 0.5)).mean())


def train(model, loss_fn, data, val, epochs, lr, seed, metrics):
    """Adam with one-cycle over ``epochs``; returns the history."""
    loader = DataLoader(*data, batch_size=32, shuffle=True, seed=seed)
    opt = optim.Adam(model.parameters(), lr=lr)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
    return fit(model, loss_fn, opt, loader, val, epochs=epochs, scheduler=sched, metrics=metrics, progress=False)


def multilabel(args, out, X, y, Xt, yt, epochs):
    """Four yes/no questions per digit: sigmoid + binary cross-entropy."""
    A, At = attributes(y), attributes(yt)
    mc.manual_seed(args.seed)
    model = digits_convnet(num_classes=len(QUESTIONS))
    with _common.Timer("multi-label training"):
        hist = train(model, nn.BCEWithLogitsLoss(), (X, A), (Xt, At), epochs, 5e-3, args.seed,
                     {"label_accuracy": label_accuracy})
    logits = predict(model, Xt)
    said = logits > 0
    per_q = (said == (At > 0.5)).mean(axis=0)
    exact = (said == (At > 0.5)).all(axis=1).mean()
    for q, a in zip(QUESTIONS, per_q):
        print(f"  '{q}': {a:.3f} right")
    print(f"  all four right for {exact:.3f} of the test digits")

    fig = viz.new_figure((11, 3.8))
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(hist["loss"], "--", label="train")
    ax.plot(hist["val_loss"], label="test")
    ax.set_title("binary cross-entropy")
    ax.set_xlabel("epoch")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    ax.bar(list(QUESTIONS) + ["all four"], list(per_q) + [exact], color=["tab:blue"] * 4 + ["tab:orange"])
    ax.set_ylim(0, 1)
    ax.set_title("test accuracy per question")
    for i, v in enumerate(list(per_q) + [exact]):
        ax.text(i, v + 0.02, f"{v:.2f}", ha="center", fontsize=9)
    fig.suptitle("multi-label head: 4 logits, sigmoid + BCE")
    _common.save(fig, out, "09_multilabel.png")
    show = np.arange(12)
    titles = [f"{yt[i]}: " + ",".join(q for q, s in zip(("ev", "5+", "pr", "lp"), said[i]) if s) for i in show]
    _common.save(viz.image_grid(Xt[show], titles=titles, ncols=6, cell_inches=1.5,
                                title="predicted answers (ev = even, 5+ = at least 5, pr = prime, lp = closed loop)"),
                 out, "09_multilabel_examples.png")


def regression(args, out, X, Xt, epochs, max_angle=40.0):
    """Predict each digit's rotation angle through a scaled sigmoid, with MSE."""
    rng = np.random.default_rng(args.seed)
    ang, ang_t = rng.uniform(-max_angle, max_angle, len(X)), rng.uniform(-max_angle, max_angle, len(Xt))
    R = augment.warp(X, augment.affine_matrix(X.shape, angle=ang))  # each digit turned by its own angle
    Rt = augment.warp(Xt, augment.affine_matrix(Xt.shape, angle=ang_t))
    mc.manual_seed(args.seed)
    model = digits_convnet(num_classes=1).append(ScaledSigmoid(-45.0, 45.0))
    targets = (ang[:, None].astype(np.float32), ang_t[:, None].astype(np.float32))
    with _common.Timer("regression training"):
        hist = train(model, nn.MSELoss(), (R, targets[0]), (Rt, targets[1]), epochs, 5e-3, args.seed, None)
    pred = predict(model, Rt)[:, 0]
    err = np.abs(pred - ang_t)
    print(f"  rotation angle: mean absolute error {err.mean():.1f} degrees "
          f"(predicting 0 every time: {np.abs(ang_t).mean():.1f}); outputs stay in [{pred.min():.1f}, {pred.max():.1f}]")

    fig = viz.new_figure((11, 4))
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(np.sqrt(hist["loss"]), "--", label="train")
    ax.plot(np.sqrt(hist["val_loss"]), label="test")
    ax.set_title("root mean squared error (degrees)")
    ax.set_xlabel("epoch")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    ax.scatter(ang_t, pred, s=6, alpha=0.6)
    ax.plot([-45, 45], [-45, 45], "k--", lw=0.8)
    ax.axhline(45, color="grey", lw=0.5)
    ax.axhline(-45, color="grey", lw=0.5)
    ax.set_xlabel("true rotation (degrees)")
    ax.set_ylabel("predicted")
    ax.set_title(f"test digits: mean |error| {err.mean():.1f} deg")
    fig.suptitle("regression head: 1 output, scaled sigmoid into (-45, 45), MSE")
    _common.save(fig, out, "09_regression.png")
    show = np.arange(12)
    _common.save(viz.image_grid(Rt[show], titles=[f"{ang_t[i]:+.0f} -> {pred[i]:+.0f}" for i in show], ncols=6,
                                cell_inches=1.5, title="rotated test digits: true angle -> predicted"),
                 out, "09_regression_examples.png")


def main():
    """Parse the options, run the lesson, write its figures."""
    args = _common.parser(__doc__.splitlines()[0], "09").parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    X, y, Xt, yt = load_digits("both")
    epochs = 2 if args.quick else 20
    multilabel(args, out, X, y, Xt, yt, epochs)
    regression(args, out, X, Xt, epochs)


if __name__ == "__main__":
    _common.run(main)
