"""The path of the latent over the steps, projected to 2-D with PCA; several traces share one projection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ._common import check_step, new_figure
from .steps import describe

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..tracing import Trace


def project_latents(traces: Sequence[Trace]) -> list[np.ndarray]:
    """PCA of every trace's latents ``x_0 .. x_S`` (unit-variance scaled), fitted on all of them together.

    Returns:
        One ``[S+1, 2]`` float32 array per trace.
    """
    if not traces:
        raise ValueError("traces is empty; give at least one trace.")
    shapes = {tuple(t.latents.shape[1:]) for t in traces}
    if len(shapes) != 1:
        raise ValueError(f"the traces have different latent shapes {sorted(shapes)}; project traces of one model and size.")
    rows = [
        (t.latents.astype(np.float32) * t.input_scale.astype(np.float32)[:, None, None, None]).reshape(len(t.latents), -1)
        for t in traces
    ]
    data = np.concatenate(rows)
    mean = data.mean(axis=0)
    _, _, vt = np.linalg.svd(data - mean, full_matrices=False)
    basis = vt[:2].T if vt.shape[0] >= 2 else np.pad(vt.T, ((0, 0), (0, 2 - vt.shape[0])))
    return [((r - mean) @ basis).astype(np.float32) for r in rows]


def latent_trajectory(
    traces: Trace | Sequence[Trace], step: int | None = None, *, labels: Sequence[str] | None = None
) -> Figure:
    """Latent paths in the plane of their first two principal components, ``step`` highlighted.

    Returns:
        A matplotlib figure with one line per trace.
    """
    traces = [traces] if not isinstance(traces, (list, tuple)) else list(traces)
    if labels is not None and len(labels) != len(traces):
        raise ValueError(f"labels has {len(labels)} entries for {len(traces)} traces.")
    step = check_step(traces[0], step)
    fig, axes = new_figure(3.6, 3.0)
    ax = axes[0, 0]
    for i, (tr, xy) in enumerate(zip(traces, project_latents(traces), strict=True)):
        label = labels[i] if labels is not None else describe(tr).replace("\n", " ")
        (line,) = ax.plot(xy[:, 0], xy[:, 1], marker=".", ms=3, lw=1, label=label)
        ax.plot(xy[-1, 0], xy[-1, 1], marker="s", color=line.get_color(), ms=5)
        if step is not None and step < len(xy):
            ax.plot(xy[step, 0], xy[step, 1], marker="o", ms=9, mfc="none", mec="#222", mew=1.5)
    ax.set_xlabel("PC 1", fontsize=8)
    ax.set_ylabel("PC 2", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6)
    return fig
