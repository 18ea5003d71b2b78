"""Write a minicnn model as an ONNX file.

    mc.onnx.export(model, "model.onnx", example_input, opset=17, dynamic_batch=True)

What can be exported: this package's models (the digits convnet, the ResNets) and Sequential
stacks of its layers: Conv2d (zero padding, or the other padding modes through a Pad node),
ConvTranspose2d, BatchNorm2d/1d (in eval form: BatchNormalization with the running statistics),
ReLU, Sigmoid, Tanh, LeakyReLU, ELU, SELU, Hardswish, Hardsigmoid, Softplus (beta 1), PReLU,
MaxPool2d, AvgPool2d, AdaptiveAvg/MaxPool2d to 1x1, Flatten, Linear, Dropout (an identity at
inference), the padding layers, Upsample, Softmax/LogSoftmax, Identity. The model runs once on
``example_input`` (in eval mode, no gradients) so that every node knows its input's rank.
Initializers are named by the model's ``state_dict`` keys, so ``minicnn.onnx.load`` of the file
gives back the same keys (without ``num_batches_tracked``).
"""
from __future__ import annotations

import os

import numpy as np

from .. import backends
from ..errors import MinicnnError
from ..grad_mode import no_grad
from ..nn import (ELU, GELU, SELU, AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d,
                  Conv2d, ConvTranspose2d, Dropout, Dropout2d, Flatten, Hardsigmoid, Hardswish, Identity,
                  LeakyReLU, Linear, LogSoftmax, MaxPool2d, PReLU, ReLU, Sequential, Sigmoid, Softmax, Softplus,
                  PixelShuffle, Tanh, Upsample)
from ..nn.module import Module
from ..nn.padding import _Pad2d
from . import _require_onnx

__all__ = ["export", "OnnxExportError", "MIN_EXPORT_OPSET"]

MIN_EXPORT_OPSET = 11


class OnnxExportError(MinicnnError, ValueError):
    """The model holds a layer (or a layer setting) that has no ONNX form here."""


class _Emitter:
    def __init__(self, onnx, opset):
        self.onnx, self.opset = onnx, opset
        self.nodes, self.inits, self.count = [], [], 0
        self.dtype = np.float32

    def name(self, hint):
        self.count += 1
        return f"/{hint}_{self.count}"

    def init(self, name, array):
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(backends.to_numpy(array),
                                                                                  dtype=self.dtype)), name))
        return name

    def const_ints(self, values, hint):
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def const_floats(self, values, hint):
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.float32), name))
        return name

    def node(self, op, inputs, hint, **attrs):
        out = self.name(hint)
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out


def _refuse(path, module, why):
    path = path.rstrip(".")
    raise OnnxExportError(f"cannot export {path or 'the model'} ({module._short()}): {why}")


def _conv(e, m, x, p):
    inputs = [x, e.init(f"{p}weight", m.weight.data)]
    if m.bias is not None:
        inputs.append(e.init(f"{p}bias", m.bias.data))
    padding = m._conv_padding()
    if m._pads is not None:
        from ..nn.conv import _PAD_OP_MODE

        mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}[
            _PAD_OP_MODE[m.padding_mode]]
        if mode == "wrap" and e.opset < 19:
            _refuse(p, m, "padding_mode='circular' needs opset 19 or newer")
        left, right, top, bottom = m._pads
        inputs[0] = e.node("Pad", [x, e.const_ints([0, 0, top, left, 0, 0, bottom, right], "pads")], "pad", mode=mode)
    return e.node("Conv", inputs, "conv", kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=[padding[0], padding[1], padding[0], padding[1]], dilations=list(m.dilation), group=m.groups)


