"""Latent → RGB previews: per-model linear factors (published or fitted) and a cached full VAE decode.

Linear previews map each latent pixel (in the UNet's scaled latent space) through a ``[C, 3]``
matrix plus a bias to RGB in [-1, 1], as ComfyUI's live previews do. The VAE preview decodes the
latent with the pipeline's VAE; decodes are cached per VAE in a module-level weak map keyed by the
latent's content (a hash of its bytes), so the Trace never holds the model, the cache dies with the
VAE, and a trace changed after the fact (``dataclasses.replace``, edited arrays) never gets a stale decode.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:
    from .trace import Trace

#: ComfyUI's published ``latent_rgb_factors`` for SD 1.x latents (``comfy/latent_formats.py``, class SD15),
#: rows = latent channels, columns = R, G, B; applied to latents scaled by ``SD1_SCALING_FACTOR``.
SD1_LATENT_RGB_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
SD1_SCALING_FACTOR = 0.18215
#: ComfyUI's published ``latent_rgb_factors`` and ``latent_rgb_factors_bias`` for FLUX.1 latents
#: (``comfy/latent_formats.py``, class Flux), for latents scaled as the FLUX pipelines keep them,
#: ``(z - FLUX_SHIFT_FACTOR) * FLUX_SCALING_FACTOR``; rows = the 16 latent channels, columns = R, G, B.
FLUX_LATENT_RGB_FACTORS = (
    (-0.0346, 0.0244, 0.0681),
    (0.0034, 0.0210, 0.0687),
    (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329),
    (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915),
    (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421),
    (-0.0515, 0.0201, 0.0011),
    (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749),
    (-0.1264, -0.0522, -0.1103),
    (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
FLUX_LATENT_RGB_BIAS = (-0.0329, -0.0718, -0.0851)
FLUX_SCALING_FACTOR = 0.3611
FLUX_SHIFT_FACTOR = 0.1159
#: ComfyUI's published ``latent_rgb_factors`` and ``latent_rgb_factors_bias`` for SD3 / SD3.5 latents
#: (``comfy/latent_formats.py``, class SD3), for latents scaled as the SD3 pipelines keep them,
#: ``(z - SD3_SHIFT_FACTOR) * SD3_SCALING_FACTOR``; rows = the 16 latent channels, columns = R, G, B.
SD3_LATENT_RGB_FACTORS = (
    (-0.0922, -0.0175, 0.0749),
    (0.0311, 0.0633, 0.0954),
    (0.1994, 0.0927, 0.0458),
    (0.0856, 0.0339, 0.0902),
    (0.0587, 0.0272, -0.0496),
    (-0.0006, 0.1104, 0.0309),
    (0.0978, 0.0306, 0.0427),
    (-0.0042, 0.1038, 0.1358),
    (-0.0194, 0.0020, 0.0669),
    (-0.0488, 0.0130, -0.0268),
    (0.0922, 0.0988, 0.0951),
    (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895),
    (-0.0069, -0.0030, -0.0810),
    (-0.0596, -0.0465, -0.0293),
    (-0.1448, -0.1463, -0.1189),
)
SD3_LATENT_RGB_BIAS = (0.2394, 0.2135, 0.1925)
SD3_SCALING_FACTOR = 1.5305
SD3_SHIFT_FACTOR = 0.0609
#: Published factors are kept only if they explain at least this share of the final image's variance.
PRESET_MIN_R2 = 0.5
_CACHE_SIZE = 100  # decoded images kept per VAE
_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict[tuple, Image.Image]] = weakref.WeakKeyDictionary()


@dataclass
class LatentRGB:
    """A linear latent → RGB map.

    Attributes:
        factors: ``[C, 3]`` float32.
        bias: ``[3]`` float32.
        source: where the numbers come from (``"comfyui-sd1"``, ``"fit:final-image"``, ``"fit:vae-decodes"``).
        r2: share of pixel variance the map explained on the images it was checked against (or NaN).

    Example:
        >>> rgb = explainer.fit_latent_rgb_factors(pipe, tr)   # or tr.latent_rgb, chosen when tracing
        >>> rgb.factors.shape, rgb.bias.shape
        ((4, 3), (3,))
        >>> rgb.apply(tr.x0[-1]).shape                         # [C, h, w] -> [h, w, RGB]
        (16, 16, 3)

        How rough a linear preview is for the toy model: ``notebooks/02_vae.ipynb``.
    """

    factors: np.ndarray  # [channel, 3]
    bias: np.ndarray  # [3]
    source: str
    r2: float = float("nan")

    def apply(self, latent: np.ndarray) -> np.ndarray:
        """Map ``[C, h, w]`` latents to ``[h, w, 3]`` RGB in about [-1, 1]."""
        lat = np.asarray(latent, dtype=np.float32)
        return np.einsum("chw,ck->hwk", lat, self.factors) + self.bias

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (lists and floats); :meth:`from_dict` reverses it."""
        return {"factors": self.factors.tolist(), "bias": self.bias.tolist(), "source": self.source, "r2": self.r2}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentRGB:
        """Rebuild a map from :meth:`to_dict`'s data (``r2`` may be missing)."""
        return cls(
            factors=np.asarray(data["factors"], np.float32),
            bias=np.asarray(data["bias"], np.float32),
            source=str(data["source"]),
            r2=float(data.get("r2", float("nan"))),
        )


