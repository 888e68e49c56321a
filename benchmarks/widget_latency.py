"""Explorer widget latency: browser-side frame swaps, kernel-side on-demand frames, bytes sent.

- Browser: ``player.js`` in headless Chromium with a minimal in-page model (the anywidget
  ``model`` interface: get/set/on/save_changes) holding a 50-step trace's frames, driven by 500
  trusted arrow-key presses on the focused step slider (Playwright). Per change, from the key press
  (``keydown`` timeStamp): ``ready``, the new frame decoded (``img.decode()``) and laid out
  (``getBoundingClientRect``), a sub-millisecond measure of the work before the frame can be painted;
  ``painted``, the next animation frame after that (the display frame that shows it, so quantised to
  the 60 Hz frame clock); ``missed``, animation frames that began between the key press and ``ready``
  (0: shown in the first frame after the input); and Event Timing API entries of 16 ms or more.
- Kernel: time from a step change to the widget's new ``detail`` value (linear x0 preview at full
  size with the selected token's map overlaid), p50/p95 over 200, via the widget's worker.
- Bytes: frames, final image and per-step token maps pushed to the browser for one 50-step trace.

Run: ``python benchmarks/widget_latency.py [--which toy|tiny512|both]``.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
_spec = importlib.util.spec_from_file_location("export_speed", REPO / "benchmarks" / "export_speed.py")
export_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_speed)
_json = export_speed._json  # benchmarks/_json.py

from explainer.widgets import Explorer

_spec = importlib.util.spec_from_file_location("_browser", REPO / "tests" / "_browser.py")
_browser = importlib.util.module_from_spec(_spec)  # Chromium found as the browser tests find it
_spec.loader.exec_module(_browser)
ARGS = _browser.CHROMIUM_ARGS
SETUP_JS = """async ([esm, state]) => {
  const b64 = (s) => { const a = Uint8Array.from(atob(s), (c) => c.charCodeAt(0)); return new DataView(a.buffer); };
  for (const k of Object.keys(state.frames)) state.frames[k] = state.frames[k].map(b64);
  state.final = b64(state.final); state.schedule_png = b64(state.schedule_png);
  for (const k of ["emergence_png", "whatif", "detail", "input_frame", "panel_png"]) state[k] = new DataView(new ArrayBuffer(0));
  state.overlay_maps = [];
  const handlers = {};
  const model = { get: (k) => state[k], set: (k, v) => { state[k] = v; }, save_changes: () => {},
                  on: (ev, f) => { (handlers[ev] ||= []).push(f); }, send: () => {} };
  const mod = await import(URL.createObjectURL(new Blob([esm], { type: "text/javascript" })));
  const el = document.createElement("div"); document.body.append(el);
  mod.default.render({ model, el });
  const slider = el.querySelector("input.sdx-step"), img = el.querySelector("img[data-panel='x0']");
  // Every animation frame's time, to count the frames that passed before a new image was ready.
  const frames = [];
  const tick = (t) => { frames.push(t); requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  // Event Timing API: trusted key presses whose input-to-next-paint duration is >= 16 ms.
  const slow = [];
  new PerformanceObserver((list) => { for (const e of list.getEntries()) slow.push({ name: e.name, duration: e.duration,
    handler: e.processingEnd - e.processingStart }); }).observe({ type: "event", durationThreshold: 16, buffered: true });
  const results = [];
  let keyAt = null;
  document.addEventListener("keydown", (e) => { keyAt = e.timeStamp; }, true);
  // Registered after the player's own listener: the new src is set when this runs.
  slider.addEventListener("input", (e) => {
    const t0 = keyAt ?? e.timeStamp, src = img.src;
    window.__sdxChange = (async () => {
      await img.decode();
      img.getBoundingClientRect();  // force style and layout with the new image
      const ready = performance.now();
      await new Promise((r) => requestAnimationFrame(r));
      const painted = performance.now();
      const missed = frames.filter((t) => t > t0 && t < ready).length;
      results.push({ ready: ready - t0, painted: painted - t0, missed, handler: performance.now() - painted, changed: src !== "" });
    })();
  });
  await new Promise((r) => setTimeout(r, 500));
  slider.focus();
  window.__sdxResults = () => ({ results, slow, frameGaps: frames.slice(1).map((t, i) => t - frames[i]) });
  return state.frames.x0.length;
}"""


def pct(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def browser_latency(w: Explorer, n: int) -> dict:
    """Drive the step slider with ``n`` trusted key presses (Playwright) in headless Chromium.

    Returns per change: ``ready`` (key press -> new frame decoded and laid out, ms), ``painted`` (key
    press -> the next animation frame after that, ms; the frame that shows it), ``missed`` (animation
    frames that started between the key press and ``ready``), and the Event Timing entries >= 16 ms.
    """
    from playwright.sync_api import sync_playwright

    chromium, why = _browser.find_chromium()
    if chromium is None:
        raise SystemExit(f"widget_latency: the browser part needs Chromium: {why}")
    plain = (str, int, float, bool, list)
    state = {k: getattr(w, k) for k in w.keys if not k.startswith("_") and isinstance(getattr(w, k), plain)}
    state.pop("overlay_maps", None)
    enc = lambda b: base64.b64encode(bytes(b)).decode("ascii")
    state["frames"] = {k: [enc(f) for f in v] for k, v in w.frames.items()}
    state["final"], state["schedule_png"] = enc(w.final), enc(w.schedule_png)
    esm = (REPO / "explainer" / "widgets" / "player.js").read_text()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page()
        page.set_content("<!DOCTYPE html><html><body></body></html>")
        steps = page.evaluate(SETUP_JS, [esm, state])
        key, at = "ArrowRight", 0
        for _ in range(n):  # back and forth over all steps
            key = "ArrowLeft" if at == steps - 1 else "ArrowRight" if at == 0 else key
            page.keyboard.press(key)
            at = page.evaluate("async () => { await window.__sdxChange; return Number(document.querySelector('.sdx').dataset.step); }")
        out = page.evaluate("() => window.__sdxResults()")
        browser.close()
    assert len(out["results"]) == n, f"{len(out['results'])} slider changes measured, wanted {n}"
    return out


def kernel_latency(w: Explorer, n: int) -> list[float]:
    w.selected = [w.words[2]["tokens"][0]["key"]]
    w.wait_idle()
    w._render_detail("linear")
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        w.step = (w.step + 1 + i % 7) % w.trace.num_steps
        w.wait_idle()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def sent_bytes(w: Explorer) -> int:
    w.selected = [w.words[2]["tokens"][0]["key"]]
    w.wait_idle()
    return sum(len(f) for v in w.frames.values() for f in v) + len(w.final) + sum(len(m) for m in w.overlay_maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=["toy", "tiny512", "both"], default="both")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures here (e.g. docs/data/widget_latency.json)")
    args = parser.parse_args()
    _json.check_path(parser, args.json)
    rows: list[dict] = []
    for which in ["toy", "tiny512"] if args.which == "both" else [args.which]:
        tr, _ = export_speed.make_trace(which, args.steps)
        t0 = time.perf_counter()
        w = Explorer(tr)
        build = time.perf_counter() - t0
        size = sent_bytes(w)
        k50, k95 = pct(kernel_latency(w, 200))
        out = browser_latency(w, 500)
        r50, r95 = pct([r["ready"] for r in out["results"]])
        p50, p95 = pct([r["painted"] for r in out["results"]])
        missed = sum(r["missed"] > 0 for r in out["results"])
        slow = [e for e in out["slow"] if e["name"] == "keydown"]
        by_duration = {d: sum(e["duration"] == d for e in slow) for d in sorted({e["duration"] for e in slow})}
        gaps = pct(out["frameGaps"])
        print(f"{which}: {tr.width}x{tr.height}, {tr.num_steps} steps | widget build {build:.2f} s | sent "
              f"{size / 1e6:.2f} MB | kernel step->detail (linear + overlay) p50 {k50:.1f} ms p95 {k95:.1f} ms")
        print(f"  browser, 500 key presses: key->frame ready (decoded + layout) p50 {r50:.2f} ms p95 {r95:.2f} ms "
              f"max {max(r['ready'] for r in out['results']):.2f} ms | key->next animation frame p50 {p50:.1f} ms "
              f"p95 {p95:.1f} ms | changes that missed the first frame: {missed} | Event Timing keydown entries >= 16 ms: "
              f"{len(slow)} of 500, by duration (8 ms steps) {by_duration}, handlers max "
              f"{max([e['handler'] for e in slow], default=0):.1f} ms | frame interval p50 {gaps[0]:.1f} ms")  # fmt: skip
        rows.append({"trace": which, "width": tr.width, "height": tr.height, "steps": tr.num_steps,
                     "widget_build_s": build, "sent_mb": size / 1e6, "kernel_p50_ms": k50, "kernel_p95_ms": k95,
                     "ready_p50_ms": r50, "ready_p95_ms": r95, "ready_max_ms": max(r["ready"] for r in out["results"]),
                     "painted_p50_ms": p50, "painted_p95_ms": p95, "missed_first_frame": missed, "presses": 500,
                     "slow_keydown_entries": len(slow), "frame_interval_p50_ms": gaps[0]})
    _json.write(args.json, "widget_latency", vars(args), rows)


if __name__ == "__main__":
    main()
