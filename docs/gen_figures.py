"""Render the concept pages' figures with the bundled toy model (CPU, about 30 s).

PNG figures (matplotlib) and interactive ones (plotly, ``NAME.html`` fragments that a page includes
with a line ``<!--plotly NAME-->``; ``docs/hooks.py`` inlines them and vendors plotly.js).

The docs build runs this from its hook (``docs/hooks.py``) into ``docs/generated/figures/``; by hand::

    python docs/gen_figures.py docs/generated/figures
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

PROMPT = "a red circle above a blue square"
SEED = 0
STEPS = 10


#: The words of the toy world whose token embeddings the text-encoder figure compares.
WORLD_WORDS = ["red", "green", "blue", "yellow", "circle", "square", "triangle", "left", "right", "top"]
#: The timesteps of the forward-process figure.
FORWARD_TS = [0, 200, 400, 600, 800, 999]


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _off(axes: np.ndarray) -> None:
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])


class _Context:
    """The toy pipeline and one guided trace, shared by every figure."""

    def __init__(self) -> None:
        import explainer

        self.pipe = explainer.load_pipeline(device="cpu")
        self.pipe.set_progress_bar_config(disable=True)
        self.trace = explainer.trace(self.pipe, PROMPT, num_inference_steps=STEPS, seed=SEED, progress=False)


# The component figures (text encoder, VAE, forward noising, training) are the package's own views
# (explainer.views.components), the ones the component explorers and the notebooks draw.
def text_encoder(ctx: _Context) -> Figure:
    """Cosine similarity of the toy text encoder's token embeddings for the words of its world."""
    from explainer.views.components import token_similarity_figure, word_similarity

    labels, sim = word_similarity(ctx.pipe.tokenizer, ctx.pipe.text_encoder, WORLD_WORDS)
    return token_similarity_figure(labels, sim, title="cosine similarity of token embeddings")


def vae(ctx: _Context) -> Figure:
    """One image of the world, its VAE round trip, the channels of its latent, and channel 0 zeroed, decoded."""
    from explainer.views.components import decode_latent, edit_latent, vae_figure, vae_roundtrip
    from explainer.views.components._images import sample_image

    vae = ctx.pipe.vae
    result = vae_roundtrip(vae, sample_image(2024))
    edited = decode_latent(vae, edit_latent(result["latent"], channel=0, scale=0.0))
    return vae_figure(result, edited=edited, edit_label="ch 0 zeroed, decoded")


def diffusion_forward(ctx: _Context) -> Figure:
    """One image noised at increasing t with the same ε: its latent (decoded) and its pixels."""
    from explainer.views.components import forward_figure, noise_image
    from explainer.views.components._images import sample_image

    image = sample_image(7)
    return forward_figure([noise_image(ctx.pipe.vae, ctx.pipe.scheduler, image, t, seed=0) for t in FORWARD_TS])


def training(ctx: _Context) -> Figure:
    """The training objective on a batch: image, noisy latent, target v and the shipped UNet's prediction."""
    from explainer.views.components import training_figure, training_objective

    return training_figure(training_objective(ctx.pipe, [50, 400, 700, 999], seed=11))