def preset_latent_rgb(vae_config: Any) -> LatentRGB | None:
    """Return ComfyUI's published factors for the VAE's latent format (SD 1.x, FLUX.1, SD3), else ``None``."""
    channels = vae_config.get("latent_channels") if hasattr(vae_config, "get") else None
    scaling = vae_config.get("scaling_factor") if hasattr(vae_config, "get") else None
    shift = vae_config.get("shift_factor") if hasattr(vae_config, "get") else None
    if channels == len(SD1_LATENT_RGB_FACTORS) and scaling is not None and abs(scaling - SD1_SCALING_FACTOR) < 1e-6:
        if not shift:
            return LatentRGB(np.asarray(SD1_LATENT_RGB_FACTORS, np.float32), np.zeros(3, np.float32), "comfyui-sd1")
    if (channels == len(FLUX_LATENT_RGB_FACTORS) and scaling is not None and shift is not None
            and abs(scaling - FLUX_SCALING_FACTOR) < 1e-6 and abs(shift - FLUX_SHIFT_FACTOR) < 1e-6):  # fmt: skip
        return LatentRGB(np.asarray(FLUX_LATENT_RGB_FACTORS, np.float32), np.asarray(FLUX_LATENT_RGB_BIAS, np.float32),
                         "comfyui-flux")  # fmt: skip
    if (channels == len(SD3_LATENT_RGB_FACTORS) and scaling is not None and shift is not None
            and abs(scaling - SD3_SCALING_FACTOR) < 1e-6 and abs(shift - SD3_SHIFT_FACTOR) < 1e-6):  # fmt: skip
        return LatentRGB(np.asarray(SD3_LATENT_RGB_FACTORS, np.float32), np.asarray(SD3_LATENT_RGB_BIAS, np.float32),
                         "comfyui-sd3")  # fmt: skip
    return None


def _r2(pred: np.ndarray, target: np.ndarray) -> float:
    var = float(((target - target.mean(axis=0)) ** 2).sum())
    return float("nan") if var <= 0 else 1.0 - float(((pred - target) ** 2).sum()) / var


def fit_from_pairs(latents: torch.Tensor | np.ndarray, images: torch.Tensor | np.ndarray, source: str) -> LatentRGB:
    """Least-squares fit of ``rgb = latent @ factors + bias`` from matching latents and decoded images.

    Args:
        latents: ``[N, C, h, w]`` scaled latents.
        images: ``[N, 3, H, W]`` decodes in [-1, 1]; area-averaged down to ``h x w``.
        source: label stored with the result.

    Returns:
        The fitted map, with its R² on these pairs.
    """
    lat = torch.as_tensor(np.asarray(latents, np.float32) if isinstance(latents, np.ndarray) else latents).float().cpu()
    img = torch.as_tensor(np.asarray(images, np.float32) if isinstance(images, np.ndarray) else images).float().cpu()
    small = F.adaptive_avg_pool2d(img, lat.shape[-2:])  # [N, 3, h, w]
    x = lat.permute(0, 2, 3, 1).reshape(-1, lat.shape[1]).double().numpy()  # [N*h*w, C]
    y = small.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()  # [N*h*w, 3]
    design = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return LatentRGB(
        factors=coef[:-1].astype(np.float32),
        bias=coef[-1].astype(np.float32),
        source=source,
        r2=_r2(design @ coef, y),
    )


