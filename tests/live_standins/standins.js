// Stand-ins with the interface of runtime.js, tokenizer.js and scheduler.js (no model; for page tests only).
self.SDXLive = self.SDXLive || {};
(function () {
  const SDX = self.SDXLive;
  const D = () => SDX.pageData.model;
  function hash(s) { let h = 2166136261; for (const ch of String(s)) { h ^= ch.charCodeAt(0); h = Math.imul(h, 16777619); } return h >>> 0; }
  SDX.CLIPTokenizer = function () {};
  SDX.CLIPTokenizer.prototype.encode = function (text) {
    const words = String(text).toLowerCase().match(/[a-z0-9']+|[^\sa-z0-9']/g) || [];
    const tokens = ["<|startoftext|>", ...words.map((w) => w + "</w>"), "<|endoftext|>"];
    return { input_ids: [49406, ...words.map((w) => 1 + (hash(w) % 49000)), 49407], tokens };
  };
  SDX.randn = function (seed, n) {
    let s = (seed * 2654435761 + 1) >>> 0;
    const u = () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return (s + 0.5) / 4294967296; };
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
    return out;
  };
  SDX.cfg = (u, c, g) => u.map((v, i) => v + g * (c[i] - v));
  SDX.DDIMScheduler = function (config) {
    const T = config.num_train_timesteps, b0 = Math.sqrt(config.beta_start), b1 = Math.sqrt(config.beta_end);
    let a = 1; this.alphasCumprod = [];
    for (let i = 0; i < T; i++) { const b = (b0 + (i / (T - 1)) * (b1 - b0)) ** 2; a *= 1 - b; this.alphasCumprod.push(i === T - 1 ? 0 : a); }
    this.T = T; this.initNoiseSigma = 1;
  };
  SDX.DDIMScheduler.prototype.setTimesteps = function (n) {
    this.n = n; this.timesteps = [];
    for (let i = 0; i < n; i++) this.timesteps.push(Math.round(this.T - (i * this.T) / n) - 1);
  };
  SDX.DDIMScheduler.prototype.step = function (v, t, x) {
    const a = this.alphasCumprod[t], prev = t - this.T / this.n, ap = prev >= 0 ? this.alphasCumprod[prev] : 1;
    const x0 = x.map((xi, i) => Math.sqrt(a) * xi - Math.sqrt(1 - a) * v[i]);
    const eps = x.map((xi, i) => Math.sqrt(a) * v[i] + Math.sqrt(1 - a) * xi);
    return { prevSample: x0.map((o, i) => Math.sqrt(ap) * o + Math.sqrt(1 - ap) * eps[i]), predOriginalSample: x0 };
  };
  SDX.Runtime = {
    async create() {
      const m = D(), [C, h, w] = m.latent, [, H, W] = m.image, Tn = m.max_length, Dm = 8;
      return {
        backend: "stand-in (no model)",
        config: {},
        async encode(ids) {
          const out = new Float32Array(Tn * Dm);
          ids.forEach((id, k) => { for (let d = 0; d < Dm; d++) out[k * Dm + d] = Math.sin(id * (d + 1) * 0.001); });
          return out;
        },
        async unet(latent, t, emb) {
          const n = C * h * w, out = new Float32Array(2 * n);
          for (let b = 0; b < 2; b++) for (let i = 0; i < n; i++) out[b * n + i] = 0.5 * latent[b * n + i] + 0.3 * b * emb[b * Tn * Dm + (i % (Tn * Dm))];
          const attn = [];
          for (const [name, s] of [["down_blocks.0.attentions.0.transformer_blocks.0.attn2", 1], ["mid_block.attentions.0.transformer_blocks.0.attn2", 4]]) {
            const P = (h / s) * (w / s), data = new Float32Array(2 * P * Tn);
            for (let b = 0; b < 2; b++) for (let p = 0; p < P; p++) {
              let sum = 0;
              for (let k = 0; k < Tn; k++) { const v = Math.exp(Math.sin(p * 0.37 + k * 1.3 + t * 0.01 + emb[b * Tn * Dm + k * Dm])); data[(b * P + p) * Tn + k] = v; sum += v; }
              for (let k = 0; k < Tn; k++) data[(b * P + p) * Tn + k] /= sum;
            }
            attn.push({ name, shape: [2, P, Tn], data });
          }
          return { output: out, attn };
        },
        async decode(latent) {
          const rgba = new Uint8ClampedArray(H * W * 4), f = H / h;
          for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
            const p = Math.floor(y / f) * w + Math.floor(x / f);
            for (let k = 0; k < 3; k++) rgba[4 * (y * W + x) + k] = 128 + 60 * latent[k * h * w + p];
            rgba[4 * (y * W + x) + 3] = 255;
          }
          return new ImageData(rgba, W, H);
        },
      };
    },
  };
})();
