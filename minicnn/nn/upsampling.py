"""Upsample, UpsamplingNearest2d, UpsamplingBilinear2d, PixelShuffle, PixelUnshuffle, and the
functions ``interpolate``, ``pixel_shuffle``, ``pixel_unshuffle`` (forward only, for
``minicnn.nn.functional``)."""
import math
import numbers

from .. import backends, ops
from .module import Module

MODES = ("nearest", "bilinear")
_TORCH_ONLY_MODES = ("linear", "bicubic", "trilinear", "area", "nearest-exact")


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_args(size, scale_factor, mode, align_corners, recompute_scale_factor, where):
    """PyTorch's ``interpolate`` rules that do not depend on the input; returns (sizes, factors),
    one of them None, each a pair."""
    if mode not in MODES:
        extra = " (not implemented here)" if mode in _TORCH_ONLY_MODES else ""
        raise ValueError(f"{where}: mode must be one of {MODES}, got {mode!r}{extra}")
    if mode == "nearest" and align_corners is not None:
        raise ValueError(f"{where}: align_corners option can only be set with the interpolating modes: "
                         f"linear | bilinear | bicubic | trilinear (got mode={mode!r})")
    if size is not None and scale_factor is not None:
        raise ValueError(f"{where}: only one of size or scale_factor should be defined")
    if size is not None:
        if recompute_scale_factor:
            raise ValueError(f"{where}: recompute_scale_factor is not meaningful with an explicit size")
        sizes = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        if len(sizes) != 2 or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in sizes):
            raise ValueError(f"{where}: size must be an int or a pair of ints, got {size!r}")
        return tuple(int(s) for s in sizes), None
    if scale_factor is not None:
        factors = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
        if len(factors) != 2 or not all(_is_number(f) for f in factors):
            raise ValueError(f"{where}: scale_factor must be a number or a pair of numbers, got {scale_factor!r}")
        factors = tuple(float(f) for f in factors)
        if not all(math.isfinite(f) for f in factors):
            raise ValueError(f"{where}: scale_factor must be finite, got {scale_factor!r}")
        return None, factors
    raise ValueError(f"{where}: either size or scale_factor should be defined")


def _resolve(shape, size, scale_factor, mode, align_corners, recompute_scale_factor, where):
    """PyTorch's ``interpolate`` argument rules for a 4-D input: ((OH, OW), scales, align_corners).

    ``scales`` is what the op receives: the scale factors themselves when the caller gave them and
    did not ask to recompute them (PyTorch's default): the index rule then steps through the input
    by 1/scale_factor, not by in/out, which differs when in * scale_factor is not an integer.
    """
    sizes, factors = _check_args(size, scale_factor, mode, align_corners, recompute_scale_factor, where)
    if len(shape) != 4:
        raise ValueError(f"{where}: expected 4-D input of shape (N, C, H, W), got shape {tuple(shape)}")
    H, W = shape[2], shape[3]
    if sizes is not None:
        out, scales = sizes, None
    else:
        out = (math.floor(H * factors[0]), math.floor(W * factors[1]))
        scales = None if recompute_scale_factor else factors
    if min(H, W, *out) < 1:
        raise ValueError(f"{where}: input and output sizes should be greater than 0, but got input (H: {H}, W: {W}) "
                         f"output (H: {out[0]}, W: {out[1]})")
    return out, scales, bool(align_corners) if mode == "bilinear" else False


def _forward_op(x, out, scales, mode, align_corners):
    if mode == "nearest":
        return ops.upsample_nearest2d_forward(x, out, scales)
    return ops.upsample_bilinear2d_forward(x, out, align_corners, scales)


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None):
    """Resize an (N, C, H, W) array to ``size`` or by ``scale_factor`` (PyTorch's
    ``torch.nn.functional.interpolate`` for 4-D input, modes ``"nearest"`` and ``"bilinear"``).

    Forward only (it keeps nothing for a backward); the ``Upsample`` layer has the backward.
    Args and index rules: see :class:`Upsample`.
    """
    be = backends.current()
    x = input if be.is_native(input) else be.asarray(input)
    out, scales, align = _resolve(x.shape, size, scale_factor, mode, align_corners, recompute_scale_factor,
                                  "interpolate")
    return _forward_op(x, out, scales, mode, align)


