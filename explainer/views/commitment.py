"""The commitment curve: fork a run at several steps with a new prompt; how much of the result follows it?

"The layout is decided in the first steps", measured: a fork at step 0 is a fresh run of the new
prompt; a fork late in the run can only touch up details. The score of each fork's final image comes
from a function ``score(image, prompt) -> [0, 1]``; for the toy model the default is its checker
(the fraction of the prompt's objects found with the right colour in the right place).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import image_axes, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..tracing import Trace


def toy_score(image: Any, prompt: str) -> float:
    """Fraction of the prompt's objects the toy checker finds with the right colour in the right place.

    Args:
        image: the image (PIL or ``[H, W, 3]`` uint8).
        prompt: a caption of the shapes world's grammar.

    Returns:
        A number in [0, 1].
    """
    from ..toy.checker import check_image

    checks = check_image(np.asarray(image), prompt)
    return float(np.mean([c.colour and c.position for c in checks]))


def default_steps(num_steps: int, count: int = 8) -> list[int]:
    """``count`` fork steps spread over ``0..num_steps-1`` (fewer if the run is short)."""
    return sorted({int(round(v)) for v in np.linspace(0, num_steps - 1, min(count, num_steps))})


def commitment_scores(
    trace: Trace,
    new_prompt: str,
    *,
    steps: Sequence[int] | None = None,
    pipe: Any = None,
    score: Callable[[Any, str], float] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fork ``trace`` at each of ``steps`` with ``new_prompt`` and score each branch's final image.

    Args:
        trace: a complete text-to-image trace.
        new_prompt: the prompt the forks continue with.
        steps: fork steps (default: 8 spread over the run).
        pipe: the pipeline (``None`` loads the trace's model).
        score: ``score(image, prompt) -> float in [0, 1]``; default :func:`toy_score` (toy captions only).
        progress: show each fork's progress bar.

    Returns:
        ``{"steps": [...], "new": [...], "old": [...], "commitment_step": int | None, "images": [...]}``:
        per fork step the score against the new and the old prompt, and the first fork step from which no
        later fork follows the new prompt fully (``None`` if the last one still does).
    """
    from ..toy.world import parse_caption

    if score is None:
        for text in (new_prompt, trace.prompt):
            try:
                parse_caption(text)
            except ValueError as err:
                raise ValueError(f"the default score is the toy checker, which cannot read {text!r}; pass score=. "
                                 f"({err})") from None  # fmt: skip
        score = toy_score
    steps = default_steps(trace.num_steps) if steps is None else [int(s) for s in steps]
    if pipe is None:
        from ..models import load_pipeline

        pipe = load_pipeline(trace.metadata["model"]["name_or_path"])
    new, old, images = [], [], []
    for k in steps:
        branch = trace.fork(k, prompt=new_prompt, pipe=pipe, progress=progress)
        images.append(branch.final_image)
        new.append(float(score(branch.final_image, new_prompt)))
        old.append(float(score(branch.final_image, trace.prompt)))
    committed = None
    for i in range(len(steps)):
        if all(v < 1.0 for v in new[i:]):
            committed = steps[i]
            break
    return {"steps": steps, "new": new, "old": old, "commitment_step": committed, "images": images}


def commitment_curve(
    trace: Trace,
    new_prompt: str,
    *,
    steps: Sequence[int] | None = None,
    pipe: Any = None,
    score: Callable[[Any, str], float] | None = None,
    scores: dict[str, Any] | None = None,
    width: float = 7.0,
    height: float = 3.6,
) -> Figure:
    """How much of the final image follows ``new_prompt`` when the run is forked at each step.

    Args:
        trace, new_prompt, steps, pipe, score: as for :func:`commitment_scores`.
        scores: its result, to draw without running the forks again.
        width, height: figure size in inches.

    Returns:
        A figure: the branches' final images on top, the scores against the fork step below, the
        commitment step marked.

    Shown in ``notebooks/11_change_one_word.ipynb``.
    """
    data = scores if scores is not None else commitment_scores(trace, new_prompt, steps=steps, pipe=pipe, score=score)
    n = len(data["steps"])
    fig = new_figure(width, height)[0]
    fig.clear()
    grid = fig.add_gridspec(2, n, height_ratios=[1, 1.3])
    for i, (k, image) in enumerate(zip(data["steps"], data["images"])):
        image_axes(fig.add_subplot(grid[0, i]), image, f"fork at {k}")
    ax = fig.add_subplot(grid[1, :])
    ax.plot(data["steps"], data["new"], "o-", color="#2a9d4b", label=f"follows {new_prompt!r}")
    ax.plot(data["steps"], data["old"], "s--", color="#c0392b", label=f"follows {trace.prompt!r}")
    if data["commitment_step"] is not None:
        ax.axvline(data["commitment_step"], color="#444", lw=1)
        ax.annotate("committed", (data["commitment_step"], 0.5), fontsize=8, xytext=(4, 0), textcoords="offset points")
    ax.set_xlabel("fork step (new prompt from this step on)", fontsize=8)
    ax.set_ylabel("score of the final image", fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.5, trace.num_steps - 0.5)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="center right")
    return fig


def branches(parent: Trace, child: Trace, *, labels: Sequence[str] | None = None, width: float = 5.0) -> Figure:
    """Two runs' final images side by side: a parent and its fork, or a prompt-to-prompt source and target.

    Args:
        parent, child: the two traces (complete).
        labels: a title per image (default: each prompt, and the fork step or the edit mode).
        width: figure width in inches.

    Returns:
        A matplotlib figure with the two final images.
    """
    for name, tr in (("parent", parent), ("child", child)):
        if tr.final_image is None:
            raise ValueError(f"{name} has no final image (an interrupted trace); branches() shows finished runs.")
    if labels is None:
        lineage, edit = child.metadata.get("fork"), child.metadata.get("edit")
        note = (f"fork at step {lineage['step']}" if lineage else f"{edit['mode']} edit" if edit else "second run")
        labels = [f'"{parent.prompt}"', f'{note}\n"{child.prompt}"']
    if len(labels) != 2:
        raise ValueError(f"labels has {len(labels)} entries; branches() shows 2 images.")
    fig, axes = new_figure(width, width / 2 + 0.5, ncols=2)
    image_axes(axes[0, 0], parent.final_image, labels[0])
    image_axes(axes[0, 1], child.final_image, labels[1])
    return fig
