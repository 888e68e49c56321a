"""Every bad input gets a short error naming the argument, before any model runs."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMPipeline, StableDiffusionImg2ImgPipeline

import explainer

PROMPT = "a red cube"


def run(pipe, *args, **kwargs):
    kwargs.setdefault("num_inference_steps", 1)
    kwargs.setdefault("progress", False)
    return explainer.trace(pipe, *args, **kwargs)


@pytest.mark.parametrize("prompt", [3, None, b"bytes", {"a": 1}])
def test_non_string_prompt(pipe, prompt):
    with pytest.raises(TypeError, match=r"^prompt must be a string"):
        run(pipe, prompt)


def test_list_of_prompts_is_refused_clearly(pipe):
    with pytest.raises(TypeError, match=r"prompt must be a single string.*not a list of 2"):
        run(pipe, ["a", "b"])


def test_bad_negative_prompt(pipe):
    with pytest.raises(TypeError, match="negative_prompt must be a single string"):
        run(pipe, PROMPT, negative_prompt=["x"])
    with pytest.raises(TypeError, match="negative_prompt must be a string or None"):
        run(pipe, PROMPT, negative_prompt=5)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), -0.5])
def test_bad_guidance(pipe, value):
    with pytest.raises(ValueError, match=r"guidance_scale=.* is not allowed; use a finite number >= 0"):
        run(pipe, PROMPT, guidance_scale=value)


def test_guidance_wrong_type(pipe):
    with pytest.raises(TypeError, match="guidance_scale must be a number"):
        run(pipe, PROMPT, guidance_scale="7")


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_below_one(pipe, steps):
    with pytest.raises(ValueError, match=rf"num_inference_steps={steps} is not allowed; use an integer from 1 to 1000"):
        run(pipe, PROMPT, num_inference_steps=steps)


def test_steps_wrong_type_or_too_many(pipe):
    with pytest.raises(TypeError, match="num_inference_steps must be an integer"):
        run(pipe, PROMPT, num_inference_steps=2.5)
    with pytest.raises(ValueError, match="num_inference_steps=5000"):
        run(pipe, PROMPT, num_inference_steps=5000)


@pytest.mark.parametrize("arg", ["height", "width"])
@pytest.mark.parametrize("value", [30, 0, -8])
def test_size_not_a_multiple(pipe, arg, value):
    multiple = pipe.vae_scale_factor * 2 ** pipe.unet.num_upsamplers
    with pytest.raises(ValueError, match=rf"{arg}={value} is not allowed; .*multiple of {multiple}"):
        run(pipe, PROMPT, **{arg: value})


def test_size_wrong_type(pipe):
    with pytest.raises(TypeError, match="height must be an integer"):
        run(pipe, PROMPT, height=32.0)


def test_unknown_scheduler_name(pipe):
    with pytest.raises(ValueError, match=r"scheduler='karras_magic' is not a known scheduler name; use one of \["):
        run(pipe, PROMPT, scheduler="karras_magic")
    with pytest.raises(TypeError, match="scheduler must be None, a name"):
        run(pipe, PROMPT, scheduler=42)


def test_unsupported_pipeline_class(pipe):
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    with pytest.raises(explainer.UnsupportedPipelineError, match="pipe must be a diffusers StableDiffusionPipeline"):
        run(img2img, PROMPT)
    with pytest.raises(TypeError, match="not DDIMPipeline"):
        run(DDIMPipeline(unet=torch.nn.Identity(), scheduler=pipe.scheduler), PROMPT)
    with pytest.raises(TypeError, match="not str"):
        run("runwayml/stable-diffusion-v1-5", PROMPT)


def test_bad_seed_and_generator(pipe):
    with pytest.raises(TypeError, match="seed must be an integer"):
        run(pipe, PROMPT, seed="0")
    with pytest.raises(ValueError, match="seed=-1"):
        run(pipe, PROMPT, seed=-1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        run(pipe, PROMPT, generator=0)


def test_bad_record(pipe):
    with pytest.raises(ValueError, match=r"record='everything' is not a recording mode; use one of"):
        run(pipe, PROMPT, record="everything")
    with pytest.raises(ValueError, match="record has unknown keys"):
        run(pipe, PROMPT, record={"attn": "none"})
    with pytest.raises(ValueError, match=r"record\['dtype'\]"):
        run(pipe, PROMPT, record={"dtype": "int8"})
    with pytest.raises(TypeError, match="record must be one of"):
        run(pipe, PROMPT, record=3)


def test_unknown_word_in_heatmap_lists_the_words(basic_trace):
    with pytest.raises(ValueError, match=r"'dog' is not a word of the prompt; its words are \['a', 'red', 'cube'"):
        basic_trace.heatmap("dog")
    with pytest.raises(ValueError, match="not a word of the negative prompt"):
        basic_trace.heatmap("cube", branch="uncond")


def test_step_out_of_range(basic_trace):
    s = basic_trace.num_steps
    with pytest.raises(explainer.StepIndexError, match=rf"step={s} is out of range; this trace has steps 0..{s - 1}"):
        basic_trace.preview(s)
    with pytest.raises(IndexError):
        basic_trace.heatmap("cube", step=s + 5)
    with pytest.raises(ValueError, match="out of range"):
        basic_trace.preview(s + 1, kind="xt")
    with pytest.raises(explainer.StepIndexError, match="selects no steps"):
        basic_trace.heatmap("cube", step=slice(10, 20))
    with pytest.raises(explainer.StepIndexError, match="token index 40 is out of range"):
        basic_trace.heatmap(40)


def test_other_view_arguments(basic_trace):
    with pytest.raises(ValueError, match="kind='noise'"):
        basic_trace.preview(0, kind="noise")
    with pytest.raises(ValueError, match="pass pipe="):
        basic_trace.preview(0, method="vae")
    with pytest.raises(ValueError, match="branch='both'"):
        basic_trace.heatmap("cube", branch="both")
    with pytest.raises(ValueError, match=r"layers=3: no layer has that resolution; resolutions: \[\(8, 8\), \(16, 16\)\]"):
        basic_trace.heatmap("cube", layers=3)
    with pytest.raises(ValueError, match="layers entry 99"):
        basic_trace.heatmap("cube", layers=[99])


def test_sd3_and_flux_need_a_recent_diffusers(monkeypatch):
    import diffusers

    from explainer.tracing import families

    assert families.dit_families_available()  # the test environment's diffusers serves them
    monkeypatch.setattr(diffusers, "__version__", "0.30.0")
    assert not families.dit_families_available()
    FluxPipeline = type("FluxPipeline", (), {})  # what an older diffusers' FLUX pipeline is to the tracer
    with pytest.raises(explainer.UnsupportedPipelineError, match=r"tracing FluxPipeline needs diffusers >= 0\.42; this is diffusers 0\.30\.0"):
        families.family_for(FluxPipeline())
