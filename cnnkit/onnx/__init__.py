"""ONNX interchange: ``cnnkit.onnx.load`` imports an ONNX file as a trainable model (needs the
``onnx`` package: ``pip install "cnnkit[onnx]"``, imported only when called)."""
from __future__ import annotations

from .load import ONNXImportError, load

__all__ = ["load", "ONNXImportError"]
