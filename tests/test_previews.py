"""Heatmaps, linear and VAE previews, latent → RGB factors."""

from __future__ import annotations

import gc
from dataclasses import fields

import numpy as np
import pytest
import torch
from PIL import Image

import explainer
from explainer.tracing import previews
from explainer.tracing.attention import AttentionLayer, Word


def test_heatmap_shape_range_and_word_equals_token(basic_trace):
    tr = basic_trace
    m = tr.heatmap("cube")
    assert m.shape == (tr.height, tr.width) and m.dtype == np.float32
    assert m.min() >= 0 and np.isclose(m.max(), 1.0)
    assert np.array_equal(m, tr.heatmap(tr.tokens.index("cube</w>")))
    assert np.array_equal(m, tr.heatmap("CUBE"))
    assert not np.allclose(m, tr.heatmap("sphere"))


def test_heatmap_steps_layers_branches(basic_trace):
    tr = basic_trace
    by_step = [tr.heatmap("red", step=i) for i in range(tr.num_steps)]
    assert not np.allclose(by_step[0], by_step[-1])
    assert tr.heatmap("red", step=slice(0, 2)).shape == (tr.height, tr.width)
    assert tr.heatmap("red", step=-1).shape == (tr.height, tr.width)
    low = tr.heatmap("red", layers=8)
    assert np.array_equal(low, tr.heatmap("red", layers="8x8"))
    assert np.array_equal(low, tr.heatmap("red", layers=[la.index for la in tr.attention_layers if la.height == 8]))
    assert not np.allclose(low, tr.heatmap("red", layers=16))
    assert tr.heatmap(0, branch="uncond").shape == (tr.height, tr.width)
    assert tr.heatmap("<|endoftext|>", branch="uncond").shape == (tr.height, tr.width)


def test_heatmap_is_daam_style_aggregate(basic_trace):
    """Global map = max-normalised mean over steps and layers of the bilinearly upsampled maps."""
    tr = basic_trace
    idx = tr.tokens.index("blue</w>")
    total = np.zeros((tr.height, tr.width))
    for la in tr.attention_layers:
        grid = tr.attention[f"cond/{la.group}"][:, la.slot, idx].astype(np.float32).mean(0)
        up = torch.nn.functional.interpolate(torch.from_numpy(grid)[None, None], size=(tr.height, tr.width),
                                             mode="bilinear", align_corners=False)[0, 0].numpy()  # fmt: skip
        total += up
    total /= total.max()
    assert np.allclose(tr.heatmap("blue"), total, atol=1e-5)


def test_multi_token_word_averages_its_tokens(pipe):
    tr = explainer.trace(pipe, "unbelievably naïve", num_inference_steps=1, progress=False)
    word = next(w for w in tr.words if len(w.token_indices) > 1)
    layer = tr.attention_layers[0]
    got = tr.heatmap(word.text, layers=[layer.index])
    grid = tr.attention[f"cond/{layer.group}"][0, layer.slot, list(word.token_indices)].astype(np.float32).mean(0)
    up = torch.nn.functional.interpolate(torch.from_numpy(grid)[None, None], size=got.shape, mode="bilinear",
                                         align_corners=False)[0, 0].numpy()  # fmt: skip
    assert np.allclose(got, up / up.max(), atol=1e-5)


def test_heatmap_per_step_and_per_head_modes(pipe):
    per_step = explainer.trace(pipe, "a red cube", num_inference_steps=2, record="per_step", progress=False)
    per_head = explainer.trace(pipe, "a red cube", num_inference_steps=2, record="per_head", progress=False)
    per_layer = explainer.trace(pipe, "a red cube", num_inference_steps=2, record="per_layer", progress=False)
    a, b, c = (t.heatmap("red") for t in (per_step, per_head, per_layer))
    assert np.allclose(b, c, atol=5e-3)
    assert np.corrcoef(a.ravel(), c.ravel())[0, 1] > 0.9  # per_step averages on the latent grid first
    with pytest.raises(ValueError, match="layers must be None"):
        per_step.heatmap("red", layers=8)
    none = explainer.trace(pipe, "a red cube", num_inference_steps=1, record="none", progress=False)
    with pytest.raises(ValueError, match="recorded no attention"):
        none.heatmap("red")


