#!/usr/bin/env node
// TensorFlow.js Batch Normalization as a bnconform backend (docs/protocol.md), on the tfjs CPU backend.
//
//   node backend.js batchNorm   -> row tfjs.batchNorm: tf.batchNorm (stateless), training steps
//                                  normalize with tf.moments, eval steps with the given running stats
//   node backend.js layers      -> row tfjs.layers: tf.layers.batchNormalization (training and
//                                  inference, moving statistics)
//
// stdout carries the protocol only: one handshake line, then one answer line per request line on
// stdin. Everything else (tfjs' own banner included) goes to stderr.
'use strict';

const readline = require('readline');
const { parseHexFloat, hexFloat, decode, encode } = require('./hexfloat');
const rows = require('./rows');

const send = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
console.log = console.info = console.debug = (...args) => console.error(...args);

const INSTALL = 'npm ci --prefix backends/tfjs';

function loadTensorflow() {
  try {
    return { tf: require('@tensorflow/tfjs') };
  } catch (error) {
    return { problem: `cannot load @tensorflow/tfjs (${error.message.split('\n')[0]}); install it with: ${INSTALL}` };
  }
}

// The case's knobs as this API holds them: max(epsilon, floor) and decay, each rounded to the
// dtype the case says the framework stores it in (float32 or exact).
function storedKnobs(config) {
  const round = (value, dtype) => (dtype === 'float32' ? Math.fround(value) : value);
  const epsilon = round(Math.max(config.epsilon, config.epsilon_floor || 0), config.epsilon_dtype);
  const stats = config.running_stats;
  const decay = stats && stats.decay !== null ? round(stats.decay, stats.decay_dtype) : undefined;
  return { epsilon, decay };
}

function answer(tf, row, request) {
  const c = request.case;
  const state = {};
  for (const key of ['gamma', 'beta', 'running_mean', 'running_var']) state[key] = decode(c.initial_state[key]);
  const steps = c.steps.map((s) => ({ ...s, x: decode(s.x) }));
  const knobs = storedKnobs(c.config);
  const outputs = tf.tidy(() => row.run(tf, c.config, knobs, state, steps));
  tf.disposeVariables(); // the layer's weights: each case starts from its own initial state
  return outputs.map((step) => Object.fromEntries(Object.entries(step).map(([k, v]) => [k, encode(v)])));
}

function serve(tf, row) {
  const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  input.on('line', (line) => {
    let request;
    try {
      request = JSON.parse(line);
    } catch (error) {
      send({ id: null, error: { type: 'SyntaxError', message: `Expected: one JSON request per line. Received: ${line.slice(0, 60)}` } });
      return;
    }
    try {
      if (!tf) throw new rows.Unsupported('@tensorflow/tfjs is not installed');
      send({ id: request.id, outputs: answer(tf, row, request) });
    } catch (error) {
      if (error instanceof rows.Unsupported) send({ id: request.id, unsupported: error.message });
      else send({ id: request.id, error: { type: error.constructor.name, message: String(error.message) } });
    }
  });
}

async function main() {
  const row = rows.ROWS[process.argv[2]];
  if (!row) {
    console.error(`Expected: one of ${Object.keys(rows.ROWS).join(', ')}. Received: ${process.argv[2]}`);
    process.exit(2);
  }
  const { tf, problem } = loadTensorflow();
  if (problem) {
    send({ protocol: 1, name: row.name, version: '?', unavailable: problem });
  } else {
    await tf.setBackend('cpu'); // the pure-JavaScript kernels (tfjs-backend-cpu)
    await tf.ready();
    send({ protocol: 1, name: row.name, version: tf.version.tfjs, devices: ['cpu'], ...row.declaration(tf) });
  }
  serve(tf, row);
}

module.exports = { parseHexFloat, hexFloat, storedKnobs };

if (require.main === module) main();
