"""Evaluate a model of the shapes world: caption fidelity and attention localisation.

Fidelity draws held-out scenes (an evaluation seed never used in training), asks the pipeline for
each caption with a plain ``pipe(caption, num_inference_steps=25, guidance_scale=7.5)`` call and a
per-image seed, and scores every image with :mod:`explainer.toy.checker`.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .checker import caption_scores
from .world import sample_scenes

EVAL_SEED = 1_000_003  # training draws from seeds (seed * 1000 + stage); evaluation never does
GUIDANCE_CURVE = (1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0)


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
    for form in ("single", "and", "above"):
        sub = [r for r in rows if (form in r["caption"].split()) == (form != "single")
               and (form == "single") == (" and " not in r["caption"] and " above " not in r["caption"])]
        if sub:
            by_form[form] = {"n": len(sub), **{k: float(np.mean([r[k] for r in sub])) for k in keys}}
    res["by_form"] = by_form
    res["per_caption"] = rows
    return res
