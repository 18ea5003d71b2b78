"""``minicnn embed/classify --out DIR/`` (Parquet shards, manifest, ``--resume``), reading the shards
back (``mc.embeddings.open``) and ``minicnn similar``, on a few hundred generated images and a tiny
ONNX model (tests/stream_data.py). The reference is the in-memory run (``--out FILE.npz``,
``classify --json``) and the model itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

import minicnn as mc  # noqa: E402
from minicnn.cli import main  # noqa: E402
from minicnn.embeddings import cosine_similarity_matrix  # noqa: E402
from stream_data import BAD, BATCH, N_IMAGES, SHARD, make_images, make_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _run(capsys, *argv):
    rc = main(["--backend", "numpy", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The image folder, the model, and the in-memory embed run as the reference."""
    tmp = tmp_path_factory.mktemp("stream")
    images = make_images(tmp / "images")
    model = make_model(tmp / "tiny.onnx")
    npz = tmp / "ref.npz"
    rc = main(["--backend", "numpy", "embed", str(images), "--model", str(model), "--layer", "avgpool",
               "--out", str(npz), "--batch-size", str(BATCH)])
    assert rc == 1  # the BAD files are reported and left out
    with np.load(npz) as z:
        ref = {"files": [str(f) for f in z["files"]], "emb": z["embeddings"].copy()}
    assert len(ref["files"]) == N_IMAGES and ref["emb"].shape == (N_IMAGES, 6)
    return {"tmp": tmp, "images": images, "model": model, "ref": ref}


def _embed_args(data, out, *extra):
    return ["embed", data["images"], "--model", data["model"], "--layer", "avgpool", "--out", f"{out}/",
            "--batch-size", BATCH, "--shard-size", SHARD, *extra]


def _all_files(data):
    return sorted(str(p) for p in data["images"].rglob("*") if p.is_file())


def test_streamed_embeddings_equal_the_in_memory_run(data, capsys, tmp_path):
    out = tmp_path / "emb"
    rc, stdout, err = _run(capsys, *_embed_args(data, out))
    assert rc == 1 and "2 of 205 images could not be read" in err
    assert "images/s" in err and f"{N_IMAGES} rows in 7 shards" in stdout

    doc = json.loads((out / "manifest.json").read_text())
    assert doc["complete"] and doc["rows"] == N_IMAGES
    assert [s["name"] for s in doc["shards"]] == [f"part-{i:05d}.parquet" for i in range(7)]
    assert sorted(Path(f["path"]).relative_to(data["images"]).as_posix() for f in doc["unreadable"]) == sorted(BAD)
    assert all("cannot read image" in f["error"] for f in doc["unreadable"])
    assert doc["job"]["row_shape"] == [6] and doc["job"]["files"] == N_IMAGES + len(BAD)

    # shard i holds the readable files of partition i of the sorted list, in order
    files = _all_files(data)
    bad = {f["path"] for f in doc["unreadable"]}
    for i, shard in enumerate(doc["shards"]):
        table = pq.read_table(out / shard["name"])
        assert table.schema.field("embedding").type == pa.list_(pa.float32(), 6)
        want = [f for f in files[i * SHARD:(i + 1) * SHARD] if f not in bad]
        assert table.column("path").to_pylist() == want and shard["rows"] == len(want)
    assert not list(out.glob(".*"))  # no temporary file left behind

    idx = mc.embeddings.open(out)
    paths, emb = idx.to_numpy()
    assert paths == data["ref"]["files"] and emb.dtype == np.float32
    np.testing.assert_array_equal(emb, data["ref"]["emb"])  # the same batches, so the same numbers
    blocks = list(idx.blocks())
    assert [len(p) for p, _ in blocks] == [s["rows"] for s in doc["shards"]]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), emb)

    # and the numbers are the model's: three rows checked against a direct forward pass
    from minicnn.io.images import load_image, preprocess

    net = mc.onnx.load(str(data["model"]))
    picks = [0, 101, N_IMAGES - 1]
    x = np.stack([preprocess(load_image(paths[i])) for i in picks])
    with mc.backend("numpy"), mc.no_grad():
        direct = mc.to_numpy(net.activations(x, upto="avgpool")["avgpool"])
    np.testing.assert_allclose(emb[picks], direct, rtol=1e-5, atol=1e-6)


def test_streamed_classify_equals_the_json_run(data, capsys, tmp_path):
    rc, out, _ = _run(capsys, "classify", data["images"], "--model", data["model"], "--topk", 2, "--json",
                      "--batch-size", BATCH)
    assert rc == 1
    ref = json.loads(out)["results"]
    rc, _, err = _run(capsys, "classify", data["images"], "--model", data["model"], "--topk", 2,
                      "--batch-size", BATCH, "--shard-size", SHARD, "--out", tmp_path / "cls")
    assert rc == 1 and "2 of 205 images could not be read" in err
    from minicnn.shards import open as open_results

    table = pa.concat_tables(open_results(tmp_path / "cls").tables())
    assert table.column("path").to_pylist() == [r["file"] for r in ref]
    assert table.column("label").to_pylist() == [r["top"][0]["label"] for r in ref]
    np.testing.assert_allclose(table.column("score").to_numpy(), [r["top"][0]["prob"] for r in ref], rtol=1e-6)
    assert table.column("topk").to_pylist() == [[t["index"] for t in r["top"]] for r in ref]
    np.testing.assert_allclose(np.array(table.column("topk_score").to_pylist()),
                               [[t["prob"] for t in r["top"]] for r in ref], rtol=1e-6)


