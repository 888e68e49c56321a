"""Component explorers: one live widget per part of Stable Diffusion, driven by a teacher.

- :func:`explore_text_encoder`: type a prompt; its BPE tokens and ids, BOS / EOS / padding /
  truncation at the tokenizer's ``model_max_length``, the token-similarity matrix, the words the toy knows.
- :func:`explore_vae`: an image, its round trip, its latent channels and compression ratio; scale or
  zero a channel and decode the edited latent.
- :func:`explore_noising`: a t slider; the image noised in latent and pixel space, and ᾱ, σ, SNR on
  the schedule plot; switch schedules.
- :func:`explore_unet`: the architecture diagram generated from the UNet's config, and per-block
  feature norms of a trace step (a step slider).
- :func:`explore_training`: the training objective on a batch at t (a slider), and a button that
  trains a tiny model a few steps on the CPU.
- :func:`explore_editing`: a strength slider with the start step marked on the schedule; brush a mask
  on the input, then run image-to-image (no mask) or inpainting.

Every widget is a :class:`ComponentExplorer`: the controls are described in the kernel (``controls``),
the browser writes their ``values``, and the kernel redraws the ``pictures`` (matplotlib figures from
:mod:`explainer.views.components`) on each change. Without ``pipe`` they use the bundled toy model.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets
from PIL import Image

from ..tracing import Trace
from ..views import components as views
from ..views._common import figure_png
from ..views.components._images import as_array, sample_image
from ..views.components.text_encoder import _toy_known_words
from ..views.components.noising import SCHEDULES, named_schedule
from ..views.components.training import loss_figure
from .explore import PRESENT_DISPLAY, default_pipeline, readable

_HERE = Path(__file__).parent
#: Default prompt of the explorers.
PROMPT = "a red circle above a blue square"
#: How many steps one press of the training button takes.
TRAIN_STEPS = 5
#: Resolution of the figures (dots per inch); in presentation mode, PRESENT_SCALE times more.
FIGURE_DPI = 100
#: How much bigger figures are drawn in presentation mode (their text grows with them).
PRESENT_SCALE = 2
#: Smallest shown width (px) of a pixel picture (the editing input and result); PRESENT_DISPLAY in presentation mode.
MIN_DISPLAY = 256


def _fig_src(fig: Any, dpi: int = FIGURE_DPI) -> str:
    return "data:image/png;base64," + base64.b64encode(figure_png(fig, dpi=dpi)).decode()


def _check_presentation(presentation: Any) -> bool:
    if not isinstance(presentation, bool):
        raise TypeError(f"presentation must be True or False, not {presentation!r}.")
    return presentation


def _image_src(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class ComponentExplorer(anywidget.AnyWidget):
    """A live view of one part of Stable Diffusion (the base of the ``explore_*`` widgets).

    Attributes (synced with the browser):
        part: which part (``"text_encoder"``, ``"vae"``, ``"noising"``, ``"unet"``, ``"training"``, ``"editing"``).
        controls: the controls' descriptions (``name``, ``kind``: slider / text / select / button, ``label``...).
        values: each control's value (a button's: how often it was pressed; ``strokes``: brushed points).
        pictures: what is shown (``key``, ``label``, ``src`` PNG data URL). info_html: text shown above them.
        presentation: for a projector: figures drawn :data:`PRESENT_SCALE` times bigger (their text too),
            every picture at least :data:`~explainer.widgets.explore.PRESENT_DISPLAY` px wide, large type,
            full width (the "Presentation" button toggles it).
        revision: counts redraws. status, error: messages.
    """

    _esm = _HERE / "components.js"
    _css = _HERE / "components.css"

    part = traitlets.Unicode("").tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    controls = traitlets.List().tag(sync=True)
    values = traitlets.Dict().tag(sync=True)
    pictures = traitlets.List().tag(sync=True)
    info_html = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    revision = traitlets.Int(0).tag(sync=True)
    brush_radius = traitlets.Float(4.0).tag(sync=True)
    presentation = traitlets.Bool(False).tag(sync=True)
    present_display = traitlets.Int(PRESENT_DISPLAY).tag(sync=True)

    def __init__(self, *, part: str, title: str, controls: list[dict[str, Any]], values: dict[str, Any],
                 pipe: Any = None, presentation: bool = False) -> None:  # fmt: skip
        """
        Args:
            part: the part's name. title: the heading. controls: the control descriptions.
            values: their first values. pipe: the pipeline (default: the toy model).
            presentation: start in presentation mode (for a projector).
        """
        super().__init__(part=part, title=title, controls=controls, values=dict(values),
                         presentation=_check_presentation(presentation))  # fmt: skip
        self.pipe = pipe if pipe is not None else default_pipeline()
        self._cache: dict[str, Any] = {}
        self.observe(self._on_values, "values")
        self.observe(lambda _: self.redraw({"presentation"}), "presentation")
        self.redraw({})

    def _src(self, fig: Any) -> str:
        """``fig`` as a PNG data URL, drawn bigger in presentation mode."""
        return _fig_src(fig, dpi=FIGURE_DPI * (PRESENT_SCALE if self.presentation else 1))

    def _pixel_width(self, width: int) -> int:
        """The shown width of a pixel picture ``width`` px wide (scaled up, pixelated, when small)."""
        return max(PRESENT_DISPLAY if self.presentation else MIN_DISPLAY, width)

    def _on_values(self, change: dict[str, Any]) -> None:
        old, new = change["old"] or {}, change["new"] or {}
        self.redraw({k for k in new if old.get(k) != new.get(k)})

    def redraw(self, changed: set[str] | dict) -> None:
        """Recompute the pictures for the current ``values`` (``changed``: the names that changed)."""
        try:
            pictures, info = self._draw(dict(self.values), set(changed))
        except (ValueError, TypeError, RuntimeError) as err:
            self.error = readable(err)
        else:
            self.error = ""
            self.info_html = info
            self.pictures = pictures
        self.revision += 1

    def _draw(self, values: dict[str, Any], changed: set[str]) -> tuple[list[dict[str, Any]], str]:
        raise NotImplementedError


def _slider(name: str, label: str, lo: float, hi: float, step: float = 1) -> dict[str, Any]:
    return {"name": name, "kind": "slider", "label": label, "min": lo, "max": hi, "step": step}


# ------------------------------------------------------------------------------------------ text encoder
class TextEncoderExplorer(ComponentExplorer):
    """:func:`explore_text_encoder`'s widget."""

    def __init__(self, prompt: str, *, pipe: Any = None, known: frozenset[str] | None = None, presentation: bool = False) -> None:
        self.known = known if known is not None else (_toy_known_words() if pipe is None else None)
        controls = [{"name": "prompt", "kind": "text", "label": "prompt"},
                    {"name": "space", "kind": "select", "label": "compare", "options": ["output", "input"]}]  # fmt: skip
        super().__init__(part="text_encoder", title="Text encoder: prompt → tokens → embeddings", controls=controls,
                         values={"prompt": prompt, "space": "output"}, pipe=pipe, presentation=presentation)  # fmt: skip

    def _draw(self, values: dict[str, Any], changed: set[str]) -> tuple[list[dict[str, Any]], str]:
        prompt, space = values.get("prompt", ""), values.get("space", "output")
        tok, enc = self.pipe.tokenizer, self.pipe.text_encoder
        info = views.tokenize(tok, prompt, known=self.known)
        chips, pads = [], info["kinds"].count("pad")
        for token, idx, kind, known in zip(info["tokens"], info["ids"], info["kinds"], info["known"]):
            if kind == "pad":
                continue
            flag = "" if known is None else f' data-known="{str(known).lower()}"'
            chips.append(f'<span class="sdc-tok" data-kind="{kind}"{flag}>{html.escape(token)}<small>{idx}</small></span>')
        parts = [f'<div class="sdc-tokens">{"".join(chips)}</div>',
                 f"<div>{info['n_prompt']} prompt token(s) + BOS + EOS, then {pads} padding token(s) "
                 f"(id {info['ids'][-1]}) up to the tokenizer's model_max_length = {info['max_length']}.</div>"]  # fmt: skip
        if info["truncated"]:
            cut = html.escape(" ".join(t.replace("</w>", "") for t in info["truncated"]))
            parts.append(f'<div class="sdc-truncated">truncated (the encoder never sees): {cut}</div>')
        if self.known is not None:
            unknown = info["unknown_words"]
            text = ("unknown to the toy (crossed out): " + html.escape(", ".join(unknown))) if unknown else "the toy knows every word"
            parts.append(f'<div class="sdc-unknown">{text}</div>')
        labels, sim = views.token_similarity(tok, enc, prompt, space=space)
        title = "similarity of the encoder's outputs" if space == "output" else "similarity of the token embeddings"
        pictures = [{"key": "similarity", "label": f"{title} (cosine)", "src": self._src(views.token_similarity_figure(labels, sim, title=title))}]
        self.tokens = info
        return pictures, "".join(parts)


