"""Cost of the preview tiers per step, against one UNet step: TAESD decode, full VAE decode, linear preview.

SD 1.x architecture at 512x512 with random weights (weights do not change the cost): the UNet
(diffusers' default ``UNet2DConditionModel``, cross-attention width 768, one guided step = a batch
of 2 with 77 text tokens), the SD 1.x ``AutoencoderKL`` decoder, and ``AutoencoderTiny`` in its
default configuration, which is TAESD's. Each is timed ``--rounds`` times in turn (median and min of
the wall time, and the median process CPU time, which a busy machine inflates less), float32, on the
CPU unless ``--device cuda``. ``--warmup N`` untimed calls come first (0 is fine on a CPU, where the
first call of a large model costs about what the others do).

Usage::

    python benchmarks/preview_decode.py --json docs/data/preview_decode.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import _json  # noqa: E402  (benchmarks/_json.py)


def main() -> None:
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel

    from explainer.tracing.previews import SD1_LATENT_RGB_FACTORS, LatentRGB, linear_preview

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    _json.check_path(parser, args.json)
    device = torch.device(args.device)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=args.size // 8).to(device).eval()
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                        sample_size=args.size).to(device).eval()  # fmt: skip
    tiny = AutoencoderTiny().to(device).eval()
    side = args.size // (2 ** (len(vae.config.block_out_channels) - 1))
    latent = torch.randn(1, vae.config.latent_channels, side, side, device=device)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, device=device)
    t = torch.tensor(500, device=device)
    rgb = LatentRGB(np.asarray(SD1_LATENT_RGB_FACTORS, np.float32), np.zeros(3, np.float32), "comfyui-sd1")
    latent_np = latent[0].cpu().numpy()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    cases = {
        "unet_step": lambda: unet(torch.cat([latent, latent]), t, encoder_hidden_states=text),
        "vae_decode": lambda: vae.decode(latent / vae.config.scaling_factor),
        "taesd_decode": lambda: tiny.decode(latent / tiny.config.scaling_factor),
        "linear_preview": lambda: linear_preview(latent_np, rgb, (args.size, args.size)),
    }
    params = {"unet_step": unet, "vae_decode": vae.decoder, "taesd_decode": tiny.decoder}
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    with torch.no_grad():
        for _ in range(args.warmup):
            for fn in cases.values():
                fn()
        for r in range(args.rounds):
            for name, fn in cases.items():
                sync()
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items()))
    unet_median = statistics.median(times["unet_step"])
    unet_cpu = statistics.median(cpu["unet_step"])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        module = params.get(name)
        rows.append({"case": name, "size": args.size, "device": args.device, "rounds": args.rounds,
                     "median_ms": round(median * 1e3, 1), "min_ms": round(min(values) * 1e3, 1),
                     "ratio_to_unet_step": round(median / unet_median, 4),
                     "cpu_median_ms": round(statistics.median(cpu[name]) * 1e3, 1),
                     "cpu_ratio_to_unet_step": round(statistics.median(cpu[name]) / unet_cpu, 4),
                     "params_m": round(sum(p.numel() for p in module.parameters()) / 1e6, 2) if module else None})  # fmt: skip
        print(rows[-1])
    _json.write(args.json, "preview_decode", vars(args), rows)


if __name__ == "__main__":
    main()
