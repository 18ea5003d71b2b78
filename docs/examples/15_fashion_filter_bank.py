"""Lesson 15: a filter bank on Fashion-MNIST - Gabor and edge filters built in numpy, run by minicnn's conv op.

Before a network learns its first layer, we can design one. A Gabor filter is a cosine wave under
a Gaussian window: it answers most strongly to stripes and edges of one orientation and one
spacing, which is what the first layer of a trained image network tends to learn on its own
(lesson 16 shows the filters of the net minicnn trained) and what the simple cells of the visual
cortex respond to. Four orientations of it, plus the classic edge filters (Sobel x and y, the
Laplacian), make a bank of seven fixed filters, stacked into one weight array (7, 1, 7, 7) and
applied to real Fashion-MNIST test images with ``minicnn.nn.functional.conv2d``, the same op
every ``Conv2d`` layer calls. A convolution layer *is* a filter bank; training only chooses the
numbers.

    python docs/examples/15_fashion_filter_bank.py --out out/15

Writes 15_filter_bank.png (the seven filters), 15_filter_responses.png (four test images, a shirt,
a sneaker, a trouser and an ankle boot, through every filter), 15_orientation_energy.png (for each
class, the mean response energy of each Gabor orientation over its test images) and 15_results.npz.
Needs Fashion-MNIST (``apt-get install dataset-fashion-mnist``).
"""
import numpy as np

import _common
import _fashion
import minicnn.nn.functional as F
from minicnn import viz

SIZE = 7  # filter side: a quarter of the 28-pixel image
ANGLES = (0, 45, 90, 135)  # Gabor orientations, in degrees


def gabor(size=SIZE, theta_deg=0.0, wavelength=4.0, sigma=1.8, gamma=0.6, phase=0.0):
    """A Gabor kernel (size, size), float32, with zero mean.

    ``g(x, y) = exp(-(x'^2 + gamma^2 y'^2) / (2 sigma^2)) * cos(2 pi x' / wavelength + phase)`` with
    ``x' = x cos(theta) + y sin(theta)``, ``y' = -x sin(theta) + y cos(theta)`` and (x, y) measured
    from the centre, x rightwards and y downwards (image rows): the wave runs along x', so the
    stripes it matches lie along y'. The mean is subtracted so that a flat patch answers 0 and
    only structure counts.
    """
    t = np.deg2rad(theta_deg)
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    y, x = np.meshgrid(r, r, indexing="ij")
    xr = x * np.cos(t) + y * np.sin(t)
    yr = -x * np.sin(t) + y * np.cos(t)
    g = np.exp(-(xr ** 2 + (gamma * yr) ** 2) / (2.0 * sigma ** 2)) * np.cos(2.0 * np.pi * xr / wavelength + phase)
    return (g - g.mean()).astype(np.float32)


def _embed(k, size=SIZE):
    """A small kernel centred in a size x size field of zeros (so one weight array holds the whole bank)."""
    k = np.asarray(k, np.float32)
    out = np.zeros((size, size), np.float32)
    o = (size - k.shape[0]) // 2
    out[o:o + k.shape[0], o:o + k.shape[1]] = k
    return out


def filter_bank():
    """The bank as ``(names, weights)``: seven filters, weights (7, 1, SIZE, SIZE) float32."""
    names = [f"Gabor {a} deg" for a in ANGLES] + ["Sobel x", "Sobel y", "Laplacian"]
    kernels = [gabor(theta_deg=a) for a in ANGLES] + [
        _embed([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]),  # horizontal change: vertical edges
        _embed([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]),  # vertical change: horizontal edges
        _embed([[0, 1, 0], [1, -4, 1], [0, 1, 0]]),  # curvature: blobs, thin lines, corners
    ]
    return names, np.stack(kernels)[:, None]


