"""Token maps: cross-attention of selected tokens over an image, and how concentrated they get per step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..export.frames import OVERLAY_ALPHA, overlay_heatmap
from ._common import check_step, image_axes, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

    from ..tracing import Trace

BASES = ("x0", "final")


def _as_list(tokens: str | int | Sequence[str | int]) -> list[str | int]:
    items = [tokens] if isinstance(tokens, (str, int, np.integer)) else list(tokens)
    if not items:
        raise ValueError("tokens is empty; pass a word, a token index, or a list of them.")
    return items


def token_heat(
    trace: Trace,
    tokens: str | int | Sequence[str | int],
    step: int | slice | None = None,
    layers: Any = None,
    branch: str = "cond",
) -> np.ndarray:
    """Mean of the tokens' heat maps (:meth:`Trace.heatmap`), scaled to a maximum of 1.

    Returns:
        ``[H, W]`` float32 in [0, 1].
    """
    maps = [trace.heatmap(t, step=step, layers=layers, branch=branch) for t in _as_list(tokens)]
    total = np.mean(maps, axis=0, dtype=np.float32)
    peak = float(total.max())
    return total / peak if peak > 0 else total


def overlay_image(
    trace: Trace,
    tokens: str | int | Sequence[str | int],
    step: int | slice | None = None,
    *,
    base: str = "x0",
    base_step: int | None = None,
    layers: Any = None,
    branch: str = "cond",
    opacity: float = OVERLAY_ALPHA,
) -> Image.Image:
    """The tokens' heat map colour-mapped over the x0 preview (of ``base_step``) or the final image."""
    if base not in BASES:
        raise ValueError(f"base={base!r} is not allowed; use one of {list(BASES)}.")
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity={opacity!r} must be in [0, 1].")
    heat = token_heat(trace, tokens, step, layers, branch)
    if base == "final" and trace.final_image is not None:
        image = trace.final_image.convert("RGB")
    else:
        if base_step is None:
            base_step = step if isinstance(step, (int, np.integer)) else trace.num_steps - 1
        image = trace.preview(int(base_step), kind="x0")
    return overlay_heatmap(image, heat, float(opacity))


def token_overlay(
    trace: Trace,
    tokens: str | int | Sequence[str | int],
    step: int | slice | None = None,
    *,
    base: str = "x0",
    layers: Any = None,
    branch: str = "cond",
    opacity: float = OVERLAY_ALPHA,
) -> Figure:
    """Figure of :func:`overlay_image`: where the tokens attended, over the picture.

    Args:
        trace: the trace.
        tokens: words, token strings or token indices (their maps are averaged).
        step: ``None`` (all steps), a step, or a slice of steps.
        base: ``"x0"`` (the x0 preview of ``step``, or of the last step for a range) or ``"final"``.
        layers, branch: as in :meth:`Trace.heatmap`.
        opacity: overlay opacity in [0, 1].

    Returns:
        A matplotlib figure with one image.

    Word maps and how to read them: ``notebooks/07_cross_attention.ipynb``.
    """
    image = overlay_image(trace, tokens, step, base=base, layers=layers, branch=branch, opacity=opacity)
    fig, axes = new_figure(3.0, 3.2)
    names = ", ".join(str(t) for t in _as_list(tokens))
    where = "all steps" if step is None else f"step {step}" if not isinstance(step, slice) else f"steps {step.start}:{step.stop}"
    image_axes(axes[0, 0], image, f"{names}  ({where})")
    return fig


def method_comparison(
    traces: Sequence[Trace],
    tokens: str | int | Sequence[str | int],
    step: int | slice | None = None,
    *,
    base: str = "x0",
    layers: Any = None,
    opacity: float = OVERLAY_ALPHA,
) -> Figure:
    """The same tokens' maps from traces recorded with different ``record={"method": ...}``, side by side.

    For SD3 and FLUX, trace the same run twice, once with the attention probabilities (the default) and once with
    ConceptAttention-style maps (``record={"method": "concept"}``); the image is the same in both.

    Args:
        traces: the traces, one panel each, titled with the method that made their maps.
        tokens, step, base, layers, opacity: as in :func:`token_overlay`.

    Returns:
        A matplotlib figure with one image per trace.

    The two methods: ``docs/model_families.md`` (FLUX.1, "Two methods").
    """
    if not traces:
        raise ValueError("traces must hold at least one Trace (one panel each).")
    fig, axes = new_figure(3.0 * len(traces), 3.2, ncols=len(traces))
    names = ", ".join(str(t) for t in _as_list(tokens))
    for ax, trace in zip(axes[0], traces):
        method = trace.metadata.get("record", {}).get("method", "probabilities")
        image = overlay_image(trace, tokens, step, base=base, layers=layers, opacity=opacity)
        image_axes(ax, image, f"{names}: {'ConceptAttention' if method == 'concept' else 'attention probabilities'}")
    return fig


def concentration(trace: Trace, token: str | int, layers: Any = None, branch: str = "cond") -> np.ndarray:
    """How concentrated a token's map is at each step: ``1 - entropy / log(pixels)``.

    0 means attention spread evenly over the image; 1 means all of it on one pixel.

    Returns:
        ``[S]`` float32.

    Shown in ``notebooks/07_cross_attention.ipynb``.
    """
    values = np.zeros(trace.num_steps, np.float32)
    for s in range(trace.num_steps):
        heat = trace.heatmap(token, step=s, layers=layers, branch=branch).astype(np.float64)
        total = heat.sum()
        if total <= 0:
            continue
        p = heat[heat > 0] / total
        values[s] = 1.0 - float(-(p * np.log(p)).sum() / np.log(heat.size))
    return values


def emergence_curve(
    trace: Trace,
    tokens: str | int | Sequence[str | int],
    step: int | None = None,
    *,
    negative_tokens: str | int | Sequence[str | int] | None = None,
    layers: Any = None,
    branch: str = "cond",
    width: float = 4.0,
    height: float = 2.2,
) -> Figure:
    """:func:`concentration` of each token over the steps, with ``step`` marked.

    Args:
        trace: the trace.
        tokens: words or token indices of the prompt (of ``branch``).
        step: the step to mark, or ``None``.
        negative_tokens: words or token indices of the negative prompt, drawn dashed beside the prompt's
            (labelled "… (prompt)" and "… (negative)"); needs a trace with guidance.
        layers: as for :meth:`Trace.heatmap` (``None``: all layers).

    Returns:
        A matplotlib figure with one line per token.

    Shown in ``notebooks/07_cross_attention.ipynb``.
    """
    step = check_step(trace, step)
    fig, axes = new_figure(width, height)
    ax = axes[0, 0]
    lines = [(t, branch, "-") for t in _as_list(tokens)]
    if negative_tokens is not None:
        lines += [(t, "uncond", "--") for t in _as_list(negative_tokens)]
    both = negative_tokens is not None
    for token, br, style in lines:
        values = concentration(trace, token, layers, br)  # first: it explains a token the trace does not have
        names = trace.tokens if br == "cond" else trace.negative_tokens
        label = token if isinstance(token, str) else names[int(token)].removesuffix("</w>")
        if both:
            label = f"{label} ({'prompt' if br == 'cond' else 'negative'})"
        ax.plot(np.arange(trace.num_steps), values, label=str(label), linestyle=style)
    ax.set_xlim(-0.5, trace.num_steps - 0.5)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("concentration", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper left")
    if step is not None:
        ax.axvline(step, color="#444", lw=1)
    return fig
