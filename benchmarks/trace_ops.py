"""Work the recorder adds to each UNet call, counted rather than timed: torch ops, and how many launch kernels.

On a GPU, the SD 1.x UNet at 512² is close to launch-bound: every extra kernel launch, and every host sync
that stops the CPU from queueing ahead, shows in the wall time. Those are properties of the code, not of
the machine, so they can be counted on any CPU, exactly and without noise:

- **ops**: every ATen op dispatched during the call (``TorchDispatchMode``), plain ``pipe()`` against
  ``explainer.trace()`` with the default recording and with ``record="none"``;
- **kernel ops**: those that run a kernel on a GPU (views, ``detach``, ``empty`` and scalar reads excluded);
- **finiteness checks read before the last step**, and how many steps late: each is a read of device
  memory by the host (a host sync on a GPU). With the lag the recorder uses on CUDA (``Recorder.CUDA_LAG``)
  a step's check is read only once later steps are queued, when its work has long finished; at the last
  step every check left is read, before the pipeline decodes the image.

The pipelines have the SD 1.x and SDXL base UNet layouts (SD 1.x: 16 cross-attention layers; SDXL: 70) at
narrow widths, which changes no op count: the script checks that the counts are the same at two widths.
Random weights, built from configs; nothing is downloaded.

Usage::

    python benchmarks/trace_ops.py --json docs/data/trace_ops.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

import _json  # noqa: E402  (benchmarks/_json.py)
from _opcount import OpCounter  # noqa: E402  (tests/_opcount.py)
import explainer  # noqa: E402
from explainer.tracing.recorder import Recorder  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse"
def sd15_pipe(width: int):
    """SD 1.x UNet layout (diffusers' default config: 4 levels, 16 cross-attention layers), ``width`` base channels."""
    from _tiny import clip_tokenizer, text_config, tiny_vae
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(width, 2 * width, 4 * width, 4 * width), cross_attention_dim=32,
                                sample_size=16, norm_num_groups=4)  # fmt: skip
    pipe = StableDiffusionPipeline(unet=unet.eval(), vae=tiny_vae().eval(), text_encoder=CLIPTextModel(text_config()).eval(),
                                   tokenizer=clip_tokenizer(), scheduler=PNDMScheduler(skip_prk_steps=True),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_pipe(width: int):
    """SDXL base UNet layout (transformer depths 1 / 2 / 10, heads 5 / 10 / 20: 70 cross-attention layers)."""
    from _sdxl import SDXL_SCHEDULER
    from _tiny import clip_tokenizer, text_config, tiny_vae
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    enc = text_config()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(width, 2 * width, 4 * width), layers_per_block=2, sample_size=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(5, 10, 20),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2, 10), projection_class_embeddings_input_dim=8 * 6 + enc.projection_dim,
        cross_attention_dim=2 * enc.hidden_size, norm_num_groups=4,
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline(unet=unet.eval(), vae=tiny_vae().eval(), text_encoder=CLIPTextModel(enc).eval(),
                                     text_encoder_2=CLIPTextModelWithProjection(enc).eval(), tokenizer=clip_tokenizer(),
                                     tokenizer_2=clip_tokenizer(), scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER))  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


PIPES = {"sd15": (sd15_pipe, 32), "sdxl": (sdxl_pipe, 40)}  # base widths (halved for the check)


def count(pipe, steps: int, size: int) -> dict:
    """Ops inside the loop of one plain call and of two traced ones, and the recorder's device reads there."""
    kwargs = dict(num_inference_steps=steps, height=size, width=size, guidance_scale=7.5)
    out: dict = {}
    for name in ("plain", "default", "none"):
        with OpCounter(pipe) as counter:
            if name == "plain":
                pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs)
            else:
                reads = _count_reads(lambda: explainer.trace(pipe, PROMPT, seed=0, record=name, progress=False,
                                                             **kwargs))  # fmt: skip
        out[name] = {"ops": sum(counter.ops.values()), "kernel_ops": counter.kernels(), "unet_calls": counter.unet_calls}
        if name != "plain":
            out[name].update(reads)
    return out


def _count_reads(run) -> dict:
    """Run ``run`` with the recorder's CUDA lag; count the finiteness checks read before the last step, and how late."""
    if not hasattr(Recorder, "_read_check"):  # a recorder from before the lagged checks: one read per step, at once
        n = run().num_steps
        return {"reads_before_last_step": n - 1, "min_steps_late": 0, "reads_at_or_after_last_step": 1,
                "lag_steps": 0}  # fmt: skip
    late, last = [], []
    original = Recorder._read_check

    def spy(self, entry):  # noqa: ANN001
        done = len(self.x0) >= self.plan.num_steps  # at the last step (or after the run) every check is read
        (last if done else late).append(len(self.x0) - 1 - entry.step)  # steps committed since the checked one
        return original(self, entry)

    Recorder._read_check = spy
    Recorder.finite_check_lag = Recorder.CUDA_LAG
    try:
        run()
    finally:
        Recorder._read_check, Recorder.finite_check_lag = original, None
    return {"reads_before_last_step": len(late), "min_steps_late": min(late, default=None),
            "reads_at_or_after_last_step": len(last), "lag_steps": Recorder.CUDA_LAG}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--which", default="sd15,sdxl")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="image side (the counts do not depend on it)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    _json.check_path(parser, args.json)
    rows = []
    for which in args.which.split(","):
        make, width = PIPES[which]
        pipe = make(width)
        c = count(pipe, args.steps, args.size)
        check = count(make(width // 2), args.steps, args.size)  # half the widths: the same counts
        same = all(c[k][f] == check[k][f] for k in c for f in ("ops", "kernel_ops"))
        calls = c["plain"]["unet_calls"]
        row = {"which": which, "steps": args.steps, "unet_calls": calls, "same_counts_at_half_width": same,
               "attention_layers": sum(1 for n, _ in pipe.unet.named_modules() if n.endswith("attn2"))}  # fmt: skip
        for k in ("plain", "default", "none"):
            row[k] = c[k]
        for k in ("default", "none"):
            for f in ("ops", "kernel_ops"):
                extra = c[k][f] - c["plain"][f]
                row[f"{k}_extra_{f}_per_call"] = round(extra / calls, 1)
                row[f"{k}_extra_{f}_pct"] = round(100 * extra / c["plain"][f], 2)
        rows.append(row)
        print(f"{which}: {calls} UNet calls; plain {c['plain']['ops']} ops ({c['plain']['kernel_ops']} kernel ops); "
              f"per UNet call, default recording +{row['default_extra_kernel_ops_per_call']} kernel ops "
              f"(+{row['default_extra_kernel_ops_pct']} %), record='none' +{row['none_extra_kernel_ops_per_call']} "
              f"(+{row['none_extra_kernel_ops_pct']} %); finiteness checks read before the last step "
              f"{c['default']['reads_before_last_step']}, the soonest {c['default']['min_steps_late']} steps late; "
              f"same counts at half width: {same}")  # fmt: skip
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    for row in rows:
        row["commit"] = commit.stdout.strip() or None  # the code counted (a benchmark may run against an older one)
    _json.write(args.json, "trace_ops", vars(args), rows)


if __name__ == "__main__":
    main()
