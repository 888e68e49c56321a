"""Model families: one adapter per kind of pipeline, chosen from the pipeline itself (:func:`family_for`)."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedPipelineError
from .base import MODEL_OUTPUTS, Family, TokenSegment
from .flux import FluxFamily
from .sd import SDFamily
from .sd3 import SD3Family
from .sdxl import SDXLFamily

#: The families the tracer knows, most specific first.
FAMILIES: tuple[type[Family], ...] = (SD3Family, SDXLFamily, SDFamily, FluxFamily)


def family_for(pipe: Any) -> Family:
    """The family adapter for ``pipe``.

    Args:
        pipe: a diffusers pipeline.

    Returns:
        The adapter of the first family in :data:`FAMILIES` whose pipeline classes include ``pipe``'s.

    Raises:
        UnsupportedPipelineError: no family serves this pipeline.
    """
    for family in FAMILIES:
        if family.matches(pipe):
            return family()
    raise UnsupportedPipelineError(
        f"pipe must be a diffusers StableDiffusionPipeline (text-to-image, SD 1.x/2.x layout; the "
        f"Img2Img and Inpaint variants work too), StableDiffusionXLPipeline (and its Img2Img / Inpaint variants) or "
        f"StableDiffusion3Pipeline (and its Img2Img variant), "
        f"not {type(pipe).__name__}; load one with explainer.load_pipeline()."
    )


__all__ = ["FAMILIES", "MODEL_OUTPUTS", "Family", "FluxFamily", "SD3Family", "SDFamily", "SDXLFamily", "TokenSegment", "family_for"]
