"""Data augmentation in plain numpy, on NCHW batches or single CHW images.

Every random transform draws its parameters *per sample* from a ``numpy.random.Generator``:
the one passed at call time, else the one given at construction (a Generator or an int seed),
else minicnn's global generator (so ``minicnn.manual_seed`` makes runs reproducible). A transform
is a callable ``t(x, rng=None) -> array`` of the same shape and dtype, so a ``Compose`` of them is
usable as a ``DataLoader`` transform.

Geometry conventions (what the tests pin down):

* Coordinates are ``(row, col)`` with pixel centres on integers; rotations, zooms and shears act
  about the image centre ``((H-1)/2, (W-1)/2)``.
* ``rotate(x, a)`` turns the content counter-clockwise by ``a`` degrees, so ``rotate(x, 90)`` of a
  square image equals ``np.rot90(x, axes=(-2, -1))``.
* ``shift(x, dy, dx)`` moves the content down by ``dy`` and right by ``dx`` pixels.
* ``zoom(x, s)`` magnifies by ``s`` about the centre: the point ``c + v`` lands on ``c + s*v``.
* ``shear(x, a)`` moves the point ``(r, c)`` (relative to the centre) to ``(r, c + tan(a)*r)``:
  rows below the centre slide right.

Pixels that come from outside the input take the value ``fill``. The warps sample the input
with bilinear interpolation; where the sampling point is exactly a pixel centre (integer shifts,
quarter turns) the result is exact.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

__all__ = [
    "hflip", "vflip", "pad", "crop", "resize", "warp", "affine_matrix", "affine",
    "rotate", "shift", "zoom", "shear",
    "Compose", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomCrop", "RandomRotation",
    "RandomShift", "RandomZoom", "RandomShear", "RandomAffine", "GaussianNoise",
]


# -- helpers ---------------------------------------------------------------------------------

def _as_batch(x):
    """View x as (N, C, H, W); return it and a function that restores the caller's layout."""
    x = np.asarray(x)
    if x.ndim == 4:
        return x, lambda y: y
    if x.ndim == 3:
        return x[None], lambda y: y[0]
    if x.ndim == 2:
        return x[None, None], lambda y: y[0, 0]
    raise ValueError(f"augment: expected an (N, C, H, W) batch, a (C, H, W) image or an (H, W) plane, got shape {x.shape}")


def _cast_like(y, like):
    """Bring a float result back to the input dtype (integer images are rounded and clipped)."""
    if like.dtype.kind == "f":
        return y.astype(like.dtype, copy=False)
    if like.dtype.kind in "iub":
        info = np.iinfo(like.dtype) if like.dtype.kind != "b" else None
        y = np.rint(y)
        if info is not None:
            y = np.clip(y, info.min, info.max)
        return y.astype(like.dtype)
    raise TypeError(f"augment: unsupported dtype {like.dtype}")


def _resolve_rng(call_rng, own_rng):
    if call_rng is not None:
        return call_rng if isinstance(call_rng, np.random.Generator) else np.random.default_rng(call_rng)
    if own_rng is not None:
        return own_rng
    from .random import get_rng

    return get_rng()


def _make_rng(rng):
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _cos_sin(deg):
    """cos and sin of an angle in degrees, exact at multiples of 90 so quarter turns are exact."""
    deg = np.asarray(deg, dtype=np.float64)
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    quarter = np.isclose(np.mod(deg, 90.0), 0.0, atol=1e-12) | np.isclose(np.mod(deg, 90.0), 90.0, atol=1e-12)
    c = np.where(quarter, np.round(c), c)
    s = np.where(quarter, np.round(s), s)
    return c, s


def _range(v, name, around=0.0):
    """A number a means the interval [around - a, around + a]; a pair is the interval itself."""
    if isinstance(v, (int, float)):
        if v < 0:
            raise ValueError(f"{name} must be non-negative, got {v}")
        return (around - float(v), around + float(v))
    lo, hi = (float(t) for t in v)
    if lo > hi:
        raise ValueError(f"{name}: interval ({lo}, {hi}) has its ends reversed")
    return lo, hi


# -- deterministic transforms --------------------------------------------------------------------

