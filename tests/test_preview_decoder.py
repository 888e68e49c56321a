"""The TAESD preview tier: load_preview_decoder, preview(method="taesd"), and the explorer's choice of tier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import explainer
from explainer.tracing import preview_decoder, previews


def tiny_autoencoder(seed: int = 0):
    """A random-weight ``AutoencoderTiny`` at the test pipelines' scale factor (2) and latent channels (4)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                           num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4).eval()  # fmt: skip


@pytest.fixture()
def registry(monkeypatch):
    """A clean decoder registry whose repositories are not in any cache."""
    monkeypatch.setattr(preview_decoder, "_LOADED", {})
    monkeypatch.setattr(preview_decoder, "TINY_DECODERS", {k: f"nobody/not-cached-{v.split('/')[1]}"
                                                           for k, v in preview_decoder.TINY_DECODERS.items()})  # fmt: skip


def test_taesd_preview_from_a_local_folder(basic_trace, tmp_path, registry):
    folder = tmp_path / "taesd"
    tiny_autoencoder().save_pretrained(folder)
    dec = explainer.load_preview_decoder(folder)  # family guessed from the folder name
    assert type(dec).__name__ == "AutoencoderTiny" and preview_decoder.find_preview_decoder("sd") is dec
    image = basic_trace.preview(1, method="taesd")
    assert image.size == (basic_trace.width, basic_trace.height)
    direct = previews.decode_latents(dec, basic_trace.x0[1:2].astype(np.float32))[0].permute(1, 2, 0).numpy()
    assert image.tobytes() == previews.to_pil(direct).tobytes()
    assert previews.preview_cache_size(dec) >= 1
    assert basic_trace.preview(1, method="taesd").tobytes() == image.tobytes()  # cached
    assert image.tobytes() != basic_trace.preview(1).tobytes()  # not the linear tier
    assert basic_trace.what_if(1, 3.0, method="taesd").size == image.size


def test_an_explicit_decoder_and_a_pipeline_with_a_tiny_vae(basic_trace, registry):
    dec = tiny_autoencoder(seed=1)
    a = basic_trace.preview(2, kind="xt", method="taesd", pipe=dec)

    class Pipe:  # a pipeline whose vae is the tiny autoencoder
        vae = dec

    assert basic_trace.preview(2, kind="xt", method="taesd", pipe=Pipe()).tobytes() == a.tobytes()


def test_without_a_decoder_the_message_says_how_to_get_one(basic_trace, registry, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"huggingface-cli download nobody/not-cached-taesd"):
        basic_trace.preview(1, method="taesd")
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        explainer.load_preview_decoder(family="sdxl")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        explainer.load_preview_decoder(tmp_path / "missing" / "taesd")
    with pytest.raises(ValueError, match="cannot tell the model family"):
        explainer.load_preview_decoder(tmp_path / "decoder")
    with pytest.raises(ValueError, match="family='sd4' is not allowed"):
        explainer.load_preview_decoder(family="sd4")
    with pytest.raises(ValueError, match="use 'linear', 'taesd' or 'vae'"):
        basic_trace.preview(1, method="tiny")
    assert preview_decoder._family_from_name("madebyollin/taesdxl") == "sdxl"
    assert preview_decoder._family_from_name("/x/taef1") == "flux" and preview_decoder._family_from_name("taesd3") == "sd3"


def test_explorer_uses_the_tiny_decoder_between_linear_and_full(basic_trace, pipe, registry):
    from explainer.widgets import Explorer

    assert Explorer(basic_trace).preview_method == "linear"  # no pipeline, no tiny decoder
    dec = tiny_autoencoder()
    preview_decoder.use_preview_decoder(dec, family="sd")
    w = Explorer(basic_trace)
    assert w.preview_method == "taesd" and "TAESD" in w.preview_label
    assert w.frames["x0"] and previews.preview_cache_size(dec) >= basic_trace.num_steps
    assert Explorer(basic_trace, pipe=pipe).preview_method == "vae"  # a cheap full VAE still wins
