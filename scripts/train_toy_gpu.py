"""One time-boxed training run of the toy model on a lent GPU, writing everything worth keeping to $OUT.

It runs the package's own recipe (explainer.toy.train) in timed chunks: stage 1 (VAE), then stage 2
with a fidelity evaluation after each chunk and EMA snapshots for the learning curve. After every
chunk the current model is exported, so a run cut short still returns a usable model.

    OUT=/tmp/out BUDGET_S=520 python scripts/train_toy_gpu.py
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import torch

from explainer.toy.evaluate import GUIDANCE_CURVE, fidelity
from explainer.toy.train import TrainConfig, Trainer

T0 = time.time()
OUT = Path(os.environ.get("OUT", "/tmp/out"))
BUDGET = float(os.environ.get("BUDGET_S", "520"))  # seconds for the whole script
VAE_S = float(os.environ.get("VAE_S", "50"))
FINAL_EVAL_S = float(os.environ.get("FINAL_EVAL_S", "50"))  # kept back for the final evaluation
CHUNKS = int(os.environ.get("CHUNKS", "6"))
SNAP_AFTER = {2, 4}  # chunks after which EMA snapshots are kept (learning-curve points)
EVAL_N = int(os.environ.get("EVAL_N", "128"))
RUN = Path(os.environ.get("RUN", "/tmp/toy_run"))

cfg = TrainConfig(
    vae_steps=int(os.environ.get("VAE_STEPS", "3000")),
    vae_batch=int(os.environ.get("VAE_BATCH", "64")),
    batch=int(os.environ.get("BATCH", "256")),
    unet_lr=float(os.environ.get("UNET_LR", "5e-4")),
    text_lr=float(os.environ.get("TEXT_LR", "1e-3")),
    checkpoint_every=10**9,
)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
OUT.mkdir(parents=True, exist_ok=True)
tr = Trainer(RUN, cfg, "auto")
print("device", tr.device, torch.cuda.get_device_name() if tr.device.type == "cuda" else "", flush=True)


def left() -> float:
    return BUDGET - (time.time() - T0)


def export_all(tag: str) -> None:
    exp = RUN / "export"
    if exp.exists():
        shutil.rmtree(exp)
    tr.export(exp)
    shutil.copy(exp / "unet" / "diffusion_pytorch_model.safetensors", OUT / "unet.safetensors")
    shutil.copy(exp / "text_encoder" / "model.safetensors", OUT / "text_encoder.safetensors")
    with tarfile.open(OUT / "rest.tar.gz", "w:gz") as tf:
        copied = {("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")}
        for p in sorted(exp.rglob("*")):  # the rest of the model; the tokenizer is in the repository
            if p.is_file() and p.parent.name != "tokenizer" and (p.parent.name, p.name) not in copied:
                tf.add(p, arcname=str(p.relative_to(exp)))
        for name in ("train_log.jsonl", "eval_log.jsonl"):
            if (RUN / name).exists():
                tf.add(RUN / name, arcname=name)
    print(f"[{time.time() - T0:6.1f}s] exported ({tag})", flush=True)


# Stage 1
tr.train_vae(deadline=T0 + VAE_S, progress=False)
print(f"[{time.time() - T0:6.1f}s] VAE steps {tr.vae_step} scaling_factor {tr.scaling_factor}", flush=True)
if tr.scaling_factor is None:  # the time box ended stage 1 early: measure what we have
    tr.scaling_factor = tr.measure_scaling_factor()

# Stage 2, in chunks
stage2 = left() - FINAL_EVAL_S
chunk_s = stage2 / CHUNKS
t_stage = time.time()
for c in range(1, CHUNKS + 1):
    deadline = t_stage + c * chunk_s
    if c == 1:
        # Measure the step rate on a short first stretch, then size the cosine decay to the run.
        tr.train_diffusion(deadline=time.time() + min(20.0, chunk_s / 3), progress=False)
        rate = tr.step / max(1e-6, time.time() - t_stage)
        tr.cfg.lr_decay_steps = int(tr.step + rate * (t_stage + stage2 - time.time()) * 0.97)
        print(f"[{time.time() - T0:6.1f}s] {rate:.1f} steps/s -> lr_decay_steps {tr.cfg.lr_decay_steps}", flush=True)
    t_before_eval = time.time()
    tr.train_diffusion(deadline=deadline - 8.0, progress=False)
    row = tr.evaluate(n=EVAL_N)
    print(f"[{time.time() - T0:6.1f}s] chunk {c}: step {tr.step} {json.dumps(row['g7.5'])}", flush=True)
    if c in SNAP_AFTER:
        tr.snapshot()
        for part in ("unet", "text_encoder"):
            src = RUN / "snapshots" / f"step_{tr.step:06d}_{part}.safetensors"
            shutil.copy(src, OUT / f"snap{c}_{part}.safetensors")
    export_all(f"chunk {c}")

# Final evaluation: the guidance curve and a larger sample at 7.5
pipe = tr.pipeline()
final = {"step": tr.step, "vae_step": tr.vae_step, "minutes": tr.minutes, "device": torch.cuda.get_device_name() if tr.device.type == "cuda" else "cpu"}
curve = {}
for g in GUIDANCE_CURVE:
    if left() < 5:
        break
    r = fidelity(pipe, n=256 if g == 7.5 else EVAL_N, guidance_scale=g, progress=False)
    curve[str(g)] = {k: v for k, v in r.items() if k != "per_caption"}
    print(f"[{time.time() - T0:6.1f}s] g={g}: {json.dumps(curve[str(g)])}", flush=True)
final["guidance_curve"] = curve
(RUN / "final_eval.json").write_text(json.dumps(final, indent=2))
shutil.copy(RUN / "final_eval.json", OUT / "final_eval.json")
export_all("final")
print(f"[{time.time() - T0:6.1f}s] done", flush=True)
