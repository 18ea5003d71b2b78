"""Nothing above the op seam assumes numpy arrays: a fake device backend trains and infers unchanged.

The fake backend ("fakedevice") is registered with ``backends.register``. Its native array type,
``DeviceArray``, is an ndarray subclass standing for memory on a device: ``asarray`` wraps host
arrays, ``to_numpy`` returns plain ndarrays, and its ops are the numpy reference's, run on the
same numbers and wrapped to return ``DeviceArray``s. Host arrays are refused wherever a real
device library would refuse them: as an op input, and mixed with a ``DeviceArray`` in a numpy
ufunc or function. So a layer, an optimizer or a compiled model that lets a host array leak
past the seam fails here, and one that computes with the numpy module on device arrays is caught
by the type checks (every parameter, grad, buffer and optimizer state must be a ``DeviceArray``).
Since the ops are the reference's, every number must equal the same run on the numpy backend.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

import minicnn as mc
from minicnn import backends, inference, nn, optim
from minicnn import random as mc_random
from minicnn.models.resnet import ResNet
from minicnn.ops import OP_NAMES

FAKE = "fakedevice"


class DeviceArray(np.ndarray):
    """An array "on the device": numpy arithmetic works among DeviceArrays (and with Python or
    numpy scalars), but a plain host ndarray mixed in raises TypeError, as CuPy does."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _refuse_host(inputs, f"np.{ufunc.__name__}")
        args = [_plain(a) for a in inputs]
        if out is not None:
            _refuse_host(out, f"np.{ufunc.__name__}(out=...)")
            kwargs["out"] = tuple(_plain(o) for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        _refuse_host(list(args) + list(kwargs.values()), f"np.{func.__name__}")
        # run on plain views (numpy's own internals may mix in host temporaries), results back on the device
        return _wrap(func(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()}))


def _refuse_host(objs, where):
    for a in objs:
        if type(a) is np.ndarray:
            raise TypeError(f"{where}: a host np.ndarray of shape {a.shape} met a DeviceArray")
        if isinstance(a, (list, tuple)):
            _refuse_host(a, where)


def _plain(a):
    if isinstance(a, DeviceArray):
        return a.view(np.ndarray)
    if isinstance(a, tuple):
        return tuple(_plain(v) for v in a)
    if isinstance(a, list):
        return [_plain(v) for v in a]
    return a


def _wrap(a):
    """Results as device arrays; a numpy scalar becomes a 0-d array, as CuPy returns."""
    if isinstance(a, np.ndarray):
        return a if isinstance(a, DeviceArray) else a.view(DeviceArray)
    if isinstance(a, np.generic):
        return np.asarray(a).view(DeviceArray)
    if isinstance(a, tuple):
        return tuple(_wrap(v) for v in a)
    if isinstance(a, list):
        return [_wrap(v) for v in a]
    return a


# -- the fake backend -------------------------------------------------------------------------------

def _asarray(a):
    if isinstance(a, DeviceArray):
        return a
    backends.refuse_device_array(a, FAKE)
    return np.array(a, copy=True).view(DeviceArray)  # host -> device is a copy


def _to_numpy(a):
    if isinstance(a, DeviceArray):
        return np.array(a.view(np.ndarray), copy=True)
    return np.asarray(a)


def _empty(shape, dtype):
    return np.empty(shape, dtype).view(DeviceArray)


class _Calls:
    """What the fake backend saw: the generators dropout drew from, conv variants run."""

    def __init__(self):
        self.dropout_rngs = []
        self.variant_calls = 0


CALLS = _Calls()


def _device_op(name, fn):
    def op(*args, **kwargs):
        _refuse_host(list(args) + list(kwargs.values()), f"{FAKE}.{name}")
        if name.startswith("dropout") and name.endswith("_forward"):
            CALLS.dropout_rngs.append(args[2] if len(args) > 2 else kwargs["rng"])
        return _wrap(fn(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()}))

    op.__name__ = name
    return op


def _generator():
    """The backend's own generator, kept (and reseeded by manual_seed) by minicnn.random."""
    return mc_random.backend_generator(FAKE, lambda seed: np.random.default_rng(seed))


def _conv_variants(x_shape, w_shape, stride, padding, dilation, groups):
    """Two "algorithms" (the reference op, counted), so that the autotuner validates and times them."""
    ref = backends.load("numpy").OPS["conv2d_fused_forward"]

    def variant(*args, **kwargs):
        CALLS.variant_calls += 1
        return _device_op("conv2d_fused_forward", ref)(*args, **kwargs)

    return {"ref_a": variant, "ref_b": variant}


