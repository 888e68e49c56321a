"""Frames shared by every export format: panels of one step, their layout, labels and captions.

A *panel* is one picture of one step at the trace's image size:

- ``"xt"``: linear preview of the noisy latent before the step (scaled to unit variance);
- ``"x0"``: linear preview of the step's predicted clean latent;

(with ``pipe=`` every latent panel is a full VAE decode instead, decoded in batches;)
- ``"final"``: the pipeline's output image (the same in every frame);
- ``"overlay"``: a word's cross-attention map of that step, colour-mapped over the x0 preview
  (one panel per word in ``words``);
- ``"guidance"``: the guidance decomposition, three panels side by side: x0 from the
  unconditional output alone (``"uncond"``), from the conditional output alone (``"cond"``), and the
  guided x0 the pipeline used (``"guided"``). Each may also be named on its own.

A *frame* puts the chosen panels side by side, each upscaled to ``size``, with a label above each
panel and a caption (step, timestep, sigma) below. Text uses Pillow's default font (ASCII only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from ..tracing import Trace

#: Panel names accepted in ``panels`` (``"guidance"`` expands to ``"uncond", "cond", "guided"``).
PANELS = ("xt", "x0", "final", "overlay", "guidance", "uncond", "cond", "guided", "input")
#: Panels that show the same picture at every step.
STATIC_PANELS = ("final", "input")
DEFAULT_PANELS = ("xt", "x0")
RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
#: Frames smaller than this (longest side) are upscaled by a whole factor unless ``size`` is given.
MIN_DEFAULT_SIZE = 256
#: Colormap for attention overlays, and the overlay's opacity.
COLORMAP = "inferno"
OVERLAY_ALPHA = 0.65

BACKGROUND = (20, 20, 24)
TEXT = (236, 236, 236)
MUTED = (160, 160, 170)
PAD = 8

_LABELS = {
    "xt": "x_t  noisy latent",
    "x0": "x0  predicted image",
    "final": "final image",
    "uncond": "x0  unconditional",
    "cond": "x0  conditional",
    "input": "input image (mask outlined)",
}


@dataclass(frozen=True)
class Panel:
    """One panel of a frame: its kind and, for ``"overlay"``, the word shown."""

    kind: str
    word: str | None = None

    def label(self, guidance_scale: float) -> str:
        if self.kind == "overlay":
            return f'attention  "{self.word}"'
        if self.kind == "guided":
            return f"x0  guided (scale {guidance_scale:g})"
        return _LABELS[self.kind]


@dataclass(frozen=True)
class Layout:
    """Pixel geometry of a frame: panels in one row, labels above, an optional caption below.

    Attributes:
        panel_width, panel_height: size of each panel after upscaling.
        count: number of panels.
        label_height: height of the label strip above the panels (0 without labels).
        caption_height: height of the caption strip below the panels (0 without captions).
        width, height: the whole frame, rounded up to even numbers (H.264 needs them).
    """

    panel_width: int
    panel_height: int
    count: int
    label_height: int
    caption_height: int
    font_size: int

    @property
    def width(self) -> int:
        return _even(PAD + self.count * (self.panel_width + PAD))

    @property
    def height(self) -> int:
        return _even(PAD + self.label_height + self.panel_height + PAD + self.caption_height)

    def box(self, index: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of panel ``index`` in the frame."""
        if not 0 <= index < self.count:
            raise IndexError(f"panel index {index} is out of range 0..{self.count - 1}.")
        left = PAD + index * (self.panel_width + PAD)
        top = PAD + self.label_height
        return left, top, left + self.panel_width, top + self.panel_height


def _even(value: int) -> int:
    return value + (value % 2)


# ------------------------------------------------------------------------------------ validation


