"""Keras 3 ``keras.layers.BatchNormalization`` on each of its backends (tensorflow, jax, torch).

Keras 3 reads ``KERAS_BACKEND`` once per process, so each adapter class declares its backend in
``environment`` -- the same environment as that framework's own adapters, whose host process it
shares (adapters with different environments never share one) -- and checks at run time that
``keras.backend.backend()`` is the one it expects.

Translation (canonical knob -> Keras argument):

    channel_axis            -> axis=channel_axis (any axis; no transposition)
    decay (weight on old)   -> momentum=decay (Keras momentum is the weight on the OLD statistic)
    epsilon, epsilon_floor  -> epsilon=max(epsilon, epsilon_floor) (added inside the sqrt)
    scale / center          -> scale= / center=
    input/param dtype       -> dtype policy: "float32", "float64", or "mixed_float16" /
                               "mixed_bfloat16" for half inputs with float32 parameters
    gamma, beta, running_*  -> layer.gamma / beta / moving_mean / moving_variance .assign(...)
    normalize_with=batch    -> layer(x, training=True)  (always updates the moving statistics)
    normalize_with=running  -> layer(x, training=False) (never updates them)

Outputs: y, and running_mean / running_var read back from the moving_* variables after each
step. The layer exposes no batch moments, so batch_mean / batch_var are not returned.

Capabilities (data, ``KERAS3_CAPABILITIES``): conventions eps inside the sqrt, a biased running
variance (ops.moments, no N/(N-1)), a plain EMA with a constant momentum (no zero-debias, no
num_updates schedule, no cumulative rule); steps are training=True (batch statistics, always
updating the moving statistics) or training=False (moving statistics, never updating); dtypes
float32, float64, and half inputs with float32 variables (mixed policies); no model extensions.

Observation on ``trainable=False`` (documented by Keras; checked by hand with keras 3.15 on the
tensorflow and torch backends):
``call`` takes the batch-statistics branch only when ``training and self.trainable``, so a
frozen layer called with training=True normalizes with the MOVING statistics and leaves them
unchanged - it behaves exactly like training=False. It is therefore no way to express "batch
statistics without update" either, which stays unsupported.

Speed: layers are built once per (device, rank, C, axis, dtypes, scale, center); per case only
their variables are re-assigned and momentum / epsilon set (plain floats read by call()).
Every backend uses the eager layer call for the forward: jax.jit(layer.stateless_call) compiles one
program per input shape (~110 ms CPU each), more than the eager per-op compiles it replaces (~75 ms
median per case), since the suite runs most shapes once. Gradient steps on JAX are jitted (below).

Gradients (steps with an upstream ``dy``; forward-only steps are unchanged): each backend's own
autodiff on the call that produces y, for training and inference steps.

* tensorflow: ``tf.GradientTape`` over the eager call, w.r.t. x and the tf.Variables behind gamma
  and beta (``keras_common.tape_vjp``).
* torch: ``torch.autograd.grad(y, [x, gamma, beta], grad_outputs=dy)``; x requires grad, and the
  trainable Keras variables are torch Parameters.
* jax: ``jax.vjp`` over ``layer.stateless_call`` (x and the trainable variables in; y, and the
  updated moving statistics as aux, out), assigning those statistics back as the stateful call
  would. Jitted per layer, mode, momentum and epsilon (call() reads the two floats, so a trace
  bakes them in): an eager vjp compiles every forward and backward primitive per shape, ~2.8x the
  forward's first-pass cost, against ~1.2x for one jitted program.

A frozen layer (``trainable=False``) takes the inference branch (``training and self.trainable``),
so its gradient is the inference one. The float64 and torch one-pass-variance deviations reach the
gradients too (their Mismatches name dx and dgamma).

Model extensions: renorm, virtual_batch_size and sample_weights are not translated here (Keras 3
has renorm=..., but no ghost batches and only a boolean mask, not real-valued weights).

Declared deviations (findings; each re-checked on every run): :mod:`.keras3_findings`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from typing import ClassVar

import numpy as np

from ..caseformat.model import Case
from ..judging.capabilities import Capabilities
from ..judging.declarations import release
from .base import Adapter
from .keras3_findings import (EMPTY_BATCH_NAN, FLOAT64_AS_FLOAT32, TORCH_ONE_PASS_VARIANCE, empty_batch_dgamma_deviation,
                              overflow_deviation)
from .jax.common import X64_ENVIRONMENT
from .tensorflow.common import TF_ENVIRONMENT, tf, tf_devices
from .tensorflow.keras_common import GRADIENTS, KERAS_DTYPES, layer_defaults, tape_vjp
from .torch.common import ENVIRONMENT as TORCH_ENVIRONMENT



@functools.lru_cache(maxsize=None)
def _keras(expected_backend: str):
    """Import keras once, checking that this process runs the expected backend."""
    keras = importlib.import_module("keras")
    actual = keras.backend.backend()
    if actual != expected_backend:
        raise RuntimeError(f"Keras 3 backend mismatch. Expected: {expected_backend} (set "
                           f"KERAS_BACKEND={expected_backend} before importing keras). Received: {actual}")
    return keras


def _dtype_policy(config) -> str:
    """The Keras dtype policy for the case's (input, param) dtypes (one of KERAS_DTYPES)."""
    return config.input_dtype if config.input_dtype == config.param_dtype else f"mixed_{config.input_dtype}"


