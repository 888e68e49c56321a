"""What every model family answers for the tracer (see ``ARCHITECTURE.md``, "a family layer").

The recorder, the planner and the builder ask a :class:`Family` instead of assuming a Stable
Diffusion 1.x layout: which pipeline class runs each mode, how a prompt becomes token segments,
where the text-to-image attention sites are, the latent layout, the schedule kind and what the
model output means, and which extra conditioning is worth keeping.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers.models.attention_processor import Attention
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..attention import PromptTokens, cross_attention_modules, tokenize_prompt
from ..errors import UnsupportedPipelineError
from ..schedulers import FLOW_VELOCITY, prediction_type, scheduler_space

#: What the denoiser's raw output means, per diffusers ``prediction_type`` (one x0 formula per kind).
MODEL_OUTPUTS = {
    "epsilon": "the predicted noise (epsilon)",
    "v_prediction": "the predicted velocity v (not epsilon)",
    "sample": "the predicted clean latent",
    FLOW_VELOCITY: "the predicted flow velocity v = noise - x0 (not epsilon; x0 = x_t - sigma * v, sigma the flow sigma)",
}


@dataclass(frozen=True)
class TokenSegment:
    """One tokenizer's reading of one text, and where its tokens sit among the attention keys.

    Attributes:
        name: the argument the text came from (``"prompt"``, ``"prompt_2"``, ``"negative_prompt"``...).
        text: the text as the pipeline encoded it.
        tokenizer: the pipeline attribute of the tokenizer (``"tokenizer"``, ``"tokenizer_2"``).
        tokens: ids, BPE strings, words and truncated tokens, BOS .. first EOS.
        key_offset: index among the attention keys of this segment's first token.
        combine: ``"sequence"`` (the segment has key positions of its own) or ``"features"`` (its
            encoder's hidden states are concatenated along the feature axis with the other segments',
            so key ``i`` carries token ``i`` of every such segment at once).
    """

    name: str
    text: str
    tokenizer: str
    tokens: PromptTokens
    key_offset: int = 0
    combine: str = "sequence"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "text": self.text,
            "tokenizer": self.tokenizer,
            "key_offset": self.key_offset,
            "combine": self.combine,
            "ids": list(self.tokens.ids),
            "tokens": list(self.tokens.tokens),
            "words": [[w.text, list(w.token_indices)] for w in self.tokens.words],
            "truncated": list(self.tokens.truncated),
        }


_DERIVED: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


class Family:
    """Base adapter: the questions the tracer asks about a pipeline. Subclasses fill the class variables.

    Attributes:
        name: short id kept in trace metadata (``"sd"``, ``"sdxl"``).
        label: what users call it, for messages.
        pipelines: the diffusers pipeline class serving each mode (``txt2img``, ``img2img``, ``inpaint``).
        components: pipeline attributes the tracer needs.
        shared_components: components compared to reuse a derived pipeline (``from_pipe`` cache).
        prompt_arguments: extra text arguments this family accepts besides ``prompt``/``negative_prompt``.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    pipelines: ClassVar[dict[str, type]] = {}
    components: ClassVar[tuple[str, ...]] = ()
    shared_components: ClassVar[tuple[str, ...]] = ()
    prompt_arguments: ClassVar[tuple[str, ...]] = ()
    #: non-text call arguments this family accepts (e.g. ``max_sequence_length``); checked by :meth:`configure`.
    options: ClassVar[tuple[str, ...]] = ()
    #: how text reaches the image: ``"cross"`` (UNet ``attn2`` layers) or ``"joint"`` (one softmax over image and
    #: text keys, diffusion transformers); the recorder picks its attention processor by it.
    attention_kind: ClassVar[str] = "cross"
    #: how the recorded maps are computed, in one phrase (``metadata["attention_method"]``, shown by ``info``)
    attention_method: ClassVar[str] = "cross-attention probabilities softmax(QK^T / sqrt(d)) of the attn2 layers"

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}  # the checked options of this request (see configure)

    def configure(self, pipe: Any, options: dict[str, Any]) -> dict[str, Any]:
        """Check the family-specific options given to ``trace`` and keep them in :attr:`settings`.

        Args:
            pipe: the pipeline.
            options: option name -> value; ``None`` values mean "not given" and are dropped.

        Returns:
            The checked options (also kept as ``self.settings``).

        Raises:
            UnsupportedPipelineError: an option this family does not take.
        """
        given = {k: v for k, v in options.items() if v is not None}
        for name in given:
            if name not in self.options:
                raise UnsupportedPipelineError(
                    f"{name}= does not apply to {self.label} pipelines ({type(pipe).__name__}); leave {name} out."
                )
        self.settings = dict(given)
        return self.settings

    # ------------------------------------------------------------------ which pipelines

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        """Whether ``pipe`` is one of this family's pipeline classes."""
        return isinstance(pipe, tuple(cls.pipelines.values()))

    def check(self, pipe: Any) -> Any:
        """Refuse a pipeline that lacks a component the tracer needs."""
        for name in self.components:
            if getattr(pipe, name, None) is None:
                raise UnsupportedPipelineError(f"pipe has no {name}; the tracer needs a complete text-to-image pipeline.")
        return pipe

    def pipeline_for(self, pipe: Any, mode: str) -> Any:
        """The pipeline that runs ``mode``: ``pipe`` itself if it is of that class, else ``Class.from_pipe(pipe)``.

        ``from_pipe`` shares the components (no copy, no weights loaded). The derived pipelines are cached
        (weakly, by ``pipe``) so that repeated traces do not rebuild them.
        """
        cls = self.pipelines[mode]
        if isinstance(pipe, cls):
            return pipe
        cache = _DERIVED.setdefault(pipe, {})
        derived = cache.get(mode)
        if derived is None or any(getattr(derived, n) is not getattr(pipe, n) for n in self.shared_components):
            from diffusers.utils import logging as diffusers_logging

            level = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()  # from_pipe re-announces each component's dtype
            try:
                derived = cls.from_pipe(pipe)
            finally:
                diffusers_logging.set_verbosity(level)
            cache[mode] = derived
        derived.scheduler = pipe.scheduler  # follow the user's scheduler swaps
        return derived

    # ------------------------------------------------------------------ the denoiser and its attention sites

    def denoiser(self, pipe: Any) -> torch.nn.Module:
        """The network called once per step (its forward hooks see the model output)."""
        return pipe.unet

    def attention_sites(self, pipe: Any) -> list[tuple[str, Attention, int]]:
        """``(module path, module, level)`` of every text-to-image attention layer, in execution order.

        ``level`` counts the stride-2 downsamplings of the latent grid before the layer.
        """
        return cross_attention_modules(self.denoiser(pipe))

    # ------------------------------------------------------------------ latents, sizes, schedules

    def latent_shape(self, pipe: Any, height: int, width: int) -> tuple[int, int, int]:
        """``(C, h, w)`` of the latent for an image of ``height x width`` pixels (no packing)."""
        return pipe.vae.config.latent_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor

    def size_multiple(self, pipe: Any) -> int:
        """Image sides must be multiples of this (VAE scale factor x the UNet's downsampling)."""
        unet = self.denoiser(pipe)
        return pipe.vae_scale_factor * 2 ** int(getattr(unet, "num_upsamplers", len(unet.config.block_out_channels) - 1))

    def default_size(self, pipe: Any) -> tuple[int, int]:
        """``(height, width)`` in pixels of a text-to-image run without ``height``/``width``."""
        sample = self.denoiser(pipe).config.sample_size
        sample_h, sample_w = (sample, sample) if isinstance(sample, int) else tuple(sample)
        return sample_h * pipe.vae_scale_factor, sample_w * pipe.vae_scale_factor

    def schedule_kind(self, scheduler: SchedulerMixin) -> str:
        """``"vp"`` (samples ``sqrt(abar) x0 + sqrt(1 - abar) eps``), ``"ve"`` (``x0 + sigma eps``) or
        ``"flow"`` (``(1 - sigma) x0 + sigma noise``, flow matching)."""
        return scheduler_space(scheduler)

    def timestep_arguments(self, pipe: Any, scheduler: SchedulerMixin, height: int, width: int,
                           num_inference_steps: int | None = None) -> dict[str, Any]:  # fmt: skip
        """Extra ``scheduler.set_timesteps`` arguments the pipeline passes (e.g. FLUX's resolution shift ``mu``
        and its own ``sigmas`` for ``num_inference_steps``)."""
        return {}

    def schedule_info(self, scheduler: SchedulerMixin, arguments: dict[str, Any]) -> dict[str, Any]:
        """What shaped the schedule, for the trace's metadata (``metadata["schedule"]``); JSON-ready.

        Args:
            scheduler: a scheduler of the run's class and config, its timesteps set.
            arguments: what :meth:`timestep_arguments` gave.

        Returns:
            For flow matching the config ``shift``, dynamic shifting and the ``mu`` used; ``{}`` otherwise.
        """
        if self.schedule_kind(scheduler) != "flow":
            return {}
        config = scheduler.config
        info: dict[str, Any] = {
            "kind": "flow",
            "sigma": "flow sigma: x_t = (1 - sigma) * x0 + sigma * noise (trace.sigmas)",
            "alphas_cumprod": "abar of the VP process with the same signal-to-noise ratio, "
            "(1 - sigma)^2 / ((1 - sigma)^2 + sigma^2); flow matching itself has no abar",
            "model_output": "velocity v = noise - x0",
        }
        for name in ("shift", "use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len",
                     "max_image_seq_len", "time_shift_type", "shift_terminal", "invert_sigmas", "stochastic_sampling",
                     "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):  # fmt: skip
            if name in config:
                info[name] = config[name]
        info.update({k: float(v) if isinstance(v, (int, float)) else v for k, v in arguments.items()})
        return info

    def start_step(self, num_inference_steps: int, strength: float) -> int:
        """Steps of the full schedule that image-to-image skips (the family pipeline's ``get_timesteps``).

        SD 1.x/2.x/XL run the last ``min(int(num_inference_steps * strength), num_inference_steps)`` steps.
        """
        return max(num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps), 0)

    def check_mode(self, pipe: Any, mode: str) -> None:
        """Refuse a denoiser that cannot run ``mode`` (SD: 4 latent channels, or 9 for inpainting only)."""
        if mode not in self.pipelines:
            raise UnsupportedPipelineError(
                f"{self.label} pipelines cannot be traced in mode {mode!r} yet; the tracer runs "
                f"{', '.join(self.pipelines)} for them" + (" (mask= asks for inpainting)." if mode == "inpaint" else ".")
            )
        channels = self.denoiser(pipe).config.in_channels
        if channels == 9 and mode != "inpaint":
            raise UnsupportedPipelineError(
                f"pipe has an inpainting UNet (9 input channels), which cannot run {mode}; pass image= and mask=."
            )
        if channels not in (4, 9) or channels != 9 and channels != pipe.vae.config.latent_channels:
            raise UnsupportedPipelineError(f"pipe's UNet has {channels} input channels; the tracer supports 4 and 9.")

    def model_output(self, scheduler: SchedulerMixin) -> str:
        """What the denoiser predicts: ``"epsilon"``, ``"v_prediction"`` or ``"sample"`` (refuses others)."""
        return prediction_type(scheduler)

    def guided(self, pipe: Any, guidance_scale: float, texts: dict[str, str | None] | None = None) -> bool:
        """Whether the pipeline runs an unconditional branch (its ``do_classifier_free_guidance``; ``texts``, the
        checked text arguments, matter where a negative prompt switches it on, as for FLUX's true CFG)."""
        return guidance_scale > 1 and self.denoiser(pipe).config.time_cond_proj_dim is None

    # ------------------------------------------------------------------ text

    def max_tokens(self, pipe: Any) -> int:
        """Attention keys per branch (the text sequence length the denoiser attends to)."""
        return int(pipe.tokenizer.model_max_length)

    def token_segments(self, pipe: Any, texts: dict[str, str | None], branch: str) -> list[TokenSegment]:
        """How the texts of one branch become tokens: one segment per tokenizer pass.

        Args:
            pipe: the pipeline.
            texts: the checked text arguments (``prompt``, ``negative_prompt``, and the family's extras).
            branch: ``"cond"`` or ``"uncond"``.

        Returns:
            The segments, the primary (``Trace.tokens``) first; ``[]`` when the branch sees no text.
        """
        name = "prompt" if branch == "cond" else "negative_prompt"
        text = texts.get(name) or ""
        return [TokenSegment(name, text, "tokenizer", tokenize_prompt(pipe.tokenizer, text))]

    def token_limit(self, pipe: Any, segment: TokenSegment) -> int:
        """The length limit of ``segment``'s tokenizer pass (for the truncation warning)."""
        return int(getattr(pipe, segment.tokenizer).model_max_length)

    def recorded_keys(self, pipe: Any, segments: list[TokenSegment], token_mode: str) -> list[int]:
        """Positions among the attention keys whose maps are recorded for one branch.

        Args:
            pipe: the pipeline.
            segments: the branch's token segments (``[]``: the branch sees no text).
            token_mode: ``"prompt"`` (the segments' tokens, BOS to first EOS) or ``"all"`` (padding too).

        Returns:
            Key positions in increasing order; the stored maps' token axis follows this list.
        """
        if not segments:
            return []
        if token_mode == "all":
            return list(range(self.max_tokens(pipe)))
        return list(range(max(len(s.tokens.ids) for s in segments)))

    def primary_tokens(self, segments: list[TokenSegment], keys: list[int]) -> PromptTokens:
        """The token list a trace shows for one branch (``Trace.tokens``): one entry per recorded key
        (or, as for SD 1.x/2.x/XL, the first segment's BOS .. EOS, shorter than the keys with ``tokens="all"``)."""
        return segments[0].tokens

    def read_embeddings(self, result: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(prompt_embeds, negative_prompt_embeds)`` from what the pipeline's ``encode_prompt`` returned."""
        return result[0], result[1]

    def conditioning(self, pipe: Any, encode_result: Any, unet_kwargs: dict[str, Any], cond_row: int) -> dict[str, Any]:
        """Extra conditioning worth keeping in the trace's metadata (JSON-ready); none by default.

        Args:
            pipe: the running pipeline.
            encode_result: what its ``encode_prompt`` returned.
            unet_kwargs: the keyword arguments of the first denoiser call.
            cond_row: the batch row of the conditional branch in that call.
        """
        return {}

    def prompt_conditioning(self, pipe: Any, metadata: dict[str, Any], *, device: torch.device,
                            dtype: torch.dtype) -> dict[str, Any]:  # fmt: skip
        """The UNet's conditioning keywords for the prompt branch of a traced run, rebuilt to call it again.

        ``encoder_hidden_states`` ``[1, L, D]`` come from the pipeline's own ``encode_prompt`` on the texts
        the trace records (``metadata["token_segments"]``; SDXL: ``prompt`` and ``prompt_2``); families with
        added conditions add what the trace recorded of them (:meth:`conditioning`).

        Args:
            pipe: the pipeline the trace came from. metadata: ``Trace.metadata``.
            device, dtype: where and as what the UNet runs.
        """
        if self.attention_kind != "cross":
            raise ValueError(f"re-running one UNet call is for UNet families (SD 1.x/2.x, SDXL), not {self.label}.")
        texts = {seg["name"]: seg["text"] for seg in metadata.get("token_segments", {}).get("cond", [])}
        extra = {name: texts[name] for name in self.prompt_arguments if name in texts}
        result = pipe.encode_prompt(prompt=texts.get("prompt", metadata.get("prompt", "")), device=device,
                                    num_images_per_prompt=1, do_classifier_free_guidance=False, **extra)  # fmt: skip
        return {"encoder_hidden_states": self.read_embeddings(result)[0].to(dtype)}

    def call_arguments(self, texts: dict[str, str | None]) -> dict[str, Any]:
        """Family-specific keyword arguments for the pipeline call (beyond prompt and negative_prompt)."""
        return {name: texts.get(name) for name in self.prompt_arguments}

    def model_info(self, pipe: Any, device: torch.device) -> dict[str, Any]:
        """The model part of the trace's metadata."""
        unet, vae = self.denoiser(pipe), pipe.vae
        return {
            "name_or_path": getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path"),
            "pipeline": type(pipe).__name__,
            "unet": type(unet).__name__,
            "vae": type(vae).__name__,
            "text_encoder": type(pipe.text_encoder).__name__,
            "dtype": str(unet.dtype).removeprefix("torch."),
            "device": str(device),
            "vae_scale_factor": pipe.vae_scale_factor,
            "vae_scaling_factor": vae.config.scaling_factor,
            "latent_channels": unet.config.in_channels,
            "cross_attention_dim": unet.config.cross_attention_dim,
            "tokenizer_max_length": pipe.tokenizer.model_max_length,
        }