def resolve_panels(trace: Trace, panels: str | Sequence[str] | None, words: str | Sequence[str] | None) -> list[Panel]:
    """Expand ``panels`` and ``words`` into the frame's panels, checking both against the trace.

    Args:
        trace: the trace.
        panels: names from :data:`PANELS` (a comma-separated string works too); ``None`` gives
            ``("xt", "x0")`` (``("input", "xt", "x0")`` for image-to-image and inpainting traces), plus
            ``"overlay"`` when ``words`` are given.
        words: words (or token strings) of the prompt to overlay; each gets one ``"overlay"`` panel.

    Returns:
        The panels, left to right.
    """
    words = _as_names(words, "words")
    default = (("input",) if trace.input_image is not None else ()) + DEFAULT_PANELS  # edits show their input
    names = list(default) if panels is None else _as_names(panels, "panels")
    if not names:
        raise ValueError(f"panels is empty; choose from {list(PANELS)}.")
    unknown = [n for n in names if n not in PANELS]
    if unknown:
        raise ValueError(f"panels {unknown} are not known; choose from {list(PANELS)}.")
    if words and "overlay" not in names:
        names.append("overlay")
    if "overlay" in names and not words:
        raise ValueError(
            f"panels includes 'overlay' but no words were given; pass words=[...] from the prompt's words "
            f"{[w.text for w in trace.words]}."
        )
    if "overlay" in names:
        for word in words:
            trace.heatmap(word, step=0)  # raises a ValueError listing the prompt's words
    if any(n in ("guidance", "uncond", "cond", "guided") for n in names) and not trace.has_uncond:
        raise ValueError(
            "the guidance panels need both branches, but this trace was recorded without classifier-free "
            f"guidance (guidance_scale={trace.guidance_scale}); drop 'guidance' from panels."
        )
    if trace.latent_rgb is None and any(n not in STATIC_PANELS for n in names):
        raise ValueError(
            "this trace has no latent->RGB factors for previews; set trace.latent_rgb = "
            "explainer.fit_latent_rgb_factors(pipe, trace) first, or export only panels=['final']."
        )
    if "input" in names and trace.input_image is None:
        raise ValueError(
            f"panel 'input' shows the input image of an image-to-image or inpainting trace; this trace is "
            f"{trace.mode}: drop 'input' from panels."
        )
    if "final" in names and trace.final_image is None and trace.latent_rgb is None:
        raise ValueError("this trace is incomplete (no final image); drop 'final' from panels.")
    result: list[Panel] = []
    for name in names:
        if name == "overlay":
            result.extend(Panel("overlay", w) for w in words)
        elif name == "guidance":
            result.extend(Panel(k) for k in ("uncond", "cond", "guided"))
        else:
            result.append(Panel(name))
    return result


def _as_names(value: str | Iterable[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{what} must be a string or a list of strings, not {type(value).__name__}.") from None
    if not all(isinstance(v, str) for v in items):
        raise TypeError(f"{what} must be a list of strings, got {items!r}.")
    return [v.strip() for v in items if v.strip()]


def select_steps(num_steps: int, steps: Sequence[int] | None = None, every: int = 1) -> list[int]:
    """Steps to show: ``steps`` as given, or every ``every``-th step (the last step always included).

    Args:
        num_steps: steps in the trace.
        steps: explicit step indices (negative counts from the end), shown in the order given.
        every: keep every k-th step when ``steps`` is ``None``.

    Returns:
        Step indices in ``0 .. num_steps - 1``.
    """
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"every={every!r} must be a whole number >= 1.")
    if num_steps < 1:
        raise ValueError("this trace has no recorded steps to export.")
    if steps is None:
        chosen = list(range(0, num_steps, int(every)))
        if chosen[-1] != num_steps - 1:
            chosen.append(num_steps - 1)
        return chosen
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
        raise TypeError(f"steps must be a list of step indices, not {type(steps).__name__}.")
    chosen = []
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"steps must hold whole numbers, got {s!r}.")
        if not -num_steps <= int(s) < num_steps:
            raise ValueError(f"step {int(s)} is out of range; this trace has steps 0..{num_steps - 1}.")
        chosen.append(int(s) % num_steps)
    if not chosen:
        raise ValueError("steps is empty; give at least one step index.")
    return chosen


def panel_size(trace: Trace, size: int | None) -> tuple[int, int]:
    """``(width, height)`` of each panel: longest side ``size``, aspect ratio kept.

    Without ``size``, images smaller than 256 px are upscaled by the smallest whole factor reaching it.
    """
    width, height = trace.width, trace.height
    if size is None:
        factor = max(1, math.ceil(MIN_DEFAULT_SIZE / max(width, height)))
        return width * factor, height * factor
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= 4096:
        raise ValueError(f"size={size!r} must be a whole number of pixels in 16..4096 (longest side of a panel).")
    scale = int(size) / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_resample(resample: str) -> int:
    """Pillow filter for a ``resample`` name from :data:`RESAMPLE`."""
    if resample not in RESAMPLE:
        raise ValueError(f"resample={resample!r} is not allowed; use one of {list(RESAMPLE)}.")
    return RESAMPLE[resample]


