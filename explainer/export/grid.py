"""A PNG grid of chosen steps: one column per step, one row per panel, labelled.

With more steps than ``columns`` the grid wraps into several bands, each with its own header row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

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
    trace: Trace,
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
        trace: the trace.
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

    renderer = FrameRenderer(trace, panels, words, size, captions=False, resample=resample, pipe=pipe)
    if not isinstance(captions, bool):
        raise TypeError(f"captions must be True or False, not {type(captions).__name__}.")
    if steps is None and every is None:
        chosen = default_grid_steps(trace.num_steps)
    else:
        chosen = select_steps(trace.num_steps, steps, 1 if every is None else every)
    if columns is None:
        columns = min(len(chosen), 10)
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise ValueError(f"columns={columns!r} must be a whole number >= 1.")
    columns = min(int(columns), len(chosen))
    renderer.predecode(chosen)
    bands = -(-len(chosen) // columns)
    pw, ph = renderer.panel_wh
    f = font(max(11, min(20, round(max(pw, ph) / 12))))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [p.label(trace.guidance_scale) for p in renderer.panels]
    label_width = (max(round(probe.textlength(t, font=f)) for t in labels) + PAD) if captions else 0
    line = f.size + 4 if hasattr(f, "size") else 15
    layout = GridLayout(len(renderer.panels), columns, bands, pw, ph, label_width, 2 * line + 4 if captions else 0)
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for k, step in enumerate(tqdm(chosen, desc="grid", unit="step", disable=not progress, leave=False)):
        band, column = divmod(k, columns)
        for row, panel in enumerate(renderer.panels):
            left, top, right, bottom = layout.cell(band, row, column)
            canvas.paste(renderer.panel_image(panel, step), (left, top))
            if captions and column == 0:
                draw.text((PAD, top + (bottom - top - line) // 2), labels[row], font=f, fill=MUTED)
        if captions:
            left, top, right, _ = layout.cell(band, 0, column)
            t = float(trace.timesteps[step])
            head = f"step {step + 1}/{trace.num_steps}"
            sub = f"t={t:.0f} sigma={format_sigma(trace.sigmas[step])}"
            draw.text((left, top - layout.header_height), _fit_text(draw, head, f, right - left), font=f, fill=TEXT)
            draw.text(
                (left, top - layout.header_height + line), _fit_text(draw, sub, f, right - left), font=f, fill=MUTED
            )
    canvas.save(path, format="PNG", optimize=False)
    return len(chosen)
