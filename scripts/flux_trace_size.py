"""Trace sizes of a 1024x1024, 28-step FLUX.1-dev run with a 10-word prompt, per ``record=`` setting.

The FLUX.1-dev transformer and VAE are built from their published configs on PyTorch's ``meta`` device
(no weights, no memory), so the planner reads the real layout: 19 double-stream and 38 single-stream
blocks, every one at the 64x64 grid of packed latent tokens. The text encoders are the tests' tiny
ones and both tokenizer slots hold the CLIP BPE tokenizer (no T5 vocabulary is available offline): the
T5 segment of the 10-word prompt is counted in CLIP tokens (BOS, 10 words, EOS = 12), about one more
than T5's sentencepiece gives (no BOS). The figures are the planner's estimates
(``explainer.estimate_trace_bytes``), which tests/test_tracing_flux.py checks equal to the finished
trace's ``nbytes`` on tiny FLUX components. Writes docs/data/flux_trace_size.json.

    python scripts/flux_trace_size.py [--out docs/data/flux_trace_size.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _trace_size import NEGATIVE, PROMPT, REPO, main  # noqa: E402, F401 (the tests read PROMPT here)

sys.path.insert(0, str(REPO / "tests"))

# black-forest-labs/FLUX.1-dev: transformer/config.json and vae/config.json
FLUX_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)  # fmt: skip
FLUX_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
)  # fmt: skip
RECORDS = {
    "default": "default",
    "per_step": "per_step",
    "none": "none",
    "per_head": "per_head",
    "layers=transformer_blocks": {"layers": ["transformer_blocks"]},  # the 19 double-stream blocks
    "layers=single_transformer_blocks": {"layers": ["single_transformer_blocks"]},  # the 38 single-stream blocks
}


def flux_on_meta():
    """A FluxPipeline with FLUX.1-dev's transformer and VAE layout and no weights."""
    from _flux import build_flux_components
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel

    parts = build_flux_components()  # tiny text encoders, the CLIP tokenizer in both slots; only the tokenizers matter
    with torch.device("meta"):
        parts["transformer"] = FluxTransformer2DModel(**FLUX_TRANSFORMER)
        parts["vae"] = AutoencoderKL(**FLUX_VAE)
    return FluxPipeline(**parts)


def layer_counts(pipe) -> dict:
    """All attention layers, then the double- and single-stream ones."""
    import explainer

    sites = [name for name, _, _ in explainer.tracing.families.family_for(pipe).attention_sites(pipe)]
    return {
        "attention_layers": len(sites),
        "double_stream_layers": sum(name.startswith("transformer_blocks.") for name in sites),
        "single_stream_layers": sum(name.startswith("single_transformer_blocks.") for name in sites),
    }


if __name__ == "__main__":
    main(
        doc=__doc__, out="flux_trace_size.json", build=flux_on_meta, records=RECORDS, width=34,
        # guidance-distilled (one branch); then true CFG with a negative prompt
        variants=[{"negative_prompt": None, "true_cfg_scale": None}, {"negative_prompt": NEGATIVE, "true_cfg_scale": 2.0}],
        common=dict(num_inference_steps=28, height=1024, width=1024),
        what="explainer trace size, FLUX.1-dev layout, 1024x1024, 28 steps (flow-match Euler, dynamic shift), "
        "guidance_scale 3.5 (embedded), max_sequence_length 512, fp16 storage",
        method="planner estimate (equal to Trace.nbytes in tests on tiny FLUX components); image bytes included; "
        "T5 tokens counted with the CLIP tokenizer (about one more than T5's)",
        extra=layer_counts,
    )  # fmt: skip
