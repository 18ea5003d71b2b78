"""Weight files of any common origin, read as torchvision-named state dicts, and the converter.

``read_state_dict(path)`` auto-detects the container (PyTorch zip or legacy ``.pth``, safetensors)
and the naming: torchvision and timm use the same ResNet names (``layer1.0.conv1.weight``); the
Hugging Face ``microsoft/resnet-18`` (and ``-50``) checkpoints use their own
(``resnet.encoder.stages.0.layers.0.layer.0.convolution.weight``), which we rename to torchvision's;
files written by ``convert`` or ``minicnn.save`` already carry torchvision names.

``convert(src, dst)`` turns any of these into our format: a safetensors file of float32 tensors in
torchvision order, ``num_batches_tracked`` dropped, checked key by key and shape by shape against
the architecture's table (:func:`expected_shapes`: ResNet-18..152, VGG-11..19 with or without
batchnorm), with provenance in the metadata.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import WeightFormatError

ARCHS = {
    # name -> blocks per stage (torchvision's resnet18 ... resnet152)
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
# ResNets built from Bottleneck blocks (1x1, 3x3, 1x1 convs, expansion 4); the others use BasicBlocks
BOTTLENECK_ARCHS = ("resnet50", "resnet101", "resnet152")
# torchvision's VGG configurations: output channels of each 3x3 conv, "M" for a 2x2 max pool
VGG_CFGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
VGG_ARCHS = tuple(VGG_CFGS) + tuple(f"{a}_bn" for a in VGG_CFGS)
ALL_ARCHS = tuple(ARCHS) + VGG_ARCHS
_STAGE_WIDTHS = (64, 128, 256, 512)
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def resnet_expansion(arch: str) -> int:
    """Output channels of a block per ``planes``: 4 for Bottleneck ResNets (50, 101, 152), else 1."""
    return 4 if arch in BOTTLENECK_ARCHS else 1


def classifier_key(arch: str) -> str:
    """The key of the last classifier layer's weight: ``fc.weight`` (ResNet), ``classifier.6.weight`` (VGG)."""
    return "classifier.6.weight" if arch in VGG_ARCHS else "fc.weight"


def weights_home() -> Path:
    """Where downloaded and converted weights live: ``$MINICNN_HOME``, else ``$XDG_CACHE_HOME/minicnn``,
    else ``~/.cache/minicnn``."""
    env = os.environ.get("MINICNN_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "minicnn"


def _check_arch(arch: str, archs=ALL_ARCHS) -> str:
    if arch not in archs:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(archs)}")
    return arch


def _check_classes(num_classes):
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def expected_shapes(arch: str = "resnet18", num_classes: int = 1000) -> "OrderedDict[str, tuple]":
    """Every key of torchvision's ``arch`` state dict (ResNet or VGG, less ``num_batches_tracked``)
    with its shape, in torchvision's order."""
    if _check_arch(arch) in VGG_ARCHS:
        return expected_vgg_shapes(arch, num_classes)
    return expected_resnet_shapes(arch, num_classes)


def expected_vgg_shapes(arch: str = "vgg16", num_classes: int = 1000, width: int = 64,
                        hidden: int = 4096) -> "OrderedDict[str, tuple]":
    """torchvision's VGG keys and shapes: ``features.<i>`` (each conv, then its batchnorm for the
    ``_bn`` variants, then ReLU; 2x2 max pools between stages), ``classifier.0/3/6`` (Linear
    layers 512*7*7 -> 4096 -> 4096 -> num_classes). ``width`` and ``hidden`` scale the conv
    channels (width / 64) and the hidden layers; only 64 and 4096 are torchvision's."""
    _check_arch(arch, VGG_ARCHS)
    num_classes = _check_classes(num_classes)
    bn = arch.endswith("_bn")
    shapes: OrderedDict = OrderedDict()
    i, cin = 0, 3
    for v in VGG_CFGS[arch.removesuffix("_bn")]:
        if v == "M":
            i += 1
            continue
        cout = v * width // 64
        shapes[f"features.{i}.weight"] = (cout, cin, 3, 3)
        shapes[f"features.{i}.bias"] = (cout,)
        if bn:
            for k in _BN_KEYS:
                shapes[f"features.{i + 1}.{k}"] = (cout,)
        i += 3 if bn else 2
        cin = cout
    for j, (fin, fout) in zip((0, 3, 6), ((cin * 49, hidden), (hidden, hidden), (hidden, num_classes))):
        shapes[f"classifier.{j}.weight"] = (fout, fin)
        shapes[f"classifier.{j}.bias"] = (fout,)
    return shapes


