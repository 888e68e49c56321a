/*
 * random.js: torch-compatible seeded Gaussian noise for the live page (SDXLive.randn).
 *
 * SDXLive.randn(seed, n) returns a Float32Array equal to
 *     torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
 * which is what diffusers' randn_tensor draws for the starting latent when explainer.trace is given
 * `seed` (it builds torch.Generator(device).manual_seed(seed); the toy runs on the CPU), flattened
 * in C order (a [1, 4, 16, 16] latent is randn(seed, 1024)).
 *
 * How PyTorch does it (ATen, CPU generator; torch 2.x):
 *  - manual_seed(s): a Mersenne Twister (mt19937) seeded with the low 32 bits of s.
 *  - a float uniform in [0, 1): (next32() & 0xFFFFFF) / 2^24.
 *  - n >= 16 (contiguous): fill all n uniforms, then Box-Muller on each block of 16
 *    (u1 = 1 - data[j], u2 = data[j + 8], j < 8: data[j] = r cos θ, data[j + 8] = r sin θ with
 *    r = sqrt(-2 log u1), θ = 2π u2); if n % 16 != 0, draw 16 more uniforms into the last 16 slots
 *    and transform those again (normal_fill / NormalFill16).
 *  - n < 16: one at a time with normal_distribution<double>: u1, u2 from 53-bit doubles
 *    ((hi << 32 | lo) & (2^53 - 1)) / 2^53, r = sqrt(-2 log1p(-u2)), θ = 2π u1, returns r cos θ and
 *    keeps r sin θ for the next element; each cast to float32.
 * The float path is computed here in float32 steps (Math.fround); PyTorch's vectorised log / sincos
 * (AVX2) may round differently in the last bits, so values agree to ~1e-6, not always bit for bit.
 *
 * Also: SDXLive.MT19937 (the generator: next32(), uniformFloat(), uniformDouble()).
 * Classic script (no modules): attaches to self.SDXLive; Node can require() it.
 */
(function (root) {
  'use strict';
  const ns = root.SDXLive = root.SDXLive || {};

  const N = 624;
  const M = 397;
  const MATRIX_A = 0x9908b0df;
  const UPPER = 0x80000000;
  const LOWER = 0x7fffffff;
  const TWO32 = 4294967296;

  /** Low 32 bits of an integer seed (as PyTorch's mt19937 takes them; negative seeds wrap as uint64). */
  function low32(seed) {
    if (typeof seed === 'bigint') return Number(BigInt.asUintN(32, seed));
    if (typeof seed !== 'number' || !Number.isSafeInteger(seed)) {
      throw new TypeError('seed=' + String(seed) + ' must be an integer between -(2^53 - 1) and 2^53 - 1 (or a BigInt)');
    }
    return ((seed % TWO32) + TWO32) % TWO32;
  }

  /** PyTorch's CPU Mersenne Twister (at::mt19937), seeded as torch.Generator.manual_seed does. */
  class MT19937 {
    constructor(seed) {
      const s = this.state = new Uint32Array(N);
      s[0] = low32(seed);
      for (let j = 1; j < N; j++) {
        const prev = s[j - 1] ^ (s[j - 1] >>> 30);
        s[j] = (Math.imul(1812433253, prev) + j) >>> 0;
      }
      this.left = 1;
      this.next = 0;
    }

    _nextState() {
      const s = this.state;
      let kk = 0;
      let y;
      for (; kk < N - M; kk++) {
        y = (s[kk] & UPPER) | (s[kk + 1] & LOWER);
        s[kk] = s[kk + M] ^ (y >>> 1) ^ ((s[kk + 1] & 1) ? MATRIX_A : 0);
      }
      for (; kk < N - 1; kk++) {
        y = (s[kk] & UPPER) | (s[kk + 1] & LOWER);
        s[kk] = s[kk + M - N] ^ (y >>> 1) ^ ((s[kk + 1] & 1) ? MATRIX_A : 0);
      }
      y = (s[N - 1] & UPPER) | (s[0] & LOWER);
      s[N - 1] = s[M - 1] ^ (y >>> 1) ^ ((s[0] & 1) ? MATRIX_A : 0);
      this.left = N;
      this.next = 0;
    }

    /** The next 32-bit output, as an unsigned integer. */
    next32() {
      if (--this.left === 0) this._nextState();
      let y = this.state[this.next++];
      y ^= (y >>> 11);
      y ^= (y << 7) & 0x9d2c5680;
      y ^= (y << 15) & 0xefc60000;
      y ^= (y >>> 18);
      return y >>> 0;
    }

    /** A float32 uniform in [0, 1): 24 random bits (at::uniform_real_distribution<float>). */
    uniformFloat() {
      return (this.next32() & 0xffffff) / 16777216;
    }

    /** A double uniform in [0, 1): 53 bits of (first << 32 | second) (uniform_real_distribution<double>). */
    uniformDouble() {
      const hi = this.next32();
      const lo = this.next32();
      // ((hi << 32) | lo) & (2^53 - 1) = (hi & 0x1FFFFF) * 2^32 + lo, exact in a double.
      return ((hi & 0x1fffff) * TWO32 + lo) / 9007199254740992;
    }
  }

  const f = Math.fround;
  const TWO_PI = 2 * Math.PI;

  /** Box-Muller on data[o .. o+16) in float32 steps (PyTorch's NormalFill16). */
  function normalFill16(data, o) {
    for (let j = 0; j < 8; j++) {
      const u1 = f(1 - data[o + j]);
      const u2 = data[o + j + 8];
      const radius = f(Math.sqrt(f(-2 * f(Math.log(u1)))));
      const theta = f(TWO_PI * u2);
      data[o + j] = f(radius * f(Math.cos(theta)));
      data[o + j + 8] = f(radius * f(Math.sin(theta)));
    }
  }

  /**
   * torch.randn(n, generator=torch.Generator('cpu').manual_seed(seed), dtype=torch.float32).
   * @param {number|bigint} seed integer seed (low 32 bits used, as PyTorch does)
   * @param {number} n number of values (the latent's size, e.g. 1 * 4 * 16 * 16)
   * @returns {Float32Array} n standard normal values, C order
   */
  function randn(seed, n) {
    if (!Number.isInteger(n) || n < 0) throw new TypeError('n=' + String(n) + ' must be a non-negative integer');
    const gen = new MT19937(seed);
    const out = new Float32Array(n);
    if (n >= 16) {
      for (let i = 0; i < n; i++) out[i] = gen.uniformFloat();
      for (let i = 0; i + 16 <= n; i += 16) normalFill16(out, i);
      if (n % 16 !== 0) {
        for (let i = n - 16; i < n; i++) out[i] = gen.uniformFloat();
        normalFill16(out, n - 16);
      }
      return out;
    }
    let cached = null;
    for (let i = 0; i < n; i++) {
      if (cached !== null) { out[i] = cached; cached = null; continue; }
      const u1 = gen.uniformDouble();
      const u2 = gen.uniformDouble();
      const r = Math.sqrt(-2 * Math.log1p(-u2));
      const theta = TWO_PI * u1;
      cached = r * Math.sin(theta);
      out[i] = r * Math.cos(theta);
    }
    return out;
  }

  ns.MT19937 = MT19937;
  ns.randn = randn;
  if (typeof module === 'object' && module.exports) module.exports = { MT19937, randn };
})(typeof self !== 'undefined' ? self : globalThis);
