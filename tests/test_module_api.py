"""The module API PyTorch users reach for: ModuleList, ModuleDict, nn.init, apply, buffers, hooks,
and PyTorch's rule that a shared module is listed once (but saved under every name)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import minicnn as mc
from minicnn import nn


# -- ModuleList ----------------------------------------------------------------------------------

def test_module_list_behaves_like_a_list():
    a, b, c, d = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4), nn.Tanh()
    ml = nn.ModuleList([a, b])
    assert len(ml) == 2 and ml[0] is a and ml[-1] is b and list(ml) == [a, b]
    assert ml.append(c) is ml and ml.extend([d]) is ml
    assert list(ml) == [a, b, c, d]
    ml.insert(1, nn.Identity())
    assert [type(m).__name__ for m in ml] == ["Linear", "Identity", "ReLU", "Linear", "Tanh"]
    assert list(dict(ml.named_children())) == ["0", "1", "2", "3", "4"]
    sub = ml[1:4:2]
    assert isinstance(sub, nn.ModuleList) and list(sub) == [ml[1], ml[3]]
    del ml[1]
    assert list(ml) == [a, b, c, d] and list(dict(ml.named_children())) == ["0", "1", "2", "3"]
    assert ml.pop() is d and len(ml) == 3
    ml[1] = d
    assert ml[1] is d
    ml += [b]
    assert list(ml) == [a, d, c, b]
    both = ml + nn.ModuleList([a])
    assert isinstance(both, nn.ModuleList) and list(both) == [a, d, c, b, a] and len(ml) == 4
    del ml[1:3]
    assert list(ml) == [a, b]
    assert a in ml and c not in ml
    with pytest.raises(IndexError, match="index 5 is out of range"):
        ml[5]
    with pytest.raises(TypeError, match="indices must be integers"):
        ml["0"]
    with pytest.raises(TypeError, match="iterable"):
        nn.ModuleList(nn.Linear(1, 1))
    with pytest.raises(TypeError, match="must be a Module"):
        ml.append(3)


def test_module_list_registers_parameters_and_state_dict_keys():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(3, 3) for _ in range(3)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

        def backward(self, dy):
            for layer in reversed(list(self.layers)):
                dy = layer.backward(dy)
            return dy

    net = Net()
    assert list(net.state_dict()) == [f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    assert len(list(net.parameters())) == 6
    assert list(nn.ModuleList([nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)]).state_dict()) == [
        "0.weight", "0.bias", "2.weight", "2.bias"]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    y = net(x)
    dx = net.backward(np.ones_like(y))
    assert dx.shape == x.shape and all(p.grad is not None for p in net.parameters())
    with pytest.raises(NotImplementedError):
        net.layers(x)  # a ModuleList has no forward


@pytest.mark.torch
def test_module_list_and_dict_keys_equal_torchs():
    torch = pytest.importorskip("torch")
    ours, theirs = [], []
    for lib, out in ((nn, ours), (torch.nn, theirs)):
        ml = lib.ModuleList([lib.Linear(2, 2), lib.ReLU()])
        ml.append(lib.Linear(2, 3))
        ml.insert(0, lib.Linear(2, 2))
        ml.extend([lib.Linear(3, 1)])
        del ml[1]
        md = lib.ModuleDict({"enc": lib.Linear(2, 2), "act": lib.ReLU()})
        md.update([("dec", lib.Linear(2, 2))])
        md["head"] = lib.Linear(2, 1)
        md.pop("act")
        out.append((list(ml.state_dict()), list(md.state_dict()), list(md.keys()), len(ml), len(md)))
    assert ours == theirs


# -- ModuleDict ----------------------------------------------------------------------------------

def test_module_dict_behaves_like_a_dict():
    enc, act, dec = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)
    md = nn.ModuleDict({"enc": enc, "act": act})
    assert list(md) == ["enc", "act"] and md["act"] is act and len(md) == 2 and "enc" in md
    md.update([("dec", dec)])
    md.update({"act": nn.Tanh()})  # replacing keeps the key's place
    assert list(md.keys()) == ["enc", "act", "dec"] and isinstance(md["act"], nn.Tanh)
    assert list(md.values())[0] is enc and list(md.items())[2] == ("dec", dec)
    assert list(md.state_dict()) == ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]
    assert md.pop("enc") is enc and list(md) == ["act", "dec"] and not hasattr(md, "enc")
    del md["act"]
    assert list(md) == ["dec"]
    md.clear()
    assert len(md) == 0 and list(md.parameters()) == []
    with pytest.raises(KeyError):
        md["missing"]
    with pytest.raises(TypeError, match="iterable of key/value pairs"):
        md.update(3)
    with pytest.raises(ValueError, match="element #0 has length 3; 2 is required"):
        md.update([("a", enc, dec)])
    with pytest.raises(KeyError, match="already exists"):
        md["keys"] = enc  # would hide the method, as PyTorch refuses too
    with pytest.raises(KeyError, match="contain no '.'"):
        md["a.b"] = enc


# -- shared modules: listed once, saved under every name ---------------------------------------------

def _shared_net(lib):
    relu, lin = lib.ReLU(), lib.Linear(3, 3)
    inner = lib.Sequential(lin, relu)
    return lib.Sequential(lin, relu, inner, lib.Linear(3, 2), relu)


def test_shared_modules_listed_once_saved_under_every_name():
    net = _shared_net(nn)
    names = [n for n, _ in net.named_modules()]
    assert names == ["", "0", "1", "2", "3"]
    assert len(list(net.modules())) == 5
    assert [n for n, _ in net.named_modules(remove_duplicate=False)] == ["", "0", "1", "2", "2.0", "2.1", "3", "4"]
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert list(net.state_dict()) == ["0.weight", "0.bias", "2.0.weight", "2.0.bias", "3.weight", "3.bias"]
    assert [n for n, _ in net.named_children()] == ["0", "1", "2", "3"]
    # load_state_dict accepts what state_dict gave, and fills the shared layer once per name
    sd = net.state_dict()
    sd["0.weight"][...] = 1.0
    sd["2.0.weight"][...] = 1.0
    net.load_state_dict(sd)
    assert np.all(net[0].weight.data == 1.0)


@pytest.mark.torch
def test_shared_module_listings_equal_torchs():
    torch = pytest.importorskip("torch")
    ours, theirs = _shared_net(nn), _shared_net(torch.nn)
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert [n for n, _ in ours.named_modules(remove_duplicate=False)] == [
        n for n, _ in theirs.named_modules(remove_duplicate=False)]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_children()] == [n for n, _ in theirs.named_children()]
    order_ours, order_theirs = [], []
    ours.apply(lambda m: order_ours.append(type(m).__name__))
    theirs.apply(lambda m: order_theirs.append(type(m).__name__))
    assert order_ours == order_theirs


# -- apply ----------------------------------------------------------------------------------------

def test_apply_visits_children_first_and_returns_self():
    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 1)))
    seen = []
    assert net.apply(lambda m: seen.append(m)) is net
    assert seen == [net[0], net[1][0], net[1][1], net[1], net]

    def init(m):
        if isinstance(m, nn.Linear):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    net.apply(init)
    assert all(np.all(p.data == (1 if n.endswith("weight") else 0)) for n, p in net.named_parameters())


# -- buffers and parameters ------------------------------------------------------------------------

class WithBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scale", np.ones(3, np.float32))
        self.register_buffer("scratch", np.zeros(2, np.float32), persistent=False)
        self.register_buffer("later", None)
        self.bn = nn.BatchNorm2d(3)


def test_buffers_and_named_buffers():
    m = WithBuffers()
    names = [n for n, _ in m.named_buffers()]
    assert names == ["scale", "scratch", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    assert [n for n, _ in m.named_buffers(recurse=False)] == ["scale", "scratch"]
    assert [b.shape for b in m.buffers()] == [(3,), (2,), (3,), (3,), ()]
    assert "scratch" not in m.state_dict() and "scale" in m.state_dict() and "later" not in m.state_dict()
    m.later = np.zeros(1)  # as in PyTorch, assigning an array to a buffer's name sets the buffer
    assert [n for n, _ in m.named_buffers(prefix="top")][:3] == ["top.scale", "top.scratch", "top.later"]
    assert list(m.state_dict())[:2] == ["scale", "later"]
    m.scale = None
    assert "scale" not in m.state_dict() and m.scale is None and "scale" in m._buffers
    m.to(np.float64)
    assert m.later.dtype == np.float64 and m.bn.num_batches_tracked.dtype == np.int64


def test_register_buffer_and_parameter_errors():
    m = WithBuffers()
    with pytest.raises(TypeError, match="must be a str"):
        m.register_buffer(3, np.zeros(1))
    with pytest.raises(KeyError, match="contain no '.'"):
        m.register_buffer("a.b", np.zeros(1))
    with pytest.raises(KeyError, match="'bn' already exists"):
        m.register_buffer("bn", np.zeros(1))
    with pytest.raises(TypeError, match="must be an array or None"):
        m.register_buffer("x", [1, 2])
    p = nn.Parameter(np.zeros(2, np.float32))
    m.register_parameter("alpha", p)
    assert dict(m.named_parameters())["alpha"] is p
    with pytest.raises(TypeError, match="must be a Parameter or None"):
        m.register_parameter("beta", np.zeros(2))
    with pytest.raises(KeyError, match="'scale' already exists"):
        m.register_parameter("scale", nn.Parameter(np.zeros(3)))

    class NoInit(nn.Module):
        def __init__(self):
            self.register_buffer("x", np.zeros(1))

    with pytest.raises(RuntimeError, match="must call super"):
        NoInit()


# -- hooks ----------------------------------------------------------------------------------------

def test_forward_hook_sees_inputs_and_output_and_can_replace_it():
    lin = nn.Linear(2, 2)
    x = np.ones((1, 2), np.float32)
    calls = []
    h1 = lin.register_forward_hook(lambda m, args, out: calls.append((m, args, out.copy())))
    h2 = lin.register_forward_hook(lambda m, args, out: out * 0 + 5)
    h3 = lin.register_forward_hook(lambda m, args, out: calls.append(("after", out.copy())))
    y = lin(x)
    assert np.all(y == 5)
    (m, args, out), (tag, out3) = calls
    assert m is lin and args == (x,) and np.all(out != 5) and tag == "after" and np.all(out3 == 5)
    h2.remove()
    h2.remove()  # a second remove does nothing
    h1.remove()
    h3.remove()
    calls.clear()
    assert not np.all(lin(x) == 5) and calls == []


def test_forward_pre_hook_can_replace_the_input():
    relu = nn.ReLU()
    seen = []
    handle = relu.register_forward_pre_hook(lambda m, args: seen.append(args) or -args[0])
    x = np.array([[1.0, -2.0]], np.float32)
    np.testing.assert_array_equal(relu(x), [[0.0, 2.0]])
    np.testing.assert_array_equal(relu.backward(np.ones((1, 2), np.float32)), [[0.0, 1.0]])
    assert seen[0][0] is x
    with handle:
        pass  # leaving the with block removes the hook
    np.testing.assert_array_equal(relu(x), [[1.0, 0.0]])
    with pytest.raises(TypeError, match="hook must be callable"):
        relu.register_forward_hook(3)


def test_hook_on_a_shared_module_fires_per_use():
    relu = nn.ReLU()
    net = nn.Sequential(nn.Linear(2, 2), relu, nn.Linear(2, 2), relu)
    count = []
    relu.register_forward_hook(lambda m, args, out: count.append(1))
    net(np.ones((1, 2), np.float32))
    assert len(count) == 2


@pytest.mark.torch
def test_hooks_follow_torchs_calling_convention():
    torch = pytest.importorskip("torch")
    got = {}
    for lib, key in ((nn, "ours"), (torch.nn, "theirs")):
        layer = lib.ReLU()
        log = []
        layer.register_forward_pre_hook(lambda m, args, log=log: log.append(("pre", type(args).__name__, len(args))))
        layer.register_forward_hook(lambda m, args, out, log=log: log.append(("post", type(args).__name__, len(args))))
        x = np.ones((1, 2), np.float32)
        layer(x if lib is nn else torch.from_numpy(x))
        got[key] = log
    assert got["ours"] == got["theirs"]


# -- nn.init --------------------------------------------------------------------------------------

SHAPE = (128, 64, 3, 3)  # fan_in 576, fan_out 1152; 73,728 draws
FAN_IN, FAN_OUT = 64 * 9, 128 * 9


def _gain(nonlinearity, a):
    """PyTorch's documented table, written out independently of nn.init.calculate_gain."""
    slope = 0.01 if a is None else a
    return {"relu": math.sqrt(2), "leaky_relu": math.sqrt(2 / (1 + slope ** 2)), "tanh": 5 / 3, "linear": 1.0,
            "sigmoid": 1.0, "selu": 0.75}[nonlinearity]


