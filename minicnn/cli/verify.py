"""``minicnn verify WEIGHTS``: check a ResNet or a VGG against outputs PyTorch computed from the same weights.

The reference file (``weights/reference/resnet18_seed0.npz`` by default, written by
``weights/make_reference.py``) holds inputs and what PyTorch made of them: eval-mode logits and
layer4 features, and, for a training-mode step, logits, the input gradient, a few parameter
gradients and the updated running statistics. Each is compared as

    max |ours - torch| / max |torch|

and the run PASSes when every one is within ``--tol`` and the top-5 classes agree. The shipped
reference belongs to the seeded weights (``minicnn weights seed resnet18 w.safetensors``); a
reference for other weights is made with ``make_reference.py --weights``. The reference records
a digest of its weights, so a FAIL caused by passing different weights says so. The reference names
its architecture (any ResNet, 18 to 152, or VGG; for a VGG, ``features`` is the output of
``model.features`` and no training step is checked, since dropout's masks cannot match torch's);
``--arch`` picks the default reference ``<arch>_seed0.npz`` and insists on it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# parameters and buffers whose training-mode results the reference stores (small ones, to keep the file small)
TRAIN_GRAD_KEYS = (
    "conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
    "layer3.1.bn2.weight", "layer4.1.bn2.bias", "fc.bias",
)
TRAIN_STATE_KEYS = ("bn1.running_mean", "bn1.running_var", "layer4.1.bn2.running_var")

DEFAULT_TOL = 1e-4


def default_reference(arch="resnet18"):
    """Where the shipped reference lives in a source checkout: ``weights/reference/<arch>_seed0.npz``."""
    return Path(__file__).resolve().parents[2] / "weights" / "reference" / f"{arch}_seed0.npz"


def state_dict_digest(state_dict):
    """SHA-256 of a state dict's values as float32 (keys sorted, ``num_batches_tracked`` left out).

    Two files holding the same numbers in different formats (.pth, safetensors, float16) and
    key orders give the same digest when their values agree in float32.
    """
    h = hashlib.sha256()
    for k in sorted(state_dict):
        if k.endswith("num_batches_tracked"):
            continue
        a = np.ascontiguousarray(np.asarray(state_dict[k]), dtype="<f4")
        h.update(k.encode("utf-8") + b"\0" + str(a.shape).encode() + b"\0" + a.tobytes())
    return h.hexdigest()


@dataclass
class Check:
    """One compared quantity: its name, max abs error, relative error and verdict."""

    name: str
    max_abs: float
    rel: float
    ok: bool
    note: str = ""


@dataclass
class Report:
    """The outcome of :func:`verify`; ``passed`` is True when every check is."""

    arch: str
    backend: str
    tol: float
    weights_match: bool | None
    checks: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def lines(self):
        """Human-readable lines, one per check, then the verdict."""
        out = [f"{self.arch} on the {self.backend} backend, tolerance {self.tol:g} (max |ours - torch| / max |torch|)"]
        w = max(len(c.name) for c in self.checks)
        for c in self.checks:
            if c.note and np.isnan(c.rel):
                out.append(f"  {c.name:<{w}}  {c.note:<40}  {'ok' if c.ok else 'MISMATCH'}")
            else:
                extra = f"  {c.note}" if c.note else ""
                out.append(
                    f"  {c.name:<{w}}  max abs err {c.max_abs:.3e}  rel err {c.rel:.3e}  {'ok' if c.ok else 'MISMATCH'}{extra}"
                )
        if self.weights_match is False and not self.passed:
            out.append("  note: these weights are not the ones the reference was made from (their digest differs)")
        out.append("PASS" if self.passed else "FAIL")
        return out


def _compare(name, ours, ref, tol):
    from .. import to_numpy

    ours = np.asarray(to_numpy(ours), dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        return Check(name, float("nan"), float("nan"), False, f"shape {ours.shape}, reference has {ref.shape}")
    if not np.all(np.isfinite(ours)):
        return Check(name, float("inf"), float("inf"), False, "non-finite values")
    max_abs = float(np.max(np.abs(ours - ref))) if ours.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    rel = max_abs / scale if scale > 0 else max_abs
    return Check(name, max_abs, rel, rel <= tol)


def load_reference(path):
    """The reference arrays as a dict; ValueError naming the file when it is missing or incomplete."""
    import zipfile

    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"reference file {path!r} is a directory, not an .npz file")
    if not os.path.exists(path):
        raise ValueError(f"reference file {path!r} does not exist")
    # np.load guesses from the bytes (.npy, pickle, zip) and advises allow_pickle on anything
    # unknown; a reference is always an .npz (zip) archive, so say so instead
    if not zipfile.is_zipfile(path):
        why = "the file is empty" if os.path.getsize(path) == 0 else "not an .npz archive"
        raise ValueError(f"cannot read reference file {path!r}: {why}; write it with weights/make_reference.py")
    try:
        with np.load(path, allow_pickle=False) as z:
            ref = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read reference file {path!r}: {e}") from None
    missing = [k for k in ("inputs", "logits", "features", "top5", "arch") if k not in ref]
    if missing:
        raise ValueError(f"reference file {path!r} lacks {', '.join(missing)}; write it with weights/make_reference.py")
    return ref


def verify(weights, reference=None, tol=DEFAULT_TOL, train=True):
    """Run the reference's inputs through a ResNet with ``weights`` and compare with the reference.

    ``weights``: a path (any format ``minicnn.io.weights.read_state_dict`` reads) or a state dict.
    ``reference``: a path or an already loaded dict (default: the shipped seeded reference).
    ``train``: also check the training-mode step when the reference has one. Runs on the backend
    in force. Returns a :class:`Report`.
    """
    from .. import backends, no_grad
    from ..io.weights import VGG_ARCHS
    from ..models.resnet import ARCHS, _build_from, read_weights

    ref = reference if isinstance(reference, dict) else load_reference(reference or default_reference())
    arch = str(ref["arch"])
    if arch not in ARCHS and arch not in VGG_ARCHS:
        raise ValueError(f"the reference is for {arch!r}, which is not one of {', '.join(tuple(ARCHS) + VGG_ARCHS)}")
    source, sd = read_weights(weights)
    if source != "state dict":
        from ..errors import WeightFormatError
        from ..io.checks import foreign_weights

        why = foreign_weights(source, sd, archs=tuple(ARCHS) + VGG_ARCHS, wanted=f"{arch} weights")
        if why:
            raise WeightFormatError(why)
        from ..io.weights import check_state_dict

        # one line naming a few keys, rather than load_state_dict's list of every missing one
        check_state_dict(sd, arch, int(ref["num_classes"]) if "num_classes" in ref else None, where=source)
    num_classes = int(ref["num_classes"]) if "num_classes" in ref else None
    if arch in ARCHS:
        model = _build_from(arch, num_classes, source, sd)
    else:
        from ..models.vgg import _build as build_vgg

        try:
            model = build_vgg(arch, num_classes, sd)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
    match = None
    if "weights_digest" in ref:
        match = state_dict_digest(sd) == str(ref["weights_digest"])
    report = Report(arch, backends.get_backend(), float(tol), match)

    model.eval()
    x = ref["inputs"].astype(np.float32)
    with no_grad():
        if arch in ARCHS:
            acts = model.activations(x)
        else:  # VGG: what the convolutional part and the whole model give
            acts = {"layer4": model.features(x), "fc": model(x)}
    report.checks.append(_compare("logits", acts["fc"], ref["logits"], tol))
    report.checks.append(_compare("features", acts["layer4"], ref["features"], tol))
    logits = np.asarray(backends.to_numpy(acts["fc"]))
    k = ref["top5"].shape[1]
    ours_top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    same = bool(np.array_equal(ours_top, ref["top5"]))
    report.checks.append(Check(f"top-{k}", float("nan"), float("nan"), same,
                               "same classes, same order" if same else f"ours {ours_top.tolist()}, torch {ref['top5'].tolist()}"))

    if train and "train_inputs" in ref and arch in ARCHS:
        model.train()
        model.zero_grad()
        tlogits = model(ref["train_inputs"].astype(np.float32))
        dx = model.backward(ref["train_dlogits"].astype(np.float32))
        report.checks.append(_compare("train logits", tlogits, ref["train_logits"], tol))
        report.checks.append(_compare("train dL/dx", dx, ref["train_dx"], tol))
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        for key in sorted(ref):
            if key.startswith("train_grad:"):
                name = key.split(":", 1)[1]
                report.checks.append(_compare(f"train grad {name}", params[name].grad, ref[key], tol))
            elif key.startswith("train_state:"):
                name = key.split(":", 1)[1]
                report.checks.append(_compare(f"train {name}", buffers[name], ref[key], tol))
    return report


def _run(args) -> int:
    tol = float(args.tol)
    if not tol > 0:
        raise ValueError(f"--tol must be positive, got {args.tol}")
    arch = getattr(args, "arch", None)
    default = default_reference(arch or "resnet18")
    if args.reference is None and not default.exists():
        raise ValueError(
            f"no --reference given and the default {default} is not here "
            "(references ship in the source tree's weights/reference/); pass --reference FILE.npz"
        )
    ref = load_reference(args.reference or default)
    if arch is not None and str(ref["arch"]) != arch:
        raise ValueError(f"--arch {arch}, but the reference {args.reference or default} is for {ref['arch']}")
    report = verify(args.weights, ref, tol, train=not args.no_train)
    print(f"weights {args.weights}")
    if report.weights_match is not None:
        print(f"weights digest {'matches' if report.weights_match else 'differs from'} the reference's")
    for line in report.lines():
        print(line)
    return 0 if report.passed else 1


def register(subparsers):
    """Add ``minicnn verify``."""
    p = subparsers.add_parser(
        "verify",
        help="check a ResNet's or VGG's outputs against stored PyTorch outputs (PASS/FAIL)",
        description="Run a ResNet or VGG with WEIGHTS on the reference inputs and compare logits, features and a "
        "training-mode backward pass with the outputs PyTorch computed from the same weights. "
        "Exit 0 on PASS, 1 on FAIL.",
    )
    p.add_argument("weights", metavar="WEIGHTS", help="weights file (.safetensors, .pth, ...)")
    p.add_argument("--reference", metavar="REF.npz", help="reference outputs (default: the shipped seeded resnet18 reference)")
    p.add_argument("--tol", default=DEFAULT_TOL, type=float, help=f"relative tolerance (default {DEFAULT_TOL:g})")
    p.add_argument("--no-train", action="store_true", help="check eval mode only, skip the training-mode step")
    from ..io.weights import ALL_ARCHS

    p.add_argument("--arch", choices=ALL_ARCHS,
                   help="the architecture to check: picks the default reference <arch>_seed0.npz and refuses a "
                        "reference for another one")
    p.set_defaults(func=_run)
