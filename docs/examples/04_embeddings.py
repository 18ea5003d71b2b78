"""Lesson 04: images as vectors - ResNet-18 embeddings and how similar the sample photos are.

Global average pooling turns layer4's 512x7x7 block into a 512-vector per image (``model.embed``):
the embedding used for image search and as the input of a new classifier head. The fc layer maps
it to 1000 logits, one per ImageNet class. We compute both for the five sample photos, draw them
as heatmaps (one row per image) and compare the images with correlation matrices (also after
removing the part every embedding shares, the mean over the five): with ImageNet
weights, photos that look alike get correlated embeddings; with seeded random weights the
embeddings still reflect low-level statistics (colour, texture) but not content.

    python docs/examples/04_embeddings.py --out out/04 [--weights resnet18.safetensors]

Writes 04_embeddings.png, 04_logits.png, 04_correlations.png.
"""
import numpy as np

import _common
from minicnn import viz
from minicnn.grad_mode import no_grad
from minicnn.io.labels import imagenet_classes


def main():
    """Parse the options, run the lesson, write its figures."""
    args = _common.parser(__doc__.splitlines()[0], "04", weights=True).parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    model, which = _common.resnet(args)
    size = 96 if args.quick else 224
    names = list(_common.SAMPLES)
    x = _common.photos(size, names)
    with _common.Timer(f"activations of {len(names)} images at {size}x{size}"), no_grad():
        acts = model.activations(x)
    emb, logits = np.asarray(acts["avgpool"]), np.asarray(acts["fc"])
    print(f"embeddings {emb.shape}, logits {logits.shape}")

    classes = imagenet_classes()
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for n, name in enumerate(names):
        top = np.argsort(-logits[n])[:3]
        print(f"  {name:10s} top-3: " + ", ".join(f"{classes[c]} {probs[n, c]:.2f}" for c in top))

    # with 512 or 1000 columns the cells are too small to label; rows are the images
    _common.save(viz.heatmap(emb, row_labels=names, cmap="viridis", annotate=False, xlabel="embedding dimension",
                             figsize=(12, 3.2), title=f"512-d pooled embeddings ({which})"), out, "04_embeddings.png")
    lim = float(np.abs(logits).max())
    _common.save(viz.heatmap(logits, row_labels=names, cmap="RdBu_r", vmin=-lim, vmax=lim, annotate=False,
                             xlabel="ImageNet class index", figsize=(12, 3.2), title=f"1000 logits ({which})"),
                 out, "04_logits.png")

    # every embedding shares a large common part (ReLU outputs are positive, and some channels
    # fire on any photo); subtracting the mean of the set leaves what makes each photo distinct
    panels = (("embeddings", emb), ("embeddings minus their mean", emb - emb.mean(axis=0)), ("logits", logits))
    fig = viz.new_figure((15, 4.8))
    for i, (what, m) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        corr = np.corrcoef(m)
        im = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names)
        for (r, c), v in np.ndenumerate(corr):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_title(f"correlation of {what}", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"how alike the sample photos look to ResNet-18 ({which})")
    _common.save(fig, out, "04_correlations.png")
    for what, m in panels[:2]:
        offdiag = np.corrcoef(m)[~np.eye(len(names), dtype=bool)]
        print(f"correlation of {what} between different photos: {offdiag.min():.2f} .. {offdiag.max():.2f}")


if __name__ == "__main__":
    _common.run(main)
