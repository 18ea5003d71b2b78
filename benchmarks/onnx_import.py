"""An ONNX-imported ResNet-18 against the native one: eval forward on numba, batch 1 and 8,
alternating in one process (the best of N calls each, milliseconds).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.onnx_import

The model is exported by ``mc.onnx.export`` and read back by ``mc.onnx.load`` (needs the ``onnx``
extra); both run the same layers, so the ratio shows what the imported graph's bookkeeping costs.
"""
from __future__ import annotations

import io
import json
import time

import numpy as np


def main() -> int:
    import minicnn as mc
    from minicnn.models.resnet import resnet18, seeded_state_dict

    net = resnet18(weights=seeded_state_dict("resnet18", seed=0)).eval()
    buf = io.BytesIO()
    mc.onnx.export(net, buf, np.zeros((1, 3, 224, 224), np.float32))
    imported = mc.onnx.load(buf.getvalue()).eval()
    out = {}
    with mc.backend("numba"), mc.no_grad():
        for b, rounds in ((1, 20), (8, 5)):
            x = np.random.default_rng(1).standard_normal((b, 3, 224, 224)).astype(np.float32)
            ref = net(x)
            err = float(np.abs(imported(x) - ref).max() / np.abs(ref).max())
            assert err < 1e-4, f"imported model differs from the native one: {err:.2e}"
            best = {"native": float("inf"), "onnx": float("inf")}
            for _ in range(rounds):
                for name, m in (("native", net), ("onnx", imported)):
                    t0 = time.perf_counter()
                    m(x)
                    best[name] = min(best[name], time.perf_counter() - t0)
            out[f"batch {b}"] = {"native_ms": round(1e3 * best["native"], 1), "onnx_ms": round(1e3 * best["onnx"], 1),
                                 "onnx/native": round(best["onnx"] / best["native"], 3)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
