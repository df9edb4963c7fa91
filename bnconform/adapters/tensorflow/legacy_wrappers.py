"""TF1-era wrapper libraries: TensorLayer's BatchNorm and tflearn's batch_normalization.

Neither is in the bnconform extras; ``unavailable_reason`` tries the real import and returns
its exact error, so either runs the day its import works here.

What was established (TensorFlow 2.21, Python 3.11):

* TensorLayer 2.2.5 (last release) imports only with cloudpickle, imageio, progressbar2,
  scikit-image, scikit-learn, opencv-python-headless and matplotlib installed (its package
  ``__init__`` imports its apps); then ``tl.layers.BatchNorm`` runs eagerly inside a
  ``tl.models.Model``. TensorLayer 1.x's ``BatchNormLayer`` is its predecessor.
* tflearn 0.5.0 (last release) fails to import: ``tflearn/layers/recurrent.py`` does
  ``from tensorflow.python.util.nest import is_sequence``, removed from TensorFlow. Its
  ``run`` below follows tflearn's source and is UNTESTED.

TensorLayer translation (canonical -> ``tl.layers.BatchNorm``): channel_axis -> data_format
("channels_last" for the last axis and rank 2, "channels_first" for axis 1); epsilon (+floor)
-> ``epsilon``; decay -> ``decay`` (weight on the old statistic); center/scale off ->
``beta_init=None`` / ``gamma_init=None``; normalize_with -> ``model.train()`` / ``model.eval()``.
Training always updates (``is_train`` couples them): batch statistics without update is
unsupported. Weights are float32 (``tl.LayersConfig.tf_dtype``): float32 inputs only.

tflearn translation (``tflearn.layers.normalization.batch_normalization``): channels last only;
epsilon, decay as above; beta and gamma are always variables (center/scale off unsupported);
normalize_with -> ``tflearn.is_training(True/False, session)``; training always updates in place.

Unsupported in both: epsilon other than inside the sqrt; cumulative; zero_debias; num_updates
schedule; the model extensions.
"""

from __future__ import annotations

import importlib

import numpy as np

from . import graph as g
from ..base import Adapter, Deviation, MatchesVariant, Mismatches, Raises, variant
from .v1_layers import unsupported_epsilon_reason, unsupported_running_reason

_MOMENTS_DOCS = "https://tensorflow.org/api_docs/python/tf/nn/moments"
_TL_SOURCE = ("https://github.com/tensorlayer/TensorLayer/blob/36c17f3d21910d0e124a9e9210c5e0c3a8af8627/"
              "tensorlayer/layers/normalization.py")
_TFLEARN_SOURCE = ("https://github.com/tflearn/tflearn/blob/a6ae357bafb30aad3f94ba1ad8c0e4c083698255/"
                   "tflearn/layers/normalization.py")


