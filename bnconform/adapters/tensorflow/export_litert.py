"""tf_keras BatchNormalization exported: a real tf_keras model converted and run by a deployment runtime.

``tf_keras.auto+litert``: a functional ``tf_keras.Model`` holding the very layer ``tf_keras.auto``
builds (``fused=None``, the case's axis, epsilon, momentum, center, scale, dtype, renorm and ghost
batch knobs; gamma, beta and the moving statistics assigned), called with ``training=False``,
converted by ``tf.lite.TFLiteConverter.from_keras_model(model).convert()`` (plain float
conversion: no optimizations, no quantization, builtin ops only) and run by
``ai_edge_litert.interpreter.Interpreter`` (default options: XNNPACK delegate on CPU). The
tf2onnx row (``export_tf2onnx.py``) shares everything here but the converter and the runtime.

The exported graph is inference only: it keeps no running statistics, so the row is judged step by
step from the state each case expects (``keeps_state = False``, bnconform.judging.stepwise) and
expresses only inference steps (``("running", False)``, no gradients). The converter freezes the
layer's variables into constants (LiteRT folds the inference BN into MUL + ADD with precomputed
scale and offset), so every state needs a conversion of its own: converted models are cached per
(layer structure, epsilon, per-sample shape, state bytes) -- the model takes a batch of any size
(``Input(batch_size=None)``, as users export; the interpreter is resized to each batch, an empty
one included) -- and a case costs one conversion per inference step (``speed_note``). The
flatbuffers are also kept on disk between runs (bnconform.adapters.export_cache, keyed by
:func:`model_subject`, the converter's versions and this module's export code).

The converter's C++ diagnostics (MLIR ``loc(...)`` lines, absl logging) and the interpreter's
"Created TensorFlow Lite XNNPACK delegate" line go to file descriptor 2, below Python:
:func:`quiet_native` points descriptors 1 and 2 at /dev/null around each run (conversion, interpreter
creation, tensor allocation), and raises Python's tensorflow / absl / tf2onnx loggers to ERROR, so nothing reaches
the terminal; a refusal still reaches the judge as the converter's exception.
"""

from __future__ import annotations


import numpy as np

from ...judging.selectors import input_dtype_in, where
from ..base import Deviation, Raises
from ..export_cache import cached_artifact, recipe
from ..quiet import silenced
from .common import tf, tf_device_scope
from .keras import TfKerasAutoAdapter, _assign_state
from .keras_common import fused_path, layer_capabilities, tf_keras

# LiteRT's builtin op set: TFL_MulOp / TFL_AddOp take f32, i32, i64 and quantized types (no f64).
TFL_OPS = "https://github.com/tensorflow/tensorflow/blob/v2.21.0/tensorflow/compiler/mlir/lite/ir/tfl_ops.td"
# convert_tensor_tf_type_to_tflite_type: the model input types the converter maps (no bfloat16).
CONVERT_PY = "https://github.com/tensorflow/tensorflow/blob/v2.21.0/tensorflow/lite/python/convert.py#L64"
# FusedBatchNormV3Pat lowers an inference FusedBatchNormV3 to x * m + (offset - mean * m) with
# m = scale * rsqrt(variance + epsilon) (then constant-folded), only for an f32 x in NHWC / NDHWC
# (read on master; C++, no installed copy).
PREPARE_TF = ("https://github.com/tensorflow/tensorflow/blob/master/"
              "tensorflow/compiler/mlir/lite/transforms/prepare_tf.cc")
CACHE_SIZE = 64  # converted models kept (one per state and shape; a case needs one per inference step)
LOGGERS = ("tensorflow", "absl", "tf2onnx", "h5py")


def quiet_native():
    """:func:`..quiet.silenced` with the converters' loggers (descriptors 1 and 2 on /dev/null meanwhile)."""
    return silenced(LOGGERS)


