"""minicnn.onnx.load: PyTorch-exported nets (outputs against PyTorch and ONNX Runtime, backward
against autograd), classic graphs built with onnx.helper, and the refusals."""
from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest

import minicnn as mc
from minicnn import nn

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from gradcheck import eval_numerical_gradient_array, rel_error  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from onnx_check import ort_run, rel  # noqa: E402


# -- PyTorch-exported nets ------------------------------------------------------------------------

CASES = [("resnet18", 9), ("resnet18", 13), ("resnet18", 17), ("resnet50", 13), ("vgg11", 9), ("vgg11", 17),
         ("squeezenet", 11), ("squeezenet", 13), ("mobilenetv2", 13), ("mobilenetv2", 17), ("unet", 11),
         ("unet", 17)]


@pytest.mark.torch
@pytest.mark.parametrize("net,opset", CASES)
def test_torch_exported_net_matches_pytorch_and_onnxruntime(net, opset, tmp_path):
    torch = pytest.importorskip("torch")
    import torch_onnx_nets as T

    torch.manual_seed(0)
    build, shape = T.NETS[net]
    model = build()
    x = torch.randn(*shape)
    path = T.export(model, x, tmp_path / f"{net}.onnx", opset)
    imported = mc.onnx.load(path)
    xb = torch.randn(3, *shape[1:])  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        want = model(xb).numpy()
    got = imported(xb.numpy())
    assert rel(got, want) < 1e-4
    try:
        import onnxruntime  # noqa: F401 - the second reference, where it is installed
    except ImportError:
        return
    assert rel(got, ort_run(path, xb.numpy())[0]) < 1e-4


@pytest.mark.torch
def test_opset9_bilinear_upsample_matches_onnxruntime(tmp_path):
    """Opset 9's Upsample(linear) samples at asymmetric coordinates (i / scale), not PyTorch's
    half-pixel ones: the imported net computes what ONNX Runtime computes for the file."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import torch_onnx_nets as T

    torch.manual_seed(0)
    path = T.export(T.unet_small(), torch.randn(1, 3, 16, 16), tmp_path / "unet9.onnx", 9)
    net = mc.onnx.load(path)
    assert any(getattr(m, "asymmetric", False) for m in net.modules())
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert rel(net(x), ort_run(path, x)[0]) < 1e-4


@pytest.fixture(scope="module")
def resnet18_unfolded(tmp_path_factory):
    """A small ResNet-18 exported with its batchnorms kept (no constant folding), initializers
    named by PyTorch's state_dict keys."""
    torch = pytest.importorskip("torch")
    import torch_onnx_nets as T

    torch.manual_seed(1)
    model = T.resnet18_small()
    path = tmp_path_factory.mktemp("onnx") / "resnet18_bn.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(path), dynamo=False, opset_version=13,
                      do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    return model, path


