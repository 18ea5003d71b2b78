"""Large arrays from a pool of reused blocks, so a training loop stops paying page faults.

Every op returns fresh arrays, and a ResNet-18 training step at batch 16 allocates and frees
hundreds of megabytes of them. numpy takes a large array from malloc, which maps new pages for
it and unmaps them when it is freed; the next step touches fresh pages again and every 4 KiB
page costs a fault, which on a virtual machine is expensive (docs/kernels.md, "Memory that
stays mapped", has the measurements).

``empty`` gives arrays of at least ``POOL_MIN_BYTES`` from anonymous memory maps that the pool
keeps. An array (and every view of it) holds a reference to its map, so a map whose only
reference is the pool's is free and is handed out again, to a request of the same page-rounded
size: a loop that repeats its shapes (a training loop, batched inference) reuses its memory
after the first step. Nothing handed out is ever shared: a block is reused only once no array
refers to it. Free blocks beyond ``POOL_IDLE_MAX_BYTES`` are unmapped when a new block is made,
and ``release()`` unmaps every free block now.

What this changes in the process (docs/kernels.md, "What this backend changes in your
process", lists it with the backend's other process-wide settings): the pool is one per
process and holds its free blocks (up to ``POOL_IDLE_MAX_BYTES``) after the arrays that used
them are gone, so the process's resident memory stays near its high-water mark until
``release()``; ``stats()`` says how much is held.
Whether a block is free is read from its reference count (``sys.getrefcount``): the array
``np.frombuffer`` makes over the map holds a memoryview of the map, and every view of that
array holds the array, so the map's count falls back to the pool's own references exactly when
no array over it is left. The count a free block has is measured once at import
(``_refs_when_free``) rather than assumed. The one way around it is to keep a raw address
(``a.ctypes.data``, a plain int) after the array is gone, which is unsafe for any numpy array.
"""
from __future__ import annotations

import math
import mmap
import os
import sys
import threading

import numpy as np

# requests smaller than this come from numpy as usual. It is glibc's default mmap threshold: from
# there up malloc may map and unmap an array by itself (fresh pages, a fault per page, every step),
# and arrays left on malloc's heap at these sizes made its top grow and shrink within each training
# step (malloc hands the top back to the system once more than 128 KiB of it is free), with the
# same faults (docs/kernels.md, "Memory that stays mapped").
POOL_MIN_BYTES = 128 << 10
# free blocks kept for reuse, in bytes; beyond this the largest free blocks are unmapped
POOL_IDLE_MAX_BYTES = 2 << 30

_PAGE = mmap.PAGESIZE
_lock = threading.Lock()
_blocks: dict[int, list[mmap.mmap]] = {}  # page-rounded size -> maps, oldest first


def _refs_when_free() -> int:
    """sys.getrefcount of a pooled map that no array uses (measured, not assumed)."""
    probe = [mmap.mmap(-1, _PAGE)]
    n = sys.getrefcount(probe[0])
    probe[0].close()
    return n


_FREE = _refs_when_free()


def _is_free(blocks: list, i: int) -> bool:
    # the same expression as in _refs_when_free: the list's reference plus the argument's
    return sys.getrefcount(blocks[i]) == _FREE


def empty(shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)``, from the pool when it is at least ``POOL_MIN_BYTES`` (contents undefined).

    Pooled arrays are C-contiguous, writeable and start on a page boundary.
    """
    dtype = np.dtype(dtype)
    n = math.prod(map(int, shape))
    nbytes = n * dtype.itemsize
    if nbytes < POOL_MIN_BYTES:
        return np.empty(shape, dtype)
    size = -(-nbytes // _PAGE) * _PAGE
    with _lock:
        blocks = _blocks.setdefault(size, [])
        for i in range(len(blocks)):
            if _is_free(blocks, i):
                return np.frombuffer(blocks[i], dtype=dtype, count=n).reshape(shape)
        _trim(POOL_IDLE_MAX_BYTES)
        block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        blocks.append(block)
        return np.frombuffer(block, dtype=dtype, count=n).reshape(shape)


def _trim(keep: int) -> None:
    """Unmap free blocks, largest sizes first, until at most ``keep`` bytes of free blocks remain
    (caller holds the lock)."""
    free = [(size, i) for size, blocks in _blocks.items() for i in range(len(blocks)) if _is_free(blocks, i)]
    idle = sum(size for size, _ in free)
    if idle <= keep:
        return
    doomed = {}
    for size, i in sorted(free, key=lambda si: -si[0]):
        if idle <= keep:
            break
        doomed.setdefault(size, set()).add(i)
        idle -= size
    for size, idx in doomed.items():
        blocks = _blocks[size]
        for i in idx:
            blocks[i].close()
        _blocks[size] = [b for i, b in enumerate(blocks) if i not in idx]
        if not _blocks[size]:
            del _blocks[size]


def release() -> None:
    """Unmap every free block now (blocks in use stay until their arrays are gone)."""
    with _lock:
        _trim(0)


def stats() -> dict:
    """Bytes held by the pool: ``{"in_use": ..., "free": ..., "blocks": ...}``."""
    with _lock:
        in_use = free = count = 0
        for size, blocks in _blocks.items():
            for i in range(len(blocks)):
                count += 1
                if _is_free(blocks, i):
                    free += size
                else:
                    in_use += size
        return {"in_use": in_use, "free": free, "blocks": count}


def _after_fork_in_child() -> None:
    # the lock may have been held by another thread at the fork; the maps themselves are the
    # child's private copies and stay valid
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
