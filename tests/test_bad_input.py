"""Bad input gets a clear error that names the layer and, where shapes are involved, both shapes."""
import re

import numpy as np
import pytest

import minicnn as mc
from minicnn import nn


def _raises(exc, fn, *parts):
    """Call ``fn``, expect ``exc``, and check every string in ``parts`` appears in the message."""
    with pytest.raises(exc) as err:
        fn()
    msg = str(err.value)
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


# -- shapes at the layer boundary ------------------------------------------------------------

@pytest.mark.parametrize("make,x,expected", [
    (lambda: nn.Conv2d(3, 4, 3), np.zeros((3, 5, 5)), "(N, 3, H, W)"),
    (lambda: nn.Conv2d(3, 4, 3), np.zeros((1, 1, 3, 5, 5)), "(N, 3, H, W)"),
    (lambda: nn.BatchNorm2d(3), np.zeros((2, 3)), "(N, 3, H, W)"),
    (lambda: nn.MaxPool2d(2), np.zeros((2, 5, 5)), "(N, C, H, W)"),
    (lambda: nn.AvgPool2d(2), np.zeros((5, 5)), "(N, C, H, W)"),
    (lambda: nn.AdaptiveAvgPool2d(2), np.zeros((2, 5)), "(N, C, H, W)"),
    (lambda: nn.AdaptiveMaxPool2d(2), np.zeros((1, 2, 5)), "(N, C, H, W)"),
], ids=["conv-3d", "conv-5d", "bn-2d", "maxpool-3d", "avgpool-2d", "adaptive-avg",
        "adaptive-max"])
def test_wrong_rank(backend_name, make, x, expected):
    with mc.backend(backend_name):
        layer = make()
        msg = _raises(ValueError, lambda: layer(x), type(layer).__name__ + "(", expected, str(x.shape), "-D")
    assert msg.startswith(layer._short())


@pytest.mark.parametrize("make,x,expected", [
    (lambda: nn.Conv2d(3, 4, 3), np.zeros((2, 4, 5, 5)), "(N, 3, H, W)"),
    (lambda: nn.Conv2d(6, 4, 3, groups=2), np.zeros((2, 3, 5, 5)), "(N, 6, H, W)"),
    (lambda: nn.BatchNorm2d(3), np.zeros((2, 4, 5, 5)), "(N, 3, H, W)"),
    (lambda: nn.Linear(4, 2), np.zeros((2, 5)), "(N, 4)"),
], ids=["conv", "conv-groups", "bn", "linear"])
def test_wrong_channels_or_features(backend_name, make, x, expected):
    with mc.backend(backend_name):
        layer = make()
        _raises(ValueError, lambda: layer(x), type(layer).__name__ + "(", expected, str(x.shape))


def test_sequential_reports_the_failing_layer():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(10, 2))
    _raises(ValueError, lambda: net(np.zeros((1, 1, 5, 5))), "Linear(in_features=10", "(N, 10)", "(1, 18)")


@pytest.mark.parametrize("make,x,what", [
    (lambda: nn.Conv2d(3, 4, 5), np.zeros((1, 3, 3, 3)), "(5, 5)"),
    (lambda: nn.Conv2d(3, 4, 3, dilation=3), np.zeros((1, 3, 6, 9)), "(7, 7)"),
    (lambda: nn.Conv2d(3, 4, (1, 3), padding=(0, 1)), np.zeros((1, 3, 4, 0)), "(1, 3)"),
    (lambda: nn.MaxPool2d(4), np.zeros((1, 3, 3, 3)), "pooling window"),
    (lambda: nn.MaxPool2d(2, dilation=3), np.zeros((1, 3, 3, 3)), "pooling window"),
    (lambda: nn.AvgPool2d((2, 4)), np.zeros((1, 3, 8, 3)), "pooling window"),
], ids=["conv", "conv-dilated", "conv-empty", "maxpool", "maxpool-dilated", "avgpool"])
def test_input_smaller_than_kernel(backend_name, make, x, what):
    with mc.backend(backend_name):
        layer = make()
        _raises(ValueError, lambda: layer(x), type(layer).__name__ + "(", str(x.shape), "smaller", what)


