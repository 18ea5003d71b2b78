"""Module / Parameter / Sequential bookkeeping, state dicts, summary() and backend selection."""
import io
import os
import re
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import minicnn as mc
from minicnn import backends, nn

ROOT = Path(__file__).resolve().parent.parent


def small_net():
    """conv, bn, relu, pool, flatten, linear on (N, 1, 4, 4): 99 parameters."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16, 3),
    )


class Block(nn.Module):
    """A hand-written module: a child defined before the block's own parameter and buffer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.scale = nn.Parameter(np.ones(2, np.float32))
        self.register_buffer("offset", np.zeros(2, np.float32))
        self.register_buffer("scratch", np.zeros(2, np.float32), persistent=False)
        self.bn = nn.BatchNorm2d(2)


# -- names and order ---------------------------------------------------------------------------

def test_state_dict_names_and_order_sequential():
    sd = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict()
    assert list(sd) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                        "1.num_batches_tracked"]
    assert sd["0.weight"].shape == (4, 3, 3, 3) and sd["1.running_var"].shape == (4,)
    assert sd["1.num_batches_tracked"].dtype == np.int64 and sd["1.num_batches_tracked"].shape == ()


def test_state_dict_order_is_pytorchs_for_custom_modules():
    """Own parameters, then own persistent buffers, then children in definition order."""
    sd = Block().state_dict()
    assert list(sd) == ["scale", "offset", "conv.weight", "bn.weight", "bn.bias", "bn.running_mean",
                        "bn.running_var", "bn.num_batches_tracked"]
    nested = nn.Sequential(nn.Sequential(nn.Conv2d(1, 1, 1)), Block())
    assert list(nested.state_dict())[:3] == ["0.0.weight", "0.0.bias", "1.scale"]


@pytest.mark.torch
def test_state_dict_names_equal_torchs():
    torch = pytest.importorskip("torch")

    class TBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 2, 1, bias=False)
            self.scale = torch.nn.Parameter(torch.ones(2))
            self.register_buffer("offset", torch.zeros(2))
            self.register_buffer("scratch", torch.zeros(2), persistent=False)
            self.bn = torch.nn.BatchNorm2d(2)

    tnet = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 3), TBlock())
    net = small_net().append(Block())
    assert list(net.state_dict()) == list(tnet.state_dict())
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in tnet.named_parameters()]
    for k, v in tnet.state_dict().items():
        assert net.state_dict()[k].shape == tuple(v.shape), k


def test_parameters_order_and_sharing():
    net = small_net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "5.weight", "5.bias"]
    assert [id(p) for p in net.parameters()] == [id(p) for _, p in net.named_parameters()]
    shared = nn.Linear(2, 2)
    twice = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(twice.parameters())) == 2  # a shared layer's parameters are listed once
    assert net.num_parameters() == 4 * 9 + 4 + 8 + 16 * 3 + 3


def test_state_dict_returns_copies():
    net = small_net()
    sd = net.state_dict()
    sd["0.weight"][...] = 7
    assert not np.any(net[0].weight.data == 7)


# -- load_state_dict -----------------------------------------------------------------------------

def test_load_state_dict_roundtrip_and_cast():
    a, b = small_net(), small_net()
    a(np.random.default_rng(0).standard_normal((2, 1, 4, 4)))  # move running stats off their defaults
    sd = {k: v.astype(np.float64) for k, v in a.state_dict().items()}
    assert b.load_state_dict(sd) == ([], [])
    for k, v in b.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(v, a.state_dict()[k].astype(np.float32), err_msg=k)
            assert v.dtype == np.float32, k  # values take the slot's dtype
    sd["0.weight"][...] = 3  # loading copies: later edits to the source do not leak in
    assert not np.any(b[0].weight.data == 3)