def explore_text_encoder(prompt: str = PROMPT, *, pipe: Any = None, known: Any = None,
                         presentation: bool = False) -> TextEncoderExplorer:  # fmt: skip
    """A live text-encoder explorer: type a prompt, see its tokens, ids and token similarity.

    Args:
        prompt: the first prompt. pipe: the pipeline (default: the toy model).
        known: words the model knows, shown and the others crossed out: a set or list of words, or
            ``explainer.toy.vocabulary()`` (default: the toy's words when ``pipe`` is ``None``, else none marked).
        presentation: start in presentation mode (for a projector: pictures of 512 px or more, large type,
            full width; the widget's "Presentation" button toggles it).

    Returns:
        The widget (``w.values["prompt"] = "..."`` re-runs it from Python too).

    Example:
        >>> import explainer
        >>> w = explainer.explore_text_encoder("a purple star on the left")
        >>> print(*w.tokens["unknown_words"])
        purple star
        >>> w.values = {**w.values, "prompt": "a red circle"}  # what typing in the box does
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, not {type(prompt).__name__}.")
    return TextEncoderExplorer(prompt, pipe=pipe, known=known_words(known), presentation=_check_presentation(presentation))


def known_words(known: Any) -> frozenset[str] | None:
    """``known`` as a set of lowercase words: any collection of words, or ``explainer.toy.vocabulary()``'s dict.

    Args:
        known: ``None``, a set / list / tuple of words, or a mapping with a ``"words"`` list.

    Returns:
        The words, or ``None``.
    """
    if known is None:
        return None
    if isinstance(known, Mapping):
        if "words" not in known:
            raise ValueError(f"known: a mapping must hold a 'words' list (as explainer.toy.vocabulary() does); "
                             f"it has {sorted(map(str, known))}.")  # fmt: skip
        known = known["words"]
    if isinstance(known, (str, bytes)) or not isinstance(known, Iterable):
        raise TypeError(f"known must be a collection of words (set, list) or explainer.toy.vocabulary(), "
                        f"not {type(known).__name__}.")  # fmt: skip
    words = list(known)
    bad = [w for w in words if not isinstance(w, str)]
    if bad:
        raise TypeError(f"known must hold words (str), not {type(bad[0]).__name__} ({bad[0]!r}).")
    return frozenset(w.lower() for w in words)


# ----------------------------------------------------------------------------------------------- VAE
class VAEExplorer(ComponentExplorer):
    """:func:`explore_vae`'s widget."""

    def __init__(self, image: Any, *, pipe: Any = None, presentation: bool = False) -> None:
        self.image = None if image is None else as_array(image)
        pipe_ = pipe if pipe is not None else default_pipeline()
        channels = int(pipe_.vae.config.latent_channels)
        controls = [{"name": "channel", "kind": "select", "label": "edit channel", "options": ["all", *range(channels)]},
                    _slider("scale", "× scale", -2.0, 3.0, 0.25)]  # fmt: skip
        values = {"channel": 0, "scale": 0.0}
        if self.image is None:
            controls.insert(0, _slider("seed", "scene", 0, 99))
            values["seed"] = 0
        super().__init__(part="vae", title="VAE: image ⇄ latent", controls=controls, values=values, pipe=pipe_,
                         presentation=presentation)  # fmt: skip

    def _draw(self, values: dict[str, Any], changed: set[str]) -> tuple[list[dict[str, Any]], str]:
        image = self.image if self.image is not None else sample_image(int(values.get("seed", 0)))
        key = int(values.get("seed", 0))
        if self._cache.get("key") != key:
            self._cache = {"key": key, "result": views.vae_roundtrip(self.pipe.vae, image)}
        result = self._cache["result"]
        channel = values.get("channel", 0)
        channel = None if channel in ("all", None) else int(channel)
        scale = float(values.get("scale", 0.0))
        edited = views.decode_latent(self.pipe.vae, views.edit_latent(result["latent"], channel=channel, scale=scale))
        which = "all channels" if channel is None else f"channel {channel}"
        fig = views.vae_figure(result, edited=edited, edit_label=f"{which} × {scale:g}, decoded")
        self.result = result
        info = (f"{result['pixels']} pixel numbers → latent {'×'.join(map(str, result['latent_shape']))} = "
                f"{result['latent_numbers']} numbers: {result['ratio']:.0f}× compression.")  # fmt: skip
        return [{"key": "vae", "label": "image, round trip, latent channels, edited decode", "src": self._src(fig)}], html.escape(info)


