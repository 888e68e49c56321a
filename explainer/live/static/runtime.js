/*
 * SDXLive.Runtime: the toy's three ONNX graphs (text encoder, UNet with attention outputs, VAE decoder)
 * running in the browser on onnxruntime-web's WASM backend. A classic script (no ES modules), so the page
 * also works opened from file://, where Chrome refuses module imports and fetch() of local files.
 *
 * Load, in this order (all classic <script src>, all from the page's own folder):
 *   vendor/onnxruntime-web/ort.wasm.min.js     onnxruntime-web's IIFE build (sets self.ort)
 *   vendor/onnxruntime-web/ort-wasm-binary.js  SDXLive.ortWasm = {wasmGzipBase64, glue}: the WASM binary and
 *                                              its Emscripten glue, which the runtime hands to ort as an
 *                                              ArrayBuffer and a blob: URL (no fetch, no file import)
 *   model_config.js                            SDXLive.modelConfig (sizes and names, read from the model configs)
 *   model_text_encoder.js, model_unet.js,
 *   model_vae_decoder.js                       SDXLive.modelData.<key> = '<base64 of the .onnx file>'
 *   runtime.js                                 this file
 * (explainer.live.export_onnx.write_model_scripts writes the model_*.js files.)
 *
 * API (every method is async; calls are queued, one graph runs at a time):
 *   const rt = await SDXLive.Runtime.create(opts?)
 *       opts.modelData / opts.modelConfig / opts.ortWasm / opts.ort: default the globals above;
 *       opts.numThreads: WASM threads (default 1; more only when the page is cross-origin isolated);
 *       opts.executionProviders: default ['wasm'].
 *   rt.config        {channels, height, width, image_height, image_width, tokens, dim, bos_token_id,
 *                     eos_token_id, pad_token_id, scaling_factor, attention: [{name, output, height, width,
 *                     heads}], scheduler: {...the diffusers scheduler config}}
 *   await rt.encode(ids)          ids: Int32Array | BigInt64Array | number[] of length config.tokens
 *                                 → Float32Array [1, tokens, dim] (last_hidden_state)
 *   await rt.unet(latent, t, emb) latent: Float32Array [batch, C, h, w] (batch 2 = [uncond, cond] for guidance,
 *                                 or 1); t: the scheduler timestep (number); emb: Float32Array [batch, tokens, dim]
 *                                 → {output: Float32Array [batch, C, h, w] (the model output: v for the toy),
 *                                    attn: [{name, shape: [batch, h*w, tokens], height, width, data}]}
 *                                 attn: per cross-attention layer, softmax probabilities averaged over heads.
 *   await rt.decode(latent)       latent: Float32Array [1, C, h, w] as the scheduler leaves it (not divided by
 *                                 scaling_factor) → Uint8ClampedArray RGBA [H, W, 4] (ImageData-ready)
 *   await rt.decodeFloat(latent)  → Float32Array [3, H, W] in [0, 1]
 *   await rt.release()
 *   rt.backend       the execution provider the sessions run on ('wasm')
 */
