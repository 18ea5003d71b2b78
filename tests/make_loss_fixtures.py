"""Write ``tests/fixtures/losses.npz``: PyTorch's answers for a fixed list of loss cases.

    python tests/make_loss_fixtures.py          # needs torch; rewrites the fixture file

A case names a loss class, its keyword arguments, the input shape and dtype and the kind of
target; class weights and ``pos_weight`` are drawn from the case's seed (``weight_shape``,
``pos_weight_shape``). For every case the file holds, under ``<case>::<name>``: the config as
JSON, the inputs (``in.x``, ``in.target``, ``in.weight``, ``in.pos_weight``, ``in.dloss``) and
what PyTorch computed (``out.loss``, ``out.dx``). ``tests/test_losses.py`` replays the cases on
every backend without torch and runs the same two builders live on random configurations.

torch is imported only inside the functions that need it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __name__ == "__main__":  # run as a script from a checkout: import the package beside tests/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import minicnn as mc
from minicnn import nn
from make_layer_fixtures import case_seed, load_fixtures as _load_fixtures, write_fixtures  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "losses.npz"
CLASS_LOSSES = ("CrossEntropyLoss", "NLLLoss")



def make_arrays(cfg, rng):
    """Input, target, optional weights and the upstream gradient for ``cfg``."""
    dtype = np.dtype(cfg.get("dtype", "float32"))
    shape = tuple(cfg["x_shape"])
    kw = cfg.get("kwargs", {})
    scale = {"normal": 1.0, "wide": 20.0, "huge": 1e4}[cfg.get("input", "normal")]
    x = rng.standard_normal(shape) * scale
    kind = cfg["target"]
    if cfg["loss"] == "NLLLoss":  # log-probabilities
        x = x - x.max(axis=1, keepdims=True)
        x = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    arrays = {"x": x.astype(dtype)}
    unbatched = kind.endswith("unbatched")
    if kind.startswith("index"):
        c = shape[0] if unbatched else shape[1]
        tshape = () if unbatched else (shape[0],) + shape[2:]
        t = rng.integers(0, c, tshape)
        if "ignore" in cfg:
            t[rng.random(tshape) < cfg["ignore"]] = kw.get("ignore_index", -100)
        arrays["target"] = np.asarray(t, np.int64)
    elif kind.startswith("prob"):
        y = rng.random(shape)
        arrays["target"] = (y / y.sum(axis=0 if unbatched else 1, keepdims=True)).astype(dtype)
    elif kind == "binary":
        t = rng.uniform(0, 1, shape)
        t.flat[::2] = np.round(t.flat[::2])
        arrays["target"] = t.astype(dtype)
    else:  # regression
        arrays["target"] = (rng.standard_normal(shape) * cfg.get("target_scale", 1.0)).astype(dtype)
    for name in ("weight", "pos_weight"):
        if f"{name}_shape" in cfg:
            arrays[name] = rng.uniform(0.2, 3.0, cfg[f"{name}_shape"]).astype(dtype)
    if kw.get("reduction", "mean") == "none":
        lshape = shape if cfg["loss"] not in CLASS_LOSSES else (() if unbatched else (shape[0],) + shape[2:])
        arrays["dloss"] = rng.uniform(-2.0, 2.0, lshape).astype(dtype)
    else:
        arrays["dloss"] = np.array(rng.uniform(0.5, 2.0), dtype=np.float64)
    return arrays


def build(cfg, lib, arrays, as_tensor=lambda a: a):
    """The loss module from ``lib`` (``minicnn.nn`` or ``torch.nn``) with the case's arguments."""
    kw = dict(cfg.get("kwargs", {}))
    for name in ("weight", "pos_weight"):
        if name in arrays:
            kw[name] = as_tensor(arrays[name])
    return getattr(lib, cfg["loss"])(**kw)


