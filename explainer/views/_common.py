"""Helpers shared by the figure functions: a non-interactive figure, step checks, PNG encoding."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..tracing import Trace


def new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1) -> tuple[Figure, np.ndarray]:
    """A figure not registered with pyplot (no global state, no GUI backend), and its axes ``[nrows, ncols]``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def check_step(trace: Trace, step: int | None) -> int | None:
    """``step`` as an index in ``0..S-1`` (negative counts from the end), or ``None``."""
    if step is None:
        return None
    return trace._check_step(step, "x0")


#: The symbol of the denoiser's raw output, per diffusers ``prediction_type`` (``metadata["prediction_type"]``).
OUTPUT_SYMBOLS = {"epsilon": "ε", "v_prediction": "v", "sample": "x̂0", "flow_velocity": "v"}  # flow: velocity noise − x0


def output_symbol(trace: Trace) -> str:
    """The symbol for what ``trace.eps_cond`` / ``eps_uncond`` hold: ``"ε"``, ``"v"`` (v-prediction, or a flow
    model's velocity), ``"x̂0"``, else ``"output"``.

    Figure labels use it, so that a v-prediction model's output is never called ε.
    """
    kind = trace.metadata.get("prediction_type")
    if kind is None:  # older traces carry only the sentence of metadata["model_output"]
        note = str(trace.metadata.get("model_output", ""))
        kind = "v_prediction" if "velocity" in note else "epsilon" if "epsilon" in note else "sample" if "clean" in note else None
    return OUTPUT_SYMBOLS.get(str(kind), "output")


def difference_label(trace: Trace) -> str:
    """``"|ε_cond − ε_uncond|"`` for an ε model, ``"|v_cond − v_uncond|"`` for a v model (see :func:`output_symbol`)."""
    sym = output_symbol(trace)
    return f"|{sym}_cond − {sym}_uncond|"


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of ``fig``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def image_axes(ax, image, title: str) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
