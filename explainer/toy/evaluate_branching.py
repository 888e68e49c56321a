"""Measure forks and prompt-to-prompt edits on the toy model (writes ``docs/data/branching*.json``).

- **Tuning**: the settings of :data:`TUNE_GRID` on ``n_tune`` colour swaps of another scene seed; the
  defaults of :func:`explainer.edit` are the best there.
- **Colour swaps**: ``n`` two-object captions (the tuning captions left out); the first object's colour is
  swapped for one the caption does not use ("a red circle above a blue square" -> "a green circle ...").
  Each is edited with prompt-to-prompt (word swap, the defaults) and, as the baseline, re-run with the
  target prompt and the same seed. Per case: is the new colour there (the toy checker), and the IoU of each
  object's colour mask in the source vs the output (the swapped object under its new colour), averaged
  over the two objects.
- **Commitment**: ``n_commit`` captions, forked at every ``stride``-th step with a colour swap (or, with
  ``commit-position``, the two objects' places exchanged); the commitment step is the first fork step
  from which no fork follows the new prompt (every object's colour in its place), and ``summary`` holds
  per caption the last fork step at which the change still takes, and its median.
- **Fork cost**: seconds of a fork at step k as a fraction of a full traced run, for DDIM (restored
  prefix) and DPM++ (recomputed prefix), median of ``repeats``.

Run: the commands that made the docs' figures are listed in ``docs/branching.md`` ("Regenerating the
figures"); ``--checkpoint`` keeps the running means of a long part, ``--shard I/M`` and ``--merge`` split
the swap part over processes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..tracing import edit, trace
from .checker import check_image, colour_masks
from .world import COLOURS, parse_caption, sample_scenes

EVAL_SEED = 2024
TUNE_SEED = 7  # the tuning captions' seed; the held-out swap set leaves their captions out


def swap_cases(n: int, seed: int = EVAL_SEED, exclude: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, str, str, str]]:
    """``(source, target, old colour, new colour)`` for ``n`` two-object captions of the world.

    Args:
        n: how many cases.
        seed: the scene sampler's seed.
        exclude: source captions to leave out (the tuning set, when drawing the held-out one).
    """
    rng = np.random.default_rng(seed)
    cases = []
    stream = 0
    while len(cases) < n:
        for scene in sample_scenes(64, seed, stream):
            if len(scene.objects) != 2 or len(cases) >= n or scene.caption in exclude:
                continue
            a, b = scene.objects
            choices = [c for c in COLOURS if c not in (a.colour, b.colour)]
            new = str(rng.choice(choices))
            target = scene.caption.replace(f"a {a.colour} {a.shape}", f"a {new} {a.shape}", 1)
            cases.append((scene.caption, target, a.colour, new))
        stream += 1
    return cases


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def swap_measures(source_img: Any, output_img: Any, source: str, target: str) -> dict[str, float]:
    """New colour present (checker), the other object kept, and the mean object-mask IoU source vs output."""
    src_masks, out_masks = colour_masks(np.asarray(source_img)), colour_masks(np.asarray(output_img))
    (s1, s2), (t1, t2) = parse_caption(source), parse_caption(target)
    checks = check_image(np.asarray(output_img), target)
    ious = [iou(src_masks[s1.colour], out_masks[t1.colour]), iou(src_masks[s2.colour], out_masks[t2.colour])]
    return {"new_colour": float(checks[0].colour), "other_kept": float(checks[1].colour and checks[1].position),
            "iou": float(np.mean(ious)), "iou_swapped": ious[0], "iou_other": ious[1]}  # fmt: skip


#: The settings compared on the tuning captions. The defaults of :func:`explainer.edit` are the best of
#: them there (highest mean IoU among those with the new colour in >= 85 % of cases).
TUNE_GRID: dict[str, dict[str, Any]] = {
    "maps_only": {"cross_steps": 0.8, "self_steps": 0.4, "keep_context": False},
    "keep_context": {"cross_steps": 0.8, "self_steps": 0.4, "keep_context": True},
    "keep_context_cross_0.6": {"cross_steps": 0.6, "self_steps": 0.4, "keep_context": True},
}


def _settings(pipe: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """``edit()`` keywords: ``self_max_positions="quarter"`` is a quarter of the latent's positions."""
    out = dict(settings)
    if out.get("self_max_positions") == "quarter":
        from ..tracing.families import family_for

        fam = family_for(pipe)
        _, h, w = fam.latent_shape(pipe, *fam.default_size(pipe))
        out["self_max_positions"] = h * w // 4
    return out