def _import_error(module: str, hint: str) -> str | None:
    """The exact error of importing ``module`` here (first line; ``hint`` when not installed), or None."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken install may raise anything
        first = str(exc).splitlines()[0] if str(exc) else ""
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == module
        return f"{module} fails to import: {type(exc).__name__}: {first}" + (f"; {hint}" if missing else "")
    return None


def _step_kind_reason(case, api: str) -> str | None:
    for step in case.steps:
        if step.is_training != step.update_running_stats:
            return f"{api} updates the moving statistics exactly when it normalizes with batch statistics"
    return None


def _deviations(prefix: str, link: str) -> tuple:
    """Both wrappers use tf.nn.moments (biased) + assign_moving_average in float32."""
    return (
        Deviation(f"{prefix}: an empty batch makes the moving statistics NaN",
                  "cases with a training step that updates from N == 0 values",
                  lambda c, d: g.updates_empty_batch(c),
                  Mismatches(("running_mean", "running_var", "y"), "the moving statistics become NaN"),
                  "tf.nn.moments of an empty batch is 0/0 = NaN and the update folds it in", link),
        Deviation(f"{prefix}: float32 batch variance overflows to inf",
                  "inputs whose true batch variance exceeds the float32 maximum",
                  lambda c, d: g.batch_variance_overflows(c),
                  Mismatches(("y", "running_var"), "the batch variance is inf in float32"),
                  "moments are computed in float32", _MOMENTS_DOCS),
        Deviation(f"{prefix}: biased moving variance",
                  "Bessel-variance cases with an update from N >= 2",
                  lambda c, d: c.config.running_stats.variance == "bessel" and g.updates_visibly(c),
                  MatchesVariant("running variance is the biased batch variance",
                                 lambda c: variant(c, running_stats={"variance": "biased"})),
                  "the moving variance folds in the biased variance of tf.nn.moments", link),
    )


TL_NO_BETA_OR_GAMMA = Deviation(
    name="tensorlayer: beta_init=None / gamma_init=None raise",
    applies_to="cases with center or scale off",
    applies=lambda c, d: not (c.config.center and c.config.scale),
    behaviour=Raises("ValueError", r"Attempt to convert a value \(None\)"),
    explanation="the documented 'if None, skip beta/gamma' fails: the module's batch_normalization does "
                "tf.reshape(offset/scale) before its own None checks",
    link=_TL_SOURCE,
)


class TensorLayerAdapter(Adapter):
    """TensorLayer 2.x ``tl.layers.BatchNorm`` in an eager ``tl.models.Model``, cached per config."""

    name = "tensorlayer"
    framework = "tensorlayer"
    extra = "tensorflow"
    requires = ("tensorflow", "tensorlayer")
    device_kinds = ("cpu", "cuda")
    deviations = (TL_NO_BETA_OR_GAMMA,) + _deviations("tensorlayer", _TL_SOURCE)
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

    def supports(self, case, device):
        c = case.config
        if c.channel_axis not in (1, case.rank - 1):
            return f"{self._API} normalizes over axis 1 (channels_first) or the last axis only"
        if c.input_dtype != "float32" or c.param_dtype != "float32":
            return f"{self._API} creates float32 weights (tl.LayersConfig.tf_dtype); float32 inputs only"
        return (unsupported_epsilon_reason(c, self._API) or unsupported_running_reason(c, self._API)
                or _step_kind_reason(case, self._API))

    def run(self, case, device):
        from .common import tf, tf_device_scope

        with tf_device_scope(device):
            model, layer = self._model(case, device)
            weights = {w.name.split("/")[-1].split(":")[0]: w for w in layer.all_weights}
            _assign_tl_state(weights, case.initial_state)
            results = []
            for step in case.steps:
                model.train() if step.is_training else model.eval()
                y = model(tf().constant(np.asarray(step.x, dtype=np.float32)))
                results.append({"y": np.asarray(y), "running_mean": weights["moving_mean"].numpy(),
                                "running_var": weights["moving_var"].numpy()})
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
    """tflearn ``batch_normalization`` in a TF1 graph (UNTESTED: tflearn 0.5.0 does not import)."""

    name = "tflearn"
    framework = "tflearn"
    extra = "tensorflow"
    requires = ("tensorflow", "tflearn")
    device_kinds = ("cpu", "cuda")
    deviations = _deviations("tflearn", _TFLEARN_SOURCE)
    notes = "TF1 graph; tflearn.is_training switches batch/moving stats and updates in place (untested)"
    _API = "tflearn.layers.normalization.batch_normalization"

    def __init__(self):
        self._graphs = {}

    def unavailable_reason(self):
        return _import_error("tflearn", "tflearn 0.5.0 (the last release) fails on tensorflow 2.21 with "
                             "ImportError: cannot import name 'is_sequence' from 'tensorflow.python.util.nest'")

    def devices(self):
        from .common import tf_devices

        return tf_devices()

    def supports(self, case, device):
        c = case.config
        if c.channel_axis != case.rank - 1:
            return f"{self._API} normalizes over the last axis only"
        if not (c.center and c.scale):
            return f"{self._API} always has beta and gamma variables (no center/scale switch)"
        if c.param_dtype != c.input_dtype:
            return f"{self._API} keeps its variables in the input dtype"
        return (unsupported_epsilon_reason(c, self._API) or unsupported_running_reason(c, self._API)
                or _step_kind_reason(case, self._API))

    def run(self, case, device):
        import tflearn

        c = case.config
        key = (device, case.rank, case.channels, c.input_dtype, c.effective_epsilon, c.running_stats.decay)
        if key not in self._graphs:
            self._graphs[key] = _TflearnGraph(case, device)
        graph = self._graphs[key]
        graph.load(case.initial_state, c.param_dtype)
        results = []
        for step in case.steps:
            tflearn.is_training(step.is_training, session=graph.session)
            results.append(graph.step(np.asarray(step.x, dtype=c.input_dtype)))
        return results


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

    def load(self, state, param_dtype):
        self.session.run(self.load_op, {ph: np.asarray(getattr(state, g.STATE_OF_ROLE[r]), dtype=param_dtype)
                                        for r, ph in self.feeds.items()})

    def step(self, x) -> dict:
        y = self.session.run(self.y, {self.x: x})
        # A second run: the update happens inside the first one's tf.cond.
        mean, var = self.session.run([self.variables["moving_mean"], self.variables["moving_variance"]])
        return {"y": y, "running_mean": mean, "running_var": var}
