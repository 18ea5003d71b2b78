"""U-Net with a ResNet encoder (Ronneberger et al., 2015; the shape of fastai's ``DynamicUnet``).

    from minicnn.models import unet
    model = unet(encoder="resnet34", num_classes=3, encoder_weights="resnet34.safetensors")
    logits = model(x)                     # (N, 3, H, W): one score map per class, at input resolution
    loss = nn.CrossEntropyLoss()(logits, masks)   # masks: (N, H, W) class indices
    model.backward(loss_fn.backward())

The encoder is a ResNet (18, 34 or 50) without its pooling and classifier, tapped after every stage:

    tap     where                          channels (resnet34 / resnet50)   resolution
    t0      relu(bn1(conv1(x)))            64 / 64                          H/2
    t1      layer1 (after the max pool)    64 / 256                         H/4
    t2      layer2                         128 / 512                        H/8
    t3      layer3                         256 / 1024                       H/16
    t4      layer4                         512 / 2048                       H/32

The decoder climbs back with five :class:`UpBlock` s: each doubles the resolution (a 2x2 stride-2
ConvTranspose2d, or a 1x1 conv + PixelShuffle(2)), concatenates the encoder tap of that resolution
along the channels (t3, t2, t1, t0; the last block has none), and applies conv3x3-bn-relu twice. A
1x1 conv ``head`` gives the class scores. H and W must be multiples of 32.

Backward. Concatenation's backward splits the gradient along the channels: the first part goes to
the upsampling path, the rest to the encoder tap. A tap such as t2 is used twice (as layer3's input
and as a skip), so its gradient is the sum of what comes back through layer3 and what comes through
the skip; :meth:`ResNetEncoder.backward` adds the skip's gradient before running the stage's
backward, which is exactly the order the caches (push on forward, pop on backward) need.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from .. import backends
from ..nn.activation import ReLU
from ..nn.batchnorm import BatchNorm2d
from ..nn.conv import Conv2d
from ..nn.conv_transpose import ConvTranspose2d
from ..nn._utils import check_input
from ..nn.module import Module, ModuleList, Sequential
from ..nn.upsampling import PixelShuffle
from ..io.weights import ARCHS, BOTTLENECK_ARCHS
from .resnet import BasicBlock, Bottleneck, ResNet, read_weights

__all__ = ["UNet", "UpBlock", "ResNetEncoder", "unet", "cat", "seeded_state_dict", "ENCODERS"]

ENCODERS = ("resnet18", "resnet34", "resnet50")
STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def cat(arrays, axis=1):
    """Concatenate arrays along ``axis`` (``torch.cat``), with array methods only; host (numpy) arrays
    are first moved to the backend in force, as a module's input is.

    The result comes from the backend's own ``empty`` and is filled by slice assignment, which any
    backend's array type supports, so no backend is named or imported here and no op is needed:
    concatenation moves data, it computes nothing. The backward of a concatenation is slicing the
    gradient (``g[:, :c]``, ``g[:, c:]``), a view.
    """
    be = backends.current()
    # host arrays move to the backend in force, as a module's input does
    arrays = [a if be.is_native(a) else be.asarray(a) for a in arrays]
    if not arrays:
        raise ValueError("cat: need at least one array")
    first = arrays[0]
    ax = axis % first.ndim
    for a in arrays[1:]:
        if a.ndim != first.ndim or any(a.shape[i] != first.shape[i] for i in range(first.ndim) if i != ax):
            raise ValueError(f"cat: shapes {tuple(first.shape)} and {tuple(a.shape)} differ outside axis {axis}")
        if a.dtype != first.dtype:
            raise TypeError(f"cat: dtypes {first.dtype} and {a.dtype} differ")
    shape = list(first.shape)
    shape[ax] = sum(a.shape[ax] for a in arrays)
    out = be.empty(tuple(shape), first.dtype)
    lead = (slice(None),) * ax
    start = 0
    for a in arrays:
        out[lead + (slice(start, start + a.shape[ax]),)] = a
        start += a.shape[ax]
    return out


class ResNetEncoder(Module):
    """A torchvision ResNet without ``avgpool`` and ``fc``: the same children and key names
    (``conv1``, ``bn1``, ``layer1``..``layer4``), so an ImageNet checkpoint loads once its ``fc.*``
    keys are dropped. ``forward`` returns the five taps (t0..t4, see the module doc);
    ``backward`` takes one gradient per tap (None for a tap nothing used) and returns dL/dx."""

    def __init__(self, arch="resnet34", width=64):
        super().__init__()
        if arch not in ENCODERS:
            raise ValueError(f"ResNetEncoder: encoder must be one of {', '.join(ENCODERS)}, got {arch!r}")
        block = Bottleneck if arch in BOTTLENECK_ARCHS else BasicBlock
        net = ResNet(ARCHS[arch], num_classes=1, width=width, block=block)
        for name in STAGES:
            setattr(self, name, getattr(net, name))
        self.arch = arch if width == 64 else f"{arch}-width{width}"
        e = block.expansion
        self.channels = (width, width * e, 2 * width * e, 4 * width * e, 8 * width * e)

    def extra_repr(self):
        return f"arch={self.arch}"

    def _short(self):
        return f"ResNetEncoder({self.arch})"

    def forward(self, x):
        """The taps [t0, t1, t2, t3, t4]."""
        t0 = self.relu(self.bn1(self.conv1(x)))
        t1 = self.layer1(self.maxpool(t0))
        t2 = self.layer2(t1)
        t3 = self.layer3(t2)
        t4 = self.layer4(t3)
        return [t0, t1, t2, t3, t4]

    def backward(self, grads):
        """dL/dx from the taps' gradients [g0, .., g4]. A tap's gradient is the sum over its uses: what
        the next stage's backward returns plus the tap's own (the skip connection's), added before
        this stage's backward runs."""
        g0, g1, g2, g3, g4 = grads

        def add(a, b):
            return a if b is None else b if a is None else a + b

        d = add(self.layer4.backward(g4), g3)
        d = add(self.layer3.backward(d), g2)
        d = add(self.layer2.backward(d), g1)
        d = add(self.maxpool.backward(self.layer1.backward(d)), g0)
        return self.conv1.backward(self.bn1.backward(self.relu.backward(d)))


class UpBlock(Module):
    """Double the resolution, concatenate a skip, then conv3x3-bn-relu twice.

    ``up``: ConvTranspose2d(in, in // 2, 2, stride=2) for ``upsample="transpose"``, or Conv2d(in,
    2 * in, 1) then PixelShuffle(2) (2 * in / 4 = in // 2 channels) for ``"pixelshuffle"``. Then
    ``cat([up(x), skip])`` along the channels and ``relu(bn2(conv2(relu(bn1(conv1(.))))))``.
    Called as ``block(x, skip)`` (``skip=None`` for no concatenation); ``backward(dy)`` returns
    ``(dL/dx, dL/dskip)``.
    """

    def __init__(self, in_channels, skip_channels, out_channels, upsample="transpose"):
        super().__init__()
        if upsample not in ("transpose", "pixelshuffle"):
            raise ValueError(f"UpBlock: upsample must be 'transpose' or 'pixelshuffle', got {upsample!r}")
        half = in_channels // 2
        if half < 1:
            raise ValueError(f"UpBlock: in_channels must be >= 2, got {in_channels}")
        if upsample == "transpose":
            self.up = ConvTranspose2d(in_channels, half, 2, stride=2)
        else:
            self.up = Sequential(Conv2d(in_channels, 4 * half, 1), PixelShuffle(2))
        self.skip_channels = int(skip_channels)
        self.conv1 = Conv2d(half + self.skip_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = BatchNorm2d(out_channels)
        self.relu = ReLU(inplace=True)  # used twice: two calls, two caches, popped newest first
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(out_channels)
        self.in_channels, self.out_channels, self.upsample = int(in_channels), int(out_channels), upsample

    def extra_repr(self):
        return f"{self.in_channels}, skip={self.skip_channels}, {self.out_channels}, upsample={self.upsample!r}"

    def forward(self, x, skip=None):
        x = self._prepare_input(x)
        check_input(self, x, 4, 1, self.in_channels)
        u = self.up(x)
        if (skip is None) != (self.skip_channels == 0):
            raise ValueError(f"{self._short()}: expected {'no skip' if self.skip_channels == 0 else 'a skip input'}, "
                             f"got {'none' if skip is None else 'one'}")
        if skip is not None:
            skip = self._prepare_input(skip)
            want = (u.shape[0], self.skip_channels) + tuple(u.shape[2:])
            if tuple(skip.shape) != want:
                raise ValueError(f"{self._short()}: skip of shape {tuple(skip.shape)} does not fit the upsampled "
                                 f"input {tuple(u.shape)}; expected {want}")
            u = cat([u, skip], axis=1)
        self._save(x.shape[1] // 2)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(u))))))

    def backward(self, dy):
        """(dL/dx, dL/dskip): the concatenation's gradient split along the channels; dL/dskip is None
        without a skip."""
        half = self._saved()
        g = self.conv1.backward(self.bn1.backward(self.relu.backward(self.conv2.backward(self.bn2.backward(
            self.relu.backward(dy))))))
        dskip = g[:, half:] if self.skip_channels else None
        return self.up.backward(g[:, :half]), dskip


DECODER_CHANNELS = (256, 128, 64, 32, 16)


class UNet(Module):
    """A U-Net on a ResNet encoder; output (N, num_classes, H, W) for input (N, 3, H, W), H and W
    multiples of 32.

    ``UNet(encoder="resnet34", num_classes=1, upsample="transpose", width=64,
    decoder_channels=(256, 128, 64, 32, 16))``. ``width`` narrows the encoder (and the decoder in
    proportion), for tests and quick experiments. Children: ``encoder`` (:class:`ResNetEncoder`),
    ``decoder`` (a ModuleList of five :class:`UpBlock`), ``head`` (1x1 Conv2d). The encoder starts
    with torchvision's ResNet init, the decoder with the layers' PyTorch defaults.
    """

    def __init__(self, encoder="resnet34", num_classes=1, upsample="transpose", width=64,
                 decoder_channels=DECODER_CHANNELS):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"UNet: num_classes must be >= 1, got {num_classes!r}")
        decoder_channels = tuple(int(c) * int(width) // 64 for c in decoder_channels)
        if len(decoder_channels) != 5 or min(decoder_channels) < 1:
            raise ValueError(f"UNet: decoder_channels must be five positive sizes, got {decoder_channels!r}")
        self.encoder = ResNetEncoder(encoder, width)
        ch = self.encoder.channels
        skips = (ch[3], ch[2], ch[1], ch[0], 0)
        blocks, cin = [], ch[4]
        for skip, cout in zip(skips, decoder_channels):
            blocks.append(UpBlock(cin, skip, cout, upsample))
            cin = cout
        self.decoder = ModuleList(blocks)
        self.head = Conv2d(cin, num_classes, 1)
        self.num_classes = int(num_classes)
        self.arch = f"unet-{self.encoder.arch}"

    def extra_repr(self):
        return f"arch={self.arch}, num_classes={self.num_classes}"

    def _short(self):
        return self.arch

    def forward(self, x):
        """Class scores (N, num_classes, H, W)."""
        x = self._prepare_input(x)
        check_input(self, x, 4, 1, 3, "RGB channels")
        if x.shape[0] < 1 or x.shape[2] % 32 or x.shape[3] % 32 or min(x.shape[2:]) < 32:
            raise ValueError(f"{self.arch}: input of shape {tuple(x.shape)}: H and W must be positive multiples of 32 "
                             "(five stride-2 steps down, five 2x up)")
        taps = self.encoder(x)
        d = taps[4]
        for block, skip in zip(self.decoder, (taps[3], taps[2], taps[1], taps[0], None)):
            d = block(d, skip)
        return self.head(d)

    def backward(self, dy):
        """dL/dx; accumulates every parameter's gradient. The decoder runs in reverse, collecting each
        skip's gradient; the encoder then adds each to its tap's gradient (see ResNetEncoder.backward)."""
        g = self.head.backward(dy)
        tap_grads = [None] * 5
        for i, block in reversed(list(enumerate(self.decoder))):
            g, dskip = block.backward(g)
            if dskip is not None:
                tap_grads[3 - i] = dskip
        tap_grads[4] = g
        return self.encoder.backward(tap_grads)


def unet(encoder="resnet34", num_classes=1, weights=None, encoder_weights=None, upsample="transpose", width=64):
    """A :class:`UNet` on ``encoder`` (``resnet18``, ``resnet34`` or ``resnet50``).

    ``weights``: a whole U-Net state dict (path or mapping), loaded strictly. ``encoder_weights``: a
    torchvision ResNet checkpoint of the encoder's architecture (path or mapping; its ``fc.*`` keys
    are dropped), the usual ImageNet start for segmentation.
    """
    model = UNet(encoder, num_classes, upsample, width)
    if encoder_weights is not None:
        source, sd = read_weights(encoder_weights)
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        try:
            model.encoder.load_state_dict(sd, strict=True)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
    if weights is not None:
        source, sd = read_weights(weights)
        if not isinstance(sd, Mapping):  # pragma: no cover - read_weights returns mappings
            raise TypeError("weights must be a path or a state dict")
        try:
            model.load_state_dict(sd, strict=True)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
    return model


def seeded_state_dict(encoder="resnet34", seed=0, num_classes=1, upsample="transpose", width=64):
    """Deterministic weights for ``unet(encoder, num_classes, upsample=upsample, width=width)``,
    generated with numpy alone (``numpy.random.default_rng(seed)``), in the model's key order.

    Convolutions N(0, gain^2 * 2 / fan_in) with the gains of ResNet's seeded weights (0.7 for the
    stem and the downsample convs, 0.35 for a residual block's last conv, 1 elsewhere); a transposed
    convolution's fan_in is its input channels (each output pixel of a 2x2 stride-2 one reads one tap
    per input channel). Conv biases N(0, 0.01^2); batchnorm as ResNet's seeded ones (gamma, running_var
    ~ U(0.5, 1.5), beta, running_mean ~ N(0, 0.1^2), num_batches_tracked = 0).
    """
    model = UNet(encoder, num_classes, upsample, width)  # the key table, with the model's own shapes
    block_last = "conv3.weight" if encoder in BOTTLENECK_ARCHS else "conv2.weight"
    transposed = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, ConvTranspose2d)}
    rng = np.random.default_rng(int(seed))
    table = model.state_dict()
    out = OrderedDict()
    for key, value in table.items():
        shape = tuple(np.shape(value))
        prefix, name = key[: key.rindex(".") + 1], key.rsplit(".", 1)[1]
        if name == "num_batches_tracked":
            out[key] = np.array(0, dtype=np.int64)
        elif len(shape) == 4:
            if key == "encoder.conv1.weight" or ".downsample." in key:
                gain = 0.7
            elif key.startswith("encoder.layer") and key.endswith(block_last):
                gain = 0.35
            else:
                gain = 1.0
            fan_in = shape[0] if key in transposed else int(np.prod(shape[1:]))
            out[key] = (rng.standard_normal(shape) * (gain * np.sqrt(2.0 / fan_in))).astype(np.float32)
        elif prefix + "running_mean" not in table:  # a conv's bias
            out[key] = (rng.standard_normal(shape) * 0.01).astype(np.float32)
        elif name in ("weight", "running_var"):
            out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:  # batchnorm bias, running_mean
            out[key] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    return out