@pytest.mark.torch
def test_resnet18_backward_matches_autograd(resnet18_unfolded, backend_name):
    torch = pytest.importorskip("torch")
    model, path = resnet18_unfolded
    imported = mc.onnx.load(path)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    model.zero_grad()
    y = model(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    with mc.backend(backend_name):
        out = imported(x.detach().numpy())
        assert rel(out, y.detach().numpy()) < 1e-4
        dx = imported.backward(dy.numpy())
    assert rel(dx, x.grad.numpy()) < 1e-4
    names = dict(imported.named_parameters())
    torch_grads = {k: p.grad.numpy() for k, p in model.named_parameters()}
    keys = imported._keys
    assert set(torch_grads) <= set(keys)
    for k, g in torch_grads.items():
        inner, _ = keys[k]
        assert rel(names[inner].grad, g) < 1e-4, k


@pytest.mark.torch
def test_state_dict_keys_are_initializer_names_and_load_back(resnet18_unfolded):
    torch = pytest.importorskip("torch")
    model, path = resnet18_unfolded
    imported = mc.onnx.load(path)
    sd = imported.state_dict()
    want = {k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert list(sd) == list(want)
    for k in want:
        np.testing.assert_array_equal(sd[k], want[k])
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    before = mc.to_numpy(imported(x)).copy()
    changed = {k: (v * 0.5 if k == "fc.weight" else v) for k, v in sd.items()}
    imported.load_state_dict(changed)
    assert rel(imported(x), before) > 1e-3
    imported.load_state_dict(sd)
    assert rel(imported(x), before) == 0


@pytest.mark.torch
def test_fold_batchnorm_on_imported_graph(resnet18_unfolded):
    model, path = resnet18_unfolded
    imported = mc.onnx.load(path)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in imported.modules()) == 20
    folded = mc.inference.fold_batchnorm(imported)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert rel(folded(x), imported(x)) < 1e-4
    text = imported.summary((3, 32, 32), file=io.StringIO())
    assert "conv0 (Conv2d)" in text and "bn0 (BatchNormalization)" in text


@pytest.mark.torch
def test_fine_tuning_step_changes_loss(resnet18_unfolded):
    _, path = resnet18_unfolded
    imported = mc.onnx.load(path).train()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    t = rng.integers(0, 10, 4)
    loss_fn = nn.CrossEntropyLoss()
    opt = mc.optim.SGD(imported.parameters(), lr=0.1)
    first = float(loss_fn(imported(x), t))
    for _ in range(3):
        imported.zero_grad()
        loss_fn(imported(x), t)
        imported.backward_params(loss_fn.backward())
        opt.step()
    assert float(loss_fn(imported(x), t)) < first


# -- graphs built with onnx.helper ----------------------------------------------------------------


def make(nodes, inputs, outputs, inits=(), opset=13):
    """A model from nodes; ``inputs``/``outputs`` as (name, shape) with float32."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    if model.ir_version < 4:  # IR 3 lists every initializer among the graph inputs too
        for t in model.graph.initializer:
            model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    # outputs declared without a shape get the one ONNX's shape inference finds (the checker wants one)
    inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(model).graph.output}
    for o in model.graph.output:
        if not o.type.tensor_type.HasField("shape") and inferred[o.name].type.tensor_type.HasField("shape"):
            o.CopyFrom(inferred[o.name])
    return model


RNG = np.random.default_rng(0)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _classic_cases():
    w = f32(4, 3, 3, 3)
    cases = {
        "lrn": make([helper.make_node("LRN", ["x"], ["y"], size=5, alpha=1e-2, beta=0.75, bias=2.0)],
                    [("x", [2, 7, 4, 4])], [("y", None)], opset=7),
        "sum_reshape_chain": make([
            helper.make_node("Sum", ["x", "a", "x"], ["s"]),
            helper.make_node("Reshape", ["s", "shape1"], ["r1"]),
            helper.make_node("Transpose", ["r1"], ["t"], perm=[0, 2, 1]),
            helper.make_node("Reshape", ["t", "shape2"], ["y"])],
            [("x", [2, 3, 4, 4])], [("y", None)], {"a": f32(1, 3, 1, 4), "shape1": np.array([0, 3, -1], np.int64),
                                                  "shape2": np.array([2, -1], np.int64)}, opset=8),
        "upsample7_scales_attr": make([helper.make_node("Upsample", ["x"], ["y"], mode="nearest",
                                                        scales=[1.0, 1.0, 2.0, 3.0])],
                                      [("x", [1, 2, 3, 3])], [("y", None)], opset=7),
        "upsample9_scales_input": make([helper.make_node("Upsample", ["x", "sc"], ["y"], mode="nearest")],
                                       [("x", [1, 2, 3, 3])], [("y", None)],
                                       {"sc": np.array([1, 1, 2, 2], np.float32)}, opset=9),
        "bn7_dropout_softmax9": make([
            helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["bn"], epsilon=1e-3, spatial=1),
            helper.make_node("Dropout", ["bn"], ["d"], ratio=0.3),
            helper.make_node("Softmax", ["d"], ["y"], axis=1)],
            [("x", [2, 3, 2, 2])], [("y", None)],
            {"g": f32(3), "b": f32(3), "m": f32(3), "v": np.abs(f32(3)) + 0.5}, opset=7),
        "gemm_notrans_clip_pad7": make([
            helper.make_node("Pad", ["x"], ["p"], pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="constant", value=0.5),
            helper.make_node("Flatten", ["p"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "B", "C"], ["g"]),
            helper.make_node("Clip", ["g"], ["y"], min=-0.5, max=0.7)],
            [("x", [2, 1, 2, 2])], [("y", None)], {"B": f32(25, 4), "C": f32(4)}, opset=7),
        "conv_same_upper_stride2_maxpool_same_lower": make([
            helper.make_node("Conv", ["x", "w", "bias"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2]),
            helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2], auto_pad="SAME_LOWER")],
            [("x", [2, 3, 7, 8])], [("y", None)], {"w": w, "bias": f32(4)}, opset=11),
        "asymmetric_pads": make([
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[0, 1, 2, 1]),
            helper.make_node("AveragePool", ["c"], ["a"], kernel_shape=[3, 3], pads=[1, 0, 0, 1],
                             count_include_pad=1),
            helper.make_node("ConvTranspose", ["a", "wt"], ["y"], strides=[2, 2], pads=[1, 0, 0, 1])],
            [("x", [1, 3, 6, 6])], [("y", None)], {"w": w, "wt": f32(4, 2, 3, 3)}, opset=11),
        "activations": make([
            helper.make_node("HardSigmoid", ["x"], ["a"]),
            helper.make_node("Elu", ["a"], ["b"], alpha=0.7),
            helper.make_node("Selu", ["x"], ["c"]),
            helper.make_node("Softplus", ["c"], ["d"]),
            helper.make_node("PRelu", ["x", "slope"], ["e"]),
            helper.make_node("Tanh", ["e"], ["f"]),
            helper.make_node("LeakyRelu", ["f"], ["g"], alpha=0.2),
            helper.make_node("Sigmoid", ["d"], ["h"]),
            helper.make_node("Mul", ["b", "g"], ["i"]),
            helper.make_node("Div", ["i", "h"], ["j"]),
            helper.make_node("Sub", ["j", "k"], ["y"])],
            [("x", [2, 3, 4, 4])], [("y", None)], {"slope": f32(3, 1, 1), "k": f32(4)}, opset=13),
        "split_concat_slice_gather_squeeze": make([
            helper.make_node("Split", ["x", "sizes"], ["s0", "s1"], axis=1),
            helper.make_node("Concat", ["s1", "s0", "s1"], ["c"], axis=1),
            helper.make_node("Slice", ["c", "st", "en", "ax", "stp"], ["sl"]),
            helper.make_node("Gather", ["sl", "idx"], ["ga"], axis=3),
            helper.make_node("GlobalMaxPool", ["ga"], ["gm"]),
            helper.make_node("Squeeze", ["gm", "sqax"], ["sq"]),
            helper.make_node("Unsqueeze", ["sq", "usax"], ["us"]),
            helper.make_node("LogSoftmax", ["us"], ["y"], axis=1)],
            [("x", [2, 5, 4, 6])], [("y", None)],
            {"sizes": np.array([2, 3], np.int64), "st": np.array([1, 0], np.int64), "en": np.array([7, 4], np.int64),
             "ax": np.array([1, 2], np.int64), "stp": np.array([2, 1], np.int64),
             "idx": np.array([5, 0, 0, 2], np.int64), "sqax": np.array([2, 3], np.int64),
             "usax": np.array([2], np.int64)}, opset=13),
        "matmul_resize_linear": make([
            helper.make_node("MatMul", ["x", "W"], ["m"]),
            helper.make_node("MatMul", ["m", "x2"], ["mm"]),
            helper.make_node("Resize", ["mm", "", "sc"], ["y"], mode="linear",
                             coordinate_transformation_mode="half_pixel")],
            [("x", [2, 3, 4, 5]), ("x2", [1, 1, 6, 3])], [("y", None)],
            {"W": f32(5, 6), "sc": np.array([1, 1, 2, 1.5], np.float32)}, opset=13),
        "dynamic_shape_arith": make([
            helper.make_node("Shape", ["x"], ["sh"]),
            helper.make_node("Gather", ["sh", "zero"], ["n"], axis=0),
            helper.make_node("Unsqueeze", ["n", "zeros1"], ["n1"]),
            helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["y"])],
            [("x", ["N", 2, 3, 3])], [("y", ["N", 18])],
            {"zero": np.array(0, np.int64), "zeros1": np.array([0], np.int64),
             "minus1": np.array([-1], np.int64)}, opset=13),
    }
    return cases


def _resize_gap_cases():
    """Opset-9 Upsample (linear, nearest) and linear Resize with asymmetric coordinates; Gemm with
    transA, alpha and beta."""
    return {
        "upsample9_linear": make([helper.make_node("Upsample", ["x", "sc"], ["y"], mode="linear")],
                                 [("x", [2, 3, 4, 5])], [("y", None)],
                                 {"sc": np.array([1, 1, 2, 3], np.float32)}, opset=9),
        "upsample9_linear_fractional": make([helper.make_node("Upsample", ["x", "sc"], ["y"], mode="linear")],
                                            [("x", [1, 2, 5, 4])], [("y", None)],
                                            {"sc": np.array([1, 1, 1.5, 2.5], np.float32)}, opset=9),
        "upsample9_nearest_fractional": make([helper.make_node("Upsample", ["x", "sc"], ["y"], mode="nearest")],
                                             [("x", [1, 2, 5, 4])], [("y", None)],
                                             {"sc": np.array([1, 1, 1.5, 2.5], np.float32)}, opset=9),
        "resize10_linear": make([helper.make_node("Resize", ["x", "sc"], ["y"], mode="linear")],
                                [("x", [1, 2, 3, 4])], [("y", None)],
                                {"sc": np.array([1, 1, 2, 2], np.float32)}, opset=10),
        "resize13_linear_asymmetric_sizes": make([
            helper.make_node("Resize", ["x", "", "", "sz"], ["y"], mode="linear",
                             coordinate_transformation_mode="asymmetric")],
            [("x", [1, 2, 3, 4])], [("y", None)], {"sz": np.array([1, 2, 7, 6], np.int64)}, opset=13),
        "gemm_transA_alpha_beta": make([
            helper.make_node("Gemm", ["x", "B", "C"], ["y"], transA=1, transB=1, alpha=0.5, beta=2.0)],
            [("x", [6, 3])], [("y", None)], {"B": f32(4, 6), "C": f32(4)}, opset=11),
        "gemm_alpha_beta_scalar_C": make([
            helper.make_node("Flatten", ["x"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "B", "C"], ["y"], alpha=1.5, beta=-0.5)],
            [("x", [2, 2, 2, 2])], [("y", None)], {"B": f32(8, 5), "C": f32(1)}, opset=9),
    }


CLASSIC = {**_classic_cases(), **_resize_gap_cases()}


@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_classic_graph_matches_onnxruntime(name, backend_name):
    model = CLASSIC[name]
    data = model.SerializeToString()
    xs = []
    for vi in model.graph.input:
        if vi.name in {t.name for t in model.graph.initializer}:
            continue
        shape = [d.dim_value or 3 for d in vi.type.tensor_type.shape.dim]
        xs.append(f32(*shape))
    want = ort_run(data, *xs)[0]
    with mc.backend(backend_name):
        got = mc.onnx.load(data)(*xs)
    assert rel(got, want) < 1e-4


# the fake device backend (its fixture `fake`): its arrays refuse to mix with host arrays, as CuPy's
# do, so a node that makes a host array from a device one fails there
from test_device_agnostic import FAKE, DeviceArray, fake  # noqa: E402, F401


@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_classic_graph_keeps_its_arrays_on_a_device_backend(name, fake):
    model = CLASSIC[name]
    data = model.SerializeToString()
    xs = [f32(*[d.dim_value or 3 for d in vi.type.tensor_type.shape.dim]) for vi in model.graph.input
          if vi.name not in {t.name for t in model.graph.initializer}]
    want = ort_run(data, *xs)[0]
    with mc.backend(FAKE):
        got = mc.onnx.load(data)(*xs)
        assert type(got) is DeviceArray
    assert rel(mc.to_numpy(got), want) < 1e-4


@pytest.mark.parametrize("name", ["lrn", "sum_reshape_chain", "activations", "split_concat_slice_gather_squeeze",
                                  "matmul_resize_linear", "asymmetric_pads",
                                  "conv_same_upper_stride2_maxpool_same_lower", "bn7_dropout_softmax9",
                                  "upsample9_linear_fractional", "resize13_linear_asymmetric_sizes",
                                  "gemm_transA_alpha_beta", "gemm_alpha_beta_scalar_C"])
def test_classic_graph_backward_matches_numerical_gradient(name):
    model = CLASSIC[name]
    net = mc.onnx.load(model.SerializeToString()).to(np.float64)
    inits = {t.name for t in model.graph.initializer}
    xs = [np.random.default_rng(3).standard_normal([d.dim_value or 3 for d in vi.type.tensor_type.shape.dim])
          for vi in model.graph.input if vi.name not in inits]
    out = net(*xs)
    dy = np.random.default_rng(4).standard_normal(out.shape)
    dxs = net.backward(dy)
    dxs = dxs if isinstance(dxs, tuple) else (dxs,)
    for i, x in enumerate(xs):
        def f(v, i=i):
            args = list(xs)
            args[i] = v
            return net(*args)
        num = eval_numerical_gradient_array(f, x.copy(), dy)
        assert rel_error(mc.to_numpy(dxs[i]), num) < 1e-6, (name, i)


def _asymmetric_linear_reference(x, out_h, out_w, sh, sw):
    """ONNX's linear resize with asymmetric coordinates as plain loops (the operator's definition):
    output (i, j) reads input position (i / sh, j / sw), clamped to the last row and column."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, out_h, out_w))
    for i in range(out_h):
        yi = min(i / sh, h - 1)
        i0 = int(np.floor(yi))
        i1, fi = min(i0 + 1, h - 1), yi - i0
        for j in range(out_w):
            xj = min(j / sw, w - 1)
            j0 = int(np.floor(xj))
            j1, fj = min(j0 + 1, w - 1), xj - j0
            y[:, :, i, j] = ((1 - fi) * (1 - fj) * x[:, :, i0, j0] + (1 - fi) * fj * x[:, :, i0, j1]
                             + fi * (1 - fj) * x[:, :, i1, j0] + fi * fj * x[:, :, i1, j1])
    return y


