"""Write ``tests/fixtures/activations.npz``: PyTorch's answers for the activation and softmax layers.

Each case names a layer (the same name in ``torch.nn`` and ``minicnn.nn``), its arguments, the
input shape and dtype; the input holds the function's kink values (0, -3, +3 where they matter)
at random places among N(0, 3^2) draws, so PyTorch's derivative conventions at the kinks are
recorded too. Stored per case: the input, the upstream gradient, PReLU's slopes, and PyTorch's
output, dL/dx and slope gradient. Run ``python tests/make_activation_fixtures.py`` after editing
``CASES``; ``tests/test_activations.py`` replays them on every backend without torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import minicnn as mc
from make_layer_fixtures import case_seed, compare, load_fixtures as _load_fixtures, write_fixtures

FIXTURE = Path(__file__).parent / "fixtures" / "activations.npz"
KINKS = {"LeakyReLU": [0.0], "ELU": [0.0], "SELU": [0.0], "PReLU": [0.0], "Hardswish": [-3.0, 3.0, 0.0],
         "Hardsigmoid": [-3.0, 3.0], "ReLU": [0.0], "Softsign": [0.0]}


def _case(layer, x_shape, dtype="float32", **args):
    return {"layer": layer, "args": args, "x_shape": list(x_shape), "dtype": dtype}


CASES = {
    "leaky_relu_default": _case("LeakyReLU", [2, 3, 4, 4]),
    "leaky_relu_slope": _case("LeakyReLU", [5, 7], "float64", negative_slope=0.2),
    "leaky_relu_negative_slope": _case("LeakyReLU", [4, 6], negative_slope=-0.5),
    "elu_default": _case("ELU", [2, 3, 5]),
    "elu_alpha": _case("ELU", [3, 4, 2, 2], "float64", alpha=0.5),
    "selu": _case("SELU", [4, 9]),
    "gelu_none": _case("GELU", [2, 4, 3, 3]),
    "gelu_tanh": _case("GELU", [6, 5], "float64", approximate="tanh"),
    "silu": _case("SiLU", [3, 8]),
    "hardswish": _case("Hardswish", [2, 3, 4, 4]),
    "hardswish_f64": _case("Hardswish", [30], "float64"),
    "hardsigmoid": _case("Hardsigmoid", [2, 3, 4, 4]),
    "softplus_default": _case("Softplus", [4, 10]),
    "softplus_beta_threshold": _case("Softplus", [4, 10], "float64", beta=2.0, threshold=5.0),
    "softplus_negative_beta": _case("Softplus", [3, 7], beta=-1.5, threshold=2.0),
    "softsign": _case("Softsign", [3, 4, 5]),
    "prelu_shared": _case("PReLU", [2, 3, 4, 4]),
    "prelu_per_channel": _case("PReLU", [2, 3, 4, 4], num_parameters=3, init=0.1),
    "prelu_per_channel_2d": _case("PReLU", [5, 4], "float64", num_parameters=4),
    "prelu_1d": _case("PReLU", [7]),
    "softmax_dim1": _case("Softmax", [4, 5], dim=1),
    "softmax_dim0_3d": _case("Softmax", [3, 4, 5], "float64", dim=0),
    "softmax_dim_neg1_4d": _case("Softmax", [2, 3, 4, 5], dim=-1),
    "log_softmax_dim1_4d": _case("LogSoftmax", [2, 6, 3, 3], dim=1),
    "log_softmax_dim_neg2": _case("LogSoftmax", [3, 5, 4], "float64", dim=-2),
    "softmin_dim1": _case("Softmin", [4, 6], dim=1),
    "softmin_dim2": _case("Softmin", [2, 3, 4], dim=2),
}
# the minicnn.nn layers these fixtures cover (tests/test_layers_fixtures.py leaves them to this file)
COVERED = sorted({cfg["layer"] for cfg in CASES.values()})


def make_arrays(cfg, rng):
    """x (with the layer's kink values planted), dy, and PReLU's slopes."""
    dtype = np.dtype(cfg["dtype"])
    shape = tuple(cfg["x_shape"])
    x = rng.standard_normal(shape) * 3.0
    kinks = KINKS.get(cfg["layer"], [])
    if kinks and x.size:
        flat = x.reshape(-1)
        at = rng.choice(x.size, min(x.size, 2 * len(kinks)), replace=False)
        flat[at] = np.resize(kinks, at.size)
    arrays = {"x": x.astype(dtype), "dy": rng.standard_normal(shape).astype(dtype)}
    if cfg["layer"] == "PReLU":
        n = cfg["args"].get("num_parameters", 1)
        arrays["weight"] = rng.uniform(-0.5, 0.5, n).astype(dtype)
    return arrays


def run_minicnn(cfg, arrays, backend="numpy"):
    """The case on minicnn (on ``backend``): {"y", "dx"} plus "dweight" for PReLU."""
    with mc.backend(backend):
        layer = getattr(mc.nn, cfg["layer"])(**cfg["args"]).to(np.dtype(cfg["dtype"]))
        if "weight" in arrays:
            layer.load_state_dict({"weight": arrays["weight"]})
        y = layer(arrays["x"])
        dx = layer.backward(arrays["dy"])
        out = {"y": mc.to_numpy(y), "dx": mc.to_numpy(dx)}
        if "weight" in arrays:
            out["dweight"] = mc.to_numpy(layer.weight.grad)
        return out


def run_torch(cfg, arrays):
    """The case in PyTorch: the reference answer, same keys as ``run_minicnn``."""
    import torch

    layer = getattr(torch.nn, cfg["layer"])(**cfg["args"]).to(getattr(torch, cfg["dtype"]))
    if "weight" in arrays:
        layer.load_state_dict({"weight": torch.tensor(arrays["weight"])})
    x = torch.tensor(arrays["x"], requires_grad=True)
    y = layer(x)
    y.backward(torch.tensor(arrays["dy"]))
    out = {"y": y.detach().numpy().copy(), "dx": x.grad.numpy().copy()}
    if "weight" in arrays:
        out["dweight"] = layer.weight.grad.numpy().copy()
    return out


def load_fixtures(path=FIXTURE):
    """{case: (config, inputs, expected)} from the fixture file."""
    return _load_fixtures(path)


def main(path=FIXTURE):
    """Run every case in torch and write the fixture file; check minicnn on the way, as a report."""
    return write_fixtures(path, CASES, make_arrays, run_torch,
                          lambda cfg, arrays, want, name: compare(run_minicnn(cfg, arrays), want, cfg["dtype"], name))


if __name__ == "__main__":
    raise SystemExit(main())