def explore_vae(image: Any = None, *, pipe: Any = None, presentation: bool = False) -> VAEExplorer:
    """A live VAE explorer: the round trip of an image, its latent channels, and an edited latent decoded.

    Args:
        image: PIL image or array ``[H, W, 3]`` (default: shapes-world scenes, a slider picks one).
        pipe: the pipeline (default: the toy model).
        presentation: start in presentation mode (for a projector: pictures of 512 px or more, large type,
            full width; the widget's "Presentation" button toggles it).

    Returns:
        The widget.

    Example:
        >>> import explainer
        >>> w = explainer.explore_vae()
        >>> w.result["latent"].shape  # the toy: 4 channels at 1/4 of 64 px
        (4, 16, 16)
        >>> w.values = {**w.values, "channel": 0, "scale": 0.0}  # zero channel 0, decode
    """
    return VAEExplorer(image, pipe=pipe, presentation=_check_presentation(presentation))


# ------------------------------------------------------------------------------------------- noising
class NoisingExplorer(ComponentExplorer):
    """:func:`explore_noising`'s widget."""

    def __init__(self, image: Any, *, t: int, pipe: Any = None, presentation: bool = False) -> None:
        self.image = None if image is None else as_array(image)
        pipe_ = pipe if pipe is not None else default_pipeline()
        T = len(pipe_.scheduler.alphas_cumprod)
        controls = [_slider("t", "t", 0, T - 1),
                    {"name": "schedule", "kind": "select", "label": "schedule", "options": ["pipeline", *SCHEDULES]},
                    _slider("seed", "noise seed", 0, 99)]  # fmt: skip
        super().__init__(part="noising", title="Forward noising: x_t = √ᾱ·x₀ + √(1−ᾱ)·ε", controls=controls,
                         values={"t": int(t), "schedule": "pipeline", "seed": 0}, pipe=pipe_, presentation=presentation)  # fmt: skip

    def _draw(self, values: dict[str, Any], changed: set[str]) -> tuple[list[dict[str, Any]], str]:
        image = self.image if self.image is not None else sample_image(0)
        name = values.get("schedule", "pipeline")
        sched = named_schedule(name, base=self.pipe.scheduler)
        t = int(values.get("t", 0))
        result = views.noise_image(self.pipe.vae, sched, image, t, seed=int(values.get("seed", 0)))
        if "curves" not in self._cache:
            self._cache["curves"] = {n: views.schedule_curves(named_schedule(n, base=self.pipe.scheduler)) for n in ["pipeline", *SCHEDULES]}
        curves = self._cache["curves"]
        shown = {n: curves[n] for n in dict.fromkeys(["pipeline", name])}
        self.result = result
        return [
            {"key": "noising", "label": f"noised at t = {t} ({name} schedule)", "src": self._src(views.noising_figure(result))},
            {"key": "schedule", "label": "ᾱ, σ, SNR over t (t marked)", "src": self._src(views.schedule_figure(shown, t=t))},
        ], ""


