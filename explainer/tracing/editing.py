"""Plain-data helpers for image-to-image and inpainting traces: mask outlines and the composited x0.

Used by the export panels and the figure functions in :mod:`explainer.views.applications`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from .trace import Trace

OUTLINE_RGB = (255, 40, 200)  # magenta: unlike every colour of the toy world


def require_edit(trace: Trace, what: str, inpaint: bool = False) -> None:
    """Raise a ValueError naming ``what`` when ``trace`` is not an image-to-image / inpainting trace."""
    if trace.input_image is None or (inpaint and trace.mask is None):
        kind = "an inpainting" if inpaint else "an image-to-image or inpainting"
        raise ValueError(f"{what} needs {kind} trace; this one is {trace.mode} (trace with image= and mask=).")


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: the pixels of the repainted region (``mask >= 0.5``) that touch the kept region."""
    inside = np.asarray(mask) >= 0.5
    padded = np.pad(inside, 1, mode="edge")
    neighbours_kept = (
        ~padded[:-2, 1:-1] | ~padded[2:, 1:-1] | ~padded[1:-1, :-2] | ~padded[1:-1, 2:]
    )  # any 4-neighbour outside the mask
    return inside & neighbours_kept


def input_preview(trace: Trace, outline: bool = True) -> Image.Image:
    """The input image of an edit trace, with the inpainting mask's outline drawn on it.

    Args:
        trace: an image-to-image or inpainting trace.
        outline: draw the mask outline (inpainting traces only).

    Returns:
        An RGB image at the trace's image size.
    """
    require_edit(trace, "the input preview")
    arr = np.array(trace.input_image, dtype=np.uint8)  # [H, W, 3]
    if outline and trace.mask is not None:
        arr[mask_outline(trace.mask)] = OUTLINE_RGB
    return Image.fromarray(arr, "RGB")


def composite_x0(trace: Trace, step: int) -> np.ndarray:
    """``[C, h, w]`` float32: step ``step``'s x0 inside the mask, the encoded input image outside it.

    This is what the inpainting run is heading for at that step: the known region is held fixed (the
    4-channel pipeline pastes it back; a 9-channel UNet is given it), only the masked region forms.
    """
    require_edit(trace, "the masked x0", inpaint=True)
    step = trace._check_step(step, "x0")
    m = np.asarray(trace.mask_latent, np.float32)[None]  # [1, h, w]
    known = np.asarray(trace.image_latent, np.float32)
    return m * trace.x0[step].astype(np.float32) + (1.0 - m) * known


def latent_image(trace: Trace, latent: np.ndarray, method: str = "linear", pipe: Any = None,
                 key: tuple | None = None) -> Image.Image:  # fmt: skip
    """A ``[C, h, w]`` latent as an image: linear latent → RGB, or a VAE decode.

    A VAE decode is cached by the latent's content unless ``key`` is ``None`` (then it is decoded once).
    """
    from . import previews

    if method == "linear":
        if trace.latent_rgb is None:
            raise ValueError("this trace has no latent→RGB factors; use method='vae' with pipe=.")
        return previews.linear_preview(latent, trace.latent_rgb, (trace.width, trace.height))
    if method == "vae":
        if pipe is None:
            raise ValueError("method='vae' decodes with the model: pass pipe=<the pipeline or its VAE>.")
        if key is None:  # not cacheable: decode once
            image = previews.decode_latents(previews._vae_of(pipe), np.asarray(latent, np.float32)[None])[0]
            return previews.to_pil(image.permute(1, 2, 0).numpy())
        return previews.vae_preview(pipe, latent)
    if method == "taesd":  # the family's tiny autoencoder: a decode like "vae", with another decoder
        from .preview_decoder import decoder_for

        return latent_image(trace, latent, "vae", decoder_for(trace.family, pipe), key)
    raise ValueError(f"method={method!r} is not allowed; use 'linear', 'taesd' or 'vae'.")


def changed_outside_mask(trace: Trace) -> float:
    """Mean absolute change of the final image outside the mask, as a fraction of the pixel range (0..1)."""
    require_edit(trace, "changed_outside_mask", inpaint=True)
    if trace.final_image is None:
        raise ValueError("this trace is incomplete (no final image).")
    keep = np.asarray(trace.mask) < 0.5
    if not keep.any():
        return 0.0
    diff = np.abs(np.asarray(trace.final_image, np.float32) - trace.input_image.astype(np.float32)) / 255.0
    return float(diff[keep].mean())


def pixel_blend(trace: Trace) -> Image.Image:
    """The final image with the input's own pixels pasted back outside the mask (pixel-space blending).

    The inpainting pipeline keeps the known region as a latent, so the VAE round trip changes it a
    little (:func:`changed_outside_mask`); this puts the original pixels back, as diffusers'
    ``mask_processor.apply_overlay`` does for ``padding_mask_crop``. The trace itself keeps the
    pipeline's image.

    Returns:
        An RGB image at the trace's size: the final image where ``trace.mask >= 0.5``, the input elsewhere.
    """
    require_edit(trace, "pixel_blend", inpaint=True)
    if trace.final_image is None:
        raise ValueError("this trace is incomplete (no final image).")
    inside = (np.asarray(trace.mask) >= 0.5)[..., None]  # [H, W, 1]
    return Image.fromarray(np.where(inside, np.asarray(trace.final_image.convert("RGB")), trace.input_image), "RGB")


def trace_strengths(pipe: Any, prompt: str, image: Any, strengths: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 1.0),
                    **trace_kwargs: Any) -> list[Trace]:  # fmt: skip
    """Trace the same image-to-image (or, with ``mask=``, inpainting) edit at several strengths.

    Args:
        pipe, prompt, image: as for :func:`explainer.trace`.
        strengths: the strengths to run, each in (0, 1].
        **trace_kwargs: passed on to :func:`explainer.trace` (``seed``, ``num_inference_steps``, ``mask``...).

    Returns:
        One trace per strength, in the order given (for :func:`explainer.views.strength_sweep`).
    """
    from .recorder import trace

    if isinstance(strengths, (int, float)) or not len(strengths):
        raise ValueError(f"strengths must be a non-empty sequence of numbers in (0, 1], got {strengths!r}.")
    return [trace(pipe, prompt, image=image, strength=s, **trace_kwargs) for s in strengths]
