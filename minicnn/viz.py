"""Pictures of what a network computes: feature-map tiles, filter grids, heatmaps, Grad-CAM
overlays, learning curves, confusion matrices, image grids.

matplotlib is the optional ``viz`` extra (``pip install minicnn[viz]``) and is imported only when a
plotting function runs. Figures are drawn on the non-interactive Agg canvas and never enter
pyplot's global figure list, so they work on headless machines and need no closing. Every
plotting function returns the ``matplotlib.figure.Figure`` and, given ``save="path.png"``, also
writes it as a PNG (creating the folder).

The array helpers ``tile_array``, ``filter_images`` and ``to_image`` are plain numpy, and
``overlay_array`` adds only a matplotlib colormap: they are what the pictures are made of, and
what the tests check.
"""
from __future__ import annotations

import math
import os

import numpy as np

__all__ = [
    "tile_array", "tile_maps", "filter_images", "filter_grid", "heatmap", "to_image", "overlay_array",
    "overlay", "learning_curves", "confusion_matrix_plot", "image_grid", "save_figure",
    "new_figure",
]


# -- matplotlib, lazily ------------------------------------------------------------------------

def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "minicnn.viz needs matplotlib, which is not installed: pip install minicnn[viz]"
        ) from e
    return Figure, FigureCanvasAgg


def new_figure(figsize=(6.0, 4.0), dpi=100, layout="constrained"):
    """A Figure on an Agg canvas (no pyplot state, no display needed). The constrained layout
    keeps titles, colour bars and a figure title from overlapping."""
    Figure, Canvas = _matplotlib()
    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    Canvas(fig)
    return fig


def save_figure(fig, path, dpi=None):
    """Write ``fig`` to ``path`` (PNG unless the suffix says otherwise), creating the folder."""
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _finish(fig, save, title=None):
    if title:
        fig.suptitle(title)
    if save is not None:
        save_figure(fig, save)
    return fig


def _np(a):
    from .backends import to_numpy

    return np.asarray(to_numpy(a))


# -- array helpers ------------------------------------------------------------------------------

def _default_ncols(k):
    """A pleasant column count: the smallest divisor of k at or above sqrt(k), if not too wide."""
    root = math.sqrt(k)
    for c in range(max(1, math.ceil(root)), k + 1):
        if k % c == 0:
            if c <= 2 * root + 1:
                return c
            break
    return max(1, math.ceil(root))


def _normalise(maps, normalize):
    maps = maps.astype(np.float64)
    if normalize in (None, False, "none"):
        return maps
    if normalize in ("each", True):
        axes = tuple(range(1, maps.ndim))
        lo = maps.min(axis=axes, keepdims=True)
        hi = maps.max(axis=axes, keepdims=True)
    elif normalize == "all":
        lo, hi = maps.min(), maps.max()
    else:
        raise ValueError(f"normalize must be 'each', 'all' or None, got {normalize!r}")
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(hi > lo, (maps - lo) / span, 0.0)


