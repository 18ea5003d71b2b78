"""Write ``tests/fixtures/layers.npz``: PyTorch's answers for a fixed list of layer cases.

    python tests/make_layer_fixtures.py          # needs torch; rewrites the fixture file

Each case is a small config (layer kind and arguments, dtype, train/eval, number of forward
steps). For every case the file holds, under ``<case>::<name>``: the config as JSON, the inputs
(``x``: one array per forward step, ``state.*``: parameters and buffers loaded before the first
step, ``dy`` or ``target``/``dloss``), and what PyTorch computed (``y``, ``dx``, ``grad.<param>``,
``after.<key>`` for the whole state dict after the steps, ``loss``). ``tests/test_layers_fixtures.py``
replays the cases on minicnn without torch; ``tests/test_layers_torch.py`` runs the same two
builders live on random configs.

This module imports torch only inside the functions that need it, so the case list, the input
generator and the minicnn runner can be imported where torch is absent.
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

FIXTURE = Path(__file__).parent / "fixtures" / "layers.npz"
LOSSES = ("cross_entropy", "bce_with_logits", "mse")


def _layer(cfg):
    """(class name, positional args, keyword args): the same call builds minicnn's and torch's layer."""
    k, a = cfg["kind"], cfg.get("args", {})
    if k == "conv2d":
        return "Conv2d", (a["cin"], a["cout"], a["k"]), dict(
            stride=a.get("stride", 1), padding=a.get("padding", 0), dilation=a.get("dilation", 1),
            groups=a.get("groups", 1), bias=a.get("bias", True))
    if k == "batchnorm2d":
        return "BatchNorm2d", (a["c"],), dict(
            eps=a.get("eps", 1e-5), momentum=a.get("momentum", 0.1), affine=a.get("affine", True),
            track_running_stats=a.get("track", True))
    if k == "maxpool2d":
        return "MaxPool2d", (a["k"],), dict(stride=a.get("stride"), padding=a.get("padding", 0),
                                            dilation=a.get("dilation", 1))
    if k == "avgpool2d":
        return "AvgPool2d", (a["k"],), dict(stride=a.get("stride"), padding=a.get("padding", 0),
                                            count_include_pad=a.get("count_include_pad", True))
    if k == "adaptive_avgpool2d":
        return "AdaptiveAvgPool2d", (a["out"],), {}
    if k == "adaptive_maxpool2d":
        return "AdaptiveMaxPool2d", (a["out"],), {}
    if k == "linear":
        return "Linear", (a["fin"], a["fout"]), dict(bias=a.get("bias", True))
    if k == "flatten":
        return "Flatten", (a.get("start", 1), a.get("end", -1)), {}
    if k == "dropout":
        return "Dropout", (a.get("p", 0.5),), {}
    if k in ("relu", "sigmoid", "tanh", "identity"):
        return {"relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh", "identity": "Identity"}[k], (), {}
    if k == "cross_entropy":
        return "CrossEntropyLoss", (), dict(reduction=a.get("reduction", "mean"))
    if k == "bce_with_logits":
        return "BCEWithLogitsLoss", (), dict(reduction=a.get("reduction", "mean"))
    if k == "mse":
        return "MSELoss", (), dict(reduction=a.get("reduction", "mean"))
    raise ValueError(f"unknown layer kind {k!r}")


def _tuples(v):
    return tuple(v) if isinstance(v, list) else v  # JSON turns (h, w) pairs into lists


def build(cfg, lib):
    """Build the case's module from ``lib`` (``minicnn.nn`` or ``torch.nn``); sequential recurses."""
    if cfg["kind"] == "sequential":
        return lib.Sequential(*[build(c, lib) for c in cfg["layers"]])
    cls, args, kwargs = _layer(cfg)
    return getattr(lib, cls)(*map(_tuples, args), **{k: _tuples(v) for k, v in kwargs.items()})


# -- inputs ----------------------------------------------------------------------------------------

