"""Derived forms of constant filters (cast copies, Winograd transforms), computed once per array.

The rule: a filter is *constant* when it is a numpy array that is not writeable and no array it
is a view of is writeable either (walking ``.base``). Nothing can then change its values through
numpy, so whatever is derived from it (its Winograd transform U, a float32 copy of a float64
filter) stays valid for as long as the array lives. Training weights are writeable and are never
cached; compiled inference models hand over read-only folded weights and hit the cache on every
call after the first.

Entries are keyed on ``id(w)``. When the array is freed its ``weakref.finalize`` notes the entry,
and the next call into the cache drops it (a finalizer may run inside any allocation, even one
made under the cache's lock, so it takes no lock itself); a
new array that later gets the same id can never see a stale entry: each entry also keeps a weak
reference to its array and is only used when that reference still points at the array asked
about. The cache is shared by all threads (a lock guards the table; the values are read-only):
one per process, listed with the backend's other process-wide state in docs/kernels.md, "What
this backend changes in your process".
"""
from __future__ import annotations

import collections
import threading
import weakref

import numpy as np

_lock = threading.Lock()
# id(w) -> (weakref to w, {key: derived array})
_table: dict = {}
# (id, weakref) of filters that were freed, whose entries go at the next call that takes the lock
_dead: collections.deque = collections.deque()


def is_constant(w) -> bool:
    """True when ``w`` is a read-only numpy array whose whole ``.base`` chain is read-only too."""
    a = w
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    # memory owned by a non-numpy object (bytes, mmap opened read-only, ...) cannot be written
    # through numpy without a writeable array over it, which the chain above would have shown
    return isinstance(w, np.ndarray)


def _forget(key_id, ref):
    """A filter's finalizer: note its entry for removal. It takes no lock and touches no table: it
    can run inside any allocation that starts a garbage collection, including one made while
    this thread holds ``_lock`` (a non-reentrant lock would deadlock there, and a table changed
    mid-iteration would raise). ``deque.append`` is atomic."""
    _dead.append((key_id, ref))


def _purge():
    """Remove the entries of freed filters; called with ``_lock`` held. Dropping an entry frees its
    arrays, which may free more filters: their notes are taken by the same loop."""
    while _dead:
        key_id, ref = _dead.popleft()
        entry = _table.get(key_id)
        if entry is not None and entry[0] is ref:
            del _table[key_id]


def derived(w, key, make):
    """``make()`` for constant ``w`` computed once and kept while ``w`` lives; plain ``make()`` otherwise.

    ``key`` names the derived form (say ``("winograd", 4, float32)``). The result is made
    read-only, since every caller shares it.
    """
    if not is_constant(w):
        return make()
    wid = id(w)
    with _lock:
        _purge()
        entry = _table.get(wid)
        if entry is not None and entry[0]() is w:
            hit = entry[1].get(key)
            if hit is not None:
                return hit
    value = make()
    value.flags.writeable = False
    with _lock:
        _purge()
        entry = _table.get(wid)
        if entry is None or entry[0]() is not w:
            ref = weakref.ref(w)
            entry = _table[wid] = (ref, {})
            weakref.finalize(w, _forget, wid, ref)
        # two threads may both have made it; the first stored wins so callers share one array
        return entry[1].setdefault(key, value)


def drop(w, keep) -> int:
    """Forget the derived forms of ``w`` whose key ``keep(key)`` rejects; return how many went."""
    with _lock:
        _purge()
        entry = _table.get(id(w))
        if entry is None or entry[0]() is not w:
            return 0
        gone = [k for k in entry[1] if not keep(k)]
        for k in gone:
            del entry[1][k]
        return len(gone)


def cached_entries() -> int:
    """Number of derived arrays currently cached (for tests and memory accounting)."""
    with _lock:
        _purge()
        return sum(len(e[1]) for e in _table.values())


def cached_bytes() -> int:
    """Bytes held by cached derived arrays."""
    with _lock:
        _purge()
        return sum(int(v.nbytes) for e in _table.values() for v in e[1].values())


def clear() -> None:
    """Drop every cached derived array (they are rebuilt on demand)."""
    with _lock:
        _table.clear()
        _dead.clear()
