"""Model families: one adapter per kind of pipeline, chosen from the pipeline itself (:func:`family_for`)."""

from __future__ import annotations

import re
from typing import Any

import diffusers

from ..errors import UnsupportedPipelineError
from .base import MODEL_OUTPUTS, Family, TokenSegment
from .sd import SDFamily
from .sdxl import SDXLFamily

#: The diffusion-transformer families (SD3, FLUX.1) wrap diffusers' current joint-attention processors and are
#: tested on this diffusers release and newer; with an older diffusers the tracer refuses their pipelines.
DIT_MIN_DIFFUSERS = (0, 42)


def _release(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def dit_families_available() -> bool:
    """Whether the installed diffusers serves the SD3 and FLUX.1 families (``>=`` :data:`DIT_MIN_DIFFUSERS`)."""
    return _release(diffusers.__version__) >= DIT_MIN_DIFFUSERS


if dit_families_available():
    from .flux import FluxFamily
    from .sd3 import SD3Family

    #: The families the tracer knows, most specific first.
    FAMILIES: tuple[type[Family], ...] = (SD3Family, SDXLFamily, SDFamily, FluxFamily)
else:  # pragma: no cover - the lowest-versions CI environment
    FAMILIES = (SDXLFamily, SDFamily)


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
    kind = type(pipe).__name__
    if not dit_families_available() and kind.startswith(("StableDiffusion3", "Flux")):
        raise UnsupportedPipelineError(
            f"tracing {kind} needs diffusers >= {'.'.join(map(str, DIT_MIN_DIFFUSERS))}; this is diffusers "
            f"{diffusers.__version__} (pip install -U diffusers)."
        )
    raise UnsupportedPipelineError(
        f"pipe must be a diffusers StableDiffusionPipeline (text-to-image, SD 1.x/2.x layout; the "
        f"Img2Img and Inpaint variants work too), StableDiffusionXLPipeline (and its Img2Img / Inpaint variants) or "
        f"StableDiffusion3Pipeline or FluxPipeline (and their Img2Img variants), "
        f"not {type(pipe).__name__}; load one with explainer.load_pipeline()."
    )


__all__ = ["DIT_MIN_DIFFUSERS", "FAMILIES", "MODEL_OUTPUTS", "Family", "SDFamily", "SDXLFamily", "TokenSegment",
           "dit_families_available", "family_for"]
if dit_families_available():
    __all__ += ["FluxFamily", "SD3Family"]
