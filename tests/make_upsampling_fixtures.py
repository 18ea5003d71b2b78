"""Write ``tests/fixtures/upsampling.npz``: PyTorch's answers for ConvTranspose2d, Upsample,
PixelShuffle and PixelUnshuffle cases.

    python tests/make_upsampling_fixtures.py     # needs torch; rewrites the fixture file

A case is a small config (``kind``, the layer's arguments, the input shape, dtype, and for
ConvTranspose2d an optional ``output_size`` for forward). Under ``<case>::<name>`` the file holds
the config as JSON, the inputs (``x``, ``dy``, ``state.weight``/``state.bias``) and PyTorch's
results (``y``, ``dx``, ``grad.weight``, ``grad.bias``). ``tests/test_upsampling.py`` replays them
on every backend without torch, and runs the same builders live on random configs when torch
imports. torch is imported only inside the functions that need it.
"""
from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import numpy as np

if __name__ == "__main__":  # run as a script from a checkout: import the package beside tests/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import minicnn as mc
from minicnn import nn
from make_layer_fixtures import case_seed, load_fixtures as _load_fixtures, write_fixtures  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "upsampling.npz"


def _tuple(v):
    return tuple(v) if isinstance(v, list) else v


def build(cfg, lib):
    """The layer ``cfg`` describes, from ``lib`` (``minicnn.nn`` or ``torch.nn``)."""
    a = {k: _tuple(v) for k, v in cfg["args"].items()}
    kind = cfg["kind"]
    if kind == "conv_transpose2d":
        return lib.ConvTranspose2d(a["cin"], a["cout"], a["k"], stride=a.get("stride", 1),
                                   padding=a.get("padding", 0), output_padding=a.get("output_padding", 0),
                                   groups=a.get("groups", 1), bias=a.get("bias", True),
                                   dilation=a.get("dilation", 1))
    if kind == "upsample":
        return lib.Upsample(size=a.get("size"), scale_factor=a.get("scale_factor"), mode=a.get("mode", "nearest"),
                            align_corners=a.get("align_corners"),
                            recompute_scale_factor=a.get("recompute_scale_factor"))
    if kind == "pixel_shuffle":
        return lib.PixelShuffle(a["r"])
    if kind == "pixel_unshuffle":
        return lib.PixelUnshuffle(a["r"])
    raise ValueError(f"unknown kind {kind!r}")


