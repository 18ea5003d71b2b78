"""A first run, as a new user meets it: ``minicnn train DIR`` on a folder of PNGs, a run
interrupted and resumed, and one clear line (with a non-zero exit) for each first mistake:
another model's weights, a missing weights path, a huge image, --topk above the class count, a
404 from ``weights fetch``, ``weights="DEFAULT"`` / ``pretrained=True`` with nothing cached, and
seeded weights announced as such."""
from __future__ import annotations

import http.server
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import minicnn as mc
from minicnn import callbacks
from minicnn.cli import main
from minicnn.data import load_digits
from minicnn.errors import MinicnnError
from minicnn.io.images import ImageReadError, load_image
from minicnn.models import digits_convnet
from minicnn.models.resnet import resnet18, seeded_state_dict

IMAGES = Path(__file__).resolve().parent.parent / "minicnn" / "data" / "images"


def _run(capsys, *argv):
    rc = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc, err, *needles):
    assert rc == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("first")
    mc.manual_seed(0)
    mc.save(digits_convnet(), tmp / "digits_convnet.safetensors", metadata={"model": "digits_convnet"})
    mc.save(seeded_state_dict("resnet18", 5, num_classes=3), tmp / "three.safetensors")
    sd = seeded_state_dict("resnet18", 0)
    main(["weights", "seed", "resnet18", str(tmp / "seeded18.safetensors")])
    broken = {k: v for i, (k, v) in enumerate(sd.items()) if i % 3}  # a third of the keys gone
    mc.save(broken, tmp / "broken18.safetensors")
    shutil.copy(IMAGES / "chelsea.jpg", tmp / "cat.jpg")
    return tmp


# -- weights files of the wrong kind, or not there -------------------------------------------

def test_another_models_weights_are_named(files, capsys):
    w = files / "digits_convnet.safetensors"
    rc, _, err = _run(capsys, "classify", files / "cat.jpg", "--weights", w)
    _one_line_error(rc, err, "is a digits_convnet weights file", "minicnn weights fetch resnet18")
    rc, _, err = _run(capsys, "verify", w)
    _one_line_error(rc, err, "is a digits_convnet weights file", "not resnet18 weights")
    rc, _, err = _run(capsys, "embed", files / "cat.jpg", "--weights", w, "--out", files / "e.npz")
    _one_line_error(rc, err, "is a digits_convnet weights file")
    # without metadata the keys tell: a Sequential's 0.weight, 0.bias, ...
    plain = files / "plain.safetensors"
    mc.save(dict(digits_convnet().state_dict()), plain)
    rc, _, err = _run(capsys, "classify", files / "cat.jpg", "--weights", plain)
    _one_line_error(rc, err, "holds 8 tensors named like 0.weight, 0.bias, 3.weight", "not ResNet or VGG")


def test_near_miss_weights_list_a_few_keys_not_a_hundred(files, capsys):
    rc, _, err = _run(capsys, "verify", files / "broken18.safetensors")
    line = _one_line_error(rc, err, "keys do not match resnet18", "missing: ", "more)")
    assert len(line) < 600


def test_missing_weights_path(files, capsys, tmp_path):
    missing = tmp_path / "nope.safetensors"
    for argv in (("classify", files / "cat.jpg", "--weights", missing), ("verify", missing),
                 ("embed", files / "cat.jpg", "--weights", missing, "--out", tmp_path / "e.npz")):
        rc, _, err = _run(capsys, *argv)
        line = _one_line_error(rc, err, f"weights file '{missing}' not found", "minicnn weights fetch resnet18")
        assert "Errno" not in line
    with pytest.raises(FileNotFoundError, match="not found"):
        resnet18(weights=missing)


def test_pretrained_names_explain_how_to_get_weights(files, monkeypatch, tmp_path):
    monkeypatch.setenv("MINICNN_HOME", str(tmp_path / "home"))
    for kw in ({"weights": "DEFAULT"}, {"weights": "IMAGENET1K_V1"}, {"pretrained": True}):
        with pytest.raises(MinicnnError, match=r"ships no pretrained weights .*minicnn weights fetch resnet18") as ei:
            resnet18(**kw)
        assert "\n" not in str(ei.value)
    # once fetched (here: the seeded file put where `weights fetch` would), DEFAULT loads it
    (tmp_path / "home").mkdir()
    shutil.copy(files / "seeded18.safetensors", tmp_path / "home" / "resnet18.safetensors")
    model = resnet18(weights="DEFAULT")
    np.testing.assert_array_equal(model.state_dict()["fc.bias"], seeded_state_dict("resnet18", 0)["fc.bias"])
    assert resnet18(pretrained=False).fc.out_features == 1000
    with pytest.raises(ValueError, match="not both"):
        resnet18(weights="DEFAULT", pretrained=True)


# -- images and options ----------------------------------------------------------------------