class Upsample(Module):
    r"""Resize (N, C, H, W) input to ``size`` or by ``scale_factor``, PyTorch's ``nn.Upsample``.

    With source position :math:`src(i)` of output index i along an axis (``step`` = 1/scale_factor
    when a scale_factor is given and ``recompute_scale_factor`` is not True, else in/out):

    - ``"nearest"``: :math:`y[i, j] = x[\min(\lfloor i \cdot step \rfloor, in - 1), \ldots]`
      (PyTorch's ``nearest``, computed in float32; out == in copies, out == 2 in halves).
    - ``"bilinear"``: :math:`src(i) = i (in - 1)/(out - 1)` with ``align_corners=True``, else
      :math:`\max((i + 0.5)\, step - 0.5, 0)`; the output blends the 2x2 input cells around
      (src_h, src_w) with weights (1 - frac, frac) per axis.

    Args:
        size: (OH, OW) or an int for both; exclusive with ``scale_factor``.
        scale_factor: a number or an (h, w) pair; OH = floor(H * scale_factor).
        mode: ``"nearest"`` (default) or ``"bilinear"``.
        align_corners: bilinear only (None means False); must be None for nearest.
        recompute_scale_factor: True computes the index step from the output size (in/out)
            instead of the given scale factor.

    Shape: (N, C, H, W) -> (N, C, OH, OW). The backward is the adjoint: each dy cell is added,
    with its forward weights, onto the input cells it was read from (docs/upsampling.md).
    """

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None):
        super().__init__()
        self.size = tuple(size) if isinstance(size, (tuple, list)) else size
        if isinstance(scale_factor, (tuple, list)):
            self.scale_factor = tuple(float(f) if _is_number(f) else f for f in scale_factor)
        else:
            self.scale_factor = float(scale_factor) if _is_number(scale_factor) else scale_factor
        self.mode = mode
        self.align_corners = align_corners
        self.recompute_scale_factor = recompute_scale_factor
        # the rules that do not depend on the input are checked now, the sizes at forward
        _check_args(size, scale_factor, mode, align_corners, recompute_scale_factor, type(self).__name__)

    def extra_repr(self):
        s = f"scale_factor={self.scale_factor}" if self.scale_factor is not None else f"size={self.size}"
        s += f", mode={self.mode!r}"
        if self.align_corners is not None:
            s += f", align_corners={self.align_corners}"
        return s

    def forward(self, x):
        x = self._prepare_input(x)
        out, scales, align = _resolve(x.shape, self.size, self.scale_factor, self.mode, self.align_corners,
                                      self.recompute_scale_factor, self._short())
        self._save((x.shape, scales, align))
        return _forward_op(x, out, scales, self.mode, align)

    def backward(self, dy):
        x_shape, scales, align = self._saved()
        if self.mode == "nearest":
            return ops.upsample_nearest2d_backward(dy, x_shape, scales)
        return ops.upsample_bilinear2d_backward(dy, x_shape, align, scales)


class UpsamplingNearest2d(Upsample):
    """``Upsample(size, scale_factor, mode="nearest")`` (PyTorch's deprecated spelling)."""

    def __init__(self, size=None, scale_factor=None):
        super().__init__(size, scale_factor, mode="nearest")


class UpsamplingBilinear2d(Upsample):
    """``Upsample(size, scale_factor, mode="bilinear", align_corners=True)`` (PyTorch's deprecated spelling)."""

    def __init__(self, size=None, scale_factor=None):
        super().__init__(size, scale_factor, mode="bilinear", align_corners=True)


# -- pixel shuffle ------------------------------------------------------------------------------
#
# Pure rearrangements of entries, no arithmetic: they are done with the array's own reshape and
# transpose above the op seam, which every backend's array type (numpy, CuPy) provides natively,
# rather than as ops (two kernels per backend and conformance cases for what is a copy). The
# backward of each is the other.


