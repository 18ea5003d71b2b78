"""Lesson 07: the digits convnet with and without augmentation and dropout.

A small convnet trained on few examples memorises them: training accuracy reaches 100% while test
accuracy stalls. Two cheap remedies: *data augmentation* (every epoch sees slightly rotated,
shifted, zoomed and sheared versions of the digits, ``minicnn.augment``) and *dropout* (each
training step silences a random quarter of the hidden units, so no unit can rely on another). We
train the same architecture three ways on the same small training set and compare: plain, with
augmentation, with augmentation and dropout. Watch the gap between training and test curves:
the plain model drives its training loss to zero and its test loss stops improving early.

    python docs/examples/07_digits_regularisation.py --out out/07

Writes 07_augmentations.png, 07_learning_curves.png, 07_confusion.png, 07_misclassified.png.
"""
import numpy as np

import _common
import minicnn as mc
from minicnn import augment, nn, optim, viz
from minicnn.data import load_digits
from minicnn.metrics import confusion_matrix
from minicnn.models.convnet import digits_convnet
from minicnn.train import DataLoader, evaluate, fit, predict


def train(X, y, val, epochs, dropout, transform, seed, lr=5e-3):
    """A fresh digits convnet trained with Adam and one-cycle; returns (model, history)."""
    mc.manual_seed(seed)
    model = digits_convnet(dropout=dropout)
    loader = DataLoader(X, y, batch_size=32, shuffle=True, seed=seed, transform=transform)
    opt = optim.Adam(model.parameters(), lr=lr)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
    hist = fit(model, nn.CrossEntropyLoss(), opt, loader, val, epochs=epochs, scheduler=sched, progress=False)
    return model, hist


def main():
    """Parse the options, run the lesson, write its figures."""
    p = _common.parser(__doc__.splitlines()[0], "07")
    p.add_argument("--train-size", type=int, default=150,
                   help="training images used (default: %(default)s; few, so that overfitting shows)")
    args = p.parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    X, y, Xt, yt = load_digits("both")
    rng = np.random.default_rng(args.seed)
    idx = rng.permutation(len(X))[: args.train_size]
    X, y = X[idx], y[idx]
    epochs = 4 if args.quick else 60
    print(f"{len(X)} training and {len(Xt)} test digits of 8x8; {epochs} epochs each")

    aug = augment.Compose([augment.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=8)])
    demo = np.repeat(X[:6], 5, axis=0)
    shown = aug(demo, rng=np.random.default_rng(args.seed))
    shown[::5] = X[:6]  # first column: the original
    _common.save(viz.image_grid(shown, titles=["original", "", "augmented", "", ""] * 6, ncols=5, cell_inches=1.2,
                                title="RandomAffine: rotation +-10 deg, shift +-10%, zoom 0.9-1.1, shear +-8 deg"),
                 out, "07_augmentations.png")

    runs = {}
    for name, dropout, transform in (("plain", 0.0, None), ("augmentation", 0.0, aug),
                                     ("augmentation + dropout", 0.25, aug)):
        with _common.Timer(f"training '{name}'"):
            runs[name] = train(X, y, (Xt, yt), epochs, dropout, transform, args.seed)
        last = runs[name][1].last()
        print(f"  {name}: train accuracy {last['accuracy']:.3f} (loss {last['loss']:.3f}), "
              f"test accuracy {last['val_accuracy']:.3f} (loss {last['val_loss']:.3f})")

    fig = viz.new_figure((11, 4))
    for i, key in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(1, 2, i + 1)
        for (name, (_, hist)), colour in zip(runs.items(), ("tab:red", "tab:green", "tab:blue")):
            ep = np.arange(1, len(hist[key]) + 1)
            ax.plot(ep, hist[key], "--", color=colour, label=f"{name}, train")
            ax.plot(ep, hist[f"val_{key}"], "-", color=colour, label=f"{name}, test")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"digits convnet on {len(X)} training images: the gap between train and test is overfitting")
    _common.save(fig, out, "07_learning_curves.png")

    best = min(runs, key=lambda k: runs[k][1].last()["val_loss"])
    model = runs[best][0]
    pred = predict(model, Xt).argmax(axis=1)
    cm = confusion_matrix(yt, pred, 10)
    print(f"test accuracy {np.trace(cm) / cm.sum():.3f} "
          f"(evaluate: {evaluate(model, nn.CrossEntropyLoss(), (Xt, yt))['accuracy']:.3f})")
    _common.save(viz.confusion_matrix_plot(cm, class_names=list(range(10)),
                                           title=f"{best} (lowest test loss): test confusion matrix"),
                 out, "07_confusion.png")
    wrong = np.flatnonzero(pred != yt)[:24]
    if len(wrong):
        _common.save(viz.image_grid(Xt[wrong], titles=[f"true {yt[i]}, said {pred[i]}" for i in wrong], ncols=8,
                                    cell_inches=1.3, title=f"{best}: {int((pred != yt).sum())} misclassified test digits"
                                                           + (f" (first {len(wrong)})" if (pred != yt).sum() > len(wrong) else "")),
                     out, "07_misclassified.png")
    else:
        print("no test digit misclassified: nothing to show in 07_misclassified.png")


if __name__ == "__main__":
    _common.run(main)
