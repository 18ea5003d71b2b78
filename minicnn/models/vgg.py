"""VGG-11/13/16/19, with and without batchnorm (Simonyan & Zisserman, 2014), as torchvision builds them.

    from minicnn.models import vgg16
    model = vgg16(weights="vgg16.safetensors").eval()  # or a .pth file, or a state dict
    logits = model(x)                   # x: float32 (N, 3, H, W), ImageNet-normalised, H, W >= 32
    fmap = model.features(x)            # the convolutional part alone (Keras's include_top=False)
    emb = model.embed(x)                # (N, 4096) penultimate features, what the last Linear reads
    model.classifier = nn.Sequential(*list(model.classifier)[:6], nn.Linear(4096, 10))  # a new head

The model is three children, named as torchvision's so converted weights drop straight in:
``features`` (a Sequential of 3x3 convs, each followed by an optional BatchNorm2d and a ReLU, with a
2x2 max pool closing each of the five stages), ``avgpool`` (AdaptiveAvgPool2d to 7x7, so any input of
at least 32x32 reaches the classifier with 512 * 7 * 7 features) and ``classifier`` (Linear 25088 ->
4096, ReLU, Dropout, Linear 4096 -> 4096, ReLU, Dropout, Linear 4096 -> num_classes).
``model.backward(dlogits)`` returns dL/dx and accumulates every parameter's gradient; ``features``
is a plain Sequential, so ``model.features(x)`` followed by ``model.features.backward(g)`` backpropagates
through the convolutional part alone (feature visualisation, style transfer, DeepDream).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..io.weights import VGG_ARCHS, VGG_CFGS, expected_vgg_shapes, infer_arch
from ..nn import init
from ..nn._utils import check_input
from ..nn.activation import ReLU
from ..nn.batchnorm import BatchNorm2d
from ..nn.conv import Conv2d
from ..nn.dropout import Dropout
from ..nn.linear import Linear
from ..nn.module import Module, Sequential, forward_pass
from ..nn.pooling import AdaptiveAvgPool2d, MaxPool2d
from ..random import get_rng

__all__ = ["VGG", "make_features", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn",
           "vgg19_bn", "vgg_from_state_dict", "seeded_state_dict", "VGG_CFGS", "VGG_STAGES"]

# what ``VGG.activations`` returns, in forward order
VGG_STAGES = ("features", "avgpool", "penultimate", "fc")


def make_features(cfg, batch_norm=False, width=64):
    """torchvision's ``make_layers``: for each number in ``cfg`` a 3x3 conv (padding 1) with that many
    output channels (scaled by ``width / 64``), then BatchNorm2d if ``batch_norm``, then ReLU; for each
    ``"M"`` a 2x2 max pool with stride 2. Returns the Sequential; its child indices are torchvision's."""
    layers, cin = [], 3
    for v in cfg:
        if v == "M":
            layers.append(MaxPool2d(2, stride=2))
            continue
        cout = int(v) * width // 64
        layers.append(Conv2d(cin, cout, 3, padding=1))
        if batch_norm:
            layers.append(BatchNorm2d(cout))
        layers.append(ReLU(inplace=True))
        cin = cout
    return Sequential(*layers)


