"""A standalone interactive HTML page of a trace: one file, no kernel, no network.

The page shows each chosen view (x_t and x0 by default) per step with a slider and a play button,
the final image, the prompt and settings, and a chip per prompt word: clicking it colours that
word's cross-attention map of the current step (or of all steps) over the views. Frames are
embedded as base64 JPEG (or WebP); attention maps as small grayscale PNGs, colour-mapped and scaled
up in a canvas by the inline script (:mod:`explainer.export._template`). Two runs
(:class:`~explainer.export.branches.Lanes`) share one slider, each with its views, final image and
chips; a timeline under the slider marks a fork's shared prefix and fork step (or an edit's injected steps).
"""

from __future__ import annotations

import base64
import html as _html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ._template import TEMPLATE
from .animation import check_timing
from .branches import Lanes
from .frames import COLORMAP, FrameRenderer, Panel, colormap_lut, format_sigma, select_steps

if TYPE_CHECKING:
    from ..tracing import Trace

IMAGE_FORMATS = ("jpeg", "webp")
#: Attention maps are embedded at most this many pixels on a side (the finest attention layer is coarser).
MAX_MAP_SIDE = 64
_VIEW_LABELS = {
    "xt": "noisy latent x\u209c (linear preview)",
    "x0": "predicted image x\u2080 (linear preview)",
    "uncond": "x\u2080 from the unconditional output",
    "cond": "x\u2080 from the conditional output",
    "input": "input image (mask outlined)",
}


def data_uri(image: Image.Image, image_format: str = "jpeg", quality: int = 80) -> str:
    """``data:`` URI of ``image`` as JPEG, WebP or (for grayscale maps) PNG."""
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG", optimize=True)
    elif image_format == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=4)
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    mime = {"jpeg": "image/jpeg", "webp": "image/webp", "png": "image/png"}[image_format]
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _map_size(trace: Trace) -> tuple[int, int]:
    """Size of the embedded attention maps: the finest recorded attention grid, at most 64 px a side."""
    sides = [(la.width, la.height) for la in trace.attention_layers]
    for key, arr in trace.attention.items():
        if key.endswith("/steps"):
            sides.append((int(arr.shape[-1]), int(arr.shape[-2])))
    w, h = max(sides, key=lambda s: s[0] * s[1]) if sides else (trace.width, trace.height)
    scale = min(1.0, MAX_MAP_SIDE / max(w, h))
    return min(trace.width, max(1, round(w * scale))), min(trace.height, max(1, round(h * scale)))


