/*
 * scheduler.js: the toy's noise scheduler and classifier-free guidance in plain JS (SDXLive.DDIMScheduler,
 * SDXLive.cfg).
 *
 * new SDXLive.DDIMScheduler(config) takes a diffusers scheduler_config.json object (the toy's is
 * assets/toy/scheduler/scheduler_config.json: DDIMScheduler, scaled_linear betas, rescale_betas_zero_snr,
 * trailing spacing, v_prediction) and reproduces diffusers' DDIMScheduler with eta = 0:
 *   - alphasCumprod (Float32Array [num_train_timesteps]) computed in float32 steps as PyTorch does
 *     (torch.linspace with fused multiply-adds, cumprod accumulated in double and stored as float32,
 *     Lin et al.'s zero-terminal-SNR rescale). PyTorch's CPU float32 sqrt (MKL) is not correctly rounded
 *     (1 ulp off for ~15% of inputs), so the rescaled values differ from diffusers' in the last bit or two;
 *     pass diffusers' own array as options.alphasCumprod (explainer.live.js_data.scheduler_payload writes
 *     it) to step with exactly the same ᾱ;
 *   - setTimesteps(n) -> Int32Array of n timesteps (linspace / leading / trailing spacing);
 *   - step(modelOutput, t, sample) -> {prevSample, predOriginalSample} (Float32Array, float32 arithmetic),
 *     including diffusers' quirk that the previous timestep is t - floor(num_train_timesteps / n);
 *   - schedule() -> {timesteps, alphaBar, sigma, snr, logSnr} per training timestep for the schedule plot
 *     (sigma = sqrt((1 - ᾱ) / ᾱ), SNR = ᾱ / (1 - ᾱ)).
 * Supported config keys: num_train_timesteps, beta_start, beta_end, beta_schedule (linear, scaled_linear,
 * squaredcos_cap_v2), trained_betas, rescale_betas_zero_snr, set_alpha_to_one, steps_offset,
 * prediction_type (epsilon, v_prediction, sample), clip_sample, clip_sample_range, timestep_spacing
 * (linspace, leading, trailing). thresholding = true and any other _class_name throw an Error naming them.
 *
 * SDXLive.cfg(uncond, cond, g) = uncond + g * (cond - uncond), as diffusers' pipelines combine the two
 * halves of the UNet's batch (float32).
 * Classic script (no modules): attaches to self.SDXLive; Node can require() it.
 */