def test_calculate_gain_table():
    for nl in ("relu", "tanh", "linear", "sigmoid", "selu", "conv2d"):
        expected = _gain("linear" if nl == "conv2d" else nl, None)
        assert nn.init.calculate_gain(nl) == pytest.approx(expected)
    assert nn.init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    assert nn.init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    with pytest.raises(ValueError, match="unsupported nonlinearity 'swish'"):
        nn.init.calculate_gain("swish")
    with pytest.raises(ValueError, match="negative_slope"):
        nn.init.calculate_gain("leaky_relu", "x")


@pytest.mark.torch
def test_calculate_gain_equals_torchs():
    torch = pytest.importorskip("torch")
    for nl, param in (("relu", None), ("tanh", None), ("leaky_relu", None), ("leaky_relu", 0.3), ("selu", None),
                      ("sigmoid", None), ("conv_transpose2d", None), ("linear", None)):
        assert nn.init.calculate_gain(nl, param) == pytest.approx(torch.nn.init.calculate_gain(nl, param))


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("nonlinearity,a", [("relu", 0.0), ("leaky_relu", 0.0), ("leaky_relu", math.sqrt(5)),
                                            ("tanh", 0.0)])
def test_kaiming_moments_and_bounds(mode, nonlinearity, a):
    fan = FAN_IN if mode == "fan_in" else FAN_OUT
    std = _gain(nonlinearity, a) / math.sqrt(fan)
    w = nn.Parameter(np.empty(SHAPE, np.float32))
    data = w.data
    assert nn.init.kaiming_uniform_(w, a=a, mode=mode, nonlinearity=nonlinearity) is w
    assert w.data is data and w.data.dtype == np.float32  # in place
    bound = math.sqrt(3) * std
    assert np.abs(w.data).max() <= bound * (1 + 1e-6) and np.abs(w.data).max() > 0.999 * bound
    assert w.data.std() == pytest.approx(std, rel=0.02) and abs(w.data.mean()) < 0.02 * std
    arr = np.empty(SHAPE)
    assert nn.init.kaiming_normal_(arr, a=a, mode=mode, nonlinearity=nonlinearity) is arr
    assert arr.std() == pytest.approx(std, rel=0.02) and abs(arr.mean()) < 0.02 * std


