"""The tiny building blocks every test pipeline shares: the tokenizer, text-tower configs and the VAE.

The tokenizer is the real CLIP BPE tokenizer in ``assets/toy/tokenizer`` (it also stands in for T5's
sentencepiece tokenizer: no T5 vocabulary is available offline). ``conftest.py`` (SD 1.x), ``_sdxl.py``,
``_sd3.py`` and ``_flux.py`` build their pipelines from these.
"""

from __future__ import annotations

from pathlib import Path

import torch

TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "toy" / "tokenizer"


def clip_tokenizer(**kwargs):
    """The real CLIP tokenizer of ``assets/toy`` (``kwargs``: e.g. ``model_max_length`` to stand in for T5's)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER), **kwargs)


def text_config(hidden: int = 32, act: str = "gelu"):
    """A tiny CLIP text tower config (2 layers, 4 heads) with the real vocabulary and 77 positions.

    Args:
        hidden: the width (and projection width).
        act: the activation (the SD 1.x test tower keeps CLIP's default ``quick_gelu``).
    """
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=hidden,
                          intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
                          max_position_embeddings=77, projection_dim=hidden, hidden_act=act)  # fmt: skip


def t5_config(clip=None):
    """A tiny T5 encoder config (d_model 32, 2 layers) sharing the CLIP tokenizer's vocabulary and special ids."""
    from transformers import T5Config

    clip = clip or text_config()
    return T5Config(vocab_size=clip.vocab_size, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
                    feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=clip.pad_token_id,
                    eos_token_id=clip.eos_token_id)  # fmt: skip


def tiny_vae(seed: int = 0, latent_channels: int = 4, *, scaling_factor: float | None = None,
             shift_factor: float | None = None):  # fmt: skip
    """A tiny ``AutoencoderKL`` (scale factor 2: 32x32 images give 16x16 latents).

    Args:
        seed: the weights' seed.
        latent_channels: 4 (SD 1.x / SDXL) or 16 (SD3 / FLUX).
        scaling_factor, shift_factor: the model's latent factors; given, the VAE is built as SD3 / FLUX
            build theirs (no quant convolutions, a shift factor).
    """
    from diffusers import AutoencoderKL

    dit = {}
    if scaling_factor is not None:
        dit = dict(use_quant_conv=False, use_post_quant_conv=False, shift_factor=shift_factor,
                   scaling_factor=scaling_factor)  # fmt: skip
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
        **dit,
    )