(function (root) {
  'use strict';
  const ns = (root.SDXLive = root.SDXLive || {});

  const KEYS = ['text_encoder', 'unet', 'vae_decoder'];

  /** Bytes of a base64 string. */
  function fromBase64(text) {
    if (typeof Uint8Array.fromBase64 === 'function') return Uint8Array.fromBase64(text);
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  /** Inflate gzip bytes with the browser's DecompressionStream (no fetch: works from file://). */
  async function gunzip(bytes) {
    if (typeof DecompressionStream === 'undefined') {
      throw new Error('this browser lacks DecompressionStream (Chrome 80+, Firefox 113+, Safari 16.4+ have it)');
    }
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  let ortReady = null; // one WASM set-up per page, shared by every Runtime

  function setUpOrt(ort, ortWasm, numThreads) {
    if (ortReady) return ortReady;
    ortReady = (async () => {
      ort.env.wasm.numThreads = numThreads;
      ort.env.wasm.proxy = false;
      if (ortWasm) {
        ort.env.wasm.wasmBinary = (await gunzip(fromBase64(ortWasm.wasmGzipBase64))).buffer;
        const glue = new Blob([ortWasm.glue], { type: 'text/javascript' });
        ort.env.wasm.wasmPaths = { mjs: URL.createObjectURL(glue) };
      }
    })();
    return ortReady;
  }

  function check(name, array, length, what) {
    if (!ArrayBuffer.isView(array) && !Array.isArray(array)) {
      throw new TypeError(`${name} must be a typed array ${what}, not ${typeof array}`);
    }
    if (length !== null && array.length !== length) {
      throw new RangeError(`${name} has ${array.length} values; ${what} needs ${length}`);
    }
  }

  class Runtime {
    constructor(ort, sessions, config, backend) {
      this.ort = ort;
      this.sessions = sessions;
      this.config = config;
      this.backend = backend;
      this._queue = Promise.resolve();
    }

    /**
     * Load the three sessions from the embedded model data.
     * @param {object} [opts] see the top of this file
     * @returns {Promise<Runtime>}
     */
    static async create(opts = {}) {
      const ort = opts.ort || root.ort;
      if (!ort || !ort.InferenceSession) {
        throw new Error('onnxruntime-web is not loaded: add <script src="vendor/onnxruntime-web/ort.wasm.min.js">');
      }
      const data = opts.modelData || ns.modelData || {};
      const config = opts.modelConfig || ns.modelConfig;
      const missing = KEYS.filter((k) => !data[k]);
      if (!config || missing.length) {
        throw new Error(`model data missing (${config ? '' : 'model_config.js '}${missing.map((k) => `model_${k}.js`).join(' ')}); ` +
          'load the scripts explainer.live.export_onnx.write_model_scripts writes');
      }
      const isolated = typeof root.crossOriginIsolated === 'boolean' && root.crossOriginIsolated;
      const numThreads = isolated ? (opts.numThreads || 1) : 1;
      await setUpOrt(ort, opts.ortWasm || ns.ortWasm, numThreads);
      const executionProviders = opts.executionProviders || ['wasm'];
      const sessions = {};
      for (const key of KEYS) {
        const bytes = typeof data[key] === 'string' ? fromBase64(data[key]) : data[key];
        sessions[key] = await ort.InferenceSession.create(bytes, { executionProviders, graphOptimizationLevel: 'all' });
      }
      return new Runtime(ort, sessions, config, executionProviders[0]);
    }

    _run(key, feeds) {
      const result = this._queue.then(() => this.sessions[key].run(feeds));
      this._queue = result.catch(() => undefined);
      return result;
    }

    /**
     * Text encoder: token ids → last_hidden_state.
     * @param {Int32Array|BigInt64Array|number[]} ids [tokens]
     * @returns {Promise<Float32Array>} [1, tokens, dim]
     */
    async encode(ids) {
      const { tokens } = this.config;
      check('ids', ids, tokens, `of ${tokens} token ids (BOS, the prompt, EOS, padding)`);
      const ints = Int32Array.from(ids, (v) => Number(v));
      const out = await this._run('text_encoder', { input_ids: new this.ort.Tensor('int32', ints, [1, tokens]) });
      return out.last_hidden_state.data;
    }

    /**
     * UNet: one denoising call, with each cross-attention layer's head-averaged probabilities.
     * @param {Float32Array} latent [batch, C, h, w]
     * @param {number} t scheduler timestep
     * @param {Float32Array} embeddings [batch, tokens, dim]
     * @returns {Promise<{output: Float32Array, attn: {name: string, shape: number[], height: number, width: number, data: Float32Array}[]}>}
     */
    async unet(latent, t, embeddings) {
      const { channels: c, height: h, width: w, tokens, dim } = this.config;
      check('latent', latent, null, `[batch, ${c}, ${h}, ${w}]`);
      const batch = latent.length / (c * h * w);
      if (!Number.isInteger(batch) || batch < 1) {
        throw new RangeError(`latent has ${latent.length} values, not a multiple of ${c}*${h}*${w}`);
      }
      check('embeddings', embeddings, batch * tokens * dim, `[${batch}, ${tokens}, ${dim}]`);
      if (typeof t !== 'number' || !Number.isFinite(t)) throw new TypeError(`t must be a finite number, not ${t}`);
      const T = this.ort.Tensor;
      const out = await this._run('unet', {
        sample: new T('float32', Float32Array.from(latent), [batch, c, h, w]),
        timestep: new T('float32', new Float32Array([t]), [1]),
        encoder_hidden_states: new T('float32', Float32Array.from(embeddings), [batch, tokens, dim]),
      });
      return {
        output: out.model_output.data,
        attn: this.config.attention.map((la) => ({
          name: la.name, height: la.height, width: la.width,
          shape: [batch, la.height * la.width, tokens], data: out[la.output].data,
        })),
      };
    }

    /**
     * VAE decoder: latent → image in [0, 1].
     * @param {Float32Array} latent [1, C, h, w]
     * @returns {Promise<Float32Array>} [3, H, W]
     */
    async decodeFloat(latent) {
      const { channels: c, height: h, width: w } = this.config;
      check('latent', latent, c * h * w, `[1, ${c}, ${h}, ${w}]`);
      const out = await this._run('vae_decoder', { latent: new this.ort.Tensor('float32', Float32Array.from(latent), [1, c, h, w]) });
      return out.image.data;
    }

    /**
     * VAE decoder to pixels, rounded as diffusers' image processor rounds.
     * @param {Float32Array} latent [1, C, h, w]
     * @returns {Promise<Uint8ClampedArray>} RGBA [H, W, 4]
     */
    async decode(latent) {
      const image = await this.decodeFloat(latent);
      const n = this.config.image_height * this.config.image_width;
      const rgba = new Uint8ClampedArray(n * 4);
      for (let i = 0; i < n; i++) {
        rgba[4 * i] = Math.round(image[i] * 255);
        rgba[4 * i + 1] = Math.round(image[n + i] * 255);
        rgba[4 * i + 2] = Math.round(image[2 * n + i] * 255);
        rgba[4 * i + 3] = 255;
      }
      return rgba;
    }

    /** Free the sessions. */
    async release() {
      await this._queue;
      for (const key of KEYS) await this.sessions[key].release();
    }
  }

  ns.Runtime = Runtime;
  if (typeof module === 'object' && module.exports) module.exports = { Runtime };
})(typeof self !== 'undefined' ? self : globalThis);
