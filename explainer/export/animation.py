"""Step-by-step animations: GIF and animated WebP (Pillow), MP4 (H.264 through imageio-ffmpeg).

One frame per chosen step (see :mod:`explainer.export.frames` for panels and captions); given
:class:`~explainer.export.branches.Lanes`, two runs' frames stacked over a timeline of the steps. GIF and
WebP hold the last frame for ``hold`` extra seconds through its duration; MP4, which has one frame
rate, repeats the last frame instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .branches import Lanes, LanesRenderer
from .frames import FrameRenderer, render_frames, select_steps

if TYPE_CHECKING:
    from ..tracing import Trace

#: GIFs are built on one palette of this many colours, taken from a sample of all frames.
GIF_COLORS = 256
_PALETTE_SAMPLE_SIDE = 160


def check_timing(fps: float, hold: float) -> tuple[float, float]:
    """Validate ``fps`` (> 0, <= 60) and ``hold`` (seconds >= 0) and return them as floats."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)):
        raise TypeError(f"fps must be a number, not {type(fps).__name__}.")
    if not (math.isfinite(fps) and 0 < fps <= 60):
        raise ValueError(f"fps={fps!r} must be a number in (0, 60].")
    if isinstance(hold, bool) or not isinstance(hold, (int, float, np.integer, np.floating)):
        raise TypeError(f"hold must be a number of seconds, not {type(hold).__name__}.")
    if not (math.isfinite(hold) and 0 <= hold <= 60):
        raise ValueError(f"hold={hold!r} must be a number of seconds in [0, 60].")
    return float(fps), float(hold)


