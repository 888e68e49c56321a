"""Export: each format is written, read back, and compared with the rendered previews.

The trace comes from the tiny random pipeline in conftest (32x32 images). Its fitted latent->RGB map is
nearly flat (random weights), so the fixture swaps in SD 1.x's factors: previews then have real
contrast and a wrong frame cannot pass for the right one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
from PIL import Image

import explainer
from explainer.export import FrameRenderer, Panel, export, format_options, render_panel
from explainer.export.animation import durations_ms
from explainer.export.frames import PAD, format_sigma, overlay_heatmap, select_steps
from explainer.export.grid import default_grid_steps
from explainer.tracing.previews import SD1_LATENT_RGB_FACTORS

STEPS = 6
SIZE = 64  # panel side: the 32x32 tiny images upscaled 2x


@pytest.fixture(scope="module")
def tr(pipe):
    prompt = "a red circle above a blue square"
    result = explainer.trace(pipe, prompt, num_inference_steps=STEPS, scheduler="ddim", progress=False)
    rgb = explainer.LatentRGB(np.asarray(SD1_LATENT_RGB_FACTORS, np.float32), np.zeros(3, np.float32), "test:sd1")
    return dataclasses.replace(result, latent_rgb=rgb)


@pytest.fixture(scope="module")
def smooth(tr, smooth_latents):
    """The trace with smooth synthetic latents whose pattern shifts from step to step."""
    latents, x0, scale = smooth_latents(STEPS)
    return dataclasses.replace(tr, latents=latents, x0=x0, input_scale=scale)


def mad(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    """Mean absolute difference of two RGB images, in 0..255 levels."""
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


def crop(frame: Image.Image | np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    left, top, right, bottom = box
    return np.asarray(frame)[top:bottom, left:right, :3]


def expected_panel(tr, kind: str, step: int) -> Image.Image:
    return tr.preview(step, kind=kind).resize((SIZE, SIZE), Image.NEAREST)


def assert_content(frame, renderer: FrameRenderer, tr, step: int, tolerance: float) -> None:
    """Each preview panel of ``frame`` matches step ``step`` within ``tolerance``, and no neighbouring step does."""
    for i, panel in enumerate(renderer.panels):
        got = crop(frame, renderer.layout.box(i))
        error = mad(got, expected_panel(tr, panel.kind, step))
        assert error < tolerance, (panel, step, error)
        for other in {max(step - 1, 0), min(step + 1, STEPS - 1)} - {step}:
            assert mad(got, expected_panel(tr, panel.kind, other)) > 3 * tolerance, (panel, step, other)


# ------------------------------------------------------------------------------------ frames


def test_select_steps():
    assert select_steps(6) == [0, 1, 2, 3, 4, 5]
    assert select_steps(6, every=4) == [0, 4, 5]  # the last step is always shown
    assert select_steps(6, every=5) == [0, 5]
    assert select_steps(6, steps=[0, -1, 2]) == [0, 5, 2]
    with pytest.raises(ValueError, match="every=0"):
        select_steps(6, every=0)
    with pytest.raises(ValueError, match="step 6 is out of range"):
        select_steps(6, steps=[6])
    with pytest.raises(ValueError, match="steps is empty"):
        select_steps(6, steps=[])
    assert default_grid_steps(25) == [0, 3, 7, 10, 14, 17, 21, 24]
    assert default_grid_steps(4) == [0, 1, 2, 3]


def test_captions_and_sigma_text(tr):
    assert format_sigma(float("inf")) == "inf"
    assert format_sigma(4096.4) == "4096"
    assert format_sigma(0.041314) == "0.0413"
    renderer = FrameRenderer(tr, size=SIZE)
    assert [p.kind for p in renderer.panels] == ["xt", "x0"]
    lay = renderer.layout
    assert (lay.width, lay.height) == (renderer.frame(0).width, renderer.frame(0).height)
    assert lay.width % 2 == 0 and lay.height % 2 == 0
    # The caption strip below the panels holds text, and it changes from step to step.
    strip = lambda s: np.asarray(renderer.frame(s))[lay.box(0)[3] + 2 :, :, :]  # noqa: E731
    assert strip(0).std() > 5 and not np.array_equal(strip(0), strip(1))
    bare = FrameRenderer(tr, size=SIZE, captions=False)
    assert bare.layout.height == 2 * PAD + SIZE


def test_default_size_upscales_small_images(tr):
    assert FrameRenderer(tr).panel_wh == (256, 256)  # 32 px images: x8 to reach 256
    assert FrameRenderer(tr, size=100).panel_wh == (100, 100)
    with pytest.raises(ValueError, match="size=8 must be"):
        FrameRenderer(tr, size=8)


def test_panel_validation(tr):
    with pytest.raises(ValueError, match=r"panels \['noise'\] are not known; choose from"):
        FrameRenderer(tr, panels=["x0", "noise"])
    with pytest.raises(ValueError, match="no words were given"):
        FrameRenderer(tr, panels=["overlay"])
    with pytest.raises(ValueError, match="'dog' is not a word of the prompt"):
        FrameRenderer(tr, words=["dog"])
    with pytest.raises(ValueError, match="resample='cubic' is not allowed"):
        FrameRenderer(tr, resample="cubic")
    r = FrameRenderer(tr, panels="x0,guidance", words="circle,square")
    assert r.panels == [Panel("x0"), Panel("uncond"), Panel("cond"), Panel("guided"),
                        Panel("overlay", "circle"), Panel("overlay", "square")]  # fmt: skip


def test_panels_need_what_the_trace_has(pipe, tr):
    no_rgb = dataclasses.replace(tr, latent_rgb=None)
    with pytest.raises(ValueError, match="no latent->RGB factors"):
        FrameRenderer(no_rgb)
    final_only = FrameRenderer(no_rgb, panels=["final"])  # the final image needs no factors
    frame = final_only.frame(0)
    assert frame.size == (final_only.layout.width, final_only.layout.height)
    left, top, right, bottom = final_only.layout.box(0)
    shown = frame.crop((left, top, right, bottom))
    assert shown.size == final_only.panel_wh
    assert mad(shown, tr.final_image.convert("RGB").resize(final_only.panel_wh, Image.NEAREST)) == 0
    unguided = explainer.trace(pipe, "a red circle", num_inference_steps=2, guidance_scale=1.0, progress=False)
    with pytest.raises(ValueError, match="without classifier-free guidance"):
        FrameRenderer(unguided, panels=["guidance"])


def test_guidance_and_overlay_panels_show_their_sources(tr):
    step = 2
    assert mad(render_panel(tr, Panel("uncond"), step), tr.what_if(step, 0.0)) == 0
    assert mad(render_panel(tr, Panel("cond"), step), tr.what_if(step, 1.0)) == 0
    assert mad(render_panel(tr, Panel("guided"), step), tr.preview(step)) == 0
    overlay = render_panel(tr, Panel("overlay", "circle"), step)
    assert mad(overlay, overlay_heatmap(tr.preview(step), tr.heatmap("circle", step=step))) == 0
    # The map of "circle" changes over the steps, and so does its overlay.
    assert mad(overlay, render_panel(tr, Panel("overlay", "circle"), 0)) > 1.0


# ------------------------------------------------------------------------------------ suffixes and options


def test_unknown_suffix_names_the_allowed_ones(tr, tmp_path):
    with pytest.raises(ValueError, match=r"cannot export to '\.avi'.*'\.gif'.*'\.html'.*'\.mp4'.*'\.png'.*'\.webp'"):
        export(tr, tmp_path / "run.avi")
    with pytest.raises(ValueError, match="cannot export to no suffix"):
        export(tr, tmp_path / "run")
    assert not list(tmp_path.iterdir())


def test_options_are_checked_per_format(tr, tmp_path):
    with pytest.raises(TypeError, match=r"\['loop'\] do not apply to \.mp4 export; its options are"):
        export(tr, tmp_path / "run.mp4", loop=False)
    with pytest.raises(TypeError, match="trace must be an explainer Trace"):
        export("trace.safetensors", tmp_path / "run.gif")
    with pytest.raises(ValueError, match=r"fps=0 must be a number in \(0, 60\]"):
        export(tr, tmp_path / "run.gif", fps=0)
    with pytest.raises(ValueError, match=r"hold=-1 must be"):
        export(tr, tmp_path / "run.webp", hold=-1)
    assert "columns" in format_options(".png") and "fps" not in format_options(".png")


def test_export_prints_the_size(tr, tmp_path, capsys):
    path = export(tr, tmp_path / "sub" / "run.gif", size=SIZE)
    out = capsys.readouterr().out
    assert path == tmp_path / "sub" / "run.gif"
    assert re.search(rf"wrote .*run\.gif \({STEPS} frames, [\d.]+ kB\)", out), out
    export(tr, tmp_path / "quiet.gif", size=SIZE, verbose=False)
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------------------ read back


def test_gif_reads_back(smooth, tmp_path):
    tr = smooth
    path = export(tr, tmp_path / "run.gif", size=SIZE, fps=10, hold=0.5, verbose=False)
    renderer = FrameRenderer(tr, size=SIZE)
    with Image.open(path) as gif:
        assert gif.n_frames == STEPS
        assert gif.size == (renderer.layout.width, renderer.layout.height)
        assert gif.info["loop"] == 0
        for step in range(STEPS):
            gif.seek(step)
            frame = gif.convert("RGB")
            assert mad(frame, renderer.frame(step)) < 5.0  # one 256-colour palette for all frames
            assert_content(frame, renderer, tr, step, tolerance=8.0)
            assert gif.info["duration"] == (600 if step == STEPS - 1 else 100)
    assert durations_ms(3, 8.0, 1.0) == [125, 125, 1125]


def test_gif_options_every_words_no_loop(smooth, tmp_path):
    tr = smooth
    path = export(tr, tmp_path / "circle.gif", panels=["overlay"], words=["circle"], every=2, loop=False,
                  captions=False, size=SIZE, verbose=False)  # fmt: skip
    renderer = FrameRenderer(tr, panels=["overlay"], words=["circle"], size=SIZE, captions=False)
    with Image.open(path) as gif:
        assert gif.n_frames == len([0, 2, 4, 5])
        assert "loop" not in gif.info  # plays once
        for k, step in enumerate([0, 2, 4, 5]):
            gif.seek(k)
            assert mad(gif.convert("RGB"), renderer.frame(step)) < 5.0


def test_webp_reads_back(smooth, tmp_path):
    tr = smooth
    path = export(tr, tmp_path / "run.webp", size=SIZE, steps=[0, 3, 5], verbose=False)
    renderer = FrameRenderer(tr, size=SIZE)
    with Image.open(path) as webp:
        assert webp.is_animated and webp.n_frames == 3
        assert webp.size == (renderer.layout.width, renderer.layout.height)
        for k, step in enumerate([0, 3, 5]):
            webp.seek(k)
            assert_content(webp.convert("RGB"), renderer, tr, step, tolerance=6.0)
    lossless = export(tr, tmp_path / "lossless.webp", size=SIZE, steps=[1], lossless=True, verbose=False)
    with Image.open(lossless) as webp:
        assert mad(webp.convert("RGB"), renderer.frame(1)) == 0


def test_mp4_reads_back(smooth, tmp_path):
    tr = smooth
    import imageio_ffmpeg  # a declared dependency: missing or broken is a failure, not a skip

    fps, hold = 8, 0.5
    path = export(tr, tmp_path / "run.mp4", size=SIZE, fps=fps, hold=hold, verbose=False)
    renderer = FrameRenderer(tr, size=SIZE)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    w, h = meta["size"]
    assert (w, h) == (renderer.layout.width, renderer.layout.height)
    assert math.isclose(meta["fps"], fps)
    frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in reader]
    assert len(frames) == STEPS + round(hold * fps)
    for step in range(STEPS):
        assert_content(frames[step], renderer, tr, step, tolerance=6.0)
    assert mad(frames[-1], frames[STEPS - 1]) < 2.0  # the held frames repeat the last step


def test_png_grid_size_and_cells(tr, tmp_path):
    steps = [0, 2, 5]
    path = export(tr, tmp_path / "bare.png", panels=["xt", "x0"], steps=steps, size=SIZE, captions=False, verbose=False)
    with Image.open(path) as png:
        # No labels: PAD around and between SIZE-pixel cells, one column per step, one row per panel.
        assert png.size == (PAD + 3 * (SIZE + PAD), PAD + 2 * (SIZE + PAD))
        grid = np.asarray(png.convert("RGB"))
    for col, step in enumerate(steps):
        for row, kind in enumerate(["xt", "x0"]):
            left, top = PAD + col * (SIZE + PAD), PAD + row * (SIZE + PAD)
            cell = grid[top : top + SIZE, left : left + SIZE]
            assert np.array_equal(cell, np.asarray(expected_panel(tr, kind, step)))  # PNG is lossless


def test_png_grid_labels_and_wrapping(tr, tmp_path):
    path = export(tr, tmp_path / "grid.png", panels=["x0"], size=SIZE, verbose=False)
    with Image.open(path) as png:
        labelled = png.size
    assert labelled[0] > PAD + STEPS * (SIZE + PAD) and labelled[1] > PAD + SIZE + PAD  # room for labels
    path = export(tr, tmp_path / "wrapped.png", panels=["x0"], size=SIZE, every=1, columns=4, captions=False,
                  verbose=False)  # fmt: skip
    with Image.open(path) as png:
        assert png.size == (PAD + 4 * (SIZE + PAD), PAD + 2 * (SIZE + PAD))  # 6 steps -> 2 bands of 4


# ------------------------------------------------------------------------ HTML (the browser test is separate)


def _embedded(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="trace-data">(.*?)</script>', page, re.S)
    assert match, "no embedded data block"
    return json.loads(match.group(1))


def _decode(uri: str) -> Image.Image:
    import base64
    import io

    header, payload = uri.split(",", 1)
    assert header.startswith("data:image/") and header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")


def test_html_is_self_contained(smooth, tmp_path, capsys):
    tr = smooth
    path = export(tr, tmp_path / "run.html", size=SIZE)
    assert re.search(r"wrote .*run\.html \(6 steps, [\d.]+ kB\)", capsys.readouterr().out)
    page = path.read_text(encoding="utf-8")
    assert not re.search(r"\b(?:https?|wss?|ftp):", page), "the page must not reference the web"
    assert '<link rel="icon" href="data:,">' in page
    data = _embedded(page)
    assert data["prompt"] == tr.prompt
    assert [v["key"] for v in data["views"]] == ["xt", "x0"]
    assert [w["text"] for w in data["words"]] == ["a", "red", "circle", "above", "blue", "square"]
    assert len(data["steps"]) == STEPS and data["steps"][0]["step"] == 1
    for view in data["views"]:
        assert len(view["frames"]) == STEPS
        for step in (0, STEPS - 1):
            frame = _decode(view["frames"][step])
            assert frame.size == (SIZE, SIZE)
            assert mad(frame, expected_panel(tr, view["key"], step)) < 6.0  # JPEG
    circle = data["words"][2]
    assert len(circle["maps"]) == STEPS
    small = np.asarray(_decode(circle["maps"][3]).convert("L"), np.float32) / 255
    heat = Image.fromarray((tr.heatmap("circle", step=3) * 255).astype(np.uint8))
    want = np.asarray(heat.resize(small.shape[::-1], Image.BOX), np.float32) / 255
    assert np.abs(small - want).max() < 2 / 255
    assert _decode(data["final"]).size == (SIZE, SIZE)


def test_html_escapes_the_prompt_and_infinite_sigma(tr, tmp_path):
    sigmas = tr.sigmas.copy()
    sigmas[0] = np.inf  # zero-terminal-SNR schedules start at infinite noise
    odd = dataclasses.replace(tr, prompt="</script><!-- a & b", sigmas=sigmas)
    page = export(odd, tmp_path / "odd.html", size=SIZE, words=["circle"], verbose=False).read_text(encoding="utf-8")
    assert page.count("</script>") == 2  # the data block's and the player's own
    data = _embedded(page)
    assert data["prompt"] == "</script><!-- a & b"
    assert data["steps"][0]["sigma"] == "\u221e"
    assert "<title>sd-explainer: &lt;/script&gt;&lt;!-- a &amp; b</title>" in page
    gif = export(odd, tmp_path / "odd.gif", size=SIZE, steps=[0], verbose=False)
    assert gif.is_file()


def test_html_options(tr, tmp_path):
    page = export(tr, tmp_path / "g.html", panels=["guidance", "final"], words=[], every=3, size=SIZE,
                  image_format="webp", verbose=False).read_text(encoding="utf-8")  # fmt: skip
    data = _embedded(page)
    assert [v["key"] for v in data["views"]] == ["uncond", "cond", "guided"]
    assert data["words"] == [] and len(data["steps"]) == 3
    assert data["views"][0]["frames"][0].startswith("data:image/webp;base64,")
    with pytest.raises(ValueError, match="clickable chip"):
        export(tr, tmp_path / "bad.html", panels=["overlay"], words=["circle"])
    with pytest.raises(ValueError, match="image_format='png' is not allowed"):
        export(tr, tmp_path / "bad.html", image_format="png")


def test_html_stays_under_10_mb_for_50_steps_at_512(tr, tmp_path):
    """The default page of 50 steps at 512x512 fits 10 MB even when every frame and map is noise.

    A synthetic trace: SD 1.x's geometry (4x64x64 latents, 64x64 attention maps) filled with noise,
    the least compressible content there is (real x_t frames start like this).
    """
    steps, rng = 50, np.random.default_rng(0)
    layers = [dataclasses.replace(la, height=64 // 2 ** i, width=64 // 2 ** i) for i, la in
              enumerate(sorted(tr.attention_layers, key=lambda la: -la.height))]  # fmt: skip
    side = {la.group: la.height for la in layers}
    attention = {}
    for key, arr in tr.attention.items():  # [step, layer, token, h, w] -> 50 steps of noise at the new size
        n = side[key.split("/", 1)[1]]
        attention[key] = rng.random((steps, *arr.shape[1:3], n, n)).astype(np.float16)
    big = dataclasses.replace(
        tr,
        latents=rng.standard_normal((steps + 1, 4, 64, 64)).astype(np.float32),
        x0=2 * rng.standard_normal((steps, 4, 64, 64)).astype(np.float32),
        input_scale=np.ones(steps + 1, np.float32),
        timesteps=np.linspace(999, 0, steps),
        sigmas=np.geomspace(14.6, 0.03, steps),
        attention=attention,
        attention_layers=layers,
        final_image=Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)),
        metadata={**tr.metadata, "height": 512, "width": 512},
    )
    path = export(big, tmp_path / "big.html", verbose=False)
    data = _embedded(path.read_text(encoding="utf-8"))
    assert (data["width"], data["height"], len(data["steps"]), data["map_width"]) == (512, 512, steps, 64)
    assert len(data["words"]) == 6
    assert path.stat().st_size <= 10_000_000, path.stat().st_size


def test_incomplete_trace_exports_its_finished_steps(smooth, tmp_path):
    """An interrupted run has no final image: the "final" panel shows the last latent's preview instead."""
    partial = dataclasses.replace(smooth, final_image=None, complete=False, error="KeyboardInterrupt")
    last = np.asarray(partial.preview(STEPS, kind="xt").resize((SIZE, SIZE), Image.NEAREST))
    renderer = FrameRenderer(partial, panels=["final"], size=SIZE, captions=False)
    assert np.array_equal(crop(renderer.frame(0), renderer.layout.box(0)), last)
    data = _embedded(export(partial, tmp_path / "partial.html", size=SIZE, verbose=False).read_text(encoding="utf-8"))
    assert ["status", "incomplete (KeyboardInterrupt)"] in data["settings"]
    assert mad(_decode(data["final"]), last) < 6.0


