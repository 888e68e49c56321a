"""Batch throughput: traces per minute on the toy model, a plain loop vs ``engine="local"`` vs ``engine="ray"``.

Three ways to trace the same ``--items`` (prompt, seed) pairs, in one run, each writing a trace file and
a PNG per item into a fresh temporary folder:

- ``loop``: what a notebook does: one pipeline, ``explainer.trace`` then ``save`` in a for loop (no
  index, no resume, no error handling);
- ``local``: ``explainer.batch.run(..., engine="local")``;
- ``ray``: ``explainer.batch.run(..., engine="ray", workers=W)`` on a local Ray instance started here
  with ``--ray-cpus`` CPUs, one pipeline per actor, one torch thread per actor.

``loop`` and ``local`` each run in a fresh process at every thread count of ``--threads``, so every
engine pays the same first-trace costs (oneDNN builds its kernels on the first call) inside its
timed work, as each fresh Ray actor does. Throughput counts the items after start-up; start-up is
reported separately: loading the pipeline (loop, local) and, for Ray, starting the instance plus
starting the actors and loading their pipelines. ``--rss N`` also runs an N-item local batch in a fresh process and reports its resident
memory after every 10 items (flat means memory does not grow with the item count), at the first
thread count of ``--threads``.

Usage::

    python benchmarks/batch_throughput.py                              # 12 items, 10 steps, threads 1 and 2
    python benchmarks/batch_throughput.py --items 24 --rss 200 --json docs/data/batch_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import _json  # noqa: E402  (benchmarks/_json.py)

PROMPTS = ["a red circle on the left", "a blue square at the top", "a green triangle and a yellow circle",
           "a yellow square above a red triangle"]


def items(n: int) -> list[dict]:
    """``n`` rows: the prompts in turn, each with its own seed."""
    return [{"prompt": PROMPTS[i % len(PROMPTS)], "seed": i} for i in range(n)]


def bench_loop(rows: list[dict], steps: int, out: Path) -> dict:
    import explainer

    t0 = time.perf_counter()
    pipe = explainer.load_pipeline("toy", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, row in enumerate(rows):
        tr = explainer.trace(pipe, row["prompt"], seed=row["seed"], num_inference_steps=steps, progress=False)
        tr.save(out / f"{i}.safetensors")
        tr.final_image.save(out / f"{i}.png")
    return {"startup_s": startup, "work_s": time.perf_counter() - t0}


def bench_batch(rows: list[dict], steps: int, out: Path, **kw) -> dict:
    from explainer import batch

    report = batch.run("toy", rows, out, num_inference_steps=steps, progress=False, device="cpu", **kw)
    assert report.ok == len(rows), report.error_messages
    return {"startup_s": report.startup_seconds, "work_s": report.seconds - report.startup_seconds}


def engine_child(name: str, n: int, steps: int, threads: int, out: str) -> None:
    """Run ``loop`` or ``local`` on ``n`` items with ``threads`` torch threads; print its timings as JSON."""
    import torch

    torch.set_num_threads(threads)
    Path(out).mkdir(parents=True, exist_ok=True)
    r = bench_loop(items(n), steps, Path(out)) if name == "loop" else bench_batch(items(n), steps, Path(out))
    print(json.dumps(r))


def rss_child(n: int, steps: int, threads: int, out: str) -> None:
    """Run an ``n``-item local batch and print ``[items done, RSS MB]`` every 10 items, then the peak, as JSON."""
    import resource

    import torch

    from explainer import batch

    torch.set_num_threads(threads)

    marks = []

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6

    def on_item(rec: dict) -> None:
        assert rec["status"] == "ok", rec["error"]
        marks.append(rss_mb())

    batch.run("toy", items(n), out, num_inference_steps=steps, progress=False, device="cpu", on_item=on_item)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux -> MB (10^6 B)
    print(json.dumps({"rss_mb": [[i + 1, round(m, 1)] for i, m in enumerate(marks) if (i + 1) % 10 == 0 or i == 0],
                      "peak_rss_mb": round(peak, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=12, help="(prompt, seed) items per engine (default 12)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per trace (default 10)")
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray instance = actors (default 2)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    parser.add_argument("--rss", type=int, default=0, metavar="N", help="also measure the RSS of an N-item local batch")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures here (e.g. docs/data/batch_throughput.json)")
    parser.add_argument("--threads", default="1,2", help="torch threads of loop and local, e.g. 1,2 (default 1,2)")
    parser.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--engine-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.steps, int(args.threads), args.out)
        return
    if args.engine_child:
        engine_child(args.engine_child, args.items, args.steps, int(args.threads), args.out)
        return
    try:
        thread_counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads {args.threads!r}: give whole numbers such as 1,2")
    if args.items < 1 or args.steps < 1 or args.ray_cpus < 1 or args.rss < 0:
        parser.error("--items, --steps and --ray-cpus must be >= 1, --rss >= 0")
    _json.check_path(parser, args.json)
    rows_in = items(args.items)
    rows: list[dict] = []
    runs = [(name, t) for t in thread_counts for name in ("loop", "local")] + ([] if args.no_ray else [("ray", 1)])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, threads in runs:
            out = tmp / f"{name}-{threads}"
            if name != "ray":
                cmd = [sys.executable, __file__, "--engine-child", name, "--items", str(args.items), "--steps",
                       str(args.steps), "--threads", str(threads), "--out", str(out)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    sys.exit(f"{name} failed:\n{res.stderr[-2000:]}")
                r = json.loads(res.stdout.strip().splitlines()[-1])
                r["workers"], r["threads"] = 1, threads
            else:
                import ray

                # on a busy machine the raylet can take longer than Ray's default 60 s wait to come up
                os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
                t0 = time.perf_counter()
                ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
                ray_init = time.perf_counter() - t0
                try:
                    r = bench_batch(rows_in, args.steps, out, engine="ray", workers=args.ray_cpus)
                finally:
                    ray.shutdown()
                r["ray_init_s"] = ray_init
                r["actors_s"] = r["startup_s"]  # actors started and their pipelines loaded
                r["startup_s"] = ray_init + r["actors_s"]
                r["workers"], r["threads"] = args.ray_cpus, 1
            r["engine"] = name
            r["items"] = args.items
            r["traces_per_min"] = 60 * args.items / r["work_s"]
            rows.append(r)
            print(f"{name:>5} ({r['workers']} x {r['threads']} thread): {r['traces_per_min']:6.1f} traces/min "
                  f"({args.items} in {r['work_s']:.1f} s), start-up {r['startup_s']:.1f} s"
                  + (f" (Ray instance {r['ray_init_s']:.1f} s, actors {r['actors_s']:.1f} s)" if name == "ray" else ""),
                  flush=True)
        base = max(r["traces_per_min"] for r in rows if r["engine"] == "loop")
        for r in rows:
            r["ratio_to_best_loop"] = r["traces_per_min"] / base
        print("ratios to the fastest loop: " + ", ".join(
            f"{r['engine']} {r['workers']}x{r['threads']} {r['ratio_to_best_loop']:.2f}" for r in rows))
        if args.rss:
            cmd = [sys.executable, __file__, "--rss-child", str(args.rss), "--steps", str(args.steps),
                   "--threads", str(thread_counts[0]), "--out", str(tmp / "rss")]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rss = json.loads(res.stdout.strip().splitlines()[-1])
            marks = rss["rss_mb"]
            print(f"RSS of a {args.rss}-item local batch: " + ", ".join(f"{n}: {m:.0f} MB" for n, m in marks[:: max(1, len(marks) // 6)])
                  + f"; peak {rss['peak_rss_mb']:.0f} MB")
            rows.append({"engine": "local", "rss_items": args.rss, **rss})
    _json.write(args.json, "batch_throughput", vars(args), rows)


if __name__ == "__main__":
    main()