@pytest.mark.parametrize("name,scales,size", [("upsample9_linear", (2, 3), (8, 15)),
                                              ("upsample9_linear_fractional", (1.5, 2.5), (7, 10)),
                                              ("resize10_linear", (2, 2), (6, 8)),
                                              ("resize13_linear_asymmetric_sizes", (7 / 3, 6 / 4), (7, 6))])
def test_asymmetric_linear_resize_matches_the_loop_reference(name, scales, size, backend_name):
    """The reference loop, ONNX Runtime and the import agree: the loop pins down what the
    operator means, so a resize that ONNX Runtime and minicnn got wrong the same way would show."""
    model = CLASSIC[name]
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    ref = _asymmetric_linear_reference(x.astype(np.float64), *size, *scales)
    assert rel(ort_run(model.SerializeToString(), x)[0], ref) < 1e-5
    with mc.backend(backend_name):
        got = mc.onnx.load(model.SerializeToString())(x)
    assert rel(got, ref) < 1e-5


def test_nearest_upsample9_matches_floor_reference():
    model = CLASSIC["upsample9_nearest_fractional"]
    x = f32(1, 2, 5, 4)
    ref = x[:, :, np.floor(np.arange(7) / 1.5).astype(int)][:, :, :, np.floor(np.arange(10) / 2.5).astype(int)]
    np.testing.assert_array_equal(mc.to_numpy(mc.onnx.load(model.SerializeToString())(x)), ref)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_gemm_trans_a_alpha_beta_matches_the_formula(backend):
    model = CLASSIC["gemm_transA_alpha_beta"]
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    a = np.random.default_rng(5).standard_normal((6, 3)).astype(np.float32)
    ref = 0.5 * a.T.astype(np.float64) @ inits["B"].T + 2.0 * inits["C"]
    assert rel(ort_run(model.SerializeToString(), a)[0], ref) < 1e-6
    with mc.backend(backend):
        net = mc.onnx.load(model.SerializeToString())
        got = net(a)
    assert rel(got, ref) < 1e-6
    # the initializers come back under their names and in their ONNX layout
    sd = net.state_dict()
    assert sorted(sd) == ["B", "C"]
    np.testing.assert_array_equal(sd["B"], inits["B"].astype(np.float32))
    np.testing.assert_array_equal(sd["C"], inits["C"].astype(np.float32))
    # parameter gradients of y = alpha * A^T B^T + beta * C, against the numerical gradient
    net64 = mc.onnx.load(model.SerializeToString()).to(np.float64)
    layer = next(m for m in net64.modules() if type(m).__name__ == "Gemm")
    a64 = a.astype(np.float64)
    dy = np.random.default_rng(6).standard_normal((3, 4))
    net64.zero_grad()
    net64(a64)
    net64.backward(dy)
    for p in (layer.weight, layer.bias):
        def f(v, p=p):
            old = p.data
            p.data = v
            try:
                return mc.to_numpy(net64(a64))
            finally:
                p.data = old
        num = eval_numerical_gradient_array(f, np.array(p.data, copy=True), dy)
        assert rel_error(mc.to_numpy(p.grad), num) < 1e-7


