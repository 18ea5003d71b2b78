"""Images in, network input out: ``load_image`` and ``preprocess``.

    img = load_image("cat.png")                 # any file Pillow opens -> an RGB PIL image
    x = preprocess(img)                          # float32 (3, 224, 224), ImageNet-normalised
    batch = np.stack([preprocess(load_image(p)) for p in paths])

``load_image`` applies the EXIF orientation and turns every Pillow mode into RGB: transparency
(RGBA, LA, PA, palette or grey with a transparent colour) is composited on white, 16-bit and
32-bit grey is scaled down to 0..255 instead of clipped, CMYK and 1-bit convert as Pillow does.

``preprocess(img, mode="torchvision")`` reproduces torchvision's evaluation transform,
``Resize(256)`` (bilinear, antialiased as Pillow's resize is), ``CenterCrop(224)``, ``ToTensor()``,
``Normalize(IMAGENET_MEAN, IMAGENET_STD)``, to the last float32 bit: the same output size rule,
the same crop offsets and the same float32 arithmetic. (Images more than 16 times longer than
wide, or the reverse, resample only the cropped window rather than the whole strip, so a tiny file
cannot demand gigabytes; their pixels may then differ by one grey level.) ``mode="center_crop"`` instead crops the
largest centred square and resizes it to 224, which keeps more of a wide image.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import MinicnnError

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "PREPROCESS_MODES", "ImageReadError",
    "load_image", "to_rgb", "resize_shorter", "center_crop", "to_array", "preprocess", "find_images",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS_MODES = ("torchvision", "center_crop")

# what a directory walk picks up; a file named explicitly is tried whatever its extension
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico .jfif".split()
)


class ImageReadError(MinicnnError, ValueError):
    """A file could not be read as an image (missing, empty, truncated, corrupt, unsupported)."""


def _pil():
    from PIL import Image, ImageOps

    return Image, ImageOps


def _too_large(name, w, h, limit):
    return ImageReadError(
        f"cannot read image {name!r}: {w}x{h} = {w * h:,} pixels is more than the {limit:,} allowed (Pillow's "
        f"guard against decompression bombs); if you trust the file, allow it with --max-pixels {w * h} "
        f"(in Python: load_image(path, max_pixels={w * h}))"
    )


def load_image(path, max_pixels=None):
    """Open ``path`` with Pillow, apply its EXIF orientation and return an RGB ``PIL.Image``.

    The pixels are fully decoded here, so a truncated or corrupt file fails now, with an
    :class:`ImageReadError` that names the file, rather than later inside a batch. An image of
    more than ``max_pixels`` pixels (default: Pillow's ``Image.MAX_IMAGE_PIXELS``, about 89
    million) is refused before decoding, with the size and how to allow it.
    """
    Image, ImageOps = _pil()
    name = os.fspath(path)
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    try:
        with Image.open(name) as im:
            if limit is not None and im.width * im.height > limit:
                raise _too_large(name, im.width, im.height, limit)
            im.load()
            try:
                img = ImageOps.exif_transpose(im)
            except Exception:  # noqa: BLE001 - a broken EXIF block only costs the orientation
                img = im
            if img is im:  # exif_transpose returns its argument when there is nothing to do
                img = im.copy()
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"cannot read image {name!r}: {e}; if you trust the file, allow it with --max-pixels N "
                             "(in Python: load_image(path, max_pixels=N))") from None
    except FileNotFoundError:
        raise ImageReadError(f"cannot read image {name!r}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"cannot read image {name!r}: it is a directory") from None
    except Image.UnidentifiedImageError:
        size = _size(name)
        why = "the file is empty" if size == 0 else "not an image format Pillow recognises"
        raise ImageReadError(f"cannot read image {name!r}: {why}") from None
    except Exception as e:  # noqa: BLE001 - decoders raise many types on hostile input; all mean "unreadable"
        raise ImageReadError(f"cannot read image {name!r}: {type(e).__name__}: {e}") from None
    if img.width < 1 or img.height < 1:
        raise ImageReadError(f"cannot read image {name!r}: it has no pixels ({img.width}x{img.height})")
    try:
        return to_rgb(img)
    except ValueError as e:
        raise ImageReadError(f"cannot read image {name!r}: {e}") from None


def _size(name):
    try:
        return os.path.getsize(name)
    except OSError:
        return -1


def _white_composite(img):
    """RGBA over an opaque white background, as a viewer shows a transparent image."""
    Image, _ = _pil()
    rgba = img.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(bg, rgba).convert("RGB")


def _grey_to_8bit(a, full_scale):
    """Scale grey values in [0, full_scale] to 0..255 (rounded), clipping anything outside."""
    a = np.clip(a.astype(np.float64), 0, full_scale) * (255.0 / full_scale)
    return np.rint(a).astype(np.uint8)


def to_rgb(img):
    """Convert a ``PIL.Image`` of any mode to RGB (see the module docstring for each mode's rule).

    16-bit grey (``I;16``, ``I;16B``, ...) and 32-bit integer grey (``I``, which is how Pillow
    holds 16-bit PNG and TIFF data) are read as 16-bit intensities, 0..65535 -> 0..255. Float grey
    (``F``) is read as 0..1 when its maximum is at most 1, else as 0..255.
    """
    Image, _ = _pil()
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img)
        return Image.fromarray(_grey_to_8bit(a, 65535.0), mode="L").convert("RGB")
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        full = 1.0 if a.size and a.max() <= 1.0 else 255.0
        return Image.fromarray(_grey_to_8bit(a, full), mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return _white_composite(img)
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise ValueError(f"cannot convert Pillow mode {mode!r} to RGB ({e})") from None


def resize_shorter(img, size=256):
    """Resize so the shorter side is ``size``, as torchvision's ``Resize(size)`` does a PIL image.

    The longer side becomes ``int(size * long / short)`` (truncated, torchvision's rule); bilinear
    filtering with Pillow's antialiasing; an image already at that size is returned unchanged.
    """
    Image, _ = _pil()
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = int(size), int(int(size) * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.BILINEAR)


# Beyond this aspect ratio torchvision's Resize(256) would build a huge intermediate image (a
# 1x50000 px file, a few hundred bytes on disk, becomes 256 x 12.8M px, ~10 GB) only to keep its
# centre, so there only the cropped window is resampled.
_MAX_RESIZE_ASPECT = 16


def _resize_shorter_then_crop(img, resize_size, size):
    """``center_crop(resize_shorter(img, resize_size), size)`` with memory bounded for any aspect ratio.

    Up to an aspect ratio of ``_MAX_RESIZE_ASPECT`` this is exactly that composition (bit for bit
    torchvision's). Beyond it, Pillow resamples only the source box that maps onto the crop, with
    the same scale factors and bilinear filter; pixel values can then differ from the full resize
    by one grey level, because Pillow's fixed-point filter weights depend on the box origin.
    """
    Image, _ = _pil()
    w, h = img.size
    if max(w, h) <= _MAX_RESIZE_ASPECT * min(w, h):
        return center_crop(resize_shorter(img, resize_size), size)
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = int(resize_size), int(int(resize_size) * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return img.resize((size, size), Image.BILINEAR, box=box)


def center_crop(img, size=224):
    """The centred ``size`` x ``size`` crop, with torchvision's offsets ``int(round((H - size) / 2))``.

    Python's ``round`` halves to even, as torchvision's does, so odd margins match it exactly.
    """
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"center_crop: image of {w}x{h} is smaller than the {size}x{size} crop")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_array(img, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """float32 (3, H, W): pixels / 255, then ``(x - mean) / std`` per channel (``mean=None`` skips it).

    Done in float32 in the same order as torchvision's ``ToTensor`` + ``Normalize``, so the
    values agree bit for bit.
    """
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    x = a.astype(np.float32) / np.float32(255)
    if mean is not None:
        x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(img, mode="torchvision", size=224, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """One image -> float32 (3, size, size) network input.

    ``img``: a ``PIL.Image`` (any mode), a path, or a uint8 array (H, W) or (H, W, 3).
    ``mode="torchvision"``: shorter side to ``resize_size``, centre crop ``size`` (ImageNet
    evaluation). ``mode="center_crop"``: the largest centred square, resized to ``size``.
    """
    Image, _ = _pil()
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"unknown preprocess mode {mode!r}; choose one of {', '.join(PREPROCESS_MODES)}")
    if isinstance(img, (str, os.PathLike)):
        img = load_image(img)
    elif isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
            raise ValueError(
                f"preprocess: an array image must be uint8 of shape (H, W) or (H, W, 3), got {img.dtype} {img.shape}"
            )
        img = Image.fromarray(img)
    img = to_rgb(img)
    if mode == "torchvision":
        if resize_size < size:
            raise ValueError(f"preprocess: resize_size {resize_size} is smaller than the crop size {size}")
        img = _resize_shorter_then_crop(img, resize_size, size)
    else:
        w, h = img.size
        side = min(w, h)
        left, top = int(round((w - side) / 2.0)), int(round((h - side) / 2.0))
        img = img.crop((left, top, left + side, top + side))
        if side != size:
            img = img.resize((size, size), Image.BILINEAR)
    return to_array(img, mean, std)


def find_images(inputs, recursive=True):
    """Expand files and directories into a sorted list of image paths.

    A directory contributes the files inside it (recursively) whose extension is in
    ``IMAGE_EXTENSIONS``; any other path is kept as given, whatever its name, so a missing or bad
    file is reported by ``load_image`` when read. Raises ValueError for a directory holding no images.
    """
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            walker = p.rglob("*") if recursive else p.glob("*")
            found = sorted(q for q in walker if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ValueError(f"no images in directory {os.fspath(p)!r} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
            out.extend(found)
        else:
            out.append(p)
    return out
