"""The cupy backend's activation, dropout and loss ops beyond the conformance suite, on the CUDA
emulator (``minicnn/backends/cupy/_emulator.py``) against the numpy reference.

The conformance cases draw short rows, so the softmax and class-loss kernels always take their
one-thread-per-row form there; here :func:`row_launch`'s thresholds are lowered so that the
same small shapes run with one block per row (the block reductions), and the choice itself is
checked as a plain function. Also: the error a class index out of range raises, the errors of
the activation family, and PReLU's slope gradient summed over several blocks per channel.
"""
from __future__ import annotations

import numpy as np
import pytest

from minicnn import backends
from minicnn.backends.cupy import activation, dropout, loss
from minicnn.backends.cupy._emulator import emulated_runtime, emulator_absent

REF = backends.load("numpy").OPS

needs_emulator = pytest.mark.skipif(emulator_absent() is not None, reason=str(emulator_absent()))

DTYPES = [(np.float32, 1e-5), (np.float64, 1e-10)]


def close(got, want, tol, what=""):
    """got == want within tol relative to max(1, max |want|); shapes, dtypes and NaNs equal."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), what
        for i, (g, w) in enumerate(zip(got, want)):
            close(g, w, tol, f"{what}[{i}]")
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape, got.dtype, want.dtype)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaNs differ"
    finite = np.isfinite(want)
    scale = max(1.0, float(np.max(np.abs(want[finite]), initial=0.0)))
    err = float(np.max(np.abs(got[finite].astype(np.float64) - want[finite]), initial=0.0))
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:g} * {scale:.3g}"


@pytest.fixture
def rt():
    return emulated_runtime()


@pytest.fixture
def block_rows(monkeypatch):
    """Every softmax / class-loss row gets a block of its own, however short."""
    monkeypatch.setattr(activation, "ROW_BLOCK_MIN", 1)
    monkeypatch.setattr(activation, "FEW_ROWS", 2**62)


# -- the launch choice, a plain function ------------------------------------------------------------

def test_row_launch_picks_a_block_for_long_rows_and_a_thread_otherwise():
    # long contiguous rows: one block each, the block as wide as the row up to 256 threads
    assert activation.row_launch(10, 1000, 1) == (256, (10,), (256,))
    assert activation.row_launch(10, 100, 1) == (128, (10,), (128,))
    assert activation.row_launch(3, 64, 1) == (64, (3,), (64,))
    # short rows, and many strided rows: one thread per row, grid-stride over 256-thread blocks
    assert activation.row_launch(4096, 10, 1) == (1, (16,), (256,))
    assert activation.row_launch(5000, 100, 49) == (1, (20,), (256,))
    # a few long strided rows: a block each again
    assert activation.row_launch(2, 5000, 49) == (256, (2,), (256,))
    # more rows than blocks: the blocks loop (grid-stride)
    team, grid, block = activation.row_launch(10**6, 1000, 1)
    assert team == 256 and grid == (activation.MAX_BLOCKS_1D,)


# -- one block per row: softmax and the class losses ---------------------------------------------------

@needs_emulator
@pytest.mark.parametrize("dt,tol", DTYPES)
@pytest.mark.parametrize("shape,axis", [((3, 37), 1), ((2, 5, 3), 1), ((4, 3, 2), 0), ((2, 3, 70), -1)])
def test_softmax_one_block_per_row(rt, block_rows, dt, tol, shape, axis):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 30).astype(dt)[..., ::1]
    dy = rng.standard_normal(shape).astype(dt)
    for op in ("softmax", "log_softmax"):
        y = REF[f"{op}_forward"](x, axis)
        close(getattr(activation, f"{op}_forward")(rt, x, axis), y, tol, op)
        close(getattr(activation, f"{op}_backward")(rt, dy, y, axis), REF[f"{op}_backward"](dy, y, axis), tol,
              f"{op} backward")


def _class_inputs(rng, dt, shape, soft):
    z = (rng.standard_normal(shape) * 20).astype(dt)
    if soft:
        y = rng.random(shape)
        return z, (y / y.sum(axis=1, keepdims=True)).astype(dt)
    t = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    t.reshape(-1)[::3] = -100  # ignored positions
    return z, t


@needs_emulator
@pytest.mark.parametrize("dt,tol", DTYPES)
@pytest.mark.parametrize("shape", [(4, 70), (2, 5, 3, 2)])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("weighted,eps", [(False, 0.0), (True, 0.1), (True, 1.0)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_one_block_per_row(rt, block_rows, dt, tol, shape, soft, weighted, eps, reduction):
    rng = np.random.default_rng(2)
    z, t = _class_inputs(rng, dt, shape, soft)
    w = rng.uniform(0.2, 2.0, shape[1]).astype(dt) if weighted else None
    want = REF["cross_entropy_forward"](z, t, w, -100, eps, reduction)
    close(loss.cross_entropy_forward(rt, z, t, w, -100, eps, reduction), want, tol, "forward")
    dloss = rng.standard_normal(want[1].shape).astype(dt) if reduction == "none" else 0.7
    close(loss.cross_entropy_backward(rt, z, want[1], t, w, -100, eps, reduction, dloss),
          REF["cross_entropy_backward"](z, want[1], t, w, -100, eps, reduction, dloss), tol, "backward")


@needs_emulator
@pytest.mark.parametrize("dt,tol", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_nll_and_plain_cross_entropy_one_block_per_row(rt, block_rows, dt, tol, reduction):
    rng = np.random.default_rng(3)
    z, t = _class_inputs(rng, dt, (5, 40), soft=False)
    logp = REF["log_softmax_forward"](z)
    w = rng.uniform(0.2, 2.0, 40).astype(dt)
    close(loss.nll_forward(rt, logp, t, w, -100, reduction), REF["nll_forward"](logp, t, w, -100, reduction), tol)
    dloss = rng.standard_normal(t.shape).astype(dt) if reduction == "none" else -1.5
    close(loss.nll_backward(rt, logp, t, w, -100, reduction, dloss),
          REF["nll_backward"](logp, t, w, -100, reduction, dloss), tol)
    t = np.abs(t) % 40
    want = REF["softmax_cross_entropy_forward"](z, t)
    close(loss.softmax_cross_entropy_forward(rt, z, t), want, tol)
    close(loss.softmax_cross_entropy_backward(rt, want[1], t), REF["softmax_cross_entropy_backward"](want[1], t), tol)


# -- errors ------------------------------------------------------------------------------------------

@needs_emulator
@pytest.mark.parametrize("team", ["thread", "block"])
def test_a_class_index_out_of_range_is_named(rt, monkeypatch, team):
    if team == "block":
        monkeypatch.setattr(activation, "ROW_BLOCK_MIN", 1)
    z = np.zeros((3, 4), np.float32)
    t = np.array([0, 7, -100])
    with pytest.raises(ValueError, match=r"cross_entropy_forward: target 7 is out of bounds: .*\[0, 4\)"):
        loss.cross_entropy_forward(rt, z, t, None, -100, 0.0, "mean")
    with pytest.raises(ValueError, match=r"nll_forward: target -2 is out of bounds"):
        loss.nll_forward(rt, z, np.array([-2, 1, -100]), None, -100, "sum")
    with pytest.raises(ValueError, match=r"softmax_cross_entropy_forward: target -100 is out of bounds"):
        loss.softmax_cross_entropy_forward(rt, z, np.array([0, -100, 1]))
    # ignore_index itself is fine, in range or not
    assert np.isfinite(loss.cross_entropy_forward(rt, z, np.array([0, 3, 3]), None, 3, 0.0, "mean")[0])


@needs_emulator
def test_activation_errors_as_the_reference(rt):
    x = np.zeros(3, np.float32)
    for op, args in (("activation_forward", (x,)), ("activation_backward", (x, x))):
        for kind, params in (("swish", ()), ("elu", ()), ("softplus", (1.0,))):
            with pytest.raises(ValueError) as ours:
                getattr(activation, op)(rt, *args, kind, params)
            with pytest.raises(ValueError) as ref:
                REF[op](*args, kind, params)
            assert str(ours.value) == str(ref.value)
    with pytest.raises(ValueError, match="weight of shape"):
        activation.prelu_forward(rt, np.zeros((2, 3)), np.ones(4))
    with pytest.raises(TypeError, match="float32 or float64"):
        activation.relu_forward(rt, np.zeros(3, np.float16))


# -- PReLU's slope gradient over several blocks per channel -------------------------------------------

@needs_emulator
@pytest.mark.parametrize("dt,tol", [(np.float32, 1e-4), (np.float64, 1e-10)])
@pytest.mark.parametrize("channels", [1, 3])
def test_prelu_backward_many_blocks_per_channel(rt, dt, tol, channels):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 21, 20)).astype(dt)[:, :, :, ::2]  # 630 values per channel, strided
    dy = rng.standard_normal(x.shape).astype(dt)
    w = rng.uniform(-1, 1, channels).astype(dt)
    close(activation.prelu_backward(rt, dy, x, w), REF["prelu_backward"](dy, x, w), tol)
    dx, dw = activation.prelu_backward(rt, dy, x, w, need_dx=False)
    assert dx is None
    close(dw, REF["prelu_backward"](dy, x, w)[1], tol)


# -- dropout: the same generator state gives the reference's mask -------------------------------------

@needs_emulator
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_dropout_masks_follow_the_generator(rt, dt):
    x = np.random.default_rng(5).standard_normal((3, 4, 5)).astype(dt)
    for p in (0.0, 0.25, 0.999, 1.0):
        ours = dropout.dropout_forward(rt, x, p, np.random.default_rng(9))
        ref = REF["dropout_forward"](x, p, np.random.default_rng(9))
        assert all(np.array_equal(a, b) for a, b in zip(ours, ref))
        ours = dropout.dropout2d_forward(rt, x[..., None], p, np.random.default_rng(9))
        ref = REF["dropout2d_forward"](x[..., None], p, np.random.default_rng(9))
        assert all(np.array_equal(a, b) for a, b in zip(ours, ref))
    with pytest.raises(ValueError, match="mask of shape"):
        dropout.dropout2d_backward(rt, x, np.ones((3, 5), dt))