def _factor(r, name, where):
    if not isinstance(r, numbers.Integral) or isinstance(r, bool) or r < 1:
        raise ValueError(f"{where}: {name} must be a positive int, got {r!r}")
    return int(r)


def _shuffle(x, r, where):
    if x.ndim < 3:
        raise ValueError(f"{where}: expected input of shape (*, C, H, W) with at least 3 dimensions, "
                         f"got shape {tuple(x.shape)}")
    *lead, C, H, W = x.shape
    if C % (r * r):
        raise ValueError(f"{where}: input channels {C} must be divisible by upscale_factor^2 = {r * r} "
                         f"(input shape {tuple(x.shape)})")
    k = len(lead)
    y = x.reshape(*lead, C // (r * r), r, r, H, W)
    y = y.transpose(*range(k), k, k + 3, k + 1, k + 4, k + 2)  # (..., C', H, r, W, r)
    return y.reshape(*lead, C // (r * r), H * r, W * r)


def _unshuffle(x, r, where):
    if x.ndim < 3:
        raise ValueError(f"{where}: expected input of shape (*, C, H, W) with at least 3 dimensions, "
                         f"got shape {tuple(x.shape)}")
    *lead, C, H, W = x.shape
    if H % r or W % r:
        raise ValueError(f"{where}: input height {H} and width {W} must be divisible by downscale_factor {r} "
                         f"(input shape {tuple(x.shape)})")
    k = len(lead)
    y = x.reshape(*lead, C, H // r, r, W // r, r)
    y = y.transpose(*range(k), k, k + 2, k + 4, k + 1, k + 3)  # (..., C, r, r, H', W')
    return y.reshape(*lead, C * r * r, H // r, W // r)


def pixel_shuffle(input, upscale_factor):
    """(*, C r^2, H, W) -> (*, C, H r, W r): y[..., c, h r + i, w r + j] = x[..., c r^2 + i r + j, h, w]."""
    return _shuffle(input, _factor(upscale_factor, "upscale_factor", "pixel_shuffle"), "pixel_shuffle")


def pixel_unshuffle(input, downscale_factor):
    """(*, C, H r, W r) -> (*, C r^2, H, W), the inverse of :func:`pixel_shuffle`."""
    return _unshuffle(input, _factor(downscale_factor, "downscale_factor", "pixel_unshuffle"), "pixel_unshuffle")


class PixelShuffle(Module):
    r"""Rearrange (*, C r^2, H, W) into (*, C, H r, W r) (sub-pixel convolution's last step):

    .. math:: y[\ldots, c, h r + i, w r + j] = x[\ldots, c r^2 + i r + j, h, w]

    Args: upscale_factor r (a positive int). The backward is the inverse rearrangement
    (``pixel_unshuffle`` of dy). Done with reshape/transpose above the op seam (no arithmetic).
    """

    def __init__(self, upscale_factor):
        super().__init__()
        self.upscale_factor = _factor(upscale_factor, "upscale_factor", "PixelShuffle")

    def extra_repr(self):
        return f"upscale_factor={self.upscale_factor}"

    def forward(self, x):
        x = self._prepare_input(x)
        y = _shuffle(x, self.upscale_factor, self._short())
        self._save(None)
        return y

    def backward(self, dy):
        self._saved()
        return _unshuffle(dy, self.upscale_factor, self._short())


class PixelUnshuffle(Module):
    r"""Rearrange (*, C, H r, W r) into (*, C r^2, H, W), the inverse of :class:`PixelShuffle`.

    Args: downscale_factor r (a positive int). The backward is ``pixel_shuffle`` of dy.
    """

    def __init__(self, downscale_factor):
        super().__init__()
        self.downscale_factor = _factor(downscale_factor, "downscale_factor", "PixelUnshuffle")

    def extra_repr(self):
        return f"downscale_factor={self.downscale_factor}"

    def forward(self, x):
        x = self._prepare_input(x)
        y = _unshuffle(x, self.downscale_factor, self._short())
        self._save(None)
        return y

    def backward(self, dy):
        self._saved()
        return _shuffle(dy, self.downscale_factor, self._short())
