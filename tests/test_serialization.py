"""``minicnn.save`` / ``minicnn.load``: exact round trips of models and dicts, metadata, and errors."""
from collections import OrderedDict

import numpy as np
import pytest

import minicnn as mc
from make_pth_fixtures import FIXTURES
from minicnn import nn
from minicnn.errors import WeightFormatError
from minicnn.serialization import load_metadata


def _model():
    mc.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 3))


def _perturb(model, seed):
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data = rng.standard_normal(p.data.shape).astype(p.data.dtype)
    return model


def test_model_round_trip_is_exact(tmp_path):
    model = _model()
    model.train()
    model(np.random.default_rng(0).standard_normal((6, 2, 5, 5)).astype(np.float32))  # move BN statistics
    path = tmp_path / "sub" / "model.safetensors"
    mc.save(model, path)
    sd = model.state_dict()
    got = mc.load(path)
    assert list(got) == list(sd)
    for k in sd:
        assert got[k].dtype == sd[k].dtype and got[k].shape == sd[k].shape, k
        np.testing.assert_array_equal(got[k], sd[k], err_msg=k)
    assert got["1.num_batches_tracked"].shape == () and int(got["1.num_batches_tracked"]) == 1

    other = _perturb(_model(), 9)
    other.load_state_dict(got)
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 5)).astype(np.float32)
    model.eval(), other.eval()
    np.testing.assert_array_equal(other(x), model(x))


def test_float64_model_round_trip(tmp_path):
    model = _perturb(_model().to(np.float64), 4)
    mc.save(model, tmp_path / "m.safetensors")
    got = mc.load(tmp_path / "m.safetensors")
    assert got["0.weight"].dtype == np.float64
    np.testing.assert_array_equal(got["4.weight"], model.state_dict()["4.weight"])


def test_dict_round_trip_every_dtype(tmp_path):
    rng = np.random.default_rng(2)
    d = OrderedDict(
        f64=rng.standard_normal(3), f32=rng.standard_normal((2, 2)).astype(np.float32),
        f16=rng.standard_normal(4).astype(np.float16), i64=np.array([-(2 ** 63), 2 ** 63 - 1]),
        i32=np.array([1, -2], np.int32), i16=np.array([3], np.int16), i8=np.array([-8], np.int8),
        u8=np.array([255], np.uint8), b=np.array([True, False]), zero_d=np.array(1.5), empty=np.zeros((0, 2, 3)),
    )
    mc.save(d, tmp_path / "d.safetensors")
    got = mc.load(tmp_path / "d.safetensors")
    assert list(got) == list(d)
    for k in d:
        assert got[k].dtype == d[k].dtype and got[k].shape == d[k].shape, k
        np.testing.assert_array_equal(got[k], d[k])


def test_metadata_and_interop(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "m.safetensors"
    mc.save({"w": np.arange(4, dtype=np.float32)}, path, metadata={"epoch": "3", "format": "custom"})
    meta = load_metadata(path)
    assert meta["epoch"] == "3" and meta["format"] == "custom" and meta["minicnn_version"] == mc.__version__
    mc.save({"w": np.arange(4, dtype=np.float32)}, path)  # overwrite in place
    assert load_metadata(path)["format"] == "minicnn"
    np.testing.assert_array_equal(st_numpy.load_file(str(path))["w"], np.arange(4, dtype=np.float32))


def test_load_reads_pth_checkpoints_without_torch():
    got = mc.load(FIXTURES / "wrapped_zip.pth")
    want = np.load(FIXTURES / "expected.npz")
    assert list(got) == [k.split("/", 1)[1] for k in want.files if k.startswith("wrapped/")]
    np.testing.assert_array_equal(got["1.running_var"], want["wrapped/1.running_var"])


@pytest.mark.torch
def test_torch_reads_what_we_save(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    model = _perturb(_model(), 5)
    mc.save(model, tmp_path / "m.safetensors")
    ref = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3))
    ref.load_state_dict(load_file(str(tmp_path / "m.safetensors")), strict=True)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(ref.state_dict()[k].numpy(), v, err_msg=k)


def test_bad_input(tmp_path):
    with pytest.raises(TypeError, match="save\\(\\) takes a Module.*got list"):
        mc.save([np.zeros(1)], tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="metadata must be a dict"):
        mc.save({"a": np.zeros(1)}, tmp_path / "x.safetensors", metadata=["a"])
    with pytest.raises(TypeError, match="metadata must map str -> str; entry 'epoch': int 3"):
        mc.save({"a": np.zeros(1)}, tmp_path / "x.safetensors", metadata={"epoch": 3})
    with pytest.raises(TypeError, match="tensor 'o': dtype object"):
        mc.save({"o": np.array([None])}, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(WeightFormatError, match="junk.safetensors: header is not valid JSON"):
        mc.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        mc.load(tmp_path / "missing.safetensors")
