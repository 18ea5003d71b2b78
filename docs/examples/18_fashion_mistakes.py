"""Lesson 18: what the trained Fashion-MNIST net gets wrong - the confusion matrix and its most confident mistakes.

One number, the test accuracy, hides where a classifier fails. The confusion matrix counts, for
every true class (a row), which class the net said (a column): the diagonal holds the right
answers, everything off it a kind of mistake. Sorting the mistakes by the probability the net
gave its wrong answer (softmax of the logits) finds the test images it was surest about and still
got wrong: some are hard (a shirt that really looks like a T-shirt), some show labels that are
themselves debatable. Both come from ``fashion_convnet``, trained by minicnn (the shipped weights;
docs/results.md states their test accuracy), run over the test images once.

    python docs/examples/18_fashion_mistakes.py --out out/18

Writes 18_confusion.png, 18_confident_mistakes.png (the 24 most confident mistakes),
18_confidence.png (how sure the net is when right and when wrong) and 18_results.npz. ``--quick``
uses the first 500 test images instead of all 10,000. Needs Fashion-MNIST
(``apt-get install dataset-fashion-mnist``).
"""
import numpy as np

import _common
import _fashion
from minicnn import viz
from minicnn.metrics import confusion_matrix
from minicnn.train import predict

SHOWN = 24  # mistakes in the figure


def softmax(logits):
    """Class probabilities from logits (N, C), in float64, stable for large logits."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def confident_mistakes(logits, y):
    """The wrongly classified images, most confident first: (indices, predicted class, probability
    of the predicted class)."""
    p = softmax(logits)
    pred = p.argmax(axis=1)
    wrong = np.flatnonzero(pred != np.asarray(y))
    conf = p[wrong, pred[wrong]]
    order = np.argsort(-conf, kind="stable")
    return wrong[order], pred[wrong][order], conf[order]


def confidence_figure(conf, right):
    """Histograms of the top-class probability for right and for wrong answers."""
    fig = viz.new_figure((7.0, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    bins = np.linspace(0.1, 1.0, 37)
    ax.hist(conf[right], bins=bins, alpha=0.7, label=f"right ({int(right.sum()):,})", color="tab:blue")
    ax.hist(conf[~right], bins=bins, alpha=0.8, label=f"wrong ({int((~right).sum()):,})", color="tab:red")
    ax.set_yscale("log")
    ax.set_xlabel("probability the net gave its answer (softmax of the top logit)")
    ax.set_ylabel("test images (log scale)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(f"how sure the net is, right and wrong ({_fashion.WHICH})", fontsize=9)
    return fig


def main():
    """Parse the options, run the lesson, write its figures."""
    args = _common.parser(__doc__.splitlines()[0], "18").parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    X, y, classes = _fashion.test_set()
    if args.quick:
        X, y = X[:500], y[:500]
    model = _fashion.model()
    with _common.Timer(f"predicting {len(X):,} test images"):
        logits = predict(model, X)
    pred = logits.argmax(axis=1)
    cm = confusion_matrix(y, pred, 10)
    right = int(np.trace(cm))
    print(f"{right:,}/{len(y):,} right, accuracy {right / len(y):.4f}")
    for c in range(10):
        row = cm[c].copy()
        row[c] = -1
        print(f"  {classes[c]:12s} {cm[c, c]:5d}/{cm[c].sum():d} right; most often called {classes[int(row.argmax())]} "
              f"({row.max()})")
    which = "all 10,000 test images" if len(y) == 10000 else f"the first {len(y):,} test images"
    _common.save(viz.confusion_matrix_plot(cm, class_names=classes,
                                           title=f"test confusion matrix: {right:,}/{len(y):,} right ({which})"),
                 out, "18_confusion.png")

    idx, said, conf = confident_mistakes(logits, y)
    print(f"{len(idx)} mistakes; {int((conf > 0.99).sum())} of them with more than 99% confidence")
    for i, s, p in list(zip(idx, said, conf))[:8]:
        print(f"  #{i}: true {classes[y[i]]}, said {classes[s]} with probability {p:.4f}")
    top = idx[:SHOWN]
    _common.save(viz.image_grid(X[top], titles=[f"#{i} {classes[y[i]]}\nsaid {classes[s]} {p:.3f}"
                                                for i, s, p in zip(top, said, conf)], ncols=8, cell_inches=1.6,
                                title=f"the {len(top)} most confident mistakes ({which}): true class, the net's "
                                      f"answer, its probability"),
                 out, "18_confident_mistakes.png")

    top_p = softmax(logits).max(axis=1)
    ok = pred == y
    print(f"mean top-class probability: {top_p[ok].mean():.3f} when right, {top_p[~ok].mean():.3f} when wrong")
    _common.save(confidence_figure(top_p, ok), out, "18_confidence.png")
    np.savez(out / "18_results.npz", labels=y, logits=logits, confusion=cm, mistakes=idx, mistake_conf=conf)


if __name__ == "__main__":
    _common.run(main)
