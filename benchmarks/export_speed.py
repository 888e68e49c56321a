"""Export speed: a 50-frame 512x512 GIF and MP4, and the size of the standalone HTML page.

Traces (made once, then exported repeatedly; the trace itself is not timed):

- ``tiny512``: a random-weight pipeline with SD 1.x's geometry (512x512 images, 4x64x64 latents,
  vae_scale_factor 8) and tiny channels, previewed with SD 1.x's linear latent->RGB factors. Random
  weights make pixel-noise previews, so its encoded sizes are a pessimistic bound.
- ``toy``: the bundled toy model (64x64 images), exported with ``size=512`` (upscaled 8x).

Usage::

    python benchmarks/export_speed.py                  # both traces, 50 steps, 5 repeats
    python benchmarks/export_speed.py --which toy --repeats 3

Each case is timed ``--repeats`` times (export() end to end: rendering the frames, encoding,
writing) and the median reported, with the file size.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "benchmarks"))
import _json  # noqa: E402  (benchmarks/_json.py)

import explainer  # noqa: E402
from explainer.tracing.previews import SD1_LATENT_RGB_FACTORS  # noqa: E402

PROMPT = "a red circle above a blue square"
TOKENIZER = REPO / "assets" / "toy" / "tokenizer"

# (label, file suffix, export options)
CASES = [
    ("GIF, x_t + x0 panels", ".gif", {}),
    ("GIF, x0 only", ".gif", {"panels": ["x0"]}),
    ("MP4, x_t + x0 panels", ".mp4", {}),
    ("MP4, x0 only", ".mp4", {"panels": ["x0"]}),
    ("WebP, x0 only", ".webp", {"panels": ["x0"]}),
    ("PNG grid, 8 steps, x_t + x0", ".png", {}),
    ("HTML (x_t, x0, final, all words)", ".html", {}),
]


def tiny512_pipeline():
    """Random tiny pipeline with SD 1.x geometry: 512x512 images, 64x64 latents."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=32,
        )
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    pipe = StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(str(TOKENIZER)),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_trace(which: str, steps: int) -> tuple[explainer.Trace, dict]:
    """The trace to export and the size option giving 512 px panels."""
    if which == "tiny512":
        pipe = tiny512_pipeline()
        tr = explainer.trace(pipe, PROMPT, num_inference_steps=steps, height=512, width=512, progress=False)
        rgb = explainer.LatentRGB(np.asarray(SD1_LATENT_RGB_FACTORS, np.float32), np.zeros(3, np.float32), "sd1")
        return dataclasses.replace(tr, latent_rgb=rgb), {}
    pipe = explainer.load_pipeline("toy", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=steps, progress=False)
    return tr, {"size": 512}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=["tiny512", "toy", "both"], default="both")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures here (e.g. docs/data/export_speed.json)")
    args = parser.parse_args()
    _json.check_path(parser, args.json)
    rows: list[dict] = []
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    which = ["tiny512", "toy"] if args.which == "both" else [args.which]
    print("| trace | output | frame size | median s | min s | file size |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in which:
            tr, base = make_trace(name, args.steps)
            for label, suffix, options in CASES:
                path = Path(tmp) / f"{name}{suffix}"
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    explainer.export(tr, path, verbose=False, **base, **options)
                    times.append(time.perf_counter() - t0)
                size = _frame_size(path)
                sched = tr.metadata["scheduler"]["class"].removesuffix("Scheduler")
                print(f"| {name} ({tr.width}px, {tr.num_steps} steps, {sched}) | {label} | {size} | "
                      f"{statistics.median(times):.2f} | {min(times):.2f} | {path.stat().st_size / 1e6:.2f} MB |",
                      flush=True)  # fmt: skip
                rows.append({"trace": name, "width": tr.width, "steps": tr.num_steps, "scheduler": sched, "output": label,
                             "frame_size": size, "median_s": statistics.median(times), "min_s": min(times),
                             "file_mb": path.stat().st_size / 1e6})
    _json.write(args.json, "export_speed", vars(args), rows)


def _frame_size(path: Path) -> str:
    if path.suffix in (".gif", ".webp", ".png"):
        from PIL import Image

        with Image.open(path) as im:
            return f"{im.width}x{im.height}"
    if path.suffix == ".mp4":
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(path))
        w, h = reader.__next__()["size"]
        reader.close()
        return f"{w}x{h}"
    return "512x512 views"


if __name__ == "__main__":
    main()
