"""Results on disk as Parquet shards: what ``minicnn embed/classify --out DIR/`` writes and reads.

A results directory holds ``part-00000.parquet``, ``part-00001.parquet``, ... and ``manifest.json``.
Shard ``i`` holds the results of partition ``i`` of the sorted input file list (files
``i * shard_size`` up to ``(i + 1) * shard_size``), one row per readable image, in file order:

* embed: ``path`` (string), ``embedding`` (fixed-size list of float32; a stage with a shape such
  as (512, 7, 7) is stored flattened, the shape is in the manifest);
* classify: ``path``, ``label`` (the top class's name), ``score`` (its probability, float32),
  ``topk`` (the k best class indices, best first) and ``topk_score`` (their probabilities).

A shard is written beside its final name and renamed into place, so a shard file that exists is
complete; its Parquet footer carries the partition index, row count and the files of the
partition that could not be read (with the reason). ``manifest.json`` is rewritten (atomically)
after every shard and lists the job, the shards written so far, their rows and the unreadable
files; a resumed run rebuilds it from the shard files, which are the record.

    idx = minicnn.embeddings.open("emb/")      # or minicnn.shards.open
    for paths, block in idx.blocks():           # (n,) paths, (n, D) float32, one shard at a time
        ...
    sims = idx.nearest(query_vector, k=10)      # cosine, blockwise
"""
from __future__ import annotations

import hashlib
import heapq
import json
import os
from pathlib import Path

import numpy as np

from .errors import MinicnnError

# open() is left out of __all__: a star import must not shadow the builtin
__all__ = ["MANIFEST", "FORMAT", "ShardedResults", "shard_name", "require_pyarrow", "files_digest",
           "write_shard", "read_shard_info", "write_manifest", "read_manifest"]

MANIFEST = "manifest.json"
FORMAT = "minicnn-shards/1"
_META_KEY = b"minicnn"


def require_pyarrow():
    """pyarrow, or one error line saying how to install it."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MinicnnError("writing or reading Parquet shards needs pyarrow: pip install pyarrow "
                           "(or pip install minicnn[scale], which also brings Dask)") from None
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def shard_name(index: int) -> str:
    """``part-00012.parquet`` for partition 12."""
    return f"part-{index:05d}.parquet"


def files_digest(paths) -> str:
    """SHA-256 of the input file list in order; a resumed run must see the same list."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.fsencode(os.fspath(p)))
        h.update(b"\0")
    return h.hexdigest()


