"""``explore()``: the one-call dashboard of a trace, an anywidget step player with kernel-side panels.

The browser gets every step's x_t, x0 and model-output frames once and swaps them itself as the
slider moves (``player.js``); with a pipeline whose VAE is cheap to run (the toy model) those x_t and
x0 frames are VAE decodes, else linear previews. The kernel computes what needs the data or the
model: token maps for the selected chips, the emergence curve, what-if guidance previews, full VAE
decodes (cached), the open panel (guidance decomposition, guidance sweep, latent trajectory over
seeds) for the current step, and guided re-runs (cached by prompt, negative, seed, steps, scheduler and
guidance). These run on a background thread that keeps only the newest request of each kind; a re-run
that a newer guidance request supersedes stops at its next UNet call. img2img and inpaint traces
(``trace.metadata["mode"]``) also show their input image (with the mask's outline) and their start
on the schedule plot. For a classroom: a prompt / seed / scheduler run box, an overview strip placing
each panel in the pipeline, a presentation mode for projectors, and greyed chips for words the toy
model never saw. "Branch here" forks the run at the current step (new prompt, guidance or seed) or
edits its prompt with prompt-to-prompt; the branch shows under the parent as a second explorer whose
step follows this one's, the fork step marked on both schedules (:mod:`.branching`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import anywidget
import ipywidgets
import numpy as np
import traitlets

from ..export.frames import OVERLAY_ALPHA, colormap_lut, format_sigma, overlay_heatmap
from ..toy.known_words import words_of
from ..tracing import SCHEDULERS, Trace
from ..tracing.attention import no_negative_tokens_message
from ..tracing.guidance import guided_output
from ..tracing.preview_decoder import find_preview_decoder
from ..tracing.previews import _vae_of, decode_steps, linear_preview, vae_decode_is_cheap
from ..views import (
    guidance_decomposition,
    guidance_sweep,
    latent_trajectory,
    schedule_plot,
)
from ..views._common import figure_png
from ..views.guidance import DEFAULT_SWEEP
from ..views.tokens import token_heat
from .branching import BRANCH_MODES, branch_hint, branch_key, lineage, mark_schedule, parse_weights, run_branch
from .panels import (
    LatestWorker,
    RunSuperseded,
    emergence_figure,
    emergence_lines,
    encode,
    encode_map,
    figure_with_markers,
    input_picture,
    map_size,
    parse_token_key,
    stop_when,
    token_key,
    trace_mode,
)

_HERE = Path(__file__).parent
MAP_RANGES = ("step", "all", "range")
#: Frames smaller than this (longest side) are shown scaled up, pixelated.
MIN_DISPLAY = 256
#: The label shown above the frames for each way of making them.
PREVIEW_LABELS = {
    "vae": "x\u2080 / x\u209c frames: full VAE decodes",
    "taesd": "x\u2080 / x\u209c frames: tiny-autoencoder (TAESD) decodes",
    "linear": "x\u2080 / x\u209c frames: linear latent\u2192RGB previews (approximate colours)",
}
_PIPELINES: dict[str, Any] = {}
#: The explorer's on-demand panels (``""``: none open).
PANELS = ("", "guidance", "sweep", "trajectory")
#: Seeds besides the trace's own that the trajectory panel traces (with a pipeline) and overlays.
TRAJECTORY_EXTRA_SEEDS = 3
#: In presentation mode, frames are shown at least this big (longest side, px).
PRESENT_DISPLAY = 512
#: The overview strip: each stage of the pipeline, the explorer panels it makes, a one-line
#: explanation, and its concept page (under ``docs/``).
STAGES: tuple[dict[str, Any], ...] = (
    {"key": "text", "name": "text \u2192 tokens", "panels": ["chips"], "page": "concepts/text_encoder.md",
     "line": "the tokenizer cuts the prompt into tokens (the chips below)"},
    {"key": "clip", "name": "CLIP text encoder", "panels": ["chips"], "page": "concepts/text_encoder.md",
     "line": "one vector per token; the UNet reads them through cross-attention (the token maps)"},
    {"key": "unet", "name": "UNet + scheduler loop", "panels": ["xt", "eps", "x0", "schedule", "emergence", "guidance"],
     "page": "concepts/unet.md",
     "line": "each step the UNet predicts the noise in x\u209c (model output), the scheduler removes some; "
             "x\u0302\u2080 is its guess of the end"},
    {"key": "vae", "name": "VAE decoder", "panels": ["final", "detail"], "page": "concepts/vae.md",
     "line": "turns the last latent into pixels (the final image)"},
)


def default_pipeline() -> Any:
    """The bundled toy pipeline, loaded once per process."""
    if "toy" not in _PIPELINES:
        from ..models import load_pipeline

        pipe = load_pipeline("toy")
        pipe.set_progress_bar_config(disable=True)
        _PIPELINES["toy"] = pipe
    return _PIPELINES["toy"]


def run_key(trace: Trace) -> tuple:
    """Cache key of a run: (prompt, negative, seed, steps, scheduler, mode, strength, guidance); within
    one explorer an img2img / inpaint run always has the input image and mask of its first trace."""
    meta = trace.metadata
    sched = meta.get("scheduler", {}) if isinstance(meta.get("scheduler"), dict) else {}
    return (
        trace.prompt,
        trace.negative_prompt or "",
        meta.get("seed"),
        meta.get("num_inference_steps"),
        sched.get("name") or sched.get("class"),
        meta.get("mode", "txt2img"),
        meta.get("strength"),
        round(float(trace.cfg_scale), 4),  # the branch-mixing scale (FLUX: true_cfg_scale)
    )


def readable(err: BaseException) -> str:
    """A one-paragraph message for the widget: the error's type and its first lines, no traceback."""
    text = str(err).strip() or repr(err)
    lines = text.splitlines()
    return f"{type(err).__name__}: " + "\n".join(lines[:6]) + ("\n…" if len(lines) > 6 else "")