def run_minicnn(cfg, arrays, backend="numpy"):
    """The case on minicnn (on ``backend``): ``{"loss": ..., "dx": ...}``."""
    dtype = np.dtype(cfg.get("dtype", "float32"))
    with mc.backend(backend):
        fn = build(cfg, nn, arrays).to(dtype)
        loss = fn(arrays["x"], arrays["target"])
        dloss = arrays["dloss"] if arrays["dloss"].ndim else float(arrays["dloss"])
        dx = fn.backward(dloss)
        return {"loss": np.asarray(mc.to_numpy(loss) if not isinstance(loss, float) else loss, dtype=np.float64),
                "dx": mc.to_numpy(dx)}


def run_torch(cfg, arrays):
    """The case in PyTorch: the reference answer."""
    import torch

    tdtype = {"float32": torch.float32, "float64": torch.float64}[cfg.get("dtype", "float32")]
    fn = build(cfg, torch.nn, arrays, lambda a: torch.tensor(a, dtype=tdtype))
    x = torch.tensor(arrays["x"], dtype=tdtype, requires_grad=True)
    loss = fn(x, torch.tensor(arrays["target"]))
    loss.backward(torch.tensor(arrays["dloss"], dtype=tdtype))
    return {"loss": loss.detach().numpy().astype(np.float64), "dx": x.grad.numpy()}


def compare(got, want, dtype, where=""):
    """loss and dx close (float32: 2e-5, float64: 1e-9, relative to the largest magnitude); NaN where torch has NaN."""
    tol = 2e-5 if np.dtype(dtype) == np.float32 else 1e-9
    for key in ("loss", "dx"):
        g, w = np.asarray(got[key]), np.asarray(want[key])
        assert g.shape == w.shape, f"{where} {key}: minicnn shape {g.shape}, torch shape {w.shape}"
        finite = np.isfinite(w)
        scale = max(1.0, float(np.max(np.abs(w[finite]), initial=0.0)))
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * scale, equal_nan=True, err_msg=f"{where} {key}")


# -- the fixed case list ------------------------------------------------------------------------------

def _case(loss, x_shape, target, **cfg):
    cfg.update(loss=loss, x_shape=list(x_shape), target=target)
    return cfg


