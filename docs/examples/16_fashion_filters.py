"""Lesson 16: inside a trained net - the Fashion-MNIST convnet's first-layer filters and a shirt's and a sneaker's maps.

Lesson 02 draws ResNet-18's filters, but with seeded random weights unless given converted
ImageNet ones (minicnn ships none), so by default it shows noise. This lesson looks inside a network whose weights mean
something: ``fashion_convnet``, trained by minicnn itself on the 60,000 Fashion-MNIST training
images (its weights ship with minicnn; docs/results.md has the command and the test accuracy).

Its first layer holds 32 filters of 5x5 over one grey channel. Drawn signed (red positive, blue
negative, white zero) they are rougher than ImageNet filters (5x5 pixels, 28x28 images, 20 epochs),
but many are side-by-side positive and negative bars at one orientation: edge and bar detectors
like the Gabor and Sobel filters of lesson 15, found by training without being told. Then the maps,
on two real test images, the first shirt and the first sneaker of the test set: the 32 conv1 maps
after ReLU (28x28: edges of each orientation, light and dark regions) and the 64 conv2 maps after ReLU (14x14, after the first max pool), whose units
combine the edge maps into larger parts; and the conv2 maps that separate the two images most.

    python docs/examples/16_fashion_filters.py --out out/16

Writes 16_conv1_filters.png, 16_conv1_maps.png, 16_conv2_maps.png, 16_top_maps.png. Needs
Fashion-MNIST (``apt-get install dataset-fashion-mnist``).
"""
import numpy as np

import _common
import _fashion
from minicnn import gradcam, viz

CONV1_RELU, CONV2_RELU = 1, 4  # child indices of the Sequential: the ReLUs after each convolution


def signed_mosaic(w, ncols=8, pad=1):
    """Conv filters (K, 1, R, S) as one mosaic, each scaled by its own largest |value| into [-1, 1]
    (so zero stays zero and the sign stays visible); NaN between tiles."""
    k = np.asarray(w, np.float64)[:, 0]
    k = k / np.abs(k).reshape(len(k), -1).max(axis=1)[:, None, None]
    return viz.tile_array(k, ncols=ncols, pad=pad, normalize=None)


def filters_figure(w):
    """The first-layer filters, signed, 4 rows of 8."""
    fig = viz.new_figure((8.0, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(signed_mosaic(w), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"conv1: {w.shape[0]} filters {w.shape[2]}x{w.shape[3]}, each scaled to its largest |weight| "
                 f"(red +, blue -)\n({_fashion.WHICH})", fontsize=9)
    return fig


def maps_figure(images, titles, maps, what, ncols):
    """One row per image: the image, then all its maps as one mosaic (each map scaled on its own)."""
    fig = viz.new_figure((11.0, 3.4 * len(images)))
    for i, (img, t, m) in enumerate(zip(images, titles, maps)):
        ax = fig.add_subplot(len(images), 4, 4 * i + 1)
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(t, fontsize=9)
        ax.axis("off")
        ax = fig.add_subplot(len(images), 4, (4 * i + 2, 4 * i + 4))
        ax.imshow(viz.tile_array(m, ncols=ncols), cmap="magma", interpolation="nearest")
        ax.set_title(f"{what}: {m.shape[0]} maps of {m.shape[1]}x{m.shape[2]} (each scaled on its own)", fontsize=9)
        ax.axis("off")
    fig.suptitle(_fashion.WHICH, fontsize=9)
    return fig


def separating_maps(a, b, k=4):
    """Channels of two activations (C, h, w) with the largest difference of mean activation:
    (k channels where a exceeds b most, k where b exceeds a most)."""
    d = np.asarray(a, np.float64).mean(axis=(1, 2)) - np.asarray(b, np.float64).mean(axis=(1, 2))
    order = np.argsort(-d)
    return order[:k], order[::-1][:k]


def main():
    """Parse the options, run the lesson, write its figures."""
    args = _common.parser(__doc__.splitlines()[0], "16").parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    X, y, classes = _fashion.test_set()
    model = _fashion.model()
    w = np.asarray(model[0].weight.data)
    print(f"conv1.weight {tuple(w.shape)}; 2-conv net with {model.num_parameters():,} parameters")
    _common.save(filters_figure(w), out, "16_conv1_filters.png")

    picks = [_fashion.first_of(y, _fashion.SHIRT), _fashion.first_of(y, _fashion.SNEAKER)]
    x = X[picks]
    a1 = gradcam.layer_activation(model, x, CONV1_RELU)
    a2 = gradcam.layer_activation(model, x, CONV2_RELU)
    logits = np.asarray(model(x))
    titles = [f"test image #{i}: {classes[y[i]]}\n(the net says {classes[int(p)]})"
              for i, p in zip(picks, logits.argmax(1))]
    for i, t in zip(picks, titles):
        print("  " + t.replace("\n", " "))
    for name, a in (("conv1 -> relu", a1), ("conv2 -> relu", a2)):
        live = (a.reshape(len(x), a.shape[1], -1).max(axis=2) > 0).sum(axis=1)
        print(f"{name} {tuple(a.shape)}: {100 * (a > 0).mean():.0f}% of values positive; "
              f"maps not all zero: {live.tolist()} of {a.shape[1]} (shirt, sneaker)")
    _common.save(maps_figure(x, titles, a1, "conv1 -> relu", 8), out, "16_conv1_maps.png")
    _common.save(maps_figure(x, titles, a2, "conv2 -> relu (after the first max pool)", 16), out, "16_conv2_maps.png")

    shirt_more, sneaker_more = separating_maps(a2[0], a2[1])
    chans = list(shirt_more) + list(sneaker_more)
    panels = [a2[0, c] for c in chans] + [a2[1, c] for c in chans]
    lim = max(float(p.max()) for p in panels) or 1.0
    names = [f"shirt, map {c}" for c in chans] + [f"sneaker, map {c}" for c in chans]
    fig = viz.new_figure((2.0 * len(chans), 4.6))
    for i, (p, t) in enumerate(zip(panels, names)):
        ax = fig.add_subplot(2, len(chans), i + 1)
        ax.imshow(p, cmap="magma", vmin=0, vmax=lim, interpolation="nearest")  # one shared scale: sizes compare
        ax.set_title(t, fontsize=8)
        ax.axis("off")
    fig.suptitle("conv2 maps that tell the two apart: left 4 stronger for the shirt, right 4 for the sneaker "
                 "(one colour scale)", fontsize=9)
    _common.save(fig, out, "16_top_maps.png")


if __name__ == "__main__":
    _common.run(main)