def _draw(rng, shape, how, dtype):
    if how == "normal":
        v = rng.standard_normal(shape)
    elif how == "distinct":  # no ties, spaced well beyond float32 rounding
        n = int(np.prod(shape))
        v = (rng.permutation(n).reshape(shape) - n / 2) * 0.05
    elif how == "ties":  # few distinct values: max pooling must pick the first maximum, as torch
        v = rng.integers(-2, 3, shape).astype(np.float64)
    elif how == "relu_zeros":  # exact zeros: the gradient at the kink must be torch's (0)
        v = rng.standard_normal(shape)
        v[rng.random(shape) < 0.3] = 0.0
    elif how == "wide":  # saturating values for sigmoid / tanh / BCE
        v = rng.standard_normal(shape) * 20
        v.flat[:4] = [-100.0, 100.0, -40.0, 40.0][: v.size]
    elif how == "nan_inf":  # a window of -inf (its first tap wins) and a NaN (it propagates)
        n = int(np.prod(shape))
        v = (rng.permutation(n).reshape(shape) - n / 2) * 0.05
        v[0, 0, 1:3, 1:3] = -np.inf  # exactly the window at output (1, 1) for k=2, padding 1
        v[-1, -1, 1, 2] = np.nan
    elif how == "huge":  # logits of 1e4: softmax must not overflow
        v = rng.standard_normal(shape) * 1e4
    else:
        raise ValueError(f"unknown input kind {how!r}")
    return v.astype(dtype)


def make_arrays(cfg, rng):
    """Random inputs, initial state and upstream gradient for ``cfg`` (shapes from minicnn's module)."""
    dtype = np.dtype(cfg.get("dtype", "float32"))
    arrays = {}
    steps = cfg.get("steps", 1)
    x = np.stack([_draw(rng, cfg["x_shape"], cfg.get("input", "normal"), dtype) for _ in range(steps)])
    arrays["x"] = x
    if cfg["kind"] in LOSSES:
        n, c = cfg["x_shape"][0], cfg["x_shape"][-1]
        if cfg["kind"] == "cross_entropy":
            arrays["target"] = rng.integers(0, c, n).astype(np.int64)
        elif cfg["kind"] == "bce_with_logits":
            t = rng.uniform(0, 1, cfg["x_shape"])
            t.flat[::2] = np.round(t.flat[::2])  # hard and soft labels
            arrays["target"] = t.astype(dtype)
        else:
            arrays["target"] = rng.standard_normal(cfg["x_shape"]).astype(dtype)
        arrays["dloss"] = np.array(rng.uniform(0.5, 2.0), dtype=np.float64)
        return arrays
    model = build(cfg, nn)
    for key, v in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith("running_var"):
            val = rng.uniform(0.5, 2.0, v.shape)
        elif key.endswith("running_mean"):
            val = rng.standard_normal(v.shape) * 0.5
        elif key.endswith("weight") and v.ndim == 1:  # batch-norm gamma away from 0
            val = rng.uniform(0.5, 1.5, v.shape)
        else:
            val = rng.standard_normal(v.shape) * 0.5
        arrays[f"state.{key}"] = val.astype(dtype)
    with mc.no_grad():
        y = model.to(dtype).train(cfg.get("train", True))(x[0])
    arrays["dy"] = rng.standard_normal(mc.to_numpy(y).shape).astype(dtype)
    return arrays


# -- the two runners ---------------------------------------------------------------------------------

def run_minicnn(cfg, arrays, backend="numpy"):
    """Replay one case on minicnn (on ``backend``); returns the same keys ``run_torch`` does."""
    dtype = np.dtype(cfg.get("dtype", "float32"))
    with mc.backend(backend):
        if cfg["kind"] in LOSSES:
            fn = build(cfg, nn).to(dtype)
            loss = fn(arrays["x"][0], arrays["target"])
            dx = fn.backward(float(arrays["dloss"]))
            return {"loss": np.array(loss, dtype=np.float64), "dx": mc.to_numpy(dx)}
        model = build(cfg, nn).to(dtype)
        state = {k[len("state."):]: v for k, v in arrays.items() if k.startswith("state.")}
        model.load_state_dict(state, strict=True)
        model.train(cfg.get("train", True))
        for x in arrays["x"]:
            y = model(x)
        dx = model.backward(arrays["dy"])
        out = {"y": mc.to_numpy(y), "dx": mc.to_numpy(dx)}
        for name, p in model.named_parameters():
            out[f"grad.{name}"] = mc.to_numpy(p.grad)
        for name, v in model.state_dict().items():
            out[f"after.{name}"] = v
        return out


