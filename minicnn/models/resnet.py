"""ResNet-18/34 (BasicBlock) and ResNet-50/101/152 (Bottleneck) (He et al., 2015) with torchvision's
exact architecture (v1.5: a Bottleneck's stride sits on its 3x3 conv) and key names.

    from minicnn.models import resnet18
    model = resnet18(weights="resnet18.safetensors").eval()   # or a .pth file, or a state dict
    logits = model(x)                 # x: float32 (N, 3, H, W), ImageNet-normalised
    feats = model.forward_features(x) # (N, 512, H/32, W/32); 2048 channels for resnet50 and deeper
    emb = model.embed(x)              # (N, 512) (or 2048), the pooled features the classifier reads

Every layer keeps what its backward needs, so ``model.backward(dlogits)`` returns dL/dx and
accumulates every parameter's gradient, in training and in eval mode. ``backward_from(stage, grad)``
starts the backward pass at any named stage (``stem``, ``layer1``..``layer4``, ``avgpool``, ``fc``),
which is what Grad-CAM and gradient ascent on the input need.

``seeded_state_dict`` makes deterministic weights (numpy only) with non-trivial batchnorm
statistics; with them the shipped reference outputs in ``weights/reference/`` can be checked
offline (``minicnn verify``).
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from .. import ops
from ..nn._utils import check_input
from ..nn.activation import ReLU
from ..nn.batchnorm import BatchNorm2d
from ..nn.conv import Conv2d
from ..nn.linear import Linear
from ..nn.module import Module, Sequential, backward_pass, forward_pass
from ..nn.pooling import AdaptiveAvgPool2d, MaxPool2d
from ..random import get_rng
from ..io.weights import ARCHS, BOTTLENECK_ARCHS, expected_resnet_shapes, infer_arch

__all__ = [
    "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "ARCHS", "STAGES", "seeded_state_dict",
    "state_dict_shapes", "infer_arch", "resnet_from_state_dict",
]

# blocks per stage, as in the paper's Table 1

# the named stage outputs ``activations`` returns, in forward order
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")


def _kaiming_normal_fan_out(rng, shape, dtype=np.float32):
    """torchvision's ResNet init: N(0, 2 / fan_out), fan_out = out_channels * kh * kw."""
    fan_out = shape[0] * shape[2] * shape[3]
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_out)).astype(dtype)


def _residual_join(block, out, x):
    """relu(out + shortcut(x)) for a residual block (BasicBlock, Bottleneck), keeping the output for
    its backward; the shortcut is ``block.downsample(x)``, or x itself."""
    identity = block.downsample(x) if block.downsample is not None else x
    if identity.shape != out.shape:
        raise ValueError(
            f"{block._short()}: residual branch gives shape {tuple(out.shape)} but the shortcut gives "
            f"{tuple(identity.shape)}; a block that changes stride or width needs a downsample"
        )
    y = ops.add_relu_forward(out, identity)
    block._save(y)
    return y


def _join_grads(d_main, d_short):
    """dL/dx of a residual block: the main path's gradient plus the shortcut's, summed into
    ``d_main``. That is an array the main path's backward made in this call, or the block's own g
    when the path returns what it gets (then the sum is g + g, or g + the downsample's gradient,
    computed from g already, as it should be). numpy's ``+`` would take a new block-sized array
    from malloc at every step, outside the backend's pool: fresh pages, a fault each (docs/kernels.md,
    "Memory that stays mapped"). Gradients of different shapes or dtypes, or a read-only one,
    get ``+`` and its result, as before."""
    if d_main.shape != d_short.shape or d_main.dtype != d_short.dtype:
        return d_main + d_short
    try:
        d_main += d_short
    except ValueError:  # read-only
        return d_main + d_short
    return d_main


