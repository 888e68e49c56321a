"""A PNG grid of chosen steps: one column per step, one row per panel, labelled.

With more steps than ``columns`` the grid wraps into several bands, each with its own header row. Given
two runs (:class:`~explainer.export.branches.Lanes`), each panel has a row per run, the fork step (or an
edit's last injected step) is among the columns, and a line before it crosses the bands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from .branches import EDIT_RGB, FORK_RGB, Lanes, grid_steps, pillow_text
from .frames import BACKGROUND, MUTED, PAD, TEXT, FrameRenderer, _fit_text, font, format_sigma, select_steps

if TYPE_CHECKING:
    from ..tracing import Trace

#: Steps shown by default: this many, evenly spaced, first and last included.
DEFAULT_GRID_STEPS = 8


def default_grid_steps(num_steps: int, count: int = DEFAULT_GRID_STEPS) -> list[int]:
    """``count`` evenly spaced steps from the first to the last (all steps if there are fewer)."""
    if num_steps <= count:
        return list(range(num_steps))
    return sorted({round(v) for v in np.linspace(0, num_steps - 1, count)})


@dataclass(frozen=True)
class GridLayout:
    """Geometry of a grid.

    Attributes:
        rows, columns: panels per column and steps per band.
        bands: number of bands the steps wrap into.
        panel_width, panel_height: each cell.
        label_width: the row-label column on the left (0 without captions).
        header_height: the step header above each band (0 without captions).
    """

    rows: int
    columns: int
    bands: int
    panel_width: int
    panel_height: int
    label_width: int
    header_height: int

    @property
    def band_height(self) -> int:
        return self.header_height + self.rows * (self.panel_height + PAD)

    @property
    def width(self) -> int:
        return PAD + self.label_width + self.columns * (self.panel_width + PAD)

    @property
    def height(self) -> int:
        return PAD + self.bands * self.band_height

    def cell(self, band: int, row: int, column: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of one cell."""
        left = PAD + self.label_width + column * (self.panel_width + PAD)
        top = PAD + band * self.band_height + self.header_height + row * (self.panel_height + PAD)
        return left, top, left + self.panel_width, top + self.panel_height


def save_grid(
    trace: Trace | Lanes,
    path: str | Path,
    *,
    panels: str | Sequence[str] | None = None,
    words: str | Sequence[str] | None = None,
    size: int | None = None,
    steps: Sequence[int] | None = None,
    every: int | None = None,
    columns: int | None = None,
    captions: bool = True,
    resample: str = "nearest",
    progress: bool = False,
    pipe: Any = None,
) -> int:
    """Write a PNG grid: a column per chosen step, a row per panel, with step / timestep / sigma headers.

    Args:
        trace: the trace, or two runs side by side (:class:`~explainer.export.branches.Lanes`): a row per run
            and panel, the fork step (or an edit's last injected step) always a column and marked.
        path: the ``.png`` file to write.
        panels, words, size, captions, resample: what each cell shows (see :class:`FrameRenderer`).
        steps: step indices to show; default 8 evenly spaced steps (or every ``every``-th step).
        every: show every k-th step (the last included) instead of the default choice.
        columns: steps per band before wrapping (default: all chosen steps, at most 10).
        progress: show a tqdm bar while rendering.
        pipe: a pipeline (or its VAE): cells show VAE decodes instead of linear previews.

    Returns:
        The number of steps shown.
    """
    from tqdm.auto import tqdm

    lanes = trace if isinstance(trace, Lanes) else None
    traces = [lane.trace for lane in lanes.lanes] if lanes else [trace]
    renderers = []
    for tr in traces:
        try:
            renderers.append(FrameRenderer(tr, panels, words, size, captions=False, resample=resample, pipe=pipe))
        except ValueError as err:
            raise ValueError(f"{lanes.lanes[len(renderers)].name}: {err}" if lanes else str(err)) from None
    trace = traces[0]  # the headers' timesteps and sigmas
    if not isinstance(captions, bool):
        raise TypeError(f"captions must be True or False, not {type(captions).__name__}.")
    if steps is None and every is None:
        chosen = default_grid_steps(trace.num_steps)
        chosen = grid_steps(lanes, chosen) if lanes else chosen
    else:
        chosen = select_steps(trace.num_steps, steps, 1 if every is None else every)
    if columns is None:
        columns = min(len(chosen), 10)
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise ValueError(f"columns={columns!r} must be a whole number >= 1.")
    columns = min(int(columns), len(chosen))
    for renderer in renderers:
        renderer.predecode(chosen)
    # one row per (run, panel): [(renderer, panel, label)]
    rows = [(r, p, (f"{lanes.lanes[i].name}: " if lanes else "") + p.label(r.trace.guidance_scale))
            for i, r in enumerate(renderers) for p in r.panels]  # fmt: skip
    bands = -(-len(chosen) // columns)
    pw, ph = renderers[0].panel_wh
    f = font(max(11, min(20, round(max(pw, ph) / 12))))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = (max(round(probe.textlength(t, font=f)) for _, _, t in rows) + PAD) if captions else 0
    line = f.size + 4 if hasattr(f, "size") else 15
    title = (len(lanes.lanes) + (1 if lanes.mark["label"] else 0)) * line + PAD if lanes and captions else 0
    layout = GridLayout(len(rows), columns, bands, pw, ph, label_width, 2 * line + 4 if captions else 0)
    canvas = Image.new("RGB", (layout.width, layout.height + title), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    mark = lanes.mark if lanes else {"kind": "", "step": -1}
    color = FORK_RGB if mark["kind"] == "fork" else EDIT_RGB
    if title:
        texts = [lane.label for lane in lanes.lanes] + ([lanes.mark["label"]] if lanes.mark["label"] else [])
        for i, text in enumerate(texts):
            fill = color if i == len(lanes.lanes) else TEXT
            draw.text((PAD, PAD + i * line), _fit_text(draw, pillow_text(text), f, layout.width - 2 * PAD), font=f, fill=fill)
    for k, step in enumerate(tqdm(chosen, desc="grid", unit="step", disable=not progress, leave=False)):
        band, column = divmod(k, columns)
        for row, (renderer, panel, label) in enumerate(rows):
            left, top, right, bottom = layout.cell(band, row, column)
            canvas.paste(renderer.panel_image(panel, step), (left, top + title))
            if captions and column == 0:
                draw.text((PAD, title + top + (bottom - top - line) // 2), label, font=f, fill=MUTED)
        left, top, right, _ = layout.cell(band, 0, column)
        top += title
        if mark["kind"] and step == mark["step"]:  # a line before the fork step, down the band
            bottom = layout.cell(band, len(rows) - 1, column)[3] + title
            draw.line((left - PAD // 2, top - layout.header_height, left - PAD // 2, bottom), fill=color, width=3)
        if captions:
            t = float(trace.timesteps[step])
            head = f"step {step + 1}/{trace.num_steps}"
            sub = f"t={t:.0f} sigma={format_sigma(trace.sigmas[step])}"
            if mark["kind"] and 0 <= mark["step"]:
                sub = ("shared" if mark["kind"] == "fork" else "injected") if step < mark["step"] else (
                    "fork" if mark["kind"] == "fork" and step == mark["step"] else sub)  # fmt: skip
            draw.text((left, top - layout.header_height), _fit_text(draw, head, f, right - left), font=f, fill=TEXT)
            fill = color if mark["kind"] and (step <= mark["step"]) else MUTED
            draw.text((left, top - layout.header_height + line), _fit_text(draw, sub, f, right - left), font=f, fill=fill)
    canvas.save(path, format="PNG", optimize=False)
    return len(chosen)
