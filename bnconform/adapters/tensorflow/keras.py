"""Keras 2 (tf_keras) Batch Normalization: the layer on its three paths, and the backend functions.

Layer adapters (``tf_keras.layers.BatchNormalization``, run eagerly, ``layer(x, training=...)``):

=========================  ==================================================================
canonical knob             tf_keras argument
=========================  ==================================================================
channel_axis               ``axis``
decay (weight on old)      ``momentum`` (same convention: moving = momentum*moving + (1-momentum)*batch)
epsilon / epsilon_floor    ``epsilon=max(epsilon, epsilon_floor)`` (added inside the sqrt)
scale / center             ``scale`` / ``center``
input_dtype                ``dtype`` (the layer policy); half inputs keep float32 variables
gamma, beta, running_*     ``gamma``, ``beta``, ``moving_mean``, ``moving_variance`` (assigned)
normalize_with batch       ``training=True`` (always updates the moving statistics)
normalize_with running     ``training=False``
renorm (rmin, rmax, dmax)  ``renorm=True``, ``renorm_clipping`` (only the bounds the case sets)
renorm.decay               ``renorm_momentum``; renorm_mean / renorm_stddev / running_stddev are
                           ``renorm_mean`` / ``renorm_stddev`` / ``moving_stddev``
virtual_batch_size         ``virtual_batch_size`` (ghost batches; the layer splits them interleaved)
=========================  ==================================================================

``tf_keras.auto`` passes ``fused=None`` (the layer picks the fused kernel for 4-D/5-D input with
the channel axis at 1 or last and a float16/bfloat16/float32 compute dtype), ``tf_keras.fused``
passes ``fused=True`` and ``tf_keras.nonfused`` passes ``fused=False``.

Capabilities (``keras_common.layer_capabilities``): eps inside the sqrt; a plain EMA with a
constant momentum (no cumulative rule, zero-debias or num_updates schedule); training=True always
updates the moving statistics (no batch step without an update); ghost batches are interleaved
(contiguous only where both splits agree: virtual_batch_size 1 or the whole batch); variables in
the input dtype, float32 for half inputs; renorm and ghost batches, no sample weights (``mask`` is
binary). Running-variance convention: biased on the non-fused path (tf.nn.moments), Bessel on the
fused kernel (FusedBatchNormV3; tensorflow/tensorflow#55545) -- fused=None switches per case.
fused=True has only the fused kernel's ranks (4, 5), axes (1, last) and dtypes (no float64); a
case it still refuses raises Unsupported with the layer's own message. No num_updates, batch_mean
or batch_var is returned: the layer exposes none of them.

Declared deviations (``keras_common``): an empty batch turns the moving statistics NaN (defect);
float64 variables see momentum through float32(1 - momentum) (dtype); float32 statistics overflow
for |x| > ~1.8e19 (precision); renorm with float64 variables raises (defect).

``trainable=False``: in TF2 the layer then ignores ``training=True`` and runs in inference mode
(moving statistics, no update; ``_get_training_value``), so it is the same as ``training=False``
and cannot stand in for "batch statistics without an update". The adapters leave it True.

Gradients (steps with an upstream ``dy``; forward-only steps run no tape): ``tf.GradientTape``
records the very call that produced y and ``tape.gradient(y, [x, gamma, beta], output_gradients=dy)``
gives dx, dgamma, dbeta (``keras_common.tape_vjp``), for training and inference steps. The fused
kernel's gradient is FusedBatchNormGradV3 (training: through the batch moments; inference: the
moving statistics as constants); the non-fused path gets TF's op-by-op gradients of tf.nn.moments
and tf.nn.batch_normalization, through the ghost-batch reshapes too. Renorm's r and d pass through
``tf.stop_gradient`` (constants, as in the model). A frozen layer (``trainable=False``) called with
training=True has exactly the inference gradient (tests/test_keras_gradients.py checks it).
``tf_keras.backend``: the tape differentiates the function w.r.t. x and the gamma / beta tensors
passed (the reshaped ones on the eval route); 4-D channels-last training and every 4-D eval step go
through fused_batch_norm, hence FusedBatchNormGradV3.

Backend adapter (``tf_keras.backend``), functions without running statistics:

* a batch-statistics step is ``normalize_batch_in_training(x, gamma, beta, reduction_axes,
  epsilon)`` -> (y, batch_mean, batch_var); whether the case asks for an update does not matter.
* a running-statistics step is ``batch_normalization(x, running_mean, running_var, beta, gamma,
  axis, epsilon)`` with the case's initial running statistics, reshaped to broadcast along the
  channel axis (1-D for 4-D input, which goes to fused_batch_norm).
* unsupported: an eval step after an update of a non-empty batch (the caller would have to keep the
  moving statistics); epsilon placements other than inside the sqrt (the batch_normalization
  docstring writes ``(sqrt(var) + epsilon)``, but the code calls tf.nn.batch_normalization or
  fused_batch_norm, which add it inside); 4-D eval input with the channel axis at 2; half inputs
  with float32 parameters on the non-fused training route (dtype error). Running statistics are
  never returned.
"""

