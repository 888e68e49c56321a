"""Trace overhead: plain ``pipe()`` against ``explainer.trace()``, interleaved A/B runs, median ratios.

Pipelines (random weights, built from configs, nothing downloaded):

- ``tiny``: the test suite's tiny pipeline (32x32 images).
- ``toy``: the bundled toy model (``explainer.load_pipeline("toy")``), if installed.
- ``sd15``: the Stable Diffusion 1.x architecture: diffusers' default ``UNet2DConditionModel()``
  config, the standard SD VAE config and a CLIP ViT-L/14 text tower config.
- ``sdxl``: the Stable Diffusion XL base architecture: the published SDXL base UNet and VAE configs
  (``scripts/sdxl_trace_size.py``: 70 cross-attention layers), a CLIP ViT-L/14 text tower and an
  OpenCLIP ViT-bigG/14 tower with projection, Euler with SDXL's scheduler settings,
  ``force_zeros_for_empty_prompt`` as in the base model. Both tokenizer slots hold the CLIP tokenizer of
  ``assets/toy`` (the real ``tokenizer_2`` differs only in its pad token).
- ``sd3``: the Stable Diffusion 3 Medium architecture (``scripts/sd3_trace_size.py``'s published transformer
  and VAE configs) with the transformer **shrunk to its first 2 of 24 joint blocks** (the second, like SD3's
  last, is ``context_pre_only``), CLIP-L / CLIP-G / T5-XXL text towers at their real widths (768 / 1280 /
  4096, with projections) but **1 layer each**, the CLIP tokenizer of ``assets/toy`` in all three slots
  (no T5 vocabulary offline), SD3's flow-match Euler scheduler, guidance 7.0 (CFG: a batch of two).
- ``flux``: the FLUX.1-dev architecture (``scripts/flux_trace_size.py``'s transformer and VAE configs) with
  the transformer **shrunk to 1 of 19 double-stream and 1 of 38 single-stream blocks**, a 1-layer CLIP-L
  (768, pooled) and a 1-layer T5-XXL-wide (4096) text tower, the CLIP tokenizer in both slots, FLUX.1-dev's
  dynamically shifted flow-match scheduler, guidance 3.5 embedded (guidance-distilled: one branch).

  For both DiT rows ``--max-sequence-length`` (default 128 here, against the pipelines' 256 / 512) keeps the
  CPU run short; the text tokens dominate the sequence at small sizes.

Usage::

    python benchmarks/trace_overhead.py                      # tiny and sd15, 256x256, 10 steps (CUDA if available)
    python benchmarks/trace_overhead.py --device cuda --pairs 5
    python benchmarks/trace_overhead.py --which sd15 --size 512 --steps 50   # also measures a full-size trace
    python benchmarks/trace_overhead.py --which sdxl --size 256 --steps 4 --pairs 5
    python benchmarks/trace_overhead.py --device cuda --which sdxl --size 1024 --steps 30 --pairs 5
    python benchmarks/trace_overhead.py --which sd3,flux --size 128 --steps 2 --pairs 5
    python benchmarks/trace_overhead.py --device cuda --which sd3,flux --size 1024 --steps 28 --pairs 5 --max-sequence-length 0

Each pair runs plain, traced (default recording) and traced (``record="none"``) in a rotating order;
the ratio of each traced run to the plain run of the same pair is taken, and the median reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import _json  # noqa: E402  (benchmarks/_json.py)
import explainer  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse"
GUIDANCE = 7.5
TOKENIZER = REPO / "assets" / "toy" / "tokenizer"


def sd15_components() -> dict:
    """SD 1.x architecture with random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    # diffusers' default config is the SD 1.x UNet except for two fields, set to SD 1.x's values here
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=768,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
        set_alpha_to_one=False,
    )  # fmt: skip
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(str(TOKENIZER)),
                scheduler=scheduler)  # fmt: skip


def clip_text_config(hidden: int, layers: int, heads: int, act: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=heads,
                          num_hidden_layers=layers, vocab_size=49408, max_position_embeddings=77,
                          projection_dim=hidden, hidden_act=act, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=49407)  # fmt: skip