class VGG(Module):
    """torchvision's VGG: ``classifier(flatten(avgpool(features(x))))``.

    ``VGG(cfg="vgg16", batch_norm=False, num_classes=1000, init_weights=True, dropout=0.5, width=64,
    hidden=4096)``. ``cfg`` is an architecture name (``vgg11`` .. ``vgg19``) or a list of channel
    counts and ``"M"`` (max pool). ``width`` scales every conv's channels by ``width / 64`` and
    ``hidden`` is the size of the two hidden Linear layers; only 64 and 4096 are torchvision's, smaller
    ones are for quick experiments and tests. ``init_weights`` applies torchvision's init, drawn from the
    library RNG (``minicnn.manual_seed``): convs Kaiming-normal (fan_out, ReLU gain) with zero bias,
    batchnorms gamma=1, beta=0, Linear weights N(0, 0.01^2) with zero bias.

    Shape: input (N, 3, H, W) with H, W >= 32 (five 2x2 pools); ``features`` gives
    (N, 8 * width, floor(H/32), floor(W/32)); the output is (N, num_classes).
    """

    def __init__(self, cfg="vgg16", batch_norm=False, num_classes=1000, init_weights=True, dropout=0.5,
                 width=64, hidden=4096, arch=None):
        super().__init__()
        if isinstance(cfg, str):
            if cfg not in VGG_CFGS:
                raise ValueError(f"VGG: unknown configuration {cfg!r}; choose one of {', '.join(VGG_CFGS)} or pass a list")
            name, cfg = cfg, VGG_CFGS[cfg]
        else:
            cfg = tuple(cfg)
            name = next((k for k, v in VGG_CFGS.items() if v == cfg), "vgg")
        if int(num_classes) < 1:
            raise ValueError(f"VGG: num_classes must be >= 1, got {num_classes!r}")
        if not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"VGG: dropout must be in [0, 1], got {dropout!r}")
        if int(width) < 1 or int(hidden) < 1:
            raise ValueError(f"VGG: width and hidden must be >= 1, got width={width!r}, hidden={hidden!r}")
        width, hidden = int(width), int(hidden)
        convs = [v for v in cfg if v != "M"]
        if not convs:
            raise ValueError(f"VGG: cfg has no convolution: {cfg!r}")
        if name != "vgg" and batch_norm:
            name += "_bn"
        if width != 64 or hidden != 4096:
            name += f"-width{width}-hidden{hidden}"
        self.arch = arch or name
        self.num_classes = int(num_classes)
        self.num_pools = sum(v == "M" for v in cfg)
        self.features = make_features(cfg, batch_norm, width)
        self.num_features = int(convs[-1]) * width // 64
        self.avgpool = AdaptiveAvgPool2d((7, 7))
        self.classifier = Sequential(
            Linear(self.num_features * 49, hidden), ReLU(inplace=True), Dropout(p=dropout),
            Linear(hidden, hidden), ReLU(inplace=True), Dropout(p=dropout),
            Linear(hidden, num_classes),
        )
        if init_weights:
            rng = get_rng()
            for m in self.modules():
                if isinstance(m, Conv2d):
                    init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=rng)
                    init.zeros_(m.bias)
                elif isinstance(m, BatchNorm2d):
                    init.ones_(m.weight)
                    init.zeros_(m.bias)
                elif isinstance(m, Linear):
                    init.normal_(m.weight, 0.0, 0.01, generator=rng)
                    init.zeros_(m.bias)

    def extra_repr(self):
        return f"arch={self.arch}, num_classes={self.num_classes}"

    def _short(self):
        return self.arch

    # the stage ``embed`` returns (``minicnn embed`` writes it by default)
    embedding_stage = "penultimate"

    def _check(self, x):
        check_input(self, x, 4, 1, 3, "RGB channels")
        side = 2 ** self.num_pools
        if x.shape[0] < 1 or min(x.shape[2:]) < side:
            raise ValueError(f"{self.arch}: input of shape {tuple(x.shape)} is too small: {self.num_pools} 2x2 max "
                             f"pools need H and W of at least {side} (and a batch of at least 1)")

    def forward(self, x):
        """Logits (N, num_classes); keeps the pooled shape for backward (the children keep the rest)."""
        x = self._prepare_input(x)
        self._check(x)
        p = self.avgpool(self.features(x))
        self._save(p.shape)
        return self.classifier(p.reshape(p.shape[0], -1))

    def forward_features(self, x):
        """The last feature map, ``features``' output (N, 8 * width, floor(H/32), floor(W/32))."""
        return self.features(x)

    def activations(self, x, upto="fc"):
        """Every stage's output in forward order, up to ``upto``: an OrderedDict with ``features``
        (the last feature map), ``avgpool`` (its 7x7 pooling, flattened to (N, 8 * width * 49)),
        ``penultimate`` (the input of the classifier's last layer: (N, hidden) after the second
        hidden ReLU and dropout, Keras's ``fc2``) and ``fc`` (the logits).

        When the classifier is not a Sequential, ``penultimate`` is the flattened pooling. After a
        pass that reached ``fc`` with gradients enabled, ``backward`` may follow.
        """
        if upto not in VGG_STAGES:
            raise ValueError(f"{self.arch}: unknown stage {upto!r}; stages are {', '.join(VGG_STAGES)}")
        self._move_to_backend()
        outs = OrderedDict()
        with forward_pass():  # one pass: every module run keeps its cache for one backward
            x = self._prepare_input(x)
            self._check(x)
            outs["features"] = h = self.features(x)
            if upto != "features":
                p = self.avgpool(h)
                outs["avgpool"] = h = p.reshape(p.shape[0], -1)
            if upto not in ("features", "avgpool"):
                head = list(self.classifier) if isinstance(self.classifier, Sequential) else []
                for m in head[:-1]:
                    h = m(h)
                outs["penultimate"] = h
                if upto == "fc":
                    outs["fc"] = head[-1](h) if head else self.classifier(h)
                    self._save(p.shape)  # what backward reads, as after forward
        return outs

    def embed(self, x):
        """The penultimate features (N, hidden): what the classifier's last layer reads, a common
        image embedding (Keras's ``fc2``); ``activations(x)["penultimate"]``."""
        return self.activations(x, "penultimate")["penultimate"]

    def backward(self, dy):
        """dL/dx from dL/dlogits; accumulates every trainable parameter's ``.grad``."""
        shape = self._saved()
        d = self.classifier.backward(dy).reshape(shape)
        return self.features.backward(self.avgpool.backward(d))

    def backward_params(self, dy) -> None:
        """Every trainable parameter's ``.grad`` from dL/dlogits, and no more: a frozen ``features``
        costs nothing and the first conv skips dL/dx. Returns None."""
        shape = self._saved()
        if not self.features.has_trainable():
            self.classifier.backward_params(dy)
            return None
        d = self.classifier.backward(dy).reshape(shape)
        self.features.backward_params(self.avgpool.backward(d))
        return None


