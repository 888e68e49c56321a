"""Record every denoising step of a real diffusers pipeline call (SD 1.x/2.x or SDXL).

What is model-specific (pipeline classes, tokenizers, attention sites, latent layout, schedule kind)
comes from the pipeline's family adapter (``families/``); this module only attaches and detaches.

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

Image-to-image and inpainting run diffusers' own image-to-image / inpainting pipeline of the family
(e.g. ``StableDiffusionImg2ImgPipeline``, ``StableDiffusionXLInpaintPipeline``), derived from the given
pipeline's components with ``from_pipe``.
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

import collections
import dataclasses
import functools
import logging
import math
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from tqdm.auto import tqdm

from .._quiet import KnownNoticeFilter
from ..toy.known_words import ToyVocabularyWarning, check_prompt, unknown_words_message
from .attention import AttentionLayer, PromptTokens, attention_probs
from .build import build_trace, encode_mean, versions
from .families import MODEL_OUTPUTS, family_for
from .joint_attention import JointAttentionRecorder
from .plan import Plan, copy_scheduler, make_plan, start_step
from .request import TraceRequest, fit_image, prepare_request, truncation_message
from .schedulers import current_sigma, model_input_scale, scheduler_x0, x0_coefficients
from .trace import Trace

__all__ = ["CrossAttentionRecorder", "Plan", "Recorder", "TraceRequest", "estimate_trace_bytes", "family_for", "fit_image", "make_plan",
           "pipeline_for", "prepare_request", "start_step", "trace", "truncation_message"]  # fmt: skip

BRANCHES = ("uncond", "cond")


@dataclasses.dataclass
class _Check:
    """One step's queued finiteness check (:meth:`Recorder._queue_check`)."""

    step: int  # index of the checked step
    peak: torch.Tensor  # 0-d: its largest |value| (pinned host memory on CUDA, filled once ``event`` is done)
    event: Any  # torch.cuda.Event after the copy, or None
    outputs: list[torch.Tensor]  # the model's raw outputs of the step and its latent, kept to say which went wrong
    latents: torch.Tensor
    scalars: tuple[float, ...]  # t, sigma, a, b, input scale


# ---------------------------------------------------------------------------------------- recording