def test_load_state_dict_strict_lists_every_problem_and_changes_nothing():
    net = small_net()
    before = net.state_dict()
    sd = small_net().state_dict()
    del sd["1.running_var"], sd["5.bias"]
    sd["extra.weight"] = np.zeros(3)
    sd["0.weight"] = np.zeros((4, 1, 5, 5))
    sd["5.weight"] = np.zeros((3, 15))
    with pytest.raises(ValueError) as err:
        net.load_state_dict(sd)
    msg = str(err.value)
    for part in ["1.running_var", "5.bias", "extra.weight", "0.weight", "(4, 1, 5, 5)", "(4, 1, 3, 3)",
                 "5.weight", "(3, 15)", "(3, 16)", "missing", "unexpected"]:
        assert part in msg, part
    after = net.state_dict()
    for k in before:  # the keys that were fine were not loaded either
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def test_load_state_dict_non_strict_returns_missing_and_unexpected():
    net = small_net()
    src = small_net()
    sd = src.state_dict()
    del sd["5.bias"]
    sd["head.weight"] = np.zeros(2)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert missing == ["5.bias"] and unexpected == ["head.weight"]
    np.testing.assert_array_equal(net[0].weight.data, src[0].weight.data)  # the rest was loaded
    sd["0.bias"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"0\.bias.*\(5,\).*\(4,\)"):
        net.load_state_dict(sd, strict=False)  # a wrong shape is never silently skipped


def test_num_batches_tracked_is_ignored_on_load():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    net(np.ones((2, 1, 2, 2)))
    sd = net.state_dict()
    assert int(sd["1.num_batches_tracked"]) == 1
    fresh = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    sd["1.num_batches_tracked"] = np.array([5, 6])  # even a malformed one
    assert fresh.load_state_dict(sd) == ([], [])
    del sd["1.num_batches_tracked"]
    assert fresh.load_state_dict(sd) == ([], [])  # and its absence is not "missing"
    np.testing.assert_array_equal(fresh[1].running_mean, net[1].running_mean)


def test_num_batches_tracked_without_a_batchnorm_is_unexpected():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    sd = net.state_dict()
    # under the conv, or under a module that does not exist: not a counter this model has
    for stray in ("0.num_batches_tracked", "7.num_batches_tracked", "num_batches_tracked"):
        bad = dict(sd, **{stray: np.array(3)})
        with pytest.raises(ValueError, match=rf"unexpected keys: {re.escape(stray)}$"):
            net.load_state_dict(bad)
        assert net.load_state_dict(bad, strict=False) == ([], [stray])
    # a BatchNorm that keeps no running statistics has no counter either (PyTorch saves none for it)
    plain = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, track_running_stats=False))
    psd = plain.state_dict()
    assert "1.num_batches_tracked" not in psd
    with pytest.raises(ValueError, match=r"unexpected keys: 1\.num_batches_tracked"):
        plain.load_state_dict(dict(psd, **{"1.num_batches_tracked": np.array(0)}))


@pytest.mark.torch
def test_pytorch_state_dict_with_counters_loads_strictly():
    torch = pytest.importorskip("torch")
    tnet = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    tnet.train()
    with torch.no_grad():
        tnet(torch.randn(4, 1, 3, 3))
        tnet(torch.randn(4, 1, 3, 3))
    sd = {k: v.numpy() for k, v in tnet.state_dict().items()}
    assert int(sd["1.num_batches_tracked"]) == 2
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    assert net.load_state_dict(sd) == ([], [])
    np.testing.assert_array_equal(net[1].running_var, sd["1.running_var"])
    np.testing.assert_array_equal(net[0].weight.data, sd["0.weight"])
    assert int(net[1].num_batches_tracked) == 0  # accepted, not loaded


# -- modes, grads, dtype -----------------------------------------------------------------------------

def test_train_eval_propagate():
    net = nn.Sequential(small_net(), Block())
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.train(False)
    assert not any(m.training for m in net.modules())


def test_eval_changes_batchnorm_and_dropout_behaviour():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 1, 4, 4)).astype(np.float32) * 3 + 2
    net = nn.Sequential(nn.BatchNorm2d(1), nn.Dropout(0.5))
    y_train = net(x)
    assert abs(float(y_train[y_train != 0].mean())) < 3  # normalised (and some units dropped)
    assert np.any(y_train == 0)
    net.eval()
    rm, rv = net[0].running_mean, net[0].running_var
    np.testing.assert_allclose(net(x), (x - rm[0]) / np.sqrt(rv[0] + 1e-5), rtol=1e-5)


