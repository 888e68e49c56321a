"""Trace sizes of a 512x512, 50-step SD 1.x run, per ``record=`` setting and per extra prompt token.

The SD 1.x UNet and VAE are built from their configs on PyTorch's ``meta`` device (no weights, no
memory), so the planner reads the real layer layout: 16 cross-attention layers (5 at 64x64, 5 at
32x32, 5 at 16x16, 1 at 8x8). The figures are the planner's estimates
(``explainer.estimate_trace_bytes``, which the tests check equal to a finished trace's ``nbytes``),
image bytes included. Writes docs/data/sd15_trace_size.json.

It then writes the files themselves for 10-, 20- and 40-token prompts (default recording, empty
negative prompt, the pipeline's default PNDM scheduler: 51 iterations for 50 steps): a trace with
the planned shapes (filled with random maps; a file's size depends on its shapes only) is saved as
format 3 laid it out (float16 maps, ``quantize_attention=False``) and as format 4 (uint8 maps with
per-map ranges, the default). With ``--x0-check`` it also measures, on the bundled toy model, how
far x0 recomputed from the stored latents and model outputs is from the recorded x0 (why the file
keeps x0). Writes docs/data/sd15_trace_size.json and docs/data/sd15_trace_files.json.

    python scripts/sd15_trace_size.py [--out docs/data/sd15_trace_size.json] [--x0-check]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a photograph of an astronaut riding a horse"  # the overhead benchmark's prompt: 10 tokens with BOS/EOS
#: Prompts of 10, 20 and 40 CLIP tokens (BOS and EOS included; checked against the tokenizer).
PROMPTS = {
    10: PROMPT,
    20: "a photograph of an astronaut riding a horse on the moon, detailed, sharp focus, dusk",
    40: "a photograph of an astronaut riding a white horse across the surface of the moon at dusk, earth rising over "
        "the horizon, dramatic lighting, highly detailed, sharp focus, cinematic, 8k photo",
}
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


def planned_trace(pipe, prompt: str, steps: int = 50, size: int = 512):
    """A Trace with exactly the arrays ``explainer.trace`` would record (random contents, real shapes)."""
    import numpy as np
    from PIL import Image

    from explainer.tracing.request import prepare_request
    from explainer.tracing.trace import Trace

    req = prepare_request(pipe, prompt, num_inference_steps=steps, height=size, width=size, guidance_scale=7.5)
    plan, rng = req.plan, np.random.default_rng(0)
    s, (c, h, w) = plan.num_steps, plan.latent_shape

    def lat(n: int) -> np.ndarray:
        return rng.standard_normal((n, c, h, w)).astype(np.float16)

    attention = {}
    for branch in plan.attention_branches:
        for group, layers in plan.groups.items():  # [step, layer, token, h, w], softmax-like maps
            maps = rng.random((s, len(layers), plan.tokens[branch], layers[0].height, layers[0].width)) ** 8
            attention[f"{branch}/{group}"] = (maps / maps.sum(axis=2, keepdims=True)).astype(np.float16)
    cond, uncond = req.tokens["cond"], req.tokens.get("uncond")
    scalars = np.linspace(1, 0, s)
    return Trace(prompt=prompt, negative_prompt=None, tokens=cond.tokens, token_ids=cond.ids, words=cond.words,
                 truncated_tokens=cond.truncated, negative_tokens=uncond.tokens, negative_token_ids=uncond.ids,
                 negative_words=uncond.words, negative_truncated_tokens=uncond.truncated, timesteps=scalars,
                 sigmas=scalars, alphas_cumprod=scalars, x0_coef_sample=scalars, x0_coef_model=scalars,
                 input_scale=np.ones(s + 1), latents=lat(s + 1), x0=lat(s), eps_cond=lat(s), eps_uncond=lat(s),
                 final_image=Image.new("RGB", (size, size)), attention=attention, attention_layers=list(plan.layers),
                 attention_mode="per_layer", latent_rgb=None,
                 metadata={"height": size, "width": size, "guidance_scale": 7.5, "model": {"vae_scale_factor": size // h}},
                 )  # fmt: skip


def file_sizes(pipe) -> list[dict]:
    """Format 3 and format 4 file sizes of default traces for 10-, 20- and 40-token prompts."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tokens, prompt in PROMPTS.items():
            count = len(pipe.tokenizer(prompt).input_ids)
            assert count == tokens, f"{prompt!r} is {count} tokens, not {tokens}"
            tr = planned_trace(pipe, prompt)
            old = tr.save(Path(tmp) / "v3.safetensors", quantize_attention=False).stat().st_size
            new = tr.save(Path(tmp) / "v4.safetensors").stat().st_size
            attn = sum(a.nbytes for a in tr.attention.values())
            rows.append({"prompt_tokens": tokens, "negative_tokens": len(tr.negative_tokens), "steps": tr.num_steps,
                         "in_memory_mb": round(tr.nbytes / 1e6, 1), "attention_mb": round(attn / 1e6, 1),
                         "file_v3_bytes": old, "file_v3_mb": round(old / 1e6, 1), "file_v4_bytes": new,
                         "file_v4_mb": round(new / 1e6, 1), "ratio": round(new / old, 3)})  # fmt: skip
            print(f"{tokens:3d} tokens: format 3 {old / 1e6:6.1f} MB, format 4 {new / 1e6:6.1f} MB")
    return rows


