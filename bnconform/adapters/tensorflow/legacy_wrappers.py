"""TF1-era wrapper libraries: TensorLayer's BatchNorm and tflearn's batch_normalization.

Neither imports beside TensorFlow >= 2.15 and NumPy 2, so both declare ``python_environment =
LEGACY_TF`` (common.py: tensorflow 2.12.1, numpy < 1.24, tflearn 0.5.0, tensorlayer 2.2.5, ...),
which bnconform builds with uv and runs their hosts in (``bnconform env sync``).

What was established on TensorFlow 2.12.1 (Python 3.11, CPU), by running the whole suite:

* tflearn 0.5.0: ``import tflearn`` calls ``tf.compat.v1.disable_v2_behavior()`` for the whole
  process (eager off, reference variables), so tflearn has a host of its own (``isolated``):
  sharing one, TensorLayer's eager model failed ("Cannot convert a symbolic tf.Tensor").
  ``batch_normalization`` builds in a v1 graph; ``tflearn.is_training`` looks its assign ops up
  in the *default* graph, so it runs inside ``graph.as_default()``. Its variables are float32
  whatever the input (``tflearn.variables.variable``'s default dtype), and
  ``assign_moving_average`` then raises a TypeError for any other input dtype (the tf.cond builds
  the update even for inference): float32 only. Its defaults (decay 0.9, epsilon 1e-5, read from
  the signature by ``framework_defaults``) and its plain EMA (``zero_debias=False`` hard-coded)
  pass every momentum case it can express.
* TensorLayer 2.2.5 imports only with cloudpickle, imageio, progressbar2, scikit-image,
  scikit-learn, opencv-python-headless and matplotlib installed (its package ``__init__`` imports
  its apps); ``tl.layers.BatchNorm`` runs eagerly inside a ``tl.models.Model`` (decay 0.9,
  epsilon 1e-5 from its signature). ``beta_init=None`` / ``gamma_init=None`` raise (declared).
* Both: tf.nn.moments (biased, float32) and ``assign_moving_average(..., zero_debias=False)``;
  declared where that departs from the model: an empty batch (NaN moving statistics; NaN dgamma),
  float32 variance overflow, an infinite moving mean turned NaN by the subtractive update.

TensorLayer translation (canonical -> ``tl.layers.BatchNorm``): channel_axis -> data_format
("channels_last" for the last axis and rank 2, "channels_first" for axis 1); epsilon (+floor)
-> ``epsilon``; decay -> ``decay`` (weight on the old statistic); center/scale off ->
``beta_init=None`` / ``gamma_init=None``; normalize_with -> ``model.train()`` / ``model.eval()``.
Training always updates (``is_train`` couples them): batch statistics without update is
unsupported. Weights are float32 (``tl.LayersConfig.tf_dtype``): float32 inputs only.
Gradients: an eager ``tf.GradientTape`` over the model call (x, gamma, beta watched).

tflearn translation (``tflearn.layers.normalization.batch_normalization``): channels last only;
epsilon, decay as above; beta and gamma are always variables (center/scale off unsupported);
normalize_with -> ``tflearn.is_training(True/False, session)``; training always updates in place.
Gradients: ``tf.gradients(y, [x, gamma, beta], grad_ys=dy)`` in its graph.

Capabilities of both: epsilon inside the sqrt; a plain EMA (no cumulative rule, zero_debias or
num_updates schedule); training steps always update; no model extensions. Both fold the biased
variance of ``tf.nn.moments`` into the moving variance (a convention).
"""

from __future__ import annotations

import importlib
from dataclasses import replace

import numpy as np

from ...judging.capabilities import Capabilities
from ...judging.selectors import (affine_partly_off, empty_batch_gamma_gradient, squares_overflow,
                                  updates_on_empty_batch)
from ..base import Adapter, Deviation, Mismatches, Raises
from . import graph as g
from .common import LEGACY_TF, PLAIN_EMA, infinite_mean_nan

