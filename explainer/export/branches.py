"""Exports of two runs side by side: a run and its fork (the shared prefix and the fork step marked), a
prompt-to-prompt source and target (the steps with the source's attention marked), or any two traces
of the same length (two seeds, two guidance scales).

:func:`as_lanes` turns what :func:`explainer.export` was given into :class:`Lanes`; every writer takes
``Lanes`` where it takes a trace. Animations stack the two runs' frames (a label strip over each) above
a timeline of the steps; the PNG grid has a row per run and panel; the HTML page has one slider for both.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from .frames import BACKGROUND, MUTED, PAD, TEXT, FrameRenderer, _fit_text, font

if TYPE_CHECKING:
    from ..tracing import Trace

#: Colours of the marks: a fork's shared prefix and fork step; an edit's injected steps.
FORK_RGB = (42, 122, 176)
EDIT_RGB = (138, 79, 191)
AFTER_RGB = (70, 70, 82)
CURRENT_RGB = (240, 160, 48)


def lineage(parent: Trace | None, child: Trace) -> dict[str, Any]:
    """What to mark for ``child`` (a fork or an edit target of ``parent``): ``{"kind", "step", "label"}``.

    ``kind`` is ``"fork"`` (``step``: the fork step; steps before it are the parent's), ``"edit"``
    (``step``: the first step without the source's cross-attention) or ``""`` (neither, or another
    parent's). ``parent=None`` reads the child's own metadata.
    """
    fork, edit = child.metadata.get("fork"), child.metadata.get("edit")
    n = child.num_steps
    if isinstance(fork, dict) and (parent is None or fork.get("parent_uid") == parent.uid):
        k = int(fork["step"])
        shared = f"steps 1\u2013{k} are the parent's" if k else "nothing shared but the starting noise"
        return {"kind": "fork", "step": k, "label": f"fork at step {k + 1}/{n}: {shared}"}
    if isinstance(edit, dict) and (parent is None or edit.get("source_uid") == parent.uid
                                   or edit.get("source_prompt") == parent.prompt):  # fmt: skip
        until = int(edit.get("cross_until_step", 0))
        return {"kind": "edit", "step": until,
                "label": f"prompt-to-prompt {edit.get('mode')}: the source's cross-attention in steps 1\u2013{until}"}  # fmt: skip
    return {"kind": "", "step": -1, "label": ""}


@dataclass(frozen=True)
class Lane:
    """One run of a side-by-side export: its trace, a short name (``"parent"``, ``"fork"``...) and a label."""

    trace: Trace
    name: str
    label: str


@dataclass(frozen=True)
class Lanes:
    """Two runs shown together, one step for both, and what to mark (see :func:`lineage`)."""

    lanes: list[Lane]
    mark: dict[str, Any] = field(default_factory=lambda: {"kind": "", "step": -1, "label": ""})

    @property
    def num_steps(self) -> int:
        return self.lanes[0].trace.num_steps

    @property
    def first(self) -> Trace:
        return self.lanes[0].trace

    def status(self, step: int) -> str:
        """What the mark says at ``step`` (``""`` without a mark)."""
        kind, k = self.mark["kind"], self.mark["step"]
        if kind == "fork":
            return "shared with the parent" if step < k else f"branched (fork at step {k + 1})"
        if kind == "edit":
            return "source attention injected" if step < k else "own attention"
        return ""


def pillow_text(text: str) -> str:
    """``text`` for Pillow's default font, which draws ASCII only (an en dash becomes a hyphen)."""
    return text.replace("\u2013", "-").replace("\u2026", "...")


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_lanes(item: Any, parent: Trace | None = None) -> Lanes | None:
    """Read what :func:`explainer.export` was given as two runs side by side, or ``None`` for one trace.

    Args:
        item: a :class:`Trace` (with ``parent``: a fork of it), an :class:`~explainer.tracing.p2p.EditResult`,
            or a list / tuple of two traces.
        parent: the run ``item`` was forked from.

    Returns:
        The lanes, or ``None`` when ``item`` is one trace without ``parent``.

    Raises:
        TypeError / ValueError: anything else, or two runs of different lengths or sizes.
    """
    from ..tracing import Trace
    from ..tracing.p2p import EditResult

    if isinstance(item, Trace) and parent is None:
        return None
    if parent is not None and not isinstance(parent, Trace):
        raise TypeError(f"parent must be the explainer Trace the fork was made from, not {type(parent).__name__}.")
    if isinstance(item, EditResult):
        if parent is not None:
            raise TypeError("parent= is for a fork; an EditResult holds its source already.")
        a, b = item.source, item.target
        edit = b.metadata.get("edit", {})
        names = ("source", "target")
        labels = (f'source: "{_short(a.prompt)}"', f'target ({edit.get("mode", item.mode)} edit): "{_short(b.prompt)}"')
    elif isinstance(item, Trace):
        a, b = parent, item
        fork = b.metadata.get("fork")
        if not isinstance(fork, dict):
            raise ValueError("parent= is given but the trace is not a fork (no metadata['fork']); export the two "
                             "runs side by side with export([a, b], path).")  # fmt: skip
        if fork.get("parent_uid") != a.uid:
            raise ValueError(f"the trace was forked from the run {fork.get('parent_uid')}, not from parent "
                             f"(uid {a.uid}); pass the trace it was forked from.")  # fmt: skip
        names = ("parent", "fork")
        labels = (f'parent: "{_short(a.prompt)}"', f'fork at step {int(fork["step"]) + 1}: "{_short(b.prompt)}"')
    elif isinstance(item, (list, tuple)):
        if parent is not None:
            raise TypeError("parent= goes with one fork trace, not with a list of traces.")
        if len(item) != 2 or not all(isinstance(t, Trace) for t in item):
            raise TypeError(f"a side-by-side export takes a list of two explainer Traces, got "
                            f"{[type(t).__name__ for t in item]}.")  # fmt: skip
        a, b = item
        mark = lineage(a, b)
        names = ("parent", "fork") if mark["kind"] == "fork" else ("source", "target") if mark["kind"] else ("a", "b")
        labels = tuple(f'{n}: "{_short(t.prompt)}"' for n, t in zip(names, (a, b), strict=True))
    else:
        raise TypeError(f"trace must be an explainer Trace, an EditResult or a list of two Traces, not "
                        f"{type(item).__name__}.")  # fmt: skip
    if a.num_steps != b.num_steps:
        raise ValueError(f"a side-by-side export needs runs of one length: {names[0]} has {a.num_steps} steps, "
                         f"{names[1]} {b.num_steps}.")  # fmt: skip
    if (a.width, a.height) != (b.width, b.height):
        raise ValueError(f"a side-by-side export needs runs of one size: {names[0]} is {a.width}x{a.height}, "
                         f"{names[1]} {b.width}x{b.height}.")  # fmt: skip
    mark = lineage(a, b)
    if a.latent_rgb is not None and b.latent_rgb is not None and a.family == b.family:
        b = copy.copy(b)  # one latent->RGB mapping for both: equal latents get equal preview pixels
        b.latent_rgb = a.latent_rgb
    return Lanes([Lane(a, names[0], labels[0]), Lane(b, names[1], labels[1])], mark)


class LanesRenderer:
    """Frames of two runs: each run's frame (as :class:`FrameRenderer` draws it) under a label strip, and a
    timeline of the steps below (the shared prefix and the fork step, or the injected steps, marked).

    Args:
        lanes: the runs. panels, words, size, captions, resample, pipe: as for :class:`FrameRenderer`.
    """

    def __init__(self, lanes: Lanes, panels: Any = None, words: Any = None, size: int | None = None,
                 captions: bool = True, resample: str = "nearest", pipe: Any = None) -> None:  # fmt: skip
        self.lanes = lanes
        self.renderers = []
        for lane in lanes.lanes:
            try:
                self.renderers.append(FrameRenderer(lane.trace, panels, words, size, captions, resample, pipe=pipe))
            except ValueError as err:
                raise ValueError(f"{lane.name}: {err}") from None
        self.captions = captions
        first = self.renderers[0].layout
        self.font_size = first.font_size
        self.strip = self.font_size + 10 if captions else 6
        self.timeline = self.font_size + 26 if captions else 18
        self.width = max(r.layout.width for r in self.renderers)
        self.height = sum(self.strip + r.layout.height for r in self.renderers) + self.timeline
        self.height += self.height % 2  # H.264 wants even sizes

    def predecode(self, steps: Sequence[int], batch_size: int = 16) -> None:
        """VAE-decode the latent panels of ``steps`` ahead of rendering (with a pipeline)."""
        for renderer in self.renderers:
            renderer.predecode(steps, batch_size)

    def frame(self, step: int) -> Image.Image:
        """The composed frame of ``step``."""
        canvas = Image.new("RGB", (self.width, self.height), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        f = font(self.font_size)
        y = 0
        status = self.lanes.status(step)
        color = FORK_RGB if self.lanes.mark["kind"] == "fork" else EDIT_RGB
        for i, (lane, renderer) in enumerate(zip(self.lanes.lanes, self.renderers, strict=True)):
            if self.captions:
                right = ""
                if i == 1 and status:
                    right = status
                    draw.text((self.width - PAD - draw.textlength(right, font=f), y + 5), right, font=f, fill=color)
                room = self.width - 3 * PAD - (draw.textlength(right, font=f) if right else 0)
                draw.text((PAD, y + 5), _fit_text(draw, pillow_text(lane.label), f, int(room)), font=f, fill=TEXT)
            y += self.strip
            canvas.paste(renderer.frame(step), (0, y))
            y += renderer.layout.height
        self._draw_timeline(draw, f, y, step)
        return canvas

    def _draw_timeline(self, draw: ImageDraw.ImageDraw, f: Any, top: int, step: int) -> None:
        """One cell per step: the shared prefix (or the injected steps) coloured, the current step outlined."""
        n, kind, k = self.lanes.num_steps, self.lanes.mark["kind"], self.lanes.mark["step"]
        color = FORK_RGB if kind == "fork" else EDIT_RGB
        left, right = PAD, self.width - PAD
        cell = (right - left) / n
        bar_top, bar_bottom = top + 5, top + 13
        for s in range(n):
            x0, x1 = round(left + s * cell), round(left + (s + 1) * cell) - 1
            fill = color if kind and s < k else AFTER_RGB
            draw.rectangle((x0, bar_top, max(x0, x1), bar_bottom), fill=fill)
        x0, x1 = round(left + step * cell), round(left + (step + 1) * cell) - 1
        draw.rectangle((x0 - 1, bar_top - 2, max(x0, x1) + 1, bar_bottom + 2), outline=CURRENT_RGB, width=2)
        if kind and 0 <= k < n:
            x = round(left + k * cell)
            draw.line((x, bar_top - 3, x, bar_bottom + 3), fill=TEXT, width=2)
        if self.captions:
            text = pillow_text(self.lanes.mark["label"]) or f"step {step + 1}/{n}"
            draw.text((left, bar_bottom + 4), _fit_text(draw, text, f, right - left), font=f, fill=MUTED)


def grid_steps(lanes: Lanes, chosen: list[int]) -> list[int]:
    """``chosen`` with the fork step (or the first step after an edit's injection) added, in order."""
    k = lanes.mark["step"]
    if lanes.mark["kind"] and 0 <= k < lanes.num_steps and k not in chosen:
        return sorted([*chosen, k])
    return chosen
