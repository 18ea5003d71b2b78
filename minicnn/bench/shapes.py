"""The shapes the benchmarks run: every distinct layer of ResNet-18 at 224x224, plus small convs.

``resnet18_layers(batch, size)`` walks the architecture (stem, four stages of two BasicBlocks,
64/128/256/512 channels, stride 2 at the first block of stages 2-4, 1x1 stride-2 downsample convs)
and returns each distinct conv shape once with how many times the network uses it, so per-layer
timings add up to a whole forward pass. FLOP counts follow convnet-benchmarks: one multiply-add is
two FLOPs; bias, ReLU and residual adds are not counted.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

F32 = 4  # bytes per float32


def out_size(h, k, stride, pad, dilation=1):
    """floor((h + 2*pad - dilation*(k-1) - 1) / stride) + 1, the conv/pool output rule."""
    return (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1


@dataclass(frozen=True)
class ConvShape:
    """One convolution: input (n, c, h, w), k filters of r x s, stride, padding; ``count`` uses in the net."""

    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: int = 1
    pad: int = 0
    count: int = 1
    where: str = ""

    @property
    def p(self) -> int:
        return out_size(self.h, self.r, self.stride, self.pad)

    @property
    def q(self) -> int:
        return out_size(self.w, self.s, self.stride, self.pad)

    @property
    def macs(self) -> int:
        """Multiply-adds of the forward pass (also of dX and of dW)."""
        return self.n * self.k * self.c * self.r * self.s * self.p * self.q

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def bytes_forward(self, residual: bool = False) -> int:
        """Compulsory float32 traffic: read x and w, write y (and read the residual when fused)."""
        y = self.n * self.k * self.p * self.q
        return F32 * (self.n * self.c * self.h * self.w + self.k * self.c * self.r * self.s + y * (2 if residual else 1))

    def bytes_dx(self) -> int:
        """Read dy and w, write dx."""
        return F32 * (self.n * self.k * self.p * self.q + self.k * self.c * self.r * self.s + self.n * self.c * self.h * self.w)

    def bytes_dw(self) -> int:
        """Read dy and x, write dw."""
        return F32 * (self.n * self.k * self.p * self.q + self.n * self.c * self.h * self.w + self.k * self.c * self.r * self.s)

    @property
    def label(self) -> str:
        return f"conv {self.c}->{self.k} {self.r}x{self.s} s{self.stride} {self.h}x{self.w} n{self.n}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(p=self.p, q=self.q, macs=self.macs, flops=self.flops)
        return d


@dataclass(frozen=True)
class PoolShape:
    """Max pooling of (n, c, h, w) with an r x r window."""

    n: int
    c: int
    h: int
    w: int
    r: int
    stride: int
    pad: int
    count: int = 1
    where: str = ""

    @property
    def p(self) -> int:
        return out_size(self.h, self.r, self.stride, self.pad)

    @property
    def q(self) -> int:
        return out_size(self.w, self.r, self.stride, self.pad)

    @property
    def flops(self) -> int:
        """One comparison per window tap."""
        return self.n * self.c * self.p * self.q * self.r * self.r

    def bytes_forward(self) -> int:
        """Read x, write y (float32) and the argmax (int64)."""
        y = self.n * self.c * self.p * self.q
        return F32 * (self.n * self.c * self.h * self.w + y) + 8 * y

    @property
    def label(self) -> str:
        return f"maxpool {self.r}x{self.r} s{self.stride} {self.c}x{self.h}x{self.w} n{self.n}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(p=self.p, q=self.q, flops=self.flops)
        return d


@dataclass(frozen=True)
class LinearShape:
    """y = x W^T + b with x (n, f) and W (o, f)."""

    n: int
    f: int
    o: int
    count: int = 1
    where: str = ""

    @property
    def macs(self) -> int:
        return self.n * self.f * self.o

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def bytes_forward(self) -> int:
        return F32 * (self.n * self.f + self.o * self.f + self.n * self.o + self.o)

    @property
    def label(self) -> str:
        return f"fc {self.f}->{self.o} n{self.n}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(macs=self.macs, flops=self.flops)
        return d


def resnet18_layers(batch: int = 1, size: int = 224, stages=(2, 2, 2, 2), widths=(64, 128, 256, 512), classes=1000):
    """(convs, maxpool, fc) of a BasicBlock ResNet; each distinct conv once, with its use count.

    ``convs`` is in first-use order; ``where`` names the first layer that uses each shape.
    """
    seen: dict = {}
    order = []

    def add(c, h, k, r, stride, pad, where):
        key = (c, h, k, r, stride, pad)
        if key in seen:
            seen[key]["count"] += 1
        else:
            seen[key] = {"count": 1, "where": where}
            order.append(key)
        return out_size(h, r, stride, pad)

    h = add(3, size, widths[0], 7, 2, 3, "conv1")
    pool = PoolShape(batch, widths[0], h, h, 3, 2, 1, 1, "maxpool")
    h = pool.p
    c = widths[0]
    for i, (nblocks, width) in enumerate(zip(stages, widths), start=1):
        for j in range(nblocks):
            stride = 2 if (j == 0 and i > 1) else 1
            name = f"layer{i}.{j}"
            h_in = h
            h = add(c, h_in, width, 3, stride, 1, f"{name}.conv1")
            add(width, h, width, 3, 1, 1, f"{name}.conv2")
            if stride != 1 or c != width:
                add(c, h_in, width, 1, stride, 0, f"{name}.downsample.0")
            c = width
    convs = [ConvShape(batch, kc, kh, kh, kk, kr, kr, ks, kp, seen[(kc, kh, kk, kr, ks, kp)]["count"],
                       seen[(kc, kh, kk, kr, ks, kp)]["where"]) for (kc, kh, kk, kr, ks, kp) in order]
    fc = LinearShape(batch, c, classes, 1, "fc")
    return convs, pool, fc


def small_convs(batch: int = 8):
    """Cheap convs where even the seven-loop numpy reference can be timed (digits-convnet sized)."""
    return [
        ConvShape(batch, 1, 8, 8, 16, 3, 3, 1, 1, 1, "digits conv1"),
        ConvShape(batch, 16, 4, 4, 32, 3, 3, 1, 1, 1, "digits conv2"),
    ]


def network_macs(convs, fc) -> int:
    """Multiply-adds of a whole forward pass: every conv times its use count, plus the fc."""
    return sum(s.macs * s.count for s in convs) + fc.macs
