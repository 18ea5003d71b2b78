"""Write ``tests/fixtures/pad_pool.npz``: PyTorch's answers for the padding, pooling-option,
BatchNorm1d, Dropout2d and Linear-on-(*, in) cases.

    python tests/make_pad_pool_fixtures.py       # needs torch; rewrites the fixture file

Same format as ``make_layer_fixtures.py`` (``<case>::config``, ``::in.*``, ``::out.*``), with
two extra inputs: ``indices`` (what ``MaxUnpool2d`` is called with) and the call's keyword
arguments in the config (``call``: ``output_size``). A layer that returns ``(y, indices)``
(``return_indices=True``) stores both; the indices must match exactly.
``tests/test_padding_pooling.py`` replays the cases without torch and runs the same builders
live on random configurations. torch is imported only inside the functions that need it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __name__ == "__main__":  # run as a script from a checkout: import the package beside tests/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import minicnn as mc
from minicnn import backends, nn
from make_layer_fixtures import _draw, case_seed, compare, load_fixtures as _load_fixtures, write_fixtures

FIXTURE = Path(__file__).parent / "fixtures" / "pad_pool.npz"

# the layers these cases cover (test_layers_fixtures counts them as covered)
COVERED = ("ZeroPad2d", "ConstantPad2d", "ReflectionPad2d", "ReplicationPad2d", "CircularPad2d", "MaxUnpool2d",
           "BatchNorm1d", "Dropout2d")


def _tuples(v):
    return tuple(v) if isinstance(v, list) else v  # JSON turns tuples into lists


def build(cfg, lib):
    """The case's module from ``lib`` (``minicnn.nn`` or ``torch.nn``): ``cls(*args, **kwargs)``."""
    return getattr(lib, cfg["cls"])(*map(_tuples, cfg.get("args", [])),
                                     **{k: _tuples(v) for k, v in cfg.get("kwargs", {}).items()})


def make_arrays(cfg, rng):
    """Inputs (one ``x`` per step), initial state, ``indices`` for an unpool and the upstream gradient."""
    dtype = np.dtype(cfg.get("dtype", "float32"))
    steps = cfg.get("steps", 1)
    arrays = {}
    if cfg["cls"] == "MaxUnpool2d":
        # values and indices as MaxPool2d(return_indices=True) makes them, from a larger input
        pool = nn.MaxPool2d(cfg["args"][0], cfg["kwargs"].get("stride"), cfg["kwargs"].get("padding", 0),
                            return_indices=True)
        src = _draw(rng, cfg["pool_shape"], "distinct", dtype)
        with mc.backend("numpy"), mc.no_grad():
            x, idx = pool(src)
        arrays["x"] = x[None].astype(dtype)
        arrays["indices"] = np.asarray(idx, dtype=np.int64)
    else:
        arrays["x"] = np.stack([_draw(rng, cfg["x_shape"], cfg.get("input", "normal"), dtype) for _ in range(steps)])
    model = build(cfg, nn)
    for key, v in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith("running_var"):
            val = rng.uniform(0.5, 2.0, v.shape)
        elif key.endswith("weight") and v.ndim == 1:  # batch-norm gamma away from 0
            val = rng.uniform(0.5, 1.5, v.shape)
        else:
            val = rng.standard_normal(v.shape) * 0.5
        arrays[f"state.{key}"] = val.astype(dtype)
    with mc.backend("numpy"), mc.no_grad():
        y = _call(model.to(dtype).train(cfg.get("train", True)), cfg, arrays["x"][0], arrays.get("indices"))
    y = y[0] if isinstance(y, tuple) else y
    arrays["dy"] = rng.standard_normal(np.shape(y)).astype(dtype)
    return arrays


def _call(model, cfg, x, indices):
    if indices is None:
        return model(x)
    return model(x, indices, **{k: _tuples(v) for k, v in cfg.get("call", {}).items()})


