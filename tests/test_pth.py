"""The torch-free .pth reader: committed fixtures written by PyTorch (read here without torch),
live checks against freshly saved checkpoints, hostile pickles that must never run, and damaged files."""
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from make_pth_fixtures import FIXTURES, state_dict_pickle, write_pth_zip, write_zip_archive
from minicnn.errors import WeightFormatError
from minicnn.io import pth

EXPECTED = np.load(FIXTURES / "expected.npz")


def _expected(prefix):
    return {k.split("/", 1)[1]: EXPECTED[k] for k in EXPECTED.files if k.startswith(prefix + "/")}


def _assert_state_equal(got, want):
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, (k, got[k].dtype, want[k].dtype)
        assert got[k].shape == want[k].shape, (k, got[k].shape, want[k].shape)
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# -- committed fixtures, no torch needed --------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny_zip", "tiny_legacy"])
def test_fixture_every_dtype_and_view(name):
    path = FIXTURES / f"{name}.pth"
    assert pth.detect(path) == ("pth-zip" if name.endswith("zip") else "pth-legacy")
    got = pth.load_pth(path)
    _assert_state_equal(got, _expected("tiny"))
    # spot values fixed by the fixture script, independent of the .npz
    np.testing.assert_array_equal(got["shared.slice"], [3, 4, 5, 6])
    np.testing.assert_array_equal(got["expanded"], np.tile(np.arange(3.0, dtype=np.float32), (4, 1)))
    np.testing.assert_array_equal(got["long"], [0, -1, 2 ** 40, -(2 ** 62)])
    assert got["scalar"].shape == () and got["scalar"] == 42
    assert got["half"].dtype == np.float16 and got["bool"].dtype == np.bool_
    assert all(v.flags.c_contiguous and v.flags.writeable for v in got.values())
    # tensors that shared a storage in torch come back as independent arrays
    assert not np.shares_memory(got["shared.full"], got["shared.slice"])
    got["shared.full"][:] = -1
    np.testing.assert_array_equal(got["shared.slice"], [3, 4, 5, 6])


def test_fixture_bf16_bits():
    got = pth.load_pth(FIXTURES / "tiny_zip.pth")["bf16"]
    # torch rounds 1e30 to the nearest bfloat16, bits 0x714a (1.00026e30)
    assert got.view(np.uint32)[3] == 0x714A << 16
    np.testing.assert_array_equal(got[:3], [1.0, -2.5, 3.140625])


@pytest.mark.parametrize("name", ["wrapped_zip", "wrapped_legacy"])
def test_fixture_wrapped_data_parallel_checkpoint(name):
    raw = pth.read_pth(FIXTURES / f"{name}.pth")
    assert raw["epoch"] == 7 and raw["best_acc"] == 0.5
    assert all(k.startswith("module.") for k in raw["state_dict"])
    sd = pth.load_pth(FIXTURES / f"{name}.pth")
    _assert_state_equal(sd, _expected("wrapped"))
    assert list(sd)[:2] == ["0.weight", "0.bias"] and sd["1.num_batches_tracked"] == 1


def test_extract_state_dict_wrappers():
    a = np.zeros(2, np.float32)
    assert list(pth.extract_state_dict({"model": {"module.x": a}})) == ["x"]
    assert list(pth.extract_state_dict({"model": {"state_dict": {"y": a}}, "epoch": 1})) == ["y"]
    assert list(pth.extract_state_dict({"module.x": a, "y": a})) == ["module.x", "y"]  # prefix not on all keys
    with pytest.raises(WeightFormatError, match="entry 'epoch' is a int"):
        pth.extract_state_dict({"epoch": 3, "w": a})
    with pytest.raises(WeightFormatError, match="holds a list"):
        pth.extract_state_dict([a])


def test_torch_free_writer_round_trips():
    rng = np.random.default_rng(0)
    sd = {"w": rng.standard_normal((3, 4)).astype(np.float32), "n": np.array(5, np.int64),
          "h": rng.standard_normal(2).astype(np.float16), "big": np.array([2 ** 50, -3])}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        write_pth_zip(sd, Path(d) / "x.pth")
        _assert_state_equal(pth.load_pth(Path(d) / "x.pth"), sd)


# -- hostile pickles ----------------------------------------------------------------------------------

def _reduce_pickle(module, name, args_pickle: bytes) -> bytes:
    """Protocol-2 pickle calling module.name(*args) via GLOBAL + REDUCE."""
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" + args_pickle + b"R."


