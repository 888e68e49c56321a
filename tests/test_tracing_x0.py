"""x0 per scheduler: the scheduler's own prediction, consistent with its parameterisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import explainer
from explainer.tracing.schedulers import scheduler_space, x0_coefficients

PROMPT = "a red cube beside a blue sphere"
NAMES = ["ddim", "pndm", "lms", "euler", "euler_a", "dpm++", "ddpm", "unipc"]
# Schedulers whose last step lands exactly on the predicted x0 (final noise level 0, first-order last step).
EXACT_LAST = {"euler", "euler_a", "dpm++", "ddpm"}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("fixture", ["pipe", "vpipe"])
def test_x0_is_sensible(request, fixture, name):
    pipe = request.getfixturevalue(fixture)
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=4, scheduler=name, progress=False,
                         record={"attention": "none", "dtype": "float32"})  # fmt: skip
    x0 = tr.x0.astype(np.float64)
    xt = tr.latents.astype(np.float64)
    guided = tr.eps_uncond + tr.guidance_scale * (tr.eps_cond.astype(np.float64) - tr.eps_uncond)
    # 1. the recorded x0 is the scheduler's linear map of (x_t, guided model output)
    a = tr.x0_coef_sample[:, None, None, None]
    b = tr.x0_coef_model[:, None, None, None]
    recon = a * xt[:-1] + b * guided
    assert np.allclose(recon, x0, atol=1e-3 * (1 + np.abs(x0).max())), name
    # 2. it is not the noisy latent
    assert np.abs(x0[0] - xt[0]).mean() > 0.1 * np.abs(xt[0]).mean()
    # 3. the last prediction is close to where the run ended
    span = np.abs(xt[0] - xt[-1]).max()
    gap = np.abs(x0[-1] - xt[-1]).max()
    if name in EXACT_LAST:
        assert gap < 1e-4 * span, (name, gap)
    else:
        assert gap < 0.05 * span, (name, gap, span)
    assert tr.metadata["scheduler"]["space"] == scheduler_space(explainer.SCHEDULERS[name].from_config(pipe.scheduler.config))


def test_dpm_x0_equals_convert_model_output(pipe):
    """DPM-Solver++ returns no x0; ours must equal its own data prediction, step by step."""
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=4, scheduler="dpm++", progress=False,
                         record={"attention": "none", "dtype": "float32"})  # fmt: skip
    sched = explainer.SCHEDULERS["dpm++"].from_config(pipe.scheduler.config)
    sched.set_timesteps(4)
    guided = torch.from_numpy(tr.eps_uncond + tr.guidance_scale * (tr.eps_cond - tr.eps_uncond))
    sched._init_step_index(sched.timesteps[0])  # what step() does first
    for i, t in enumerate(sched.timesteps):
        sample = torch.from_numpy(tr.latents[i])[None]
        expected = sched.convert_model_output(guided[i][None], sample=sample)
        assert torch.allclose(expected[0], torch.from_numpy(tr.x0[i]), atol=1e-4), i
        sched.step(guided[i][None], t, sample)


@pytest.mark.parametrize(
    "space,prediction",
    [("vp", "epsilon"), ("vp", "v_prediction"), ("ve", "epsilon"), ("ve", "v_prediction"), ("vp", "sample")],
)
def test_x0_coefficients_invert_the_forward_process(space, prediction):
    rng = np.random.default_rng(0)
    x0, eps = rng.normal(size=8), rng.normal(size=8)
    sigma = 3.7
    abar = 1 / (1 + sigma**2)
    alpha, sig = np.sqrt(abar), np.sqrt(1 - abar)
    xt = alpha * x0 + sig * eps if space == "vp" else x0 + sigma * eps
    target = {"epsilon": eps, "v_prediction": alpha * eps - sig * x0, "sample": x0}[prediction]
    a, b = x0_coefficients(space, prediction, sigma)
    assert np.allclose(a * xt + b * target, x0)


def test_zero_terminal_snr_v_prediction(vpipe):
    """Zero-SNR schedules start at abar = 0 (sigma = inf): v-prediction still gives x0 = -v there."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(vpipe.scheduler.config, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    tr = explainer.trace(vpipe, PROMPT, num_inference_steps=3, scheduler=sched, progress=False,
                         record={"attention": "none", "dtype": "float32"})  # fmt: skip
    assert np.isinf(tr.sigmas[0]) and tr.alphas_cumprod[0] == 0
    assert tr.x0_coef_sample[0] == 0 and tr.x0_coef_model[0] == -1
    guided = tr.eps_uncond[0] + tr.guidance_scale * (tr.eps_cond[0] - tr.eps_uncond[0])
    assert np.allclose(tr.x0[0], -guided, atol=1e-4)
    assert np.isfinite(tr.x0).all() and np.isfinite(tr.what_if_x0(0, 2.0)).all()
    assert tr.preview(0, kind="xt").size == (tr.width, tr.height)