# ------------------------------------------------------------------------------------ rendering


@lru_cache(maxsize=4)
def colormap_lut(name: str = COLORMAP) -> np.ndarray:
    """``[256, 3]`` uint8 lookup table of a matplotlib colormap."""
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def overlay_heatmap(base: Image.Image, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """Colour-map ``heat`` (``[H, W]`` in [0, 1]) and blend it over ``base`` with opacity ``alpha``."""
    if heat.shape != (base.height, base.width):
        heat_img = Image.fromarray(np.clip(heat * 255.0, 0, 255).astype(np.uint8), "L")
        heat = np.asarray(heat_img.resize(base.size, Image.BILINEAR), np.float32) / 255.0
    index = np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8)
    color = colormap_lut()[index].astype(np.float32)
    gray = np.asarray(base.convert("L"), np.float32)[..., None]
    mixed = (1.0 - alpha) * gray + alpha * color
    return Image.fromarray(np.clip(mixed + 0.5, 0, 255).astype(np.uint8), "RGB")


def render_panel(trace: Trace, panel: Panel, step: int, pipe: Any = None) -> Image.Image:
    """The panel's picture of ``step`` at the trace's image size (RGB).

    Args:
        trace: the trace.
        panel: what to show.
        step: the step.
        pipe: a pipeline (or its VAE) to VAE-decode latents (cached); ``None`` for linear previews.
    """
    kind = panel.kind
    method = "linear" if pipe is None else "vae"
    if kind == "xt":
        return trace.preview(step, kind="xt", method=method, pipe=pipe)
    if kind in ("x0", "guided"):
        return trace.preview(step, kind="x0", method=method, pipe=pipe)
    if kind == "final":
        if trace.final_image is not None:
            return trace.final_image.convert("RGB")
        return trace.preview(trace.num_steps, kind="xt", method=method, pipe=pipe)
    if kind == "input":
        from ..tracing.editing import input_preview

        return input_preview(trace)
    if kind == "overlay":
        base = trace.preview(step, kind="x0", method=method, pipe=pipe)
        return overlay_heatmap(base, trace.heatmap(panel.word, step=step))
    if kind == "uncond":
        return trace.what_if(step, 0.0, method=method, pipe=pipe)  # scale 0: the unconditional output alone
    if kind == "cond":
        return trace.what_if(step, 1.0, method=method, pipe=pipe)  # scale 1: the conditional output alone
    raise ValueError(f"panel kind {kind!r} is not known; choose from {list(PANELS)}.")


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled default font at ``size`` px (the bitmap font on builds without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def make_layout(count: int, panel_wh: tuple[int, int], captions: bool, labels: bool = True) -> Layout:
    """Geometry for ``count`` panels of ``panel_wh`` pixels."""
    font_size = max(11, min(24, round(max(panel_wh) / 22)))
    strip = font_size + 8
    return Layout(panel_wh[0], panel_wh[1], count, strip if labels else 0, strip if captions else 0, font_size)


def format_sigma(sigma: float) -> str:
    """``sigma`` for captions: three significant digits (whole numbers from 1000), ``inf`` if infinite."""
    value = float(sigma)
    if not math.isfinite(value):
        return "inf"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def caption_text(trace: Trace, step: int) -> str:
    """``"step 3/25   t=879   sigma=4.21"`` (steps counted from 1)."""
    t = float(trace.timesteps[step])
    t_text = f"{t:.0f}" if abs(t - round(t)) < 1e-6 else f"{t:.1f}"
    return f"step {step + 1}/{trace.num_steps}   t={t_text}   sigma={format_sigma(trace.sigmas[step])}"


class FrameRenderer:
    """Renders composed frames for one trace and one set of options.

    Args:
        trace: the trace.
        panels, words: see :func:`resolve_panels`.
        size: longest side of each panel in pixels (default: the image size, upscaled to >= 256).
        captions: draw the step / timestep / sigma caption and panel labels.
        resample: upscaling filter, one of :data:`RESAMPLE`.
        pipe: a pipeline (or its VAE): latent panels become VAE decodes instead of linear previews.
    """

    def __init__(
        self,
        trace: Trace,
        panels: str | Sequence[str] | None = None,
        words: str | Sequence[str] | None = None,
        size: int | None = None,
        captions: bool = True,
        resample: str = "nearest",
        pipe: Any = None,
    ) -> None:
        if not isinstance(captions, bool):
            raise TypeError(f"captions must be True or False, not {type(captions).__name__}.")
        self.trace = trace
        self.panels = resolve_panels(trace, panels, words)
        self.panel_wh = panel_size(trace, size)
        self.resample = check_resample(resample)
        self.captions = captions
        self.pipe = pipe
        self._decoded: dict[tuple[str, int], Image.Image] = {}
        self.layout = make_layout(len(self.panels), self.panel_wh, captions, labels=captions)
        self._static: dict[Panel, Image.Image] = {}
        self._background = self._make_background()

    def _make_background(self) -> Image.Image:
        lay = self.layout
        canvas = Image.new("RGB", (lay.width, lay.height), BACKGROUND)
        if self.captions:
            draw = ImageDraw.Draw(canvas)
            f = font(lay.font_size)
            for i, panel in enumerate(self.panels):
                left, top, right, _ = lay.box(i)
                text = _fit_text(draw, panel.label(self.trace.guidance_scale), f, right - left)
                draw.text((left, top - lay.label_height + 3), text, font=f, fill=MUTED)
        return canvas

    def panel_image(self, panel: Panel, step: int) -> Image.Image:
        """One panel of ``step``, upscaled to the panel size."""
        if panel.kind in STATIC_PANELS and panel in self._static:
            return self._static[panel]
        latent_kind = {"xt": "xt", "x0": "x0", "guided": "x0"}.get(panel.kind)
        if (latent_kind, step) in self._decoded:
            image = self._decoded[(latent_kind, step)]
        else:
            image = render_panel(self.trace, panel, step, self.pipe)
        if image.size != self.panel_wh:
            image = image.resize(self.panel_wh, self.resample)
        if panel.kind in STATIC_PANELS:
            self._static[panel] = image
        return image

    def predecode(self, steps: Sequence[int], batch_size: int = 16) -> None:
        """With a pipeline, VAE-decode the latent panels of ``steps`` in batches ahead of rendering."""
        from ..tracing.previews import decode_steps

        if self.pipe is None:
            return
        kinds = {{"xt": "xt", "x0": "x0", "guided": "x0", "overlay": "x0"}.get(p.kind) for p in self.panels} - {None}
        for kind in sorted(kinds):
            images = decode_steps(self.trace, self.pipe, kind, steps=list(steps), batch_size=batch_size)
            self._decoded.update({(kind, s): image for s, image in zip(steps, images, strict=True)})

    def frame(self, step: int) -> Image.Image:
        """The composed frame of ``step``."""
        canvas = self._background.copy()
        for i, panel in enumerate(self.panels):
            left, top, _, _ = self.layout.box(i)
            canvas.paste(self.panel_image(panel, step), (left, top))
        if self.captions:
            draw = ImageDraw.Draw(canvas)
            f = font(self.layout.font_size)
            _, _, _, bottom = self.layout.box(0)
            text = _fit_text(draw, caption_text(self.trace, step), f, self.layout.width - 2 * PAD)
            draw.text((PAD, bottom + PAD // 2 + 2), text, font=f, fill=TEXT)
        return canvas


def _fit_text(draw: ImageDraw.ImageDraw, text: str, f: ImageFont.ImageFont, width: int) -> str:
    """``text`` cut with an ellipsis ("...") to fit ``width`` pixels."""
    if draw.textlength(text, font=f) <= width:
        return text
    while text and draw.textlength(text + "...", font=f) > width:
        text = text[:-1]
    return text + "..."


def render_frames(
    renderer: FrameRenderer,
    steps: Sequence[int],
    progress: bool = False,
    desc: str = "frames",
) -> list[Image.Image]:
    """Render the frames of ``steps``, with a tqdm bar when ``progress``."""
    from tqdm.auto import tqdm

    return [renderer.frame(s) for s in tqdm(steps, desc=desc, unit="frame", disable=not progress, leave=False)]