from __future__ import annotations

from typing import ClassVar

from ...judging.capabilities import HALF_DTYPES, Capabilities
from ...judging.selectors import empty_batch_gamma_gradient, updates_infinite_running_mean
from ..base import Adapter, Unsupported, has_training_step
from .common import (TF_ENVIRONMENT, channel_shape, empty_batch_dgamma_nan, empty_rank5_fused_gradient, tf,
                     tf_device_scope, tf_devices, to_numpy, to_tensor)
from .keras_common import (GRADIENTS, KERAS_DTYPES, LAYER, backend_deviations, empty_batch_deviation,
                           float64_decay_deviation, fused_path, infinite_mean_deviation, layer_capabilities,
                           layer_defaults, overflow_deviation, renorm_float64_deviation, tape_vjp, tensorflow_for,
                           tf_keras)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _TfKerasLayerAdapter(Adapter):
    """Shared machinery of the three BatchNormalization adapters; ``fused`` is the layer argument."""
    environment = TF_ENVIRONMENT

    framework = "tf_keras"
    extra = "tensorflow"
    requires = ("tensorflow", "tf_keras")
    device_kinds = ("cpu", "cuda")
    decay_parameter = ("momentum", "old")
    speed_note = ("~4-5 ms CPU per case first pass, ~2.5 warm: an eager call runs ~35 TF ops (~1-2 ms per step) and "
                  "a new layer structure ~2.5 ms of variable creation; a tf.function traces in ~40-60 ms per layer, "
                  "more than the ~2.5 cases each layer serves")
    fused: ClassVar[bool | None] = None

    def __init__(self):
        self._layers = {}  # (device, dtype, rank, shape of params, knobs) -> layer or ValueError

    @classmethod
    def sweep_requirements(cls, version: str) -> tuple[str, ...]:
        return tensorflow_for(version)  # tf_keras X.Y runs on TensorFlow X.Y

    def devices(self):
        return [device for device in tf_devices() if device in self.device_kinds]

    def framework_defaults(self):
        return layer_defaults(tf_keras().layers.BatchNormalization)

    def uses_fused(self, case) -> bool:
        """Whether the layer built for this case takes the fused kernel (checked in run)."""
        return fused_path(case, "cpu") if self.fused is None else bool(self.fused)

    def run(self, case, device):
        layer = self._layer(case, device)
        if isinstance(layer, ValueError):  # the layer's own "fused=True is only supported ..." refusal
            raise Unsupported(f"{LAYER}(fused={self.fused}) refuses this case: {_first_line(layer)}")
        if bool(layer.fused) != self.uses_fused(case):
            raise RuntimeError(f"Expected: fused={self.uses_fused(case)} for this case. Received: {layer.fused}")
        # Plain attributes the layer reads at call time only (its __init__ just stores them), so one
        # built layer serves every decay and epsilon: building costs more than a whole case.
        layer.momentum, layer.epsilon = case.config.running_stats.decay, case.config.effective_epsilon
        with tf_device_scope(device):
            _assign_state(layer, case)
            return [self._step(layer, case, step) for step in case.steps]

    def _step(self, layer, case, step) -> dict:
        x, call = to_tensor(step.x, case.config.input_dtype), lambda x: layer(x, training=step.is_training)
        if step.dy is None:  # forward only: no tape
            y, grads = call(x), {}
        else:
            y, grads = tape_vjp(call, x, {"dgamma": layer.gamma, "dbeta": layer.beta}, step.dy)
        flat = lambda variable: to_numpy(variable).reshape(-1)  # ghost batching adds unit axes
        out = {"y": to_numpy(y), "running_mean": flat(layer.moving_mean), "running_var": flat(layer.moving_variance),
               **grads}
        if layer.renorm:
            out.update(renorm_mean=flat(layer.renorm_mean), renorm_stddev=flat(layer.renorm_stddev),
                       running_stddev=flat(layer.moving_stddev))
        return out

    def _layer(self, case, device):
        """A built layer for the case's structural knobs (cached), or the ValueError it raised."""
        cfg = case.config
        key = (device, cfg.input_dtype, case.rank, cfg.channel_axis, case.channels, cfg.center, cfg.scale,
               cfg.renorm, cfg.virtual_batch_size)
        if key not in self._layers:
            self._layers[key] = self._build(case, device)
        return self._layers[key]

    def _build(self, case, device):
        cfg = case.config
        try:
            with tf_device_scope(device):
                layer = tf_keras().layers.BatchNormalization(
                    axis=cfg.channel_axis, momentum=cfg.running_stats.decay, epsilon=cfg.effective_epsilon,
                    center=cfg.center, scale=cfg.scale, fused=self.fused, dtype=cfg.input_dtype,
                    virtual_batch_size=cfg.virtual_batch_size, **_renorm_arguments(cfg.renorm))
                layer.build(case.steps[0].x.shape)
        except ValueError as refused:  # the layer's own "fused=True is only supported ..." messages
            return refused
        return layer