def hflip(x):
    """Mirror left-right (the last axis)."""
    return np.ascontiguousarray(np.asarray(x)[..., ::-1])


def vflip(x):
    """Mirror top-bottom (the second-to-last axis)."""
    return np.ascontiguousarray(np.asarray(x)[..., ::-1, :])


def pad(x, padding, fill=0.0, mode="constant"):
    """Pad the two spatial axes. ``padding`` is an int or ``(ph, pw)``; ``mode`` is ``constant``
    (with ``fill``), ``reflect`` or ``edge``."""
    x = np.asarray(x)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    width = [(0, 0)] * (x.ndim - 2) + [(ph, ph), (pw, pw)]
    if mode == "constant":
        return np.pad(x, width, mode="constant", constant_values=fill)
    if mode in ("reflect", "edge"):
        return np.pad(x, width, mode=mode)
    raise ValueError(f"pad: mode must be 'constant', 'reflect' or 'edge', got {mode!r}")


def crop(x, top, left, height, width):
    """The window ``x[..., top:top+height, left:left+width]`` (must lie inside the image)."""
    x = np.asarray(x)
    H, W = x.shape[-2:]
    if top < 0 or left < 0 or top + height > H or left + width > W:
        raise ValueError(f"crop: window top={top} left={left} size=({height}, {width}) does not fit in image ({H}, {W})")
    return x[..., top:top + height, left:left + width].copy()


