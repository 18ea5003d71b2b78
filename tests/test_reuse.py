"""Modules used more than once in a forward pass, and the caches that make that right.

A module keeps a stack of caches (push on forward, pop on backward, tagged by forward pass; see the
"passes" note in ``minicnn/nn/module.py``). Checked here: five reuse patterns against PyTorch
autograd (live when torch imports) and against numerical gradients (always), on every backend;
``backward_params`` with shared modules; a ResNet used twice; memory that stays flat over repeated
eval forwards; and the errors for a backward that does not match its forward pass.
"""
from __future__ import annotations

import contextlib
import tracemalloc

import numpy as np
import pytest

import minicnn as mc
from minicnn import backends, gradcam, nn
from minicnn.models.convnet import digits_convnet
from minicnn.models.resnet import ResNet
from minicnn.nn.module import forward_pass

from gradcheck import check_layer


# -- the five patterns -----------------------------------------------------------------------------

class LinearLoop(nn.Module):
    """One Linear and one Tanh applied ``steps`` times: x <- tanh(W x + b)."""

    def __init__(self, features=4, steps=3):
        super().__init__()
        self.lin = nn.Linear(features, features)
        self.act = nn.Tanh()
        self.steps = steps

    def forward(self, x):
        for _ in range(self.steps):
            x = self.act(self.lin(x))
        return x

    def backward(self, dy):
        for _ in range(self.steps):
            dy = self.lin.backward(self.act.backward(dy))
        return dy


class TwoBranches(nn.Module):
    """``shared(relu(a(x))) + shared(tanh(b(x)))``: one Linear reused by two branches."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(4, 5)
        self.act_a = nn.ReLU()
        self.act_b = nn.Tanh()
        self.shared = nn.Linear(5, 3)

    def forward(self, x):
        return self.shared(self.act_a(self.a(x))) + self.shared(self.act_b(self.b(x)))

    def backward(self, dy):
        # the shared layer's caches pop newest first: branch b's, then branch a's
        gb = self.b.backward(self.act_b.backward(self.shared.backward(dy)))
        ga = self.a.backward(self.act_a.backward(self.shared.backward(dy)))
        return ga + gb


class OneReluBlock(nn.Module):
    """A ResNet basic block written as torchvision writes it: one ReLU, called twice."""

    def __init__(self, c=3):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        x = self._prepare_input(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + x)

    def backward(self, dy):
        g = self.relu.backward(dy)  # the second use (after the sum) pops first
        d = self.conv1.backward(self.bn1.backward(self.relu.backward(self.conv2.backward(self.bn2.backward(g)))))
        return d + g


def shared_activation():
    relu = nn.ReLU()
    return nn.Sequential(nn.Linear(5, 4), relu, nn.Linear(4, 4), relu), (3, 5)


def shared_conv():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    return nn.Sequential(conv, conv), (2, 2, 5, 5)


def linear_loop():
    return LinearLoop(), (3, 4)


def two_branches():
    return TwoBranches(), (3, 4)


def one_relu_block():
    return OneReluBlock(), (4, 3, 4, 4)


PATTERNS = {f.__name__: f for f in (shared_activation, shared_conv, linear_loop, two_branches, one_relu_block)}


def _torch_twin(name, torch):
    """The same architecture in PyTorch, written as a PyTorch user would."""
    tnn = torch.nn
    if name == "shared_activation":
        relu = tnn.ReLU()
        return tnn.Sequential(tnn.Linear(5, 4), relu, tnn.Linear(4, 4), relu)
    if name == "shared_conv":
        conv = tnn.Conv2d(2, 2, 3, padding=1)
        return tnn.Sequential(conv, conv)

    class TLoop(tnn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.act = tnn.Linear(4, 4), tnn.Tanh()

        def forward(self, x):
            for _ in range(3):
                x = self.act(self.lin(x))
            return x

    class TBranches(tnn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = tnn.Linear(4, 5), tnn.Linear(4, 5)
            self.act_a, self.act_b = tnn.ReLU(), tnn.Tanh()
            self.shared = tnn.Linear(5, 3)

        def forward(self, x):
            return self.shared(self.act_a(self.a(x))) + self.shared(self.act_b(self.b(x)))

    class TBlock(tnn.Module):
        def __init__(self, c=3):
            super().__init__()
            self.conv1 = tnn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(c)
            self.relu = tnn.ReLU()
            self.conv2 = tnn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = tnn.BatchNorm2d(c)

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + x)

    return {"linear_loop": TLoop, "two_branches": TBranches, "one_relu_block": TBlock}[name]()


def _build(name):
    """The minicnn model in float64 with every parameter random (batchnorm gammas and betas too)."""
    mc.manual_seed(3)
    model, shape = PATTERNS[name]()
    model.to(np.float64)
    for p in model.parameters():
        nn.init.normal_(p, 0.0, 0.5)
    rng = np.random.default_rng(7)
    return model, rng.standard_normal(shape), rng


def _grads_by_name(model):
    """Every parameter's gradient by name (None for a frozen one)."""
    return {n: None if p.grad is None else np.array(mc.to_numpy(p.grad), copy=True)
            for n, p in model.named_parameters()}


