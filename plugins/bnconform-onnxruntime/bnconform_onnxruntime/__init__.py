"""bnconform plug-in: ONNX BatchNormalization (opset 15) run by ONNX Runtime.

Registered through the ``bnconform.adapters`` entry point; importing this package does not
import onnx or onnxruntime (the adapter imports them on first use).
"""

from .adapter import OnnxRuntimeAdapter

__all__ = ["OnnxRuntimeAdapter"]