def _atomic_write(path: Path, write):
    """``write(f)`` into a temporary file beside ``path``, flushed to disk, then renamed onto ``path``:
    a reader (or a later run) sees the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_shard(outdir, index, job, paths, columns, failed, row_shape=None):
    """Write partition ``index``'s results as ``outdir/part-<index>.parquet`` (atomically).

    Args:
        outdir: the results directory.
        index: the partition index.
        job: the job description (its ``task`` picks the columns).
        paths: the ``n`` readable files, in order.
        columns: embed: ``{"embedding": (n, ...) float32}``; classify: ``{"label": n names,
            "score": (n,), "topk": (n, k) int, "topk_score": (n, k)}``.
        failed: ``[(path, reason), ...]`` for the partition's unreadable files.
        row_shape: the shape of one embedding, for classify ``(k,)`` (needed when ``n`` is 0, to
            type the columns).

    Returns:
        The shard's record: ``{"name", "index", "rows", "failed": [{"path", "error"}]}``.
    """
    pa, pq = require_pyarrow()
    outdir = Path(outdir)
    n = len(paths)
    arrays = {"path": pa.array([os.fspath(p) for p in paths], type=pa.string())}
    if n == 0:  # every file of the partition unreadable: an empty shard, its columns still typed
        k = int(row_shape[0]) if job["task"] == "classify" else 0
        columns = {"embedding": np.zeros((0,) + tuple(row_shape)), "label": [], "score": np.zeros(0),
                   "topk": np.zeros((0, k)), "topk_score": np.zeros((0, k))}
    if job["task"] == "embed":
        emb = np.asarray(columns["embedding"], dtype=np.float32)
        dim = int(np.prod(row_shape if n == 0 else emb.shape[1:]))
        flat = emb.reshape(n, dim)
        arrays["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), type=pa.float32()), dim)
    else:
        k = int(np.shape(columns["topk"])[1])
        arrays["label"] = pa.array(list(columns["label"]), type=pa.string())
        arrays["score"] = pa.array(np.asarray(columns["score"], dtype=np.float32).reshape(n), type=pa.float32())
        top = np.asarray(columns["topk"], dtype=np.int32).reshape(n, k)
        arrays["topk"] = pa.FixedSizeListArray.from_arrays(pa.array(top.ravel(), type=pa.int32()), k)
        tops = np.asarray(columns["topk_score"], dtype=np.float32).reshape(n, k)
        arrays["topk_score"] = pa.FixedSizeListArray.from_arrays(pa.array(tops.ravel(), type=pa.float32()), k)
    record = {"name": shard_name(index), "index": int(index), "rows": n,
              "failed": [{"path": os.fspath(p), "error": str(e)} for p, e in failed]}
    meta = dict(record, files_sha256=job["files_sha256"])
    table = pa.table(arrays).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    _atomic_write(outdir / record["name"], lambda f: pq.write_table(table, f))
    return record


def read_shard_info(path):
    """The record a shard's footer carries (see :func:`write_shard`), read without its rows; None
    for a file that is not a complete shard of this format."""
    _, pq = require_pyarrow()
    try:
        meta = pq.read_schema(path).metadata or {}
        info = json.loads(meta[_META_KEY])
    except (OSError, ValueError, KeyError):
        return None
    return info


def write_manifest(outdir, job, shards, complete=False):
    """Rewrite ``outdir/manifest.json`` (atomically) from the job and the shard records so far."""
    shards = sorted(shards, key=lambda s: s["index"])
    doc = {
        "format": FORMAT,
        "job": job,
        "complete": bool(complete),
        "rows": sum(s["rows"] for s in shards),
        "shards": [{"name": s["name"], "index": s["index"], "rows": s["rows"]} for s in shards],
        "unreadable": [f for s in shards for f in s["failed"]],
    }
    data = json.dumps(doc, indent=1, ensure_ascii=False).encode()
    _atomic_write(Path(outdir) / MANIFEST, lambda f: f.write(data))
    return doc


def read_manifest(outdir):
    """The manifest of results directory ``outdir``, or an error line saying what is wrong."""
    path = Path(outdir) / MANIFEST
    if not Path(outdir).is_dir():
        raise MinicnnError(f"{os.fspath(outdir)!r} is not a directory of results (no such directory)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MinicnnError(f"{os.fspath(outdir)!r} has no {MANIFEST}: not a directory written by "
                           "`minicnn embed/classify --out DIR/`") from None
    except ValueError as e:
        raise MinicnnError(f"{os.fspath(path)!r} is not valid JSON ({e})") from None
    if doc.get("format") != FORMAT:
        raise MinicnnError(f"{os.fspath(path)!r}: unknown format {doc.get('format')!r} (expected {FORMAT!r})")
    return doc


class ShardedResults:
    """A results directory opened for reading (see :func:`open`); shards are read one at a time.

    Attributes:
        job: what produced it (``task``, ``weights`` or ``model``, ``layer``, ``preprocess``,
            ``model_arch``, ``row_shape``, ``files``, ``shard_size`` ...).
        rows: the number of rows in the shards written.
        complete: False when the run stopped before its last shard (resume it with ``--resume``).
        unreadable: ``[{"path", "error"}, ...]``, the files that could not be read.
    """

    def __init__(self, outdir):
        self.outdir = Path(outdir)
        doc = read_manifest(outdir)
        self.job = doc["job"]
        self.complete = bool(doc["complete"])
        self.rows = int(doc["rows"])
        self.unreadable = list(doc["unreadable"])
        self._shards = [self.outdir / s["name"] for s in sorted(doc["shards"], key=lambda s: s["index"])]

    def __len__(self):
        return self.rows

    def __repr__(self):
        return (f"ShardedResults({os.fspath(self.outdir)!r}, task={self.job['task']!r}, rows={self.rows}, "
                f"shards={len(self._shards)}, complete={self.complete})")

    @property
    def row_shape(self):
        """The shape of one embedding (embed results)."""
        return tuple(self.job.get("row_shape") or ())

    def tables(self, columns=None):
        """Yield each shard as a ``pyarrow.Table``, in manifest order."""
        _, pq = require_pyarrow()
        for path in self._shards:
            try:
                yield pq.read_table(path, columns=columns)
            except FileNotFoundError:
                raise MinicnnError(f"{os.fspath(path)!r} is listed in the manifest but missing") from None

    def blocks(self, column=None):
        """Yield ``(paths, values)`` per shard: ``paths`` a list of n file names, ``values`` a numpy
        array of n rows of ``column`` (default: ``embedding`` for embed results, ``score`` for
        classify). Only one shard is in memory at a time."""
        column = column or ("embedding" if self.job["task"] == "embed" else "score")
        for table in self.tables(["path", column]):
            yield table.column("path").to_pylist(), _to_numpy(table.column(column))

    def to_numpy(self, column=None, max_rows=10_000_000):
        """``(paths, values)`` for the whole directory at once; embeddings come back in their stage's
        shape, (N, 512) or (N, 512, 7, 7). For results small enough to hold in memory: more than
        ``max_rows`` rows is refused (iterate :meth:`blocks` instead)."""
        if self.rows > max_rows:
            raise MinicnnError(f"{self.rows} rows is more than max_rows={max_rows}; iterate .blocks() instead, "
                               "or raise max_rows")
        column = column or ("embedding" if self.job["task"] == "embed" else "score")
        paths, parts = [], []
        for p, block in self.blocks(column):
            paths.extend(p)
            parts.append(block)
        if not parts:
            return paths, np.zeros((0,), np.float32)
        values = np.concatenate(parts)
        if column == "embedding" and self.row_shape:
            values = values.reshape((len(values),) + self.row_shape)
        return paths, values

    def nearest(self, query, k=10, exclude=()):
        """The ``k`` rows most similar to ``query`` by cosine similarity, best first, as
        ``[(similarity, path), ...]``.

        Computed shard by shard, keeping only the best ``k`` seen so far, so the index is never in
        memory whole. ``query`` is one embedding (any shape with the rows' number of values);
        ``exclude`` names paths to leave out (the query image itself). A zero row has similarity 0.
        Ties are broken by file order.
        """
        if self.job["task"] != "embed":
            raise MinicnnError(f"{os.fspath(self.outdir)!r} holds classify results; nearest neighbours need embeddings")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = np.asarray(query, dtype=np.float64).ravel()
        dim = int(np.prod(self.row_shape)) if self.row_shape else q.size
        if q.size != dim:
            raise ValueError(f"the query has {q.size} values but the index rows have {dim}")
        qn = np.linalg.norm(q)
        q = q / qn if qn > 0 else q
        skip = {os.fspath(p) for p in exclude}
        best = []  # a min-heap of (similarity, -row number, path): the worst kept is on top
        row = 0
        for paths, block in self.blocks("embedding"):
            b = block.astype(np.float64)
            norms = np.linalg.norm(b, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                sims = (b @ q) / norms
            sims[~np.isfinite(sims)] = 0.0
            sims = np.clip(sims, -1.0, 1.0)
            order = np.argsort(-sims, kind="stable")
            taken = 0
            for j in order:
                if paths[j] in skip:
                    continue
                item = (float(sims[j]), -(row + int(j)), paths[j])
                if len(best) < k:
                    heapq.heappush(best, item)
                elif item > best[0]:
                    heapq.heapreplace(best, item)
                else:
                    break  # sorted: nothing later in this block beats the worst kept
                taken += 1
                if taken >= k:
                    break
            row += len(paths)
        return [(s, p) for s, _, p in sorted(best, reverse=True)]


def _to_numpy(column):
    """A pyarrow column as numpy: a fixed-size list column becomes (n, size)."""
    import pyarrow as pa

    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    if pa.types.is_fixed_size_list(arr.type):
        size = arr.type.list_size
        flat = arr.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(arr), size)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return np.array(arr.to_pylist(), dtype=object)
    return arr.to_numpy(zero_copy_only=False)


def open(outdir):  # noqa: A001 - the name the API gives it: minicnn.embeddings.open(OUTDIR)
    """Open a results directory written by ``minicnn embed/classify --out DIR/`` for reading.

    Returns:
        A :class:`ShardedResults`: ``blocks()`` iterates shard by shard, ``to_numpy()`` reads a
        small one whole, ``nearest(query, k)`` ranks rows by cosine similarity blockwise.

    Example::

        >>> idx = minicnn.embeddings.open("emb/")
        >>> paths, emb = idx.to_numpy()          # (N,) names, (N, 512) float32
    """
    require_pyarrow()
    return ShardedResults(outdir)
