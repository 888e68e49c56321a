"""Argument checks for :func:`explainer.trace`: each bad input gets one short message naming the argument."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

ATTENTION_MODES = ("none", "per_step", "per_layer", "per_head")
_RECORD_ALIASES = {"default": "per_layer"}
TOKEN_MODES = ("prompt", "all")
TENSOR_DTYPES = ("float16", "float32")
#: How attention maps are computed: the softmax probabilities the layer used, or ConceptAttention-style maps
#: (SD3 and FLUX only: softmax over text tokens of image-output . text-output dot products, Helbling et al. 2025).
ATTENTION_METHODS = ("probabilities", "concept")
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
        layers: which attention layers to hook, chosen before the run (like TransformerLens's
            ``names_filter``): ``None`` (all), or a tuple of selectors, each a module path or a prefix of
            one (``"up_blocks.0"``, ``"mid_block"``) or a resolution ``"HxW"`` (``"32x32"``).
        method: ``"probabilities"`` (default: the layer's own softmax) or ``"concept"`` (ConceptAttention-style
            maps from the attention outputs; SD3 and FLUX only).
    """

    attention: str = "per_layer"
    tokens: str = "prompt"
    dtype: str = "float16"
    max_bytes: int = DEFAULT_MAX_BYTES
    layers: tuple[str, ...] | None = None
    method: str = "probabilities"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def selects(self, name: str, height: int, width: int) -> bool:
        """Whether the attention layer at module path ``name`` (maps ``height x width``) is recorded."""
        if self.layers is None:
            return True
        return any(sel == f"{height}x{width}" or name == sel or name.startswith(sel + ".") for sel in self.layers)

    def to_dict(self) -> dict[str, Any]:
        out = {"attention": self.attention, "tokens": self.tokens, "dtype": self.dtype, "max_bytes": self.max_bytes}
        if self.layers is not None:
            out["layers"] = list(self.layers)
        if self.method != "probabilities":
            out["method"] = self.method
        return out


