"""``minicnn classify`` and ``embed`` run a ResNet through ``compile_inference`` (BatchNorm folded,
fused convs), and what they print or write equals the eager eval model's outputs.

The eager reference is the plain model on the numpy backend; the commands run on numpy and numba.
A spy on the compiled model's feature pass shows the compiled path really ran.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import minicnn as mc
from minicnn import inference
from minicnn.cli import main
from minicnn.io.images import load_image, preprocess
from minicnn.models.resnet import resnet18, seeded_state_dict

IMAGES = Path(__file__).resolve().parent.parent / "minicnn" / "data" / "images"
NAMES = ("chelsea.jpg", "coffee.jpg", "rocket.jpg")


@pytest.fixture(scope="module")
def eager(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compiled_cli")
    sd = seeded_state_dict("resnet18", 2)
    mc.save(sd, tmp / "seed18.safetensors")
    for n in NAMES:
        shutil.copy(IMAGES / n, tmp / n)
    with mc.backend("numpy"), mc.no_grad():
        model = resnet18(weights=sd).eval()
        x = np.stack([preprocess(load_image(tmp / n)) for n in NAMES])
        acts = model.activations(x)
    return {"tmp": tmp, "w": tmp / "seed18.safetensors", "files": [tmp / n for n in NAMES],
            "layer4": acts["layer4"], "avgpool": acts["avgpool"], "fc": acts["fc"]}


@pytest.fixture
def compiled_passes(monkeypatch):
    """Counts the images that went through a compiled ResNet's feature pass."""
    seen = []
    original = inference.CompiledModel._features_map

    def spy(self, x, ctx, joined=None):
        seen.append(int(x.shape[0]))
        return original(self, x, ctx, joined)

    monkeypatch.setattr(inference.CompiledModel, "_features_map", spy)
    return seen


def _close(got, want, tol=2e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= tol * np.max(np.abs(want))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_classify_runs_compiled_and_matches_eager(backend, eager, compiled_passes, capsys):
    rc = main(["--backend", backend, "classify", *map(str, eager["files"]), "--weights", str(eager["w"]),
               "--json", "--topk", "4", "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert compiled_passes == [2, 1]  # every image, in the command's batches
    z = np.asarray(eager["fc"], np.float64)
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for res, p in zip(json.loads(out)["results"], probs):
        top = [t["index"] for t in res["top"]]
        assert top == np.argsort(-p, kind="stable")[:4].tolist()
        _close([t["prob"] for t in res["top"]], p[top])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("layer", ["layer4", "avgpool", "fc"])
def test_embed_runs_compiled_and_matches_eager(backend, layer, eager, compiled_passes, capsys, tmp_path):
    out_file = tmp_path / "emb.npz"
    rc = main(["--backend", backend, "embed", *map(str, eager["files"]), "--weights", str(eager["w"]),
               "--layer", layer, "--out", str(out_file)])
    _, err = capsys.readouterr()
    assert rc == 0, err
    assert compiled_passes == [3]
    with np.load(out_file) as z:
        assert str(z["layer"]) == layer
        _close(z["embeddings"], eager[layer])


def test_a_model_compile_inference_refuses_runs_as_it_is():
    from minicnn.cli.classify import compiled

    net = mc.nn.Sequential(mc.nn.Conv2d(3, 4, 3), mc.nn.ReLU()).eval()
    assert compiled(net) is net
    fast = compiled(resnet18(weights=seeded_state_dict("resnet18", 2)).eval())
    assert isinstance(fast, inference.CompiledModel) and not fast.autotune