def test_maxpool_window_of_only_padding(backend_name):
    """Dilation 2 and padding 1 over one row: the window's taps are rows -1 and 1, both padding."""
    with mc.backend(backend_name):
        layer = nn.MaxPool2d((2, 1), stride=1, padding=(1, 0), dilation=(2, 1))
        _raises(ValueError, lambda: layer(np.zeros((1, 1, 1, 3))), "MaxPool2d(", "(1, 1, 1, 3)",
                "row 0", "only padding", "dilation=(2, 1)")
        assert layer(np.zeros((1, 1, 3, 3))).shape == (1, 1, 3, 3)  # taller input: every window reaches a row


def test_batchnorm_needs_two_values_per_channel_in_training(backend_name):
    with mc.backend(backend_name):
        bn = nn.BatchNorm2d(3)
        _raises(ValueError, lambda: bn(np.zeros((1, 3, 1, 1))), "BatchNorm2d(", "(1, 3, 1, 1)")
        assert bn.eval()(np.zeros((1, 3, 1, 1))).shape == (1, 3, 1, 1)  # eval uses running statistics


# -- backward before forward ---------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(1, 1, 1), lambda: nn.BatchNorm2d(1), nn.ReLU, nn.Sigmoid, nn.Tanh,
    lambda: nn.MaxPool2d(2), lambda: nn.AvgPool2d(2), lambda: nn.AdaptiveAvgPool2d(1),
    lambda: nn.AdaptiveMaxPool2d(1), lambda: nn.Linear(1, 1), nn.Flatten, nn.Dropout,
    lambda: nn.Sequential(nn.Linear(1, 1), nn.ReLU()),
    nn.CrossEntropyLoss, nn.BCEWithLogitsLoss, nn.MSELoss,
], ids=["conv", "bn", "relu", "sigmoid", "tanh", "maxpool", "avgpool", "adaptive-avg", "adaptive-max", "linear",
        "flatten", "dropout", "sequential", "ce", "bce", "mse"])
def test_backward_before_forward(make):
    layer = make()
    dy = np.zeros((1, 1, 1, 1), np.float32)
    if isinstance(layer, (nn.CrossEntropyLoss, nn.BCEWithLogitsLoss, nn.MSELoss)):
        msg = _raises(RuntimeError, layer.backward, "backward() called before forward()")
    else:
        msg = _raises(RuntimeError, lambda: layer.backward(dy), "backward() called before forward()")
    assert re.match(r"[A-Z]\w+\(", msg), msg  # names the layer


