"""Weight files of any common origin, read as torchvision-named state dicts, and the converter.

``read_state_dict(path)`` auto-detects the container (PyTorch zip or legacy ``.pth``, safetensors)
and the naming: torchvision and timm use the same ResNet names (``layer1.0.conv1.weight``); the
Hugging Face ``microsoft/resnet-18`` checkpoints use their own
(``resnet.encoder.stages.0.layers.0.layer.0.convolution.weight``), which we rename to torchvision's;
files written by ``convert`` or ``minicnn.save`` already carry torchvision names.

``convert(src, dst)`` turns any of these into our format: a safetensors file of float32 tensors in
torchvision order, ``num_batches_tracked`` dropped, checked key by key and shape by shape against
the architecture's table (:func:`expected_resnet_shapes`), with provenance in the metadata.
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
    # name -> BasicBlocks per stage (torchvision's resnet18 / resnet34)
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}
_STAGE_WIDTHS = (64, 128, 256, 512)
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def weights_home() -> Path:
    """Where downloaded and converted weights live: ``$MINICNN_HOME``, else ``$XDG_CACHE_HOME/minicnn``,
    else ``~/.cache/minicnn``."""
    env = os.environ.get("MINICNN_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "minicnn"


def _check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return arch


def expected_resnet_shapes(arch: str = "resnet18", num_classes: int = 1000) -> "OrderedDict[str, tuple]":
    """Every key of torchvision's ``arch`` state dict (less ``num_batches_tracked``) with its shape,
    in torchvision's order."""
    blocks = ARCHS[_check_arch(arch)]
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
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
            block_in = cin if b == 0 else width
            shapes[f"{p}.conv1.weight"] = (width, block_in, 3, 3)
            _bn(f"{p}.bn1", width)
            shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
            _bn(f"{p}.bn2", width)
            # torchvision adds a 1x1 projection where the block changes stride or width
            if b == 0 and (stage > 1 or block_in != width):
                shapes[f"{p}.downsample.0.weight"] = (width, block_in, 1, 1)
                _bn(f"{p}.downsample.1", width)
        cin = width
    shapes["fc.weight"] = (int(num_classes), 512)
    shapes["fc.bias"] = (int(num_classes),)
    return shapes


def infer_arch(state_dict) -> str:
    """``"resnet18"`` or ``"resnet34"`` from the number of blocks per stage in torchvision-named keys."""
    counts = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(max(idx) + 1 if idx else 0)
    counts = tuple(counts)
    if any(re.match(r"layer\d\.\d+\.conv3\.", k) for k in state_dict):
        raise WeightFormatError(f"keys describe bottleneck blocks (resnet50 or deeper, blocks per stage "
                                f"{counts}); only {', '.join(ARCHS)} are supported")
    for name, blocks in ARCHS.items():
        if counts == blocks:
            return name
    raise WeightFormatError(f"cannot infer the architecture: blocks per stage {counts} match none of "
                            + ", ".join(f"{a} {b}" for a, b in ARCHS.items()) + "; pass arch= (minicnn convert --arch) to choose one")


def check_state_dict(state_dict, arch: str, num_classes: int | None = None, where: str = "weights") -> None:
    """Raise ``WeightFormatError`` naming every missing, unexpected and mis-shaped key (with both
    shapes) of ``state_dict`` against torchvision's ``arch``. ``num_batches_tracked`` is ignored;
    ``num_classes`` defaults to the rows of ``fc.weight``."""
    if num_classes is None:
        fc = state_dict.get("fc.weight")
        num_classes = int(fc.shape[0]) if fc is not None and np.ndim(fc) == 2 and fc.shape[0] > 0 else 1000
    expected = expected_resnet_shapes(arch, num_classes)
    given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mis = [f"{k} (file {tuple(np.shape(given[k]))} vs {arch} {expected[k]})"
           for k in expected if k in given and tuple(np.shape(given[k])) != expected[k]]
    wrong_type = [f"{k} ({np.asarray(given[k]).dtype})" for k in expected
                  if k in given and np.asarray(given[k]).dtype.kind != "f"]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {', '.join(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {', '.join(unexpected)}")
    if mis:
        problems.append(f"{len(mis)} mis-shaped: {'; '.join(mis)}")
    if wrong_type:
        problems.append(f"{len(wrong_type)} not floating point: {', '.join(wrong_type)}")
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
    kind = pth.detect(where)
    if kind:
        return kind
    with open(where, "rb") as f:
        head = f.read(9)
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

    where = os.fspath(path)
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

    The architecture (``resnet18``/``resnet34``) is inferred from the keys unless given. Every key
    and shape is checked against :func:`expected_resnet_shapes`; on any problem nothing is written.
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
    fc = sd.get("fc.weight")
    num_classes = int(fc.shape[0]) if fc is not None and np.ndim(fc) == 2 and fc.shape[0] > 0 else 1000
    check_state_dict(sd, arch, num_classes, where=src)
    out = OrderedDict((k, np.asarray(sd[k], dtype=np.float32, order="C"))
                      for k in expected_resnet_shapes(arch, num_classes))
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
