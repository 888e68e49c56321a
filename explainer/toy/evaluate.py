"""Evaluate a model of the shapes world: caption fidelity and attention localisation.

What is held out: only the noise. Captions are drawn from the world's own distribution with an
evaluation seed that training never uses, but the world has just 276 captions and training sees all
of them; the evaluation scenes' layouts and every image's noise seed are new. Each caption goes
through a plain ``pipe(caption, num_inference_steps=25, guidance_scale=7.5)`` call with a per-image
seed, and every image is scored with :mod:`explainer.toy.checker`. Chance baselines come with the
scores (:func:`fidelity_chance`, the ``chance`` fields of :func:`localisation`).

Writes the model card's figures (``docs/data/final_eval.json``)::

    python -m explainer.toy.evaluate --out docs/data/final_eval.json            # all: about 1.6 h on one busy core
    python -m explainer.toy.evaluate --out docs/data/final_eval.json --what localisation --n-localisation 100
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .checker import caption_scores, colour_masks
from .world import parse_caption, sample_scenes

EVAL_SEED = 1_000_003  # training draws from seeds (seed * 1000 + stage); evaluation never does
GUIDANCE_CURVE = (1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0)
_FORMS = {  # caption form -> test on the caption text
    "single": lambda c: " and " not in c and " above " not in c,
    "and": lambda c: " and " in c,
    "above": lambda c: " above " in c,
}


def eval_captions(n: int, seed: int = EVAL_SEED) -> list[str]:
    """``n`` captions drawn from the world's distribution with an evaluation seed (new scenes and
    noise; the captions themselves are all seen in training, the world has only 276)."""
    return [s.caption for s in sample_scenes(n, seed, 0)]


def generate(pipe, captions: list[str], *, guidance_scale: float = 7.5, num_inference_steps: int = 25,
             seed: int = 0, batch_size: int = 64, progress: bool = True) -> list[np.ndarray]:
    """Images for ``captions``; image ``i`` uses ``torch.Generator(device).manual_seed(seed + i)``.

    Returns:
        uint8 arrays ``[H, W, 3]``.
    """
    device = pipe._execution_device
    out: list[np.ndarray] = []
    for i in tqdm(range(0, len(captions), batch_size), desc=f"generate g={guidance_scale}", disable=not progress):
        chunk = captions[i : i + batch_size]
        gens = [torch.Generator(device).manual_seed(seed + i + k) for k in range(len(chunk))]
        res = pipe(chunk, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   generator=gens, output_type="np")
        out += [(im * 255).round().astype(np.uint8) for im in res.images]
    return out


def fidelity(pipe, n: int = 128, *, guidance_scale: float = 7.5, num_inference_steps: int = 25,
             seed: int = EVAL_SEED, batch_size: int = 64, progress: bool = True) -> dict:
    """Caption fidelity on ``n`` evaluation captions (new noise seeds; see the module docstring).

    Returns:
        ``{"n", "colour", "colour_position", "shape", "all", "by_form": {...}, "chance": {...},
        "per_caption": [...]}``; rates are fractions of captions whose every named object passes;
        ``chance`` is :func:`fidelity_chance` of the same images.
    """
    caps = eval_captions(n, seed)
    imgs = generate(pipe, caps, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                    seed=seed, batch_size=batch_size, progress=progress)
    rows = [dict(caption=c, **caption_scores(im, c)) for c, im in zip(caps, imgs)]
    keys = ("colour", "colour_position", "shape", "all")
    res = {"n": n, **{k: float(np.mean([r[k] for r in rows])) for k in keys}}
    by_form: dict[str, dict] = {}
    for form, pred in _FORMS.items():
        sub = [r for r in rows if pred(r["caption"])]
        if sub:
            by_form[form] = {"n": len(sub), **{k: float(np.mean([r[k] for r in sub])) for k in keys}}
    res["by_form"] = by_form
    res["chance"] = fidelity_chance(imgs, caps)
    res["per_caption"] = rows
    return res


def fidelity_chance(images: list[np.ndarray], captions: list[str]) -> dict:
    """The shuffled-caption control: each image scored against the *next* evaluation caption
    (``captions[(i + 1) % n]``) instead of its own.

    It is how often the checker passes an image that was made for another caption of the world, the
    rate a model ignoring its caption would get. Pairs whose two captions are equal are left out.

    Returns:
        ``{"n", "colour", "colour_position", "shape", "all"}`` (fractions of the ``n`` pairs scored).
    """
    n = len(captions)
    rows = [caption_scores(images[i], captions[(i + 1) % n]) for i in range(n)
            if captions[(i + 1) % n] != captions[i]]
    keys = ("colour", "colour_position", "shape", "all")
    return {"n": len(rows), **{k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in keys}}


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def localisation_word(caption: str) -> tuple[str, str]:
    """The word whose map should land on one object, and that object's colour.

    The shape word for one-object captions; the colour word of the first object for two-object
    captions (their shape words may repeat).
    """
    targets = parse_caption(caption)
    if len(targets) == 1:
        return targets[0].shape, targets[0].colour
    return targets[0].colour, targets[0].colour


def _peaks_inside(trace, word: str, region: np.ndarray, layers=None) -> bool:
    """Whether ``word``'s global (all steps, ``layers``) map peaks inside ``region`` ``[H, W]``."""
    heat = trace.heatmap(word, layers=layers)  # [H, W] at image resolution
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(region[y, x])


