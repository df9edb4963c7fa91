"""Keras 3 ``keras.layers.BatchNormalization`` compiled the way Keras' own trainers compile a step.

Rows (``execution_mode = "compiled"``):

* ``keras3.tensorflow+jit_compile`` (eager row ``keras3.tensorflow``): the layer called inside
  ``tf.function(jit_compile=True, reduce_retracing=True)`` -- what the TensorFlow trainer wraps a
  train step in under ``model.compile(jit_compile=True)`` (keras/src/backend/tensorflow/trainer.py;
  ``jit_compile="auto"`` turns XLA off on a CPU-only machine, so the row asks for it explicitly).
  The moving-average assigns of the stateful call run inside the program; on a step with ``dy`` the
  ``tf.GradientTape`` and its ``gradient`` call (w.r.t. x and the tf.Variables behind gamma / beta)
  run inside the same XLA program.
* ``keras3.jax+jit_compile`` (eager row ``keras3.jax``): every step through ``jax.jit`` of
  ``layer.stateless_call`` (the JAX trainer jits its stateless train / predict steps), the updated
  moving statistics assigned back as the stateful call would. The eager ``keras3.jax`` row calls
  the layer eagerly for forward steps but already runs *gradient* steps through a jitted
  forward + VJP program (``keras3.stateless_vjp``); this row runs the very same program for those
  steps, so only its forward-only steps differ from the eager row's execution.

Caching: one program per (layer, training, with gradients, momentum, epsilon) -- call() reads
momentum and epsilon as Python floats, so a trace bakes them in; jax.jit and XLA then compile once
per input shape (tf.function: one generic retrace with unknown dimensions, then XLA per shape).

Importing this module imports neither Keras nor its backend.
"""

from __future__ import annotations

import numpy as np

from .keras3 import Keras3JaxAdapter, Keras3TensorflowAdapter
from .tensorflow.common import layer_call, reached, tf


class Keras3TensorflowJitAdapter(Keras3TensorflowAdapter):
    """keras.layers.BatchNormalization (tensorflow backend) inside ``tf.function(jit_compile=True)``."""

    name = "keras3.tensorflow+jit_compile"
    execution_mode = "compiled"
    eager_row = "keras3.tensorflow"
    notes = ("keras3.tensorflow's layer inside tf.function(jit_compile=True, reduce_retracing=True), as "
             "model.compile(jit_compile=True) runs a step: XLA compiles the call, the assigns and the tape's backward")
    speed_note = ("~115 ms CPU median per case: XLA compiles one executable per program (layer, mode, momentum, "
                  "epsilon) and input shape, and the suite runs most shapes once; ~1 ms per step once compiled")

    def _run_step(self, layer, step) -> dict[str, np.ndarray]:
        to_numpy = self.keras().ops.convert_to_numpy
        x, grads = self._input(step.x), {}
        if step.dy is None:  # forward only: no tape in the program
            y = self.program(layer, step.is_training, False)(x)
        else:
            dy = tf().constant(np.asarray(step.dy))
            y, found = self.program(layer, step.is_training, True)(x, dy)
            grads = _named(["dx", *self._parameters(layer)], found, to_numpy)
        return {"y": to_numpy(y), "running_mean": to_numpy(layer.moving_mean.value),
                "running_var": to_numpy(layer.moving_variance.value), **grads}

    def program(self, layer, training: bool, gradients: bool):
        """The cached ``tf.function`` of one step (public for tests: experimental_get_compiler_ir)."""
        key = (id(layer), training, gradients, layer.momentum, layer.epsilon)
        if key not in self._programs:
            body = _tape_step(layer, training, self._parameters(layer)) if gradients else layer_call(layer, training)
            self._programs[key] = tf().function(body, jit_compile=True, reduce_retracing=True)
        return self._programs[key]


def _tape_step(layer, training: bool, parameters: dict):
    """(x, dy) -> (y, [dx, dgamma?, dbeta?]): the call and its tape VJP, cotangent dy in y's dtype."""
    def body(x, dy):
        sources = [x, *(v.value for v in parameters.values())]
        with tf().GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(sources)
            y = layer(x, training=training)
        return y, tape.gradient(y, sources, output_gradients=tf().cast(dy, y.dtype))
    return body


def _named(names: list[str], grads, to_numpy) -> dict[str, np.ndarray]:
    """{name: gradient as NumPy}; a gradient the tape did not reach is an error, never a zero."""
    return {n: to_numpy(g) for n, g in reached(names, grads)}


class Keras3JaxJitAdapter(Keras3JaxAdapter):
    """keras.layers.BatchNormalization (jax backend), every step through ``jax.jit``."""

    name = "keras3.jax+jit_compile"
    execution_mode = "compiled"
    eager_row = "keras3.jax"
    notes = ("keras3.jax's layer, forward steps through jax.jit(layer.stateless_call), gradient steps through "
             "the jitted forward + VJP program the eager row already uses (JAX_ENABLE_X64=1)")
    speed_note = ("~140 ms CPU median per case with a cold compilation cache (~33 ms from JAX's persistent cache): "
                  "one XLA program per layer, mode, momentum, epsilon and input shape, and the suite runs most "
                  "shapes once; ~1 ms a step once compiled")

    def _run_step(self, layer, step) -> dict[str, np.ndarray]:
        if step.dy is not None:  # the eager row's jitted forward + VJP program
            return super()._run_step(layer, step)
        to_numpy, stats = self.keras().ops.convert_to_numpy, layer.non_trainable_variables
        program = self._forward_program(layer, step.is_training)
        y, updated = program(self._input(step.x), [v.value for v in layer.trainable_variables], [v.value for v in stats])
        for variable, value in zip(stats, updated):  # as the stateful call assigns them
            variable.assign(value)
        return {"y": to_numpy(y), "running_mean": to_numpy(layer.moving_mean.value),
                "running_var": to_numpy(layer.moving_variance.value)}

    def _forward_program(self, layer, training: bool):
        """jax.jit(stateless_call) per layer, mode, momentum and epsilon (cached; public via tests)."""
        import jax

        key = ("forward", id(layer), training, layer.momentum, layer.epsilon)
        if key not in self._programs:
            def program(x, weights, stats):
                return layer.stateless_call(weights, stats, x, training=training)
            self._programs[key] = jax.jit(program)
        return self._programs[key]
