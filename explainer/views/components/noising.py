"""Forward noising: x_t = √ᾱ_t · x_0 + √(1−ᾱ_t) · ε, in latent and pixel space, and the schedule's ᾱ, σ, SNR.

σ_t = √((1−ᾱ_t)/ᾱ_t) is the noise level in the k-diffusion convention (x_t / √ᾱ_t = x_0 + σ_t ε) and
SNR_t = ᾱ_t / (1−ᾱ_t) = 1/σ_t².
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._common import image_axes, new_figure
from ._images import as_array, to_image, to_tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Named training schedules to compare (DDPMScheduler configs); ``"pipeline"`` is the pipeline's own.
SCHEDULES: dict[str, dict[str, Any]] = {
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "scaled_linear_zero_snr": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True},
    "linear": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
}


def named_schedule(name: str, *, base: Any = None) -> Any:
    """A scheduler holding the training schedule ``name``.

    Args:
        name: ``"pipeline"`` (``base`` itself) or a key of :data:`SCHEDULES`.
        base: the pipeline's scheduler (its ``num_train_timesteps`` is kept).

    Returns:
        A scheduler with ``alphas_cumprod``.
    """
    if name == "pipeline":
        if base is None:
            raise ValueError("schedule='pipeline' needs the pipeline's scheduler (base=pipe.scheduler).")
        return base
    if name not in SCHEDULES:
        raise ValueError(f"schedule={name!r} is not known; use 'pipeline' or one of {sorted(SCHEDULES)}.")
    from diffusers import DDPMScheduler

    steps = int(base.config.num_train_timesteps) if base is not None else 1000
    return DDPMScheduler(num_train_timesteps=steps, **SCHEDULES[name])


def schedule_curves(scheduler: Any) -> dict[str, np.ndarray]:
    """ᾱ_t, σ_t and SNR_t of a scheduler's training schedule, for every t.

    Args:
        scheduler: a diffusers scheduler with ``alphas_cumprod`` (DDPM, DDIM, Euler...).

    Returns:
        ``t``, ``alpha_bar``, ``sigma`` = √((1−ᾱ)/ᾱ) (inf where ᾱ = 0) and ``snr`` = ᾱ/(1−ᾱ), each ``[T]``.
    """
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod; use a DDPM-family scheduler.")
    abar = abar.double().cpu().numpy()  # [T]
    with np.errstate(divide="ignore"):
        sigma = np.sqrt((1 - abar) / abar)
        snr = abar / (1 - abar)
    return {"t": np.arange(len(abar)), "alpha_bar": abar, "sigma": sigma, "snr": snr}


@torch.no_grad()
def noise_image(vae: Any, scheduler: Any, image: Any, t: int, *, seed: int = 0) -> dict[str, Any]:
    """Noise an image to timestep ``t`` in latent space (then decode) and in pixel space, with one ε each.

    Args:
        vae: ``pipe.vae``. scheduler: a scheduler with ``add_noise`` and ``alphas_cumprod``.
        image: PIL image or array ``[H, W, 3]``. t: the timestep, ``0..T-1``. seed: the noise's seed.

    Returns:
        ``t``, ``alpha_bar``, ``sigma``, ``snr``; ``latent`` and ``noisy_latent`` ``[C, h, w]``;
        ``latent_decoded`` (the noisy latent decoded) and ``pixel_noisy`` ``[H, W, 3]`` in [0, 1].
    """
    T = len(scheduler.alphas_cumprod)
    if not isinstance(t, (int, np.integer)) or not 0 <= t < T:
        raise ValueError(f"t={t!r} is not allowed; use an integer timestep in 0..{T - 1}.")
    arr = as_array(image)
    scale = float(vae.config.scaling_factor)
    x = to_tensor(arr, vae)  # [1, 3, H, W] in [-1, 1]
    z0 = vae.encode(x).latent_dist.mean * scale  # [1, C, h, w]
    gen = torch.Generator().manual_seed(seed)
    tt = torch.tensor([int(t)])
    zt = scheduler.add_noise(z0, torch.randn(z0.shape, generator=gen).to(z0), tt)  # [1, C, h, w]
    xt = scheduler.add_noise(x, torch.randn(x.shape, generator=gen).to(x), tt)  # [1, 3, H, W]
    curves = schedule_curves(scheduler)
    return {
        "t": int(t),
        "alpha_bar": float(curves["alpha_bar"][t]),
        "sigma": float(curves["sigma"][t]),
        "snr": float(curves["snr"][t]),
        "latent": z0[0].float().cpu().numpy(),
        "noisy_latent": zt[0].float().cpu().numpy(),
        "latent_decoded": to_image(vae.decode(zt / scale).sample),
        "pixel_noisy": to_image(xt),
        "image": arr,
    }


def _fmt(v: float) -> str:
    return "∞" if not np.isfinite(v) else f"{v:.3g}"


def noising_figure(result: dict[str, Any]) -> Figure:
    """The image, its latent noised at t (channel 0 and decoded) and the image noised in pixel space.

    Args:
        result: from :func:`noise_image`.

    Returns:
        The figure.
    """
    fig, axes = new_figure(6.8, 2.1, ncols=4)
    image_axes(axes[0, 0], result["image"], "x₀ (image)")
    lat = result["noisy_latent"][0]  # [h, w]
    lim = float(np.abs(lat).max()) or 1.0
    axes[0, 1].imshow(lat, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    axes[0, 1].set_title("latent x_t, channel 0", fontsize=8)
    axes[0, 1].set_axis_off()
    image_axes(axes[0, 2], result["latent_decoded"], "latent x_t, decoded")
    image_axes(axes[0, 3], result["pixel_noisy"], "pixel-space x_t")
    fig.suptitle(f"t = {result['t']}: ᾱ = {result['alpha_bar']:.3f}, σ = {_fmt(result['sigma'])}, "
                 f"SNR = {_fmt(result['snr'])}", fontsize=9)  # fmt: skip
    return fig


def forward_figure(results: list[dict[str, Any]]) -> Figure:
    """The forward process over t: one image noised at several timesteps with the same ε, in latent space
    (decoded) on the top row and in pixel space below.

    Args:
        results: :func:`noise_image` outputs, one per timestep (left to right).

    Returns:
        The figure.
    """
    if not results:
        raise ValueError("results is empty; pass noise_image(...) outputs, one per timestep.")
    fig, axes = new_figure(1.5 * len(results), 3.4, ncols=len(results), nrows=2)
    for c, r in enumerate(results):
        image_axes(axes[0, c], r["latent_decoded"], f"t = {r['t']}, ᾱ = {r['alpha_bar']:.2f}")
        axes[0, c].title.set_fontsize(7)
        image_axes(axes[1, c], r["pixel_noisy"], f"σ = {_fmt(r['sigma'])}")
        axes[1, c].title.set_fontsize(7)
    axes[0, 0].set_axis_on()
    axes[1, 0].set_axis_on()
    for ax, label in ((axes[0, 0], "latent x_t,\ndecoded"), (axes[1, 0], "pixel-space x_t")):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, fontsize=8)
    return fig


def schedule_figure(curves: dict[str, dict[str, np.ndarray]], *, t: int | None = None) -> Figure:
    """ᾱ_t, σ_t and SNR_t of one or more schedules over t, with ``t`` marked.

    Args:
        curves: schedule name -> :func:`schedule_curves` output. t: a timestep to mark, or ``None``.

    Returns:
        The figure (three panels: ᾱ linear, σ and SNR on log scales).
    """
    fig, axes = new_figure(7.2, 2.2, ncols=3)
    for name, c in curves.items():
        axes[0, 0].plot(c["t"], c["alpha_bar"], label=name, lw=1.5)
        for ax, key in ((axes[0, 1], "sigma"), (axes[0, 2], "snr")):
            y = np.where(np.isfinite(c[key]) & (c[key] > 0), c[key], np.nan)
            ax.plot(c["t"], y, lw=1.5)
    for ax, title in zip(axes[0], ("ᾱ_t", "σ_t = √((1−ᾱ)/ᾱ)", "SNR_t = ᾱ/(1−ᾱ)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("t", fontsize=8)
        ax.tick_params(labelsize=7)
        if t is not None:
            ax.axvline(t, color="#f0a030", lw=1.5)
    axes[0, 1].set_yscale("log")
    axes[0, 2].set_yscale("log")
    axes[0, 0].legend(fontsize=7, frameon=False)
    return fig
