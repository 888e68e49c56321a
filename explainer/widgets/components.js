// sd-explainer component explorers (anywidget ESM): controls described by the kernel, pictures drawn there.
// Each control writes values[name]; a button increments its counter; a brushable picture sends strokes.
function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

function render({ model, el }) {
  const root = h("div", { class: "sdc", "data-part": model.get("part") });
  el.append(root);
  const title = h("span", { class: "sdc-title" });
  // Presentation mode (for a projector): the kernel draws the figures bigger, the CSS shows every picture
  // at least present_display px wide, in large type, full width (as explore()'s presentation mode).
  const presentButton = h("button", { type: "button", class: "sdc-present-toggle", "aria-label": "presentation mode" });
  presentButton.textContent = "\u26f6 Presentation";
  const head = h("div", { class: "sdc-head" }, title, presentButton);
  const controls = h("div", { class: "sdc-controls" });
  const status = h("div", { class: "sdc-status" });
  const error = h("div", { class: "sdc-error", role: "alert" });
  const info = h("div", { class: "sdc-info" });
  const pics = h("div", { class: "sdc-pics" });
  root.append(head, controls, status, error, info, pics);
  // Keys typed into the controls are the widget's, not the notebook's shortcuts (Enter, a, b, m...).
  controls.addEventListener("keydown", (ev) => ev.stopPropagation());

  function setValue(name, value) {
    const values = { ...model.get("values"), [name]: value };
    model.set("values", values);
    model.save_changes();
  }

  function buildControls() {
    controls.replaceChildren();
    const values = model.get("values");
    for (const c of model.get("controls")) {
      const label = h("label", { class: "sdc-control", "data-name": c.name }, h("span", { text: c.label }));
      let input;
      if (c.kind === "slider") {
        input = h("input", { type: "range", min: String(c.min), max: String(c.max), step: String(c.step ?? 1), value: String(values[c.name]), "data-name": c.name });
        const out = h("output", { text: String(values[c.name]) });
        input.addEventListener("input", () => { out.textContent = input.value; });
        input.addEventListener("change", () => setValue(c.name, Number(input.value)));
        label.append(input, out);
      } else if (c.kind === "text") {
        input = h("input", { type: "text", value: String(values[c.name]), size: "40", "data-name": c.name });
        input.addEventListener("change", () => setValue(c.name, input.value));
        input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") setValue(c.name, input.value); });
        label.append(input);
      } else if (c.kind === "select") {
        input = h("select", { "data-name": c.name });
        for (const o of c.options) {
          const opt = h("option", { value: String(o), text: String(o) });
          if (String(o) === String(values[c.name])) opt.selected = true;
          input.append(opt);
        }
        input.addEventListener("change", () => setValue(c.name, c.numeric ? Number(input.value) : input.value));
        label.append(input);
      } else if (c.kind === "button") {
        input = h("button", { type: "button", "data-name": c.name, text: c.label });
        input.addEventListener("click", () => setValue(c.name, (model.get("values")[c.name] || 0) + 1));
        label.replaceChildren(input);
      }
      controls.append(label);
    }
  }

  function attachBrush(frame, img, key) {
    const canvas = h("canvas", { class: "sdc-brush", "data-key": key });
    frame.append(canvas);
    let points = [], down = false;
    const size = () => { canvas.width = img.naturalWidth || 64; canvas.height = img.naturalHeight || 64; };
    img.addEventListener("load", size);
    const at = (ev) => {
      const r = canvas.getBoundingClientRect();
      return [(ev.clientX - r.left) * canvas.width / r.width, (ev.clientY - r.top) * canvas.height / r.height];
    };
    const paint = (p) => {
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = "rgba(255, 60, 200, 0.55)";
      ctx.beginPath();
      ctx.arc(p[0], p[1], model.get("brush_radius"), 0, 2 * Math.PI);
      ctx.fill();
    };
    canvas.addEventListener("pointerdown", (ev) => { down = true; const p = at(ev); points.push(p); paint(p); });
    canvas.addEventListener("pointermove", (ev) => { if (down) { const p = at(ev); points.push(p); paint(p); } });
    const finish = () => {
      if (!down) return;
      down = false;
      const all = [...(model.get("values").strokes || []), ...points.map(([x, y]) => [Math.round(x * 10) / 10, Math.round(y * 10) / 10])];
      points = [];
      setValue("strokes", all);
    };
    canvas.addEventListener("pointerup", finish);
    canvas.addEventListener("pointerleave", finish);
    if (img.complete) size();
  }

  function drawPictures() {
    pics.replaceChildren();
    for (const p of model.get("pictures")) {
      const img = h("img", { src: p.src, alt: p.label, "data-key": p.key });
      if (p.width) img.style.width = `${p.width}px`;
      if (p.pixelated) img.style.imageRendering = "pixelated";
      const frame = h("div", { class: "sdc-frame" }, img);
      if (p.brush) attachBrush(frame, img, p.key);
      pics.append(h("figure", { "data-key": p.key }, frame, h("figcaption", { text: p.label })));
    }
  }

  function loadPresentation() {
    const on = model.get("presentation");
    root.classList.toggle("sdc-present", on);
    root.style.setProperty("--sdc-present-min", `${model.get("present_display")}px`);
    presentButton.setAttribute("aria-pressed", String(on));
  }
  presentButton.addEventListener("click", () => { model.set("presentation", !model.get("presentation")); model.save_changes(); loadPresentation(); });

  const update = () => {
    title.textContent = model.get("title");
    status.textContent = model.get("status");
    error.textContent = model.get("error");
    error.hidden = !model.get("error");
    info.innerHTML = model.get("info_html");  // built and escaped in the kernel
    root.dataset.revision = String(model.get("revision"));
  };
  model.on("change:controls", buildControls);
  model.on("change:pictures", drawPictures);
  for (const k of ["title", "status", "error", "info_html", "revision"]) model.on(`change:${k}`, update);
  model.on("change:presentation", loadPresentation);
  model.on("change:present_display", loadPresentation);
  loadPresentation();
  buildControls();
  drawPictures();
  update();
}

export default { render };
