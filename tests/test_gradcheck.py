"""Every layer's and loss's hand-written backward against central differences, in float64.

Also: gradients accumulate across backward calls, frozen parameters get no gradient while dx
still flows, and backward after a ``no_grad`` forward raises.
"""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minicnn as mc
from gradcheck import check_layer, check_loss, eval_numerical_gradient_array, rel_error, windows_reach_input
from minicnn import nn


def _distinct(rng, shape, step=0.01):
    """Values at least ``step`` apart, so max pooling never sees a tie (or a near-tie within h)."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2) * step


def _away_from_zero(rng, shape, margin=0.05):
    """Random values with |v| >= margin, keeping ReLU's kink out of every central difference."""
    v = rng.uniform(margin, 2.0, shape)
    return v * rng.choice([-1.0, 1.0], shape)


# -- the helper itself -------------------------------------------------------------------------

def test_numerical_gradient_of_known_function():
    """d/dx sum(x**3 * df) = 3 x**2 df: the helper must reproduce it."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    df = rng.standard_normal((3, 4))
    num = eval_numerical_gradient_array(lambda v: v**3, x.copy(), df)
    assert rel_error(3 * x**2 * df, num) < 1e-8
    assert rel_error(2 * x**2 * df, num) > 0.1


@pytest.mark.parametrize("against", ["numeric", "reference"])
def test_gradcheck_catches_a_wrong_backward(backend_name, against):
    if against == "reference" and backend_name == "numpy":
        pytest.skip("the numpy backend is the reference; it is checked numerically")

    class BadLinear(nn.Linear):
        def backward(self, dy):
            dx = super().backward(dy)
            if mc.get_backend() != "numpy" or against == "numeric":
                self.weight.grad *= 1.01  # a 1% error must not pass
            return dx

    with mc.backend(backend_name):
        layer = BadLinear(3, 2)
        with pytest.raises(AssertionError, match="weight"):
            check_layer(layer, np.random.default_rng(0).standard_normal((4, 3)), against=against)


# -- convolution ---------------------------------------------------------------------------------

@st.composite
def conv_configs(draw):
    groups = draw(st.integers(1, 3))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    # input at least as large as the dilated kernel after padding, odd sizes included
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 7))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 7))
    n = draw(st.integers(1, 2))
    bias = draw(st.booleans())
    return dict(n=n, cin=cin, cout=cout, h=h, w=w, k=(kh, kw), stride=(sh, sw), padding=(ph, pw),
                dilation=(dh, dw), groups=groups, bias=bias)


@given(cfg=conv_configs(), seed=st.integers(0, 2**16))
def test_conv2d(backend_name, cfg, seed):
    rng = np.random.default_rng(seed)
    with mc.backend(backend_name):
        layer = nn.Conv2d(cfg["cin"], cfg["cout"], cfg["k"], cfg["stride"], cfg["padding"], cfg["dilation"],
                          cfg["groups"], cfg["bias"])
        errs = check_layer(layer, rng.standard_normal((cfg["n"], cfg["cin"], cfg["h"], cfg["w"])), rng=rng)
    assert set(errs) - {"y"} == {"x", "weight"} | ({"bias"} if cfg["bias"] else set())


def test_conv2d_batch1_odd_sizes(backend_name):
    rng = np.random.default_rng(3)
    with mc.backend(backend_name):
        layer = nn.Conv2d(3, 5, (3, 2), stride=(2, 3), padding=(1, 2), dilation=(2, 1))
        check_layer(layer, rng.standard_normal((1, 3, 9, 7)), rng=rng)


# -- batch norm --------------------------------------------------------------------------------

@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 2, 3), (1, 2, 3, 1), (3, 1, 1, 1)])
def test_batchnorm2d_train(backend_name, shape, affine):
    rng = np.random.default_rng(4)
    with mc.backend(backend_name):
        layer = nn.BatchNorm2d(shape[1], affine=affine).train()
        if affine:
            layer.weight.data = rng.uniform(0.5, 1.5, shape[1]).astype(np.float32)
            layer.bias.data = rng.standard_normal(shape[1]).astype(np.float32)
        errs = check_layer(layer, 3 * rng.standard_normal(shape) + 1, rng=rng)
    assert set(errs) - {"y"} == ({"x", "weight", "bias"} if affine else {"x"})


@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm2d_eval(backend_name, affine):
    rng = np.random.default_rng(5)
    with mc.backend(backend_name):
        layer = nn.BatchNorm2d(3, affine=affine)
        layer.load_state_dict({
            **({"weight": rng.uniform(0.5, 1.5, 3), "bias": rng.standard_normal(3)} if affine else {}),
            "running_mean": rng.standard_normal(3), "running_var": rng.uniform(0.2, 2.0, 3),
        })
        layer.eval()
        check_layer(layer, rng.standard_normal((2, 3, 3, 2)), rng=rng)


def test_batchnorm2d_no_running_stats_in_eval(backend_name):
    """track_running_stats=False normalises with batch statistics even in eval mode."""
    rng = np.random.default_rng(6)
    with mc.backend(backend_name):
        layer = nn.BatchNorm2d(2, track_running_stats=False).eval()
        check_layer(layer, rng.standard_normal((3, 2, 2, 2)), rng=rng)


# -- activations ----------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Identity], ids=lambda c: c.__name__)
def test_activations(backend_name, make):
    rng = np.random.default_rng(7)
    x = _away_from_zero(rng, (2, 3, 4, 5))
    x[0, 0, 0, :3] = [-30.0, 30.0, 8.0]  # saturated sigmoid/tanh must still be right
    with mc.backend(backend_name):
        check_layer(make(), x, rng=rng)


# -- pooling ---------------------------------------------------------------------------------------

@st.composite
def pool_configs(draw, with_dilation=True):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    dh, dw = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if with_dilation else (1, 1)
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 8))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 8))
    # a dilated window that sees only padding is refused by MaxPool2d (tested in test_bad_input)
    assume(windows_reach_input(h, kh, sh, ph, dh) and windows_reach_input(w, kw, sw, pw, dw))
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 2)), h, w), k=(kh, kw), stride=(sh, sw),
                padding=(ph, pw), dilation=(dh, dw))


@given(cfg=pool_configs(), seed=st.integers(0, 2**16))
def test_maxpool2d(backend_name, cfg, seed):
    rng = np.random.default_rng(seed)
    with mc.backend(backend_name):
        layer = nn.MaxPool2d(cfg["k"], cfg["stride"], cfg["padding"], cfg["dilation"])
        check_layer(layer, _distinct(rng, cfg["shape"]), rng=rng)


@given(cfg=pool_configs(with_dilation=False), include_pad=st.booleans(), seed=st.integers(0, 2**16))
def test_avgpool2d(backend_name, cfg, include_pad, seed):
    rng = np.random.default_rng(seed)
    with mc.backend(backend_name):
        layer = nn.AvgPool2d(cfg["k"], cfg["stride"], cfg["padding"], count_include_pad=include_pad)
        check_layer(layer, rng.standard_normal(cfg["shape"]), rng=rng)


adaptive_sizes = st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 9), st.integers(1, 9))


@given(sizes=adaptive_sizes, seed=st.integers(0, 2**16))
def test_adaptive_avgpool2d(backend_name, sizes, seed):
    h, w, oh, ow = sizes
    rng = np.random.default_rng(seed)
    with mc.backend(backend_name):
        check_layer(nn.AdaptiveAvgPool2d((oh, ow)), rng.standard_normal((2, 2, h, w)), rng=rng)


@given(sizes=adaptive_sizes, seed=st.integers(0, 2**16))
def test_adaptive_maxpool2d(backend_name, sizes, seed):
    h, w, oh, ow = sizes
    rng = np.random.default_rng(seed)
    with mc.backend(backend_name):
        check_layer(nn.AdaptiveMaxPool2d((oh, ow)), _distinct(rng, (2, 2, h, w)), rng=rng)


def test_adaptive_pool_none_keeps_that_dim(backend_name):
    rng = np.random.default_rng(8)
    with mc.backend(backend_name):
        layer = nn.AdaptiveAvgPool2d((None, 2))
        y = layer(rng.standard_normal((1, 1, 3, 5)))
        assert y.shape == (1, 1, 3, 2)
        check_layer(layer, rng.standard_normal((1, 2, 3, 5)), rng=rng)


# -- linear, flatten, dropout, sequential ------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_linear(backend_name, bias):
    rng = np.random.default_rng(9)
    with mc.backend(backend_name):
        check_layer(nn.Linear(5, 3, bias=bias), rng.standard_normal((4, 5)), rng=rng)


@pytest.mark.parametrize("dims", [(1, -1), (0, -1), (2, 3), (1, 2)])
def test_flatten(backend_name, dims):
    rng = np.random.default_rng(10)
    with mc.backend(backend_name):
        check_layer(nn.Flatten(*dims), rng.standard_normal((2, 3, 2, 2)), rng=rng)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_dropout_train(backend_name, p):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 3, 3, 3))
    with mc.backend(backend_name):
        layer = nn.Dropout(p).train()
        check_layer(layer, x, reseed=123, rng=rng)
        mc.manual_seed(123)
        y = mc.to_numpy(layer(x))
    kept = y != 0
    if 0 < p < 1:
        assert 0 < kept.sum() < x.size  # a fixed seed with 108 units both drops and keeps some
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p) if p < 1 else x[kept], rtol=1e-12)


def test_dropout_eval_is_identity(backend_name):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 5))
    with mc.backend(backend_name):
        layer = nn.Dropout(0.5).eval()
        np.testing.assert_array_equal(mc.to_numpy(layer(x.astype(np.float32))), x.astype(np.float32))
        check_layer(layer, x, rng=rng)


def test_sequential_smooth(backend_name):
    rng = np.random.default_rng(13)
    with mc.backend(backend_name):
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(3, 4, 2, groups=1), nn.Sigmoid(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
        )
        errs = check_layer(model, rng.standard_normal((2, 2, 6, 6)), rng=rng)
    assert {"0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "8.weight", "8.bias"} <= set(errs)


def test_sequential_relu_maxpool(backend_name):
    rng = np.random.default_rng(14)
    with mc.backend(backend_name):
        model = nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
            nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2),
        )
        check_layer(model, rng.standard_normal((3, 1, 4, 4)), reseed=5, rng=rng)


# -- losses ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy(backend_name, reduction):
    rng = np.random.default_rng(15)
    logits = 3 * rng.standard_normal((5, 4))
    targets = rng.integers(0, 4, 5)
    with mc.backend(backend_name):
        check_loss(nn.CrossEntropyLoss(reduction=reduction), logits, targets)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_with_logits(backend_name, reduction):
    rng = np.random.default_rng(16)
    logits = 4 * rng.standard_normal((3, 5))
    targets = rng.uniform(0, 1, (3, 5))
    targets[0] = rng.integers(0, 2, 5)
    with mc.backend(backend_name):
        check_loss(nn.BCEWithLogitsLoss(reduction=reduction), logits, targets)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse(backend_name, reduction):
    rng = np.random.default_rng(17)
    with mc.backend(backend_name):
        check_loss(nn.MSELoss(reduction=reduction), rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 2)))


def test_loss_then_model_end_to_end(backend_name):
    """dL/dx through a model with the loss on top, against differences of the scalar loss."""
    rng = np.random.default_rng(18)
    x = rng.standard_normal((3, 1, 5, 5))
    t = np.array([0, 2, 1])
    with mc.backend(backend_name):
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(18, 3)).to(np.float64)
        loss_fn = nn.CrossEntropyLoss().to(np.float64)
        loss_fn(model(x), t)
        dx = mc.to_numpy(model.backward(loss_fn.backward()))
        num = eval_numerical_gradient_array(lambda v: loss_fn(model(v), t), x.copy(), 1.0)
    assert rel_error(dx, num) < 1e-6


# -- accumulation, freezing, no_grad -----------------------------------------------------------

def _layers_with_params():
    return [
        lambda: nn.Conv2d(2, 3, 3, padding=1),
        lambda: nn.BatchNorm2d(2),
        lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(18, 2)),
    ]


@pytest.mark.parametrize("make", _layers_with_params(), ids=["conv", "bn", "seq"])
def test_backward_accumulates(backend_name, make):
    rng = np.random.default_rng(19)
    x1, x2 = rng.standard_normal((2, 2, 2, 3, 3))
    # random upstream gradients: with a constant one, batchnorm's weight gradient sum(dy * x_hat)
    # is zero up to round-off (x_hat sums to zero per channel), and "nonzero" would test the rounding
    with mc.backend(backend_name):
        layer = make().to(np.float64)
        dys = [rng.standard_normal(mc.to_numpy(layer(x)).shape) for x in (x1, x2)]
        grads = []
        for x, dy in zip((x1, x2), dys):
            layer.zero_grad()
            layer(x)
            layer.backward(dy)
            grads.append({n: mc.to_numpy(p.grad).copy() for n, p in layer.named_parameters()})
        layer.zero_grad()
        for x, dy in zip((x1, x2), dys):
            layer(x)
            layer.backward(dy)
        for n, p in layer.named_parameters():
            np.testing.assert_allclose(mc.to_numpy(p.grad), grads[0][n] + grads[1][n], rtol=1e-12, atol=1e-12,
                                       err_msg=n)
            assert np.abs(grads[0][n]).sum() > 0, n


def test_linear_accumulates_in_linear_layer(backend_name):
    with mc.backend(backend_name):
        layer = nn.Linear(3, 2).to(np.float64)
        x = np.arange(6.0).reshape(2, 3)
        layer(x)
        layer.backward(np.ones((2, 2)))
        layer(x)
        layer.backward(np.ones((2, 2)))
        np.testing.assert_allclose(mc.to_numpy(layer.weight.grad), 2 * np.tile(x.sum(0), (2, 1)))
        np.testing.assert_allclose(mc.to_numpy(layer.bias.grad), [4.0, 4.0])


@pytest.mark.parametrize("make", _layers_with_params(), ids=["conv", "bn", "seq"])
def test_frozen_parameters_get_no_grad_but_dx_flows(backend_name, make):
    rng = np.random.default_rng(20)
    x = rng.standard_normal((2, 2, 3, 3))
    with mc.backend(backend_name):
        layer = make().to(np.float64)
        y = mc.to_numpy(layer(x))
        dy = rng.standard_normal(y.shape)
        dx_ref = mc.to_numpy(layer.backward(dy)).copy()
        names = [n for n, _ in layer.named_parameters()]
        frozen = names[0]
        layer.zero_grad()
        dict(layer.named_parameters())[frozen].requires_grad = False
        layer(x)
        dx = mc.to_numpy(layer.backward(dy))
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-14)
        for n, p in layer.named_parameters():
            assert (p.grad is None) == (n == frozen), n
        layer.zero_grad()
        layer.freeze()
        layer(x)
        dx = mc.to_numpy(layer.backward(dy))
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-14)
        assert all(p.grad is None for p in layer.parameters())
        layer.unfreeze()
        layer(x)
        layer.backward(dy)
        assert all(p.grad is not None for p in layer.parameters())


def _no_grad_cases():
    x4 = np.random.default_rng(21).standard_normal((2, 2, 4, 4)).astype(np.float32)
    return [
        ("conv", lambda: nn.Conv2d(2, 2, 3), x4),
        ("bn-train", lambda: nn.BatchNorm2d(2), x4),
        ("bn-eval", lambda: nn.BatchNorm2d(2).eval(), x4),
        ("relu", nn.ReLU, x4),
        ("sigmoid", nn.Sigmoid, x4),
        ("tanh", nn.Tanh, x4),
        ("maxpool", lambda: nn.MaxPool2d(2), x4),
        ("avgpool", lambda: nn.AvgPool2d(2), x4),
        ("adaptive-avg", lambda: nn.AdaptiveAvgPool2d(1), x4),
        ("adaptive-max", lambda: nn.AdaptiveMaxPool2d(3), x4),
        ("linear", lambda: nn.Linear(4, 2), x4[:, 0, 0]),
        ("flatten", nn.Flatten, x4),
        ("dropout", lambda: nn.Dropout(0.5), x4),
        ("sequential", lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(), nn.Flatten()), x4),
    ]


@pytest.mark.parametrize("name,make,x", _no_grad_cases(), ids=[c[0] for c in _no_grad_cases()])
def test_backward_after_no_grad_forward_raises(backend_name, name, make, x):
    with mc.backend(backend_name):
        layer = make()
        y = mc.to_numpy(layer(x))
        layer.backward(np.ones_like(y))  # works after a normal forward
        with mc.no_grad():
            assert not mc.is_grad_enabled()
            y2 = mc.to_numpy(layer(x))
        assert mc.is_grad_enabled()
        if name not in ("bn-train", "dropout"):  # batch statistics / fresh masks differ per call
            np.testing.assert_array_equal(y2, y)
        # the earlier cache must not be reused silently: backward now has nothing to work from
        with pytest.raises(RuntimeError, match=r"backward\(\)"):
            layer.backward(np.ones_like(y))


@pytest.mark.parametrize("make,args", [
    (nn.CrossEntropyLoss, (np.zeros((2, 3)), np.array([0, 2]))),
    (nn.MSELoss, (np.zeros((2, 3)), np.ones((2, 3)))),
    (nn.BCEWithLogitsLoss, (np.zeros((2, 3)), np.ones((2, 3)))),
], ids=["ce", "mse", "bce"])
def test_loss_backward_after_no_grad_raises(backend_name, make, args):
    with mc.backend(backend_name):
        loss_fn = make()
        with mc.no_grad():
            value = loss_fn(*args)
        assert np.isfinite(value)
        with pytest.raises(RuntimeError, match=r"backward\(\)"):
            loss_fn.backward()