def _means(vals: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(float(np.mean([v[key] for v in vals])), 4) for key in vals[0]}


def tune_eval(pipe: Any, n: int, steps: int, progress: bool, checkpoint: Path | None = None) -> dict[str, Any]:
    """Every setting of :data:`TUNE_GRID` on ``n`` tuning captions (another seed than the held-out set)."""
    cases = swap_cases(n, TUNE_SEED)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in TUNE_GRID}
    for source, target, _, _ in tqdm(cases, desc="tuning", disable=not progress):
        for name, settings in TUNE_GRID.items():
            res = edit(pipe, source, target, mode="replace", num_inference_steps=steps, seed=0, record="none",
                       progress=False, **_settings(pipe, settings))  # fmt: skip
            rows[name].append(swap_measures(res.source.final_image, res.target.final_image, source, target))
        if checkpoint is not None:  # the running means, for a long run on a busy machine
            checkpoint.write_text(json.dumps({"done": len(rows["keep_context"]),
                                              **{k: _means(v) for k, v in rows.items()}}) + "\n")  # fmt: skip
            # (--tune-checkpoint turns this file into the tuning part when a run is cut short)
    return tune_summary({name: _means(vals) for name, vals in rows.items()}, len(cases), n)


def tune_summary(means: dict[str, dict[str, float]], done: int, n: int) -> dict[str, Any]:
    """The tuning part: each setting's means over the ``done`` cases and the best (colour >= 85 %, highest IoU)."""
    results = {name: {"settings": TUNE_GRID[name], **vals} for name, vals in means.items()}
    ok = {name: r for name, r in results.items() if r["new_colour"] >= 0.85}
    best = max(ok, key=lambda name: ok[name]["iou"]) if ok else None
    return {"n": n, "done": done, "seed": TUNE_SEED, "captions": [c[0] for c in swap_cases(n, TUNE_SEED)][:done],
            "results": results, "best": best}  # fmt: skip


