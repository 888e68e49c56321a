"""Trace sizes of a 1024x1024, 30-step SDXL run with a 10-word prompt, per ``record=`` setting.

The SDXL base UNet and VAE are built from their published configs on PyTorch's ``meta`` device (no
weights, no memory), so the planner reads the real layer layout: 70 cross-attention layers, 10 at
64x64 and 60 at 32x32. The figures are the planner's estimates (``explainer.estimate_trace_bytes``),
which tests/test_tracing_sdxl.py checks equal to the finished trace's ``nbytes`` on tiny SDXL
components. Writes docs/data/sdxl_trace_size.json.

    python scripts/sdxl_trace_size.py [--out docs/data/sdxl_trace_size.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _trace_size import NEGATIVE, PROMPT, REPO, main  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))

# stabilityai/stable-diffusion-xl-base-1.0: unet/config.json and vae/config.json (the fields that set the layout)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)  # fmt: skip
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024,
    scaling_factor=0.13025, force_upcast=True,
)  # fmt: skip
RECORDS = {
    "default": "default",
    "per_step": "per_step",
    "none": "none",
    "per_head": "per_head",
    "layers=32x32": {"layers": ["32x32"]},
    "layers=up_blocks.0": {"layers": ["up_blocks.0"]},
    "layers=mid_block": {"layers": ["mid_block"]},
}


def sdxl_on_meta():
    """A StableDiffusionXLPipeline with the base model's UNet and VAE layout and no weights."""
    from _sdxl import build_sdxl_components
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel

    parts = build_sdxl_components()  # tiny text encoders and the real CLIP tokenizer; only the tokenizers matter here
    with torch.device("meta"):
        parts["unet"] = UNet2DConditionModel(**SDXL_UNET)
        parts["vae"] = AutoencoderKL(**SDXL_VAE)
    return StableDiffusionXLPipeline(**parts)


if __name__ == "__main__":
    main(
        doc=__doc__, out="sdxl_trace_size.json", build=sdxl_on_meta, records=RECORDS,
        variants=[{"negative_prompt": None}, {"negative_prompt": NEGATIVE}],
        common=dict(num_inference_steps=30, height=1024, width=1024), width=20,
        what="explainer trace size, SDXL base layout, 1024x1024, 30 steps (Euler), guidance 7.5, fp16 storage",
        method="planner estimate (equal to Trace.nbytes in tests on tiny SDXL components); image bytes included",
        extra=lambda pipe: {"prompt_tokens": len(pipe.tokenizer(PROMPT).input_ids)},  # BOS and EOS included
    )  # fmt: skip
