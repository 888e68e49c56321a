"""The noise schedule with the current step marked, and two traces side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._common import check_step, image_axes, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..tracing import Trace


def schedule_plot(trace: Trace, step: int | None = None, *, width: float = 4.0, height: float = 2.2) -> Figure:
    """σ (log scale) and ᾱ per step, with ``step`` marked by a vertical line.

    A flow-matching trace (SD3, FLUX) plots its flow σ on a linear scale, titled with the shift used, and
    the ᾱ of the VP process with the same signal-to-noise ratio (flow matching has no ᾱ of its own).
    σ = √((1 − ᾱ)/ᾱ) is the noise's size relative to the signal (infinite where ᾱ = 0, not drawn).
    :func:`explainer.views.schedule_figure` is the interactive version (hover for t, ᾱ, σ, SNR).

    Args:
        trace: the trace.
        step: step to mark, or ``None``.
        width, height: figure size in inches.

    Returns:
        A matplotlib figure; ``fig.axes[0]`` holds σ, ``fig.axes[1]`` (twin) holds ᾱ.

    Shown in ``notebooks/05_denoising.ipynb``.
    """
    step = check_step(trace, step)
    fig, axes = new_figure(width, height)
    ax = axes[0, 0]
    x = np.arange(trace.num_steps)
    sigmas = np.asarray(trace.sigmas, np.float64)
    finite = np.where(np.isfinite(sigmas), sigmas, np.nan)
    flow = trace.schedule_kind == "flow"  # flow sigma in [0, 1]: x_t = (1 - σ) x0 + σ noise
    ax.plot(x, finite, color="#f0a030", label="σ")
    if np.nanmin(finite) > 0 and not flow:
        ax.set_yscale("log")
    if flow:
        info = trace.metadata.get("schedule") or {}
        shifts = [f"{name} {info[name]:.3g}" for name in ("shift", "mu") if isinstance(info.get(name), (int, float))]
        if info.get("use_dynamic_shifting") and "mu" in info:
            shifts = [f"mu {info['mu']:.3g} (dynamic)"]
        ax.set_title("flow matching σ" + (f", {', '.join(shifts)}" if shifts else ""), fontsize=8)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("σ", color="#f0a030", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_xlim(-0.5, trace.num_steps - 0.5)
    twin = ax.twinx()
    twin.plot(x, np.asarray(trace.alphas_cumprod, np.float64), color="#3a8fd8", label="ᾱ")
    twin.set_ylim(-0.02, 1.02)
    twin.set_ylabel("ᾱ (same SNR)" if flow else "ᾱ", color="#3a8fd8", fontsize=8)
    twin.tick_params(labelsize=7)
    if step is not None:
        ax.axvline(step, color="#444", lw=1)
    return fig


def compare_steps(traces: list[Trace], step: int, *, labels: list[str] | None = None, kind: str = "x0") -> Figure:
    """The same step of several traces side by side (linear previews).

    Args:
        traces: two or more traces with the same number of steps.
        step: the step to show in every trace.
        labels: a title per trace (default: prompt, seed and guidance).
        kind: ``"x0"`` or ``"xt"``.

    Returns:
        A matplotlib figure with one image per trace.

    Runs compared at the same step (schedulers): ``notebooks/05_denoising.ipynb``.
    """
    if len(traces) < 2:
        raise ValueError(f"compare_steps needs two or more traces, got {len(traces)}.")
    counts = {t.num_steps for t in traces}
    if len(counts) != 1:
        raise ValueError(f"compare_steps needs traces with the same number of steps, got {sorted(counts)}.")
    if labels is not None and len(labels) != len(traces):
        raise ValueError(f"labels has {len(labels)} entries for {len(traces)} traces.")
    fig, axes = new_figure(2.2 * len(traces), 2.5, ncols=len(traces))
    for i, tr in enumerate(traces):
        title = labels[i] if labels is not None else describe(tr)
        image_axes(axes[0, i], tr.preview(step, kind=kind), title)
    return fig


def describe(trace: Trace) -> str:
    """``'"prompt" seed 0 g 7.5'``, short enough for a figure title."""
    prompt = trace.prompt if len(trace.prompt) <= 28 else trace.prompt[:27] + "…"
    return f'"{prompt}"\nseed {trace.metadata.get("seed")}  g {trace.guidance_scale:g}'
