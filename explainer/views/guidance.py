"""Classifier-free guidance pictures: the decomposition of one step, and a sweep of scales."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import difference_label, image_axes, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..tracing import Trace

DEFAULT_SWEEP = (1.0, 3.0, 5.0, 7.5, 10.0, 15.0)


def _need_uncond(trace: Trace) -> None:
    if not trace.has_uncond:
        raise ValueError(
            "this trace was recorded without classifier-free guidance "
            f"(guidance_scale={trace.guidance_scale}); trace again with guidance_scale > 1."
        )


def guidance_difference(trace: Trace, step: int) -> np.ndarray:
    """``[h, w]`` float32: |cond − uncond| of the model output at ``step``, over channels (L2).

    The output is ε, v or x̂0 as the trace's ``metadata["prediction_type"]`` says (:func:`output_symbol`).
    """
    _need_uncond(trace)
    step = trace._check_step(step, "x0")
    diff = trace.eps_cond[step].astype(np.float32) - trace.eps_uncond[step].astype(np.float32)
    return np.sqrt((diff**2).sum(axis=0))


def guidance_decomposition(trace: Trace, step: int, *, method: str = "linear", pipe: Any = None) -> Figure:
    """Unconditional, conditional and guided x̂0 of ``step`` side by side, and where the two outputs differ.

    The guided x̂0 extrapolates past the conditional one: it is derived from uncond + g·(cond − uncond).
    The difference panel is titled by what the model outputs (``|ε_cond − ε_uncond|``, ``|v_cond − v_uncond|``).

    Args:
        trace: a trace recorded with classifier-free guidance.
        step: the step.
        method: ``"linear"`` previews or ``"vae"`` decodes (needs ``pipe``).
        pipe: the pipeline or its VAE, for ``method="vae"``.

    Returns:
        A matplotlib figure with four panels.

    Shown in ``notebooks/08_guidance.ipynb``.
    """
    _need_uncond(trace)
    fig, axes = new_figure(8.8, 2.6, ncols=4)
    image_axes(axes[0, 0], trace.what_if(step, 0.0, method=method, pipe=pipe), "x̂0 unconditional")
    image_axes(axes[0, 1], trace.what_if(step, 1.0, method=method, pipe=pipe), "x̂0 conditional")
    guided = trace.preview(step, kind="x0", method=method, pipe=pipe)
    image_axes(axes[0, 2], guided, f"x̂0 guided (g {trace.cfg_scale:g})")
    ax = axes[0, 3]
    shown = ax.imshow(guidance_difference(trace, step), cmap="magma", interpolation="nearest")
    ax.set_title(difference_label(trace), fontsize=9)
    ax.set_axis_off()
    fig.colorbar(shown, ax=ax, shrink=0.8)
    return fig


def guidance_sweep(
    trace: Trace,
    step: int | None = None,
    scales: Sequence[float] = DEFAULT_SWEEP,
    *,
    method: str = "linear",
    pipe: Any = None,
) -> Figure:
    """What-if x0 of one step (default: the last) at several guidance scales, from the recorded ε.

    Args:
        trace: a trace recorded with classifier-free guidance.
        step: the step; ``None`` for the last.
        scales: the guidance scales, one panel each.
        method: ``"linear"`` previews or ``"vae"`` decodes (needs ``pipe``).
        pipe: the pipeline or its VAE, for ``method="vae"``.

    Returns:
        A matplotlib figure with one panel per scale.

    Shown in ``notebooks/08_guidance.ipynb``.
    """
    _need_uncond(trace)
    scales = list(scales)
    if not scales:
        raise ValueError("scales is empty; give at least one guidance scale.")
    step = trace.num_steps - 1 if step is None else step
    fig, axes = new_figure(2.0 * len(scales), 2.3, ncols=len(scales))
    for i, g in enumerate(scales):
        image_axes(axes[0, i], trace.what_if(step, float(g), method=method, pipe=pipe), f"g {float(g):g}")
    return fig
