// The two TensorFlow.js rows: what each declares (capabilities, deviations) and how each runs a case.
// Translation only: every number comes from a tfjs op (tf.batchNorm, tf.moments, the layer).
'use strict';

class Unsupported extends Error {}

const LAYERS_SOURCE = 'https://github.com/tensorflow/tfjs/blob/tfjs-v4.22.0/tfjs-layers/src/layers/normalization.ts';

const reductionAxes = (rank, axis) => [...Array(rank).keys()].filter((a) => a !== axis);
const channelsLast = (config, rank) => config.channel_axis === rank - 1;
const fetch = (tensor) => ({ shape: tensor.shape, values: Float32Array.from(tensor.dataSync()) }); // a copy: tidy disposes

function tensor(tf, array) {
  return tf.tensor(array.values, array.shape, 'float32');
}

// ---------------------------------------------------------------------------------- tf.batchNorm

// Per-channel parameters in a form tf.batchNorm documents: 1-D [C] when channels are last, else
// "the same shape as the input" (broadcast): the CPU kernel walks a shorter parameter cyclically
// over the flat input, which is right only for channels last.
function asParameter(tf, vector, config, shape) {
  if (vector === null) return null;
  if (channelsLast(config, shape.length)) return tf.reshape(vector, [vector.size]);
  const channelShape = shape.map((d, i) => (i === config.channel_axis ? d : 1));
  return tf.broadcastTo(tf.reshape(vector, channelShape), shape);
}

function runBatchNorm(tf, config, knobs, state, steps) {
  const gamma = config.scale ? tensor(tf, state.gamma) : null;
  const beta = config.center ? tensor(tf, state.beta) : null;
  return steps.map((step) => {
    if (step.update_running_stats) throw new Unsupported('tf.batchNorm keeps no running statistics');
    const x = tensor(tf, step.x);
    const shape = x.shape;
    const param = (v) => asParameter(tf, v, config, shape);
    const out = {};
    let mean = tensor(tf, state.running_mean);
    let variance = tensor(tf, state.running_var);
    if (step.normalize_with === 'batch') {
      const moments = tf.moments(x, reductionAxes(shape.length, config.channel_axis));
      [mean, variance] = [moments.mean, moments.variance];
      if (x.size > 0) Object.assign(out, { batch_mean: fetch(mean), batch_var: fetch(variance) });
    }
    const y = tf.batchNorm(x, param(mean), param(variance), param(beta), param(gamma), knobs.epsilon);
    return { y: fetch(y), ...out };
  });
}

// tf.moments' float32 squares overflow, seen by both rows; ``consequence`` ends the explanation.
function float32VarianceOverflow(outputs, consequence) {
  return {
    name: 'float32-variance-overflow',
    kind: 'precision',
    applies: { selector: 'squares_overflow', args: ['float32'] },
    behaviour: { mismatches: outputs, text: 'the variance overflows to Infinity: y collapses to beta' },
    explanation: 'tf.moments squares x - mean in float32, which overflows beyond 1.8e19, so the batch variance '
      + consequence,
    link: 'https://github.com/tensorflow/tfjs/blob/tfjs-v4.22.0/tfjs-core/src/ops/moments.ts',
  };
}

const BATCH_NORM = {
  name: 'tfjs.batchNorm',
  run: runBatchNorm,
  declaration: () => ({
    notes: 'stateless tf.batchNorm, judged step by step: training steps normalize with tf.moments (two-pass, '
      + "biased), eval steps with the running statistics the case expects before them; parameters 1-D for "
      + "channels last, else broadcast to x's shape",
    keeps_state: false, // no running statistics: bnconform hands each step the state it expects
    decay_parameter: null,
    defaults: { decay_parameter: null },
    capabilities: {
      epsilon_modes: ['add_inside_sqrt'],
      step_kinds: [['batch', false], ['running', false]],
      dtypes: [['float32', 'float32']],
      extensions: [],
      gradients: [],
    },
    deviations: [
      float32VarianceOverflow(['y', 'batch_var'], 'is Infinity and tf.batchNorm returns beta '
        + '(degenerate/huge_mixed_sign_float32: y -0.314 for 2.53)'),
    ],
  }),
};

// ---------------------------------------------------------------------- tf.layers.batchNormalization

function makeLayer(tf, config, knobs, state) {
  const weights = [];
  if (config.scale) weights.push(tensor(tf, state.gamma));
  if (config.center) weights.push(tensor(tf, state.beta));
  weights.push(tensor(tf, state.running_mean), tensor(tf, state.running_var));
  // momentum is the weight on the OLD statistic: moving -= (moving - batch) * (1 - momentum)
  return tf.layers.batchNormalization({ axis: config.channel_axis, momentum: knobs.decay, epsilon: knobs.epsilon,
    center: config.center, scale: config.scale, weights });
}

