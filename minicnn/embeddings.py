"""Similarity between embeddings: Pearson correlation and cosine similarity between rows.

``emb`` is (N, ...) (an (N, 512) ``model.embed`` output, a layer4 map, anything): each row is
flattened to a vector first. Both functions return an (N, M) float64 matrix (M = N when ``other``
is omitted), computed in float64 whatever the input dtype.

``open(OUTDIR)`` reads back the Parquet shards of ``minicnn embed --out OUTDIR/`` (docs/scale.md).
"""
from __future__ import annotations

import numpy as np

from .backends import to_numpy

# open() is left out of __all__: a star import must not shadow the builtin
__all__ = ["correlation_matrix", "cosine_similarity_matrix"]


def open(outdir):  # noqa: A001 - mc.embeddings.open(OUTDIR), as files are opened
    """Read back a results directory that ``minicnn embed --out DIR/`` wrote (Parquet shards).

    Returns a :class:`minicnn.shards.ShardedResults`: ``blocks()`` yields ``(paths, (n, D) float32)``
    shard by shard, ``to_numpy()`` reads a small one whole, ``nearest(query, k)`` ranks the rows by
    cosine similarity without holding the index in memory. Needs pyarrow.
    """
    from . import shards

    return shards.open(outdir)


def _rows(a, name):
    a = np.asarray(to_numpy(a))
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: embeddings must be real numbers, got dtype {a.dtype}")
    if a.ndim < 1 or a.shape[0] < 1:
        raise ValueError(f"{name}: expected at least one row of shape (N, ...), got shape {a.shape}")
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    if a.shape[1] < 1:
        raise ValueError(f"{name}: rows are empty (shape {a.shape})")
    return a


def _pair(emb, other):
    a = _rows(emb, "emb")
    b = a if other is None else _rows(other, "other")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"emb rows have {a.shape[1]} values but other rows have {b.shape[1]}")
    return a, b


def _normalized_gram(a, b):
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a @ b.T) / np.outer(na, nb)
    return out


def cosine_similarity_matrix(emb, other=None):
    """S[i, j] = <a_i, b_j> / (|a_i| |b_j|), in [-1, 1]. A zero row has similarity 0 with everything."""
    a, b = _pair(emb, other)
    s = _normalized_gram(a, b)
    s[~np.isfinite(s)] = 0.0
    return np.clip(s, -1.0, 1.0)


def correlation_matrix(emb, other=None):
    """Pearson correlation R[i, j] between row i of ``emb`` and row j of ``other`` (default ``emb``).

    Each row is centred on its own mean, then compared by cosine similarity, as ``np.corrcoef``
    does. A constant row has no defined correlation: its entries are NaN.
    """
    a, b = _pair(emb, other)
    ca, cb = _centre(a), _centre(b)
    r = _normalized_gram(ca, cb)
    return np.clip(r, -1.0, 1.0)


def _centre(a):
    c = a - a.mean(axis=1, keepdims=True)
    # a constant row leaves only rounding noise after centring; zero it so it reads as NaN, not +-1
    scale = np.abs(a).max(axis=1) * np.sqrt(a.shape[1])
    c[np.linalg.norm(c, axis=1) <= 1e-12 * scale] = 0.0
    return c