def localisation_region(trace, caption: str, dilate: int = 2) -> np.ndarray:
    """The localisation word's target: its object's colour region in the final image, dilated by
    ``dilate`` pixels; boolean ``[H, W]``."""
    _, colour = localisation_word(caption)
    return _dilate(colour_masks(np.asarray(trace.final_image))[colour], dilate)


def _mass_inside(trace, word: str, region: np.ndarray, layers=None) -> float:
    """The share of ``word``'s global map (all steps, ``layers``) that falls inside ``region``:
    stricter than a peak, it also counts a second blob elsewhere."""
    heat = trace.heatmap(word, layers=layers).astype(np.float64)  # [H, W]
    total = heat.sum()
    return float(heat[region].sum() / total) if total > 0 else 0.0


def attention_peak_hit(trace, caption: str, dilate: int = 2, layers=None) -> bool:
    """Whether the global (all steps, ``layers``) map of the caption's localisation word peaks
    inside its object's colour region in the final image, dilated by ``dilate`` pixels."""
    word, _ = localisation_word(caption)
    return _peaks_inside(trace, word, localisation_region(trace, caption, dilate), layers)


def object_word_regions(trace, caption: str, dilate: int = 2) -> dict[str, np.ndarray]:
    """Every object word that occurs once in the caption → its own object's colour region in the
    final image, dilated by ``dilate`` pixels (boolean ``[H, W]``)."""
    masks = colour_masks(np.asarray(trace.final_image))
    words = caption.split()
    return {word: _dilate(masks[obj.colour], dilate) for obj in parse_caption(caption)
            for word in (obj.colour, obj.shape) if words.count(word) == 1}


def object_word_hits(trace, caption: str, dilate: int = 2, layers=None) -> dict[str, bool]:
    """For every object word that occurs once in the caption (each colour and shape word), whether its
    global map peaks inside its own object's colour region (dilated by ``dilate`` pixels).

    Stricter than :func:`attention_peak_hit`: it also asks the words of the second object of a
    two-object caption to land on that object.
    """
    return {word: _peaks_inside(trace, word, region, layers)
            for word, region in object_word_regions(trace, caption, dilate).items()}


