"""The live page (``explainer live``) in headless Chromium, WASM backend: size, speed, and parity with Python.

Measures, on this machine:

- the page's size: every file of the folder ``explainer.live.build_page`` writes (target <= 40 MB);
- a cold load (a fresh browser, the page opened from ``file://``, every non-file request aborted): time to
  the first x̂0 frame shown and to the first final image, over ``--rounds`` loads (target <= 10 s);
- 25 steps with guidance (``--guidance``): the whole run as the page shows it (UNet on both branches, linear
  latent→RGB previews of x_t and x̂0 and the guided output every step, handed to the player, then the final
  image's VAE decode), the time until the page has also replaced every step's x̂0 preview by its VAE decode
  (done after the run, while nothing else runs), and the same run drawing nothing, over ``--rounds`` runs
  (target <= 5 s for the run as shown);
- parity: for ``--captions`` evaluation captions (seed ``--seed + i``) the page's final image against
  ``explainer.trace``'s for the same caption, seed, steps and guidance: mean absolute difference in grey
  levels (target <= 2), and the toy's checker (explainer/toy/checker.py) on both sets of images:
  colour+position and shape rates (target: within 3 points).

Run it alone (the browser and PyTorch share the cores): ``nice python benchmarks/live_page.py --json
docs/data/live_page.json``. PyTorch runs with one thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]

import _browser  # noqa: E402
import _json  # noqa: E402
import numpy as np  # noqa: E402

READY = "() => { const L = self.SDXLive && self.SDXLive.live; return !!(L && L.state.run && L.model.get('can_run')); }"


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def open_page(browser, index: Path):
    """A fresh context with every non-file request aborted (and counted), the page opened from file://."""
    errors: list[str] = []
    context = browser.new_context()
    blocked = _browser.block_network(context)  # file: only
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(index.as_uri())
    return context, page, blocked, errors


def cold_loads(browser, index: Path, rounds: int) -> list[dict]:
    out = []
    for _ in range(rounds):
        context, page, blocked, errors = open_page(browser, index)
        page.wait_for_function(READY, timeout=180_000)
        marks = page.evaluate("() => self.SDXLive.live.marks")
        out.append({"first_frame_s": marks["firstFrame"] / 1000, "first_final_s": marks["firstFinal"] / 1000,
                    "models_loaded_s": marks["loaded"] / 1000, "blocked": len(blocked), "errors": errors})  # fmt: skip
        context.close()
    return out


def timed_runs(page, steps: int, guidance: float, rounds: int) -> dict:
    shown, decoded, bare = [], [], []
    page.evaluate("async () => { const r = self.SDXLive.live.state.run; if (r) await r.allDecoded; }")  # the first run's
    for k in range(rounds):
        s = {"prompt": "a red circle above a blue square", "seed": 100 + k, "steps": steps, "guidance": guidance}
        a, b = page.evaluate("async (s) => { const t = performance.now(); const run = await self.SDXLive.live.run(s); "
                             "const a = (performance.now() - t) / 1000; await run.allDecoded; "
                             "return [a, (performance.now() - t) / 1000]; }", s)  # fmt: skip
        shown.append(a)
        decoded.append(b)
        bare.append(page.evaluate("async (s) => { const t = performance.now(); await self.SDXLive.live.generate(s); "
                                  "return (performance.now() - t) / 1000; }", s))  # fmt: skip
    return {"shown_s": shown, "decoded_s": decoded, "bare_s": bare}