def _check_bool(value: bool, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {type(value).__name__}.")
    return value


def _check_quality(quality: int, low: int, high: int) -> int:
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not low <= quality <= high:
        raise ValueError(f"quality={quality!r} must be a whole number in {low}..{high}.")
    return int(quality)


def durations_ms(count: int, fps: float, hold: float) -> list[int]:
    """Per-frame durations in milliseconds; the last frame also lasts ``hold`` seconds."""
    frame = 1000.0 / fps
    durations = [round(frame)] * count
    durations[-1] = round(frame + 1000.0 * hold)
    return durations


def _frames(
    trace: Trace | Lanes,
    panels: str | Sequence[str] | None,
    words: str | Sequence[str] | None,
    size: int | None,
    steps: Sequence[int] | None,
    every: int,
    captions: bool,
    resample: str,
    progress: bool,
    pipe: Any = None,
) -> list[Image.Image]:
    if isinstance(trace, Lanes):  # two runs side by side (a fork and its parent, an edit)
        renderer: FrameRenderer | LanesRenderer = LanesRenderer(trace, panels, words, size, captions, resample, pipe)
    else:
        renderer = FrameRenderer(trace, panels, words, size, captions, resample, pipe=pipe)
    chosen = select_steps(trace.num_steps, steps, every)
    renderer.predecode(chosen)
    return render_frames(renderer, chosen, progress)


def _shared_palette(frames: list[Image.Image]) -> Image.Image:
    """A ``P`` image holding one adaptive palette that fits every frame (median cut on a mosaic of thumbnails)."""
    thumbs = []
    for frame in frames:
        scale = min(1.0, _PALETTE_SAMPLE_SIDE / max(frame.size))
        thumbs.append(
            frame.resize((max(1, round(frame.width * scale)), max(1, round(frame.height * scale))), Image.BOX)
        )
    width = max(t.width for t in thumbs)
    mosaic = Image.new("RGB", (width, sum(t.height for t in thumbs)))
    y = 0
    for t in thumbs:
        mosaic.paste(t, (0, y))
        y += t.height
    return mosaic.quantize(GIF_COLORS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def save_gif(
    trace: Trace | Lanes,
    path: str | Path,
    *,
    panels: str | Sequence[str] | None = None,
    words: str | Sequence[str] | None = None,
    size: int | None = None,
    steps: Sequence[int] | None = None,
    every: int = 1,
    captions: bool = True,
    resample: str = "nearest",
    fps: float = 8.0,
    loop: bool = True,
    hold: float = 1.0,
    progress: bool = False,
    pipe: Any = None,
) -> int:
    """Write an animated GIF, one frame per chosen step.

    Args:
        trace: the trace, or two runs side by side (:class:`~explainer.export.branches.Lanes`).
        path: the ``.gif`` file to write.
        panels, words, size, captions, resample: what each frame shows (see :class:`FrameRenderer`).
        steps, every: which steps become frames (see :func:`select_steps`).
        fps: frames per second.
        loop: loop forever (``True``) or play once.
        hold: extra seconds on the last frame.
        progress: show a tqdm bar while rendering.
        pipe: a pipeline (or its VAE): frames show VAE decodes instead of linear previews.

    Returns:
        The number of frames written.
    """
    fps, hold = check_timing(fps, hold)
    _check_bool(loop, "loop")
    frames = _frames(trace, panels, words, size, steps, every, captions, resample, progress, pipe)
    palette = _shared_palette(frames)
    indexed = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    extra = {"loop": 0} if loop else {}
    indexed[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=indexed[1:],
        duration=durations_ms(len(indexed), fps, hold),
        disposal=1,
        optimize=False,
        **extra,
    )
    return len(indexed)


def save_webp(
    trace: Trace | Lanes,
    path: str | Path,
    *,
    panels: str | Sequence[str] | None = None,
    words: str | Sequence[str] | None = None,
    size: int | None = None,
    steps: Sequence[int] | None = None,
    every: int = 1,
    captions: bool = True,
    resample: str = "nearest",
    fps: float = 8.0,
    loop: bool = True,
    hold: float = 1.0,
    quality: int = 90,
    lossless: bool = False,
    progress: bool = False,
    pipe: Any = None,
) -> int:
    """Write an animated WebP, one frame per chosen step.

    Args:
        trace: the trace, or two runs side by side (:class:`~explainer.export.branches.Lanes`).
        path: the ``.webp`` file to write.
        panels, words, size, captions, resample: what each frame shows (see :class:`FrameRenderer`).
        steps, every: which steps become frames (see :func:`select_steps`).
        fps: frames per second.
        loop: loop forever (``True``) or play once.
        hold: extra seconds on the last frame.
        quality: 0..100 (lossy), or compression effort with ``lossless``.
        lossless: lossless WebP.
        progress: show a tqdm bar while rendering.
        pipe: a pipeline (or its VAE): frames show VAE decodes instead of linear previews.

    Returns:
        The number of frames written.
    """
    fps, hold = check_timing(fps, hold)
    _check_bool(loop, "loop")
    _check_bool(lossless, "lossless")
    quality = _check_quality(quality, 0, 100)
    frames = _frames(trace, panels, words, size, steps, every, captions, resample, progress, pipe)
    frames[0].save(
        path,
        format="WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=durations_ms(len(frames), fps, hold),
        loop=0 if loop else 1,
        quality=quality,
        lossless=lossless,
        method=4,
    )
    return len(frames)


def save_mp4(
    trace: Trace | Lanes,
    path: str | Path,
    *,
    panels: str | Sequence[str] | None = None,
    words: str | Sequence[str] | None = None,
    size: int | None = None,
    steps: Sequence[int] | None = None,
    every: int = 1,
    captions: bool = True,
    resample: str = "nearest",
    fps: float = 8.0,
    hold: float = 1.0,
    quality: int = 8,
    progress: bool = False,
    pipe: Any = None,
) -> int:
    """Write an H.264 MP4 (yuv420p, plays in browsers and slide software), one frame per chosen step.

    Args:
        trace: the trace, or two runs side by side (:class:`~explainer.export.branches.Lanes`).
        path: the ``.mp4`` file to write.
        panels, words, size, captions, resample: what each frame shows (see :class:`FrameRenderer`).
        steps, every: which steps become frames (see :func:`select_steps`).
        fps: frames per second.
        hold: extra seconds on the last frame (it is repeated ``round(hold * fps)`` times).
        quality: 1..10 (imageio-ffmpeg's scale; 8 is x264 CRF 10).
        progress: show a tqdm bar while rendering.
        pipe: a pipeline (or its VAE): frames show VAE decodes instead of linear previews.

    Returns:
        The number of video frames written (held frames included).
    """
    try:
        import imageio_ffmpeg
    except ImportError as err:
        raise ImportError("MP4 export needs imageio-ffmpeg: pip install imageio-ffmpeg") from err
    fps, hold = check_timing(fps, hold)
    quality = _check_quality(quality, 1, 10)
    frames = _frames(trace, panels, words, size, steps, every, captions, resample, progress, pipe)
    frames += [frames[-1]] * round(hold * fps)
    width, height = frames[0].size  # even by construction (Layout rounds up), as yuv420p needs
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        quality=quality,
        codec="libx264",
        macro_block_size=2,
        ffmpeg_log_level="error",
        output_params=["-movflags", "+faststart"],
    )
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(np.asarray(frame, np.uint8)))
    finally:
        writer.close()
    return len(frames)