def choose_latent_rgb(vae_config: Any, final_latent: torch.Tensor, final_image: Image.Image) -> LatentRGB | None:
    """Pick the linear preview map for a finished trace, at no extra model cost.

    The final latent and the pipeline's own decode of it form one real (latent, image) pair. SD 1.x and
    FLUX.1 (and SD3) latents get ComfyUI's published factors when they explain the pair well (R² >= ``PRESET_MIN_R2``);
    any other VAE, or VAEs of those formats whose weights do not match them, get factors fitted on the pair
    (least squares). ``LatentRGB.source`` says which was used.

    Returns:
        The map, or ``None`` when the image is flat (nothing to fit).
    """
    image = torch.from_numpy(np.asarray(final_image.convert("RGB"), np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    latent = final_latent.float().cpu()[None] if final_latent.dim() == 3 else final_latent.float().cpu()
    if float(image.std()) < 1e-6:
        return preset_latent_rgb(vae_config)
    fitted = fit_from_pairs(latent, image, "fit:final-image")
    preset = preset_latent_rgb(vae_config)
    if preset is not None:
        small = F.adaptive_avg_pool2d(image, latent.shape[-2:])[0].permute(1, 2, 0).reshape(-1, 3).numpy()
        pred = preset.apply(latent[0].numpy()).reshape(-1, 3)
        preset.r2 = _r2(pred, small)
        if preset.r2 >= PRESET_MIN_R2:
            return preset
    return fitted


@torch.no_grad()
def decode_latents(vae: Any, latents: torch.Tensor | np.ndarray, clamp: bool = True) -> torch.Tensor:
    """Decode scaled latents ``[N, C, h, w]`` as the pipeline does; returns ``[N, 3, H, W]`` (in [-1, 1] if ``clamp``)."""
    lat = torch.as_tensor(np.asarray(latents) if isinstance(latents, np.ndarray) else latents)
    check_latent_layout(vae, tuple(lat.shape[1:]))
    param = next(vae.parameters())
    z = lat.to(device=param.device, dtype=param.dtype) / vae.config.scaling_factor
    shift = vae.config.get("shift_factor", None)
    if shift:
        z = z + shift
    image = vae.decode(z, return_dict=False)[0].float().cpu()
    return image.clamp(-1, 1) if clamp else image


def _vae_of(pipe_or_vae: Any) -> Any:
    vae = getattr(pipe_or_vae, "vae", pipe_or_vae)
    if not (isinstance(vae, torch.nn.Module) and hasattr(vae, "decode") and hasattr(vae, "config")):
        raise TypeError(
            f"pipe must be a diffusers pipeline with a VAE, or an AutoencoderKL, not {type(pipe_or_vae).__name__}; "
            "load one with explainer.load_pipeline()."
        )
    return vae


def check_latent_layout(vae: Any, shape: tuple[int, ...], name: str = "pipe") -> None:
    """Refuse latents ``[C, h, w]`` whose channel count is not the one ``vae`` decodes.

    Args:
        vae: the ``AutoencoderKL``.
        shape: the latent's ``(C, h, w)``.
        name: the argument that gave the VAE, for messages.
    """
    channels = vae.config.get("latent_channels") if hasattr(vae.config, "get") else None
    if channels is not None and (len(shape) != 3 or shape[0] != channels):
        raise ValueError(
            f"{name}'s VAE decodes latents with {channels} channels, but these latents have shape {list(shape)} "
            "([C, h, w]); decode with the model the trace was recorded with."
        )


def latent_key(latent: np.ndarray) -> tuple:
    """Cache key of one ``[C, h, w]`` latent: its shape and a hash of its float32 bytes."""
    arr = np.ascontiguousarray(latent, dtype=np.float32)
    return (arr.shape, hashlib.blake2b(arr.tobytes(), digest_size=16).hexdigest())


def fit_latent_rgb_factors(
    pipe_or_vae: Any,
    latents: Trace | torch.Tensor | np.ndarray | None = None,
    *,
    num_samples: int = 4,
    seed: int = 0,
) -> LatentRGB:
    """Fit latent → RGB factors by least squares against real VAE decodes.

    Args:
        pipe_or_vae: a pipeline (its ``vae`` is used) or an ``AutoencoderKL``.
        latents: scaled latents ``[N, C, h, w]`` to decode; a Trace (its final latent and x0 at a few
            steps); or ``None`` for ``num_samples`` random latents at the VAE's native size.
        num_samples: random latents to draw when ``latents`` is ``None``.
        seed: seed for those random latents.

    Returns:
        The fitted map; assign it to ``trace.latent_rgb`` to use it for linear previews.

    Example:
        >>> tr = explainer.trace(pipe, "a red circle on the left", num_inference_steps=10)
        >>> tr.latent_rgb = explainer.fit_latent_rgb_factors(pipe, tr)
        >>> round(tr.latent_rgb.r2, 2)      # share of the decodes' variance the map explains
        0.83
        >>> tr.preview(5)                    # linear previews now use the fitted map

        Fitting and judging the map on real images: ``notebooks/02_vae.ipynb``.
    """
    vae = _vae_of(pipe_or_vae)
    if latents is None:
        blocks = len(vae.config.block_out_channels)
        side = max(1, int(vae.config.sample_size) // (2 ** (blocks - 1)))
        gen = torch.Generator().manual_seed(seed)
        latents = torch.randn(num_samples, vae.config.latent_channels, side, side, generator=gen)
        source = "fit:vae-decodes(random)"
    elif hasattr(latents, "x0") and hasattr(latents, "latents"):
        trace = latents
        picks = sorted({int(i) for i in np.linspace(trace.num_steps // 2, trace.num_steps - 1, 3)}) if trace.num_steps else []
        latents = np.concatenate([trace.latents[-1:], trace.x0[picks]]).astype(np.float32)
        source = "fit:vae-decodes(trace)"
    else:
        source = "fit:vae-decodes"
    lat = torch.as_tensor(latents if not isinstance(latents, np.ndarray) else np.asarray(latents, np.float32)).float()
    if lat.dim() == 3:
        lat = lat[None]
    if lat.dim() != 4 or lat.shape[1] != vae.config.latent_channels:
        raise ValueError(
            f"latents must have shape [N, {vae.config.latent_channels}, h, w] for this VAE, got {tuple(lat.shape)}."
        )
    # unclamped: saturated pixels would bias the fit of what is a per-pixel linear relation
    return fit_from_pairs(lat, decode_latents(vae, lat, clamp=False), source)


def to_pil(rgb: np.ndarray, size: tuple[int, int] | None = None) -> Image.Image:
    """``[h, w, 3]`` RGB in [-1, 1] → PIL image, optionally resized to ``size = (width, height)``."""
    arr = ((np.clip(rgb, -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8)
    image = Image.fromarray(arr, "RGB")
    return image.resize(size, Image.BILINEAR) if size is not None and image.size != size else image


def linear_preview(latent: np.ndarray, rgb: LatentRGB, size: tuple[int, int] | None = None) -> Image.Image:
    """Linear preview of one ``[C, h, w]`` latent; ``size = (width, height)`` upsamples it."""
    return to_pil(rgb.apply(latent), size)


def vae_preview(pipe_or_vae: Any, latent: np.ndarray) -> Image.Image:
    """Decode one ``[C, h, w]`` latent with the VAE, cached per VAE by the latent's content."""
    vae = _vae_of(pipe_or_vae)
    check_latent_layout(vae, tuple(np.shape(latent)))
    cache = _CACHE.setdefault(vae, OrderedDict())
    key = latent_key(latent)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    image = decode_latents(vae, np.asarray(latent, np.float32)[None])[0].permute(1, 2, 0).numpy()
    result = to_pil(image)
    cache[key] = result
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return result


def clear_preview_cache() -> None:
    """Forget every cached VAE decode."""
    _CACHE.clear()


def preview_cache_size(pipe_or_vae: Any) -> int:
    """Number of cached decodes for this pipeline's VAE."""
    return len(_CACHE.get(_vae_of(pipe_or_vae), ()))


#: Work allowed for decoding a whole trace on a CPU, in decoder parameters × image pixels summed over
#: the decodes (a proxy for multiply-adds). The toy model (0.59 M decoder parameters, 64×64) decodes
#: 100 frames for 2.4e11; one SD 1.x decode at 512×512 (49 M parameters) is 1.3e13 alone.
CHEAP_DECODE_BUDGET = 1e12
#: Factor by which the budget grows when the VAE is on an accelerator (CUDA, MPS).
ACCELERATOR_SPEEDUP = 100.0


def decode_cost(pipe_or_vae: Any, trace: Trace, kinds: int = 2) -> float:
    """Estimated work of VAE-decoding every step of ``trace``: decoder parameters × image pixels × decodes.

    Args:
        pipe_or_vae: a pipeline (its ``vae`` is used) or an ``AutoencoderKL``.
        trace: the trace whose steps would be decoded.
        kinds: frames per step (2: x0 and x_t).

    Returns:
        The estimate, comparable with :data:`CHEAP_DECODE_BUDGET`.
    """
    vae = _vae_of(pipe_or_vae)
    decoder = getattr(vae, "decoder", vae)
    params = sum(p.numel() for p in decoder.parameters())
    return float(params) * trace.width * trace.height * (trace.num_steps + 1) * kinds


def vae_decode_is_cheap(pipe_or_vae: Any, trace: Trace, budget: float | None = None) -> bool:
    """Whether VAE-decoding every step's x0 and x_t of ``trace`` is affordable (a fraction of a second to a few seconds).

    The rule: :func:`decode_cost` <= ``budget``, with the budget multiplied by
    :data:`ACCELERATOR_SPEEDUP` when the VAE sits on an accelerator. The bundled toy model passes;
    SD 1.x at 512×512 on a CPU does not (one decode there takes seconds).

    Args:
        pipe_or_vae: a pipeline or an ``AutoencoderKL``.
        trace: the trace to decode.
        budget: the allowed work on a CPU (default :data:`CHEAP_DECODE_BUDGET`).

    Returns:
        ``True`` when decoding all steps is cheap.
    """
    vae = _vae_of(pipe_or_vae)
    device = next(vae.parameters()).device
    allowed = (CHEAP_DECODE_BUDGET if budget is None else budget) * (ACCELERATOR_SPEEDUP if device.type != "cpu" else 1.0)
    return decode_cost(vae, trace) <= allowed


def decode_steps(
    trace: Trace,
    pipe_or_vae: Any,
    kind: str = "x0",
    steps: Sequence[int] | None = None,
    batch_size: int = 16,
) -> list[Image.Image]:
    """VAE-decode many steps of ``trace`` in batches, filling the cache that ``trace.preview(method="vae")`` reads.

    Args:
        trace: the trace.
        pipe_or_vae: a pipeline (its ``vae`` is used) or an ``AutoencoderKL``.
        kind: ``"x0"`` (predicted clean latent) or ``"xt"`` (noisy latent, steps ``0..num_steps``).
        steps: the steps to decode; ``None`` for all of them.
        batch_size: latents per decode call (>= 1).

    Returns:
        The decoded images, one per step in ``steps`` order (also cached, up to the cache size).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; use an int >= 1.")
    if kind not in ("x0", "xt"):
        raise ValueError(f"kind={kind!r} is not allowed; use 'x0' (predicted clean) or 'xt' (noisy latent).")
    vae = _vae_of(pipe_or_vae)
    check_latent_layout(vae, tuple(trace.latents.shape[1:]))
    count = trace.num_steps + 1 if kind == "xt" else trace.num_steps
    wanted = list(range(count)) if steps is None else [trace._check_step(s, kind) for s in steps]
    latents = {s: trace.latent(s, kind) for s in wanted}
    keys = {s: latent_key(latents[s]) for s in latents}
    cache = _CACHE.setdefault(vae, OrderedDict())
    found: dict[int, Image.Image] = {}
    for s in dict.fromkeys(wanted):
        key = keys[s]
        if key in cache:
            cache.move_to_end(key)
            found[s] = cache[key]
    missing = [s for s in dict.fromkeys(wanted) if s not in found]
    for start in range(0, len(missing), batch_size):
        chunk = missing[start : start + batch_size]
        images = decode_latents(vae, np.stack([latents[s] for s in chunk])).permute(0, 2, 3, 1).numpy()
        for s, image in zip(chunk, images, strict=True):
            found[s] = cache[keys[s]] = to_pil(image)
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return [found[s] for s in wanted]
