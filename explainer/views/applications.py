"""Figures for image-to-image, inpainting and outpainting traces.

- :func:`edit_overview`: the input (mask outlined), the noised starting point, the result, and the
  full noise schedule with the steps ``strength`` skips greyed out.
- :func:`strength_schedule`: that schedule plot alone.
- :func:`strength_sweep`: one column per strength: start latent and result, and how much of the input survives.
- :func:`inpaint_progress`: the masked region's x0 forming over the steps, the rest held at the input.
- :func:`blend_view`: for 4-channel inpainting, a step's latent before and after the known region is blended back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..tracing.editing import OUTLINE_RGB, composite_x0, input_preview, latent_image, mask_outline, require_edit
from ._common import check_step, image_axes, new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..tracing import Trace

SKIPPED = "#bbbbbb"
RUN = "#f0a030"


def _outlined(image: Image.Image, mask: np.ndarray | None) -> Image.Image:
    if mask is None:
        return image
    arr = np.array(image.convert("RGB"))
    arr[mask_outline(mask)] = OUTLINE_RGB
    return Image.fromarray(arr)


def _draw_schedule(ax: Axes, trace: Trace) -> None:
    sched = trace.metadata.get("full_schedule") or {}
    start = trace.start_step
    sigmas = np.asarray(sched.get("sigmas", []), np.float64)
    if sigmas.size == 0:  # a text-to-image trace: its own steps are the whole schedule
        sigmas = np.asarray(trace.sigmas, np.float64)
    sigmas = np.where(np.isfinite(sigmas) & (sigmas > 0), sigmas, np.nan)
    x = np.arange(len(sigmas))
    ax.plot(x[: start + 1], sigmas[: start + 1], color=SKIPPED, lw=1.5, ls="--", label="skipped")
    ax.plot(x[start:], sigmas[start:], color=RUN, lw=2, marker="o", ms=2.5, label="run")
    if np.nanmin(sigmas) > 0:
        ax.set_yscale("log")
    if trace.mode != "txt2img":
        ax.axvline(start, color="#444", lw=1)
        t0 = float(trace.timesteps[0]) if trace.num_steps else float("nan")
        ax.set_title(f"strength {trace.strength:g}: starts at step {start} of {len(sigmas)} (t={t0:.0f})", fontsize=8)
    ax.set_xlabel("step of the full schedule", fontsize=8)
    ax.set_ylabel("σ (noise level)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)


def strength_schedule(trace: Trace, *, width: float = 4.0, height: float = 2.4) -> Figure:
    """The full noise schedule (σ per step) with the steps skipped by ``strength`` greyed out.

    Args:
        trace: an image-to-image or inpainting trace (a text-to-image trace shows all steps run).
        width, height: figure size in inches.

    Returns:
        A matplotlib figure; the vertical line marks the first step run, where the noised input enters.
    """
    fig, axes = new_figure(width, height)
    _draw_schedule(axes[0, 0], trace)
    return fig


def edit_overview(trace: Trace, *, method: str = "linear", pipe: Any = None, width: float = 9.0) -> Figure:
    """Input (mask outlined), the noised starting latent, the result, and where ``strength`` enters the schedule.

    Args:
        trace: an image-to-image or inpainting trace.
        method: ``"linear"`` previews or ``"vae"`` decodes (needs ``pipe``) of the starting latent.
        pipe: the pipeline or its VAE, for ``method="vae"``.
        width: figure width in inches.

    Returns:
        A matplotlib figure with four panels.
    """
    require_edit(trace, "edit_overview")
    fig = new_figure(width, width / 4 + 0.6)[0]
    fig.clear()
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
    image_axes(axes[0], input_preview(trace), "input" + (" (mask outlined)" if trace.mask is not None else ""))
    start = latent_image(trace, trace.latents[0].astype(np.float32) * np.float32(trace.input_scale[0]), method, pipe,
                         key=("start",))  # fmt: skip
    image_axes(axes[1], start, f"start: input noised to t={float(trace.timesteps[0]):.0f}")
    final = trace.final_image if trace.final_image is not None else trace.preview(trace.num_steps, kind="xt")
    image_axes(axes[2], _outlined(final, trace.mask), f"result after {trace.num_steps} steps")
    _draw_schedule(axes[3], trace)
    return fig


def strength_sweep(traces: Sequence[Trace], *, method: str = "linear", pipe: Any = None,
                   width_per: float = 1.7) -> Figure:  # fmt: skip
    """One column per trace (sorted by strength): its starting latent and its result.

    Args:
        traces: image-to-image (or inpainting) traces of the same input at different strengths,
            e.g. from :func:`explainer.tracing.editing.trace_strengths`.
        method: ``"linear"`` or ``"vae"`` (needs ``pipe``) for the starting latents.
        pipe: the pipeline or its VAE, for ``method="vae"``.
        width_per: inches per column.

    Returns:
        A matplotlib figure, 2 rows; each column's title gives the strength, the steps run and the
        mean change from the input (percent of the pixel range): how much of the input survives.
    """
    if not traces:
        raise ValueError("strength_sweep needs at least one trace.")
    for tr in traces:
        require_edit(tr, "strength_sweep")
    ordered = sorted(traces, key=lambda t: t.strength)
    fig, axes = new_figure(width_per * len(ordered), 2 * width_per + 0.5, ncols=len(ordered), nrows=2)
    for col, tr in enumerate(ordered):
        start = latent_image(tr, tr.latents[0].astype(np.float32) * np.float32(tr.input_scale[0]), method, pipe,
                             key=("start",))  # fmt: skip
        image_axes(axes[0, col], start, f"strength {tr.strength:g}\n{tr.num_steps} steps, start")
        final = tr.final_image if tr.final_image is not None else tr.preview(tr.num_steps, kind="xt")
        change = np.abs(np.asarray(final, np.float32) - tr.input_image.astype(np.float32)).mean() / 255 * 100
        image_axes(axes[1, col], final, f"result: {change:.1f} % changed")
    return fig


def inpaint_progress(trace: Trace, steps: Sequence[int] | None = None, *, method: str = "linear", pipe: Any = None,
                     columns: int = 6, width_per: float = 1.6) -> Figure:  # fmt: skip
    """The masked region's x0 forming over the steps, with the known region held at the input.

    Args:
        trace: an inpainting trace.
        steps: steps to show (default: ``columns`` evenly spaced, the last included).
        method: ``"linear"`` or ``"vae"`` (needs ``pipe``).
        pipe: the pipeline or its VAE, for ``method="vae"``.
        columns: how many steps when ``steps`` is not given.
        width_per: inches per column.

    Returns:
        A matplotlib figure: one row of composited x0 (mask outlined), then the final image.
    """
    require_edit(trace, "inpaint_progress", inpaint=True)
    if steps is None:
        count = min(columns, trace.num_steps)
        steps = sorted({round(float(v)) for v in np.linspace(0, trace.num_steps - 1, count)})
    steps = [check_step(trace, s) for s in steps]
    fig, axes = new_figure(width_per * (len(steps) + 1), width_per + 0.5, ncols=len(steps) + 1)
    for col, step in enumerate(steps):
        image = latent_image(trace, composite_x0(trace, step), method, pipe, key=("composite_x0", step))
        image_axes(axes[0, col], _outlined(image, trace.mask), f"x0, step {step}")
    if trace.final_image is not None:
        image_axes(axes[0, -1], _outlined(trace.final_image, trace.mask), "final")
    else:
        axes[0, -1].set_axis_off()
    return fig


def blend_view(trace: Trace, step: int, *, method: str = "linear", pipe: Any = None, width: float = 6.0) -> Figure:
    """A step's latent before and after the known region is blended back, and where they differ.

    Args:
        trace: a 4-channel inpainting trace (``inpaint_mode == "blend4"``).
        step: the step.
        method: ``"linear"`` or ``"vae"`` (needs ``pipe``).
        pipe: the pipeline or its VAE, for ``method="vae"``.
        width: figure width in inches.

    Returns:
        A matplotlib figure: before, after (both scaled to unit variance) and ``|after - before|``
        averaged over channels, which is zero inside the mask.
    """
    require_edit(trace, "blend_view", inpaint=True)
    if trace.latents_unblended is None:
        raise ValueError(
            f"blend_view needs a 4-channel inpainting trace (inpaint_mode 'blend4'); this one is "
            f"{trace.metadata.get('inpaint_mode')!r}, whose UNet sees the mask instead of a blend."
        )
    step = check_step(trace, step)
    scale = np.float32(trace.input_scale[step + 1])
    before = trace.latents_unblended[step].astype(np.float32)
    after = trace.latents_blended[step].astype(np.float32)
    fig, axes = new_figure(width, width / 3 + 0.5, ncols=3)
    image_axes(axes[0, 0], latent_image(trace, before * scale, method, pipe, key=("unblended", step)),
               f"step {step}: scheduler output")  # fmt: skip
    image_axes(axes[0, 1], latent_image(trace, after * scale, method, pipe, key=("blended", step)),
               "after blending the input back")  # fmt: skip
    diff = np.abs(after - before).mean(0)  # [h, w]
    axes[0, 2].imshow(diff, cmap="magma", interpolation="nearest")
    axes[0, 2].set_title("|after − before|", fontsize=9)
    axes[0, 2].set_axis_off()
    return fig