class BasicBlock(Module):
    """Two 3x3 convolutions with batchnorm, plus the shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + identity)``.

    ``identity`` is ``x`` itself, or ``downsample(x)`` (1x1 strided conv + batchnorm) where the
    block changes resolution or width. Children and their order match torchvision's BasicBlock,
    so ``state_dict()`` keys do too.
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        # torchvision calls this one ReLU twice, after bn1 and after the residual sum; here the sum and
        # its ReLU are one fused op (ops.add_relu_forward, one pass over the activations instead of
        # two), so the module serves the inner place only
        self.relu = ReLU(inplace=True)
        self.conv2 = Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def extra_repr(self):
        return f"{self.conv1.in_channels}, {self.conv2.out_channels}, stride={self.stride}"

    def forward(self, x):
        """The block's output; keeps it (and each child keeps its own cache) for backward."""
        x = self._prepare_input(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return _residual_join(self, out, x)

    def backward(self, dy):
        """dL/dx: the gradient splits at the residual join and the two paths' gradients add up."""
        y = self._saved()
        # the ReLU after the join routes dy to both summands unchanged where the sum was positive
        g = ops.relu_backward(dy, y)
        d_main = self.conv1.backward(self.bn1.backward(self.relu.backward(self.conv2.backward(self.bn2.backward(g)))))
        d_short = self.downsample.backward(g) if self.downsample is not None else g
        return _join_grads(d_main, d_short)


class Bottleneck(Module):
    """torchvision's Bottleneck (ResNet v1.5): ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + identity)``.

    conv1 is a 1x1 reducing ``inplanes`` to ``planes`` channels, conv2 a 3x3 that carries the
    block's stride (torchvision's placement; the original paper strides the first 1x1), conv3 a
    1x1 expanding to ``planes * 4``. ``identity`` is ``x`` or ``downsample(x)``. Children, their
    order and hence the ``state_dict()`` keys match torchvision's.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.conv3 = Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = BatchNorm2d(planes * self.expansion)
        # one ReLU module serves both inner places (two calls, two caches popped newest first);
        # the ReLU after the residual sum is fused into ops.add_relu_forward, as in BasicBlock
        self.relu = ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def extra_repr(self):
        return f"{self.conv1.in_channels}, {self.conv3.out_channels}, stride={self.stride}"

    def forward(self, x):
        """The block's output; keeps it (and each child keeps its own cache) for backward."""
        x = self._prepare_input(x)
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        out = self.bn3(self.conv3(h))
        return _residual_join(self, out, x)

    def backward(self, dy):
        """dL/dx: back through the three convs (the ReLU module pops its second call first), plus the shortcut."""
        y = self._saved()
        g = ops.relu_backward(dy, y)
        d = self.relu.backward(self.conv3.backward(self.bn3.backward(g)))
        d_main = self.conv1.backward(self.bn1.backward(self.relu.backward(self.conv2.backward(self.bn2.backward(d)))))
        d_short = self.downsample.backward(g) if self.downsample is not None else g
        return _join_grads(d_main, d_short)


class ResNet(Module):
    """torchvision's ResNet built from BasicBlocks or Bottlenecks: stem (7x7/2 conv, bn, relu, 3x3/2 maxpool),
    layer1..layer4 (64, 128, 256, 512 planes, times ``block.expansion`` (1 or 4) output channels;
    strides 1, 2, 2, 2), global average pool, fc.

    ``ResNet(layers=(2, 2, 2, 2), num_classes=1000, zero_init_residual=False, arch=None, width=64,
    block=BasicBlock)``. ``width`` is the first stage's planes (the stages use width, 2, 4 and 8
    times it); only 64 is torchvision's architecture, narrower nets are for quick experiments and
    gradient checks. ``block=Bottleneck`` with layers (3, 4, 6, 3) is ResNet-50.
    Convolutions start Kaiming-normal (fan_out, ReLU gain), batchnorms at gamma=1, beta=0, and the
    fc layer as ``nn.Linear``, all drawn from the library RNG (``minicnn.manual_seed``).

    Input: (N, 3, H, W) of any real dtype (cast to the model's dtype), any H, W >= 1 in eval mode;
    training mode also needs more than one value per channel at layer4 (N * ceil(H/32) * ceil(W/32) >= 2).
    """

    def __init__(self, layers=(2, 2, 2, 2), num_classes=1000, zero_init_residual=False, arch=None, width=64,
                 block=None):
        super().__init__()
        block = BasicBlock if block is None else block
        if block not in (BasicBlock, Bottleneck):
            raise ValueError(f"ResNet: block must be BasicBlock or Bottleneck, got {block!r}")
        self.block = block
        layers = tuple(int(n) for n in layers)
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"ResNet: layers must be four positive block counts, got {layers!r}")
        if int(num_classes) < 1:
            raise ValueError(f"ResNet: num_classes must be >= 1, got {num_classes!r}")
        width = int(width)
        if width < 1:
            raise ValueError(f"ResNet: width must be >= 1, got {width!r}")
        kind = BOTTLENECK_ARCHS if block is Bottleneck else tuple(a for a in ARCHS if a not in BOTTLENECK_ARCHS)
        standard = next((k for k in kind if ARCHS[k] == layers), f"resnet{layers}" + ("-bottleneck" if block is Bottleneck else ""))
        self.arch = arch or (standard if width == 64 else f"{standard}-width{width}")
        self.num_classes = int(num_classes)
        self.num_features = 8 * width * block.expansion
        self.inplanes = width
        self.conv1 = Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = BatchNorm2d(width)
        self.relu = ReLU(inplace=True)
        self.maxpool = MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0], 1)
        self.layer2 = self._make_layer(2 * width, layers[1], 2)
        self.layer3 = self._make_layer(4 * width, layers[2], 2)
        self.layer4 = self._make_layer(8 * width, layers[3], 2)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.fc = Linear(self.num_features, num_classes)
        rng = get_rng()
        for m in self.modules():
            if isinstance(m, Conv2d):
                m.weight.data = _kaiming_normal_fan_out(rng, m.weight.shape)
        if zero_init_residual:
            # each block then starts as the identity, which helps very deep nets train (Goyal et al.)
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    m.bn3.weight.data[...] = 0
                elif isinstance(m, BasicBlock):
                    m.bn2.weight.data[...] = 0

    def _make_layer(self, planes, blocks, stride):
        block = self.block
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = Sequential(
                Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                BatchNorm2d(planes * block.expansion),
            )
        mods = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return Sequential(*mods)

    def extra_repr(self):
        return f"arch={self.arch}, num_classes={self.num_classes}"

    def _short(self):
        return self.arch

    # -- input checks --------------------------------------------------------------------------
    def _check(self, x):
        check_input(self, x, 4, 1, 3, "RGB channels")
        n, _, h, w = x.shape
        if min(n, h, w) < 1:
            raise ValueError(f"{self.arch}: input of shape {tuple(x.shape)} is empty")
        if self.training:
            # every stride-2 step maps a side of length L to ceil(L / 2); five of them reach layer4
            h4, w4 = -(-h // 32), -(-w // 32)
            if n * h4 * w4 < 2:
                raise ValueError(
                    f"{self.arch}: in training mode batchnorm needs more than one value per channel, but input of "
                    f"shape {tuple(x.shape)} reaches layer4 as ({n}, {self.num_features}, {h4}, {w4}); use a batch of at least 2, "
                    f"an input larger than 32x32, or model.eval()"
                )

    # -- forward -------------------------------------------------------------------------------
    def _backward_stage(self, name, dy, pooled_shape, input_grad=True):
        """dL/d(stage input) from dL/d(stage output); with ``input_grad=False`` only the stage's
        parameter gradients (see :meth:`backward_params`), returning None."""
        if name == "stem":
            d = self.bn1.backward(self.relu.backward(self.maxpool.backward(dy)))
            return self.conv1.backward(d) if input_grad else self.conv1.backward_params(d)
        if name == "avgpool":
            return self.avgpool.backward(dy.reshape(pooled_shape)) if input_grad else None
        stage = getattr(self, name)
        return stage.backward(dy) if input_grad else stage.backward_params(dy)

    def _stage_trainable(self, name) -> bool:
        if name == "stem":
            return self.conv1.has_trainable() or self.bn1.has_trainable()
        if name == "avgpool":
            return False
        return getattr(self, name).has_trainable()

    def _run(self, x, upto="fc", record=False):
        """The stages up to ``upto``; pushes (upto, pooled shape), the model's own cache for
        backward (a ResNet called twice in one pass keeps one per call, like any layer)."""
        if upto not in STAGES:
            raise ValueError(f"{self.arch}: unknown stage {upto!r}; stages are {', '.join(STAGES)}")
        x = self._prepare_input(x)
        self._check(x)
        outs = OrderedDict()
        pooled_shape = None
        for name in STAGES:
            if name == "stem":
                x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            elif name == "avgpool":
                y = self.avgpool(x)
                pooled_shape = y.shape
                x = y.reshape(y.shape[0], -1)
            else:
                x = getattr(self, name)(x)
            if record:
                outs[name] = x
            if name == upto:
                break
        self._save((upto, pooled_shape))
        return x, outs

    def _entry(self, x, upto, record=False):
        """A forward pass that does not come through ``__call__`` (``forward_features``, ``embed``,
        ``activations``): one pass, so every module it runs keeps its cache for one backward."""
        self._move_to_backend()
        with forward_pass():
            return self._run(x, upto, record)

    def forward(self, x):
        """Logits (N, num_classes)."""
        return self._run(x, "fc")[0]

    def forward_features(self, x):
        """The last feature map, layer4's output: (N, num_features, ceil(H/32), ceil(W/32)); num_features is
        512 for ResNet-18/34, 2048 for ResNet-50 and deeper."""
        return self._entry(x, "layer4")[0]

    def embed(self, x):
        """Globally average-pooled features (N, num_features): what the classifier reads, a common image embedding."""
        return self._entry(x, "avgpool")[0]

    def activations(self, x, upto="fc"):
        """Every stage's output in forward order, up to ``upto``: an OrderedDict with
        ``stem`` (after the maxpool), ``layer1``..``layer4``, ``avgpool`` (N, 512) and ``fc`` (logits).

        With gradients enabled, ``backward_from(stage, grad)`` may then start from any returned stage.
        """
        return self._entry(x, upto, record=True)[1]

    # -- backward ------------------------------------------------------------------------------
    def backward(self, dy):
        """dL/dx from dL/dlogits; accumulates every trainable parameter's ``.grad``."""
        return self.backward_from("fc", dy)

    def backward_params(self, dy) -> None:
        """Accumulate every trainable parameter's ``.grad`` from dL/dlogits, and compute no more:
        backward stops in the earliest stage that holds a trainable parameter, and that stage's
        first layer skips its input gradient. Training from images thus skips the stem's dL/dx
        (as PyTorch does for an input that does not require grad), and a frozen backbone under a
        trainable head costs only the head's backward. Returns None (``backward`` returns dL/dx).
        """
        _, pooled_shape = self._pop_forward("fc")
        first = next((i for i, stage in enumerate(STAGES) if self._stage_trainable(stage)), None)
        if first is None:
            return None
        for stage in reversed(STAGES[first + 1:]):
            dy = self._backward_stage(stage, dy, pooled_shape)
        self._backward_stage(STAGES[first], dy, pooled_shape, input_grad=False)
        return None

    def _pop_forward(self, name, to=None):
        """Check that a backward from stage ``name`` (down to ``to``) fits the newest forward call,
        then pop that call's cache: (index of ``name``, pooled shape). Nothing is popped when the
        check fails."""
        if name not in STAGES:
            raise ValueError(f"{self.arch}: unknown stage {name!r}; stages are {', '.join(STAGES)}")
        hi = STAGES.index(name)
        if to is not None:
            if to not in STAGES:
                raise ValueError(f"{self.arch}: unknown stage {to!r}; stages are {', '.join(STAGES)}")
            if STAGES.index(to) > hi:
                raise ValueError(f"{self.arch}: stage {to!r} comes after {name!r}; backward runs toward the input")
        if not self._has_saved():
            raise RuntimeError(
                f"{self.arch}: backward called before a forward pass with gradients enabled (or more backward "
                "calls than forward calls)"
            )
        reached = self._saved_stack[-1][1][0]
        if hi > STAGES.index(reached):
            raise RuntimeError(
                f"{self.arch}: the last forward pass stopped at {reached!r}, so there is nothing to "
                f"backpropagate from {name!r}"
            )
        _, pooled_shape = self._saved()
        return hi, pooled_shape

    def backward_from(self, name, grad, to=None):
        """Backpropagate ``grad`` (dL/d output of stage ``name``) through the stages before it.

        Returns dL/dx for the network input, or, when ``to`` names an earlier stage, dL/d that
        stage's output (Grad-CAM takes ``to="layer4"``). Parameter gradients of every stage passed
        through accumulate into ``.grad``. The last forward pass (``forward``, ``forward_features``,
        ``embed`` or ``activations``) must have reached ``name`` with gradients enabled.
        """
        with backward_pass():  # one backward: every cache it pops must come from one forward pass
            hi, pooled_shape = self._pop_forward(name, to)
            lo = -1 if to is None else STAGES.index(to)
            for stage in reversed(STAGES[lo + 1:hi + 1]):
                grad = self._backward_stage(stage, grad, pooled_shape)
        return grad


# -- weights --------------------------------------------------------------------------------------
def state_dict_shapes(arch="resnet18", num_classes=1000):
    """Every ``state_dict`` key of ``arch`` with its shape, in torchvision's order (no model is built):
    the converter's table plus each batchnorm's ``num_batches_tracked``."""
    out = OrderedDict()
    for key, shape in expected_resnet_shapes(arch, num_classes).items():
        out[key] = shape
        if key.endswith(".running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = ()
    return out


# gains on the He (fan_in) standard deviation of each seeded convolution; chosen so that, with the
# seeded batchnorm statistics below, every stage's activations stay O(1) on natural and on random
# input (the last conv of a block is damped so the residual sums do not grow with depth)
_SEED_GAIN = {"conv1": 0.7, "block.conv1": 1.0, "block.conv2": 0.35, "downsample": 0.7}


def seeded_state_dict(arch="resnet18", seed=0, num_classes=1000):
    """Deterministic weights for ``arch`` generated with numpy alone (``numpy.random.default_rng(seed)``).

    Convolutions: N(0, gain^2 * 2 / fan_in), gain 0.7 for the stem and the downsample convs, 0.35 for
    a block's last conv (conv2 of a BasicBlock, conv3 of a Bottleneck), 1 for its others (so stage
    outputs keep a standard deviation near 1 instead of growing with every residual sum). Batchnorm:
    gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1), running_mean ~ N(0, 0.1), running_var ~ U(0.5, 1.5),
    num_batches_tracked = 0. fc: weight N(0, (2/sqrt(in_features))^2), bias N(0, 0.01^2). Arrays are float32 (num_batches_tracked int64), keys and
    order as torchvision's. The numbers depend only on (arch, seed, num_classes), so a reference
    computed once with PyTorch from these weights checks any machine's forward pass offline.
    """
    rng = np.random.default_rng(int(seed))
    last = "conv3.weight" if arch in BOTTLENECK_ARCHS else "conv2.weight"
    out = OrderedDict()
    for key, shape in state_dict_shapes(arch, num_classes).items():
        name = key.rsplit(".", 1)[1]
        if name == "num_batches_tracked":
            out[key] = np.array(0, dtype=np.int64)
        elif key == "fc.weight":
            out[key] = (rng.standard_normal(shape) * (2.0 / math.sqrt(shape[1]))).astype(np.float32)
        elif key == "fc.bias":
            out[key] = (rng.standard_normal(shape) * 0.01).astype(np.float32)
        elif len(shape) == 4:
            if key == "conv1.weight":
                gain = _SEED_GAIN["conv1"]
            elif ".downsample." in key:
                gain = _SEED_GAIN["downsample"]
            elif key.endswith(last):
                gain = _SEED_GAIN["block.conv2"]
            else:
                gain = _SEED_GAIN["block.conv1"]
            fan_in = shape[1] * shape[2] * shape[3]
            out[key] = (rng.standard_normal(shape) * (gain * math.sqrt(2.0 / fan_in))).astype(np.float32)
        elif name == "weight":
            out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif name == "bias":
            out[key] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        elif name == "running_mean":
            out[key] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        elif name == "running_var":
            out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:  # pragma: no cover - state_dict_shapes names nothing else
            raise AssertionError(key)
    return out


def read_weights(weights):
    """``(source, state_dict)`` from a path (anything ``minicnn.io.weights.read_state_dict`` reads:
    source is the path) or a mapping (returned as it is, source ``"state dict"``); what every model
    factory and ``minicnn classify``/``verify`` use to read ``weights=``."""
    if isinstance(weights, (str, os.PathLike)):
        from ..io.weights import read_state_dict

        return os.fspath(weights), read_state_dict(weights)
    if isinstance(weights, Mapping):
        return "state dict", weights
    raise TypeError(f"weights must be a path or a state dict (a mapping of name -> array), got {type(weights).__name__}")


PRETRAINED_NAMES = ("DEFAULT", "IMAGENET1K_V1", "IMAGENET1K_V2")  # as minicnn.io.checks.PRETRAINED_NAMES


def _build(arch, num_classes, weights, pretrained=None):
    if pretrained is not None or (isinstance(weights, str) and weights.upper() in PRETRAINED_NAMES):
        # torchvision's spellings of "the ImageNet weights": the file `minicnn weights fetch` caches
        from ..io.checks import named_weights

        if pretrained is not None and weights is not None:
            raise ValueError(f"{arch}: give weights= or pretrained=, not both")
        if pretrained is False:
            return _build(arch, num_classes, None)
        weights = named_weights(arch, weights, pretrained)
    source, sd = (None, None) if weights is None else read_weights(weights)
    return _build_from(arch, num_classes, source, sd)


def _describe(arch):
    if arch not in ARCHS:
        return f"{arch} (not a ResNet)"
    kind = "Bottleneck blocks" if arch in BOTTLENECK_ARCHS else "blocks"
    return f"{arch} ({kind} per stage {ARCHS[arch]})"


def _build_from(arch, num_classes, source, sd):
    if num_classes is None:
        num_classes = int(np.shape(sd["fc.weight"])[0]) if sd is not None and "fc.weight" in sd else 1000
    if sd is not None:
        try:
            found = infer_arch(sd)
        except ValueError:
            found = arch  # let the key-by-key comparison below say what is wrong
        if found != arch:
            raise ValueError(f"{source}: these weights are {_describe(found)}, not {arch} {_describe(arch)[len(arch) + 1:]}; "
                             f"build {found}(...)" + (" or use resnet_from_state_dict" if found in ARCHS else ""))
    model = ResNet(ARCHS[arch], num_classes=num_classes, arch=arch,
                   block=Bottleneck if arch in BOTTLENECK_ARCHS else BasicBlock)
    if sd is not None:
        try:
            model.load_state_dict(sd, strict=True)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
    return model


def resnet18(num_classes=None, weights=None, pretrained=None):
    """ResNet-18 (blocks per stage 2, 2, 2, 2; 11.7M parameters with 1000 classes).

    ``weights``: a path (safetensors, or a PyTorch ``.pth`` checkpoint read without torch) or a
    state dict with torchvision's key names; loading is strict. ``weights="DEFAULT"`` (or
    ``"IMAGENET1K_V1"``, or the old ``pretrained=True``) loads the ImageNet weights that
    ``minicnn weights fetch resnet18`` cached; minicnn ships none, and the error says how to get them.
    ``num_classes`` defaults to the weights' fc size, else 1000.
    """
    return _build("resnet18", num_classes, weights, pretrained)


def resnet34(num_classes=None, weights=None, pretrained=None):
    """ResNet-34 (blocks per stage 3, 4, 6, 3; 21.8M parameters with 1000 classes). Arguments as ``resnet18``."""
    return _build("resnet34", num_classes, weights, pretrained)


def resnet50(num_classes=None, weights=None):
    """ResNet-50 (Bottleneck blocks per stage 3, 4, 6, 3; 25.6M parameters with 1000 classes; stride on
    the 3x3 conv as torchvision's v1.5). Features have 2048 channels. Arguments as ``resnet18``."""
    return _build("resnet50", num_classes, weights)


def resnet101(num_classes=None, weights=None):
    """ResNet-101 (Bottleneck blocks per stage 3, 4, 23, 3; 44.5M parameters). Arguments as ``resnet18``."""
    return _build("resnet101", num_classes, weights)


def resnet152(num_classes=None, weights=None):
    """ResNet-152 (Bottleneck blocks per stage 3, 8, 36, 3; 60.2M parameters). Arguments as ``resnet18``."""
    return _build("resnet152", num_classes, weights)


def resnet_from_state_dict(weights, num_classes=None):
    """The ResNet whose architecture the weights describe (18, 34, 50, 101 or 152), with those weights loaded.

    ``weights`` is a path or a state dict, as for ``resnet18``.
    """
    source, sd = read_weights(weights)
    return _build_from(infer_arch(sd), num_classes, source, sd)
