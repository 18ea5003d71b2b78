"""ResNet-50 inference, compiled, against PyTorch: both on the same seeded weights and input, the
same threads, timed in alternated rounds in one process (a burst of load hits both sides).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python benchmarks/resnet50_compiled.py [BATCH THREADS ROUNDS [SIZE]]

Defaults: batch 8, 2 threads, 10 rounds, 224x224. The logits are checked against PyTorch's (1e-4
relative to the largest) before anything is timed; the first minicnn call autotunes and is not
timed. Prints best and median milliseconds per batch for each side and the img/s ratio.
"""
import os, sys, time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
B, T, R = (int(a) for a in (sys.argv[1:4] + ["8", "2", "10"][len(sys.argv[1:4]):]))
S = int(sys.argv[4]) if len(sys.argv) > 4 else 224
from benchmarks.harness import set_threads; set_threads(T)
import torch, minicnn as mc, torch_bottleneck
from minicnn.models.resnet import resnet50, seeded_state_dict
from minicnn.inference import compile_inference
torch.set_num_threads(T); sd = seeded_state_dict("resnet50", 0)
x = np.random.default_rng(0).standard_normal((B, 3, S, S)).astype(np.float32)
tm = torch_bottleneck.build("resnet50", state_dict=sd).eval()
with mc.backend("numba"):
    fast = compile_inference(resnet50(weights=sd).eval()); y = mc.to_numpy(fast(x))  # first call autotunes
    with torch.no_grad(): ref = tm(torch.from_numpy(x)).numpy()
    assert np.abs(y - ref).max() / np.abs(ref).max() < 1e-4
    def rounds():
        mts, tts = [], []
        for _ in range(R):  # alternated, so a burst of load hits both
            t0 = time.perf_counter(); fast(x); mts.append(time.perf_counter() - t0)
            with torch.no_grad():
                t0 = time.perf_counter(); tm(torch.from_numpy(x)); tts.append(time.perf_counter() - t0)
        return mts, tts
    mts, tts = rounds()
mt, tt = min(mts), min(tts)
print(f"ResNet-50 b{B} {S}x{S} {T} threads, {R} alternated rounds: minicnn compiled {B/mt:.2f} img/s "
      f"(best {mt*1e3:.0f} ms, median {np.median(mts)*1e3:.0f} ms), PyTorch {B/tt:.2f} img/s "
      f"(best {tt*1e3:.0f} ms, median {np.median(tts)*1e3:.0f} ms), minicnn/PyTorch img/s {tt/mt:.2f}x")
