"""The register-block product (``_tiles.matmul``) against OpenBLAS on ResNet-18's conv products.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.tiles_ab --threads 1,2
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.tiles_ab --threads 2 --kc 128,512,1024

The shapes are the products the channels-last convs of a compiled ResNet-18 run, (output pixels,
R*S*C) . (R*S*C, K), at ``--batch`` images: the stem, each stage's first 3x3 conv (stride 2, or
stride 1 for layer1) and downsample, and layer4's 3x3 conv; then the stacks of products the
Winograd convs run, alpha^2 of (tiles, C) . (C, K) (F(4x4): 36, F(2x2): 16). "openblas" is ``_threads.matmul``
(what ``cl_gemm`` calls: OpenBLAS on one thread per slice, the slices on numba's threads) on the
plain (R*S*C, K) matrix; "tiles" is ``_tiles.matmul`` on the packed one (``cl_tiles``; the packing
is done once per filter, outside the timing, as the filter cache does). ``--kc`` times the tiles
form once per k-block length instead of against OpenBLAS. The forms run in turns, ``--rounds``
times each, the order reversed every round; the best time of each is printed as GFLOP/s (2 * M * K
* N over the time), with the ratio of each form's time to the first form's. The largest
difference between the forms' products is printed, relative to the largest value.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

# (name, products in the stack (0: one 2-D product), rows per image, inner, columns)
SHAPES = [
    ("stem 7x7/2", 0, 112 * 112, 147, 64),
    ("layer1 3x3", 0, 56 * 56, 576, 64),
    ("layer2.0.conv1 3x3/2", 0, 28 * 28, 576, 128),
    ("layer2.0.downsample", 0, 28 * 28, 64, 128),
    ("layer3.0.conv1 3x3/2", 0, 14 * 14, 1152, 256),
    ("layer3.0.downsample", 0, 14 * 14, 128, 256),
    ("layer4.0.conv1 3x3/2", 0, 7 * 7, 2304, 512),
    ("layer4.0.downsample", 0, 7 * 7, 256, 512),
    ("layer4 3x3", 0, 7 * 7, 4608, 512),
    ("layer1 F(4x4)", 36, 14 * 14, 64, 64),
    ("layer2 F(4x4)", 36, 7 * 7, 128, 128),
    ("layer3 F(2x2)", 16, 7 * 7, 256, 256),
    ("layer3 F(4x4)", 36, 4 * 4, 256, 256),
    ("layer4 F(2x2)", 16, 4 * 4, 512, 512),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--batch", type=int, default=1, help="images: the products' rows are the output pixels of this many")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--kc", default="", help="comma-separated k-block lengths to compare (tiles only)")
    args = ap.parse_args(argv)

    import numba

    from minicnn.backends.numba import _threads, _tiles

    threads = [int(t) for t in args.threads.split(",")]
    if any(t < 1 for t in threads) or max(threads) > numba.config.NUMBA_NUM_THREADS:
        raise SystemExit(f"tiles_ab: --threads must be 1..{numba.config.NUMBA_NUM_THREADS}, got {args.threads}")
    kcs = [int(k) for k in args.kc.split(",")] if args.kc else []
    if any(k < 1 for k in kcs):
        raise SystemExit(f"tiles_ab: --kc takes positive lengths, got {args.kc}")
    forms = [f"tiles kc={k}" for k in kcs] if kcs else ["openblas", "tiles"]
    print(f"load average before: {os.getloadavg()[0]:.2f}; batch {args.batch}; best of {args.rounds}; "
          f"vector bytes {_tiles.VECTOR_BYTES}, tile {_tiles.MR} x {_tiles.tile_cols(np.float32)}; "
          f"KC {_tiles.KC}, GROUP {_tiles.GROUP}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print("| product | [Z x] M x K x N | threads | " + " | ".join(f"{f} GFLOP/s" for f in forms) + " | "
          + " | ".join(f"{f} / {forms[0]}" for f in forms[1:]) + " | max rel diff |")
    print("|---|---|---:|" + "---:|" * len(forms) + "---:|" * (len(forms) - 1) + "---:|")
    rng = np.random.default_rng(0)
    saved_threads = numba.get_num_threads()
    try:
        for name, Z, pixels, K, N in SHAPES:
            M = pixels * args.batch
            lead = (Z,) if Z else ()
            a = rng.standard_normal((*lead, M, K), dtype=np.float32)
            b = (rng.standard_normal((*lead, K, N), dtype=np.float32) / np.sqrt(K)).astype(np.float32)
            packed = _tiles.pack(b)
            outs = {f: np.empty((*lead, M, N), np.float32) for f in forms}

            def run(form):
                if form == "openblas":
                    _threads.matmul(a, b, outs[form])
                elif form.startswith("tiles kc="):
                    _tiles.matmul(a, packed, outs[form], kc=int(form.split("=")[1]))
                else:
                    _tiles.matmul(a, packed, outs[form])

            for t in threads:
                numba.set_num_threads(t)
                best = {f: float("inf") for f in forms}
                for f in forms:  # warm-up (and compile)
                    run(f)
                for r in range(args.rounds):
                    for f in (forms if r % 2 == 0 else forms[::-1]):
                        t0 = time.perf_counter()
                        run(f)
                        best[f] = min(best[f], time.perf_counter() - t0)
                flops = 2.0 * max(Z, 1) * M * K * N
                ref = outs[forms[0]]
                diff = max(float(np.abs(outs[f] - ref).max()) for f in forms) / float(np.abs(ref).max())
                print(f"| {name} | {f'{Z} x ' if Z else ''}{M} x {K} x {N} | {t} | " + " | ".join(f"{flops / best[f] / 1e9:.0f}" for f in forms)
                      + " | " + " | ".join(f"{best[f] / best[forms[0]]:.3f}" for f in forms[1:]) + f" | {diff:.1e} |")
    finally:
        numba.set_num_threads(saved_threads)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
