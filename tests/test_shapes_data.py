"""The generated lesson data (minicnn.data.shapes): determinism, labels that agree with the masks,
shape geometry, and blob centres where the blobs are."""
from __future__ import annotations

import numpy as np
import pytest

from minicnn.data.shapes import SHAPES, make_blobs, make_shapes, shape_mask


def test_make_shapes_is_deterministic_and_consistent():
    a, b = make_shapes(40, 32, seed=3), make_shapes(40, 32, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, make_shapes(40, 32, seed=4).images)
    assert a.images.shape == (40, 3, 32, 32) and a.images.dtype == np.float32
    assert a.labels.shape == (40, 4) and a.masks.shape == (40, 32, 32) and a.masks.dtype == np.int64
    assert a.kinds == SHAPES[:4] and -1.0 < a.images.min() and a.images.max() < 1.0
    for i in range(40):
        present = set(np.unique(a.masks[i])) - {0}
        # a label is on exactly when its kind has pixels in the mask
        assert present == {k + 1 for k in np.flatnonzero(a.labels[i])}
        assert 1 <= len(present) and a.labels[i].sum() <= 3
        # shapes are drawn bright on a dark background: every shape pixel outshines the background's mean
        bright = a.images[i].max(axis=0)
        assert bright[a.masks[i] > 0].min() > bright[a.masks[i] == 0].mean()
    one = make_shapes(30, 32, kinds=SHAPES[4:], min_shapes=1, max_shapes=1, seed=0)
    assert np.all(one.labels.sum(axis=1) == 1) and one.masks.max() <= 4
    with pytest.raises(ValueError, match="kinds must be names"):
        make_shapes(2, kinds=("hexagon",))
    with pytest.raises(ValueError, match="min_shapes"):
        make_shapes(2, min_shapes=3, max_shapes=2)


@pytest.mark.parametrize("kind,area", [("circle", np.pi * 10 ** 2), ("square", (2 * 8 + 1) ** 2),
                                       ("diamond", 2 * 10 ** 2 + 2 * 10 + 1)])  # lattice points of |y| + |x| <= 10
def test_shape_geometry(kind, area):
    m = shape_mask(kind, 64, 31.0, 30.0, 10.0)
    assert abs(m.sum() / area - 1) < 0.1
    ys, xs = np.nonzero(m)
    assert abs(ys.mean() - 31.0) < 0.5 and abs(xs.mean() - 30.0) < 0.5  # centred where asked
    with pytest.raises(ValueError, match="unknown kind 'star'"):
        shape_mask("star", 32, 10, 10, 4)


def test_blob_points_are_the_blob_centres():
    b = make_blobs(50, 32, seed=1)
    assert b.images.shape == (50, 3, 32, 32) and b.points.shape == (50, 2) and b.points.dtype == np.float32
    assert b.points.min() >= 0.1 * 32 - 1e-6 and b.points.max() <= 0.9 * 32 - 1
    np.testing.assert_array_equal(b.points, make_blobs(50, 32, seed=1).points)
    for img, (x, y) in zip(b.images, b.points):
        grey = img.mean(axis=0)
        centre = grey[int(round(y)), int(round(x))]
        assert centre >= np.percentile(grey, 95)  # the brightest part of the image is where the point says