def _str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _payloads(canary: Path):
    c = str(canary)
    code = f"open({c!r}, 'w').write('pwned')"
    return {
        "os.system": _reduce_pickle("os", "system", b"(" + _str(f"touch '{c}'") + b"t"),
        "posix.system": _reduce_pickle("posix", "system", b"(" + _str(f"touch '{c}'") + b"t"),
        "builtins.eval": _reduce_pickle("builtins", "eval", b"(" + _str(code) + b"t"),
        "builtins.exec": _reduce_pickle("builtins", "exec", b"(" + _str(code) + b"t"),
        "subprocess.Popen": _reduce_pickle("subprocess", "Popen", b"((" + _str("touch") + _str(c) + b"lt"),
        # protocol 4 reaches globals through STACK_GLOBAL; the same door must stay shut
        "os.system (STACK_GLOBAL)": b"\x80\x04" + b"\x8c\x02os\x94\x8c\x06system\x94\x93" + b"(" + _str(
            f"touch '{c}'") + b"tR.",
        # a legal-looking tensor whose storage key is computed by eval
        "nested eval": (b"\x80\x02ccollections\nOrderedDict\n)R(" + _str("w") + b"ctorch._utils\n_rebuild_tensor_v2\n("
                        + b"(" + _str("storage") + b"ctorch\nFloatStorage\n"
                        + _reduce_pickle("builtins", "eval", b"(" + _str(f"[{code}, '0'][1]") + b"t")[2:-1]
                        + _str("cpu") + b"K\x01tQK\x00))\x89}tRu."),
        "getattr chain": _reduce_pickle("builtins", "getattr", b"(" + _reduce_pickle(
            "builtins", "__import__", b"(" + _str("os") + b"t")[2:-1] + _str("system") + b"t"),
    }


def _control_pickle_is_live(tmp_path):
    # the payload really would run with the default unpickler: the tests below can fail
    canary = tmp_path / "control"
    pickle.loads(_payloads(canary)["builtins.eval"])
    assert canary.read_text() == "pwned"


@pytest.mark.parametrize("kind", sorted(_payloads(Path("x"))))
@pytest.mark.parametrize("container", ["zip", "legacy", "legacy-sysinfo"])
def test_hostile_pickle_never_runs(tmp_path, kind, container):
    _control_pickle_is_live(tmp_path)
    canary = tmp_path / "canary"
    payload = _payloads(canary)[kind]
    path = tmp_path / "evil.pth"
    if container == "zip":
        write_zip_archive(path, payload, {"0": bytes(4)})
    elif container == "legacy":
        path.write_bytes(pickle.dumps(pth.MAGIC_NUMBER, 2) + pickle.dumps(1001, 2)
                         + pickle.dumps({"little_endian": True}, 2) + payload + pickle.dumps([], 2))
    else:  # hostile code where the system-info record belongs
        path.write_bytes(pickle.dumps(pth.MAGIC_NUMBER, 2) + pickle.dumps(1001, 2) + payload)
    with pytest.raises(WeightFormatError, match=r"refusing to load global '(os|posix|builtins|subprocess)\.") as ei:
        pth.read_pth(path)
    assert "\n" not in str(ei.value)
    assert not canary.exists()


def test_refusal_names_the_global(tmp_path):
    path = tmp_path / "evil.pth"
    write_zip_archive(path, _reduce_pickle("subprocess", "Popen", b"((" + _str("true") + b"lt"), {})
    with pytest.raises(WeightFormatError, match=r"evil\.pth: refusing to load global 'subprocess\.Popen'"):
        pth.load_pth(path)


def test_build_cannot_modify_the_stand_ins(tmp_path):
    # BUILD with slot state would setattr on the object: on a plain function that could replace
    # its __defaults__ for every later load in this process
    defaults = pth._rebuild_tensor_v2.__defaults__
    payload = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}" + _str("__defaults__") + b")s\x86b.")
    path = tmp_path / "b.pth"
    write_zip_archive(path, payload, {})
    with pytest.raises(WeightFormatError, match=r"b\.pth: pickle tried to modify _rebuild_tensor_v2"):
        pth.read_pth(path)
    assert pth._rebuild_tensor_v2.__defaults__ == defaults
    payload = b"\x80\x02ctorch\nFloatStorage\nN}" + _str("dtype") + b"N" + b"s\x86b."
    write_zip_archive(path, payload, {})
    with pytest.raises(WeightFormatError, match="pickle tried to modify a storage type"):
        pth.read_pth(path)


def test_non_tensor_objects_are_refused_by_name(tmp_path):
    # e.g. argparse.Namespace saved beside the weights: harmless, but not ours to construct
    path = tmp_path / "ns.pth"
    write_zip_archive(path, _reduce_pickle("argparse", "Namespace", b")"), {})
    with pytest.raises(WeightFormatError, match="'argparse.Namespace'"):
        pth.read_pth(path)