_MOMENTS_DOCS = "https://tensorflow.org/api_docs/python/tf/nn/moments"
# The 2.2.5 release commit ("release 2.2.5"; its normalization.py is the installed file, byte for byte
# up to line endings).
_TL_SOURCE = ("https://github.com/tensorlayer/TensorLayer/blob/a44e0b07303ee467e36e86db27dbb53306a0a8e8/"
              "tensorlayer/layers/normalization.py")
# tf.nn.batch_normalization's inv = rsqrt(variance + epsilon) in TensorFlow 2.12.1 (tflearn's call).
_BATCH_NORMALIZATION_212 = ("https://github.com/tensorflow/tensorflow/blob/v2.12.1/"
                            "tensorflow/python/ops/nn_impl.py#L1590")
_NORMALIZE = {
    "tensorlayer": ("TensorLayer's own batch_normalization (inv = rsqrt(variance + epsilon); inv *= scale; "
                    "x * inv + (offset - mean * inv))", _TL_SOURCE + "#L134"),
    "tflearn": ("tf.nn.batch_normalization (inv = rsqrt(variance + epsilon) * scale; x * inv + (offset - mean * "
                "inv))", _BATCH_NORMALIZATION_212),
}
_TFLEARN_SOURCE = ("https://github.com/tflearn/tflearn/blob/a6ae357bafb30aad3f94ba1ad8c0e4c083698255/"
                   "tflearn/layers/normalization.py")
# update_fn of assign_moving_average in the TensorFlow both run on here (2.12.1, LEGACY_TF).
_ASSIGN_MOVING_AVERAGE_212 = ("https://github.com/tensorflow/tensorflow/blob/v2.12.1/"
                              "tensorflow/python/training/moving_averages.py#L91")
_ROUTES = {
    "tensorlayer": "tl.layers.BatchNorm.forward (is_train) calls moving_averages.assign_moving_average(moving_mean, "
                   "mean, decay, zero_debias=False) eagerly",
    "tflearn": "batch_normalization's update_mean_var calls moving_averages.assign_moving_average(moving_mean, mean, "
               "decay, zero_debias=False) inside its tf.cond",
}

# Both: tf.nn.moments (biased) + a plain EMA; training always updates, inference never does.
# Both differentiate through TensorFlow's autodiff (an eager tape / tf.gradients in the graph).
WRAPPER_CAPABILITIES = Capabilities(**PLAIN_EMA, running_variance=frozenset({"biased"}),
                                    step_kinds=frozenset({("batch", True), ("running", False)}),
                                    gradients=frozenset({"batch", "running"}))
# TensorLayer: channels_first / channels_last, float32 weights (tl.LayersConfig.tf_dtype).
TL_CAPABILITIES = replace(WRAPPER_CAPABILITIES, channel_positions=frozenset({"first", "last"}),
                          dtypes=frozenset({("float32", "float32")}))
# tflearn: channels last; float32 variables only (tflearn.variables.variable's default dtype, which
# batch_normalization never overrides: assign_moving_average then refuses any other input dtype);
# one beta and one gamma, always.
TFLEARN_CAPABILITIES = replace(WRAPPER_CAPABILITIES, channel_positions=frozenset({"last"}),
                               dtypes=frozenset({("float32", "float32")}), separate_scale_center=False)