def responses(x, weights):
    """The bank applied to images ``x`` (N, 1, 28, 28): minicnn's conv2d, zero padding keeping the size."""
    return np.asarray(F.conv2d(x, weights, padding=SIZE // 2))


def orientation_energy(x, y, weights, n_gabor=len(ANGLES), batch=1000):
    """Mean squared response of each of the first ``n_gabor`` filters over the images of each class:
    a (10, n_gabor) array, in float64."""
    sums = np.zeros((10, n_gabor))
    for i in range(0, len(x), batch):
        r = responses(x[i:i + batch], weights[:n_gabor]).astype(np.float64)
        e = (r ** 2).mean(axis=(2, 3))  # (n, n_gabor)
        np.add.at(sums, y[i:i + batch], e)
    return sums / np.bincount(y, minlength=10)[:, None]


def bank_figure(names, weights):
    """The filters, red positive and blue negative, white zero."""
    fig = viz.new_figure((2.0 * len(names), 2.6))
    for i, name in enumerate(names):
        k = weights[i, 0]
        lim = float(np.abs(k).max())
        ax = fig.add_subplot(1, len(names), i + 1)
        ax.imshow(k, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"a fixed filter bank: four {SIZE}x{SIZE} Gabor filters and three edge filters (red +, blue -)")
    return fig


def responses_figure(images, titles, names, r):
    """One row per image: the image, then its response to each filter (signed, white is zero)."""
    n, k = len(images), len(names)
    fig = viz.new_figure((1.6 * (k + 1), 1.75 * n + 0.5))
    for i in range(n):
        ax = fig.add_subplot(n, k + 1, i * (k + 1) + 1)
        ax.imshow(images[i, 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(titles[i], fontsize=8)
        ax.axis("off")
        for j in range(k):
            m = r[i, j]
            lim = float(np.abs(m).max()) or 1.0
            ax = fig.add_subplot(n, k + 1, i * (k + 1) + 2 + j)
            ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            if i == 0:
                ax.set_title(names[j], fontsize=8)
            ax.axis("off")
    fig.suptitle("test images through the bank (minicnn conv2d, zero padding 3): red +, blue -, white 0")
    return fig


def main():
    """Parse the options, run the lesson, write its figures."""
    args = _common.parser(__doc__.splitlines()[0], "15").parse_args()
    out = _common.setup(args)
    print(_common.env_backend_note())
    X, y, classes = _fashion.test_set()
    names, w = filter_bank()
    print(f"filter bank {tuple(w.shape)}: {', '.join(names)}")

    picks = [_fashion.first_of(y, c) for c in (_fashion.SHIRT, _fashion.SNEAKER, 1, 9)]
    x = X[picks]
    r = responses(x, w)
    print(f"{len(picks)} test images {tuple(x.shape)} -> responses {tuple(r.shape)}")
    titles = [f"#{i}: {classes[y[i]]}" for i in picks]
    _common.save(bank_figure(names, w), out, "15_filter_bank.png")
    _common.save(responses_figure(x, titles, names, r), out, "15_filter_responses.png")

    # per class: which orientation carries the energy (quick: the first 1,000 test images)
    n = 1000 if args.quick else len(X)
    with _common.Timer(f"Gabor energy over {n:,} test images"):
        energy = orientation_energy(X[:n], y[:n], w)
    share = energy / energy.sum(axis=1, keepdims=True)
    for c in range(10):
        print(f"  {classes[c]:12s} " + "  ".join(f"{a:3d} deg {s:.2f}" for a, s in zip(ANGLES, share[c])))
    _common.save(viz.heatmap(share, row_labels=classes, col_labels=[f"{a} deg" for a in ANGLES], cmap="magma",
                             xlabel="Gabor orientation", figsize=(6.0, 5.5),
                             title=f"share of each class's Gabor energy by orientation ({n:,} test images)"),
                 out, "15_orientation_energy.png")
    np.savez(out / "15_results.npz", images=x, weights=w, responses=r, energy=energy, n=n)


if __name__ == "__main__":
    _common.run(main)
