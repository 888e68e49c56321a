"""Stable Diffusion XL: two CLIP text encoders whose hidden states are concatenated along the feature axis,
a pooled text embedding and size/crop ``add_time_ids`` as extra conditioning, the SD UNet layout otherwise."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, ClassVar

import torch
from diffusers import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from ..attention import tokenize_prompt
from ..errors import UnsupportedPipelineError
from .base import Family, TokenSegment


class SDXLFamily(Family):
    """SDXL base models: ``StableDiffusionXL{,Img2Img,Inpaint}Pipeline`` with both text encoders.

    Key ``i`` of every cross-attention layer carries token ``i`` of ``prompt`` (first tokenizer) and
    token ``i`` of ``prompt_2`` (second tokenizer) at once, so the maps are per position of one
    sequence; the trace keeps both token lists as segments with ``combine="features"``.
    """

    name: ClassVar[str] = "sdxl"
    label: ClassVar[str] = "Stable Diffusion XL"
    pipelines: ClassVar[dict[str, type]] = {
        "txt2img": StableDiffusionXLPipeline,
        "img2img": StableDiffusionXLImg2ImgPipeline,
        "inpaint": StableDiffusionXLInpaintPipeline,
    }
    components: ClassVar[tuple[str, ...]] = (
        "unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler",
    )  # fmt: skip
    shared_components: ClassVar[tuple[str, ...]] = ("unet", "vae", "text_encoder", "text_encoder_2")
    prompt_arguments: ClassVar[tuple[str, ...]] = ("prompt_2", "negative_prompt_2")

    def check(self, pipe: Any) -> Any:
        if getattr(pipe, "text_encoder", None) is None and getattr(pipe, "text_encoder_2", None) is not None:
            raise UnsupportedPipelineError(
                "pipe has only the second text encoder, as the SDXL refiner does; the tracer needs a base model with "
                "both (text_encoder and text_encoder_2) to map its attention to the prompt's tokens."
            )
        return super().check(pipe)

    def zero_negative(self, pipe: Any, texts: dict[str, str | None]) -> bool:
        """Whether the pipeline replaces the negative embedding by zeros (``force_zeros_for_empty_prompt``)."""
        return texts.get("negative_prompt") is None and bool(pipe.config.get("force_zeros_for_empty_prompt", False))

    def token_segments(self, pipe: Any, texts: dict[str, str | None], branch: str) -> list[TokenSegment]:
        if branch == "cond":
            first, second = texts["prompt"] or "", texts.get("prompt_2") or texts["prompt"] or ""
            names = ("prompt", "prompt_2")
        else:
            if self.zero_negative(pipe, texts):
                if texts.get("negative_prompt_2") is not None:
                    warnings.warn(
                        "negative_prompt_2 is not used: without negative_prompt this SDXL pipeline "
                        "(force_zeros_for_empty_prompt=True) makes the negative embedding all zeros.",
                        stacklevel=4,
                    )
                return []  # the model sees zeros, not tokens: no negative tokens are invented
            first = texts.get("negative_prompt") or ""
            second = texts.get("negative_prompt_2") or first
            names = ("negative_prompt", "negative_prompt_2")
        segs = [
            TokenSegment(names[0], first, "tokenizer", tokenize_prompt(pipe.tokenizer, first), 0, "features"),
            TokenSegment(names[1], second, "tokenizer_2", tokenize_prompt(pipe.tokenizer_2, second), 0, "features"),
        ]
        longest = max(len(s.tokens.ids) for s in segs)
        primary = segs[0].tokens
        if len(primary.ids) < longest:  # keys past the first EOS: what the first tokenizer put there (its padding)
            padded = pipe.tokenizer(first, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                    truncation=True).input_ids[:longest]  # fmt: skip
            tokens = replace(primary, ids=list(padded), tokens=pipe.tokenizer.convert_ids_to_tokens(list(padded)))
            segs[0] = replace(segs[0], tokens=tokens)
        return segs

    def call_arguments(self, texts: dict[str, str | None]) -> dict[str, Any]:
        return {name: texts.get(name) for name in self.prompt_arguments}

    def conditioning(self, pipe: Any, encode_result: Any, unet_kwargs: dict[str, Any], cond_row: int) -> dict[str, Any]:
        added = unet_kwargs.get("added_cond_kwargs") or {}
        time_ids, text_embeds = added.get("time_ids"), added.get("text_embeds")
        out: dict[str, Any] = {"force_zeros_for_empty_prompt": bool(pipe.config.get("force_zeros_for_empty_prompt"))}
        if encode_result is not None:
            negative = encode_result[1]
            out["negative_embedding"] = (
                "zeros" if negative is not None and not torch.count_nonzero(negative) else
                "text" if negative is not None else "none"
            )  # fmt: skip
        rows = {"cond": cond_row} if time_ids is None or time_ids.shape[0] == 1 else {"cond": cond_row, "uncond": 1 - cond_row}
        if time_ids is not None:
            names = ["original_height", "original_width", "crop_top", "crop_left"]
            names += ["target_height", "target_width"] if time_ids.shape[-1] == 6 else ["aesthetic_score"]
            out["add_time_ids_names"] = names
            out["add_time_ids"] = {b: time_ids[r].detach().float().cpu().tolist() for b, r in rows.items()}
        if text_embeds is not None:  # the pooled embedding of the second text encoder, [batch, dim]
            out["pooled_text_embeds"] = {b: text_embeds[r].detach().float().cpu().tolist() for b, r in rows.items()}
        return out

    def prompt_conditioning(self, pipe: Any, metadata: dict[str, Any], *, device: torch.device,
                            dtype: torch.dtype) -> dict[str, Any]:  # fmt: skip
        """Both prompts' embeddings, and the pooled embedding and ``add_time_ids`` the trace recorded."""
        recorded = metadata.get("conditioning", {})
        if "add_time_ids" not in recorded or "pooled_text_embeds" not in recorded:
            raise ValueError("this SDXL trace did not record the UNet's added conditions (pooled_text_embeds, "
                             "add_time_ids), which a re-run of its UNet call needs.")  # fmt: skip
        added = {"text_embeds": torch.tensor([recorded["pooled_text_embeds"]["cond"]]),  # [1, D2]
                 "time_ids": torch.tensor([recorded["add_time_ids"]["cond"]])}  # [1, 6]  # fmt: skip
        return {**super().prompt_conditioning(pipe, metadata, device=device, dtype=dtype),
                "added_cond_kwargs": {k: v.to(device, dtype) for k, v in added.items()}}

    def model_info(self, pipe: Any, device: torch.device) -> dict[str, Any]:
        info = super().model_info(pipe, device)
        info.update(
            text_encoder_2=type(pipe.text_encoder_2).__name__,
            tokenizer_2_max_length=pipe.tokenizer_2.model_max_length,
            force_zeros_for_empty_prompt=bool(pipe.config.get("force_zeros_for_empty_prompt")),
            addition_embed_type=pipe.unet.config.addition_embed_type,
        )
        return info
