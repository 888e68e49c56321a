"""The VAE: an image's round trip through the latent space, its channels, and decoding an edited latent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._common import image_axes, new_figure
from ._images import as_array, to_image, to_tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def compression_ratio(vae: Any, height: int, width: int) -> dict[str, Any]:
    """How much smaller the latent is than the image, from the VAE's config.

    Args:
        vae: an ``AutoencoderKL`` (``pipe.vae``). height, width: the image size in pixels.

    Returns:
        ``factor`` (pixels per latent cell along a side), ``latent_shape`` ``[C, h, w]``, ``pixels``
        (``3 * H * W`` numbers), ``latent_numbers`` and ``ratio`` (pixels / latent numbers).
    """
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if height % factor or width % factor:
        raise ValueError(f"height={height}, width={width} must be multiples of the VAE's factor {factor}.")
    shape = [int(vae.config.latent_channels), height // factor, width // factor]
    pixels = 3 * height * width
    numbers = shape[0] * shape[1] * shape[2]
    return {"factor": factor, "latent_shape": shape, "pixels": pixels, "latent_numbers": numbers, "ratio": pixels / numbers}


@torch.no_grad()
def vae_roundtrip(vae: Any, image: Any) -> dict[str, Any]:
    """Encode ``image`` (posterior mean, scaled by the VAE's ``scaling_factor``) and decode it back.

    Args:
        vae: an ``AutoencoderKL``. image: PIL image or array ``[H, W, 3]`` (uint8 or [0, 1] float).

    Returns:
        ``image`` ``[H, W, 3]`` and ``decoded`` ``[H, W, 3]`` in [0, 1], ``latent`` ``[C, h, w]`` (scaled, as
        the UNet sees it), ``error`` (mean absolute pixel error of the round trip) and the
        :func:`compression_ratio` entries.
    """
    arr = as_array(image)
    scale = float(vae.config.scaling_factor)
    latent = vae.encode(to_tensor(arr, vae)).latent_dist.mean * scale  # [1, C, h, w]
    decoded = to_image(vae.decode(latent / scale).sample)  # [H, W, 3]
    return {
        "image": arr,
        "decoded": decoded,
        "latent": latent[0].float().cpu().numpy(),
        "error": float(np.abs(decoded - arr).mean()),
        **compression_ratio(vae, arr.shape[0], arr.shape[1]),
    }


def edit_latent(latent: np.ndarray, *, channel: int | None = None, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """A copy of ``latent`` ``[C, h, w]`` with one channel (or all, ``channel=None``) scaled and shifted.

    Args:
        latent: ``[C, h, w]``. channel: the channel to edit, ``0..C-1``, or ``None`` for all.
        scale: multiplies the channel (0 zeroes it). shift: then added.

    Returns:
        The edited ``[C, h, w]`` latent.
    """
    out = np.array(latent, np.float32, copy=True)
    if channel is not None and not 0 <= channel < out.shape[0]:
        raise ValueError(f"channel={channel} is out of range; the latent has channels 0..{out.shape[0] - 1}.")
    index = slice(None) if channel is None else channel
    out[index] = out[index] * scale + shift
    return out


@torch.no_grad()
def decode_latent(vae: Any, latent: np.ndarray) -> np.ndarray:
    """Decode a scaled latent ``[C, h, w]`` (as :func:`vae_roundtrip` returns it) to ``[H, W, 3]`` in [0, 1].

    Args:
        vae: an ``AutoencoderKL``. latent: ``[C, h, w]``.

    Returns:
        The decoded image.
    """
    p = next(vae.parameters())
    z = torch.from_numpy(np.asarray(latent, np.float32))[None].to(p.device, p.dtype)  # [1, C, h, w]
    return to_image(vae.decode(z / float(vae.config.scaling_factor)).sample)


def vae_figure(result: dict[str, Any], *, edited: np.ndarray | None = None, edit_label: str = "edited latent, decoded") -> Figure:
    """The image, its round trip, each latent channel and (optionally) an edited latent's decode.

    Args:
        result: from :func:`vae_roundtrip`. edited: a decoded image ``[H, W, 3]`` to show last.
        edit_label: its title.

    Returns:
        The figure.
    """
    latent = result["latent"]  # [C, h, w]
    channels = latent.shape[0]
    ncols = 2 + channels + (edited is not None)
    fig, axes = new_figure(1.6 * ncols, 2.0, ncols=ncols)
    h, w = result["image"].shape[:2]
    image_axes(axes[0, 0], result["image"], f"image {h}x{w}x3")
    image_axes(axes[0, 1], result["decoded"], f"round trip, err {result['error']:.3f}")
    lim = float(np.abs(latent).max()) or 1.0
    for c in range(channels):
        ax = axes[0, 2 + c]
        ax.imshow(latent[c], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(f"latent ch {c} ({latent.shape[1]}x{latent.shape[2]})", fontsize=8)
        ax.set_axis_off()
    if edited is not None:
        image_axes(axes[0, -1], edited, edit_label)
        axes[0, -1].title.set_fontsize(8)
    fig.suptitle(f"{result['pixels']} numbers -> {result['latent_numbers']}: {result['ratio']:.0f}x smaller "
                 f"(factor {result['factor']} per side)", fontsize=9)  # fmt: skip
    return fig