def localisation(pipe, n: int = 100, *, guidance_scale: float = 7.5, num_inference_steps: int = 25,
                 seed: int = EVAL_SEED, dilate: int = 2, layers=None, compare: tuple = ("all", "daam"),
                 progress: bool = True) -> dict:
    """Attention localisation on ``n`` evaluation captions, traced with :func:`explainer.trace`.

    Args:
        layers: the layer selection of the headline scores (``None``: the package's default).
        compare: further layer selections (see :func:`explainer.tracing.attention.resolve_layers`)
            scored on the same traces, e.g. with and without the UNet mid-block.

    Returns:
        ``{"n", "localisation", "object_words", "by_form", "chance", "conventions", "per_caption"}``:
        ``object_words`` is the stricter share of all object words that peak on their own object
        (:func:`object_word_hits`); ``object_word_mass`` the mean share of each object word's map
        inside its own object; ``chance`` is what a uniformly random peak (or a flat map) would reach:
        the mean share of the image the dilated target regions cover; ``conventions`` holds these
        scores for each selection in ``compare``.
    """
    from ..tracing import trace as trace_run

    caps = eval_captions(n, seed)
    choices = {"default": layers, **{str(c): c for c in compare}}
    rows = []
    for i, cap in enumerate(tqdm(caps, desc="localisation", disable=not progress)):
        tr = trace_run(pipe, cap, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                       seed=seed + i, progress=False)
        regions = object_word_regions(tr, cap, dilate)
        row = {"caption": cap, "area": float(localisation_region(tr, cap, dilate).mean()),
               "word_areas": {w: float(r.mean()) for w, r in regions.items()}}
        for name, sel in choices.items():
            row[name] = {"hit": attention_peak_hit(tr, cap, dilate, sel),
                         "word_hits": {w: _peaks_inside(tr, w, r, sel) for w, r in regions.items()},
                         "word_mass": {w: _mass_inside(tr, w, r, sel) for w, r in regions.items()}}
        rows.append(row)

    def scores(name: str) -> dict:
        return {"localisation": float(np.mean([r[name]["hit"] for r in rows])),
                "object_words": float(np.mean([h for r in rows for h in r[name]["word_hits"].values()])),
                "object_word_mass": float(np.mean([h for r in rows for h in r[name]["word_mass"].values()])),
                "by_form": {f: float(np.mean([r[name]["hit"] for r in rows if pred(r["caption"])]))
                            for f, pred in _FORMS.items() if any(pred(r["caption"]) for r in rows)}}

    res = {"n": n, **scores("default")}
    res["chance"] = {"localisation": float(np.mean([r["area"] for r in rows])),
                     "object_words": float(np.mean([a for r in rows for a in r["word_areas"].values()]))}
    res["conventions"] = {str(c): scores(str(c)) for c in compare}
    res["per_caption"] = [{"caption": r["caption"], "hit": r["default"]["hit"], "word_hits": r["default"]["word_hits"],
                           **{str(c): {"hit": r[str(c)]["hit"]} for c in compare}} for r in rows]
    return res


def _model_info(model: str) -> dict:
    """The ``model`` / ``fine_tune`` provenance fields from an exported model's ``training.json``."""
    import json
    from pathlib import Path

    info_file = Path(model) / "training.json"
    if not info_file.is_file():
        return {"model": str(model)}
    info = json.loads(info_file.read_text())
    base = (info.get("history") or [info])[0]
    out = {"model": str(model), "step": base.get("stage2_steps"), "vae_step": base.get("vae_steps"),
           "minutes": base.get("train_minutes")}
    if info.get("history"):
        out["fine_tune"] = {"steps": info.get("stage2_steps"), "minutes": info.get("train_minutes"),
                            "blend_alpha": (info.get("blend") or {}).get("alpha")}
    return out


WHAT = ("fidelity", "guidance", "localisation")


