"""ONNX in and out: ``load`` an ONNX file into a minicnn model, ``export`` a minicnn model to one.

    import minicnn as mc
    model = mc.onnx.load("net.onnx")                 # a Module of minicnn layers, any backend
    y = model(x); dx = model.backward(dy)            # with a backward, for fine-tuning or Grad-CAM
    mc.onnx.export(resnet, "resnet18.onnx", np.zeros((1, 3, 224, 224), np.float32))

Files are parsed and written with the ``onnx`` package, an optional dependency:
``pip install "minicnn[onnx]"``. What is supported and how each operator maps: docs/onnx.md.
"""
from __future__ import annotations

from ..errors import MinicnnError

INSTALL_HINT = 'ONNX support needs the onnx package: pip install "minicnn[onnx]"'


class OnnxMissingError(MinicnnError, ImportError):
    """The optional ``onnx`` package is not installed (the message says how to install it)."""


def _require_onnx():
    """The ``onnx`` module, or an ImportError that says how to install it."""
    try:
        import onnx
    except ImportError:
        raise OnnxMissingError(INSTALL_HINT) from None
    return onnx


def load(f, check: bool = True):
    """Read an ONNX model into a minicnn ``OnnxModel`` (see ``minicnn.onnx.load.load``)."""
    from .importer import load as _load

    return _load(f, check=check)


def export(model, f, example_input, opset: int = 17, dynamic_batch: bool = True, input_name: str = "input",
           output_name: str = "output"):
    """Write ``model`` as an ONNX file (see ``minicnn.onnx.export.export``)."""
    from .exporter import export as _export

    return _export(model, f, example_input, opset=opset, dynamic_batch=dynamic_batch, input_name=input_name,
                   output_name=output_name)


def __getattr__(name):
    if name in ("OnnxImportError", "OnnxExportError"):
        from . import exporter as _e, importer as _l

        return getattr(_l if name == "OnnxImportError" else _e, name)
    if name == "OnnxModel":
        from .graph import OnnxModel

        return OnnxModel
    raise AttributeError(f"module 'minicnn.onnx' has no attribute {name!r}")


__all__ = ["load", "export", "OnnxModel", "OnnxImportError", "OnnxExportError", "OnnxMissingError", "INSTALL_HINT"]
