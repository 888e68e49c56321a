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

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
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
PROMPT = "a red fox sitting in tall grass under evening sky"  # 10 words
NEGATIVE = "blurry, low quality, watermark"
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


def main() -> None:
    import explainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "data" / "flux_trace_size.json")
    args = parser.parse_args()
    pipe = flux_on_meta()
    common = dict(num_inference_steps=28, height=1024, width=1024)
    rows = []
    for label, record in RECORDS.items():
        for negative, cfg in ((None, None), (NEGATIVE, 2.0)):  # guidance-distilled; then true CFG with a negative
            kwargs = dict(negative_prompt=negative, true_cfg_scale=cfg, record=record, **common)
            req = explainer.tracing.recorder.prepare_request(pipe, PROMPT, options={"true_cfg_scale": cfg},
                                                             negative_prompt=negative, record=record, **common)  # fmt: skip
            size = explainer.estimate_trace_bytes(pipe, PROMPT, **kwargs)
            rows.append({"record": label, "negative_prompt": negative, "true_cfg_scale": cfg, "bytes": size,
                         "mb": round(size / 1e6, 1), "layers": len(req.plan.layers), "tokens": req.plan.tokens})  # fmt: skip
            print(f"{label:34s} true_cfg={cfg!s:5s} {size / 1e6:8.1f} MB  {len(req.plan.layers)} layers")
    family = explainer.tracing.families.family_for(pipe)
    sites = [name for name, _, _ in family.attention_sites(pipe)]
    out = {
        "what": "explainer trace size, FLUX.1-dev layout, 1024x1024, 28 steps (flow-match Euler, dynamic shift), "
        "guidance_scale 3.5 (embedded), max_sequence_length 512, fp16 storage",
        "prompt": PROMPT,
        "words": len(PROMPT.split()),
        "attention_layers": len(sites),
        "double_stream_layers": sum(name.startswith("transformer_blocks.") for name in sites),
        "single_stream_layers": sum(name.startswith("single_transformer_blocks.") for name in sites),
        "method": "planner estimate (equal to Trace.nbytes in tests on tiny FLUX components); image bytes included; "
        "T5 tokens counted with the CLIP tokenizer (about one more than T5's)",
        "machine": f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
