"""The roofline plot: each measured kernel at its arithmetic intensity under two ceilings.

x: arithmetic intensity (FLOPs per byte of compulsory float32 traffic, see ``shapes.py``),
y: achieved GFLOP/s. The ceilings are measured in the same run: numpy's float32 sgemm rate (the
compute roof we can hope for from a matrix-multiply-based conv) and a large array copy (the
memory roof). A point far below both roofs is a kernel with headroom.
"""
from __future__ import annotations


def roofline_points(results):
    """(op, variant, intensity, gflops, label) for every timed row."""
    pts = []
    for r in results:
        if not r.get("intensity"):
            continue
        for v in r["variants"]:
            if v["status"] == "ok" and v.get("gflops"):
                pts.append((r["op"], v["variant"], r["intensity"], v["gflops"], r["label"]))
    return pts


def plot_roofline(results, sgemm_gflops: float, copy_gbps: float, path: str, title: str | None = None) -> str:
    """Draw the roofline PNG at ``path`` and return the path (matplotlib, no display needed)."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = roofline_points(results)
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    xs = [p[2] for p in pts] or [1.0]
    lo, hi = min(xs + [0.1]) / 2, max(xs + [100.0]) * 2
    if math.isfinite(sgemm_gflops) and math.isfinite(copy_gbps) and sgemm_gflops > 0 and copy_gbps > 0:
        ridge = sgemm_gflops / copy_gbps
        grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        ax.plot(grid, [min(sgemm_gflops, copy_gbps * g) for g in grid], "k-", lw=2,
                label=f"roof: sgemm {sgemm_gflops:.0f} GFLOP/s, copy {copy_gbps:.0f} GB/s")
        ax.axvline(ridge, color="0.7", ls=":", lw=1)
    markers = {"conv2d_forward": "o", "conv2d_fused_forward": "s", "conv2d_backward_dx": "^",
               "conv2d_backward_dw": "v", "maxpool2d_forward": "D", "linear_forward": "P"}
    variants = sorted({p[1] for p in pts})
    cmap = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    colors = {v: cmap(i % cmap.N) for i, v in enumerate(variants)}
    seen = set()
    for op, var, ai, gf, _ in pts:
        key = (op, var)
        ax.scatter(ai, gf, marker=markers.get(op, "x"), color=colors[var], s=28, alpha=0.8,
                   label=f"{var} {op}" if key not in seen else None)
        seen.add(key)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(title or "minicnn kernels on ResNet-18 shapes (roofline)")
    ax.grid(True, which="both", ls=":", lw=0.5)
    ax.legend(fontsize=6, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
