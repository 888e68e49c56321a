// A stand-in with the interface of runtime.js (no model; for developing the page only).
self.SDXLive = self.SDXLive || {};
(function () {
  const SDX = self.SDXLive;
  const D = () => SDX.pageData.model;
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