def _fake_module():
    ref = backends.load("numpy").OPS
    table = {name: _device_op(name, ref[name]) for name in OP_NAMES}
    table.update(asarray=_asarray, is_native=lambda a: isinstance(a, DeviceArray), to_numpy=_to_numpy,
                 empty=_empty, generator=_generator, conv_variants=_conv_variants)
    return types.SimpleNamespace(NAME=FAKE, OPS=table)


@pytest.fixture(scope="module")
def fake():
    be = backends.register(FAKE, _fake_module())
    yield be
    backends.unregister(FAKE)


def _host(a):
    assert type(a) is DeviceArray, f"expected a DeviceArray, got {type(a).__name__}"
    return a.view(np.ndarray)


# -- the registry and the fake itself ---------------------------------------------------------------

def test_register_selects_by_name_and_checks_the_table(fake):
    assert FAKE in backends.names() and FAKE not in backends.AVAILABLE
    with mc.backend(FAKE) as be:
        assert be is fake and mc.get_backend() == FAKE and backends.current() is fake
    assert mc.get_backend() != FAKE
    incomplete = types.SimpleNamespace(NAME="half", OPS={"relu_forward": lambda x: x})
    with pytest.raises(RuntimeError, match=r"backend 'half' lacks table entries: conv2d_forward, "):
        backends.register("half", incomplete)
    with pytest.raises(ValueError, match=r"unknown backend 'half'"):
        backends.load("half")
    with pytest.raises(ValueError, match=r"'numpy' is a built-in backend"):
        backends.register("numpy", _fake_module())
    unusable = _fake_module()
    unusable.unusable_reason = lambda: "no device here"
    with pytest.raises(RuntimeError, match=r"backend 'gone' is not usable here: no device here"):
        backends.register("gone", unusable)
    other = backends.register("fake2", _fake_module())
    assert backends.load("fake2") is other
    backends.unregister("fake2")
    with pytest.raises(ValueError, match=r"unknown backend 'fake2'"):
        backends.load("fake2")
    with pytest.raises(KeyError, match=r"no registered backend 'fake2'"):
        backends.unregister("fake2")


def test_the_fake_refuses_host_arrays(fake):
    """The checks the other tests rely on do fail on a host array."""
    host = np.ones((1, 2, 3, 3), np.float32)
    dev = fake.asarray(host)
    assert type(dev) is DeviceArray and type(backends.to_numpy(dev)) is np.ndarray
    assert backends.owner(dev) is fake
    with pytest.raises(TypeError, match=r"fakedevice.relu_forward: a host np.ndarray"):
        fake.relu_forward(host)
    with pytest.raises(TypeError, match=r"np.add: a host np.ndarray"):
        dev + host
    with pytest.raises(TypeError, match=r"np.concatenate: a host np.ndarray"):
        np.concatenate([dev, host])
    assert type(fake.relu_forward(dev)) is DeviceArray and type(dev.sum()) is DeviceArray
    assert type(np.sqrt(dev)) is DeviceArray and type(np.zeros_like(dev)) is DeviceArray
    # a plain ndarray belongs to a host backend, an object no backend knows to none
    assert backends.owner(host).NAME in ("numpy", "numba") and backends.owner([1.0]) is None


# -- training -----------------------------------------------------------------------------------------

def _convnet():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, affine=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 5),
    )


_DATA = np.random.default_rng(7)
X = _DATA.standard_normal((4, 3, 8, 8)).astype(np.float32)
Y_REG = _DATA.standard_normal((4, 5)).astype(np.float32)
Y_CLS = np.array([0, 3, 1, 4])

OPTIMIZERS = {
    "sgd": (optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "adam": (optim.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=1e-3)),
    "adamw": (optim.AdamW, dict(lr=1e-2)),
    "rmsprop": (optim.RMSprop, dict(lr=1e-3, momentum=0.5, centered=True, weight_decay=1e-3)),
}


def _train(backend, opt_name, loss_fn, y, steps=3):
    """A model and optimizer after ``steps`` training steps on ``backend``, with the losses.

    manual_seed(0) fixes the initial weights; manual_seed(1) before training fixes the dropout
    masks, drawn from the library Generator on numpy and from the backend's own on the fake."""
    mc.manual_seed(0)
    model = _convnet()
    cls, kw = OPTIMIZERS[opt_name]
    opt = cls(model.parameters(), **kw)
    mc.manual_seed(1)
    losses = []
    with mc.backend(backend):
        for _ in range(steps):
            model.zero_grad()
            losses.append(loss_fn(model(X), y))
            model.backward(loss_fn.backward())
            opt.step()
    return model, opt, losses


