"""Record every denoising step of a real diffusers ``StableDiffusionPipeline`` call.

:func:`trace` runs the pipeline's own ``__call__`` once. While it runs, the recorder is attached
through diffusers' and torch's public swap points, and detached in a ``finally``:

1. ``pipe.encode_prompt`` is wrapped to see the prompt and negative embeddings the pipeline built.
2. A UNet forward *pre*-hook reads which half of the batch is conditional by comparing the UNet's
   ``encoder_hidden_states`` with those embeddings (diffusers builds ``cat([negative, prompt])``;
   the order is read, not assumed). The forward hook keeps the raw model output of each half.
3. Each ``attn2`` layer gets a processor that calls the layer's *original* processor for its output
   (so the image is bit-identical) and, on the side, computes the softmax probabilities from the
   very ``to_q``/``to_k`` outputs that computation produced (forward hooks on those projections).
4. ``scheduler.step`` is wrapped (signature preserved) to keep the step's input latent and x0:
   the scheduler's own x0 where it exposes one, else its parameterisation (``schedulers.py``).
5. ``callback_on_step_end`` marks a step complete and keeps the latent after it.

Image-to-image and inpainting run diffusers' own ``StableDiffusionImg2ImgPipeline`` /
``StableDiffusionInpaintPipeline``, derived from the given pipeline's components with ``from_pipe``.
Three more public swap points record what they add:

6. ``pipe.prepare_latents`` (wrapped, as for text-to-image) gives the starting latent, and during it a
   wrapped ``scheduler.add_noise`` sees the encoded input image and the noised start.
7. ``pipe.prepare_mask_latents`` (inpainting) gives the mask at image and at latent resolution.
8. With a 4-channel UNet the inpainting pipeline blends the known region back after ``scheduler.step``:
   the wrapped step keeps the scheduler's output (before blending) and ``callback_on_step_end`` the
   blended latent (after).

Everything stays on the pipeline's device until the run ends, then moves to the CPU once.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import platform
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline
from diffusers.models.attention_processor import Attention
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from tqdm.auto import tqdm

from . import previews
from .attention import AttentionLayer, PromptTokens, attention_probs, cross_attention_modules, level_size, tokenize_prompt
from .errors import TraceBudgetError, UnsupportedPipelineError
from .schedulers import (
    SCHEDULERS,
    current_sigma,
    model_input_scale,
    prediction_type,
    resolve_scheduler,
    scheduler_space,
    scheduler_x0,
    x0_coefficients,
)
from .trace import Trace, json_safe
from .validation import (
    RecordSpec,
    check_guidance,
    check_image,
    check_mask,
    check_pipeline,
    check_prompt,
    check_seed,
    check_size,
    check_steps,
    check_strength,
    parse_record,
    round_size,
)

BRANCHES = ("uncond", "cond")


# ----------------------------------------------------------------------------------------- planning


@dataclass
class Plan:
    """Sizes of one run, known before it starts (all read from the pipeline's configs)."""

    num_steps: int  # loop iterations = len(scheduler.timesteps)
    latent_shape: tuple[int, int, int]  # (C, h, w)
    layers: list[AttentionLayer]
    tokens: dict[str, int]  # recorded tokens per branch
    cfg: bool
    spec: RecordSpec
    groups: dict[str, list[AttentionLayer]] = field(default_factory=dict)
    initial_scale: float = 1.0  # input scale of the initial latent
    modules: dict[str, Attention] = field(default_factory=dict, repr=False)  # attn2 modules by name
    mode: str = "txt2img"  # "txt2img" | "img2img" | "inpaint"
    inpaint_mode: str | None = None  # "unet9" | "blend4" for inpainting
    start_index: int = 0  # index in the full scheduler.timesteps of the first step run (strength < 1)
    image_size: tuple[int, int] = (0, 0)  # (H, W) in pixels
    schedule: dict[str, list[float]] = field(default_factory=dict)  # the full schedule: timesteps, sigmas

    def estimate_bytes(self) -> int:
        """Bytes the finished trace will hold (arrays only; the image adds ``H * W * 3``)."""
        c, h, w = self.latent_shape
        item = 2 if self.spec.dtype == "float16" else 4
        s = self.num_steps
        tensors = (s + 1) * c * h * w * item + s * c * h * w * item * (2 + int(self.cfg)) + 6 * s * 8 + 8
        if self.mode != "txt2img":  # input image, image and start latents; mask at two resolutions
            big_h, big_w = self.image_size
            tensors += big_h * big_w * 3 + 2 * c * h * w * item
            if self.mode == "inpaint":
                tensors += (big_h * big_w + h * w) * 4
            if self.inpaint_mode == "blend4":
                tensors += 2 * s * c * h * w * item
        attn = 0
        mode = self.spec.attention
        for branch, t in self.tokens.items():
            if mode == "per_step":
                attn += s * t * h * w * 2
            elif mode in ("per_layer", "per_head"):
                for la in self.layers:
                    attn += s * t * la.height * la.width * 2 * (la.heads if mode == "per_head" else 1)
        return int(tensors + attn)


def start_step(num_inference_steps: int, strength: float) -> int:
    """Steps of the full schedule that image-to-image and inpainting skip (diffusers' ``get_timesteps``).

    The pipelines run the last ``min(int(num_inference_steps * strength), num_inference_steps)`` steps.
    """
    return max(num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps), 0)


