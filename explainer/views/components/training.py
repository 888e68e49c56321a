"""Training: the objective on a real batch at t, and a tiny model trained a few steps at a time on the CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._common import image_axes, new_figure
from ._images import to_image
from .unet import encode_prompt

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _batch(n: int, seed: int, image_size: int) -> tuple[torch.Tensor, list[str]]:
    from ...toy.world import render, sample_scenes

    scenes = sample_scenes(n, seed=seed)
    return render(scenes, image_size) * 2 - 1, [s.caption for s in scenes]  # [N, 3, H, W] in [-1, 1]


def _target(scheduler: Any, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, str]:
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        return scheduler.get_velocity(z0, noise, t), "v"
    if kind == "epsilon":
        return noise, "ε"
    if kind == "sample":
        return z0, "x₀"
    raise ValueError(f"prediction_type={kind!r} is not supported; use epsilon, v_prediction or sample.")


@torch.no_grad()
def training_objective(pipe: Any, t: int | list[int], *, n: int = 4, seed: int = 0) -> dict[str, Any]:
    """The training loss of ``pipe`` on a batch of shapes-world images at timestep ``t``.

    Each image is encoded, noised to t (x_t = √ᾱ x₀ + √(1−ᾱ) ε), and the UNet, given its caption,
    predicts the target its scheduler names (ε, v or x₀); the loss is the mean squared error.

    Args:
        pipe: an SD 1.x/2.x pipeline whose VAE takes the toy's image size (the toy model).
        t: the timestep, ``0..T-1``, or one per image (a list; then the batch has ``len(t)`` images).
        n: the batch size (for one ``t``). seed: the batch's and the noise's seed.

    Returns:
        ``t`` (as given), ``timesteps`` ``[N]``, ``captions``, ``target_name``; ``images``, ``noisy_decoded``
        ``[N, H, W, 3]``; ``target``, ``prediction`` ``[N, C, h, w]``; ``mse`` ``[N]`` and ``loss`` (their mean).
    """
    sched = pipe.scheduler
    T = len(sched.alphas_cumprod)
    ts = list(t) if isinstance(t, (list, tuple)) else [t]
    if not ts or any(not isinstance(x, (int, np.integer)) or not 0 <= x < T for x in ts):
        raise ValueError(f"t={t!r} is not allowed; use an integer timestep in 0..{T - 1}, or a list of them.")
    if len(ts) > 1:
        n = len(ts)
    vae, unet = pipe.vae, pipe.unet
    p = next(unet.parameters())
    size = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    x, captions = _batch(n, seed, size)
    scale = float(vae.config.scaling_factor)
    z0 = vae.encode(x.to(p.device, p.dtype)).latent_dist.mean * scale  # [N, C, h, w]
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed)).to(z0)
    tt = torch.tensor([int(x) for x in ts] * (n if len(ts) == 1 else 1), dtype=torch.long)  # [N]
    zt = sched.add_noise(z0, noise, tt)
    target, name = _target(sched, z0, noise, tt)
    cond = torch.cat([encode_prompt(pipe, c) for c in captions]).to(p.dtype)
    pred = unet(zt, tt.to(p.device), encoder_hidden_states=cond).sample
    mse = ((pred - target).float() ** 2).mean(dim=(1, 2, 3)).cpu().numpy()  # [N]
    decoded = np.stack([to_image(vae.decode(zt[i : i + 1] / scale).sample) for i in range(n)])
    return {
        "t": [int(x) for x in ts] if isinstance(t, (list, tuple)) else int(t), "timesteps": tt.numpy(),
        "captions": captions, "target_name": name,
        "images": ((x.permute(0, 2, 3, 1) + 1) / 2).numpy(), "noisy_decoded": decoded,
        "target": target.float().cpu().numpy(), "prediction": pred.float().cpu().numpy(),
        "mse": mse, "loss": float(mse.mean()),
    }  # fmt: skip


def training_figure(result: dict[str, Any]) -> Figure:
    """Per image of :func:`training_objective`: the image, x_t decoded, the target and the prediction (channel 0).

    Args:
        result: from :func:`training_objective` (or :meth:`TinyTrainer.objective`).

    Returns:
        The figure.
    """
    n = len(result["captions"])
    fig, axes = new_figure(1.65 * n, 6.6, nrows=4, ncols=n)
    name = result["target_name"]
    for i in range(n):
        image_axes(axes[0, i], result["images"][i], result["captions"][i])
        axes[0, i].title.set_fontsize(6)
        image_axes(axes[1, i], result["noisy_decoded"][i], f"x_t, t = {int(result['timesteps'][i])}")
        axes[1, i].title.set_fontsize(7)
        lim = float(np.abs(result["target"][i, 0]).max()) or 1.0
        for r, key, title in ((2, "target", f"target {name} (ch 0)"), (3, "prediction", f"MSE {result['mse'][i]:.3f}")):
            axes[r, i].imshow(result[key][i, 0], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            axes[r, i].set_title(title, fontsize=7)
            axes[r, i].set_axis_off()
    ts = result["t"] if isinstance(result["t"], list) else [result["t"]]
    fig.suptitle(f"training objective at t = {', '.join(map(str, ts))}: loss {result['loss']:.4f}", fontsize=9)
    return fig


class TinyTrainer:
    """A tiny text encoder + UNet (the toy recipe's architecture, smaller) trained from scratch on the
    shapes world, over the toy's frozen VAE, a few steps at a time (seconds on a CPU).

    Args:
        pipe: the toy pipeline (its VAE, tokenizer and scheduler are used; its weights are not changed).
        channels: the tiny UNet's block channels (multiples of 16). width: the text encoder's width.
        batch: images per step. lr: AdamW learning rate. seed: weights, batches and noise.
    """

    def __init__(self, pipe: Any, *, channels: tuple[int, ...] = (32, 32), width: int = 32, batch: int = 4,
                 lr: float = 2e-3, seed: int = 0) -> None:  # fmt: skip
        from ...toy.train import TrainConfig, make_models

        if any(c % 16 for c in channels):
            raise ValueError(f"channels={channels} must all be multiples of 16 (the UNet's group norm).")
        self.pipe, self.batch, self.seed = pipe, batch, seed
        factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.image_size = int(pipe.unet.config.sample_size) * factor
        cfg = TrainConfig(seed=seed, image_size=self.image_size, unet_channels=tuple(channels), text_width=width,
                          text_layers=1, vae_channels=tuple(pipe.vae.config.block_out_channels))  # fmt: skip
        models = make_models(cfg, pipe.tokenizer)
        self.unet, self.text = models["unet"], models["text_encoder"]
        self.params = int(sum(p.numel() for m in (self.unet, self.text) for p in m.parameters()))
        self.opt = torch.optim.AdamW([*self.unet.parameters(), *self.text.parameters()], lr=lr)
        self.losses: list[float] = []  # one per step taken

    def _cond(self, captions: list[str]) -> torch.Tensor:
        tok = self.pipe.tokenizer
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return self.text(ids.input_ids)[0]  # [N, L, width]

    @torch.no_grad()
    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        p = next(vae.parameters())
        return (vae.encode(x.to(p.device, p.dtype)).latent_dist.mean * float(vae.config.scaling_factor)).float().cpu()

    def train(self, steps: int = 5) -> list[float]:
        """Take ``steps`` optimizer steps (new batch, t and noise each).

        Args:
            steps: how many, at least 1.

        Returns:
            The loss of each step taken now (all are in :attr:`losses`).
        """
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps={steps!r} is not allowed; use an integer >= 1.")
        sched = self.pipe.scheduler
        T = len(sched.alphas_cumprod)
        self.unet.train()
        self.text.train()
        new = []
        for _ in range(steps):
            k = len(self.losses)
            x, captions = _batch(self.batch, self.seed * 100_003 + k + 1, self.image_size)
            z0 = self._latents(x)
            gen = torch.Generator().manual_seed(self.seed * 7919 + k)
            noise = torch.randn(z0.shape, generator=gen)
            t = torch.randint(0, T, (self.batch,), generator=gen)
            target, _ = _target(sched, z0, noise, t)
            pred = self.unet(sched.add_noise(z0, noise, t), t, encoder_hidden_states=self._cond(captions)).sample
            loss = torch.nn.functional.mse_loss(pred, target)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.losses.append(float(loss.detach()))
            new.append(self.losses[-1])
        return new

    @torch.no_grad()
    def objective(self, t: int, *, n: int = 4, seed: int = 0) -> dict[str, Any]:
        """:func:`training_objective` of the tiny model (its own UNet and text encoder).

        Args:
            t: the timestep. n: batch size. seed: the batch's and noise's seed.

        Returns:
            As :func:`training_objective`.
        """
        self.unet.eval()
        self.text.eval()
        view = _View(self.pipe, self.unet, self.text)
        return training_objective(view, t, n=n, seed=seed)


class _View:
    """A pipeline stand-in: the toy's VAE, tokenizer and scheduler with another UNet and text encoder."""

    def __init__(self, pipe: Any, unet: Any, text: Any) -> None:
        self.vae, self.tokenizer, self.scheduler = pipe.vae, pipe.tokenizer, pipe.scheduler
        self.unet, self.text_encoder = unet, text


def loss_figure(losses: list[float], *, title: str = "") -> Figure:
    """The loss of each training step.

    Args:
        losses: one per step. title: the figure's title.

    Returns:
        The figure.
    """
    fig, axes = new_figure(4.2, 2.2)
    ax = axes[0, 0]
    ax.plot(range(1, len(losses) + 1), losses, marker="o", ms=2.5, lw=1.2, color="#f0a030")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("training step", fontsize=8)
    ax.set_ylabel("loss (MSE)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title or f"{len(losses)} steps", fontsize=9)
    return fig