def p2p_eval(pipe: Any, n: int, steps: int, progress: bool, n_tune: int = 0, checkpoint: Path | None = None,
             shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:  # fmt: skip
    """Prompt-to-prompt with :func:`explainer.edit`'s defaults vs a same-seed re-run, on ``n`` held-out cases.

    ``shard=(i, m)`` runs cases ``i, i + m, ...`` only (``--merge`` joins the shards' files).
    """
    exclude = {c[0] for c in swap_cases(n_tune, TUNE_SEED)} if n_tune else set()
    cases = swap_cases(n, EVAL_SEED, exclude)[shard[0] :: shard[1]]
    meta: dict[str, Any] = {"n": n, "num_inference_steps": steps, "held_out_from_tuning": n_tune}
    rows: list[dict[str, Any]] = []
    for source, target, _, _ in tqdm(cases, desc="colour swaps", disable=not progress):
        res = edit(pipe, source, target, mode="replace", num_inference_steps=steps, seed=0, record="none", progress=False)
        rerun = trace(pipe, target, num_inference_steps=steps, seed=0, scheduler=res.source.metadata["scheduler"]["name"],
                      record="none", progress=False)  # fmt: skip
        meta.update({k: v for k, v in res.settings.items() if k in ("cross_steps", "self_steps", "self_max_positions",
                                                                    "self_both_halves", "keep_context")})  # fmt: skip
        rows.append({"source": source, "target": target,
                     "p2p": swap_measures(res.source.final_image, res.target.final_image, source, target),
                     "rerun": swap_measures(res.source.final_image, rerun.final_image, source, target)})  # fmt: skip
        if checkpoint is not None:  # the part so far, for a long run on a busy machine (--merge reads it)
            checkpoint.write_text(json.dumps({"colour_swap": swap_summary(meta, rows)}, indent=1) + "\n")
    return swap_summary(meta, rows)


def swap_summary(meta: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the cases done (``done``), with the per-case measures kept under ``cases``."""
    out: dict[str, Any] = {**meta, "done": len(rows)}
    for name in ("p2p", "rerun"):
        vals = [r[name] for r in rows]
        out[name] = _means(vals)
        out[name]["iou_at_least_0.8"] = round(float(np.mean([v["iou"] >= 0.8 for v in vals])), 4)
    out["cases"] = rows
    return out


def merge(paths: list[Path]) -> dict[str, Any]:
    """Join the ``colour_swap`` parts of shard files into one (their settings must agree)."""
    parts = [json.loads(p.read_text())["colour_swap"] for p in paths]
    keys = ("n", "num_inference_steps", "held_out_from_tuning", "cross_steps", "self_steps", "self_max_positions",
            "self_both_halves", "keep_context")  # fmt: skip
    meta = {k: parts[0].get(k) for k in keys}
    for p, part in zip(paths, parts):
        if {k: part.get(k) for k in keys} != meta:
            raise ValueError(f"{p} was run with other settings than {paths[0]}")
    return swap_summary(meta, [row for part in parts for row in part["cases"]])


def position_swap(caption: str) -> str:
    """The same two objects with their places exchanged: "a red circle above a blue square" -> "a blue square above a red circle"."""
    for rel in (" above ", " and "):
        if rel in caption:
            first, second = caption.split(rel)
            return f"{second}{rel}{first}"
    raise ValueError(f"{caption!r} is not a two-object caption")


def commitment_eval(pipe: Any, n: int, steps: int, stride: int, progress: bool, change: str = "colour") -> dict[str, Any]:
    from ..views.commitment import commitment_scores

    fork_steps = list(range(0, steps, stride))
    per_caption = []
    cases = swap_cases(n, EVAL_SEED + 1)
    if change == "position":
        cases = [(src, position_swap(src), "", "") for src, *_ in cases]
    for source, target, _, _ in tqdm(cases, desc=f"commitment ({change})", disable=not progress):
        parent = trace(pipe, source, num_inference_steps=steps, seed=0, scheduler="ddim",
                       record={"dtype": "float32", "attention": "none"}, progress=False)  # fmt: skip
        data = commitment_scores(parent, target, steps=fork_steps, pipe=pipe)
        per_caption.append({"source": source, "target": target, "new": data["new"],
                            "commitment_step": data["commitment_step"]})  # fmt: skip
    committed = [c["commitment_step"] for c in per_caption]
    known = [c for c in committed if c is not None]
    mean_curve = np.mean([c["new"] for c in per_caption], axis=0)
    out = {
        "n": n,
        "change": change,
        "num_inference_steps": steps,
        "scheduler": "ddim",
        "fork_steps": fork_steps,
        "follows_new_prompt_by_fork_step": [round(float(v), 4) for v in mean_curve],
        "median_commitment_step": float(np.median(known)) if known else None,
        "never_committed": len(committed) - len(known),
        "per_caption": per_caption,
    }
    out["summary"] = commitment_summary(out)
    return out


def commitment_summary(part: dict[str, Any]) -> dict[str, Any]:
    """The last fork step at which the change still takes, per caption and its median (from ``commitment_eval``).

    A caption's ``last_step_taking`` is the latest fork step whose branch follows the new prompt fully (every
    object's colour in its place); the change no longer takes after it, or (if it is the last fork step
    tested) not within the forks tested.
    """
    steps = part["fork_steps"]
    last = []
    for row in part["per_caption"]:
        took = [s for s, v in zip(steps, row["new"]) if v >= 1.0]
        last.append(max(took) if took else None)
    known = [v for v in last if v is not None]
    return {"last_step_taking": last,
            "median_last_step_taking": float(np.median(known)) if known else None,
            "takes_at_last_fork_step": round(float(np.mean([v == steps[-1] for v in last])), 4),
            "last_fork_step": steps[-1], "num_inference_steps": part["num_inference_steps"]}  # fmt: skip


def summarise(path: Path) -> None:
    """Add :func:`commitment_summary` to the commitment parts of an existing results file (in place)."""
    data = json.loads(path.read_text())
    for key in ("commitment", "commitment_position"):
        if key in data:
            data[key]["summary"] = commitment_summary(data[key])
    path.write_text(json.dumps(data, indent=1) + "\n")


def cost_eval(pipe: Any, steps: int, fork_at: list[int], repeats: int, progress: bool) -> dict[str, Any]:
    out = {}
    prompt = "a red circle above a blue square"
    for name in tqdm(("ddim", "dpm++"), desc="fork cost", disable=not progress):
        record = {"dtype": "float32"}
        full, forks = [], {k: [] for k in fork_at}
        for _ in range(repeats):
            t0 = time.perf_counter()
            parent = trace(pipe, prompt, num_inference_steps=steps, seed=0, scheduler=name, record=record, progress=False)
            full.append(time.perf_counter() - t0)
            for k in fork_at:
                t0 = time.perf_counter()
                child = parent.fork(k, prompt="a green circle above a blue square", pipe=pipe, progress=False)
                forks[k].append(time.perf_counter() - t0)
        base = float(np.median(full))
        out[name] = {"prefix": child.metadata["fork"]["prefix"], "full_run_s": round(base, 3),
                     "fraction_of_full_run": {str(k): round(float(np.median(v)) / base, 3) for k, v in forks.items()}}  # fmt: skip
    return {"num_inference_steps": steps, "repeats": repeats, "schedulers": out}


def main(argv: list[str] | None = None) -> int:
    """``python -m explainer.toy.evaluate_branching --out FILE.json``."""
    parser = argparse.ArgumentParser(prog="python -m explainer.toy.evaluate_branching", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50, help="colour-swap edits (default 50)")
    parser.add_argument("--n-commit", type=int, default=20, help="captions for the commitment step (default 20)")
    parser.add_argument("--n-tune", type=int, default=10, help="tuning captions, left out of the swap set (default 10)")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (default 25, the toy's)")
    parser.add_argument("--stride", type=int, default=2, help="fork every this many steps (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (default 3)")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--summarise", type=Path, nargs="+",
                        help="only add the commitment summary to these existing results files (no runs)")  # fmt: skip
    parser.add_argument("--only", choices=["tune", "swap", "commit", "commit-position", "cost"], action="append",
                        help="run only these parts (repeatable; default swap, commit and cost)")  # fmt: skip
    parser.add_argument("--checkpoint", type=Path, help="write the running means here after every case")
    parser.add_argument("--shard", default="0/1", help="I/M: run only every M-th swap case from the I-th (default 0/1)")
    parser.add_argument("--tune-checkpoint", type=Path, help="write the tuning part from this --checkpoint file to --out")
    parser.add_argument("--merge", type=Path, nargs="+", help="join these shard (or checkpoint) files into --out")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.summarise:
        for path in args.summarise:
            summarise(path)
        return 0
    if args.out is None:
        parser.error("--out is required")
    if args.tune_checkpoint:  # a tuning run cut short: its means so far
        ck = json.loads(args.tune_checkpoint.read_text())
        part = tune_summary({name: ck[name] for name in TUNE_GRID}, int(ck["done"]), args.n_tune)
        args.out.write_text(json.dumps({"model": "toy", "num_inference_steps": args.steps, "tuning": part}, indent=1) + "\n")
        return 0
    if args.merge:
        args.out.write_text(json.dumps({"model": "toy", "machine": "2 CPU cores shared with other jobs (loaded)",
                                        "shards": len(args.merge), "colour_swap": merge(args.merge)}, indent=1) + "\n")
        return 0
    shard = tuple(int(v) for v in args.shard.split("/"))
    from ..models import load_pipeline

    pipe = load_pipeline("toy")
    progress = not args.quiet
    parts = args.only or ["swap", "commit", "cost"]
    res: dict[str, Any] = {}
    res.update({"model": "toy", "device": str(pipe._execution_device), "torch_threads": torch.get_num_threads(),
                "machine": "2 CPU cores shared with other jobs (loaded)"})  # fmt: skip
    seconds = res.setdefault("seconds", {})
    steps = args.steps
    runs = {
        "tune": ("tuning", lambda: tune_eval(pipe, args.n_tune, steps, progress, args.checkpoint)),
        "swap": ("colour_swap", lambda: p2p_eval(pipe, args.n, steps, progress, args.n_tune, args.checkpoint,
                                                 shard)),  # fmt: skip
        "commit": ("commitment", lambda: commitment_eval(pipe, args.n_commit, steps, args.stride, progress)),
        "commit-position": ("commitment_position", lambda: commitment_eval(pipe, args.n_commit, steps, args.stride,
                                                                           progress, change="position")),
        "cost": ("fork_cost", lambda: cost_eval(pipe, steps, [steps // 4, steps // 2, 3 * steps // 4], args.repeats,
                                                progress)),  # fmt: skip
    }
    for part in parts:
        key, work = runs[part]
        start = time.perf_counter()
        res[key] = work()
        seconds[key] = round(time.perf_counter() - start, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "commitment"}, indent=1))
    if "commitment" in res:
        print("median commitment step:", res["commitment"]["median_commitment_step"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
