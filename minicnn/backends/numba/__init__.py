"""The numba backend: parallel CPU kernels for every op, checked against the numpy reference.

Same op table, signatures and array type (numpy arrays) as ``backends/numpy``; one file per
concern (conv + winograd, pool, batchnorm, activation, linear, loss, dropout). Kernels are
``@njit(cache=True, nogil=True, parallel=True)`` loops with ``prange`` over (image, channel) planes or tiles;
matrix products go to numpy's BLAS, everything around them (unfolding, packing, Winograd
transforms, epilogues, reductions) is here. ``_threads`` makes the whole backend safe to call from
several Python threads at once, and every kernel releases the GIL (``nogil=True``), so calls from
several threads compute at the same time (``map_one_thread`` runs the parts of a batch that way). Variants, the conv selection rule and measured accuracy:
docs/kernels.md.

Importing this package starts numba's worker threads, and its ops change a few process-wide
settings while they run (OpenBLAS's thread count during each GEMM, a pool of kept memory maps):
docs/kernels.md, "What this backend changes in your process", lists each with its scope.
"""
import numpy as np

from .. import refuse_device_array
from . import _notice

# before any kernel can compile: the first cache-missing compilation logs "compiling kernels" (see _notice)
_notice.install()

from . import _filters, _threads, activation, batchnorm, conv, dropout, linear, loss, pool
from . import dropout2d, pad
from . import channels_last, conv_transpose, upsample

NAME = "numba"


def asarray(a):
    """``a`` as a numpy array (no copy when it is one); a GPU array is refused, not copied."""
    refuse_device_array(a, NAME)
    return np.asarray(a)


def is_native(a) -> bool:
    """True for numpy arrays, the arrays this backend computes on."""
    return isinstance(a, np.ndarray)


def to_numpy(a):
    """``a`` as a numpy array (no copy for numpy input)."""
    return asarray(a)


threading_layer = _threads.threading_layer


def empty(shape, dtype):
    """A cache-line aligned host array (compiled models keep their activation buffers in these)."""
    return _threads.aligned_empty(shape, dtype=dtype)


def conv_variants(x_shape, w_shape, stride, padding, dilation, groups) -> dict:
    """The forward conv variants that can compute this shape, name -> function with the
    ``conv2d_fused_forward`` signature (plus ``out=``); what an autotuner chooses among.
    ``direct`` is left out: it is the readable baseline, never the fastest (docs/kernels.md)."""
    return {name: fn for name, fn in conv.VARIANTS.items()
            if name != "direct" and conv.supports(name, x_shape, w_shape, stride, padding, dilation, groups)}


# maxpool(relu(conv(x) + b)) in one pass per image (a ResNet stem); compiled models use it when present
conv2d_maxpool_fused = conv.conv2d_maxpool_fused


def _variant_of(key):
    """The variant a derived form of a filter (``_filters`` key) serves, or None (kept regardless)."""
    kind = key[0]
    if kind in ("winograd", "cl_winograd", "cl_winograd_tiles"):
        prefix = "" if kind == "winograd" else "cl_"
        return f"{prefix}winograd_f{key[1]}x{key[1]}_3x3"
    if kind in ("cl_gemm", "cl_gemm_t", "cl_tiles"):
        return kind
    return None


def release_unpicked(w, picked) -> int:
    """Drop the derived forms of constant filter ``w`` (Winograd transforms, the channels-last
    GEMM matrices and packed panels) that no variant in ``picked`` uses: an autotuner tried them
    all, and keeping them would hold up to 8x the filter. When the op's own choice was picked
    ("op"), the channels-last forms stay (the op may use any of them)."""
    def keep(key):
        variant = _variant_of(key)
        if variant is None or variant in picked:
            return True
        return "op" in picked and key[0] != "winograd"

    return _filters.drop(w, keep)


def threads() -> int:
    """Threads the kernels run on (part of an autotuned choice's key)."""
    import numba

    return numba.get_num_threads()

def _channels_last() -> bool:
    """True: compiled models run channels-last here (``channels_last.py`` says why)."""
    return True


OPS = {
    "asarray": asarray, "is_native": is_native, "to_numpy": to_numpy, "empty": empty, "threads": threads,
    "conv_variants": conv_variants, "release_unpicked": release_unpicked,
    "conv2d_maxpool_fused": conv2d_maxpool_fused, "compiled_only": _notice.compiled_only,
    "map_one_thread": _threads.map_one_thread,
    "channels_last": _channels_last, "conv_variants_cl": channels_last.conv_variants_cl,
}
for _mod in (channels_last, conv, pool, batchnorm, activation, linear, loss, dropout, pad, dropout2d, conv_transpose, upsample):
    OPS.update({name: getattr(_mod, name) for name in _mod.__all__})
del _mod
