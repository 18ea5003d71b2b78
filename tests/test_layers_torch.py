"""Live PyTorch parity on random configurations: forward, dL/dx, parameter grads, state after.

The same builders and runners as the committed fixtures (``make_layer_fixtures.py``), but with
hypothesis drawing the layer arguments, shapes and values. Skipped where torch is not installed.
"""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gradcheck import windows_reach_input
from make_layer_fixtures import compare, make_arrays, run_minicnn, run_torch

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch



@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These tensors are tiny: torch's thread pool only adds contention (10-100x slower on 2 cores)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


dtypes = st.sampled_from(["float32", "float32", "float64"])
seeds = st.integers(0, 2**31 - 1)


def _parity(cfg, seed, backend_name):
    arrays = make_arrays(cfg, np.random.default_rng(seed))
    want = run_torch(cfg, arrays)
    got = run_minicnn(cfg, arrays, backend=backend_name)
    compare(got, want, cfg.get("dtype", "float32"), f"{cfg} on {backend_name}")
    return got, want


def _fits(size, k, stride, pad, dil):
    return size + 2 * pad - dil * (k - 1) - 1 >= 0


@st.composite
def conv_cfgs(draw):
    g = draw(st.integers(1, 3))
    cin, cout = g * draw(st.integers(1, 3)), g * draw(st.integers(1, 3))
    k = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    stride = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    pad = [draw(st.integers(0, 3)), draw(st.integers(0, 3))]
    dil = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    hw = [draw(st.integers(1, 10)), draw(st.integers(1, 10))]
    assume(all(_fits(hw[i], k[i], stride[i], pad[i], dil[i]) for i in range(2)))
    return {"kind": "conv2d", "x_shape": [draw(st.integers(1, 3)), cin, *hw], "dtype": draw(dtypes),
            "args": {"cin": cin, "cout": cout, "k": k, "stride": stride, "padding": pad, "dilation": dil,
                     "groups": g, "bias": draw(st.booleans())}}


@given(cfg=conv_cfgs(), seed=seeds)
def test_conv2d(backend_name, cfg, seed):
    _parity(cfg, seed, backend_name)


@st.composite
def bn_cfgs(draw):
    c = draw(st.integers(1, 4))
    shape = [draw(st.integers(1, 4)), c, draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    train = draw(st.booleans())
    track = draw(st.booleans())
    if train or not track:
        assume(shape[0] * shape[2] * shape[3] > 1)  # batch statistics need two values per channel
    return {"kind": "batchnorm2d", "x_shape": shape, "dtype": draw(dtypes), "train": train,
            "steps": draw(st.integers(1, 3)),
            "args": {"c": c, "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1])),
                     "momentum": draw(st.sampled_from([0.1, 0.5, 1.0, None])),
                     "affine": draw(st.booleans()), "track": track}}


@given(cfg=bn_cfgs(), seed=seeds)
def test_batchnorm2d(backend_name, cfg, seed):
    got, want = _parity(cfg, seed, backend_name)
    if cfg["train"] and cfg["args"]["track"]:
        assert int(got["after.num_batches_tracked"]) == cfg["steps"]


@st.composite
def pool_cfgs(draw):
    kind = draw(st.sampled_from(["maxpool2d", "avgpool2d"]))
    k = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    stride = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    pad = [draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))]
    dil = [draw(st.integers(1, 3)), draw(st.integers(1, 3))] if kind == "maxpool2d" else [1, 1]
    hw = [draw(st.integers(1, 10)), draw(st.integers(1, 10))]
    assume(all(_fits(hw[i], k[i], stride[i], pad[i], dil[i]) for i in range(2)))
    # every dilated window must reach a real input (minicnn refuses the rest)
    assume(all(windows_reach_input(hw[i], k[i], stride[i], pad[i], dil[i]) for i in range(2)))
    args = {"k": k, "stride": stride, "padding": pad}
    if kind == "maxpool2d":
        args["dilation"] = dil
    else:
        args["count_include_pad"] = draw(st.booleans())
    return {"kind": kind, "x_shape": [draw(st.integers(1, 2)), draw(st.integers(1, 3)), *hw], "args": args,
            "dtype": draw(dtypes), "input": draw(st.sampled_from(["normal", "distinct", "ties"]))}


@given(cfg=pool_cfgs(), seed=seeds)
def test_pooling(backend_name, cfg, seed):
    _parity(cfg, seed, backend_name)


@st.composite
def adaptive_cfgs(draw):
    return {"kind": draw(st.sampled_from(["adaptive_avgpool2d", "adaptive_maxpool2d"])),
            "x_shape": [draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 9)),
                        draw(st.integers(1, 9))],
            "args": {"out": [draw(st.integers(1, 10)), draw(st.integers(1, 10))]},
            "dtype": draw(dtypes), "input": draw(st.sampled_from(["normal", "ties"]))}