def _plan(
    pipe: StableDiffusionPipeline,
    scheduler: SchedulerMixin,
    steps: int,
    height: int,
    width: int,
    spec: RecordSpec,
    cfg: bool,
    tokens: dict[str, PromptTokens],
    mode: str = "txt2img",
    strength: float = 1.0,
) -> Plan:
    probe = _copy_scheduler(scheduler)
    probe.set_timesteps(steps, device="cpu")
    start_index = 0 if mode == "txt2img" else start_step(steps, strength) * int(getattr(probe, "order", 1))
    num_steps = len(probe.timesteps) - start_index
    space = scheduler_space(probe)
    initial_scale = model_input_scale(space, float(probe.sigmas[start_index])) if space == "ve" else 1.0
    h, w = height // pipe.vae_scale_factor, width // pipe.vae_scale_factor
    layers: list[AttentionLayer] = []
    groups: dict[str, list[AttentionLayer]] = {}
    modules: dict[str, Attention] = {}
    for index, (name, module, level) in enumerate(cross_attention_modules(pipe.unet)):
        modules[name] = module
        lh, lw = level_size(h, w, level)
        group = f"{lh}x{lw}" if spec.attention != "per_head" else f"{lh}x{lw}x{module.heads}h"
        layer = AttentionLayer(index, name, lh, lw, module.heads, group, len(groups.get(group, [])))
        groups.setdefault(group, []).append(layer)
        layers.append(layer)
    max_len = pipe.tokenizer.model_max_length
    counts = {b: (max_len if spec.tokens == "all" else len(t.ids)) for b, t in tokens.items()}
    full_t = probe.timesteps.detach().to("cpu", torch.float64)  # the whole schedule, for plots of what strength skips
    table = probe.alphas_cumprod.detach().to("cpu", torch.float64)
    abar = table[full_t.round().long().clamp(0, len(table) - 1)]
    schedule = {"timesteps": full_t.tolist(), "sigmas": ((1 - abar) / abar).sqrt().tolist()}
    inpaint_mode = None
    if mode == "inpaint":
        inpaint_mode = "unet9" if pipe.unet.config.in_channels == 9 else "blend4"
    return Plan(num_steps, (pipe.vae.config.latent_channels, h, w), layers, counts, cfg, spec, groups, initial_scale,
                modules, mode, inpaint_mode, start_index, (height, width), schedule)  # fmt: skip


def _copy_scheduler(scheduler: SchedulerMixin) -> SchedulerMixin:
    return type(scheduler).from_config(scheduler.config)


# ---------------------------------------------------------------------------------------- recording


