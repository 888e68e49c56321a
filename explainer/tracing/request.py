"""Argument checking for :func:`explainer.trace`: every argument becomes one :class:`TraceRequest` with its plan.

Each bad input gets one short message naming the argument (the checks themselves live in
``validation.py``); the model-specific questions go to the pipeline's family (``families/``).
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from .attention import PromptTokens
from .errors import UnsupportedPipelineError
from .families import Family, TokenSegment, family_for
from .plan import Plan, make_plan
from .schedulers import resolve_scheduler
from .validation import (
    check_guidance,
    check_image,
    check_mask,
    check_prompt,
    check_seed,
    check_size,
    check_steps,
    check_strength,
    parse_record,
    round_size,
)


@dataclass
class TraceRequest:
    """A validated trace request and its plan."""

    pipe: Any  # the pipeline that runs (derived for image-to-image and inpainting)
    family: Family
    prompt: str
    negative_prompt: str | None
    guidance: float
    steps: int
    height: int
    width: int
    seed: int | None
    scheduler: SchedulerMixin
    segments: dict[str, list[TokenSegment]]  # per branch; the primary segment first
    plan: Plan
    mode: str = "txt2img"
    strength: float | None = None
    image: Image.Image | None = None  # RGB, height x width
    mask: Image.Image | None = None  # mode L, height x width
    notes: list[str] = field(default_factory=list)  # what was converted or resized
    texts: dict[str, str | None] = field(default_factory=dict)  # every text argument, checked

    @property
    def tokens(self) -> dict[str, PromptTokens]:
        """The primary token list of each branch that has text (the family's reading of its segments)."""
        return {b: self.family.primary_tokens(segs, self.plan.keys.get(b, [])) for b, segs in self.segments.items()
                if segs}  # fmt: skip


def fit_image(
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


def prepare_request(
    pipe: Any,
    prompt: Any,
    *,
    negative_prompt: Any = None,
    num_inference_steps: Any = 25,
    guidance_scale: Any = None,
    seed: Any = 0,
    generator: Any = None,
    height: Any = None,
    width: Any = None,
    scheduler: Any = None,
    record: Any = "default",
    image: Any = None,
    mask: Any = None,
    strength: Any = None,
    extra_texts: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> TraceRequest:
    """Check every argument (each error names its argument) and plan the recording.

    Args:
        pipe, prompt, ...: as for :func:`explainer.trace`.
        extra_texts: family-specific text arguments given (e.g. ``{"prompt_2": ...}``); a name the
            pipeline's family does not take is refused.
        options: family-specific non-text arguments given (e.g. ``{"max_sequence_length": 256}``), checked
            by the family's ``configure`` (``None`` values mean "not given").

    Returns:
        The request, with the pipeline that runs the mode and the plan.
    """
    family = family_for(pipe)
    pipe = family.check(pipe)
    prompt = check_prompt(prompt)
    negative_prompt = check_prompt(negative_prompt, "negative_prompt", optional=True)
    texts: dict[str, str | None] = {"prompt": prompt, "negative_prompt": negative_prompt}
    for name, value in (extra_texts or {}).items():
        if value is None:
            continue
        if name not in family.prompt_arguments:
            if name.endswith("_3"):
                raise UnsupportedPipelineError(
                    f"{name}= applies to pipelines with a third text encoder (Stable Diffusion 3); this is a "
                    f"{family.label} pipeline ({type(pipe).__name__}), so leave {name} out."
                )
            raise UnsupportedPipelineError(
                f"{name}= applies to pipelines with a second text encoder (Stable Diffusion XL); this is a "
                f"{family.label} pipeline ({type(pipe).__name__}) with one, so leave {name} out."
            )
        texts[name] = check_prompt(value, name, optional=True)
    if guidance_scale is not None:
        check_guidance(guidance_scale)  # a bad value is refused before the pipeline is derived
    family.configure(pipe, options or {})
    spec = parse_record(record)
    if spec.method not in getattr(family, "attention_methods", {"probabilities": None}):
        raise ValueError(
            f"record['method']={spec.method!r} is available for Stable Diffusion 3 and FLUX.1 pipelines only; this "
            f"is a {family.label} pipeline, so leave method out (its maps are the attention probabilities)."
        )
    if image is None and mask is not None:
        raise ValueError("mask needs image=: pass the picture to inpaint as image and the region to repaint as mask.")
    if image is None and strength is not None:
        raise ValueError(f"strength={strength!r} applies to image-to-image and inpainting only; pass image= too.")
    mode = "txt2img" if image is None else ("img2img" if mask is None else "inpaint")
    txt2img = family.pipelines["txt2img"]
    if mode == "txt2img" and not isinstance(pipe, txt2img):
        raise UnsupportedPipelineError(
            f"pipe must be a diffusers {txt2img.__name__} for text-to-image, not {type(pipe).__name__}; "
            f"pass image= (and mask=) to trace an edit with it, or trace {txt2img.__name__}.from_pipe(pipe)."
        )
    family.check_mode(pipe, mode)
    run_pipe = family.pipeline_for(pipe, mode)
    if guidance_scale is None:  # the running pipeline's own default: 7.5 for SD, 5.0 for SDXL text-to-image
        guidance_scale = call_default(run_pipe, "guidance_scale")
    guidance = check_guidance(guidance_scale)
    sched = resolve_scheduler(scheduler, pipe.scheduler)
    family.model_output(sched)  # refuses unsupported prediction types before the run
    steps = check_steps(num_inference_steps, int(sched.config.num_train_timesteps))
    multiple = family.size_multiple(pipe)
    img = mask_img = None
    notes: list[str] = []
    if mode == "txt2img":
        default_h, default_w = family.default_size(pipe)
        height = check_size(height, "height", multiple, default_h)
        width = check_size(width, "width", multiple, default_w)
        strength = None
    else:
        strength = check_strength(0.75 if mode == "img2img" and strength is None else
                                  1.0 if strength is None else strength, steps)  # fmt: skip
        img, mask_img, height, width, notes = fit_image(image, mask, height, width, multiple)
    seed = check_seed(seed, generator)
    cfg = family.guided(pipe, guidance, texts=texts)
    segments = {"cond": family.token_segments(pipe, texts, "cond")}
    if cfg:
        segments["uncond"] = family.token_segments(pipe, texts, "uncond")
    plan = make_plan(family, run_pipe, sched, steps, height, width, spec, cfg, segments, mode, strength or 1.0)
    return TraceRequest(run_pipe, family, prompt, negative_prompt, guidance, steps, height, width, seed, sched,
                        segments, plan, mode, strength, img, mask_img, notes, texts)  # fmt: skip


def call_default(pipe: Any, name: str) -> Any:
    """The default of argument ``name`` of ``type(pipe).__call__`` (what a plain ``pipe(prompt)`` uses).

    Args:
        pipe: a diffusers pipeline.
        name: an argument of its ``__call__``.

    Returns:
        That argument's default value.
    """
    param = inspect.signature(type(pipe).__call__).parameters.get(name)
    if param is None or param.default is inspect.Parameter.empty:
        raise UnsupportedPipelineError(f"{type(pipe).__name__}.__call__ has no default for {name}; pass {name}= explicitly.")
    return param.default


def truncation_message(name: str, max_len: int, dropped: list[str], shown: int = 5) -> str:
    """One short line saying how many tokens a long prompt lost, with the first few of them.

    Args:
        name: ``"prompt"``, ``"negative_prompt"`` (or another text argument, e.g. ``"prompt_2"``).
        max_len: the tokenizer's length limit.
        dropped: the BPE tokens that did not fit.
        shown: how many of them to quote.
    """
    words = " ".join(tok.removesuffix("</w>") for tok in dropped[:shown])
    more = f" and {len(dropped) - shown} more" if len(dropped) > shown else ""
    where = {"prompt": "trace.truncated_tokens", "negative_prompt": "trace.negative_truncated_tokens"}.get(
        name, "trace.token_segments"
    )
    return (f"{name} is longer than the tokenizer's {max_len} tokens; {len(dropped)} tokens were dropped, "
            f"starting {words!r}{more} (all in {where}).")  # fmt: skip
