"""``minicnn embed/classify ... --out DIR/``: streaming runs, on one machine or on a Dask cluster.

The sorted input file list is cut into partitions of ``--shard-size`` files; partition ``i``
becomes ``DIR/part-<i>.parquet`` (``minicnn.shards`` describes the files). The partitioning
depends only on the file list and the shard size, and every partition is computed the same way
wherever it runs, so a run on one process and a run on a Dask cluster write the same rows.

One machine: images are decoded and preprocessed by ``--decode-threads`` threads a few batches
ahead of the forward passes, which run on the calling thread; each shard's results are written
as soon as the shard is done, so memory holds at most the look-ahead and one shard, whatever the
number of images. ``--resume`` keeps the shards already in place (a shard is in place only once
complete) and computes the others.

Dask (``--dask ADDRESS`` or ``--dask local:N``): one task per partition, sent with the file names
only; the worker loads the model once per process (kept in :data:`_MODELS`), decodes and runs
the partition with the job's thread settings, writes its shard into DIR (which the workers must
see: a shared file system) and returns the shard's record (a few numbers and the unreadable
files). A worker that dies mid-task has its task run again elsewhere by the scheduler; the
shard's name is fixed by its partition and it is renamed into place whole, so a retried task
replaces, never duplicates.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import MinicnnError

# per process: model key -> (model, runner); a Dask worker loads each model once, not per task
_MODELS = {}
_MODELS_LOCK = threading.Lock()
_LOADS = [0]  # how many models this process has loaded (each Dask task reports it)

JOB_KEYS = ("task", "weights", "model", "arch", "layer", "topk", "labels", "preprocess", "batch_size",
            "max_pixels", "backend", "shard_size")


def is_directory_out(out) -> bool:
    """Whether ``--out`` names a results directory: it ends with a path separator, is an existing
    directory, or has no file extension."""
    s = os.fspath(out)
    return s.endswith(("/", os.sep)) or Path(s).is_dir() or Path(s).suffix == ""


def add_stream_args(p):
    """The options of a streaming run (``--out DIR/``), for embed and classify."""
    g = p.add_argument_group("streaming to a results directory (--out DIR/)")
    g.add_argument("--shard-size", type=int, default=1024, metavar="N",
                   help="images per Parquet shard (default 1024); a run resumes shard by shard")
    g.add_argument("--resume", action="store_true",
                   help="continue the run that wrote --out DIR/: keep its complete shards, compute the rest")
    g.add_argument("--decode-threads", type=int, default=2, metavar="N",
                   help="threads that read and preprocess images ahead of the forward passes (default 2)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="compute threads of the numba backend in each process (default: numba's setting)")
    g.add_argument("--dask", default=None, metavar="ADDRESS|local:N",
                   help="run on a Dask cluster: a scheduler address (tcp://host:8786), or local:N for N worker "
                        "processes on this machine; DIR must be on a file system the workers share")


def job_from_args(args, task):
    """The job description a streaming run records and every process computes from."""
    from .. import get_backend

    for name in ("shard_size", "decode_threads", "batch_size"):
        v = getattr(args, name)
        if v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be a positive number of pixels, got {args.max_pixels}")
    weights = None
    if not args.model:
        from .classify import default_weights, load_model

        arch = getattr(args, "arch", None)
        weights = args.weights or default_weights(arch)
        if weights is None:
            load_model(None, arch)  # raises the one-line "no weights" message with how to get them
    return {
        "task": task,
        # absolute, so that a worker started elsewhere finds them too
        "weights": os.path.abspath(weights) if weights is not None else None,
        "model": os.path.abspath(args.model) if args.model else None,
        "arch": getattr(args, "arch", None),
        "layer": getattr(args, "layer", None),
        "topk": getattr(args, "topk", None),
        "labels": os.path.abspath(args.labels) if getattr(args, "labels", None) else None,
        "preprocess": args.preprocess,
        "batch_size": int(args.batch_size),
        "max_pixels": args.max_pixels,
        "backend": get_backend(),
        "shard_size": int(args.shard_size),
    }


# -- the model, once per process ----------------------------------------------------------------------
class Runner:
    """A loaded model and what one batch of preprocessed images becomes: ``columns(batch)``."""

    def __init__(self, job):
        from .classify import compiled, load_model

        if job["model"]:
            from ._onnx import load_for_images

            model, weights = load_for_images(job["model"])
        else:
            model, weights = load_model(job["weights"], job["arch"] if job["task"] == "classify" else None)
        self.model, self.weights, self.task = model, weights, job["task"]
        self.arch = model.arch
        if job["task"] == "embed":
            from .embed import compiled_stage

            self.layer = job["layer"] or getattr(model, "embedding_stage", "avgpool")
            self._stage = compiled_stage(compiled(model), self.layer)
        else:
            from ..io.labels import labels_for
            from .classify import trained_labels

            self.labels = labels_for(model.num_classes, job["labels"]) if job["labels"] \
                else trained_labels(weights, model.num_classes)
            if job["topk"] is not None and job["topk"] > model.num_classes:
                raise ValueError(f"--topk {job['topk']} is more than the {model.num_classes} classes of {weights}; "
                                 f"use --topk {model.num_classes} or less")
            self.topk = min(5, model.num_classes) if job["topk"] is None else int(job["topk"])
            self._fast = compiled(model)
        self._row_shape = None
        # a compiled model reuses its activation buffers: one forward pass at a time per process
        # (a Dask worker with several threads may run two tasks at once)
        self._lock = threading.Lock()

    def columns(self, batch):
        """The result columns for ``batch`` (float32 (n, 3, 224, 224))."""
        import numpy as np

        from .. import no_grad, to_numpy
        from .classify import softmax_probabilities

        with self._lock, no_grad():
            if self.task == "embed":
                out = self._stage(batch) if self._stage is not None else \
                    self.model.activations(batch, upto=self.layer)[self.layer]
                emb = np.asarray(to_numpy(out), dtype=np.float32)
                self._row_shape = tuple(emb.shape[1:])
                return {"embedding": emb}
            probs = softmax_probabilities(to_numpy(self._fast(batch)))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :self.topk]
        top = np.take_along_axis(probs, order, axis=1)
        return {"label": [self.labels[i] for i in order[:, 0]], "score": top[:, 0].astype(np.float32),
                "topk": order.astype(np.int32), "topk_score": top.astype(np.float32)}

    @property
    def row_shape(self):
        """The shape of one embedding (one forward pass on a blank image when none has run yet);
        ``(k,)`` for classify."""
        import numpy as np

        if self.task == "classify":
            return (self.topk,)
        if self._row_shape is None:
            self.columns(np.zeros((1, 3, 224, 224), np.float32))
        return self._row_shape


def runner_for(job):
    """This process's :class:`Runner` for ``job``'s model, loaded on first use."""
    key = tuple((k, job[k]) for k in ("task", "weights", "model", "arch", "layer", "topk", "labels", "backend"))
    with _MODELS_LOCK:
        if key not in _MODELS:
            from .. import backend

            with backend(job["backend"]):
                _MODELS[key] = Runner(job)
            _LOADS[0] += 1
        return _MODELS[key]


class compute_threads:
    """``with compute_threads(n):`` the numba backend's kernels run on ``n`` threads in this thread
    (numba's setting is per thread); None, or another backend, leaves everything as it is."""

    def __init__(self, n, backend_name):
        self.n, self.backend_name, self._saved = n, backend_name, None

    def __enter__(self):
        if self.n is not None and self.backend_name == "numba":
            import numba

            if self.n > numba.config.NUMBA_NUM_THREADS:
                raise ValueError(f"--threads {self.n} is more than the {numba.config.NUMBA_NUM_THREADS} threads numba "
                                 "started with (NUMBA_NUM_THREADS)")
            self._saved = numba.get_num_threads()
            numba.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            import numba

            numba.set_num_threads(self._saved)
        return False


# -- partitions and decoding --------------------------------------------------------------------------
def partitions(paths, shard_size):
    """Partition ``i`` is ``paths[i * shard_size:(i + 1) * shard_size]``; returns the list of them."""
    return [paths[i:i + shard_size] for i in range(0, len(paths), shard_size)]


def _decode(path, mode, max_pixels, base=None):
    from ..io.images import ImageReadError, load_image, preprocess

    try:
        where = os.path.join(base, path) if base else path  # a relative name, as the submitting process saw it
        return path, preprocess(load_image(where, max_pixels=max_pixels), mode=mode), None
    except ImageReadError as e:
        return path, None, str(e).replace(repr(where), repr(path))  # named as given, wherever it was read


def decoded_chunks(chunks, job, pool, ahead=3, base=None):
    """Yield ``(tag, ok_paths, batch, failed)`` for each ``(tag, paths)`` of ``chunks`` in order,
    the images read by ``pool``'s threads while earlier batches compute; at most ``ahead`` chunks
    are decoded before they are consumed, which bounds the memory. ``batch`` is None when no file
    of the chunk could be read; ``failed`` lists ``(path, reason)``. Relative paths are read from
    directory ``base`` when given."""
    import numpy as np

    pending = deque()
    it = iter(chunks)

    def submit_next():
        try:
            tag, paths = next(it)
        except StopIteration:
            return False
        pending.append((tag, [pool.submit(_decode, p, job["preprocess"], job["max_pixels"], base) for p in paths]))
        return True

    for _ in range(ahead):
        if not submit_next():
            break
    while pending:
        tag, futures = pending.popleft()
        submit_next()
        ok, arrays, failed = [], [], []
        for f in futures:
            path, x, err = f.result()
            if err is None:
                ok.append(path)
                arrays.append(x)
            else:
                failed.append((path, err))
        yield tag, ok, (np.stack(arrays) if arrays else None), failed


class _ShardBuffer:
    """The results of one partition as its batches arrive."""

    def __init__(self):
        self.paths, self.parts, self.failed, self.seen = [], [], [], 0

    def add(self, ok, cols, failed):
        self.paths.extend(ok)
        if cols is not None:
            self.parts.append(cols)
        self.failed.extend(failed)
        self.seen += len(ok) + len(failed)

    def columns(self):
        """The batches' columns joined ({} when no file was readable)."""
        import numpy as np

        if not self.parts:
            return {}
        return {k: ([v for c in self.parts for v in c[k]] if k == "label" else np.concatenate([c[k] for c in self.parts]))
                for k in self.parts[0]}


def run_partition(job, outdir, index, paths, decode_threads=2, threads=None, base=None):
    """Compute partition ``index`` (its ``paths``, relative ones read from directory ``base``) and
    write its shard; returns the shard's record. What a Dask task runs; the local run does the
    same with decoding carried across shards."""
    from .. import backend
    from .classify import pixel_limit

    runner = runner_for(job)
    bs = job["batch_size"]
    buf = _ShardBuffer()
    with backend(job["backend"]), compute_threads(threads, job["backend"]), pixel_limit(job["max_pixels"]), \
            ThreadPoolExecutor(decode_threads, thread_name_prefix="minicnn-decode") as pool:
        chunks = ((index, paths[i:i + bs]) for i in range(0, len(paths), bs))
        for _, ok, batch, failed in decoded_chunks(chunks, job, pool, base=base):
            buf.add(ok, runner.columns(batch) if batch is not None else None, failed)
        return _write(outdir, index, job, buf, runner)


def _write(outdir, index, job, buf, runner):
    """Write a finished partition's shard; its record, with the row shape and architecture the
    manifest takes from the first one."""
    from ..shards import write_shard

    shape = runner.row_shape if not buf.paths else None
    record = write_shard(outdir, index, job, [os.fspath(p) for p in buf.paths], buf.columns(),
                         [(os.fspath(p), e) for p, e in buf.failed], row_shape=shape)
    record["row_shape"] = list(runner.row_shape) if job["task"] == "embed" else None
    record["arch"] = runner.arch
    return record


def _dask_task(job, outdir, index, paths, decode_threads, threads, base, hook=None):
    """One partition on a Dask worker; returns the shard record plus the worker's process id and
    how many models that process has loaded (once per model, however many tasks it runs)."""
    if hook is not None:
        hook(index)
    record = run_partition(job, outdir, index, paths, decode_threads, threads, base)
    record["pid"] = os.getpid()
    record["model_loads"] = _LOADS[0]
    return record


# -- the run -------------------------------------------------------------------------------------------
def _existing(outdir, job, resume):
    """The records of the shards already complete in ``outdir`` (when resuming), after checking
    that the directory holds this same job."""
    from ..shards import read_manifest, read_shard_info

    outdir = Path(outdir)
    # a manifest without a shard (a run that failed before its first one) holds nothing to keep
    has_run = outdir.is_dir() and any(outdir.glob("part-*.parquet"))
    if not resume:
        if has_run:
            raise MinicnnError(f"{os.fspath(outdir)!r} already holds results; pass --resume to continue that run, "
                               "or name an empty or new directory")
        return {}
    if not has_run:
        return {}
    old = read_manifest(outdir)["job"]
    for k in JOB_KEYS + ("files", "files_sha256"):
        if old.get(k) != job.get(k):
            what = "the input file list" if k in ("files", "files_sha256") else k
            raise MinicnnError(f"--resume: {what} differs from the run in {os.fspath(outdir)!r} "
                               f"({old.get(k)!r} then, {job.get(k)!r} now); start a new directory instead")
    for k in ("row_shape", "model_arch"):
        if old.get(k) is not None:
            job[k] = old[k]
    done = {}
    for path in sorted(outdir.glob("part-*.parquet")):
        info = read_shard_info(path)
        if info is None or info.get("files_sha256") != job["files_sha256"]:
            continue  # not a complete shard of this run: computed again
        done[info["index"]] = {k: info[k] for k in ("name", "index", "rows", "failed")}
    for tmp in outdir.glob(".part-*.tmp"):
        tmp.unlink()  # left by a killed writer
    return done


class _Progress:
    """``N/M images, X images/s`` on stderr, at most once a second, and a last line at the end.
    The rate counts from :meth:`restart` (the model loaded, or the cluster up) to the last shard."""

    def __init__(self, command, total, done):
        self.command, self.total, self.count = command, total, done
        self.start_count, self.t0, self.last, self.shown = done, time.perf_counter(), 0.0, done
        self.t_end = None

    def restart(self):
        self.t0 = time.perf_counter()

    def rate(self):
        dt = (self.t_end or time.perf_counter()) - self.t0
        return (self.count - self.start_count) / dt if dt > 0 else 0.0

    def update(self, n, force=False):
        self.count += n
        now = time.perf_counter()
        if n:
            self.t_end = now
        if self.shown != self.count and (force or now - self.last >= 1.0):
            self.last, self.shown = now, self.count
            print(f"minicnn {self.command}: {self.count}/{self.total} images, {self.rate():.1f} images/s",
                  file=sys.stderr, flush=True)


def run_stream(args, task):
    """``minicnn embed/classify ... --out DIR/``; returns the exit status (1 when a file was unreadable)."""
    from ..io.images import find_images
    from ..shards import MANIFEST, files_digest, require_pyarrow, write_manifest
    from .classify import seeded_note

    require_pyarrow()
    if args.dask:  # refused before anything is written
        parse_dask(args.dask)
        _distributed()
    job = job_from_args(args, task)
    paths = [os.fspath(p) for p in find_images(args.inputs)]
    job["files"] = len(paths)
    job["files_sha256"] = files_digest(paths)
    outdir = Path(args.out)
    parts = partitions(paths, job["shard_size"])
    job["shards"] = len(parts)
    done = _existing(outdir, job, args.resume)
    if not args.dask:
        runner_for(job)  # a model that does not load is refused before anything is written
    outdir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(len(parts)) if i not in done]
    records = dict(done)
    if done:
        print(f"minicnn {task}: resuming: {len(done)} of {len(parts)} shards already complete", file=sys.stderr)
    seeded_note(job["weights"] or job["model"])
    progress = _Progress(task, len(paths), sum(len(parts[i]) for i in done))

    def finished(record):
        if job.get("row_shape") is None and record.get("row_shape") is not None:
            job["row_shape"] = record["row_shape"]
        if record.get("arch"):
            job["model_arch"] = record["arch"]
        records[record["index"]] = {k: record[k] for k in ("name", "index", "rows", "failed")}
        write_manifest(outdir, job, records.values(), complete=len(records) == len(parts))
        for f in record["failed"]:
            print(f"minicnn {task}: {f['error']}", file=sys.stderr)
        progress.update(len(parts[record["index"]]))

    write_manifest(outdir, job, records.values(), complete=not todo)
    if args.dask:
        run_dask(job, outdir, parts, todo, args.dask, args.decode_threads, args.threads, finished,
                 on_start=progress.restart)
    else:
        run_local(job, outdir, parts, todo, args.decode_threads, args.threads, finished, on_start=progress.restart)
    progress.update(0, force=True)
    for tmp in outdir.glob(".part-*.tmp"):
        tmp.unlink(missing_ok=True)  # left by a worker killed while writing; its task ran again
    doc = write_manifest(outdir, job, records.values(), complete=True)
    print(f"wrote {outdir}{os.sep if not os.fspath(outdir).endswith(os.sep) else ''}: {doc['rows']} rows in "
          f"{len(parts)} shards ({progress.rate():.1f} images/s)")
    bad = doc["unreadable"]
    if bad:
        print(f"minicnn {task}: {len(bad)} of {len(paths)} images could not be read (listed in "
              f"{outdir / MANIFEST})", file=sys.stderr)
        return 1
    return 0