def parse_record(record: str | dict[str, Any] | RecordSpec | None) -> RecordSpec:
    """Turn the ``record=`` argument into a :class:`RecordSpec`.

    Args:
        record: a mode name (``"none"``, ``"default"``, ``"per_step"``, ``"per_layer"``, ``"per_head"``),
            a dict with keys ``attention``, ``tokens``, ``dtype``, ``max_bytes``, ``layers``, ``method``, or a
            RecordSpec.

    Returns:
        The parsed spec.
    """
    if record is None:
        return RecordSpec()
    if isinstance(record, RecordSpec):  # checked like the other forms: a hand-built spec may hold anything
        record = record.to_dict()
    allowed = sorted(set(ATTENTION_MODES) | set(_RECORD_ALIASES))
    if isinstance(record, str):
        record = {"attention": record}
    if not isinstance(record, dict):
        raise TypeError(f"record must be one of {allowed} or a dict, not {type(record).__name__}.")
    unknown = set(record) - {"attention", "tokens", "dtype", "max_bytes", "layers", "method"}
    if unknown:
        raise ValueError(
            f"record has unknown keys {sorted(unknown)}; allowed keys: attention, tokens, dtype, max_bytes, layers, "
            "method."
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
    layers = _parse_layers(record.get("layers"))
    method = record.get("method", "probabilities")
    if method not in ATTENTION_METHODS:
        raise ValueError(f"record['method']={method!r} is not allowed; use one of {list(ATTENTION_METHODS)}.")
    return RecordSpec(attention=mode, tokens=tokens, dtype=dtype, max_bytes=int(max_bytes), layers=layers,
                      method=method)  # fmt: skip


def _parse_layers(layers: Any) -> tuple[str, ...] | None:
    """``record["layers"]``: ``None``/``"all"``, one selector or a list of them (module paths, prefixes, ``"HxW"``)."""
    if layers is None or layers == "all":
        return None
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not all(isinstance(s, str) and s.strip() for s in layers) or not layers:
        raise ValueError(
            f"record['layers']={layers!r} is not allowed; use 'all' or a non-empty list of module paths, prefixes "
            "such as 'up_blocks.0' or resolutions such as '32x32'."
        )
    return tuple(s.strip() for s in layers)


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
            f"(VAE scale factor x the UNet's downsampling or the transformer's latent patches), e.g. {lower} or "
            f"{lower + multiple}."
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


# ------------------------------------------------------------------------- image-to-image and inpainting


def check_strength(value: Any, num_inference_steps: int, name: str = "strength") -> float:
    """Return a strength in (0, 1] that leaves at least one denoising step.

    The pipelines run the last ``int(num_inference_steps * strength)`` steps of the schedule.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1], not {type(value).__name__}.")
    value = float(value)
    if not (math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"{name}={value!r} is not allowed; use a number in (0, 1] (0.75 is typical, 1 = from noise).")
    if int(num_inference_steps * value) < 1:
        least = 1 / num_inference_steps
        raise ValueError(
            f"{name}={value:g} with num_inference_steps={num_inference_steps} leaves "
            f"int({num_inference_steps} * {value:g}) = 0 denoising steps; use {name} >= {least:.3g} or more steps."
        )
    return value


def check_image(image: Any, name: str = "image") -> Image.Image:
    """Return ``image`` as an RGB PIL image; other modes and arrays are converted, with a warning saying so.

    Args:
        image: a PIL image, or a numpy array ``[H, W, 3]`` / ``[H, W, 4]`` / ``[H, W]`` (uint8, or float in [0, 1]).
        name: the argument's name, for messages.
    """
    if isinstance(image, Image.Image):
        if image.width < 1 or image.height < 1:
            raise ValueError(f"{name} is empty ({image.width}x{image.height} pixels).")
        if image.mode != "RGB":
            warnings.warn(f"{name} has mode {image.mode!r}; converted to 'RGB'.", stacklevel=3)
            image = image.convert("RGB")
        return image
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a PIL image or a numpy array [H, W, 3], not {type(image).__name__}.")
    arr = image
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or 0 in arr.shape:
        raise ValueError(f"{name} must be an array [H, W, 3] (RGB), [H, W, 4] or [H, W]; got shape {list(image.shape)}.")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must hold uint8 values or floats in [0, 1], not {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"{name} is a float array, so its values must be finite and in [0, 1].")
        arr = (arr * 255).round()
    elif arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"{name} is an integer array, so its values must be in 0..255.")
    arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        warnings.warn(f"{name} is a grey-scale array; converted to RGB.", stacklevel=3)
        return Image.fromarray(arr, "L").convert("RGB")
    if arr.shape[-1] == 4:
        warnings.warn(f"{name} has an alpha channel; it was dropped (converted to RGB).", stacklevel=3)
        arr = arr[..., :3]
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def check_mask(mask: Any, size: tuple[int, int], name: str = "mask") -> np.ndarray:
    """Return an inpainting mask as float32 ``[H, W]`` in [0, 1] (1 = repaint), the same size as the image.

    Args:
        mask: a single-channel PIL image (mode ``L``, ``1``, ``I`` or ``F``) or a numpy array ``[H, W]``
            (bool, uint8 0..255, or float in [0, 1]).
        size: the image's ``(width, height)``.
        name: the argument's name, for messages.

    Returns:
        The mask; an empty or full mask gives a warning, not an error.
    """
    if isinstance(mask, Image.Image):
        if len(mask.getbands()) != 1:
            raise ValueError(
                f"{name} must be single-channel (white = repaint, black = keep), but it has mode {mask.mode!r} "
                f"with {len(mask.getbands())} channels; convert it with {name}.convert('L')."
            )
        mask = np.asarray(mask)  # mode 1: bool, L: uint8, I: int32, F: float32
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be a PIL image or a numpy array [H, W], not {type(mask).__name__}.")
    arr = mask[..., 0] if mask.ndim == 3 and mask.shape[-1] == 1 else mask
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(
            f"{name} must be single-channel, an array [H, W] (white/1 = repaint), got shape {list(mask.shape)}."
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"{name} is an integer array, so its values must be in 0..255.")
        arr = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"{name} is a float array, so its values must be finite and in [0, 1].")
        arr = arr.astype(np.float32)
    else:
        raise TypeError(f"{name} must hold bool, uint8 or float values, not {arr.dtype}.")
    if (arr.shape[1], arr.shape[0]) != tuple(size):
        raise ValueError(
            f"{name} is {arr.shape[1]}x{arr.shape[0]} pixels but image is {size[0]}x{size[1]}; "
            "give a mask of the same size as the image."
        )
    repainted = arr >= 0.5  # the pipelines binarise at 0.5
    if not repainted.any():
        warnings.warn(f"{name} is empty (no value >= 0.5): nothing will be repainted.", stacklevel=3)
    elif repainted.all():
        warnings.warn(f"{name} is full (every value >= 0.5): the whole image will be repainted.", stacklevel=3)
    return np.ascontiguousarray(arr, dtype=np.float32)


def round_size(value: int, multiple: int) -> int:
    """``value`` rounded to the nearest positive multiple of ``multiple``."""
    return max(multiple, round(value / multiple) * multiple)