class _CrossAttentionRecorder:
    """Processor for one ``attn2`` layer: the original processor computes the output; we keep its q and k.

    ``to_q`` / ``to_k`` get thin ``forward`` wrappers that hand their outputs here, so the recorder
    reuses the very projections the layer computed. The probabilities are computed once the UNet
    call is over, for all layers of one shape together (:meth:`Recorder.flush_attention`).
    """

    def __init__(self, recorder: Recorder, layer: AttentionLayer, original: Any) -> None:
        self.recorder = recorder
        self.layer = layer
        self.original = original
        self.query: torch.Tensor | None = None
        self.key: torch.Tensor | None = None

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        self.query = self.key = None
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if self.recorder.active:
            query, key = self.query, self.key
            if query is None or key is None:  # a processor that bypasses to_q / to_k (fused projections)
                query, key = self._recompute(attn, hidden_states, encoder_hidden_states)
            self.recorder.captured[self.layer.index] = (attn, query, key, attention_mask)
        self.query = self.key = None
        return out

    @staticmethod
    def _recompute(attn: Attention, hidden: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if hidden.ndim == 4:
            hidden = hidden.flatten(2).transpose(1, 2)
        context = hidden if context is None else context
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        return attn.to_q(hidden), attn.to_k(context)

    def wrap_projection(self, forward: Callable[..., torch.Tensor], slot: str) -> Callable[..., torch.Tensor]:
        def projection(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = forward(*args, **kwargs)
            setattr(self, slot, out)
            return out

        return projection


class Recorder:
    """Attaches to a pipeline for one call, collects each step, and builds the :class:`Trace`."""

    def __init__(self, pipe: StableDiffusionPipeline, scheduler: SchedulerMixin, plan: Plan, progress: bool) -> None:
        self.pipe = pipe
        self.scheduler = scheduler
        self.plan = plan
        self.spec = plan.spec
        self.dtype = plan.spec.torch_dtype
        self.space = scheduler_space(scheduler)
        self.prediction = prediction_type(scheduler)
        self.progress = progress
        self.active = False
        self.cond_index: int | None = None  # batch position of the conditional half
        self.batch_order = "cond only"
        self.embeds: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.x0_source: str | None = None
        # finished steps (device tensors until the end)
        self.latents: list[torch.Tensor] = []  # each [C, h, w]: the initial latent, then one per finished step
        self.next_scale = 1.0  # input scale of the latent after the last finished step
        self.x0: list[torch.Tensor] = []
        self.eps: dict[str, list[torch.Tensor]] = {b: [] for b in BRANCHES}
        self.attn: dict[str, dict[int, list[torch.Tensor]]] = {b: {} for b in BRANCHES}
        self.scalars: list[tuple[float, float, float, float, float]] = []  # t, sigma, a, b, input scale
        self._pending: dict[str, Any] = {}
        self._pending_attn: dict[str, dict[int, torch.Tensor]] = {b: {} for b in BRANCHES}
        self.captured: dict[int, tuple[Attention, torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        self._undo: list[Callable[[], None]] = []
        self._timesteps = torch.zeros(0, dtype=torch.float64)  # host copy of the timesteps the loop runs
        self._step_calls = 0
        self._bar: Any = None
        # image-to-image and inpainting (device tensors until the end)
        self.blend = plan.inpaint_mode == "blend4"
        self.unblended: list[torch.Tensor] = []  # blend4: each [C, h, w], the scheduler's output before blending
        self.image_latent: torch.Tensor | None = None  # [C, h, w]
        self.mask: torch.Tensor | None = None  # [H, W]
        self.mask_latent: torch.Tensor | None = None  # [h, w]
        self._preparing = False  # inside pipe.prepare_latents (its add_noise call sees the encoded image)
        self.guidance: float | None = None  # the run's guidance scale, for the non-finite message

    # -------------------------------------------------------------- attach / detach

    def attach(self) -> None:
        """Install the hooks, processors and wrappers; every change registers its own undo."""
        pipe = self.pipe
        if pipe.scheduler is not self.scheduler:
            original_scheduler = pipe.scheduler
            pipe.scheduler = self.scheduler
            self._undo.append(lambda: setattr(pipe, "scheduler", original_scheduler))
        self._wrap_attribute(pipe, "encode_prompt", self._wrap_encode_prompt(pipe.encode_prompt))
        self._wrap_attribute(pipe, "prepare_latents", self._wrap_prepare_latents(pipe.prepare_latents))
        self._wrap_attribute(self.scheduler, "step", self._wrap_step(self.scheduler.step))
        if self.plan.mode != "txt2img":
            self._wrap_attribute(self.scheduler, "add_noise", self._wrap_add_noise(self.scheduler.add_noise))
        if self.plan.mode == "inpaint":
            self._wrap_attribute(pipe, "prepare_mask_latents", self._wrap_prepare_mask(pipe.prepare_mask_latents))
        unet = pipe.unet
        pre = unet.register_forward_pre_hook(self._unet_pre_hook, with_kwargs=True)
        post = unet.register_forward_hook(self._unet_post_hook, with_kwargs=True)
        self._undo += [pre.remove, post.remove]
        if self.spec.attention != "none":
            for layer in self.plan.layers:
                module = self.plan.modules[layer.name]
                original = module.processor
                proc = _CrossAttentionRecorder(self, layer, original)
                module.set_processor(proc)
                self._undo.append(functools.partial(module.set_processor, original))
                self._wrap_attribute(module.to_q, "forward", proc.wrap_projection(module.to_q.forward, "query"))
                self._wrap_attribute(module.to_k, "forward", proc.wrap_projection(module.to_k.forward, "key"))
        had_config = hasattr(pipe, "_progress_bar_config")
        old_config = dict(getattr(pipe, "_progress_bar_config", {}))
        pipe.set_progress_bar_config(**{**old_config, "disable": True})
        self._undo.append(
            (lambda: setattr(pipe, "_progress_bar_config", old_config))
            if had_config
            else (lambda: delattr(pipe, "_progress_bar_config"))
        )
        self._bar = tqdm(total=self.plan.num_steps, desc="trace", disable=not self.progress, leave=False)
        self._undo.append(self._bar.close)
        self.active = True

    def detach(self) -> None:
        """Undo every change in reverse order, even if one undo fails."""
        self.active = False
        errors = []
        while self._undo:
            try:
                self._undo.pop()()
            except Exception as err:  # pragma: no cover - keep restoring the rest
                errors.append(err)
        if errors:  # pragma: no cover
            raise RuntimeError(f"could not fully restore the pipeline: {errors}")

    def _wrap_attribute(self, owner: Any, name: str, wrapper: Any) -> None:
        had_own = name in vars(owner)
        previous = vars(owner).get(name)
        setattr(owner, name, wrapper)
        self._undo.append((lambda: setattr(owner, name, previous)) if had_own else (lambda: delattr(owner, name)))

    # -------------------------------------------------------------- hooks

    def _wrap_encode_prompt(self, encode: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(encode)
        def encode_prompt(*args: Any, **kwargs: Any) -> Any:
            result = encode(*args, **kwargs)
            self.embeds = (result[0], result[1])
            return result

        return encode_prompt

    def _wrap_prepare_latents(self, prepare: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(prepare)
        def prepare_latents(*args: Any, **kwargs: Any) -> Any:
            self._preparing = True
            try:
                out = prepare(*args, **kwargs)
            finally:
                self._preparing = False
            if self.active:
                # text-to-image and img2img return the latents; inpaint (latents, noise[, image_latents])
                latents = out[0] if isinstance(out, tuple) else out
                self.latents = [latents[0].to(self.dtype, copy=True)]  # the state before step 0
                if isinstance(out, tuple) and len(out) > 2:
                    self.image_latent = out[2][0].to(self.dtype, copy=True)
                # The timesteps are set by now; one host copy here spares a device sync at every step.
                # Image-to-image and inpainting run the schedule from plan.start_index on.
                self._timesteps = self.scheduler.timesteps.detach().to("cpu", torch.float64)[self.plan.start_index :]
            return out

        return prepare_latents

    def _wrap_add_noise(self, add_noise: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        @functools.wraps(add_noise)
        def wrapped(original_samples: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if self.active and self._preparing and self.image_latent is None:
                self.image_latent = original_samples[0].to(self.dtype, copy=True)  # the encoded input image
            return add_noise(original_samples, *args, **kwargs)

        return wrapped

    def _wrap_prepare_mask(self, prepare: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(prepare)
        def prepare_mask_latents(mask: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            out = prepare(mask, *args, **kwargs)
            if self.active:
                self.mask = mask[0, 0].to(torch.float32, copy=True)  # [H, W], as the pipeline binarised it
                self.mask_latent = out[0][0, 0].to(torch.float32, copy=True)  # [h, w]
            return out

        return prepare_mask_latents

    def _unet_pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not self.active or self.cond_index is not None or not self.plan.cfg:
            return
        context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        self.cond_index = self._detect_order(context)

    def _detect_order(self, context: torch.Tensor | None) -> int:
        """Return the batch index of the conditional half, read from the embeddings the pipeline built."""
        if self.embeds is None or context is None or context.shape[0] != 2:
            raise RuntimeError(
                "could not identify the conditional and unconditional halves of the UNet batch "
                f"(batch of {None if context is None else context.shape[0]}); only one image per prompt is supported."
            )
        cond, uncond = self.embeds
        first, second = context[:1], context[1:]
        if torch.equal(first, uncond) and torch.equal(second, cond):
            self.batch_order = "uncond, cond" if not torch.equal(cond, uncond) else "identical embeddings"
            return 1
        if torch.equal(first, cond) and torch.equal(second, uncond):
            self.batch_order = "cond, uncond"
            return 0
        raise RuntimeError(
            "the UNet's encoder_hidden_states match neither [negative, prompt] nor [prompt, negative] embeddings; "
            "this pipeline builds its guidance batch in a way the tracer does not know."
        )

    def _unet_post_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self.active:
            return
        if self.captured:
            self.flush_attention()
        out = output[0] if isinstance(output, tuple) else output.sample
        self._pending["out_finite"] = torch.isfinite(out).all()  # a device flag, read once per step
        if self.plan.cfg:
            ci = self.cond_index
            self._pending["eps_cond"] = out[ci].to(self.dtype, copy=True)
            self._pending["eps_uncond"] = out[1 - ci].to(self.dtype, copy=True)
        else:
            self._pending["eps_cond"] = out[0].to(self.dtype, copy=True)

    def flush_attention(self) -> None:
        """Turn the q/k captured during one UNet call into probabilities, one batched op chain per layer shape.

        Per group of same-shaped layers: stack q and k, one matmul, softmax in float32, head mean, one
        fp16 cast; no host sync. Each branch keeps a ``[N, t]`` (``[H, N, t]`` per head) view per
        layer, laid out as ``[t, h, w]`` on the host once the run is over.
        """
        mode = self.spec.attention
        halves = {"cond": 0} if not self.plan.cfg else {"cond": self.cond_index, "uncond": 1 - self.cond_index}
        longest = max(self.plan.tokens[b] for b in halves)
        by_shape: dict[tuple, list[AttentionLayer]] = {}
        for la in self.plan.layers:
            if la.index in self.captured:
                attn, q, k, mask = self.captured[la.index]
                by_shape.setdefault((mask is None, attn.heads, attn.scale, q.shape, k.shape), []).append(la)
        for (unmasked, *_), layers in by_shape.items():
            chunks = [layers] if unmasked else [[la] for la in layers]
            for chunk in chunks:
                items = [self.captured[la.index] for la in chunk]
                probs = attention_probs(
                    [it[0] for it in items], [it[1] for it in items], [it[2] for it in items], items[0][3]
                )  # [L, B, H, N, T]
                self._keep(chunk, probs, halves, longest, mode)
        self.captured.clear()

    def _keep(self, layers: list[AttentionLayer], probs: torch.Tensor, halves: dict[str, int], longest: int,
              mode: str) -> None:  # fmt: skip
        if mode == "per_step":
            _, h, w = self.plan.latent_shape
            la = layers[0]
            summed = probs.mean(dim=2).sum(dim=0)[..., :longest].transpose(1, 2)  # [B, t, N], summed over layers
            grid = summed.reshape(summed.shape[0], longest, la.height, la.width)
            if (la.height, la.width) != (h, w):
                grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
            for branch, row in halves.items():
                acc = self._pending_attn[branch].get(0)
                part = grid[row, : self.plan.tokens[branch]]
                self._pending_attn[branch][0] = part if acc is None else acc + part
            return
        kept = (probs if mode == "per_head" else probs.mean(dim=2))[..., :longest].to(torch.float16)
        for slot, la in enumerate(layers):
            for branch, row in halves.items():
                self._pending_attn[branch][la.index] = kept[slot, row, ..., : self.plan.tokens[branch]]  # [(H,) N, t]

    def _wrap_step(self, step: Callable[..., Any]) -> Callable[..., Any]:
        # functools.wraps keeps step's signature visible: the pipeline inspects it for `eta`/`generator`.
        @functools.wraps(step)
        def wrapped(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            return_dict = kwargs.pop("return_dict", True)
            output = step(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            if self.active:
                self._after_step(model_output, timestep, sample, output)
            return output if return_dict else output.to_tuple()

        return wrapped

    def _after_step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, output: Any) -> None:
        sched = self.scheduler
        calls = self._step_calls
        self._step_calls += 1
        t = float(self._timesteps[calls]) if calls < len(self._timesteps) else float(timestep)
        sigma = current_sigma(sched, t, self.space, getattr(sched, "step_index", None))
        a, b = x0_coefficients(self.space, self.prediction, sigma)
        x0, source = scheduler_x0(sched, output)
        if x0 is None:
            x0 = sample.float() * a + model_output.float() * b
        self.x0_source = self.x0_source or source
        next_sigma = 0.0  # noise level of the latent this step produced (VE schedulers keep a sigma table)
        index = getattr(sched, "step_index", None)
        if self.space == "ve" and index is not None and index < len(sched.sigmas):
            next_sigma = float(sched.sigmas[index])
        self._pending.update(
            x0=x0[0].to(self.dtype, copy=True),
            scalars=(t, sigma, a, b, model_input_scale(self.space, sigma)),
            next_scale=model_input_scale(self.space, next_sigma),
        )
        if self.blend:  # the inpainting pipeline blends the known region back into this output next
            self._pending["unblended"] = output.prev_sample[0].to(self.dtype, copy=True)

    def on_step_end(self, pipe: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        """``callback_on_step_end``: commit the step's records; the latents are left unchanged."""
        if not self.active:
            return {}
        p = self._pending
        latents = callback_kwargs["latents"]
        kept = latents[0].to(self.dtype, copy=True)
        self._check_finite(p, latents, kept)
        self.latents.append(kept)
        self.next_scale = p["next_scale"]
        self.x0.append(p["x0"])
        if self.blend:
            self.unblended.append(p["unblended"])
        self.scalars.append(p["scalars"])
        self.eps["cond"].append(p["eps_cond"])
        if self.plan.cfg:
            self.eps["uncond"].append(p["eps_uncond"])
        for branch, by_layer in self._pending_attn.items():
            for index, grid in by_layer.items():
                if self.spec.attention == "per_step":
                    grid = (grid / len(self.plan.layers)).to(torch.float16)
                self.attn[branch].setdefault(index, []).append(grid)
            by_layer.clear()
        self._pending = {}
        self._bar.update(1)
        return {}

    def _check_finite(self, p: dict[str, Any], latents: torch.Tensor, kept: torch.Tensor) -> None:
        """Raise ``FloatingPointError`` naming the step if its model output or latent is NaN or infinite.

        Checks what the pipeline carries and what the trace stores (one host sync per step), before the
        step is committed: the partial trace keeps only finite steps.
        """
        stored = [kept, p["x0"], p["eps_cond"]] + ([p["eps_uncond"]] if self.plan.cfg else [])
        flags = torch.stack([p.get("out_finite", torch.tensor(True)).to(latents.device), torch.isfinite(latents).all(),
                             *(torch.isfinite(t).all().to(latents.device) for t in stored)]).tolist()  # fmt: skip
        if all(flags):
            return
        step, t = len(self.x0), p["scalars"][0]
        where = [name for name, ok in (("the UNet output", flags[0]), ("the latent", flags[1])) if not ok]
        causes = []
        if self.guidance is not None and self.guidance > 50:
            causes.append(f"guidance_scale={self.guidance:g} is far above the usual range (1 to 15); use a smaller one")
        if not where:
            where = [f"the recorded values (they exceed {self.spec.dtype}'s range)"]
            if self.spec.dtype == "float16":
                causes.append("store float32 instead: record={'dtype': 'float32'}")
        if self.pipe.unet.dtype == torch.float16:
            causes.append("float16 weights can overflow: load the model with dtype='float32'")
        causes.append("else the model or scheduler itself produced them (check the weights and scheduler settings)")
        raise FloatingPointError(
            f"step {step} of {self.plan.num_steps} (timestep {t:g}) gave NaN or infinite values in {' and '.join(where)}; "
            f"the trace stops there. Likely causes: {'; '.join(causes)}."
        )

    # -------------------------------------------------------------- result

    def build(self, *, final_image: Any, meta: dict[str, Any], tokens: dict[str, PromptTokens], complete: bool,
              error: str | None, input_image: np.ndarray | None = None) -> Trace:  # fmt: skip
        """Move everything to the CPU once and assemble the Trace (valid for interrupted runs too).

        Args:
            input_image: ``[H, W, 3]`` uint8, the image given to an image-to-image or inpainting pipeline.
        """
        c, h, w = self.plan.latent_shape
        n = len(self.x0)
        np_dtype = np.float16 if self.spec.dtype == "float16" else np.float32

        def stack(items: list[torch.Tensor], shape: tuple[int, ...]) -> np.ndarray:
            if not items:
                return np.zeros((0, *shape), np_dtype)
            return torch.stack(items).cpu().numpy()

        latents_np = stack(self.latents[: n + 1], (c, h, w))
        if latents_np.shape[0] != n + 1:  # stopped before the initial latent existed: a NaN view, nothing allocated
            latents_np = np.broadcast_to(np.array(np.nan, np_dtype), (n + 1, c, h, w))
        scalars = np.asarray(self.scalars, np.float64).reshape(n, 5)
        sigmas = scalars[:, 1]
        attention: dict[str, np.ndarray] = {}
        for branch in self.attn:
            if branch == "uncond" and not self.plan.cfg:
                continue
            t = self.plan.tokens[branch]
            if self.spec.attention == "per_step":
                attention[f"{branch}/steps"] = stack(self.attn[branch].get(0, []), (t, h, w)).astype(np.float16)
            elif self.spec.attention != "none":
                for group, layers in self.plan.groups.items():
                    per_layer = [self.attn[branch].get(la.index, [])[:n] for la in layers]
                    shape = (len(layers), *((layers[0].heads,) if self.spec.attention == "per_head" else ()), t,
                             layers[0].height, layers[0].width)  # fmt: skip
                    if n == 0:
                        attention[f"{branch}/{group}"] = np.zeros((0, *shape), np.float16)
                    else:  # recorded [step, layer, (head,) N, token] -> stored [step, layer, (head,) token, h, w]
                        steps = [torch.stack([maps[s] for maps in per_layer]) for s in range(n)]
                        flat = torch.stack(steps).cpu().numpy()
                        grid = flat.reshape(*flat.shape[:-2], layers[0].height, layers[0].width, t)
                        attention[f"{branch}/{group}"] = np.ascontiguousarray(np.moveaxis(grid, -1, -3))
        rgb = None
        if final_image is not None:
            final_latent = torch.from_numpy(latents_np[-1].astype(np.float32))
            rgb = previews.choose_latent_rgb(self.pipe.vae.config, final_latent, final_image)
        elif n:
            rgb = previews.preset_latent_rgb(self.pipe.vae.config)
        cond, uncond = tokens["cond"], tokens.get("uncond")
        meta["x0_source"] = self.x0_source
        meta["batch_order"] = self.batch_order
        meta["num_steps_recorded"] = n

        def host(tensor: torch.Tensor | None, dtype: Any = None) -> np.ndarray | None:
            return None if tensor is None else tensor.cpu().numpy().astype(dtype or np_dtype, copy=False)

        edits: dict[str, Any] = {}
        if self.plan.mode != "txt2img":
            started = len(self.latents) > 0
            edits = dict(
                input_image=input_image,
                image_latent=host(self.image_latent),
                start_latent=latents_np[0].copy() if started else None,
            )
            if self.plan.mode == "inpaint":
                edits.update(mask=host(self.mask, np.float32), mask_latent=host(self.mask_latent, np.float32))
            if self.blend:
                edits.update(
                    latents_unblended=stack(self.unblended[:n], (c, h, w)),
                    latents_blended=latents_np[1:].copy(),
                )
        return Trace(
            prompt=meta["prompt"],
            negative_prompt=meta["negative_prompt"],
            tokens=cond.tokens,
            token_ids=cond.ids,
            words=cond.words,
            truncated_tokens=cond.truncated,
            negative_tokens=uncond.tokens if uncond else [],
            negative_token_ids=uncond.ids if uncond else [],
            negative_words=uncond.words if uncond else [],
            negative_truncated_tokens=uncond.truncated if uncond else [],
            timesteps=scalars[:, 0].copy(),
            sigmas=sigmas.copy(),
            alphas_cumprod=1.0 / (sigmas**2 + 1.0),
            x0_coef_sample=scalars[:, 2].copy(),
            x0_coef_model=scalars[:, 3].copy(),
            input_scale=np.append(scalars[:, 4], self.next_scale if n else self.plan.initial_scale),
            latents=latents_np,
            x0=stack(self.x0, (c, h, w)),
            eps_cond=stack(self.eps["cond"], (c, h, w)),
            eps_uncond=stack(self.eps["uncond"], (c, h, w)) if self.plan.cfg else None,
            final_image=final_image,
            attention=attention,
            attention_layers=list(self.plan.layers) if self.spec.attention in ("per_layer", "per_head") else [],
            attention_mode=self.spec.attention,
            latent_rgb=rgb,
            metadata=json_safe(meta),
            complete=complete,
            error=error,
            **edits,
        )


#: The diffusers pipeline class that runs each mode (derived with ``from_pipe`` when needed).
MODE_PIPELINES: dict[str, type] = {
    "txt2img": StableDiffusionPipeline,
    "img2img": StableDiffusionImg2ImgPipeline,
    "inpaint": StableDiffusionInpaintPipeline,
}


_DERIVED: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def pipeline_for(pipe: Any, mode: str) -> Any:
    """The pipeline that runs ``mode``: ``pipe`` itself if it is of that class, else ``Class.from_pipe(pipe)``.

    ``from_pipe`` shares the components (no copy, no weights loaded). The derived pipelines are cached
    (weakly, by ``pipe``) so that repeated traces do not rebuild them.
    """
    cls = MODE_PIPELINES[mode]
    if isinstance(pipe, cls):
        return pipe
    cache = _DERIVED.setdefault(pipe, {})
    derived = cache.get(mode)
    if derived is None or any(getattr(derived, n) is not getattr(pipe, n) for n in ("unet", "vae", "text_encoder")):
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


@dataclass
class _Request:
    """A validated trace request and its plan."""

    pipe: StableDiffusionPipeline  # the pipeline that runs (derived for image-to-image and inpainting)
    prompt: str
    negative_prompt: str | None
    guidance: float
    steps: int
    height: int
    width: int
    seed: int | None
    scheduler: SchedulerMixin
    tokens: dict[str, PromptTokens]
    plan: Plan
    mode: str = "txt2img"
    strength: float | None = None
    image: Image.Image | None = None  # RGB, height x width
    mask: Image.Image | None = None  # mode L, height x width
    notes: list[str] = field(default_factory=list)  # what was converted or resized


def _fit_image(
    image: Any, mask: Any, height: Any, width: Any, multiple: int
) -> tuple[Image.Image, Image.Image | None, int, int, list[str]]:
    """Check the image (and mask), pick the run's size and resize both to it, saying so.

    The size is the image's own, rounded to the nearest multiple the model needs, unless ``height`` /
    ``width`` ask for another.
    """
    img = check_image(image)
    mask_arr = check_mask(mask, img.size) if mask is not None else None
    w0, h0 = img.size
    height = round_size(h0, multiple) if height is None else check_size(height, "height", multiple, h0)
    width = round_size(w0, multiple) if width is None else check_size(width, "width", multiple, w0)
    notes = []
    if (width, height) != (w0, h0):
        why = "the height/width asked for" if (height, width) != (round_size(h0, multiple), round_size(w0, multiple)) \
            else f"this model needs sides that are multiples of {multiple}"  # fmt: skip
        notes.append(f"image is {w0}x{h0} pixels; resized to {width}x{height} ({why})")
        warnings.warn(notes[-1] + (", and the mask with it." if mask_arr is not None else "."), stacklevel=3)
        img = img.resize((width, height), Image.Resampling.BICUBIC)
        if mask_arr is not None:
            mask_arr = np.asarray(Image.fromarray(mask_arr, "F").resize((width, height), Image.Resampling.BILINEAR))
    mask_img = None
    if mask_arr is not None:
        mask_img = Image.fromarray((np.clip(mask_arr, 0, 1) * 255).round().astype(np.uint8), "L")
    return img, mask_img, height, width, notes


def _prepare(
    pipe: Any,
    prompt: Any,
    negative_prompt: Any,
    num_inference_steps: Any,
    guidance_scale: Any,
    seed: Any,
    generator: Any,
    height: Any,
    width: Any,
    scheduler: Any,
    record: Any,
    image: Any = None,
    mask: Any = None,
    strength: Any = None,
) -> _Request:
    """Check every argument (each error names its argument) and plan the recording."""
    pipe = check_pipeline(pipe)
    prompt = check_prompt(prompt)
    negative_prompt = check_prompt(negative_prompt, "negative_prompt", optional=True)
    guidance = check_guidance(guidance_scale)
    spec = parse_record(record)
    if image is None and mask is not None:
        raise ValueError("mask needs image=: pass the picture to inpaint as image and the region to repaint as mask.")
    if image is None and strength is not None:
        raise ValueError(f"strength={strength!r} applies to image-to-image and inpainting only; pass image= too.")
    mode = "txt2img" if image is None else ("img2img" if mask is None else "inpaint")
    if mode == "txt2img" and not isinstance(pipe, StableDiffusionPipeline):
        raise UnsupportedPipelineError(
            f"pipe must be a diffusers StableDiffusionPipeline for text-to-image, not {type(pipe).__name__}; "
            "pass image= (and mask=) to trace an edit with it, or trace StableDiffusionPipeline.from_pipe(pipe)."
        )
    unet = pipe.unet
    channels = unet.config.in_channels
    if channels == 9 and mode != "inpaint":
        raise UnsupportedPipelineError(
            f"pipe has an inpainting UNet (9 input channels), which cannot run {mode}; pass image= and mask=."
        )
    if channels not in (4, 9) or channels != 9 and channels != pipe.vae.config.latent_channels:
        raise UnsupportedPipelineError(f"pipe's UNet has {channels} input channels; the tracer supports 4 and 9.")
    run_pipe = pipeline_for(pipe, mode)
    sched = resolve_scheduler(scheduler, pipe.scheduler)
    prediction_type(sched)  # refuses unsupported prediction types before the run
    steps = check_steps(num_inference_steps, int(sched.config.num_train_timesteps))
    multiple = pipe.vae_scale_factor * 2 ** int(getattr(unet, "num_upsamplers", len(unet.config.block_out_channels) - 1))
    img = mask_img = None
    notes: list[str] = []
    if mode == "txt2img":
        sample = unet.config.sample_size
        sample_h, sample_w = (sample, sample) if isinstance(sample, int) else tuple(sample)
        height = check_size(height, "height", multiple, sample_h * pipe.vae_scale_factor)
        width = check_size(width, "width", multiple, sample_w * pipe.vae_scale_factor)
        strength = None
    else:
        strength = check_strength(0.75 if mode == "img2img" and strength is None else
                                  1.0 if strength is None else strength, steps)  # fmt: skip
        img, mask_img, height, width, notes = _fit_image(image, mask, height, width, multiple)
    seed = check_seed(seed, generator)
    cfg = guidance > 1 and unet.config.time_cond_proj_dim is None  # the pipeline's do_classifier_free_guidance
    tokens = {"cond": tokenize_prompt(pipe.tokenizer, prompt)}
    if cfg:
        tokens["uncond"] = tokenize_prompt(pipe.tokenizer, negative_prompt or "")
    plan = _plan(run_pipe, sched, steps, height, width, spec, cfg, tokens, mode, strength or 1.0)
    return _Request(run_pipe, prompt, negative_prompt, guidance, steps, height, width, seed, sched, tokens, plan,
                    mode, strength, img, mask_img, notes)  # fmt: skip


def estimate_trace_bytes(
    pipe: StableDiffusionPipeline,
    prompt: str,
    *,
    image: Image.Image | np.ndarray | None = None,
    mask: Image.Image | np.ndarray | None = None,
    strength: float | None = None,
    negative_prompt: str | None = None,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    scheduler: str | SchedulerMixin | None = None,
    record: str | dict[str, Any] = "default",
) -> int:
    """Bytes a :func:`trace` with these arguments would hold (arrays plus the final image), without running it.

    Args:
        pipe, prompt, image, mask, strength, ...: as for :func:`trace`.

    Returns:
        The estimate :func:`trace` checks against ``record["max_bytes"]``, plus ``height * width * 3``.

    Example:
        >>> explainer.estimate_trace_bytes(pipe, "a red circle", record="per_head") / 1e6  # doctest: +SKIP
        3.1
    """
    req = _prepare(pipe, prompt, negative_prompt, num_inference_steps, guidance_scale, 0, None, height, width,
                   scheduler, record, image, mask, strength)  # fmt: skip
    return req.plan.estimate_bytes() + req.height * req.width * 3


# ---------------------------------------------------------------------------------------- entry point


def trace(
    pipe: StableDiffusionPipeline,
    prompt: str,
    *,
    image: Image.Image | np.ndarray | None = None,
    mask: Image.Image | np.ndarray | None = None,
    strength: float | None = None,
    negative_prompt: str | None = None,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    seed: int = 0,
    generator: torch.Generator | None = None,
    height: int | None = None,
    width: int | None = None,
    scheduler: str | SchedulerMixin | None = None,
    record: str | dict[str, Any] = "default",
    progress: bool = True,
) -> Trace:
    """Run ``pipe`` once on ``prompt`` and record every denoising step.

    Without ``image`` this is text-to-image; with ``image`` image-to-image; with ``image`` and ``mask``
    inpainting. The run uses diffusers' own ``StableDiffusionPipeline``, ``StableDiffusionImg2ImgPipeline``
    or ``StableDiffusionInpaintPipeline``, derived from ``pipe``'s components with ``from_pipe`` (a
    pipeline that already is one of them is used as it is). The image is exactly what that pipeline
    gives with the same arguments and ``generator=torch.Generator(device).manual_seed(seed)``; the
    pipeline (scheduler, processors, hooks) is left as it was.

    Args:
        pipe: a diffusers Stable Diffusion pipeline (text-to-image, image-to-image or inpainting).
        prompt: one prompt; ``""`` is an unconditional image.
        image: the input picture (PIL image or uint8 / [0, 1] float array ``[H, W, 3]``). Other modes
            are converted to RGB, and a size the model cannot take is rounded to the nearest multiple
            it needs, each with a warning.
        mask: inpainting mask, single-channel, the size of ``image``: white / 1 = repaint, black / 0 = keep
            (binarised at 0.5, as diffusers does). An empty or full mask warns.
        strength: how far into the noise schedule the input is pushed, in (0, 1]: the run skips the first
            ``num_inference_steps - int(num_inference_steps * strength)`` steps. Default 0.75 for
            image-to-image and 1.0 (diffusers' default) for inpainting. It must leave >= 1 step.
        negative_prompt: optional negative prompt (used only when ``guidance_scale > 1``).
        num_inference_steps: denoising steps of the full schedule (>= 1).
        guidance_scale: classifier-free guidance scale (finite, >= 0; <= 1 turns guidance off).
        seed: seed of a ``torch.Generator`` on the pipeline's execution device.
        generator: use this generator instead of ``seed``.
        height, width: image size in pixels; default from the UNet config (text-to-image) or the
            image. Must be a multiple of ``vae_scale_factor * 2 ** unet.num_upsamplers``.
        scheduler: ``None`` (the pipeline's), a name from ``SCHEDULERS`` or a scheduler instance, for
            this call only.
        record: attention recording: ``"default"`` (= ``"per_layer"``), ``"none"``, ``"per_step"``,
            ``"per_head"``, or a dict with ``attention``, ``tokens`` (``"prompt"``/``"all"``), ``dtype``
            (``"float16"``/``"float32"`` for latents, x0 and model outputs) and ``max_bytes``.
        progress: show a tqdm progress bar.

    Returns:
        The :class:`Trace`; ``trace.mode`` says which kind of run it was and image-to-image /
        inpainting traces hold the input image, mask, encoded input and starting latent too. If the run
        is interrupted with Ctrl-C (``KeyboardInterrupt``), the steps finished so far are returned as a
        trace with ``complete=False`` and a warning. Any other exception propagates, with that partial
        trace attached as ``err.partial_trace``.

    Raises:
        TraceBudgetError: the estimated trace exceeds ``record["max_bytes"]`` (1 GiB by default).
        TypeError, ValueError: bad arguments, each named in the message.
        FloatingPointError: a step's model output or latent became NaN or infinite (an absurd
            ``guidance_scale``, float16 overflow...); the message names the step and likely causes, and
            ``err.partial_trace`` holds the finite steps before it. Checked every step (one host sync).

    Example:
        >>> pipe = explainer.load_pipeline()  # doctest: +SKIP
        >>> tr = explainer.trace(pipe, "a red circle on the left", num_inference_steps=10, seed=0)  # doctest: +SKIP
        >>> edit = explainer.trace(pipe, "a blue circle on the left", image=tr.final_image, strength=0.5)  # doctest: +SKIP

    See ``notebooks/00_quickstart.ipynb`` and ``notebooks/10_applications.ipynb``.
    """
    t_start = time.perf_counter()
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, not {type(progress).__name__}.")
    req = _prepare(pipe, prompt, negative_prompt, num_inference_steps, guidance_scale, seed, generator, height, width,
                   scheduler, record, image, mask, strength)  # fmt: skip
    pipe, prompt, negative_prompt, guidance, steps = req.pipe, req.prompt, req.negative_prompt, req.guidance, req.steps
    sched, spec, tokens, plan, cfg, height, width, seed = (
        req.scheduler, req.plan.spec, req.tokens, req.plan, req.plan.cfg, req.height, req.width, req.seed
    )
    for branch, name in (("cond", "prompt"), ("uncond", "negative_prompt")):
        if branch in tokens and tokens[branch].truncated:
            warnings.warn(truncation_message(name, pipe.tokenizer.model_max_length, tokens[branch].truncated),
                          stacklevel=2)  # fmt: skip
    estimate = plan.estimate_bytes()
    if estimate > spec.max_bytes:
        raise TraceBudgetError(
            f"record={spec.attention!r} would store about {estimate / 1e6:.1f} MB for this run ({plan.num_steps} steps, "
            f"{len(plan.layers)} cross-attention layers, {sum(plan.tokens.values())} tokens), over the budget of "
            f"{spec.max_bytes / 1e6:.1f} MB; record less (record='per_layer', 'per_step' or 'none') or raise "
            "record={'max_bytes': ...}."
        )

    device = pipe._execution_device
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(seed)
    short_name = scheduler.strip().lower() if isinstance(scheduler, str) else None
    meta: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "mode": req.mode,
        "seed": seed,
        "generator_device": str(generator.device),
        "generator_initial_seed": int(generator.initial_seed()),
        "guidance_scale": guidance,
        "classifier_free_guidance": cfg,
        "num_inference_steps": steps,
        "num_steps": plan.num_steps,
        "height": height,
        "width": width,
        "model": _model_info(pipe, device),
        "scheduler": {
            "class": type(sched).__name__,
            "name": short_name,
            "space": scheduler_space(sched),
            "config": dict(sched.config),
        },
        "prediction_type": prediction_type(sched),
        "model_output": (
            "eps_cond / eps_uncond hold the UNet's raw output: "
            + {"epsilon": "the predicted noise (epsilon)", "v_prediction": "the predicted velocity v (not epsilon)",
               "sample": "the predicted clean latent"}[prediction_type(sched)]  # fmt: skip
        ),
        "record": spec.to_dict(),
        "estimated_bytes": estimate,
        "versions": dict(_versions()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    call: dict[str, Any] = {}
    if req.mode == "txt2img":
        call.update(height=height, width=width)
    else:
        meta.update(strength=req.strength, start_step=plan.start_index, input_notes=req.notes,
                    full_schedule=plan.schedule)  # the whole num_inference_steps schedule, skipped steps included
        call.update(image=req.image, strength=req.strength)
        if req.mode == "inpaint":
            meta["inpaint_mode"] = plan.inpaint_mode
            call.update(mask_image=req.mask, height=height, width=width)

    recorder = Recorder(pipe, sched, plan, progress)
    recorder.guidance = guidance
    final_image = None
    failure: BaseException | None = None
    t_run = time.perf_counter()
    # diffusers logs the dropped text in full; the warning above says it in one line
    quiet = _DroppedTextFilter() if any(t.truncated for t in tokens.values()) else None
    pipe_logger = logging.getLogger(type(pipe).__module__)
    try:
        if quiet is not None:
            pipe_logger.addFilter(quiet)
        recorder.attach()
        output = pipe(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            callback_on_step_end=recorder.on_step_end,
            **call,
        )
        final_image = output.images[0]
    except BaseException as err:  # noqa: BLE001 - re-raised below, after the partial trace is built
        failure = err
    finally:
        recorder.detach()
        if quiet is not None:
            pipe_logger.removeFilter(quiet)
    if req.mode != "txt2img":
        meta["image_latent_source"] = "pipeline"
        if recorder.image_latent is None and failure is None:  # 9-channel inpainting from pure noise never encodes it
            recorder.image_latent = _encode_mean(pipe, req.image, height, width).to(recorder.dtype)
            meta["image_latent_source"] = "vae mean, encoded after the run (the pipeline did not encode the image)"
    t_built = time.perf_counter()
    meta["timings"] = {"setup_s": t_run - t_start, "run_s": t_built - t_run}
    error = None if failure is None else f"{type(failure).__name__}: {failure}".rstrip(": ")
    input_image = np.asarray(req.image, dtype=np.uint8).copy() if req.image is not None else None  # [H, W, 3]
    try:
        result = recorder.build(final_image=final_image, meta=meta, tokens=tokens, complete=failure is None,
                                error=error, input_image=input_image)  # fmt: skip
    except Exception as build_error:  # e.g. out of memory again: the run's own error is the one to see
        if failure is None:
            raise
        if hasattr(failure, "add_note"):
            failure.add_note(f"explainer.trace: no partial trace ({type(build_error).__name__} while building it).")
        raise failure from None
    result.metadata["timings"]["build_s"] = time.perf_counter() - t_built
    if failure is None:
        return result
    if isinstance(failure, KeyboardInterrupt):
        warnings.warn(
            f"trace interrupted after {result.num_steps} of {plan.num_steps} steps; returning the partial trace "
            "(trace.complete is False).",
            stacklevel=2,
        )
        return result
    try:
        failure.partial_trace = result  # type: ignore[attr-defined]
        if hasattr(failure, "add_note"):
            failure.add_note(f"explainer.trace: the {result.num_steps} finished steps are in err.partial_trace.")
    except (AttributeError, TypeError):  # pragma: no cover - exceptions without a __dict__
        pass
    raise failure


def truncation_message(name: str, max_len: int, dropped: list[str], shown: int = 5) -> str:
    """One short line saying how many tokens a long prompt lost, with the first few of them.

    Args:
        name: ``"prompt"`` or ``"negative_prompt"``.
        max_len: the tokenizer's length limit.
        dropped: the BPE tokens that did not fit.
        shown: how many of them to quote.
    """
    words = " ".join(tok.removesuffix("</w>") for tok in dropped[:shown])
    more = f" and {len(dropped) - shown} more" if len(dropped) > shown else ""
    where = "trace.truncated_tokens" if name == "prompt" else "trace.negative_truncated_tokens"
    return (f"{name} is longer than the tokenizer's {max_len} tokens; {len(dropped)} tokens were dropped, "
            f"starting {words!r}{more} (all in {where}).")  # fmt: skip


class _DroppedTextFilter(logging.Filter):
    """Drop diffusers' own "The following part of your input was truncated" record (it quotes the whole text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("The following part of your input was truncated")


@torch.no_grad()
def _encode_mean(pipe: Any, image: Image.Image, height: int, width: int) -> torch.Tensor:
    """``[C, h, w]`` the VAE's mean encoding of ``image``, scaled (no generator used: the run is over)."""
    x = pipe.image_processor.preprocess(image, height=height, width=width)
    x = x.to(pipe._execution_device, pipe.vae.dtype)
    return pipe.vae.encode(x).latent_dist.mode()[0] * pipe.vae.config.scaling_factor


def _model_info(pipe: StableDiffusionPipeline, device: torch.device) -> dict[str, Any]:
    unet, vae = pipe.unet, pipe.vae
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


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("sd-explainer", "torch", "diffusers", "transformers", "numpy", "safetensors"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found