@pytest.mark.torch
@pytest.mark.parametrize("name", list(PATTERNS))
def test_reuse_matches_torch_autograd(name, backend_name):
    torch = pytest.importorskip("torch")
    model, x, rng = _build(name)
    tmodel = _torch_twin(name, torch).double()
    tmodel.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in model.state_dict().items()})
    with mc.backend(backend_name):
        y = np.asarray(mc.to_numpy(model(x)))
        dy = rng.standard_normal(y.shape)
        dx = np.asarray(mc.to_numpy(model.backward(dy)))
    tx = torch.tensor(x, requires_grad=True)
    ty = tmodel(tx)
    (ty * torch.from_numpy(dy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    got = _grads_by_name(model)
    want = {n: p.grad.numpy() for n, p in tmodel.named_parameters()}
    assert list(got) == list(want)  # a shared layer's parameters are listed once, under its first name
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-9, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("name", list(PATTERNS))
def test_reuse_matches_numerical_gradients(name, backend_name):
    model, x, _ = _build(name)
    with mc.backend(backend_name):
        errors = check_layer(model, x, against="numeric", tol=1e-6)
    assert set(errors) == {"x"} | {n for n, _ in model.named_parameters()}


# -- backward_params with shared modules -----------------------------------------------------------

@pytest.mark.parametrize("layout", ["trainable_again_later", "frozen_again_later", "first_is_shared_relu"])
def test_backward_params_visits_every_use(layout, backend_name):
    mc.manual_seed(5)
    lin, relu, other = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)
    if layout == "trainable_again_later":  # the first trainable module appears again at the end
        model = nn.Sequential(lin, relu, other, relu, lin)
    elif layout == "frozen_again_later":  # a frozen layer before the first trainable one, reused after it
        lin.freeze()
        model = nn.Sequential(lin, relu, other, relu, lin)
    else:  # an untrainable module before the first trainable one, used again after it
        model = nn.Sequential(relu, other, relu, lin)
    model.to(np.float64)
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    with mc.backend(backend_name):
        model(x)
        model.backward(dy)
        want = _grads_by_name(model)
        model.zero_grad()
        model(x)
        assert model.backward_params(dy) is None
        got = _grads_by_name(model)
    assert list(got) == list(want)
    for n in want:
        if want[n] is None:
            assert got[n] is None, n
        else:
            np.testing.assert_allclose(got[n], want[n], rtol=1e-12, atol=1e-14, err_msg=n)
    assert (lin.weight.grad is None) == (layout == "frozen_again_later")


# -- a ResNet used twice ---------------------------------------------------------------------------

class Siamese(nn.Module):
    """``net(x1) + net(x2)``: a whole model called twice in one pass."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x[0]) + self.net(x[1])

    def backward(self, dy):
        return np.stack([self.net.backward(dy), self.net.backward(dy)][::-1])


def _small_resnet():
    mc.manual_seed(2)
    return ResNet((1, 1, 1, 1), num_classes=3, width=4).eval().to(np.float64)


def test_resnet_called_twice_gets_both_backward_calls(backend_name):
    net = _small_resnet()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 3, 32, 32))
    dy = rng.standard_normal((2, 3))
    with mc.backend(backend_name):
        pair = Siamese(net)
        pair(x)
        dx = pair.backward(dy)
        got = _grads_by_name(net)
        # the sum's gradients are the sum of each call's, computed one forward+backward at a time
        net.zero_grad()
        want_dx = []
        for xi in x:
            net(xi)
            want_dx.append(net.backward(dy))
        want = _grads_by_name(net)
    np.testing.assert_allclose(mc.to_numpy(dx), np.stack([mc.to_numpy(d) for d in want_dx]), rtol=1e-10, atol=1e-12)
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-10, atol=1e-12, err_msg=n)


def test_resnet_entry_points_are_one_pass_each():
    """forward_features / embed / activations run as one pass and pop the model's own cache."""
    net = _small_resnet()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    with mc.backend("numpy"):
        emb = net.embed(x)
        g = np.ones_like(emb)
        dx_embed = net.backward_from("avgpool", g)
        net.activations(x)
        dx_acts = net.backward_from("avgpool", g)
        with pytest.raises(RuntimeError, match="before a forward pass"):
            net.backward_from("avgpool", g)  # that forward's caches are used up
        with forward_pass():  # twice in one pass: two caches, popped newest first
            net.forward_features(x)
            net.forward_features(2 * x)
        d2 = net.backward_from("layer4", np.ones((2, 32, 1, 1)))
        d1 = net.backward_from("layer4", np.ones((2, 32, 1, 1)))
        net.forward_features(2 * x)
        np.testing.assert_array_equal(d2, net.backward_from("layer4", np.ones((2, 32, 1, 1))))
        net.forward_features(x)
        np.testing.assert_array_equal(d1, net.backward_from("layer4", np.ones((2, 32, 1, 1))))
    np.testing.assert_array_equal(dx_embed, dx_acts)


# -- gradcam on a Sequential with a shared module ---------------------------------------------------

def test_gradcam_on_a_sequential_with_a_shared_relu():
    mc.manual_seed(1)
    c1, c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)]
    relu = nn.ReLU()
    shared = nn.Sequential(c1, relu, c2, relu, *head)
    separate = nn.Sequential(c1, nn.ReLU(), c2, nn.ReLU(), *head)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with mc.backend("numpy"):
        cam_shared = gradcam.grad_cam(shared, x, class_idx=1, layer=3)
        cam_separate = gradcam.grad_cam(separate, x, class_idx=1, layer=3)
        ascent_shared = gradcam.gradient_ascent(shared, x, layer=3, channel=0, steps=2, rng=0)
        ascent_separate = gradcam.gradient_ascent(separate, x, layer=3, channel=0, steps=2, rng=0)
    assert cam_shared.shape == (2, 8, 8) and cam_shared.max() > 0
    np.testing.assert_allclose(cam_shared, cam_separate, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ascent_shared, ascent_separate, rtol=1e-6, atol=1e-7)


