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

Capabilities of both: epsilon inside the sqrt; a plain EMA (no cumulative rule, zero_debias or
num_updates schedule); training steps always update; no model extensions. Both fold the biased
variance of ``tf.nn.moments`` into the moving variance (a convention).
"""

from __future__ import annotations

import importlib
from dataclasses import replace

import numpy as np

from ...judging.capabilities import FLOAT_DTYPES, Capabilities, dtype_pairs
from ...judging.selectors import affine_partly_off, squares_overflow, updates_on_empty_batch
from ..base import Adapter, Deviation, Mismatches, Raises
from . import graph as g
from .common import LEGACY_TF, PLAIN_EMA

_MOMENTS_DOCS = "https://tensorflow.org/api_docs/python/tf/nn/moments"
_TL_SOURCE = ("https://github.com/tensorlayer/TensorLayer/blob/36c17f3d21910d0e124a9e9210c5e0c3a8af8627/"
              "tensorlayer/layers/normalization.py")
_TFLEARN_SOURCE = ("https://github.com/tflearn/tflearn/blob/a6ae357bafb30aad3f94ba1ad8c0e4c083698255/"
                   "tflearn/layers/normalization.py")

# Both: tf.nn.moments (biased) + a plain EMA; training always updates, inference never does.
WRAPPER_CAPABILITIES = Capabilities(**PLAIN_EMA, running_variance=frozenset({"biased"}),
                                    step_kinds=frozenset({("batch", True), ("running", False)}))
# TensorLayer: channels_first / channels_last, float32 weights (tl.LayersConfig.tf_dtype).
TL_CAPABILITIES = replace(WRAPPER_CAPABILITIES, channel_positions=frozenset({"first", "last"}),
                          dtypes=frozenset({("float32", "float32")}))
# tflearn: channels last; variables in the input dtype; one beta and one gamma, always.
TFLEARN_CAPABILITIES = replace(WRAPPER_CAPABILITIES, channel_positions=frozenset({"last"}),
                               dtypes=dtype_pairs(FLOAT_DTYPES, half_params=()), separate_scale_center=False)


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
    """Both wrappers use tf.nn.moments in float32 + assign_moving_average."""
    return (
        Deviation(f"{prefix}: an empty batch makes the moving statistics NaN", "defect", updates_on_empty_batch,
                  Mismatches(("running_mean", "running_var", "y"), "the moving statistics become NaN"),
                  "tf.nn.moments of an empty batch is 0/0 = NaN and the update folds it in", _MOMENTS_DOCS),
        Deviation(f"{prefix}: float32 batch variance overflows to inf", "precision", squares_overflow("float32"),
                  Mismatches(("y", "running_var"), "the batch variance is inf in float32"),
                  "moments are computed in float32", _MOMENTS_DOCS),
    )


TL_NO_BETA_OR_GAMMA = Deviation(
    name="tensorlayer: beta_init=None / gamma_init=None raise",
    kind="defect",
    applies=affine_partly_off,
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
    # Not in any extra: it does not import beside TensorFlow >= 2.15 and NumPy 2 (the versions
    # below import and run it; TensorLayer imports the last seven without declaring them)
    install_hint = ("an environment of its own: pip install 'tensorflow==2.12.1' 'numpy<1.24' 'pillow<10' "
                    "'tensorlayer==2.2.5' 'opencv-python-headless<4.9' cloudpickle imageio progressbar2 "
                    "scikit-image scikit-learn matplotlib")
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
    # Not in any extra: tflearn 0.5.0 fails on TensorFlow >= 2.15 (nest.is_sequence) and pillow >= 10
    install_hint = "an environment of its own: pip install 'tensorflow==2.12.1' 'numpy<1.24' 'pillow<10' 'tflearn==0.5.0'"
    requires = ("tensorflow", "tflearn")
    python_environment = LEGACY_TF
    device_kinds = ("cpu", "cuda")
    deviations = _deviations("tflearn")
    capabilities = TFLEARN_CAPABILITIES
    decay_parameter = ("decay", "old")
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
