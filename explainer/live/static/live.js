// sd-explainer live page: runs the toy model in the browser and shows it with the explorer's player.
// A classic script (the page must work from file://): it reads self.SDXLive.pageData (data.js), the
// runtime (runtime.js: ONNX text encoder, UNet with attention outputs, VAE decoder), the tokenizer
// (tokenizer.js), the scheduler and guidance (scheduler.js), the PNG writer (png.js) and the player
// (player.js), and does for the player what the Python kernel does for the notebook explorer: runs, token
// maps, what-if previews.
(function () {
  "use strict";
  const SDX = (self.SDXLive = self.SDXLive || {});
  const D = SDX.pageData;
  const [C, LH, LW] = D.model.latent; // latent [channel, h, w]
  const [, IH, IW] = D.model.image; // image [channel, H, W]
  const N = C * LH * LW; // floats in one latent
  const KNOWN = new Set(D.vocabulary.words);
  const WORD_RE = /[a-z0-9']+/g;
  const wordsOf = (text) => String(text).toLowerCase().match(WORD_RE) || [];
  const tick = () => new Promise((r) => setTimeout(r, 0));

  // ---- an anywidget-style model: what the player reads and writes --------------------------------------
  function makeModel(initial) {
    const values = Object.assign({}, initial);
    const handlers = new Map();
    return {
      get: (k) => values[k],
      set(k, v) {
        const old = values[k];
        values[k] = v;
        if (old !== v) for (const f of (handlers.get("change:" + k) || []).slice()) f();
      },
      on(events, f) { for (const e of events.split(/\s+/)) handlers.set(e, [...(handlers.get(e) || []), f]); },
      off(events, f) { for (const e of events.split(/\s+/)) handlers.set(e, (handlers.get(e) || []).filter((g) => g !== f)); },
      save_changes() {},
      send() {},
    };
  }

  // ---- small helpers ----------------------------------------------------------------------------------
  function fmt3g(v) {
    if (!Number.isFinite(v)) return "inf";
    if (Math.abs(v) >= 1000) return v.toFixed(0);
    return String(Number(v.toPrecision(3)));
  }
  function canvasOf(w, h) { const c = document.createElement("canvas"); c.width = w; c.height = h; return c; }
  async function pngBytes(canvas) {
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    return new Uint8Array(await blob.arrayBuffer());
  }
  const png = (rgba, w, h) => SDX.encodePNG(rgba, w, h); // synchronous, lossless (png.js)
  // The guided model output [C, h, w] as PNG bytes: channels 0-2 as RGB, scaled by the largest magnitude.
  function channelsPicture(lat) {
    let peak = 1e-8;
    for (let i = 0; i < 3 * LH * LW; i++) peak = Math.max(peak, Math.abs(lat[i]));
    const rgba = new Uint8ClampedArray(LH * LW * 4);
    for (let p = 0; p < LH * LW; p++) {
      for (let k = 0; k < 3; k++) rgba[4 * p + k] = 127.5 + 127.5 * (lat[k * LH * LW + p] / peak);
      rgba[4 * p + 3] = 255;
    }
    return png(rgba, LW, LH);
  }

  // Linear latent→RGB maps, as explainer's fit_from_pairs: rgb (in [-1, 1], the image averaged down to the
  // latent's size) = latent · F + bias, by least squares. The normal equations of several (latent, decoded
  // image) pairs add up, so a map can keep learning from every decode the page makes.
  const K = C + 1; // the C channel rows, then the bias
  function newFit() { return { A: Array.from({ length: K }, () => new Float64Array(K)), B: Array.from({ length: K }, () => new Float64Array(3)), pairs: 0 }; }
  function addPair(fit, lat, rgba) {
    const P = LH * LW, f = IH / LH, v = new Float64Array(K);
    for (let p = 0; p < P; p++) {
      const y = Math.floor(p / LW), x = p % LW, rgb = [0, 0, 0];
      for (let dy = 0; dy < f; dy++) for (let dx = 0; dx < f; dx++) {
        const q = 4 * ((y * f + dy) * IW + x * f + dx);
        for (let k = 0; k < 3; k++) rgb[k] += rgba[q + k] / 127.5 - 1;
      }
      for (let c = 0; c < C; c++) v[c] = lat[c * P + p];
      v[C] = 1;
      for (let i = 0; i < K; i++) {
        for (let j = 0; j < K; j++) fit.A[i][j] += v[i] * v[j];
        for (let k = 0; k < 3; k++) fit.B[i][k] += (v[i] * rgb[k]) / (f * f);
      }
    }
    fit.pairs += 1;
    return fit;
  }
  function solveFit(fit) { // [K][3]: the channel rows, then the bias
    const A = fit.A.map((row) => Float64Array.from(row)), B = fit.B.map((row) => Float64Array.from(row));
    for (let i = 0; i < K; i++) A[i][i] += 1e-6; // ridge: a flat image still solves
    for (let c = 0; c < K; c++) { // Gauss-Jordan on [A | B]
      let piv = c;
      for (let r = c + 1; r < K; r++) if (Math.abs(A[r][c]) > Math.abs(A[piv][c])) piv = r;
      [A[c], A[piv]] = [A[piv], A[c]]; [B[c], B[piv]] = [B[piv], B[c]];
      for (let r = 0; r < K; r++) {
        if (r === c) continue;
        const m = A[r][c] / A[c][c];
        for (let j = 0; j < K; j++) A[r][j] -= m * A[c][j];
        for (let k = 0; k < 3; k++) B[r][k] -= m * B[c][k];
      }
    }
    return B.map((row, i) => Array.from(row, (v) => v / A[i][i]));
  }
  // The map fitted on one pair (an x_t frame next to its step's decoded x̂0).
  const fitLatentRGB = (lat, rgba) => solveFit(addPair(newFit(), lat, rgba));
  function linearPicture(lat, F) { // PNG bytes [h, w]
    const P = LH * LW, rgba = new Uint8ClampedArray(P * 4);
    for (let p = 0; p < P; p++) {
      for (let k = 0; k < 3; k++) {
        let v = F[C][k];
        for (let c = 0; c < C; c++) v += lat[c * P + p] * F[c][k];
        rgba[4 * p + k] = 127.5 * (v + 1);
      }
      rgba[4 * p + 3] = 255;
    }
    return png(rgba, LW, LH);
  }

  // ---- the pieces' interface (runtime.js, tokenizer.js, scheduler.js) -----------------------------------
  function asFloat32(x) {
    if (x instanceof Float32Array) return x;
    if (x && x.data instanceof Float32Array) return x.data;
    if (x && x.data) return Float32Array.from(x.data);
    return Float32Array.from(x);
  }
  // The decoder's picture as RGBA bytes (ImageData, {data, width, height} RGBA/RGB, or RGB bytes).
  function asRGBA(img) {
    const data = img && img.data !== undefined ? img.data : img;
    const w = (img && img.width) || IW, h = (img && img.height) || IH;
    if (data.length === w * h * 4) return { rgba: new Uint8ClampedArray(data), w, h };
    const rgba = new Uint8ClampedArray(w * h * 4);
    for (let p = 0; p < w * h; p++) {
      rgba[4 * p] = data[3 * p]; rgba[4 * p + 1] = data[3 * p + 1]; rgba[4 * p + 2] = data[3 * p + 2]; rgba[4 * p + 3] = 255;
    }
    return { rgba, w, h };
  }
  function padIds(ids) {
    const out = Array.from(ids).slice(0, D.model.max_length);
    const cfg = (state.rt && state.rt.config) || {};
    const pad = cfg.pad_token_id !== undefined ? cfg.pad_token_id : out[out.length - 1];
    while (out.length < D.model.max_length) out.push(pad);
    return out;
  }
  function concat(a, b) { const out = new Float32Array(a.length + b.length); out.set(a); out.set(b, a.length); return out; }

  // ᾱ of a timestep from the scheduler (its helpers), σ = √((1 − ᾱ)/ᾱ), SNR = ᾱ/(1 − ᾱ).
  function alphaBar(sched, t) {
    if (typeof sched.alphaBar === "function") return sched.alphaBar(t);
    if (typeof sched.alphaCumprod === "function") return sched.alphaCumprod(t);
    return sched.alphasCumprod[t];
  }
  const sigmaOf = (a) => (a > 0 ? Math.sqrt((1 - a) / a) : Infinity);

  // ---- the page ----------------------------------------------------------------------------------------
  const defaults = D.defaults;
  const model = makeModel({
    frames: { xt: [], x0: [], eps: [] }, final: new Uint8Array(0), image_format: "png",
    display_size: [D.display[0], D.display[0]], present_size: [D.display[1], D.display[1]], pixelated: true,
    fps: 8, steps_info: [], step: 0, title: "", preview_method: "linear", preview_label: "",
    status: "loading the model\u2026", error: "", schedule_png: new Uint8Array(0), schedule_x: [], schedule_box: [],
    emergence_png: new Uint8Array(0), emergence_x: [], emergence_box: [], emergence_labels: [], mode: "txt2img",
    input_frame: new Uint8Array(0), input_frame_label: "", start_label: "", words: [], selected: [],
    map_range: "step", range_lo: 0, range_hi: 0, layer_options: ["all"], layer_filter: "all", opacity: D.opacity,
    colormap: D.colormap, overlay_maps: [], guidance_enabled: false, guidance_recorded: defaults.guidance,
    guidance_live: defaults.guidance, guidance: defaults.guidance, whatif: new Uint8Array(0), whatif_label: "",
    decode_request: 0, detail: new Uint8Array(0), detail_label: "", panel: "", unknown_words: [], vocab_note: "",
    prompt_text: defaults.prompt, seed_value: defaults.seed, scheduler_name: "ddim",
    scheduler_options: [["ddim", "DDIM (the toy's own)"]], run_request: 0, can_run: false,
    stages: D.stages, docs_url: D.docs_url, presentation: false, panel_png: new Uint8Array(0), panel_label: "",
    // The explorer's branch controls: this page does not branch runs (live.css hides the row).
    compact: false, can_branch: false, branch_hint: "branching runs is the notebook explorer's", branch_mode: "fork",
    branch_prompt: "", branch_guidance: 0, branch_seed: -1, branch_weights: "", branch_request: 0, branch: null,
    mark_kind: "", mark_step: -1, mark_label: "",
  });
  const host = document.getElementById("live-player");
  SDX.player.render({ model, el: host });
  const root = host.querySelector(".sdx");
  const runRow = root.querySelector(".sdx-run-row");
  const promptBox = root.querySelector(".sdx-prompt");
  const runButton = root.querySelector(".sdx-run");
  const slider = root.querySelector(".sdx-step");

  // Guidance and steps, next to the player's prompt and seed.
  function numberBox(cls, label, value, attrs) {
    const box = document.createElement("input");
    Object.assign(box, { type: "number", className: "live-setting " + cls, value: String(value) });
    for (const [k, v] of Object.entries(attrs)) box.setAttribute(k, v);
    box.setAttribute("aria-label", label);
    const wrap = document.createElement("label");
    wrap.append(label + " ", box);
    runRow.insertBefore(wrap, runButton);
    return box;
  }
  const guidanceBox = numberBox("live-guidance", "guidance", defaults.guidance, { min: "0", max: "30", step: "0.5" });
  const stepsBox = numberBox("live-steps", "steps", defaults.steps, { min: "1", max: "100", step: "1" });

  // The toy's vocabulary as clickable words; unknown words of the prompt flagged as one types.
  const vocab = document.getElementById("live-vocab");
  for (const [kind, words] of [["colours", D.vocabulary.colours], ["shapes", D.vocabulary.shapes],
    ["places", D.vocabulary.places], ["relations", D.vocabulary.relations], ["other words", D.vocabulary.fillers]]) {
    const group = document.createElement("span");
    group.className = "live-kind";
    const name = document.createElement("b");
    name.textContent = kind;
    group.append(name);
    for (const w of words) {
      const b = document.createElement("button");
      Object.assign(b, { type: "button", className: "live-word", textContent: w });
      b.dataset.word = w;
      b.addEventListener("click", () => {
        const text = (promptBox.value.trim() + " " + w).trim();
        promptBox.value = text;
        model.set("prompt_text", text);
        flagUnknown();
      });
      group.append(b);
    }
    vocab.append(group);
  }
  function vocabNote(unknown) {
    if (!unknown.length) return "";
    return "the toy model never saw " + unknown.map((w) => "'" + w + "'").join(", ") +
      " (greyed chips); it still draws something from the words it knows (the clickable words above).";
  }
  const unknownOf = (text) => [...new Set(wordsOf(text).filter((w) => !KNOWN.has(w)))];
  function flagUnknown() {
    const unknown = unknownOf(promptBox.value);
    model.set("vocab_note", vocabNote(unknown));
    promptBox.dataset.unknown = unknown.join(" ");
  }
  promptBox.addEventListener("input", flagUnknown);

  // ---- runs ----------------------------------------------------------------------------------------------
  // fit: the latent→RGB normal equations of every (latent, decode) pair so far (previews while running).
  const state = { rt: null, tokenizer: null, run: null, previous: null, busy: false, generating: 0, followSteps: true,
    pending: null, fit: newFit(), shown: null };
  slider.addEventListener("input", () => { state.followSteps = false; });

  // Chip groups: the prompt's words (the tokenizer's grouping), each with its tokens (key "cond:<position>").
  function chipGroups(tokens) {
    return state.tokenizer.words(tokens).map(({ word, indices }) => ({
      text: word, branch: "cond", known: !wordsOf(word).some((w) => !KNOWN.has(w)),
      tokens: indices.map((i) => ({ key: "cond:" + i, text: state.tokenizer.tokenText(tokens[i]) })),
    }));
  }

  // One attention output, cond branch only: [N_pixels, T] → {name, h, w, data [h*w, keep]}.
  function condMap(a, keep) {
    const shape = a.shape, data = asFloat32(a.data);
    const T = shape[shape.length - 1], P = shape[shape.length - 2];
    const batch = data.length / (P * T);
    const offset = (batch - 1) * P * T; // the last batch entry is the prompt (cond) branch
    const out = new Float32Array(P * keep);
    for (let p = 0; p < P; p++) for (let k = 0; k < keep; k++) out[p * keep + k] = data[offset + p * T + k];
    const scale = Math.sqrt((LH * LW) / P);
    return { name: a.name, h: Math.round(LH / scale), w: Math.round(LW / scale), data: out };
  }

  function settings() {
    const seed = Math.trunc(Number(model.get("seed_value")));
    const steps = Math.trunc(Number(stepsBox.value));
    const guidance = Number(guidanceBox.value);
    if (!(steps >= 1 && steps <= 100)) throw new RangeError("steps must be a whole number from 1 to 100, got " + stepsBox.value);
    if (!(guidance >= 0 && guidance <= 30)) throw new RangeError("guidance must be a number from 0 to 30, got " + guidanceBox.value);
    return { prompt: model.get("prompt_text"), seed, steps, guidance };
  }

  const PRIOR_STEPS = 4; // the short run at load whose final image fits the first previews' map
  async function decodeBytes(latent) {
    const img = asRGBA(await state.rt.decode(latent));
    return { bytes: png(img.rgba, img.w, img.h), rgba: img.rgba };
  }

  // Run the toy: x_T from the seed, then steps of UNet (both branches) + guidance + DDIM, drawing each step.
  async function generate(s, { draw = true } = {}) {
    state.generating += 1;
    try { return await generateNow(s, draw); } finally { state.generating -= 1; }
  }
  async function generateNow(s, draw) {
    const t0 = performance.now();
    const tok = state.tokenizer.encode(s.prompt);
    const tokU = state.tokenizer.encode("");
    const ids = padIds(tok.input_ids), idsU = padIds(tokU.input_ids);
    const emb = concat(asFloat32(await state.rt.encode(idsU)), asFloat32(await state.rt.encode(ids))); // [2, T, D]
    const sched = new SDX.DDIMScheduler(D.scheduler.config, { alphasCumprod: D.scheduler.alphas_cumprod });
    sched.setTimesteps(s.steps);
    const timesteps = Array.from(sched.timesteps, Number);
    let x = Float32Array.from(SDX.randn(s.seed, N));
    if (sched.initNoiseSigma && sched.initNoiseSigma !== 1) for (let i = 0; i < N; i++) x[i] *= sched.initNoiseSigma;
    const keep = tok.attention_mask ? tok.attention_mask.reduce((a, b) => a + b, 0) : tok.tokens.length; // start, pieces, end
    // While running, x̂0 and x_t are shown as linear latent→RGB previews (a map fitted on every decode the page
    // has made so far); the exact VAE decodes of x̂0 replace them after the last step (decodeInIdle).
    const run = { settings: s, timesteps, sched, tokens: tok.tokens.slice(0, keep), xt: [], x0: [], uncond: [], cond: [],
      attn: [], frames: { xt: [], x0: [], eps: [] }, decoded: [], stepMs: [], final: null, finalBytes: null,
      previewMap: draw ? solveFit(state.fit) : null, allDecoded: null };
    if (draw) startDrawing(run);
    const cfgOn = s.guidance > 1; // as diffusers: guidance <= 1 means the prompt branch alone
    for (let i = 0; i < timesteps.length; i++) {
      const ts = performance.now();
      const t = timesteps[i];
      const out = await state.rt.unet(concat(x, x), t, emb);
      const both = asFloat32(out.output);
      const u = both.slice(0, N), c = both.slice(N, 2 * N);
      const guided = cfgOn ? asFloat32(SDX.cfg(u, c, s.guidance)) : c;
      const res = sched.step(guided, t, x);
      run.xt.push(x); run.uncond.push(u); run.cond.push(c);
      run.x0.push(asFloat32(res.predOriginalSample));
      run.attn.push((out.attn || []).map((a) => condMap(a, keep)));
      x = asFloat32(res.prevSample);
      if (draw) await drawStep(run, i, guided);
      run.stepMs.push(performance.now() - ts);
    }
    run.latent = x;
    const fin = await decodeBytes(x);
    run.final = fin.rgba; run.finalBytes = fin.bytes;
    if (draw) addPair(state.fit, x, fin.rgba);
    run.seconds = (performance.now() - t0) / 1000;
    return run;
  }

  // ---- drawing a run into the player -----------------------------------------------------------------
  function startDrawing(run) {
    const s = run.settings;
    state.shown = run;
    state.followSteps = true;
    model.set("title", "\u201c" + s.prompt + "\u201d  seed " + s.seed + "  g " + s.guidance + "  " + s.steps + " steps");
    model.set("steps_info", run.timesteps.map((t) => {
      const a = alphaBar(run.sched, t);
      return { t: String(t), sigma: fmt3g(sigmaOf(a)), alpha: fmt3g(a) };
    }));
    model.set("frames", { xt: [], x0: [], eps: [] });
    model.set("final", new Uint8Array(0));
    model.set("overlay_maps", []);
    model.set("whatif", new Uint8Array(0));
    model.set("detail", new Uint8Array(0));
    const unknown = unknownOf(s.prompt);
    model.set("unknown_words", unknown);
    model.set("vocab_note", vocabNote(unknown));
    model.set("words", chipGroups(run.tokens));
    model.set("selected", model.get("selected").filter((k) => Number(k.split(":")[1]) < run.tokens.length - 1));
    model.set("guidance_enabled", false);
    drawSchedule(run);
  }
  async function drawStep(run, i, guided) {
    run.frames.x0.push(linearPicture(run.x0[i], run.previewMap));
    run.frames.xt.push(linearPicture(run.xt[i], run.previewMap));
    run.frames.eps.push(channelsPicture(guided));
    run.decoded.push(false);
    showFrames(run);
    model.set("status", "step " + (i + 1) + "/" + run.timesteps.length + "\u2026");
    await tick(); // let the page paint this step
  }
  // Hand the frames to the player (it keeps the pictures of frames it already has, and adds the new ones).
  function showFrames(run) {
    if (run !== state.shown) return; // a newer run is being drawn
    model.set("frames", { xt: run.frames.xt.slice(), x0: run.frames.x0.slice(), eps: run.frames.eps.slice() });
    if (SDX.live.marks.firstFrame === undefined) SDX.live.marks.firstFrame = performance.now();
    if (state.busy && state.followSteps) model.set("step", run.frames.x0.length - 1);
    previewLabel();
  }

  // What the shown step's x̂0 and x_t frames are: VAE decodes, or linear previews until the decode is in.
  const LABEL = {
    preview: "x\u0302\u2080 and x\u209c frames: linear latent\u2192RGB previews (approximate colours) while the model runs; " +
      "VAE decodes of x\u0302\u2080 replace them after the last step",
    decoded: "x\u0302\u2080 frame: full VAE decode; x\u209c frame: linear latent\u2192RGB preview fitted to that decode",
  };
  function previewLabel() {
    const run = state.run && !state.busy ? state.run : null;
    if (!run) { model.set("preview_method", "linear"); model.set("preview_label", LABEL.preview); return; }
    const s = Math.min(model.get("step"), run.decoded.length - 1), done = run.decoded.filter(Boolean).length, n = run.decoded.length;
    const progress = done < n ? " (" + done + " of " + n + " steps decoded so far)" : "";
    model.set("preview_method", run.decoded[s] ? "vae" : "linear");
    model.set("preview_label", "step " + (s + 1) + ": " + (run.decoded[s] ? LABEL.decoded : "x\u0302\u2080 and x\u209c frames: " +
      "linear latent\u2192RGB previews (approximate colours); the VAE decode of this x\u0302\u2080 is coming") + progress);
  }
  model.on("change:step", previewLabel);

  // The exact frames after a run: each step's x̂0 through the VAE decoder (the shown step first, then from
  // the last step back), its x_t preview refitted to that decode, while no other run is computing.
  async function decodeStep(run, s) {
    const x0 = await decodeBytes(run.x0[s]);
    if (run.decoded[s]) return;
    run.frames.x0[s] = x0.bytes;
    run.frames.xt[s] = linearPicture(run.xt[s], fitLatentRGB(run.x0[s], x0.rgba));
    run.decoded[s] = true;
    addPair(state.fit, run.x0[s], x0.rgba);
    if (run === state.run) showFrames(run);
  }
  async function decodeInIdle(run) {
    const t0 = performance.now();
    for (;;) {
      while (state.generating > 0 || state.busy) await new Promise((r) => setTimeout(r, 20));
      if (run !== state.run) return false;
      const shown = Math.min(model.get("step"), run.decoded.length - 1);
      let s = run.decoded[shown] ? run.decoded.lastIndexOf(false) : shown;
      if (s < 0) break;
      await decodeStep(run, s);
      await tick();
    }
    run.decodeSeconds = (performance.now() - t0) / 1000;
    return true;
  }
  async function finishDrawing(run) {
    model.set("final", run.finalBytes);
    if (SDX.live.marks.firstFinal === undefined) SDX.live.marks.firstFinal = performance.now();
    const layers = run.attn.length ? run.attn[0] : [];
    const sizes = [...new Set(layers.map((l) => l.h + "x" + l.w))].sort((a, b) => parseInt(b) - parseInt(a));
    model.set("layer_options", ["all", ...(layers.some((l) => l.name.startsWith("mid_block.")) ? ["daam"] : []), ...sizes,
      ...layers.map((l) => l.name)]);
    if (!model.get("layer_options").includes(model.get("layer_filter"))) model.set("layer_filter", "all");
    model.set("range_lo", 0);
    model.set("range_hi", run.timesteps.length - 1);
    model.set("guidance_recorded", run.settings.guidance);
    model.set("guidance_live", run.settings.guidance);
    model.set("guidance", run.settings.guidance);
    model.set("guidance_enabled", true);
    if (state.followSteps) model.set("step", run.timesteps.length - 1);
    const per = run.stepMs.reduce((a, b) => a + b, 0) / run.stepMs.length;
    model.set("status", "done: " + run.timesteps.length + " steps in " + run.seconds.toFixed(2) + " s (" + per.toFixed(0) +
      " ms per step: UNet on both branches, previews of x\u0302\u2080 and x\u209c; the final image is the VAE decode)" +
      (state.rt.backend ? " \u00b7 " + state.rt.backend : ""));
    previewLabel();
    await drawMaps();
    drawCompare();
    run.allDecoded = decodeInIdle(run);
  }

  // The schedule plot: σ and SNR (log scale, left) and ᾱ (right) per step; the player marks the step.
  async function drawSchedule(run) {
    const n = run.timesteps.length;
    const c = canvasOf(400, 220), g = c.getContext("2d");
    const box = { l: 46, r: 354, t: 16, b: 190 };
    const a = run.timesteps.map((t) => alphaBar(run.sched, t));
    const sig = a.map(sigmaOf), snr = a.map((v) => v / (1 - v));
    const finite = [...sig, ...snr].filter((v) => Number.isFinite(v) && v > 0);
    const lo = Math.floor(Math.log10(Math.min(...finite))), hi = Math.ceil(Math.log10(Math.max(...finite)));
    const xs = (i) => box.l + (n > 1 ? (i / (n - 1)) * (box.r - box.l) : (box.r - box.l) / 2);
    const yLog = (v) => box.b - ((Math.log10(v) - lo) / Math.max(1, hi - lo)) * (box.b - box.t);
    const yLin = (v) => box.b - v * (box.b - box.t);
    g.fillStyle = "#fff"; g.fillRect(0, 0, c.width, c.height);
    g.strokeStyle = "#bbb"; g.strokeRect(box.l, box.t, box.r - box.l, box.b - box.t);
    g.font = "10px sans-serif"; g.fillStyle = "#666";
    for (let e = lo; e <= hi; e++) { g.fillText("1e" + e, 4, yLog(10 ** e) + 3); }
    for (const v of [0, 0.5, 1]) g.fillText(String(v), box.r + 4, yLin(v) + 3);
    g.fillText("step \u2192", (box.l + box.r) / 2 - 16, 210);
    function line(values, y, colour, dash) {
      g.beginPath(); g.setLineDash(dash); g.strokeStyle = colour; g.lineWidth = 1.6;
      let on = false;
      values.forEach((v, i) => {
        if (!(Number.isFinite(v) && (y === yLin || v > 0))) { on = false; return; }
        if (on) g.lineTo(xs(i), y(v)); else g.moveTo(xs(i), y(v));
        on = true;
      });
      g.stroke(); g.setLineDash([]);
    }
    line(sig, yLog, "#f0a030", []);
    line(snr, yLog, "#2a9d8f", [4, 3]);
    line(a, yLin, "#3060c0", []);
    g.fillStyle = "#f0a030"; g.fillText("\u03c3 (log)", box.l + 4, 12);
    g.fillStyle = "#2a9d8f"; g.fillText("SNR (log)", box.l + 60, 12);
    g.fillStyle = "#3060c0"; g.fillText("\u1fb1 (right)", box.l + 130, 12);
    model.set("schedule_x", run.timesteps.map((_, i) => xs(i) / c.width));
    model.set("schedule_box", [box.t / c.height, box.b / c.height]);
    model.set("schedule_png", await pngBytes(c));
  }

  // ---- token maps, as explainer's heatmap: per layer averaged over steps and tokens at its resolution,
  // upsampled bilinearly to the image, averaged over layers, divided by the maximum -----------------------
  function layerChosen(l, filter) {
    if (filter === "all") return true;
    if (filter === "daam") return !l.name.startsWith("mid_block.");
    if (/^\d+x\d+$/.test(filter)) return l.h + "x" + l.w === filter;
    return l.name === filter;
  }
  function upsample(src, h, w) { // bilinear, half-pixel centres (as torch's align_corners=False)
    const out = new Float32Array(IH * IW);
    for (let y = 0; y < IH; y++) {
      const sy = Math.min(Math.max((y + 0.5) * (h / IH) - 0.5, 0), h - 1), y0 = Math.floor(sy), y1 = Math.min(y0 + 1, h - 1), fy = sy - y0;
      for (let x = 0; x < IW; x++) {
        const sx = Math.min(Math.max((x + 0.5) * (w / IW) - 0.5, 0), w - 1), x0 = Math.floor(sx), x1 = Math.min(x0 + 1, w - 1), fx = sx - x0;
        out[y * IW + x] = (1 - fy) * ((1 - fx) * src[y0 * w + x0] + fx * src[y0 * w + x1]) + fy * ((1 - fx) * src[y1 * w + x0] + fx * src[y1 * w + x1]);
      }
    }
    return out;
  }
  function heat(run, steps, tokens, filter) {
    const total = new Float32Array(IH * IW);
    const layers = run.attn[0].map((l, j) => [l, j]).filter(([l]) => layerChosen(l, filter));
    for (const [l, j] of layers) {
      const P = l.h * l.w, keep = l.data.length / P, m = new Float32Array(P);
      for (const s of steps) {
        const d = run.attn[s][j].data;
        for (let p = 0; p < P; p++) for (const k of tokens) m[p] += d[p * keep + k];
      }
      const up = upsample(m, l.h, l.w);
      for (let i = 0; i < total.length; i++) total[i] += up[i];
    }
    let peak = 0;
    for (const v of total) peak = Math.max(peak, v);
    const grey = new Uint8ClampedArray(IH * IW * 4);
    for (let i = 0; i < total.length; i++) {
      const v = peak > 0 ? Math.round((255 * total[i]) / peak) : 0;
      grey[4 * i] = grey[4 * i + 1] = grey[4 * i + 2] = v; grey[4 * i + 3] = 255;
    }
    return grey;
  }
  async function drawMaps() {
    const run = state.run;
    const tokens = model.get("selected").map((k) => Number(k.split(":")[1]));
    if (!run || !run.attn.length || !run.attn[0].length || tokens.length === 0) { model.set("overlay_maps", []); return; }
    const n = run.timesteps.length, filter = model.get("layer_filter"), mode = model.get("map_range");
    let sets;
    if (mode === "step") sets = [...Array(n).keys()].map((s) => [s]);
    else if (mode === "all") sets = [[...Array(n).keys()]];
    else {
      const lo = Math.max(0, Math.min(model.get("range_lo"), model.get("range_hi"))), hi = Math.min(n - 1, Math.max(model.get("range_lo"), model.get("range_hi")));
      sets = [[...Array(hi - lo + 1).keys()].map((k) => k + lo)];
    }
    const maps = [];
    for (const steps of sets) maps.push(png(heat(run, steps, tokens, filter), IW, IH));
    if (run === state.run) model.set("overlay_maps", maps);
  }
  for (const name of ["selected", "map_range", "range_lo", "range_hi", "layer_filter"]) model.on("change:" + name, () => { if (!state.busy) drawMaps(); });

  // ---- guidance what-if: re-guide x̂0 of the shown step from the recorded branches, no model run ---------
  async function drawWhatIf() {
    const run = state.run;
    if (!run || state.busy) return;
    const s = Math.min(model.get("step"), run.timesteps.length - 1), g = Number(model.get("guidance_live"));
    const guided = g > 1 ? asFloat32(SDX.cfg(run.uncond[s], run.cond[s], g)) : run.cond[s];
    const x0 = asFloat32(run.sched.step(guided, run.timesteps[s], run.xt[s]).predOriginalSample);
    const img = await decodeBytes(x0);
    if (run !== state.run) return;
    model.set("whatif_label", "x\u0302\u2080 at step " + (s + 1) + " re-guided with g = " + g.toFixed(1) + " (run with g = " +
      run.settings.guidance + "), from the recorded branches: no model run");
    model.set("whatif", img.bytes);
  }
  model.on("change:guidance_live", drawWhatIf);
  model.on("change:step", () => { if (model.get("whatif").byteLength) drawWhatIf(); });
  // Releasing the guidance slider runs again with that guidance (as in the notebook explorer).
  model.on("change:guidance", () => {
    const g = Number(model.get("guidance"));
    if (!state.run || state.busy || g === state.run.settings.guidance) return;
    guidanceBox.value = String(g);
    request();
  });
  model.on("change:decode_request", async () => {
    const run = state.run;
    if (!run || state.busy) return;
    const s = Math.min(model.get("step"), run.frames.x0.length - 1);
    if (!run.decoded[s]) await decodeStep(run, s);
    if (run !== state.run) return;
    model.set("detail_label", "VAE decode of x\u0302\u2080, step " + (s + 1));
    model.set("detail", run.frames.x0[s]);
  });

  // ---- compare with the previous run ---------------------------------------------------------------------
  const compare = document.getElementById("live-compare");
  function drawCompare() {
    const prev = state.previous, run = state.run;
    if (!prev || !run) { compare.hidden = true; return; }
    compare.replaceChildren();
    const h2 = document.createElement("h2");
    h2.textContent = "compare with the previous run";
    const pair = document.createElement("div");
    pair.className = "live-pair";
    let diff = 0;
    for (let i = 0; i < run.final.length; i += 4) for (let k = 0; k < 3; k++) diff += Math.abs(run.final[i + k] - prev.final[i + k]);
    diff /= (3 * run.final.length) / 4;
    for (const [label, r] of [["previous", prev], ["this run", run]]) {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.src = URL.createObjectURL(new Blob([r.finalBytes], { type: "image/png" }));
      img.alt = label + " final image";
      img.dataset.run = label === "previous" ? "previous" : "current";
      const cap = document.createElement("figcaption");
      const s = r.settings;
      cap.textContent = label + ": \u201c" + s.prompt + "\u201d, seed " + s.seed + ", g " + s.guidance + ", " + s.steps + " steps";
      fig.append(img, cap);
      pair.append(fig);
    }
    const note = document.createElement("p");
    note.className = "live-diff";
    note.textContent = "mean difference " + diff.toFixed(1) + " grey levels (of 255)";
    compare.append(h2, pair, note);
    compare.hidden = false;
  }

  // ---- the run queue: one run at a time, the newest request wins -----------------------------------------
  async function runNow(s) {
    state.busy = true;
    model.set("can_run", false);
    model.set("error", "");
    try {
      const run = await generate(s);
      if (state.run) state.previous = state.run;
      state.run = run;
      state.busy = false;
      await finishDrawing(run);
      return run;
    } catch (err) {
      model.set("error", String(err && err.message ? err.message : err));
      model.set("status", "");
      throw err;
    } finally {
      state.busy = false;
      model.set("can_run", true);
    }
  }
  function request() {
    let s;
    try { s = settings(); } catch (err) { model.set("error", err.message); return; }
    if (state.busy) { state.pending = s; return; }
    runNow(s).then(() => {
      if (state.pending) { const next = state.pending; state.pending = null; guidanceBox.value = String(next.guidance); request(); }
    }, () => {});
  }
  model.on("change:run_request", request);

  // ---- start: load the models, then run the default caption ---------------------------------------------
  const footer = document.getElementById("live-footer");
  // marks: milliseconds since the page started loading: models loaded, first x̂0 frame, first final image.
  const live = (SDX.live = { model, state, ready: null, marks: {} });
  live.run = async (s) => { // for tests and benchmarks: run these settings and return the run
    while (state.busy) await new Promise((r) => setTimeout(r, 20));
    model.set("prompt_text", s.prompt); model.set("seed_value", s.seed);
    guidanceBox.value = String(s.guidance); stepsBox.value = String(s.steps);
    return runNow(settings());
  };
  live.generate = (s) => generate(s, { draw: false }); // the same run, nothing drawn
  live.ready = (async () => {
    const t0 = performance.now();
    state.tokenizer = new SDX.CLIPTokenizer(D.tokenizer);
    state.rt = await SDX.Runtime.create();
    live.loadSeconds = (performance.now() - t0) / 1000;
    live.marks.loaded = performance.now();
    footer.textContent = "Runs on " + (state.rt.backend || "onnxruntime-web") + " in this browser; models loaded in " +
      live.loadSeconds.toFixed(1) + " s. Nothing is fetched from the network.";
    model.set("status", "model loaded in " + live.loadSeconds.toFixed(1) + " s");
    // A first latent→RGB map for the first run's previews, fitted on a real pair as the explorer's linear
    // previews are (its final latent and image): a short run of the default caption, drawing nothing (it
    // also warms the runtime up). Every later decode refines the map.
    const warm = await generate({ ...settings(), steps: PRIOR_STEPS }, { draw: false });
    addPair(state.fit, warm.latent, warm.final);
    model.set("can_run", true);
  })();
  live.firstRun = live.ready.then(() => {
    flagUnknown();
    return runNow(settings());
  }).catch((err) => {
    model.set("error", "the live page could not start: " + (err && err.message ? err.message : err));
    console.error(err);
  });
})();
