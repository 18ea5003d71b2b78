"""What the ONNX tests (import, export, compiled graphs) compare with: a relative error and a run
of a model through ONNX Runtime, the reference."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn as mc


def rel(a, b):
    """max |a - b| / max |b|, in float64; the shapes must agree."""
    a, b = np.asarray(mc.to_numpy(a), np.float64), np.asarray(mc.to_numpy(b), np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def ort_run(path_or_bytes, *xs):
    """Every output of the model (a path, or the file's bytes) run by ONNX Runtime on ``xs``, one
    array per graph input in order; the test skips without onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    src = path_or_bytes if isinstance(path_or_bytes, (bytes, str)) else str(path_or_bytes)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})