def x0_check(steps: int = 20) -> dict:
    """How far x0 recomputed from latents, model outputs and coefficients is from the recorded x0 (toy model)."""
    import dataclasses

    import numpy as np

    import explainer

    toy = explainer.load_pipeline()
    rows = []
    for scheduler in ("ddim", "euler", "pndm"):
        tr = explainer.trace(toy, "a red circle on the left", num_inference_steps=steps, scheduler=scheduler,
                             progress=False)  # fmt: skip
        guided = tr.eps_uncond.astype(np.float32) + tr.guidance_scale * (
            tr.eps_cond.astype(np.float32) - tr.eps_uncond.astype(np.float32))  # fmt: skip
        a, b = (np.asarray(v, np.float32)[:, None, None, None] for v in (tr.x0_coef_sample, tr.x0_coef_model))
        derived = (a * tr.latents[:-1].astype(np.float32) + b * guided).astype(tr.x0.dtype)
        diff = np.abs(derived.astype(np.float32) - tr.x0.astype(np.float32))
        changed = [np.asarray(tr.preview(i)) != np.asarray(dataclasses.replace(tr, x0=derived).preview(i))
                   for i in range(tr.num_steps)]  # fmt: skip
        rows.append({"scheduler": scheduler, "steps": tr.num_steps, "bit_equal_share": round(float((derived == tr.x0).mean()), 3),
                     "max_abs_diff": float(diff.max()), "x0_abs_max": float(np.abs(tr.x0).max()),
                     "preview_pixels_changed_share": round(float(np.mean(changed)), 4)})  # fmt: skip
        print(rows[-1])
    return {"what": "x0 recomputed as x0_coef_sample * latents + x0_coef_model * guided model output (stored fp16), "
                    "against the recorded x0; toy model, 64x64, linear previews compared pixel by pixel",
            "rows": rows}  # fmt: skip


def main() -> None:
    import explainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "data" / "sd15_trace_size.json")
    parser.add_argument("--files-out", type=Path, default=REPO / "docs" / "data" / "sd15_trace_files.json")
    parser.add_argument("--x0-check", action="store_true", help="also measure x0 recomputed against recorded (toy)")
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
    files = {
        "what": "trace file sizes, SD 1.x layout, 512x512, 50 steps (PNDM: 51 iterations), guidance 7.5, empty "
                "negative prompt, default recording (per layer, head-averaged), fp16; format 3 = float16 maps, "
                "format 4 = uint8 maps with a float16 [lo, hi] per map",
        "method": "a Trace with the planner's shapes saved both ways; file sizes on disk",
        "format_version": explainer.tracing.FORMAT_VERSION,
        "machine": out["machine"],
        "rows": file_sizes(pipe),
    }
    if args.x0_check:
        files["x0_derivation"] = x0_check()
    args.files_out.write_text(json.dumps(files, indent=2) + "\n")
    print(f"wrote {args.files_out}")


if __name__ == "__main__":
    main()
