"""Explorer widget latency: browser-side frame swaps, kernel-side on-demand frames, bytes sent.

- Browser: ``player.js`` in headless Chromium with a minimal in-page model (the anywidget
  ``model`` interface: get/set/on/save_changes) holding a 50-step trace's frames; time from a slider
  ``input`` event to the new frame decoded and painted (next animation frame), p50/p95 over 500.
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

from explainer.widgets import Explorer  # noqa: E402

CHROMIUM = os.environ.get("EXPLAINER_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
PAGE_JS = """async ([esm, state, n]) => {
  const b64 = (s) => { const a = Uint8Array.from(atob(s), (c) => c.charCodeAt(0)); return new DataView(a.buffer); };
  for (const k of Object.keys(state.frames)) state.frames[k] = state.frames[k].map(b64);
  state.final = b64(state.final); state.schedule_png = b64(state.schedule_png);
  for (const k of ["emergence_png", "whatif", "detail"]) state[k] = null;
  state.overlay_maps = [];
  const handlers = {};
  const model = { get: (k) => state[k], set: (k, v) => { state[k] = v; }, save_changes: () => {},
                  on: (ev, f) => { (handlers[ev] ||= []).push(f); }, send: () => {} };
  const mod = await import(URL.createObjectURL(new Blob([esm], { type: "text/javascript" })));
  const el = document.createElement("div"); document.body.append(el);
  mod.default.render({ model, el });
  const slider = el.querySelector("input.sdx-step"), img = el.querySelector("img[data-panel='x0']");
  await new Promise((r) => setTimeout(r, 500));
  const times = [];
  for (let i = 0; i < n; i++) {
    const target = (Number(slider.value) + 1 + (i % 7)) % state.frames.x0.length;
    const t0 = performance.now();
    slider.value = String(target);
    slider.dispatchEvent(new Event("input"));
    await img.decode();
    await new Promise((r) => requestAnimationFrame(() => r()));
    times.push(performance.now() - t0);
  }
  return times;
}"""


def pct(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def browser_latency(w: Explorer, n: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    plain = (str, int, float, bool, list)
    state = {k: getattr(w, k) for k in w.keys if not k.startswith("_") and isinstance(getattr(w, k), plain)}
    state.pop("overlay_maps", None)
    enc = lambda b: base64.b64encode(bytes(b)).decode("ascii")  # noqa: E731
    state["frames"] = {k: [enc(f) for f in v] for k, v in w.frames.items()}
    state["final"], state["schedule_png"] = enc(w.final), enc(w.schedule_png)
    esm = (REPO / "explainer" / "widgets" / "player.js").read_text()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.set_content("<!DOCTYPE html><html><body></body></html>")
        times = page.evaluate(PAGE_JS, [esm, state, n])
        browser.close()
    return times


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
    args = parser.parse_args()
    for which in ["toy", "tiny512"] if args.which == "both" else [args.which]:
        tr, _ = export_speed.make_trace(which, args.steps)
        t0 = time.perf_counter()
        w = Explorer(tr)
        build = time.perf_counter() - t0
        size = sent_bytes(w)
        k50, k95 = pct(kernel_latency(w, 200))
        b50, b95 = pct(browser_latency(w, 500))
        print(f"{which}: {tr.width}x{tr.height}, {tr.num_steps} steps | widget build {build:.2f} s | sent "
              f"{size / 1e6:.2f} MB | browser slider->paint p50 {b50:.1f} ms p95 {b95:.1f} ms | kernel "
              f"step->detail (linear + overlay) p50 {k50:.1f} ms p95 {k95:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
