"""Visualisation: the arrays behind the pictures exactly (tile layout, per-filter scaling, image
conversion, overlay blending), every figure written as a non-blank PNG, and the clear message when
matplotlib is missing."""
import sys

import numpy as np
import pytest

from minicnn import viz

pytest.importorskip("matplotlib")


def _png_std(path):
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float64)
    return a.std()


# -- array helpers ------------------------------------------------------------------------------

def test_tile_array_layout_512_maps_as_16_by_32():
    k, h, w = 512, 7, 7
    maps = np.arange(k, dtype=np.float64)[:, None, None] * np.ones((k, h, w))
    mosaic = viz.tile_array(maps, ncols=32, pad=1, normalize=None)
    assert mosaic.shape == (16 * h + 15, 32 * w + 31)
    for i in (0, 31, 32, 200, 511):
        r, c = divmod(i, 32)
        tile = mosaic[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w]
        assert np.all(tile == i)
    assert np.isnan(mosaic[h, :]).all() and np.isnan(mosaic[:, w]).all()  # the gaps
    assert viz.tile_array(maps, normalize=None).shape == mosaic.shape  # 32 columns is the default for 512


def test_tile_array_normalisation_modes():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((5, 3, 4)) * np.arange(1, 6)[:, None, None]
    each = viz.tile_array(maps, ncols=5, pad=0, normalize="each")
    for i in range(5):
        t = each[:, 4 * i:4 * i + 4]
        assert t.min() == 0.0 and t.max() == 1.0
    glob = viz.tile_array(maps, ncols=5, pad=0, normalize="all")
    assert glob.min() == 0.0 and glob.max() == 1.0
    np.testing.assert_allclose(glob[:, :4], (maps[0] - maps.min()) / (maps.max() - maps.min()))
    const = viz.tile_array(np.ones((2, 2, 2)), ncols=2, pad=0)
    assert np.all(const == 0.0)
    with pytest.raises(ValueError, match=r"expected maps of shape \(K, h, w\)"):
        viz.tile_array(np.ones((4, 4)))


def test_filter_images_rgb_per_filter():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 3, 7, 7))
    w[5] = 0.3  # a constant filter
    img = viz.filter_images(w)
    assert img.shape == (64, 7, 7, 3)
    for k in (0, 17, 63):
        assert img[k].min() == 0.0 and img[k].max() == 1.0
        lo, hi = w[k].min(), w[k].max()
        np.testing.assert_allclose(img[k, 2, 3], (w[k, :, 2, 3] - lo) / (hi - lo))  # channel order kept
    assert np.all(img[5] == 0.5)
    grey = viz.filter_images(rng.standard_normal((4, 16, 3, 3)))
    assert grey.shape == (4, 3, 3)


def test_to_image_layouts():
    chw = np.random.default_rng(2).random((3, 4, 5))
    np.testing.assert_array_equal(viz.to_image(chw), chw.transpose(1, 2, 0))
    assert viz.to_image(chw[None]).shape == (4, 5, 3)
    u8 = np.full((4, 5, 3), 255, np.uint8)
    assert np.all(viz.to_image(u8) == 1.0)
    normed = np.array([[-2.0, 0.0], [1.0, 2.0]])
    np.testing.assert_allclose(viz.to_image(normed), [[0.0, 0.5], [0.75, 1.0]])
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 4, 5\)"):
        viz.to_image(np.zeros((2, 3, 4, 5)))


def test_overlay_array_blends():
    from matplotlib import colormaps

    img = np.random.default_rng(3).random((6, 8, 3))
    cam = np.zeros((6, 8))
    cam[2, 3] = 2.0
    np.testing.assert_allclose(viz.overlay_array(img, cam, alpha=0.0), img)
    full = viz.overlay_array(img, cam, alpha=1.0, cmap="jet")
    np.testing.assert_allclose(full[2, 3], colormaps["jet"](1.0)[:3])
    np.testing.assert_allclose(full[0, 0], colormaps["jet"](0.0)[:3])
    small = viz.overlay_array(img, np.ones((3, 4)), alpha=0.5)  # resized to the image
    assert small.shape == (6, 8, 3)


