"""The explorer's "branch here": fork the shown run at a step, or edit its prompt with prompt-to-prompt.

Kernel-side pieces only: checking the control's settings, running the fork or the edit through the
public API (:meth:`Trace.fork`, :func:`explainer.edit`), the labels, and the marks on the schedule
plot. The explorer shows the result as a second :class:`~explainer.widgets.Explorer` whose step is
linked to its own (as :func:`~explainer.widgets.compare` links two).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..export.branches import lineage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..tracing import Trace

#: What "branch here" can do: a fork (new prompt / guidance / seed from this step on) or a
#: prompt-to-prompt edit in one of its modes.
BRANCH_MODES = ("fork", "replace", "refine", "reweight")
FORK_COLOR = "#2a7ab0"
EDIT_COLOR = "#8a4fbf"
__all__ = ["BRANCH_MODES", "branch_hint", "branch_key", "lineage", "mark_schedule", "parse_weights", "run_branch"]


def parse_weights(text: str) -> dict[str, float]:
    """``"red=2, blue=0.5"`` → ``{"red": 2.0, "blue": 0.5}`` (the reweight box of the control).

    Raises:
        ValueError: an entry that is not ``WORD=FACTOR`` with a factor >= 0.
    """
    if not isinstance(text, str):
        raise TypeError(f"weights must be text like 'red=2', not {type(text).__name__}.")
    weights: dict[str, float] = {}
    for item in (part.strip() for part in text.replace(";", ",").split(",")):
        if not item:
            continue
        word, sep, value = item.partition("=")
        try:
            factor = float(value)
        except ValueError:
            factor = float("nan")
        if not sep or not word.strip() or not factor >= 0:
            raise ValueError(f"weights entry {item!r} is not WORD=FACTOR with a factor >= 0 (e.g. 'red=2').")
        weights[word.strip()] = factor
    return weights


def branch_hint(trace: Trace | None, has_pipe: bool) -> str:
    """Why "branch here" is unavailable for ``trace`` (``""`` when it is available)."""
    if trace is None:
        return "no trace shown"
    if not has_pipe:
        return ("branching runs the model again: give the explorer its pipeline, "
                "explainer.explore(trace, pipe=explainer.load_pipeline(...))")  # fmt: skip
    if trace.mode != "txt2img":
        return f"branching works on text-to-image traces; this one is {trace.mode}"
    if not trace.complete:
        return "branching needs a complete trace; this run was interrupted"
    return ""


def branch_key(parent: Trace, mode: str, step: int, prompt: str, guidance: float | None, seed: int | None,
               weights: dict[str, float]) -> tuple:  # fmt: skip
    """Cache key of one branch of ``parent``."""
    if mode != "fork":  # an edit does not depend on the step, the guidance or the seed
        step, guidance, seed = -1, None, None
    return (parent.uid, mode, int(step), prompt, None if guidance is None else round(float(guidance), 4), seed,
            tuple(sorted(weights.items())))  # fmt: skip


def run_branch(
    parent: Trace,
    pipe: Any,
    *,
    mode: str,
    step: int,
    prompt: str,
    guidance_scale: float | None = None,
    seed: int | None = None,
    weights: dict[str, float] | None = None,
) -> tuple[Trace, Any]:
    """Fork ``parent`` at ``step``, or edit it with prompt-to-prompt.

    Args:
        parent: the shown (text-to-image, complete) trace.
        pipe: its pipeline.
        mode: one of :data:`BRANCH_MODES`.
        step: the fork step (forks only).
        prompt: the branch's prompt (the edit's target prompt).
        guidance_scale, seed: new settings from ``step`` on (forks only; ``None`` keeps the parent's).
        weights: word -> factor (``reweight`` edits).

    Returns:
        ``(branch trace, EditResult or None)``.
    """
    if mode not in BRANCH_MODES:
        raise ValueError(f"branch mode={mode!r} is not allowed; use one of {list(BRANCH_MODES)}.")
    if mode == "fork":
        child = parent.fork(step, prompt=prompt, guidance_scale=guidance_scale, seed=seed, pipe=pipe, progress=False)
        result = None
    else:
        from ..tracing import edit

        result = edit(parent, parent.prompt, prompt, mode=mode, weights=weights or None, pipe=pipe, progress=False)
        child = result.target
    if parent.latent_rgb is not None:  # the parent's latent->RGB mapping: shared steps get the same previews
        child.latent_rgb = parent.latent_rgb
    return child, result


def mark_schedule(fig: Figure, mark: dict[str, Any]) -> None:
    """Draw a fork step (a line, the shared prefix shaded) or an edit's injected steps (shaded) on a
    figure whose first axes has the steps on x (the explorer's schedule plot)."""
    if not mark.get("kind") or mark.get("step", -1) < 0:
        return
    ax, k = fig.axes[0], int(mark["step"])
    color = FORK_COLOR if mark["kind"] == "fork" else EDIT_COLOR
    if k > 0:
        ax.axvspan(-0.5, k - 0.5, color=color, alpha=0.12, lw=0)
    ax.axvline(k - 0.5, color=color, lw=1.4)
    text = f"fork at step {k + 1}" if mark["kind"] == "fork" else f"source attention to step {k}"
    ax.annotate(text, xy=(k - 0.5, 0), xycoords=("data", "axes fraction"), xytext=(3, 3),
                textcoords="offset points", ha="left", va="bottom", fontsize=7, color=color)  # fmt: skip
