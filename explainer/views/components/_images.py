"""Image <-> tensor conversions shared by the component views."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image


def as_array(image: Any, *, name: str = "image") -> np.ndarray:
    """``image`` (PIL image, uint8 or [0, 1] float array ``[H, W, 3]``) as float32 ``[H, W, 3]`` in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), np.float32) / 255.0
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name} must be an RGB image [H, W, 3], got an array of shape {arr.shape}.")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def to_tensor(image: np.ndarray, module: torch.nn.Module) -> torch.Tensor:
    """``[H, W, 3]`` in [0, 1] as a ``[1, 3, H, W]`` tensor in [-1, 1] on ``module``'s device and dtype."""
    p = next(module.parameters())
    return torch.from_numpy(image).permute(2, 0, 1)[None].to(p.device, p.dtype) * 2 - 1


def to_image(x: torch.Tensor) -> np.ndarray:
    """A ``[1, 3, H, W]`` tensor in [-1, 1] as ``[H, W, 3]`` float32 in [0, 1]."""
    return ((x[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()


def sample_image(seed: int = 0) -> np.ndarray:
    """A random shapes-world scene's image ``[H, W, 3]`` in [0, 1] (the toy's training data)."""
    from ...toy.world import render, sample_scenes

    return render(sample_scenes(1, seed=seed))[0].permute(1, 2, 0).numpy()  # [H, W, 3]