def run_minicnn(cfg, arrays, backend="numpy"):
    """Replay one case on minicnn (on ``backend``); the same keys as ``run_torch``."""
    dtype = np.dtype(cfg.get("dtype", "float32"))
    with mc.backend(backend):
        model = build(cfg, nn).to(dtype)
        model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("state.")}, strict=True)
        model.train(cfg.get("train", True))
        for x in arrays["x"]:
            y = _call(model, cfg, x, arrays.get("indices"))
        out = {}
        if isinstance(y, tuple):
            y, out["indices"] = y[0], backends.to_numpy(y[1])
        dx = model.backward(arrays["dy"])
        out.update(y=mc.to_numpy(y), dx=mc.to_numpy(dx))
        for name, p in model.named_parameters():
            out[f"grad.{name}"] = mc.to_numpy(p.grad)
        for name, v in model.state_dict().items():
            out[f"after.{name}"] = v
        return out


def run_torch(cfg, arrays):
    """The case in PyTorch: the reference answer."""
    import torch

    tdtype = {"float32": torch.float32, "float64": torch.float64}[cfg.get("dtype", "float32")]
    model = build(cfg, torch.nn).to(tdtype)
    state = {k[6:]: torch.tensor(v) for k, v in arrays.items() if k.startswith("state.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    model.train(cfg.get("train", True))
    idx = torch.tensor(arrays["indices"]) if "indices" in arrays else None
    for xa in arrays["x"]:
        x = torch.tensor(xa, requires_grad=True)
        y = _call(model, cfg, x, idx)
    out = {}
    if isinstance(y, tuple):
        y, out["indices"] = y[0], y[1].numpy()
    y.backward(torch.tensor(arrays["dy"]))
    out.update(y=y.detach().numpy(), dx=x.grad.numpy())
    for name, p in model.named_parameters():
        out[f"grad.{name}"] = p.grad.numpy()
    for name, v in model.state_dict().items():
        out[f"after.{name}"] = v.numpy().copy()
    return out


def check(got, want, cfg, where=""):
    """``compare`` for the float outputs; indices (int64) must be equal."""
    want = dict(want)
    if "indices" in want:
        idx = want.pop("indices")
        assert "indices" in got, f"{where}: minicnn returned no indices"
        assert got["indices"].dtype == np.int64 and np.array_equal(got["indices"], idx), f"{where}: indices differ"
    compare(got, want, cfg.get("dtype", "float32"), where)


# -- the fixed case list ------------------------------------------------------------------------------

def _case(cls, x_shape, *args, **kwargs):
    cfg = {"cls": cls, "x_shape": x_shape, "args": list(args), "kwargs": kwargs}
    for key in ("steps", "train", "dtype", "input"):
        if key in kwargs:
            cfg[key] = kwargs.pop(key)
    return cfg


CASES = {
    "zeropad_crop": _case("ZeroPad2d", [2, 2, 4, 5], [1, -1, 2, 0]),
    "constantpad_value": _case("ConstantPad2d", [1, 3, 3, 3], 2, 1.5),
    "constantpad_unbatched": _case("ConstantPad2d", [3, 4, 2], [0, 2, 1, 1], -2.0),
    "reflectionpad": _case("ReflectionPad2d", [2, 2, 4, 5], [3, 1, 2, 3]),
    "reflectionpad_unbatched_f64": _case("ReflectionPad2d", [2, 3, 3], 2, dtype="float64"),
    "replicationpad": _case("ReplicationPad2d", [2, 2, 3, 4], [4, 0, 1, 5]),
    "circularpad": _case("CircularPad2d", [1, 2, 4, 5], [2, 5, 4, 1]),
    "conv_reflect": _case("Conv2d", [2, 2, 6, 5], 2, 3, 3, padding=1, padding_mode="reflect"),
    "conv_replicate_stride2": _case("Conv2d", [1, 2, 7, 6], 2, 4, [3, 2], stride=2, padding=[2, 1],
                                    padding_mode="replicate"),
    "conv_circular_groups": _case("Conv2d", [2, 4, 5, 5], 4, 4, 3, padding=1, groups=2, padding_mode="circular"),
    "conv_same_even_kernel": _case("Conv2d", [2, 2, 6, 7], 2, 3, [2, 4], padding="same"),
    "conv_same_dilated_reflect": _case("Conv2d", [1, 2, 7, 6], 2, 2, 2, padding="same", dilation=[3, 2],
                                       padding_mode="reflect", bias=False),
    "conv_same_odd_kernel_f64": _case("Conv2d", [1, 2, 5, 5], 2, 2, 3, padding="same", dtype="float64"),
    "maxpool_ceil": _case("MaxPool2d", [2, 2, 7, 6], 2, stride=2, ceil_mode=True, input="distinct"),
    "maxpool_ceil_s2_p1": _case("MaxPool2d", [1, 3, 8, 9], 3, stride=2, padding=1, ceil_mode=True,
                                input="distinct"),
    "maxpool_ceil_ties_indices": _case("MaxPool2d", [2, 2, 7, 7], 3, stride=2, ceil_mode=True, return_indices=True,
                                       input="ties"),
    "maxpool_indices_dilated": _case("MaxPool2d", [1, 2, 9, 8], [3, 2], stride=[2, 1], padding=1, dilation=[2, 3],
                                     return_indices=True, input="distinct"),
    "avgpool_ceil_include_pad": _case("AvgPool2d", [2, 2, 7, 6], 3, stride=2, padding=1, ceil_mode=True),
    "avgpool_ceil_exclude_pad": _case("AvgPool2d", [2, 2, 8, 7], [3, 2], stride=[3, 2], padding=[1, 0],
                                      ceil_mode=True, count_include_pad=False),
    "adaptive_max_indices": _case("AdaptiveMaxPool2d", [2, 2, 5, 7], [3, 2], return_indices=True, input="distinct"),
    "batchnorm1d_2d_train": _case("BatchNorm1d", [5, 3], 3, steps=2),
    "batchnorm1d_3d_train_momentum_none": _case("BatchNorm1d", [3, 2, 4], 2, steps=3, momentum=None),
    "batchnorm1d_no_affine": _case("BatchNorm1d", [4, 3, 2], 3, steps=2, affine=False),
    "batchnorm1d_eval": _case("BatchNorm1d", [2, 3, 5], 3, train=False),
    "batchnorm1d_no_running_stats": _case("BatchNorm1d", [4, 2], 2, track_running_stats=False, train=False),
    "linear_3d": _case("Linear", [2, 3, 4], 4, 5),
    "linear_1d": _case("Linear", [6], 6, 2),
    "linear_4d_nobias_f64": _case("Linear", [2, 1, 3, 4], 4, 3, bias=False, dtype="float64"),
    "dropout2d_eval": _case("Dropout2d", [2, 3, 2, 2], 0.5, train=False),
    "dropout2d_p0_train": _case("Dropout2d", [2, 3, 2, 2], 0.0),
}
for _name, _k, _s, _p, _pool_shape, _out in (
    ("maxunpool", 2, None, 0, [2, 2, 6, 8], None),
    ("maxunpool_output_size", 2, 2, 0, [1, 2, 7, 5], [7, 5]),
    ("maxunpool_s2_p1_full_size", 3, 2, 1, [2, 1, 8, 9], [1, 1, 8, 9]),
):
    CASES[_name] = {"cls": "MaxUnpool2d", "pool_shape": _pool_shape, "args": [_k],
                    "kwargs": {"stride": _s, "padding": _p}}
    if _out is not None:
        CASES[_name]["call"] = {"output_size": _out}



def load_fixtures(path=FIXTURE):
    """{case: (config, inputs, expected)} from the fixture file."""
    return _load_fixtures(path)


def main(path=FIXTURE):
    """Run every case in torch and write the fixture file; check minicnn on the way, as a report."""
    return write_fixtures(path, CASES, make_arrays, run_torch,
                          lambda cfg, arrays, want, name: check(run_minicnn(cfg, arrays), want, cfg, name))


if __name__ == "__main__":
    raise SystemExit(main())