function runLayers(tf, config, knobs, state, steps) {
  const layer = makeLayer(tf, config, knobs, state);
  return steps.map((step) => {
    const training = step.normalize_with === 'batch';
    if (training !== step.update_running_stats) throw new Unsupported('the layer updates exactly when it trains');
    const y = layer.apply(tensor(tf, step.x), { training });
    const [movingMean, movingVariance] = layer.getWeights().slice(-2);
    return { y: fetch(y), running_mean: fetch(movingMean), running_var: fetch(movingVariance) };
  });
}

const LAYERS = {
  name: 'tfjs.layers',
  run: runLayers,
  declaration: (tf) => {
    const config = tf.layers.batchNormalization({}).getConfig(); // the framework's own defaults
    return {
      notes: 'momentum = decay (weight on the old statistic); moving variance from tf.moments (biased); no update counter',
      decay_parameter: ['momentum', 'old'],
      defaults: { decay_parameter: config.momentum, epsilon: config.epsilon },
      capabilities: {
        epsilon_modes: ['add_inside_sqrt'],
        running_variance: ['biased'],
        zero_debias: [false],
        num_updates_schedule: [false],
        running_rules: ['ema'],
        step_kinds: [['batch', true], ['running', false]],
        ranks: [2, 3, 4], // rank 5: "batchNormalization is not implemented for array of rank 5 yet"
        dtypes: [['float32', 'float32']],
        extensions: [],
        gradients: [],
      },
      deviations: LAYERS_DEVIATIONS,
    };
  },
};

const LAYERS_DEVIATIONS = [
  {
    name: 'channels-first-cyclic-parameters',
    kind: 'defect',
    applies: { selector: 'channels_not_innermost' },
    behaviour: { mismatches: ['y'], text: 'y is normalized with the wrong channel\'s statistics and parameters' },
    explanation: 'for an axis other than the last the layer reshapes mean, variance, gamma and beta to [1,..,C,..,1]; '
      + 'the CPU FusedBatchNorm kernel ignores that shape and walks them cyclically over the flat input, as if '
      + 'channels were last (the moving statistics, from tf.moments, are right)',
    link: 'https://github.com/tensorflow/tfjs/issues/1106',
  },
  {
    name: 'scale-or-center-off-crashes-training',
    kind: 'defect',
    applies: { all: [{ selector: 'affine_partly_off' }, { selector: 'training_step' }] },
    behaviour: { raises: 'TypeError', match: "Cannot read properties of undefined \\(reading 'read'\\)" },
    explanation: 'call() passes this.gamma.read() and this.beta.read() to the training path unconditionally, so '
      + 'scale: false or center: false (documented options) throw in training; inference handles them',
    link: 'https://github.com/tensorflow/tfjs/issues/2868',
  },
  {
    name: 'empty-batch-updates-moving-stats',
    kind: 'defect',
    applies: { selector: 'updates_on_empty_batch' },
    behaviour: { mismatches: ['running_mean', 'running_var'], text: 'an empty batch pulls the moving statistics toward 0' },
    explanation: 'the CPU Mean kernel is sum(x / N), which is 0 over an empty batch (not NaN), so tf.moments gives '
      + 'mean 0 and variance 0 and the layer folds them into the moving statistics like a real batch',
    link: 'https://github.com/tensorflow/tfjs/blob/tfjs-v4.22.0/tfjs-backend-cpu/src/kernels/Mean.ts',
  },
  float32VarianceOverflow(['y', 'running_var'], 'and then the moving variance are Infinity'),
  {
    name: 'moving-average-turns-infinite-mean-nan',
    kind: 'edge',
    applies: { selector: 'updates_infinite_running_mean' },
    behaviour: { mismatches: ['running_mean'], text: 'an infinite moving mean becomes NaN (the model\'s stays infinite)' },
    explanation: 'doMovingAverage writes origValue - (origValue - value) * (1 - momentum), a port of Keras\' '
      + 'subtractive update: Infinity - Infinity = NaN for a moving mean of +-Infinity, where the model\'s '
      + 'momentum * moving + (1 - momentum) * batch keeps it infinite (found by bnconform fuzz on tf_keras)',
    link: 'https://github.com/tensorflow/tfjs/blob/tfjs-v4.22.0/tfjs-layers/src/layers/normalization.ts#L380',
  },
];

module.exports = { ROWS: { batchNorm: BATCH_NORM, layers: LAYERS }, Unsupported };
