"""``tf_keras.auto+tf2onnx``: the tf_keras.auto layer in a functional model, converted by
``tf2onnx.convert.from_keras(model, input_signature=...)`` (its default opset) and run by ONNX
Runtime's CPU execution provider (default session options).

Everything but the converter and the runtime is ``export_litert.TfKerasExportAdapter``: inference
steps only (``keeps_state = False``), one conversion per state and input shape (tf2onnx freezes the
variables into initializers), the converter's logging silenced.

What tf2onnx writes (tf2onnx 1.17, onnx_opset/nn.py ``BatchNorm``): the fused path's
FusedBatchNormV3 becomes one ONNX ``BatchNormalization`` (epsilon the float32 attribute the layer
gave FusedBatchNormV3; channels-last input wrapped in Transposes; a half x cast to the float32
statistics' type and the output cast back), the non-fused path (rank 2 / 3, float64) ``Mul`` +
``Add`` with the scale and offset TensorFlow folded at freezing. bfloat16 is not expressible:
tf2onnx maps DT_BFLOAT16 to ONNX FLOAT16 (tf_utils.TF_TO_ONNX_DTYPE), so the exported model takes,
computes and returns float16 instead (capabilities drop the bfloat16 pairs; docs/modes.md).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .common import tf
from .export_litert import TfKerasExportAdapter, feed
from .keras_common import layer_capabilities

# tf_utils.TF_TO_ONNX_DTYPE: types_pb2.DT_BFLOAT16 -> onnx_pb.TensorProto.FLOAT16 (installed 1.17.0 file).
TF_TO_ONNX_DTYPE = "https://github.com/onnx/tensorflow-onnx/blob/v1.17.0/tf2onnx/tf_utils.py#L76"
ONNX_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
_EAGER = layer_capabilities(None)


class TfKerasTf2OnnxAdapter(TfKerasExportAdapter):
    """tf_keras.auto's layer converted by tf2onnx and run by ONNX Runtime (CPU)."""

    name = "tf_keras.auto+tf2onnx"
    framework = "tf2onnx"  # the converter; the runtime's version is onnxruntime's
    extra = "export"
    requires = ("tensorflow", "tf_keras", "tf2onnx", "onnxruntime")
    device_kinds = ("cpu",)
    # bfloat16 becomes float16 in the exported model (module docstring): not a bfloat16 BN.
    capabilities = replace(_EAGER.inference_only(),
                           dtypes=frozenset(p for p in _EAGER.dtypes if "bfloat16" not in p))
    notes = ("tf2onnx.convert.from_keras (default opset) + onnxruntime CPU; inference steps only, one conversion "
             "per state; fused path -> BatchNormalization, non-fused -> Mul + Add; bfloat16 is written as float16 "
             "(TF_TO_ONNX_DTYPE), so bfloat16 is unsupported")
    speed_note = ("~0.1-0.2 s per inference step (the first ~0.7 s): the state is frozen into the ONNX initializers, "
                  "so each step's state is converted anew (trace, freeze, tf2onnx rewriters) and a session created; "
                  "~20 ms once the ONNX file is kept from an earlier run (export cache)")

    converter_distributions = ("tensorflow", "tf_keras", "tf2onnx", "onnx")

    def convert(self, model) -> bytes:
        import tf2onnx

        spec = [tf().TensorSpec(model.inputs[0].shape, model.inputs[0].dtype)]
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec)
        return proto.SerializeToString()

    def runtime(self, artifact: bytes):
        import onnxruntime

        session = onnxruntime.InferenceSession(artifact, providers=["CPUExecutionProvider"])
        source = session.get_inputs()[0]
        dtype = ONNX_NUMPY.get(source.type, source.type)
        return lambda x: np.asarray(session.run(None, {source.name: feed(x, dtype)})[0])
