"""Editing: where image-to-image starts for a strength, and an inpainting mask brushed on the input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._common import new_figure
from .noising import schedule_curves

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def strength_start(scheduler: Any, num_inference_steps: int, strength: float) -> dict[str, Any]:
    """Where an image-to-image run of ``strength`` starts, as diffusers' img2img pipeline computes it.

    Args:
        scheduler: the pipeline's scheduler (not changed: a copy sets the timesteps).
        num_inference_steps: the full schedule's steps. strength: in (0, 1].

    Returns:
        ``timesteps`` (the full schedule), ``start_step`` (the first step run), ``steps_run``, ``t_start``.
    """
    if not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f"strength={strength!r} is not allowed; use a number in (0, 1].")
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps={num_inference_steps!r} is not allowed; use an integer >= 1.")
    sched = type(scheduler).from_config(scheduler.config)
    sched.set_timesteps(num_inference_steps)
    timesteps = [int(t) for t in sched.timesteps[:: getattr(sched, "order", 1)]]
    run = min(int(num_inference_steps * strength), num_inference_steps)
    if run < 1:
        raise ValueError(f"strength={strength} runs no step of {num_inference_steps}; raise strength or steps.")
    start = num_inference_steps - run
    return {"timesteps": timesteps, "start_step": start, "steps_run": run, "t_start": timesteps[start]}


def strength_figure(scheduler: Any, num_inference_steps: int, strength: float) -> Figure:
    """The sampling schedule's σ over its steps, the steps that ``strength`` skips greyed out and its start marked.

    Args:
        scheduler: the pipeline's scheduler. num_inference_steps: the full schedule's steps. strength: in (0, 1].

    Returns:
        The figure.
    """
    info = strength_start(scheduler, num_inference_steps, strength)
    sigma = schedule_curves(scheduler)["sigma"][info["timesteps"]]  # [steps]
    sigma = np.where(np.isfinite(sigma), sigma, np.nan)
    x = np.arange(len(sigma))
    start = info["start_step"]
    fig, axes = new_figure(4.6, 2.3)
    ax = axes[0, 0]
    ax.plot(x[: start + 1], sigma[: start + 1], color="#bbbbbb", ls="--", lw=1.5, label="skipped")
    ax.plot(x[start:], sigma[start:], color="#f0a030", lw=2, marker="o", ms=3, label="run")
    ax.axvline(start, color="#444", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("σ", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"strength {strength:g}: starts at step {start} of {num_inference_steps} (t = {info['t_start']})", fontsize=8)
    return fig


def mask_from_strokes(points: Sequence[Sequence[float]], height: int, width: int, *, radius: float = 4.0) -> np.ndarray:
    """An inpainting mask from brushed points: 1 (repaint) within ``radius`` pixels of any point.

    Args:
        points: ``[x, y]`` pixel coordinates. height, width: the mask's size. radius: the brush radius in pixels.

    Returns:
        ``[height, width]`` float32 mask in {0, 1}.
    """
    yy, xx = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), bool)
    for point in points:
        if len(point) != 2:
            raise ValueError(f"points must be [x, y] pairs, got {point!r}.")
        px, py = float(point[0]), float(point[1])
        mask |= (xx + 0.5 - px) ** 2 + (yy + 0.5 - py) ** 2 <= radius**2
    return mask.astype(np.float32)