class CrossAttentionRecorder:
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

    def __init__(self, pipe: Any, scheduler: SchedulerMixin, plan: Plan, progress: bool) -> None:
        self.pipe = pipe
        self.scheduler = scheduler
        self.plan = plan
        self.family = plan.family if plan.family is not None else family_for(pipe)
        self.spec = plan.spec
        self.dtype = plan.spec.torch_dtype
        self.space = self.family.schedule_kind(scheduler)
        self.prediction = self.family.model_output(scheduler)
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
        self.joint: dict[int, torch.Tensor] = {}  # joint attention: layer index -> [B, 1 | H, N, T_all] text block
        self._key_index: dict[tuple[str, Any], torch.Tensor | None] = {}  # (branch, device) -> recorded key positions
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
        self.encoded: Any = None  # what encode_prompt returned (the family reads it)
        self.conditioning: dict[str, Any] = {}  # the family's extra conditioning, read at the first model call
        # FLUX true CFG calls the denoiser once per branch (batch 1 each): which branch the current call is
        self.separate = bool(getattr(self.family, "separate_guidance_calls", False))
        self.branch_embeds: dict[str, torch.Tensor] = {}
        self.call_branch = "cond"
        self._branch_order: list[str] = []  # the branches of the first step's denoiser calls, in call order
        self._step_branch_calls = 0  # denoiser calls so far in this step
        self.user_callback: Callable[..., Any] | None = None  # trace(callback_on_step_end=...), run before committing
        # what one step stores: slots of its [slots, C, h, w] block (see _store)
        names = ["latent", "x0", "eps_cond", *(["eps_uncond"] if plan.cfg else []), *(["unblended"] if self.blend else [])]
        self._slots = {name: i for i, name in enumerate(names)}
        self._checks: collections.deque[_Check] = collections.deque()  # finiteness checks not read yet
        self._next_scales: list[float] = []  # next_scale before each finished step (to truncate)

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
            for name in ("add_noise", "scale_noise"):  # scale_noise: flow-matching schedulers' forward process
                if callable(getattr(self.scheduler, name, None)):
                    self._wrap_attribute(self.scheduler, name, self._wrap_add_noise(getattr(self.scheduler, name)))
        if self.plan.mode == "inpaint":
            self._wrap_attribute(pipe, "prepare_mask_latents", self._wrap_prepare_mask(pipe.prepare_mask_latents))
        unet = self.family.denoiser(pipe)
        pre = unet.register_forward_pre_hook(self._unet_pre_hook, with_kwargs=True)
        post = unet.register_forward_hook(self._unet_post_hook, with_kwargs=True)
        self._undo += [pre.remove, post.remove]
        if self.spec.attention != "none" and self.family.attention_kind == "joint":
            for layer in self.plan.layers:
                module = self.plan.modules[layer.name]
                original = module.processor
                make = getattr(self.family, "joint_recorder", JointAttentionRecorder)  # FLUX: its own (RoPE)
                method = {"method": self.spec.method} if self.spec.method != "probabilities" else {}  # SD3/FLUX: "concept"
                joint = make(layer, original, self._keep_joint, lambda: self.active,
                             head_mean=self.spec.attention != "per_head", **method)  # fmt: skip
                module.set_processor(joint)
                self._undo.append(functools.partial(module.set_processor, original))
                for target, forward in joint.wrappers(module):
                    self._wrap_attribute(target, "forward", forward)
        elif self.spec.attention != "none":
            for layer in self.plan.layers:
                module = self.plan.modules[layer.name]
                original = module.processor
                proc = CrossAttentionRecorder(self, layer, original)
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

    def _grid(self, row: torch.Tensor) -> torch.Tensor:
        """One batch row of a latent-shaped tensor as ``[C, h, w]`` (the family unpacks packed latents)."""
        to_grid = getattr(self.family, "to_grid", None)
        return row if to_grid is None else to_grid(self.pipe, row, self.plan.latent_shape)

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
            if self.separate and self.encoded is not None:  # FLUX true CFG: the second call encodes the negative
                self.branch_embeds["uncond"] = self.family.read_embeddings(result)[0]
                return result
            self.encoded = result
            self.embeds = self.family.read_embeddings(result)
            self.branch_embeds["cond"] = self.embeds[0]
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
                self.latents = [self._grid(latents[0]).to(self.dtype, copy=True)]  # the state before step 0
                if isinstance(out, tuple) and len(out) > 2:
                    self.image_latent = out[2][0].to(self.dtype, copy=True)
                # The timesteps are set by now (SD 1.x/2.x/XL); one host copy here spares a device sync at every
                # step. Image-to-image and inpainting run the schedule from plan.start_index on. Pipelines that
                # set them after the latents (SD3) get theirs at the first step (_after_step).
                if getattr(self.scheduler, "timesteps", None) is not None:
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
        if not self.active:
            return
        if self.separate and self.plan.cfg:
            self.call_branch = self._branch_of_call(kwargs.get("encoder_hidden_states"))
        elif self.cond_index is None and self.plan.cfg:
            context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
            self.cond_index = self._detect_order(context)
        if not self.conditioning and not self.x0:
            self.conditioning = self.family.conditioning(self.pipe, self.encoded, kwargs, self.cond_index or 0)

    def _branch_of_call(self, context: torch.Tensor | None) -> str:
        """The branch of this denoiser call: compared with the embeddings during the first step (a host read
        each), then the order that step showed (the pipeline calls its branches in a fixed order)."""
        n = self._step_branch_calls
        self._step_branch_calls += 1
        if self.x0 and n < len(self._branch_order):
            return self._branch_order[n]
        branch = self._detect_branch(context)
        if not self.x0:
            self._branch_order.append(branch)
        return branch

    def _detect_branch(self, context: torch.Tensor | None) -> str:
        """The branch of one denoiser call of a pipeline that runs each branch separately (FLUX true CFG),
        read from the embeddings each ``encode_prompt`` call returned (identical embeddings: call order)."""
        cond, uncond = self.branch_embeds.get("cond"), self.branch_embeds.get("uncond")
        if context is None or cond is None or uncond is None:
            raise RuntimeError("could not tell the prompt and negative-prompt calls of the transformer apart.")
        is_cond, is_uncond = torch.equal(context, cond), torch.equal(context, uncond)
        if is_cond and is_uncond:
            self.batch_order = "identical embeddings (separate calls)"
            return "uncond" if "eps_cond" in self._pending else "cond"
        if is_cond or is_uncond:
            self.batch_order = "separate calls: cond, then uncond"
            return "cond" if is_cond else "uncond"
        raise RuntimeError(
            "the transformer's encoder_hidden_states match neither the prompt's nor the negative prompt's embeddings; "
            "this pipeline calls its transformer in a way the tracer does not know."
        )

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
        if self.captured or self.joint:
            self.flush_attention()
        out = output[0] if isinstance(output, tuple) else output.sample
        self._pending.setdefault("outputs", []).append(out)  # kept (not copied) until the step's check is read
        if self.separate:  # one branch per call, batch 1; packed latents become [C, h, w]
            self._store(f"eps_{self.call_branch}", self._grid(out[0]))
            return
        if self.plan.cfg:
            ci = self.cond_index
            self._store("eps_cond", out[ci])
            self._store("eps_uncond", out[1 - ci])
        else:
            self._store("eps_cond", out[0])

    def _store(self, name: str, grid: torch.Tensor) -> torch.Tensor:
        """Copy one latent-shaped ``[C, h, w]`` array of this step into its slot of the step's block.

        Everything a step stores (latent, x0, model outputs, unblended latent) lies in one
        ``[slots, C, h, w]`` tensor, so one reduction checks it all (:meth:`_queue_check`).
        """
        block = self._pending.get("block")
        if block is None:
            block = torch.empty((len(self._slots), *grid.shape), dtype=self.dtype, device=grid.device)
            self._pending["block"] = block
        view = block[self._slots[name]]
        view.copy_(grid)
        self._pending[name] = view
        return view

    def _keep_joint(self, layer: AttentionLayer, probs: torch.Tensor) -> None:
        self.joint[layer.index] = probs  # [B, 1 | H, N, T_all], turned into maps by flush_attention

    def flush_attention(self) -> None:
        """Turn the q/k captured during one UNet call into probabilities, one batched op chain per layer shape.

        Per group of same-shaped layers: stack q and k, one matmul, softmax in float32, head mean, one
        fp16 cast; no host sync. Each branch keeps a ``[N, t]`` (``[H, N, t]`` per head) view per
        layer, laid out as ``[t, h, w]`` on the host once the run is over.
        """
        mode = self.spec.attention
        if self.separate:
            rows = {self.call_branch: 0}
        else:
            rows = {"cond": 0} if not self.plan.cfg else {"cond": self.cond_index, "uncond": 1 - self.cond_index}
        halves = {b: rows[b] for b in self.plan.attention_branches if b in rows}
        if not halves:
            self.captured.clear()
            self.joint.clear()
            return
        if self.joint:
            for la in self.plan.layers:
                if la.index in self.joint:
                    self._keep([la], self.joint[la.index][None], halves, mode)
            self.joint.clear()
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
                self._keep(chunk, probs, halves, mode)
        self.captured.clear()

    def _select_keys(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        """``x[..., keys]``: the recorded key positions of ``branch`` (a slice when they are ``0 .. t-1``)."""
        keys = self.plan.keys.get(branch)
        t = self.plan.tokens[branch]
        if branch in self._prefix_branches:
            return x[..., :t]
        cache = (branch, x.device)
        if cache not in self._key_index:
            self._key_index[cache] = torch.tensor(keys, dtype=torch.long, device=x.device)
        return x.index_select(-1, self._key_index[cache])

    def _keep(self, layers: list[AttentionLayer], probs: torch.Tensor, halves: dict[str, int], mode: str) -> None:
        if mode == "per_step":
            _, h, w = self.plan.latent_shape
            la = layers[0]
            summed = probs.mean(dim=2).sum(dim=0)  # [B, N, T], summed over layers
            for branch, row in halves.items():
                part = self._select_keys(summed[row], branch).transpose(0, 1)  # [t, N]
                grid = part.reshape(1, part.shape[0], la.height, la.width)
                if (la.height, la.width) != (h, w):
                    grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
                acc = self._pending_attn[branch].get(0)
                self._pending_attn[branch][0] = grid[0] if acc is None else acc + grid[0]
            return
        averaged = probs if mode == "per_head" else probs.mean(dim=2)  # [L, B, (H,) N, T]
        prefix = all(b in self._prefix_branches for b in halves)
        if prefix and len(halves) == 2:  # both branches: one float16 copy of the longer key prefix, a view each
            both = averaged[..., : max(self.plan.tokens[b] for b in halves)].to(torch.float16)
            kept_by = {b: both[:, row, ..., : self.plan.tokens[b]] for b, row in halves.items()}  # [L, (H,) N, t]
        else:
            kept_by = {b: self._select_keys(averaged[:, row], b).to(torch.float16) for b, row in halves.items()}
        for branch, kept in kept_by.items():
            for slot, la in enumerate(layers):
                self._pending_attn[branch][la.index] = kept[slot]

    @functools.cached_property
    def _prefix_branches(self) -> frozenset[str]:
        """The branches that record the first ``t`` key positions (a slice, not an index): read once per run."""
        return frozenset(b for b, t in self.plan.tokens.items()
                         if (keys := self.plan.keys.get(b)) is None or list(keys) == list(range(t)))  # fmt: skip

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
        if calls == 0 and getattr(sched, "timesteps", None) is not None:  # the run's timesteps (see prepare_latents)
            self._timesteps = sched.timesteps.detach().to("cpu", torch.float64)[self.plan.start_index :]
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
        self._store("x0", self._grid(x0[0]))
        self._pending.update(
            scalars=(t, sigma, a, b, model_input_scale(self.space, sigma)),
            next_scale=model_input_scale(self.space, next_sigma),
        )
        if self.blend:  # the inpainting pipeline blends the known region back into this output next
            self._store("unblended", output.prev_sample[0])

    def on_step_end(self, pipe: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        """``callback_on_step_end``: commit the step's records; the latents are left unchanged."""
        if not self.active:
            return {}
        p = self._pending
        outputs = dict(self.user_callback(pipe, i, t, callback_kwargs) or {}) if self.user_callback else {}
        latents = outputs.get("latents", callback_kwargs["latents"])
        kept = self._store("latent", self._grid(latents[0]))
        self._queue_check(p, latents)
        self.latents.append(kept)
        self._next_scales.append(self.next_scale)
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
        self._step_branch_calls = 0
        self._bar.update(1)
        last = len(self.x0) >= self.plan.num_steps  # read them all before the pipeline decodes the image
        self._read_checks(keep=0 if last else self._check_lag(latents.device))
        return outputs

    # -------------------------------------------------------------- finiteness checks

    CUDA_LAG = 2  # on CUDA a step's check is read this many steps later (or at the last step), its work long done
    finite_check_lag: int | None = None  # steps between a check and its read; None: CUDA_LAG on CUDA, else 0

    def _check_lag(self, device: torch.device) -> int:
        if self.finite_check_lag is not None:
            return self.finite_check_lag
        return self.CUDA_LAG if device.type == "cuda" else 0

    def _queue_check(self, p: dict[str, Any], latents: torch.Tensor) -> None:
        """Queue the step's finiteness check: one reduction over everything it stores, read later.

        The largest magnitude in the step's block (latent, x0, model outputs, all as stored) is NaN or
        infinite exactly when one of its values is. On CUDA it is copied to pinned host memory without
        waiting, and read :data:`CUDA_LAG` steps later (:meth:`_read_checks`), so the check stops neither
        the CPU from queueing the next steps nor the GPU; elsewhere it is read at once. All are read at
        the last step, before the pipeline decodes the image (one wait per run).
        """
        peak = torch.linalg.vector_norm(p["block"], float("inf"))  # 0-d, the step's largest |value|
        event = None
        if peak.device.type == "cuda":
            host = torch.empty((), dtype=peak.dtype, pin_memory=True)
            host.copy_(peak, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            peak = host
        self._checks.append(_Check(step=len(self.x0), peak=peak, event=event, outputs=p.get("outputs", []),
                                   latents=latents, scalars=p["scalars"]))  # fmt: skip

    def _read_checks(self, keep: int = 0) -> None:
        """Read the queued checks, all but the newest ``keep``; the first non-finite step ends the trace there."""
        while len(self._checks) > keep:
            entry = self._checks.popleft()
            if not self._read_check(entry):
                self._checks.clear()
                self._truncate(entry.step)
                raise self._non_finite_error(entry)

    def _read_check(self, entry: _Check) -> bool:
        """Whether the checked step is finite (waits for its copy on CUDA, long done by then)."""
        if entry.event is not None:
            entry.event.synchronize()
        return math.isfinite(float(entry.peak))

    def finish_checks(self, *, raise_error: bool = True) -> None:
        """Read every check still queued (once the pipeline has returned or failed).

        Args:
            raise_error: raise ``FloatingPointError`` for a non-finite step; ``False`` only drops it and
                the steps after it (the run already failed for another reason).
        """
        try:
            self._read_checks()
        except FloatingPointError:
            if raise_error:
                raise

    def _truncate(self, steps: int) -> None:
        """Keep the first ``steps`` finished steps (a later one was not finite)."""
        if steps >= len(self.x0):
            return
        self.next_scale = self._next_scales[steps]
        del self.latents[steps + 1 :], self.x0[steps:], self.unblended[steps:], self.scalars[steps:]
        del self._next_scales[steps:]
        for branch in BRANCHES:
            del self.eps[branch][steps:]
            for maps in self.attn[branch].values():
                del maps[steps:]

    def _non_finite_error(self, entry: _Check) -> FloatingPointError:
        """``FloatingPointError`` naming the step, where the values went wrong and the likely causes."""
        outputs_finite = all(bool(torch.isfinite(out).all()) for out in entry.outputs)
        where = [name for name, ok in (("the UNet output", outputs_finite),
                                       ("the latent", bool(torch.isfinite(entry.latents).all()))) if not ok]  # fmt: skip
        causes = []
        if self.guidance is not None and self.guidance > 50:
            causes.append(f"guidance_scale={self.guidance:g} is far above the usual range (1 to 15); use a smaller one")
        if not where:
            where = [f"the recorded values (they exceed {self.spec.dtype}'s range)"]
            if self.spec.dtype == "float16":
                causes.append("store float32 instead: record={'dtype': 'float32'}")
        if self.family.denoiser(self.pipe).dtype == torch.float16:
            causes.append("float16 weights can overflow: load the model with dtype='float32'")
        causes.append("else the model or scheduler itself produced them (check the weights and scheduler settings)")
        return FloatingPointError(
            f"step {entry.step} of {self.plan.num_steps} (timestep {entry.scalars[0]:g}) gave NaN or infinite values "
            f"in {' and '.join(where)}; the trace stops there. Likely causes: {'; '.join(causes)}."
        )

    # -------------------------------------------------------------- result

    def build(self, *, final_image: Any, meta: dict[str, Any], tokens: dict[str, PromptTokens], complete: bool,
              error: str | None, input_image: np.ndarray | None = None) -> Trace:  # fmt: skip
        """Move everything to the CPU once and assemble the Trace (``build.build_trace``)."""
        return build_trace(self, final_image=final_image, meta=meta, tokens=tokens, complete=complete, error=error,
                           input_image=input_image)  # fmt: skip


def pipeline_for(pipe: Any, mode: str) -> Any:
    """The pipeline that runs ``mode`` for ``pipe``'s family (``Family.pipeline_for``)."""
    return family_for(pipe).pipeline_for(pipe, mode)


def estimate_trace_bytes(
    pipe: Any,
    prompt: str,
    *,
    prompt_2: str | None = None,
    negative_prompt_2: str | None = None,
    prompt_3: str | None = None,
    negative_prompt_3: str | None = None,
    max_sequence_length: int | None = None,
    true_cfg_scale: float | None = None,
    image: Image.Image | np.ndarray | None = None,
    mask: Image.Image | np.ndarray | None = None,
    strength: float | None = None,
    negative_prompt: str | None = None,
    num_inference_steps: int = 25,
    guidance_scale: float | None = None,
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
    req = prepare_request(pipe, prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                          guidance_scale=guidance_scale, seed=0, height=height, width=width, scheduler=scheduler,
                          record=record, image=image, mask=mask, strength=strength,
                          extra_texts={"prompt_2": prompt_2, "negative_prompt_2": negative_prompt_2, "prompt_3": prompt_3,
                                       "negative_prompt_3": negative_prompt_3},
                          options={"max_sequence_length": max_sequence_length, "true_cfg_scale": true_cfg_scale})  # fmt: skip
    return req.plan.estimate_bytes() + req.height * req.width * 3


# ---------------------------------------------------------------------------------------- entry point


def trace(
    pipe: Any,
    prompt: str,
    *,
    prompt_2: str | None = None,
    negative_prompt_2: str | None = None,
    prompt_3: str | None = None,
    negative_prompt_3: str | None = None,
    max_sequence_length: int | None = None,
    true_cfg_scale: float | None = None,
    image: Image.Image | np.ndarray | None = None,
    mask: Image.Image | np.ndarray | None = None,
    strength: float | None = None,
    negative_prompt: str | None = None,
    num_inference_steps: int = 25,
    guidance_scale: float | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    height: int | None = None,
    width: int | None = None,
    scheduler: str | SchedulerMixin | None = None,
    record: str | dict[str, Any] = "default",
    progress: bool = True,
    callback_on_step_end: Callable[..., dict[str, Any] | None] | None = None,
) -> Trace:
    """Run ``pipe`` once on ``prompt`` and record every denoising step.

    Without ``image`` this is text-to-image; with ``image`` image-to-image; with ``image`` and ``mask``
    inpainting. The run uses diffusers' own pipeline of ``pipe``'s family for that mode (for example
    ``StableDiffusionPipeline``, ``StableDiffusionImg2ImgPipeline``, ``StableDiffusionXLInpaintPipeline``),
    derived from ``pipe``'s components with ``from_pipe`` (a
    pipeline that already is one of them is used as it is). The image is exactly what that pipeline
    gives with the same arguments and ``generator=torch.Generator(device).manual_seed(seed)``; the
    pipeline (scheduler, processors, hooks) is left as it was.

    Args:
        pipe: a diffusers SD 1.x/2.x or SDXL pipeline (text-to-image, image-to-image or inpainting), or
            a Stable Diffusion 3 / 3.5 one (text-to-image, image-to-image).
        prompt: one prompt; ``""`` is an unconditional image.
        prompt_2, negative_prompt_2: the second text encoder's texts (SDXL, SD3); default: ``prompt`` /
            ``negative_prompt``.
        prompt_3, negative_prompt_3: the T5 encoder's texts (SD3); default: ``prompt`` / ``negative_prompt``.
        max_sequence_length: T5 tokens the transformer attends to (SD3; default: the pipeline's, 256).
        true_cfg_scale: FLUX's true classifier-free guidance scale; with ``true_cfg_scale > 1`` and a
            ``negative_prompt`` the transformer runs a negative branch too (default: off). FLUX's own
            ``guidance_scale`` is an embedding input of guidance-distilled models (FLUX.1-dev), not a branch mix.
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
        guidance_scale: classifier-free guidance scale (finite, >= 0; <= 1 turns guidance off). Default
            ``None``: the running pipeline's own ``__call__`` default (7.5 for SD 1.x/2.x, 5.0 for SDXL
            text-to-image and image-to-image, 7.5 for SDXL inpainting), so ``trace(pipe, p)`` guides as
            ``pipe(p)`` does. ``num_inference_steps`` keeps the tracer's own default of 25 (diffusers': 50)
            for every family, and ``strength`` the defaults above.
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
        callback_on_step_end: optional diffusers-style ``callback(pipe, i, t, callback_kwargs) -> dict``
            run at the end of every step, before the step is recorded; what it returns goes back to the
            pipeline (e.g. ``{"prompt_embeds": ...}`` to change the conditioning from the next step on;
            returned ``latents`` are the ones recorded). :meth:`Trace.fork` uses it.

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
            ``err.partial_trace`` holds the finite steps before it. Checked every step, without a host sync
            on CUDA (each step's check is read two steps later; the error then ends the run there).

    Example:
        >>> pipe = explainer.load_pipeline()  # doctest: +SKIP
        >>> tr = explainer.trace(pipe, "a red circle on the left", num_inference_steps=10, seed=0)  # doctest: +SKIP
        >>> edit = explainer.trace(pipe, "a blue circle on the left", image=tr.final_image, strength=0.5)  # doctest: +SKIP

    See ``notebooks/00_quickstart.ipynb`` and ``notebooks/10_applications.ipynb``.
    """
    t_start = time.perf_counter()
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, not {type(progress).__name__}.")
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise TypeError(f"callback_on_step_end must be a function (pipe, i, t, callback_kwargs) -> dict, not "
                        f"{type(callback_on_step_end).__name__}.")  # fmt: skip
    req = prepare_request(pipe, prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                          guidance_scale=guidance_scale, seed=seed, generator=generator, height=height, width=width,
                          scheduler=scheduler, record=record, image=image, mask=mask, strength=strength,
                          extra_texts={"prompt_2": prompt_2, "negative_prompt_2": negative_prompt_2, "prompt_3": prompt_3,
                                       "negative_prompt_3": negative_prompt_3},
                          options={"max_sequence_length": max_sequence_length, "true_cfg_scale": true_cfg_scale})  # fmt: skip
    unknown = check_prompt(pipe, req.prompt, req.negative_prompt)  # None unless the toy is the model
    if unknown is not None and any(unknown.values()):
        warnings.warn(unknown_words_message(unknown), ToyVocabularyWarning, stacklevel=2)
    pipe, prompt, negative_prompt, guidance, steps = req.pipe, req.prompt, req.negative_prompt, req.guidance, req.steps
    sched, spec, tokens, plan, cfg, height, width, seed = (
        req.scheduler, req.plan.spec, req.tokens, req.plan, req.plan.cfg, req.height, req.width, req.seed
    )
    family = req.family
    for segments in req.segments.values():
        for seg in segments:
            if seg.tokens.truncated:
                max_len = family.token_limit(pipe, seg)
                warnings.warn(truncation_message(seg.name, max_len, seg.tokens.truncated), stacklevel=2)
    estimate = plan.check_budget()

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
        "model": family.model_info(pipe, device),
        "scheduler": {
            "class": type(sched).__name__,
            "name": short_name,
            "space": plan.schedule_kind,
            "config": dict(sched.config),
        },
        "prediction_type": family.model_output(sched),
        **({"schedule": plan.schedule_info} if plan.schedule_info else {}),
        "model_output": f"eps_cond / eps_uncond hold the {'UNet' if family.attention_kind == 'cross' else 'transformer'}'s "
                        "raw output: " + MODEL_OUTPUTS[family.model_output(sched)],
        "record": spec.to_dict(),
        "family": family.name,
        "attention_method": family.attention_method,
        "schedule_kind": plan.schedule_kind,
        "token_segments": {b: [seg.to_dict() for seg in segs] for b, segs in req.segments.items()},
        "unconditional": unconditional_note(req),
        "attention_layers_total": plan.all_layers,
        "estimated_bytes": estimate,
        "versions": dict(versions()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if spec.method != "probabilities":  # SD3's / FLUX's ConceptAttention-style maps
        meta["attention_method"] = family.attention_methods[spec.method]
    if family.settings:  # family options given (max_sequence_length, true_cfg_scale): re-runs pass them again
        meta["options"] = dict(family.settings)
    if cfg and hasattr(family, "cfg_scale"):  # FLUX true CFG: the branches mix with true_cfg_scale
        meta["cfg_scale"] = family.cfg_scale()
    if unknown is not None:
        meta["unknown_words"] = unknown  # the toy's unknown words: {"prompt": [...], "negative_prompt": [...]}
    call: dict[str, Any] = family.call_arguments(req.texts)
    if req.mode == "txt2img":
        call.update(height=height, width=width)
    else:
        meta.update(strength=req.strength, start_step=plan.start_index, input_notes=req.notes,
                    full_schedule=plan.schedule)  # the whole num_inference_steps schedule, skipped steps included
        call.update(image=req.image, strength=req.strength)
        if getattr(family, "edit_needs_size", False):  # FluxImg2ImgPipeline sizes by height/width, not the image
            call.update(height=height, width=width)
        if req.mode == "inpaint":
            meta["inpaint_mode"] = plan.inpaint_mode
            call.update(mask_image=req.mask, height=height, width=width)

    recorder = Recorder(pipe, sched, plan, progress)
    recorder.guidance = guidance
    recorder.user_callback = callback_on_step_end
    final_image = None
    failure: BaseException | None = None
    t_run = time.perf_counter()
    # diffusers logs the dropped text in full; the warning above says it in one line
    truncated = any(s.tokens.truncated for segs in req.segments.values() for s in segs)
    quiet = KnownNoticeFilter(r"^The following part of your input was truncated") if truncated else None
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
        recorder.finish_checks()  # the last steps' finiteness checks (read late on CUDA)
        final_image = output.images[0]
    except BaseException as err:  # noqa: BLE001 - re-raised below, after the partial trace is built
        failure = err
        recorder.finish_checks(raise_error=False)  # the partial trace keeps finite steps only
    finally:
        recorder.detach()
        if quiet is not None:
            pipe_logger.removeFilter(quiet)
    if req.mode != "txt2img":
        meta["image_latent_source"] = "pipeline"
        if recorder.image_latent is None and failure is None:  # 9-channel inpainting from pure noise never encodes it
            recorder.image_latent = encode_mean(pipe, req.image, height, width).to(recorder.dtype)
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


def unconditional_note(req: TraceRequest) -> str:
    """What the unconditional branch of this run was, in one phrase (kept as ``metadata["unconditional"]``)."""
    if not req.plan.cfg:
        reason = getattr(req.family, "no_uncond_reason", None)
        if reason is not None:  # FLUX: guidance_scale is an embedding input, true CFG is another argument
            return reason(req.pipe, req.guidance)
        unet = req.family.denoiser(req.pipe)
        if req.guidance > 1 and unet.config.time_cond_proj_dim is not None:
            return (f"no unconditional branch: this model is guidance-distilled (time_cond_proj_dim="
                    f"{unet.config.time_cond_proj_dim}); guidance_scale={req.guidance:g} is an input of the UNet")  # fmt: skip
        return f"no unconditional branch: guidance_scale={req.guidance:g} <= 1 runs the prompt branch only"
    if not req.segments.get("uncond"):
        return ("zeros: no negative_prompt and force_zeros_for_empty_prompt, so the unconditional embedding is all "
                "zeros (no negative tokens)")  # fmt: skip
    return "negative prompt" if req.negative_prompt else "empty negative prompt"