KERAS3_CAPABILITIES = Capabilities(
    epsilon_modes=frozenset({"add_inside_sqrt"}), running_variance=frozenset({"biased"}),
    zero_debias=frozenset({False}), num_updates_schedule=frozenset({False}), running_rules=frozenset({"ema"}),
    step_kinds=frozenset({("batch", True), ("running", False)}), dtypes=KERAS_DTYPES, gradients=GRADIENTS)

# A version sweep's backend beside keras==X.Y (Keras 3 imports its backend, never requires it): a
# release of the same era per Keras minor (jaxlib before 0.4.31 was built against NumPy 1.x; keras 3.3
# imports packaging without requiring it, which TensorFlow brings and JAX does not); other
# minors get the newest release. The torch backend is never pinned (PyPI's torch carries CUDA).
SWEEP_BACKENDS = {"tensorflow": {(3, 3): ("tensorflow~=2.16.0",), (3, 8): ("tensorflow~=2.18.0",),
                                 (3, 15): ("tensorflow~=2.21.0",)},
                  "jax": {(3, 3): ("jax[cpu]==0.4.26", "numpy<2", "packaging"), (3, 8): ("jax[cpu]==0.4.38",),
                          (3, 11): ("jax[cpu]==0.7.1",), (3, 12): ("jax[cpu]==0.8.0",), (3, 15): ("jax[cpu]==0.10.2",)}}


