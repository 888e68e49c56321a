"""Opening a ~100 MB trace file to look at one step, against reading it all.

The trace has SD 1.x's shapes at 512x512 and 50 steps (PNDM: 51 iterations), the default recording
and a long prompt (chosen so the format 4 file is about 100 MB), built by
``scripts/sd15_trace_size.py``'s ``planned_trace`` (random contents; only the shapes matter here).
Cases, each timed ``--rounds`` times in alternating order, median and min reported:

- ``one_step``: ``load_trace`` (lazy: memory-mapped arrays, quantised maps dequantised on
  indexing), then what a view of one step reads: the linear preview of x0 and of x_t and a word's
  heat map at that step;
- ``read_all``: ``load_trace``, then every array read in full (attention maps dequantised) — what
  loading cost before lazy loading, and what a view of all steps touches;
- ``file_bytes``: reading the file's bytes and nothing else, the floor of any loader that reads it all.

Both are timed warm (the file in the page cache) and cold (its pages dropped from the cache first
with ``posix_fadvise(DONTNEED)``, which needs no privileges); cold runs also report the bytes the
process read from the disk (``/proc/self/io`` ``read_bytes``).

Usage::

    python benchmarks/trace_load.py --json docs/data/trace_load.json
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "scripts"))
import _json  # noqa: E402  (benchmarks/_json.py)


def drop_cache(path: Path) -> None:
    """Ask the kernel to forget ``path``'s cached pages (clean pages only; no privileges needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def disk_reads() -> int:
    """Bytes this process has read from storage so far (page faults on memory maps included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def one_step(path: Path, step: int, word: str) -> None:
    import explainer

    tr = explainer.load_trace(path)
    tr.preview(step)
    tr.preview(step, kind="xt")
    tr.heatmap(word, step=step)


def read_all(path: Path, step: int, word: str) -> None:
    import explainer

    tr = explainer.load_trace(path)
    for arr in tr._arrays().values():
        np.array(arr, copy=True)


def file_bytes(path: Path, step: int, word: str) -> None:
    path.read_bytes()


def main() -> None:
    import explainer
    from explainer.tracing.previews import LatentRGB, SD1_LATENT_RGB_FACTORS
    from sd15_trace_size import planned_trace, sd15_on_meta

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--words", type=int, default=64, help="one-token words in the prompt (64: about 100 MB)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    _json.check_path(parser, args.json)
    pipe = sd15_on_meta()
    prompt = "a " + " ".join(["red"] * (args.words - 1))
    tr = planned_trace(pipe, prompt)
    tr.latent_rgb = LatentRGB(np.asarray(SD1_LATENT_RGB_FACTORS, np.float32), np.zeros(3, np.float32), "comfyui-sd1")
    step = tr.num_steps // 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = tr.save(Path(tmp) / "big.safetensors")
        size = path.stat().st_size
        del tr
        gc.collect()
        print(f"file {size / 1e6:.1f} MB, {len(prompt.split()) + 2} tokens, format {explainer.tracing.FORMAT_VERSION}")
        cases = {"one_step": one_step, "read_all": read_all, "file_bytes": file_bytes}
        for cache in ("warm", "cold"):
            times: dict[str, list[float]] = {k: [] for k in cases}
            reads: dict[str, list[int]] = {k: [] for k in cases}
            for r in range(args.rounds):
                for name in (list(cases) if r % 2 == 0 else list(reversed(cases))):
                    if cache == "cold":
                        drop_cache(path)
                    else:
                        path.read_bytes()  # warm the page cache
                    gc.collect()
                    before = disk_reads()
                    t0 = time.perf_counter()
                    cases[name](path, step, "red")
                    times[name].append(time.perf_counter() - t0)
                    reads[name].append(disk_reads() - before)
            medians = {k: statistics.median(v) for k, v in times.items()}
            for name in cases:
                row = {"case": name, "cache": cache, "file_mb": round(size / 1e6, 1), "rounds": args.rounds,
                       "median_ms": round(medians[name] * 1e3, 1), "min_ms": round(min(times[name]) * 1e3, 1),
                       "disk_read_mb": round(statistics.median(reads[name]) / 1e6, 1),
                       "ratio_to_read_all": round(medians[name] / medians["read_all"], 3)}  # fmt: skip
                rows.append(row)
                print(row)
    _json.write(args.json, "trace_load", vars(args), rows)


if __name__ == "__main__":
    main()
