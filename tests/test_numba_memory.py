"""The numba backend's results in a training loop come from memory that stays mapped
(``minicnn/backends/numba/_memory.py``): counted in minor page faults, in a fresh process, where
malloc's thresholds are still at their defaults."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("numba")

_FAULTS_PER_STEP = r"""
import resource, sys
import numpy as np
import minicnn as mc
from minicnn import nn, optim
from minicnn.models import fashion
name, n, side, warm, steps = sys.argv[1], *map(int, sys.argv[2:])
with mc.backend("numba"):
    mc.manual_seed(0)
    model = (mc.models.digits_convnet() if name == "digits_convnet" else getattr(fashion, name)()).train()
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = np.random.default_rng(1).standard_normal((n, 1, side, side)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 10, n)
    def step():
        model.zero_grad(); loss_fn(model(x), y); model.backward_params(loss_fn.backward()); opt.step()
    for _ in range(warm):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts Linux minor page faults")
@pytest.mark.parametrize("model, batch, side, warm, steps", [("digits_convnet", 64, 8, 20, 100),
                                                          ("fashion_resnet", 128, 28, 3, 6)])
def test_a_training_step_in_a_fresh_process_touches_no_new_pages(model, batch, side, warm, steps):
    # A digits-convnet step (ReLU outputs of 128 and 256 KiB) took 160 page faults per step in a
    # fresh process while the pool started at 1 MiB: malloc's heap grew and was trimmed every step.
    # A ResNet step took one per page of every residual block's dx, summed with numpy's + (a new
    # array from malloc each time). Once the step's shapes have been seen, every result reuses
    # memory that stays mapped.
    args = [str(v) for v in (batch, side, warm, steps)]
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_STEP, model, *args], capture_output=True, text=True,
                         check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 5
