"""Measure image-to-image, inpainting and outpainting on a model of the shapes world.

Every case starts from a ground-truth scene drawn by :mod:`explainer.toy.world` (held-out seed) and
is scored with :mod:`explainer.toy.checker`. The images come from diffusers' own
``StableDiffusionImg2ImgPipeline`` / ``StableDiffusionInpaintPipeline`` (derived from the given
pipeline with ``from_pipe``, as :func:`explainer.trace` does), batched, with the generator of case
``i`` seeded ``seed + i``. A traced run gives bit-identical images (see ``tests/test_applications.py``).

- **img2img**: input scene A, prompted with A's own caption ("own") or with the caption of another
  scene B ("new"). At strength 0.3 the output should still show A's objects: the checker's colour +
  position test against A's caption, and each object's centroid within 6 % of the side of where it
  was. At strength 1.0 with B's caption it should follow B as well as text-to-image does (same
  seeds). The new-prompt case is also swept over strengths 0.1 to 0.3 and guidance scales 1 to 7.5.
- **inpaint**: a mask over one object (its coverage, dilated), prompt = the caption with that
  object's colour changed to one the scene does not use. Scored: the new colour covers at least
  half of the object's area inside the mask; outside the mask, the mean absolute change of the
  image as a fraction of the pixel range (0..255), with the pipeline's latent blending and with the
  original pixels pasted back outside the mask (pixel-space blending).
- **outpaint**: the scene with its right quarter cut off, extended back with each border fill at
  ``strength < 1`` (where the fill matters); scored by the mean error against the true scene in
  the border and by the checker on the whole picture.

Run it (about 15 minutes on one busy CPU core for the defaults, most of it image-to-image)::

    python -m explainer.toy.evaluate_edit --out docs/data/applications_eval.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .checker import caption_scores, check_image, colour_masks
from .evaluate import EVAL_SEED, _dilate
from .world import COLOURS, Scene, render, sample_scenes

IMG2IMG_STREAM, INPAINT_STREAM, OUTPAINT_STREAM = 101, 102, 103  # sub-streams of the held-out seed
INPAINT_DILATE = 4  # pixels: covers the anti-aliased edge and the latent grid (4 px per latent cell on the toy)
NEW_COLOUR_MIN_FRACTION = 0.5  # of the object's area, inside the mask
OUTPAINT_FILLS = ("edge", "blur", "noise")
KEEP_TOLERANCE = 0.06  # of the image side (about 4 px on the toy's 64): how far a kept object's centroid may move


def _pil(batch: torch.Tensor) -> list[Image.Image]:
    arr = (batch.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def _generators(device: Any, seed: int, count: int) -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(seed + i) for i in range(count)]


def _batched(run, count: int, batch_size: int, desc: str, progress: bool) -> list[np.ndarray]:
    """Call ``run(start, stop) -> images`` over ``range(count)`` in batches; uint8 arrays ``[H, W, 3]``."""
    out: list[np.ndarray] = []
    for start in tqdm(range(0, count, batch_size), desc=desc, disable=not progress, leave=False):
        images = run(start, min(count, start + batch_size))
        out += [(im * 255).round().astype(np.uint8) for im in images]
    return out


def kept_objects(output: np.ndarray, source: np.ndarray, caption: str, tolerance: float = KEEP_TOLERANCE) -> bool:
    """Whether ``output`` still shows the objects of ``source`` (described by ``caption``) where they were.

    Every object passes the checker's colour + position test, and its colour's centroid moved by less
    than ``tolerance`` (fraction of the image side) from where it is in ``source``.
    """
    before, after = check_image(source, caption), check_image(output, caption)
    for b, a in zip(before, after):
        if not (a.colour and a.position) or b.centroid is None or a.centroid is None:
            return False
        if np.hypot(a.centroid[0] - b.centroid[0], a.centroid[1] - b.centroid[1]) > tolerance:
            return False
    return True


def img2img_eval(pipe, n: int = 50, *, strengths: tuple[float, ...] = (0.3, 1.0), num_inference_steps: int = 25,
                 guidance_scale: float = 7.5, sweep_strengths: tuple[float, ...] = (0.1, 0.2, 0.3),
                 sweep_guidance: tuple[float, ...] = (1.0, 3.0),
                 seed: int = EVAL_SEED, batch_size: int = 50, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Image-to-image on ``n`` scene pairs: input scene A, prompted with A's own caption or with B's.

    Returns:
        ``{"n", "input_passes_checker", "text_to_image", "by_prompt": {"own"|"new": {strength: {...}}},
        "new_prompt_sweep": {"strength@g=scale": {...}}, "per_case"}``. ``keeps_input``: the fraction of cases where
        :func:`kept_objects` holds (A's objects, same colours, regions and centroids within
        ``KEEP_TOLERANCE``); ``follows_new_prompt``: the checker's colour + position test against B's
        caption; ``text_to_image``: that test for a plain text-to-image call on B with the same seeds,
        and, as a control for ``keeps_input``, how often a text-to-image call on A's caption happens
        to place A's objects where they were.
    """
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from ..tracing.validation import check_strength

    for strength in (*strengths, *sweep_strengths):  # diffusers' img2img would crash on a run of 0 steps
        check_strength(strength, num_inference_steps)
    scenes = sample_scenes(2 * n, seed, IMG2IMG_STREAM)
    inputs, targets = scenes[:n], scenes[n:]
    images = _pil(render(inputs))
    arrays = [np.asarray(im) for im in images]
    device = pipe._execution_device
    i2i = pipe if isinstance(pipe, StableDiffusionImg2ImgPipeline) else StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    t2i = pipe if isinstance(pipe, StableDiffusionPipeline) else StableDiffusionPipeline.from_pipe(pipe)
    for p in (i2i, t2i):
        p.set_progress_bar_config(disable=True)
    new_prompts = [s.caption for s in targets]
    own_prompts = [s.caption for s in inputs]
    kw = dict(num_inference_steps=num_inference_steps, output_type="np")
    ref = _batched(lambda a, b: t2i(new_prompts[a:b], generator=_generators(device, seed + a, b - a),
                                    guidance_scale=guidance_scale, **kw).images,
                   n, batch_size, "text-to-image", progress)  # fmt: skip
    ref_own = _batched(lambda a, b: t2i(own_prompts[a:b], generator=_generators(device, seed + a, b - a),
                                        guidance_scale=guidance_scale, **kw).images,
                       n, batch_size, "text-to-image (own)", progress)  # fmt: skip

    def edit(prompts: list[str], strength: float, guidance: float) -> dict[str, Any]:
        out = _batched(lambda a, b: i2i(prompts[a:b], image=images[a:b], strength=strength, guidance_scale=guidance,
                                        generator=_generators(device, seed + a, b - a), **kw).images,
                       n, batch_size, f"img2img {strength:g} g={guidance:g}", progress)  # fmt: skip
        keeps = [kept_objects(o, src, s.caption) for o, src, s in zip(out, arrays, inputs)]
        follows = [caption_scores(o, c)["colour_position"] for o, c in zip(out, new_prompts)]
        change = [float(np.abs(o.astype(np.float32) - src.astype(np.float32)).mean() / 255) for o, src in zip(out, arrays)]
        return {"keeps_input": float(np.mean(keeps)), "follows_new_prompt": float(np.mean(follows)),
                "mean_change": float(np.mean(change)), "_keeps": keeps, "_follows": follows}  # fmt: skip

    res: dict[str, Any] = {
        "n": n,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "keep_tolerance": KEEP_TOLERANCE,
        "input_passes_checker": float(np.mean([kept_objects(a, a, s.caption) for a, s in zip(arrays, inputs)])),
        "text_to_image": {
            "follows_new_prompt": float(np.mean([caption_scores(im, c)["colour_position"]
                                                 for im, c in zip(ref, new_prompts)])),
            "own_caption_keeps_input": float(np.mean([kept_objects(im, src, s.caption)
                                                      for im, src, s in zip(ref_own, arrays, inputs)])),
        },  # fmt: skip
        "by_prompt": {},
    }
    per_case = [{"input": a.caption, "new_prompt": b.caption} for a, b in zip(inputs, targets)]
    for kind, prompts in (("own", own_prompts), ("new", new_prompts)):
        res["by_prompt"][kind] = {}
        for strength in strengths:
            r = edit(prompts, strength, guidance_scale)
            for row, k, f in zip(per_case, r.pop("_keeps"), r.pop("_follows")):
                row[f"{kind}@{strength:g}"] = {"keeps_input": k, "follows_new_prompt": f}
            res["by_prompt"][kind][f"{strength:g}"] = r
    res["new_prompt_sweep"] = {}
    for strength in sweep_strengths:
        for guidance in (*sweep_guidance, guidance_scale):
            key = f"{strength:g}@g={guidance:g}"
            if guidance == guidance_scale and f"{strength:g}" in res["by_prompt"]["new"]:
                res["new_prompt_sweep"][key] = res["by_prompt"]["new"][f"{strength:g}"]
                continue
            r = edit(new_prompts, strength, guidance)
            r.pop("_keeps"), r.pop("_follows")
            res["new_prompt_sweep"][key] = r
    res["per_case"] = per_case
    return res


