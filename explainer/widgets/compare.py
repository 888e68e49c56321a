"""``compare()``: two traces side by side (two prompts, seeds or guidance values, a run and its fork), one
step for both; :func:`link_steps` is what keeps two explorers on one step (also the explorer's branch pane)."""

from __future__ import annotations

from typing import Any

import ipywidgets
import traitlets

from ..tracing import Trace
from ..tracing.previews import _vae_of
from ..views import latent_trajectory
from ..views._common import figure_png
from .explore import Explorer, default_pipeline, readable


def _as_trace(item: str | Trace, pipe: Any, kwargs: dict[str, Any]) -> Trace:
    if isinstance(item, Trace):
        return item
    if not isinstance(item, str):
        raise TypeError(f"compare takes prompts (str) or explainer.Trace objects, not {type(item).__name__}.")
    from ..tracing import trace as run_trace

    return run_trace(pipe if pipe is not None else default_pipeline(), item, **{"progress": False, **kwargs})


def link_steps(left: Explorer, right: Explorer) -> tuple[Any, Any]:
    """Keep two explorers on one step: in the browser with no kernel round trip, and in the kernel.

    Returns:
        The two links (each has ``unlink()``).
    """
    return ipywidgets.jslink((left, "step"), (right, "step")), traitlets.link((left, "step"), (right, "step"))


def compare(
    a: str | Trace,
    b: str | Trace,
    *,
    pipe: Any = None,
    a_kwargs: dict[str, Any] | None = None,
    b_kwargs: dict[str, Any] | None = None,
    **trace_kwargs: Any,
) -> ipywidgets.VBox:
    """Two explorers side by side whose steps stay in sync, and their latent trajectories (PCA).

    Args:
        a, b: prompts or traces (the same number of steps); when ``b`` is a fork (or an edit) of ``a``, the
            fork step is marked on both sliders and schedules.
        pipe: the pipeline for prompts (default: the toy model), VAE decodes and re-runs.
        a_kwargs, b_kwargs: arguments for one side only (e.g. ``{"seed": 1}`` or ``{"guidance_scale": 3}``).
        **trace_kwargs: arguments for both sides.

    Returns:
        A VBox; ``.explorers`` holds the two :class:`Explorer` widgets.

    Example:
        >>> import explainer
        >>> box = explainer.compare("a red circle", "a red circle", num_inference_steps=6, b_kwargs={"seed": 1})
        >>> left, right = box.explorers
        >>> left.step = 4  # moving one side's slider moves the other
        >>> right.step
        4
    """
    try:
        if pipe is not None:
            _vae_of(pipe)  # refuse a model name or anything else that is not a pipeline or a VAE
        ta = _as_trace(a, pipe, {**trace_kwargs, **(a_kwargs or {})})
        tb = _as_trace(b, pipe, {**trace_kwargs, **(b_kwargs or {})})
        if ta.num_steps != tb.num_steps:
            raise ValueError(f"compare needs the same number of steps on both sides, got {ta.num_steps} and {tb.num_steps}.")
        if ta.latents.shape[1:] != tb.latents.shape[1:]:
            raise ValueError(
                f"compare needs traces of one size and latent layout: a is {ta.width}x{ta.height} (latent "
                f"{'x'.join(map(str, ta.latents.shape[1:]))}), b is {tb.width}x{tb.height} (latent "
                f"{'x'.join(map(str, tb.latents.shape[1:]))}); trace both with the same model, height and width."
            )
    except (TypeError, ValueError, FileNotFoundError, RuntimeError) as err:
        box = ipywidgets.VBox([Explorer(error=readable(err))])
        box.explorers = []
        return box
    left, right = Explorer(ta, pipe=pipe), Explorer(tb, pipe=pipe)
    links = link_steps(left, right)
    if left.mark_kind == "" and right.mark_kind:  # b is a fork or an edit of a: mark it on a's schedule too
        left.mark_lineage(tb)
    trajectory = ipywidgets.Image(value=figure_png(latent_trajectory([ta, tb], left.step)), format="png")

    def redraw(change: dict[str, Any]) -> None:
        trajectory.value = figure_png(latent_trajectory([ta, tb], change["new"]))

    left.observe(redraw, "step")
    box = ipywidgets.VBox([ipywidgets.HBox([left, right]), trajectory])
    box.explorers = [left, right]
    box.links = links
    box.trajectory = trajectory
    return box