def _map_uri(heat: np.ndarray, size: tuple[int, int]) -> str:
    gray = Image.fromarray(np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if gray.size != size:
        gray = gray.resize(size, Image.BOX)
    return data_uri(gray, "png")


def _words(trace: Trace, words: str | Sequence[str] | None) -> list[str]:
    if trace.attention_mode == "none":
        if words:
            raise ValueError("this trace recorded no attention (record='none'), so it has no word maps; drop words.")
        return []
    if words is None:
        seen: list[str] = []
        for w in trace.words:
            if w.text and w.text not in seen:
                seen.append(w.text)
        return seen
    chosen = [words] if isinstance(words, str) else list(words)
    for w in chosen:
        if not isinstance(w, str):
            raise TypeError(f"words must be strings, got {w!r}.")
        trace.heatmap(w, step=0)  # raises a ValueError listing the prompt's words
    return chosen


def model_name(trace: Trace) -> str:
    """The model a trace was made with: ``"toy"`` for the bundled model, else its path or Hub id."""
    from ..models import toy_model_path

    model = trace.metadata.get("model", {}) if isinstance(trace.metadata.get("model"), dict) else {}
    name = model.get("name_or_path")
    if not name:
        return str(model.get("pipeline") or "?")
    try:
        if Path(name).resolve() == toy_model_path().resolve():
            return "toy"
    except (OSError, ValueError):
        pass
    return str(name)


def _settings(trace: Trace) -> list[list[str]]:
    meta = trace.metadata
    scheduler = meta.get("scheduler", {}) if isinstance(meta.get("scheduler"), dict) else {}
    rows = [
        ["model", model_name(trace)],
        ["scheduler", str(scheduler.get("class") or "?")],
        ["steps", str(trace.num_steps)],
        ["guidance", f"{trace.guidance_scale:g}"],
        ["seed", str(meta.get("seed", "?"))],
        ["size", f"{trace.width}\u00d7{trace.height}"],
    ]
    if trace.mode != "txt2img":
        detail = f"{trace.mode}, strength {trace.strength:g}, from step {trace.start_step}"
        rows.append(["mode", detail + (f" ({meta['inpaint_mode']})" if meta.get("inpaint_mode") else "")])
    if not trace.complete:
        rows.append(["status", f"incomplete ({trace.error})"])
    return rows


def build_html(
    trace: Trace | Lanes,
    *,
    panels: str | Sequence[str] | None = None,
    words: str | Sequence[str] | None = None,
    size: int | None = None,
    steps: Sequence[int] | None = None,
    every: int = 1,
    resample: str = "nearest",
    fps: float = 8.0,
    hold: float = 1.0,
    quality: int = 80,
    image_format: str = "jpeg",
    progress: bool = False,
    pipe: Any = None,
    notes: dict[int, str] | None = None,
    questions: Sequence[str] | None = None,
) -> tuple[str, int]:
    """The standalone page as a string, and the number of steps it holds.

    Args: see :func:`save_html`.
    """
    from .. import __version__

    fps, hold = check_timing(fps, hold)
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format={image_format!r} is not allowed; use one of {list(IMAGE_FORMATS)}.")
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ValueError(f"quality={quality!r} must be a whole number in 1..100.")
    lanes = trace if isinstance(trace, Lanes) else None
    traces = [lane.trace for lane in lanes.lanes] if lanes else [trace]
    trace = traces[0]
    names = (
        (["input"] if trace.input_image is not None else []) + ["xt", "x0"]  # edits show their input first
        if panels is None
        else ([p.strip() for p in panels.split(",")] if isinstance(panels, str) else list(panels))
    )
    if "overlay" in names:
        raise ValueError("in the HTML page every word is a clickable chip: drop 'overlay' from panels and pass words=.")
    show_final = "final" in names or panels is None
    names = [n for n in names if n != "final"]
    if not names and not show_final:
        raise ValueError("nothing to show: panels selects neither a step view nor 'final'.")
    step_notes = check_notes(notes, trace.num_steps)
    question_list = check_questions(questions)
    chosen = select_steps(trace.num_steps, steps, every)
    map_wh = _map_size(trace)
    runs = []
    for i, tr in enumerate(traces):
        try:
            runs.append(_run_views(tr, names, words, size, resample, pipe, chosen, show_final, map_wh, image_format,
                                   int(quality), progress))  # fmt: skip
        except ValueError as err:
            raise ValueError(f"{lanes.lanes[i].name}: {err}" if lanes else str(err)) from None
    views, final, word_data, stills = runs[0]
    step_info = []
    for s in chosen:
        t = float(trace.timesteps[s])
        step_info.append({"step": s + 1, "t": f"{t:.0f}" if t == round(t) else f"{t:.1f}",
                          "sigma": format_sigma(trace.sigmas[s]).replace("inf", "\u221e"),
                          "note": note_at(step_notes, s)})  # fmt: skip
        if lanes and lanes.status(s):
            step_info[-1]["status"] = lanes.status(s)
    payload: dict[str, Any] = {
        "prompt": trace.prompt,
        "negative_prompt": trace.negative_prompt or "",
        "settings": _settings(trace),
        "num_steps": trace.num_steps,
        "steps": step_info,
        "views": views,
        "final": final,
        "width": stills.panel_wh[0],
        "height": stills.panel_wh[1],
        "pixelated": resample == "nearest",
        "words": word_data,
        "map_width": map_wh[0],
        "map_height": map_wh[1],
        "colormap": colormap_lut(COLORMAP).reshape(-1).tolist(),
        "fps": fps,
        "hold": hold,
        "notes": [[s + 1, text] for s, text in sorted(step_notes.items())],  # the handout's step notes, 1-based
        "questions": question_list,
        "footer": f"Made with sd-explainer {__version__}. "
        + ("Previews are linear latent\u2192RGB maps; " if pipe is None else "Previews are full VAE decodes; ")
        + "attention maps are averaged over heads and layers. This page works offline.",
    }
    if lanes:  # two runs, one slider: each run's views, final image and chips; the mark on a timeline
        payload["lanes"] = [{"name": lane.name, "label": lane.label, "views": v, "final": f, "words": w}
                            for lane, (v, f, w, _) in zip(lanes.lanes, runs, strict=True)]  # fmt: skip
        payload.update(views=[], final=None, words=[])
        if lanes.mark["kind"]:
            payload["timeline"] = dict(lanes.mark)
            payload["settings"].append([lanes.mark["kind"], lanes.mark["label"]])
    # "<" only occurs inside JSON strings; \u003c keeps "</script>" and "<!--" in a prompt from ending the block.
    text = json.dumps(_finite(payload), ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    title = _html.escape(f"sd-explainer: {trace.prompt or '(empty prompt)'}" + (f" ({lanes.lanes[1].label})" if lanes else ""))
    head, tail = TEMPLATE.split("{{DATA}}")
    return head.replace("{{TITLE}}", title, 1) + text + tail, len(chosen)


def _run_views(trace: Trace, names: list[str], words: Any, size: int | None, resample: str, pipe: Any,
               chosen: list[int], show_final: bool, map_wh: tuple[int, int], image_format: str, quality: int,
               progress: bool) -> tuple[list[dict[str, Any]], str | None, list[dict[str, Any]], FrameRenderer]:  # fmt: skip
    """One run's part of the page: its views' frames, final image and word maps (``data:`` URIs)."""
    from tqdm.auto import tqdm

    word_list = _words(trace, words)
    renderer = FrameRenderer(trace, names, None, size, False, resample, pipe=pipe) if names else None
    stills = renderer or FrameRenderer(trace, ["final"], None, size, captions=False, resample=resample, pipe=pipe)
    stepped = renderer.panels if renderer is not None else []
    if renderer is not None:
        renderer.predecode(chosen)
    method = "linear preview" if pipe is None else "VAE decode"
    labels = [_VIEW_LABELS.get(p.kind, f"guided x\u2080 (scale {trace.guidance_scale:g})") for p in stepped]
    views = [{"key": p.kind, "label": label.replace("linear preview", method), "frames": []}
             for p, label in zip(stepped, labels, strict=True)]  # fmt: skip
    word_data = [{"text": w, "maps": [], "mean": _map_uri(trace.heatmap(w), map_wh)} for w in word_list]
    for step in tqdm(chosen, desc="html", unit="step", disable=not progress, leave=False):
        for view, panel in zip(views, stepped, strict=True):
            view["frames"].append(data_uri(renderer.panel_image(panel, step), image_format, quality))
        for entry in word_data:
            entry["maps"].append(_map_uri(trace.heatmap(entry["text"], step=step), map_wh))
    final = None
    if show_final and (trace.final_image is not None or trace.latent_rgb is not None):
        final = data_uri(stills.panel_image(Panel("final"), 0), image_format, quality)
    return views, final, word_data, stills


def check_notes(notes: Any, num_steps: int) -> dict[int, str]:
    """``notes`` checked: ``{step index: text}`` with indices in ``0 .. num_steps - 1`` (negative counts from
    the end), as a dict keyed by the non-negative index."""
    if notes is None:
        return {}
    if not isinstance(notes, dict):
        raise TypeError(f"notes must be a dict {{step index: text}}, not {type(notes).__name__}.")
    out: dict[int, str] = {}
    for step, text in notes.items():
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"notes keys must be step indices (whole numbers), got {step!r}.")
        if not -num_steps <= int(step) < num_steps:
            raise ValueError(f"notes has step {int(step)}; this trace has steps 0..{num_steps - 1} (or -{num_steps}..-1).")
        if not isinstance(text, str):
            raise TypeError(f"notes[{int(step)}] must be text, not {type(text).__name__}.")
        out[int(step) % num_steps] = text
    return out


def note_at(notes: dict[int, str], step: int) -> str:
    """The note shown at ``step``: the latest one at or before it (``""`` before the first)."""
    earlier = [s for s in notes if s <= step]
    return notes[max(earlier)] if earlier else ""


def check_questions(questions: Any) -> list[str]:
    """``questions`` checked: a list of strings (``None``: none)."""
    if questions is None:
        return []
    if isinstance(questions, str) or not isinstance(questions, Sequence):
        raise TypeError(f"questions must be a list of strings, not {type(questions).__name__}.")
    for q in questions:
        if not isinstance(q, str):
            raise TypeError(f"questions must hold strings, got {q!r}.")
    return list(questions)


def _finite(value: Any) -> Any:
    """JSON cannot hold NaN or infinity: turn them into strings."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def save_html(
    trace: Trace | Lanes,
    path: str | Path,
    *,
    panels: str | Sequence[str] | None = None,
    words: str | Sequence[str] | None = None,
    size: int | None = None,
    steps: Sequence[int] | None = None,
    every: int = 1,
    resample: str = "nearest",
    fps: float = 8.0,
    hold: float = 1.0,
    quality: int = 80,
    image_format: str = "jpeg",
    progress: bool = False,
    pipe: Any = None,
    notes: dict[int, str] | None = None,
    questions: Sequence[str] | None = None,
) -> int:
    """Write the standalone interactive page.

    Args:
        trace: the trace, or two runs side by side (:class:`~explainer.export.branches.Lanes`), one slider for both.
        path: the ``.html`` file to write.
        panels: step-driven views, from ``"xt"``, ``"x0"``, ``"uncond"``, ``"cond"``, ``"guided"``,
            ``"guidance"``, plus ``"final"`` for the final image; default ``xt``, ``x0`` and the final image.
        words: words with an attention chip; default every distinct word of the prompt.
        size: longest side of each view in pixels (default: the image size, upscaled to >= 256).
        steps, every: which steps the slider walks through (see :func:`select_steps`).
        resample: upscaling filter (``"nearest"`` also tells the browser to keep pixels sharp).
        fps: play speed in steps per second.
        hold: seconds the player rests on the last step before looping.
        quality: JPEG/WebP quality 1..100 (80 keeps 50 steps at 512x512 under 10 MB).
        image_format: ``"jpeg"`` or ``"webp"`` for the frames.
        progress: show a tqdm bar while encoding.
        pipe: a pipeline (or its VAE): views show VAE decodes instead of linear previews.
        notes: a handout's captions, ``{step index: text}`` (0-based, negative from the end): the page
            shows the latest note at or before the current step under the slider, and lists them all.
        questions: questions for the class, listed at the end of the page (and on print).

    Returns:
        The number of steps in the page.
    """
    page, count = build_html(trace, panels=panels, words=words, size=size, steps=steps, every=every,
                             resample=resample, fps=fps, hold=hold, quality=quality, image_format=image_format,
                             progress=progress, pipe=pipe, notes=notes, questions=questions)  # fmt: skip
    Path(path).write_text(page, encoding="utf-8")
    return count
