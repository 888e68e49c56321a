"""SDXL traces in use: the default call guides as the plain pipeline does, every view, export and the explorer
on traces with and without a negative prompt (the all-zero negative embedding explained, never a token
lookup error), the CLI's --prompt-2 / --negative-prompt-2 and `explainer info`, and outpainting."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from _sdxl import build_sdxl_pipeline
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline
from PIL import Image

import explainer
from explainer import views

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PROMPT = "a red cube beside a blue sphere"
ZEROS = "all zeros: no negative tokens"


@pytest.fixture(scope="module")
def xl():
    return build_sdxl_pipeline()


@pytest.fixture(scope="module")
def traces(xl):
    """The same SDXL run without a negative prompt (all-zero negative embedding) and with one."""
    zero = explainer.trace(xl, PROMPT, num_inference_steps=3, progress=False)
    neg = explainer.trace(xl, PROMPT, negative_prompt="blurry", num_inference_steps=3, progress=False)
    return {"zero": zero, "negative": neg}


def _picture() -> Image.Image:
    yy, xx = np.mgrid[0:32, 0:32]
    return Image.fromarray(np.stack([xx * 8, yy * 8, (xx + yy) * 4], -1).astype(np.uint8), "RGB")


def _seed() -> torch.Generator:
    return torch.Generator("cpu").manual_seed(0)


def test_default_call_guides_as_the_plain_pipeline_does(xl, pipe):
    """trace(pipe, p) uses the running pipeline's own guidance default: 5.0 for SDXL, 7.5 for SD and SDXL inpaint."""
    tr = explainer.trace(xl, PROMPT, num_inference_steps=2, progress=False)
    plain = xl(PROMPT, num_inference_steps=2, generator=_seed()).images[0]
    assert tr.guidance_scale == 5.0 and np.array_equal(np.asarray(tr.final_image), np.asarray(plain))
    other = explainer.trace(xl, PROMPT, num_inference_steps=2, guidance_scale=7.5, progress=False)
    assert not np.array_equal(np.asarray(other.final_image), np.asarray(plain))  # the default is what made them equal

    image = _picture()
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 4:20] = 255
    for cls, edit, expected in (
        (StableDiffusionXLImg2ImgPipeline, {"image": image, "strength": 0.75}, 5.0),
        (StableDiffusionXLInpaintPipeline, {"image": image, "mask_image": Image.fromarray(mask, "L"), "strength": 1.0,
                                            "height": 32, "width": 32}, 7.5),
    ):  # fmt: skip
        run = cls.from_pipe(xl)
        run.set_progress_bar_config(disable=True)
        ref = run(PROMPT, num_inference_steps=3, generator=_seed(), **edit).images[0]
        kwargs = {k: v for k, v in edit.items() if k not in ("mask_image", "height", "width")}
        if "mask_image" in edit:
            kwargs["mask"] = edit["mask_image"]
        tr = explainer.trace(xl, PROMPT, num_inference_steps=3, progress=False, **kwargs)
        assert tr.guidance_scale == expected, cls.__name__
        assert np.array_equal(np.asarray(tr.final_image), np.asarray(ref)), cls.__name__

    sd = explainer.trace(pipe, PROMPT, num_inference_steps=2, progress=False)
    ref = pipe(PROMPT, num_inference_steps=2, generator=_seed()).images[0]
    assert sd.guidance_scale == 7.5 and np.array_equal(np.asarray(sd.final_image), np.asarray(ref))
    assert explainer.estimate_trace_bytes(xl, PROMPT, num_inference_steps=2) == explainer.estimate_trace_bytes(
        xl, PROMPT, num_inference_steps=2, guidance_scale=5.0)  # fmt: skip


def test_negative_token_views_explain_the_zero_embedding(traces, xl):
    from explainer.widgets import Explorer

    zero, neg = traces["zero"], traces["negative"]
    assert zero.has_uncond and zero.negative_tokens == []
    calls = {
        "heatmap word": lambda tr: tr.heatmap("blurry", branch="uncond"),
        "heatmap index": lambda tr: tr.heatmap(0, branch="uncond"),
        "token_overlay": lambda tr: views.token_overlay(tr, 0, branch="uncond"),
        "concentration": lambda tr: views.concentration(tr, 0, branch="uncond"),
        "emergence_curve": lambda tr: views.emergence_curve(tr, "cube", negative_tokens=[0]),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=ZEROS):
            call(zero)
        out = call(neg)  # the same call on a trace with a negative prompt works
        assert out is not None, name
    plt.close("all")
    assert neg.heatmap("blurry", branch="uncond").max() == pytest.approx(1.0)
    w = Explorer(zero, pipe=xl)
    w.selected = ["uncond:0"]
    w.wait_idle()
    assert ZEROS in w.error and not w.overlay_maps
    assert not any(g["branch"] == "uncond" for g in w._chip_groups(zero))  # no chips for tokens never seen
    w2 = Explorer(neg, pipe=xl)
    w2.selected = ["uncond:1"]  # "blurry"
    assert w2.wait_idle() and not w2.error and len(w2.overlay_maps) == neg.num_steps


