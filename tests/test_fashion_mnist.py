"""Fashion-MNIST end to end: the IDX reader, the data set classes, ``minicnn train fashion-mnist``
and the shipped ``fashion_convnet`` weights.

The reader's header rules are checked on small files written here. Everything that reads the real
data (Debian's ``dataset-fashion-mnist``, which ``.ci/run`` installs) skips, saying so, only when
those files are absent.
"""
import gzip
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest

import minicnn as mc
from minicnn import cli
from minicnn.data import MNIST, FashionMNIST, IDXError, read_idx
from minicnn.data.mnist import DEBIAN_FASHION_MNIST
from minicnn.models import fashion_convnet, fashion_convnet_bn
from minicnn.models.fashion import WEIGHTS_DIR
from minicnn.serialization import load_metadata
from minicnn.train import predict

REPO = Path(__file__).resolve().parents[1]
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
HAVE_DEBIAN = all(os.path.isfile(os.path.join(DEBIAN_FASHION_MNIST, f + ".gz")) for f in FILES)
needs_data = pytest.mark.skipif(
    not HAVE_DEBIAN, reason=f"Fashion-MNIST is not installed in {DEBIAN_FASHION_MNIST} "
                            "(apt-get install dataset-fashion-mnist; .ci/run does)")

# SHA-256 of the decompressed IDX files of Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# The shipped weights' score on the 10,000 test images, as docs/results.md states it.
SHIPPED_CORRECT = 9210


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    """An IDX file by the format's rules, written independently of the reader."""
    be = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + np.ascontiguousarray(arr, dtype=be).tobytes()


def _write(path: Path, data: bytes, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _one_line_naming(exc, path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


# -- the IDX reader ------------------------------------------------------------------------------

@pytest.mark.parametrize("code, dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                                         (0x0D, np.float32), (0x0E, np.float64)])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_every_type_plain_and_gzip(tmp_path, code, dtype, gz):
    rng = np.random.default_rng(code)
    if np.dtype(dtype).kind == "f":
        arr = rng.standard_normal((3, 4, 5)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        arr = rng.integers(info.min, info.max, (3, 4, 5), endpoint=True).astype(dtype)
    path = _write(tmp_path / "a.idx", _idx_bytes(arr, code), gz)
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative and got.flags.writeable
    np.testing.assert_array_equal(got, arr)


def test_read_idx_big_endian_layout(tmp_path):
    # 0x0102 as a big-endian int16 is 258: a reader that ignored the byte order would give 513
    raw = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE])
    np.testing.assert_array_equal(read_idx(_write(tmp_path / "s.idx", raw)), [258, -2])
    # a 1-D label file and a 0-dimensional one
    np.testing.assert_array_equal(read_idx(_write(tmp_path / "l.idx", bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))), [7, 8, 9])
    assert read_idx(_write(tmp_path / "z.idx", bytes([0, 0, 8, 0, 42]))).shape == ()


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("raw, message", [
    (bytes([1, 0, 8, 1, 0, 0, 0, 1, 5]), "magic number 01000801 does not start with two zero bytes"),
    (bytes([0, 7, 8, 1, 0, 0, 0, 1, 5]), "does not start with two zero bytes"),
    (bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 5]), "unknown IDX element type 0x0A"),
    (bytes([0, 0, 8]), "shorter than the 4-byte magic number"),
    (b"", "shorter than the 4-byte magic number"),
    (bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0]), "truncated IDX header: 3 dimensions need 16 bytes, the file has 10"),
    (bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5]), r"IDX file truncated: shape \(2, 3\) of uint8 needs 6 data bytes, the file has 5"),
    (bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2, 3]), "IDX file too long"),
    (bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 1, 2, 3]), r"truncated: shape \(2,\) of int16 needs 4 data bytes"),
])
def test_read_idx_refuses_bad_files_in_one_line(tmp_path, raw, message, gz):
    path = _write(tmp_path / "bad-idx1-ubyte", raw, gz)
    with pytest.raises(IDXError, match=message) as exc:
        read_idx(path)
    _one_line_naming(exc, path)
    assert isinstance(exc.value, ValueError)


