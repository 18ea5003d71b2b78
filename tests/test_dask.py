"""``--dask``: the streaming run on a Dask LocalCluster (2 worker processes on loopback) writes the same
rows as the single-process run, loads the model once per worker, and survives a worker killed in the
middle of a task. One cluster serves the module (it takes seconds to start)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("pyarrow")
distributed = pytest.importorskip("distributed")

import minicnn as mc  # noqa: E402
from minicnn.cli import main  # noqa: E402
from stream_data import BATCH, N_IMAGES, SHARD, make_images, make_model  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    from minicnn.cli._stream import restore_environ

    environ = dict(os.environ)  # the nannies write their workers' settings into os.environ (see run_dask)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as c:
        yield c
    restore_environ(environ)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Images, the model, and the single-process streaming run as the reference."""
    tmp = tmp_path_factory.mktemp("dask")
    images = make_images(tmp / "images")
    model = make_model(tmp / "tiny.onnx")
    args = ["embed", str(images), "--model", str(model), "--layer", "avgpool", "--batch-size", str(BATCH),
            "--shard-size", str(SHARD)]
    # Dask's workers run OpenBLAS on one thread (distributed.nanny.pre-spawn-environ), and on some
    # CPUs OpenBLAS's float32 GEMM rounds differently on one thread than on two (measured on an
    # AVX2 EPYC: 5,593 of 9,408 outputs of this model's GEMMs differ in the last bit). The reference
    # runs on one thread too, so the outputs can be compared bit for bit.
    from minicnn._blas import single_threaded

    with single_threaded():
        assert main(["--backend", "numpy", *args, "--out", f"{tmp / 'single'}/"]) == 1  # 2 unreadable files
    return {"tmp": tmp, "args": args, "single": tmp / "single"}


def _same_output(a, b):
    """Both directories hold the same shards, rows and unreadable files."""
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["complete"] and mb["complete"]
    assert ma["shards"] == mb["shards"] and ma["unreadable"] == mb["unreadable"] and ma["rows"] == N_IMAGES
    pa, ea = mc.embeddings.open(a).to_numpy()
    pb, eb = mc.embeddings.open(b).to_numpy()
    assert pa == pb and len(set(pa)) == N_IMAGES
    np.testing.assert_array_equal(ea, eb)


def test_dask_run_equals_the_single_process_run(cluster, data, capsys):
    out = data["tmp"] / "dask"
    rc = main(["--backend", "numpy", *data["args"], "--out", f"{out}/", "--dask", cluster.scheduler_address])
    _, err = capsys.readouterr()
    assert rc == 1 and "2 of 205 images could not be read" in err
    _same_output(data["single"], out)


def test_dask_local_n_starts_its_own_cluster(data, capsys):
    out = data["tmp"] / "local"
    environ = dict(os.environ)
    rc = main(["--backend", "numpy", *data["args"], "--out", f"{out}/", "--dask", "local:2", "--decode-threads", "1"])
    _, err = capsys.readouterr()
    assert rc == 1 and "2 of 205 images could not be read" in err
    _same_output(data["single"], out)
    # the local cluster's nannies set OPENBLAS_NUM_THREADS=1 and more in os.environ: put back
    assert dict(os.environ) == environ


def test_a_worker_killed_mid_task_loses_and_duplicates_nothing(cluster, data):
    from minicnn.cli._stream import job_from_args, partitions, run_dask
    from minicnn.io.images import find_images
    from minicnn.shards import files_digest, write_manifest

    out = data["tmp"] / "killed"
    out.mkdir()
    marker = data["tmp"] / "killed-once"

    def kill_first_attempt(index):
        # runs on the worker: the first task of partition 2 kills its whole worker process
        import os
        import signal

        if index == 2 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    from minicnn.cli import build_parser

    args = build_parser().parse_args([*data["args"], "--out", f"{out}/"])
    with mc.backend("numpy"):
        job = job_from_args(args, "embed")
    paths = [str(p) for p in find_images(args.inputs)]
    job.update(files=len(paths), files_sha256=files_digest(paths))
    parts = partitions(paths, SHARD)
    job["shards"] = len(parts)
    records = {}

    def on_shard(r):
        records[r["index"]] = r
        job["row_shape"] = r["row_shape"]

    run_dask(job, out, parts, list(range(len(parts))), cluster.scheduler_address, on_shard=on_shard,
             hook=kill_first_attempt)
    write_manifest(out, job, records.values(), complete=True)

    killed = int(marker.read_text())
    assert sorted(records) == list(range(len(parts)))
    assert records[2]["pid"] != killed  # partition 2 was computed again, by a live worker
    assert all(r["model_loads"] == 1 for r in records.values())  # each worker process loaded the model once
    assert not list(out.glob(".*"))
    _same_output(data["single"], out)


def test_dask_address_forms():
    from minicnn.cli._stream import parse_dask

    assert parse_dask("local:3") == ("local", 3)
    assert parse_dask("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")
    for bad in ("local:", "local:0", "local:x"):
        with pytest.raises(ValueError, match="local:N"):
            parse_dask(bad)
