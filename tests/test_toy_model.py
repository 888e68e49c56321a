"""The bundled toy model: it loads offline, is deterministic, and draws what its captions say."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import explainer
from explainer.toy.checker import caption_scores
from explainer.toy.evaluate import attention_peak_hit, generate, object_word_hits

# A small fixed set covering every caption form, colour and shape (not drawn from the training seeds).
PROMPTS = [
    "a red circle on the left",
    "a blue square on the right",
    "a yellow triangle at the top",
    "a green circle at the bottom",
    "a blue triangle in the center",
    "a red square and a green triangle",
    "a yellow circle and a blue square",
    "a green square above a red circle",
    "a blue circle above a yellow triangle",
]


@pytest.fixture(scope="module")
def toy():
    pipe = explainer.load_pipeline("toy", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_toy_is_a_stable_diffusion_pipeline_with_sd_components(toy):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    assert isinstance(toy, StableDiffusionPipeline)
    assert isinstance(toy.unet, UNet2DConditionModel) and isinstance(toy.vae, AutoencoderKL)
    assert isinstance(toy.text_encoder, CLIPTextModel) and isinstance(toy.tokenizer, CLIPTokenizer)
    assert toy.unet.dtype == torch.float32
    assert toy.vae.config.latent_channels == 4 and toy.vae.config.scaling_factor != 1.0
    assert toy.unet.config.sample_size >= 16
    n_cross = sum(1 for name, _ in toy.unet.attn_processors.items() if "attn2" in name)
    assert n_cross >= 4
    # The real CLIP BPE vocabulary: SD 1.x ids.
    assert toy.tokenizer("a red circle").input_ids == [49406, 320, 736, 7117, 49407]
    assert toy.tokenizer.model_max_length == toy.text_encoder.config.max_position_embeddings


def test_same_seed_same_image(toy):
    def run(seed):
        g = torch.Generator("cpu").manual_seed(seed)
        return np.asarray(toy("a red circle on the left", num_inference_steps=10, generator=g).images[0])

    a, b, c = run(3), run(3), run(4)
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_fixed_prompts_are_drawn_faithfully(toy):
    imgs = generate(toy, PROMPTS, guidance_scale=7.5, num_inference_steps=25, seed=0, progress=False)
    scores = [caption_scores(im, p) for im, p in zip(imgs, PROMPTS)]
    cp = sum(s["colour_position"] for s in scores)
    shape = sum(s["shape"] for s in scores)
    assert cp >= len(PROMPTS) - 1, scores
    assert shape >= len(PROMPTS) - 2, scores


def test_guidance_matters(toy):
    # Without guidance (scale 1) and with it, the same seed gives visibly different images.
    g = lambda: torch.Generator("cpu").manual_seed(0)  # noqa: E731
    a = np.asarray(toy(PROMPTS[5], num_inference_steps=10, guidance_scale=1.0, generator=g()).images[0], float)
    b = np.asarray(toy(PROMPTS[5], num_inference_steps=10, guidance_scale=7.5, generator=g()).images[0], float)
    assert np.abs(a - b).mean() > 2.0


@pytest.mark.parametrize("prompt", ["a red circle on the left", "a blue square at the bottom",
                                    "a yellow triangle at the top", "a green circle on the right"])
def test_shape_word_maps_peak_on_their_object(toy, prompt):
    # One-object captions: the shape word's global map (all steps, all layers) peaks on the object.
    tr = explainer.trace(toy, prompt, num_inference_steps=25, guidance_scale=7.5, seed=0, progress=False)
    assert caption_scores(np.asarray(tr.final_image), prompt)["colour"]
    assert attention_peak_hit(tr, prompt)


@pytest.mark.parametrize("prompt", ["a red square and a green triangle", "a green square above a red circle",
                                    "a blue circle above a yellow triangle"])
def test_every_object_word_of_two_object_captions_peaks_on_its_own_object(toy, prompt):
    # Both colour words and both shape words, the second object's included.
    tr = explainer.trace(toy, prompt, num_inference_steps=25, guidance_scale=7.5, seed=0, progress=False)
    assert caption_scores(np.asarray(tr.final_image), prompt)["colour_position"]
    hits = object_word_hits(tr, prompt)
    assert len(hits) == 4 and all(hits.values()), hits