def expected_resnet_shapes(arch: str = "resnet18", num_classes: int = 1000) -> "OrderedDict[str, tuple]":
    """Every key of torchvision's ``arch`` state dict (less ``num_batches_tracked``) with its shape,
    in torchvision's order."""
    blocks = ARCHS[_check_arch(arch, tuple(ARCHS))]
    num_classes = _check_classes(num_classes)
    e = resnet_expansion(arch)
    shapes: OrderedDict = OrderedDict()

    def _bn(prefix, c):
        for k in _BN_KEYS:
            shapes[f"{prefix}.{k}"] = (c,)

    shapes["conv1.weight"] = (64, 3, 7, 7)
    _bn("bn1", 64)
    cin = 64
    for stage, (n, width) in enumerate(zip(blocks, _STAGE_WIDTHS), start=1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            block_in = cin if b == 0 else width * e
            if e == 1:
                shapes[f"{p}.conv1.weight"] = (width, block_in, 3, 3)
                _bn(f"{p}.bn1", width)
                shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
                _bn(f"{p}.bn2", width)
            else:  # Bottleneck: 1x1 reduce, 3x3 (carries the stride, torchvision's v1.5), 1x1 expand
                shapes[f"{p}.conv1.weight"] = (width, block_in, 1, 1)
                _bn(f"{p}.bn1", width)
                shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
                _bn(f"{p}.bn2", width)
                shapes[f"{p}.conv3.weight"] = (width * e, width, 1, 1)
                _bn(f"{p}.bn3", width * e)
            # torchvision adds a 1x1 projection where the block changes stride or width
            if b == 0 and (stage > 1 or block_in != width * e):
                shapes[f"{p}.downsample.0.weight"] = (width * e, block_in, 1, 1)
                _bn(f"{p}.downsample.1", width * e)
        cin = width * e
    shapes["fc.weight"] = (int(num_classes), 512 * e)
    shapes["fc.bias"] = (int(num_classes),)
    return shapes


def _infer_vgg(state_dict) -> str:
    # a batchnorm's weight sits under features.<i> too; it is the one with running statistics
    convs = sorted({int(m.group(1)) for k in state_dict
                    if (m := re.match(r"features\.(\d+)\.weight$", k)) and f"features.{m.group(1)}.running_mean" not in state_dict})
    bn = any(re.match(r"features\.\d+\.running_mean$", k) for k in state_dict)
    by_count = {sum(v != "M" for v in cfg): name for name, cfg in VGG_CFGS.items()}
    if len(convs) not in by_count:
        raise WeightFormatError(f"cannot infer the architecture: {len(convs)} convolutions under features.* match "
                                "no VGG (vgg11/13/16/19 have 8, 10, 13, 16); pass arch= (minicnn convert --arch)")
    return by_count[len(convs)] + ("_bn" if bn else "")


def infer_arch(state_dict) -> str:
    """The architecture torchvision-named keys describe: ``resnet18``/``34`` (BasicBlocks) or
    ``resnet50``/``101``/``152`` (Bottleneck blocks, which have a ``conv3``) from the blocks per
    stage; ``vgg11``..``vgg19`` (``_bn`` with batchnorm) from the convolutions under ``features``."""
    if any(k.startswith("features.") for k in state_dict) and any(k.startswith("classifier.") for k in state_dict):
        return _infer_vgg(state_dict)
    counts = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(max(idx) + 1 if idx else 0)
    counts = tuple(counts)
    bottleneck = any(re.match(r"layer\d\.\d+\.conv3\.", k) for k in state_dict)
    kind = BOTTLENECK_ARCHS if bottleneck else tuple(a for a in ARCHS if a not in BOTTLENECK_ARCHS)
    for name in kind:
        if counts == ARCHS[name]:
            return name
    what = "bottleneck blocks (a conv3 in each block)" if bottleneck else "basic blocks (no conv3)"
    raise WeightFormatError(f"cannot infer the architecture: blocks per stage {counts} of {what} match none of " + ", ".join(f"{a} {ARCHS[a]}" for a in kind)
                            + "; pass arch= (minicnn convert --arch) to choose one")


def num_classes_of(state_dict, arch: str, default: int = 1000) -> int:
    """Rows of the classifier's last weight (``fc.weight`` or ``classifier.6.weight``), else ``default``."""
    fc = state_dict.get(classifier_key(arch))
    return int(np.shape(fc)[0]) if fc is not None and np.ndim(fc) == 2 and np.shape(fc)[0] > 0 else default


def check_state_dict(state_dict, arch: str, num_classes: int | None = None, where: str = "weights") -> None:
    """Raise ``WeightFormatError`` naming every missing, unexpected and mis-shaped key (with both
    shapes) of ``state_dict`` against torchvision's ``arch``. ``num_batches_tracked`` is ignored;
    ``num_classes`` defaults to the rows of ``fc.weight`` (VGG: ``classifier.6.weight``)."""
    if num_classes is None:
        num_classes = num_classes_of(state_dict, arch)
    expected = expected_shapes(arch, num_classes)
    given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mis = [f"{k} (file {tuple(np.shape(given[k]))} vs {arch} {expected[k]})"
           for k in expected if k in given and tuple(np.shape(given[k])) != expected[k]]
    wrong_type = [f"{k} ({np.asarray(given[k]).dtype})" for k in expected
                  if k in given and np.asarray(given[k]).dtype.kind != "f"]
    from .checks import summarize

    if given and len(missing) == len(expected):
        raise WeightFormatError(f"{where}: none of the {len(expected)} keys of {arch} are in the file; its "
                                f"{len(given)} tensors are named like {summarize(list(given), 3)} (another model's "
                                "weights?)")
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {summarize(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {summarize(unexpected)}")
    if mis:
        problems.append(f"{len(mis)} mis-shaped: {summarize(mis, 4, sep='; ')}")
    if wrong_type:
        problems.append(f"{len(wrong_type)} not floating point: {summarize(wrong_type)}")
    if problems:
        raise WeightFormatError(f"{where}: keys do not match {arch}: " + " | ".join(problems))


# -- naming ---------------------------------------------------------------------------------------

_HF_RULES = [
    (re.compile(r"^(?:resnet\.)?embedder\.embedder\.convolution\.weight$"), lambda m: "conv1.weight"),
    (re.compile(r"^(?:resnet\.)?embedder\.embedder\.normalization\.(\w+)$"), lambda m: f"bn1.{m[1]}"),
    (re.compile(r"^(?:resnet\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.weight"),
    (re.compile(r"^(?:resnet\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.(\w+)$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.{m[3]}"),
    (re.compile(r"^(?:resnet\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.weight$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.weight"),
    (re.compile(r"^(?:resnet\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.(\w+)$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.{m[4]}"),
    (re.compile(r"^classifier\.1\.(weight|bias)$"), lambda m: f"fc.{m[1]}"),
]
_HF_MARK = re.compile(r"^(?:resnet\.)?(?:embedder\.embedder|encoder\.stages)\.")


def is_huggingface_naming(keys) -> bool:
    """True if the keys follow Hugging Face's ``ResNetForImageClassification``/``ResNetModel`` names."""
    return any(_HF_MARK.match(k) for k in keys)


def huggingface_to_torchvision(state_dict) -> "OrderedDict[str, np.ndarray]":
    """Rename Hugging Face ResNet keys to torchvision's (``resnet.encoder.stages.1.layers.0.shortcut.
    convolution.weight`` -> ``layer2.0.downsample.0.weight``, ``classifier.1.bias`` -> ``fc.bias``, ...).

    Keys that match no rule keep their name, so the shape check reports them as unexpected.
    """
    out: OrderedDict = OrderedDict()
    for k, v in state_dict.items():
        new = k
        for pattern, rename in _HF_RULES:
            m = pattern.match(k)
            if m:
                new = rename(m)
                break
        if new in out:
            raise WeightFormatError(f"keys {k!r} and another both map to {new!r}")
        out[new] = v
    return out


# -- reading ----------------------------------------------------------------------------------------

_PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")


def detect_format(path) -> str:
    """The container of the file at ``path``: ``"pth-zip"``, ``"pth-legacy"`` or ``"safetensors"``.

    Decided from the content; the suffix only chooses whose error message a file of neither
    kind gets.
    """
    from . import pth

    where = os.fspath(path)
    if os.path.isdir(where):
        raise WeightFormatError(f"{where}: is a directory, not a weight file")
    if os.path.getsize(where) == 0:
        raise WeightFormatError(f"{where}: file is empty")
    with open(where, "rb") as f:
        head = f.read(9)
    size = os.path.getsize(where)
    # safetensors first: its 8-byte header length can begin 0x80 0x02..0x05, which is also how a
    # pickle begins (a 896-byte header is 80 03 00 ...); a '{' at byte 8 and a length that fits
    # the file tell them apart
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"
    kind = pth.detect(where)
    if kind:
        return kind
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if where.lower().endswith(_PTH_SUFFIXES):
        raise WeightFormatError(f"{where}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    if where.lower().endswith(".safetensors"):
        return "safetensors"  # let the reader name what is wrong with it
    raise WeightFormatError(f"{where}: unrecognised weight format (expected a PyTorch .pth or a .safetensors file)")


def read_weights(path) -> tuple["OrderedDict[str, np.ndarray]", dict]:
    """Read any supported weight file: ``(state_dict, info)`` with torchvision names.

    ``info`` has ``container`` (see :func:`detect_format`), ``naming`` (``"torchvision"``,
    ``"huggingface"`` or ``"minicnn"``) and ``metadata`` (the safetensors metadata, else empty).
    """
    from . import pth, safetensors
    from .checks import require_weights_file

    where = require_weights_file(path)
    container = detect_format(where)
    metadata: dict = {}
    if container == "safetensors":
        tensors, metadata = safetensors.load(where)
        sd = pth.extract_state_dict(tensors, where)
    else:
        sd = pth.load_pth(where)
    if metadata.get("format") == "minicnn":
        naming = "minicnn"
    elif is_huggingface_naming(sd):
        naming = "huggingface"
        sd = huggingface_to_torchvision(sd)
    else:
        naming = "torchvision"
    return sd, {"container": container, "naming": naming, "metadata": metadata}


def read_state_dict(path) -> "OrderedDict[str, np.ndarray]":
    """The state dict in ``path`` (``.pth`` zip or legacy, safetensors; torchvision, timm, Hugging Face
    or our own naming) as ``{torchvision name: numpy array}``, in file order.

    Arrays keep their stored dtype (bfloat16 widens to float32); nothing is dropped or checked
    (use :func:`convert` or :func:`check_state_dict` for that).
    """
    return read_weights(path)[0]


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def convert(src, dst, arch: str | None = None) -> dict:
    """Convert the weight file ``src`` into our safetensors file ``dst``; returns the metadata written.

    The architecture (``resnet18`` .. ``resnet152``, ``vgg11`` .. ``vgg19_bn``) is inferred from the
    keys unless given. Every key and shape is checked against :func:`expected_shapes`; on any problem nothing is written.
    Tensors are stored as float32 in torchvision order, without ``num_batches_tracked``; metadata
    records ``format``, ``source`` (file name), ``source_format``, ``source_naming``,
    ``architecture``, ``num_classes`` and the source's ``sha256``.
    """
    from . import safetensors

    src, dst = os.fspath(src), os.fspath(dst)
    if arch is not None:
        _check_arch(arch)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"{src}: no such file")
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise ValueError(f"{dst}: output would overwrite the input")
    sd, info = read_weights(src)
    sd = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    if arch is None:
        try:
            arch = infer_arch(sd)
        except WeightFormatError as e:
            raise WeightFormatError(f"{src}: {e}") from None
    num_classes = num_classes_of(sd, arch)
    check_state_dict(sd, arch, num_classes, where=src)
    out = OrderedDict((k, np.asarray(sd[k], dtype=np.float32, order="C"))
                      for k in expected_shapes(arch, num_classes))
    metadata = {
        "format": "minicnn",
        "source": os.path.basename(src),
        "source_format": info["container"],
        "source_naming": info["naming"],
        "architecture": arch,
        "num_classes": str(num_classes),
        "sha256": sha256_file(src),
    }
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    safetensors.save_file(out, dst, metadata)
    return metadata