def test_pipe_makes_latent_panels_vae_decodes(tr, pipe, tmp_path):
    panels, side = ["x0", "xt", "guided"], tr.width  # size = the image size: no resampling
    path = export(tr, tmp_path / "vae.webp", panels=panels, size=side, steps=[0, 5], captions=False, lossless=True,
                  verbose=False, pipe=pipe)  # fmt: skip
    layout = FrameRenderer(tr, panels=panels, size=side, captions=False).layout
    with Image.open(path) as webp:
        for k, step in enumerate([0, 5]):
            webp.seek(k)
            frame = webp.convert("RGB")
            for i, kind in enumerate(["x0", "xt", "x0"]):
                cell = frame.crop(layout.box(i))
                assert mad(cell, tr.preview(step, kind=kind, method="vae", pipe=pipe)) == 0
                assert mad(cell, tr.preview(step, kind=kind)) > 10  # not the linear preview
    cond = render_panel(tr, Panel("cond"), 2, pipe=pipe)
    assert mad(cond, tr.what_if(2, 1.0, method="vae", pipe=pipe)) == 0
    page = export(tr, tmp_path / "vae.html", size=side, verbose=False, pipe=pipe).read_text(encoding="utf-8")
    data = _embedded(page)
    assert [v["label"] for v in data["views"]] == ["noisy latent x\u209c (VAE decode)", "predicted image x\u2080 (VAE decode)"]
    assert "Previews are full VAE decodes" in data["footer"]
    assert "pipe" in format_options(".png") and "pipe" in format_options(".mp4")
