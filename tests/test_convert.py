"""The converter: the ResNet key/shape table, every source format and naming, the checks that
refuse wrong weights without leaving output, and the ``minicnn convert`` / ``weights seed`` CLI
(including a run where ``import torch`` fails)."""
import hashlib
import os
import struct
from collections import OrderedDict

import numpy as np
import pytest

from make_pth_fixtures import write_pth_zip, write_zip_archive
from minicnn.errors import WeightFormatError
from minicnn.io import safetensors as st
from minicnn.io import weights as W
from torch_block import blocked_env, run_minicnn, torch_importable

# Parameter counts (weights and biases, not running statistics) that torchvision reports for
# resnet18 / resnet34 with 1000 classes; an independent check of the shape table.
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672}
# len(torchvision.models.resnetXX().state_dict()) minus its num_batches_tracked entries
TORCHVISION_KEYS = {"resnet18": 122 - 20, "resnet34": 218 - 36}


def _random_torchvision_state(arch="resnet18", num_classes=1000, seed=0, with_nbt=True):
    """Random weights under torchvision's names, with torchvision's num_batches_tracked entries."""
    rng = np.random.default_rng(seed)
    sd = OrderedDict()
    for k, shape in W.expected_resnet_shapes(arch, num_classes).items():
        sd[k] = rng.standard_normal(shape, dtype=np.float32)
        if with_nbt and k.endswith("running_var"):
            sd[k[: -len("running_var")] + "num_batches_tracked"] = np.array(rng.integers(1, 10 ** 6), np.int64)
    return sd


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """A torchvision-named resnet18 checkpoint in the .pth zip format (written without torch)."""
    d = tmp_path_factory.mktemp("r18")
    sd = _random_torchvision_state("resnet18", seed=1)
    path = d / "resnet18-random.pth"
    write_pth_zip(sd, path)
    return path, sd


def _dir_listing(d):
    return sorted(p.name for p in d.iterdir())


