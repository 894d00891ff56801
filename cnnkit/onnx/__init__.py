"""ONNX interchange: ``cnnkit.onnx.export(model, "model.onnx")`` writes a model as ONNX and
``cnnkit.onnx.load(path)`` imports an ONNX file as a trainable model.  Both need the ``onnx``
package (``pip install "cnnkit[onnx]"``), imported only when a function here is called."""
from __future__ import annotations

from .export import export
from .load import ONNXImportError, load

__all__ = ["export", "load", "ONNXImportError"]