def _leaf(e, m, x, p, y, in_shape):
    """Emit one layer; returns the output tensor name. ``y`` is the layer's output on the example."""
    if isinstance(m, Conv2d):
        return _conv(e, m, x, p)
    if isinstance(m, ConvTranspose2d):
        inputs = [x, e.init(f"{p}weight", m.weight.data)]
        if m.bias is not None:
            inputs.append(e.init(f"{p}bias", m.bias.data))
        ph, pw = m.padding
        return e.node("ConvTranspose", inputs, "deconv", kernel_shape=list(m.kernel_size), strides=list(m.stride),
                      pads=[ph, pw, ph, pw], dilations=list(m.dilation), group=m.groups,
                      output_padding=list(m.output_padding))
    if isinstance(m, (BatchNorm2d, BatchNorm1d)):
        if not m.track_running_stats:
            _refuse(p, m, "a batchnorm without running statistics has no eval form")
        c = m.num_features
        gamma = m.weight.data if m.affine else np.ones(c, np.float32)
        beta = m.bias.data if m.affine else np.zeros(c, np.float32)
        names = [e.init(f"{p}weight" if m.affine else e.name("bn_scale"), gamma),
                 e.init(f"{p}bias" if m.affine else e.name("bn_bias"), beta),
                 e.init(f"{p}running_mean", m.running_mean), e.init(f"{p}running_var", m.running_var)]
        return e.node("BatchNormalization", [x] + names, "bn", epsilon=float(m.eps))
    simple = {ReLU: "Relu", Sigmoid: "Sigmoid", Tanh: "Tanh"}
    if type(m) in simple:
        return e.node(simple[type(m)], [x], simple[type(m)].lower())
    if isinstance(m, LeakyReLU):
        return e.node("LeakyRelu", [x], "leakyrelu", alpha=float(m.negative_slope))
    if isinstance(m, ELU):
        return e.node("Elu", [x], "elu", alpha=float(m.alpha))
    if isinstance(m, SELU):
        return e.node("Selu", [x], "selu")
    if isinstance(m, Hardswish):
        if e.opset < 14:
            _refuse(p, m, "HardSwish needs opset 14 or newer")
        return e.node("HardSwish", [x], "hardswish")
    if isinstance(m, Hardsigmoid):
        return e.node("HardSigmoid", [x], "hardsigmoid", alpha=1.0 / 6, beta=0.5)
    if isinstance(m, Softplus):
        if m.beta != 1.0:
            _refuse(p, m, "ONNX Softplus has no beta; only beta=1 exports")
        return e.node("Softplus", [x], "softplus")
    if isinstance(m, PReLU):
        w = np.asarray(backends.to_numpy(m.weight.data))
        shape = (w.size,) + (1,) * max(len(y.shape) - 2, 0) if w.size > 1 else (1,)
        return e.node("PRelu", [x, e.init(f"{p}weight", w.reshape(shape))], "prelu")
    if isinstance(m, PixelShuffle):
        return e.node("DepthToSpace", [x], "pixel_shuffle", blocksize=int(m.upscale_factor), mode="CRD")
    if isinstance(m, (Identity, Dropout, Dropout2d)):
        return x
    if isinstance(m, MaxPool2d):
        if m.return_indices:
            _refuse(p, m, "return_indices=True is not exported")
        ph, pw = m.padding
        return e.node("MaxPool", [x], "maxpool", kernel_shape=list(m.kernel_size), strides=list(m.stride),
                      pads=[ph, pw, ph, pw], dilations=list(m.dilation), ceil_mode=int(m.ceil_mode))
    if isinstance(m, AvgPool2d):
        ph, pw = m.padding
        return e.node("AveragePool", [x], "avgpool", kernel_shape=list(m.kernel_size), strides=list(m.stride),
                      pads=[ph, pw, ph, pw], ceil_mode=int(m.ceil_mode), count_include_pad=int(m.count_include_pad))
    if isinstance(m, (AdaptiveAvgPool2d, AdaptiveMaxPool2d)):
        if tuple(y.shape[2:]) == (1, 1):
            op = "GlobalAveragePool" if isinstance(m, AdaptiveAvgPool2d) else "GlobalMaxPool"
            return e.node(op, [x], op.lower())
        # an output that divides the example input evenly has equal, non-overlapping bins: a plain
        # pool with kernel = stride = in / out (what torch's exporter writes too), for that input size
        ins, outs = tuple(in_shape[2:]), tuple(y.shape[2:])
        if any(i % o for i, o in zip(ins, outs)):
            _refuse(p, m, f"output {outs} does not divide the input {ins}: its bins differ in size, which "
                          "no ONNX pool expresses")
        k = [i // o for i, o in zip(ins, outs)]
        op = "AveragePool" if isinstance(m, AdaptiveAvgPool2d) else "MaxPool"
        return e.node(op, [x], op.lower(), kernel_shape=k, strides=k)
    if isinstance(m, Flatten):
        if m.start_dim < 0 or m.end_dim != -1:
            _refuse(p, m, "only Flatten(start_dim >= 0, end_dim=-1) exports")
        return e.node("Flatten", [x], "flatten", axis=int(m.start_dim))
    if isinstance(m, Linear):
        inputs = [x, e.init(f"{p}weight", m.weight.data)]
        if m.bias is not None:
            inputs.append(e.init(f"{p}bias", m.bias.data))
        if len(y.shape) != 2:
            _refuse(p, m, f"only 2-D input (N, features) exports, got an output of rank {len(y.shape)}")
        return e.node("Gemm", inputs, "gemm", transB=1)
    if isinstance(m, (Softmax, LogSoftmax)):
        axis = m.dim if m.dim is not None else (0 if len(y.shape) in (0, 1, 3) else 1)
        axis %= max(len(y.shape), 1)
        op = "Softmax" if isinstance(m, Softmax) else "LogSoftmax"
        if e.opset < 13 and axis != len(y.shape) - 1:
            _refuse(p, m, f"{op} over axis {axis} of a rank-{len(y.shape)} tensor needs opset 13 or newer")
        return e.node(op, [x], op.lower(), axis=int(axis))
    if isinstance(m, _Pad2d):
        left, right, top, bottom = m.padding
        mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}[m.mode]
        if mode == "wrap" and e.opset < 19:
            _refuse(p, m, "circular padding needs opset 19 or newer")
        if len(y.shape) != 4:
            _refuse(p, m, "only 4-D (N, C, H, W) input exports")
        inputs = [x, e.const_ints([0, 0, top, left, 0, 0, bottom, right], "pads")]
        if mode == "constant":
            inputs.append(e.const_floats(m.value, "value"))
        return e.node("Pad", inputs, "pad", mode=mode)
    if isinstance(m, Upsample):
        if m.mode == "nearest":
            attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        else:
            attrs = dict(mode="linear",
                         coordinate_transformation_mode="align_corners" if m.align_corners else "pytorch_half_pixel")
        # before opset 13 the roi and scales inputs may not be left out: they are given empty
        roi = e.const_floats([], "roi") if e.opset < 13 else ""
        if m.scale_factor is not None and not m.recompute_scale_factor:
            sf = m.scale_factor if isinstance(m.scale_factor, tuple) else (m.scale_factor, m.scale_factor)
            return e.node("Resize", [x, roi, e.const_floats([1.0, 1.0, *sf], "scales")], "resize", **attrs)
        if m.size is None:
            _refuse(p, m, "recompute_scale_factor=True is not exported")
        scales = e.const_floats([], "scales") if e.opset < 13 else ""
        return e.node("Resize", [x, roi, scales, e.const_ints(list(y.shape), "sizes")], "resize", **attrs)
    if isinstance(m, GELU):
        _refuse(p, m, "GELU has no ONNX operator before opset 20 here")
    _refuse(p, m, f"no ONNX form for {type(m).__name__}")