# -- the shape table ----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_shape_table_matches_torchvision_counts(arch):
    shapes = W.expected_resnet_shapes(arch)
    assert len(shapes) == TORCHVISION_KEYS[arch]
    params = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var")))
    assert params == TORCHVISION_PARAMS[arch]
    assert list(shapes)[:6] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                                "layer1.0.conv1.weight"]
    assert list(shapes)[-2:] == ["fc.weight", "fc.bias"]
    assert shapes["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["layer4.0.conv1.weight"] == (512, 256, 3, 3)
    assert "layer1.0.downsample.0.weight" not in shapes
    assert W.expected_resnet_shapes(arch, 10)["fc.weight"] == (10, 512)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_shape_table_matches_the_model(arch):
    resnet = pytest.importorskip("minicnn.models.resnet")
    model = resnet.resnet18() if arch == "resnet18" else resnet.resnet34()
    got = OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items()
                      if not k.endswith("num_batches_tracked"))
    assert got == W.expected_resnet_shapes(arch)


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_shape_table_matches_plain_torch_resnet(arch):
    pytest.importorskip("torch")
    import torch_resnet

    sd = torch_resnet.build(arch).state_dict()
    got = OrderedDict((k, tuple(v.shape)) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert got == W.expected_resnet_shapes(arch)


def test_unknown_arch_and_bad_num_classes():
    with pytest.raises(ValueError, match="unknown architecture 'resnet99'; choose one of resnet18, resnet34"):
        W.expected_resnet_shapes("resnet99")
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        W.expected_resnet_shapes("resnet18", 0)


def test_infer_arch():
    assert W.infer_arch(W.expected_resnet_shapes("resnet18")) == "resnet18"
    assert W.infer_arch(W.expected_resnet_shapes("resnet34")) == "resnet34"
    with pytest.raises(WeightFormatError, match="bottleneck"):
        W.infer_arch({"layer1.0.conv3.weight": 0, "layer1.2.conv1.weight": 0})
    with pytest.raises(WeightFormatError, match=r"blocks per stage \(1, 0, 0, 0\)"):
        W.infer_arch({"layer1.0.conv1.weight": 0})


# -- converting -----------------------------------------------------------------------------------------

def test_convert_torchvision_pth_zip(r18, tmp_path):
    src, sd = r18
    dst = tmp_path / "out" / "resnet18.safetensors"
    meta = W.convert(src, dst)
    assert meta == {"format": "minicnn", "source": src.name, "source_format": "pth-zip",
                    "source_naming": "torchvision", "architecture": "resnet18", "num_classes": "1000",
                    "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    tensors, file_meta = st.load(dst)
    assert file_meta == meta
    want = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert list(tensors) == list(want) == list(W.expected_resnet_shapes("resnet18"))
    for k, v in want.items():
        assert tensors[k].dtype == np.float32
        np.testing.assert_array_equal(tensors[k], v, err_msg=k)
    # and converting our own output again is a no-op on the tensors
    again = W.convert(dst, tmp_path / "again.safetensors")
    assert again["source_naming"] == "minicnn" and again["source_format"] == "safetensors"
    assert st.load_file(tmp_path / "again.safetensors").keys() == tensors.keys()


def _hf_names(arch):
    """(torchvision name, Hugging Face name) pairs, written from transformers' ResNet module tree:
    ResNetForImageClassification.resnet.{embedder.embedder, encoder.stages[s].layers[b].{shortcut,
    layer[i]}}.{convolution, normalization} and classifier = Sequential(Flatten, Linear)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    pairs = [("conv1.weight", "resnet.embedder.embedder.convolution.weight")]
    pairs += [(f"bn1.{n}", f"resnet.embedder.embedder.normalization.{n}") for n in bn]
    for s, blocks in enumerate(W.ARCHS[arch]):
        for b in range(blocks):
            tv, hf = f"layer{s + 1}.{b}", f"resnet.encoder.stages.{s}.layers.{b}"
            if b == 0 and s > 0:
                pairs.append((f"{tv}.downsample.0.weight", f"{hf}.shortcut.convolution.weight"))
                pairs += [(f"{tv}.downsample.1.{n}", f"{hf}.shortcut.normalization.{n}") for n in bn]
            for i in range(2):
                pairs.append((f"{tv}.conv{i + 1}.weight", f"{hf}.layer.{i}.convolution.weight"))
                pairs += [(f"{tv}.bn{i + 1}.{n}", f"{hf}.layer.{i}.normalization.{n}") for n in bn]
    pairs += [("fc.weight", "classifier.1.weight"), ("fc.bias", "classifier.1.bias")]
    return pairs


def test_huggingface_names_spot_checks():
    renamed = W.huggingface_to_torchvision(OrderedDict((k, 0) for k in [
        "resnet.embedder.embedder.convolution.weight",
        "resnet.embedder.embedder.normalization.running_var",
        "resnet.encoder.stages.0.layers.1.layer.1.normalization.bias",
        "resnet.encoder.stages.1.layers.0.shortcut.convolution.weight",
        "resnet.encoder.stages.3.layers.0.shortcut.normalization.running_mean",
        "resnet.encoder.stages.2.layers.1.layer.0.convolution.weight",
        "classifier.1.weight", "classifier.1.bias", "something.else",
    ]))
    assert list(renamed) == [
        "conv1.weight", "bn1.running_var", "layer1.1.bn2.bias", "layer2.0.downsample.0.weight",
        "layer4.0.downsample.1.running_mean", "layer3.1.conv1.weight", "fc.weight", "fc.bias", "something.else"]


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_convert_huggingface_safetensors(tmp_path, arch):
    shapes = W.expected_resnet_shapes(arch)
    rng = np.random.default_rng(2)
    hf, want = OrderedDict(), OrderedDict()
    for tv, name in _hf_names(arch):
        if tv.endswith("num_batches_tracked"):
            hf[name] = np.array(0, np.int64)
            continue
        hf[name] = want[tv] = rng.standard_normal(shapes[tv], dtype=np.float32)
    src = tmp_path / "model.safetensors"
    safetensors_numpy = pytest.importorskip("safetensors.numpy")  # a test-only reference, not a dependency
    safetensors_numpy.save_file(dict(hf), str(src), metadata={"format": "pt"})  # as the HF hub stores it
    assert W.read_weights(src)[1]["naming"] == "huggingface"
    meta = W.convert(src, tmp_path / "out.safetensors")
    assert (meta["architecture"], meta["source_format"], meta["source_naming"]) == (arch, "safetensors",
                                                                                     "huggingface")
    got = st.load_file(tmp_path / "out.safetensors")
    assert list(got) == list(shapes)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_huggingface_pytorch_model_bin_and_backbone_only(tmp_path):
    shapes = W.expected_resnet_shapes("resnet18")
    rng = np.random.default_rng(3)
    hf = OrderedDict((name, rng.standard_normal(shapes[tv], dtype=np.float32))
                     for tv, name in _hf_names("resnet18") if not tv.endswith("num_batches_tracked"))
    write_pth_zip(hf, tmp_path / "pytorch_model.bin")
    sd = W.read_state_dict(tmp_path / "pytorch_model.bin")
    assert sorted(sd) == sorted(shapes)  # file order (HF registers the shortcut first); convert reorders
    np.testing.assert_array_equal(sd["layer3.0.downsample.1.running_var"],
                                  hf["resnet.encoder.stages.2.layers.0.shortcut.normalization.running_var"])
    # ResNetModel (no "resnet." prefix, no classifier): the backbone maps, fc is reported missing
    backbone = OrderedDict((k[len("resnet."):], v) for k, v in hf.items() if k.startswith("resnet."))
    st.save_file(backbone, tmp_path / "backbone.safetensors")
    with pytest.raises(WeightFormatError, match=r"keys do not match resnet18: 2 missing: fc\.weight, fc\.bias$"):
        W.convert(tmp_path / "backbone.safetensors", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_timm_style_safetensors_with_other_num_classes(tmp_path):
    sd = _random_torchvision_state("resnet34", num_classes=10, seed=4, with_nbt=False)
    st.save_file(sd, tmp_path / "timm.safetensors", {"format": "pt"})
    meta = W.convert(tmp_path / "timm.safetensors", tmp_path / "o.safetensors")
    assert (meta["architecture"], meta["num_classes"], meta["source_naming"]) == ("resnet34", "10", "torchvision")
    np.testing.assert_array_equal(st.load_file(tmp_path / "o.safetensors")["fc.weight"], sd["fc.weight"])


def test_float16_and_wrapped_sources_become_float32(tmp_path):
    sd = _random_torchvision_state("resnet18", seed=5)
    half = OrderedDict((f"module.{k}", v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in sd.items())
    st.save_file(half, tmp_path / "half.safetensors")
    W.convert(tmp_path / "half.safetensors", tmp_path / "o.safetensors")
    got = st.load_file(tmp_path / "o.safetensors")
    assert all(v.dtype == np.float32 for v in got.values())
    np.testing.assert_array_equal(got["layer1.0.conv1.weight"], sd["layer1.0.conv1.weight"].astype(np.float16))


# -- refusing -------------------------------------------------------------------------------------------

def _write_variant(tmp_path, name, mutate):
    sd = _random_torchvision_state("resnet18", seed=6, with_nbt=False)
    mutate(sd)
    path = tmp_path / name
    st.save_file(sd, path)
    return path


def test_wrong_keys_are_all_named_and_nothing_is_written(tmp_path):
    def mutate(sd):
        del sd["layer2.1.bn1.running_mean"]
        del sd["fc.bias"]
        sd["layer5.0.conv1.weight"] = np.zeros((1,), np.float32)
        sd["layer3.0.conv2.weight"] = np.zeros((256, 128, 3, 3), np.float32)

    src = _write_variant(tmp_path, "bad.safetensors", mutate)
    before = _dir_listing(tmp_path)
    with pytest.raises(WeightFormatError) as ei:
        W.convert(src, tmp_path / "out.safetensors", arch="resnet18")
    msg = str(ei.value)
    assert "2 missing: layer2.1.bn1.running_mean, fc.bias" in msg
    assert "1 unexpected: layer5.0.conv1.weight" in msg
    assert "1 mis-shaped: layer3.0.conv2.weight (file (256, 128, 3, 3) vs resnet18 (256, 256, 3, 3))" in msg
    assert "\n" not in msg
    assert _dir_listing(tmp_path) == before


def test_wrong_arch_is_refused(r18, tmp_path):
    src, _ = r18
    with pytest.raises(WeightFormatError, match=r"keys do not match resnet34: 80 missing: layer1\.2\.conv1\.weight, "):
        W.convert(src, tmp_path / "o.safetensors", arch="resnet34")
    assert _dir_listing(tmp_path) == []


def test_inconsistent_classifier_and_integer_weights(tmp_path):
    src = _write_variant(tmp_path, "fc.safetensors", lambda sd: sd.update({"fc.weight": np.zeros((10, 512), np.float32)}))
    with pytest.raises(WeightFormatError, match=r"fc\.bias \(file \(1000,\) vs resnet18 \(10,\)\)"):
        W.convert(src, tmp_path / "o.safetensors")
    src = _write_variant(tmp_path, "int.safetensors",
                         lambda sd: sd.update({"bn1.weight": np.ones(64, np.int64)}))
    with pytest.raises(WeightFormatError, match=r"1 not floating point: bn1\.weight \(int64\)"):
        W.convert(src, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_bottleneck_and_unknown_block_counts(tmp_path):
    src = _write_variant(tmp_path, "r50.safetensors", lambda sd: sd.update({"layer1.0.conv3.weight": np.zeros(1)}))
    with pytest.raises(WeightFormatError, match="bottleneck blocks"):
        W.convert(src, tmp_path / "o.safetensors")
    src = _write_variant(tmp_path, "odd.safetensors", lambda sd: sd.update({"layer4.7.conv1.weight": np.zeros(1)}))
    with pytest.raises(WeightFormatError, match=r"cannot infer the architecture: blocks per stage \(2, 2, 2, 8\)"):
        W.convert(src, tmp_path / "o.safetensors")


def test_same_file_and_missing_source(r18, tmp_path):
    src, _ = r18
    with pytest.raises(ValueError, match="would overwrite the input"):
        W.convert(src, src)
    with pytest.raises(FileNotFoundError, match="no such file"):
        W.convert(tmp_path / "nope.pth", tmp_path / "o.safetensors")


def test_detect_format(tmp_path, r18):
    src, _ = r18
    assert W.detect_format(src) == "pth-zip"
    (tmp_path / "a.safetensors").write_bytes(st.save_bytes({"x": np.zeros(1)}))
    assert W.detect_format(tmp_path / "a.safetensors") == "safetensors"
    (tmp_path / "e.pth").write_bytes(b"")
    with pytest.raises(WeightFormatError, match="file is empty"):
        W.detect_format(tmp_path / "e.pth")
    (tmp_path / "r.bin").write_bytes(b"hello world, not weights")
    with pytest.raises(WeightFormatError, match="not a PyTorch checkpoint"):
        W.detect_format(tmp_path / "r.bin")
    (tmp_path / "r.npy").write_bytes(b"hello world, not weights")
    with pytest.raises(WeightFormatError, match="unrecognised weight format"):
        W.detect_format(tmp_path / "r.npy")


def test_weights_home(monkeypatch, tmp_path):
    monkeypatch.setenv("MINICNN_HOME", str(tmp_path / "mh"))
    assert W.weights_home() == tmp_path / "mh"
    monkeypatch.delenv("MINICNN_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert W.weights_home() == tmp_path / "xdg" / "minicnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert W.weights_home() == tmp_path / "home" / ".cache" / "minicnn"


# -- live: checkpoints written by PyTorch ---------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("arch,zip_format", [("resnet18", False), ("resnet34", True)])
def test_live_torch_resnet_checkpoint(tmp_path, arch, zip_format):
    torch = pytest.importorskip("torch")
    import torch_resnet

    torch.manual_seed(0)
    model = torch_resnet.randomize_bn_stats(torch_resnet.build(arch), seed=1)
    src = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), src, _use_new_zipfile_serialization=zip_format)
    meta = W.convert(src, tmp_path / "o.safetensors")
    assert meta["architecture"] == arch
    assert meta["source_format"] == ("pth-zip" if zip_format else "pth-legacy")
    got = st.load_file(tmp_path / "o.safetensors")
    ref = OrderedDict((k, v.numpy()) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert list(got) == list(ref)
    for k, v in ref.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


@pytest.mark.torch
def test_live_half_precision_checkpoint_in_a_wrapper(tmp_path):
    torch = pytest.importorskip("torch")
    import torch_resnet

    model = torch_resnet.build("resnet18", num_classes=7).half()
    torch.save({"model": model.state_dict(), "epoch": 90}, tmp_path / "ckpt.pth")
    W.convert(tmp_path / "ckpt.pth", tmp_path / "o.safetensors")
    got = st.load_file(tmp_path / "o.safetensors")
    np.testing.assert_array_equal(got["fc.weight"], model.fc.weight.detach().float().numpy())
    assert got["fc.weight"].shape == (7, 512)


# -- command line ---------------------------------------------------------------------------------------

def test_cli_convert_without_torch(r18, tmp_path):
    env = blocked_env(tmp_path)
    assert not torch_importable(env)  # the block works, so success below proves torch is not needed
    src, sd = r18
    dst = tmp_path / "resnet18.safetensors"
    r = run_minicnn(["convert", src, dst], env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {dst}: resnet18 (1000 classes) from {src.name} [pth-zip, torchvision names]")
    got = st.load_file(dst)
    np.testing.assert_array_equal(got["layer4.1.bn2.running_var"], sd["layer4.1.bn2.running_var"])
    assert "num_batches_tracked" not in " ".join(got)


def _hostile_pth(path):
    payload = b"\x80\x02cos\nsystem\n(X\x04\x00\x00\x00truetR."
    write_zip_archive(path, payload, {})


def _lying_safetensors(path):
    blob = bytearray(st.save_bytes({"a": np.zeros(4, np.float32), "b": np.zeros(2, np.float32)}))
    (n,) = struct.unpack("<Q", blob[:8])
    header = bytes(blob[8:8 + n]).replace(b'"data_offsets":[16,24]', b'"data_offsets":[ 8,16]')  # same length
    assert len(header) == n
    path.write_bytes(bytes(blob[:8]) + header + bytes(blob[8 + n:]))


BAD_INPUTS = {
    "empty.pth": (lambda p, src: p.write_bytes(b""), "file is empty"),
    "truncated.pth": (lambda p, src: p.write_bytes(src.read_bytes()[: src.stat().st_size // 2]), "corrupt zip"),
    "random.pth": (lambda p, src: p.write_bytes(np.random.default_rng(0).bytes(1000).replace(b"PK", b"")[1:]),
                   "not a PyTorch checkpoint"),
    "hostile.pth": (lambda p, src: _hostile_pth(p), "refusing to load global 'os.system'"),
    "lying.safetensors": (lambda p, src: _lying_safetensors(p), "overlap"),
    "wrongkeys.safetensors": (lambda p, src: st.save_file({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, p),
                              "cannot infer the architecture"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_cli_bad_input_is_one_line_exit_1_no_output(r18, tmp_path, name):
    make, needle = BAD_INPUTS[name]
    bad = tmp_path / name
    make(bad, r18[0])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = run_minicnn(["convert", bad, out_dir / "x.safetensors"])
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minicnn convert: error: "), r.stderr
    assert needle in lines[0]
    assert _dir_listing(out_dir) == []


def test_cli_refuses_other_output_suffix(r18, tmp_path):
    r = run_minicnn(["convert", r18[0], tmp_path / "x.pth"])
    assert r.returncode == 1 and "must be a .safetensors file" in r.stderr
    assert _dir_listing(tmp_path) == []


def test_cli_weights_seed(tmp_path):
    resnet = pytest.importorskip("minicnn.models.resnet")
    out = tmp_path / "seeded.safetensors"
    r = run_minicnn(["weights", "seed", "resnet18", out, "--seed", "3"])
    assert r.returncode == 0, r.stderr
    tensors, meta = st.load(out)
    assert meta["architecture"] == "resnet18" and meta["seed"] == "3" and meta["format"] == "minicnn"
    want = OrderedDict((k, v) for k, v in resnet.seeded_state_dict("resnet18", 3).items()
                       if not k.endswith("num_batches_tracked"))
    assert list(tensors) == list(want)
    for k, v in want.items():
        np.testing.assert_array_equal(tensors[k], v, err_msg=k)
    # deterministic: a second run writes identical bytes
    r = run_minicnn(["weights", "seed", "resnet18", tmp_path / "again.safetensors", "--seed", "3"])
    assert r.returncode == 0 and (tmp_path / "again.safetensors").read_bytes() == out.read_bytes()
    r = run_minicnn(["weights", "seed", "resnet18", tmp_path / "x.bin"])
    assert r.returncode == 1 and "must be a .safetensors file" in r.stderr
    assert not os.path.exists(tmp_path / "x.bin")
