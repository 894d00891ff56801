"""ONNX interchange: ``cnnkit.onnx.export(model, "model.onnx")``.  Needs the ``onnx`` package
(``pip install "cnnkit[onnx]"``), imported only when a function here is called."""
from .export import export

__all__ = ["export"]
