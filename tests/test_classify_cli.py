"""``minicnn classify``, ``embed`` and ``verify`` through ``minicnn.cli.main``, with seeded weights
written to a temporary directory (no network), and the embedding similarity helpers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import minicnn as mc
from minicnn.cli import main
from minicnn.embeddings import correlation_matrix, cosine_similarity_matrix
from minicnn.io.images import load_image, preprocess
from minicnn.io.labels import imagenet_classes
from minicnn.models.resnet import resnet18, seeded_state_dict

IMAGES = Path(__file__).resolve().parent.parent / "minicnn" / "data" / "images"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Seeded ResNet-18 weights on disk, a 3-class variant, and a photo directory with one corrupt file."""
    tmp = tmp_path_factory.mktemp("cli")
    sd = seeded_state_dict("resnet18", 0)
    mc.save(sd, tmp / "seed18.safetensors")
    sd3 = seeded_state_dict("resnet18", 5, num_classes=3)
    mc.save(sd3, tmp / "seed18_3.safetensors")
    photos = tmp / "photos"
    photos.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg"):
        shutil.copy(IMAGES / name, photos / name)
    (photos / "broken.jpg").write_bytes((IMAGES / "rocket.jpg").read_bytes()[:3000])
    (photos / "readme.txt").write_text("not an image, and not picked up from a directory")
    with mc.backend("numpy"), mc.no_grad():
        model = resnet18(weights=sd).eval()
        x = np.stack([preprocess(load_image(photos / n)) for n in ("chelsea.jpg", "coffee.jpg")])
        logits = model(x)
        emb = model.embed(x)
    return {"tmp": tmp, "w": tmp / "seed18.safetensors", "w3": tmp / "seed18_3.safetensors", "photos": photos,
            "logits": logits, "emb": emb}


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _run(capsys, *argv):
    rc = main(["--backend", "numpy", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


# -- classify ------------------------------------------------------------------------------------------
def test_classify_json_matches_the_model(setup, capsys):
    files = [setup["photos"] / "chelsea.jpg", setup["photos"] / "coffee.jpg"]
    rc, out, err = _run(capsys, "classify", *files, "--weights", setup["w"], "--json", "--topk", "3", "--batch-size", "1")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["arch"] == "resnet18" and doc["errors"] == [] and doc["preprocess"] == "torchvision"
    probs = _softmax(setup["logits"])
    names = imagenet_classes()
    assert [r["file"] for r in doc["results"]] == [str(f) for f in files]
    for res, p in zip(doc["results"], probs):
        expect = np.argsort(-p)[:3]
        assert [t["index"] for t in res["top"]] == expect.tolist()
        assert [t["label"] for t in res["top"]] == [names[i] for i in expect]
        np.testing.assert_allclose([t["prob"] for t in res["top"]], p[expect], rtol=1e-5)


def test_classify_text_output(setup, capsys):
    rc, out, err = _run(capsys, "classify", setup["photos"] / "coffee.jpg", "--weights", setup["w"], "--topk", "2")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].endswith("coffee.jpg") and len(lines) == 3
    p = _softmax(setup["logits"])[1]
    best = int(np.argmax(p))
    assert lines[1].split(None, 1) == [f"{p[best]:.4f}", imagenet_classes()[best]]


def test_directory_with_a_corrupt_image_still_completes(setup, capsys):
    rc, out, err = _run(capsys, "classify", setup["photos"], "--weights", setup["w"], "--json", "--batch-size", "2")
    assert rc == 1
    doc = json.loads(out)
    assert [Path(r["file"]).name for r in doc["results"]] == ["chelsea.jpg", "coffee.jpg"]
    assert [Path(e["file"]).name for e in doc["errors"]] == ["broken.jpg"]
    assert "broken.jpg" in err and "1 of 3 images could not be read" in err
    # the batch that held the broken file still gave the same numbers as a clean run
    p = _softmax(setup["logits"])
    np.testing.assert_allclose([r["top"][0]["prob"] for r in doc["results"]], p.max(axis=1), rtol=1e-5)


def test_center_crop_preprocessing_option(setup, capsys):
    rc, out, _ = _run(capsys, "classify", setup["photos"] / "chelsea.jpg", "--weights", setup["w"], "--json",
                      "--preprocess", "center_crop", "--topk", "1")
    assert rc == 0
    with mc.backend("numpy"), mc.no_grad():
        x = preprocess(load_image(setup["photos"] / "chelsea.jpg"), mode="center_crop")[None]
        p = _softmax(resnet18(weights=setup["w"]).eval()(x))[0]
    top = json.loads(out)["results"][0]["top"][0]
    assert top["index"] == int(np.argmax(p)) and abs(top["prob"] - p.max()) < 1e-5


def test_missing_weights_says_how_to_get_them(setup, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MINICNN_HOME", str(tmp_path / "empty_cache"))
    rc, out, err = _run(capsys, "classify", setup["photos"] / "chelsea.jpg")
    assert rc == 1 and out == ""
    assert "minicnn weights fetch resnet18" in err and "minicnn convert" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cached_weights_are_the_default(setup, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MINICNN_HOME", str(tmp_path))
    shutil.copy(setup["w"], tmp_path / "resnet18.safetensors")
    rc, out, err = _run(capsys, "classify", setup["photos"] / "coffee.jpg", "--json", "--topk", "1")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["weights"] == str(tmp_path / "resnet18.safetensors")
    assert doc["results"][0]["top"][0]["index"] == int(np.argmax(setup["logits"][1]))


def test_custom_labels_non_ascii(setup, capsys, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("chat tigré\n咖啡杯\nкосмический корабль\n", encoding="utf-8")
    rc, out, err = _run(capsys, "classify", setup["photos"] / "chelsea.jpg", "--weights", setup["w3"],
                        "--labels", labels, "--json")
    assert rc == 0, err
    assert "咖啡杯" in out  # not \u-escaped
    top = json.loads(out)["results"][0]["top"]
    assert len(top) == 3  # --topk 5 is capped at the class count
    assert sorted(t["label"] for t in top) == sorted(["chat tigré", "咖啡杯", "космический корабль"])
    assert abs(sum(t["prob"] for t in top) - 1) < 1e-9
    rc, out, err = _run(capsys, "classify", setup["photos"] / "chelsea.jpg", "--weights", setup["w3"], "--labels", labels)
    assert rc == 0 and "космический корабль" in out
    # a labels file of the wrong length, or with a blank line, is refused with a one-line reason
    rc, _, err = _run(capsys, "classify", setup["photos"] / "chelsea.jpg", "--weights", setup["w"], "--labels", labels)
    assert rc == 1 and "has 3 names but the model has 1000 classes" in err
    labels.write_text("a\n\nb\nc\n", encoding="utf-8")
    rc, _, err = _run(capsys, "classify", setup["photos"] / "chelsea.jpg", "--weights", setup["w3"], "--labels", labels)
    assert rc == 1 and "line 2 is blank" in err


def test_classify_bad_arguments(setup, capsys, tmp_path):
    rc, _, err = _run(capsys, "classify", setup["photos"], "--weights", setup["w"], "--topk", "0")
    assert rc == 1 and "--topk must be at least 1" in err
    (tmp_path / "nothing").mkdir()
    rc, _, err = _run(capsys, "classify", tmp_path / "nothing", "--weights", setup["w"])
    assert rc == 1 and "no images in directory" in err
    rc, _, err = _run(capsys, "classify", setup["photos"] / "chelsea.jpg", "--weights", tmp_path / "none.safetensors")
    assert rc == 1 and "none.safetensors" in err and "Traceback" not in err
    # a missing image is reported like a corrupt one
    rc, out, err = _run(capsys, "classify", tmp_path / "gone.jpg", setup["photos"] / "coffee.jpg",
                        "--weights", setup["w"], "--json")
    assert rc == 1 and "gone.jpg" in err and len(json.loads(out)["results"]) == 1


# -- embed ---------------------------------------------------------------------------------------------
def test_embed_writes_embeddings_and_names(setup, capsys, tmp_path):
    out_file = tmp_path / "emb.npz"
    rc, out, err = _run(capsys, "embed", setup["photos"], "--weights", setup["w"], "--out", out_file)
    assert rc == 1 and "broken.jpg" in err  # the corrupt file is reported, the rest written
    with np.load(out_file) as z:
        assert [Path(f).name for f in z["files"]] == ["chelsea.jpg", "coffee.jpg"]
        assert str(z["layer"]) == "avgpool" and str(z["arch"]) == "resnet18"
        np.testing.assert_allclose(z["embeddings"], setup["emb"], rtol=1e-5, atol=1e-6)
    files = [setup["photos"] / "chelsea.jpg", setup["photos"] / "coffee.jpg"]
    for layer, shape in (("layer4", (2, 512, 7, 7)), ("fc", (2, 1000))):
        rc, _, err = _run(capsys, "embed", *files, "--weights", setup["w"], "--layer", layer, "--out", out_file)
        assert rc == 0, err
        with np.load(out_file) as z:
            assert z["embeddings"].shape == shape
            if layer == "fc":
                np.testing.assert_allclose(z["embeddings"], setup["logits"], rtol=1e-5, atol=1e-5)
            else:
                np.testing.assert_allclose(z["embeddings"].mean(axis=(2, 3)), setup["emb"], rtol=1e-5, atol=1e-6)
    rc, _, err = _run(capsys, "embed", *files, "--weights", setup["w"], "--out", tmp_path / "emb.txt")
    assert rc == 1 and ".npz" in err


# -- verify --------------------------------------------------------------------------------------------
def test_verify_passes_with_seeded_weights(setup, capsys):
    rc, out, err = _run(capsys, "verify", setup["w"])
    assert rc == 0, out + err
    assert out.strip().endswith("PASS") and "digest matches" in out
    assert "logits" in out and "train dL/dx" in out


def test_verify_fails_with_other_weights(setup, capsys, tmp_path):
    sd = seeded_state_dict("resnet18", 0)
    sd["layer4.1.conv2.weight"] = sd["layer4.1.conv2.weight"] * np.float32(1.001)
    mc.save(sd, tmp_path / "other.safetensors")
    rc, out, _ = _run(capsys, "verify", tmp_path / "other.safetensors", "--no-train")
    assert rc == 1 and out.strip().endswith("FAIL") and "MISMATCH" in out
    assert "digest differs" in out
    assert not any(line.strip().startswith("train") for line in out.splitlines())  # --no-train
    rc, _, err = _run(capsys, "verify", setup["w"], "--reference", tmp_path / "none.npz")
    assert rc == 1 and "none.npz" in err and "does not exist" in err
    rc, _, err = _run(capsys, "verify", setup["w"], "--tol", "0")
    assert rc == 1 and "--tol must be positive" in err


def test_weights_seed_command_output_verifies(capsys, tmp_path):
    rc, _, err = _run(capsys, "weights", "seed", "resnet18", tmp_path / "s.safetensors")
    assert rc == 0, err
    rc, out, err = _run(capsys, "verify", tmp_path / "s.safetensors", "--no-train")
    assert rc == 0 and out.strip().endswith("PASS"), out + err


# -- similarity ----------------------------------------------------------------------------------------
def test_correlation_and_cosine_matrices():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((5, 2, 3, 4)).astype(np.float32)
    flat = emb.reshape(5, -1).astype(np.float64)
    np.testing.assert_allclose(correlation_matrix(emb), np.corrcoef(flat), rtol=1e-12, atol=1e-12)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    np.testing.assert_allclose(cosine_similarity_matrix(emb), unit @ unit.T, rtol=1e-12, atol=1e-12)
    other = rng.standard_normal((2, 24))
    assert correlation_matrix(emb, other).shape == (5, 2)
    np.testing.assert_allclose(correlation_matrix(emb, other), np.corrcoef(flat, other)[:5, 5:], atol=1e-12)
    # scale and shift invariance of correlation; scale invariance of cosine
    np.testing.assert_allclose(correlation_matrix(3 * flat + 7), correlation_matrix(flat), atol=1e-12)
    np.testing.assert_allclose(cosine_similarity_matrix(0.5 * flat), cosine_similarity_matrix(flat), atol=1e-12)
    # degenerate rows: constant rows have no correlation (NaN), zero rows similarity 0
    deg = np.vstack([flat[:2], np.full((1, 24), 3.3)])
    r = correlation_matrix(deg)
    assert np.isnan(r[2]).all() and np.isnan(r[:, 2]).all() and np.isfinite(r[:2, :2]).all()
    c = cosine_similarity_matrix(np.vstack([flat[:1], np.zeros((1, 24))]))
    assert c[1, 0] == 0 and c[1, 1] == 0 and abs(c[0, 0] - 1) < 1e-12
    with pytest.raises(ValueError, match="24 values but other rows have 3"):
        correlation_matrix(flat, np.ones((2, 3)))


def test_embeddings_of_real_photos_are_related(setup):
    # the same photo embeds identically; different photos are less correlated than a photo with itself
    emb = np.vstack([setup["emb"], setup["emb"][:1]])
    r = correlation_matrix(emb)
    assert r[0, 2] == pytest.approx(1.0) and r[0, 1] < 0.9999
