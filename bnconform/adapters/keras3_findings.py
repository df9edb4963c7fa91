"""What the Keras 3 rows declare: the findings of keras.layers.BatchNormalization on its backends
(each a Deviation with its kind, explanation and link, re-verified on every run), shared by the
eager rows (keras3.py), the replicated rows (keras3_replicas.py) and the compiled rows.

* empty batch (all backends, defect): 0/0 moments are assigned, moving statistics become NaN;
  dgamma of an empty batch is NaN (edge).
* float64 on jax/torch (dtype): Keras type promotion maps float64 to float32 except on
  TensorFlow, so a float64 layer computes in float32 (on JAX from Keras 3.12).
* float32 inputs of ~1e37 (precision): squared deviations overflow.
* torch backend (precision): one-pass variance mean(x^2) - mean(x)^2 cancels.
"""

from __future__ import annotations

from ..judging.selectors import case_in, empty_batch_gamma_gradient, input_dtype_in
from .base import Deviation, Mismatches
from .findings import empty_batch_nan_running_stats, float32_variance_overflow

KERAS_BN_SOURCE = ("https://github.com/keras-team/keras/blob/master/"
                   "keras/src/layers/normalization/batch_normalization.py")

KERAS_BACKEND_SOURCE = "https://github.com/keras-team/keras/blob/master/keras/src/backend/{backend}/nn.py"

EMPTY_BATCH_NAN = empty_batch_nan_running_stats(
    "keras3-empty-batch-nan-moving-stats",
    ("the moments of an empty batch are 0/0 = NaN and call() assigns "
     "momentum * moving + (1 - momentum) * NaN with no N == 0 guard"),
    KERAS_BN_SOURCE)


def overflow_deviation(backend: str, what_happens: str) -> Deviation:
    return float32_variance_overflow(
        f"keras3-{backend}-float32-variance-overflow",
        ("BatchNormalization computes the moments of float32 inputs in float32 "
         f"(no wider accumulator), so squares of ~1e37 overflow: {what_happens}"),
        KERAS_BACKEND_SOURCE.format(backend=backend), effect=what_happens)


# ops.batch_normalization per backend at keras v3.15.1: the line that applies rsqrt(var + eps) * scale.
_NORMALIZE_LINES = {"jax": ("x * inv + (offset - mean * inv) with inv = rsqrt(variance + epsilon) * scale", 1080),
                    "tensorflow": ("tf.nn.batch_normalization, x * inv + (offset - mean * inv) with inv = "
                                   "rsqrt(variance + epsilon) * scale", 1564),
                    "torch": ("(x - mean) * (rsqrt(variance + epsilon) * scale) + offset", 1029)}


def empty_batch_dgamma_deviation(backend: str) -> Deviation:
    """A fuzz finding, promoted: the layer's ops.batch_normalization backward on an empty batch."""
    form, line = _NORMALIZE_LINES[backend]
    return Deviation(
        name="keras3-empty-batch-dgamma-nan",
        kind="edge",
        applies=empty_batch_gamma_gradient,
        behaviour=Mismatches(("dgamma",), "dgamma is NaN on an empty batch (the model's is 0, an empty sum)"),
        explanation=(f"call() normalizes with ops.batch_normalization, on {backend} {form}; for N == 0 the "
                     "moments are 0/0 = NaN and d/dscale = rsqrt(variance + epsilon) * (empty sums) = NaN * 0 "
                     "(found by bnconform fuzz)"),
        link=f"https://github.com/keras-team/keras/blob/v3.15.1/keras/src/backend/{backend}/nn.py#L{line}",
    )


FLOAT64_AS_FLOAT32 = Deviation(
    name="keras3-float64-computed-in-float32",
    kind="dtype",
    applies=input_dtype_in("float64"),
    behaviour=Mismatches(("y", "running_mean", "running_var", "dx", "dgamma", "dbeta"),
                         "y, the moving statistics and the gradients carry float32 (not float64) precision"),
    explanation=("call() computes in backend.result_type(inputs.dtype, 'float32'), and Keras maps "
                 "float64 to float32 on every backend but TensorFlow, so a float64 layer normalizes "
                 "in float32 (errors ~1e-7 relative; 1e150-scale inputs overflow to NaN). Since Keras 3.12: "
                 "its result_type forces 64-bit dtypes to 32-bit off TensorFlow (keras/src/backend/common/"
                 "dtypes.py; absent from 3.11.3, it came as Keras stopped setting JAX_DEFAULT_DTYPE_BITS, pull "
                 "request 21604); before it result_type(float64, float32) is float64 with JAX_ENABLE_X64 and the "
                 "sweep passes these cells on 3.3.3 to 3.11.3 (reports/history.md)"),
    link="https://github.com/keras-team/keras/issues/23704",
    versions=">=3.12",
)

# Where the torch backend's one-pass variance E[x^2] - E[x]^2 (float32) cancels badly: a mean 1e4
# times the spread, and a batch of two with a spread close to epsilon (data-dependent: named cases).
TORCH_ONE_PASS_VARIANCE = Deviation(
    name="keras3-torch-one-pass-variance",
    kind="precision",
    applies=case_in("degenerate/cancellation_float32_1e4_biased", "degenerate/cancellation_float32_1e4_nhwc_biased",
                    "momentum/decay_0.9_biased_n2",
                    "gradients/offset_1e4_float32_train_biased"),
    behaviour=Mismatches(("y", "running_var", "dx", "dgamma"),
                         "y (and running_var, dx, dgamma) lose precision to cancellation, down to NaN"),
    explanation=("the torch backend's ops.moments computes variance as mean(x^2) - mean(x)^2 in float32, "
                 "which cancels (negative variance -> NaN y for mean/std ~ 1e4; 2.6e-4 relative y error "
                 "for N=2 with variance near epsilon) where the two-pass TF/JAX moments do not"),
    link="https://github.com/keras-team/keras-core/pull/866",
)