def _import_error(module: str, hint: str) -> str | None:
    """The exact error of importing ``module`` here (first line; ``hint`` when not installed), or None."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken install may raise anything
        first = str(exc).splitlines()[0] if str(exc) else ""
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == module
        return f"{module} fails to import: {type(exc).__name__}: {first}" + (f"; {hint}" if missing else "")
    return None


def _deviations(prefix: str) -> tuple:
    """Both wrappers use tf.nn.moments in float32 + assign_moving_average (measured on TF 2.12.1)."""
    normalize, normalize_link = _NORMALIZE[prefix]
    return (
        Deviation(f"{prefix}: an empty batch makes the moving statistics NaN", "defect", updates_on_empty_batch,
                  Mismatches(("running_mean", "running_var", "y"), "the moving statistics become NaN"),
                  "tf.nn.moments of an empty batch is 0/0 = NaN and the update folds it in", _MOMENTS_DOCS),
        Deviation(f"{prefix}: float32 batch variance overflows to inf", "precision", squares_overflow("float32"),
                  Mismatches(("y", "running_var", "dx", "dgamma"),
                             "the batch variance is inf in float32: y collapses to beta, dx = dgamma = 0"),
                  "moments are computed in float32 (rsqrt(inf + eps) = 0, so the normalization and its "
                  "gradients vanish where the float64 model keeps a finite variance ~1e40)", _MOMENTS_DOCS),
        Deviation(f"{prefix}: dgamma of an empty batch is NaN", "edge", empty_batch_gamma_gradient,
                  Mismatches(("dgamma",), "dgamma is NaN on an empty batch (the model's is 0, an empty sum)"),
                  f"{normalize}: for N == 0 the moments are 0/0 = NaN and the gradient of scale is "
                  "rsqrt(variance + epsilon) * (sum(dy x) - mean sum(dy)) = NaN * 0 (measured by gradients/n0_train "
                  "on TensorFlow 2.12.1)", normalize_link),
        infinite_mean_nan(f"{prefix}: an infinite moving mean becomes NaN on the next update", _ROUTES[prefix],
                          _ASSIGN_MOVING_AVERAGE_212,
                          found="measured by degenerate/inf_batch_then_clean_batch_biased on TensorFlow 2.12.1"),
    )


TL_NO_BETA_OR_GAMMA = Deviation(
    name="tensorlayer: beta_init=None / gamma_init=None raise",
    kind="defect",
    applies=affine_partly_off,
    behaviour=Raises("ValueError", r"Attempt to convert a value \(None\)"),
    explanation="the documented 'if None, skip beta/gamma' fails: the module's batch_normalization does "
                "tf.reshape(offset/scale) before its own None checks",
    link=_TL_SOURCE + "#L118-L129",
)


class TensorLayerAdapter(Adapter):
    """TensorLayer 2.x ``tl.layers.BatchNorm`` in an eager ``tl.models.Model``, cached per config."""

    name = "tensorlayer"
    framework = "tensorlayer"
    extra = "tensorflow"
    # Not in any extra: it does not import beside TensorFlow >= 2.15 and NumPy 2; LEGACY_TF holds it.
    install_hint = "built automatically in its own environment (bnconform env sync)"
    requires = ("tensorflow", "tensorlayer")
    python_environment = LEGACY_TF
    device_kinds = ("cpu", "cuda")
    deviations = (TL_NO_BETA_OR_GAMMA,) + _deviations("tensorlayer")
    capabilities = TL_CAPABILITIES
    decay_parameter = ("decay", "old")
    notes = "eager tl.models.Model; training steps always update; float32 only"
    _API = "tensorlayer.layers.BatchNorm"

    def __init__(self):
        self._models = {}

    def unavailable_reason(self):
        return _import_error("tensorlayer", "TensorLayer 2.2.5 needs cloudpickle, imageio, progressbar2, "
                             "scikit-image, scikit-learn, opencv-python-headless and matplotlib besides TensorFlow")

    def devices(self):
        from .common import tf_devices

        return tf_devices()

    def framework_defaults(self):
        """``decay`` and ``epsilon`` from the signature of tl.layers.BatchNorm."""
        import tensorlayer as tl

        from .common import signature_default

        return {"decay_parameter": signature_default(tl.layers.BatchNorm.__init__, "decay"),
                "epsilon": signature_default(tl.layers.BatchNorm.__init__, "epsilon")}

    def run(self, case, device):
        from .common import tape_gradients, tf, tf_device_scope

        with tf_device_scope(device):
            model, layer = self._model(case, device)
            weights = {w.name.split("/")[-1].split(":")[0]: w for w in layer.all_weights}
            _assign_tl_state(weights, case.initial_state)
            results = []
            for step in case.steps:
                model.train() if step.is_training else model.eval()
                x = tf().constant(np.asarray(step.x, dtype=np.float32))
                with tf().GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x)
                    sources = [weights.get("gamma"), weights.get("beta")]
                    for variable in sources:
                        if variable is not None:
                            tape.watch(variable)
                    y = model(x)
                out = {"y": np.asarray(y), "running_mean": weights["moving_mean"].numpy(),
                       "running_var": weights["moving_var"].numpy()}
                if step.dy is not None:  # the VJP of this very call, by TensorFlow's autodiff
                    dy = tf().constant(np.asarray(step.dy, dtype=np.float32))
                    out.update(tape_gradients(tape, y, dy, x, *sources))
                results.append(out)
        return results

    def _model(self, case, device):
        c = case.config
        key = (device, case.rank, c.channel_axis, case.channels, c.effective_epsilon, c.running_stats.decay,
               c.center, c.scale)
        if key not in self._models:
            self._models[key] = _build_tl_model(case)
        return self._models[key]


def _build_tl_model(case):
    import tensorlayer as tl

    c = case.config
    fmt = "channels_first" if c.channel_axis == 1 and case.rank > 2 else "channels_last"
    extra = {} if c.center else {"beta_init": None}
    extra.update({} if c.scale else {"gamma_init": None})
    inputs = tl.layers.Input(list(case.steps[0].x.shape))
    layer = tl.layers.BatchNorm(decay=c.running_stats.decay, epsilon=c.effective_epsilon, data_format=fmt, **extra)
    return tl.models.Model(inputs=inputs, outputs=layer(inputs)), layer


def _assign_tl_state(weights: dict, state) -> None:
    """Load gamma, beta, moving mean and variance into the layer's own variables by name."""
    values = {"gamma": state.gamma, "beta": state.beta, "moving_mean": state.running_mean,
              "moving_var": state.running_var}
    for name, variable in weights.items():
        variable.assign(np.asarray(values[name], dtype=np.float32))