def test_a_huge_image_is_refused_with_the_way_to_allow_it(files, capsys, tmp_path):
    from PIL import Image as PILImage

    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(big)
    limit_before = PILImage.MAX_IMAGE_PIXELS
    rc, out, err = _run(capsys, "classify", big, "--weights", files / "three.safetensors", "--max-pixels", "1000")
    assert rc == 1
    assert "50x40 = 2,000 pixels is more than the 1,000 allowed" in err and "--max-pixels 2000" in err
    assert "DecompressionBomb" not in err
    assert PILImage.MAX_IMAGE_PIXELS == limit_before  # the limit is the command's, not the process's
    with pytest.raises(ImageReadError, match=r"big\.png.*2,000 pixels is more than the 1,999 allowed"):
        load_image(big, max_pixels=1999)
    assert load_image(big, max_pixels=2000).size == (50, 40)


def test_topk_above_the_class_count(files, capsys):
    rc, _, err = _run(capsys, "classify", files / "cat.jpg", "--weights", files / "three.safetensors", "--topk", "4")
    _one_line_error(rc, err, "--topk 4 is more than the 3 classes", "use --topk 3 or less")


def test_seeded_weights_say_so(files, capsys, tmp_path):
    w = files / "seeded18.safetensors"
    rc, out, err = _run(capsys, "--backend", "numpy", "classify", files / "cat.jpg", "--weights", w, "--json", "--topk", "1")
    assert rc == 0, err
    assert json.loads(out)["weights_source"] == "seeded"
    assert "seeded (untrained) weights" in err
    rc, out, err = _run(capsys, "--backend", "numpy", "embed", files / "cat.jpg", "--weights", w,
                        "--out", tmp_path / "e.npz")
    assert rc == 0 and "seeded (untrained) weights" in err
    assert str(np.load(tmp_path / "e.npz")["weights_source"]) == "seeded"
    # trained (or converted) weights carry no such note
    rc, out, err = _run(capsys, "--backend", "numpy", "classify", files / "cat.jpg", "--weights",
                        files / "three.safetensors", "--json")
    assert rc == 0 and "weights_source" not in json.loads(out) and "seeded" not in err


def test_fetch_404_says_there_is_no_such_file(capsys, tmp_path):
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404, "Not Found")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}/resnet18-f37072fd.pth"
        rc, _, err = _run(capsys, "weights", "fetch", "resnet18", "--url", url, "--dest", tmp_path, "--quiet")
    finally:
        httpd.shutdown()
        httpd.server_close()
    line = _one_line_error(rc, err, "HTTP 404 Not Found", "no such file there", "--url")
    assert "Without network" not in line
    assert list(tmp_path.iterdir()) == []


def test_saving_an_unsupported_object_is_one_clear_line(tmp_path):
    with pytest.raises(TypeError, match=r"save\(\): cannot store a function at 'fn'"):
        mc.save({"fn": lambda: 0}, tmp_path / "x.safetensors")


# -- minicnn train DIR -----------------------------------------------------------------------

def _digit_folder(root, per_class):
    """The shipped digits as 8x8 grey PNGs in root/d0 ... root/d9 (``per_class`` each)."""
    X, y = load_digits()
    for c in range(10):
        (root / f"d{c}").mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(y == c)[:per_class]):
            Image.fromarray(np.rint(X[i, 0] * 255).astype(np.uint8)).save(root / f"d{c}" / f"{j:03d}.png")
    return root


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    return _digit_folder(tmp_path_factory.mktemp("digits") / "imgs", 80)


