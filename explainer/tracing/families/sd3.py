"""Stable Diffusion 3 / 3.5: an MMDiT transformer with joint attention, three text encoders, flow matching.

The transformer's text sequence is ``[CLIP keys | T5 keys]``: CLIP-L and CLIP-G hidden states are
concatenated along the feature axis (``tokenizer.model_max_length`` keys, each carrying token ``i`` of
both), padded to T5's width, then the T5 hidden states follow along the sequence (``max_sequence_length``
keys). Every ``transformer_blocks[i].attn`` is a joint layer: image queries attend to image and text
keys in one softmax; the recorded map of a text key is that softmax's text→image block
(``joint_attention.py``). SD3.5's MMDiT-X blocks add a second, image-only self-attention (``attn2``):
it sees no text, so it is not a text site and is not recorded.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, ClassVar

import torch
from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..attention import PromptTokens, Word, tokenize_prompt
from ..errors import UnsupportedPipelineError
from ..schedulers import is_flow_scheduler
from ..t5_tokens import tokenize_sequence
from .base import Family, TokenSegment

#: ``StableDiffusion3Pipeline.check_inputs`` refuses a ``max_sequence_length`` above this (diffusers 0.3x-0.42).
T5_SEQUENCE_LIMIT = 512


class SD3Family(Family):
    """SD3 / SD3.5: ``StableDiffusion3{,Img2Img}Pipeline`` (T5 optional: without ``text_encoder_3`` its keys are zeros)."""

    name: ClassVar[str] = "sd3"
    label: ClassVar[str] = "Stable Diffusion 3"
    pipelines: ClassVar[dict[str, type]] = {
        "txt2img": StableDiffusion3Pipeline,
        "img2img": StableDiffusion3Img2ImgPipeline,
    }
    components: ClassVar[tuple[str, ...]] = (
        "transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler",
    )  # fmt: skip
    shared_components: ClassVar[tuple[str, ...]] = ("transformer", "vae", "text_encoder", "text_encoder_2",
                                                    "text_encoder_3")  # fmt: skip
    prompt_arguments: ClassVar[tuple[str, ...]] = ("prompt_2", "negative_prompt_2", "prompt_3", "negative_prompt_3")
    options: ClassVar[tuple[str, ...]] = ("max_sequence_length",)
    attention_kind: ClassVar[str] = "joint"
    attention_method: ClassVar[str] = (
        "joint attention: the text block of the joint softmax over image and text keys (each image query's "
        "probability on each text key; the rest of its row went to image keys), QK-norms applied"
    )
    #: the maps record={"method": ...} can ask for, each described for metadata["attention_method"]
    attention_methods: ClassVar[dict[str, str]] = {
        "probabilities": attention_method,
        "concept": (
            "ConceptAttention-style maps (Helbling et al., 2025): per head, softmax over the text tokens (CLIP and "
            "T5 keys) of the dot products of each image token's attention output with the text tokens' attention "
            "outputs (softmax(QK^T/sqrt(d))V before the output projections), head-averaged; every joint block"
        ),
    }

    # ------------------------------------------------------------------ options

    def configure(self, pipe: Any, options: dict[str, Any]) -> dict[str, Any]:
        settings = super().configure(pipe, options)
        length = settings.get("max_sequence_length")
        if length is not None:
            if isinstance(length, bool) or not isinstance(length, int):
                raise TypeError(f"max_sequence_length must be an int, not {type(length).__name__}.")
            if not 1 <= length <= T5_SEQUENCE_LIMIT:
                raise ValueError(
                    f"max_sequence_length={length} is outside 1..{T5_SEQUENCE_LIMIT}, the T5 sequence lengths "
                    f"{type(pipe).__name__} accepts (default 256)."
                )
        self.pipe = pipe
        return settings

    def max_sequence_length(self, pipe: Any) -> int:
        """T5 positions the transformer attends to: the option given, else the pipeline's default (256)."""
        from ..request import call_default

        length = self.settings.get("max_sequence_length")
        return int(length if length is not None else call_default(pipe, "max_sequence_length"))

    def call_arguments(self, texts: dict[str, str | None]) -> dict[str, Any]:
        call = {name: texts.get(name) for name in self.prompt_arguments}
        if self.settings.get("max_sequence_length") is not None:
            call["max_sequence_length"] = self.settings["max_sequence_length"]
        return call

    # ------------------------------------------------------------------ the transformer

    def denoiser(self, pipe: Any) -> torch.nn.Module:
        return pipe.transformer

    def attention_sites(self, pipe: Any) -> list[tuple[str, Any, int]]:
        """Every ``transformer_blocks.{i}.attn`` (joint image+text attention), at the patch grid.

        ``level`` is ``log2(patch_size)``: the patch grid is the latent grid halved that many times.
        """
        patch = int(pipe.transformer.config.patch_size)
        level = int(round(math.log2(patch)))
        if 2**level != patch:
            raise UnsupportedPipelineError(f"transformer patch_size={patch} is not a power of two; the tracer needs one.")
        return [(f"transformer_blocks.{i}.attn", block.attn, level)
                for i, block in enumerate(pipe.transformer.transformer_blocks)]  # fmt: skip

    def size_multiple(self, pipe: Any) -> int:
        """Sides must be multiples of ``vae_scale_factor * patch_size`` (the latent is cut into patches)."""
        return pipe.vae_scale_factor * int(pipe.transformer.config.patch_size)

    def default_size(self, pipe: Any) -> tuple[int, int]:
        side = int(pipe.transformer.config.sample_size) * pipe.vae_scale_factor
        return side, side

    def check_mode(self, pipe: Any, mode: str) -> None:
        if mode not in self.pipelines:
            raise UnsupportedPipelineError(
                f"{self.label} pipelines are traced for text-to-image and image-to-image; mask= (inpainting) is "
                "not supported for them yet."
            )
        channels = pipe.transformer.config.in_channels
        if channels != pipe.vae.config.latent_channels:
            raise UnsupportedPipelineError(
                f"pipe's transformer takes {channels} channels but its VAE makes {pipe.vae.config.latent_channels}; "
                "the tracer needs them equal."
            )

    # ------------------------------------------------------------------ schedule

    def model_output(self, scheduler: SchedulerMixin) -> str:
        if not is_flow_scheduler(scheduler):
            raise ValueError(
                f"scheduler={type(scheduler).__name__} cannot run {self.label}: the model is trained with flow "
                "matching and predicts a velocity; use a FlowMatch scheduler (the pipeline's own, "
                "FlowMatchEulerDiscreteScheduler)."
            )
        return super().model_output(scheduler)

    def guided(self, pipe: Any, guidance_scale: float, texts: dict[str, str | None] | None = None) -> bool:
        return guidance_scale > 1  # StableDiffusion3Pipeline.do_classifier_free_guidance

    def start_step(self, num_inference_steps: int, strength: float) -> int:
        """``StableDiffusion3Img2ImgPipeline.get_timesteps``: ``int(max(n - min(n * strength, n), 0))``."""
        return int(max(num_inference_steps - min(num_inference_steps * strength, num_inference_steps), 0))

    def timestep_arguments(self, pipe: Any, scheduler: SchedulerMixin, height: int, width: int,
                           num_inference_steps: int | None = None) -> dict[str, Any]:  # fmt: skip
        """``mu`` when the scheduler shifts dynamically (as the SD3 pipelines compute it), else nothing."""
        config = scheduler.config
        if not config.get("use_dynamic_shifting", None):
            return {}
        patch = int(pipe.transformer.config.patch_size)
        seq = (height // pipe.vae_scale_factor // patch) * (width // pipe.vae_scale_factor // patch)
        base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
        base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.16)
        slope = (max_shift - base_shift) / (max_len - base_len)
        return {"mu": seq * slope + base_shift - slope * base_len}

    # ------------------------------------------------------------------ text

    def clip_length(self, pipe: Any) -> int:
        """CLIP keys at the start of the text sequence (``tokenizer.model_max_length``)."""
        return int(pipe.tokenizer.model_max_length)

    def max_tokens(self, pipe: Any) -> int:
        return self.clip_length(pipe) + self.max_sequence_length(pipe)

    def token_limit(self, pipe: Any, segment: TokenSegment) -> int:
        return self.max_sequence_length(pipe) if segment.tokenizer == "tokenizer_3" else super().token_limit(pipe, segment)

    def texts_for(self, texts: dict[str, str | None], branch: str) -> tuple[tuple[str, str], ...]:
        """``(argument, text)`` per encoder as the SD3 pipeline fills them in (``_2``/``_3`` default to the first)."""
        base = "prompt" if branch == "cond" else "negative_prompt"
        first = texts.get(base) or ""
        return ((base, first), (f"{base}_2", texts.get(f"{base}_2") or first), (f"{base}_3", texts.get(f"{base}_3") or first))

    def token_segments(self, pipe: Any, texts: dict[str, str | None], branch: str) -> list[TokenSegment]:
        (n1, t1), (n2, t2), (n3, t3) = self.texts_for(texts, branch)
        segs = [
            TokenSegment(n1, t1, "tokenizer", tokenize_prompt(pipe.tokenizer, t1), 0, "features"),
            TokenSegment(n2, t2, "tokenizer_2", tokenize_prompt(pipe.tokenizer_2, t2), 0, "features"),
        ]
        if getattr(pipe, "text_encoder_3", None) is not None and getattr(pipe, "tokenizer_3", None) is not None:
            t5 = tokenize_sequence(pipe.tokenizer_3, t3, self.max_sequence_length(pipe))
            segs.append(TokenSegment(n3, t3, "tokenizer_3", t5, self.clip_length(pipe), "sequence"))
        return segs

    def recorded_keys(self, pipe: Any, segments: list[TokenSegment], token_mode: str) -> list[int]:
        """CLIP keys ``0 .. n_clip - 1`` (the longer of the two CLIP readings), then the T5 pieces' keys."""
        if not segments:
            return []
        if token_mode == "all":
            return list(range(self.max_tokens(pipe)))
        clip = max(len(s.tokens.ids) for s in segments if s.combine == "features")
        keys = list(range(clip))
        for seg in segments:
            if seg.combine == "sequence":
                keys += range(seg.key_offset, seg.key_offset + len(seg.tokens.ids))
        return keys

    def primary_tokens(self, segments: list[TokenSegment], keys: list[int]) -> PromptTokens:
        """One entry per recorded key: CLIP-L's token (its padding past its EOS), then T5's piece (its padding).

        Words: CLIP-L's words, then T5's, each with indices into this list (a word of the prompt shows twice,
        once per sequence the transformer attends to; T5's pieces start with ``▁``).
        """
        pipe = self.pipe
        clip_seg = segments[0]
        t5_seg = next((s for s in segments if s.combine == "sequence"), None)
        clip_len = self.clip_length(pipe)
        position = {k: i for i, k in enumerate(keys)}
        clip_pad = pipe.tokenizer(clip_seg.text, padding="max_length", max_length=clip_len, truncation=True).input_ids
        t5_pad: list[int] = []
        if t5_seg is not None:
            t5_pad = pipe.tokenizer_3(t5_seg.text, padding="max_length", max_length=self.max_sequence_length(pipe),
                                      truncation=True, add_special_tokens=True).input_ids  # fmt: skip
        ids: list[int] = []
        tokens: list[str] = []
        for k in keys:
            if k < clip_len:
                ids.append(int(clip_pad[k]))
                tokens.append(pipe.tokenizer.convert_ids_to_tokens(int(clip_pad[k])))
            elif t5_seg is not None and k - clip_len < len(t5_pad):
                ids.append(int(t5_pad[k - clip_len]))
                tokens.append(pipe.tokenizer_3.convert_ids_to_tokens(int(t5_pad[k - clip_len])))
            else:  # no T5 encoder: the pipeline feeds zeros at these keys
                ids.append(-1)
                tokens.append("<zeros>")
        words = [w for w in clip_seg.tokens.words if all(j in position for j in w.token_indices)]
        if t5_seg is not None:
            off = t5_seg.key_offset
            words += [Word(w.text, tuple(position[off + j] for j in w.token_indices)) for w in t5_seg.tokens.words
                      if all(off + j in position for j in w.token_indices)]  # fmt: skip
        return replace(clip_seg.tokens, ids=ids, tokens=tokens, words=words)

    # ------------------------------------------------------------------ metadata

    def conditioning(self, pipe: Any, encode_result: Any, unet_kwargs: dict[str, Any], cond_row: int) -> dict[str, Any]:
        context = unet_kwargs.get("encoder_hidden_states")
        pooled = unet_kwargs.get("pooled_projections")
        return {
            "text_sequence": {
                "clip_keys": self.clip_length(pipe),
                "t5_keys": None if context is None else int(context.shape[1]) - self.clip_length(pipe),
                "t5": "text_encoder_3" if getattr(pipe, "text_encoder_3", None) is not None
                else "absent: the pipeline feeds zeros at the T5 keys",
            },
            "pooled_projections_dim": None if pooled is None else int(pooled.shape[-1]),
            "dual_attention_layers": list(pipe.transformer.config.get("dual_attention_layers", ()) or ()),
            "dual_attention_note": "SD3.5 MMDiT-X attn2 layers are image-only self-attention: not recorded",
        }

    def model_info(self, pipe: Any, device: torch.device) -> dict[str, Any]:
        transformer, vae = pipe.transformer, pipe.vae
        cfg = transformer.config
        enc3 = getattr(pipe, "text_encoder_3", None)
        return {
            "name_or_path": getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path"),
            "pipeline": type(pipe).__name__,
            "transformer": type(transformer).__name__,
            "vae": type(vae).__name__,
            "text_encoder": type(pipe.text_encoder).__name__,
            "text_encoder_2": type(pipe.text_encoder_2).__name__,
            "text_encoder_3": None if enc3 is None else type(enc3).__name__,
            "dtype": str(transformer.dtype).removeprefix("torch."),
            "device": str(device),
            "vae_scale_factor": pipe.vae_scale_factor,
            "vae_scaling_factor": vae.config.scaling_factor,
            "vae_shift_factor": vae.config.get("shift_factor"),
            "latent_channels": cfg.in_channels,
            "patch_size": cfg.patch_size,
            "num_layers": cfg.num_layers,
            "joint_attention_dim": cfg.joint_attention_dim,
            "qk_norm": cfg.get("qk_norm"),
            "tokenizer_max_length": pipe.tokenizer.model_max_length,
            "max_sequence_length": self.max_sequence_length(pipe),
        }