class TflearnAdapter(Adapter):
    """tflearn ``batch_normalization`` in a TF1 graph and session of its own, cached per config."""

    name = "tflearn"
    framework = "tflearn"
    extra = "tensorflow"
    # Not in any extra: tflearn 0.5.0 fails on TensorFlow >= 2.15 (nest.is_sequence) and pillow >= 10.
    install_hint = "built automatically in its own environment (bnconform env sync)"
    requires = ("tensorflow", "tflearn")
    python_environment = LEGACY_TF
    # ``import tflearn`` runs tf.compat.v1.disable_v2_behavior() (tflearn/__init__.py): eager
    # execution is off for the whole process, and TensorLayer 2's eager Model then fails
    # ("Cannot convert a symbolic tf.Tensor ... to a numpy array"). A host of its own.
    isolated = True
    device_kinds = ("cpu", "cuda")
    deviations = _deviations("tflearn")
    capabilities = TFLEARN_CAPABILITIES
    decay_parameter = ("decay", "old")
    notes = "TF1 graph; tflearn.is_training switches batch/moving stats and updates in place; float32 only"
    _API = "tflearn.layers.normalization.batch_normalization"

    def __init__(self):
        self._graphs = {}

    def unavailable_reason(self):
        return _import_error("tflearn", "tflearn 0.5.0 (the last release) fails on tensorflow 2.21 with "
                             "ImportError: cannot import name 'is_sequence' from 'tensorflow.python.util.nest'")

    def devices(self):
        from .common import tf_devices

        return tf_devices()

    def framework_defaults(self):
        """``decay`` and ``epsilon`` from the signature of tflearn's batch_normalization."""
        import tflearn

        from .common import signature_default

        function = tflearn.layers.normalization.batch_normalization
        return {"decay_parameter": signature_default(function, "decay"), "epsilon": signature_default(function, "epsilon")}

    def supports(self, case, device):
        if not case.config.center:  # scale == center already (separate_scale_center=False)
            return f"{self._API} always has beta and gamma variables (no center/scale switch)"
        return None

    def run(self, case, device):
        c = case.config
        key = (device, case.rank, case.channels, c.input_dtype, c.effective_epsilon, c.running_stats.decay)
        if key not in self._graphs:
            self._graphs[key] = _TflearnGraph(case, device)
        graph = self._graphs[key]
        graph.load(case.initial_state, c.param_dtype)
        results = []
        for step in case.steps:
            graph.set_training(step.is_training)
            dy = None if step.dy is None else np.asarray(step.dy, dtype=c.input_dtype)
            results.append(graph.step(np.asarray(step.x, dtype=c.input_dtype), dy))
        return results