def test_gemm_and_resize_refusals_name_what_is_missing():
    full_c = make([helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="g", beta=0.5)],
                  [("x", [2, 3])], [("y", None)], {"B": f32(3, 4), "C": f32(2, 4)})
    with pytest.raises(mc.onnx.OnnxImportError, match=r"node 'g' \(Gemm\): C of shape \(2, 4\) is not supported"):
        mc.onnx.load(full_c.SerializeToString())
    crop = make([helper.make_node("Resize", ["x", "", "sc"], ["y"], name="r", mode="linear",
                                  coordinate_transformation_mode="tf_crop_and_resize")],
                [("x", [1, 1, 2, 2])], [("y", None)], {"sc": np.array([1, 1, 2, 2], np.float32)})
    with pytest.raises(mc.onnx.OnnxImportError,
                       match=r"node 'r' \(Resize\): mode=linear with coordinate_transformation_mode='tf_crop_and_resize'"):
        mc.onnx.load(crop.SerializeToString(), check=False)
    cubic = make([helper.make_node("Upsample", ["x", "sc"], ["y"], name="u", mode="cubic")],
                 [("x", [1, 1, 2, 2])], [("y", None)], {"sc": np.array([1, 1, 2, 2], np.float32)}, opset=9)
    with pytest.raises(mc.onnx.OnnxImportError, match=r"node 'u' \(Upsample\): mode='cubic' is not supported"):
        mc.onnx.load(cubic.SerializeToString(), check=False)


