"""Lesson 17: where the trained Fashion-MNIST net looks - Grad-CAM for every class, and saliency.

Lesson 05 explains ResNet-18 with seeded random weights unless given converted ImageNet ones
(minicnn ships none), so by default its heat maps mean nothing. Here the
same two methods run on ``fashion_convnet``, trained by minicnn (the shipped weights), and on real
test images.

Grad-CAM (Selvaraju et al., 2017) at the ReLU after the second convolution (64 maps of 14x14):
the weight of map k for class c is the mean over the map of d logit_c / d A_k, and the heat map is
``relu(sum_k alpha_k A_k)``. In this net everything after that layer is a max pool, a flatten and
one linear layer, so the gradient is the linear layer's weights routed back through the pool, and
``alpha_k`` is exactly the sum of the class's 49 weights on pooled map k divided by the 196 cells
of the 14x14 map: Grad-CAM here has a closed form (tests/test_fashion_lessons.py checks
``minicnn.gradcam.grad_cam`` against it). Asked for each of the ten classes on one image, it shows
where the evidence *for that class* lies; a class with no positive evidence gets an empty map.

The saliency map (Simonyan et al., 2013) is ``|d logit / d pixel|`` of the predicted class: which
pixels, changed a little, would change the score most.

    python docs/examples/17_fashion_grad_cam.py --out out/17

Writes 17_grad_cam_classes.png (a shirt and a sneaker, Grad-CAM for each of the ten classes),
17_logit_maps.png (the same two images, each logit split exactly over the 7x7 positions it reads),
17_grad_cam.png (the first test image of every class with the map of its predicted class),
17_saliency.png and 17_results.npz. Needs Fashion-MNIST (``apt-get install dataset-fashion-mnist``).
"""
import numpy as np

import _common
import _fashion
from minicnn import gradcam, viz

CAM_LAYER = 4  # the ReLU after conv2: 64 maps of 14x14
POOL_LAYER = 5  # the max pool after it: 64 maps of 7x7, which the linear layer reads