def test_zero_grad():
    net = small_net()
    y = net(np.ones((2, 1, 4, 4)))
    net.backward(np.ones_like(y))
    assert all(p.grad is not None and np.any(p.grad != 0) for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not np.any(p.grad) for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_to_float64():
    net = small_net()
    y = net(np.ones((2, 1, 4, 4)))
    net.backward(np.ones_like(y))
    assert net.to(np.float64) is net
    assert all(m.dtype == np.float64 for m in net.modules())
    assert all(p.data.dtype == np.float64 and p.grad.dtype == np.float64 for p in net.parameters())
    sd = net.state_dict()
    assert sd["1.running_mean"].dtype == np.float64
    assert sd["1.num_batches_tracked"].dtype == np.int64  # integer buffers keep their type
    assert net(np.ones((2, 1, 4, 4), np.float32)).dtype == np.float64
    assert net.float()(np.ones((2, 1, 4, 4))).dtype == np.float32
    with pytest.raises(TypeError, match="floating"):
        net.to(np.int32)


def test_frozen_parameter_accumulates_nothing():
    p = nn.Parameter(np.ones(3, np.float32))
    p.accumulate(np.ones(3))
    p.accumulate(np.ones(3))
    np.testing.assert_array_equal(p.grad, [2, 2, 2])
    assert p.grad.dtype == np.float32
    q = nn.Parameter(np.ones(3, np.float32), requires_grad=False)
    q.accumulate(np.ones(3))
    assert q.grad is None
    assert "requires_grad=False" in repr(q)


def test_sequential_container():
    a, b = nn.ReLU(), nn.Tanh()
    seq = nn.Sequential(OrderedDict([("act", a), ("squash", b)]))
    assert list(dict(seq.named_children())) == ["act", "squash"]
    assert len(seq) == 2 and seq[0] is a and seq[-1] is b and list(seq) == [a, b]
    assert isinstance(seq[:1], nn.Sequential) and list(seq[:1]) == [a]
    seq.append(nn.Sigmoid())
    assert len(seq) == 3
    with pytest.raises(TypeError, match="position 1"):
        nn.Sequential(nn.ReLU(), "not a module")
    x = np.array([[-1.0, 0.5]], np.float32)
    np.testing.assert_allclose(seq(x), 1 / (1 + np.exp(-np.tanh(np.maximum(x, 0)))), rtol=1e-6)


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_backward_params_equals_backward_grads_and_skips_the_input(backend_name, monkeypatch):
    """Sequential.backward_params: the same .grad as backward, no dL/dx from the first conv, and
    the modules before the first trainable one (a frozen conv, a ReLU) are not visited."""
    from minicnn import ops
    mc.manual_seed(4)
    net = nn.Sequential(nn.ReLU(), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.Flatten(),
                        nn.Linear(8, 3)).train()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    g = rng.standard_normal((2, 3)).astype(np.float32)
    flags = []
    real = ops.conv2d_backward
    monkeypatch.setattr(ops, "conv2d_backward", lambda *a, **k: flags.append(k["need_dx"]) or real(*a, **k))
    with mc.backend(backend_name):
        net(x)
        assert net.backward(g).shape == x.shape
        want = {k: np.array(p.grad) for k, p in net.named_parameters()}
        net.zero_grad()
        flags.clear()
        net(x)
        assert net.backward_params(g) is None
        assert flags == [True, False]  # the second conv, then the first (no dL/dx)
        for k, p in net.named_parameters():
            np.testing.assert_allclose(p.grad, want[k], rtol=1e-6, atol=1e-7, err_msg=k)
        net[1].freeze()
        net.zero_grad()
        flags.clear()
        net(x)
        net.backward_params(g)
        assert flags == [False] and net[1].weight.grad is None
        np.testing.assert_allclose(net[3].weight.grad, want["3.weight"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(net[5].weight.grad, want["5.weight"], rtol=1e-6, atol=1e-7)


def test_module_must_call_super_init():
    class Broken(nn.Module):
        def __init__(self):
            self.w = 1

    with pytest.raises(RuntimeError, match="super"):
        Broken()


def test_repr_names_children():
    text = repr(small_net())
    assert "(0): Conv2d(1, 4, kernel_size=(3, 3)" in text and "(5): Linear(in_features=16" in text


# -- summary ------------------------------------------------------------------------------------------

def test_summary_table_and_totals():
    net = small_net()
    out = io.StringIO()
    text = net.summary((1, 4, 4), file=out)
    assert out.getvalue().strip() == text.strip()
    lines = text.splitlines()
    rows = {line.split()[0]: line for line in lines if line[:1].isdigit()}
    assert list(rows) == ["0", "1", "2", "3", "4", "5"]
    assert "(Conv2d)" in rows["0"] and "(None, 4, 4, 4)" in rows["0"] and rows["0"].endswith(" 40")
    assert "(None, 4, 2, 2)" in rows["3"] and rows["3"].endswith(" 0")
    assert "(None, 16)" in rows["4"]
    assert "(None, 3)" in rows["5"] and rows["5"].endswith(" 51")
    assert "Total params: 99" in lines and "Trainable params: 99" in lines and "Non-trainable params: 0" in lines

    net[0].freeze()
    net[1].weight.requires_grad = False
    lines = net.summary((1, 1, 4, 4), file=io.StringIO()).splitlines()
    assert "Total params: 99" in lines and "Trainable params: 55" in lines and "Non-trainable params: 44" in lines


def test_summary_leaves_the_model_as_it_was():
    net = small_net()
    bn = net[1]
    before = net.state_dict()
    net.summary((1, 4, 4), file=io.StringIO())
    assert net.training and all(m.training for m in net.modules())
    assert all("forward" not in m.__dict__ for m in net.modules())  # the recording hooks are gone
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)  # eval-mode pass: no running-stat update
    y = net(np.ones((2, 1, 4, 4)))
    assert y.shape == (2, 3) and int(bn.num_batches_tracked) == 1


def test_summary_of_a_single_layer_and_big_counts():
    text = nn.Conv2d(64, 128, 3).summary((64, 8, 8), file=io.StringIO())
    assert "Conv2d" in text and "(None, 128, 6, 6)" in text and "73,856" in text
    assert "Total params: 73,856" in text


# -- backend selection --------------------------------------------------------------------------------

def test_set_backend_and_context(backend_name):
    mc.set_backend("numpy")
    assert mc.get_backend() == "numpy"
    with mc.backend(backend_name) as be:
        assert mc.get_backend() == backend_name == be.NAME
        with mc.backend("numpy"):
            assert mc.get_backend() == "numpy"
        assert mc.get_backend() == backend_name
    assert mc.get_backend() == "numpy"
    mc.set_backend(backend_name)
    assert mc.get_backend() == backend_name
    with pytest.raises(RuntimeError):
        with mc.backend("numpy"):
            raise RuntimeError("inside")
    assert mc.get_backend() == backend_name  # restored after an exception too


def test_backend_context_is_per_thread():
    usable = []
    for name in backends.AVAILABLE:
        try:
            backends.load(name)
            usable.append(name)
        except Exception:  # noqa: BLE001 - not usable here
            pass
    if len(usable) < 2:
        pytest.skip("needs two usable backends")
    a, b = usable[:2]
    mc.set_backend(a)
    seen = []
    with mc.backend(b):
        t = threading.Thread(target=lambda: seen.append(mc.get_backend()))
        t.start()
        t.join(30)
        assert mc.get_backend() == b
    assert seen == [a]  # another thread keeps the process-wide choice


def test_unknown_backend_raises_value_error():
    for call in (lambda: mc.set_backend("tpu"), lambda: mc.backend("tpu").__enter__(), lambda: backends.load("")):
        with pytest.raises(ValueError, match="unknown backend") as err:
            call()
        assert "numpy" in str(err.value)  # the message lists the choices


def _run_python(code, **env_updates):
    env = {k: v for k, v in os.environ.items() if k != "MINICNN_BACKEND"}
    env.update(env_updates)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_env_var_selects_backend_in_a_fresh_process():
    code = "import minicnn as mc; print(mc.get_backend())"
    assert _run_python(code, MINICNN_BACKEND="numpy").stdout.strip() == "numpy"
    assert _run_python(code, MINICNN_BACKEND=" NumPy ").stdout.strip() == "numpy"
    assert _run_python(code).stdout.strip() == backends.DEFAULT
    bad = _run_python(code + "\n", MINICNN_BACKEND="bogus")
    assert bad.returncode != 0 and "ValueError" in bad.stderr and "bogus" in bad.stderr
    # set_backend wins over the environment
    code2 = "import minicnn as mc; mc.set_backend('numpy'); print(mc.get_backend())"
    assert _run_python(code2, MINICNN_BACKEND="bogus").stdout.strip() == "numpy"