def run_torch(cfg, arrays):
    """The case in PyTorch: the reference answer."""
    import torch

    tdtype = {"float32": torch.float32, "float64": torch.float64}[cfg.get("dtype", "float32")]
    if cfg["kind"] in LOSSES:
        fn = build(cfg, torch.nn)
        x = torch.tensor(arrays["x"][0], dtype=tdtype, requires_grad=True)
        t = torch.tensor(arrays["target"])
        loss = fn(x, t)
        loss.backward(torch.tensor(float(arrays["dloss"]), dtype=tdtype))
        return {"loss": np.array(loss.item(), dtype=np.float64), "dx": x.grad.numpy()}
    model = build(cfg, torch.nn).to(tdtype)
    state = {k[len("state."):]: torch.tensor(v) for k, v in arrays.items() if k.startswith("state.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    model.train(cfg.get("train", True))
    for xa in arrays["x"]:
        x = torch.tensor(xa, requires_grad=True)
        y = model(x)
    y.backward(torch.tensor(arrays["dy"]))
    out = {"y": y.detach().numpy(), "dx": x.grad.numpy()}
    for name, p in model.named_parameters():
        out[f"grad.{name}"] = p.grad.numpy()
    for name, v in model.state_dict().items():
        out[f"after.{name}"] = v.numpy().copy()
    return out


def compare(got, want, dtype, where=""):
    """Assert every array ``want`` holds is in ``got`` and close (float32: 1e-4 relative to scale)."""
    tol = 1e-4 if np.dtype(dtype) == np.float32 else 1e-9
    missing = sorted(set(want) - set(got))
    assert not missing, f"{where}: minicnn produced no {missing}"
    for key, w in want.items():
        g = np.asarray(got[key])
        w = np.asarray(w)
        assert g.shape == w.shape, f"{where} {key}: minicnn shape {g.shape}, torch shape {w.shape}"
        finite = np.isfinite(w)
        scale = max(1.0, float(np.max(np.abs(w[finite]), initial=0.0)))
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * scale, err_msg=f"{where} {key}")


# -- the fixed case list ------------------------------------------------------------------------------

def _conv(x_shape, **args):
    return {"kind": "conv2d", "x_shape": x_shape, "args": args}


def _bn(x_shape, **kw):
    cfg = {"kind": "batchnorm2d", "x_shape": x_shape, "args": {"c": x_shape[1]}}
    for key in ("steps", "train", "dtype"):
        if key in kw:
            cfg[key] = kw.pop(key)
    cfg["args"].update(kw)
    return cfg


_SMALL_NET = [
    {"kind": "conv2d", "args": {"cin": 3, "cout": 4, "k": 3, "padding": 1, "bias": False}},
    {"kind": "batchnorm2d", "args": {"c": 4}},
    {"kind": "relu"},
    {"kind": "maxpool2d", "args": {"k": 3, "stride": 2, "padding": 1}},
    {"kind": "conv2d", "args": {"cin": 4, "cout": 4, "k": 3, "padding": 1, "groups": 2}},
    {"kind": "relu"},
    {"kind": "adaptive_avgpool2d", "args": {"out": 1}},
    {"kind": "flatten"},
    {"kind": "dropout", "args": {"p": 0.0}},
    {"kind": "linear", "args": {"fin": 4, "fout": 5}},
]

CASES = {
    "conv_basic": _conv([2, 3, 8, 8], cin=3, cout=4, k=3, padding=1),
    "conv_stride2_nobias_odd": _conv([2, 3, 9, 7], cin=3, cout=5, k=3, stride=2, bias=False),
    "conv_asym_dilated": _conv([1, 2, 10, 9], cin=2, cout=3, k=[3, 2], stride=[2, 1], padding=[1, 0],
                               dilation=[2, 3]),
    "conv_groups": _conv([2, 4, 6, 6], cin=4, cout=6, k=3, padding=1, groups=2),
    "conv_depthwise": _conv([2, 3, 7, 7], cin=3, cout=3, k=3, stride=2, padding=1, groups=3),
    "conv_1x1_batch1": _conv([1, 5, 4, 3], cin=5, cout=2, k=1),
    "conv_stem_7x7": _conv([1, 3, 16, 16], cin=3, cout=4, k=7, stride=2, padding=3, bias=False),
    "conv_float64": {**_conv([2, 2, 5, 6], cin=2, cout=4, k=[2, 3], padding=[1, 2], dilation=[1, 2]),
                     "dtype": "float64"},
    "bn_train_3_steps": _bn([4, 3, 3, 2], steps=3),
    "bn_train_momentum_none": _bn([3, 2, 2, 3], steps=3, momentum=None),
    "bn_train_momentum_0_3_eps": _bn([2, 3, 2, 2], steps=2, momentum=0.3, eps=1e-3),
    "bn_train_no_affine": _bn([3, 2, 3, 3], steps=2, affine=False),
    "bn_train_batch1": _bn([1, 2, 3, 4], steps=1),
    "bn_eval": _bn([2, 3, 4, 4], train=False),
    "bn_eval_no_affine": _bn([2, 2, 3, 3], train=False, affine=False),
    "bn_no_running_stats_eval": _bn([3, 2, 2, 2], train=False, track=False),
    "bn_float64": _bn([3, 2, 3, 3], steps=2, dtype="float64"),
    "relu": {"kind": "relu", "x_shape": [2, 3, 4, 4], "input": "relu_zeros"},
    "sigmoid": {"kind": "sigmoid", "x_shape": [2, 3, 4, 4], "input": "wide"},
    "tanh": {"kind": "tanh", "x_shape": [2, 3, 4, 4], "input": "wide"},
    "identity": {"kind": "identity", "x_shape": [2, 3]},
    "maxpool_2x2": {"kind": "maxpool2d", "x_shape": [2, 3, 6, 7], "args": {"k": 2}, "input": "distinct"},
    "maxpool_3x3_s2_p1": {"kind": "maxpool2d", "x_shape": [2, 2, 9, 8],
                          "args": {"k": 3, "stride": 2, "padding": 1}, "input": "distinct"},
    "maxpool_ties": {"kind": "maxpool2d", "x_shape": [2, 2, 7, 7], "args": {"k": 3, "stride": 1, "padding": 1},
                     "input": "ties"},
    "maxpool_dilated": {"kind": "maxpool2d", "x_shape": [1, 2, 9, 8],
                        "args": {"k": [3, 2], "stride": [2, 1], "padding": [1, 1], "dilation": [2, 3]},
                        "input": "distinct"},
    "maxpool_nan_and_inf": {"kind": "maxpool2d", "x_shape": [2, 2, 4, 4], "args": {"k": 2, "padding": 1},
                            "input": "nan_inf"},
    "avgpool_2x2": {"kind": "avgpool2d", "x_shape": [2, 3, 6, 5], "args": {"k": 2}},
    "avgpool_pad_included": {"kind": "avgpool2d", "x_shape": [2, 2, 7, 6],
                             "args": {"k": 3, "stride": 2, "padding": 1, "count_include_pad": True}},
    "avgpool_pad_excluded": {"kind": "avgpool2d", "x_shape": [2, 2, 7, 6],
                             "args": {"k": [3, 2], "stride": [2, 1], "padding": [1, 1], "count_include_pad": False}},
    "adaptive_avg_global": {"kind": "adaptive_avgpool2d", "x_shape": [2, 3, 7, 7], "args": {"out": 1}},
    "adaptive_avg_5x7_to_3x2": {"kind": "adaptive_avgpool2d", "x_shape": [2, 2, 5, 7], "args": {"out": [3, 2]}},
    "adaptive_avg_upsample": {"kind": "adaptive_avgpool2d", "x_shape": [1, 2, 3, 2], "args": {"out": [5, 4]}},
    "adaptive_max_5x7_to_3x2": {"kind": "adaptive_maxpool2d", "x_shape": [2, 2, 5, 7], "args": {"out": [3, 2]},
                                "input": "distinct"},
    "adaptive_max_upsample": {"kind": "adaptive_maxpool2d", "x_shape": [1, 2, 3, 2], "args": {"out": [4, 5]},
                              "input": "distinct"},
    "adaptive_max_nan_and_inf": {"kind": "adaptive_maxpool2d", "x_shape": [2, 2, 4, 5], "args": {"out": [3, 2]},
                                 "input": "nan_inf"},
    "adaptive_max_ties": {"kind": "adaptive_maxpool2d", "x_shape": [2, 2, 6, 5], "args": {"out": [4, 3]},
                          "input": "ties"},
    "linear": {"kind": "linear", "x_shape": [4, 6], "args": {"fin": 6, "fout": 3}},
    "linear_nobias": {"kind": "linear", "x_shape": [1, 5], "args": {"fin": 5, "fout": 7, "bias": False}},
    "linear_float64": {"kind": "linear", "x_shape": [3, 4], "args": {"fin": 4, "fout": 2}, "dtype": "float64"},
    "flatten": {"kind": "flatten", "x_shape": [2, 3, 2, 2]},
    "flatten_middle": {"kind": "flatten", "x_shape": [2, 3, 2, 2], "args": {"start": 1, "end": 2}},
    "dropout_eval": {"kind": "dropout", "x_shape": [2, 8], "args": {"p": 0.5}, "train": False},
    "dropout_p0_train": {"kind": "dropout", "x_shape": [2, 8], "args": {"p": 0.0}},
    "cross_entropy": {"kind": "cross_entropy", "x_shape": [5, 4]},
    "cross_entropy_sum": {"kind": "cross_entropy", "x_shape": [3, 6], "args": {"reduction": "sum"}},
    "cross_entropy_huge_logits": {"kind": "cross_entropy", "x_shape": [4, 5], "input": "huge"},
    "cross_entropy_float64": {"kind": "cross_entropy", "x_shape": [4, 3], "dtype": "float64"},
    "bce_with_logits": {"kind": "bce_with_logits", "x_shape": [3, 4], "input": "wide"},
    "bce_with_logits_sum": {"kind": "bce_with_logits", "x_shape": [2, 5], "args": {"reduction": "sum"}},
    "mse": {"kind": "mse", "x_shape": [2, 3, 2]},
    "mse_sum": {"kind": "mse", "x_shape": [4, 3], "args": {"reduction": "sum"}},
    "small_net_train": {"kind": "sequential", "x_shape": [4, 3, 8, 8], "layers": _SMALL_NET, "steps": 2},
    "small_net_eval": {"kind": "sequential", "x_shape": [2, 3, 8, 8], "layers": _SMALL_NET, "train": False},
}


def case_seed(name: str) -> int:
    """A fixed seed per case name, so adding a case leaves the others' arrays unchanged."""
    return zlib.crc32(name.encode())


def load_fixtures(path=FIXTURE):
    """{case: (config, inputs, expected)} from the fixture file."""
    data = np.load(path, allow_pickle=False)
    cases = {}
    for key in data.files:
        case, name = key.split("::", 1)
        cases.setdefault(case, {})[name] = data[key]
    out = {}
    for case, d in cases.items():
        cfg = json.loads(str(d.pop("config")))
        inputs = {k[3:]: v for k, v in d.items() if k.startswith("in.")}
        expected = {k[4:]: v for k, v in d.items() if k.startswith("out.")}
        out[case] = (cfg, inputs, expected)
    return out


def write_fixtures(path, cases, make_arrays, run_torch, check):
    """Run every case of ``cases`` in torch and write ``path``: ``<case>::config`` (JSON),
    ``<case>::in.<name>`` (what ``make_arrays(cfg, rng)`` drew, seeded by ``case_seed``) and
    ``<case>::out.<name>`` (what ``run_torch(cfg, arrays)`` returned), the layout ``load_fixtures``
    reads. ``check(cfg, arrays, want, name)`` compares minicnn on the way, as a report: a
    mismatch is printed, not raised, so the file is still written for a look."""
    import torch

    torch.set_num_threads(1)  # tiny tensors; also keeps the reductions' order fixed run to run
    entries, mismatches = {}, []
    for name, cfg in cases.items():
        arrays = make_arrays(cfg, np.random.default_rng(case_seed(name)))
        want = run_torch(cfg, arrays)
        entries[f"{name}::config"] = np.array(json.dumps(cfg, sort_keys=True))
        entries.update({f"{name}::in.{k}": v for k, v in arrays.items()})
        entries.update({f"{name}::out.{k}": v for k, v in want.items()})
        try:
            check(cfg, arrays, want, name)
        except AssertionError as e:
            mismatches.append(f"{name}: {str(e).splitlines()[0]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **entries)
    print(f"wrote {len(cases)} cases to {path} ({path.stat().st_size / 1024:.1f} KiB)")
    for m in mismatches:
        print("minicnn differs:", m)
    return 0


def main(path=FIXTURE):
    """Run every case in torch and write the fixture file; check minicnn on the way, as a report."""
    return write_fixtures(path, CASES, make_arrays, run_torch,
                          lambda cfg, arrays, want, name: compare(run_minicnn(cfg, arrays), want,
                                                                  cfg.get("dtype", "float32"), name))


if __name__ == "__main__":
    raise SystemExit(main())