@pytest.mark.parametrize("which", ["zero", "negative"])
def test_every_view_and_export_on_sdxl_traces(traces, which, tmp_path):
    tr = traces[which]
    figures = [
        views.token_overlay(tr, "cube", 1),
        views.emergence_curve(tr, ["red", "cube"], step=1),
        views.guidance_decomposition(tr, 1),
        views.guidance_sweep(tr, 1),
        views.schedule_plot(tr, 1),
        views.compare_steps([tr, traces["zero"]], 1),
        views.latent_trajectory([tr, traces["zero"]]),
    ]
    assert all(len(f.axes) > 0 for f in figures)
    plt.close("all")
    assert tr.what_if(1, 2.0).size == (tr.width, tr.height)
    for suffix in ("gif", "webp", "mp4", "png", "html"):
        out = explainer.export(tr, tmp_path / f"run.{suffix}", verbose=False)
        assert out.stat().st_size > 0, suffix
    out = explainer.export(tr, tmp_path / "guidance.gif", panels=["guidance", "overlay"], words=["cube"], verbose=False)
    assert out.stat().st_size > 0


def test_cli_prompt_2_flags_and_info(xl, tmp_path, capsys):
    from explainer import cli

    folder = tmp_path / "sdxl"
    xl.save_pretrained(folder, safe_serialization=True)
    out = tmp_path / "run"
    argv = ["run", PROMPT, "--model", str(folder), "--steps", "2", "--prompt-2", "green grass", "--negative", "blurry",
            "--negative-prompt-2", "dark", "--out", str(out), "--quiet", "--no-gif", "--no-html"]  # fmt: skip
    assert cli.main(argv) == 0
    tr = explainer.load_trace(out / "trace.safetensors")
    assert [s["text"] for s in tr.token_segments["cond"]] == [PROMPT, "green grass"]
    assert [s["text"] for s in tr.token_segments["uncond"]] == ["blurry", "dark"]
    ref = explainer.trace(xl, PROMPT, prompt_2="green grass", negative_prompt="blurry", negative_prompt_2="dark",
                          num_inference_steps=2, progress=False)  # fmt: skip
    assert np.array_equal(np.asarray(tr.final_image), np.asarray(ref.final_image)) and tr.guidance_scale == 5.0
    capsys.readouterr()
    assert cli.main(["info", str(out / "trace.safetensors")]) == 0
    text = capsys.readouterr().out
    rows = [line.split(None, 1) for line in text.splitlines()]
    assert ["family", "sdxl"] in rows and ["uncond", "negative prompt"] in rows
    segments = [value for key, value in rows if key == "segment"]
    assert segments[0].startswith("prompt_2 = 'green grass' via tokenizer_2 (same key positions), 4 tokens: ")
    assert segments[1].startswith("negative_prompt_2 = 'dark' via tokenizer_2 (same key positions)")
    # the zero negative is said so
    zero = explainer.trace(xl, PROMPT, num_inference_steps=1, progress=False).save(tmp_path / "zero.safetensors")
    assert cli.main(["info", str(zero), "--json"]) == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    assert summary["family"] == "sdxl" and summary["unconditional"].startswith("zeros")
    assert [s["name"] for s in summary["token_segments"]["cond"]] == ["prompt", "prompt_2"]
    assert summary["token_segments"]["uncond"] == []


@pytest.mark.parametrize("flag", ["--prompt-2", "--negative-prompt-2"])
def test_cli_prompt_2_refused_on_sd(flag, tmp_path, capsys):
    from explainer import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "a red circle", flag, "x", "--steps", "1", "--out", str(tmp_path / "o"), "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: explainer run") and err[-1] == (
        f"explainer run: error: {flag} applies to Stable Diffusion XL models (a second text encoder); --model toy is "
        f"a Stable Diffusion 1.x/2.x model with one, so leave {flag} out."
    )
    assert not (tmp_path / "o").exists()


def test_outpaint_on_sdxl(xl):
    image = _picture().resize((24, 32))
    with pytest.warns(UserWarning, match="rounded up to 32x32"):
        tr = explainer.outpaint(xl, PROMPT, image, right=6, num_inference_steps=2, progress=False)
    assert tr.family == "sdxl" and tr.mode == "inpaint" and tr.final_image.size == (32, 32)
    assert tr.metadata["outpaint"]["right"] == 8 and tr.metadata["model"]["pipeline"] == "StableDiffusionXLInpaintPipeline"
    canvas = Image.fromarray(tr.input_image)
    run = StableDiffusionXLInpaintPipeline.from_pipe(xl)
    run.set_progress_bar_config(disable=True)
    mask = Image.fromarray((tr.mask * 255).astype(np.uint8), "L")
    ref = run(PROMPT, image=canvas, mask_image=mask, strength=1.0, num_inference_steps=2, height=32, width=32,
              generator=_seed()).images[0]  # fmt: skip
    assert np.array_equal(np.asarray(tr.final_image), np.asarray(ref))
    assert np.asarray(tr.mask)[:, 24:].all() and not np.asarray(tr.mask)[:, :24].any()
