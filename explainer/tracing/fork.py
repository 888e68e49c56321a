"""Branch a recorded run at step ``k``: same steps ``0..k-1``, new prompt / guidance / seed / scheduler after.

A fork runs the real pipeline again through :func:`explainer.trace`; nothing here steps the model itself.
Two ways, chosen per fork and recorded in ``metadata["fork"]["prefix"]``:

- ``"restored"``: the scheduler's state at step ``k`` is the latent alone (DDIM, DDPM, Euler, Euler
  ancestral) and the parent stored that latent exactly (its record dtype holds the pipeline's). The
  pipeline is called with the latent ``x_k`` (a wrapped ``prepare_latents``) and the schedule from
  step ``k`` on (a wrapped ``set_timesteps`` plus ``set_begin_index``, as diffusers' image-to-image
  does); the prefix is copied from the parent, not recomputed.
- ``"recomputed"``: multistep solvers (DPM++, PNDM, LMS, UniPC...) keep a history of model outputs,
  an ancestral scheduler without a new ``seed`` needs the generator's state at ``k``, and a float16
  latent is not the exact state. The whole run is made again with the parent's settings, and
  diffusers' ``callback_on_step_end`` swaps ``prompt_embeds`` and the guidance scale (and reseeds the
  generator) after step ``k - 1``.

Both give the parent's steps ``0..k-1`` bit for bit on a deterministic device.
"""

from __future__ import annotations

import copy
import functools
import inspect
import time
import uuid
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

from .errors import UnsupportedPipelineError
from .schedulers import resolve_scheduler, scheduler_space
from .trace import Trace
from .validation import check_guidance, check_prompt

#: Schedulers whose state before step ``k`` is the latent alone (no history of model outputs).
RESTORABLE = (DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler)
#: Schedulers that draw fresh noise in every step (a fork's ``seed`` reseeds it from step ``k`` on).
STOCHASTIC = (DDPMScheduler, EulerAncestralDiscreteScheduler)


def parent_scheduler(parent: Trace) -> Any:
    """A fresh instance of the scheduler the parent ran (class and config from its metadata)."""
    import diffusers

    info = parent.metadata.get("scheduler", {})
    cls = getattr(diffusers, str(info.get("class")), None)
    if cls is None:
        raise ValueError(f"the parent trace's scheduler {info.get('class')!r} is not a diffusers scheduler class.")
    return cls.from_config(copy.deepcopy(dict(info.get("config", {}))))


def is_stochastic(scheduler: Any) -> bool:
    """Whether ``scheduler`` draws noise in its steps (ancestral / SDE samplers, DDPM)."""
    if isinstance(scheduler, STOCHASTIC):
        return True
    return "sde" in str(getattr(scheduler.config, "algorithm_type", "")) or "Ancestral" in type(scheduler).__name__


