"""Argument checks for :func:`explainer.trace`: each bad input gets one short message naming the argument."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from .errors import UnsupportedPipelineError

ATTENTION_MODES = ("none", "per_step", "per_layer", "per_head")
_RECORD_ALIASES = {"default": "per_layer"}
TOKEN_MODES = ("prompt", "all")
TENSOR_DTYPES = ("float16", "float32")
#: Default memory budget for one trace (bytes); change it with ``record={"max_bytes": ...}``.
DEFAULT_MAX_BYTES = 1 << 30
_MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF  # torch.Generator.manual_seed accepts any unsigned 8-byte seed


@dataclass(frozen=True)
class RecordSpec:
    """What a trace records.

    Attributes:
        attention: ``"none"``, ``"per_step"`` (aggregated over layers), ``"per_layer"`` (default) or ``"per_head"``.
        tokens: ``"prompt"`` (BOS, the prompt's tokens, the first EOS) or ``"all"`` (padding too).
        dtype: storage dtype of latents, x0 and model outputs: ``"float16"`` (default) or ``"float32"``.
        max_bytes: refuse to start a run whose estimated trace is larger than this.
    """

    attention: str = "per_layer"
    tokens: str = "prompt"
    dtype: str = "float16"
    max_bytes: int = DEFAULT_MAX_BYTES

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"attention": self.attention, "tokens": self.tokens, "dtype": self.dtype, "max_bytes": self.max_bytes}


def parse_record(record: str | dict[str, Any] | RecordSpec | None) -> RecordSpec:
    """Turn the ``record=`` argument into a :class:`RecordSpec`.

    Args:
        record: a mode name (``"none"``, ``"default"``, ``"per_step"``, ``"per_layer"``, ``"per_head"``),
            a dict with keys ``attention``, ``tokens``, ``dtype``, ``max_bytes``, or a RecordSpec.

    Returns:
        The parsed spec.
    """
    if record is None:
        return RecordSpec()
    if isinstance(record, RecordSpec):
        return record
    allowed = sorted(set(ATTENTION_MODES) | set(_RECORD_ALIASES))
    if isinstance(record, str):
        record = {"attention": record}
    if not isinstance(record, dict):
        raise TypeError(f"record must be one of {allowed} or a dict, not {type(record).__name__}.")
    unknown = set(record) - {"attention", "tokens", "dtype", "max_bytes"}
    if unknown:
        raise ValueError(
            f"record has unknown keys {sorted(unknown)}; allowed keys: attention, tokens, dtype, max_bytes."
        )
    mode = record.get("attention", "default")
    mode = _RECORD_ALIASES.get(mode, mode) if isinstance(mode, str) else mode
    if mode not in ATTENTION_MODES:
        raise ValueError(f"record={record.get('attention')!r} is not a recording mode; use one of {allowed}.")
    tokens = record.get("tokens", "prompt")
    if tokens not in TOKEN_MODES:
        raise ValueError(f"record['tokens']={tokens!r} is not allowed; use one of {list(TOKEN_MODES)}.")
    dtype = record.get("dtype", "float16")
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype not in TENSOR_DTYPES:
        raise ValueError(f"record['dtype']={dtype!r} is not allowed; use one of {list(TENSOR_DTYPES)}.")
    max_bytes = record.get("max_bytes", DEFAULT_MAX_BYTES)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral) or max_bytes <= 0:
        raise ValueError(f"record['max_bytes']={max_bytes!r} must be a positive integer number of bytes.")
    return RecordSpec(attention=mode, tokens=tokens, dtype=dtype, max_bytes=int(max_bytes))


def check_pipeline(pipe: Any) -> StableDiffusionPipeline:
    """Accept a diffusers ``StableDiffusionPipeline`` (or subclass); refuse anything else by name."""
    if not isinstance(pipe, StableDiffusionPipeline):
        raise UnsupportedPipelineError(
            f"pipe must be a diffusers StableDiffusionPipeline (text-to-image, SD 1.x/2.x layout), "
            f"not {type(pipe).__name__}; load one with explainer.load_pipeline()."
        )
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if getattr(pipe, name, None) is None:
            raise UnsupportedPipelineError(f"pipe has no {name}; the tracer needs a complete text-to-image pipeline.")
    return pipe


def check_prompt(prompt: Any, name: str = "prompt", *, optional: bool = False) -> str | None:
    """Return the prompt if it is a single string (``None`` allowed when ``optional``)."""
    if prompt is None and optional:
        return None
    if isinstance(prompt, (list, tuple)):
        raise TypeError(
            f"{name} must be a single string: trace() records one image, so pass one prompt, "
            f"not a {type(prompt).__name__} of {len(prompt)}; loop over the prompts to trace several."
        )
    if not isinstance(prompt, str):
        allowed = "a string or None" if optional else "a string (use '' for an unconditional image)"
        raise TypeError(f"{name} must be {allowed}, not {type(prompt).__name__}.")
    return prompt


def check_guidance(value: Any, name: str = "guidance_scale") -> float:
    """Return a finite, non-negative guidance scale as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r} is not allowed; use a finite number >= 0 (7.5 is typical).")
    return value


def check_steps(value: Any, max_steps: int, name: str = "num_inference_steps") -> int:
    """Return a step count between 1 and the scheduler's number of training timesteps."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}.")
    value = int(value)
    if value < 1 or value > max_steps:
        raise ValueError(f"{name}={value} is not allowed; use an integer from 1 to {max_steps}.")
    return value


def check_size(value: Any, name: str, multiple: int, default: int) -> int:
    """Return an image side length that is a positive multiple of ``multiple`` (``None`` → ``default``)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer number of pixels or None, not {type(value).__name__}.")
    value = int(value)
    if value <= 0 or value % multiple:
        lower = max(multiple, value // multiple * multiple)
        raise ValueError(
            f"{name}={value} is not allowed; this pipeline needs a positive multiple of {multiple} "
            f"(VAE scale factor x UNet downsampling), e.g. {lower} or {lower + multiple}."
        )
    return value


def check_seed(seed: Any, generator: Any) -> int | None:
    """Return the seed (``None`` when a generator is given); refuse non-integers and out-of-range values."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, not {type(generator).__name__}.")
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, not {type(seed).__name__}.")
    seed = int(seed)
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed={seed} is not allowed; use an integer from 0 to {_MAX_SEED} (torch.Generator's range).")
    return seed