def explore_noising(image: Any = None, *, t: int = 500, pipe: Any = None, presentation: bool = False) -> NoisingExplorer:
    """A live forward-noising explorer: a t slider over an image, latent and pixel space, and the schedule.

    Args:
        image: PIL image or array ``[H, W, 3]`` (default: a shapes-world scene). t: the first timestep.
        pipe: the pipeline (default: the toy model).
        presentation: start in presentation mode (for a projector: pictures of 512 px or more, large type,
            full width; the widget's "Presentation" button toggles it).

    Returns:
        The widget.

    Example:
        >>> import explainer
        >>> w = explainer.explore_noising(t=200)
        >>> w.values = {**w.values, "t": 900, "schedule": "cosine"}
        >>> round(w.result["alpha_bar"], 3) < 0.1
        True
    """
    return NoisingExplorer(image, t=t, pipe=pipe, presentation=_check_presentation(presentation))


# ---------------------------------------------------------------------------------------------- UNet
class UNetExplorer(ComponentExplorer):
    """:func:`explore_unet`'s widget."""

    def __init__(self, trace: Trace | None, *, pipe: Any = None, num_inference_steps: int = 8, presentation: bool = False) -> None:
        pipe_ = pipe if pipe is not None else default_pipeline()
        if trace is None:
            from ..tracing import trace as run_trace

            trace = run_trace(pipe_, PROMPT, num_inference_steps=num_inference_steps, seed=0, progress=False)
        self.trace = trace
        self.architecture = views.unet_architecture(pipe_.unet)
        controls = [_slider("step", "step", 0, trace.num_steps - 1)]
        super().__init__(part="unet", title=f"UNet: one denoising call of “{trace.prompt}”", controls=controls,
                         values={"step": 0}, pipe=pipe_, presentation=presentation)  # fmt: skip

    def _draw(self, values: dict[str, Any], changed: set[str]) -> tuple[list[dict[str, Any]], str]:
        step = int(values.get("step", 0))
        diagram = f"diagram@{self.presentation}"
        if diagram not in self._cache:
            self._cache[diagram] = self._src(views.unet_diagram(self.architecture))
        rows = views.block_feature_norms(self.pipe, self.trace, step)
        t = int(self.trace.timesteps[step])
        fig = views.feature_norms_figure(rows, title=f"block outputs at step {step + 1}/{self.trace.num_steps}, t = {t}")
        return [
            {"key": "diagram", "label": "architecture, generated from the UNet's config", "src": self._cache[diagram]},
            {"key": "norms", "label": f"feature norms per block, step {step + 1}", "src": self._src(fig)},
        ], ""