def _check_step(parent: Trace, step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int (the first step that changes), not {type(step).__name__}.")
    n = parent.num_steps
    if not 0 <= int(step) < n:
        raise ValueError(f"step={step} is out of range; a fork of this {n}-step trace starts at a step in 0..{n - 1}.")
    return int(step)


def _exact_latents(parent: Trace) -> bool:
    """Whether the stored latents hold the pipeline's own values exactly (stored dtype >= model dtype)."""
    stored = parent.latents.dtype
    model = str(parent.metadata.get("model", {}).get("dtype", "float32"))
    return stored == np.float32 or (stored == np.float16 and model == "float16")


def fork(
    parent: Trace,
    step: int,
    *,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    seed: int | None = None,
    scheduler: str | Any | None = None,
    pipe: Any = None,
    progress: bool = True,
) -> Trace:
    """Continue ``parent`` from ``step`` with changed settings; steps ``0..step-1`` are the parent's.

    Args:
        parent: a complete text-to-image trace.
        step: the first step that runs with the new settings, ``0 <= step < parent.num_steps``.
        prompt, negative_prompt: new texts from ``step`` on (``None``: the parent's).
        guidance_scale: new scale from ``step`` on; it must keep guidance on (> 1) if the parent had it, and off if not.
        seed: reseed the generator at ``step``: fresh noise from there on for ancestral / SDE schedulers
            (deterministic schedulers draw none, so it changes nothing there).
        scheduler: a new scheduler (name or instance) from ``step`` on; it needs the parent's latents stored
            exactly (``record={"dtype": "float32"}`` for a float32 model) and the same timestep at ``step``.
        pipe: the pipeline (the parent's model); ``None`` loads ``parent.metadata["model"]["name_or_path"]``.
        progress: show a progress bar.

    Returns:
        The new Trace. ``metadata["fork"]`` holds the lineage: ``parent_uid``, ``step``, ``prefix``
        (``"restored"`` or ``"recomputed"``), ``reason`` and what changed.

    Raises:
        ValueError / TypeError: a bad step or setting, named in the message.

    Example:
        >>> tr = explainer.trace(pipe, "a red circle above a blue square", num_inference_steps=10)  # doctest: +SKIP
        >>> branch = tr.fork(4, prompt="a green circle above a blue square", pipe=pipe)  # doctest: +SKIP

    Walk-through: ``notebooks/11_change_one_word.ipynb``.
    """
    if not isinstance(parent, Trace):
        raise TypeError(f"fork needs a Trace, not {type(parent).__name__}.")
    if parent.mode not in ("txt2img", "img2img", "inpaint"):
        raise ValueError(f"fork supports text-to-image, image-to-image and inpainting traces; this one is {parent.mode!r}.")
    if not parent.complete:
        raise ValueError("fork needs a complete trace; this one was interrupted (trace.complete is False).")
    k = _check_step(parent, step)
    meta = parent.metadata
    new_prompt = parent.prompt if prompt is None else check_prompt(prompt)
    new_negative = parent.negative_prompt if negative_prompt is None else check_prompt(
        negative_prompt, "negative_prompt", optional=True)  # fmt: skip
    old_guidance = parent.guidance_scale
    new_guidance = old_guidance if guidance_scale is None else check_guidance(guidance_scale)
    cfg = bool(meta.get("classifier_free_guidance", parent.has_uncond))
    if k > 0 and (new_guidance > 1) != cfg:
        raise ValueError(
            f"guidance_scale={new_guidance:g} turns classifier-free guidance {'off' if cfg else 'on'}, but the parent "
            f"ran {'with' if cfg else 'without'} it (scale {old_guidance:g}); a fork keeps it {'> 1' if cfg else '<= 1'}."
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed={seed!r} must be a non-negative int (or None to keep the parent's noise).")
    if pipe is None:
        from ..models import load_pipeline

        pipe = load_pipeline(meta["model"]["name_or_path"])
    old_sched = parent_scheduler(parent)
    new_sched = old_sched if scheduler is None else resolve_scheduler(scheduler, old_sched)
    parent_seed = meta.get("seed")
    parent_seed = int(meta.get("generator_initial_seed", 0) if parent_seed is None else parent_seed)
    changed = {name: value for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt),
               ("guidance_scale", guidance_scale), ("seed", seed),
               ("scheduler", None if scheduler is None else type(new_sched).__name__)) if value is not None}  # fmt: skip

    exact = _exact_latents(parent)
    edit_inputs = _edit_inputs(parent, scheduler)
    if k == 0:
        prefix, reason = "none", "a fork at step 0 is a fresh run from the parent's starting noise"
    elif scheduler is not None:
        if not exact:
            raise ValueError(
                f"scheduler= at a fork needs the parent's latent at step {k} exactly, but it was stored as "
                f"{parent.latents.dtype} from a {meta['model'].get('dtype')} model; trace the parent with "
                "record={'dtype': 'float32'}."
            )
        prefix, reason = "restored", "a new scheduler starts from the parent's latent at the fork step"
    elif edit_inputs:
        prefix, reason = "recomputed", (f"a {parent.mode} run is made again from the trace's input image"
                                        f"{' and mask' if parent.mode == 'inpaint' else ''} (the restored way is built "
                                        "for text-to-image runs)")  # fmt: skip
    elif not isinstance(old_sched, RESTORABLE):
        prefix, reason = "recomputed", f"{type(old_sched).__name__} keeps a history of model outputs (multistep)"
    elif is_stochastic(old_sched) and seed is None:
        prefix, reason = "recomputed", (f"{type(old_sched).__name__} draws noise every step and the trace does not "
                                        "hold the generator's state at the fork step (pass seed= for fresh noise)")  # fmt: skip
    elif not exact:
        prefix, reason = "recomputed", (f"the latents are stored as {parent.latents.dtype}, not the model's "
                                        f"{meta['model'].get('dtype')} state (record={{'dtype': 'float32'}} avoids this)")  # fmt: skip
    else:
        prefix, reason = "restored", f"{type(old_sched).__name__}'s state at the fork step is the latent alone"

    if edit_inputs:  # the image-to-image / inpainting pipeline itself, so that its encode_prompt is the one wrapped
        from .families import family_for

        pipe = family_for(pipe).pipeline_for(pipe, parent.mode)
    t0 = time.perf_counter()
    common = dict(negative_prompt=new_negative, num_inference_steps=int(meta["num_inference_steps"]),
                  height=parent.height, width=parent.width, record=dict(meta["record"]), progress=progress,
                  **edit_inputs)  # fmt: skip
    device = pipe._execution_device
    generator = torch.Generator(device=meta.get("generator_device", device)).manual_seed(
        seed if prefix == "restored" and seed is not None else parent_seed)  # fmt: skip
    if prefix == "restored":
        if scheduler is not None and scheduler_space(new_sched) != scheduler_space(old_sched):
            raise ValueError(
                f"scheduler={type(new_sched).__name__} keeps its latents in another space "
                f"({scheduler_space(new_sched)}) than the parent's {type(old_sched).__name__} ({scheduler_space(old_sched)})."
            )
        run = _restored_run(parent, pipe, k, new_prompt, new_guidance, new_sched, generator, common)
        child = _join(parent, run, k)
    else:
        child = _recomputed_run(parent, pipe, k, new_prompt, new_negative, new_guidance, seed, old_sched,
                                generator, common)  # fmt: skip
    child.metadata["fork"] = {
        "parent_uid": parent.uid,
        "step": k,
        "prefix": prefix,
        "reason": reason,
        "changed": changed,
        "parent": {"prompt": parent.prompt, "negative_prompt": parent.negative_prompt,
                   "guidance_scale": old_guidance, "seed": parent_seed, "scheduler": type(old_sched).__name__},
        "prefix_attention": ("steps before the fork attended to the parent's prompt; their token axis follows the "
                             "fork's key positions" if k and new_prompt != parent.prompt else "same prompt"),
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    child.metadata["seed"] = parent_seed if seed is None else int(seed)
    return child


def _edit_inputs(parent: Trace, scheduler: Any) -> dict[str, Any]:
    """The ``image`` / ``mask`` / ``strength`` arguments that make an image-to-image or inpainting run again.

    Raises:
        ValueError: the trace lacks its input image (or mask), or ``scheduler=`` was given (a new scheduler
            needs the restored way, which starts a text-to-image call from the latent at the fork step).
    """
    if parent.mode == "txt2img":
        return {}
    if scheduler is not None:
        raise ValueError(
            f"scheduler= at a fork needs the restored way (a text-to-image call from the latent at the fork step); a "
            f"{parent.mode} fork is made again from the input image with the parent's scheduler."
        )
    if parent.input_image is None or (parent.mode == "inpaint" and parent.mask is None):
        missing = "input image" if parent.input_image is None else "mask"
        raise ValueError(
            f"a fork of a {parent.mode} trace makes the run again from its {missing}, and this trace holds none "
            "(a trace saved without its edit arrays); trace the edit again."
        )
    out: dict[str, Any] = {"image": parent.input_image, "strength": parent.strength}
    if parent.mode == "inpaint":
        out["mask"] = parent.mask
    return out


def _restored_run(parent: Trace, pipe: Any, k: int, prompt: str, guidance: float, sched: Any,
                  generator: torch.Generator, common: dict[str, Any]) -> Trace:  # fmt: skip
    """Run the pipeline from step ``k`` only: the schedule's tail and the parent's latent ``x_k``."""
    from .recorder import trace

    sched = copy.deepcopy(sched)
    set_timesteps = sched.set_timesteps

    @functools.wraps(set_timesteps)
    def tail(*args: Any, **kwargs: Any) -> None:
        set_timesteps(*args, **kwargs)
        full = sched.timesteps
        if len(full) != parent.num_steps or float(full[k]) != float(parent.timesteps[k]):
            raise ValueError(
                f"the scheduler's timestep at step {k} is {float(full[k]) if k < len(full) else None}, the parent's "
                f"{float(parent.timesteps[k]):g}; a new scheduler must share the parent's schedule ({parent.num_steps} steps)."
            )
        sched.timesteps = full[k:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(k)

    sched.set_timesteps = tail
    latent = torch.from_numpy(np.ascontiguousarray(parent.latents[k]))  # [C, h, w]

    def prepare_latents(batch: int, channels: int, height: int, width: int, dtype: torch.dtype,
                        device: torch.device, generator: Any, latents: Any = None) -> torch.Tensor:  # fmt: skip
        return latent.to(device=device, dtype=dtype)[None].expand(batch, -1, -1, -1).contiguous()

    undo = _patch(pipe, "prepare_latents", prepare_latents)
    try:
        return trace(pipe, prompt, guidance_scale=guidance, generator=generator, scheduler=sched, **common)
    finally:
        undo()


def _recomputed_run(parent: Trace, pipe: Any, k: int, prompt: str, negative: str | None, guidance: float,
                    seed: int | None, sched: Any, generator: torch.Generator, common: dict[str, Any]) -> Trace:  # fmt: skip
    """Run the whole schedule again: the parent's settings for steps ``< k``, the new ones after."""
    from .recorder import trace

    if k == 0:
        undo = _reseed_after_prepare(pipe, generator, seed) if seed is not None else (lambda: None)
        try:
            return trace(pipe, prompt, guidance_scale=guidance, generator=generator, scheduler=sched, **common)
        finally:
            undo()
    texts_change = prompt != parent.prompt or negative != parent.negative_prompt
    if texts_change and parent.family != "sd":
        raise UnsupportedPipelineError(
            f"changing the prompt at step {k} of a {parent.family!r} trace needs a restorable scheduler (DDIM, Euler) "
            "and float32 latents; the mid-run prompt swap is built for Stable Diffusion 1.x/2.x."
        )
    encode = pipe.encode_prompt
    signature = inspect.signature(encode)
    swap: dict[str, torch.Tensor] = {}

    @functools.wraps(encode)
    def encode_prompt(*args: Any, **kwargs: Any) -> Any:
        new = encode(*args, **kwargs)
        if not texts_change:
            return new
        bound = signature.bind(*args, **kwargs)
        bound.arguments["prompt"] = parent.prompt
        bound.arguments["negative_prompt"] = parent.negative_prompt
        old = encode(*bound.args, **bound.kwargs)
        cond, neg = new[0], new[1]
        swap["prompt_embeds"] = torch.cat([neg, cond]) if neg is not None and parent.has_uncond else cond
        return old

    def at_fork(p: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if i != k - 1:
            return {}
        p._guidance_scale = guidance
        if seed is not None:
            generator.manual_seed(int(seed))
        return dict(swap)

    undo = _patch(pipe, "encode_prompt", encode_prompt)
    try:
        child = trace(pipe, prompt, guidance_scale=parent.guidance_scale, generator=generator, scheduler=sched,
                      callback_on_step_end=at_fork, **common)  # fmt: skip
    finally:
        undo()
    child.metadata["guidance_scale"] = guidance
    return child


def _patch(owner: Any, name: str, value: Any) -> Any:
    """Set ``owner.name = value`` on the instance; return the function that undoes it."""
    had = name in vars(owner)
    previous = vars(owner).get(name)
    setattr(owner, name, value)

    def undo() -> None:
        if had:
            setattr(owner, name, previous)
        else:
            delattr(owner, name)

    return undo


def _reseed_after_prepare(pipe: Any, generator: torch.Generator, seed: int) -> Any:
    """Wrap ``pipe.prepare_latents`` so the generator is reseeded once the starting noise is drawn."""
    prepare = pipe.prepare_latents

    @functools.wraps(prepare)
    def prepare_latents(*args: Any, **kwargs: Any) -> Any:
        out = prepare(*args, **kwargs)
        generator.manual_seed(int(seed))
        return out

    return _patch(pipe, "prepare_latents", prepare_latents)


def _fit_tokens(arr: np.ndarray, tokens: int) -> np.ndarray:
    """Crop or zero-pad the token axis (``-3``) of an attention array to ``tokens``."""
    have = arr.shape[-3]
    if have == tokens:
        return arr
    if have > tokens:
        return arr[..., :tokens, :, :]
    pad = [(0, 0)] * arr.ndim
    pad[-3] = (0, tokens - have)
    return np.pad(arr, pad)


def _join(parent: Trace, run: Trace, k: int) -> Trace:
    """The parent's steps ``0..k-1`` followed by the restored run's steps (``run`` starts at ``x_k``)."""
    cat = np.concatenate
    attention = {}
    for key, arr in run.attention.items():
        before = parent.attention.get(key)
        if before is None:
            before = np.zeros((k, *arr.shape[1:]), arr.dtype)
        attention[key] = cat([_fit_tokens(before[:k], arr.shape[-3]).astype(arr.dtype), arr])
    meta = dict(run.metadata)
    meta["num_steps"] = parent.metadata.get("num_steps", parent.num_steps)
    meta["num_steps_recorded"] = k + run.num_steps
    meta["scheduler"] = dict(meta["scheduler"])
    out = copy.copy(run)
    out.timesteps = cat([parent.timesteps[:k], run.timesteps])
    out.sigmas = cat([parent.sigmas[:k], run.sigmas])
    out.alphas_cumprod = cat([parent.alphas_cumprod[:k], run.alphas_cumprod])
    out.x0_coef_sample = cat([parent.x0_coef_sample[:k], run.x0_coef_sample])
    out.x0_coef_model = cat([parent.x0_coef_model[:k], run.x0_coef_model])
    out.input_scale = cat([parent.input_scale[:k], run.input_scale])
    out.latents = cat([parent.latents[:k].astype(run.latents.dtype), run.latents])
    out.x0 = cat([parent.x0[:k].astype(run.x0.dtype), run.x0])
    out.eps_cond = cat([parent.eps_cond[:k].astype(run.eps_cond.dtype), run.eps_cond])
    if run.eps_uncond is not None and parent.eps_uncond is not None:
        out.eps_uncond = cat([parent.eps_uncond[:k].astype(run.eps_uncond.dtype), run.eps_uncond])
    out.attention = attention
    out.metadata = meta
    out.uid = uuid.uuid4().hex
    return out