# -- memory: repeated forwards keep one pass's caches -----------------------------------------------

def _cached_entries(model):
    return sum(len(m._saved_stack) for m in model.modules())


def _cached_bytes(model):
    def size(obj):
        if hasattr(obj, "nbytes") and hasattr(obj, "shape"):  # any backend's array
            return obj.nbytes
        if isinstance(obj, tuple):
            return sum(size(o) for o in obj)
        return 0

    return sum(size(c) for m in model.modules() for _, c in m._saved_stack)


@pytest.mark.parametrize("which", ["digits", "shared_relu", "resnet_features"])
def test_repeated_eval_forwards_do_not_grow_memory(which, backend_name):
    rng = np.random.default_rng(0)
    if which == "resnet_features":
        model = _small_resnet().to(np.float32)
        x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
        call = model.forward_features
    else:
        model = digits_convnet().eval()
        if which == "shared_relu":  # one ReLU instance in all three places
            relu = model[1]
            model._modules["4"] = model._modules["8"] = relu
        x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
        call = model
    with mc.backend(backend_name):
        for _ in range(3):
            call(x)
        entries, per_call = _cached_entries(model), _cached_bytes(model)
        assert entries > 0 and per_call > 100_000  # one pass's caches: what a leak would add per call
        with _memory_in_use(backends.current()) as in_use:
            call(x)
            before = in_use()
            for _ in range(20):
                call(x)
                assert _cached_entries(model) == entries
            grown = in_use() - before
    assert grown < per_call // 4, (grown, per_call)