def tf_v1():
    from .common import tf

    return tf().compat.v1


class _TflearnGraph:
    """Graph + session for one tflearn configuration; updates run inside its tf.cond."""

    def __init__(self, case, device):
        import tflearn

        from .common import tf, tf_device_scope, to_tf_dtype

        v1, c = tf().compat.v1, case.config
        self.graph = tf().Graph()
        with self.graph.as_default(), tf_device_scope(device):
            self.x = v1.placeholder(to_tf_dtype(c.input_dtype), [None] * (case.rank - 1) + [case.channels])
            self.y = tflearn.layers.normalization.batch_normalization(
                self.x, epsilon=c.effective_epsilon, decay=c.running_stats.decay)
            self.variables = g.variables_by_role(v1.global_variables())
            self.feeds = {r: v1.placeholder(v.dtype.base_dtype, v.shape) for r, v in self.variables.items()}
            self.load_op = tf().group(*[v.assign(self.feeds[r]) for r, v in self.variables.items()])
            init = v1.global_variables_initializer()
        self.session = v1.Session(graph=self.graph)
        self.session.run(init)
        self.device, self.dy, self.gradients = device, None, None  # gradient ops: on first use

    def _gradient_ops(self) -> dict:
        """tf.gradients(y, [x, gamma, beta], grad_ys=dy), added to the graph on the first step with dy."""
        from .common import graph_gradients, tf_device_scope

        if self.gradients is None:
            with self.graph.as_default(), tf_device_scope(self.device):
                self.dy = tf_v1().placeholder(self.x.dtype, self.x.shape, name="dy")
                self.gradients = graph_gradients(self.y, self.dy, self.x, self.variables["gamma"],
                                                 self.variables["beta"])
        return self.gradients

    def load(self, state, param_dtype):
        self.session.run(self.load_op, {ph: np.asarray(getattr(state, g.STATE_OF_ROLE[r]), dtype=param_dtype)
                                        for r, ph in self.feeds.items()})

    def set_training(self, training: bool) -> None:
        """tflearn.is_training finds its assign ops in the *default* graph's collections."""
        import tflearn

        with self.graph.as_default():
            tflearn.is_training(training, session=self.session)

    def step(self, x, dy=None) -> dict:
        """One call (the update, if training, runs inside its tf.cond), with dx, dgamma, dbeta of that
        same run when ``dy`` is given; the moving statistics are read by a second run, after it."""
        if dy is None:
            out = {"y": self.session.run(self.y, {self.x: x})}
        else:
            out = self.session.run({"y": self.y, **self._gradient_ops()}, {self.x: x, self.dy: dy})
        mean, var = self.session.run([self.variables["moving_mean"], self.variables["moving_variance"]])
        return {**out, "running_mean": mean, "running_var": var}
