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
 * PyTorch's AVX2 build (x86) does the 16-value Box-Muller with avx_mathfun's log / sincos polynomials
 * and fused multiply-adds; that is reproduced here in float32 steps (Math.fround, an exact float fma),
 * bit for bit. Its scalar build (AVX-512 or ARM CPUs) uses std::log / cos / sin in float: pass
 * {kernel: 'scalar'}; Math.log / cos can differ from libm in the last bit there.
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

  // Float32 fused multiply-add, rounded once: a * b is exact in a double (24 + 24 bits); the sum is made
  // "round to odd" in double precision (TwoSum gives its error), which then rounds to float32 correctly.
  const F64 = new Float64Array(1);
  const U32 = new Uint32Array(F64.buffer);  // [low word, high word] on little-endian machines (all browsers)
  function fmaf(a, b, c) {
    const p = a * b;
    const s = p + c;
    const bv = s - p;
    const err = (p - (s - bv)) + (c - bv);
    if (err !== 0 && s !== 0 && Number.isFinite(s)) {
      F64[0] = s;
      if ((U32[0] & 1) === 0) {
        if ((err > 0) === (s > 0)) {
          U32[0] += 1;  // even, so no carry
        } else if (U32[0] === 0) {
          U32[0] = 0xffffffff;
          U32[1] -= 1;
        } else {
          U32[0] -= 1;
        }
        return f(F64[0]);
      }
    }
    return f(s);
  }

  // avx_mathfun.h's log256_ps and sincos256_ps (cephes polynomials), as GCC compiles them for PyTorch's
  // AVX2 kernel: the multiply-adds it fuses are fmaf here. Checked bit for bit against torch on x86.
  const F = (x) => f(x);
  const LOG_P = [7.0376836292E-2, -1.1514610310E-1, 1.1676998740E-1, -1.2420140846E-1, 1.4249322787E-1,
    -1.6668057665E-1, 2.0000714765E-1, -2.4999993993E-1, 3.3333331174E-1].map(F);
  const LOG_Q1 = F(-2.12194440e-4);
  const LOG_Q2 = F(0.693359375);
  const SQRTHF = F(0.707106781186547524);
  const FOPI = F(1.27323954473516);
  const DP1 = F(-0.78515625);
  const DP2 = F(-2.4187564849853515625e-4);
  const DP3 = F(-3.77489497744594108e-8);
  const COS_P = [2.443315711809948E-005, -1.388731625493765E-003, 4.166664568298827E-002].map(F);
  const SIN_P = [-1.9515295891E-4, 8.3321608736E-3, -1.6666654611E-1].map(F);
  const TWO_PI_F = F(TWO_PI);
  const BITS = new Float32Array(1);
  const IBITS = new Int32Array(BITS.buffer);

  function logAvx(x) {  // x in (0, 1]
    BITS[0] = x;
    const bits = IBITS[0];
    let e = f(((bits >> 23) - 0x7f) + 1);
    IBITS[0] = (bits & ~0x7f800000) | 0x3f000000;
    const m = BITS[0];  // mantissa in [0.5, 1)
    const small = m < SQRTHF;
    let v = f(m - 1);
    if (small) { e = f(e - 1); v = f(v + m); }
    const z = f(v * v);
    let y = LOG_P[0];
    for (let k = 1; k < LOG_P.length; k++) y = fmaf(y, v, LOG_P[k]);
    y = f(y * v);
    y = fmaf(y, z, f(e * LOG_Q1));
    y = f(y - f(z * 0.5));
    v = f(v + y);
    return fmaf(e, LOG_Q2, v);
  }

  function sincosAvx(x) {  // x >= 0; returns [sin, cos]
    let y = f(x * FOPI);
    let j = Math.trunc(y) | 0;
    j = (j + 1) & ~1;
    y = j;
    const swapSin = (j & 4) !== 0;
    const poly = (j & 2) === 0;
    const negCos = ((~(j - 2)) & 4) !== 0;
    x = fmaf(y, DP1, x);
    x = fmaf(y, DP2, x);
    x = fmaf(y, DP3, x);
    const z = f(x * x);
    let c = COS_P[0];
    c = fmaf(c, z, COS_P[1]);
    c = fmaf(c, z, COS_P[2]);
    c = f(c * z);
    c = fmaf(c, z, -f(z * 0.5));
    c = f(c + 1);
    let s = SIN_P[0];
    s = fmaf(s, z, SIN_P[1]);
    s = fmaf(s, z, SIN_P[2]);
    s = f(s * z);
    s = fmaf(s, x, x);
    let sin = poly ? s : c;
    let cos = poly ? c : s;
    if (swapSin) sin = -sin;
    if (negCos) cos = -cos;
    return [sin, cos];
  }

  /** Box-Muller on data[o .. o+16) as PyTorch's AVX2 NormalFill16 does. */
  function normalFill16Avx2(data, o) {
    for (let j = 0; j < 8; j++) {
      const u1 = f(1 - data[o + j]);
      const u2 = data[o + j + 8];
      const radius = f(Math.sqrt(f(-2 * logAvx(u1))));
      const [sin, cos] = sincosAvx(f(TWO_PI_F * u2));
      data[o + j] = f(radius * cos);
      data[o + j + 8] = f(radius * sin);
    }
  }

  /** Box-Muller on data[o .. o+16) as PyTorch's scalar NormalFill16 does (std::log, std::cos in float). */
  function normalFill16Scalar(data, o) {
    for (let j = 0; j < 8; j++) {
      const u1 = f(1 - data[o + j]);
      const u2 = data[o + j + 8];
      const radius = f(Math.sqrt(f(-2 * f(Math.log(u1)))));
      const theta = f(TWO_PI * u2);
      data[o + j] = f(radius * f(Math.cos(theta)));
      data[o + j + 8] = f(radius * f(Math.sin(theta)));
    }
  }

  const KERNELS = { avx2: normalFill16Avx2, scalar: normalFill16Scalar };

  /**
   * torch.randn(n, generator=torch.Generator('cpu').manual_seed(seed), dtype=torch.float32).
   * @param {number|bigint} seed integer seed (low 32 bits used, as PyTorch does)
   * @param {number} n number of values (the latent's size, e.g. 1 * 4 * 16 * 16)
   * @param {{kernel?: 'avx2'|'scalar'}} [options] which PyTorch CPU kernel to follow for n >= 16: 'avx2'
   *   (default; x86 builds, torch.backends.cpu.get_cpu_capability() == 'AVX2') or 'scalar' (the others)
   * @returns {Float32Array} n standard normal values, C order
   */
  function randn(seed, n, options = {}) {
    if (!Number.isInteger(n) || n < 0) throw new TypeError('n=' + String(n) + ' must be a non-negative integer');
    const kernel = options.kernel === undefined ? 'avx2' : options.kernel;
    const normalFill16 = KERNELS[kernel];
    if (normalFill16 === undefined) throw new Error('kernel=' + JSON.stringify(kernel) + " is not supported; use 'avx2' or 'scalar'");
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
