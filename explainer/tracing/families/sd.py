"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, a UNet with ``attn2`` cross-attention, ``[C, h, w]`` latents."""

from __future__ import annotations

from typing import Any, ClassVar

from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline

from .base import Family


class SDFamily(Family):
    """SD 1.x / 2.x (and fine-tunes in their layout): ``StableDiffusion{,Img2Img,Inpaint}Pipeline``."""

    name: ClassVar[str] = "sd"
    label: ClassVar[str] = "Stable Diffusion 1.x/2.x"
    pipelines: ClassVar[dict[str, type]] = {
        "txt2img": StableDiffusionPipeline,
        "img2img": StableDiffusionImg2ImgPipeline,
        "inpaint": StableDiffusionInpaintPipeline,
    }
    components: ClassVar[tuple[str, ...]] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    shared_components: ClassVar[tuple[str, ...]] = ("unet", "vae", "text_encoder")

    def call_arguments(self, texts: dict[str, str | None]) -> dict[str, Any]:
        return {}