@pytest.mark.parametrize("gain", [1.0, 5 / 3])
def test_xavier_moments_and_bounds(gain):
    std = gain * math.sqrt(2 / (FAN_IN + FAN_OUT))
    w = np.empty(SHAPE, np.float32)
    nn.init.xavier_uniform_(w, gain=gain)
    bound = math.sqrt(3) * std
    assert np.abs(w).max() <= bound * (1 + 1e-6) and np.abs(w).max() > 0.999 * bound
    assert w.std() == pytest.approx(std, rel=0.02)
    nn.init.xavier_normal_(w, gain=gain)
    assert w.std() == pytest.approx(std, rel=0.02) and abs(w.mean()) < 0.02 * std
    lin = np.empty((300, 200))  # a Linear weight: no kernel axes
    nn.init.xavier_uniform_(lin)
    assert np.abs(lin).max() == pytest.approx(math.sqrt(6 / 500), rel=1e-3)


def test_plain_fills():
    a = np.empty((200, 300), np.float32)
    nn.init.normal_(a, mean=2.0, std=0.5)
    assert a.mean() == pytest.approx(2.0, abs=0.01) and a.std() == pytest.approx(0.5, rel=0.02)
    nn.init.uniform_(a, -3.0, 1.0)
    assert a.min() >= -3.0 and a.max() < 1.0 and a.min() < -2.99 and a.max() > 0.99
    assert a.mean() == pytest.approx(-1.0, abs=0.02) and a.std() == pytest.approx(4 / math.sqrt(12), rel=0.02)
    p = nn.Parameter(np.empty(4, np.float32))
    assert np.all(nn.init.constant_(p, 0.25).data == 0.25)
    assert np.all(nn.init.ones_(p).data == 1) and np.all(nn.init.zeros_(p).data == 0)


