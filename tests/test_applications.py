"""Image-to-image, inpainting (4- and 9-channel UNets) and outpainting: parity, records, geometry, bad input."""

from __future__ import annotations

import importlib
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import build_components
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import save_file

import explainer
from explainer.tracing.editing import changed_outside_mask, composite_x0, input_preview, mask_outline, pixel_blend
from explainer.tracing.outpaint import canvas_margins, extend_canvas

trace_module = importlib.import_module("explainer.tracing.trace")
PROMPT = "a red cube beside a blue sphere"
PARITY_SCHEDULERS = ["ddim", "euler", "dpm++"]


def smooth_image(size: int = 32) -> Image.Image:
    yy, xx = np.mgrid[0:1 : size * 1j, 0:1 : size * 1j]
    rgb = np.stack([0.5 + 0.45 * np.sin(2 * np.pi * (xx * (1 + c) + yy) + c) for c in range(3)], -1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")


def left_half_mask(size: int = 32) -> Image.Image:
    mask = np.zeros((size, size), np.uint8)
    mask[:, : size // 2] = 255
    return Image.fromarray(mask, "L")


@pytest.fixture(scope="module")
def image():
    return smooth_image()


@pytest.fixture(scope="module")
def mask():
    return left_half_mask()


@pytest.fixture(scope="module")
def pipe9():
    """A tiny inpainting pipeline whose UNet takes 9 channels (latent, mask, masked-image latent)."""
    components = build_components(unet_in_channels=9)
    pipe = StableDiffusionInpaintPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain(cls, pipe, name: str, **kwargs) -> np.ndarray:
    """The user's own diffusers call: ``cls`` built from the same components, a fresh seeded generator."""
    sched = explainer.SCHEDULERS[name].from_config(pipe.scheduler.config)
    other = cls(**{**pipe.components, "scheduler": sched, "requires_safety_checker": False})
    other.set_progress_bar_config(disable=True)
    return np.asarray(other(PROMPT, generator=torch.Generator("cpu").manual_seed(0), **kwargs).images[0])


def run(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", 4)
    return explainer.trace(pipe, PROMPT, progress=False, **kwargs)


# ----------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", PARITY_SCHEDULERS)
def test_img2img_parity(pipe, image, name):
    tr = run(pipe, image=image, strength=0.6, scheduler=name)
    ref = plain(StableDiffusionImg2ImgPipeline, pipe, name, image=image, strength=0.6, num_inference_steps=4)
    assert ref.std() > 0
    assert np.array_equal(np.asarray(tr.final_image), ref)
    assert tr.mode == "img2img" and tr.metadata["mode"] == "img2img" and "inpaint_mode" not in tr.metadata
    assert tr.metadata["model"]["pipeline"] == "StableDiffusionImg2ImgPipeline"


@pytest.mark.parametrize("strength", [1.0, 0.7])
@pytest.mark.parametrize("name", PARITY_SCHEDULERS)
def test_inpaint_blend4_parity(pipe, image, mask, name, strength):
    tr = run(pipe, image=image, mask=mask, strength=strength, scheduler=name)
    ref = plain(StableDiffusionInpaintPipeline, pipe, name, image=image, mask_image=mask, strength=strength,
                num_inference_steps=4)  # fmt: skip
    assert np.array_equal(np.asarray(tr.final_image), ref)
    assert tr.metadata["inpaint_mode"] == "blend4" and tr.mode == "inpaint"


@pytest.mark.parametrize("strength", [1.0, 0.7])
@pytest.mark.parametrize("name", PARITY_SCHEDULERS)
def test_inpaint_unet9_parity(pipe9, image, mask, name, strength):
    tr = run(pipe9, image=image, mask=mask, strength=strength, scheduler=name)
    ref = plain(StableDiffusionInpaintPipeline, pipe9, name, image=image, mask_image=mask, strength=strength,
                num_inference_steps=4)  # fmt: skip
    assert np.array_equal(np.asarray(tr.final_image), ref)
    assert tr.metadata["inpaint_mode"] == "unet9"
    assert tr.latents_blended is None and tr.latents_unblended is None
    assert tr.latents.shape[1] == 4  # the latent, not the UNet's 9-channel input
    assert tr.image_latent.shape == (4, 16, 16)
    source = tr.metadata["image_latent_source"]
    assert source.startswith("vae mean") if strength == 1.0 else source == "pipeline"


def test_edit_pipelines_are_accepted_and_left_as_found(pipe, image, mask):
    img2img = StableDiffusionImg2ImgPipeline(**{**pipe.components, "requires_safety_checker": False})
    own = img2img.scheduler
    tr = explainer.trace(img2img, PROMPT, image=image, strength=0.5, num_inference_steps=4, scheduler="ddim",
                         progress=False)  # fmt: skip
    assert img2img.scheduler is own and "step" not in vars(own) and "add_noise" not in vars(own)
    assert "prepare_latents" not in vars(img2img)
    ref = plain(StableDiffusionImg2ImgPipeline, pipe, "ddim", image=image, strength=0.5, num_inference_steps=4)
    assert np.array_equal(np.asarray(tr.final_image), ref)
    # an img2img pipeline given a mask is run as inpainting from its components
    tr = explainer.trace(img2img, PROMPT, image=image, mask=mask, num_inference_steps=2, progress=False)
    assert tr.mode == "inpaint" and "prepare_mask_latents" not in vars(img2img)


# ------------------------------------------------------------------------------------ strength and start


@pytest.mark.parametrize("strength", [0.25, 0.5, 0.8, 1.0])
def test_start_step_follows_strength(pipe, image, strength):
    full = run(pipe, num_inference_steps=10, scheduler="euler", record="none")
    tr = run(pipe, image=image, strength=strength, num_inference_steps=10, scheduler="euler",
             record={"attention": "none", "dtype": "float32"})  # fmt: skip
    ran = int(10 * strength)
    assert tr.metadata["strength"] == strength == tr.strength
    assert tr.start_step == tr.metadata["start_step"] == 10 - ran
    assert tr.num_steps == ran
    assert np.array_equal(tr.timesteps, full.timesteps[10 - ran :])
    assert np.array_equal(tr.sigmas, full.sigmas[10 - ran :])
    assert np.array_equal(tr.start_latent, tr.latents[0])
    # x0 = a * x_t + b * guided output, with the coefficients of the steps actually run
    guided = tr.eps_uncond.astype(np.float32) + 7.5 * (tr.eps_cond.astype(np.float32) - tr.eps_uncond.astype(np.float32))
    for i in range(tr.num_steps):
        recomputed = tr.x0_coef_sample[i] * tr.latents[i].astype(np.float32) + tr.x0_coef_model[i] * guided[i]
        np.testing.assert_allclose(recomputed, tr.x0[i], rtol=1e-4, atol=1e-4)


def test_start_latent_is_the_input_noised_to_the_first_timestep(pipe, image):
    """start = sqrt(abar_t0) * image_latent + sqrt(1 - abar_t0) * noise, with t0 set by strength.

    Both runs draw the same VAE sample and the same noise from the same seed, so the noise recovered
    from the strength-1 run predicts the strength-0.25 start exactly.
    """
    record = {"attention": "none", "dtype": "float32"}
    low = run(pipe, image=image, strength=0.25, num_inference_steps=8, scheduler="ddim", record=record)
    high = run(pipe, image=image, strength=1.0, num_inference_steps=8, scheduler="ddim", record=record)
    assert low.timesteps[0] < high.timesteps[0] and low.num_steps == 2 and high.num_steps == 8
    x = low.image_latent.astype(np.float64)
    assert np.array_equal(low.image_latent, high.image_latent) and x.std() > 0
    a_hi, a_lo = float(high.alphas_cumprod[0]), float(low.alphas_cumprod[0])
    noise = (high.start_latent - np.sqrt(a_hi) * x) / np.sqrt(1 - a_hi)
    np.testing.assert_allclose(low.start_latent, np.sqrt(a_lo) * x + np.sqrt(1 - a_lo) * noise, rtol=1e-4, atol=1e-4)
    assert low.input_image.shape == (32, 32, 3) and low.input_image.dtype == np.uint8
    assert np.array_equal(low.input_image, np.asarray(image))


# ------------------------------------------------------------------------------------ the blend record


def test_blend4_records_before_and_after_blending(pipe, image, mask):
    tr = run(pipe, image=image, mask=mask, strength=1.0, num_inference_steps=5, scheduler="ddim",
             record={"dtype": "float32"})  # fmt: skip
    s, c, h, w = tr.latents_blended.shape
    assert (s, c, h, w) == (5, 4, 16, 16) and tr.latents_unblended.shape == (s, c, h, w)
    assert tr.mask.shape == (32, 32) and tr.mask_latent.shape == (16, 16)
    assert set(np.unique(tr.mask)) == {0.0, 1.0}
    assert tr.mask[:, :16].min() == 1 and tr.mask[:, 16:].max() == 0
    inside = tr.mask_latent >= 0.5  # [h, w]
    assert inside[:, :8].all() and not inside[:, 8:].any()
    # latents carries the blended state; inside the mask blending changes nothing
    assert np.array_equal(tr.latents_blended, tr.latents[1:])
    assert np.array_equal(tr.latents_blended[:, :, inside], tr.latents_unblended[:, :, inside])
    # outside the mask the known region was put back: after the last step, the encoded input itself
    assert np.array_equal(tr.latents_blended[-1][:, ~inside], tr.image_latent[:, ~inside])
    assert not np.allclose(tr.latents_unblended[-1][:, ~inside], tr.image_latent[:, ~inside], atol=1e-3)
    for i in range(s - 1):  # earlier: the input noised to the next step's level, not the scheduler's output
        assert not np.array_equal(tr.latents_blended[i][:, ~inside], tr.latents_unblended[i][:, ~inside])


def test_composite_x0_and_outline(pipe, image, mask):
    tr = run(pipe, image=image, mask=mask, num_inference_steps=3, scheduler="ddim")
    comp = composite_x0(tr, 1)
    inside = tr.mask_latent >= 0.5
    assert np.array_equal(comp[:, inside], tr.x0[1].astype(np.float32)[:, inside])
    assert np.array_equal(comp[:, ~inside], tr.image_latent.astype(np.float32)[:, ~inside])
    outline = mask_outline(tr.mask)
    assert outline[:, 15].all() and outline.sum() == 32  # the mask's inner edge, one column
    shown = np.asarray(input_preview(tr))
    assert np.array_equal(shown[:, 16:], np.asarray(image)[:, 16:])
    assert 0 < changed_outside_mask(tr) <= 1  # the VAE round trip changes the known region a little
    pasted = np.asarray(pixel_blend(tr))
    assert np.array_equal(pasted[:, 16:], np.asarray(image)[:, 16:])
    assert np.array_equal(pasted[:, :16], np.asarray(tr.final_image)[:, :16])
    with pytest.raises(ValueError, match="needs an inpainting trace; this one is img2img"):
        composite_x0(run(pipe, image=image, num_inference_steps=2), 0)


def test_previews_heatmaps_what_if_and_export_on_edits(pipe, image, mask, tmp_path):
    tr = run(pipe, image=image, mask=mask, strength=0.75, num_inference_steps=4, scheduler="ddim")
    assert tr.preview(0).size == (32, 32) and tr.preview(tr.num_steps, kind="xt").size == (32, 32)
    assert tr.heatmap("cube").shape == (32, 32)
    np.testing.assert_array_equal(tr.what_if_x0(1, tr.guidance_scale), tr.x0[1].astype(np.float32))
    assert tr.what_if(1, 2.0).size == (32, 32)
    explainer.export(tr, tmp_path / "edit.png", panels=["input", "xt", "x0", "final"], progress=False)
    assert Image.open(tmp_path / "edit.png").width > 4 * 32
    explainer.export(tr, tmp_path / "edit.html", progress=False)  # edits show their input by default
    page = (tmp_path / "edit.html").read_text()
    assert "inpaint, strength 0.75" in page and "input image (mask outlined)" in page
    from explainer.export import FrameRenderer

    assert [p.kind for p in FrameRenderer(tr).panels] == ["input", "xt", "x0"]
    assert [p.kind for p in FrameRenderer(run(pipe, num_inference_steps=2)).panels] == ["xt", "x0"]
    with pytest.raises(ValueError, match="panel 'input' shows the input image"):
        explainer.export(run(pipe, num_inference_steps=2), tmp_path / "t.png", panels=["input"], progress=False)


# -------------------------------------------------------------------------------------------- save/load


def test_save_load_round_trip_of_edit_fields(pipe, image, mask, tmp_path):
    tr = run(pipe, image=image, mask=mask, strength=0.75, num_inference_steps=4, scheduler="ddim")
    loaded = explainer.load_trace(tr.save(tmp_path / "inpaint.safetensors"))
    for name in trace_module.EDIT_ARRAYS:
        a, b = getattr(tr, name), getattr(loaded, name)
        assert a is not None and a.dtype == b.dtype and np.array_equal(a, b), name
    assert loaded.metadata == tr.metadata and loaded.mode == "inpaint" and loaded.strength == 0.75
    img = run(pipe, image=image, num_inference_steps=4)
    loaded = explainer.load_trace(img.save(tmp_path / "img2img.safetensors"))
    assert loaded.mask is None and loaded.latents_blended is None and np.array_equal(loaded.image_latent, img.image_latent)
    assert explainer.estimate_trace_bytes(pipe, PROMPT, image=image, mask=mask, strength=0.75,
                                          num_inference_steps=4, scheduler="ddim") >= tr.nbytes  # fmt: skip


def test_version_1_files_load_as_txt2img(basic_trace, tmp_path):
    path = basic_trace.save(tmp_path / "new.safetensors", quantize_attention=False)  # float maps, as version 1 stored them
    with safe_open(str(path), framework="numpy") as f:
        meta, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(meta["trace"])
    del header["metadata"]["mode"]
    old = tmp_path / "v1.safetensors"
    save_file(arrays, str(old), metadata={**meta, "format_version": "1", "trace": json.dumps(header)})
    loaded = explainer.load_trace(old)
    assert loaded.mode == "txt2img" and loaded.metadata["mode"] == "txt2img" and loaded.input_image is None
    assert basic_trace.metadata["mode"] == "txt2img" and trace_module.FORMAT_VERSION == 4


# -------------------------------------------------------------------------------------------- outpaint


def test_outpaint_canvas_and_mask_geometry(pipe):
    small = smooth_image(24)
    # the tiny pipeline needs multiples of 4: 24 + 5 -> 32 wide, 24 + 3 -> 28 high
    with pytest.warns(UserWarning, match=r"rounded up to 32x28 .* right=5, top=3 became right=8, top=4"):
        tr = explainer.outpaint(pipe, PROMPT, small, right=5, top=3, num_inference_steps=2, progress=False)
    assert tr.final_image.size == (32, 28) and tr.mode == "inpaint"
    assert tr.metadata["outpaint"]["right"] == 8 and tr.metadata["outpaint"]["top"] == 4
    expected = np.ones((28, 32), np.float32)
    expected[4:, :24] = 0
    assert np.array_equal(tr.mask, expected)
    assert np.array_equal(tr.input_image[4:, :24], np.asarray(small))  # the picture keeps its pixels
    assert np.array_equal(tr.input_image[4:, 24:], np.repeat(np.asarray(small)[:, -1:], 8, axis=1))  # edge fill
    assert np.array_equal(tr.input_image[:4, :24], np.repeat(np.asarray(small)[:1], 4, axis=0))


def test_canvas_rounding_and_fills():
    assert canvas_margins(32, 32, {"left": 4, "right": 0, "top": 0, "bottom": 0}, 8) == (
        {"left": 8, "right": 0, "top": 0, "bottom": 0}, canvas_margins(32, 32, {"left": 4, "right": 0, "top": 0,
                                                                                "bottom": 0}, 8)[1])  # fmt: skip
    grown, note = canvas_margins(30, 32, {"left": 0, "right": 0, "top": 8, "bottom": 0}, 8)
    assert grown == {"left": 1, "right": 1, "top": 8, "bottom": 0} and "32x40" in note
    assert canvas_margins(32, 32, {"left": 8, "right": 8, "top": 0, "bottom": 0}, 8) == (
        {"left": 8, "right": 8, "top": 0, "bottom": 0}, None)  # fmt: skip
    image = smooth_image(16)
    for fill in ("edge", "blur", "noise"):
        canvas, mask = extend_canvas(image, 4, 0, 0, 4, fill=fill)
        arr = np.asarray(canvas)
        assert canvas.size == (20, 20) and mask.shape == (20, 20) and mask.sum() == 20 * 20 - 16 * 16
        assert np.array_equal(arr[:16, 4:], np.asarray(image))
    fills = {fill: np.asarray(extend_canvas(image, 4, 0, 0, 4, fill=fill)[0], np.float32) for fill in
             ("edge", "blur", "noise")}  # fmt: skip
    assert (fills["edge"][16:] == fills["edge"][15:16]).all()  # the last row repeated downwards

    def roughness(arr: np.ndarray) -> float:  # mean step between neighbouring border pixels
        return float(np.abs(np.diff(arr[16:, 4:], axis=1)).mean())

    assert roughness(fills["blur"]) < roughness(fills["edge"]) < roughness(fills["noise"])


def test_outpaint_bad_input(pipe):
    small = smooth_image(16)
    with pytest.raises(ValueError, match="left=-4 is not allowed"):
        explainer.outpaint(pipe, PROMPT, small, left=-4)
    with pytest.raises(TypeError, match="top must be a whole number of pixels, not float"):
        explainer.outpaint(pipe, PROMPT, small, top=2.5)
    with pytest.raises(ValueError, match="at least one margin > 0"):
        explainer.outpaint(pipe, PROMPT, small)
    with pytest.raises(ValueError, match="fill='zeros' is not allowed"):
        explainer.outpaint(pipe, PROMPT, small, left=8, fill="zeros")
    with pytest.raises(TypeError, match="do not pass mask="):
        explainer.outpaint(pipe, PROMPT, small, left=8, mask=np.ones((16, 16)))


# ------------------------------------------------------------------------------------------- bad input


def test_mask_size_and_channels(pipe, image):
    with pytest.raises(ValueError, match="mask is 16x16 pixels but image is 32x32"):
        run(pipe, image=image, mask=np.ones((16, 16), np.float32))
    with pytest.raises(ValueError, match="mask must be single-channel.*mode 'RGB'.*convert\\('L'\\)"):
        run(pipe, image=image, mask=Image.new("RGB", (32, 32)))
    with pytest.raises(ValueError, match=r"mask must be single-channel, an array \[H, W\].*\[32, 32, 3\]"):
        run(pipe, image=image, mask=np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="mask is a float array, so its values must be finite and in"):
        run(pipe, image=image, mask=np.full((32, 32), 2.0))
    with pytest.raises(TypeError, match="mask must be a PIL image or a numpy array"):
        run(pipe, image=image, mask=[[1]])
    with pytest.raises(ValueError, match="mask needs image="):
        run(pipe, mask=np.ones((32, 32)))


@pytest.mark.parametrize("fill, expected", [(0, "mask is empty"), (1, "mask is full")])
def test_empty_or_full_mask_warns_but_runs(pipe, image, fill, expected):
    with pytest.warns(UserWarning, match=expected):
        tr = run(pipe, image=image, mask=np.full((32, 32), fill, np.float32), num_inference_steps=2)
    assert tr.complete and tr.mask.mean() == fill


@pytest.mark.parametrize(
    "strength, error, expected",
    [
        (0.0, ValueError, r"strength=0.0 is not allowed; use a number in \(0, 1\]"),
        (1.5, ValueError, r"strength=1.5 is not allowed"),
        (float("nan"), ValueError, r"strength=nan is not allowed"),
        ("0.5", TypeError, "strength must be a number in"),
        (0.05, ValueError, r"leaves int\(10 \* 0.05\) = 0 denoising steps; use strength >= 0.1"),
    ],
)
def test_bad_strength(pipe, image, strength, error, expected):
    with pytest.raises(error, match=expected):
        run(pipe, image=image, strength=strength, num_inference_steps=10)


def test_strength_without_image(pipe):
    with pytest.raises(ValueError, match="strength=0.5 applies to image-to-image and inpainting only"):
        run(pipe, strength=0.5)


def test_image_mode_and_size_are_converted_with_a_warning(pipe, image):
    grey = image.convert("L")
    with pytest.warns(UserWarning, match="image has mode 'L'; converted to 'RGB'"):
        tr = run(pipe, image=grey, strength=0.5, num_inference_steps=2)
    assert tr.input_image.shape == (32, 32, 3)
    odd = image.resize((30, 27))
    odd_mask = np.zeros((27, 30), np.float32)
    odd_mask[:, :15] = 1
    with pytest.warns(UserWarning, match=r"image is 30x27 pixels; resized to 32x28 \(this model needs sides that are "
                                         r"multiples of 4\), and the mask with it"):  # fmt: skip
        tr = run(pipe, image=odd, mask=odd_mask, num_inference_steps=2)
    assert tr.final_image.size == (32, 28) and tr.mask.shape == (28, 32) and tr.metadata["input_notes"]
    with pytest.warns(UserWarning, match=r"image is 32x32 pixels; resized to 16x24 \(the height/width asked for\)"):
        tr = run(pipe, image=image, height=24, width=16, strength=0.5, num_inference_steps=2)
    assert tr.final_image.size == (16, 24) and tr.input_image.shape == (24, 16, 3)
    rgba = np.dstack([np.asarray(image), np.full((32, 32), 255, np.uint8)])
    with pytest.warns(UserWarning, match="alpha channel"):
        run(pipe, image=rgba, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"image must be an array \[H, W, 3\]"):
        run(pipe, image=np.zeros((32, 32, 5), np.uint8))
    with pytest.raises(TypeError, match="image must be a PIL image or a numpy array"):
        run(pipe, image="photo.png")
    with pytest.raises(ValueError, match="height=30 is not allowed"):
        run(pipe, image=image, height=30)


def test_inpainting_unet_needs_a_mask(pipe9, image):
    with pytest.raises(explainer.UnsupportedPipelineError, match="inpainting UNet \\(9 input channels\\)"):
        explainer.trace(pipe9, PROMPT, image=image, num_inference_steps=2, progress=False)
    with pytest.raises(explainer.UnsupportedPipelineError, match="for text-to-image, not StableDiffusionInpaintPipeline"):
        explainer.trace(pipe9, PROMPT, num_inference_steps=2, progress=False)


def test_no_warnings_for_good_input(pipe, image, mask):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(pipe, image=image, mask=mask, num_inference_steps=2)


# ---------------------------------------------------------------------------------------------- views


def test_views_of_edit_traces(pipe, pipe9, image, mask):
    from matplotlib.figure import Figure

    from explainer.tracing.editing import trace_strengths
    from explainer.views import blend_view, edit_overview, inpaint_progress, strength_schedule, strength_sweep

    sweep = trace_strengths(pipe, PROMPT, image, (0.75, 0.25, 0.5), num_inference_steps=4, scheduler="ddim",
                            progress=False)  # fmt: skip
    assert [t.num_steps for t in sweep] == [3, 1, 2]
    fig = strength_sweep(sweep)
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    assert fig.axes[0].get_title().startswith("strength 0.25\n1 steps")  # sorted by strength
    fig = strength_schedule(sweep[1])
    (line,) = fig.axes[0].get_lines()[-1:]  # the start marker
    assert line.get_xdata()[0] == sweep[1].start_step == 3
    assert len(edit_overview(sweep[0]).axes) == 4
    inpaint = run(pipe, image=image, mask=mask, num_inference_steps=5, scheduler="ddim")
    fig = inpaint_progress(inpaint, columns=3)
    assert [ax.get_title() for ax in fig.axes] == ["x0, step 0", "x0, step 2", "x0, step 4", "final"]
    fig = blend_view(inpaint, 1)
    diff = fig.axes[2].get_images()[0].get_array()
    assert float(np.max(diff[:, :8])) == 0.0 and float(np.max(diff[:, 8:])) > 0  # zero inside the mask only
    with pytest.raises(ValueError, match="needs an image-to-image or inpainting trace; this one is txt2img"):
        edit_overview(run(pipe, num_inference_steps=2))
    with pytest.raises(ValueError, match="needs an inpainting trace; this one is img2img"):
        inpaint_progress(sweep[0])
    with pytest.raises(ValueError, match="blend_view needs a 4-channel inpainting trace"):
        blend_view(run(pipe9, image=image, mask=mask, num_inference_steps=2), 0)


def test_interrupted_inpaint_trace_keeps_the_finished_steps(pipe, image, mask):
    calls = {"n": 0}

    def stop_on_third(module, args, output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    handle = pipe.unet.register_forward_hook(stop_on_third)
    try:
        with pytest.warns(UserWarning, match="trace interrupted after 2 of 5 steps"):
            tr = run(pipe, image=image, mask=mask, num_inference_steps=5, scheduler="ddim")
    finally:
        handle.remove()
    assert not tr.complete and tr.num_steps == 2 and tr.final_image is None
    assert tr.latents_blended.shape[0] == tr.latents_unblended.shape[0] == 2
    assert tr.mask is not None and tr.image_latent is not None and tr.input_image is not None