class TfKerasExportAdapter(TfKerasAutoAdapter):
    """The tf_keras.auto layer in a functional model, exported per state and shape by
    :meth:`export` (returns ``x -> y``); every step is an inference step from the case's state."""

    name = "tf_keras.auto+export"  # a base: not registered
    execution_mode = "exported"
    eager_row = "tf_keras.auto"
    keeps_state = False
    isolated = True  # converters import their own machinery; keep it out of the eager rows' process
    capabilities = layer_capabilities(None).inference_only()
    deviations = ()

    def __init__(self):
        super().__init__()
        self._exported = {}  # (layer, model_subject) -> x -> y

    def run(self, case, device):
        layer = self._layer(case, device)
        if isinstance(layer, ValueError):
            raise RuntimeError(f"tf_keras.layers.BatchNormalization refused the case: {layer}")
        if bool(layer.fused) != self.uses_fused(case):
            raise RuntimeError(f"Expected: fused={self.uses_fused(case)} for this case. Received: {layer.fused}")
        layer.momentum, layer.epsilon = case.config.running_stats.decay, case.config.effective_epsilon
        with tf_device_scope(device), quiet_native():  # the runtime logs on first allocation too
            _assign_state(layer, case)
            return [{"y": self._runner(layer, case, step.x.shape)(step.x)} for step in case.steps]

    def _runner(self, layer, case, shape):
        """The exported model for this layer, state and per-sample shape (cached; batch dynamic)."""
        dtype = case.config.input_dtype
        subject = model_subject(layer, shape, dtype)  # epsilon, shape and state included
        key = (id(layer), subject)
        if key not in self._exported:
            if len(self._exported) >= CACHE_SIZE:
                self._exported.pop(next(iter(self._exported)))
            # batch None, as users export: the runtime is resized to each batch (an empty one too)
            inputs = tf_keras().Input(shape=tuple(shape[1:]), dtype=dtype)
            model = tf_keras().Model(inputs, layer(inputs, training=False))
            artifact = cached_artifact(self.name, self.converter_distributions,
                                       recipe(TfKerasExportAdapter._runner, type(self).convert), subject,
                                       lambda: self.convert(model))
            self._exported[key] = self.runtime(artifact)
        return self._exported[key]

    def convert(self, model) -> bytes:
        """Convert ``model``; the serialized artifact (kept by bnconform.adapters.export_cache)."""
        raise NotImplementedError

    def runtime(self, artifact: bytes):
        """``x -> y`` (NumPy): the runtime running the artifact :meth:`convert` wrote."""
        raise NotImplementedError


def model_subject(layer, shape, input_dtype) -> bytes:
    """What the converter reads of the one-layer model: the layer's class and configuration without
    its generated name, whether it took the fused path, the per-sample input shape and dtype, then
    every weight's dtype, shape and bytes in the layer's order (export_cache's subject)."""
    config = {k: v for k, v in layer.get_config().items() if k != "name"}
    head = f"{type(layer).__module__}.{type(layer).__qualname__};{sorted(config.items())!r};fused={layer.fused};"
    head += f"input={tuple(shape[1:])}:{input_dtype}"
    weights = [np.ascontiguousarray(w.numpy()) for w in layer.weights]
    return head.encode() + b"".join(f";{w.dtype}{w.shape}".encode() + w.tobytes() for w in weights)


def feed(x, dtype) -> np.ndarray:
    """x as the runtime's declared input dtype; a dtype other than the case's is refused (the
    export must take the case's dtype: nothing is cast silently)."""
    value = np.asarray(x)
    if np.dtype(dtype) != value.dtype:
        raise RuntimeError(f"Expected: the exported model to take {value.dtype} input. Received: {np.dtype(dtype)}")
    return value


# --- tf_keras.auto+litert -------------------------------------------------------------------------

@where("4-D / 5-D float16 input with the channel axis at 1 or last (tf_keras emits FusedBatchNormV3)")
def _float16_fused(case) -> bool:
    return case.config.input_dtype == "float16" and fused_path(case, "cpu")


@where("5-D float32 input with the channel axis at 1, no renorm or ghost batches (tf_keras emits "
       "FusedBatchNormV3 in NCDHW)")
def _float32_ncdhw(case) -> bool:
    return (case.config.input_dtype == "float32" and case.rank == 5 and case.config.channel_axis == 1
            and fused_path(case, "cpu"))