@contextlib.contextmanager
def _memory_in_use(be):
    """A function giving the bytes the backend's arrays hold now: host memory traced by
    tracemalloc in numpy's own domain (array data; not Python objects, which a kernel numba
    compiles during the calls adds by the megabyte) where numpy arrays are the backend's own,
    else the device memory CuPy's pool hands out (the only device backend)."""
    if be.is_native(np.empty(0)):
        arrays = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]

        def held():
            snap = tracemalloc.take_snapshot().filter_traces(arrays)
            return sum(stat.size for stat in snap.statistics("filename"))

        tracemalloc.start()
        try:
            yield held
        finally:
            tracemalloc.stop()
    else:
        import cupy

        yield cupy.get_default_memory_pool().used_bytes


def test_no_grad_keeps_nothing_and_drops_older_passes(backend_name):
    model, x, rng = _build("shared_activation")
    with mc.backend(backend_name):
        with mc.no_grad():
            model(x)
        assert _cached_entries(model) == 0
        model(x)  # a pass with gradients, then one without: the backward may not use the older one
        assert _cached_entries(model) > 0
        with mc.no_grad():
            model(x)
        assert _cached_entries(model) == 0
        with pytest.raises(RuntimeError, match="backward"):
            model.backward(np.ones((3, 4)))


# -- backward that does not match its forward --------------------------------------------------------

def test_forward_a_forward_b_backward_a(backend_name):
    mc.manual_seed(0)
    shared = nn.Linear(4, 4)
    a = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), shared).to(np.float64)
    b = nn.Sequential(nn.Tanh(), shared).to(np.float64)
    c = nn.Sequential(nn.Linear(4, 4), nn.Tanh()).to(np.float64)  # shares nothing with a
    rng = np.random.default_rng(0)
    xa, xb, dy = rng.standard_normal((3, 4)), rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    with mc.backend(backend_name):
        a(xa)
        want_dx = a.backward(dy)
        want = _grads_by_name(a)
        a.zero_grad()
        a(xa)
        b(xb)  # runs the shared layer in another pass: a's backward would mix two inputs
        with pytest.raises(RuntimeError, match="does not match its forward pass"):
            a.backward(dy)
        a.zero_grad()
        a(xa)
        c(xb)  # nothing shared: a's backward is unaffected
        dx = a.backward(dy)
        c.backward(dy)
    np.testing.assert_array_equal(mc.to_numpy(dx), mc.to_numpy(want_dx))
    got = _grads_by_name(a)
    for n in want:
        np.testing.assert_array_equal(got[n], want[n], err_msg=n)


def test_backward_with_nothing_left_to_pop_raises():
    model, x, _ = _build("shared_activation")
    with mc.backend("numpy"):
        model(x)
        model.backward(np.ones((3, 4)))
        with pytest.raises(RuntimeError, match=r"ReLU\(.*\): backward\(\) called before forward\(\), or more times"):
            model.backward(np.ones((3, 4)))
        relu = model[1]
        relu(x)
        relu.backward(np.ones_like(x))
        with pytest.raises(RuntimeError, match="more times than forward"):
            relu.backward(np.ones_like(x))