def _assert_on_device(model, opt):
    for name, p in model.named_parameters():
        assert type(p.data) is DeviceArray, name
        assert type(p.grad) is DeviceArray, name
    names = [n for n, _ in model.named_buffers()]
    assert "1._const_gamma" in names and "1._const_beta" in names
    for name, b in model.named_buffers():
        assert type(b) is DeviceArray, name
    assert opt.state
    for st in opt.state.values():
        for k, v in st.items():
            if hasattr(v, "shape"):
                assert type(v) is DeviceArray, k


def _assert_same_numbers(dev_model, ref_model):
    for (name, a), (_, b) in zip(dev_model.named_parameters(), ref_model.named_parameters()):
        np.testing.assert_array_equal(_host(a.data), b.data, err_msg=name)
        np.testing.assert_array_equal(_host(a.grad), b.grad, err_msg=name)
    for (name, a), (_, b) in zip(dev_model.named_buffers(), ref_model.named_buffers()):
        np.testing.assert_array_equal(_host(a), b, err_msg=name)


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_training_on_a_device_backend_stays_there_and_equals_numpy(fake, opt_name):
    CALLS.dropout_rngs.clear()
    dev, dev_opt, dev_losses = _train(FAKE, opt_name, nn.MSELoss(), Y_REG)
    # dropout drew from the backend's own generator, never from the library Generator
    assert len(CALLS.dropout_rngs) == 3 and all(r is fake.generator() for r in CALLS.dropout_rngs)
    assert CALLS.dropout_rngs[0] is not mc_random.get_rng()
    assert mc_random.get_rng().bit_generator.state == np.random.default_rng(1).bit_generator.state
    ref, ref_opt, ref_losses = _train("numpy", opt_name, nn.MSELoss(), Y_REG)
    assert dev_losses == ref_losses and dev_losses[-1] < dev_losses[0]
    _assert_on_device(dev, dev_opt)
    _assert_same_numbers(dev, ref)

    # state dicts come back as host arrays; loaded state goes back to the parameters' memory
    sd = dev_opt.state_dict()
    for st in sd["state"].values():
        for k, v in st.items():
            if hasattr(v, "shape"):
                assert type(v) is np.ndarray, k
    for k, v in dev.state_dict().items():
        assert type(v) is np.ndarray, k
    cls, kw = OPTIMIZERS[opt_name]
    again = cls(dev.parameters(), **kw)
    again.load_state_dict(sd)
    ref_again = cls(ref.parameters(), **kw)
    ref_again.load_state_dict(ref_opt.state_dict())
    for model, opt, name in ((dev, again, FAKE), (ref, ref_again, "numpy")):
        mc.manual_seed(2)  # the same dropout masks for both
        with mc.backend(name):
            model.zero_grad()
            loss_fn = nn.MSELoss()
            loss_fn(model(X), Y_REG)
            model.backward(loss_fn.backward())
            opt.step()
    _assert_on_device(dev, again)
    _assert_same_numbers(dev, ref)


def test_cross_entropy_step_on_a_device_backend(fake):
    dev, dev_opt, dev_losses = _train(FAKE, "sgd", nn.CrossEntropyLoss(), Y_CLS, steps=2)
    ref, _, ref_losses = _train("numpy", "sgd", nn.CrossEntropyLoss(), Y_CLS, steps=2)
    assert dev_losses == ref_losses
    _assert_on_device(dev, dev_opt)
    _assert_same_numbers(dev, ref)


def _fit(backend):
    mc.manual_seed(0)
    model = _convnet()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    rng = np.random.default_rng(3)
    X_all = rng.standard_normal((12, 3, 8, 8)).astype(np.float32)
    y_all = rng.integers(0, 5, 12)
    # the loader shuffles from its own seed, so that dropout alone draws from the seeded generators
    train = mc.DataLoader(X_all[:8], y_all[:8], batch_size=4, shuffle=True, seed=9)
    mc.manual_seed(1)
    with mc.backend(backend):
        hist = mc.fit(model, nn.CrossEntropyLoss(), opt, train, val=(X_all[8:], y_all[8:]),
                      epochs=2, batch_size=4, scheduler=sched, progress=False)
        scores = mc.evaluate(model, nn.CrossEntropyLoss(), (X_all, y_all))
        pred = mc.predict(model, X_all, batch_size=5)
    return model, opt, dict(hist), scores, pred


def test_fit_evaluate_predict_on_a_device_backend(fake):
    dev, dev_opt, hist, scores, pred = _fit(FAKE)
    ref, _, ref_hist, ref_scores, ref_pred = _fit("numpy")
    assert hist == ref_hist and scores == ref_scores
    assert type(pred) is np.ndarray and np.array_equal(pred, ref_pred)
    _assert_on_device(dev, dev_opt)
    _assert_same_numbers(dev, ref)


