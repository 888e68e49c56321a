// sd-explainer step player (anywidget ESM). Frames arrive once as binary buffers and are swapped here,
// with no kernel round trip per frame; the step goes back to the kernel throttled, for kernel-side panels.
const PANELS = [["xt", "x\u209c noisy latent"], ["x0", "x\u2080 predicted"], ["eps", "model output (guided)"]];
// What the overview strip lists under each stage (keys of Explorer.STAGES' "panels").
const PANEL_NAMES = { chips: "word chips / token maps", xt: "x\u209c", eps: "model output", x0: "x\u2080",
  schedule: "schedule", emergence: "emergence curve", guidance: "guidance", final: "final image", detail: "VAE decode" };

function blobUrl(view, mime) {
  if (!view || view.byteLength === 0) return null;  // empty bytes: nothing to show
  const buffer = view.buffer ? view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength) : view;
  return URL.createObjectURL(new Blob([buffer], { type: mime }));
}

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

function render({ model, el }) {
  const root = h("div", { class: "sdx", tabindex: "0" });
  el.append(root);
  const urls = { frames: {}, frameOf: { type: "", map: new Map(), final: undefined }, final: null, schedule: null, emergence: null, whatif: null, detail: null, panel: null, input_frame: null };
  const state = { step: model.get("step"), timer: null, sendTimer: null, lastSent: 0, drawToken: 0 };
  const revokeAll = (list) => { for (const u of list) if (u) URL.revokeObjectURL(u); };

  const error = h("div", { class: "sdx-error", role: "alert" });
  const status = h("div", { class: "sdx-status" });
  const title = h("div", { class: "sdx-title" });
  const vocabNote = h("div", { class: "sdx-vocab", role: "note" });

  // New runs: prompt, seed and scheduler, sent together with run_request + 1.
  const promptBox = h("input", { type: "text", class: "sdx-prompt", "aria-label": "prompt", placeholder: "prompt" });
  const seedBox = h("input", { type: "number", class: "sdx-seed", min: "0", step: "1", "aria-label": "seed" });
  const schedBox = h("select", { class: "sdx-scheduler", "aria-label": "scheduler" });
  const runButton = h("button", { type: "button", class: "sdx-run" });
  runButton.textContent = "\u21bb Run";
  const presentButton = h("button", { type: "button", class: "sdx-present-toggle", "aria-label": "presentation mode" });
  presentButton.textContent = "\u26f6 Presentation";
  const runRow = h("div", { class: "sdx-controls sdx-run-row" }, promptBox,
    h("label", { text: "seed " }, seedBox), h("label", { text: "scheduler " }, schedBox), runButton, presentButton);

  // Branch here: a fork at the shown step (new prompt / guidance / seed) or a prompt-to-prompt edit, sent with
  // branch_request + 1; greyed with the reason (e.g. how to give a pipeline) when it cannot run.
  const branchButton = h("button", { type: "button", class: "sdx-branch" });
  const branchMode = h("select", { class: "sdx-branch-mode", "aria-label": "branch kind" });
  for (const [v, t] of [["fork", "fork: new settings from this step"], ["replace", "prompt-to-prompt: swap words"],
    ["refine", "prompt-to-prompt: add words"], ["reweight", "prompt-to-prompt: reweight words"]]) branchMode.append(h("option", { value: v, text: t }));
  const branchPrompt = h("input", { type: "text", class: "sdx-branch-prompt", "aria-label": "branch prompt", placeholder: "branch prompt" });
  const branchGuidance = h("input", { type: "number", class: "sdx-branch-guidance", min: "0", step: "0.5", "aria-label": "branch guidance" });
  const branchSeed = h("input", { type: "number", class: "sdx-branch-seed", min: "0", step: "1", "aria-label": "branch seed", placeholder: "parent's" });
  const branchWeights = h("input", { type: "text", class: "sdx-branch-weights", "aria-label": "word weights", placeholder: "red=2" });
  const guidanceLabel = h("label", { text: "guidance " }, branchGuidance);
  const seedLabel = h("label", { text: "seed " }, branchSeed);
  const weightsLabel = h("label", { text: "weights " }, branchWeights);
  const branchHint = h("span", { class: "sdx-branch-hint" });
  const branchRow = h("div", { class: "sdx-controls sdx-branch-row" }, branchButton, branchMode, branchPrompt, guidanceLabel, seedLabel, weightsLabel, branchHint);
  // The branch pane: the branch's own explorer (drawn by this same render), its step linked to this one.
  const laneLabel = h("div", { class: "sdx-lane-label", text: "parent" });
  const branchHead = h("div", { class: "sdx-lane-label sdx-branch-head" });
  const branchPane = h("div", { class: "sdx-branch-pane" });
  const branchBox = h("section", { class: "sdx-branch-box", "aria-label": "branch" }, branchHead, branchPane);
  const forkTick = h("span", { class: "sdx-fork-tick", "aria-hidden": "true" });

  // The overview strip: text -> CLIP -> UNet + scheduler loop -> VAE decoder, each with the panels it makes.
  const overview = h("ol", { class: "sdx-overview", "aria-label": "where each panel sits in the pipeline" });
  const previewKind = h("div", { class: "sdx-preview-kind" });
  const panelsRow = h("div", { class: "sdx-row sdx-panels" });
  const imgs = {};
  const overlays = [];
  function figure(key, label, withOverlay) {
    const img = h("img", { alt: label, "data-panel": key });
    const frame = h("div", { class: "sdx-frame" }, img);
    if (withOverlay) {
      const canvas = h("canvas", { class: "sdx-overlay", "data-panel": key });
      canvas.hidden = true;
      frame.append(canvas);
      overlays.push(canvas);
    }
    panelsRow.append(h("figure", { "data-panel": key }, frame, h("figcaption", { text: label })));
    imgs[key] = img;
  }
  for (const [key, label] of PANELS) figure(key, label, key === "x0");
  figure("final", "final image", true);
  // img2img / inpaint: the input image (mask outlined in the kernel), hidden for txt2img traces.
  const inputImg = h("img", { alt: "input image", "data-panel": "input" });
  const inputCap = h("figcaption");
  panelsRow.append(h("figure", { "data-panel": "input" }, h("div", { class: "sdx-frame" }, inputImg), inputCap));

  const play = h("button", { type: "button", class: "sdx-play", "aria-label": "play" });
  play.textContent = "\u25b6 Play";
  const slider = h("input", { type: "range", class: "sdx-step", min: "0", max: "0", value: "0", "aria-label": "denoising step" });
  const readout = h("span", { class: "sdx-readout" });
  const sliderBox = h("span", { class: "sdx-slider-box" }, slider, forkTick);
  const controls = h("div", { class: "sdx-controls sdx-step-row" }, play, sliderBox, readout);

  const plotImg = (name) => h("img", { class: "sdx-plot", alt: name });
  const schedule = { img: plotImg("schedule"), marker: h("div", { class: "sdx-marker" }) };
  const emergence = { img: plotImg("emergence"), marker: h("div", { class: "sdx-marker" }) };
  const startLabel = h("div", { class: "sdx-start" });
  const emergenceLabels = h("div", { class: "sdx-emergence-labels" });
  const plots = h("div", { class: "sdx-row" },
    h("figure", {}, h("div", { class: "sdx-plotbox", "data-plot": "schedule" }, schedule.img, schedule.marker), startLabel),
    h("figure", {}, h("div", { class: "sdx-plotbox", "data-plot": "emergence" }, emergence.img, emergence.marker), emergenceLabels));

  const chips = h("div", { class: "sdx-chips" });
  const rangeMode = h("select", { class: "sdx-range", "aria-label": "steps of the map" });
  for (const [v, t] of [["step", "this step"], ["all", "all steps"], ["range", "step range"]]) rangeMode.append(h("option", { value: v, text: t }));
  const rangeLo = h("input", { type: "number", class: "sdx-range-lo", min: "0", "aria-label": "first step" });
  const rangeHi = h("input", { type: "number", class: "sdx-range-hi", min: "0", "aria-label": "last step" });
  const layers = h("select", { class: "sdx-layers", "aria-label": "attention layers" });
  const opacity = h("input", { type: "range", class: "sdx-opacity", min: "0", max: "100", "aria-label": "overlay opacity" });
  const tokensRow = h("div", { class: "sdx-tokens" }, chips,
    h("div", { class: "sdx-controls" }, h("label", { text: "map over " }, rangeMode), rangeLo, rangeHi,
      h("label", { text: "layers " }, layers), h("label", { text: "opacity " }, opacity)));

  const gSlider = h("input", { type: "range", class: "sdx-guidance", min: "0", max: "20", step: "0.5", "aria-label": "guidance scale" });
  const gLabel = h("span", { class: "sdx-readout" });
  const whatif = h("img", { class: "sdx-whatif", alt: "what-if x0" });
  const whatifCap = h("figcaption");
  const decode = h("button", { type: "button", class: "sdx-decode" });
  decode.textContent = "VAE decode this step";
  const detail = h("img", { class: "sdx-detail", alt: "VAE decode" });
  const detailCap = h("figcaption");
  const guidanceRow = h("div", { class: "sdx-guidance-row" },
    h("div", { class: "sdx-controls" }, h("label", { text: "guidance " }, gSlider), gLabel, decode),
    h("div", { class: "sdx-row" }, h("figure", {}, h("div", { class: "sdx-frame" }, whatif), whatifCap),
      h("figure", {}, h("div", { class: "sdx-frame" }, detail), detailCap)));

  const tabs = h("div", { class: "sdx-controls sdx-tabs", role: "tablist" });
  const tabButtons = {};
  for (const [key, text] of [["guidance", "guidance decomposition"], ["sweep", "guidance sweep"], ["trajectory", "latent trajectory"]]) {
    const b = h("button", { type: "button", role: "tab", "data-tab": key, text });
    b.addEventListener("click", () => commit("panel", model.get("panel") === key ? "" : key));
    tabButtons[key] = b;
    tabs.append(b);
  }
  const panelImg = h("img", { class: "sdx-panel-img", alt: "panel" });
  const panelCap = h("figcaption");
  const panelFig = h("figure", { class: "sdx-panel" }, h("div", { class: "sdx-frame" }, panelImg), panelCap);
  const panelBox = h("div", { class: "sdx-panel-box" }, tabs, panelFig);

  root.append(error, status, runRow, branchRow, overview, title, vocabNote, previewKind, laneLabel, panelsRow, controls, branchBox,
    plots, tokensRow, guidanceRow, panelBox);

  const count = () => (model.get("frames").x0 || []).length;
  const mime = () => "image/" + model.get("image_format");

  function setPlot(plot, name) {
    if (urls[name]) URL.revokeObjectURL(urls[name]);
    urls[name] = blobUrl(model.get(name + "_png"), "image/png");
    plot.img.hidden = !urls[name];
    plot.marker.hidden = !urls[name];
    if (urls[name]) plot.img.src = urls[name];
    placeMarker(plot, name);
  }
  function placeMarker(plot, name) {
    const xs = model.get(name + "_x"), box = model.get(name + "_box");
    if (!xs || xs.length <= state.step || !box || box.length < 2) { plot.marker.hidden = true; return; }
    plot.marker.style.left = (100 * xs[state.step]) + "%";
    plot.marker.style.top = (100 * box[0]) + "%";
    plot.marker.style.height = (100 * (box[1] - box[0])) + "%";
    plot.marker.dataset.step = String(state.step);
  }

  function loadFrames() {
    // A frame whose bytes (the same object, in the same format) come again keeps its URL: a page that adds
    // frames as they are computed hands the earlier ones over again. Only new URLs are preloaded.
    const frames = model.get("frames"), type = mime();
    const before = urls.frameOf.type === type ? urls.frameOf.map : new Map();
    const now = new Map(), fresh = [];
    const urlOf = (v) => {
      if (!v || v.byteLength === 0) return null;
      if (!now.has(v)) {
        let u = before.get(v);
        if (u === undefined) { u = blobUrl(v, type); fresh.push(u); }
        now.set(v, u);
      }
      return now.get(v);
    };
    // The old URLs go a little later: frames and final arrive together, and a preload may still read them.
    const old = Object.values(urls.frames).flat();
    urls.frames = {};
    for (const [key] of PANELS) urls.frames[key] = (frames[key] || []).map(urlOf);
    const final = model.get("final");
    if (final !== urls.frameOf.final || type !== urls.frameOf.type) {
      old.push(urls.final);
      urls.final = blobUrl(final, type);
      imgs.final.src = urls.final || "";
    }
    const kept = new Set(now.values());
    const gone = old.filter((u) => !kept.has(u));
    setTimeout(() => revokeAll(gone), 5000);
    urls.frameOf = { type, map: now, final };
    imgs.final.closest("figure").hidden = !urls.final;
    for (const [key] of PANELS) imgs[key].closest("figure").hidden = urls.frames[key].length === 0;
    applySize();
    root.classList.toggle("sdx-pixelated", model.get("pixelated"));
    slider.max = String(Math.max(0, count() - 1));
    for (const u of fresh) if (u) { const im = new Image(); im.src = u; }
    show(Math.min(state.step, Math.max(0, count() - 1)), false);
  }
  function applySize() {  // display_size, or present_size in presentation mode
    const size = model.get(model.get("presentation") ? "present_size" : "display_size");
    for (const img of Object.values(imgs)) { img.width = size[0]; img.height = size[1]; }
    for (const c of overlays) { c.width = size[0]; c.height = size[1]; }
    for (const img of [whatif, detail, inputImg]) { img.width = size[0]; img.height = size[1]; }
  }

  function show(step, send = true) {
    const n = count();
    if (n === 0) return;
    state.step = Math.max(0, Math.min(n - 1, step));
    slider.value = String(state.step);
    for (const [key] of PANELS) { const list = urls.frames[key]; if (list.length && imgs[key].src !== list[state.step]) imgs[key].src = list[state.step]; }
    root.dataset.step = String(state.step);
    const info = model.get("steps_info")[state.step] || {};
    readout.textContent = `step ${state.step + 1}/${n} \u00b7 t = ${info.t} \u00b7 \u03c3 = ${info.sigma} \u00b7 \u1fb1 = ${info.alpha}` + markNote();
    branchButton.textContent = "\u2442 Branch at step " + (state.step + 1);
    placeMarker(schedule, "schedule");
    placeMarker(emergence, "emergence");
    if (model.get("overlay_maps").length > 1) drawOverlay();
    if (send) sendStep();
  }

  // The fork step (or the last step of an edit's injected attention), on the slider and in the readout.
  function markNote() {
    const kind = model.get("mark_kind"), k = model.get("mark_step");
    if (!kind || k < 0) return "";
    if (kind === "fork") return state.step < k ? " \u00b7 shared with the parent" : " \u00b7 after the fork";
    return state.step < k ? " \u00b7 source's attention injected" : " \u00b7 own attention";
  }
  function loadMark() {
    const kind = model.get("mark_kind"), k = model.get("mark_step"), n = count();
    forkTick.hidden = !kind || k < 0 || n < 2;
    root.dataset.markKind = kind;
    root.dataset.markStep = String(k);
    if (!forkTick.hidden) {
      forkTick.style.left = `calc(8px + (100% - 16px) * ${Math.max(0, k - 0.5) / (n - 1)})`;
      forkTick.title = model.get("mark_label");
      forkTick.dataset.kind = kind;
    }
    show(state.step, false);
  }

  // Throttled step sync: at most one message per 60 ms, and always the latest value last.
  function sendStep() {
    const wait = 60 - (performance.now() - state.lastSent);
    if (state.sendTimer !== null) return;
    state.sendTimer = setTimeout(() => {
      state.sendTimer = null;
      state.lastSent = performance.now();
      if (model.get("step") !== state.step) { model.set("step", state.step); model.save_changes(); }
    }, Math.max(0, wait));
  }

  // Token overlay: grayscale map(s) from the kernel, colour-mapped with the LUT, opacity applied here.
  const small = document.createElement("canvas");
  const sctx = small.getContext("2d", { willReadFrequently: true });
  let bitmaps = [];
  async function loadMaps() {
    const token = ++state.drawToken;
    const views = model.get("overlay_maps");
    const decoded = await Promise.all(views.map((v) => createImageBitmap(new Blob([v.buffer ? v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength) : v], { type: "image/png" }))));
    if (token !== state.drawToken) return;
    bitmaps = decoded;
    drawOverlay();
  }
  function drawOverlay() {
    if (bitmaps.length === 0) {
      for (const c of overlays) { c.hidden = true; delete c.dataset.shown; }
      return;
    }
    const bm = bitmaps.length > 1 ? bitmaps[Math.min(state.step, bitmaps.length - 1)] : bitmaps[0];
    small.width = bm.width; small.height = bm.height;
    sctx.drawImage(bm, 0, 0);
    const pixels = sctx.getImageData(0, 0, small.width, small.height);
    const px = pixels.data, lut = model.get("colormap");
    const alpha = Math.round(255 * model.get("opacity"));
    for (let i = 0; i < px.length; i += 4) {
      const v = px[i];
      px[i] = lut[3 * v]; px[i + 1] = lut[3 * v + 1]; px[i + 2] = lut[3 * v + 2]; px[i + 3] = alpha;
    }
    sctx.putImageData(pixels, 0, 0);
    for (const c of overlays) {
      const ctx = c.getContext("2d");
      ctx.imageSmoothingEnabled = true;
      ctx.clearRect(0, 0, c.width, c.height);
      ctx.drawImage(small, 0, 0, c.width, c.height);
      c.dataset.shown = model.get("selected").join(",") + "@" + (bitmaps.length > 1 ? state.step : model.get("map_range"));
      c.hidden = false;
    }
  }

  function loadChips() {
    chips.replaceChildren();
    const selected = new Set(model.get("selected"));
    for (const group of model.get("words")) {
      const unknown = group.known === false;
      const word = h("span", { class: "sdx-word" + (group.branch === "uncond" ? " sdx-negative" : "") + (unknown ? " sdx-unknown" : ""),
        title: unknown ? group.text + ": a word the toy model never saw" : group.text });
      if (unknown) word.dataset.unknown = "true";
      for (const tok of group.tokens) {
        const chip = h("button", { type: "button", class: "sdx-chip", "data-key": tok.key, text: tok.text });
        chip.setAttribute("aria-pressed", String(selected.has(tok.key)));
        chip.addEventListener("click", () => {
          const now = new Set(model.get("selected"));
          if (now.has(tok.key)) now.delete(tok.key); else now.add(tok.key);
          model.set("selected", [...now]);
          model.save_changes();
          loadChips();
        });
        word.append(chip);
      }
      chips.append(word);
    }
    tokensRow.hidden = model.get("words").length === 0;
  }
  function loadControls() {
    rangeMode.value = model.get("map_range");
    rangeLo.value = String(model.get("range_lo")); rangeHi.value = String(model.get("range_hi"));
    rangeLo.hidden = rangeHi.hidden = model.get("map_range") !== "range";
    layers.replaceChildren(...model.get("layer_options").map((v) => h("option", { value: v, text: v })));
    layers.value = model.get("layer_filter");
    opacity.value = String(Math.round(100 * model.get("opacity")));
    gSlider.value = String(model.get("guidance_live"));
    gLabel.textContent = "g = " + Number(model.get("guidance_live")).toFixed(1) + " (recorded " + model.get("guidance_recorded") + ")";
    guidanceRow.hidden = !model.get("guidance_enabled");
  }
  function loadImage(img, name, cap, type = mime()) {
    if (urls[name]) URL.revokeObjectURL(urls[name]);
    const data = model.get(name);
    urls[name] = data && data.byteLength ? blobUrl(data, type) : null;  // empty bytes: nothing to show
    img.closest("figure").hidden = !urls[name];
    if (urls[name]) img.src = urls[name];
    cap.textContent = model.get(name + "_label");
  }
  function loadPanel() {
    for (const [key, b] of Object.entries(tabButtons)) b.setAttribute("aria-pressed", String(model.get("panel") === key));
    if (urls.panel) URL.revokeObjectURL(urls.panel);
    const png = model.get("panel_png");
    urls.panel = png && png.byteLength ? blobUrl(png, "image/png") : null;
    if (urls.panel) panelImg.src = urls.panel;
    panelImg.hidden = !urls.panel;
    panelCap.textContent = model.get("panel_label");
    panelFig.hidden = !model.get("panel");
  }
  function loadText() {
    error.textContent = model.get("error");
    error.hidden = !model.get("error");
    status.textContent = model.get("status");
    status.hidden = !model.get("status");
    title.textContent = model.get("title");
    previewKind.textContent = model.get("preview_label");
    previewKind.dataset.method = model.get("preview_method");
    startLabel.textContent = model.get("start_label");
    startLabel.hidden = !model.get("start_label");
    root.dataset.mode = model.get("mode");
    emergenceLabels.textContent = (model.get("emergence_labels") || []).join(" \u00b7 ");
    vocabNote.textContent = model.get("vocab_note");
    vocabNote.hidden = !model.get("vocab_note");
  }
  function loadRun() {
    if (document.activeElement !== promptBox) promptBox.value = model.get("prompt_text");
    if (document.activeElement !== seedBox) seedBox.value = String(model.get("seed_value"));
    schedBox.replaceChildren(...model.get("scheduler_options").map(([v, t]) => h("option", { value: v, text: t })));
    schedBox.value = model.get("scheduler_name");
    const can = model.get("can_run");
    for (const e of [promptBox, seedBox, schedBox, runButton]) e.disabled = !can;
    runButton.title = can ? "run this prompt, seed and scheduler" : "new runs need the pipeline: explore(trace, pipe=pipe)";
  }
  function loadOverview() {
    const base = model.get("docs_url");
    overview.replaceChildren();
    for (const stage of model.get("stages")) {
      const page = base ? h("a", { href: base.replace(/\/?$/, "/") + stage.page.replace(/\.md$/, "/"), target: "_blank", rel: "noopener", text: "concept page" })
        : h("span", { class: "sdx-page", text: "docs/" + stage.page });
      const shows = stage.panels.map((k) => PANEL_NAMES[k] || k).join(", ");
      overview.append(h("li", { class: "sdx-stage", "data-stage": stage.key },
        h("b", { text: stage.name }), h("span", { class: "sdx-stage-line", text: stage.line }),
        h("span", { class: "sdx-stage-panels", text: "shows: " + shows }), page));
    }
  }
  function loadPresentation() {
    const on = model.get("presentation");
    root.classList.toggle("sdx-present", on);
    presentButton.setAttribute("aria-pressed", String(on));
    applySize();
    drawOverlay();  // resizing cleared the overlay canvases
  }
  function loadBranchControl() {
    const can = model.get("can_branch"), mode = model.get("branch_mode");
    if (document.activeElement !== branchPrompt) branchPrompt.value = model.get("branch_prompt");
    if (document.activeElement !== branchGuidance) branchGuidance.value = String(model.get("branch_guidance"));
    if (document.activeElement !== branchSeed) branchSeed.value = model.get("branch_seed") < 0 ? "" : String(model.get("branch_seed"));
    if (document.activeElement !== branchWeights) branchWeights.value = model.get("branch_weights");
    branchMode.value = mode;
    guidanceLabel.hidden = seedLabel.hidden = mode !== "fork";
    weightsLabel.hidden = mode !== "reweight";
    for (const e of [branchButton, branchMode, branchPrompt, branchGuidance, branchSeed, branchWeights]) e.disabled = !can;
    branchRow.classList.toggle("sdx-disabled", !can);
    branchHint.textContent = model.get("branch_hint");
    branchHint.hidden = can;
    branchButton.title = can ? "run the branch from the shown step and show it under this run" : model.get("branch_hint");
  }
  function submitBranch() {
    const seedText = branchSeed.value.trim(), seed = seedText === "" ? -1 : Math.trunc(Number(seedText));
    const guidance = Number(branchGuidance.value);
    if (!Number.isFinite(seed) || seed < -1) { error.textContent = "branch seed must be a whole number >= 0, or empty"; error.hidden = false; return; }
    if (!Number.isFinite(guidance) || guidance < 0) { error.textContent = "branch guidance must be a number >= 0"; error.hidden = false; return; }
    const values = { branch_mode: branchMode.value, branch_prompt: branchPrompt.value, branch_guidance: guidance,
      branch_seed: seed, branch_weights: branchWeights.value };  // read all first: each set re-renders the boxes
    if (model.get("step") !== state.step) model.set("step", state.step);  // branch at the step shown
    for (const [k, v] of Object.entries(values)) model.set(k, v);
    model.set("branch_request", model.get("branch_request") + 1);
    model.save_changes();
  }
  // The branch's explorer is another widget: its model comes from the host's widget manager (notebook front ends,
  // VS Code) and this render draws it; without a widget manager the pane says how to show it.
  const branchState = { token: 0, dispose: null };
  async function loadBranch() {
    const token = ++branchState.token;
    if (branchState.dispose) { branchState.dispose(); branchState.dispose = null; }
    branchPane.replaceChildren();
    const ref = model.get("branch");
    branchBox.hidden = laneLabel.hidden = !ref;
    if (!ref) return;
    const manager = model.widget_manager;
    if (!manager || typeof manager.get_model !== "function") {
      branchPane.append(h("div", { class: "sdx-branch-note", text: "this front end cannot draw the branch here: show it with display(w.branch)" }));
      return;
    }
    const child = await manager.get_model(String(ref).replace(/^IPY_MODEL_/, ""));
    if (token !== branchState.token || !child) return;
    const context = {};
    const proxy = { get: (k) => child.get(k), set: (k, v) => child.set(k, v), save_changes: () => child.save_changes(),
      send: (...args) => child.send(...args), on: (name, cb) => child.on(name, cb, context),
      off: (name, cb) => child.off(name, cb, context), widget_manager: manager };
    const holder = h("div");
    branchPane.append(holder);
    const cleanup = render({ model: proxy, el: holder });
    branchHead.textContent = "branch \u00b7 " + (child.get("mark_label") || "");
    branchState.dispose = () => { child.off(null, null, context); if (cleanup) cleanup(); };
  }
  function loadCompact() { root.classList.toggle("sdx-compact", model.get("compact")); }

  function submitRun() {
    const seed = Math.trunc(Number(seedBox.value));
    if (!Number.isFinite(seed) || seed < 0) { error.textContent = "seed must be a whole number >= 0"; error.hidden = false; return; }
    const prompt = promptBox.value, scheduler = schedBox.value;  // read all first: each set re-renders the boxes
    model.set("prompt_text", prompt);
    model.set("seed_value", seed);
    model.set("scheduler_name", scheduler);
    model.set("run_request", model.get("run_request") + 1);
    model.save_changes();
  }
  runButton.addEventListener("click", submitRun);
  branchButton.addEventListener("click", submitBranch);
  branchPrompt.addEventListener("keydown", (event) => { if (event.key === "Enter") { event.preventDefault(); submitBranch(); } });
  branchMode.addEventListener("change", () => {
    model.set("branch_mode", branchMode.value); model.save_changes(); loadBranchControl();
  });
  promptBox.addEventListener("keydown", (event) => { if (event.key === "Enter") { event.preventDefault(); submitRun(); } });
  presentButton.addEventListener("click", () => { model.set("presentation", !model.get("presentation")); model.save_changes(); loadPresentation(); });

  slider.addEventListener("input", () => { pause(); show(Number(slider.value)); });
  function pause() {
    if (state.timer !== null) clearInterval(state.timer);
    state.timer = null;
    play.textContent = "\u25b6 Play"; play.setAttribute("aria-label", "play");
  }
  function start() {
    if (state.step >= count() - 1) show(0);
    state.timer = setInterval(() => (state.step < count() - 1 ? show(state.step + 1) : pause()), 1000 / model.get("fps"));
    play.textContent = "\u275a\u275a Pause"; play.setAttribute("aria-label", "pause");
  }
  play.addEventListener("click", () => (state.timer === null ? start() : pause()));
  root.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
    const moves = { ArrowRight: 1, ArrowLeft: -1, PageUp: 5, PageDown: -5 };
    if (event.key in moves) show(state.step + moves[event.key]);
    else if (event.key === "Home") show(0);
    else if (event.key === "End") show(count() - 1);
    else if (event.key === " ") { state.timer === null ? start() : pause(); }
    else return;
    event.preventDefault(); event.stopPropagation();
    if (event.key !== " ") pause();
  });
  const commit = (name, value) => { model.set(name, value); model.save_changes(); };
  rangeMode.addEventListener("change", () => commit("map_range", rangeMode.value));
  rangeLo.addEventListener("change", () => commit("range_lo", Number(rangeLo.value)));
  rangeHi.addEventListener("change", () => commit("range_hi", Number(rangeHi.value)));
  layers.addEventListener("change", () => commit("layer_filter", layers.value));
  opacity.addEventListener("input", () => { model.set("opacity", Number(opacity.value) / 100); drawOverlay(); });
  opacity.addEventListener("change", () => model.save_changes());
  gSlider.addEventListener("input", () => commit("guidance_live", Number(gSlider.value)));
  gSlider.addEventListener("change", () => commit("guidance", Number(gSlider.value)));
  decode.addEventListener("click", () => commit("decode_request", model.get("decode_request") + 1));

  model.on("change:frames", loadFrames);
  model.on("change:final", loadFrames);
  model.on("change:step", () => { if (model.get("step") !== state.step) show(model.get("step"), false); });
  model.on("change:schedule_png", () => setPlot(schedule, "schedule"));
  model.on("change:emergence_png", () => setPlot(emergence, "emergence"));
  model.on("change:emergence_x", () => placeMarker(emergence, "emergence"));
  model.on("change:overlay_maps", loadMaps);
  model.on("change:words", loadChips);
  model.on("change:selected", loadChips);
  for (const name of ["map_range", "range_lo", "range_hi", "layer_options", "layer_filter", "guidance_live", "guidance_enabled"])
    model.on("change:" + name, loadControls);
  model.on("change:opacity", () => { loadControls(); drawOverlay(); });
  model.on("change:whatif", () => loadImage(whatif, "whatif", whatifCap));
  model.on("change:detail", () => loadImage(detail, "detail", detailCap));
  for (const name of ["panel", "panel_png", "panel_label"]) model.on("change:" + name, loadPanel);
  for (const name of ["error", "status", "title", "preview_label", "start_label", "mode", "emergence_labels"]) model.on("change:" + name, loadText);
  model.on("change:input_frame", () => loadImage(inputImg, "input_frame", inputCap, "image/png"));
  model.on("change:input_frame_label", () => loadImage(inputImg, "input_frame", inputCap, "image/png"));

  model.on("change:presentation", loadPresentation);
  model.on("change:present_size", loadPresentation);
  for (const name of ["prompt_text", "seed_value", "scheduler_name", "scheduler_options", "can_run"]) model.on("change:" + name, loadRun);
  for (const name of ["stages", "docs_url"]) model.on("change:" + name, loadOverview);
  model.on("change:vocab_note", loadText);
  for (const name of ["can_branch", "branch_hint", "branch_mode", "branch_prompt", "branch_guidance", "branch_seed", "branch_weights"])
    model.on("change:" + name, loadBranchControl);
  model.on("change:branch", loadBranch);
  for (const name of ["mark_kind", "mark_step", "mark_label"]) model.on("change:" + name, loadMark);
  model.on("change:compact", loadCompact);

  loadText(); loadControls(); loadChips(); loadRun(); loadOverview(); loadFrames(); loadPresentation();
  loadCompact(); loadBranchControl(); loadMark(); loadBranch();
  setPlot(schedule, "schedule"); setPlot(emergence, "emergence");
  loadImage(whatif, "whatif", whatifCap); loadImage(detail, "detail", detailCap); loadImage(inputImg, "input_frame", inputCap, "image/png");
  loadMaps(); loadPanel();
  return () => {
    pause();
    branchState.token++;
    if (branchState.dispose) branchState.dispose();
    if (state.sendTimer !== null) clearTimeout(state.sendTimer);
    for (const list of Object.values(urls.frames)) revokeAll(list);
    revokeAll([urls.final, urls.schedule, urls.emergence, urls.whatif, urls.detail, urls.panel, urls.input_frame]);
  };
}

export default { render };
