"""The library's seeded randomness, so that runs are reproducible.

One numpy Generator serves weight initialisation, data shuffling and dropout on the host
backends (``get_rng()``; it is the default ``generator`` entry of a backend's table). A backend
that computes elsewhere draws its dropout masks from a generator of its own, in its own memory;
``manual_seed`` must reseed that one too, although this module knows no device library. So a
device backend keeps its generator here, under a key, and fills its ``generator`` table entry with::

    def generator():
        return minicnn.random.backend_generator("cupy", lambda seed: cupy.random.default_rng(seed))

``backend_generator(key, make)`` returns the generator kept under ``key``, built by ``make(seed)``
on the first call after each ``manual_seed(seed)`` (and on the very first call, from the initial
seed 0); between reseeds it returns the same object, so its stream continues as the host
Generator's does. ``manual_seed`` drops every kept generator at once; nothing is drawn from
the new seed until a backend asks.
"""
from __future__ import annotations

import threading

import numpy as np

_seed = 0
_rng = np.random.default_rng(_seed)
_device_rngs: dict = {}  # key -> generator built from _seed by its backend's factory
_lock = threading.RLock()


def manual_seed(seed: int) -> None:
    """Reseed the generator used by layer initialisers, dropout and data shuffling, and (lazily)
    every backend's own generator kept by :func:`backend_generator`."""
    global _rng, _seed
    with _lock:
        _seed = seed
        _rng = np.random.default_rng(seed)
        _device_rngs.clear()


def initial_seed() -> int:
    """The seed given to the last ``manual_seed`` call (0 before any), as ``torch.initial_seed``."""
    return _seed


def get_rng() -> np.random.Generator:
    """The library's numpy Generator (host memory)."""
    return _rng


def backend_generator(key: str, make):
    """The generator a backend keeps under ``key``, built by ``make(seed)`` from the current seed
    when there is none since the last ``manual_seed`` (see the module docstring)."""
    with _lock:
        rng = _device_rngs.get(key)
        if rng is None:
            rng = _device_rngs[key] = make(_seed)
        return rng
