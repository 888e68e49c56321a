"""Evaluate a model of the shapes world: caption fidelity and attention localisation.

Fidelity draws held-out scenes (an evaluation seed never used in training), asks the pipeline for
each caption with a plain ``pipe(caption, num_inference_steps=25, guidance_scale=7.5)`` call and a
per-image seed, and scores every image with :mod:`explainer.toy.checker`.
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
    """``n`` held-out captions drawn from the world's distribution."""
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
    """Caption fidelity on ``n`` held-out captions.

    Returns:
        ``{"n", "colour", "colour_position", "shape", "all", "by_form": {...}, "per_caption": [...]}``;
        rates are fractions of captions whose every named object passes.
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
    res["per_caption"] = rows
    return res


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


def _peaks_inside(trace, word: str, region: np.ndarray) -> bool:
    """Whether ``word``'s global (all steps, all layers) map peaks inside ``region`` ``[H, W]``."""
    heat = trace.heatmap(word)  # [H, W] at image resolution
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(region[y, x])


def attention_peak_hit(trace, caption: str, dilate: int = 2) -> bool:
    """Whether the global (all steps, all layers) map of the caption's localisation word peaks
    inside its object's colour region in the final image, dilated by ``dilate`` pixels."""
    word, colour = localisation_word(caption)
    return _peaks_inside(trace, word, _dilate(colour_masks(np.asarray(trace.final_image))[colour], dilate))


def object_word_hits(trace, caption: str, dilate: int = 2) -> dict[str, bool]:
    """For every object word that occurs once in the caption (each colour and shape word), whether its
    global map peaks inside its own object's colour region (dilated by ``dilate`` pixels).

    Stricter than :func:`attention_peak_hit`: it also asks the words of the second object of a
    two-object caption to land on that object.
    """
    targets = parse_caption(caption)
    masks = colour_masks(np.asarray(trace.final_image))
    words = caption.split()
    hits = {}
    for obj in targets:
        region = _dilate(masks[obj.colour], dilate)
        for word in (obj.colour, obj.shape):
            if words.count(word) == 1:
                hits[word] = _peaks_inside(trace, word, region)
    return hits


def localisation(pipe, n: int = 100, *, guidance_scale: float = 7.5, num_inference_steps: int = 25,
                 seed: int = EVAL_SEED, dilate: int = 2, progress: bool = True) -> dict:
    """Attention localisation on ``n`` held-out captions, traced with :func:`explainer.trace`.

    Returns:
        ``{"n", "localisation", "by_form": {...}, "object_words", "per_caption": [...]}``; ``object_words``
        is the stricter share of all object words that peak on their own object (:func:`object_word_hits`).
    """
    from ..tracing import trace as trace_run

    caps = eval_captions(n, seed)
    rows = []
    for i, cap in enumerate(tqdm(caps, desc="localisation", disable=not progress)):
        tr = trace_run(pipe, cap, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                       seed=seed + i, progress=False)
        rows.append({"caption": cap, "hit": attention_peak_hit(tr, cap, dilate),
                     "word_hits": object_word_hits(tr, cap, dilate)})
    res = {"n": n, "localisation": float(np.mean([r["hit"] for r in rows]))}
    res["object_words"] = float(np.mean([h for r in rows for h in r["word_hits"].values()]))
    res["by_form"] = {f: float(np.mean([r["hit"] for r in rows if pred(r["caption"])]))
                      for f, pred in _FORMS.items() if any(pred(r["caption"]) for r in rows)}
    res["per_caption"] = rows
    return res
