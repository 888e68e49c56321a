"""The explorer widget, headless: frames in its state, token overlays, guidance re-runs and their cache,
rapid slider events, compare in sync, errors as messages."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

import explainer
from explainer.widgets import Explorer, compare, explore
from explainer.widgets.panels import encode

STEPS = 6


@pytest.fixture(scope="module")
def tr(pipe):
    result = explainer.trace(pipe, "a red cube beside a blue sphere", num_inference_steps=STEPS, scheduler="ddim",
                             guidance_scale=5.0, progress=False)  # fmt: skip
    assert result.latent_rgb is not None
    return result


@pytest.fixture()
def w(tr, pipe):
    widget = Explorer(tr, pipe=pipe, trace_kwargs={"scheduler": "ddim"})
    yield widget
    widget.wait_idle()
    widget.close()


def test_frames_pushed_once_and_match_previews(w, tr):
    assert [len(w.frames[k]) for k in ("xt", "x0", "eps")] == [STEPS] * 3
    assert w.preview_method == "vae" and "VAE decodes" in w.preview_label  # a pipeline, and decoding is cheap
    for s in (0, 3, STEPS - 1):
        assert w.frames["x0"][s] == encode(tr.preview(s, kind="x0", method="vae", pipe=w.pipe), "jpeg", 85)
        assert w.frames["xt"][s] == encode(tr.preview(s, kind="xt", method="vae", pipe=w.pipe), "jpeg", 85)
    assert len({bytes(f) for f in w.frames["xt"]}) == STEPS  # every step its own picture
    assert len(w.schedule_x) == STEPS and w.schedule_x == sorted(w.schedule_x)
    assert 0 <= w.schedule_box[0] < w.schedule_box[1] <= 1


def test_step_puts_that_frames_bytes_in_the_detail_image(w, tr):
    w.decode_request += 1
    assert w.wait_idle()
    for s in (4, 1):
        w.step = s
        assert w.wait_idle()
        assert w.detail == encode(tr.preview(s, kind="x0", method="vae", pipe=w.pipe), "jpeg", 85)
        assert f"step {s + 1}" in w.detail_label
    assert w.detail != encode(tr.preview(4, kind="x0", method="vae", pipe=w.pipe), "jpeg", 85)


def test_token_click_changes_the_overlay(w, tr):
    assert w.overlay_maps == [] and w.emergence_png == b""
    w.selected = ["cond:2"]  # "red"
    assert w.wait_idle()
    first = list(w.overlay_maps)
    assert len(first) == STEPS and w.emergence_png and len(w.emergence_x) == STEPS
    w.selected = ["cond:5"]  # "blue"
    assert w.wait_idle()
    assert list(w.overlay_maps) != first
    w.map_range = "all"
    assert w.wait_idle()
    assert len(w.overlay_maps) == 1
    heat = np.asarray(Image.open(io.BytesIO(w.overlay_maps[0])), np.float32) / 255
    expected = tr.heatmap(5, step=None)
    small = np.asarray(Image.fromarray((expected * 255).astype(np.uint8)).resize(heat.shape[::-1], Image.BOX)) / 255
    assert np.abs(heat - small).max() < 0.02
    w.selected = []
    assert w.wait_idle()
    assert w.overlay_maps == []


def test_without_a_pipeline_frames_are_linear_previews(tr):
    w = Explorer(tr)
    assert w.preview_method == "linear" and "linear" in w.preview_label
    assert w.frames["x0"][2] == encode(tr.preview(2, kind="x0"), "jpeg", 85)
    assert w.frames["xt"][1] == encode(tr.preview(1, kind="xt"), "jpeg", 85)


def test_costly_decodes_fall_back_to_linear(tr, pipe, monkeypatch):
    monkeypatch.setattr("explainer.tracing.previews.CHEAP_DECODE_BUDGET", 1.0)
    w = Explorer(tr, pipe=pipe)
    assert w.preview_method == "linear" and w.frames["x0"][0] == encode(tr.preview(0, kind="x0"), "jpeg", 85)


def test_toy_x0_frames_are_vae_decodes_close_to_the_final_image():
    w = explore("a red circle above a blue square", num_inference_steps=8)
    assert w.error == "" and w.preview_method == "vae"
    final = np.asarray(w.trace.final_image.convert("RGB"), np.float32)
    shown = np.asarray(Image.open(io.BytesIO(w.frames["x0"][-1])).convert("RGB"), np.float32)
    linear = np.asarray(w.trace.preview(w.trace.num_steps - 1, kind="x0"), np.float32)
    vae_err, linear_err = np.abs(shown - final).mean(), np.abs(linear - final).mean()
    assert vae_err < 4 and vae_err < linear_err / 3, (vae_err, linear_err)


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_guidance_panels_follow_the_step(w, tr):
    from explainer.views import guidance_decomposition, guidance_sweep
    from explainer.views._common import figure_png

    assert w.panel_png == b""  # nothing computed until a panel is opened
    w.step = 2
    w.panel = "guidance"
    assert w.wait_idle() and w.error == ""
    assert "step 3" in w.panel_label and "VAE decodes" in w.panel_label
    want = figure_png(guidance_decomposition(tr, 2, method="vae", pipe=w.pipe))
    assert np.array_equal(_png(w.panel_png), _png(want))
    first = w.panel_png
    w.step = 4
    assert w.wait_idle() and "step 5" in w.panel_label and w.panel_png != first
    w.panel = "sweep"
    assert w.wait_idle() and "sweep of step 5" in w.panel_label
    want = figure_png(guidance_sweep(tr, 4, method="vae", pipe=w.pipe))
    assert np.array_equal(_png(w.panel_png), _png(want))
    assert Image.open(io.BytesIO(w.panel_png)).width > Image.open(io.BytesIO(first)).width  # six scales
    w.panel = ""
    assert w.wait_idle() and w.panel_png == b"" and w.panel_label == ""
    w.panel = "nope"
    assert "panel='nope' is not allowed" in w.error


def test_trajectory_panel_overlays_seeds_and_follows_the_step(w, tr):
    w.panel = "trajectory"
    assert w.wait_idle(60) and w.error == ""
    assert "4 seed(s)" in w.panel_label and "step 1 circled" in w.panel_label
    assert len(w.seed_runs) == 3 and sorted(t.metadata["seed"] for t in w.seed_runs.values()) == [1, 2, 3]
    assert all(t.attention_mode == "none" and t.num_steps == STEPS for t in w.seed_runs.values())
    first = w.panel_png
    w.step = 5
    assert w.wait_idle() and "step 6 circled" in w.panel_label and w.panel_png != first
    assert w.run_count == 0 and len(w.seed_runs) == 3  # seeds cached, the main run untouched
    alone = Explorer(tr)  # without a pipeline: only the trace's own path
    alone.panel = "trajectory"
    assert alone.wait_idle() and "1 seed(s)" in alone.panel_label and "need the pipeline" in alone.panel_label
    alone.close()


def test_guidance_panels_without_cfg_say_so(pipe):
    tr = explainer.trace(pipe, "a cube", num_inference_steps=2, guidance_scale=1.0, progress=False)
    w = Explorer(tr, pipe=pipe)
    w.panel = "sweep"
    assert w.wait_idle() and w.error == "" and w.panel_png == b"" and "no unconditional branch" in w.panel_label


def test_range_layers_and_negative_chips(pipe):
    tr = explainer.trace(pipe, "a red cube", negative_prompt="blurry", num_inference_steps=3, scheduler="ddim", progress=False)
    w = Explorer(tr)
    assert any(g["branch"] == "uncond" and g["text"] == "blurry" for g in w.words)
    w.selected = ["uncond:1"]
    w.map_range, w.range_lo, w.range_hi = "range", 1, 2
    w.layer_filter = "16x16"
    assert w.wait_idle() and w.error == ""
    heat = np.asarray(Image.open(io.BytesIO(w.overlay_maps[0])), np.float32) / 255
    assert heat.max() > 0.9 and len(w.overlay_maps) == 1
    w.selected = ["cond:99"]
    assert "unknown token keys" in w.error


def test_guidance_preview_is_what_if_without_a_run(w, tr):
    w.step = 2
    w.guidance_live = 1.0
    assert w.wait_idle()
    assert w.whatif == encode(tr.what_if(2, 1.0, method="vae", pipe=w.pipe), "jpeg", 85)
    assert w.whatif != encode(tr.preview(2, method="vae", pipe=w.pipe), "jpeg", 85)
    assert w.run_count == 0
    w.guidance_live = tr.guidance_scale  # back to the recorded scale: the shown what-if still follows the step
    w.step = 4
    assert w.wait_idle() and "step 5" in w.whatif_label
    assert w.whatif == encode(tr.what_if(4, tr.guidance_scale, method="vae", pipe=w.pipe), "jpeg", 85)


def test_guidance_release_runs_once_then_hits_the_cache(w, tr):
    w.guidance = 2.0
    assert w.wait_idle(60)
    assert w.error == "" and w.run_count == 1 and w.trace.guidance_scale == 2.0
    assert w.guidance_recorded == 2.0 and w.frames["x0"][0] != encode(tr.preview(0), "jpeg", 85)
    w.guidance = 5.0  # the original run, cached
    assert w.wait_idle()
    w.guidance = 2.0
    assert w.wait_idle()
    assert w.run_count == 1 and w.cache_hits == 2 and w.trace.guidance_scale == 2.0


def test_newer_guidance_request_supersedes_older(w):
    w.guidance = 3.0
    w.guidance = 4.0  # queued while 3.0 runs (or replaces it before it starts)
    w.guidance = 6.0
    assert w.wait_idle(60)
    assert w.trace.guidance_scale == 6.0 and w.run_count <= 2


def test_thousand_rapid_slider_events(w, monkeypatch):
    w.decode_request += 1
    w.guidance_live = 2.5
    w.step = STEPS - 1  # so that every one of the 1000 events below is a change
    assert w.wait_idle()
    ran, submitted = w.worker.ran, w.worker.submitted
    renders: list[threading.Thread] = []  # the thread of every render (the only costly work)
    for name in ("_render_detail", "_render_whatif"):
        def counted(*args, _render=getattr(w, name), **kwargs):
            renders.append(threading.current_thread())
            return _render(*args, **kwargs)

        monkeypatch.setattr(w, name, counted)
    for i in range(1000):
        w.step = i % STEPS
    assert w.worker.pending <= 2  # newest request per kind only: no backlog
    assert w.wait_idle(60)
    assert w.worker.submitted - submitted == 2000  # each event asked for its detail and its what-if ...
    assert len(renders) == w.worker.ran - ran < 100  # ... and almost all were superseded, never rendered
    assert threading.current_thread() not in renders  # the event handler itself never renders
    assert w.error == ""
    assert f"step {999 % STEPS + 1}" in w.detail_label and f"step {999 % STEPS + 1}" in w.whatif_label


def test_compare_stays_in_sync(tr, pipe):
    other = explainer.trace(pipe, "a green cone", num_inference_steps=STEPS, scheduler="ddim", seed=1, progress=False)
    box = compare(tr, other)
    left, right = box.explorers
    before = box.trajectory.value
    left.step = 4
    assert right.step == 4 and box.trajectory.value != before
    right.step = 1
    assert left.step == 1


def test_errors_show_as_messages(pipe):
    w = explore("a red cube", pipe=pipe, num_inference_steps=0)
    assert w.trace is None and w.error.startswith("ValueError: num_inference_steps=0")
    assert "Traceback" not in w.error
    assert explore(42).error.startswith("TypeError: prompt_or_trace")
    box = compare("a", "b", pipe=pipe, num_inference_steps=2, b_kwargs={"num_inference_steps": 3})
    assert "same number of steps" in box.children[0].error


def test_rerun_without_pipeline_is_a_message(tr):
    w = Explorer(tr)
    w.guidance = 2.0
    assert w.wait_idle()
    assert "needs the pipeline" in w.error and w.trace is tr


def test_explore_default_toy_model():
    w = explore("a red circle", num_inference_steps=4)
    assert w.error == "" and len(w.frames["x0"]) == 4 and w.display_size == [256, 256] and w.pixelated


def test_superseded_rerun_stops_before_finishing(w, tr):
    """A guidance request arriving while a re-run diffuses stops that run at its next UNet call."""
    calls = []

    def newer_request(module, args, output):
        calls.append(w.guidance)
        if len(calls) == 1:
            w.guidance = 4.0  # arrives while the run at 3.0 is on its first step

    handle = w.pipe.unet.register_forward_hook(newer_request)
    try:
        w.guidance = 3.0
        assert w.wait_idle(60)
    finally:
        handle.remove()
    assert w.error == "" and w.cancelled == [{"guidance": 3.0, "steps_done": 1, "steps": STEPS}]
    assert len(calls) == 1 + STEPS  # one UNet call of the run at 3.0, then the whole run at 4.0
    assert w.run_count == 1 and w.trace.guidance_scale == 4.0 and w.guidance_recorded == 4.0
    assert not any(key[-1] == 3.0 for key in w.runs)  # the stopped run is not cached
    w.guidance = 3.0  # asked again: it runs in full this time
    assert w.wait_idle(60) and w.run_count == 2 and w.trace.guidance_scale == 3.0 and w.trace.complete


def test_emergence_curve_has_prompt_and_negative_tokens(pipe):
    from explainer.views import concentration
    from explainer.widgets.panels import emergence_figure

    tr = explainer.trace(pipe, "a red cube", negative_prompt="blurry", num_inference_steps=3, scheduler="ddim", progress=False)
    w = Explorer(tr)
    w.selected = ["uncond:1", "cond:2"]
    assert w.wait_idle() and w.error == ""
    assert w.emergence_labels == ["red (prompt)", "blurry (negative)"] and len(w.emergence_x) == 3
    fig = emergence_figure(tr, {"cond": [2], "uncond": [1]})
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == w.emergence_labels
    assert np.allclose(lines[1].get_ydata(), concentration(tr, 1, branch="uncond"))
    assert lines[0].get_linestyle() == "-" and lines[1].get_linestyle() == "--"
    only_prompt = w.emergence_png
    w.selected = ["cond:2"]
    assert w.wait_idle() and w.emergence_labels == ["red (prompt)"] and w.emergence_png != only_prompt


def _as_application(tr, mode: str, mask: bool = False):
    """A copy of the txt2img trace ``tr`` carrying the fields of an img2img / inpaint trace."""
    import copy

    out = copy.copy(tr)
    out.metadata = {**tr.metadata, "mode": mode, "strength": 0.6, "start_step": 2}
    yy, xx = np.mgrid[0 : tr.height, 0 : tr.width]
    out.input_image = np.stack([xx * 8 % 256, yy * 8 % 256, np.full_like(xx, 90)], axis=-1).astype(np.uint8)
    out.mask = ((abs(xx - tr.width / 2) < 8) & (abs(yy - tr.height / 2) < 6)).astype(np.float32) if mask else None
    return out


@pytest.fixture(scope="module")
def img2img(pipe):
    yy, xx = np.mgrid[0:1:32j, 0:1:32j]
    rgb = np.stack([0.5 + 0.45 * np.sin(2 * np.pi * (xx * (1 + c) + yy) + c) for c in range(3)], -1)
    image = (rgb * 255).round().astype(np.uint8)
    return explainer.trace(pipe, "a red cube", image=image, strength=0.5, num_inference_steps=STEPS, scheduler="ddim",
                           guidance_scale=5.0, progress=False)  # fmt: skip


def test_img2img_shows_the_input_and_the_start(img2img, pipe):
    import copy

    tr = img2img
    assert tr.mode == "img2img" and tr.num_steps == STEPS // 2
    as_txt2img = copy.copy(tr)
    as_txt2img.metadata = {**tr.metadata, "mode": "txt2img"}
    plain = Explorer(as_txt2img)
    assert plain.mode == "txt2img" and plain.input_frame == b"" and plain.start_label == ""
    w = Explorer(tr, pipe=pipe)
    assert w.error == "" and w.mode == "img2img" and w.input_frame_label == "input image"
    assert w.start_label == f"img2img start, t = {float(tr.timesteps[0]):g}, strength 0.5"
    assert np.array_equal(_png(w.input_frame), tr.input_image)  # the input image itself (PNG)
    assert w.schedule_png != plain.schedule_png and w.schedule_x == plain.schedule_x  # the start is marked
    w.guidance = 2.0  # a re-run is the same edit: input image and strength kept
    assert w.wait_idle(60) and w.error == "" and w.run_count == 1
    assert w.trace.mode == "img2img" and w.trace.strength == 0.5 and w.trace.num_steps == tr.num_steps
    assert np.array_equal(w.trace.input_image, tr.input_image) and w.input_frame and w.start_label
    w.panel = "trajectory"  # other seeds are img2img runs too
    assert w.wait_idle(60) and w.error == "" and "4 seed(s)" in w.panel_label
    assert all(t.mode == "img2img" for t in w.seed_runs.values())


def test_inpaint_input_has_the_mask_outline(tr):
    from explainer.tracing.editing import OUTLINE_RGB, mask_outline
    from explainer.widgets.panels import input_picture

    app = _as_application(tr, "inpaint", mask=True)  # the fields set on a copy of a txt2img trace
    w = Explorer(app)
    assert w.mode == "inpaint" and "mask" in w.input_frame_label and w.start_label.startswith("inpaint start")
    edge = mask_outline(app.mask)
    assert edge.sum() == 2 * (15 + 11) - 4  # the border pixels of the 15x11 box
    picture = np.asarray(input_picture(app))
    assert (picture[edge] == OUTLINE_RGB).all() and (picture[~edge] == app.input_image[~edge]).all()
    assert np.array_equal(_png(w.input_frame), picture)  # that picture, sent as PNG
    bad = _as_application(tr, "outpaint")
    with pytest.raises(ValueError, match=r"mode.*'outpaint' is not allowed; use one of \['txt2img', 'img2img', 'inpaint'\]"):
        Explorer(bad)


def test_docstring_examples_run():
    import doctest
    import importlib

    for name in ("explainer.widgets.explore", "explainer.widgets.compare"):
        module = importlib.import_module(name)
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, name


def test_player_uses_only_the_anywidget_model_api():
    """player.js is a self-contained anywidget ESM: no imports (so no CDN), no Jupyter globals, and
    only the model calls every anywidget host (JupyterLab, Notebook 7, VS Code) provides; the widget manager
    (for the branch pane, another explorer's model) only where the host has one."""
    import re
    from pathlib import Path

    src = (Path(explainer.__file__).parent / "widgets" / "player.js").read_text()
    assert not re.search(r"^\s*import\b|\bimport\s*\(|\brequire\s*\(", src, re.MULTILINE)
    assert not re.search(r"https?://", src)
    assert not re.search(r"\b(jupyterlab|JupyterLab|_jupyter|IPython|Jupyter|require\.js|define\()", src)
    assert set(re.findall(r"\bmodel\.(\w+)\(", src)) <= {"get", "set", "on", "off", "save_changes", "send"}
    assert re.search(r"^export default \{ render \};?$", src, re.MULTILINE)
    uses = re.findall(r"model\.widget_manager\b.*", src)
    assert uses == ["model.widget_manager;"] and 'typeof manager.get_model !== "function"' in src