def test_train_dir_learns_the_digits_and_writes_its_outputs(digit_folder, tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = _run(capsys, "train", digit_folder, "--arch", "small", "--image-size", "8", "--epochs", "6",
                           "--batch-size", "16", "--no-progress", "--out", out)
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == [f"d{c}" for c in range(10)]
    assert metrics["train_size"] == 640 and metrics["val_size"] == 160
    assert metrics["val_accuracy"] >= 0.9
    assert len(metrics["history"]["val_accuracy"]) == 6
    assert metrics["history"]["val_accuracy"][-1] == pytest.approx(metrics["val_accuracy"])
    cm = np.asarray(metrics["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 160 and cm.trace() / 160 == pytest.approx(metrics["val_accuracy"])
    assert f"validation accuracy: {metrics['val_accuracy']:.4f}" in stdout
    meta = mc.serialization.load_metadata(out / "model.safetensors")
    assert json.loads(meta["classes"]) == metrics["classes"] and meta["source"] == "trained"
    assert meta["model"] == "digits_convnet"
    # the saved weights give the reported accuracy on the held-out images
    from minicnn.data.folder import ImageFolder, Subset, image_transform, split_indices
    from minicnn.train import evaluate

    ds = ImageFolder(digit_folder, transform=image_transform(8, mean=None))
    _, val_idx = split_indices(ds.targets, 0.2, seed=0)
    model = digits_convnet(num_classes=10, in_channels=3, image_size=8)
    model.load_state_dict(mc.load(out / "model.safetensors"))
    got = evaluate(model, None, Subset(ds, val_idx))["accuracy"]
    assert got == pytest.approx(metrics["val_accuracy"])
    pytest.importorskip("matplotlib")
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _interrupt_after(monkeypatch, stop_epoch):
    """Ctrl-C right after the checkpoint of ``stop_epoch`` is written."""
    orig = callbacks.ModelCheckpoint.on_epoch_end

    def on_epoch_end(self, epoch, logs):
        orig(self, epoch, logs)
        if epoch == stop_epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.ModelCheckpoint, "on_epoch_end", on_epoch_end)


def test_train_dir_interrupted_and_resumed_ends_with_the_same_weights(tmp_path, capsys, monkeypatch):
    root = _digit_folder(tmp_path / "imgs", 12)
    argv = ["train", root, "--arch", "small", "--image-size", "8", "--epochs", "4", "--batch-size", "16",
            "--no-progress", "--num-workers", "2"]
    rc, _, err = _run(capsys, *argv, "--out", tmp_path / "full")
    assert rc == 0, err
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        rc, _, err = _run(capsys, *argv, "--out", tmp_path / "part")
    assert rc == 130 and "interrupted" in err
    mc.manual_seed(1234)  # whatever the process did in between
    ck = tmp_path / "part" / "checkpoint.safetensors"
    rc, stdout, err = _run(capsys, *argv, "--out", tmp_path / "part", "--resume", ck)
    assert rc == 0, err
    assert "epoch 1/4" not in stdout and "epoch 3/4" in stdout
    full, part = mc.load(tmp_path / "full" / "model.safetensors"), mc.load(tmp_path / "part" / "model.safetensors")
    for k in full:
        np.testing.assert_array_equal(part[k], full[k], err_msg=k)
    hist_full = json.loads((tmp_path / "full" / "metrics.json").read_text())["history"]
    hist_part = json.loads((tmp_path / "part" / "metrics.json").read_text())["history"]
    assert hist_part == hist_full
    # a checkpoint of another run is refused by name
    other = _digit_folder(tmp_path / "other", 3)
    (other / "d9").rename(other / "nine")
    rc, _, err = _run(capsys, "train", other, "--arch", "small", "--image-size", "8", "--epochs", "4",
                      "--out", tmp_path / "o", "--resume", ck)
    _one_line_error(rc, err, "the checkpoint is for arch 'small' with classes")


def test_train_dir_fine_tunes_resnet18_head_first(files, tmp_path, capsys, monkeypatch):
    root = tmp_path / "two"
    rng = np.random.default_rng(0)
    for name, colour in (("blue", (30, 30, 200)), ("red", (200, 30, 30))):
        (root / name).mkdir(parents=True)
        for j in range(5):
            a = np.clip(np.array(colour) + rng.integers(-20, 20, (36, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{j}.png")
    seeded = mc.load(files / "seeded18.safetensors")
    argv = ["train", root, "--weights", files / "seeded18.safetensors", "--freeze-epochs", "1", "--epochs", "2",
            "--image-size", "32", "--batch-size", "4", "--no-progress", "--out", tmp_path / "run"]
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        assert _run(capsys, *argv)[0] == 130
    head_only = load_checkpoint_model(tmp_path / "run" / "checkpoint.safetensors")
    changed = {k for k in seeded if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
               and not np.array_equal(head_only[k], seeded[k])}
    assert {k for k in changed if not k.startswith("fc.")} == set()  # the body stayed frozen
    assert head_only["fc.weight"].shape == (2, 512)
    rc, _, err = _run(capsys, *argv, "--resume", tmp_path / "run" / "checkpoint.safetensors")
    assert rc == 0, err
    final = mc.load(tmp_path / "run" / "model.safetensors")
    assert not np.array_equal(final["layer1.0.conv1.weight"], seeded["layer1.0.conv1.weight"])  # then unfrozen
    assert not np.array_equal(final["conv1.weight"], seeded["conv1.weight"])


def load_checkpoint_model(path):
    return mc.load(path)["model"]


@pytest.mark.parametrize("extra, needle", [
    (("--freeze-epochs", "1", "--epochs", "3"), "--freeze-epochs needs --weights"),
    (("--arch", "small", "--image-size", "10"), "must be a positive multiple of 4"),
    (("--arch", "small", "--weights", "w.safetensors"), "--weights is for --arch resnet18"),
    (("--resume",), "needs the checkpoint file"),
])
def test_train_dir_bad_options(digit_folder, capsys, tmp_path, extra, needle):
    rc, _, err = _run(capsys, "train", digit_folder, "--out", tmp_path / "o", *extra)
    _one_line_error(rc, err, needle)


def test_train_dir_needs_two_classes_and_digits_weights_are_refused(files, tmp_path, capsys):
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(one / "only" / "a.png")
    rc, _, err = _run(capsys, "train", one, "--arch", "small", "--image-size", "8", "--out", tmp_path / "o")
    _one_line_error(rc, err, "needs at least two")
    rc, _, err = _run(capsys, "train", tmp_path / "nothing-here", "--out", tmp_path / "o")
    _one_line_error(rc, err, "nothing-here")
