"""Trace sizes of a 512x512, 50-step SD 1.x run, per ``record=`` setting and per extra prompt token.

The SD 1.x UNet and VAE are built from their configs on PyTorch's ``meta`` device (no weights, no
memory), so the planner reads the real layer layout: 16 cross-attention layers (5 at 64x64, 5 at
32x32, 5 at 16x16, 1 at 8x8). The figures are the planner's estimates
(``explainer.estimate_trace_bytes``, which the tests check equal to a finished trace's ``nbytes``),
image bytes included. Writes docs/data/sd15_trace_size.json.

    python scripts/sd15_trace_size.py [--out docs/data/sd15_trace_size.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a photograph of an astronaut riding a horse"  # the overhead benchmark's prompt: 10 tokens with BOS/EOS
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                    steps_offset=1, set_alpha_to_one=False)  # fmt: skip


def sd15_on_meta():
    """A StableDiffusionPipeline with the SD 1.x UNet and VAE layout and no weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # diffusers' default = SD 1.x but these
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                            sample_size=512)  # fmt: skip
        text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                            num_hidden_layers=1, vocab_size=49408, max_position_embeddings=77))  # fmt: skip
    tokenizer = CLIPTokenizer.from_pretrained(str(REPO / "assets" / "toy" / "tokenizer"))
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer,
                                   scheduler=PNDMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)  # fmt: skip


def main() -> None:
    import explainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "data" / "sd15_trace_size.json")
    args = parser.parse_args()
    pipe = sd15_on_meta()
    common = dict(num_inference_steps=50, height=512, width=512, guidance_scale=7.5)
    rows = []
    for scheduler in ("pndm", "ddim"):
        for record in ("default", "per_step", "none"):
            size = explainer.estimate_trace_bytes(pipe, PROMPT, scheduler=scheduler, record=record, **common)
            rows.append({"scheduler": scheduler, "record": record, "bytes": size, "mb": round(size / 1e6, 1)})
            print(f"{scheduler:5s} {record:9s} {size:12,d} B")
    longer = explainer.estimate_trace_bytes(pipe, PROMPT + " red", scheduler="ddim", **common)
    base = next(r["bytes"] for r in rows if (r["scheduler"], r["record"]) == ("ddim", "default"))
    out = {
        "what": "explainer trace size, SD 1.x layout, 512x512, 50 steps, guidance 7.5, empty negative prompt, fp16",
        "prompt": PROMPT,
        "prompt_tokens": len(pipe.tokenizer(PROMPT).input_ids),  # BOS and EOS included
        "attention_layers": len(explainer.tracing.families.family_for(pipe).attention_sites(pipe)),
        "per_token_bytes": longer - base,  # one more prompt token, 50 steps, all layers
        "per_token_per_step_bytes": (longer - base) // 50,
        "method": "planner estimate (equal to Trace.nbytes in the tests); image bytes included",
        "machine": f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