def explore_unet(trace: Trace | None = None, *, pipe: Any = None, num_inference_steps: int = 8,
                 presentation: bool = False) -> UNetExplorer:  # fmt: skip
    """A live UNet explorer: its architecture diagram (from its config) and per-block feature norms of a step.

    Args:
        trace: a trace made with ``pipe`` (default: a toy trace of a fixed prompt).
        pipe: its pipeline (default: the toy model). num_inference_steps: steps of the default trace.
        presentation: start in presentation mode (for a projector: pictures of 512 px or more, large type,
            full width; the widget's "Presentation" button toggles it).

    Returns:
        The widget.

    Example:
        >>> import explainer
        >>> w = explainer.explore_unet(num_inference_steps=6)
        >>> blocks = w.architecture["blocks"]
        >>> first = blocks[0]
        >>> print(first["name"], first["resolution"])
        down_blocks.0 [16, 16]
        >>> w.values = {"step": 5}  # feature norms of the last step
    """
    if trace is not None and not isinstance(trace, Trace):
        raise TypeError(f"trace must be an explainer.Trace or None, not {type(trace).__name__}.")
    return UNetExplorer(trace, pipe=pipe, num_inference_steps=num_inference_steps, presentation=_check_presentation(presentation))


# ------------------------------------------------------------------------------------------ training
class TrainingExplorer(ComponentExplorer):
    """:func:`explore_training`'s widget."""

    def __init__(self, *, t: int, pipe: Any = None, presentation: bool = False) -> None:
        pipe_ = pipe if pipe is not None else default_pipeline()
        T = len(pipe_.scheduler.alphas_cumprod)
        self.tiny: views.TinyTrainer | None = None
        controls = [_slider("t", "t", 0, T - 1), _slider("seed", "batch", 0, 99),
                    {"name": "train", "kind": "button", "label": f"train a tiny model {TRAIN_STEPS} steps"}]  # fmt: skip
        super().__init__(part="training", title="Training: predict the target from x_t, t and the caption",
                         controls=controls, values={"t": int(t), "seed": 0, "train": 0}, pipe=pipe_,
                         presentation=presentation)  # fmt: skip

    def _draw(self, values: dict[str, Any], changed: set[str]) -> tuple[list[dict[str, Any]], str]:
        t, seed = int(values.get("t", 0)), int(values.get("seed", 0))
        presses = int(values.get("train", 0))
        if self.tiny is None and presses:
            self.tiny = views.TinyTrainer(self.pipe)
        while self.tiny is not None and len(self.tiny.losses) < presses * TRAIN_STEPS:
            self.status = f"training the tiny model: step {len(self.tiny.losses) + 1}…"
            self.tiny.train(1)
        self.status = ""
        result = views.training_objective(self.pipe, t, seed=seed)
        pictures = [{"key": "objective", "label": f"the shipped model's objective at t = {t}",
                     "src": self._src(views.training_figure(result))}]  # fmt: skip
        info = f"shipped model: loss {result['loss']:.4f} at t = {t} ({result['target_name']}-prediction)."
        if self.tiny is not None:
            tiny = self.tiny.objective(t, seed=seed)
            losses = self.tiny.losses
            pictures.append({"key": "loss", "label": f"tiny model ({self.tiny.params} parameters): loss per step",
                             "src": self._src(loss_figure(losses, title=f"{len(losses)} steps, last loss {losses[-1]:.3f}"))})  # fmt: skip
            pictures.append({"key": "tiny", "label": f"the tiny model's objective at t = {t}", "src": self._src(views.training_figure(tiny))})
            info += f" Tiny model after {len(losses)} steps: loss {tiny['loss']:.4f}."
        self.result = result
        return pictures, html.escape(info)


