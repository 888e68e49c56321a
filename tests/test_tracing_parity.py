"""Parity: a traced run gives exactly the pipeline's own image, and leaves the pipeline as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, StableDiffusionPipeline

import explainer

PROMPT = "a red cube beside a blue sphere"
NAMES = ["ddim", "pndm", "lms", "euler", "euler_a", "dpm++", "ddpm", "unipc"]


def _plain(pipe, name: str | None, **kwargs):
    """The user's own call: a pipeline with that scheduler, a fresh generator with the same seed."""
    sched = pipe.scheduler if name is None else explainer.SCHEDULERS[name].from_config(pipe.scheduler.config)
    other = StableDiffusionPipeline(**{**pipe.components, "scheduler": sched})
    other.set_progress_bar_config(disable=True)
    latents = other(PROMPT, generator=torch.Generator("cpu").manual_seed(0), output_type="latent", **kwargs).images
    image = other(PROMPT, generator=torch.Generator("cpu").manual_seed(0), **kwargs).images[0]
    return latents[0].numpy(), np.asarray(image)


def _snapshot(pipe):
    return {
        "scheduler": pipe.scheduler,
        "scheduler_config": dict(pipe.scheduler.config),
        "config_scheduler": pipe.config["scheduler"],
        "processors": dict(pipe.unet.attn_processors),
        "hooks": (len(pipe.unet._forward_hooks), len(pipe.unet._forward_pre_hooks)),
        "proj_hooks": sum(len(m._forward_hooks) for m in pipe.unet.modules()),
        "forward_attrs": sum("forward" in vars(m) for m in pipe.unet.modules()),
        "instance_attrs": {k for k in ("encode_prompt", "prepare_latents") if k in vars(pipe)},
        "step_attr": "step" in vars(pipe.scheduler),
        "progress": dict(getattr(pipe, "_progress_bar_config", {})),
    }


def _assert_same(before, after):
    assert after["scheduler"] is before["scheduler"]
    assert after["scheduler_config"] == before["scheduler_config"]
    assert after["config_scheduler"] == before["config_scheduler"]
    assert after["processors"].keys() == before["processors"].keys()
    assert all(after["processors"][k] is v for k, v in before["processors"].items())
    for key in ("hooks", "proj_hooks", "forward_attrs", "instance_attrs", "step_attr", "progress"):
        assert after[key] == before[key], key


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("fixture", ["pipe", "vpipe"])
def test_traced_image_is_bit_identical(request, fixture, name):
    pipe = request.getfixturevalue(fixture)
    before = _snapshot(pipe)
    tr = explainer.trace(
        pipe, PROMPT, num_inference_steps=3, scheduler=name, progress=False, record={"dtype": "float32"}
    )
    _assert_same(before, _snapshot(pipe))
    latents, image = _plain(pipe, name, num_inference_steps=3)
    assert np.array_equal(tr.latents[-1], latents), "final latent differs from pipe()"
    assert np.array_equal(np.asarray(tr.final_image), image), "final image differs from pipe()"
    assert image.std() > 0  # a real picture, not a flat one that would match trivially
    assert tr.complete and tr.metadata["scheduler"]["name"] == name
    assert tr.metadata["prediction_type"] == ("v_prediction" if fixture == "vpipe" else "epsilon")


def test_default_scheduler_and_default_recording(pipe):
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=2, progress=False)
    _, image = _plain(pipe, None, num_inference_steps=2)
    assert np.array_equal(np.asarray(tr.final_image), image)
    assert tr.metadata["scheduler"]["class"] == type(pipe.scheduler).__name__


def test_negative_prompt_size_and_generator(pipe):
    kwargs = dict(num_inference_steps=2, negative_prompt="green", height=24, width=40, guidance_scale=5.0)
    gen = torch.Generator("cpu").manual_seed(7)
    tr = explainer.trace(pipe, PROMPT, generator=gen, scheduler="euler_a", progress=False, **kwargs)
    sched = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    other = StableDiffusionPipeline(**{**pipe.components, "scheduler": sched})
    image = other(PROMPT, generator=torch.Generator("cpu").manual_seed(7), **kwargs).images[0]
    assert np.array_equal(np.asarray(tr.final_image), np.asarray(image))
    assert tr.final_image.size == (40, 24)
    assert tr.latents.shape[-2:] == (24 // pipe.vae_scale_factor, 40 // pipe.vae_scale_factor)
    assert tr.metadata["seed"] is None and tr.metadata["generator_initial_seed"] == 7


def test_scheduler_instance_is_used_for_this_call_only(pipe):
    own = pipe.scheduler
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=2, scheduler=sched, progress=False)
    assert pipe.scheduler is own and "step" not in vars(sched)
    assert tr.metadata["scheduler"]["class"] == "DDIMScheduler"
    _, image = _plain(pipe, "ddim", num_inference_steps=2)
    assert np.array_equal(np.asarray(tr.final_image), image)


def test_pipeline_restored_after_failure(pipe):
    before = _snapshot(pipe)

    def boom(module, args, output):
        raise RuntimeError("boom")

    handle = pipe.unet.up_blocks[0].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            explainer.trace(pipe, PROMPT, num_inference_steps=2, progress=False)
    finally:
        handle.remove()
    _assert_same(before, _snapshot(pipe))