def _renorm_arguments(renorm) -> dict:
    """renorm=True with the clipping bounds the case sets (tf_keras treats a missing key as no bound)."""
    if renorm is None:
        return {}
    bounds = {"rmin": renorm.rmin, "rmax": renorm.rmax, "dmax": renorm.dmax}
    return {"renorm": True, "renorm_momentum": renorm.decay,
            "renorm_clipping": {k: v for k, v in bounds.items() if v is not None}}


def _assign_state(layer, case) -> None:
    """Load the case's initial parameters and moving statistics into the (reused) layer."""
    state = case.initial_state
    pairs = [(layer.gamma, state.gamma), (layer.beta, state.beta), (layer.moving_mean, state.running_mean),
             (layer.moving_variance, state.running_var)]
    if layer.renorm:
        pairs += [(layer.renorm_mean, state.renorm_mean), (layer.renorm_stddev, state.renorm_stddev),
                  (layer.moving_stddev, state.running_stddev)]
    for variable, values in pairs:
        if variable is not None:  # gamma / beta are None with scale / center off
            variable.assign(values.reshape(variable.shape))  # (C,) or (1, .., C, ..) with ghost batches


class TfKerasAutoAdapter(_TfKerasLayerAdapter):
    """``tf_keras.layers.BatchNormalization(fused=None)``: the layer picks fused or non-fused itself."""

    name = "tf_keras.auto"
    fused = None
    capabilities = layer_capabilities(None)
    notes = "fused=None: fused kernel for 4-D/5-D float16/bfloat16/float32 input with axis 1 or last"
    deviations = (
        empty_batch_deviation(LAYER),
        renorm_float64_deviation(LAYER),
        overflow_deviation(f"{LAYER}(fused=None)", ("y", "running_var", "dx", "dgamma")),
        float64_decay_deviation(f"{LAYER}(fused=None)"),
        # The fused path (eager, float momentum) assigns the kernel's (1 - f) old + f batch instead.
        infinite_mean_deviation(f"{LAYER}(fused=None)", updates_infinite_running_mean & ~fused_path),
        # FusedBatchNormGradV3 returns dgamma = 0 for N == 0 (measured on a [0, 3, 2, 2] batch).
        empty_batch_dgamma_nan("empty-batch-dgamma-nan", f"{LAYER}(fused=None) off its fused path",
                               empty_batch_gamma_gradient & ~fused_path),
    ) + empty_rank5_fused_gradient("fused-kernel", f"{LAYER}(fused=None) on its fused path", fused_path)


