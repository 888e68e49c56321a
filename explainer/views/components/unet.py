"""The UNet: its architecture read from the model's own config (and modules), and per-block feature norms."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ...tracing.families import family_for
from .._common import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ...tracing import Trace


def _params(module: Any) -> int | None:
    return None if module is None else int(sum(p.numel() for p in module.parameters()))


def unet_architecture(unet: Any) -> dict[str, Any]:
    """The blocks of a ``UNet2DConditionModel`` from its config, with parameter counts from its modules.

    Args:
        unet: ``pipe.unet``.

    Returns:
        ``blocks``: a list (data order: down blocks, mid block, up blocks) of dicts with ``name``
        (``"down_blocks.0"``...), ``type``, ``part`` (``"down"``, ``"mid"``, ``"up"``), ``in_channels``,
        ``out_channels``, ``resolution`` (``[h, w]`` of its input), ``cross_attention`` (bool),
        ``resample`` (``"down"``, ``"up"`` or ``None``), ``skips_out`` (skip tensors a down block sends) /
        ``skips_in`` (an up block takes), ``params``; and ``in_channels``, ``sample_size``,
        ``time_embed_dim``, ``cross_attention_dim``, ``layers_per_block``, ``params`` (total),
        ``params_time`` (timestep embedding), ``params_io`` (conv_in, conv_norm_out, conv_out).
    """
    cfg = unet.config
    chans = list(cfg.block_out_channels)
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    layers = cfg.layers_per_block
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers] * len(chans)
    n = len(chans)
    blocks: list[dict[str, Any]] = []
    prev = chans[0]
    for i, kind in enumerate(cfg.down_block_types):
        last = i == n - 1
        blocks.append({
            "name": f"down_blocks.{i}", "type": kind, "part": "down", "in_channels": prev, "out_channels": chans[i],
            "resolution": [h >> i, w >> i], "cross_attention": "CrossAttn" in kind, "resample": None if last else "down",
            "skips_out": layers[i] + (0 if last else 1), "skips_in": 0, "params": _params(unet.down_blocks[i]),
        })  # fmt: skip
        prev = chans[i]
    mid_type = cfg.mid_block_type or "none"
    blocks.append({
        "name": "mid_block", "type": mid_type, "part": "mid", "in_channels": chans[-1], "out_channels": chans[-1],
        "resolution": [h >> (n - 1), w >> (n - 1)], "cross_attention": "CrossAttn" in mid_type, "resample": None,
        "skips_out": 0, "skips_in": 0, "params": _params(getattr(unet, "mid_block", None)),
    })  # fmt: skip
    rev = list(reversed(chans))
    rev_layers = list(reversed(layers))
    prev = rev[0]
    for i, kind in enumerate(cfg.up_block_types):
        level = n - 1 - i
        blocks.append({
            "name": f"up_blocks.{i}", "type": kind, "part": "up", "in_channels": prev, "out_channels": rev[i],
            "resolution": [h >> level, w >> level], "cross_attention": "CrossAttn" in kind,
            "resample": "up" if i < n - 1 else None, "skips_out": 0, "skips_in": rev_layers[i] + 1,
            "params": _params(unet.up_blocks[i]),
        })  # fmt: skip
        prev = rev[i]
    io = sum(_params(m) or 0 for m in (unet.conv_in, getattr(unet, "conv_norm_out", None), unet.conv_out) if m is not None)
    time = (_params(unet.time_embedding) or 0) + (_params(getattr(unet, "add_embedding", None)) or 0)
    return {
        "blocks": blocks,
        "in_channels": int(cfg.in_channels),
        "out_channels": int(cfg.out_channels),
        "sample_size": [h, w],
        "time_embed_dim": int(unet.time_embedding.linear_2.out_features),
        "cross_attention_dim": cfg.cross_attention_dim,
        "layers_per_block": layers,
        "params": _params(unet),
        "params_time": time,
        "params_io": io,
    }


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def unet_diagram(arch: dict[str, Any], *, highlight: str | None = None) -> Figure:
    """A U-shaped diagram of :func:`unet_architecture`: down blocks left (top to bottom), the mid block
    at the bottom, up blocks right; skip connections across; where the timestep embedding (every
    ResNet) and the text's cross-attention (the CrossAttn blocks) enter.

    Args:
        arch: from :func:`unet_architecture`. highlight: a block name to draw highlighted.

    Returns:
        The figure.
    """
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    blocks = arch["blocks"]
    downs = [b for b in blocks if b["part"] == "down"]
    ups = [b for b in blocks if b["part"] == "up"]
    mid = next(b for b in blocks if b["part"] == "mid")
    n = len(downs)
    fig, axes = new_figure(8.4, 1.5 + 1.05 * (n + 1))
    ax = axes[0, 0]
    ax.set_xlim(0, 10)
    ax.set_ylim(-(n + 1) - 0.2, 1.4)
    ax.set_axis_off()

    def box(x: float, y: float, b: dict[str, Any], width: float = 3.0) -> None:
        attn = b["cross_attention"]
        face = "#fde3b8" if attn else "#dfe7f3"
        edge = "#d04040" if b["name"] == highlight else "#555"
        ax.add_patch(FancyBboxPatch((x - width / 2, y - 0.36), width, 0.72, boxstyle="round,pad=0.02",
                                    fc=face, ec=edge, lw=2.2 if b["name"] == highlight else 1))  # fmt: skip
        res = "x".join(map(str, b["resolution"]))
        ax.text(x, y + 0.13, f"{b['name']}: {b['type']}", ha="center", va="center", fontsize=7, weight="bold")
        extra = " + cross-attn" if attn else ""
        ax.text(x, y - 0.16, f"{b['in_channels']}→{b['out_channels']} ch @ {res}{extra}, {_count(b['params'])}",
                ha="center", va="center", fontsize=6.5)  # fmt: skip

    def arrow(a: tuple[float, float], b: tuple[float, float], **kw: Any) -> None:
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=8, lw=kw.pop("lw", 1), **kw))

    h, w = arch["sample_size"]
    ax.text(1.8, 1.0, f"x_t: {arch['in_channels']} ch @ {h}x{w}\nconv_in", ha="center", fontsize=7)
    ax.text(8.2, 1.0, f"model output: {arch['out_channels']} ch\nconv_out", ha="center", fontsize=7)
    ax.text(5.0, 1.15, f"timestep t → sinusoidal → MLP ({arch['time_embed_dim']}-d, {_count(arch['params_time'])})\n"
            "added in every ResNet", ha="center", fontsize=7, color="#2060a0")  # fmt: skip
    ax.text(5.0, 0.55, f"text embeddings ({arch['cross_attention_dim']}-d) → keys/values of every cross-attn (orange)",
            ha="center", fontsize=7, color="#b06000")  # fmt: skip
    for i, b in enumerate(downs):
        box(1.8, -i, b)
        if i:
            arrow((1.8, -i + 0.64), (1.8, -i + 0.38))
    arrow((1.8, 0.9), (1.8, 0.38))
    box(5.0, -n, mid, width=3.4)
    arrow((1.8, -(n - 1) - 0.38), (3.3, -n + 0.1))
    for i, b in enumerate(ups):
        y = -(n - 1 - i)
        box(8.2, y, b)
        if i:
            arrow((8.2, y - 0.64), (8.2, y - 0.38))
        arrow((3.3, y), (6.7, y), ls="--", color="#888")
        ax.text(5.0, y + 0.06, f"skips: {b['skips_in']} tensors", ha="center", fontsize=6, color="#666")
    arrow((6.7, -n + 0.1), (8.2, -(n - 1) - 0.38))
    arrow((8.2, 0.38), (8.2, 0.9))
    ax.set_title(f"UNet from its config: {_count(arch['params'])} parameters, layers per block "
                 f"{arch['layers_per_block']}", fontsize=9)  # fmt: skip
    return fig


def encode_prompt(pipe: Any, prompt: str) -> torch.Tensor:
    """The text encoder's last hidden states ``[1, L, D]`` for ``prompt`` (padded to the tokenizer's max)."""
    tok = pipe.tokenizer
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    return pipe.text_encoder(ids.input_ids.to(pipe.text_encoder.device))[0]


@torch.no_grad()
def block_feature_norms(pipe: Any, trace: Trace, step: int) -> list[dict[str, Any]]:
    """Re-run the UNet's conditional call of one trace step and measure each block's output.

    Args:
        pipe: the SD 1.x/2.x or SDXL pipeline the trace came from (SDXL: the pooled embedding and
            ``add_time_ids`` are the ones the trace recorded). trace: the trace. step: ``0..S-1``.

    Returns:
        One dict per block (data order): ``name``, ``shape`` ``[C, h, w]`` of its output, ``rms`` (root
        mean square over the output) and ``map`` ``[h, w]`` (RMS over channels).
    """
    family = family_for(pipe)
    unet = family.denoiser(pipe)
    step = trace._check_step(step, "x0")
    p = next(unet.parameters())
    condition = family.prompt_conditioning(pipe, trace.metadata, device=p.device, dtype=p.dtype)
    x = torch.from_numpy(trace.latent(step, "xt"))[None].to(p.device, p.dtype)  # [1, C, h, w], the UNet's input
    t = torch.tensor([float(trace.timesteps[step])], device=p.device)
    names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))] + ["mid_block"]
    names += [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]
    modules = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in zip(names, modules):
        def hook(_m: Any, _i: Any, out: Any, name: str = name) -> None:
            outputs[name] = (out[0] if isinstance(out, tuple) else out).detach()

        handles.append(module.register_forward_hook(hook))
    try:
        unet(x, t, **condition)
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for name in names:
        out = outputs[name][0].float()  # [C, h, w]
        rows.append({"name": name, "shape": list(out.shape), "rms": float(out.pow(2).mean().sqrt()),
                     "map": out.pow(2).mean(0).sqrt().cpu().numpy()})  # fmt: skip
    return rows


def feature_norms_figure(rows: list[dict[str, Any]], *, title: str = "") -> Figure:
    """Bars of each block's output RMS and its ``[h, w]`` RMS map.

    Args:
        rows: from :func:`block_feature_norms`. title: the figure's title.

    Returns:
        The figure.
    """
    n = len(rows)
    fig = new_figure(1.0 * n + 1.0, 3.4)[0]
    fig.clear()
    grid = fig.add_gridspec(2, n, height_ratios=[1.4, 1])
    bar = fig.add_subplot(grid[0, :])
    bar.bar(range(n), [r["rms"] for r in rows], color=["#6a8cc7" if "down" in r["name"] else "#c78c6a" if "up" in r["name"] else "#888" for r in rows])
    bar.set_xticks(range(n), [r["name"].replace("_blocks", "") for r in rows], fontsize=7)
    bar.set_ylabel("output RMS", fontsize=8)
    bar.tick_params(labelsize=7)
    bar.set_title(title or "feature norms per block", fontsize=9)
    for i, r in enumerate(rows):
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(r["map"], cmap="magma", interpolation="nearest")
        ax.set_title("x".join(map(str, r["shape"][1:])), fontsize=7)
        ax.set_axis_off()
    return fig
