"""compile_inference on an imported ONNX graph (``minicnn/onnx/compiled.py``): PyTorch-exported nets
compiled and compared with the eager imported model and ONNX Runtime, the fusions counted, a
BatchNorm whose conv output has a second reader left unfolded, concurrent calls, and the CLI."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

import minicnn as mc
from minicnn import inference, nn

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from minicnn.onnx.compiled import CompiledOnnx  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from concurrency import CALLS, THREADS, run_concurrently  # noqa: E402
from onnx_check import ort_run, rel  # noqa: E402

BACKENDS = ("numpy", "numba")


def eager(model, *xs):
    with mc.no_grad():
        return mc.to_numpy(model(*xs))


def eager_ops(fast):
    """The ONNX op types the compiled model still runs as eager steps."""
    return [s.op for s in fast.plan if not hasattr(s, "conv")]


def export(name, path, keep_bn):
    """A net of torch_onnx_nets exported at opset 13; ``keep_bn``: no constant folding, so every
    BatchNormalization stays a node (PyTorch otherwise folds them into the convs itself)."""
    torch = pytest.importorskip("torch")
    import torch_onnx_nets as T

    torch.manual_seed(0)
    build, shape = T.NETS[name]
    model = build()
    x = torch.randn(*shape)
    if not keep_bn:
        return T.export(model, x, path, 13), shape
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=13, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.PRESERVE, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    return path, shape


# (fused convs, steps they replaced) with the batchnorms in the file, and after PyTorch folded them:
# resnet18: 20 convs, 20 BN, 17 ReLU (the stem's, each block's two), 8 residual Adds, the stem's
# max pool; vgg11: 8 conv + BN + ReLU, 5 max pools; squeezenet: 14 conv + ReLU, no BN (its pools
# round up: ceil_mode stays eager); mobilenetv2: 14 conv + BN, the 2 residual Adds (no ReLU after
# them; ReLU6 is a Clip, which stays eager); unet: 12 convs, 5 BN (its pools follow an ELU).
FUSED = {
    "resnet18": ((20, 66), (20, 46)),
    "vgg11": ((8, 29), (8, 21)),
    "squeezenet": ((14, 28), (14, 28)),
    "mobilenetv2": ((14, 30), (14, 16)),
    "unet": ((12, 17), (12, 12)),
}


@pytest.mark.torch
@pytest.mark.parametrize("keep_bn", [True, False], ids=["bn_nodes", "bn_folded_by_torch"])
@pytest.mark.parametrize("net", sorted(FUSED))
def test_compiled_imported_net_matches_eager_and_onnxruntime(net, keep_bn, tmp_path):
    path, shape = export(net, tmp_path / f"{net}.onnx", keep_bn)
    imported = mc.onnx.load(path)
    fast = inference.compile_inference(imported, autotune=False)
    assert isinstance(fast, CompiledOnnx)
    n_convs, n_fused = FUSED[net][0 if keep_bn else 1]
    assert len(fast.convs()) == n_convs == sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
    assert fast.fused_steps() == n_fused
    assert f"{n_convs} fused convs" in repr(fast)
    remaining = eager_ops(fast)
    assert "BatchNormalization" not in remaining and "Conv" not in remaining
    if net == "resnet18":
        assert remaining == ["GlobalAveragePool", "Flatten", "Gemm"]
    x = np.random.default_rng(1).standard_normal((3,) + shape[1:]).astype(np.float32)
    want_ort = ort_run(path, x)[0]
    for be in BACKENDS:
        with mc.backend(be):
            got = mc.to_numpy(fast(x))
            assert rel(got, eager(imported, x)) < 1e-5, be
        assert rel(got, want_ort) < 1e-4, be


@pytest.mark.torch
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_imported_resnet_stages_match_eager_activations(backend, tmp_path):
    path, _ = export("resnet18", tmp_path / "r18.onnx", keep_bn=True)
    imported = mc.onnx.load(path)
    fast = inference.compile_inference(imported, autotune=False)
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with mc.backend(backend):
        with mc.no_grad():
            acts = imported.activations(x)
        assert rel(fast.forward_features(x), acts["layer4"]) < 1e-5
        emb = fast.embed(x)
        assert emb.shape == (2, 64) and rel(emb, acts["avgpool"]) < 1e-5
        assert rel(fast(x), acts["fc"]) < 1e-5


def _graph_with_shared_conv_output():
    """c0 = conv0(x) feeds both bn0 and the Add after relu(bn0(c0)): bn0 must stay a step. Then
    conv1 -> bn1 -> relu, which folds and fuses; then conv2 + a broadcast (N, C, 1, 1) tensor -> relu,
    an Add the conv epilogue cannot take (its operand is not the output's shape)."""
    rng = np.random.default_rng(3)

    def f32(*s):
        return rng.standard_normal(s).astype(np.float32)

    def bn(c):
        return [f32(c) * 0.3 + 1, f32(c) * 0.2, f32(c) * 0.1, rng.uniform(0.5, 2.0, c).astype(np.float32)]

    inits = {"w0": f32(6, 3, 3, 3) * 0.3, "b0": f32(6), "w1": f32(6, 6, 3, 3) * 0.2, "w2": f32(6, 6, 1, 1) * 0.3}
    for i, arrays in ((0, bn(6)), (1, bn(6))):
        inits.update({f"s{i}": arrays[0], f"o{i}": arrays[1], f"m{i}": arrays[2], f"v{i}": arrays[3]})
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c0", "s0", "o0", "m0", "v0"], ["n0"], epsilon=1e-3),
        helper.make_node("Relu", ["n0"], ["r0"]),
        helper.make_node("Add", ["r0", "c0"], ["a0"]),
        helper.make_node("Conv", ["a0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s1", "o1", "m1", "v1"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("Add", ["c2", "g"], ["a2"]),
        helper.make_node("Relu", ["a2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8, 8])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.mark.parametrize("backend", BACKENDS)
def test_batchnorm_of_a_conv_output_read_twice_is_not_folded(backend):
    data = _graph_with_shared_conv_output()
    imported = mc.onnx.load(data)
    fast = inference.compile_inference(imported, autotune=False)
    convs = fast.convs()
    assert len(convs) == 3
    # conv0 keeps its batchnorm (the Add reads c0 itself): nothing fused into it, bn0 and relu run eagerly
    assert not convs[0].relu and "+" not in convs[0].name
    assert eager_ops(fast).count("BatchNormalization") == 1
    # conv1 took bn1 and the relu; conv2 took the broadcast Add and the relu after it
    assert convs[1].relu and convs[1].name.count("+") == 2
    assert convs[2].relu and convs[2].name.count("+") == 2
    assert eager_ops(fast) == ["BatchNormalization", "Relu", "Add", "GlobalAveragePool"]
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with mc.backend(backend):
        got = mc.to_numpy(fast(x))
        assert rel(got, eager(imported, x)) < 1e-5
    assert rel(got, ort_run(data, x)[0]) < 1e-4


@pytest.mark.torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("net", ["resnet18", "squeezenet"])
def test_compiled_imported_net_concurrent_calls_equal_serial(net, backend, tmp_path):
    path, shape = export(net, tmp_path / f"{net}.onnx", keep_bn=True)
    imported = mc.onnx.load(path)
    fast = inference.compile_inference(imported)  # autotuned, as a server would build it
    rng = np.random.default_rng(11)
    # a distinct input per call, so one call's activations showing up in another's output is caught
    inputs = [rng.standard_normal((1,) + shape[1:]).astype(np.float32) for _ in range(THREADS * CALLS)]
    with mc.backend(backend):
        serial = [np.array(mc.to_numpy(fast(x)), copy=True) for x in inputs]
        assert rel(serial[0], eager(imported, inputs[0])) < 1e-5
    held = fast.buffer_bytes()
    got = run_concurrently(fast, inputs, backend)
    for i, (a, b) in enumerate(zip(got, serial)):
        np.testing.assert_array_equal(a, b, err_msg=f"call {i}")
    assert fast.buffer_bytes() >= held > 0
    with mc.backend(backend):
        np.testing.assert_array_equal(mc.to_numpy(fast(inputs[0])), serial[0])


def test_compiled_snapshot_ignores_later_weight_changes():
    imported = mc.onnx.load(_graph_with_shared_conv_output())
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    fast = inference.compile_inference(imported, autotune=False)
    before = mc.to_numpy(fast(x)).copy()
    sd = imported.state_dict()
    imported.load_state_dict({k: (v * 2 if k == "w1" else v) for k, v in sd.items()})
    np.testing.assert_array_equal(mc.to_numpy(fast(x)), before)
    assert rel(inference.compile_inference(imported, autotune=False)(x), eager(imported, x)) < 1e-5
    assert rel(eager(imported, x), before) > 1e-3


# -- the CLI: classify / embed --model FILE.onnx --------------------------------------------------


def _image_model(path):
    """A small ONNX image classifier with a BatchNormalization node: conv -> bn -> relu -> conv ->
    relu -> global average pool -> flatten -> linear, for (N, 3, 224, 224) input."""
    mc.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 6, 8, stride=8), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    rng = np.random.default_rng(8)
    bn = model[1]
    bn._set_buffer("running_mean", rng.standard_normal(6).astype(np.float32) * 0.1)
    bn._set_buffer("running_var", rng.uniform(0.5, 2.0, 6).astype(np.float32))
    bn.weight.data = rng.uniform(0.5, 1.5, 6).astype(np.float32)
    model.eval()
    with mc.backend("numpy"):
        mc.onnx.export(model, str(path), np.zeros((1, 3, 224, 224), np.float32))
    return path


@pytest.fixture
def cli_data(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(9)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        PIL.fromarray(rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder, _image_model(tmp_path / "cls.onnx")


def _eager_batches(model_path, folder):
    from minicnn.cli._onnx import load_for_images
    from minicnn.cli.classify import iter_batches
    from minicnn.io.images import find_images

    net, _ = load_for_images(str(model_path))
    paths = find_images([str(folder)])
    rows = []
    for ok, batch, _ in iter_batches(paths, 2, "torchvision"):
        rows.append((ok, batch))
    return net, rows


def test_cli_classify_and_embed_run_the_compiled_model(cli_data, tmp_path, capsys, monkeypatch):
    from minicnn.cli import main
    from minicnn.cli.classify import compiled

    folder, model_path = cli_data
    net, rows = _eager_batches(model_path, folder)
    fast = compiled(net)
    assert isinstance(fast, CompiledOnnx) and len(fast.convs()) == 2 and fast.fused_steps() == 5
    calls = []
    run = CompiledOnnx._run

    def counted(self, xs, targets):
        calls.append(targets)
        return run(self, xs, targets)

    monkeypatch.setattr(CompiledOnnx, "_run", counted)

    with mc.backend("numpy"):
        logits = {str(p): row for ok, batch in rows for p, row in zip(ok, eager(net, batch))}
        pooled = {str(p): row for ok, batch in rows
                  for p, row in zip(ok, mc.to_numpy(net.activations(batch, upto="avgpool")["avgpool"]))}

    assert main(["--backend", "numpy", "classify", str(folder), "--model", str(model_path), "--json", "--topk", "5",
                 "--batch-size", "2"]) == 0
    assert calls, "classify did not run the compiled model"
    doc = json.loads(capsys.readouterr().out)
    for res in doc["results"]:
        z = logits[res["file"]].astype(np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        got = np.zeros(5)
        for t in res["top"]:
            got[t["index"]] = t["prob"]
        np.testing.assert_allclose(got, p, rtol=1e-5, atol=1e-7)

    calls.clear()
    out = tmp_path / "emb.npz"
    assert main(["--backend", "numpy", "embed", str(folder), "--model", str(model_path), "--layer", "avgpool",
                 "--out", str(out), "--batch-size", "2"]) == 0
    assert calls, "embed did not run the compiled model"
    saved = np.load(out)
    for f, e in zip(saved["files"], saved["embeddings"]):
        np.testing.assert_allclose(e, pooled[str(f)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_of_fused_outputs_keep_their_buffers(backend):
    """A Reshape returns a view of the conv output it reads; the conv's pool buffer must not go to
    the next conv of the same shape while that view is still to be read (Sub here), and an output
    that is such a view must come back as the caller's own array."""
    rng = np.random.default_rng(6)
    w0, w1 = (rng.standard_normal((4, 3, 3, 3)).astype(np.float32) for _ in range(2))
    shape = np.array([-1, 4, 6, 6], np.int64)
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c0", "shape"], ["v"]),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Sub", ["v", "c1"], ["y"]),
        helper.make_node("Conv", ["x", "w1"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Reshape", ["r2", "shape"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "views", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4, 6, 6]) for n in ("y", "z")],
        initializer=[numpy_helper.from_array(v, k) for k, v in (("w0", w0), ("w1", w1), ("shape", shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    data = model.SerializeToString()
    imported = mc.onnx.load(data)
    fast = inference.compile_inference(imported, autotune=False)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    want = ort_run(data, x)
    with mc.backend(backend):
        y, z = fast(x)
        y, z = mc.to_numpy(y).copy(), mc.to_numpy(z)
        assert rel(y, want[0]) < 1e-4 and np.abs(y).max() > 0.1
        assert rel(z, want[1]) < 1e-4
        fast(x + 1)  # a second call reuses the pool: the first call's z must not change
        assert rel(z, want[1]) < 1e-4


@pytest.mark.torch
def test_compiled_imported_net_on_a_device_backend(tmp_path):
    """The compiled graph uses only the op seam: on the fake device backend of test_device_agnostic
    (host arrays refused wherever a device library would refuse them) it returns device arrays with
    the numpy backend's numbers."""
    import test_device_agnostic as D

    path, shape = export("resnet18", tmp_path / "r18.onnx", keep_bn=True)
    imported = mc.onnx.load(path)
    fast = inference.compile_inference(imported)
    x = np.random.default_rng(7).standard_normal((2,) + shape[1:]).astype(np.float32)
    with mc.backend("numpy"):
        want = mc.to_numpy(fast(x)).copy()
    mc.backends.register(D.FAKE, D._fake_module())
    try:
        with mc.backend(D.FAKE):
            got, emb = fast(x), fast.embed(x)
    finally:
        mc.backends.unregister(D.FAKE)
    assert rel(D._host(got), want) < 1e-5
    assert type(emb) is D.DeviceArray and emb.shape == (2, 64)
