// The array encoding of bnconform case files (docs/case-format.md, "Arrays: bit-exact hex floats"):
// {"dtype", "shape", "hex"}, each value the C99 hexadecimal form of a float64, or "nan", "inf", "-inf".
'use strict';

// A hex float -> the float64 it names, exactly (JavaScript has no hex-float parser).
function parseHexFloat(text) {
  if (text === 'nan') return NaN;
  if (text === 'inf') return Infinity;
  if (text === '-inf') return -Infinity;
  const m = /^(-?)0x([0-9a-f]+)(?:\.([0-9a-f]*))?p([+-]?\d+)$/i.exec(text);
  if (!m) throw new Error(`Expected: a hex float like 0x1.8p+0. Received: ${text}`);
  const fraction = m[3] || '';
  const mantissa = Number(BigInt('0x' + m[2] + fraction)); // < 2^53 for stored values: exact
  const magnitude = mantissa * 2 ** (Number(m[4]) - 4 * fraction.length);
  return m[1] ? -magnitude : magnitude; // keeps -0.0
}

// A float64 -> its C99 hexadecimal form ("0x1.8000000000000p+0", "-0x0.0p+0", subnormals as 0x0.xxxp-1022).
function hexFloat(value) {
  if (Number.isNaN(value)) return 'nan';
  if (value === Infinity) return 'inf';
  if (value === -Infinity) return '-inf';
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, value);
  const high = view.getUint32(0);
  const sign = high >>> 31 ? '-' : '';
  const exponent = (high >>> 20) & 0x7ff;
  const bits = (BigInt(high & 0xfffff) << 32n) | BigInt(view.getUint32(4));
  const digits = bits.toString(16).padStart(13, '0');
  if (exponent === 0) return bits === 0n ? `${sign}0x0.0p+0` : `${sign}0x0.${digits}p-1022`;
  const power = exponent - 1023;
  return `${sign}0x1.${digits}p${power >= 0 ? '+' : ''}${power}`;
}

// An encoded array -> {shape, values: Float32Array}. tfjs computes in float32 only, and the
// backend declares float32 cases only, so every value is exact in a Float32Array.
function decode(array) {
  if (array.dtype !== 'float32') throw new Error(`Expected: a float32 array. Received: ${array.dtype}`);
  return { shape: array.shape, values: Float32Array.from(array.hex, parseHexFloat) };
}

// {shape, values} (a float32 TypedArray from dataSync) -> the encoded array.
function encode({ shape, values }) {
  return { dtype: 'float32', shape, hex: Array.from(values, hexFloat) };
}

module.exports = { parseHexFloat, hexFloat, decode, encode };
