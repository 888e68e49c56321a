"""Opt-in: trace a real Stable Diffusion 1.x checkpoint (``pytest --real-weights``).

The checkpoint comes from ``$EXPLAINER_SD_MODEL`` (a diffusers folder or a cached Hub id) or the
Hugging Face cache (tests/conftest.py: ``find_real_sd1``). Without ``--real-weights`` these tests are
skipped; with it and no checkpoint, they fail. Small runs (256 x 256, 4 steps) keep them to minutes on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import explainer

pytestmark = pytest.mark.real_weights

PROMPT = "a photo of a red apple on a wooden table"
STEPS = 4
SIZE = 256


@pytest.fixture(scope="module")
def real_pipe(real_model):
    pipe = explainer.load_pipeline(real_model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def real_trace(real_pipe):
    return explainer.trace(real_pipe, PROMPT, num_inference_steps=STEPS, height=SIZE, width=SIZE, seed=0, progress=False)


def test_real_trace_is_bit_identical_to_the_pipeline(real_pipe, real_trace):
    generator = torch.Generator(device=real_pipe.device).manual_seed(0)
    image = real_pipe(PROMPT, num_inference_steps=STEPS, height=SIZE, width=SIZE, generator=generator).images[0]
    assert real_trace.complete and real_trace.final_image.size == (SIZE, SIZE)
    assert np.array_equal(np.asarray(real_trace.final_image), np.asarray(image)), "the traced image differs from pipe()"
    assert np.asarray(image, np.float32).std() > 5  # a picture, not a flat image that would match trivially
    for name in ("latents", "x0", "eps_cond", "eps_uncond"):
        assert np.isfinite(getattr(real_trace, name)).all(), name


def test_real_attention_maps_are_probabilities_over_the_prompt(real_pipe):
    tr = explainer.trace(real_pipe, PROMPT, num_inference_steps=2, height=SIZE, width=SIZE, seed=0, progress=False,
                         record={"tokens": "all", "dtype": "float32"})  # fmt: skip
    sites = [name for name, _ in real_pipe.unet.named_modules() if name.endswith("attn2")]
    assert len(tr.attention_layers) == len(sites) > 0
    latent = SIZE // real_pipe.vae_scale_factor
    assert {(la.height, la.width) for la in tr.attention_layers} <= {(latent >> k, latent >> k) for k in range(4)}
    for key, arr in tr.attention.items():  # [step, layer, token, h, w], every token of the 77
        assert arr.shape[2] == real_pipe.tokenizer.model_max_length, key
        assert np.allclose(arr.astype(np.float64).sum(axis=2), 1.0, atol=5e-3), key  # each pixel's row sums to 1
    apple, table = tr.heatmap("apple"), tr.heatmap("table")
    for heat in (apple, table):
        assert heat.shape == (SIZE, SIZE) and np.isfinite(heat).all()
        assert heat.min() >= 0 and heat.max() <= 1 and heat.std() > 0.01
    assert np.abs(apple - table).mean() > 0.01  # two words, two different maps


def test_real_trace_saves_and_exports(real_trace, tmp_path):
    loaded = explainer.load_trace(real_trace.save(tmp_path / "real.safetensors"))
    assert np.array_equal(loaded.latents, real_trace.latents) and loaded.attention.keys() == real_trace.attention.keys()
    assert np.array_equal(np.asarray(loaded.final_image), np.asarray(real_trace.final_image))
    gif = explainer.export(loaded, tmp_path / "steps.gif", verbose=False)
    with Image.open(gif) as im:
        assert im.n_frames == loaded.num_steps  # a frame per recorded step (PNDM records one more than asked)
    html = explainer.export(loaded, tmp_path / "steps.html", verbose=False).read_text(encoding="utf-8")
    assert PROMPT in html and "http://" not in html.replace("http://www.w3.org", "")