def unet(ctx: _Context) -> Figure:
    """One UNet call of the trace: its input x_t, its conditional output (channel 0), the guided x̂0."""
    from explainer.views import output_symbol

    tr, pipe = ctx.trace, ctx.pipe
    sym = output_symbol(tr)  # ε or v: what this model outputs
    steps = [0, 3, 6]
    fig, axes = _figure(6.4, 6.2, nrows=3, ncols=3)
    for r, s in enumerate(steps):
        axes[r, 0].imshow(tr.preview(s, kind="xt", method="vae", pipe=pipe))
        out = tr.eps_cond[s, 0].astype(np.float32)
        lim = float(np.abs(out).max())
        axes[r, 1].imshow(out, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[r, 2].imshow(tr.preview(s, kind="x0", method="vae", pipe=pipe))
        axes[r, 0].set_ylabel(f"step {s}, t = {int(tr.timesteps[s])}", fontsize=8)
    titles = ["input x_t (decoded)", f"conditional output {sym}_cond (ch. 0)", f"x̂0 from the guided {sym} (decoded)"]
    for c, title in enumerate(titles):
        axes[0, c].set_title(title, fontsize=8)
    _off(axes)
    return fig


def cross_attention(ctx: _Context) -> Figure:
    """Each word's cross-attention map (all steps, the 8x8 layers), over the final image."""
    from explainer.views.tokens import overlay_image

    tr = ctx.trace
    words = ["red", "circle", "above", "blue", "square"]
    fig, axes = _figure(1.75 * (len(words) + 1), 2.1, ncols=len(words) + 1)
    axes[0, 0].imshow(tr.final_image)
    axes[0, 0].set_title("final image", fontsize=8)
    for ax, word in zip(axes[0, 1:], words):
        ax.imshow(overlay_image(tr, word, base="final", layers="8x8"))
        ax.set_title(f'"{word}"', fontsize=8)
    _off(axes)
    return fig


def diffusion_reverse(ctx: _Context) -> Figure:
    """The sampler's x_t and the model's x0 guess at every step of the trace."""
    tr, pipe = ctx.trace, ctx.pipe
    fig, axes = _figure(1.05 * tr.num_steps, 2.4, nrows=2, ncols=tr.num_steps)
    for s in range(tr.num_steps):
        axes[0, s].imshow(tr.preview(s, kind="xt", method="vae", pipe=pipe))
        axes[1, s].imshow(tr.preview(s, kind="x0", method="vae", pipe=pipe))
        axes[0, s].set_title(f"t={int(tr.timesteps[s])}", fontsize=7)
    axes[0, 0].set_ylabel("x_t", fontsize=8)
    axes[1, 0].set_ylabel("x0 guess", fontsize=8)
    _off(axes)
    return fig


def diffusion_schedule(ctx: _Context) -> Figure:
    from explainer.views import schedule_plot

    return schedule_plot(ctx.trace, step=3, width=5.0, height=2.4)


def guidance_decomposition(ctx: _Context) -> Figure:
    from explainer.views import guidance_decomposition

    return guidance_decomposition(ctx.trace, 0, method="vae", pipe=ctx.pipe)


def guidance_sweep(ctx: _Context) -> Figure:
    from explainer.views import guidance_sweep

    return guidance_sweep(ctx.trace, None, (0.0, 1.0, 3.0, 7.5, 15.0), method="vae", pipe=ctx.pipe)


def schedule_interactive(ctx: _Context):
    """The toy's training schedule (ᾱ, SNR over every t) with the run's 10 steps; hover for σ."""
    from explainer.views import schedule_figure

    return schedule_figure(ctx.trace, train_alphas_cumprod=ctx.pipe.scheduler.alphas_cumprod.numpy())


def trajectory_interactive(ctx: _Context):
    """The latent paths of one prompt from four seeds, in one PCA plane."""
    import explainer
    from explainer.views import trajectory_figure

    runs = [explainer.trace(ctx.pipe, PROMPT, num_inference_steps=STEPS, seed=s, record="none", progress=False)
            for s in range(4)]
    return trajectory_figure(runs, labels=[f"seed {s}" for s in range(4)])


def emergence_interactive(ctx: _Context):
    """Concentration of each word's map over the steps (8x8 layers)."""
    from explainer.views import emergence_figure

    return emergence_figure(ctx.trace, ["red", "circle", "above", "blue", "square"], layers="8x8")


def guidance_sweep_interactive(ctx: _Context):
    """Step 0's x̂0 re-guided at several scales under a slider, with its distance from g = 1."""
    from explainer.views import guidance_sweep_figure

    return guidance_sweep_figure(ctx.trace, 0, (0.0, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0), method="vae", pipe=ctx.pipe)


def token_similarity_interactive(ctx: _Context):
    """Cosine similarity of the toy text encoder's input embeddings, words of its world and two unknown words."""
    from explainer.views import token_similarity_figure
    from explainer.views.components import word_embeddings

    words = ["red", "green", "blue", "yellow", "purple", "circle", "square", "triangle", "star", "left", "right", "top"]
    return token_similarity_figure(word_embeddings(ctx.pipe.tokenizer, ctx.pipe.text_encoder, words), words)


#: file name (without .html) -> the function that makes the plotly figure
INTERACTIVE = {
    "schedule_interactive": schedule_interactive,
    "trajectory_interactive": trajectory_interactive,
    "emergence_interactive": emergence_interactive,
    "guidance_sweep_interactive": guidance_sweep_interactive,
    "token_similarity_interactive": token_similarity_interactive,
}


#: file name (without .png) -> the function that draws it
FIGURES: dict[str, Callable[[_Context], Figure]] = {
    "text_encoder_embeddings": text_encoder,
    "vae_roundtrip": vae,
    "unet_step": unet,
    "cross_attention_words": cross_attention,
    "diffusion_forward": diffusion_forward,
    "diffusion_reverse": diffusion_reverse,
    "diffusion_schedule": diffusion_schedule,
    "guidance_decomposition": guidance_decomposition,
    "guidance_sweep": guidance_sweep,
    "training_objective": training,
}


def render_all(out: str | Path) -> list[Path]:
    """Render every figure into ``out`` as PNG, and the interactive ones as HTML; return the paths written."""
    torch.manual_seed(0)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = _Context()
    written = []
    for name, make in FIGURES.items():
        path = out / f"{name}.png"
        make(ctx).savefig(path, dpi=110, metadata={"Software": None})
        written.append(path)
    from explainer.views import figure_html

    for name, make in INTERACTIVE.items():
        path = out / f"{name}.html"
        path.write_text(figure_html(make(ctx), div_id=name.replace("_", "-")))
        written.append(path)
    return written


if __name__ == "__main__":
    for p in render_all(sys.argv[1] if len(sys.argv) > 1 else "docs/generated/figures"):
        print(p)