def _interp_matrix(in_size, out_size):
    """Rows of linear-interpolation weights, PyTorch's ``bilinear``/``align_corners=False`` rule:
    output pixel i samples input coordinate (i + 0.5) * in/out - 0.5, clamped at the borders."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    f = src - i0
    m = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), 1.0 - f)
    np.add.at(m, (rows, i1), f)
    return m


def resize(x, size):
    """Bilinear resize of the spatial axes to ``size`` (int or ``(h, w)``), as PyTorch's
    ``F.interpolate(x, size, mode="bilinear", align_corners=False)``.

    Bilinear interpolation is separable, so it is two small matrix products, one per axis."""
    x = np.asarray(x)
    oh, ow = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if oh < 1 or ow < 1:
        raise ValueError(f"resize: output size must be positive, got {(oh, ow)}")
    xb, back = _as_batch(x)
    mh = _interp_matrix(xb.shape[2], oh)
    mw = _interp_matrix(xb.shape[3], ow)
    y = np.einsum("ih,nchw,jw->ncij", mh, xb.astype(np.float64), mw, optimize=True)
    return _cast_like(back(y), x)


def warp(x, matrix, output_size=None, fill=0.0):
    """Resample ``x`` through an affine map, with bilinear interpolation written out.

    ``matrix`` is ``(2, 3)`` or one per sample ``(N, 2, 3)`` and maps an *output* pixel's
    ``(row, col, 1)`` to the *input* coordinate it samples (the inverse of how the content moves).
    Each output pixel blends the four input pixels around that coordinate with weights
    ``(1-fr)(1-fc), (1-fr)fc, fr(1-fc), fr fc``; neighbours outside the image contribute ``fill``.
    """
    x = np.asarray(x)
    xb, back = _as_batch(x)
    N, C, H, W = xb.shape
    Ho, Wo = (H, W) if output_size is None else output_size
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape not in ((2, 3), (N, 2, 3)):
        raise ValueError(f"warp: matrix must have shape (2, 3) or ({N}, 2, 3), got {m.shape}")
    m = np.broadcast_to(m, (N, 2, 3))
    ii, jj = np.meshgrid(np.arange(Ho, dtype=np.float64), np.arange(Wo, dtype=np.float64), indexing="ij")
    pts = np.stack([ii.ravel(), jj.ravel(), np.ones(Ho * Wo)])  # (3, L)
    src = m @ pts  # (N, 2, L)
    r, c = src[:, 0], src[:, 1]
    r0, c0 = np.floor(r), np.floor(c)
    fr, fc = r - r0, c - c0
    flat = xb.reshape(N, C, H * W).astype(np.float64)
    out = np.zeros((N, C, Ho * Wo), dtype=np.float64)
    for dr, dc, wgt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        inside = (rr >= 0) & (rr <= H - 1) & (cc >= 0) & (cc <= W - 1)
        idx = (np.clip(rr, 0, H - 1) * W + np.clip(cc, 0, W - 1)).astype(np.intp)
        vals = np.take_along_axis(flat, idx[:, None, :], axis=2)
        vals = np.where(inside[:, None, :], vals, fill)
        out += wgt[:, None, :] * vals
    return _cast_like(back(out.reshape(N, C, Ho, Wo)), x)


def affine_matrix(shape, angle=0.0, translate=(0.0, 0.0), scale=1.0, shear=0.0):
    """The sampling matrix (output -> input, see ``warp``) for content that is scaled, sheared,
    rotated counter-clockwise by ``angle`` degrees about the centre, then moved by
    ``translate = (dy, dx)`` pixels. Every argument may be an array of length N (one per sample);
    the result is then ``(N, 2, 3)``, else ``(2, 3)``. ``shape`` is the image ``(H, W)``."""
    H, W = shape[-2:]
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    angle = np.asarray(angle, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    shear = np.asarray(shear, dtype=np.float64)
    t = np.asarray(translate, dtype=np.float64)
    dy, dx = t[..., 0], t[..., 1]
    if np.any(scale <= 0):
        raise ValueError(f"affine: scale must be positive, got {scale}")
    if np.any(np.abs(shear) >= 89.9):
        raise ValueError(f"affine: shear angle must lie strictly between -89.9 and 89.9 degrees, got {shear}")
    c, s = _cos_sin(angle)
    k = np.tan(np.deg2rad(shear))
    # forward (content) map in (row, col) about the centre: A = R @ Sh @ (scale * I)
    #   R = [[c, -s], [s, c]] turns counter-clockwise on screen (rows grow downwards)
    #   Sh = [[1, 0], [k, 1]] slides row r by k*r columns
    a00 = (c - s * k) * scale
    a01 = -s * scale
    a10 = (s + c * k) * scale
    a11 = c * scale
    # invert the 2x2 and the translation: p_in = A^-1 (p_out - centre - t) + centre
    det = a00 * a11 - a01 * a10
    i00, i01, i10, i11 = a11 / det, -a01 / det, -a10 / det, a00 / det
    oy, ox = cy + dy, cx + dx
    b0 = cy - (i00 * oy + i01 * ox)
    b1 = cx - (i10 * oy + i11 * ox)
    i00, i01, b0, i10, i11, b1 = np.broadcast_arrays(i00, i01, b0, i10, i11, b1)
    m = np.stack([np.stack([i00, i01, b0], -1), np.stack([i10, i11, b1], -1)], -2)
    return m


def affine(x, angle=0.0, translate=(0.0, 0.0), scale=1.0, shear=0.0, fill=0.0):
    """Rotate, translate, scale and shear (see ``affine_matrix``) with bilinear sampling."""
    x = np.asarray(x)
    _as_batch(x)  # reject unsupported layouts before building the matrix
    return warp(x, affine_matrix(x.shape, angle, translate, scale, shear), fill=fill)


def rotate(x, angle, fill=0.0):
    """Turn the content counter-clockwise by ``angle`` degrees about the centre."""
    return affine(x, angle=angle, fill=fill)


def shift(x, dy, dx, fill=0.0):
    """Move the content ``dy`` pixels down and ``dx`` pixels right (fractions interpolate)."""
    x = np.asarray(x)
    if float(dy) == int(dy) and float(dx) == int(dx):
        # whole pixels: a plain copy, no interpolation needed
        dy, dx = int(dy), int(dx)
        out = np.full_like(x, fill)
        H, W = x.shape[-2:]
        src = x[..., max(0, -dy):H - max(0, dy), max(0, -dx):W - max(0, dx)]
        if src.size:
            out[..., max(0, dy):max(0, dy) + src.shape[-2], max(0, dx):max(0, dx) + src.shape[-1]] = src
        return out
    return affine(x, translate=(dy, dx), fill=fill)


def zoom(x, factor, fill=0.0):
    """Magnify by ``factor`` about the centre (< 1 shrinks the content and fills the border)."""
    return affine(x, scale=factor, fill=fill)


def shear(x, angle, fill=0.0):
    """Shear horizontally by ``angle`` degrees: row r (from the centre) slides tan(angle)*r right."""
    return affine(x, shear=angle, fill=fill)


# -- random transforms -------------------------------------------------------------------------

class Transform:
    """Base of the random transforms: holds an optional Generator (or seed) of its own."""

    def __init__(self, rng=None):
        self.rng = _make_rng(rng)

    def __call__(self, x, rng=None):
        x = np.asarray(x)
        xb, back = _as_batch(x)
        return back(self.apply(xb, _resolve_rng(rng, self.rng)))

    def apply(self, xb, rng):
        """Transform a batch (N, C, H, W) with parameters drawn from ``rng``."""
        raise NotImplementedError

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "rng")
        return f"{type(self).__name__}({fields})"


class Compose:
    """Apply transforms in order: ``Compose([RandomCrop(8, 1), RandomHorizontalFlip()])``.

    Any callable ``f(x)`` may be mixed in; minicnn transforms also receive the call's ``rng``."""

    def __init__(self, transforms: Iterable[Callable]):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: {t!r} is not callable")

    def __call__(self, x, rng=None):
        for t in self.transforms:
            x = t(x, rng=rng) if isinstance(t, (Transform, Compose)) else t(x)
        return x

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class _RandomFlip(Transform):
    _axis = -1

    def __init__(self, p=0.5, rng=None):
        super().__init__(rng)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1], got {p}")
        self.p = float(p)

    def apply(self, xb, rng):
        """Flip the samples whose uniform draw falls below ``p``."""
        out = xb.copy()
        hit = rng.random(xb.shape[0]) < self.p
        if hit.any():
            out[hit] = np.flip(xb[hit], axis=self._axis)
        return out