def test_manual_seed_reseeds_the_backend_generator(fake):
    mc.manual_seed(5)
    g = fake.generator()
    assert fake.generator() is g and g is not mc_random.get_rng()
    first = g.random(4)
    assert np.array_equal(first, np.random.default_rng(5).random(4))
    assert not np.array_equal(fake.generator().random(4), first)  # the stream continues
    mc.manual_seed(5)
    assert fake.generator() is not g and np.array_equal(fake.generator().random(4), first)
    assert mc_random.initial_seed() == 5
    # the host backends keep the library Generator (their masks are unchanged for a seed)
    for name in ("numpy", "numba"):
        assert backends.load(name).generator() is mc_random.get_rng()


def test_batchnorm_without_affine_keeps_its_constants_as_buffers(fake):
    bn = nn.BatchNorm2d(3, affine=False)
    assert list(bn.state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]
    assert bn.weight is None and bn.bias is None and not list(bn.parameters())
    bn.to(np.float64)
    assert bn._const_gamma.dtype == np.float64 and bn._const_beta.dtype == np.float64
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 4))
    with mc.backend("numpy"):
        want = np.array(bn(x))
        dx_want = bn.backward(np.ones_like(x))
    bn2 = nn.BatchNorm2d(3, affine=False).to(np.float64)
    with mc.backend(FAKE):
        got = bn2(x)
        dx = bn2.backward(fake.asarray(np.ones_like(x)))  # backward takes dy where the forward left y
    assert type(got) is DeviceArray and got.dtype == np.float64
    np.testing.assert_array_equal(_host(got), want)
    np.testing.assert_array_equal(_host(dx), dx_want)
    for name, b in bn2.named_buffers():
        assert type(b) is DeviceArray, name
    np.testing.assert_array_equal(_host(bn2.running_var), bn.running_var)
    assert bn2.state_dict().keys() == bn.state_dict().keys()


# -- inference ------------------------------------------------------------------------------------------

def _small_resnet():
    mc.manual_seed(4)
    model = ResNet(num_classes=10, width=8)
    rng = np.random.default_rng(4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = rng.uniform(0.5, 1.5, c).astype(np.float32)
            m.bias.data = (rng.standard_normal(c) * 0.1).astype(np.float32)
            m._set_buffer("running_mean", (rng.standard_normal(c) * 0.1).astype(np.float32))
            m._set_buffer("running_var", rng.uniform(0.5, 1.5, c).astype(np.float32))
    return model.eval()


def test_compile_inference_on_a_device_backend_equals_the_eval_model(fake):
    model = _small_resnet()
    x = np.random.default_rng(5).standard_normal((2, 3, 40, 36)).astype(np.float32)
    with mc.backend("numpy"), mc.no_grad():
        want = model(x)
    fast = inference.compile_inference(model)
    CALLS.variant_calls = 0
    with mc.backend(FAKE), mc.no_grad():
        eval_dev = model(x)
        got = fast(x)
        got_again = fast(x)
        emb = fast.embed(x)
    assert CALLS.variant_calls > 0  # the autotuner checked and timed the variants on device arrays
    for a in (eval_dev, got, got_again, emb):
        assert type(a) is DeviceArray
    np.testing.assert_array_equal(_host(eval_dev), want)
    np.testing.assert_allclose(_host(got), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(_host(got_again), _host(got))
    assert {name for name, _ in (p for conv in fast.convs() for p in conv.chosen.values())} <= {"ref_a", "ref_b"}


def test_cat_and_unpool_move_host_arrays_to_the_device(fake):
    """What a user hands in from the host (a skip tensor to ``cat``, unpooling indices) moves to the
    device, as a module's input does, instead of meeting a device array as a host one."""
    from minicnn.models.segmentation import cat

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 1, 3, 4)).astype(np.float32), rng.standard_normal((2, 2, 3, 4)).astype(np.float32)
    x = rng.standard_normal((1, 2, 4, 6)).astype(np.float32)
    dz = rng.standard_normal((1, 2, 4, 6)).astype(np.float32)
    with mc.backend("numpy"):
        y_ref, idx_ref = nn.MaxPool2d(2, return_indices=True)(x)
        unpool = nn.MaxUnpool2d(2)
        z_ref = unpool(y_ref, idx_ref)
        dy_ref = unpool.backward(dz)
    with mc.backend(FAKE):
        out = cat([a, fake.asarray(b)], axis=1)
        np.testing.assert_array_equal(_host(out), np.concatenate([a, b], axis=1))
        y, idx = nn.MaxPool2d(2, return_indices=True)(x)
        unpool = nn.MaxUnpool2d(2)
        z = unpool(y, backends.to_numpy(idx))
        np.testing.assert_array_equal(_host(z), z_ref)
        np.testing.assert_array_equal(_host(unpool.backward(fake.asarray(dz))), dy_ref)