def test_linear_preview(basic_trace):
    tr = basic_trace
    for kind, step in (("x0", 0), ("xt", 0), ("xt", tr.num_steps)):
        img = tr.preview(step, kind=kind)
        assert isinstance(img, Image.Image) and img.size == (tr.width, tr.height) and img.mode == "RGB"
    assert tr.preview(0).tobytes() != tr.preview(tr.num_steps - 1).tobytes()


def test_final_linear_preview_resembles_final_image(basic_trace):
    tr = basic_trace
    assert tr.latent_rgb is not None and tr.latent_rgb.source.startswith("fit:")  # tiny VAE: not SD 1.x weights
    preview = np.asarray(tr.preview(tr.num_steps, kind="xt"), np.float32)
    final = np.asarray(tr.final_image, np.float32)
    err_fit = np.abs(preview - final).mean()
    err_flat = np.abs(final.mean(axis=(0, 1)) - final).mean()
    assert err_fit < err_flat  # the fitted map explains the image better than its mean colour


def test_vae_preview_is_cached_and_matches_pipeline_decode(pipe, basic_trace):
    tr = basic_trace
    previews.clear_preview_cache()
    final = tr.preview(tr.num_steps, kind="xt", method="vae", pipe=pipe)
    assert previews.preview_cache_size(pipe) == 1
    assert tr.preview(tr.num_steps, kind="xt", method="vae", pipe=pipe) is final
    assert tr.preview(tr.num_steps, kind="xt", method="vae", pipe=pipe.vae) is final  # keyed by the VAE
    # fp16-stored final latent, decoded again: within a couple of grey levels of the pipeline's image
    diff = np.abs(np.asarray(final, np.int16) - np.asarray(tr.final_image, np.int16))
    assert diff.mean() < 2.0
    tr.preview(0, method="vae", pipe=pipe)
    tr.what_if(0, 3.0, method="vae", pipe=pipe)
    assert previews.preview_cache_size(pipe) == 3
    previews.clear_preview_cache()
    assert previews.preview_cache_size(pipe) == 0


def test_trace_holds_no_model(basic_trace):
    banned = (torch.nn.Module, torch.Tensor, torch.Generator)
    seen, stack = set(), [basic_trace]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        assert not isinstance(obj, banned), type(obj)
        assert "diffusers" not in type(obj).__module__ and "transformers" not in type(obj).__module__
        if hasattr(obj, "__dataclass_fields__"):
            stack.extend(getattr(obj, f.name) for f in fields(obj))
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
    assert isinstance(basic_trace.words[0], Word) and isinstance(basic_trace.attention_layers[0], AttentionLayer)
    gc.collect()


def test_fit_recovers_a_linear_decoder():
    """A VAE whose decoder is exactly linear per pixel must be recovered exactly."""
    true = np.array([[0.3, -0.2, 0.1], [0.1, 0.4, -0.3], [-0.2, 0.1, 0.5], [0.05, -0.1, 0.2]], np.float32)
    bias = np.array([0.1, -0.05, 0.02], np.float32)

    class LinearVAE(torch.nn.Module):
        config = {"scaling_factor": 1.0, "latent_channels": 4, "block_out_channels": (8, 8), "sample_size": 8}

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.from_numpy(true))

        def decode(self, z, return_dict=False):
            rgb = torch.einsum("nchw,ck->nkhw", z, self.w) + torch.from_numpy(bias)[:, None, None]
            return (torch.nn.functional.interpolate(rgb, scale_factor=2, mode="nearest"),)

    class Cfg(dict):
        __getattr__ = dict.__getitem__

    vae = LinearVAE()
    vae.config = Cfg(LinearVAE.config)
    fitted = explainer.fit_latent_rgb_factors(vae, torch.randn(3, 4, 6, 6) * 0.3)
    assert np.allclose(fitted.factors, true, atol=1e-5) and np.allclose(fitted.bias, bias, atol=1e-5)
    assert fitted.r2 > 0.999
    random_fit = explainer.fit_latent_rgb_factors(vae)  # random latents at the VAE's native size
    assert np.allclose(random_fit.factors, true, atol=1e-3)


