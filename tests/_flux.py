"""Tiny random-weight FLUX.1 components built from configs (as diffusers' own FLUX fast tests do).

A ``FluxTransformer2DModel`` with one double-stream and one single-stream block (``guidance_embeds``
switchable: FLUX.1-dev is guidance-distilled, FLUX.1-schnell is not), a tiny CLIP text tower (only its
pooled output is used), a tiny ``T5EncoderModel`` from a ``T5Config``, a 16-channel ``AutoencoderKL``
with FLUX's shift and scaling factors, ``FlowMatchEulerDiscreteScheduler`` with FLUX.1-dev's dynamic
shifting, and the real CLIP BPE tokenizer of ``assets/toy`` in both tokenizer slots (the second one
allowed FLUX's 512 tokens, like FLUX's T5 tokenizer).
"""

from __future__ import annotations

import torch
from _tiny import clip_tokenizer, t5_config, text_config, tiny_vae

# black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json
FLUX_SCHEDULER = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=4096,
    max_shift=1.15,
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
)

# black-forest-labs/FLUX.1-dev vae/config.json factors
FLUX_VAE_SCALING = 0.3611
FLUX_VAE_SHIFT = 0.1159

T5_MAX_LENGTH = 512  # FLUX.1's tokenizer_2 (T5) model_max_length


def tiny_flux_vae(seed: int = 0, latent_channels: int = 16):
    """16 latent channels, scale factor 2 (32x32 images give 16x16 latents), FLUX's factors."""
    return tiny_vae(seed, latent_channels, scaling_factor=FLUX_VAE_SCALING, shift_factor=FLUX_VAE_SHIFT)


def build_flux_components(seed: int = 0, guidance_embeds: bool = True, num_layers: int = 1,
                          num_single_layers: int = 1) -> dict:  # fmt: skip
    """The seven components of a ``FluxPipeline`` (no IP-adapter image encoder)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    clip = text_config()
    vae = tiny_flux_vae(seed)
    t5 = t5_config(clip)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=vae.config.latent_channels * 4,  # 2x2 packed latent patches
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5.d_model,
        pooled_projection_dim=clip.hidden_size,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(clip)
    torch.manual_seed(seed + 1)
    text_encoder_2 = T5EncoderModel(t5)
    return dict(
        transformer=transformer.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(model_max_length=T5_MAX_LENGTH),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER),
    )


def build_flux_pipeline(**kwargs):
    """A ``FluxPipeline`` on the tiny components (``guidance_embeds=False``: a schnell-style model)."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline(**build_flux_components(**kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe
