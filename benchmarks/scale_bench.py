"""Streaming embed at scale: images/s for one process and for a Dask LocalCluster, and the peak
memory of the single-process run against the number of images (it should stay flat).

    python -m benchmarks.scale_bench --images 1000 4000 16000 --workers 2 --out /tmp/scale_bench

Generates ``max(--images)`` JPEG photos-sized images (640x480 noise with a gradient, so decoding
and resizing cost what they cost on real photos) once under ``--out``, writes seeded ResNet-18
weights, then for each count runs ``minicnn embed SUBSET --out DIR/`` in a fresh process (its peak
resident memory read from the kernel's rusage of that child) and, for the largest count, the same
with ``--dask local:W``. Prints a markdown table. Take the numbers on a quiet machine: the
decode threads, the numba threads and the Dask workers all compete for the same cores.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_images(folder, n, seed=0):
    """``n`` 640x480 JPEGs under ``folder`` (kept between runs)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    have = len(list(folder.glob("*.jpg")))
    ramp = np.linspace(0, 200, 640, dtype=np.float32)[None, :, None]
    for i in range(have, n):
        noise = rng.integers(0, 56, (480, 640, 3)).astype(np.float32)
        Image.fromarray((ramp + noise).astype(np.uint8)).save(folder / f"img_{i:07d}.jpg", quality=90)


def run(cmd):
    """Run ``cmd``; returns (wall seconds, peak resident memory in MiB of that process, stdout)."""
    import threading

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    got = {}
    readers = [threading.Thread(target=lambda k, f: got.__setitem__(k, f.read()), args=(k, f))
               for k, f in (("out", proc.stdout), ("err", proc.stderr))]
    for t in readers:
        t.start()
    # wait4: this child's own rusage (Linux: ru_maxrss in KiB, the largest of the child and the
    # descendants it waited for; Dask's worker processes are not among those)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    for t in readers:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):  # 1: some files unreadable, still a complete run
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{got['err']}")
    return wall, usage.ru_maxrss / 1024, got["out"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[1000, 4000], help="image counts to run")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    p.add_argument("--threads", type=int, default=None, help="numba threads per process")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--out", type=Path, required=True, help="working folder (images, weights, results)")
    args = p.parse_args(argv)

    counts = sorted(args.images)
    pool = args.out / "images"
    make_images(pool, counts[-1])
    weights = args.out / "seed18.safetensors"
    if not weights.exists():
        subprocess.run([sys.executable, "-m", "minicnn", "weights", "seed", "resnet18", str(weights)], check=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    common = ["--weights", str(weights), "--batch-size", str(args.batch_size), "--shard-size", str(args.shard_size)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    rows = []
    for n in counts:
        subset = args.out / f"subset_{n}"
        if not subset.exists():
            subset.mkdir()
            for f in sorted(pool.glob("*.jpg"))[:n]:
                os.symlink(f, subset / f.name)
        runs = [("1 process", [])]
        if n == counts[-1]:
            runs.append((f"LocalCluster, {args.workers} workers", ["--dask", f"local:{args.workers}"]))
        for name, extra in runs:
            dest = args.out / f"emb_{n}_{len(extra)}"
            shutil.rmtree(dest, ignore_errors=True)
            # a fresh interpreter per run: its own rusage, and no model cached from the run before
            wall, peak, out = run([sys.executable, "-m", "minicnn", "embed", str(subset), "--out", f"{dest}/",
                                   *common, *extra])
            rate = float(re.search(r"\(([\d.]+) images/s\)", out).group(1))
            rows.append((n, name, rate, wall, peak if not extra else None))
    print("| images | run | images/s (after model load) | wall s | peak RSS MiB (driver process) |")
    print("|---:|---|---:|---:|---:|")
    for n, name, rate, wall, peak in rows:
        print(f"| {n} | {name} | {rate:.1f} | {wall:.1f} | {'' if peak is None else f'{peak:.0f}'} |")


if __name__ == "__main__":
    main()