def _build(arch, num_classes, weights, **kwargs):
    from .resnet import read_weights

    sd = source = None
    if weights is not None:
        source, sd = read_weights(weights)
        try:
            found = infer_arch(sd)
        except ValueError:
            found = arch  # the strict load below names what is wrong
        if found != arch:
            raise ValueError(f"{source}: these weights are {found}, not {arch}; build {found}(...) instead")
        if num_classes is None and "classifier.6.weight" in sd:
            num_classes = int(np.shape(sd["classifier.6.weight"])[0])
    model = VGG(arch.removesuffix("_bn"), batch_norm=arch.endswith("_bn"),
                num_classes=1000 if num_classes is None else num_classes, init_weights=weights is None, **kwargs)
    if sd is not None:
        try:
            model.load_state_dict(sd, strict=True)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
    return model


def _factory(arch):
    convs = sum(v != "M" for v in VGG_CFGS[arch.removesuffix("_bn")])

    def make(num_classes=None, weights=None, **kwargs):
        return _build(arch, num_classes, weights, **kwargs)

    bn = " with batchnorm after every conv" if arch.endswith("_bn") else ""
    make.__name__ = make.__qualname__ = arch
    make.__doc__ = (
        f"VGG with {convs} conv layers{bn} (torchvision's ``{arch}``; {convs + 3} weight layers).\n\n"
        "    ``weights``: a path (safetensors, or a PyTorch ``.pth`` read without torch) or a state dict with\n"
        "    torchvision's key names; loading is strict. ``num_classes`` defaults to the weights' classifier\n"
        "    size, else 1000. Other keyword arguments (``dropout``, ``width``, ``hidden``) go to :class:`VGG`.\n"
    )
    return make


vgg11, vgg13, vgg16, vgg19 = (_factory(a) for a in ("vgg11", "vgg13", "vgg16", "vgg19"))
vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn = (_factory(a) for a in ("vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"))


def vgg_from_state_dict(weights, num_classes=None):
    """The VGG whose architecture the weights describe (inferred from the keys), with them loaded."""
    from .resnet import read_weights

    source, sd = read_weights(weights)
    arch = infer_arch(sd)
    if arch not in VGG_ARCHS:
        raise ValueError(f"{source}: these weights are {arch}, not a VGG")
    return _build(arch, num_classes, sd)


def seeded_state_dict(arch="vgg16", seed=0, num_classes=1000, width=64, hidden=4096):
    """Deterministic weights for ``arch`` (``vgg11`` .. ``vgg19_bn``) generated with numpy alone
    (``numpy.random.default_rng(seed)``, drawn in float32), keys and order as torchvision's.

    Convolutions and the two hidden Linear layers: N(0, 2 / fan_in) (He), so activations keep their
    scale through the ReLUs; the last Linear: N(0, (2 / sqrt(in_features))^2), as ResNet's seeded fc.
    Biases N(0, 0.01^2). Batchnorm (``_bn``): gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1^2), running_mean
    ~ N(0, 0.1^2), running_var ~ U(0.5, 1.5), num_batches_tracked = 0. ``width`` and ``hidden``
    as :class:`VGG` (only 64 and 4096 are torchvision's). A full-size VGG-16 is about 550 MB of float32.
    """
    rng = np.random.default_rng(int(seed))
    shapes = expected_vgg_shapes(arch, num_classes, width, hidden)
    bn = {k[: -len("running_mean")] for k in shapes if k.endswith(".running_mean")}  # "features.1." ...
    out = OrderedDict()
    for key, shape in shapes.items():
        prefix, name = key[: key.rindex(".") + 1], key.rsplit(".", 1)[1]
        if key == "classifier.6.weight":
            out[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(2.0 / np.sqrt(shape[1]))
        elif len(shape) > 1:  # a conv or a hidden Linear
            out[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / np.prod(shape[1:])))
        elif prefix not in bn:  # a conv's or a Linear's bias
            out[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
        elif name in ("weight", "running_var"):
            out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:  # batchnorm bias, running_mean
            out[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
        if prefix in bn and name == "running_var":
            out[prefix + "num_batches_tracked"] = np.array(0, dtype=np.int64)
    return out
