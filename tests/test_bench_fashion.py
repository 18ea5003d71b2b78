"""The Fashion-MNIST time-to-accuracy suite (minicnn.bench.fashion): the two frameworks run the
same training, and the table reports it. Timings themselves are not asserted."""
import importlib.util

import numpy as np
import pytest

from minicnn.bench import fashion
from minicnn.data.mnist import DEBIAN_FASHION_MNIST

import os

pytestmark = [
    pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION_MNIST), reason="dataset-fashion-mnist is not installed"),
]
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")


def test_batches_are_one_permutation_per_epoch():
    a = fashion._batches(300, seed=0, epoch=1)
    assert [len(b) for b in a] == [128, 128, 44]
    assert sorted(np.concatenate(a).tolist()) == list(range(300))
    assert all(np.array_equal(x, y) for x, y in zip(a, fashion._batches(300, 0, 1)))
    assert not np.array_equal(np.concatenate(a), np.concatenate(fashion._batches(300, 0, 2)))


@needs_torch
def test_minicnn_and_pytorch_train_the_same_run(tmp_path):
    lines = []
    payload = fashion.run(target=0.99, max_epochs=1, eval_every=2, threads=1, out_dir=str(tmp_path),
                          train_size=640, log=lines.append)
    rows = {r["framework"]: r for r in payload["rows"]}
    assert set(rows) == {"minicnn", "pytorch"}
    m, p = rows["minicnn"], rows["pytorch"]
    assert m["status"] == "ok" and p["status"] == "ok", (m.get("note"), p.get("note"))
    # same weights, same batches: the first losses agree to rounding, and ln(10) is where an untrained net starts
    assert m["first_loss"] == pytest.approx(p["first_loss"], rel=1e-5)
    assert m["first_loss"] == pytest.approx(np.log(10), abs=0.3)
    # 640 images, batch 128: 5 steps, scored after steps 2, 4 and at the epoch's end; 0.99 is out of reach
    assert [e["step"] for e in m["evals"]] == [e["step"] for e in p["evals"]] == [2, 4, 5]
    assert not m["reached"] and not p["reached"]
    for a, b in zip(m["evals"], p["evals"]):
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=0.01)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
    assert m["evals"][-1]["test_accuracy"] > 0.3  # five Adam steps already learn something
    # the two processes trained in turns, one interval each, the order reversed every round (ABBA)
    order = [ln.split()[0] for ln in lines if ln.split()[1:2] == ["epoch"]]
    assert order == ["minicnn", "pytorch", "pytorch", "minicnn", "minicnn", "pytorch"]
    text = (tmp_path / "fashion.md").read_text()
    assert "not reached in 1 epoch " in text and (tmp_path / "fashion.json").exists()


def test_bad_arguments_are_refused_in_one_line():
    with pytest.raises(ValueError, match="target must be a test accuracy"):
        fashion.run(target=1.5)
    with pytest.raises(ValueError, match="max_epochs and eval_every"):
        fashion.run(max_epochs=0)


def test_cli_refuses_fashion_options_for_other_suites(capsys):
    from minicnn.cli import main

    assert main(["bench", "ops", "--target", "0.9"]) != 0
    assert "--target and --max-epochs" in capsys.readouterr().err


def test_a_failing_process_is_reported_and_the_other_trains_on(tmp_path):
    import minicnn as mc
    from minicnn.models import fashion_convnet

    mc.manual_seed(0)
    path = str(tmp_path / "init.npz")
    np.savez(path, **{k: np.asarray(v) for k, v in fashion_convnet().state_dict().items()})
    opts = {"target": 0.99, "max_epochs": 1, "eval_every": 2, "seed": 0, "train_size": 256}
    lines = []
    rows = fashion._train_alternating(["nosuch", "minicnn"], path, opts, 1, str(tmp_path), lines.append)
    bad, good = rows
    assert bad["status"] == "FAIL" and "unknown framework 'nosuch'" in bad["note"]
    assert good["status"] == "ok" and [e["step"] for e in good["evals"]] == [2]
    assert [ln.split()[0] for ln in lines] == ["minicnn"]
