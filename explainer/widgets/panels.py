"""Kernel-side pieces of the explorer: frame encoding, figures as PNG with per-step marker positions,
token keys, the emergence figure of prompt and negative tokens, the input image of img2img / inpaint
traces, a worker that runs only the newest request of each kind, and cancelling a superseded run."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..tracing import Trace

IMAGE_FORMATS = ("jpeg", "webp", "png")
MIME = {"jpeg": "image/jpeg", "webp": "image/webp", "png": "image/png"}
#: Attention maps go to the browser at most this many pixels on a side (the finest layer is coarser).
MAX_MAP_SIDE = 64
#: Trace modes (``trace.metadata["mode"]``); all but txt2img start from an input image.
MODES = ("txt2img", "img2img", "inpaint")
BRANCH_NAMES = {"cond": "prompt", "uncond": "negative"}


def encode(image: Image.Image, image_format: str = "jpeg", quality: int = 85) -> bytes:
    """``image`` as JPEG, WebP or PNG bytes."""
    buffer = io.BytesIO()
    if image_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    elif image_format == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=2)
    elif image_format == "png":
        image.save(buffer, format="PNG")
    else:
        raise ValueError(f"image_format={image_format!r} is not allowed; use one of {list(IMAGE_FORMATS)}.")
    return buffer.getvalue()


def encode_map(heat: np.ndarray, size: tuple[int, int]) -> bytes:
    """A ``[H, W]`` heat map in [0, 1] as a small grayscale PNG of ``size = (width, height)``."""
    gray = Image.fromarray(np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if gray.size != size:
        gray = gray.resize(size, Image.BOX)
    return encode(gray, "png")


def map_size(trace: Trace) -> tuple[int, int]:
    """Size of the maps sent to the browser: the finest attention grid, at most 64 px a side."""
    sides = [(la.width, la.height) for la in trace.attention_layers]
    w, h = max(sides, key=lambda s: s[0] * s[1]) if sides else (trace.width, trace.height)
    scale = min(1.0, MAX_MAP_SIDE / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def figure_with_markers(fig: Figure, steps: int) -> tuple[bytes, list[float], list[float]]:
    """Render ``fig`` (its first axes has steps on x) to PNG, with where each step falls.

    Returns:
        PNG bytes; the x of each step as a fraction of the image width; ``[top, bottom]`` of the
        axes as fractions of the image height (so the browser can draw the current-step marker).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    width, height = canvas.get_width_height()
    ax = fig.axes[0]
    xs = ax.transData.transform(np.stack([np.arange(steps), np.zeros(steps)], axis=1))[:, 0]
    box = ax.get_window_extent()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    return (
        buffer.getvalue(),
        [float(x / width) for x in xs],
        [float(1.0 - box.y1 / height), float(1.0 - box.y0 / height)],
    )