def test_read_idx_corrupt_gzip_and_missing_file(tmp_path):
    good = gzip.compress(_idx_bytes(np.arange(100, dtype=np.uint8), 8))
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(IDXError, match="corrupt gzip stream") as exc:
        read_idx(path)
    _one_line_naming(exc, path)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nothing-here")


# -- the data set classes on small files -------------------------------------------------------------

def _fake_root(folder: Path, n_train=12, n_test=5, gz=False) -> tuple:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        img = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lab = (np.arange(n) % 10).astype(np.uint8)
        _write(folder / f"{prefix}-images-idx3-ubyte", _idx_bytes(img, 8), gz)
        _write(folder / f"{prefix}-labels-idx1-ubyte", _idx_bytes(lab, 8), gz)
        arrays[prefix] = (img, lab)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_a_folder(tmp_path, gz):
    arrays = _fake_root(tmp_path, gz=gz)
    for train, prefix in ((True, "train"), (False, "t10k")):
        ds = MNIST(tmp_path, train=train)
        img, lab = arrays[prefix]
        assert len(ds) == len(img) and ds.data.dtype == np.uint8 and ds.targets.dtype == np.int64
        np.testing.assert_array_equal(ds.data, img)
        np.testing.assert_array_equal(ds.targets, lab)
        x, y = ds[3]
        assert x.shape == (1, 28, 28) and x.dtype == np.float32 and isinstance(y, int) and y == lab[3]
        np.testing.assert_allclose(x[0], img[3] / 255.0, rtol=1e-6)
        X, Y = ds.arrays()
        assert X.shape == (len(img), 1, 28, 28) and X.dtype == np.float32 and 0.0 <= X.min() and X.max() <= 1.0
        np.testing.assert_array_equal(X[3], x)
        np.testing.assert_array_equal(Y, lab)
    assert len(MNIST.classes) == 10


def test_transform_and_torchvision_layout(tmp_path):
    _fake_root(tmp_path / "FashionMNIST" / "raw", gz=True)
    ds = FashionMNIST(tmp_path, train=False, transform=lambda im: im.sum())
    img, label = ds[2]
    assert np.isclose(img, ds.data[2].sum() / 255.0, rtol=1e-5) and label == 2
    with pytest.raises(TypeError, match="transform must be callable"):
        FashionMNIST(tmp_path, transform=3)


def test_missing_files_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="MNIST: root is required"):
        MNIST()
    with pytest.raises(FileNotFoundError) as exc:
        MNIST(tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and str(tmp_path) in msg and all(f in msg for f in FILES)
    # with root=None the message names the Debian package
    import minicnn.data.mnist as mnist_mod

    missing = str(tmp_path / "not-installed")
    monkeypatch.setattr(mnist_mod, "DEBIAN_FASHION_MNIST", missing)
    monkeypatch.setattr(mnist_mod.FashionMNIST, "_default_root", missing)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as exc:
        FashionMNIST()
    assert "\n" not in str(exc.value) and "train-images-idx3-ubyte" in str(exc.value)


def test_labels_must_match_images(tmp_path):
    _fake_root(tmp_path)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(np.zeros(11, np.uint8), 8))
    with pytest.raises(IDXError, match=r"12 train images but labels of shape \(11,\)"):
        MNIST(tmp_path)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(np.full(12, 10, np.uint8), 8))
    with pytest.raises(IDXError, match="labels outside 0..9"):
        MNIST(tmp_path)


# -- the real files ------------------------------------------------------------------------------------