def explore_training(*, t: int = 500, pipe: Any = None, presentation: bool = False) -> TrainingExplorer:
    """A live training explorer: the objective on a batch at t, and a tiny model trained at the press of a button.

    Args:
        t: the first timestep. pipe: the pipeline (default: the toy model; its VAE encodes the batches).
        presentation: start in presentation mode (for a projector: pictures of 512 px or more, large type,
            full width; the widget's "Presentation" button toggles it).

    Returns:
        The widget (``w.tiny`` is the :class:`~explainer.views.components.TinyTrainer` once trained).

    Example:
        >>> import explainer
        >>> w = explainer.explore_training(t=300)
        >>> w.values = {**w.values, "train": 1}  # what the button does: 5 steps of a tiny model
        >>> len(w.tiny.losses)
        5
    """
    return TrainingExplorer(t=t, pipe=pipe, presentation=_check_presentation(presentation))


# ------------------------------------------------------------------------------------------- editing
class EditingExplorer(ComponentExplorer):
    """:func:`explore_editing`'s widget."""

    def __init__(self, image: Any, *, prompt: str, strength: float, num_inference_steps: int, seed: int,
                 pipe: Any = None, presentation: bool = False) -> None:  # fmt: skip
        self.image = as_array(image) if image is not None else sample_image(1)
        self.num_inference_steps, self.seed = num_inference_steps, seed
        self.result: Trace | None = None
        controls = [{"name": "prompt", "kind": "text", "label": "prompt"}, _slider("strength", "strength", 0.05, 1.0, 0.05),
                    {"name": "clear", "kind": "button", "label": "clear mask"},
                    {"name": "run", "kind": "button", "label": "run (img2img; inpaint with a mask)"}]  # fmt: skip
        super().__init__(part="editing", title="Editing: image-to-image and inpainting", controls=controls,
                         values={"prompt": prompt, "strength": float(strength), "clear": 0, "run": 0, "strokes": []}, pipe=pipe,
                         presentation=presentation)  # fmt: skip
        self.brush_radius = max(2.0, self.image.shape[0] / 16)

    def mask(self) -> np.ndarray | None:
        """The brushed mask ``[H, W]`` (1: repaint), or ``None`` when nothing is brushed."""
        strokes = self.values.get("strokes") or []
        if not strokes:
            return None
        h, w = self.image.shape[:2]
        return views.mask_from_strokes(strokes, h, w, radius=self.brush_radius)

    def _draw(self, values: dict[str, Any], changed: set[str]) -> tuple[list[dict[str, Any]], str]:
        if "clear" in changed and values.get("strokes"):
            self.values = {**values, "strokes": []}  # redraws through the observer
            return self.pictures, self.info_html
        strength = float(values.get("strength", 0.75))
        mask = self.mask()
        shown = self.image.copy()
        if mask is not None:
            shown[mask > 0] = 0.5 * shown[mask > 0] + 0.5 * np.array([1.0, 0.24, 0.78], np.float32)
        if "run" in changed:
            from ..tracing import trace as run_trace

            self.status = "running…"
            kwargs = {"mask": mask} if mask is not None else {}
            self.result = run_trace(self.pipe, values.get("prompt", ""), image=self.image, strength=strength, seed=self.seed,
                                    num_inference_steps=self.num_inference_steps, progress=False, **kwargs)  # fmt: skip
            self.status = ""
        width = self._pixel_width(self.image.shape[1])
        pictures = [
            {"key": "input", "label": "input: brush a mask here" + (" (masked)" if mask is not None else ""),
             "src": _image_src(shown), "brush": True, "width": width, "pixelated": True},
            {"key": "schedule", "label": "where this strength starts", "src": self._src(views.strength_figure(self.pipe.scheduler, self.num_inference_steps, strength))},
        ]  # fmt: skip
        if self.result is not None:
            mode = self.result.mode
            pictures.append({"key": "result", "label": f"{mode}, strength {self.result.strength:g}: “{self.result.prompt}”",
                             "src": _image_src(np.asarray(self.result.final_image, np.float32) / 255.0), "width": width, "pixelated": True})  # fmt: skip
        info = views.strength_start(self.pipe.scheduler, self.num_inference_steps, strength)
        text = (f"strength {strength:g}: noise the input to t = {info['t_start']} and run the last {info['steps_run']} of "
                f"{self.num_inference_steps} steps.")  # fmt: skip
        return pictures, html.escape(text)