KILLED_RUN = r"""
import os, signal, sys
import minicnn.shards as shards
from minicnn.cli import main

real, calls = shards.write_shard, [0]

def write_then_die(outdir, index, *a, **k):
    record = real(outdir, index, *a, **k)
    calls[0] += 1
    if calls[0] == 3:
        # the third shard is in place but the manifest does not list it yet, and the next shard's
        # writer left a partial temporary file: the state a kill at the worst moment leaves
        with open(os.path.join(outdir, ".part-%05d.parquet.%d.tmp" % (index + 1, os.getpid())), "wb") as f:
            f.write(b"PAR1 half a shard")
        os.kill(os.getpid(), signal.SIGKILL)
    return record

shards.write_shard = write_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_resumes_without_loss_or_duplicates(data, capsys, tmp_path):
    out = tmp_path / "emb"
    argv = ["--backend", "numpy", *map(str, _embed_args(data, out))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, *argv], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr  # killed, as planned
    doc = json.loads((out / "manifest.json").read_text())
    assert not doc["complete"] and [s["index"] for s in doc["shards"]] == [0, 1]
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-{i:05d}.parquet" for i in range(3)]
    assert len(list(out.glob(".part-*.tmp"))) == 1
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}

    idx = mc.embeddings.open(out)  # an unfinished run reads as what it has so far
    assert not idx.complete and len(idx.to_numpy()[0]) == doc["rows"]

    rc, _, err = _run(capsys, *_embed_args(data, out))
    assert rc == 1 and "already holds results" in err  # without --resume nothing is overwritten
    rc, _, err = _run(capsys, *_embed_args(data, out, "--resume"))
    assert rc == 1 and "resuming: 3 of 7 shards already complete" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*") if p.name in done} == done  # kept, not redone
    assert not list(out.glob(".*"))
    paths, emb = mc.embeddings.open(out).to_numpy()
    assert paths == data["ref"]["files"] and len(set(paths)) == len(paths)
    np.testing.assert_array_equal(emb, data["ref"]["emb"])
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["complete"] and len(doc["unreadable"]) == len(BAD) and len(doc["shards"]) == 7

    # a resumed run must be the same job over the same files
    rc, _, err = _run(capsys, *_embed_args(data, out, "--shard-size", 16, "--resume"))
    assert rc == 1 and "shard_size differs" in err
    (data["images"] / "sub_a" / "extra.png").write_bytes((data["images"] / "sub_a" / "img_0000.png").read_bytes())
    try:
        rc, _, err = _run(capsys, *_embed_args(data, out, "--resume"))
        assert rc == 1 and "the input file list differs" in err
    finally:
        (data["images"] / "sub_a" / "extra.png").unlink()


def test_nearest_neighbours_blockwise_and_the_similar_command(data, capsys, tmp_path):
    out = tmp_path / "emb"
    assert _run(capsys, *_embed_args(data, out))[0] == 1
    ref = data["ref"]
    sims = cosine_similarity_matrix(ref["emb"])
    idx = mc.embeddings.open(out)
    for q in (0, 57, N_IMAGES - 1):
        want = np.argsort(-sims[q], kind="stable")[:7]
        got = idx.nearest(ref["emb"][q], k=7)
        assert [p for _, p in got] == [ref["files"][j] for j in want]
        np.testing.assert_allclose([s for s, _ in got], sims[q, want], rtol=1e-6, atol=1e-7)
        got = idx.nearest(ref["emb"][q], k=3, exclude=[ref["files"][q]])
        assert [p for _, p in got] == [ref["files"][j] for j in want if j != q][:3]
    assert len(idx.nearest(ref["emb"][0], k=10_000)) == N_IMAGES

    q = 57
    rc, stdout, err = _run(capsys, "similar", ref["files"][q], "--index", out, "--k", 4)
    assert rc == 0, err
    lines = [line.split("  ", 1) for line in stdout.strip().splitlines()]
    want = np.argsort(-sims[q], kind="stable")[:4]
    assert [p for _, p in lines] == [ref["files"][j] for j in want] and lines[0][1] == ref["files"][q]
    np.testing.assert_allclose([float(s) for s, _ in lines], sims[q, want], atol=1e-4)
    rc, stdout, _ = _run(capsys, "similar", ref["files"][q], "--index", out, "--k", 2, "--json")
    assert [n["path"] for n in json.loads(stdout)["neighbours"]] == [ref["files"][j] for j in want[:2]]


def test_decoding_runs_a_bounded_number_of_batches_ahead():
    from concurrent.futures import ThreadPoolExecutor

    from minicnn.cli._stream import decoded_chunks

    pulled = []

    def chunks():
        for i in range(20):
            pulled.append(i)
            yield i, [f"/no/such/file_{i}_{j}.png" for j in range(3)]

    job = {"preprocess": "torchvision", "max_pixels": None}
    with ThreadPoolExecutor(2) as pool:
        for tag, ok, batch, failed in decoded_chunks(chunks(), job, pool, ahead=3):
            assert len(pulled) <= tag + 4  # this chunk, and at most 3 more decoding
            assert ok == [] and batch is None and len(failed) == 3
    assert pulled == list(range(20))


def test_a_partition_of_only_unreadable_files_is_an_empty_typed_shard(data, capsys, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(3):
        (folder / f"a_bad_{i}.png").write_bytes(b"not an image")
    good = sorted(data["images"].rglob("img_000*.png"))[:3]
    for p in good:
        (folder / f"b_{p.name}").write_bytes(p.read_bytes())
    out = tmp_path / "emb"
    rc, _, err = _run(capsys, "embed", folder, "--model", data["model"], "--out", out, "--shard-size", 3)
    assert rc == 1 and "3 of 6 images could not be read" in err
    doc = json.loads((out / "manifest.json").read_text())
    assert [s["rows"] for s in doc["shards"]] == [0, 3] and len(doc["unreadable"]) == 3
    assert pq.read_schema(out / "part-00000.parquet").field("embedding").type == pa.list_(pa.float32(), 6)
    rc, _, _ = _run(capsys, "classify", folder, "--model", data["model"], "--out", tmp_path / "cls", "--shard-size", 3)
    assert rc == 1  # default --topk: every class of the 4, also in the empty shard's column type
    assert pq.read_schema(tmp_path / "cls" / "part-00000.parquet").field("topk").type == pa.list_(pa.int32(), 4)
    assert pq.read_table(tmp_path / "cls" / "part-00001.parquet").column("topk").type == pa.list_(pa.int32(), 4)
    paths, emb = mc.embeddings.open(out).to_numpy()
    want = [data["ref"]["files"].index(str(p)) for p in good]
    assert [Path(p).name for p in paths] == [f"b_{p.name}" for p in good]
    np.testing.assert_allclose(emb, data["ref"]["emb"][want], rtol=1e-5, atol=1e-6)


def test_compute_threads_is_scoped():
    numba = pytest.importorskip("numba")
    from minicnn.cli._stream import compute_threads

    before = numba.get_num_threads()
    with compute_threads(1, "numba"):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with compute_threads(1, "numpy"):  # another backend: numba's setting is not touched
        assert numba.get_num_threads() == before
    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        with compute_threads(numba.config.NUMBA_NUM_THREADS + 1, "numba"):
            pass
    assert numba.get_num_threads() == before


def test_streaming_bad_input(data, capsys, tmp_path, monkeypatch):
    rc, _, err = _run(capsys, "embed", data["images"], "--model", data["model"], "--out", tmp_path / "e.npz",
                      "--resume")
    assert rc == 1 and "--resume applies only to a streaming run" in err
    rc, _, err = _run(capsys, "embed", data["images"], "--model", data["model"], "--out", tmp_path / "e.txt")
    assert rc == 1 and ".npz" in err and "DIR/" in err
    rc, _, err = _run(capsys, *_embed_args(data, tmp_path / "x", "--dask", "local:0"))
    assert rc == 1 and "local:N" in err
    rc, _, err = _run(capsys, "embed", data["images"], "--model", tmp_path / "none.onnx", "--out", tmp_path / "x")
    assert rc == 1 and "none.onnx" in err and not (tmp_path / "x").exists()  # nothing written for a bad model
    rc, _, err = _run(capsys, *_embed_args(data, tmp_path / "x", "--shard-size", 0))
    assert rc == 1 and "--shard-size must be at least 1" in err
    rc, _, err = _run(capsys, "classify", data["images"], "--model", data["model"], "--out", tmp_path / "c", "--json")
    assert rc == 1 and "--json" in err
    from minicnn.errors import MinicnnError

    with pytest.raises(MinicnnError, match="no manifest.json"):
        mc.embeddings.open(tmp_path)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "distributed", None)  # as if Dask's distributed were not installed
        rc, _, err = _run(capsys, *_embed_args(data, tmp_path / "z", "--dask", "local:1"))
        assert rc == 1 and "pip install minicnn[scale]" in err and err.count("\n") == 1
        assert not (tmp_path / "z").exists()  # refused before anything was written
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    rc, _, err = _run(capsys, *_embed_args(data, tmp_path / "y"))
    assert rc == 1 and "pip install pyarrow" in err and "minicnn[scale]" in err and err.count("\n") == 1
