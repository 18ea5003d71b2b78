"""Lesson 01: classic image kernels, run through minicnn's own Conv2d.

Before networks learned their filters, people designed them: Sobel for gradients, the Laplacian
for blobs, box blur, sharpening, oriented edge detectors. A convolution layer is exactly this
machinery with the numbers learned instead of chosen. Here we set the weights of an
``nn.Conv2d`` by hand, run it on a photo, and follow each map through ReLU (only positive
responses survive) and max pooling (keep the strongest response per 2x2 block).

    python docs/examples/01_classic_kernels.py --out out/01

Writes 01_kernels.png (the filters), 01_conv3x3.png and 01_conv4x4.png (photo -> conv -> ReLU ->
max pool for each filter). Derivations: docs/conv.md, docs/relu.md, docs/pooling.md.
"""
import numpy as np

import _common
from minicnn import nn, viz

KERNELS_3X3 = {
    "Sobel x (vertical edges)": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "Sobel y (horizontal edges)": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    "horizontal edge": [[1, 1, 1], [0, 0, 0], [-1, -1, -1]],
    "diagonal edge": [[0, 1, 2], [-1, 0, 1], [-2, -1, 0]],
    "Laplacian": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    "blur (Gaussian)": [[1 / 16, 2 / 16, 1 / 16], [2 / 16, 4 / 16, 2 / 16], [1 / 16, 2 / 16, 1 / 16]],
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
}

# four directional 4x4 filters: dark-to-bright going right, left, down and up
_RIGHT = np.array([[-1, -1, 1, 1]] * 4, dtype=np.float32)
KERNELS_4X4 = {
    "dark->bright, rightwards": _RIGHT,
    "dark->bright, leftwards": -_RIGHT,
    "dark->bright, downwards": _RIGHT.T,
    "dark->bright, upwards": -_RIGHT.T,
}


def conv_layer(kernels, padding):
    """An nn.Conv2d (1 input channel, one output per kernel, no bias) holding the given kernels."""
    k = len(next(iter(kernels.values())))
    layer = nn.Conv2d(1, len(kernels), k, padding=padding, bias=False)
    layer.weight.data = np.stack([np.asarray(v, np.float32) for v in kernels.values()])[:, None]
    return layer


def reference_correlation(img, kernel, padding):
    """The same sum written with numpy's sliding windows, to check the layer against."""
    k = np.asarray(kernel, np.float64)
    xp = np.pad(img.astype(np.float64), padding)
    win = np.lib.stride_tricks.sliding_window_view(xp, k.shape)
    return (win * k).sum(axis=(-2, -1))


def stage_figure(img, kernels, conv_out, relu_out, pool_out, title):
    """One row per kernel: the photo, the convolution, after ReLU, after max pooling."""
    fig = viz.new_figure((11.0, 1.9 * len(kernels) + 0.4))
    cols = [("convolution", conv_out, "RdBu_r"), ("after ReLU", relu_out, "magma"), ("after 2x2 max pool", pool_out, "magma")]
    for i, name in enumerate(kernels):
        ax = fig.add_subplot(len(kernels), 4, 4 * i + 1)
        ax.imshow(img, cmap="gray")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        for j, (what, maps, cmap) in enumerate(cols):
            ax = fig.add_subplot(len(kernels), 4, 4 * i + 2 + j)
            m = maps[0, i]
            # a robust range: zero padding makes fake edges along the border that would
            # otherwise set the colour scale for the whole map
            lim = float(np.percentile(np.abs(m), 99.5)) or 1.0
            if cmap == "RdBu_r":  # signed responses: white is zero
                ax.imshow(m, cmap=cmap, vmin=-lim, vmax=lim)
            else:
                ax.imshow(m, cmap=cmap, vmin=0, vmax=lim)
            ax.set_title(f"{what} {m.shape[0]}x{m.shape[1]}", fontsize=8)
            ax.axis("off")
    fig.suptitle(title)
    return fig


def kernels_figure():
    """All eleven kernels with their numbers written in the cells."""
    allk = {**KERNELS_3X3, **KERNELS_4X4}
    fig = viz.new_figure((2.2 * 6, 2.5 * 2))
    for i, (name, k) in enumerate(allk.items()):
        k = np.asarray(k, np.float64)
        ax = fig.add_subplot(2, 6, i + 1)
        lim = np.abs(k).max()
        ax.imshow(k, cmap="RdBu_r", vmin=-lim, vmax=lim)
        for (r, c), v in np.ndenumerate(k):
            ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=7,
                    color="white" if abs(v) > 0.6 * lim else "black")
        ax.set_title(name, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("hand-made kernels (red positive, blue negative)")
    return fig


def main():
    """Parse the options, run the lesson, write its figures."""
    args = _common.parser(__doc__.splitlines()[0], "01").parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    img = _common.photo("chelsea", grey=True)
    if args.quick:
        img = img[::2, ::2].copy()  # half resolution: 4x fewer pixels
    x = img[None, None]  # (N=1, C=1, H, W): a batch of one grey image
    print(f"photo: chelsea.jpg as a {img.shape[0]}x{img.shape[1]} grey image")
    _common.save(kernels_figure(), out, "01_kernels.png")

    relu, pool = nn.ReLU(), nn.MaxPool2d(2)
    for kernels, padding, name in ((KERNELS_3X3, 1, "01_conv3x3.png"), (KERNELS_4X4, 0, "01_conv4x4.png")):
        conv = conv_layer(kernels, padding)
        y = conv(x)
        r = relu(y)
        p = pool(r)
        # the layer computes exactly the textbook sum (a correlation: the kernel is not flipped)
        diffs = [np.abs(y[0, i] - reference_correlation(img, k, padding)).max() for i, k in enumerate(kernels.values())]
        print(f"{conv}: output {tuple(y.shape)}, max |layer - numpy reference| = {max(diffs):.2e}")
        print(f"  ReLU keeps {100 * (r > 0).mean():.0f}% of the responses; pooling halves each side to {tuple(p.shape[2:])}")
        title = (f"{len(kernels)} hand-set {conv.kernel_size[0]}x{conv.kernel_size[1]} kernels in minicnn.nn.Conv2d "
                 f"(padding {padding}): photo -> conv -> ReLU -> max pool")
        _common.save(stage_figure(img, kernels, y, r, p, title), out, name)


if __name__ == "__main__":
    _common.run(main)