class TfKerasFusedAdapter(_TfKerasLayerAdapter):
    """``tf_keras.layers.BatchNormalization(fused=True)``: FusedBatchNormV3 or the layer's refusal."""

    name = "tf_keras.fused"
    fused = True
    capabilities = layer_capabilities(True)
    notes = "fused=True: only 4-D/5-D float16/bfloat16/float32 input with axis 1 or last"
    deviations = (empty_batch_deviation(f"{LAYER}(fused=True)"),
                  *empty_rank5_fused_gradient("fused-kernel", f"{LAYER}(fused=True)"))


class TfKerasNonFusedAdapter(_TfKerasLayerAdapter):
    """``tf_keras.layers.BatchNormalization(fused=False)``: tf.nn.moments + tf.nn.batch_normalization."""

    name = "tf_keras.nonfused"
    fused = False
    capabilities = layer_capabilities(False)
    notes = "fused=False: tf.nn.moments + tf.nn.batch_normalization, any rank and axis"
    deviations = (
        empty_batch_deviation(f"{LAYER}(fused=False)"),
        renorm_float64_deviation(f"{LAYER}(fused=False)"),
        overflow_deviation(f"{LAYER}(fused=False)", ("y", "running_var", "dx", "dgamma")),
        float64_decay_deviation(f"{LAYER}(fused=False)"),
        infinite_mean_deviation(f"{LAYER}(fused=False)"),
        empty_batch_dgamma_nan("empty-batch-dgamma-nan", f"{LAYER}(fused=False)"),
    )


# --- tf_keras.backend ---------------------------------------------------------------------------

BACKEND = "tf_keras.backend"
BACKEND_SOURCE = ("https://github.com/keras-team/tf-keras/blob/6f449910f216ff7455a90eb2a68e54a4d2956696/"
                  "tf_keras/backend.py")


def backend_fused_route(case, device) -> bool:
    """normalize_batch_in_training hands 4-D input reduced over (0,1,2) to fused_batch_norm, and
    over (0,2,3) too where NCHW is supported (a GPU outside an explicit CPU scope)."""
    axis = case.config.channel_axis
    return case.rank == 4 and (axis == 3 or (axis == 1 and device == "cuda"))


class TfKerasBackendAdapter(Adapter):
    """``tf_keras.backend.normalize_batch_in_training`` (batch steps) and ``batch_normalization``
    (running-statistics steps): functions that keep no running statistics."""
    environment = TF_ENVIRONMENT

    name = "tf_keras.backend"
    keeps_state = False  # a function per call: the caller keeps the running statistics
    framework = "tf_keras"
    extra = "tensorflow"
    requires = ("tensorflow", "tf_keras")
    device_kinds = ("cpu", "cuda")
    notes = ("functional: no running statistics (eval steps use the case's initial ones); "
             "per-channel vectors reshaped to broadcast along the channel axis")
    speed_note = ("~1.2 ms CPU per forward case (two TF calls, no variables); a gradient case ~3 ms: the tape's eager "
                  "backward runs each forward op's Python gradient function (~2 ms), and a tf.function would trace "
                  "per shape (~40-60 ms)")
    deviations = backend_deviations(BACKEND, BACKEND_SOURCE, backend_fused_route) + (
        empty_batch_dgamma_nan("backend-empty-batch-dgamma-nan", f"{BACKEND}.normalize_batch_in_training"),)
    # eps inside the sqrt (tf.nn.batch_normalization / fused_batch_norm; the batch_normalization
    # docstring's (sqrt(var) + epsilon) is not what runs). No running statistics are kept, so the
    # running-statistics conventions never reach an output (an eval step after an update is
    # refused in supports()); a running-statistics step cannot update anything.
    capabilities = Capabilities(
        epsilon_modes=frozenset({"add_inside_sqrt"}), dtypes=KERAS_DTYPES, gradients=GRADIENTS,
        step_kinds=frozenset({("batch", True), ("batch", False), ("running", False)}))

    @classmethod
    def sweep_requirements(cls, version: str) -> tuple[str, ...]:
        return tensorflow_for(version)  # tf_keras X.Y runs on TensorFlow X.Y

    def devices(self):
        return [device for device in tf_devices() if device in self.device_kinds]

    def framework_defaults(self):
        import inspect

        parameters = inspect.signature(tf_keras().backend.normalize_batch_in_training).parameters
        return {"decay_parameter": None, "epsilon": parameters["epsilon"].default}

    def supports(self, case, device):
        return _backend_steps_reason(case, device) or _backend_half_reason(case, device)

    def run(self, case, device):
        with tf_device_scope(device):
            params = _BackendParams(case)
            return [params.step(step) for step in case.steps]