class _Keras3Adapter(Adapter):
    """Shared machinery; subclasses pick the backend."""

    backend: ClassVar[str] = ""
    framework = "keras"
    device_kinds = ("cpu", "cuda")
    decay_parameter = ("momentum", "old")
    capabilities = KERAS3_CAPABILITIES

    def __init__(self):
        self._layers: dict = {}
        self._programs: dict = {}  # jitted VJP programs (JAX backend only)

    @classmethod
    def sweep_requirements(cls, version: str) -> tuple[str, ...]:
        """The backend framework of keras ``version``'s era (SWEEP_BACKENDS), else its newest release."""
        return SWEEP_BACKENDS.get(cls.backend, {}).get(release(version)[:2], (cls.requires[0],))

    def keras(self):
        return _keras(self.backend)

    def unavailable_reason(self) -> str | None:
        reason = super().unavailable_reason()
        if reason:
            return reason
        try:
            self.keras()
        except RuntimeError as exc:
            return str(exc)
        return None

    def framework_version(self) -> str:
        backend_dist = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[self.backend]
        try:
            version = importlib.metadata.version(backend_dist)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        return f"{super().framework_version()} ({self.backend} {version})"

    def framework_defaults(self):
        return layer_defaults(self.keras().layers.BatchNormalization)

    def _device_name(self, device: str) -> str:
        return "gpu:0" if device == "cuda" else "cpu:0"

    def _layer(self, case: Case, device: str):
        """A built layer for (device, rank, C, axis, dtypes, scale, center), built once and reused:
        building (variable creation) costs more than a whole case, so decay and epsilon are not
        part of the key (run() sets them; see there)."""
        config = case.config
        key = (device, case.rank, case.channels, config.channel_axis, config.input_dtype,
               config.param_dtype, config.scale, config.center)
        if key not in self._layers:
            keras = self.keras()
            with keras.device(self._device_name(device)):
                layer = keras.layers.BatchNormalization(
                    axis=config.channel_axis, momentum=config.running_stats.decay,
                    epsilon=config.effective_epsilon, center=config.center, scale=config.scale,
                    dtype=_dtype_policy(config))
                layer.build(case.steps[0].x.shape)
            self._layers[key] = layer
        return self._layers[key]

    def _assign_state(self, layer, case: Case) -> None:
        """Copy the case's gamma/beta/moving statistics into the layer's variables."""
        state = case.initial_state
        if case.config.scale:
            layer.gamma.assign(state.gamma)
        if case.config.center:
            layer.beta.assign(state.beta)
        layer.moving_mean.assign(state.running_mean)
        layer.moving_variance.assign(state.running_var)

    def _input(self, x: np.ndarray):
        """The step's input as a backend tensor of the same dtype."""
        return self.keras().ops.convert_to_tensor(x)

    def run(self, case: Case, device: str) -> list[dict[str, np.ndarray]]:
        keras = self.keras()
        layer = self._layer(case, device)
        # momentum and epsilon are plain floats that __init__ stores (float(...)) and call() reads;
        # nothing is derived from them at build time, so setting them equals building anew.
        layer.momentum, layer.epsilon = float(case.config.running_stats.decay), float(case.config.effective_epsilon)
        with keras.device(self._device_name(device)):
            self._assign_state(layer, case)
            return [self._run_step(layer, step) for step in case.steps]

    def _run_step(self, layer, step) -> dict[str, np.ndarray]:
        to_numpy = self.keras().ops.convert_to_numpy
        if step.dy is None:  # forward only: no tape, autograd graph or vjp
            y, grads = layer(self._input(step.x), training=step.is_training), {}
        else:
            y, grads = self._vjp(layer, step)
        return {"y": to_numpy(y), "running_mean": to_numpy(layer.moving_mean.value),
                "running_var": to_numpy(layer.moving_variance.value), **grads}

    def _vjp(self, layer, step) -> tuple:
        """(y, {"dx", "dgamma", "dbeta"}) from the backend's own autodiff on the call producing y."""
        raise NotImplementedError

    @staticmethod
    def _parameters(layer) -> dict:
        """{"dgamma": gamma, "dbeta": beta} for the variables the layer has (scale / center on)."""
        # getattr: older Keras (3.3.3 and 3.4.1; a version sweep's) leaves it unset when scale / center is off
        return {k: v for k, v in (("dgamma", getattr(layer, "gamma", None)), ("dbeta", getattr(layer, "beta", None)))
                if v is not None}


class Keras3TensorflowAdapter(_Keras3Adapter):
    """keras.layers.BatchNormalization with KERAS_BACKEND=tensorflow, eager layer call."""

    name = "keras3.tensorflow"
    backend = "tensorflow"
    extra = "tensorflow"
    requires = ("tensorflow", "keras")
    environment = TF_ENVIRONMENT  # shares the TensorFlow adapters' host
    deviations = (EMPTY_BATCH_NAN, overflow_deviation("tensorflow", "variance inf, y = beta, dx = dgamma = 0"),
                  empty_batch_dgamma_deviation("tensorflow"))
    notes = "Keras 3 layer on the TensorFlow backend, eager call; any channel axis natively"
    speed_note = ("~3-4 ms CPU per case: an eager call runs ~30 TF ops (~1-1.5 ms per step) and a new layer "
                  "structure costs ~3-6 ms of variable creation; a tf.function traces in ~40-60 ms per layer and "
                  "shape, more than the ~2-3 cases each layer serves")

    def keras(self):
        tf()  # TensorFlow through bnconform first: its CPU is split into logical devices (the synchronized
        # rows' replicas) before Keras' first op starts the runtime, whichever adapter the host loads first
        return super().keras()

    def devices(self) -> list[str]:
        return tf_devices()

    def _vjp(self, layer, step) -> tuple:
        """tf.GradientTape over the eager call, w.r.t. x and the tf.Variables behind gamma / beta."""
        params = {k: v.value for k, v in self._parameters(layer).items()}
        return tape_vjp(lambda x: layer(x, training=step.is_training), self._input(step.x), params, step.dy)


