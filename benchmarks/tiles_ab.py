"""The register-block product (``_tiles.matmul``) against OpenBLAS on ResNet-18's conv products.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.tiles_ab --threads 1,2
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.tiles_ab --threads 2 --kc 128,512,1024
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.tiles_ab --threads 2 --nchw --batch 1

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

``--nchw`` times the products of the NCHW im2col convs instead (training, and inference that is
not compiled): the filter (K, C*R*S) times a chunk's unfolded columns (C*R*S, images * P*Q) for the
forward, the transposed filter times packed dY (K, images * P*Q) for dX, each chunk as many images
as ``conv.chunk_images`` gives. There "tiles" reads B in place, unpacked, as ``conv._product``
does (B is made anew for every product), and the last column says which form that function's rule
picks. The digits convnet's layers run at its training batch (64) whatever ``--batch`` says.
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

# (name, rows of A, inner, output cells per image, fixed batch or 0 for --batch)
NCHW_SHAPES = [
    ("digits conv1 y", 16, 9, 8 * 8, 64),
    ("digits conv2 y", 32, 144, 4 * 4, 64),
    ("digits conv2 dX", 144, 32, 4 * 4, 64),
    ("stem 7x7/2 y", 64, 147, 112 * 112, 0),
    ("layer2.0.conv1 3x3/2 y", 128, 576, 28 * 28, 0),
    ("layer2.0.conv1 dX", 576, 128, 28 * 28, 0),
    ("layer2.0.downsample y", 128, 64, 28 * 28, 0),
    ("layer3.0.conv1 3x3/2 y", 256, 1152, 14 * 14, 0),
    ("layer3.0.downsample y", 256, 128, 14 * 14, 0),
    ("layer4.0.conv1 3x3/2 y", 512, 2304, 7 * 7, 0),
    ("layer4.0.downsample y", 512, 256, 7 * 7, 0),
    ("layer4 3x3 y", 512, 4608, 7 * 7, 0),
    ("layer4 3x3 dX", 4608, 512, 7 * 7, 0),
]


def _nchw_cases(batch):
    """(name, M, K, N, rule picks tiles) of each NCHW product, N the columns of one chunk."""
    from minicnn.backends.numba import conv

    cases = []
    for name, M, K, cells, fixed in NCHW_SHAPES:
        n = fixed or batch
        unfolded = M if name.endswith("dX") else K  # C*R*S: the rows of the unfolded columns
        N = cells * conv.chunk_images(n, unfolded * cells * 4, cells)
        cases.append((name, M, K, N, conv.by_tiles(K, N, np.float32)))
    return cases


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--batch", type=int, default=1, help="images: the products' rows are the output pixels of this many")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--kc", default="", help="comma-separated k-block lengths to compare (tiles only)")
    ap.add_argument("--nchw", action="store_true", help="the NCHW im2col convs' products, B read in place")
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
    if args.nchw and kcs:
        raise SystemExit("tiles_ab: --nchw compares tiles with OpenBLAS; --kc is for the packed form")
    rule = " | rule picks |" if args.nchw else " |"
    print("| product | [Z x] M x K x N | threads | " + " | ".join(f"{f} GFLOP/s" for f in forms) + " | "
          + " | ".join(f"{f} / {forms[0]}" for f in forms[1:]) + " | max rel diff" + rule)
    print("|---|---|---:|" + "---:|" * len(forms) + "---:|" * (len(forms) - 1) + "---:|" + ("---|" if args.nchw else ""))
    if args.nchw:
        cases = [(name, 0, M, K, N, "tiles" if picks else "openblas") for name, M, K, N, picks in _nchw_cases(args.batch)]
    else:
        cases = [(name, Z, pixels * args.batch, K, N, None) for name, Z, pixels, K, N in SHAPES]
    rng = np.random.default_rng(0)
    saved_threads = numba.get_num_threads()
    try:
        for name, Z, M, K, N, picks in cases:
            lead = (Z,) if Z else ()
            a = rng.standard_normal((*lead, M, K), dtype=np.float32)
            b = (rng.standard_normal((*lead, K, N), dtype=np.float32) / np.sqrt(K)).astype(np.float32)
            packed = b if args.nchw else _tiles.pack(b)
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
                      + " | " + " | ".join(f"{best[f] / best[forms[0]]:.3f}" for f in forms[1:]) + f" | {diff:.1e} |"
                      + (f" {picks} |" if picks else ""))
    finally:
        numba.set_num_threads(saved_threads)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
