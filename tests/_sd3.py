"""Tiny random-weight Stable Diffusion 3 components built from configs (as diffusers' own SD3 fast tests do).

An ``SD3Transformer2DModel`` with two joint blocks (``qk_norm`` and SD3.5's ``dual_attention_layers``
switchable), two tiny CLIP towers with projection (CLIP-L and CLIP-G), a tiny ``T5EncoderModel`` from a
``T5Config``, a 16-channel ``AutoencoderKL`` with SD3's shift and scaling factors, SD3's
``FlowMatchEulerDiscreteScheduler`` config, and the real CLIP BPE tokenizer of ``assets/toy`` in all three
tokenizer slots (the third stands in for T5's sentencepiece tokenizer).
"""

from __future__ import annotations

import torch
from _tiny import clip_tokenizer, t5_config, text_config, tiny_vae

# stabilityai/stable-diffusion-3-medium-diffusers scheduler/scheduler_config.json
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)

# stabilityai/stable-diffusion-3-medium-diffusers vae/config.json factors
SD3_VAE_SCALING = 1.5305
SD3_VAE_SHIFT = 0.0609


def tiny_sd3_vae(seed: int = 0, latent_channels: int = 16):
    """16 latent channels, scale factor 2 (32x32 images give 16x16 latents), SD3's factors."""
    return tiny_vae(seed, latent_channels, scaling_factor=SD3_VAE_SCALING, shift_factor=SD3_VAE_SHIFT)


def build_sd3_components(seed: int = 0, qk_norm: str | None = None, dual_attention_layers: tuple[int, ...] = (),
                         with_t5: bool = True) -> dict:  # fmt: skip
    """The nine components of a ``StableDiffusion3Pipeline`` (two joint blocks; T5 optional)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    clip = text_config()
    vae = tiny_sd3_vae(seed)
    t5 = t5_config(clip)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=vae.config.latent_channels,
        out_channels=vae.config.latent_channels,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=t5.d_model,  # CLIP-L + CLIP-G hidden sizes are padded to it
        pooled_projection_dim=2 * clip.projection_dim,
        pos_embed_max_size=96,
        qk_norm=qk_norm,
        dual_attention_layers=tuple(dual_attention_layers),
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(clip)
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(clip)
    torch.manual_seed(seed + 2)
    text_encoder_3 = T5EncoderModel(t5) if with_t5 else None
    return dict(
        transformer=transformer.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        text_encoder_3=text_encoder_3.eval() if text_encoder_3 is not None else None,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        tokenizer_3=clip_tokenizer() if with_t5 else None,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
    )


def build_sd3_pipeline(**kwargs):
    """A ``StableDiffusion3Pipeline`` of :func:`build_sd3_components` (progress bar off)."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(**build_sd3_components(**kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe
