"""Outpainting: extend the canvas, mask the new border, and trace inpainting of it.

The border's starting pixels matter only when ``strength < 1`` (then the run starts from the noised
canvas): with ``strength=1`` (the default) a 4-channel UNet starts the border from pure noise and a
9-channel UNet sees the border masked out, so any fill gives the same image. The default fill,
``"edge"``, repeats the outermost pixels of the image outwards: it continues a plain background
exactly and gives ``strength < 1`` runs a start of the right colours (see ``docs/applications.md``
for the measured comparison with ``"blur"`` and ``"noise"``).
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .trace import Trace
from .validation import check_image

FILLS = ("edge", "blur", "noise")


def _check_margin(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number of pixels, not {type(value).__name__}.")
    if value < 0:
        raise ValueError(f"{name}={int(value)} is not allowed; outpaint margins are pixels added on that side, >= 0.")
    return int(value)


def canvas_margins(width: int, height: int, margins: dict[str, int], multiple: int) -> tuple[dict[str, int], str | None]:
    """Grow ``margins`` so that the extended canvas has sides that are multiples of ``multiple``.

    The extra pixels go to the sides that already grow (split between both when both do, else to
    the one side); an axis with no margin grows on both sides.

    Returns:
        The new margins and a message saying what changed (``None`` when nothing did).
    """
    out = dict(margins)
    for axis, (a, b), side in (("width", ("left", "right"), width), ("height", ("top", "bottom"), height)):
        total = side + out[a] + out[b]
        extra = (-total) % multiple
        if not extra:
            continue
        if out[a] and not out[b]:
            out[a] += extra
        elif out[b] and not out[a]:
            out[b] += extra
        else:
            out[a] += extra // 2
            out[b] += extra - extra // 2
    if out == margins:
        return out, None
    new_w, new_h = width + out["left"] + out["right"], height + out["top"] + out["bottom"]
    asked = ", ".join(f"{k}={v}" for k, v in margins.items() if v)
    grown = ", ".join(f"{k}={v}" for k, v in out.items() if v)
    return out, (
        f"outpaint canvas rounded up to {new_w}x{new_h} (this model needs sides that are multiples of {multiple}): "
        f"margins {asked or 'none'} became {grown}."
    )


def extend_canvas(
    image: Image.Image, left: int, right: int, top: int, bottom: int, fill: str = "edge", seed: int = 0
) -> tuple[Image.Image, np.ndarray]:
    """The image on a larger canvas, and the outpainting mask.

    Args:
        image: an RGB image.
        left, right, top, bottom: pixels added on each side (>= 0).
        fill: how the border starts: ``"edge"`` (repeat the outermost pixels), ``"blur"`` (that,
            blurred by a Gaussian of radius a quarter of the widest margin) or ``"noise"`` (uniform RGB noise).
        seed: seed of the noise fill.

    Returns:
        ``(canvas, mask)``: the RGB canvas and a float32 mask ``[H, W]``, 1 on the new border, 0 on the image.
    """
    if fill not in FILLS:
        raise ValueError(f"fill={fill!r} is not allowed; use one of {list(FILLS)}.")
    arr = np.asarray(image.convert("RGB"))  # [h, w, 3]
    h, w = arr.shape[:2]
    pad = ((top, bottom), (left, right), (0, 0))
    if fill == "noise":
        canvas = np.random.default_rng(seed).integers(0, 256, (h + top + bottom, w + left + right, 3), dtype=np.uint8)
        canvas[top : top + h, left : left + w] = arr
    else:
        canvas = np.pad(arr, pad, mode="edge")
        if fill == "blur":
            radius = max(1.0, max(left, right, top, bottom) / 4)
            blurred = np.asarray(Image.fromarray(canvas).filter(ImageFilter.GaussianBlur(radius)))
            canvas = blurred.copy()
            canvas[top : top + h, left : left + w] = arr
    mask = np.ones(canvas.shape[:2], np.float32)  # [H, W], 1 = repaint
    mask[top : top + h, left : left + w] = 0.0
    return Image.fromarray(np.ascontiguousarray(canvas), "RGB"), mask


def outpaint(
    pipe: Any,
    prompt: str,
    image: Image.Image | np.ndarray,
    *,
    left: int = 0,
    right: int = 0,
    top: int = 0,
    bottom: int = 0,
    fill: str = "edge",
    strength: float = 1.0,
    **trace_kwargs: Any,
) -> Trace:
    """Extend ``image`` by the given margins and trace the inpainting of the new border.

    Args:
        pipe: a Stable Diffusion 1.x/2.x or SDXL pipeline (text-to-image, image-to-image or inpainting; see
            :func:`trace`).
        prompt: what the whole extended picture shows.
        image: the picture to extend (PIL image or array, as for :func:`trace`).
        left, right, top, bottom: pixels to add on each side (>= 0, at least one > 0). The canvas is
            rounded up to the multiple the model needs; the margins grow and a warning says how.
        fill: the border's starting pixels, ``"edge"`` (default), ``"blur"`` or ``"noise"``; they matter
            only for ``strength < 1`` (see the module notes).
        strength: as for :func:`trace`; 1.0 starts the border from pure noise.
        **trace_kwargs: passed on to :func:`trace` (``num_inference_steps``, ``seed``, ``scheduler``...).

    Returns:
        An inpainting :class:`Trace` of the canvas; ``trace.metadata["outpaint"]`` holds the margins
        used, the fill and the original size, ``trace.input_image`` the filled canvas and ``trace.mask`` the border.

    Example:
        >>> tr = explainer.outpaint(pipe, "a red circle and a blue square", image, right=16)  # doctest: +SKIP
        >>> tr.final_image.size  # doctest: +SKIP
        (80, 64)

    See ``notebooks/10_applications.ipynb``.
    """
    from .families import family_for
    from .recorder import trace

    for name in ("mask", "height", "width"):
        if name in trace_kwargs:
            raise TypeError(f"outpaint() sets {name} itself from the margins; do not pass {name}=.")
    margins = {name: _check_margin(value, name) for name, value in
               (("left", left), ("right", right), ("top", top), ("bottom", bottom))}  # fmt: skip
    if not any(margins.values()):
        raise ValueError("outpaint needs at least one margin > 0: left, right, top or bottom (pixels to add).")
    if fill not in FILLS:
        raise ValueError(f"fill={fill!r} is not allowed; use one of {list(FILLS)}.")
    img = check_image(image)
    family = family_for(pipe)  # SD 1.x/2.x or SDXL; anything else is refused here
    pipe = family.check(pipe)
    multiple = family.size_multiple(pipe)
    w0, h0 = img.size  # the image keeps its pixels: the canvas is rounded, not the picture
    margins, note = canvas_margins(w0, h0, margins, multiple)
    if note:
        warnings.warn(note, stacklevel=2)
    seed = trace_kwargs.get("seed", 0)
    canvas, mask = extend_canvas(img, fill=fill, seed=seed if isinstance(seed, int) else 0, **margins)
    result = trace(pipe, prompt, image=canvas, mask=mask, strength=strength, height=canvas.height, width=canvas.width,
                   **trace_kwargs)  # fmt: skip
    result.metadata["outpaint"] = {
        **margins,
        "fill": fill,
        "original_width": w0,
        "original_height": h0,
        "note": note,
    }
    return result