def inpaint_case(scene: Scene, coverage: np.ndarray, rng: np.random.Generator) -> tuple[str, str, str, np.ndarray]:
    """Pick the object to recolour (the first), a colour the scene does not use, and the mask.

    Args:
        scene: the scene.
        coverage: ``[K, H, W]`` per-object coverage from :func:`explainer.toy.world.render`.
        rng: draws the new colour.

    Returns:
        ``(new_caption, old_colour, new_colour, mask)`` with the mask ``[H, W]`` float32, 1 = repaint.
    """
    obj = scene.objects[0]
    used = {o.colour for o in scene.objects}
    new = str(rng.choice([c for c in COLOURS if c not in used]))
    caption = scene.caption.replace(f"a {obj.colour} {obj.shape}", f"a {new} {obj.shape}", 1)
    mask = _dilate(coverage[0] > 0.0, INPAINT_DILATE).astype(np.float32)
    return caption, obj.colour, new, mask


def inpaint_eval(pipe, n: int = 50, *, strength: float = 1.0, num_inference_steps: int = 25,
                 guidance_scale: float = 7.5, seed: int = EVAL_SEED, batch_size: int = 50,
                 progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Recolour one object per scene by inpainting a mask over it.

    Returns:
        ``{"n", "new_colour", "old_colour_gone", "outside_change_latent_blend", "outside_change_pixel_blend",
        "outside_change_max", "per_case": [...]}``; the changes are mean absolute differences outside
        the mask as fractions of the pixel range.
    """
    from diffusers import StableDiffusionInpaintPipeline

    scenes = sample_scenes(n, seed, INPAINT_STREAM)
    batch, coverage = render(scenes, masks=True)
    images = _pil(batch)
    rng = np.random.default_rng(seed)
    cases = [inpaint_case(s, coverage[i].numpy(), rng) for i, s in enumerate(scenes)]
    masks = [Image.fromarray((c[3] * 255).astype(np.uint8), "L") for c in cases]
    prompts = [c[0] for c in cases]
    inp = pipe if isinstance(pipe, StableDiffusionInpaintPipeline) else StableDiffusionInpaintPipeline.from_pipe(pipe)
    inp.set_progress_bar_config(disable=True)
    device = pipe._execution_device
    kw = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, strength=strength,
              output_type="np")  # fmt: skip
    out = _batched(lambda a, b: inp(prompts[a:b], image=images[a:b], mask_image=masks[a:b],
                                    generator=_generators(device, seed + a, b - a), **kw).images,
                   n, batch_size, "inpaint", progress)  # fmt: skip
    rows = []
    for (caption, old, new, mask), src, res, scene in zip(cases, images, out, scenes):
        src_arr = np.asarray(src)
        inside = mask >= 0.5
        area = max(1, int(colour_masks(src_arr)[old].sum()))
        found = colour_masks(res)
        new_px, old_px = int((found[new] & inside).sum()), int((found[old] & inside).sum())
        diff = np.abs(res.astype(np.float32) - src_arr.astype(np.float32)) / 255.0
        pasted = np.where(inside[..., None], res, src_arr)  # pixel-space blending: the original outside the mask
        rows.append({
            "input": scene.caption,
            "prompt": caption,
            "new_colour": new_px >= NEW_COLOUR_MIN_FRACTION * area,
            "old_colour_gone": old_px < 0.25 * area,
            "outside_change": float(diff[~inside].mean()),
            "outside_change_pixel_blend": float((np.abs(pasted.astype(np.float32) - src_arr) / 255.0)[~inside].mean()),
            "caption_colour_position": caption_scores(pasted, caption)["colour_position"],
        })  # fmt: skip
    return {
        "n": n,
        "strength": strength,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "mask_dilation_px": INPAINT_DILATE,
        "new_colour": float(np.mean([r["new_colour"] for r in rows])),
        "old_colour_gone": float(np.mean([r["old_colour_gone"] for r in rows])),
        "caption_colour_position": float(np.mean([r["caption_colour_position"] for r in rows])),
        "outside_change_latent_blend": float(np.mean([r["outside_change"] for r in rows])),
        "outside_change_max": float(np.max([r["outside_change"] for r in rows])),
        "outside_change_pixel_blend": float(np.mean([r["outside_change_pixel_blend"] for r in rows])),
        "per_case": rows,
    }


def outpaint_eval(pipe, n: int = 24, *, cut: int = 16, strengths: tuple[float, ...] = (0.8, 1.0),
                  num_inference_steps: int = 25, guidance_scale: float = 7.5, seed: int = EVAL_SEED,
                  batch_size: int = 50, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Cut ``cut`` pixels off the right of each scene and outpaint them back with each fill.

    Returns:
        ``{"n", "cut_px", "by_fill": {fill: {strength: {"border_error", "caption_colour_position"}}}}``;
        ``border_error`` is the mean absolute difference from the true scene in the border (fraction of
        the pixel range).
    """
    from diffusers import StableDiffusionInpaintPipeline

    from ..tracing.outpaint import extend_canvas

    scenes = sample_scenes(n, seed, OUTPAINT_STREAM)
    truth = _pil(render(scenes))
    inp = pipe if isinstance(pipe, StableDiffusionInpaintPipeline) else StableDiffusionInpaintPipeline.from_pipe(pipe)
    inp.set_progress_bar_config(disable=True)
    device = pipe._execution_device
    prompts = [s.caption for s in scenes]
    res: dict[str, Any] = {"n": n, "cut_px": cut, "num_inference_steps": num_inference_steps, "by_fill": {}}
    for fill in OUTPAINT_FILLS:
        canvases, masks = [], []
        for i, im in enumerate(truth):
            cropped = im.crop((0, 0, im.width - cut, im.height))
            canvas, mask = extend_canvas(cropped, 0, cut, 0, 0, fill=fill, seed=seed + i)
            canvases.append(canvas)
            masks.append(Image.fromarray((mask * 255).astype(np.uint8), "L"))
        res["by_fill"][fill] = {}
        for strength in strengths:
            kw = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, strength=strength,
                      output_type="np")  # fmt: skip
            out = _batched(lambda a, b, kw=kw, canvases=canvases, masks=masks: inp(
                prompts[a:b], image=canvases[a:b], mask_image=masks[a:b],
                generator=_generators(device, seed + a, b - a), **kw).images,
                n, batch_size, f"outpaint {fill} {strength}", progress)  # fmt: skip
            err = [float(np.abs(o[:, -cut:].astype(np.float32) - np.asarray(t, np.float32)[:, -cut:]).mean() / 255)
                   for o, t in zip(out, truth)]  # fmt: skip
            ok = [caption_scores(o, c)["colour_position"] for o, c in zip(out, prompts)]
            res["by_fill"][fill][f"{strength:g}"] = {"border_error": float(np.mean(err)),
                                                     "caption_colour_position": float(np.mean(ok))}  # fmt: skip
    return res