def _emit_up_block(e, block, x, value, skip, path):
    """A U-Net decoder block: upsample, concatenate the encoder tap (channels), conv-bn-relu twice."""
    x, value = _emit(e, block.up, x, value, f"{path}.up")
    if skip is not None:
        x = e.node("Concat", [x, skip[0]], "concat", axis=1)
        value = np.concatenate([value, skip[1]], axis=1)
    for name in ("conv1", "bn1", "relu", "conv2", "bn2", "relu"):
        x, value = _emit(e, getattr(block, name), x, value, f"{path}.{name}")
    return x, value


def _emit(e, m, x, value, path):
    """Emit ``m`` applied to tensor ``x`` (whose example value is ``value``); returns (name, value)."""
    from ..models.resnet import BasicBlock, ResNet

    p = f"{path}." if path else ""
    if isinstance(m, Sequential):
        for name, child in m._modules.items():
            x, value = _emit(e, child, x, value, f"{p}{name}")
        return x, value
    if isinstance(m, ResNet):
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
            x, value = _emit(e, getattr(m, name), x, value, f"{p}{name}")
        x = e.node("Flatten", [x], "flatten", axis=1)
        value = value.reshape(value.shape[0], -1)
        return _emit(e, m.fc, x, value, f"{p}fc")
    from ..models import resnet as _resnet
    from ..models.segmentation import UNet
    from ..models.vgg import VGG

    if isinstance(m, UNet):
        enc, taps = m.encoder, []
        for name in ("conv1", "bn1", "relu"):
            x, value = _emit(e, getattr(enc, name), x, value, f"{p}encoder.{name}")
        taps.append((x, value))
        for name in ("maxpool", "layer1", "layer2", "layer3", "layer4"):
            x, value = _emit(e, getattr(enc, name), x, value, f"{p}encoder.{name}")
            if name != "maxpool":
                taps.append((x, value))
        skips = [taps[3], taps[2], taps[1], taps[0], None]
        for i, (block, skip) in enumerate(zip(m.decoder, skips)):
            x, value = _emit_up_block(e, block, x, value, skip, f"{p}decoder.{i}")
        return _emit(e, m.head, x, value, f"{p}head")

    if isinstance(m, VGG):
        x, value = _emit(e, m.features, x, value, f"{p}features")
        x, value = _emit(e, m.avgpool, x, value, f"{p}avgpool")
        x = e.node("Flatten", [x], "flatten", axis=1)
        value = value.reshape(value.shape[0], -1)
        return _emit(e, m.classifier, x, value, f"{p}classifier")

    if isinstance(m, (BasicBlock, getattr(_resnet, "Bottleneck", BasicBlock))):
        out, v = x, value
        names = ("conv1", "bn1", "relu", "conv2", "bn2")
        if getattr(m, "conv3", None) is not None:  # a bottleneck: 1x1, 3x3, 1x1
            names += ("relu", "conv3", "bn3")
        for name in names:
            out, v = _emit(e, getattr(m, name), out, v, f"{p}{name}")
        short, sv = (x, value) if m.downsample is None else _emit(e, m.downsample, x, value, f"{p}downsample")
        y = e.node("Relu", [e.node("Add", [out, short], "add")], "relu")
        return y, np.maximum(v + sv, 0)
    if m._modules:
        _refuse(path, m, f"a container of type {type(m).__name__} has no known order; export a Sequential, "
                         "a ResNet, or this package's models")
    y = np.asarray(backends.to_numpy(m(value)))
    return _leaf(e, m, x, p, y, value.shape), y