def sdxl_components() -> dict:
    """SDXL base architecture with random weights (UNet/VAE configs shared with scripts/sdxl_trace_size.py)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    sys.path.insert(0, str(REPO / "scripts"))
    sys.path.insert(0, str(REPO / "tests"))
    from _sdxl import SDXL_SCHEDULER
    from sdxl_trace_size import SDXL_UNET, SDXL_VAE

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SDXL_UNET)
    vae = AutoencoderKL(**SDXL_VAE)
    # stabilityai/stable-diffusion-xl-base-1.0: text_encoder is CLIP ViT-L/14, text_encoder_2 OpenCLIP ViT-bigG/14
    text_encoder = CLIPTextModel(clip_text_config(768, 12, 12, "quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(1280, 32, 20, "gelu"))
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    with torch.device("cpu"):  # the scheduler keeps its tables on the CPU, as from_pretrained makes it
        scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                tokenizer_2=tokenizer, scheduler=scheduler, force_zeros_for_empty_prompt=True)  # fmt: skip


def t5_xxl_config(layers: int, vocab: int):
    """google/t5-v1_1-xxl's encoder (the T5 of SD3 and FLUX.1) at its real width, with ``layers`` layers."""
    from transformers import T5Config

    return T5Config(vocab_size=vocab, d_model=4096, d_kv=64, d_ff=10240, num_layers=layers, num_heads=64,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0,
                    feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=49407,
                    eos_token_id=49407)  # fmt: skip


DIT_TEXT_LAYERS = 1  # each text tower of the DiT rows: real width, one layer (the full T5-XXL is 4.7B parameters)
SD3_BLOCKS = 2  # of SD3 Medium's 24 joint blocks
FLUX_BLOCKS = (1, 1)  # of FLUX.1-dev's 19 double-stream and 38 single-stream blocks


def sd3_components() -> dict:
    """SD3 Medium architecture with random weights, shrunk to SD3_BLOCKS joint blocks and 1-layer text towers."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    sys.path.insert(0, str(REPO / "scripts"))
    sys.path.insert(0, str(REPO / "tests"))
    from _sd3 import SD3_SCHEDULER
    from sd3_trace_size import SD3_TRANSFORMER, SD3_VAE

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(**{**SD3_TRANSFORMER, "num_layers": SD3_BLOCKS})
    vae = AutoencoderKL(**SD3_VAE)
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    return dict(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
        text_encoder=CLIPTextModelWithProjection(clip_text_config(768, DIT_TEXT_LAYERS, 12, "quick_gelu")),
        text_encoder_2=CLIPTextModelWithProjection(clip_text_config(1280, DIT_TEXT_LAYERS, 20, "gelu")),
        text_encoder_3=T5EncoderModel(t5_xxl_config(DIT_TEXT_LAYERS, tokenizer.vocab_size)),
        tokenizer=tokenizer, tokenizer_2=tokenizer, tokenizer_3=tokenizer,
    )  # fmt: skip


def flux_components() -> dict:
    """FLUX.1-dev architecture with random weights, shrunk to FLUX_BLOCKS blocks and 1-layer text towers."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel

    sys.path.insert(0, str(REPO / "scripts"))
    sys.path.insert(0, str(REPO / "tests"))
    from _flux import FLUX_SCHEDULER, T5_MAX_LENGTH
    from flux_trace_size import FLUX_TRANSFORMER, FLUX_VAE

    torch.manual_seed(0)
    double, single = FLUX_BLOCKS
    transformer = FluxTransformer2DModel(**{**FLUX_TRANSFORMER, "num_layers": double, "num_single_layers": single})
    vae = AutoencoderKL(**FLUX_VAE)
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    with torch.device("cpu"):  # the scheduler keeps its tables on the CPU, as from_pretrained makes it
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER)
    return dict(
        transformer=transformer, vae=vae, scheduler=scheduler,
        text_encoder=CLIPTextModel(clip_text_config(768, DIT_TEXT_LAYERS, 12, "quick_gelu")),
        text_encoder_2=T5EncoderModel(t5_xxl_config(DIT_TEXT_LAYERS, tokenizer.vocab_size)),
        tokenizer=tokenizer, tokenizer_2=CLIPTokenizer.from_pretrained(str(TOKENIZER), model_max_length=T5_MAX_LENGTH),
    )  # fmt: skip