def evaluate_edits(pipe, n: int = 50, *, n_outpaint: int = 24, num_inference_steps: int = 25,
                   seed: int = EVAL_SEED, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """All three measurements, with their runtimes.

    Returns:
        ``{"img2img": ..., "inpaint": ..., "outpaint": ..., "timings_s": {...}, "model": ...}``.
    """
    timings = {}
    start = time.perf_counter()
    i2i = img2img_eval(pipe, n, num_inference_steps=num_inference_steps, seed=seed, progress=progress)
    timings["img2img"] = time.perf_counter() - start
    start = time.perf_counter()
    inp = inpaint_eval(pipe, n, num_inference_steps=num_inference_steps, seed=seed, progress=progress)
    timings["inpaint"] = time.perf_counter() - start
    start = time.perf_counter()
    out = outpaint_eval(pipe, n_outpaint, num_inference_steps=num_inference_steps, seed=seed, progress=progress)
    timings["outpaint"] = time.perf_counter() - start
    return {
        "model": str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path")),
        "device": str(pipe._execution_device),
        "torch_threads": torch.get_num_threads(),
        "img2img": i2i,
        "inpaint": inp,
        "outpaint": out,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m explainer.toy.evaluate_edit --out FILE.json``: measure the toy model and write the figures."""
    parser = argparse.ArgumentParser(prog="python -m explainer.toy.evaluate_edit", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="toy", help="'toy' (default) or a local diffusers folder")
    parser.add_argument("--n", type=int, default=50, help="cases for img2img and inpainting (default 50)")
    parser.add_argument("--n-outpaint", type=int, default=24, help="cases per outpaint fill (default 24)")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    parser.add_argument("--device", help="torch device (default: CUDA, then MPS, then CPU)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from ..models import load_pipeline

    pipe = load_pipeline(args.model, device=args.device)
    start = time.perf_counter()
    res = evaluate_edits(pipe, args.n, n_outpaint=args.n_outpaint, num_inference_steps=args.steps,
                         progress=not args.quiet)  # fmt: skip
    res["timings_s"]["total"] = round(time.perf_counter() - start, 1)
    res["model"] = args.model  # as given ("toy"), not the folder it resolved to
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    i2i, inp = res["img2img"], res["inpaint"]
    summary = {
        "img2img_own_prompt_keeps_input@0.3": i2i["by_prompt"]["own"]["0.3"]["keeps_input"],
        "img2img_new_prompt_keeps_input@0.3": i2i["by_prompt"]["new"]["0.3"]["keeps_input"],
        "img2img_new_prompt_sweep": {k: v["keeps_input"] for k, v in i2i["new_prompt_sweep"].items()},
        "text_to_image_own_caption_keeps_input": i2i["text_to_image"]["own_caption_keeps_input"],
        "img2img_follows_new_prompt@1.0": i2i["by_prompt"]["new"]["1"]["follows_new_prompt"],
        "text_to_image_follows_new_prompt": i2i["text_to_image"]["follows_new_prompt"],
        "inpaint_new_colour": inp["new_colour"],
        "inpaint_outside_change": inp["outside_change_latent_blend"],
        "inpaint_outside_change_pixel_blend": inp["outside_change_pixel_blend"],
        "timings_s": res["timings_s"],
    }
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
