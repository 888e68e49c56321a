"""Tiny random-weight Stable Diffusion XL components built from configs (as diffusers' SDXL fast tests do).

Two CLIP text towers (the second a ``CLIPTextModelWithProjection`` whose pooled output feeds the
UNet's ``text_time`` embedding), the real CLIP tokenizer of ``assets/toy`` in both tokenizer slots,
and a UNet with two transformer layers per block at its cross-attention level.
"""

from __future__ import annotations

import torch
from _tiny import clip_tokenizer, text_config, tiny_vae

# SDXL base's scheduler settings (stabilityai/stable-diffusion-xl-base-1.0 scheduler_config.json).
SDXL_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    timestep_spacing="leading",
    interpolation_type="linear",
    use_karras_sigmas=False,
)


def build_sdxl_components(seed: int = 0, unet_in_channels: int = 4, time_cond_proj_dim: int | None = None,
                          force_zeros_for_empty_prompt: bool = True) -> dict:  # fmt: skip
    """UNet (cross-attention at 8x8 for 32x32 images, 2 transformer layers per block there), VAE, two CLIP
    towers (hidden 32 each, so the UNet's cross_attention_dim is 64), the real tokenizer twice, Euler."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    enc = text_config()
    time_dim, time_ids = 8, 6  # addition_time_embed_dim, len(add_time_ids)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=unet_in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=time_dim * time_ids + enc.projection_dim,
        cross_attention_dim=2 * enc.hidden_size,
        norm_num_groups=8,
        time_cond_proj_dim=time_cond_proj_dim,
    )
    vae = tiny_vae(seed)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(enc)
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(enc)
    return dict(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
    )


def build_sdxl_pipeline(**kwargs):
    """A ``StableDiffusionXLPipeline`` (inpainting: pass ``unet_in_channels=9``, then derive with ``from_pipe``)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**build_sdxl_components(**kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe
