"""The standalone HTML player: one page, CSS and JS inline, no network.

``{{TITLE}}`` and ``{{DATA}}`` are replaced by :mod:`explainer.export.html`; the data is JSON in a
``<script type="application/json">`` block (``</`` escaped), read once by the script below. Every
image is a ``data:`` URI; the icon link is ``data:,`` so the browser does not ask for a favicon.
"""

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="sd-explainer">
<link rel="icon" href="data:,">
<title>{{TITLE}}</title>
<style>
:root { --bg:#15151a; --panel:#1f1f27; --text:#ececec; --muted:#a0a0aa; --accent:#f0a030; --mark:#4a9ad0; }
* { box-sizing: border-box; }
[hidden] { display:none !important; }
body { margin:0; padding:20px; background:var(--bg); color:var(--text);
       font:15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size:20px; margin:0 0 4px; font-weight:600; }
.negative { color:var(--muted); margin:0 0 6px; }
.settings { display:flex; flex-wrap:wrap; gap:4px 18px; margin:0 0 16px; color:var(--muted); font-size:13px; }
.settings b { color:var(--text); font-weight:500; }
.stages { display:flex; flex-wrap:wrap; gap:16px; align-items:flex-start; }
.stages.lanes { flex-direction:column; gap:10px; }
.lane h2 { font-size:15px; font-weight:600; margin:0 0 6px; }
.lane + .lane { border-left:3px solid var(--mark); padding-left:10px; }
.lane + .lane h2 { color:var(--mark); }
#timeline { display:flex; gap:2px; width:min(520px, 90vw); margin:2px 0 4px; }
#timeline span { flex:1; height:8px; background:#464652; border-radius:2px; }
#timeline span.marked { background:var(--mark); }
#timeline span.current { outline:2px solid var(--accent); }
#timeline span.fork { box-shadow:-3px 0 0 var(--text); }
#timeline-label { color:var(--mark); font-size:13px; }
figure { margin:0; background:var(--panel); padding:8px; border-radius:6px; }
figcaption { color:var(--muted); font-size:13px; margin-top:6px; }
.frame { position:relative; line-height:0; }
.frame img, .frame canvas { display:block; }
.frame canvas { position:absolute; left:0; top:0; pointer-events:none; }
.pixelated img { image-rendering:pixelated; }
.controls { display:flex; align-items:center; gap:12px; margin:16px 0 8px; flex-wrap:wrap; }
button { background:var(--panel); color:var(--text); border:1px solid #3a3a46; border-radius:16px;
         padding:5px 14px; font:inherit; cursor:pointer; }
button:hover { border-color:var(--accent); }
button[aria-pressed="true"] { background:var(--accent); color:#111; border-color:var(--accent); }
#step { width:min(520px, 90vw); accent-color:var(--accent); }
#step-label { font-variant-numeric:tabular-nums; color:var(--muted); }
.tokens { display:flex; align-items:center; gap:8px; flex-wrap:wrap; margin:8px 0; }
#chips { display:flex; flex-wrap:wrap; gap:6px; }
.tokens .hint, label { color:var(--muted); font-size:13px; }
input[type="range"] { accent-color:var(--accent); }
footer { margin-top:20px; color:var(--muted); font-size:12px; }
.note { font-size:17px; margin:8px 0; padding:8px 12px; border-left:3px solid var(--accent); background:var(--panel); }
.handout h2 { font-size:17px; margin:18px 0 6px; }
.handout ol, .handout ul { margin:0; padding-left:1.6em; }
.handout li { margin:4px 0; }
.handout .answer-space { display:none; }
@media print {
  body { background:#fff; color:#000; }
  .controls, .tokens { display:none !important; }
  figure, .note { background:#fff; border-color:#888; }
  .handout .answer-space { display:block; height:4.5em; border-bottom:1px dotted #888; }
}
</style>
</head>
<body>
<header>
  <h1 id="prompt"></h1>
  <p class="negative" id="negative" hidden></p>
  <div class="settings" id="settings"></div>
</header>
<main>
  <div class="stages" id="stages"></div>
  <div class="controls">
    <button id="play" type="button" aria-label="play">&#9654; Play</button>
    <input id="step" type="range" min="0" max="0" value="0" aria-label="denoising step">
    <span id="step-label"></span>
  </div>
  <div id="timeline-box" hidden><div id="timeline" aria-hidden="true"></div><span id="timeline-label"></span></div>
  <div class="tokens" id="tokens">
    <span class="hint">Cross-attention of a word:</span>
    <span id="chips"></span>
    <label><input id="all-steps" type="checkbox"> all steps</label>
    <label>opacity <input id="opacity" type="range" min="0" max="100" value="65"></label>
  </div>
  <p class="note" id="note" aria-live="polite" hidden></p>
  <section class="handout" id="handout" hidden>
    <div id="notes-box" hidden><h2>Notes by step</h2><ul id="notes"></ul></div>
    <div id="questions-box" hidden><h2>Questions</h2><ol id="questions"></ol></div>
  </section>
</main>
<footer id="footer"></footer>
<script type="application/json" id="trace-data">{{DATA}}</script>
<script>
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("trace-data").textContent);
  const $ = (id) => document.getElementById(id);
  const count = data.steps.length;
  const state = { step: 0, word: null, timer: null };

  $("prompt").textContent = data.prompt === "" ? "(empty prompt)" : data.prompt;
  if (data.negative_prompt) {
    $("negative").textContent = "negative: " + data.negative_prompt;
    $("negative").hidden = false;
  }
  for (const [name, value] of data.settings) {
    const item = document.createElement("span");
    item.append(name + " ");
    const b = document.createElement("b");
    b.textContent = value;
    item.append(b);
    $("settings").append(item);
  }
  $("footer").textContent = data.footer;

  // Handout: notes by step (the current one under the slider) and questions for the class.
  const notes = data.notes || [], questions = data.questions || [];
  for (const [step, text] of notes) {
    const li = document.createElement("li");
    li.textContent = "step " + step + ": " + text;
    $("notes").append(li);
  }
  for (const text of questions) {
    const li = document.createElement("li");
    li.textContent = text;
    const space = document.createElement("div");
    space.className = "answer-space";
    li.append(space);
    $("questions").append(li);
  }
  $("notes-box").hidden = notes.length === 0;
  $("questions-box").hidden = questions.length === 0;
  $("handout").hidden = notes.length === 0 && questions.length === 0;

  // Runs: one (a trace), or two side by side with one slider (a fork and its parent, an edit's source and target).
  const lanes = data.lanes || [{ name: "", label: "", views: data.views, final: data.final, words: data.words }];
  const multi = Boolean(data.lanes);
  if (data.timeline && data.timeline.kind === "edit") document.documentElement.style.setProperty("--mark", "#a070d8");

  // Stages: one per view and run; the step-driven ones carry an overlay canvas.
  const stages = [];
  let container = $("stages");
  let laneIndex = 0;
  function addStage(label, src, stepped) {
    const fig = document.createElement("figure");
    fig.dataset.view = label.key;
    const frame = document.createElement("div");
    frame.className = "frame" + (data.pixelated ? " pixelated" : "");
    const img = document.createElement("img");
    img.width = data.width;
    img.height = data.height;
    img.alt = label.text;
    img.src = src;
    frame.append(img);
    let canvas = null;
    if (stepped) {
      canvas = document.createElement("canvas");
      canvas.width = data.width;
      canvas.height = data.height;
      canvas.className = "overlay";
      canvas.hidden = true;
      frame.append(canvas);
    }
    const cap = document.createElement("figcaption");
    cap.textContent = label.text;
    fig.append(frame, cap);
    container.append(fig);
    if (stepped) stages.push({ img, canvas, frames: label.frames, lane: laneIndex });
  }
  if (multi) $("stages").classList.add("lanes");
  lanes.forEach((lane, index) => {
    laneIndex = index;
    if (multi) {
      const section = document.createElement("section");
      section.className = "lane";
      section.dataset.lane = lane.name;
      const head = document.createElement("h2");
      head.textContent = lane.label;
      container = document.createElement("div");
      container.className = "stages";
      section.append(head, container);
      $("stages").append(section);
    }
    for (const view of lane.views) {
      addStage({ key: view.key, text: view.label, frames: view.frames }, view.frames[0], true);
    }
    if (lane.final) addStage({ key: "final", text: "final image" }, lane.final, false);
  });

  // Decode every frame once, up front, so playback does not stutter.
  for (const lane of lanes) for (const view of lane.views) for (const uri of view.frames) { const im = new Image(); im.src = uri; }

  // The timeline under the slider: a fork's shared prefix (or an edit's injected steps) and the fork step.
  const cells = [];
  if (data.timeline) {
    for (let i = 0; i < count; i++) {
      const cell = document.createElement("span");
      const s = data.steps[i].step - 1;
      if (s < data.timeline.step) cell.classList.add("marked");
      if (s === data.timeline.step) cell.classList.add("fork");
      cells.push(cell);
      $("timeline").append(cell);
    }
    $("timeline-label").textContent = data.timeline.label;
    $("timeline-box").hidden = false;
  }

  // Attention overlays: small grayscale maps, colour-mapped with the LUT and scaled up smoothly.
  const lut = data.colormap;
  const small = document.createElement("canvas");
  small.width = data.map_width;
  small.height = data.map_height;
  const sctx = small.getContext("2d", { willReadFrequently: true });
  const mapCache = new Map();
  function loadMap(uri) {
    if (!mapCache.has(uri)) {
      mapCache.set(uri, new Promise((resolve, reject) => {
        const im = new Image();
        im.onload = () => resolve(im);
        im.onerror = () => reject(new Error("cannot decode an attention map"));
        im.src = uri;
      }));
    }
    return mapCache.get(uri);
  }
  let drawToken = 0;
  async function drawOverlay() {
    const token = ++drawToken;
    if (state.word === null) {
      for (const s of stages) { s.canvas.hidden = true; delete s.canvas.dataset.shown; }
      return;
    }
    const word = lanes[state.word.lane].words[state.word.index];
    const uri = $("all-steps").checked ? word.mean : word.maps[state.step];
    const im = await loadMap(uri);
    if (token !== drawToken) return;  // a newer request won
    sctx.clearRect(0, 0, small.width, small.height);
    sctx.drawImage(im, 0, 0, small.width, small.height);
    const pixels = sctx.getImageData(0, 0, small.width, small.height);
    const px = pixels.data;
    const alpha = Math.round(2.55 * Number($("opacity").value));
    for (let i = 0; i < px.length; i += 4) {
      const v = px[i];
      px[i] = lut[3 * v]; px[i + 1] = lut[3 * v + 1]; px[i + 2] = lut[3 * v + 2]; px[i + 3] = alpha;
    }
    sctx.putImageData(pixels, 0, 0);
    for (const s of stages) {
      if (s.lane !== state.word.lane) { s.canvas.hidden = true; delete s.canvas.dataset.shown; continue; }
      const ctx = s.canvas.getContext("2d");
      ctx.imageSmoothingEnabled = true;
      ctx.clearRect(0, 0, s.canvas.width, s.canvas.height);
      ctx.drawImage(small, 0, 0, s.canvas.width, s.canvas.height);
      s.canvas.dataset.shown = word.text + ":" + ($("all-steps").checked ? "all" : state.step);
      s.canvas.hidden = false;
    }
  }

  const chips = [];
  lanes.forEach((lane, laneAt) => {
    if (multi && lane.words.length) {
      const name = document.createElement("span");
      name.className = "hint";
      name.textContent = lane.name + ":";
      $("chips").append(name);
    }
    lane.words.forEach((word, index) => {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip";
      chip.textContent = word.text;
      chip.dataset.lane = String(laneAt);
      chip.setAttribute("aria-pressed", "false");
      const key = { lane: laneAt, index };
      chip.addEventListener("click", () => {
        const same = state.word !== null && state.word.lane === laneAt && state.word.index === index;
        state.word = same ? null : key;
        chips.forEach((c) => c.chip.setAttribute("aria-pressed", String(state.word !== null
          && c.key.lane === state.word.lane && c.key.index === state.word.index)));
        drawOverlay();
      });
      chips.push({ chip, key });
      $("chips").append(chip);
    });
  });
  if (chips.length === 0) $("tokens").hidden = true;
  $("all-steps").addEventListener("change", drawOverlay);
  $("opacity").addEventListener("input", drawOverlay);

  // Steps.
  const slider = $("step");
  slider.max = String(count - 1);
  function show(step) {
    state.step = Math.max(0, Math.min(count - 1, step));
    slider.value = String(state.step);
    for (const s of stages) s.img.src = s.frames[state.step];
    const info = data.steps[state.step];
    $("step-label").textContent =
      "step " + info.step + " / " + data.num_steps + " \u00b7 t = " + info.t + " \u00b7 \u03c3 = " + info.sigma
      + (info.status ? " \u00b7 " + info.status : "");
    cells.forEach((c, i) => c.classList.toggle("current", i === state.step));
    $("note").textContent = info.note || "";
    $("note").hidden = !info.note;
    if (state.word !== null && !$("all-steps").checked) drawOverlay();
  }
  slider.addEventListener("input", () => { pause(); show(Number(slider.value)); });

  function pause() {
    if (state.timer !== null) clearInterval(state.timer);
    state.timer = null;
    $("play").innerHTML = "&#9654; Play";
    $("play").setAttribute("aria-label", "play");
  }
  function play() {
    if (state.step >= count - 1) show(0);
    const period = 1000 / data.fps;
    let holdLeft = Math.round(data.hold * 1000 / period);
    state.timer = setInterval(() => {
      if (state.step < count - 1) { show(state.step + 1); return; }
      if (holdLeft-- > 0) return;
      holdLeft = Math.round(data.hold * 1000 / period);
      show(0);
    }, period);
    $("play").innerHTML = "&#10074;&#10074; Pause";
    $("play").setAttribute("aria-label", "pause");
  }
  $("play").addEventListener("click", () => (state.timer === null ? play() : pause()));
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement) return;
    if (event.key === "ArrowRight") { pause(); show(state.step + 1); }
    else if (event.key === "ArrowLeft") { pause(); show(state.step - 1); }
    else if (event.key === " ") { event.preventDefault(); state.timer === null ? play() : pause(); }
  });
  show(0);
})();
</script>
</body>
</html>
"""
