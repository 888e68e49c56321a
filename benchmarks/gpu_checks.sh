#!/usr/bin/env bash
# The CUDA measurements docs/performance.md still lacks, in one run (about 5 minutes on one H200).
#
#   bash benchmarks/gpu_checks.sh [OUTDIR]     # OUTDIR: where the JSON files go (default: $OUT, else docs/data)
#
# - trace overhead, SD 1.x architecture, 512², 50 steps, 7 interleaved rounds (the ≤ 5 % target);
# - trace overhead, SDXL base architecture, 1024², 30 steps, 7 rounds (the ≤ 5 % target);
# - trace overhead, SD3 / FLUX.1 shrunk transformers (scripts/*_trace_size.py configs), 1024², 28 steps;
# - preview tiers (UNet step, full VAE decode, TAESD decode, linear) on CUDA at 512².
# Random weights from configs, float16; nothing is downloaded. Each step prints as it finishes, so a run
# cut short keeps what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-docs/data}}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('#', torch.cuda.get_device_name())"
python benchmarks/trace_overhead.py --device cuda --which sd15 --size 512 --steps 50 --pairs 7 \
    --json "$out/trace_overhead_sd15_cuda.json"
python benchmarks/trace_overhead.py --device cuda --which sdxl --size 1024 --steps 30 --pairs 7 \
    --json "$out/trace_overhead_sdxl_cuda.json"
python benchmarks/preview_decode.py --device cuda --rounds 7 --warmup 2 --json "$out/preview_decode_cuda.json"
python benchmarks/trace_overhead.py --device cuda --which sd3,flux --size 1024 --steps 28 --pairs 5 \
    --max-sequence-length 0 --json "$out/trace_overhead_dit_cuda.json"
