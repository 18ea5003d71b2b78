"""Reduced-precision modes of the cupy backend's float32 convolutions, chosen explicitly.

Three modes, per thread, ``"fp32"`` by default:

- ``"fp32"``: float32 inputs, float32 products and sums (the numpy reference's arithmetic).
- ``"tf32"``: the forward convolution's products on tensor cores in TF32 (inputs rounded to a
  10-bit mantissa, ``mma.sync`` on tf32, float32 accumulation); expect relative errors near
  1e-3 of the output's magnitude instead of 1e-6.
- ``"bf16"``: the forward convolution multiplies bfloat16 copies of its input and filter (8-bit
  mantissa) on tensor cores (``mma.sync`` on bf16) and accumulates in float32; expect relative
  errors near 1e-2.

A mode applies to the float32 forward convolutions (``conv2d_forward``,
``conv2d_fused_forward`` and the ``conv_variants`` the autotuner sees); float64 always computes in
float64, and gradients always in the input's dtype. Leaving the context restores the mode that
was in force, so nothing changes behind a caller's back::

    from minicnn.backends.cupy import precision
    with precision("tf32"):
        y = model(x)
"""
from __future__ import annotations

import contextlib
import threading

MODES = ("fp32", "tf32", "bf16")

_state = threading.local()


def get_precision() -> str:
    """The mode in force on this thread: ``"fp32"`` (the default), ``"tf32"`` or ``"bf16"``."""
    return getattr(_state, "mode", "fp32")


@contextlib.contextmanager
def precision(mode: str):
    """Run the enclosed float32 forward convolutions in ``mode`` on this thread.

    Args:
        mode: ``"fp32"``, ``"tf32"`` or ``"bf16"`` (see the module docstring).

    Raises:
        ValueError: for any other mode.
    """
    if mode not in MODES:
        raise ValueError(f"precision mode must be one of {', '.join(MODES)}, got {mode!r}")
    previous = get_precision()
    _state.mode = mode
    try:
        yield mode
    finally:
        _state.mode = previous