def run_local(job, outdir, parts, todo, decode_threads=2, threads=None, on_shard=None, on_start=None):
    """Compute the partitions ``todo`` in this process, decoding across shard boundaries; calls
    ``on_start()`` once the model is loaded and ``on_shard(record)`` as each shard is in place."""
    from .. import backend
    from .classify import pixel_limit

    runner = runner_for(job)
    if on_start:
        on_start()
    bs = job["batch_size"]
    chunks = ((i, parts[i][j:j + bs]) for i in todo for j in range(0, len(parts[i]), bs))
    with backend(job["backend"]), compute_threads(threads, job["backend"]), pixel_limit(job["max_pixels"]), \
            ThreadPoolExecutor(decode_threads, thread_name_prefix="minicnn-decode") as pool:
        bufs = {}
        for i, ok, batch, failed in decoded_chunks(chunks, job, pool):
            buf = bufs.setdefault(i, _ShardBuffer())
            buf.add(ok, runner.columns(batch) if batch is not None else None, failed)
            if buf.seen == len(parts[i]):
                del bufs[i]
                record = _write(outdir, i, job, buf, runner)
                if on_shard:
                    on_shard(record)


def _distributed():
    """``distributed``'s Client, LocalCluster and as_completed, or one error line saying how to install it."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise MinicnnError("--dask needs Dask's distributed scheduler: pip install minicnn[scale] "
                           "(dask[distributed] and pyarrow)") from None
    return Client, LocalCluster, as_completed


def parse_dask(address):
    """``local:N`` -> ("local", N); anything else is a scheduler address."""
    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--dask {address!r}: local:N needs a number of worker processes N >= 1")
        return "local", n
    return "address", address


def run_dask(job, outdir, parts, todo, address, decode_threads=2, threads=None, on_shard=None, on_start=None,
             hook=None):
    """Compute the partitions ``todo`` on a Dask cluster (``address``: a scheduler address or
    ``local:N``); calls ``on_start()`` once connected and ``on_shard(record)`` as each task's shard
    is in place. ``hook(index)`` runs first in every task (tests use it to kill a worker)."""
    Client, LocalCluster, as_completed = _distributed()
    kind, where = parse_dask(address)
    outdir = os.path.abspath(outdir)
    cluster = None
    if kind == "local":
        # distributed's nannies write their workers' settings (``distributed.nanny.pre-spawn-environ``:
        # OPENBLAS_NUM_THREADS=1, OMP_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_...) into this process's
        # os.environ and leave them there; every later subprocess of the caller would inherit them.
        # The environment as it was is put back when the local cluster is closed.
        environ = dict(os.environ)
        # one task at a time per worker process: the task's own decode and compute threads fill it;
        # the scheduler's HTTP server (always started) on a free loopback port, not 8787 on every interface
        cluster = LocalCluster(n_workers=where, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0")
    try:
        try:
            client = Client(cluster if cluster is not None else where, timeout="30s")
        except OSError as e:
            raise MinicnnError(f"--dask {address}: cannot reach the scheduler ({e})") from None
        with client:
            if on_start:
                on_start()
            futures = [client.submit(_dask_task, job, outdir, i, parts[i], decode_threads, threads, os.getcwd(), hook,
                                     key=f"minicnn-{job['task']}-part-{i:05d}-{job['files_sha256'][:12]}", pure=False)
                       for i in todo]
            for fut in as_completed(futures):
                record = fut.result()
                if on_shard:
                    on_shard(record)
    finally:
        if cluster is not None:
            cluster.close()
            restore_environ(environ)


def restore_environ(saved):
    """Make os.environ equal ``saved`` again (keys added since removed, changed ones put back)."""
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def stream_only_options(args):
    """Refuse the streaming options when ``--out`` is not a results directory."""
    for name, default in (("resume", False), ("dask", None), ("threads", None)):
        if getattr(args, name, default) != default:
            raise ValueError(f"--{name} applies only to a streaming run into a results directory (--out DIR/)")