# -- damaged files ------------------------------------------------------------------------------------

def _tiny_zip_with(tmp_path, entries, records, name="x.pth"):
    path = tmp_path / name
    write_zip_archive(path, state_dict_pickle(entries), records)
    return path


def test_view_outside_storage_is_refused(tmp_path):
    p = _tiny_zip_with(tmp_path, [("w", "FloatStorage", "0", 4, 2, (2, 2), (2, 1))], {"0": bytes(16)})
    with pytest.raises(WeightFormatError, match=r"tensor 'w': size \(2, 2\) with stride \(2, 1\) from offset 2 "
                                                r"reaches element 5, past the end of its storage of 4 elements"):
        pth.load_pth(p)


def test_huge_expanded_view_is_refused(tmp_path):
    p = _tiny_zip_with(tmp_path, [("w", "FloatStorage", "0", 1, 0, (1 << 20, 1 << 20), (0, 0))], {"0": bytes(4)})
    with pytest.raises(WeightFormatError, match="claims 1099511627776 elements over a storage of 1"):
        pth.load_pth(p)


def test_missing_and_short_storage_records(tmp_path):
    p = _tiny_zip_with(tmp_path, [("w", "FloatStorage", "0", 4, 0, (4,), (1,))], {})
    with pytest.raises(WeightFormatError, match="storage '0' has no record 'archive/data/0'"):
        pth.load_pth(p)
    p = _tiny_zip_with(tmp_path, [("w", "FloatStorage", "0", 4, 0, (4,), (1,))], {"0": bytes(10)}, "y.pth")
    with pytest.raises(WeightFormatError, match="holds 10 bytes, 4 elements of float32 need 16"):
        pth.load_pth(p)


def test_zip_without_data_pkl_and_torchscript(tmp_path):
    p = tmp_path / "a.pth"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("something.txt", "hi")
    with pytest.raises(WeightFormatError, match="no <name>/data.pkl: not a PyTorch checkpoint"):
        pth.read_pth(p)
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("m/constants.pkl", "x")
        z.writestr("m/code/__torch__.py", "x")
    with pytest.raises(WeightFormatError, match="TorchScript archive"):
        pth.read_pth(p)


def test_legacy_count_mismatch_and_bad_magic(tmp_path):
    raw = (FIXTURES / "wrapped_legacy.pth").read_bytes()
    bad = bytearray(raw)
    bad[4] ^= 0xFF  # inside the magic number
    (tmp_path / "m.pth").write_bytes(bytes(bad))
    with pytest.raises(WeightFormatError):
        pth.read_pth(tmp_path / "m.pth")
    head = pickle.dumps(pth.MAGIC_NUMBER, 2) + pickle.dumps(1001, 2) + pickle.dumps({"little_endian": True}, 2)
    body = state_dict_pickle([("w", "FloatStorage", "k", 2, 0, (2,), (1,))], legacy=True)
    (tmp_path / "c.pth").write_bytes(head + body + pickle.dumps(["k"], 2) + struct.pack("<q", 3) + bytes(12))
    with pytest.raises(WeightFormatError, match="storage 'k' has 3 elements on disk, the pickle says 2"):
        pth.read_pth(tmp_path / "c.pth")
    (tmp_path / "d.pth").write_bytes(head + body + pickle.dumps([], 2))
    with pytest.raises(WeightFormatError, match="storages 'k' are used but not stored"):
        pth.read_pth(tmp_path / "d.pth")
    (tmp_path / "e.pth").write_bytes(pickle.dumps(12345, 2))
    with pytest.raises(WeightFormatError, match="bad magic number"):
        pth.read_pth(tmp_path / "e.pth")


@pytest.mark.parametrize("name", ["tiny_zip", "tiny_legacy", "wrapped_legacy"])
def test_every_truncation_is_a_clean_error(tmp_path, name):
    raw = (FIXTURES / f"{name}.pth").read_bytes()
    path = tmp_path / "t.pth"
    for cut in list(range(0, len(raw), 37)) + [len(raw) - 1]:
        path.write_bytes(raw[:cut])
        with pytest.raises(WeightFormatError) as ei:
            pth.load_pth(path)
        assert "\n" not in str(ei.value), cut


def test_random_bytes_and_empty(tmp_path):
    p = tmp_path / "r.pth"
    p.write_bytes(b"")
    with pytest.raises(WeightFormatError, match="file is empty"):
        pth.read_pth(p)
    p.write_bytes(np.random.default_rng(0).bytes(4096).replace(b"PK", b"pk").lstrip(b"\x80"))
    with pytest.raises(WeightFormatError, match="not a PyTorch checkpoint"):
        pth.read_pth(p)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["tiny_zip.pth", "tiny_legacy.pth"]), pos=st.integers(0, 1 << 16),
       value=st.integers(0, 255))