@given(cfg=adaptive_cfgs(), seed=seeds)
def test_adaptive_pooling(backend_name, cfg, seed):
    _parity(cfg, seed, backend_name)


@st.composite
def simple_cfgs(draw):
    kind = draw(st.sampled_from(["linear", "relu", "sigmoid", "tanh", "flatten", "identity", "dropout"]))
    n = draw(st.integers(1, 4))
    if kind == "linear":
        fin, fout = draw(st.integers(1, 8)), draw(st.integers(1, 8))
        return {"kind": kind, "x_shape": [n, fin], "dtype": draw(dtypes),
                "args": {"fin": fin, "fout": fout, "bias": draw(st.booleans())}}
    cfg = {"kind": kind, "x_shape": [n, draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))],
           "dtype": draw(dtypes), "input": draw(st.sampled_from(["normal", "wide", "relu_zeros"]))}
    if kind == "flatten":
        start = draw(st.integers(0, 3))
        cfg["args"] = {"start": start, "end": draw(st.sampled_from([-1] + list(range(start, 4))))}
    if kind == "dropout":  # torch draws its own mask, so only the deterministic modes compare
        cfg["train"] = draw(st.booleans())
        cfg["args"] = {"p": 0.0 if cfg["train"] else draw(st.floats(0, 1))}
    return cfg


@given(cfg=simple_cfgs(), seed=seeds)
def test_linear_activations_flatten_dropout(backend_name, cfg, seed):
    _parity(cfg, seed, backend_name)


@st.composite
def loss_cfgs(draw):
    kind = draw(st.sampled_from(["cross_entropy", "bce_with_logits", "mse"]))
    shape = [draw(st.integers(1, 6)), draw(st.integers(1, 6))]
    if kind != "cross_entropy" and draw(st.booleans()):
        shape += [draw(st.integers(1, 3))]
    inputs = ["normal", "wide", "huge"] if kind != "mse" else ["normal", "wide"]
    return {"kind": kind, "x_shape": shape, "dtype": draw(dtypes), "input": draw(st.sampled_from(inputs)),
            "args": {"reduction": draw(st.sampled_from(["mean", "sum"]))}}


@given(cfg=loss_cfgs(), seed=seeds)
def test_losses(backend_name, cfg, seed):
    got, _ = _parity(cfg, seed, backend_name)
    assert np.isfinite(got["loss"]) and np.all(np.isfinite(got["dx"]))


def test_cross_entropy_huge_logits_exact(backend_name):
    """Logits of +-1e4: the loss is a difference of logits, finite, and equal to torch's."""
    cfg = {"kind": "cross_entropy", "x_shape": [3, 4]}
    arrays = {"x": np.array([[[1e4, -1e4, 0.0, 5e3], [-1e4, -1e4, -1e4, -1e4], [0.0, 1e4, 1e4, -1e4]]],
                            dtype=np.float32),
              "target": np.array([1, 2, 0]), "dloss": np.array(1.0)}
    want = run_torch(cfg, arrays)
    got = run_minicnn(cfg, arrays, backend=backend_name)
    compare(got, want, "float32", "huge logits")
    # sample 0: 2e4; sample 1: log 4; sample 2: 1e4 + log 2 -> mean
    np.testing.assert_allclose(got["loss"], (2e4 + np.log(4) + 1e4 + np.log(2)) / 3, rtol=1e-6)


@st.composite
def net_cfgs(draw):
    c1 = draw(st.integers(1, 4))
    layers = [
        {"kind": "conv2d", "args": {"cin": 2, "cout": c1, "k": 3, "padding": 1, "bias": draw(st.booleans())}},
        {"kind": "batchnorm2d", "args": {"c": c1, "momentum": draw(st.sampled_from([0.1, None]))}},
        {"kind": draw(st.sampled_from(["relu", "tanh", "sigmoid"]))},
        {"kind": draw(st.sampled_from(["maxpool2d", "avgpool2d"])), "args": {"k": 2}},
        {"kind": "adaptive_avgpool2d", "args": {"out": 2}},
        {"kind": "flatten"},
        {"kind": "linear", "args": {"fin": 4 * c1, "fout": 3}},
    ]
    return {"kind": "sequential", "layers": layers, "x_shape": [draw(st.integers(2, 3)), 2, 6, 6],
            "train": draw(st.booleans()), "steps": draw(st.integers(1, 2)), "dtype": draw(dtypes)}


@given(cfg=net_cfgs(), seed=seeds)
def test_small_net(backend_name, cfg, seed):
    _parity(cfg, seed, backend_name)