class Keras3JaxAdapter(_Keras3Adapter):
    """keras.layers.BatchNormalization with KERAS_BACKEND=jax, eager layer call."""

    name = "keras3.jax"
    backend = "jax"
    extra = "jax"
    requires = ("jax", "keras")
    # float64 variables need jax_enable_x64 (else JAX stores them as float32 with a warning)
    environment = X64_ENVIRONMENT  # shares the JAX family's host
    deviations = (EMPTY_BATCH_NAN, FLOAT64_AS_FLOAT32,
                  overflow_deviation("jax", "variance inf, y = beta, dx = dgamma = 0"),
                  empty_batch_dgamma_deviation("jax"))
    notes = "Keras 3 layer on the JAX backend (JAX_ENABLE_X64=1), eager call; any channel axis natively"
    speed_note = ("~1.5 ms per case once compiled; its first-pass median (~75 ms CPU) is XLA compiling each "
                  "eager op for every new input shape, and jitting the whole call per shape costs more (~110 ms); "
                  "a gradient step is one jitted forward+VJP program per shape (~200 ms CPU first pass, an eager "
                  "vjp ~2x that; ~40 ms from the persistent cache, which skips XLA but not Keras' tracing)")

    def devices(self) -> list[str]:
        import jax

        try:
            has_gpu = bool(jax.devices("gpu"))
        except RuntimeError:  # no GPU backend in this jaxlib
            has_gpu = False
        return ["cpu"] + (["cuda"] if has_gpu else [])

    def _vjp(self, layer, step) -> tuple:
        """jax.vjp over ``layer.stateless_call`` (x and the trainable variables in; y, and the
        updated moving statistics as aux, out), jitted; the updates are assigned back as the
        stateful call would."""
        ops, trainable, stats = self.keras().ops, layer.trainable_variables, layer.non_trainable_variables
        program = self._vjp_program(layer, step.is_training)
        y, dx, dweights, updated = program(self._input(step.x), [v.value for v in trainable],
                                           [v.value for v in stats], ops.convert_to_tensor(step.dy))
        for variable, value in zip(stats, updated):
            variable.assign(value)
        position = {id(v): i for i, v in enumerate(trainable)}
        grads = {k: np.asarray(dweights[position[id(v)]]) for k, v in self._parameters(layer).items()}
        return y, {"dx": ops.convert_to_numpy(dx), **grads}

    def _vjp_program(self, layer, training: bool):
        """jit(forward + VJP) per layer, mode, momentum and epsilon (plain floats that call() reads,
        so tracing bakes them in). Jitted, not eager: an eager jax.vjp compiles every forward and
        backward primitive per shape (~2.8x the forward's first-pass cost here, ~1.2x jitted)."""

        key = (id(layer), training, layer.momentum, layer.epsilon)
        if key not in self._programs:
            self._programs[key] = stateless_vjp(layer, training)
        return self._programs[key]


def stateless_vjp(layer, training: bool):
    """A jitted program (x, weights, stats, dy) -> (y, dx, dweights, updated stats): the VJP of
    ``layer.stateless_call`` with cotangent dy (Keras 3 on JAX; under a sharded input XLA also
    partitions the backward's cross-device all-reduces)."""
    import jax

    def program(x, weights, stats, dy):
        call = lambda x, weights: layer.stateless_call(weights, stats, x, training=training)  # noqa: E731
        y, vjp, updated = jax.vjp(call, x, weights, has_aux=True)
        return (y, *vjp(dy.astype(y.dtype)), updated)
    return jax.jit(program)


class Keras3TorchAdapter(_Keras3Adapter):
    """keras.layers.BatchNormalization with KERAS_BACKEND=torch, eager layer call."""

    name = "keras3.torch"
    backend = "torch"
    extra = "torch"
    requires = ("torch", "keras")
    environment = TORCH_ENVIRONMENT  # shares the torch adapters' host
    deviations = (EMPTY_BATCH_NAN, FLOAT64_AS_FLOAT32, TORCH_ONE_PASS_VARIANCE,
                  overflow_deviation("torch", "mean(x^2) is inf, variance inf - inf = NaN, y, dx, dgamma NaN"),
                  empty_batch_dgamma_deviation("torch"))
    notes = "Keras 3 layer on the PyTorch backend, eager call; any channel axis natively"

    def devices(self) -> list[str]:
        import torch

        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    def _vjp(self, layer, step) -> tuple:
        """torch.autograd.grad of the eager call, w.r.t. x and the Parameters behind gamma / beta
        (trainable Keras variables are torch Parameters with requires_grad)."""
        import torch

        ops, params = self.keras().ops, {k: v.value for k, v in self._parameters(layer).items()}
        x = self._input(step.x).detach().requires_grad_(True)
        with torch.enable_grad():
            y = layer(x, training=step.is_training)
        dy = ops.cast(ops.convert_to_tensor(step.dy), y.dtype)
        grads = torch.autograd.grad(y, [x, *params.values()], grad_outputs=dy)
        return y, {k: ops.convert_to_numpy(g) for k, g in zip(["dx", *params], grads)}