class RandomHorizontalFlip(_RandomFlip):
    """Mirror each sample left-right with probability ``p``."""

    _axis = -1


class RandomVerticalFlip(_RandomFlip):
    """Mirror each sample top-bottom with probability ``p``."""

    _axis = -2


class RandomCrop(Transform):
    """Pad by ``padding`` then cut a random ``size`` window per sample (the CIFAR recipe:
    ``RandomCrop(32, padding=4)``). ``size`` defaults to the input size."""

    def __init__(self, size=None, padding=0, fill=0.0, padding_mode="constant", rng=None):
        super().__init__(rng)
        self.size = (size, size) if isinstance(size, int) else size
        self.padding, self.fill, self.padding_mode = padding, fill, padding_mode

    def apply(self, xb, rng):
        """One window per sample, at a uniformly drawn offset into the padded image."""
        N, C, H, W = xb.shape
        th, tw = self.size if self.size is not None else (H, W)
        xp = pad(xb, self.padding, self.fill, self.padding_mode) if self.padding else xb
        Hp, Wp = xp.shape[-2:]
        if th > Hp or tw > Wp:
            raise ValueError(f"RandomCrop: crop size ({th}, {tw}) is larger than the padded image ({Hp}, {Wp})")
        tops = rng.integers(0, Hp - th + 1, N)
        lefts = rng.integers(0, Wp - tw + 1, N)
        out = np.empty((N, C, th, tw), dtype=xb.dtype)
        for n in range(N):
            out[n] = xp[n, :, tops[n]:tops[n] + th, lefts[n]:lefts[n] + tw]
        return out