#: which diffusers pipeline class each DiT row builds, and the guidance it runs with (the model's default)
DIT = {"sd3": ("StableDiffusion3Pipeline", sd3_components, 7.0), "flux": ("FluxPipeline", flux_components, 3.5)}


def tiny_components() -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    onednn = torch.backends.mkldnn.enabled
    from conftest import build_components  # the test suite's tiny pipeline

    torch.backends.mkldnn.enabled = onednn  # conftest turns oneDNN off for test speed; benchmark the default
    parts = build_components()
    for key in ("safety_checker", "feature_extractor", "requires_safety_checker"):
        parts.pop(key)
    return parts


def build(which: str, device: str, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    if which == "toy":
        pipe = explainer.load_pipeline("toy", device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    if which in DIT:
        import diffusers

        cls, make, _ = DIT[which]
        with torch.device(device):
            parts = make()
        pipe = getattr(diffusers, cls)(**{k: v.eval() if hasattr(v, "eval") else v for k, v in parts.items()})
        pipe = pipe.to(device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    with torch.device(device):  # initialise the random weights on the target device (fast on GPUs)
        parts = {"sd15": sd15_components, "sdxl": sdxl_components}.get(which, tiny_components)()
    if which == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(**parts)
        pipe = pipe.to(device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed(fn, device: str) -> tuple[float, float, object]:
    """Wall-clock and process CPU seconds of one call (CPU time is steadier on a shared machine)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu, result


def bench(which: str, device: str, dtype: torch.dtype, size: int | None, steps: int, pairs: int,
          max_sequence_length: int | None = None) -> dict:  # fmt: skip
    pipe = build(which, device, dtype)
    size = size if which in ("sd15", "sdxl", *DIT) else None  # the tiny and toy pipelines run at their native size
    # guidance given to both calls: SD and SDXL pipelines have different defaults
    guidance = DIT[which][2] if which in DIT else GUIDANCE
    kwargs = dict(num_inference_steps=steps, height=size, width=size, guidance_scale=guidance)
    if which in DIT and max_sequence_length:
        kwargs["max_sequence_length"] = max_sequence_length

    def plain():
        gen = torch.Generator(device).manual_seed(0)
        return pipe(PROMPT, generator=gen, **kwargs).images[0]

    def traced(record):
        return lambda: explainer.trace(pipe, PROMPT, seed=0, record=record, progress=False, **kwargs)

    runs = {"plain": plain, "default": traced("default"), "none": traced("none")}
    for fn in runs.values():  # warm-up (kernel selection, allocator)
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    last: dict[str, object] = {}
    names = list(runs)
    for r in range(pairs):
        for name in names[r % 3 :] + names[: r % 3]:  # rotate the order every pair
            t, c, last[name] = timed(runs[name], device)
            times[name].append(t)
            cpu[name].append(c)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    ratio = {k: statistics.median(a / b for a, b in zip(times[k], times["plain"])) for k in ("default", "none")}
    cpu_ratio = {k: statistics.median(a / b for a, b in zip(cpu[k], cpu["plain"])) for k in ("default", "none")}
    tr = last["default"]
    same = last["plain"].tobytes() == tr.final_image.tobytes()
    out = {
        "which": which,
        "size": f"{tr.width}x{tr.height}",
        "steps": steps,
        "plain_s": statistics.median(times["plain"]),
        "default_s": statistics.median(times["default"]),
        "none_s": statistics.median(times["none"]),
        "overhead_default_pct": 100 * (ratio["default"] - 1),
        "overhead_none_pct": 100 * (ratio["none"] - 1),
        "cpu_overhead_default_pct": 100 * (cpu_ratio["default"] - 1),
        "cpu_overhead_none_pct": 100 * (cpu_ratio["none"] - 1),
        "pairs": pairs,
        "wall": times,
        "trace_bytes": tr.nbytes,
        "trace_none_bytes": last["none"].nbytes,
        "tokens": len(tr.tokens) + len(tr.negative_tokens),
        "attention_layers": len(tr.attention_layers),
        "guidance_scale": guidance,
        "same_image": same,
    }
    if which in DIT:
        family = explainer.tracing.families.family_for(pipe)
        config = dict(family.denoiser(pipe).config)
        out.update({
            "family": family.name,
            "max_sequence_length": kwargs.get("max_sequence_length", "pipeline default"),
            "shrunk": {"sd3": f"transformer: {SD3_BLOCKS} of SD3 Medium's 24 joint blocks",
                       "flux": f"transformer: {FLUX_BLOCKS[0]} of FLUX.1-dev's 19 double-stream and {FLUX_BLOCKS[1]} "
                               "of its 38 single-stream blocks"}[which]
            + f"; text towers at real widths with {DIT_TEXT_LAYERS} layer each; VAE full; CLIP tokenizer in every slot",
            "transformer_parameters": sum(p.numel() for p in family.denoiser(pipe).parameters()),
            "transformer_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()
                                   if not k.startswith("_")},
        })  # fmt: skip
    if peak is not None:
        out["cuda_peak_allocated_bytes"] = peak
    if which == "sd15":
        out["bytes_50_steps_512"] = explainer.estimate_trace_bytes(
            pipe, PROMPT, num_inference_steps=50, height=512, width=512
        )
    del pipe
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda (the default where torch.cuda.is_available()) or cpu")
    parser.add_argument("--which", default="tiny,sd15", help="comma list of: tiny, toy, sd15, sdxl, sd3, flux")
    parser.add_argument("--size", type=int, default=256, help="image side for sd15, sdxl, sd3, flux (default 256)")
    parser.add_argument("--max-sequence-length", type=int, default=128,
                        help="T5 tokens for the sd3 and flux rows (default 128; 0: the pipeline's own default)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=3, help="interleaved A/B rounds (default 3)")
    parser.add_argument("--dtype", default=None, help="float32 / float16 (default: float16 on cuda, float32 on cpu)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures here (e.g. docs/data/trace_overhead.json)")
    args = parser.parse_args()
    _json.check_path(parser, args.json)
    rows: list[dict] = []
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if args.device.startswith("cuda") else torch.float32)
    if args.device.startswith("cuda"):
        machine = torch.cuda.get_device_name()
    else:
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
    print(f"# trace overhead on {args.device} ({machine}), {dtype}, torch {torch.__version__}, pairs={args.pairs}")
    print(f"# prompt: {PROMPT!r}")
    for which in args.which.split(","):
        r = bench(which.strip(), args.device, dtype, args.size, args.steps, args.pairs, args.max_sequence_length)
        rows.append({**r, "device": args.device, "dtype": str(dtype).removeprefix("torch."), "machine": machine})
        print(
            f"{r['which']:>5} {r['size']:>8} {r['steps']:>3} steps | plain {r['plain_s']:.3f}s | "
            f"trace {r['default_s']:.3f}s ({r['overhead_default_pct']:+.1f}%) | "
            f"record=none {r['none_s']:.3f}s ({r['overhead_none_pct']:+.1f}%) | "
            f"trace {r['trace_bytes']:,} B (none: {r['trace_none_bytes']:,} B), {r['tokens']} tokens | "
            f"same image: {r['same_image']}"
        )
        if not args.device.startswith("cuda"):
            print(f"      process CPU time overhead: trace {r['cpu_overhead_default_pct']:+.1f}%, "
                  f"record=none {r['cpu_overhead_none_pct']:+.1f}%")  # fmt: skip
        print("      wall seconds per run: " + ", ".join(f"{k}={[round(v, 2) for v in vs]}" for k, vs in r["wall"].items()))
        if "bytes_50_steps_512" in r:
            print(f"      default trace, 50 steps at 512x512, this prompt: {r['bytes_50_steps_512']:,} B "
                  f"({r['bytes_50_steps_512'] / 1e6:.1f} MB)")  # fmt: skip
        sys.stdout.flush()
    _json.write(args.json, "trace_overhead", vars(args), rows)


if __name__ == "__main__":
    main()