def _backend_steps_reason(case, device) -> str | None:
    updated = False
    for step, n in zip(case.steps, case.reduce_counts()):
        if not step.is_training and updated:
            return (f"{BACKEND} functions keep no running statistics: an eval step after an update "
                    f"needs moving statistics that the caller would have to maintain")
        updated = updated or (step.is_training and step.update_running_stats and n > 0)
    if case.rank == 4 and case.config.channel_axis not in (1, 3) and not all(s.is_training for s in case.steps):
        return (f"{BACKEND}.batch_normalization sends 4-D input to fused_batch_norm, which takes the "
                f"channel axis only at 1 or 3 (axis={case.config.channel_axis} fails)")
    return None


def _backend_half_reason(case, device) -> str | None:
    if case.config.input_dtype in HALF_DTYPES and has_training_step(case) and not backend_fused_route(case, device):
        return (f"{BACKEND}.normalize_batch_in_training off the fused route cannot take float32 gamma/beta "
                f"with {case.config.input_dtype} input (InvalidArgumentError: expected a half tensor)")
    return None


class _BackendParams:
    """The case's tensors, shaped for the two backend functions, and one call per step."""

    def __init__(self, case):
        cfg, state = case.config, case.initial_state
        self.case, self.axis = case, cfg.channel_axis
        self.reduction_axes = [i for i in range(case.rank) if i != cfg.channel_axis]
        # 4-D eval input goes to fused_batch_norm, which wants 1-D vectors; other ranks broadcast.
        shape = [-1] if case.rank == 4 else channel_shape(case.rank, cfg.channel_axis, case.channels)
        vector = lambda values: to_tensor(values, cfg.param_dtype)
        shaped = lambda values: tf().reshape(vector(values), shape)
        self.gamma = vector(state.gamma) if cfg.scale else None
        self.beta = vector(state.beta) if cfg.center else None
        self.eval_args = [shaped(state.running_mean), shaped(state.running_var),
                          shaped(state.beta) if cfg.center else None, shaped(state.gamma) if cfg.scale else None]

    def step(self, step) -> dict:
        x, moments = to_tensor(step.x, self.case.config.input_dtype), {}

        def call(x):  # y; the training call's batch moments go to `moments`
            backend, eps = tf_keras().backend, self.case.config.effective_epsilon
            if not step.is_training:
                return backend.batch_normalization(x, *self.eval_args, axis=self.axis, epsilon=eps)
            y, moments["batch_mean"], moments["batch_var"] = backend.normalize_batch_in_training(
                x, self.gamma, self.beta, self.reduction_axes, epsilon=eps)
            return y

        if step.dy is None:  # forward only: no tape
            y, grads = call(x), {}
        else:  # gradients w.r.t. the very tensors passed (reshaped ones on the eval route)
            gamma, beta = (self.gamma, self.beta) if step.is_training else (self.eval_args[3], self.eval_args[2])
            y, grads = tape_vjp(call, x, {"dgamma": gamma, "dbeta": beta}, step.dy)
        return {"y": to_numpy(y), **{k: to_numpy(v) for k, v in moments.items()}, **grads}