def test_initializer_feeding_two_nodes_shares_one_parameter():
    w = f32(3, 3, 1, 1)
    model = make([helper.make_node("Conv", ["x", "w"], ["a"]), helper.make_node("Conv", ["a", "w"], ["y"])],
                 [("x", [1, 3, 2, 2])], [("y", None)], {"w": w})
    net = mc.onnx.load(model.SerializeToString())
    assert net.conv0.weight is net.conv1.weight
    assert list(net.state_dict()) == ["w"]
    net.load_state_dict({"w": w * 2})
    np.testing.assert_array_equal(net.conv1.weight.data, w * 2)


# -- refusals --------------------------------------------------------------------------------------


def _relu_model(**kw):
    return make([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 2])], [("y", None)], **kw)


def test_unsupported_operator_names_node_and_op():
    model = make([helper.make_node("Relu", ["x"], ["a"], name="r"), helper.make_node("Erf", ["a"], ["y"], name="e1")],
                 [("x", [1, 2])], [("y", None)])
    with pytest.raises(mc.onnx.OnnxImportError, match=r"node 'e1' \(Erf\): operator not supported"):
        mc.onnx.load(model.SerializeToString())


def test_unsupported_attribute_and_value_are_refused():
    model = make([helper.make_node("Resize", ["x", "", "sc"], ["y"], name="rs", mode="cubic")],
                 [("x", [1, 1, 2, 2])], [("y", None)], {"sc": np.array([1, 1, 2, 2], np.float32)})
    with pytest.raises(mc.onnx.OnnxImportError, match=r"node 'rs' \(Resize\): mode='cubic' is not supported"):
        mc.onnx.load(model.SerializeToString())
    model = make([helper.make_node("Conv", ["x", "w"], ["y"], name="c3d")], [("x", [1, 1, 2, 2, 2])], [("y", None)],
                 {"w": f32(1, 1, 1, 1, 1)})
    with pytest.raises(mc.onnx.OnnxImportError, match=r"node 'c3d' \(Conv\): .*only 2-D convolutions"):
        mc.onnx.load(model.SerializeToString())
    model = make([helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2])],
                 [("x", [1, 1, 2, 2])], [("y", None)])
    model.graph.node[0].attribute.append(helper.make_attribute("frobnicate", 1))
    with pytest.raises(mc.onnx.OnnxImportError, match=r"node 'mp' \(MaxPool\): attribute 'frobnicate'"):
        mc.onnx.load(model.SerializeToString(), check=False)