def emergence_figure(trace: Trace, chosen: dict[str, list[int]], layers: Any = None) -> Figure:
    """Concentration over the steps of the chosen tokens of both prompts, one labelled line each.

    Args:
        trace: the trace. chosen: token indices by branch, e.g. ``{"cond": [2], "uncond": [1]}``.
        layers: as for :meth:`Trace.heatmap` (``None``: all layers).

    Returns:
        A matplotlib figure; prompt tokens are solid lines ("red (prompt)"), negative ones dashed
        ("blurry (negative)").
    """
    from ..views import concentration
    from ..views._common import new_figure

    fig, axes = new_figure(4.0, 2.2)
    ax = axes[0, 0]
    for label, branch, index in emergence_lines(trace, chosen):
        ax.plot(np.arange(trace.num_steps), concentration(trace, index, layers, branch), label=label,
                linestyle="-" if branch == "cond" else "--")  # fmt: skip
    ax.set_xlim(-0.5, trace.num_steps - 0.5)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("concentration", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def emergence_lines(trace: Trace, chosen: dict[str, list[int]]) -> list[tuple[str, str, int]]:
    """``(label, branch, index)`` of each line of :func:`emergence_figure`, prompt tokens first."""
    lines = []
    for branch in ("cond", "uncond"):
        tokens = trace.tokens if branch == "cond" else trace.negative_tokens
        for index in chosen.get(branch, []):
            lines.append((f"{tokens[index].removesuffix('</w>')} ({BRANCH_NAMES[branch]})", branch, index))
    return lines


def trace_mode(trace: Trace) -> str:
    """``trace.metadata["mode"]``: ``"txt2img"`` (the default), ``"img2img"`` or ``"inpaint"``."""
    mode = trace.metadata.get("mode") or "txt2img"
    if mode not in MODES:
        raise ValueError(f"trace.metadata['mode']={mode!r} is not allowed; use one of {list(MODES)}.")
    return mode


def input_picture(trace: Trace) -> Image.Image | None:
    """The trace's input image (img2img / inpaint) at the trace's size, with the inpainting mask's
    outline drawn as in the exports (:func:`explainer.tracing.editing.input_preview`); ``None`` when the
    trace has no input image."""
    from ..tracing.editing import input_preview

    if trace.input_image is None:
        return None
    picture = input_preview(trace)
    size = (trace.width, trace.height)
    return picture if picture.size == size else picture.resize(size, Image.BICUBIC)


class RunSuperseded(Exception):
    """Raised inside a re-run's UNet call once a newer request has replaced it (stops the run early)."""


@contextlib.contextmanager
def stop_when(pipe: Any, superseded: Callable[[], bool]) -> Iterator[None]:
    """While inside, a call of ``pipe.unet`` on this thread raises :class:`RunSuperseded` once
    ``superseded()`` is true, so the diffusion loop stops before its next step.

    Calls from other threads (another explorer sharing the pipeline) are left alone.
    """
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet, "register_forward_pre_hook"):
        yield
        return
    owner = threading.get_ident()

    def check(module: Any, args: Any) -> None:
        if threading.get_ident() == owner and superseded():
            raise RunSuperseded("a newer request superseded this run")

    handle = unet.register_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()


def token_key(branch: str, index: int) -> str:
    """Chip key of a token: ``"cond:3"`` or ``"uncond:1"``."""
    return f"{branch}:{index}"


def parse_token_key(key: str) -> tuple[str, int]:
    """Inverse of :func:`token_key`."""
    branch, _, index = key.partition(":")
    if branch not in ("cond", "uncond") or not index.isdigit():
        raise ValueError(f"token key {key!r} is not 'cond:<index>' or 'uncond:<index>'.")
    return branch, int(index)


class LatestWorker:
    """One background thread that runs, per kind of request, only the newest one submitted.

    A request submitted while an older one of the same kind still waits replaces it, so rapid
    events never build a backlog. Errors go to ``on_error`` as readable messages.
    """

    def __init__(self, on_error: Callable[[BaseException], None]) -> None:
        self._on_error = on_error
        self._pending: dict[str, Callable[[], None]] = {}
        self._cond = threading.Condition()
        self._busy = False
        self._thread: threading.Thread | None = None
        self.submitted = 0
        self.ran = 0

    def submit(self, kind: str, job: Callable[[], None]) -> None:
        """Queue ``job`` as the newest request of ``kind`` (dropping an older one still waiting)."""
        with self._cond:
            self._pending.pop(kind, None)
            self._pending[kind] = job
            self.submitted += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="explainer-widget", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    if not self._cond.wait(timeout=30.0):
                        self._thread = None
                        return
                kind = next(iter(self._pending))
                job = self._pending.pop(kind)
                self._busy = True
            try:
                job()
            except BaseException as err:  # noqa: BLE001 - shown in the widget, never lost in a thread
                self._on_error(err)
            finally:
                with self._cond:
                    self._busy = False
                    self.ran += 1
                    self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Requests waiting (not counting the one running)."""
        with self._cond:
            return len(self._pending)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until nothing runs or waits; ``False`` if ``timeout`` seconds pass first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout=timeout)