@needs_data
def test_debian_files_are_fashion_mnist():
    for stem, digest in SHA256.items():
        with gzip.open(os.path.join(DEBIAN_FASHION_MNIST, stem + ".gz"), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, stem
    train, test = FashionMNIST(), FashionMNIST(train=False)
    assert train.data.shape == (60000, 28, 28) and test.data.shape == (10000, 28, 28)
    assert train.data.dtype == np.uint8 and train.targets.shape == (60000,) and test.targets.shape == (10000,)
    assert np.bincount(train.targets, minlength=10).tolist() == [6000] * 10
    assert np.bincount(test.targets, minlength=10).tolist() == [1000] * 10
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot" and len(train.classes) == 10
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() == 1.0
    assert y == 9  # the first test image is an ankle boot
    assert train.data.min() == 0 and train.data.max() == 255


# -- the models ----------------------------------------------------------------------------------------

def test_fashion_models_shapes_and_names():
    m = fashion_convnet()
    assert m.num_parameters() == 83466 and m.num_parameters() < 100_000
    assert list(m.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias", "8.weight", "8.bias"]
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    assert m(x).shape == (2, 10)
    bn = fashion_convnet_bn()
    assert bn.num_parameters() == 83562 and bn(x).shape == (2, 10)
    assert mc.models.get_model("fashion_convnet_bn").batch_norm
    # the hidden layer of the BN row's recipe: linear 3136->256 without bias, batchnorm1d, relu, dropout, linear
    h = fashion_convnet_bn(hidden=256)
    assert h.num_parameters() == 3136 * 256 + 2 * 256 + 256 * 10 + 10 + 2 * (32 + 64) + 32 * 25 + 64 * 32 * 25 == 858090
    assert h(x).shape == (2, 10) and h.hidden == 256
    assert fashion_convnet(hidden=0).num_parameters() == 83466
    r = mc.models.get_model("fashion_resnet")
    assert r.num_parameters() == 174970 and r(x).shape == (2, 10)
    names = list(r.state_dict())
    assert names[:2] == ["conv1.weight", "bn1.weight"] and names[-2:] == ["fc.weight", "fc.bias"]
    assert "layer2.0.downsample.0.weight" in names and "layer1.1.conv2.weight" in names
    assert "layer1.0.downsample.0.weight" not in names  # stage 1 keeps width and resolution
    with pytest.raises(ValueError, match="FashionResNet: width must be a positive integer"):
        mc.models.fashion_resnet(width=0)
    with pytest.raises(ValueError, match="FashionConvNet: hidden must be an integer >= 0"):
        fashion_convnet(hidden=-3)
    with pytest.raises(TypeError, match="fashion_convnet: weights must be"):
        fashion_convnet(weights=3)
    with pytest.raises(ValueError, match="fashion_convnet: state dict: .*3.weight"):
        fashion_convnet(weights={k: v for k, v in m.state_dict().items() if k != "3.weight"})


# -- training ------------------------------------------------------------------------------------------

def _test_accuracy(out: str):
    m = re.search(r"test accuracy: (\d\.\d{4}) \((\d+)/10000\)", out)
    assert m, out
    return float(m.group(1)), int(m.group(2))


@needs_data
def test_brief_training_run_learns(tmp_path, capsys):
    # 4,000 training images, two epochs of batch 32 (250 Adam steps): 0.8172 on all 10,000 test images
    # with seed 0 (chance is 0.1), so 0.78 leaves room for the backends' rounding
    rc = cli.main(["train", "fashion-mnist", "--train-size", "4000", "--epochs", "2", "--batch-size", "32", "--no-progress",
                   "--out", str(tmp_path / "w.safetensors")])
    assert rc == 0
    out = capsys.readouterr().out
    acc, correct = _test_accuracy(out)
    assert acc >= 0.78, out
    model = fashion_convnet(weights=tmp_path / "w.safetensors")
    X, y = FashionMNIST(train=False).arrays()
    assert int((predict(model, X).argmax(1) == y).sum()) == correct
    assert (tmp_path / "w.ckpt.safetensors").is_file()


def test_resume_gives_the_uninterrupted_weights(tmp_path, monkeypatch, capsys):
    import minicnn.cli.train as train_cli

    _fake_root(tmp_path / "data", n_train=300, n_test=20)  # random images: this is about the bookkeeping
    args = ["train", "fashion-mnist", "--root", str(tmp_path / "data"), "--batch-size", "64", "--epochs", "2",
            "--no-progress", "--augment", "--dropout", "0.2", "--arch", "convnet_bn"]
    assert cli.main(args + ["--out", str(tmp_path / "a") + "/"]) == 0
    real = train_cli.save_checkpoint

    def stop_after_first(path, *a):
        real(path, *a)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "save_checkpoint", stop_after_first)
    assert cli.main(args + ["--out", str(tmp_path / "b") + "/"]) != 0
    assert not (tmp_path / "b" / "fashion_convnet_bn.safetensors").exists()
    monkeypatch.setattr(train_cli, "save_checkpoint", real)
    mc.manual_seed(1234)  # the checkpoint restores the generator, whatever happened in between
    assert cli.main(args + ["--out", str(tmp_path / "b") + "/", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "after epoch 1/2" in out
    a = mc.load(tmp_path / "a" / "fashion_convnet_bn.safetensors")
    b = mc.load(tmp_path / "b" / "fashion_convnet_bn.safetensors")
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # a checkpoint is refused by a run with other options, naming them
    ckpt = str(tmp_path / "b" / "fashion_convnet_bn.ckpt.safetensors")
    rc = cli.main(args[:-4] + ["--lr", "0.01", "--checkpoint", ckpt, "--out", str(tmp_path / "c") + "/", "--resume"])
    err = capsys.readouterr().err
    assert rc == 1 and "written by a run with other options" in err and "--lr" in err and "--arch" in err


def test_cli_refuses_fashion_options_for_digits_and_bad_values(tmp_path, capsys):
    assert cli.main(["train", "digits", "--arch", "convnet", "--out", str(tmp_path / "w.safetensors")]) == 1
    assert "--arch: only for fashion-mnist" in capsys.readouterr().err
    assert cli.main(["train", "fashion-mnist", "--dropout", "1.5", "--out", str(tmp_path / "w.safetensors")]) == 1
    assert "--dropout must lie in [0, 1)" in capsys.readouterr().err
    assert cli.main(["train", "digits", "--hidden", "8", "--out", str(tmp_path / "w.safetensors")]) == 1
    assert "--hidden: only for fashion-mnist" in capsys.readouterr().err
    assert cli.main(["train", "fashion-mnist", "--arch", "resnet", "--hidden", "8", "--out", str(tmp_path / "w.safetensors")]) == 1
    assert "--dropout and --hidden are for --arch convnet/convnet_bn" in capsys.readouterr().err
    assert cli.main(["train", "fashion-mnist", "--hidden", "-2", "--out", str(tmp_path / "w.safetensors")]) == 1
    assert "--hidden must be a width >= 0" in capsys.readouterr().err
    assert cli.main(["train", "fashion-mnist", "--weight-decay", "-1", "--out", str(tmp_path / "w.safetensors")]) == 1
    assert "--weight-decay must be a finite number >= 0" in capsys.readouterr().err
    assert cli.main(["train", "fashion-mnist", "--root", str(tmp_path), "--out", str(tmp_path / "w.safetensors")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "IDX files not found" in err
    assert cli.main(["train", "fashion-mnist", "--resume", "--root", str(tmp_path / "r"),
                     "--out", str(tmp_path / "w.safetensors")]) == 1


# -- the shipped weights ---------------------------------------------------------------------------------

def test_shipped_weights_are_packaged_and_documented():
    path = os.path.join(WEIGHTS_DIR, "fashion_convnet.safetensors")
    assert os.path.isfile(path)
    meta = load_metadata(path)
    assert meta["model"] == "fashion_convnet" and meta["test_correct"] == f"{SHIPPED_CORRECT}/10000"
    results = (REPO / "docs" / "results.md").read_text()
    assert f"{SHIPPED_CORRECT:,}/10,000" in results
    assert "package-data" in (REPO / "pyproject.toml").read_text() and "data/weights/*" in (REPO / "pyproject.toml").read_text()


@needs_data
def test_shipped_weights_score_what_results_page_states():
    model = fashion_convnet(weights="DEFAULT")
    X, y = FashionMNIST(train=False).arrays()
    correct = int((predict(model, X).argmax(1) == y).sum())
    assert correct == SHIPPED_CORRECT