def tile_array(maps, ncols=None, pad=1, normalize="each", pad_value=np.nan):
    """Lay K maps ``(K, h, w)`` (or RGB tiles ``(K, h, w, 3)``) out as one mosaic array.

    Tile k sits at row ``k // ncols``, column ``k % ncols``, with ``pad`` pixels of
    ``pad_value`` between tiles (NaN draws as background). ``normalize``: ``"each"`` scales every
    map to [0, 1] on its own (shapes become comparable), ``"all"`` uses one global range
    (magnitudes become comparable), ``None`` keeps the values. A (1, K, h, w) batch of one is
    accepted too. Returns ``(rows*h + (rows-1)*pad, ncols*w + (ncols-1)*pad[, 3])``.
    """
    maps = _np(maps)
    if maps.ndim == 4 and maps.shape[0] == 1 and maps.shape[-1] != 3:
        maps = maps[0]
    rgb = maps.ndim == 4 and maps.shape[-1] == 3
    if maps.ndim != 3 and not rgb:
        raise ValueError(f"tile_array: expected maps of shape (K, h, w) or (K, h, w, 3), got {maps.shape}")
    k, h, w = maps.shape[:3]
    if k == 0:
        raise ValueError("tile_array: no maps to tile")
    ncols = _default_ncols(k) if ncols is None else int(ncols)
    if ncols < 1:
        raise ValueError(f"tile_array: ncols must be positive, got {ncols}")
    rows = math.ceil(k / ncols)
    maps = _normalise(maps, normalize)
    shape = (rows * h + (rows - 1) * pad, ncols * w + (ncols - 1) * pad) + ((3,) if rgb else ())
    out = np.full(shape, pad_value, dtype=np.float64)
    for i in range(k):
        r, c = divmod(i, ncols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = maps[i]
    return out


def filter_images(weights):
    """Conv weights ``(K, C, R, S)`` as K pictures, each scaled to [0, 1] on its own.

    Three input channels give RGB tiles ``(K, R, S, 3)``; any other count gives grey tiles
    ``(K, R, S)`` of the mean over input channels. A filter with a single value becomes 0.5."""
    w = _np(weights).astype(np.float64)
    if w.ndim != 4:
        raise ValueError(f"filter_images: expected conv weights of shape (K, C, R, S), got {w.shape}")
    img = w.transpose(0, 2, 3, 1) if w.shape[1] == 3 else w.mean(axis=1)
    axes = tuple(range(1, img.ndim))
    lo = img.min(axis=axes, keepdims=True)
    hi = img.max(axis=axes, keepdims=True)
    return np.where(hi > lo, (img - lo) / np.where(hi > lo, hi - lo, 1.0), 0.5)


def to_image(image):
    """An image as ``(H, W, 3)`` or ``(H, W)`` floats in [0, 1], ready for ``imshow``.

    Accepts HWC, CHW (1 or 3 channels first), HW, and a batch of one. uint8 is divided by 255;
    floats already in [0, 1] are kept; any other float range (say ImageNet-normalised input) is
    min-max scaled for display."""
    a = _np(image)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ValueError(f"to_image: expected an image (H, W), (H, W, 3) or (3, H, W), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    a = a.astype(np.float64)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if lo >= 0.0 and hi <= 1.0:
        return a
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _resize2d(m, shape):
    from .augment import resize

    return resize(m.astype(np.float64), shape) if m.shape != tuple(shape) else m


def overlay_array(image, cam, alpha=0.5, cmap="jet"):
    """Blend a heat map over an image: ``(1 - alpha) * image + alpha * colormap(cam)``.

    ``cam`` (h, w) is resized (bilinear) to the image and scaled to [0, 1] first. Returns
    ``(H, W, 3)`` floats in [0, 1]."""
    img = to_image(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    cam = _np(cam).astype(np.float64)
    while cam.ndim > 2 and cam.shape[0] == 1:
        cam = cam[0]
    if cam.ndim != 2:
        raise ValueError(f"overlay: cam must be a 2-D map, got shape {cam.shape}")
    cam = _normalise(_resize2d(cam, img.shape[:2])[None], "each")[0]
    _matplotlib()
    from matplotlib import colormaps

    colour = colormaps[cmap](cam)[..., :3]
    return np.clip((1.0 - alpha) * img + alpha * colour, 0.0, 1.0)


# -- figures ----------------------------------------------------------------------------------

def tile_maps(maps, ncols=None, pad=1, normalize="each", cmap="viridis", title=None, colorbar=None,
              tile_inches=0.5, save=None):
    """Show K feature maps as one tiled heatmap (for example 512 maps of ResNet's layer4 as
    16 rows x 32 columns with ``ncols=32``). See ``tile_array`` for the layout and scaling;
    a colour bar is drawn when one range is shared (``normalize="all"`` or ``None``)."""
    maps = _np(maps)
    # one shared range is the same picture as raw values with fixed colour limits, and then the
    # colour bar can show the maps' own units
    shared = normalize == "all"
    mosaic = tile_array(maps, ncols, pad, None if shared else normalize)
    k = maps.shape[-3]
    ncols = _default_ncols(k) if ncols is None else int(ncols)
    rows = math.ceil(k / ncols)
    width = min(24.0, max(4.0, ncols * tile_inches))
    height = max(2.5, width * mosaic.shape[0] / mosaic.shape[1])
    fig = new_figure((width + 1.0, height + 0.6))
    ax = fig.add_subplot(1, 1, 1)
    lim = dict(vmin=float(np.nanmin(mosaic)), vmax=float(np.nanmax(mosaic))) if shared else {}
    im = ax.imshow(mosaic, cmap=cmap, interpolation="nearest", **lim)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{k} maps, {rows} x {ncols} tiles")
    if colorbar if colorbar is not None else normalize in (None, "all", False, "none"):
        fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01)
    return _finish(fig, save, title)


def filter_grid(weights, ncols=None, pad=1, title=None, tile_inches=0.6, save=None):
    """Show conv filters ``(K, C, R, S)`` as a grid, each normalised on its own (RGB when C == 3,
    e.g. the 64 7x7 filters of ResNet-18's conv1 as an 8 x 8 grid)."""
    tiles = filter_images(weights)
    mosaic = tile_array(tiles, ncols, pad, normalize=None, pad_value=1.0)
    k = tiles.shape[0]
    ncols = _default_ncols(k) if ncols is None else int(ncols)
    width = min(20.0, max(3.0, ncols * tile_inches))
    fig = new_figure((width, max(2.0, width * mosaic.shape[0] / mosaic.shape[1]) + 0.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(mosaic, cmap=None if mosaic.ndim == 3 else "gray", interpolation="nearest", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    return _finish(fig, save, title)


def heatmap(matrix, row_labels=None, col_labels=None, title=None, cmap="viridis", vmin=None, vmax=None,
            annotate=None, fmt=".2f", colorbar=True, xlabel=None, ylabel=None, figsize=None, save=None):
    """Draw a 2-D array as coloured cells with optional row/column labels.

    ``annotate`` writes each value in its cell (default: when the matrix has at most 15x15 cells).
    Wide matrices (say 5 images x 512 embedding dimensions) stretch to fill the figure."""
    m = _np(matrix).astype(np.float64)
    if m.ndim == 1:
        m = m[None]
    if m.ndim != 2:
        raise ValueError(f"heatmap: expected a 2-D matrix, got shape {m.shape}")
    rows, cols = m.shape
    for labels, n, what in ((row_labels, rows, "row"), (col_labels, cols, "column")):
        if labels is not None and len(labels) != n:
            raise ValueError(f"heatmap: {len(labels)} {what} labels for a matrix with {n} {what}s (shape {m.shape})")
    if figsize is None:
        figsize = (min(14.0, max(4.0, 0.45 * cols + 2.0)), min(10.0, max(2.5, 0.45 * rows + 1.5)))
    fig = new_figure(figsize)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    if row_labels is not None:
        ax.set_yticks(range(rows))
        ax.set_yticklabels([str(s) for s in row_labels])
    if col_labels is not None:
        ax.set_xticks(range(cols))
        ax.set_xticklabels([str(s) for s in col_labels], rotation=45, ha="right")
    if annotate is None:
        annotate = rows <= 15 and cols <= 15
    if annotate:
        mid = np.nanmean([np.nanmin(m), np.nanmax(m)])
        for i in range(rows):
            for j in range(cols):
                ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] < mid else "black")
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    if title:
        ax.set_title(title)
    return _finish(fig, save)


def overlay(image, cam, alpha=0.5, cmap="jet", title=None, show_parts=True, save=None):
    """Grad-CAM style picture: the image, the heat map, and the heat map blended over the image
    (only the blend when ``show_parts=False``)."""
    img = to_image(image)
    blend = overlay_array(img, cam, alpha, cmap)
    panels = [("image", img), ("map", _np(cam).squeeze()), ("overlay", blend)] if show_parts else [("overlay", blend)]
    fig = new_figure((3.2 * len(panels), 3.4))
    for i, (name, a) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(a, cmap=cmap if name == "map" else ("gray" if a.ndim == 2 else None))
        ax.set_title(name)
        ax.axis("off")
    return _finish(fig, save, title)


def _history_dict(history):
    """Accept a dict of lists, a list of per-epoch dicts, or an object with ``.history``."""
    if hasattr(history, "history") and not isinstance(history, dict):
        history = history.history
    if isinstance(history, (list, tuple)):
        keys = []
        for row in history:
            keys += [k for k in row if k not in keys]
        history = {k: [row.get(k, np.nan) for row in history] for k in keys}
    if not isinstance(history, dict) or not history:
        raise ValueError("learning_curves: history must be a non-empty dict of lists or a list of dicts")
    out = {}
    for k, v in history.items():
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            continue  # labels, timings as strings, nested structures: not curves
        if arr.ndim == 1 and arr.size:
            out[k] = arr
    if not out:
        raise ValueError(f"learning_curves: no numeric series in history (keys: {', '.join(map(str, history))})")
    return out


def learning_curves(history, title=None, xlabel="epoch", save=None):
    """Plot training history: one panel per quantity, train/val series of the same quantity
    together (``train_loss`` and ``val_loss`` share the "loss" panel)."""
    series = _history_dict(history)
    groups: dict = {}
    for k, v in series.items():
        if k in ("epoch", "step"):
            continue
        base = k
        for prefix in ("train_", "val_", "valid_", "test_"):
            if k.startswith(prefix):
                base = k[len(prefix):]
                break
        groups.setdefault(base, []).append((k, v))
    x = series.get("epoch")
    fig = new_figure((4.2 * len(groups), 3.4))
    for i, (base, items) in enumerate(groups.items()):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for k, v in items:
            xs = x if x is not None and len(x) == len(v) else np.arange(1, len(v) + 1)
            ax.plot(xs, v, marker="o" if len(v) <= 30 else None, ms=3, label=k)
        ax.set_title(base)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _finish(fig, save, title)


def confusion_matrix_plot(cm=None, class_names=None, normalize=False, title=None, cmap="Blues", y_true=None,
                          y_pred=None, save=None):
    """Draw a confusion matrix (rows: true class, columns: predicted), counts in each cell.

    Give the matrix, or ``y_true=`` and ``y_pred=``. ``normalize=True`` shows each row as
    fractions of that class."""
    if cm is None:
        if y_true is None or y_pred is None:
            raise ValueError("confusion_matrix_plot: give cm, or both y_true and y_pred")
        from .metrics import confusion_matrix

        cm = confusion_matrix(y_true, y_pred, None if class_names is None else len(class_names))
    cm = _np(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion_matrix_plot: expected a square matrix, got shape {cm.shape}")
    k = cm.shape[0]
    names = [str(i) for i in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"confusion_matrix_plot: {len(names)} class names for a {k}x{k} matrix")
    shown = cm.astype(np.float64)
    if normalize:
        shown = shown / np.maximum(shown.sum(axis=1, keepdims=True), 1)
    size = min(12.0, max(3.5, 0.5 * k + 1.5))
    fig = new_figure((size + 1.0, size))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap=cmap, interpolation="nearest")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45 if max(len(n) for n in names) > 2 else 0)
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = shown.max() if shown.size else 0
    for i in range(k):
        for j in range(k):
            txt = f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                    color="white" if shown[i, j] > top / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title)
    return _finish(fig, save)


def image_grid(images, titles=None, ncols=None, cmap="gray", title=None, cell_inches=2.0, save=None):
    """Show images in a grid with optional per-image titles.

    ``images``: an array ``(N, C, H, W)``, ``(N, H, W)`` or ``(N, H, W, 3)``, or a list of images
    in any layout ``to_image`` accepts."""
    if isinstance(images, (list, tuple)):
        imgs = [to_image(im) for im in images]
    else:
        arr = _np(images)
        if arr.ndim == 3 and arr.shape[-1] != 3:
            arr = arr[:, None]
        if arr.ndim != 4:
            raise ValueError(f"image_grid: expected a batch of images, got shape {arr.shape}")
        imgs = [to_image(a) for a in arr]
    n = len(imgs)
    if n == 0:
        raise ValueError("image_grid: no images")
    if titles is not None and len(titles) != n:
        raise ValueError(f"image_grid: {len(titles)} titles for {n} images")
    ncols = min(n, _default_ncols(n) if ncols is None else int(ncols))
    rows = math.ceil(n / ncols)
    fig = new_figure((cell_inches * ncols, cell_inches * rows + (0.4 if title else 0.0)))
    for i, im in enumerate(imgs):
        ax = fig.add_subplot(rows, ncols, i + 1)
        ax.imshow(im, cmap=cmap if im.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=9)
    return _finish(fig, save, title)