def test_mutated_checkpoints_load_or_fail_cleanly(tmp_path, which, pos, value):
    raw = bytearray((FIXTURES / which).read_bytes())
    raw[pos % len(raw)] = value
    path = tmp_path / "m.pth"
    path.write_bytes(bytes(raw))
    try:
        pth.read_pth(path)
    except WeightFormatError as e:
        assert "\n" not in str(e)


# -- live: fresh checkpoints written by PyTorch -----------------------------------------------------

def _torch_views(torch, g):
    base = torch.randn(6, 5, generator=g)
    return {
        "contig": torch.randn(3, 4, 2, generator=g),
        "t": base.t(),
        "slice": base[2:5, 1:],
        "step": base[::3, ::2],
        "permuted": torch.randn(2, 3, 4, generator=g).permute(2, 0, 1),
        "expand": torch.randn(3, 1, generator=g).expand(3, 4),
        "shared_a": base,  # same storage as t/slice/step
        "f64": torch.randn(4, generator=g, dtype=torch.float64),
        "f16": torch.randn(4, generator=g).half()[1:],
        "bf16": torch.randn(5, generator=g).bfloat16(),
        "i64": torch.randint(-(2 ** 62), 2 ** 62, (3,), generator=g),
        "i32": torch.randint(-(2 ** 31), 2 ** 31 - 1, (3,), generator=g, dtype=torch.int32),
        "i16": torch.randint(-100, 100, (3,), generator=g, dtype=torch.int16),
        "i8": torch.randint(-100, 100, (3,), generator=g, dtype=torch.int8),
        "u8": torch.randint(0, 255, (3,), generator=g, dtype=torch.uint8),
        "b": torch.rand(4, generator=g) > 0.5,
        "u16": torch.tensor([0, 1, 65535], dtype=torch.uint16),
        "u32": torch.tensor([0, 2 ** 32 - 1], dtype=torch.uint32),
        "zero_d": torch.tensor(3.5),
        "empty": torch.zeros(2, 0),
    }


def _np(torch, t):
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


@pytest.mark.torch
@pytest.mark.parametrize("zip_format", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_live_random_checkpoints_match_torch(tmp_path, zip_format, seed):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(seed)
    sd = _torch_views(torch, g)
    path = tmp_path / "live.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    got = pth.load_pth(path)
    _assert_state_equal(got, {k: _np(torch, v) for k, v in sd.items()})


@pytest.mark.torch
@pytest.mark.parametrize("zip_format", [True, False])
def test_live_module_checkpoint_with_optimizer(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 4 * 4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 4}, path,
               _use_new_zipfile_serialization=zip_format)
    got = pth.load_pth(path)
    _assert_state_equal(got, {k: v.numpy() for k, v in model.state_dict().items()})
    raw = pth.read_pth(path)
    momentum = raw["optimizer"]["state"][0]["momentum_buffer"]
    np.testing.assert_array_equal(momentum, opt.state_dict()["state"][0]["momentum_buffer"].numpy())
    assert raw["optimizer"]["param_groups"][0]["lr"] == 0.1


@pytest.mark.torch
def test_live_parameters_are_read_as_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.randn(3, 2))
    torch.save({"p": p, "q": torch.nn.Parameter(torch.ones(2), requires_grad=False)}, tmp_path / "p.pth")
    got = pth.load_pth(tmp_path / "p.pth")
    np.testing.assert_array_equal(got["p"], p.detach().numpy())
    np.testing.assert_array_equal(got["q"], np.ones(2, np.float32))


@pytest.mark.torch
def test_live_torch_reads_our_torch_free_writer(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    sd = {"a": rng.standard_normal((2, 3, 4)).astype(np.float32), "b": np.arange(5), "s": np.array(2, np.int64),
          "h": rng.standard_normal(3).astype(np.float16), "bo": np.array([True, False]), "e": np.zeros((0, 2))}
    write_pth_zip(sd, tmp_path / "w.pth")
    back = torch.load(tmp_path / "w.pth", weights_only=True)
    for k, v in sd.items():
        assert back[k].numpy().dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k].numpy(), v)


@pytest.mark.torch
def test_live_torch_refuses_what_we_refuse(tmp_path):
    """Our refusal matches torch's own weights_only unpickler on the os.system payload."""
    torch = pytest.importorskip("torch")
    canary = tmp_path / "canary"
    path = tmp_path / "evil.pth"
    write_zip_archive(path, _payloads(canary)["os.system"], {})
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    assert not canary.exists()
    assert os.path.getsize(path) > 0