def test_fit_on_real_tiny_vae_and_trace(pipe, basic_trace):
    fitted = explainer.fit_latent_rgb_factors(pipe, basic_trace)
    assert fitted.factors.shape == (pipe.vae.config.latent_channels, 3) and fitted.source == "fit:vae-decodes(trace)"
    assert np.isfinite(fitted.r2)
    with pytest.raises(ValueError, match="latents must have shape"):
        explainer.fit_latent_rgb_factors(pipe, np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(TypeError, match="AutoencoderKL"):
        explainer.fit_latent_rgb_factors(object())


def test_sd1_factors_chosen_only_when_they_explain_the_image():
    cfg = {"latent_channels": 4, "scaling_factor": 0.18215, "shift_factor": None}
    rng = np.random.default_rng(0)
    latent = torch.from_numpy(rng.normal(scale=0.4, size=(4, 8, 8)).astype(np.float32))  # decodes within [-1, 1]
    sd1 = previews.preset_latent_rgb(cfg)
    rgb = sd1.apply(latent.numpy())  # [h, w, 3]
    big = np.kron(rgb, np.ones((8, 8, 1)))  # what a VAE that matches SD 1.x would decode (blocky)
    image = previews.to_pil(big)
    chosen = previews.choose_latent_rgb(cfg, latent, image)
    assert chosen.source == "comfyui-sd1" and chosen.r2 > 0.9
    noise = previews.to_pil(rng.uniform(-1, 1, size=(64, 64, 3)))
    assert previews.choose_latent_rgb(cfg, latent, noise).source == "fit:final-image"
    assert previews.preset_latent_rgb({"latent_channels": 16, "scaling_factor": 0.18215}) is None


def test_decode_steps_batches_into_the_preview_cache(pipe, basic_trace):
    tr = basic_trace
    previews.clear_preview_cache()
    images = previews.decode_steps(tr, pipe, "x0", batch_size=2)
    assert len(images) == tr.num_steps and previews.preview_cache_size(pipe) == tr.num_steps
    for s, image in enumerate(images):
        assert tr.preview(s, kind="x0", method="vae", pipe=pipe) is image  # served from the cache
        alone = previews.decode_latents(pipe.vae, tr.latent(s, "x0")[None])[0].permute(1, 2, 0).numpy()
        assert np.abs(np.asarray(image, np.int16) - np.asarray(previews.to_pil(alone), np.int16)).max() <= 1
    xt = previews.decode_steps(tr, pipe.vae, "xt", steps=[-1, 0])
    assert xt[0] is tr.preview(tr.num_steps, kind="xt", method="vae", pipe=pipe)
    assert previews.decode_steps(tr, pipe, "x0", steps=[1])[0] is images[1]
    with pytest.raises(ValueError, match="batch_size=0"):
        previews.decode_steps(tr, pipe, batch_size=0)
    with pytest.raises(ValueError, match="kind='eps'"):
        previews.decode_steps(tr, pipe, "eps")


def test_vae_decode_is_cheap_rule(pipe, basic_trace):
    toy = explainer.load_pipeline()
    toy_trace = explainer.trace(toy, "a red circle", num_inference_steps=50, progress=False, record="none")
    assert previews.vae_decode_is_cheap(toy, toy_trace)  # the toy at 50 steps
    assert previews.vae_decode_is_cheap(pipe, basic_trace)

    class Big(torch.nn.Module):  # SD 1.x's decoder size, without allocating it
        config: dict = {}

        def decode(self, z):  # pragma: no cover - never called
            raise AssertionError

        def parameters(self, recurse=True):
            yield torch.zeros(49_490_000 // 1000, 1000)

    class SD512:
        width = height = 512
        num_steps = 25

    assert previews.decode_cost(Big(), SD512()) > 1e14
    assert not previews.vae_decode_is_cheap(Big(), SD512())
    assert previews.vae_decode_is_cheap(Big(), SD512(), budget=1e16)