def test_unsupported_dtypes_are_refused():
    model = make([helper.make_node("Conv", ["x", "w"], ["y"], name="qc")], [("x", [1, 1, 2, 2])], [("y", None)],
                 {"w": np.ones((1, 1, 1, 1), np.int8)})
    with pytest.raises(mc.onnx.OnnxImportError, match=r"node 'qc' \(Conv\): the weight .* dtype int8"):
        mc.onnx.load(model.SerializeToString(), check=False)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    with pytest.raises(mc.onnx.OnnxImportError, match="graph input 'x' has type INT64"):
        mc.onnx.load(model.SerializeToString())
    model = _relu_model()
    t = helper.make_tensor("bf", TensorProto.BFLOAT16, [1], [0])
    model.graph.initializer.append(t)
    with pytest.raises(mc.onnx.OnnxImportError, match="'bf': data type BFLOAT16 is not supported"):
        mc.onnx.load(model.SerializeToString(), check=False)


def test_malformed_files_are_refused(tmp_path):
    data = _relu_model().SerializeToString()
    with pytest.raises(mc.onnx.OnnxImportError, match="not an ONNX model"):
        mc.onnx.load(data[: len(data) // 2])
    with pytest.raises(mc.onnx.OnnxImportError, match="not an ONNX model"):
        mc.onnx.load(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(mc.onnx.OnnxImportError, match="not an ONNX model"):
        mc.onnx.load(b"")
    with pytest.raises(mc.onnx.OnnxImportError, match="no such ONNX file"):
        mc.onnx.load(tmp_path / "missing.onnx")
    # absurd dimensions: 2^40 elements declared, 4 bytes given
    model = _relu_model()
    t = onnx.TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20], raw_data=b"\0" * 4)
    model.graph.initializer.append(t)
    with pytest.raises(mc.onnx.OnnxImportError, match="'huge': dimensions .* more than"):
        mc.onnx.load(model.SerializeToString(), check=False)
    model = _relu_model()
    model.graph.initializer.append(onnx.TensorProto(name="short", data_type=TensorProto.FLOAT, dims=[4],
                                                    raw_data=b"\0" * 8))
    with pytest.raises(mc.onnx.OnnxImportError, match="'short': holds 8 bytes but dimensions"):
        mc.onnx.load(model.SerializeToString(), check=False)
    with pytest.raises(mc.onnx.OnnxImportError, match="opset 6 is not supported"):
        mc.onnx.load(_relu_model(opset=6).SerializeToString(), check=False)
    model = _relu_model()
    model.graph.node[0].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(mc.onnx.OnnxImportError, match="domain 'com.example'"):
        mc.onnx.load(model.SerializeToString(), check=False)


def _external_model(location, offset=0, length=16):
    model = make([helper.make_node("Add", ["x", "c"], ["y"])], [("x", [4])], [("y", None)])
    t = onnx.TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    model.graph.initializer.append(t)
    return model


def test_external_data_inside_folder_loads_and_outside_is_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    values = np.arange(4, dtype=np.float32)
    (folder / "weights.bin").write_bytes(b"\0" * 8 + values.tobytes())
    (tmp_path / "secret.bin").write_bytes(values.tobytes())
    path = folder / "m.onnx"
    path.write_bytes(_external_model("weights.bin", offset=8).SerializeToString())
    net = mc.onnx.load(path, check=False)
    np.testing.assert_array_equal(mc.to_numpy(net(np.ones(4, np.float32))), values + 1)
    for loc in ("../secret.bin", str(tmp_path / "secret.bin")):
        path.write_bytes(_external_model(loc).SerializeToString())
        with pytest.raises(mc.onnx.OnnxImportError, match="outside the model's folder|must be a relative path"):
            mc.onnx.load(path, check=False)
    path.write_bytes(_external_model("weights.bin", offset=20).SerializeToString())
    with pytest.raises(mc.onnx.OnnxImportError, match="does not fit"):
        mc.onnx.load(path, check=False)
    with pytest.raises(mc.onnx.OnnxImportError, match="needs the model to be loaded from a file path"):
        mc.onnx.load(_external_model("weights.bin").SerializeToString(), check=False)


def test_without_onnx_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r'pip install "minicnn\[onnx\]"'):
        mc.onnx.load(b"anything")


def test_absurd_shape_arithmetic_is_refused_at_load():
    model = make([helper.make_node("ConstantOfShape", ["shape"], ["z"], name="cos",
                                   value=numpy_helper.from_array(np.zeros(1, np.float32))),
                  helper.make_node("Add", ["x", "z"], ["y"])],
                 [("x", [1])], [("y", [1 << 20, 1 << 20])], {"shape": np.array([1 << 20, 1 << 20], np.int64)})
    with pytest.raises(mc.onnx.OnnxImportError, match=r"node 'cos' \(ConstantOfShape\): .*more than"):
        mc.onnx.load(model.SerializeToString(), check=False)
