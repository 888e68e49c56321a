"""what_if: re-guiding a recorded step from eps_uncond / eps_cond without re-running the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

import explainer
from explainer.tracing.guidance import guided_output, x0_from_output

PROMPT = "a red cube beside a blue sphere"


@pytest.mark.parametrize("name", ["ddim", "euler", "dpm++"])
def test_what_if_at_recorded_scale_equals_recorded_x0(pipe, name):
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=3, scheduler=name, progress=False)
    for step in range(tr.num_steps):
        assert np.array_equal(tr.what_if_x0(step, tr.guidance_scale), tr.x0[step].astype(np.float32))
        # and recomputing from the stored branches lands on the same x0 (fp16 storage tolerance)
        again = x0_from_output(tr, step, guided_output(tr.eps_uncond[step], tr.eps_cond[step], tr.guidance_scale))
        assert np.allclose(again, tr.x0[step], atol=2e-2 * (1 + np.abs(tr.x0[step]).max()))
    assert np.array_equal(np.asarray(tr.what_if(1, tr.guidance_scale)), np.asarray(tr.preview(1)))


def _scheduler_x0(pipe, name: str, steps: int, step: int, latent: np.ndarray, output: np.ndarray) -> np.ndarray:
    """x0 that diffusers' own scheduler ``name`` computes from a model output at ``step`` (no explainer code)."""
    sched = explainer.SCHEDULERS[name].from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    t = sched.timesteps[step]
    if hasattr(sched, "_init_step_index"):  # the schedulers that count their steps (DDIM does not)
        sched._init_step_index(t)
    sample, out = torch.from_numpy(latent)[None], torch.from_numpy(output)[None]
    if name == "dpm++":  # DPM-Solver++ turns the model output into x0 before its update
        return sched.convert_model_output(out, sample=sample)[0].numpy()
    return sched.step(out, t, sample).pred_original_sample[0].numpy()


@pytest.mark.parametrize("name", ["ddim", "euler", "dpm++"])
@pytest.mark.parametrize("fixture", ["pipe", "vpipe"])
def test_what_if_at_another_scale_matches_the_scheduler(request, fixture, name):
    """At scales other than the recorded one, what_if_x0 equals the x0 that the scheduler itself computes
    from the recorded branches guided at that scale, ``uncond + g * (cond - uncond)``, at every step."""
    pipe = request.getfixturevalue(fixture)
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=3, scheduler=name, progress=False,
                         record={"attention": "none", "dtype": "float32"})  # fmt: skip
    assert tr.guidance_scale == 7.5
    for step in range(tr.num_steps):
        uncond, cond = tr.eps_uncond[step], tr.eps_cond[step]
        for scale in (0.0, 1.0, 3.0, 12.0):
            expected = _scheduler_x0(pipe, name, 3, step, tr.latents[step], uncond + np.float32(scale) * (cond - uncond))
            got = tr.what_if_x0(step, scale)
            assert np.allclose(got, expected, atol=1e-4 * (1 + np.abs(expected).max())), (step, scale)
        assert not np.allclose(tr.what_if_x0(step, 3.0), tr.x0[step], atol=1e-3)  # the scale matters


@pytest.mark.parametrize("fixture", ["pipe", "vpipe"])
def test_what_if_matches_a_real_rerun_of_that_step(request, fixture):
    """At another scale, what_if equals the x0 the scheduler computes from that step's real UNet outputs."""
    pipe = request.getfixturevalue(fixture)
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=3, scheduler="euler", progress=False,
                         record={"attention": "none", "dtype": "float32"})  # fmt: skip
    step, scale = 1, 2.0
    sched = explainer.SCHEDULERS["euler"].from_config(pipe.scheduler.config)
    other = StableDiffusionPipeline(**{**pipe.components, "scheduler": sched})
    cond, uncond = other.encode_prompt(PROMPT, "cpu", 1, True)
    sched.set_timesteps(3)
    t = sched.timesteps[step]
    latent = torch.from_numpy(tr.latents[step])[None]
    model_in = sched.scale_model_input(torch.cat([latent] * 2), t)
    with torch.no_grad():
        out = pipe.unet(model_in, t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    guided = out[0] + scale * (out[1] - out[0])
    sched._init_step_index(t)
    expected = sched.step(guided[None], t, latent).pred_original_sample[0].numpy()
    got = tr.what_if_x0(step, scale)
    assert np.allclose(got, expected, atol=1e-4 * (1 + np.abs(expected).max()))
    assert not np.allclose(got, tr.x0[step], atol=1e-3)


def test_what_if_needs_guidance(pipe):
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=1, guidance_scale=1.0, record="none", progress=False)
    with pytest.raises(ValueError, match="without classifier-free guidance"):
        tr.what_if(0, 3.0)


def test_what_if_bad_arguments(basic_trace):
    with pytest.raises(ValueError, match="guidance_scale"):
        basic_trace.what_if(0, float("nan"))
    with pytest.raises(ValueError, match="guidance_scale"):
        basic_trace.what_if(0, -1.0)
    with pytest.raises(explainer.StepIndexError, match="out of range"):
        basic_trace.what_if(basic_trace.num_steps, 2.0)
    with pytest.raises(ValueError, match="method"):
        basic_trace.what_if(0, 2.0, method="magic")