class Explorer(anywidget.AnyWidget):
    """Interactive explorer of one trace (display it in a notebook cell).

    Attributes (synced with the browser):
        step: the step shown. selected: chip keys (``"cond:3"``, ``"uncond:1"``) of the mapped tokens.
        map_range: ``"step"`` (map of the current step), ``"all"`` or ``"range"`` (``range_lo..range_hi``).
        layer_filter: ``"all"``, ``"daam"`` (all but the UNet mid-block), a resolution such as ``"16x16"``,
            or a layer name.
        opacity: overlay opacity in [0, 1]. guidance_live: the guidance slider while it moves (what-if
        preview); guidance: its value on release (re-run). decode_request: increment to VAE-decode the step.
        panel: the open on-demand panel: ``"guidance"`` (decomposition of the step), ``"sweep"`` (what-if
        grid over guidance scales), ``"trajectory"`` (PCA of the latent path, several seeds), or ``""``;
        panel_png / panel_label: its picture of the current step.
        preview_method: ``"vae"`` when the x0 / x_t frames (and what-if previews) are VAE decodes (a
        pipeline is given and decoding every step is cheap), else ``"taesd"`` when the family's tiny
        autoencoder is loaded or cached (:func:`explainer.load_preview_decoder`) and cheap enough, else
        ``"linear"``; preview_label says so.
        emergence_labels: the emergence curve's lines (``"red (prompt)"``, ``"blurry (negative)"``).
        mode: ``trace.metadata["mode"]``; for ``"img2img"`` / ``"inpaint"``, input_frame (PNG, the mask
        outlined) and start_label (``"img2img start, t = 501, strength 0.5"``, also marked on the schedule).

        unknown_words / vocab_note: words of the prompts the toy never saw (``trace.metadata["unknown_words"]``);
        their chips are greyed (``words[i]["known"]`` is ``False``).
        prompt_text, seed_value, scheduler_name (``""``: the pipeline's own; scheduler_options lists them):
        the run box; ``run_request += 1`` runs them (cached like guidance re-runs); can_run says whether a
        pipeline is at hand (the one given, or the bundled toy for a toy trace).
        stages: the overview strip (:data:`STAGES`); docs_url: base URL of the built docs for its links.
        presentation: frames at present_size (>= :data:`PRESENT_DISPLAY` px), large type, full width.

        branch_mode (one of :data:`~.branching.BRANCH_MODES`: ``"fork"`` or a prompt-to-prompt mode),
        branch_prompt, branch_guidance, branch_seed (``-1``: the parent's noise), branch_weights
        (``"red=2"``, reweight only): the "branch here" control; ``branch_request += 1`` runs it at the
        current step (see :meth:`branch_here`). can_branch / branch_hint: whether it can run, and if not
        why (greyed, naming how to get a pipeline). branch: the branch's :class:`Explorer`, shown under
        this one, its step linked; mark_kind / mark_step / mark_label: the fork step (or the edit's
        injected steps) marked on the slider and the schedule. compact: the branch pane's look (no run
        box, overview or guidance row).

    ``cancelled`` lists the re-runs a newer guidance request stopped early (not cached).
    """

    _esm = _HERE / "player.js"
    _css = _HERE / "player.css"

    frames = traitlets.Dict().tag(sync=True)  # {"xt"|"x0"|"eps": [bytes per step]}
    final = traitlets.Bytes(b"").tag(sync=True)
    image_format = traitlets.Unicode("jpeg").tag(sync=True)
    display_size = traitlets.List([MIN_DISPLAY, MIN_DISPLAY]).tag(sync=True)
    pixelated = traitlets.Bool(True).tag(sync=True)
    fps = traitlets.Float(8.0).tag(sync=True)
    steps_info = traitlets.List().tag(sync=True)
    step = traitlets.Int(0).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    preview_method = traitlets.Unicode("linear").tag(sync=True)  # how the x0 / x_t frames were made
    preview_label = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    schedule_png = traitlets.Bytes(b"").tag(sync=True)
    schedule_x = traitlets.List().tag(sync=True)
    schedule_box = traitlets.List().tag(sync=True)
    emergence_png = traitlets.Bytes(b"").tag(sync=True)
    emergence_x = traitlets.List().tag(sync=True)
    emergence_box = traitlets.List().tag(sync=True)
    emergence_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)  # one per line, "red (prompt)"

    mode = traitlets.Unicode("txt2img").tag(sync=True)  # trace.metadata["mode"]
    input_frame = traitlets.Bytes(b"").tag(sync=True)  # img2img / inpaint input image (mask outlined), PNG
    input_frame_label = traitlets.Unicode("").tag(sync=True)
    start_label = traitlets.Unicode("").tag(sync=True)  # where an img2img / inpaint run started

    words = traitlets.List().tag(sync=True)
    selected = traitlets.List(traitlets.Unicode()).tag(sync=True)
    map_range = traitlets.Unicode("step").tag(sync=True)
    range_lo = traitlets.Int(0).tag(sync=True)
    range_hi = traitlets.Int(0).tag(sync=True)
    layer_options = traitlets.List(["all"]).tag(sync=True)
    layer_filter = traitlets.Unicode("all").tag(sync=True)
    opacity = traitlets.Float(OVERLAY_ALPHA).tag(sync=True)
    colormap = traitlets.List().tag(sync=True)
    overlay_maps = traitlets.List().tag(sync=True)  # [bytes]: one per step ("step") or one ("all"/"range")

    guidance_enabled = traitlets.Bool(False).tag(sync=True)
    guidance_recorded = traitlets.Float(0.0).tag(sync=True)
    guidance_live = traitlets.Float(0.0).tag(sync=True)
    guidance = traitlets.Float(0.0).tag(sync=True)
    whatif = traitlets.Bytes(b"").tag(sync=True)
    whatif_label = traitlets.Unicode("").tag(sync=True)
    decode_request = traitlets.Int(0).tag(sync=True)
    detail = traitlets.Bytes(b"").tag(sync=True)
    detail_label = traitlets.Unicode("").tag(sync=True)

    panel = traitlets.Unicode("").tag(sync=True)  # the open on-demand panel, one of PANELS
    unknown_words = traitlets.List(traitlets.Unicode()).tag(sync=True)  # words the toy never saw (greyed chips)
    vocab_note = traitlets.Unicode("").tag(sync=True)

    # a new run from the controls: prompt, seed and scheduler, sent with run_request += 1
    prompt_text = traitlets.Unicode("").tag(sync=True)
    seed_value = traitlets.Int(0).tag(sync=True)
    scheduler_name = traitlets.Unicode("").tag(sync=True)  # "" = the pipeline's own
    scheduler_options = traitlets.List().tag(sync=True)  # [[value, label]]
    run_request = traitlets.Int(0).tag(sync=True)
    can_run = traitlets.Bool(False).tag(sync=True)

    stages = traitlets.List().tag(sync=True)  # the overview strip (STAGES)
    docs_url = traitlets.Unicode("").tag(sync=True)  # base URL of the built docs ("" = name the page files)
    presentation = traitlets.Bool(False).tag(sync=True)
    present_size = traitlets.List([PRESENT_DISPLAY, PRESENT_DISPLAY]).tag(sync=True)
    panel_png = traitlets.Bytes(b"").tag(sync=True)
    panel_label = traitlets.Unicode("").tag(sync=True)

    # "branch here": a fork at the current step, or a prompt-to-prompt edit, sent with branch_request += 1
    branch_mode = traitlets.Unicode("fork").tag(sync=True)  # one of BRANCH_MODES
    branch_prompt = traitlets.Unicode("").tag(sync=True)
    branch_guidance = traitlets.Float(0.0).tag(sync=True)
    branch_seed = traitlets.Int(-1).tag(sync=True)  # -1: the parent's noise
    branch_weights = traitlets.Unicode("").tag(sync=True)  # "red=2, blue=0.5" (reweight)
    branch_request = traitlets.Int(0).tag(sync=True)
    can_branch = traitlets.Bool(False).tag(sync=True)
    branch_hint = traitlets.Unicode("").tag(sync=True)  # why the control is greyed ("" when it is not)
    branch = traitlets.Instance(ipywidgets.Widget, allow_none=True).tag(sync=True, **ipywidgets.widget_serialization)
    mark_kind = traitlets.Unicode("").tag(sync=True)  # "fork", "edit" or ""
    mark_step = traitlets.Int(-1).tag(sync=True)
    mark_label = traitlets.Unicode("").tag(sync=True)
    compact = traitlets.Bool(False).tag(sync=True)  # the branch pane of another explorer

    def __init__(
        self,
        trace: Trace | None = None,
        *,
        pipe: Any = None,
        trace_kwargs: dict[str, Any] | None = None,
        image_format: str = "jpeg",
        quality: int = 85,
        error: str = "",
        presentation: bool = False,
        docs_url: str = "",
        compact: bool = False,
    ) -> None:
        """
        Args:
            trace: the trace to show (``None`` shows only ``error``).
            pipe: the pipeline, for VAE decodes and guided re-runs (without it those controls say so).
            trace_kwargs: arguments for re-runs (``record``, ``height``...), besides the recorded ones.
            image_format: ``"jpeg"``, ``"webp"`` or ``"png"`` frames. quality: JPEG/WebP quality.
            error: a message to show (e.g. why the trace could not be made).
            presentation: start in presentation mode (frames >= 512 px, large type, full width).
            docs_url: base URL of the built docs, for the overview strip's links to the concept pages
                (e.g. ``"http://127.0.0.1:8000/"`` under ``mkdocs serve``); ``""`` names the page files.
            compact: the look of a branch pane (frames, slider and plots only).
        """
        if not isinstance(presentation, bool):
            raise TypeError(f"presentation must be True or False, not {presentation!r}.")
        if not isinstance(docs_url, str):
            raise TypeError(f"docs_url must be a string (a URL or ''), not {type(docs_url).__name__}.")
        options = [["", "pipeline's own"]] + [[name, name] for name in SCHEDULERS]
        super().__init__(image_format=image_format, colormap=colormap_lut().ravel().tolist(), error=error,
                         presentation=presentation, docs_url=docs_url, scheduler_options=options,
                         stages=[dict(stage) for stage in STAGES], compact=bool(compact))  # fmt: skip
        self.pipe = pipe
        self.trace_kwargs = dict(trace_kwargs or {})
        self.quality = int(quality)
        self.trace: Trace | None = None
        self.runs: dict[tuple, Trace] = {}
        self.seed_runs: dict[tuple, Trace] = {}  # trajectory-only runs (no attention), by run_key
        self.run_count = 0
        self.cache_hits = 0
        #: Re-runs stopped early because a newer guidance request superseded them:
        #: ``{"guidance": g, "steps_done": n, "steps": total}`` each.
        self.cancelled: list[dict[str, Any]] = []
        self._generation = 0
        #: Branches made here, by :func:`~.branching.branch_key`; the last prompt-to-prompt result.
        self.branches: dict[tuple, Trace] = {}
        self.edit_result: Any = None
        self._links: tuple = ()
        self._worker = LatestWorker(self._show_error)
        self._maps_size = (1, 1)
        if trace is not None:
            self.set_trace(trace)

    # ------------------------------------------------------------------ loading a trace

    def set_trace(self, trace: Trace) -> None:
        """Show ``trace``: render and push its frames (once), plots and chips."""
        if not isinstance(trace, Trace):
            raise TypeError(f"trace must be an explainer.Trace, not {type(trace).__name__}.")
        if trace.latent_rgb is None:
            raise ValueError("this trace has no latent->RGB factors for previews; set trace.latent_rgb first.")
        self.trace = trace
        self.runs.setdefault(run_key(trace), trace)
        fmt, q = self.image_format, self.quality
        size = (trace.width, trace.height)
        mode = trace_mode(trace)
        method = self.choose_preview_method(trace)
        frames: dict[str, list[bytes]] = {"xt": [], "x0": [], "eps": []}
        for kind in ("xt", "x0"):
            if method in ("vae", "taesd"):
                decoder = self.pipe if method == "vae" else find_preview_decoder(trace.family)
                images = decode_steps(trace, decoder, kind, steps=range(trace.num_steps))
            else:
                images = [trace.preview(s, kind=kind) for s in range(trace.num_steps)]
            frames[kind] = [encode(image, fmt, q) for image in images]
        for s in range(trace.num_steps):
            frames["eps"].append(encode(linear_preview(self._model_output(s), trace.latent_rgb, size), fmt, q))
        final = trace.final_image if trace.final_image is not None else trace.preview(trace.num_steps, kind="xt")
        factor = max(1, -(-MIN_DISPLAY // max(size)))
        present = max(1, -(-PRESENT_DISPLAY // max(size)))
        unknown = self._unknown(trace)
        start = self._start_label(trace, mode)
        if self.branch is not None:
            self.close_branch()  # a branch belongs to the trace it was made from
        mark = lineage(None, trace)
        png, xs, box = self._schedule(trace, start, mark)
        picture = input_picture(trace) if mode != "txt2img" else None
        info = [
            {"t": f"{float(t):g}", "sigma": format_sigma(sig), "alpha": f"{float(a):.3g}"}
            for t, sig, a in zip(trace.timesteps, trace.sigmas, trace.alphas_cumprod, strict=True)
        ]
        self._maps_size = map_size(trace) if trace.attention_layers else size
        options = ["all"]
        if trace.attention_mode not in ("none", "per_step"):
            sizes = sorted({(la.height, la.width) for la in trace.attention_layers}, reverse=True)
            if any(la.name.startswith("mid_block.") for la in trace.attention_layers):
                options.append("daam")  # DAAM's convention: every layer but the mid-block's
            options += [f"{h}x{w}" for h, w in sizes]
            options += [la.name for la in trace.attention_layers]
        cfg = trace.has_uncond
        with self.hold_sync():
            self.error = ""
            self.preview_method = method
            self.preview_label = PREVIEW_LABELS[method]
            self.frames = frames
            self.final = encode(final, fmt, q)
            self.display_size = [size[0] * factor, size[1] * factor]
            self.present_size = [size[0] * present, size[1] * present]
            self.unknown_words = [w for words in unknown.values() for w in words]
            self.vocab_note = self._vocab_note(unknown)
            self.prompt_text = trace.prompt
            self.seed_value = int(trace.metadata.get("seed") or 0)
            sched = trace.metadata.get("scheduler", {}) if isinstance(trace.metadata.get("scheduler"), dict) else {}
            self.scheduler_name = sched.get("name") or ""
            self.can_run = self.run_pipe(trace) is not None
            self.pixelated = factor > 1
            self.steps_info = info
            self.title = html.unescape(f'"{trace.prompt}"  seed {trace.metadata.get("seed")}  g {trace.guidance_scale:g}')
            self.schedule_png, self.schedule_x, self.schedule_box = png, xs, box
            self.mode, self.start_label = mode, start
            self.input_frame = encode(picture, "png") if picture is not None else b""  # lossless, sent once
            self.input_frame_label = self._input_label(trace, mode) if picture is not None else ""
            self.words = self._chip_groups(trace)
            self.layer_options = options
            self.layer_filter = "all"
            self.range_lo, self.range_hi = 0, trace.num_steps - 1
            self.selected = [s for s in self.selected if self._valid_key(s)]
            self.guidance_enabled = cfg
            self.guidance_recorded = trace.cfg_scale  # FLUX true CFG: true_cfg_scale mixes the branches
            self.guidance_live = trace.cfg_scale
            self.guidance = trace.cfg_scale
            self.whatif, self.whatif_label = b"", ""
            self.detail, self.detail_label = b"", ""
            self.panel_png, self.panel_label = b"", ""
            self.step = min(self.step, trace.num_steps - 1)
            self.mark_kind, self.mark_step, self.mark_label = mark["kind"], mark["step"], mark["label"]
            self.branch_prompt = trace.prompt
            self.branch_guidance = float(trace.guidance_scale)
            self.branch_seed = -1
            self.branch_hint = branch_hint(trace, self.can_run)
            self.can_branch = not self.branch_hint
        self._update_maps()
        if self.panel:
            self._worker.submit("panel", self._render_panel)

    def _schedule(self, trace: Trace, start: str, mark: dict[str, Any]) -> tuple[bytes, list[float], list[float]]:
        """The schedule plot with an img2img start and a fork step (or an edit's injected steps) marked."""
        fig = schedule_plot(trace)
        if start:
            ax = fig.axes[0]
            ax.axvline(0, color="#b04040", lw=1.2, ls="--")
            ax.annotate(start, xy=(0, 1), xycoords=("data", "axes fraction"), xytext=(3, -3),
                        textcoords="offset points", ha="left", va="top", fontsize=7, color="#b04040")  # fmt: skip
        mark_schedule(fig, mark)
        return figure_with_markers(fig, trace.num_steps)

    # ------------------------------------------------------------------ branch here

    def branch_here(
        self,
        *,
        step: int | None = None,
        prompt: str | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        mode: str = "fork",
        weights: dict[str, float] | str | None = None,
    ) -> Trace:
        """Branch the shown run and show the branch under it, steps linked (what the control does).

        Args:
            step: the fork step (default: the step shown); steps before it stay the parent's.
            prompt: the branch's prompt (an edit's target prompt); ``None`` keeps the parent's.
            guidance_scale, seed: new settings from ``step`` on (forks only; ``None`` keeps the parent's).
            mode: ``"fork"``, or a prompt-to-prompt edit: ``"replace"``, ``"refine"`` or ``"reweight"``.
            weights: word -> factor for ``"reweight"`` (or text like ``"red=2"``).

        Returns:
            The branch's trace (also ``self.branch.trace``); an edit's result is in ``self.edit_result``.

        Raises:
            ValueError: no pipeline (the message says how to give one), or a bad setting.
        """
        tr = self.trace
        hint = branch_hint(tr, self.run_pipe(tr) is not None)
        if hint:
            raise ValueError(f"cannot branch: {hint}.")
        if mode not in BRANCH_MODES:
            raise ValueError(f"mode={mode!r} is not allowed; use one of {list(BRANCH_MODES)}.")
        step = self.step if step is None else step
        prompt = tr.prompt if prompt is None else prompt
        weights = parse_weights(weights) if isinstance(weights, str) else dict(weights or {})
        if guidance_scale is not None and abs(float(guidance_scale) - tr.guidance_scale) < 1e-9:
            guidance_scale = None  # unchanged: keep the parent's (and its exact value)
        key = branch_key(tr, mode, step, prompt, guidance_scale, seed, weights)
        child = self.branches.get(key)
        if child is None:
            pipe = self.run_pipe(tr)
            if isinstance(pipe, str):  # "toy": the trace was made with the bundled model
                pipe = self.pipe = default_pipeline()
            what = f"forking at step {step + 1}/{tr.num_steps}" if mode == "fork" else f"prompt-to-prompt ({mode})"
            self.status = f"{what}: {prompt!r}\u2026"
            try:
                child, result = run_branch(tr, pipe, mode=mode, step=step, prompt=prompt, guidance_scale=guidance_scale,
                                           seed=seed, weights=weights)  # fmt: skip
            finally:
                self.status = ""
            if result is not None:
                self.edit_result = result
            self.branches[key] = child
        if self.trace is tr:  # not superseded by another trace meanwhile
            self.show_branch(child)
        return child

    def show_branch(self, child: Trace) -> Explorer:
        """Show ``child`` (a fork or an edit of the shown trace) under this explorer, steps linked.

        Returns:
            The branch's :class:`Explorer` (``self.branch``).
        """
        from .compare import link_steps

        tr = self.trace
        if child.num_steps != tr.num_steps:
            raise ValueError(f"a branch needs the parent's {tr.num_steps} steps, this one has {child.num_steps}.")
        self.close_branch()
        pane = Explorer(child, pipe=self.pipe, image_format=self.image_format, quality=self.quality, compact=True)
        pane.step = self.step
        with self.hold_sync():
            self._links = link_steps(self, pane)
            self.branch = pane
            self.mark_lineage(child)
        return pane

    def mark_lineage(self, child: Trace) -> None:
        """Mark on this explorer's slider and schedule where ``child`` (its fork or edit) leaves the shown trace."""
        tr = self.trace
        mark = lineage(tr, child)
        with self.hold_sync():
            self.mark_kind, self.mark_step, self.mark_label = mark["kind"], mark["step"], mark["label"]
            self.schedule_png, self.schedule_x, self.schedule_box = self._schedule(tr, self._start_label(tr, trace_mode(tr)), mark)

    def close(self) -> None:
        """Close the widget and its branch pane."""
        if getattr(self, "_links", None) is not None:
            self.close_branch()
        super().close()

    def close_branch(self) -> None:
        """Remove the branch pane (its trace stays in :attr:`branches`)."""
        pane, links = self.branch, self._links
        self._links = ()
        for link in links:
            link.unlink()
        self.branch = None
        if pane is not None:
            pane.close()

    @traitlets.observe("branch_request")
    def _on_branch_request(self, change: dict[str, Any]) -> None:
        if self.trace is None:
            return
        mode, prompt, seed = self.branch_mode, self.branch_prompt, int(self.branch_seed)
        guidance = float(self.branch_guidance) if mode == "fork" else None
        weights = self.branch_weights if mode == "reweight" else ""
        step = int(self.step)

        def job() -> None:
            self.branch_here(step=step, prompt=prompt, guidance_scale=guidance, seed=None if seed < 0 else seed,
                             mode=mode, weights=weights)  # fmt: skip

        self._worker.submit("branch", job)

    @staticmethod
    def _start_label(trace: Trace, mode: str) -> str:
        """``"start t=601, strength 0.6"`` for img2img / inpaint traces (their first recorded step), else ``""``."""
        if mode == "txt2img":
            return ""
        strength = trace.metadata.get("strength")
        text = f"{mode} start, t = {float(trace.timesteps[0]):g}"
        return text + (f", strength {float(strength):g}" if strength is not None else "")

    @staticmethod
    def _input_label(trace: Trace, mode: str) -> str:
        if mode == "inpaint" and trace.mask is not None:
            return "input image (outline: the repainted mask)"
        return "input image"

    def choose_preview_method(self, trace: Trace) -> str:
        """``"vae"`` when there is a pipeline and decoding every step of ``trace`` is cheap
        (:func:`~explainer.tracing.previews.vae_decode_is_cheap`), else ``"linear"``."""
        if self.pipe is not None and vae_decode_is_cheap(self.pipe, trace):
            return "vae"
        tiny = find_preview_decoder(trace.family)  # the middle tier: a tiny autoencoder, if loaded or cached
        if tiny is not None and vae_decode_is_cheap(tiny, trace):
            return "taesd"
        return "linear"

    def _model_output(self, step: int) -> np.ndarray:
        tr = self.trace
        if tr.eps_uncond is None:
            return tr.eps_cond[step].astype(np.float32)
        return guided_output(tr.eps_uncond[step], tr.eps_cond[step], tr.cfg_scale)

    @staticmethod
    def _chip_groups(trace: Trace) -> list[dict[str, Any]]:
        if trace.attention_mode == "none":
            return []
        groups = []
        for branch, words, tokens in (("cond", trace.words, trace.tokens), ("uncond", trace.negative_words, trace.negative_tokens)):
            if branch == "uncond" and not trace.has_uncond:
                continue
            unknown = set(Explorer._unknown(trace)["prompt" if branch == "cond" else "negative_prompt"])
            for w in words:
                toks = [{"key": token_key(branch, i), "text": tokens[i].removesuffix("</w>")} for i in w.token_indices]
                known = not unknown.intersection(words_of(w.text))
                groups.append({"text": w.text, "branch": branch, "tokens": toks, "known": known})
        return groups

    @staticmethod
    def _unknown(trace: Trace) -> dict[str, list[str]]:
        """``trace.metadata["unknown_words"]`` (recorded when the toy is the model), else no words."""
        unknown = trace.metadata.get("unknown_words")
        if not isinstance(unknown, dict):
            return {"prompt": [], "negative_prompt": []}
        return {k: [str(w) for w in unknown.get(k) or []] for k in ("prompt", "negative_prompt")}

    @staticmethod
    def _vocab_note(unknown: dict[str, list[str]]) -> str:
        words = [w for ws in unknown.values() for w in ws]
        if not words:
            return ""
        return (f"the toy model never saw {', '.join(repr(w) for w in words)} (greyed chips); it still draws "
                "something from the words it knows: see explainer.toy.vocabulary().")  # fmt: skip

    def run_pipe(self, trace: Trace | None = None) -> Any:
        """The pipeline new runs use: the one given, else the bundled toy when ``trace`` was made with it
        (loaded on first use), else ``None``."""
        if self.pipe is not None:
            return self.pipe
        from ..export.html import model_name

        trace = trace if trace is not None else self.trace
        return "toy" if trace is not None and model_name(trace) == "toy" else None

    def _valid_key(self, key: str) -> bool:
        try:
            branch, index = parse_token_key(key)
        except ValueError:
            return False
        return self.trace is not None and index < self.trace.recorded_token_count(branch) and (branch == "cond" or self.trace.has_uncond)

    # ------------------------------------------------------------------ kernel-side panels

    def _map_args(self) -> tuple[Any, Any]:
        layers = None if self.layer_filter == "all" else self.layer_filter
        if layers is not None and layers in {la.name for la in self.trace.attention_layers}:
            layers = [layers]  # one layer by name; otherwise a resolution such as "16x16"
        if self.map_range == "all":
            return None, layers
        if self.map_range == "range":
            lo, hi = sorted((self.range_lo, self.range_hi))
            lo, hi = max(0, lo), min(self.trace.num_steps - 1, hi)
            return slice(lo, hi + 1), layers
        return "step", layers

    def _selected_by_branch(self) -> dict[str, list[int]]:
        chosen: dict[str, list[int]] = {}
        for key in self.selected:
            branch, index = parse_token_key(key)
            chosen.setdefault(branch, []).append(index)
        return chosen

    def heat(self, step: int | slice | None) -> np.ndarray | None:
        """``[H, W]`` map of the selected tokens (both branches averaged) over ``step``, or ``None``."""
        chosen = self._selected_by_branch()
        if not chosen or self.trace is None:
            return None
        _, layers = self._map_args()
        maps = [token_heat(self.trace, idx, step, layers, branch) for branch, idx in chosen.items()]
        total = np.mean(maps, axis=0)
        peak = float(total.max())
        return total / peak if peak > 0 else total

    def _update_maps(self) -> None:
        """Recompute the overlay maps and the emergence curve for the current selection."""
        tr = self.trace
        if tr is None:
            return
        if not self.selected:
            with self.hold_sync():
                self.overlay_maps = []
                self.emergence_png, self.emergence_x, self.emergence_box = b"", [], []
                self.emergence_labels = []
            return
        steps, layers = self._map_args()
        if steps == "step":
            maps = [encode_map(self.heat(s), self._maps_size) for s in range(tr.num_steps)]
        else:
            maps = [encode_map(self.heat(steps), self._maps_size)]
        chosen = self._selected_by_branch()  # the curve shows the prompt's and the negative prompt's tokens
        png, xs, box = figure_with_markers(emergence_figure(tr, chosen, layers), tr.num_steps)
        with self.hold_sync():
            self.overlay_maps = maps
            self.emergence_png, self.emergence_x, self.emergence_box = png, xs, box
            self.emergence_labels = [label for label, _, _ in emergence_lines(tr, chosen)]
        if self.detail:
            self._render_detail()

    @traitlets.observe("selected", "map_range", "range_lo", "range_hi", "layer_filter")
    def _on_selection(self, change: dict[str, Any]) -> None:
        if self.trace is None:
            return
        bad = [k for k in self.selected if not self._valid_key(k)]
        if bad:
            zeros = [k for k in bad if k.startswith("uncond:") and self.trace.has_uncond
                     and not self.trace.recorded_token_count("uncond")]  # fmt: skip
            self.error = (f"selected has {zeros}: {no_negative_tokens_message(self.trace)}" if zeros else
                          f"selected has unknown token keys {bad}; keys look like 'cond:3' (see the chips).")  # fmt: skip
            return
        self._worker.submit("maps", self._update_maps)

    @traitlets.observe("step")
    def _on_step(self, change: dict[str, Any]) -> None:
        if self.trace is None:
            return
        if not 0 <= self.step < self.trace.num_steps:
            self.error = f"step={self.step} is out of range; this trace has steps 0..{self.trace.num_steps - 1}."
            return
        if (self.whatif or self.guidance_live != self.guidance_recorded) and self.trace.has_uncond:
            self._worker.submit("whatif", self._render_whatif)  # a shown what-if follows the step
        if self.detail:
            self._worker.submit("detail", self._render_detail)
        if self.panel:
            self._worker.submit("panel", self._render_panel)

    @traitlets.observe("guidance_live")
    def _on_guidance_live(self, change: dict[str, Any]) -> None:
        if self.trace is not None and self.trace.has_uncond:
            self._worker.submit("whatif", self._render_whatif)

    def _render_whatif(self) -> None:
        tr, step, g = self.trace, self.step, float(self.guidance_live)
        image = tr.what_if(step, g, method=self.preview_method, pipe=self.pipe)
        with self.hold_sync():
            self.whatif = encode(image, self.image_format, self.quality)
            self.whatif_label = f"what-if x\u2080 at g = {g:g}, step {step + 1} (from the recorded \u03b5, no re-run)"

    @traitlets.observe("decode_request")
    def _on_decode(self, change: dict[str, Any]) -> None:
        if self.trace is not None:
            self._worker.submit("detail", self._render_detail)

    def _render_detail(self, method: str | None = None) -> None:
        """The current step's x0 rendered in the kernel: VAE decode (cached) with a pipeline, else the
        linear preview at full size; the selected tokens' map overlaid."""
        tr, step = self.trace, self.step
        method = method or ("vae" if self.pipe is not None else "linear")
        image = tr.preview(step, kind="x0", method=method, pipe=self.pipe)
        steps, _ = self._map_args()
        heat = self.heat(step if steps == "step" else steps)
        if heat is not None:
            image = overlay_heatmap(image, heat, float(self.opacity))
        label = "VAE decode" if method == "vae" else "linear preview (no pipeline for a VAE decode)"
        with self.hold_sync():
            self.detail = encode(image, self.image_format, self.quality)
            self.detail_label = f"x\u2080 of step {step + 1}: {label}" + (" + token map" if heat is not None else "")

    @traitlets.observe("panel")
    def _on_panel(self, change: dict[str, Any]) -> None:
        if self.panel not in PANELS:
            self.error = f"panel={self.panel!r} is not allowed; use one of {list(PANELS)}."
            return
        if not self.panel:
            self.panel_png, self.panel_label = b"", ""
        elif self.trace is not None:
            self._worker.submit("panel", self._render_panel)

    def _render_panel(self) -> None:
        """Draw the open panel for the current step (matplotlib figure → PNG)."""
        tr, step, name = self.trace, self.step, self.panel
        pipe = self.pipe if self.preview_method == "vae" else None
        how = {"vae": "VAE decodes", "taesd": "tiny-autoencoder decodes"}.get(self.preview_method, "linear previews")
        if name in ("guidance", "sweep") and not tr.has_uncond:
            png, label = b"", f"{name}: this trace has no unconditional branch (guidance_scale {tr.guidance_scale:g})."
        elif name == "guidance":
            png = figure_png(guidance_decomposition(tr, step, method=self.preview_method, pipe=pipe))
            label = f"guidance decomposition of step {step + 1}: x\u2080 uncond / cond / guided and |\u03b5_cond \u2212 \u03b5_uncond| ({how})"
        elif name == "sweep":
            png = figure_png(guidance_sweep(tr, step, DEFAULT_SWEEP, method=self.preview_method, pipe=pipe))
            label = f"guidance sweep of step {step + 1}: what-if x\u2080 from the recorded \u03b5 ({how})"
        elif name == "trajectory":
            traces = [tr, *self.seed_traces(tr)]
            labels = [f"seed {t.metadata.get('seed')}" for t in traces]
            png = figure_png(latent_trajectory(traces, step, labels=labels))
            label = f"latent trajectory (PCA), {len(traces)} seed(s), step {step + 1} circled"
            if self.pipe is None:
                label += "; other seeds need the pipeline"
        else:
            return
        if self.trace is not tr or self.panel != name:
            return  # superseded while drawing
        with self.hold_sync():
            self.panel_png, self.panel_label = png, label

    def seed_traces(self, trace: Trace, count: int = TRAJECTORY_EXTRA_SEEDS) -> list[Trace]:
        """``trace`` re-run (without attention) at the next ``count`` seeds, cached; ``[]`` without a pipeline."""
        if self.pipe is None:
            return []
        from ..tracing import trace as run_trace

        seed = int(trace.metadata.get("seed") or 0)
        results = []
        for other in range(seed + 1, seed + 1 + count):
            key = run_key(trace)[:2] + (other,) + run_key(trace)[3:]
            if key not in self.seed_runs:
                self.status = f"tracing seed {other} for the trajectory…"
                kwargs = {**self._run_kwargs(trace), "record": "none"}
                self.seed_runs[key] = run_trace(self.pipe, trace.prompt, negative_prompt=trace.negative_prompt,
                                                num_inference_steps=int(trace.metadata["num_inference_steps"]),
                                                guidance_scale=trace.guidance_scale, seed=other, progress=False,
                                                **kwargs)  # fmt: skip
            results.append(self.seed_runs[key])
        self.status = ""
        return results

    def _run_kwargs(self, trace: Trace) -> dict[str, Any]:
        """Keyword arguments re-creating ``trace``'s run (record mode, scheduler, size) besides prompt and seed."""
        sched = trace.metadata.get("scheduler", {})
        kwargs = {"record": trace.attention_mode if trace.attention_mode != "none" else "none", **self.trace_kwargs}
        if trace_mode(trace) != "txt2img":  # the same edit: input image, mask and strength
            kwargs.update(image=trace.input_image, mask=trace.mask, strength=trace.metadata.get("strength"))
        for name, value in trace.metadata.get("options", {}).items():  # family options (FLUX: max_sequence_length)
            kwargs.setdefault(name, value)
        kwargs.setdefault("scheduler", sched.get("name"))
        kwargs.setdefault("height", trace.height)
        kwargs.setdefault("width", trace.width)
        return kwargs

    @traitlets.observe("guidance")
    def _on_guidance(self, change: dict[str, Any]) -> None:
        if self.trace is None or abs(change["new"] - self.trace.cfg_scale) < 1e-9:
            return
        self._generation += 1
        generation, g = self._generation, float(change["new"])
        self._worker.submit("rerun", lambda: self._rerun(g, generation))

    @traitlets.observe("run_request")
    def _on_run_request(self, change: dict[str, Any]) -> None:
        if self.trace is None:
            return
        prompt, seed, scheduler = self.prompt_text, int(self.seed_value), self.scheduler_name
        if scheduler and scheduler not in SCHEDULERS:
            self.error = f"scheduler={scheduler!r} is not allowed; use '' (the pipeline's own) or one of {list(SCHEDULERS)}."
            return
        self._generation += 1
        generation, g = self._generation, float(self.trace.guidance_scale)
        self._worker.submit("rerun", lambda: self._rerun(g, generation, prompt=prompt, seed=seed, scheduler=scheduler))

    def _rerun(self, guidance_scale: float, generation: int, *, prompt: str | None = None, seed: int | None = None,
               scheduler: str | None = None) -> None:  # fmt: skip
        """Run (or take from the cache) the current trace's settings with a new guidance scale and,
        from the prompt box, a new prompt, seed or scheduler (``""``: the pipeline's own)."""
        from ..tracing import trace as run_trace

        tr = self.trace
        prompt = tr.prompt if prompt is None else prompt
        seed = int(tr.metadata["seed"]) if seed is None else int(seed)
        key = list(run_key(tr))
        if scheduler is not None:  # "" (the pipeline's own): its class is known when the trace used it
            named = isinstance(tr.metadata.get("scheduler"), dict) and tr.metadata["scheduler"].get("name")
            key[4] = scheduler or (None if named else key[4])
        key = (prompt, key[1], seed, *key[3:-1], round(guidance_scale, 4))
        result = self.runs.get(key)
        if result is not None:
            self.cache_hits += 1
        else:
            pipe = self.run_pipe(tr)
            if pipe is None:
                raise ValueError("a new run (guidance, prompt, seed or scheduler) needs the pipeline: "
                                 "explore(trace, pipe=pipe).")  # fmt: skip
            if isinstance(pipe, str):  # "toy": the trace was made with the bundled model
                pipe = self.pipe = default_pipeline()
            meta = tr.metadata
            if scheduler is not None:  # the choice sticks for later guidance re-runs
                self.trace_kwargs["scheduler"] = scheduler or None
            kwargs = self._run_kwargs(tr)
            scales = {"guidance_scale": guidance_scale}
            if "cfg_scale" in meta:  # FLUX true CFG: the slider is true_cfg_scale; guidance_scale stays the embedding
                scales = {"guidance_scale": tr.guidance_scale, "true_cfg_scale": guidance_scale}
                kwargs.pop("true_cfg_scale", None)
            same = (prompt, seed, scheduler) == (tr.prompt, int(meta["seed"]), None)
            self.status = f"re-running at guidance {guidance_scale:g}…" if same else f"running {prompt!r}, seed {seed}…"
            try:
                with stop_when(pipe, lambda: generation != self._generation):
                    result = run_trace(pipe, prompt, negative_prompt=tr.negative_prompt,
                                       num_inference_steps=int(meta["num_inference_steps"]),
                                       seed=seed, progress=False, **scales, **kwargs)  # fmt: skip
            except RunSuperseded as err:
                partial = getattr(err, "partial_trace", None)
                self.cancelled.append({"guidance": guidance_scale, "steps_done": partial.num_steps if partial else 0,
                                       "steps": int(meta["num_inference_steps"])})  # fmt: skip
                return  # stopped early, not cached: the newer request runs next
            if result.latent_rgb is None:
                result.latent_rgb = tr.latent_rgb
            self.run_count += 1
            self.runs[key] = result
        if generation != self._generation:
            return  # superseded after its last step: the result stays cached, not shown
        self.status = ""
        self.set_trace(result)
        self.can_run = self.run_pipe(result) is not None
        self.branch_hint = branch_hint(result, self.can_run)
        self.can_branch = not self.branch_hint

    def _show_error(self, err: BaseException) -> None:
        self.status = ""
        self.error = readable(err)

    # ------------------------------------------------------------------ for tests and scripts

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until the kernel-side work queued by the controls has finished."""
        return self._worker.wait_idle(timeout)

    @property
    def worker(self) -> LatestWorker:
        return self._worker


def explore(
    prompt_or_trace: str | Trace,
    *,
    pipe: Any = None,
    presentation: bool = False,
    docs_url: str = "",
    **trace_kwargs: Any,
) -> Explorer:
    """The one-call dashboard: a displayable widget to scrub steps, map tokens and try guidance.

    Its prompt box, seed box and scheduler choice start new runs (on ``pipe``, or the bundled toy for
    a toy trace); "branch here" forks the run at the step shown (or edits its prompt with prompt-to-prompt)
    and shows the branch under it, steps linked (:meth:`Explorer.branch_here`); an overview strip shows
    where each panel sits in the pipeline; the "presentation" button (or ``presentation=True``) shows
    frames of 512 px or more in large type, full width.

    Args:
        prompt_or_trace: a prompt (traced with ``pipe``, or the bundled toy model) or a :class:`Trace`.
        pipe: the pipeline, for tracing a prompt, VAE decodes and guided re-runs.
        presentation: start in presentation mode (for a projector).
        docs_url: base URL of the built docs for the overview's concept-page links (``""``: the page files
            are named instead).
        **trace_kwargs: passed to :func:`explainer.trace` (``num_inference_steps``, ``seed``...).

    Returns:
        An :class:`Explorer`; errors from a bad prompt or arguments show inside it as a message.

    Example:
        >>> import explainer
        >>> w = explainer.explore("a red circle above a blue square", num_inference_steps=8, seed=0)
        >>> w.error, len(w.frames["x0"])  # the bundled toy model; one frame per step
        ('', 8)
        >>> w.step = 7  # what the slider does; display ``w`` in a notebook cell to scrub it
        >>> w.selected = ["cond:3"]  # the chip of "circle": its attention map over x0
        >>> w.wait_idle()
        True

        A walk-through is in ``notebooks/00_quickstart.ipynb``.
    """
    from ..tracing import trace as run_trace

    view = {"presentation": presentation, "docs_url": docs_url}
    if not isinstance(presentation, bool) or not isinstance(docs_url, str):
        try:
            Explorer(**view)
        except TypeError as err:
            return Explorer(error=readable(err))
    if isinstance(prompt_or_trace, Trace):
        try:
            if pipe is not None:
                _vae_of(pipe)  # refuse a model name or anything else that is not a pipeline or a VAE
            return Explorer(prompt_or_trace, pipe=pipe, trace_kwargs=trace_kwargs, **view)
        except (TypeError, ValueError) as err:
            return Explorer(error=readable(err))
    if not isinstance(prompt_or_trace, str):
        return Explorer(error=f"TypeError: prompt_or_trace must be a prompt (str) or an explainer.Trace, "
                              f"not {type(prompt_or_trace).__name__}.")  # fmt: skip
    try:
        pipe = pipe if pipe is not None else default_pipeline()
        kwargs = {"progress": False, **trace_kwargs}
        tr = run_trace(pipe, prompt_or_trace, **kwargs)
        extra = {k: v for k, v in trace_kwargs.items() if k in ("record", "height", "width", "scheduler")}
        return Explorer(tr, pipe=pipe, trace_kwargs=extra, **view)
    except (TypeError, ValueError, FileNotFoundError, RuntimeError) as err:
        return Explorer(pipe=pipe, error=readable(err))