(function (root) {
  'use strict';
  const ns = root.SDXLive = root.SDXLive || {};
  const f = Math.fround;

  const DEFAULTS = {
    num_train_timesteps: 1000,
    beta_start: 0.0001,
    beta_end: 0.02,
    beta_schedule: 'linear',
    trained_betas: null,
    clip_sample: true,
    set_alpha_to_one: true,
    steps_offset: 0,
    prediction_type: 'epsilon',
    thresholding: false,
    clip_sample_range: 1.0,
    timestep_spacing: 'leading',
    rescale_betas_zero_snr: false,
  };
  const PREDICTION_TYPES = ['epsilon', 'v_prediction', 'sample'];
  const SPACINGS = ['linspace', 'leading', 'trailing'];
  const BETA_SCHEDULES = ['linear', 'scaled_linear', 'squaredcos_cap_v2'];

  /**
   * torch.linspace(start, end, steps, dtype=float32) on the CPU: step = (end - start) / (steps - 1) in
   * float32, then start + step * i for the first half and end - step * (steps - 1 - i) for the rest, each a
   * fused multiply-add (one rounding; step * i is exact in a double, so one fround of the double sum).
   */
  function linspaceF32(start, end, steps) {
    const out = new Float32Array(steps);
    if (steps === 1) { out[0] = f(start); return out; }
    const s = f(start);
    const e = f(end);
    const step = f(f(e - s) / (steps - 1));
    const half = Math.floor(steps / 2);
    for (let i = 0; i < steps; i++) out[i] = i < half ? f(s + step * i) : f(e - step * (steps - 1 - i));
    return out;
  }

  /** torch.cumprod on a float32 vector: accumulated in double, each prefix stored as float32. */
  function cumprodF32(x) {
    const out = new Float32Array(x.length);
    let acc = 1;
    for (let i = 0; i < x.length; i++) { acc *= x[i]; out[i] = acc; }
    return out;
  }

  /** diffusers' betas_for_alpha_bar (cosine), stored as float32. */
  function cosineBetas(n, maxBeta = 0.999) {
    const alphaBar = (t) => Math.cos((t + 0.008) / 1.008 * Math.PI / 2) ** 2;
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), maxBeta);
    return out;
  }

  /** diffusers' rescale_zero_terminal_snr in float32 steps (Lin et al. 2023, Algorithm 1). */
  function rescaleZeroTerminalSnr(betas) {
    const n = betas.length;
    const alphas = betas.map((b) => f(1 - b));
    const sqrtBar = cumprodF32(alphas).map((a) => f(Math.sqrt(a)));
    const a0 = sqrtBar[0];
    const aT = sqrtBar[n - 1];
    const scale = f(a0 / f(a0 - aT));
    const bar = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const v = f(f(sqrtBar[i] - aT) * scale);
      bar[i] = f(v * v);
    }
    const out = new Float32Array(n);
    out[0] = f(1 - bar[0]);
    for (let i = 1; i < n; i++) out[i] = f(1 - f(bar[i] / bar[i - 1]));
    return out;
  }

  class DDIMScheduler {
    /**
     * @param {object} config a diffusers DDIMScheduler config (scheduler_config.json as an object)
     * @param {{alphasCumprod?: ArrayLike<number>}} [options] diffusers' alphas_cumprod
     *   ([num_train_timesteps]) to use instead of the one computed from config
     */
    constructor(config, options = {}) {
      if (!config || typeof config !== 'object') throw new TypeError('config must be a scheduler_config.json object');
      if (config._class_name !== undefined && config._class_name !== 'DDIMScheduler') {
        throw new Error('_class_name=' + JSON.stringify(config._class_name) + ' is not supported; only DDIMScheduler is');
      }
      const c = this.config = Object.assign({}, DEFAULTS, config);
      if (c.thresholding) throw new Error('thresholding=true (dynamic thresholding) is not supported');
      if (!PREDICTION_TYPES.includes(c.prediction_type)) {
        throw new Error('prediction_type=' + JSON.stringify(c.prediction_type) + ' is not supported; use one of ' + PREDICTION_TYPES.join(', '));
      }
      if (!SPACINGS.includes(c.timestep_spacing)) {
        throw new Error('timestep_spacing=' + JSON.stringify(c.timestep_spacing) + ' is not supported; use one of ' + SPACINGS.join(', '));
      }
      const T = c.num_train_timesteps;
      if (!Number.isInteger(T) || T < 1) throw new Error('num_train_timesteps=' + T + ' must be a positive integer');
      let betas;
      if (c.trained_betas !== null && c.trained_betas !== undefined) {
        betas = Float32Array.from(c.trained_betas);
      } else if (c.beta_schedule === 'linear') {
        betas = linspaceF32(c.beta_start, c.beta_end, T);
      } else if (c.beta_schedule === 'scaled_linear') {
        betas = linspaceF32(Math.sqrt(c.beta_start), Math.sqrt(c.beta_end), T).map((b) => f(b * b));
      } else if (c.beta_schedule === 'squaredcos_cap_v2') {
        betas = cosineBetas(T);
      } else {
        throw new Error('beta_schedule=' + JSON.stringify(c.beta_schedule) + ' is not supported; use one of ' + BETA_SCHEDULES.join(', ') + ' or trained_betas');
      }
      if (c.rescale_betas_zero_snr) betas = rescaleZeroTerminalSnr(betas);
      this.betas = betas;                                    // [num_train_timesteps]
      this.alphas = betas.map((b) => f(1 - b));              // [num_train_timesteps]
      this.alphasCumprod = cumprodF32(this.alphas);          // [num_train_timesteps] ᾱ_t
      if (options.alphasCumprod !== undefined && options.alphasCumprod !== null) {
        if (options.alphasCumprod.length !== T) {
          throw new RangeError('options.alphasCumprod has ' + options.alphasCumprod.length + ' values; num_train_timesteps is ' + T);
        }
        this.alphasCumprod = Float32Array.from(options.alphasCumprod);
      }
      this.finalAlphaCumprod = c.set_alpha_to_one ? 1 : this.alphasCumprod[0];
      this.initNoiseSigma = 1.0;
      this.numInferenceSteps = null;
      this.timesteps = null;
    }

    /**
     * The timesteps for n inference steps, as diffusers' set_timesteps computes them.
     * @param {number} n number of inference steps (1 .. num_train_timesteps)
     * @returns {Int32Array} [n] timesteps, from noisiest to cleanest
     */
    setTimesteps(n) {
      const c = this.config;
      const T = c.num_train_timesteps;
      if (!Number.isInteger(n) || n < 1 || n > T) {
        throw new RangeError('numInferenceSteps=' + n + ' must be an integer from 1 to num_train_timesteps (' + T + ')');
      }
      const ts = new Int32Array(n);
      if (c.timestep_spacing === 'linspace') {
        // np.linspace(0, T - 1, n).round()[::-1]
        const step = n > 1 ? (T - 1) / (n - 1) : 0;
        for (let i = 0; i < n; i++) {
          const v = i === n - 1 && n > 1 ? T - 1 : i * step;
          ts[n - 1 - i] = roundHalfEven(v);
        }
      } else if (c.timestep_spacing === 'leading') {
        const ratio = Math.floor(T / n);
        for (let i = 0; i < n; i++) ts[n - 1 - i] = i * ratio + c.steps_offset;
      } else {
        // np.round(np.arange(T, 0, -T / n)) - 1
        const ratio = T / n;
        const count = Math.ceil(T / ratio);
        if (count !== n) throw new Error('trailing spacing gave ' + count + ' timesteps for ' + n + ' steps');
        for (let i = 0; i < n; i++) ts[i] = roundHalfEven(T + i * -ratio) - 1;
      }
      this.numInferenceSteps = n;
      this.timesteps = ts;
      return ts;
    }

    /** ᾱ of the step before t (diffusers' DDIM uses t - floor(T / n), whatever the spacing). */
    _prevAlpha(t) {
      const prev = t - Math.floor(this.config.num_train_timesteps / this.numInferenceSteps);
      return prev >= 0 ? this.alphasCumprod[prev] : this.finalAlphaCumprod;
    }

    /**
     * One DDIM step (eta = 0), in float32 arithmetic as diffusers does on float32 tensors.
     * @param {Float32Array} modelOutput the (guided) UNet output, same length as sample
     * @param {number} t the current timestep (one of setTimesteps' values)
     * @param {Float32Array} sample x_t
     * @returns {{prevSample: Float32Array, predOriginalSample: Float32Array}} x_{t-1} and x̂0
     */
    step(modelOutput, t, sample) {
      if (this.numInferenceSteps === null) throw new Error('call setTimesteps(n) before step()');
      if (modelOutput.length !== sample.length) {
        throw new RangeError('modelOutput has ' + modelOutput.length + ' values but sample has ' + sample.length);
      }
      const T = this.config.num_train_timesteps;
      if (!Number.isInteger(t) || t < 0 || t >= T) throw new RangeError('t=' + t + ' must be an integer timestep in [0, ' + (T - 1) + ']');
      const aT = this.alphasCumprod[t];
      const aPrev = this._prevAlpha(t);
      const bT = f(1 - aT);
      const sa = f(Math.sqrt(aT));
      const sb = f(Math.sqrt(bT));
      const saPrev = f(Math.sqrt(aPrev));
      const dir = f(Math.sqrt(f(f(1 - aPrev) - 0)));  // std_dev_t = 0 (eta = 0): (1 - ᾱ_prev - 0)^0.5
      const kind = this.config.prediction_type;
      const clip = this.config.clip_sample;
      const range = this.config.clip_sample_range;
      const n = sample.length;
      const x0 = new Float32Array(n);
      const prev = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        const x = sample[i];
        const m = modelOutput[i];
        let p0;
        let eps;
        if (kind === 'v_prediction') {
          p0 = f(f(sa * x) - f(sb * m));
          eps = f(f(sa * m) + f(sb * x));
        } else if (kind === 'epsilon') {
          p0 = f(f(x - f(sb * m)) / sa);
          eps = m;
        } else {
          p0 = m;
          eps = f(f(x - f(sa * p0)) / sb);
        }
        if (clip) p0 = Math.min(Math.max(p0, -range), range);
        x0[i] = p0;
        prev[i] = f(f(saPrev * p0) + f(dir * eps));
      }
      return { prevSample: prev, predOriginalSample: x0 };
    }

    /**
     * Per-training-timestep curves for the schedule plot.
     * @returns {{timesteps: Int32Array, alphaBar: Float32Array, sigma: Float64Array, snr: Float64Array, logSnr: Float64Array}}
     *   each [num_train_timesteps]; sigma = sqrt((1 - ᾱ) / ᾱ), snr = ᾱ / (1 - ᾱ) (Infinity where ᾱ = 1, 0 where ᾱ = 0)
     */
    schedule() {
      const T = this.config.num_train_timesteps;
      const a = this.alphasCumprod;
      const ts = new Int32Array(T);
      const sigma = new Float64Array(T);
      const snr = new Float64Array(T);
      const logSnr = new Float64Array(T);
      for (let i = 0; i < T; i++) {
        ts[i] = i;
        sigma[i] = Math.sqrt((1 - a[i]) / a[i]);
        snr[i] = a[i] / (1 - a[i]);
        logSnr[i] = Math.log(snr[i]);
      }
      return { timesteps: ts, alphaBar: a, sigma, snr, logSnr };
    }
  }

  /** numpy's round (half to even) for a double. */
  function roundHalfEven(v) {
    const r = Math.round(v);
    return (Math.abs(v % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
  }

  /**
   * Classifier-free guidance: uncond + g * (cond - uncond), in float32 (diffusers' noise_pred_uncond +
   * guidance_scale * (noise_pred_text - noise_pred_uncond)).
   * @param {Float32Array} uncond the UNet output for the empty prompt
   * @param {Float32Array} cond the UNet output for the prompt
   * @param {number} g the guidance scale
   * @returns {Float32Array} the guided output
   */
  function cfg(uncond, cond, g) {
    if (uncond.length !== cond.length) throw new RangeError('uncond has ' + uncond.length + ' values but cond has ' + cond.length);
    if (typeof g !== 'number' || !Number.isFinite(g)) throw new TypeError('g=' + String(g) + ' must be a finite number');
    const gs = f(g);
    const out = new Float32Array(cond.length);
    for (let i = 0; i < cond.length; i++) out[i] = f(uncond[i] + f(gs * f(cond[i] - uncond[i])));
    return out;
  }

  ns.DDIMScheduler = DDIMScheduler;
  ns.cfg = cfg;
  if (typeof module === 'object' && module.exports) {
    module.exports = { DDIMScheduler, cfg, linspaceF32, cumprodF32, rescaleZeroTerminalSnr };
  }
})(typeof self !== 'undefined' ? self : globalThis);