def explore_editing(image: Any = None, *, prompt: str = "a blue circle above a red square", strength: float = 0.6,
                    num_inference_steps: int = 10, seed: int = 0, pipe: Any = None,
                    presentation: bool = False) -> EditingExplorer:  # fmt: skip
    """A live editing explorer: a strength slider (start marked on the schedule), a brushed mask, then a run.

    Args:
        image: the input, PIL image or array ``[H, W, 3]`` (default: a shapes-world scene).
        prompt: the edit's prompt. strength: in (0, 1]. num_inference_steps: the full schedule's steps.
        seed: the run's seed. pipe: the pipeline (default: the toy model).
        presentation: start in presentation mode (for a projector: pictures of 512 px or more, large type,
            full width; the widget's "Presentation" button toggles it).

    Returns:
        The widget (``w.result`` is the last run's trace).

    Example:
        >>> import explainer
        >>> w = explainer.explore_editing(strength=0.5)
        >>> w.values = {**w.values, "strokes": [[20, 20], [24, 24]]}  # a brushed mask
        >>> w.values = {**w.values, "run": 1}  # what the run button does
        >>> w.result.mode
        'inpaint'
    """
    return EditingExplorer(image, prompt=prompt, strength=strength, num_inference_steps=num_inference_steps, seed=seed, pipe=pipe,
                           presentation=_check_presentation(presentation))  # fmt: skip