# -- figures ---------------------------------------------------------------------------------------

def test_every_figure_writes_a_non_blank_png(tmp_path):
    from matplotlib.figure import Figure

    rng = np.random.default_rng(4)
    figs = {
        "tiles": lambda p: viz.tile_maps(rng.random((512, 7, 7)), ncols=32, title="layer4", save=p),
        "filters": lambda p: viz.filter_grid(rng.standard_normal((64, 3, 7, 7)), save=p),
        "heatmap": lambda p: viz.heatmap(rng.random((5, 512)), row_labels=list("abcde"), save=p),
        "corr": lambda p: viz.heatmap(np.corrcoef(rng.random((5, 20))), list("abcde"), list("abcde"), save=p),
        "overlay": lambda p: viz.overlay(rng.random((3, 32, 40)), rng.random((7, 7)), title="cam", save=p),
        "curves": lambda p: viz.learning_curves({"loss": [2.0, 1.0, 0.5], "val_loss": [2.1, 1.4, 1.0],
                                                  "accuracy": [0.3, 0.6, 0.8]}, save=p),
        "confusion": lambda p: viz.confusion_matrix_plot(y_true=[0, 1, 2, 2, 1], y_pred=[0, 2, 2, 2, 1], save=p),
        "grid": lambda p: viz.image_grid(rng.random((6, 1, 8, 8)), titles=list("abcdef"), save=p),
    }
    for name, make in figs.items():
        path = tmp_path / "sub" / f"{name}.png"
        fig = make(path)
        assert isinstance(fig, Figure), name
        assert path.exists(), name
        assert _png_std(path) > 10.0, name


def test_tile_maps_shared_scale_keeps_the_units():
    maps = np.random.default_rng(5).random((8, 3, 3)) * 7.0 - 1.0
    fig = viz.tile_maps(maps, ncols=4, normalize="all")
    image = fig.axes[0].images[0]
    assert image.get_clim() == (maps.min(), maps.max())
    assert len(fig.axes) == 2  # the map and its colour bar
    fig = viz.tile_maps(maps, ncols=4)  # each map on its own scale: no shared colour bar
    assert len(fig.axes) == 1 and fig.axes[0].images[0].get_clim() == (0.0, 1.0)


def test_learning_curves_takes_fit_history_and_lists_of_dicts(tmp_path):
    from minicnn.train import History

    h = History()
    for e in range(3):
        h.append({"loss": 1.0 / (e + 1), "accuracy": 0.5 + 0.1 * e, "val_loss": 1.2 / (e + 1), "lr": 0.1})
    fig = viz.learning_curves(h)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "lr"]
    fig = viz.learning_curves([{"loss": 1.0}, {"loss": 0.5}], save=tmp_path / "c.png")
    assert len(fig.axes) == 1
    with pytest.raises(ValueError, match="no numeric series"):
        viz.learning_curves({"name": ["a", "b"]})


def test_confusion_matrix_plot_checks_its_input():
    fig = viz.confusion_matrix_plot(np.array([[3, 1], [0, 4]]), class_names=["cat", "dog"], normalize=True)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0.00", "0.25", "0.75", "1.00"]
    with pytest.raises(ValueError, match=r"expected a square matrix, got shape \(2, 3\)"):
        viz.confusion_matrix_plot(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="3 class names for a 2x2 matrix"):
        viz.confusion_matrix_plot(np.eye(2), class_names=list("abc"))


def test_heatmap_label_mismatch_names_both_counts():
    with pytest.raises(ValueError, match=r"4 row labels for a matrix with 5 rows \(shape \(5, 2\)\)"):
        viz.heatmap(np.zeros((5, 2)), row_labels=list("abcd"))


def test_missing_matplotlib_gives_the_install_hint(monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes ``import matplotlib`` fail
    with pytest.raises(ImportError, match=r"pip install minicnn\[viz\]"):
        viz.heatmap(np.eye(2))
    # the numpy helpers keep working without it
    assert viz.tile_array(np.ones((2, 2, 2)), pad=0).shape == (2, 4)
