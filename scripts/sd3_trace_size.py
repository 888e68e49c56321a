"""Trace sizes of a 1024x1024, 28-step SD3 Medium run with a 10-word prompt, per ``record=`` setting.

The SD3 Medium transformer and VAE are built from their published configs on PyTorch's ``meta``
device (no weights, no memory), so the planner reads the real layout: 24 joint-attention blocks at
the 64x64 patch grid. The text encoders are the tests' tiny ones and every tokenizer slot holds the
CLIP BPE tokenizer (no T5 vocabulary is available offline): the T5 segment of the 10-word prompt is
counted in CLIP tokens (BOS, 10 words, EOS = 12), about one more than T5's sentencepiece gives (no
BOS). The figures are the planner's estimates (``explainer.estimate_trace_bytes``), which
tests/test_tracing_sd3.py checks equal to the finished trace's ``nbytes`` on tiny SD3 components.
Writes docs/data/sd3_trace_size.json.

    python scripts/sd3_trace_size.py [--out docs/data/sd3_trace_size.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _trace_size import NEGATIVE, PROMPT, REPO, main  # noqa: E402, F401 (the tests read PROMPT here)

sys.path.insert(0, str(REPO / "tests"))

# stabilityai/stable-diffusion-3-medium-diffusers: transformer/config.json and vae/config.json
SD3_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=192,
)  # fmt: skip
SD3_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024,
    scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
)  # fmt: skip
RECORDS = {
    "default": "default",
    "per_step": "per_step",
    "none": "none",
    "per_head": "per_head",
    "layers=transformer_blocks.0-11": {"layers": [f"transformer_blocks.{i}.attn" for i in range(12)]},
    "layers=transformer_blocks.0-7": {"layers": [f"transformer_blocks.{i}.attn" for i in range(8)]},
}


def sd3_on_meta():
    """A StableDiffusion3Pipeline with SD3 Medium's transformer and VAE layout and no weights."""
    from _sd3 import build_sd3_components
    from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline

    parts = build_sd3_components()  # tiny text encoders, the CLIP tokenizer in every slot; only the tokenizers matter
    with torch.device("meta"):
        parts["transformer"] = SD3Transformer2DModel(**SD3_TRANSFORMER)
        parts["vae"] = AutoencoderKL(**SD3_VAE)
    return StableDiffusion3Pipeline(**parts)


if __name__ == "__main__":
    main(
        doc=__doc__, out="sd3_trace_size.json", build=sd3_on_meta, records=RECORDS,
        variants=[{"negative_prompt": None}, {"negative_prompt": NEGATIVE}],
        common=dict(num_inference_steps=28, height=1024, width=1024),
        what="explainer trace size, SD3 Medium layout, 1024x1024, 28 steps (flow-match Euler), guidance 7.0, "
        "max_sequence_length 256, fp16 storage",
        method="planner estimate (equal to Trace.nbytes in tests on tiny SD3 components); image bytes included; "
        "T5 tokens counted with the CLIP tokenizer (about one more than T5's)",
    )  # fmt: skip
