"""Recorded tensors → :class:`Trace`: one move to the CPU at the end, then plain numpy arrays."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from . import previews
from .attention import PromptTokens
from .schedulers import equivalent_abar
from .trace import Trace, json_safe

if TYPE_CHECKING:
    from .recorder import Recorder


def build_trace(rec: Recorder, *, final_image: Any, meta: dict[str, Any], tokens: dict[str, PromptTokens],
                complete: bool, error: str | None, input_image: np.ndarray | None = None) -> Trace:  # fmt: skip
    """Move everything ``rec`` recorded to the CPU once and assemble the Trace (valid for interrupted runs too).

    Args:
        rec: the recorder, detached.
        final_image: the pipeline's output image, or ``None``.
        meta: the trace's metadata so far (completed here).
        tokens: the primary token segment of each branch with text.
        complete: whether the run finished.
        error: why it stopped early, or ``None``.
        input_image: ``[H, W, 3]`` uint8, the image given to an image-to-image or inpainting pipeline.

    Returns:
        The Trace.
    """
    plan, spec = rec.plan, rec.spec
    c, h, w = plan.latent_shape
    n = len(rec.x0)
    np_dtype = np.float16 if spec.dtype == "float16" else np.float32

    def stack(items: list[torch.Tensor], shape: tuple[int, ...]) -> np.ndarray:
        if not items:
            return np.zeros((0, *shape), np_dtype)
        return torch.stack(items).cpu().numpy()

    latents_np = stack(rec.latents[: n + 1], (c, h, w))
    if latents_np.shape[0] != n + 1:  # stopped before the initial latent existed: a NaN view, nothing allocated
        latents_np = np.broadcast_to(np.array(np.nan, np_dtype), (n + 1, c, h, w))
    scalars = np.asarray(rec.scalars, np.float64).reshape(n, 5)
    sigmas = scalars[:, 1]
    attention: dict[str, np.ndarray] = {}
    for branch in plan.attention_branches:
        t = plan.tokens[branch]
        if spec.attention == "per_step":
            attention[f"{branch}/steps"] = stack(rec.attn[branch].get(0, []), (t, h, w)).astype(np.float16)
        elif spec.attention != "none":
            for group, layers in plan.groups.items():
                per_layer = [rec.attn[branch].get(la.index, [])[:n] for la in layers]
                shape = (len(layers), *((layers[0].heads,) if spec.attention == "per_head" else ()), t,
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
        rgb = previews.choose_latent_rgb(rec.pipe.vae.config, final_latent, final_image)
    elif n:
        rgb = previews.preset_latent_rgb(rec.pipe.vae.config)
    cond, uncond = tokens["cond"], tokens.get("uncond")
    meta["x0_source"] = rec.x0_source
    meta["batch_order"] = rec.batch_order
    meta["num_steps_recorded"] = n
    if rec.conditioning:
        meta["conditioning"] = rec.conditioning

    def host(tensor: torch.Tensor | None, dtype: Any = None) -> np.ndarray | None:
        return None if tensor is None else tensor.cpu().numpy().astype(dtype or np_dtype, copy=False)

    edits: dict[str, Any] = {}
    if plan.mode != "txt2img":
        started = len(rec.latents) > 0
        edits = dict(
            input_image=input_image,
            image_latent=host(rec.image_latent),
            start_latent=latents_np[0].copy() if started else None,
        )
        if plan.mode == "inpaint":
            edits.update(mask=host(rec.mask, np.float32), mask_latent=host(rec.mask_latent, np.float32))
        if rec.blend:
            edits.update(
                latents_unblended=stack(rec.unblended[:n], (c, h, w)),
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
        alphas_cumprod=equivalent_abar(sigmas, plan.schedule_kind),  # flow: the same-SNR VP abar (schedulers.py)
        x0_coef_sample=scalars[:, 2].copy(),
        x0_coef_model=scalars[:, 3].copy(),
        input_scale=np.append(scalars[:, 4], rec.next_scale if n else plan.initial_scale),
        latents=latents_np,
        x0=stack(rec.x0, (c, h, w)),
        eps_cond=stack(rec.eps["cond"], (c, h, w)),
        eps_uncond=stack(rec.eps["uncond"], (c, h, w)) if plan.cfg else None,
        final_image=final_image,
        attention=attention,
        attention_layers=list(plan.layers) if spec.attention in ("per_layer", "per_head") else [],
        attention_mode=spec.attention,
        latent_rgb=rgb,
        metadata=json_safe(meta),
        complete=complete,
        error=error,
        **edits,
    )


@torch.no_grad()
def encode_mean(pipe: Any, image: Image.Image, height: int, width: int) -> torch.Tensor:
    """``[C, h, w]`` the VAE's mean encoding of ``image``, scaled (no generator used: the run is over)."""
    x = pipe.image_processor.preprocess(image, height=height, width=width)
    x = x.to(pipe._execution_device, pipe.vae.dtype)
    return pipe.vae.encode(x).latent_dist.mode()[0] * pipe.vae.config.scaling_factor


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Versions of Python and the packages a trace depends on (kept in its metadata)."""
    found = {"python": platform.python_version()}
    for dist in ("sd-explainer", "torch", "diffusers", "transformers", "numpy", "safetensors"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found