def main(argv: list[str] | None = None) -> int:
    """``python -m explainer.toy.evaluate --out FILE.json``: measure a toy model and merge the figures into FILE."""
    import argparse
    import json
    import time
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m explainer.toy.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write; fields already there that this run does not "
                   "measure are kept")
    p.add_argument("--model", default="toy", help="'toy' (assets/toy) or an exported model folder")
    p.add_argument("--what", default=",".join(WHAT), help=f"comma-separated subset of {','.join(WHAT)} "
                   "(fidelity: guidance 7.5; guidance: the other scales of the curve)")
    p.add_argument("--n-fidelity", type=int, default=256, help="captions at guidance 7.5 (default 256)")
    p.add_argument("--n-guidance", type=int, default=128, help="captions per other guidance scale (default 128)")
    p.add_argument("--n-localisation", type=int, default=100, help="traced captions (default 100)")
    p.add_argument("--guidance", default=",".join(str(g) for g in GUIDANCE_CURVE if g != 7.5),
                   help="the curve's other scales")
    p.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    what = [w.strip() for w in a.what.split(",") if w.strip()]
    bad = [w for w in what if w not in WHAT]
    if bad or not what:
        p.error(f"--what {a.what!r}: allowed are {', '.join(WHAT)} (comma-separated)")
    for name in ("n_fidelity", "n_guidance", "n_localisation", "steps"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    try:
        scales = [float(g) for g in a.guidance.split(",") if g.strip()]
    except ValueError:
        p.error(f"--guidance {a.guidance!r}: expected comma-separated numbers such as 1,2,3")
    if any(not g >= 1.0 for g in scales):
        p.error(f"--guidance {a.guidance!r}: scales must be >= 1")
    out = Path(a.out)
    if out.is_dir() or (out.parent != Path("") and not out.parent.is_dir()):
        p.error(f"--out {a.out!r}: not a file in an existing folder")
    try:
        data = json.loads(out.read_text()) if out.exists() else {}
    except json.JSONDecodeError as e:
        p.error(f"--out {a.out!r} exists but is not JSON ({e})")
    from ..models import load_pipeline

    try:
        pipe = load_pipeline(a.model, device=a.device)
    except (OSError, ValueError, TypeError) as e:
        p.error(f"--model {a.model!r}: {e}")
    pipe.set_progress_bar_config(disable=True)
    model_dir = Path(__file__).resolve().parents[2] / "assets" / "toy" if a.model == "toy" else Path(a.model)
    info = _model_info(str(model_dir))
    info["model"] = "assets/toy" if a.model == "toy" else a.model
    data.update({k: v for k, v in info.items() if k != "fine_tune"})
    if "fine_tune" in info:
        data["fine_tune"] = {**data.get("fine_tune", {}), **info["fine_tune"]}
    data["num_inference_steps"] = a.steps
    progress = not a.no_progress
    t0 = time.time()
    measured: dict = {}
    if "localisation" in what:
        loc = localisation(pipe, a.n_localisation, num_inference_steps=a.steps, progress=progress)
        measured["localisation"] = {k: v for k, v in loc.items() if k != "per_caption"}
    curve: dict = {}
    todo = ([7.5] if "fidelity" in what else []) + (scales if "guidance" in what else [])
    for g in todo:
        r = fidelity(pipe, n=a.n_fidelity if g == 7.5 else a.n_guidance, guidance_scale=g,
                     num_inference_steps=a.steps, progress=progress)
        curve[str(g)] = {k: v for k, v in r.items() if k != "per_caption"}
    # merge into the file as it is now (another --what may have written it meanwhile)
    now = json.loads(out.read_text()) if out.exists() else {}
    data = {**now, **{k: v for k, v in data.items() if k not in ("guidance_curve", "timing")}, **measured}
    curve = {**now.get("guidance_curve", {}), **curve}
    data["guidance_curve"] = {k: curve[k] for k in sorted(curve, key=float)}
    data.setdefault("timing", {})["+".join(what)] = {"minutes": round((time.time() - t0) / 60, 2),
                                                     "device": a.device, "torch_threads": torch.get_num_threads()}
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out} ({', '.join(what)}; {(time.time() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