CASES = {
    # cross-entropy: the plain case, weights, ignore_index, smoothing, the segmentation layout, probabilities
    "ce_plain_mean": _case("CrossEntropyLoss", (5, 4), "index"),
    "ce_plain_sum_f64": _case("CrossEntropyLoss", (4, 6), "index", kwargs={"reduction": "sum"}, dtype="float64"),
    "ce_huge_logits": _case("CrossEntropyLoss", (3, 5), "index", input="huge"),
    "ce_weight_ignore_mean": _case("CrossEntropyLoss", (8, 5), "index", weight_shape=[5], ignore=0.3),
    "ce_ignore_in_range": _case("CrossEntropyLoss", (6, 4), "index", kwargs={"ignore_index": 1}, ignore=0.3),
    "ce_all_ignored_mean": _case("CrossEntropyLoss", (3, 4), "index", ignore=1.0),
    "ce_smooth_weight_ignore_mean": _case("CrossEntropyLoss", (7, 5), "index", weight_shape=[5], ignore=0.3,
                                          kwargs={"label_smoothing": 0.15}),
    "ce_seg_ignore_mean": _case("CrossEntropyLoss", (2, 4, 3, 5), "index", ignore=0.2),
    "ce_seg_smooth_weight_sum": _case("CrossEntropyLoss", (2, 3, 4, 4), "index", weight_shape=[3], ignore=0.2,
                                      kwargs={"label_smoothing": 0.3, "reduction": "sum"}),
    "ce_seg_weight_none_f64": _case("CrossEntropyLoss", (2, 3, 2, 3), "index", weight_shape=[3], ignore=0.2,
                                    kwargs={"reduction": "none", "ignore_index": 0}, dtype="float64"),
    "ce_3d_smooth_mean": _case("CrossEntropyLoss", (3, 4, 5), "index", kwargs={"label_smoothing": 0.5}),
    "ce_prob_mean": _case("CrossEntropyLoss", (5, 4), "prob"),
    "ce_prob_seg_smooth_weight_mean": _case("CrossEntropyLoss", (2, 3, 3, 2), "prob", weight_shape=[3],
                                            kwargs={"label_smoothing": 0.2}),
    "ce_prob_weight_none": _case("CrossEntropyLoss", (4, 3), "prob", weight_shape=[3], kwargs={"reduction": "none"}),
    "ce_unbatched": _case("CrossEntropyLoss", (5,), "index_unbatched"),
    "ce_unbatched_none": _case("CrossEntropyLoss", (4,), "index_unbatched", kwargs={"reduction": "none"}),
    # NLL
    "nll_mean": _case("NLLLoss", (6, 4), "index"),
    "nll_weight_ignore_mean": _case("NLLLoss", (8, 5), "index", weight_shape=[5], ignore=0.3),
    "nll_seg_none": _case("NLLLoss", (2, 3, 2, 4), "index", ignore=0.2, kwargs={"reduction": "none"}),
    "nll_seg_weight_sum_f64": _case("NLLLoss", (2, 4, 3), "index", weight_shape=[4], kwargs={"reduction": "sum"},
                                    dtype="float64"),
    # BCE with logits
    "bce_mean": _case("BCEWithLogitsLoss", (4, 3), "binary", input="wide"),
    "bce_pos_weight_mean": _case("BCEWithLogitsLoss", (5, 4), "binary", pos_weight_shape=[4], input="wide"),
    "bce_weight_pos_weight_none": _case("BCEWithLogitsLoss", (3, 4), "binary", weight_shape=[3, 1],
                                        pos_weight_shape=[4], kwargs={"reduction": "none"}),
    "bce_seg_pos_weight_sum": _case("BCEWithLogitsLoss", (2, 3, 2, 2), "binary", pos_weight_shape=[3, 1, 1],
                                    kwargs={"reduction": "sum"}),
    # regression
    "l1_mean": _case("L1Loss", (3, 4), "regression"),
    "l1_none_f64": _case("L1Loss", (2, 3, 2), "regression", kwargs={"reduction": "none"}, dtype="float64"),
    "mse_sum": _case("MSELoss", (4, 3), "regression", kwargs={"reduction": "sum"}),
    "mse_none": _case("MSELoss", (2, 5), "regression", kwargs={"reduction": "none"}),
    "smooth_l1_mean": _case("SmoothL1Loss", (4, 5), "regression"),
    "smooth_l1_beta_half_none": _case("SmoothL1Loss", (3, 6), "regression", kwargs={"beta": 0.5, "reduction": "none"}),
    "smooth_l1_beta_zero_sum": _case("SmoothL1Loss", (3, 4), "regression", kwargs={"beta": 0.0, "reduction": "sum"}),
    "huber_mean": _case("HuberLoss", (4, 5), "regression", target_scale=2.0),
    "huber_delta_none_f64": _case("HuberLoss", (3, 6), "regression", kwargs={"delta": 0.4, "reduction": "none"},
                                  dtype="float64"),
    "huber_delta_sum": _case("HuberLoss", (2, 7), "regression", kwargs={"delta": 2.5, "reduction": "sum"},
                             target_scale=3.0),
}

COVERED = {cfg["loss"] for cfg in CASES.values()}  # the nn classes these fixtures cover


def load_fixtures(path=FIXTURE):
    """{case: (config, inputs, expected)} from the fixture file."""
    return _load_fixtures(path)


def main(path=FIXTURE):
    """Run every case in torch and write the fixture file; check minicnn on the way, as a report."""
    return write_fixtures(path, CASES, make_arrays, run_torch,
                          lambda cfg, arrays, want, name: compare(run_minicnn(cfg, arrays), want, cfg.get("dtype", "float32"), name))


if __name__ == "__main__":
    raise SystemExit(main())
