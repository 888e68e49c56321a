"""FLUX.1: a diffusion transformer with double- and single-stream blocks, flow matching, 2x2-packed latents.

What differs from the UNet families, and how the tracer reads it:

- **Text.** CLIP gives only a pooled vector (``pooled_projections``); the transformer attends to the
  T5 sequence (``tokenizer_2``, ``max_sequence_length`` tokens). The T5 segment is the one with key
  positions; the CLIP segment is kept with ``combine="pooled"``.
- **Joint attention.** In a double-stream block (``transformer_blocks.N.attn``) text and image have their
  own projections and QK-norms, then one softmax runs over ``cat([text, image])`` keys (text first), with
  FLUX's RoPE applied to q and k. A single-stream block (``single_transformer_blocks.N.attn``) carries the
  text inside ``hidden_states``: its first ``text_seq_len`` tokens. Both are recorded as the text block of
  the softmax (:class:`FluxAttentionRecorder`); each layer's name says which kind of block it is.
- **Packed latents.** The pipeline packs the ``[C, h, w]`` latent into ``[h/2 * w/2, 4C]`` tokens; the
  tracer stores the unpacked ``[C, h, w]`` (:func:`unpack`), the attention maps on the ``h/2 x w/2`` grid.
- **Guidance.** FLUX.1-dev is guidance-distilled (``guidance_embeds=True``): ``guidance_scale`` is an input
  of the transformer, not a mix of two branches, so there is no unconditional branch. True classifier-free
  guidance runs only with ``true_cfg_scale > 1`` *and* a ``negative_prompt``, as two separate transformer
  calls per step (prompt first, then negative).
- **Schedule.** Flow matching with a resolution-dependent shift ``mu`` (``calculate_shift``), recorded in
  ``metadata["schedule"]``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import FluxImg2ImgPipeline, FluxPipeline
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from ..attention import tokenize_prompt
from ..errors import UnsupportedPipelineError
from ..joint_attention import JointAttentionRecorder, concept_maps, text_probabilities
from ..t5_tokens import tokenize_sequence
from .base import Family, TokenSegment

#: the two kinds of FLUX transformer block with attention, by module-path prefix
BLOCK_KINDS = {"transformer_blocks": "double-stream", "single_transformer_blocks": "single-stream"}


def block_kind(name: str) -> str:
    """``"double-stream"`` or ``"single-stream"``: the kind of FLUX block an attention layer path belongs to."""
    return BLOCK_KINDS.get(name.split(".")[0], "unknown")


def unpack(packed: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """FLUX's packed latent tokens of one image back to a latent grid (diffusers' ``_unpack_latents``).

    Args:
        packed: ``[h/2 * w/2, 4C]`` tokens (a batch row).
        channels, height, width: the latent's ``C``, ``h``, ``w``.

    Returns:
        ``[C, h, w]``.
    """
    grid = packed.reshape(height // 2, width // 2, channels, 2, 2)  # [h/2, w/2, C, 2, 2]
    return grid.permute(2, 0, 3, 1, 4).reshape(channels, height, width)


def pack(latent: torch.Tensor) -> torch.Tensor:
    """``[C, h, w]`` -> ``[h/2 * w/2, 4C]`` as ``FluxPipeline._pack_latents`` packs one image."""
    c, h, w = latent.shape
    return latent.reshape(c, h // 2, 2, w // 2, 2).permute(1, 3, 0, 2, 4).reshape((h // 2) * (w // 2), c * 4)


class FluxAttentionRecorder(JointAttentionRecorder):
    """Processor for one FLUX attention layer: the original processor computes the output, we keep q and k.

    ``to_q``/``to_k`` (image stream or, in a single-stream block, text and image together), ``add_k_proj``
    (text stream of a double-stream block) and their QK-norms get ``forward`` wrappers that hand over the
    tensors the processor used, after the norms. RoPE is applied here exactly as ``FluxAttnProcessor`` applies
    it (``apply_rotary_emb(x, image_rotary_emb, sequence_dim=1)``; it is elementwise per position, so the
    image rows and the text rows take the matching rows of the rotary table). The text block of the
    softmax over all keys goes to ``sink(layer, probs [B, 1 | H, N, T])``.

    With ``method="concept"`` the maps are ConceptAttention-style instead (Helbling et al., 2025): the
    attention *outputs* (softmax(qk)v, before the output projection; the inputs of ``to_out[0]`` and
    ``to_add_out`` in a double-stream block, the processor's own output in a single-stream one) of the image
    tokens are dotted with those of the text tokens, per head, and a softmax over the text tokens turns each
    image token's row into a distribution over the prompt's tokens (:func:`concept_maps`).

    Args:
        layer: the layer being recorded.
        original: the layer's processor before recording.
        sink: called with ``(layer, probs)`` after each call while ``active()``.
        active: whether the recorder is recording now.
        head_mean: store the head average (``False`` keeps every head).
        method: ``"probabilities"`` or ``"concept"``.
    """

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: Any = None,
                 **kwargs: Any) -> Any:  # fmt: skip
        self.seen = {}
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **kwargs)
        seen, self.seen = self.seen, {}
        if not self.active():
            return out
        double = encoder_hidden_states is not None
        if "query" not in seen or "key" not in seen or (double and "text_key" not in seen):
            raise RuntimeError(
                f"FLUX attention layer {self.layer.name}: its processor {type(self.original).__name__} did not call "
                "to_q/to_k/add_k_proj (fused projections?); the tracer cannot read its q and k."
            )
        if self.method == "concept":
            n = self.layer.height * self.layer.width
            image, text = (seen["image_out"], seen["text_out"]) if double else (out[:, -n:], out[:, :-n])
            self.sink(self.layer, concept_maps(image, text, attn.head_dim, head_mean=self.head_mean))
        else:
            self.sink(self.layer, self.text_block(attn, seen, image_rotary_emb, double))
        return out

    def text_block(self, attn: Any, seen: dict[str, torch.Tensor], rotary: Any, double: bool) -> torch.Tensor:
        """``[B, 1 | H, N, T]``: each image query's probabilities on the text keys (softmax over all keys)."""
        query, key = as_heads(seen["query"], attn.head_dim), as_heads(seen["key"], attn.head_dim)  # [B, S, H, d]
        n = self.layer.height * self.layer.width  # image tokens (the packed grid)
        if double:  # FluxAttnProcessor: keys cat([text, image]) along the sequence, then RoPE on the whole
            keys = torch.cat([as_heads(seen["text_key"], attn.head_dim), key], dim=1)
        else:  # single-stream: hidden_states is already cat([text, image]); its last n rows are the image
            keys, query = key, query[:, key.shape[1] - n :]
        t = keys.shape[1] - n
        if rotary is not None:
            keys = apply_rotary_emb(keys, rotary, sequence_dim=1)
            query = apply_rotary_emb(query, tuple(r[t:] for r in rotary), sequence_dim=1)
        return text_probabilities(query.transpose(1, 2), keys.transpose(1, 2), slice(0, t), head_mean=self.head_mean)


def as_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``[B, S, H * d]`` (a projection's output) or ``[B, S, H, d]`` (after a QK-norm) -> ``[B, S, H, d]``."""
    return x if x.ndim == 4 else x.unflatten(-1, (-1, head_dim))


def check_max_sequence_length(value: Any, limit: int) -> int:
    """``max_sequence_length`` as an int in ``1 .. limit`` (the T5 tokenizer's length limit)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"max_sequence_length must be an integer number of T5 tokens, not {type(value).__name__}.")
    if not 1 <= int(value) <= limit:
        raise ValueError(
            f"max_sequence_length={int(value)} is over the T5 limit: this pipeline's T5 tokenizer "
            f"(tokenizer_2) takes at most {limit} tokens; use 1..{limit}."
            if int(value) > limit else f"max_sequence_length={int(value)} is not allowed; use 1..{limit}."
        )
    return int(value)


class FluxFamily(Family):
    """FLUX.1 (dev, schnell and fine-tunes in their layout): ``FluxPipeline`` and ``FluxImg2ImgPipeline``."""

    name: ClassVar[str] = "flux"
    label: ClassVar[str] = "FLUX.1"
    pipelines: ClassVar[dict[str, type]] = {"txt2img": FluxPipeline, "img2img": FluxImg2ImgPipeline}
    components: ClassVar[tuple[str, ...]] = (
        "transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler",
    )  # fmt: skip
    shared_components: ClassVar[tuple[str, ...]] = ("transformer", "vae", "text_encoder", "text_encoder_2")
    prompt_arguments: ClassVar[tuple[str, ...]] = ("prompt_2", "negative_prompt_2")
    options: ClassVar[tuple[str, ...]] = ("max_sequence_length", "true_cfg_scale")
    attention_kind: ClassVar[str] = "joint"
    attention_method: ClassVar[str] = (
        "joint-attention probabilities: image queries on the T5 text keys, softmax over all keys (text and image) "
        "with FLUX's QK-norms and RoPE, in double-stream (transformer_blocks) and single-stream "
        "(single_transformer_blocks) blocks"
    )
    #: the maps record={"method": ...} can ask for, each described for metadata["attention_method"]
    attention_methods: ClassVar[dict[str, str]] = {
        "probabilities": attention_method,
        "concept": (
            "ConceptAttention-style maps (Helbling et al., 2025): per head, softmax over the T5 text tokens of the "
            "dot products of each image token's attention output with the text tokens' attention outputs "
            "(softmax(QK^T/sqrt(d))V before the output projection), head-averaged; double- and single-stream blocks"
        ),
    }
    #: the processor class the recorder installs on each recorded attention layer
    joint_recorder: ClassVar[type] = FluxAttentionRecorder
    #: true CFG runs the transformer once per branch (batch 1 each), not on a [negative, prompt] batch
    separate_guidance_calls: ClassVar[bool] = True
    #: FluxImg2ImgPipeline takes its size from height/width (default 1024^2 for FLUX.1), not from the image
    edit_needs_size: ClassVar[bool] = True

    # ------------------------------------------------------------------ options

    def configure(self, pipe: Any, options: dict[str, Any]) -> dict[str, Any]:
        settings = super().configure(pipe, options)
        if "max_sequence_length" in settings:
            settings["max_sequence_length"] = check_max_sequence_length(settings["max_sequence_length"],
                                                                        self.t5_limit(pipe))  # fmt: skip
        if "true_cfg_scale" in settings:
            value = settings["true_cfg_scale"]
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise ValueError(f"true_cfg_scale={value!r} is not allowed; use a finite number >= 0 (1 disables it).")
            settings["true_cfg_scale"] = float(value)
        return settings

    @staticmethod
    def t5_limit(pipe: Any) -> int:
        """The T5 tokenizer's length limit (``tokenizer_2.model_max_length``; 512 for FLUX.1)."""
        return int(pipe.tokenizer_2.model_max_length)

    def sequence_length(self, pipe: Any) -> int:
        """T5 tokens the transformer attends to: ``max_sequence_length`` given, else the pipeline's default."""
        if "max_sequence_length" in self.settings:
            return self.settings["max_sequence_length"]
        from ..request import call_default

        return min(int(call_default(pipe, "max_sequence_length")), self.t5_limit(pipe))

    # ------------------------------------------------------------------ pipelines, denoiser, sites

    def check_mode(self, pipe: Any, mode: str) -> None:
        if mode not in self.pipelines:
            raise UnsupportedPipelineError(
                "mask= (inpainting) is not supported for FLUX.1 pipelines yet; they can be traced for text-to-image "
                "and image-to-image (image= without mask=)."
            )
        channels = self.denoiser(pipe).config.in_channels
        if channels != 4 * pipe.vae.config.latent_channels:
            raise UnsupportedPipelineError(
                f"pipe's transformer takes {channels} input channels, not 4 x the VAE's {pipe.vae.config.latent_channels} "
                "latent channels (2x2-packed latents); FLUX Fill / Control transformers are not supported."
            )

    def denoiser(self, pipe: Any) -> torch.nn.Module:
        return pipe.transformer

    def attention_sites(self, pipe: Any) -> list[tuple[str, Any, int]]:
        """Every double-stream then every single-stream block's attention, level 1 (the 2x2-packed grid)."""
        found = []
        for name, module in self.denoiser(pipe).named_modules():
            parts = name.split(".")
            if len(parts) == 3 and parts[0] in BLOCK_KINDS and parts[2] == "attn":
                found.append(((list(BLOCK_KINDS).index(parts[0]), int(parts[1])), name, module))
        found.sort(key=lambda item: item[0])
        return [(name, module, 1) for _, name, module in found]

    # ------------------------------------------------------------------ latents, sizes, schedule

    def latent_shape(self, pipe: Any, height: int, width: int) -> tuple[int, int, int]:
        f = pipe.vae_scale_factor * 2
        return self.denoiser(pipe).config.in_channels // 4, 2 * (height // f), 2 * (width // f)

    def size_multiple(self, pipe: Any) -> int:
        """VAE scale factor x 2 (latents are packed in 2x2 patches)."""
        return pipe.vae_scale_factor * 2

    def default_size(self, pipe: Any) -> tuple[int, int]:
        side = int(pipe.default_sample_size) * pipe.vae_scale_factor
        return side, side

    def to_grid(self, pipe: Any, row: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        """One batch row of a latent-shaped tensor as ``[C, h, w]``: packed tokens are unpacked."""
        return unpack(row, *shape) if row.ndim == 2 else row

    def timestep_arguments(self, pipe: Any, scheduler: Any, height: int, width: int,
                           num_inference_steps: int | None = None) -> dict[str, Any]:  # fmt: skip
        """``mu`` (FLUX's resolution-dependent shift, from the image's packed token count) and the pipeline's
        default ``sigmas`` (``linspace(1, 1/steps, steps)``), as ``FluxPipeline.__call__`` passes them."""
        f = pipe.vae_scale_factor * 2
        seq_len = (height // f) * (width // f)
        config = scheduler.config
        mu = calculate_shift(seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))  # fmt: skip
        out: dict[str, Any] = {"mu": float(mu)}
        if num_inference_steps is not None and not config.get("use_flow_sigmas", False):
            out["sigmas"] = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps).tolist()
        return out

    def schedule_info(self, scheduler: Any, arguments: dict[str, Any]) -> dict[str, Any]:
        info = super().schedule_info(scheduler, {k: v for k, v in arguments.items() if k != "sigmas"})
        if info and "mu" in arguments:
            info["mu_used"] = bool(scheduler.config.get("use_dynamic_shifting", False))
            info["mu_note"] = ("FLUX's resolution shift: mu = calculate_shift(image tokens), used by the scheduler "
                               "only with use_dynamic_shifting" if info["mu_used"] else
                               "computed by the pipeline but unused: use_dynamic_shifting is off (fixed shift)")  # fmt: skip
        return info

    def start_step(self, num_inference_steps: int, strength: float) -> int:
        """``FluxImg2ImgPipeline.get_timesteps``: ``int(max(steps - min(steps * strength, steps), 0))``."""
        return int(max(num_inference_steps - min(num_inference_steps * strength, num_inference_steps), 0))

    # ------------------------------------------------------------------ guidance

    def guided(self, pipe: Any, guidance_scale: float, texts: dict[str, str | None] | None = None) -> bool:
        """True classifier-free guidance: ``true_cfg_scale > 1`` and a negative prompt (``guidance_scale`` is an
        embedding input of a guidance-distilled transformer, never a second branch)."""
        scale = self.settings.get("true_cfg_scale", 1.0)
        negative = texts is not None and texts.get("negative_prompt") is not None
        if scale > 1 and not negative:
            warnings.warn(
                f"true_cfg_scale={scale:g} has no effect without negative_prompt: FluxPipeline runs true "
                "classifier-free guidance only when both are given; tracing the prompt branch only.",
                stacklevel=4,
            )
        elif negative and scale <= 1:
            warnings.warn(
                f"negative_prompt is ignored: FluxPipeline uses it only with true_cfg_scale > 1 "
                f"(true_cfg_scale={scale:g}); tracing the prompt branch only.",
                stacklevel=4,
            )
        return scale > 1 and negative

    def cfg_scale(self) -> float:
        """The scale that mixes the two branches (``true_cfg_scale``)."""
        return float(self.settings.get("true_cfg_scale", 1.0))

    def no_uncond_reason(self, pipe: Any, guidance_scale: float) -> str:
        """Why this run has no unconditional branch (one phrase)."""
        scale = self.settings.get("true_cfg_scale", 1.0)
        if self.denoiser(pipe).config.guidance_embeds:
            return (f"no unconditional branch: this FLUX model is guidance-distilled (guidance_embeds=True); "
                    f"guidance_scale={guidance_scale:g} is an embedding input of the transformer, and true "
                    f"classifier-free guidance (true_cfg_scale > 1 with a negative_prompt) was off "
                    f"(true_cfg_scale={scale:g})")  # fmt: skip
        return (f"no unconditional branch: FLUX runs one branch unless true_cfg_scale > 1 with a negative_prompt "
                f"(true_cfg_scale={scale:g}); guidance_scale does nothing without guidance_embeds")  # fmt: skip

    # ------------------------------------------------------------------ text

    def max_tokens(self, pipe: Any) -> int:
        return self.sequence_length(pipe)

    def token_segments(self, pipe: Any, texts: dict[str, str | None], branch: str) -> list[TokenSegment]:
        names = ("prompt", "prompt_2") if branch == "cond" else ("negative_prompt", "negative_prompt_2")
        clip_text = texts.get(names[0]) or ""
        t5_text = texts.get(names[1]) or clip_text
        t5_name = names[1] if texts.get(names[1]) else names[0]
        t5 = tokenize_sequence(pipe.tokenizer_2, t5_text, self.sequence_length(pipe))  # sentencepiece words
        clip = tokenize_prompt(pipe.tokenizer, clip_text)
        return [
            TokenSegment(t5_name, t5_text, "tokenizer_2", t5, 0, "sequence"),
            TokenSegment(names[0], clip_text, "tokenizer", clip, 0, "pooled"),
        ]

    def token_limit(self, pipe: Any, segment: TokenSegment) -> int:
        """``max_sequence_length`` for the T5 segment, CLIP's ``model_max_length`` for the pooled one."""
        return self.sequence_length(pipe) if segment.tokenizer == "tokenizer_2" else super().token_limit(pipe, segment)

    def recorded_keys(self, pipe: Any, segments: list[TokenSegment], token_mode: str) -> list[int]:
        sequence = [s for s in segments if s.combine == "sequence"]
        if not sequence:
            return []
        if token_mode == "all":
            return list(range(self.max_tokens(pipe)))
        return list(range(max(s.key_offset + len(s.tokens.ids) for s in sequence)))

    def read_embeddings(self, result: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        return result[0], None  # (prompt_embeds [B, T, D], pooled [B, D], text_ids [T, 3]); one branch per call

    def conditioning(self, pipe: Any, encode_result: Any, unet_kwargs: dict[str, Any], cond_row: int) -> dict[str, Any]:
        guidance = unet_kwargs.get("guidance")
        out: dict[str, Any] = {
            "guidance_embeds": bool(self.denoiser(pipe).config.guidance_embeds),
            # what the transformer's guidance embedder received: the pipeline's guidance_scale (it multiplies by 1000)
            "guidance_embedding": None if guidance is None else float(guidance.reshape(-1)[0]),
            "true_cfg_scale": self.cfg_scale(),
        }
        hidden, context = unet_kwargs.get("hidden_states"), unet_kwargs.get("encoder_hidden_states")
        if hidden is not None:
            out["image_seq_len"] = int(hidden.shape[1])  # packed latent tokens
        if context is not None:
            out["text_seq_len"] = int(context.shape[1])  # T5 tokens; first in every joint softmax
        pooled = unet_kwargs.get("pooled_projections")
        if pooled is not None:  # CLIP's pooled text embedding, [1, D]
            out["pooled_projections"] = {"cond": pooled[0].detach().float().cpu().tolist()}
        return out

    def call_arguments(self, texts: dict[str, str | None]) -> dict[str, Any]:
        call = {name: texts.get(name) for name in self.prompt_arguments}
        call.update(self.settings)
        return call

    def model_info(self, pipe: Any, device: torch.device) -> dict[str, Any]:
        transformer, vae = self.denoiser(pipe), pipe.vae
        config = transformer.config
        return {
            "name_or_path": getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path"),
            "pipeline": type(pipe).__name__,
            "transformer": type(transformer).__name__,
            "vae": type(vae).__name__,
            "text_encoder": type(pipe.text_encoder).__name__,
            "text_encoder_2": type(pipe.text_encoder_2).__name__,
            "dtype": str(transformer.dtype).removeprefix("torch."),
            "device": str(device),
            "vae_scale_factor": pipe.vae_scale_factor,
            "vae_scaling_factor": vae.config.scaling_factor,
            "vae_shift_factor": vae.config.get("shift_factor"),
            "latent_channels": config.in_channels // 4,
            "packed_channels": config.in_channels,
            "num_layers": config.num_layers,
            "num_single_layers": config.num_single_layers,
            "num_attention_heads": config.num_attention_heads,
            "guidance_embeds": bool(config.guidance_embeds),
            "joint_attention_dim": config.joint_attention_dim,
            "tokenizer_max_length": pipe.tokenizer.model_max_length,
            "tokenizer_2_max_length": pipe.tokenizer_2.model_max_length,
            "max_sequence_length": self.sequence_length(pipe),
            # which kind of block each attention layer sits in (the maps of both kinds are recorded)
            "attention_blocks": {name: block_kind(name) for name, _, _ in self.attention_sites(pipe)},
        }