def page_images(page, captions: list[str], seed: int, steps: int, guidance: float) -> list[np.ndarray]:
    images = []
    for i, caption in enumerate(captions):
        s = {"prompt": caption, "seed": seed + i, "steps": steps, "guidance": guidance}
        rgba = page.evaluate("async (s) => Array.from((await self.SDXLive.live.generate(s)).final)", s)
        side = int(round((len(rgba) // 4) ** 0.5))
        images.append(np.asarray(rgba, np.uint8).reshape(side, side, 4)[..., :3])
        print(f"  page image {i + 1}/{len(captions)}", flush=True)
    return images


def python_images(captions: list[str], seed: int, steps: int, guidance: float) -> list[np.ndarray]:
    import explainer

    pipe = explainer.load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    out = []
    for i, caption in enumerate(captions):
        tr = explainer.trace(pipe, caption, seed=seed + i, num_inference_steps=steps, guidance_scale=guidance,
                             record="none", progress=False)  # fmt: skip
        out.append(np.asarray(tr.final_image.convert("RGB"), np.uint8))
        print(f"  Python image {i + 1}/{len(captions)}", flush=True)
    return out


def checker_rates(images: list[np.ndarray], captions: list[str]) -> dict:
    from explainer.toy.checker import caption_scores

    scores = [caption_scores(im, c) for im, c in zip(images, captions, strict=True)]
    return {k: float(np.mean([s[k] for s in scores])) for k in ("colour", "colour_position", "shape", "all")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="cold loads and timed runs (default 3)")
    parser.add_argument("--captions", type=int, default=50, help="captions for parity and the checker (default 50)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=1000, help="caption i uses seed SEED + i (default 1000)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the figures here (docs/data/live_page.json)")
    args = parser.parse_args()
    _json.check_path(parser, args.json)
    from playwright.sync_api import sync_playwright

    from explainer.live import build_page
    from explainer.toy.evaluate import eval_captions

    chromium, why = _browser.find_chromium()
    if chromium is None:
        raise SystemExit(f"live_page: needs Chromium: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        index = build_page(Path(tmp) / "live")
        folder = index.parent
        size = folder_size(folder)
        biggest = sorted(((f.stat().st_size, f.relative_to(folder).as_posix()) for f in folder.rglob("*") if f.is_file()), reverse=True)[:6]
        print(f"page: {size / 1e6:.1f} MB in {sum(1 for f in folder.rglob('*') if f.is_file())} files; biggest "
              + ", ".join(f"{n} {b / 1e6:.1f} MB" for b, n in biggest))
        captions = eval_captions(args.captions)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=_browser.CHROMIUM_ARGS)
            loads = cold_loads(browser, index, args.rounds)
            for r in loads:
                print(f"cold load: models {r['models_loaded_s']:.2f} s, first x0 frame {r['first_frame_s']:.2f} s, "
                      f"first final image {r['first_final_s']:.2f} s, blocked requests {r['blocked']}, console errors {len(r['errors'])}")
            context, page, blocked, errors = open_page(browser, index)
            page.wait_for_function(READY, timeout=180_000)
            backend = page.evaluate("() => self.SDXLive.live.state.rt.backend")
            load_before = os.getloadavg()[0]
            runs = timed_runs(page, args.steps, args.guidance, args.rounds)
            load_after = os.getloadavg()[0]
            print(f"{args.steps} steps, g {args.guidance}: shown {runs['shown_s']} s; every x0 decoded {runs['decoded_s']} s; "
                  f"drawing nothing {runs['bare_s']} s")
            t0 = time.perf_counter()
            web = page_images(page, captions, args.seed, args.steps, args.guidance)
            web_s = time.perf_counter() - t0
            assert not blocked and not errors, (blocked, errors)
            context.close()
            browser.close()
    t0 = time.perf_counter()
    py = python_images(captions, args.seed, args.steps, args.guidance)
    py_s = time.perf_counter() - t0
    diffs = [float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) for a, b in zip(web, py, strict=True)]
    maxes = [int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(web, py, strict=True)]
    rates_web, rates_py = checker_rates(web, captions), checker_rates(py, captions)
    print(f"parity over {len(captions)} captions: mean abs difference per image: median {statistics.median(diffs):.3f}, "
          f"max {max(diffs):.3f} grey levels (largest single pixel difference {max(maxes)}); page {web_s:.0f} s, Python {py_s:.0f} s")
    for k in rates_web:
        print(f"checker {k}: page {100 * rates_web[k]:.1f} %, Python {100 * rates_py[k]:.1f} %")
    figures = {
        "backend": backend,
        "size_mb": size / 1e6,
        "files": {n: b for b, n in biggest},
        "cold_first_frame_s": statistics.median(r["first_frame_s"] for r in loads),
        "cold_first_final_s": statistics.median(r["first_final_s"] for r in loads),
        "cold_models_loaded_s": statistics.median(r["models_loaded_s"] for r in loads),
        "cold_loads": loads,
        "steps": args.steps,
        "guidance": args.guidance,
        "run_shown_s": statistics.median(runs["shown_s"]),
        "run_decoded_s": statistics.median(runs["decoded_s"]),
        "run_bare_s": statistics.median(runs["bare_s"]),
        "run_shown_over_bare": statistics.median(a / b for a, b in zip(runs["shown_s"], runs["bare_s"], strict=True)),
        "runs": runs,
        "load_average_timed_runs": [round(load_before, 2), round(load_after, 2)],  # 1-minute load, before and after
        "parity_captions": len(captions),
        "parity_mean_abs_median": statistics.median(diffs),
        "parity_mean_abs_max": max(diffs),
        "parity_pixel_max": max(maxes),
        "parity_per_caption": [{"caption": c, "seed": args.seed + i, "mean_abs": d, "max": m}
                               for i, (c, d, m) in enumerate(zip(captions, diffs, maxes, strict=True))],  # fmt: skip
        "checker_page": rates_web,
        "checker_python": rates_py,
        "checker_gap_points": {k: 100 * abs(rates_web[k] - rates_py[k]) for k in rates_web},
    }
    if args.json:
        data = {"benchmark": "live_page", "command": " ".join(["python", *sys.argv]), "args": vars(args),
                "machine": _json.machine(), "date": time.strftime("%Y-%m-%d"), **figures}  # fmt: skip
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