class RandomAffine(Transform):
    """Random rotation, translation, zoom and shear per sample, in one bilinear warp.

    ``degrees``: a number a (uniform in [-a, a]) or an interval; ``translate=(fy, fx)``: maximum
    shift as a fraction of the height and width (as torchvision); ``scale``: interval of zoom
    factors; ``shear``: a number or interval of horizontal shear angles in degrees.
    """

    def __init__(self, degrees=0.0, translate=None, scale=None, shear=None, fill=0.0, rng=None):
        super().__init__(rng)
        self.degrees = _range(degrees, "degrees")
        self.translate = None if translate is None else tuple(float(t) for t in translate)
        if self.translate is not None and not all(0.0 <= t <= 1.0 for t in self.translate):
            raise ValueError(f"RandomAffine: translate fractions must lie in [0, 1], got {translate}")
        self.scale = None if scale is None else _range(scale, "scale")
        if self.scale is not None and self.scale[0] <= 0:
            raise ValueError(f"RandomAffine: scale must be positive, got {scale}")
        self.shear = None if shear is None else _range(shear, "shear")
        self.fill = fill

    def _params(self, shape, rng):
        """Per-sample (angle, translation in pixels, scale, shear), each of length N."""
        N, _, H, W = shape
        angle = rng.uniform(*self.degrees, N)
        if self.translate is not None:
            t = np.stack([rng.uniform(-1, 1, N) * self.translate[0] * H, rng.uniform(-1, 1, N) * self.translate[1] * W], -1)
        else:
            t = np.zeros((N, 2))
        s = rng.uniform(*self.scale, N) if self.scale is not None else np.ones(N)
        sh = rng.uniform(*self.shear, N) if self.shear is not None else np.zeros(N)
        return angle, t, s, sh

    def apply(self, xb, rng):
        """Draw each sample's angle, shift, zoom and shear, then one bilinear warp of the batch."""
        angle, t, s, sh = self._params(xb.shape, rng)
        return warp(xb, affine_matrix(xb.shape, angle, t, s, sh), fill=self.fill)


class RandomRotation(RandomAffine):
    """Rotate each sample by an angle drawn uniformly from ``degrees`` (a number a means [-a, a])."""

    def __init__(self, degrees, fill=0.0, rng=None):
        super().__init__(degrees=degrees, fill=fill, rng=rng)


class RandomShift(Transform):
    """Move each sample by up to ``max_shift`` pixels (an int, or ``(max_dy, max_dx)``) in each
    direction. Integer limits draw whole-pixel shifts (exact copies); float limits draw
    fractional shifts that are interpolated."""

    def __init__(self, max_shift, fill=0.0, rng=None):
        super().__init__(rng)
        self.max_shift = (max_shift, max_shift) if isinstance(max_shift, (int, float)) else tuple(max_shift)
        if any(m < 0 for m in self.max_shift):
            raise ValueError(f"RandomShift: max_shift must be non-negative, got {max_shift}")
        self.fill = fill

    def apply(self, xb, rng):
        """Whole-pixel copies for integer limits, an interpolating warp for fractional ones."""
        N = xb.shape[0]
        my, mx = self.max_shift
        if all(isinstance(m, int) for m in self.max_shift):
            dys, dxs = rng.integers(-my, my + 1, N), rng.integers(-mx, mx + 1, N)
            return np.stack([shift(xb[n], int(dys[n]), int(dxs[n]), self.fill) for n in range(N)])
        t = np.stack([rng.uniform(-my, my, N), rng.uniform(-mx, mx, N)], -1)
        return warp(xb, affine_matrix(xb.shape, translate=t), fill=self.fill)


class RandomZoom(RandomAffine):
    """Zoom each sample by a factor drawn uniformly from ``scale`` (an interval, e.g. (0.9, 1.1))."""

    def __init__(self, scale=(0.9, 1.1), fill=0.0, rng=None):
        if isinstance(scale, (int, float)):
            scale = (1.0 - scale, 1.0 + scale)
        super().__init__(scale=scale, fill=fill, rng=rng)


class RandomShear(RandomAffine):
    """Shear each sample horizontally by an angle (degrees) drawn from ``degrees``."""

    def __init__(self, degrees, fill=0.0, rng=None):
        super().__init__(shear=degrees, fill=fill, rng=rng)


class GaussianNoise(Transform):
    """Add zero-mean Gaussian noise of standard deviation ``std`` (float inputs only)."""

    def __init__(self, std=0.05, rng=None):
        super().__init__(rng)
        if std < 0:
            raise ValueError(f"GaussianNoise: std must be non-negative, got {std}")
        self.std = float(std)

    def apply(self, xb, rng):
        """Add fresh noise to every element."""
        if xb.dtype.kind != "f":
            raise TypeError(f"GaussianNoise: needs floating input, got {xb.dtype}")
        return (xb + rng.normal(0.0, self.std, xb.shape)).astype(xb.dtype)