def export(model, f, example_input, opset: int = 17, dynamic_batch: bool = True, input_name: str = "input",
           output_name: str = "output"):
    """Write ``model`` (in eval form) to ``f`` (a path or a binary file object) as ONNX; returns the
    ``onnx.ModelProto``.

    Args:
        model: a minicnn model: the digits convnet, a ResNet, or a Sequential of layers (see the
            module docstring for the layers that export).
        example_input: an array of the input's shape (N, C, H, W); the model runs on it once.
        opset: the ONNX opset to write, 11 or newer (17 by default).
        dynamic_batch: declare the batch dimension symbolic (``N``), so ONNX Runtime accepts any
            batch size; otherwise the example's batch size is fixed.

    Raises ``OnnxExportError`` (a ValueError) naming the first layer that has no ONNX form.
    """
    onnx = _require_onnx()
    if not isinstance(model, Module):
        raise TypeError(f"minicnn.onnx.export takes a minicnn Module, got {type(model).__name__}")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_EXPORT_OPSET <= int(opset) <= newest:
        raise OnnxExportError(f"opset {opset} is not supported for export ({MIN_EXPORT_OPSET} to {newest} are)")
    x = np.asarray(backends.to_numpy(example_input) if hasattr(example_input, "shape") else example_input)
    x = x.astype(model.dtype if hasattr(model, "dtype") else np.float32)
    e = _Emitter(onnx, int(opset))
    e.dtype = np.dtype(model.dtype)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            out, y = _emit(e, model, input_name, x, "")
    finally:
        model.train(was_training)
    # the graph output gets its public name through an Identity
    e.nodes.append(onnx.helper.make_node("Identity", [out], [output_name], name="/output"))
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(e.dtype))
    in_shape = ["N" if (i == 0 and dynamic_batch) else int(s) for i, s in enumerate(x.shape)]
    out_shape = ["N" if (i == 0 and dynamic_batch) else int(s) for i, s in enumerate(y.shape)]
    graph = onnx.helper.make_graph(
        e.nodes, "minicnn", [onnx.helper.make_tensor_value_info(input_name, elem, in_shape)],
        [onnx.helper.make_tensor_value_info(output_name, elem, out_shape)], initializer=e.inits)
    opsets = [onnx.helper.make_opsetid("", int(opset))]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="minicnn",
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if hasattr(f, "write"):
        f.write(data)
    else:
        path = os.fspath(f)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    return proto