@pytest.mark.torch
def test_init_bounds_equal_torchs():
    """PyTorch's own draws reach the same bounds as ours, for the same arguments."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cases = [
        ("kaiming_uniform_", dict(a=math.sqrt(5))), ("kaiming_uniform_", dict(mode="fan_out", nonlinearity="relu")),
        ("xavier_uniform_", dict(gain=2.0)), ("uniform_", dict(a=-0.5, b=0.25)),
    ]
    for fn, kw in cases:
        ours, theirs = np.empty(SHAPE, np.float32), torch.empty(SHAPE)
        getattr(nn.init, fn)(ours, **kw)
        getattr(torch.nn.init, fn)(theirs, **kw)
        theirs = theirs.numpy()
        assert ours.max() == pytest.approx(theirs.max(), rel=2e-3), fn
        assert ours.min() == pytest.approx(theirs.min(), rel=2e-3), fn
    for fn, kw in (("kaiming_normal_", dict(mode="fan_out", nonlinearity="relu")), ("xavier_normal_", {}),
                   ("normal_", dict(mean=1.0, std=0.1))):
        ours, theirs = np.empty(SHAPE, np.float32), torch.empty(SHAPE)
        getattr(nn.init, fn)(ours, **kw)
        getattr(torch.nn.init, fn)(theirs, **kw)
        assert ours.std() == pytest.approx(float(theirs.std()), rel=0.03), fn
        assert ours.mean() == pytest.approx(float(theirs.mean()), abs=0.01), fn


def test_init_draws_from_the_library_rng_or_a_generator():
    a, b = np.empty((3, 4)), np.empty((3, 4))
    mc.manual_seed(7)
    nn.init.kaiming_uniform_(a)
    mc.manual_seed(7)
    nn.init.kaiming_uniform_(b)
    np.testing.assert_array_equal(a, b)
    nn.init.kaiming_uniform_(b)
    assert not np.array_equal(a, b)
    nn.init.normal_(a, generator=np.random.default_rng(1))
    nn.init.normal_(b, generator=np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)


def test_init_errors():
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        nn.init.kaiming_uniform_(np.empty(5))
    with pytest.raises(ValueError, match="mode 'fan_avg' not supported"):
        nn.init.kaiming_normal_(np.empty((3, 3)), mode="fan_avg")
    with pytest.raises(ValueError, match="unsupported nonlinearity"):
        nn.init.kaiming_normal_(np.empty((3, 3)), nonlinearity="swish")
    with pytest.raises(TypeError, match="floating array"):
        nn.init.zeros_(np.empty(3, np.int64))
    with pytest.raises(TypeError, match="Parameter or a numpy array"):
        nn.init.ones_([1.0, 2.0])
    empty = np.empty((0, 3))
    assert nn.init.xavier_uniform_(empty) is empty  # nothing to fill is not an error


def test_replace_head_finds_the_last_place_of_a_shared_linear():
    from minicnn import transfer

    lin = nn.Linear(3, 3)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    new = transfer.replace_head(net, num_classes=2)
    assert list(net) == [lin, net[1], new] and new.out_features == 2


def test_sequential_item_assignment_replaces_in_place():
    """``model.classifier[6] = nn.Linear(...)`` as in PyTorch: same name, same position."""
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4))
    new = nn.Linear(3, 7)
    seq[2] = new
    seq[-2] = nn.Tanh()
    assert seq[2] is new and isinstance(seq[1], nn.Tanh)
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert seq(np.ones((5, 2), np.float32)).shape == (5, 7)
    with pytest.raises(IndexError, match="out of range"):
        seq[3] = nn.ReLU()
    with pytest.raises(TypeError, match="takes Modules"):
        seq[0] = 3