def _refused(name, kind, applies, exception, match, explanation, link) -> Deviation:
    return Deviation(name=name, kind=kind, applies=applies, behaviour=Raises(exception, match),
                     explanation=explanation, link=link)


LITERT_DEVIATIONS = (
    _refused("litert-float64-refused", "dtype", input_dtype_in("float64"), "ConverterError",
             "neither a custom op nor a flex op",
             "TFLiteConverter refuses a float64 model: the layer's inference graph is tf.Mul / tf.AddV2 on f64 "
             "tensors and LiteRT's builtin MUL / ADD take no f64 ('Some ops are not supported by the native TFLite "
             "runtime ... TF Select ops: Mul'); TF Select, which would run them, is not in ai_edge_litert",
             TFL_OPS),
    _refused("litert-bfloat16-input-refused", "dtype", input_dtype_in("bfloat16"), "ValueError",
             "Unsupported TensorFlow type `<dtype: 'bfloat16'>`",
             "TFLiteConverter refuses a bfloat16 model input before converting: "
             "convert_tensor_tf_type_to_tflite_type maps float16, float32, float64 and integer types, not bfloat16",
             CONVERT_PY),
    _refused("litert-float16-fused-batch-norm-refused", "dtype", _float16_fused, "ConverterError",
             "FusedBatchNormV3",
             "on its fused path tf_keras emits tf.FusedBatchNormV3 with an f16 x and f32 statistics; the converter's "
             "FusedBatchNormV3Pat lowers it to MUL + ADD only for an f32 x (TFTypeIsFloat32Tensor) and the op is "
             "left for TF Select, so conversion fails, though the same layer's non-fused float16 graph (rank 2 / 3: "
             "CAST, MUL, ADD, CAST) converts and runs",
             PREPARE_TF),
    _refused("litert-ncdhw-fused-batch-norm-refused", "defect", _float32_ncdhw, "ConverterError",
             "FusedBatchNormV3",
             "a float32 channels-first 5-D layer emits tf.FusedBatchNormV3 with data_format NCDHW; the converter's "
             "FusedBatchNormV3Pat lowers only NHWC / NDHWC (4-D NCHW is first transposed to NHWC by the layout "
             "pass, 5-D NCDHW is not), so a valid float32 model fails to convert ('TF Select ops: "
             "FusedBatchNormV3')",
             PREPARE_TF),
)


class TfKerasLiteRtAdapter(TfKerasExportAdapter):
    """tf_keras.auto's layer converted by TFLiteConverter and run by the LiteRT interpreter."""

    name = "tf_keras.auto+litert"
    framework = "tensorflow"  # the converter (tf.lite); the interpreter is ai-edge-litert
    extra = "export"
    requires = ("tensorflow", "tf_keras", "ai_edge_litert")
    device_kinds = ("cpu",)  # the interpreter runs on the host CPU (XNNPACK)
    notes = ("TFLiteConverter.from_keras_model (float, builtin ops) + ai_edge_litert Interpreter (XNNPACK); "
             "inference steps only, one conversion per state; BN becomes MUL + ADD with folded constants")
    speed_note = ("~0.3-0.7 s per inference step (the first ~3 s): the state is frozen into the flatbuffer, so "
                  "each step's state is converted anew (trace, freeze, MLIR passes); ~20-50 ms once the flatbuffer "
                  "is kept from an earlier run (export cache); the interpreter call is ~0.1 ms")
    deviations = LITERT_DEVIATIONS

    converter_distributions = ("tensorflow", "tf_keras")  # tf.lite's converter ships in tensorflow

    def convert(self, model) -> bytes:
        return tf().lite.TFLiteConverter.from_keras_model(model).convert()

    def runtime(self, artifact: bytes):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=artifact)
        return lambda x: invoke(interpreter, x)


def invoke(interpreter, x) -> np.ndarray:
    """One LiteRT invocation on x (its one input, its one output), the input resized to x's batch."""
    (source,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(source["index"], np.shape(x))
    interpreter.allocate_tensors()
    (target,) = interpreter.get_output_details()
    interpreter.set_tensor(source["index"], feed(x, source["dtype"]))
    interpreter.invoke()
    return np.array(interpreter.get_tensor(target["index"]))