# -- dtypes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.float16, np.float64, bool])
def test_real_input_is_converted_to_the_module_dtype(backend_name, dtype):
    """The rule in module.py: any real dtype is converted to the module's dtype on entry."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (2, 3, 5, 5)).astype(dtype)
    with mc.backend(backend_name):
        net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 2))
        y = mc.to_numpy(net(x))
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, mc.to_numpy(net(x.astype(np.float32))), rtol=1e-6)
        y64 = mc.to_numpy(net.to(np.float64)(x))
        assert y64.dtype == np.float64
        np.testing.assert_allclose(y64, y, rtol=1e-5, atol=1e-6)


def test_nested_lists_are_accepted(backend_name):
    with mc.backend(backend_name):
        y = mc.to_numpy(nn.ReLU()([[-1, 2], [3, -4]]))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[0, 2], [3, 0]])


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.Conv2d(1, 1, 1), (1, 1, 2, 2)), (nn.ReLU, (2, 2)), (lambda: nn.Linear(2, 1), (1, 2)),
    (lambda: nn.BatchNorm2d(1), (2, 1, 1, 1)), (lambda: nn.MaxPool2d(1), (1, 1, 1, 1)), (nn.Flatten, (1, 2)),
], ids=["conv", "relu", "linear", "bn", "maxpool", "flatten"])
def test_complex_input_raises_type_error(backend_name, make, shape):
    with mc.backend(backend_name):
        layer = make()
        _raises(TypeError, lambda: layer(np.zeros(shape, np.complex64)), type(layer).__name__, "complex")


def test_losses_reject_complex():
    _raises(TypeError, lambda: nn.CrossEntropyLoss()(np.zeros((2, 3), complex), [0, 1]), "complex")
    _raises(TypeError, lambda: nn.MSELoss()(np.zeros(2), np.zeros(2, complex)), "complex")


# -- losses ------------------------------------------------------------------------------------------

def test_cross_entropy_targets():
    ce = nn.CrossEntropyLoss()
    logits = np.zeros((3, 4), np.float32)
    _raises(ValueError, lambda: ce(logits, np.array([0.5, 1.0, 2.0])), "integer", "float64")
    _raises(ValueError, lambda: ce(logits, np.array([0, 1, np.nan])), "integer")
    _raises(ValueError, lambda: ce(logits, np.array([True, False, True])), "integer", "bool")
    _raises(ValueError, lambda: ce(logits, np.array([0, 4, 1])), "[0, 4)", "max 4")
    _raises(ValueError, lambda: ce(logits, np.array([0, -1, 1])), "[0, 4)", "min -1")
    _raises(ValueError, lambda: ce(logits, np.array([0, 1])), "(3, 4)", "(3,)", "(2,)")
    _raises(ValueError, lambda: ce(logits, np.array([[0], [1], [2]])), "(3,)", "(3, 1)")
    # (N, C, d1) logits need (N, d1) targets (segmentation layout)
    _raises(ValueError, lambda: ce(np.zeros((3, 4, 1)), np.array([0, 1, 2])), "(3, 4, 1)", "(3, 1)", "(3,)")
    # integer-valued floats and plain lists are fine, and mean what they say
    assert ce(logits, np.array([0.0, 3.0, 1.0])) == pytest.approx(np.log(4), rel=1e-6)
    assert ce(logits, [0, 3, 1]) == pytest.approx(np.log(4), rel=1e-6)


@pytest.mark.parametrize("make", [nn.MSELoss, nn.BCEWithLogitsLoss])
def test_elementwise_loss_shape_mismatch(make):
    _raises(ValueError, lambda: make()(np.zeros((2, 3)), np.zeros((3, 2))), make.__name__, "(2, 3)", "(3, 2)")
    _raises(ValueError, lambda: make()(np.zeros((4, 1)), np.zeros(4)), "(4, 1)", "(4,)")


@pytest.mark.parametrize("make", [nn.CrossEntropyLoss, nn.MSELoss, nn.BCEWithLogitsLoss])
def test_loss_reduction_must_be_known(make):
    _raises(ValueError, lambda: make(reduction="avg"), make.__name__, "'avg'", "'none', 'mean' or 'sum'")


# -- constructor arguments ------------------------------------------------------------------------------

@pytest.mark.parametrize("cin,cout,groups", [(4, 6, 3), (3, 6, 2), (4, 4, 0), (4, 4, -2)])
def test_conv_groups_must_divide_channels(cin, cout, groups):
    _raises(ValueError, lambda: nn.Conv2d(cin, cout, 3, groups=groups), "Conv2d", f"({cin})", f"({cout})",
            f"groups ({groups})")


@pytest.mark.parametrize("kwargs,part", [
    (dict(kernel_size=(3, 3, 3)), "kernel_size"),
    (dict(kernel_size=3, stride=0), "stride"),
    (dict(kernel_size=0), "kernel_size"),
    (dict(kernel_size=3, padding=-1), "padding"),
    (dict(kernel_size=3, padding="full"), "'full'"),
    (dict(kernel_size=3, padding="same", stride=2), "same"),
    (dict(kernel_size=3, dilation=1.5), "dilation"),
])
def test_conv_bad_arguments(kwargs, part):
    _raises(ValueError, lambda: nn.Conv2d(2, 2, **kwargs), "Conv2d", part)


def test_conv_padding_same_keeps_size():
    assert nn.Conv2d(1, 1, 3, padding="same", dilation=2)(np.zeros((1, 1, 5, 6))).shape == (1, 1, 5, 6)
    assert nn.Conv2d(1, 1, 3, padding="valid")(np.zeros((1, 1, 5, 6))).shape == (1, 1, 3, 4)


@pytest.mark.parametrize("make,part", [
    (lambda: nn.MaxPool2d(2, padding=2), "at most half"),
    (lambda: nn.AvgPool2d(3, stride=0), "stride"),
    (lambda: nn.MaxPool2d((2, 2, 2)), "kernel_size"),
    (lambda: nn.AdaptiveAvgPool2d(0), "output_size"),
    (lambda: nn.AdaptiveMaxPool2d((2, 2, 2)), "output_size"),
    (lambda: nn.Dropout(1.5), "[0, 1]"),
    (lambda: nn.Dropout(-0.1), "[0, 1]"),
])
def test_pool_and_dropout_bad_arguments(make, part):
    msg = _raises(ValueError, make, part)
    assert re.match(r"(MaxPool2d|AvgPool2d|AdaptiveAvgPool2d|AdaptiveMaxPool2d|Dropout)", msg), msg
