"""Generated image sets for the lessons: coloured shapes on noisy backgrounds, with labels, masks and points.

Nothing is downloaded: every set is drawn with numpy from a seed, the same on every machine.

    from minicnn.data.shapes import make_shapes, make_blobs
    s = make_shapes(256, size=32, seed=0)    # s.images (N, 3, 32, 32), s.labels (N, K), s.masks (N, 32, 32)
    b = make_blobs(256, size=32, seed=0)     # b.images (N, 3, 32, 32), b.points (N, 2) as (x, y) pixels

``make_shapes`` places one to ``max_shapes`` shapes per image, without overlap, each of a kind from
``kinds`` (``SHAPES`` has eight) in a random bright colour (the colour says nothing about the kind) on a
dark random background with Gaussian noise. ``labels[i, k]`` is 1 when kind ``k`` is in image ``i``
(multi-label classification), ``masks[i]`` holds ``k + 1`` on the pixels of kind ``k`` and 0 on the
background (segmentation). Images are float32, centred near 0 (about [-0.5, 0.5]).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["SHAPES", "Shapes", "Blobs", "shape_mask", "make_shapes", "make_blobs"]

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "hbar", "vbar")


class Shapes(NamedTuple):
    """What ``make_shapes`` returns: images (N, 3, H, W) float32, labels (N, K) float32 0/1, masks
    (N, H, W) int64 (0 background, k + 1 for ``kinds[k]``), and the kind names."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    kinds: tuple


class Blobs(NamedTuple):
    """What ``make_blobs`` returns: images (N, 3, H, W) float32 and points (N, 2) float32, the (x, y)
    pixel coordinates of each blob's centre (x along the width, pixel centres at integers)."""

    images: np.ndarray
    points: np.ndarray


def shape_mask(kind, size, cy, cx, r):
    """A boolean (size, size) mask of one shape centred at pixel (cy, cx) with half-size ``r``."""
    if kind not in SHAPES:
        raise ValueError(f"shape_mask: unknown kind {kind!r}; kinds are {', '.join(SHAPES)}")
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = y - cy, x - cx
    if kind == "circle":
        return dy ** 2 + dx ** 2 <= r ** 2
    if kind == "square":
        return (np.abs(dy) <= 0.8 * r) & (np.abs(dx) <= 0.8 * r)
    if kind == "triangle":  # apex up: the half-width grows linearly from the top edge to the base
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    if kind == "cross":
        arm = max(r / 3, 1.0)
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    if kind == "ring":
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    if kind == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if kind == "hbar":
        return (np.abs(dy) <= max(r / 3, 1.0)) & (np.abs(dx) <= r)
    return (np.abs(dx) <= max(r / 3, 1.0)) & (np.abs(dy) <= r)  # vbar


def _background(rng, n, size):
    base = rng.uniform(0.0, 0.35, (n, 3, 1, 1))
    return base + rng.normal(0.0, 0.06, (n, 3, size, size))


def make_shapes(n, size=32, kinds=SHAPES[:4], min_shapes=1, max_shapes=3, seed=0):
    """``n`` images of ``size`` x ``size`` with ``min_shapes`` to ``max_shapes`` non-overlapping shapes each.

    Each shape's kind is drawn from ``kinds`` (names from ``SHAPES``), its half-size from
    [size / 8, size / 5], its position so that it lies inside the image and apart from the others.
    Returns a :class:`Shapes`. Deterministic in ``seed``.
    """
    kinds = tuple(kinds)
    if not kinds or any(k not in SHAPES for k in kinds):
        raise ValueError(f"make_shapes: kinds must be names from {SHAPES}, got {kinds!r}")
    if not 1 <= min_shapes <= max_shapes or size < 16 or n < 1:
        raise ValueError(f"make_shapes: need n >= 1, size >= 16 and 1 <= min_shapes <= max_shapes, got "
                         f"n={n}, size={size}, min_shapes={min_shapes}, max_shapes={max_shapes}")
    rng = np.random.default_rng(seed)
    images = _background(rng, n, size)
    masks = np.zeros((n, size, size), np.int64)
    labels = np.zeros((n, len(kinds)), np.float32)
    for i in range(n):
        placed = []  # (cy, cx, r) of the shapes already in this image
        for _ in range(int(rng.integers(min_shapes, max_shapes + 1))):
            for _attempt in range(50):  # rejection sampling for a free spot; a crowded image keeps fewer
                r = rng.uniform(size / 8, size / 5)
                cy, cx = rng.uniform(r + 1, size - r - 2, 2)
                if all((cy - py) ** 2 + (cx - px) ** 2 > (r + pr + 1.5) ** 2 for py, px, pr in placed):
                    break
            else:
                continue
            k = int(rng.integers(len(kinds)))
            m = shape_mask(kinds[k], size, cy, cx, r)
            colour = rng.uniform(0.55, 1.0, 3) * (rng.permutation(3) > 0)  # bright, in one or two channels
            colour[colour.argmax()] = max(colour.max(), 0.8)
            images[i][:, m] = colour[:, None] + rng.normal(0.0, 0.04, (3, int(m.sum())))
            masks[i][m] = k + 1
            labels[i, k] = 1.0
            placed.append((cy, cx, r))
    return Shapes((images - 0.5).astype(np.float32), labels, masks, kinds)


def make_blobs(n, size=32, seed=0):
    """``n`` images each with one soft bright blob (a Gaussian, sigma in [size / 16, size / 8]) whose
    centre lies in the middle 80% of the image, plus a dimmer distractor square elsewhere, on a noisy
    background. Returns a :class:`Blobs` (points as (x, y) pixels). Deterministic in ``seed``."""
    if size < 16 or n < 1:
        raise ValueError(f"make_blobs: need n >= 1 and size >= 16, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    images = _background(rng, n, size)
    points = rng.uniform(0.1 * size, 0.9 * size - 1, (n, 2))
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    for i in range(n):
        px, py = points[i]
        sigma = rng.uniform(size / 16, size / 8)
        g = np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sigma ** 2))
        # the distractor: a small square at least 4 sigma from the blob, half as bright
        for _attempt in range(50):
            qy, qx = rng.uniform(2, size - 3, 2)
            if (qy - py) ** 2 + (qx - px) ** 2 > (4 * sigma) ** 2:
                images[i][:, shape_mask("square", size, qy, qx, size / 16)] += 0.35
                break
        images[i] += g[None] * rng.uniform(0.7, 1.0, (3, 1, 1))
    return Blobs((images - 0.5).astype(np.float32), points.astype(np.float32))