def grad_cam_by_hand(model, x, class_idx):
    """Grad-CAM at CAM_LAYER from its closed form, not normalised: (N, 14, 14).

    After CAM_LAYER come a 2x2 max pool, a flatten and the linear layer, so d logit_c / d A_k is
    the class's weights on pooled map k, each routed to the cell its pool window picked, and its
    mean over the 14x14 map is the sum of those 49 weights / 196."""
    a = np.asarray(gradcam.layer_activation(model, x, CAM_LAYER), np.float64)  # (N, 64, 14, 14)
    w = np.asarray(model[8].weight.data, np.float64).reshape(-1, a.shape[1], a.shape[2] // 2, a.shape[3] // 2)
    alpha = w[class_idx].sum(axis=(1, 2)) / (a.shape[2] * a.shape[3])  # (64,)
    return np.maximum(np.einsum("k,nkhw->nhw", alpha, a), 0.0)


def per_class_figure(x, titles, raw, logits, classes):
    """One row per image: the image, then the Grad-CAM of each class over it, titled with its logit.
    All ten maps of one image share one colour scale (the largest value among them), so a class
    with little evidence shows little colour."""
    n, k = len(x), len(classes)
    fig = viz.new_figure((1.45 * (k + 1), 1.75 * n + 0.5))
    for i in range(n):
        ax = fig.add_subplot(n, k + 1, i * (k + 1) + 1)
        ax.imshow(x[i, 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(titles[i], fontsize=7)
        ax.axis("off")
        top, peak = int(logits[i].argmax()), float(raw[i].max())
        for c in range(k):
            ax = fig.add_subplot(n, k + 1, i * (k + 1) + 2 + c)
            ax.imshow(x[i, 0], cmap="gray", vmin=0, vmax=1, extent=(0, 28, 28, 0))
            ax.imshow(raw[i, c], cmap="jet", vmin=0, vmax=peak, alpha=0.5, interpolation="bilinear",
                      extent=(0, 28, 28, 0))
            mark = " (top)" if c == top else (" (none)" if not raw[i, c].max() > 0 else "")
            ax.set_title(f"{classes[c]}{mark}\nlogit {logits[i, c]:.1f}", fontsize=7,
                         fontweight="bold" if c == top else "normal")
            ax.axis("off")
    fig.suptitle(f"Grad-CAM at layer {CAM_LAYER} (conv2 -> relu) for every class, one colour scale per image "
                 f"({_fashion.WHICH})", fontsize=9)
    return fig


def logit_maps(model, x):
    """Each logit split exactly over the 7x7 positions of the last pooled maps: (N, classes, 7, 7),
    ``m[n, c, h, w] = sum_k W[c, k, h, w] * P[n, k, h, w]``, so that ``m[n, c].sum() + b[c]`` is the logit.
    Unlike Grad-CAM it keeps where each weight points and the negative evidence."""
    p = np.asarray(gradcam.layer_activation(model, x, POOL_LAYER), np.float64)  # (N, 64, 7, 7)
    w = np.asarray(model[8].weight.data, np.float64).reshape(-1, *p.shape[1:])
    return np.einsum("ckhw,nkhw->nchw", w, p)


def logit_maps_figure(x, titles, maps, logits, classes):
    """One row per image: the image, then each class's signed contribution map over it (red for,
    blue against), one symmetric colour scale per image."""
    n, k = len(x), len(classes)
    fig = viz.new_figure((1.45 * (k + 1), 1.75 * n + 0.5))
    for i in range(n):
        ax = fig.add_subplot(n, k + 1, i * (k + 1) + 1)
        ax.imshow(x[i, 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(titles[i], fontsize=7)
        ax.axis("off")
        lim = float(np.abs(maps[i]).max()) or 1.0
        for c in range(k):
            ax = fig.add_subplot(n, k + 1, i * (k + 1) + 2 + c)
            ax.imshow(x[i, 0], cmap="gray", vmin=0, vmax=1, extent=(0, 28, 28, 0))
            ax.imshow(maps[i, c], cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.6, interpolation="nearest",
                      extent=(0, 28, 28, 0))
            ax.set_title(f"{classes[c]}\nlogit {logits[i, c]:.1f}", fontsize=7,
                         fontweight="bold" if c == int(logits[i].argmax()) else "normal")
            ax.axis("off")
    fig.suptitle("each logit split exactly over the 7x7 pooled positions (red for the class, blue against; "
                 f"the cells plus the bias sum to the logit) ({_fashion.WHICH})", fontsize=9)
    return fig


def main():
    """Parse the options, run the lesson, write its figures."""
    args = _common.parser(__doc__.splitlines()[0], "17").parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    X, y, classes = _fashion.test_set()
    model = _fashion.model()

    # a shirt and a sneaker, each explained for all ten classes
    two = [_fashion.first_of(y, _fashion.SHIRT), _fashion.first_of(y, _fashion.SNEAKER)]
    with _common.Timer("Grad-CAM for 10 classes x 2 images"):
        per = np.stack([gradcam.grad_cam(model, X[two], class_idx=c, layer=CAM_LAYER, upsample=False)
                        for c in range(10)], axis=1)  # (2, 10, 14, 14), each map scaled to [0, 1]
        logits2 = np.asarray(model(X[two]))
    raw = np.stack([grad_cam_by_hand(model, X[two], c) for c in range(10)], axis=1)
    peak = raw.max(axis=(2, 3), keepdims=True)
    scaled = np.where(peak > 0, raw / np.where(peak > 0, peak, 1.0), 0.0)
    print(f"  minicnn.gradcam.grad_cam against the closed form: max |difference| {np.abs(per - scaled).max():.1e}")
    for i, row in zip(two, raw):
        strength = row.max(axis=(1, 2)) / row.max()
        print(f"  #{i} {classes[y[i]]}: each class's Grad-CAM peak, relative to the strongest: "
              + ", ".join(f"{classes[c]} {strength[c]:.2f}" for c in np.argsort(-strength)[:4]))
    titles = [f"#{i}: {classes[y[i]]}" for i in two]
    _common.save(per_class_figure(X[two], titles, raw, logits2, classes), out, "17_grad_cam_classes.png")
    split = logit_maps(model, X[two])
    bias = np.asarray(model[8].bias.data, np.float64)
    gap = np.abs(split.sum(axis=(2, 3)) + bias - logits2).max()
    print(f"  logit maps: max |sum of cells + bias - logit| {gap:.1e}")
    _common.save(logit_maps_figure(X[two], titles, split, logits2, classes), out, "17_logit_maps.png")

    # the first test image of every class, its predicted class explained
    idx = _fashion.first_of_each(y)
    x = X[idx]
    cams, logits = gradcam.grad_cam(model, x, class_idx=None, layer=CAM_LAYER, return_logits=True)
    coarse = gradcam.grad_cam(model, x, class_idx=None, layer=CAM_LAYER, upsample=False)
    pred = logits.argmax(axis=1)
    said = [f"#{i} {classes[y[i]]}\nsaid {classes[p]}" for i, p in zip(idx, pred)]
    panels = [xi[0] for xi in x] + [viz.overlay_array(xi[0], c) for xi, c in zip(x, cams)]
    _common.save(viz.image_grid(panels, titles=said + ["Grad-CAM"] * len(idx), ncols=len(idx), cell_inches=1.5,
                                title=f"the first test image of each class and the Grad-CAM of its predicted class "
                                      f"({_fashion.WHICH})"),
                 out, "17_grad_cam.png")

    with _common.Timer("input gradients"):
        g = gradcam.input_gradient(model, x)  # d(top logit)/d(pixels), (10, 1, 28, 28)
    sal = np.abs(g[:, 0])
    shown = [np.clip(s / np.percentile(s, 99), 0, 1) for s in sal]  # the brightest 1% saturate
    grey = [np.repeat(xi[0][..., None], 3, axis=2) for xi in x]  # as RGB, so the "hot" colour map skips them
    _common.save(viz.image_grid(grey + shown, titles=said + ["|d logit / d pixel|"] * len(idx),
                                ncols=len(idx), cmap="hot", cell_inches=1.5,
                                title=f"saliency: input gradients of the predicted class ({_fashion.WHICH})"),
                 out, "17_saliency.png")
    np.savez(out / "17_results.npz", index=np.asarray(idx), images=x, logits=logits, cams=coarse, saliency=g,
             per_class=per, per_class_logits=logits2, logit_maps=split, layer=CAM_LAYER)


if __name__ == "__main__":
    _common.run(main)
