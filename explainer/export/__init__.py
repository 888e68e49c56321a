"""Export a trace as a file that works anywhere: an animation, a PNG grid, or a standalone HTML page.

``export(trace, "run.gif")`` picks the format from the suffix; see :data:`FORMATS` and each writer
for its options. Two runs side by side, one step for both: ``export(branch, path, parent=trace)`` (a
fork, its shared prefix and fork step marked), ``export(edit_result, path)`` (prompt-to-prompt source
and target) or ``export([a, b], path)`` (:mod:`explainer.export.branches`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .animation import save_gif, save_mp4, save_webp
from .branches import Lane, Lanes, as_lanes
from .frames import PANELS, FrameRenderer, Layout, Panel, render_panel, select_steps
from .grid import save_grid
from .html import build_html, save_html

if TYPE_CHECKING:
    from ..tracing import Trace

#: Suffix → writer. Each writer takes ``(trace, path, **options)`` and returns the number of frames/steps.
FORMATS: dict[str, Callable[..., int]] = {
    ".gif": save_gif,
    ".webp": save_webp,
    ".mp4": save_mp4,
    ".png": save_grid,
    ".html": save_html,
    ".htm": save_html,
}


def format_options(suffix: str) -> list[str]:
    """Names of the options the writer for ``suffix`` accepts."""
    writer = _writer(suffix)
    return [n for n, p in inspect.signature(writer).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _writer(suffix: str) -> Callable[..., int]:
    key = suffix.lower()
    if key not in FORMATS:
        shown = repr(suffix) if suffix else "no suffix"
        raise ValueError(f"cannot export to {shown}: choose a file name ending in one of {sorted(set(FORMATS))}.")
    return FORMATS[key]


def export(trace: Trace | Any, path: str | Path, *, parent: Trace | None = None, verbose: bool = True,
           **options: Any) -> Path:  # fmt: skip
    """Write ``trace`` to ``path``, in the format its suffix names.

    Args:
        trace: a :class:`~explainer.Trace`; or two runs side by side, one step for both: a fork (with
            ``parent=``), an :class:`~explainer.tracing.p2p.EditResult` (source and target), or a list of two
            traces of one length. A fork's shared prefix and fork step are marked (an edit's steps with
            the source's attention): on a timeline under each frame, in the grid's headers, on the page's slider.
        path: ``.gif``, ``.webp``, ``.mp4`` (animations, one frame per step), ``.png`` (a labelled grid of
            chosen steps) or ``.html`` (a standalone interactive page). Parent folders are created; a
            folder, or a path under a file, raises ``IsADirectoryError`` / ``NotADirectoryError``.
        parent: the run ``trace`` was forked from (:meth:`Trace.fork`): both are exported.
        verbose: print the path, the frame count and the file size when done.
        **options: the format's options, among ``panels`` (``"xt"``, ``"x0"``, ``"final"``, ``"overlay"``,
            ``"guidance"``...), ``words``, ``size``, ``steps``, ``every``, ``captions``, ``fps``, ``loop``,
            ``hold``, ``quality``; see :func:`format_options` and the writers. ``pipe=`` (the pipeline or
            its VAE) makes every latent panel a full VAE decode (batched, cached) instead of a linear preview.

    Returns:
        The path written.

    Example:
        >>> tr = explainer.trace(pipe, "a yellow triangle above a green circle", num_inference_steps=12)
        >>> explainer.export(tr, "steps.gif", size=192, pipe=pipe)    # x_t and x0, VAE-decoded
        >>> explainer.export(tr, "attention.mp4", panels=["x0", "overlay"], words=["triangle"])
        >>> explainer.export(tr, "grid.png", every=3)
        >>> explainer.export(tr, "run.html")                           # standalone page, no server needed
        >>> branch = tr.fork(4, prompt="a yellow triangle above a red circle", pipe=pipe)
        >>> explainer.export(branch, "fork.gif", parent=tr)            # both runs, the fork step marked

        Every format, with pictures: ``notebooks/12_export.ipynb``.
    """
    from ..tracing import Trace
    from ..tracing.p2p import EditResult

    if not isinstance(trace, (Trace, EditResult, list, tuple)):
        raise TypeError(
            f"trace must be an explainer Trace (from explainer.trace or load_trace), an EditResult or a list of two "
            f"Traces, not {type(trace).__name__}."
        )
    lanes = as_lanes(trace, parent)
    from ..tracing.trace import writable_path

    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, not {type(path).__name__}.")
    path = Path(path)
    if path.is_dir():
        suffix = path.suffix.lower() if path.suffix.lower() in FORMATS else ".gif"
        raise IsADirectoryError(f"path={str(path)!r} is a folder; give a file name inside it, e.g. {path / ('steps' + suffix)}.")
    writer = _writer(path.suffix)
    allowed = format_options(path.suffix)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"option(s) {unknown} do not apply to {path.suffix} export; its options are {allowed}.")
    writable_path(path, "path", "a file name ending in " + ", ".join(sorted(set(FORMATS))))  # parents made here
    count = writer(lanes if lanes is not None else trace, path, **options)
    if verbose:
        what = "steps" if path.suffix.lower() in (".png", ".html", ".htm") else "frames"
        print(f"wrote {path} ({count} {what}, {_human_size(path.stat().st_size)})")
    return path


def _human_size(nbytes: int) -> str:
    if nbytes >= 1e6:
        return f"{nbytes / 1e6:.2f} MB"
    return f"{nbytes / 1e3:.1f} kB"


__all__ = [
    "FORMATS",
    "PANELS",
    "FrameRenderer",
    "Lane",
    "Lanes",
    "Layout",
    "Panel",
    "as_lanes",
    "build_html",
    "export",
    "format_options",
    "render_panel",
    "save_grid",
    "save_gif",
    "save_html",
    "save_mp4",
    "save_webp",
    "select_steps",
]