def make_arrays(cfg, rng):
    """Inputs for ``cfg``: ``x``, and for ConvTranspose2d its parameters (``state.*``). ``dy`` is
    drawn by the runners once the output shape is known (same rng stream on both sides)."""
    dt = np.dtype(cfg.get("dtype", "float32"))
    out = {"x": rng.standard_normal(cfg["x"]).astype(dt)}
    if cfg["kind"] == "conv_transpose2d":
        a = cfg["args"]
        k = a["k"] if isinstance(a["k"], list) else [a["k"], a["k"]]
        out["state.weight"] = rng.uniform(-0.5, 0.5, (a["cin"], a["cout"] // a.get("groups", 1), *k)).astype(dt)
        if a.get("bias", True):
            out["state.bias"] = rng.uniform(-0.5, 0.5, a["cout"]).astype(dt)
    return out


def _dy(cfg, shape):
    seed = zlib.crc32(json.dumps(cfg, sort_keys=True).encode())
    return np.random.default_rng(seed).standard_normal(shape).astype(cfg.get("dtype", "float32"))


def _forward_kwargs(cfg):
    return {"output_size": cfg["output_size"]} if "output_size" in cfg else {}


def run_minicnn(cfg, arrays, backend="numpy"):
    """{"y", "dx", "grad.<param>"} computed by minicnn on ``backend``."""
    with mc.backend(backend):
        layer = build(cfg, nn)
        if cfg.get("dtype", "float32") == "float64":
            layer.to(np.float64)
        for name, p in layer.named_parameters():
            p.data = mc.backends.current().asarray(arrays[f"state.{name}"])
        y = layer(arrays["x"], **_forward_kwargs(cfg))
        dx = layer.backward(_dy(cfg, y.shape))
        out = {"y": mc.to_numpy(y), "dx": mc.to_numpy(dx)}
        for name, p in layer.named_parameters():
            out[f"grad.{name}"] = mc.to_numpy(p.grad)
    return out


def run_torch(cfg, arrays):
    """The same as :func:`run_minicnn`, by PyTorch."""
    import torch

    layer = build(cfg, torch.nn)
    dt = torch.float64 if cfg.get("dtype", "float32") == "float64" else torch.float32
    layer = layer.to(dt)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.from_numpy(arrays[f"state.{name}"]))
    x = torch.from_numpy(arrays["x"]).requires_grad_()
    y = layer(x, **_forward_kwargs(cfg))
    y.backward(torch.from_numpy(_dy(cfg, tuple(y.shape))))
    out = {"y": y.detach().numpy(), "dx": x.grad.numpy()}
    for name, p in layer.named_parameters():
        out[f"grad.{name}"] = p.grad.numpy()
    return out


def compare(got, want, dtype, where=""):
    """Every array of ``want`` matched by ``got`` (float32: 1e-5 relative to the largest value, at least 1)."""
    tol = 1e-10 if dtype == "float64" else 1e-5
    assert sorted(got) == sorted(want), f"{where}: results {sorted(got)} != {sorted(want)}"
    for k, w in want.items():
        g = np.asarray(got[k])
        assert g.shape == w.shape, f"{where}: {k} shape {g.shape} != {w.shape}"
        scale = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
        err = float(np.max(np.abs(g.astype(np.float64) - w))) if w.size else 0.0
        assert err <= tol * scale, f"{where}: {k} max abs error {err:.3g} > {tol:g} * {scale:.3g}"


def _ct(x, cin, cout, k, **kw):
    return {"kind": "conv_transpose2d", "x": x, "args": {"cin": cin, "cout": cout, "k": k, **kw}}


def _up(x, **kw):
    return {"kind": "upsample", "x": x, "args": kw}


CASES = {
    "convt_plain": _ct([2, 3, 4, 5], 3, 4, 3),
    "convt_stride2_pad1_op1": _ct([2, 2, 5, 4], 2, 3, 3, stride=2, padding=1, output_padding=1),
    "convt_rect_strides": _ct([1, 4, 3, 6], 4, 2, [2, 3], stride=[3, 1], padding=[0, 1], bias=False),
    "convt_groups_dilation": _ct([2, 4, 5, 5], 4, 6, 3, stride=2, dilation=2, groups=2, padding=2),
    "convt_op_below_dilation": _ct([1, 2, 4, 4], 2, 2, 2, stride=1, dilation=3, output_padding=[2, 1]),
    "convt_depthwise_f64": {**_ct([2, 3, 3, 4], 3, 3, 4, stride=2, padding=1, groups=3), "dtype": "float64"},
    "convt_output_size": {**_ct([2, 2, 4, 4], 2, 3, 3, stride=3, padding=1), "output_size": [11, 12]},
    "up_nearest_x2": _up([2, 3, 4, 5], scale_factor=2),
    "up_nearest_frac": _up([1, 2, 5, 7], scale_factor=[1.7, 0.6]),
    "up_nearest_size": _up([2, 2, 5, 4], size=[7, 11]),
    "up_nearest_recompute": _up([1, 2, 5, 7], scale_factor=1.3, recompute_scale_factor=True),
    "up_nearest_scale_keeps_size": _up([1, 1, 5, 5], scale_factor=1.1),
    "up_bilinear_x2": _up([2, 3, 4, 5], scale_factor=2, mode="bilinear"),
    "up_bilinear_frac": _up([1, 2, 5, 7], scale_factor=[2.5, 1.3], mode="bilinear"),
    "up_bilinear_down": _up([2, 2, 9, 8], size=[4, 3], mode="bilinear"),
    "up_bilinear_align": _up([2, 2, 4, 5], size=[9, 7], mode="bilinear", align_corners=True),
    "up_bilinear_align_frac": _up([1, 2, 4, 5], scale_factor=1.7, mode="bilinear", align_corners=True),
    "up_bilinear_recompute": _up([1, 2, 6, 5], scale_factor=[1.5, 2.3], mode="bilinear",
                                 recompute_scale_factor=True),
    "up_bilinear_to_one": _up([1, 2, 5, 4], size=[1, 3], mode="bilinear", align_corners=True),
    "up_bilinear_f64": {**_up([2, 2, 3, 4], scale_factor=[3.3, 1.6], mode="bilinear"), "dtype": "float64"},
    "pixel_shuffle": {"kind": "pixel_shuffle", "x": [2, 12, 3, 4], "args": {"r": 2}},
    "pixel_shuffle_batchless": {"kind": "pixel_shuffle", "x": [18, 2, 3], "args": {"r": 3}},
    "pixel_unshuffle": {"kind": "pixel_unshuffle", "x": [2, 3, 6, 4], "args": {"r": 2}},
}
# the nn classes these fixtures cover (UpsamplingNearest2d/UpsamplingBilinear2d are Upsample with a fixed mode)
COVERED = ("ConvTranspose2d", "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "PixelShuffle",
           "PixelUnshuffle")



def load_fixtures(path=FIXTURE):
    """{case: (config, inputs, expected)} from the fixture file."""
    return _load_fixtures(path)


def main(path=FIXTURE):
    """Run every case in torch and write the fixture file; check minicnn on the way, as a report."""
    return write_fixtures(path, CASES, make_arrays, run_torch,
                          lambda cfg, arrays, want, name: compare(run_minicnn(cfg, arrays), want, cfg.get("dtype", "float32"), name))


if __name__ == "__main__":
    main()
