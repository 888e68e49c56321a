"""Parity of the live page's ONNX graphs (assets/toy_onnx) with the traced PyTorch run, for the docs.

    python scripts/live_onnx_parity.py

For a few captions, seeds, step counts and guidance scales: the ONNX graphs under onnxruntime (CPU, one
thread), driven by diffusers' own scheduler with classifier-free guidance, against ``explainer.trace`` of the
toy. Writes docs/data/live_onnx_parity.json: per run the largest latent difference over all steps, the final
image's grey-level difference (max and mean) and the lowest attention-map correlation over layers
(prompt branch, every step). tests/test_live_onnx.py asserts the same quantities on one run.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import explainer  # noqa: E402
from explainer.live.export_onnx import MODEL_FILES, onnx_dir  # noqa: E402
from explainer.toy import ToyVocabularyWarning  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RUNS = [  # caption, seed, steps, guidance
    ("a red circle on the left and a blue square", 3, 6, 7.5),
    ("a small green triangle at the top", 11, 25, 5.0),
    ("a yellow square below a purple circle", 0, 25, 7.5),
    ("a big blue triangle on the right", 42, 10, 3.0),
    ("an orange circle", 7, 25, 1.0),
]


def compare(pipe, sessions: dict, caption: str, seed: int, steps: int, guidance: float) -> dict:
    """One caption through the traced pipeline and through the ONNX graphs; the differences."""
    tr = explainer.trace(pipe, caption, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                         progress=False, record={"dtype": "float32"})  # fmt: skip
    tok = pipe.tokenizer

    def encode(text: str) -> np.ndarray:
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        return sessions["text_encoder"].run(None, {"input_ids": np.array([ids], np.int32)})[0]  # [1, T, D]

    cfg = guidance > 1
    embeds = np.concatenate([encode(""), encode(caption)]) if cfg else encode(caption)
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    x = torch.from_numpy(tr.latents[0].copy())[None]  # [1, C, h, w]
    latent_err, maps = 0.0, []
    for i, t in enumerate(scheduler.timesteps):
        sample = np.concatenate([x.numpy()] * len(embeds))
        out, *attn = sessions["unet"].run(None, {"sample": sample, "timestep": np.array([float(t)], np.float32),
                                                 "encoder_hidden_states": embeds})  # fmt: skip
        guided = out[:1] + guidance * (out[1:] - out[:1]) if cfg else out
        x = scheduler.step(torch.from_numpy(guided), t, x).prev_sample
        latent_err = max(latent_err, float(np.abs(x[0].numpy() - tr.latents[i + 1]).max()))
        maps.append([a[-1] for a in attn])  # the prompt row, [N, T] per layer
    image = sessions["vae_decoder"].run(None, {"latent": x.numpy()})[0][0]  # [3, H, W]
    pixels = (image.transpose(1, 2, 0) * 255).round().astype(np.int16)
    grey = np.abs(pixels - np.asarray(tr.final_image.convert("RGB"), np.int16))
    n = len(tr.token_ids)
    rs = []
    for la in tr.attention_layers:
        ours = np.stack([m[la.index][:, :n].T for m in maps])  # [step, t, N]
        theirs = tr.attention[f"cond/{la.group}"][:, la.slot].reshape(ours.shape).astype(np.float32)
        rs.append(float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]))
    return {"caption": caption, "seed": seed, "steps": steps, "guidance": guidance,
            "latent_max_abs_diff": latent_err, "latent_max_abs": float(np.abs(tr.latents).max()),
            "image_max_grey_diff": int(grey.max()), "image_mean_grey_diff": float(grey.mean()),
            "attention_min_r": min(rs)}  # fmt: skip


def main() -> None:
    warnings.simplefilter("ignore", ToyVocabularyWarning)  # some captions have unknown words on purpose
    torch.set_num_threads(1)
    pipe = explainer.load_pipeline("toy", device="cpu", dtype="fp32")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {key: ort.InferenceSession(str(onnx_dir() / name), options, providers=["CPUExecutionProvider"])
                for key, name in MODEL_FILES.items()}  # fmt: skip
    runs = []
    for caption, seed, steps, guidance in RUNS:
        runs.append(compare(pipe, sessions, caption, seed, steps, guidance))
        r = runs[-1]
        print(f"{caption!r} seed {seed}, {steps} steps, guidance {guidance}: latent diff {r['latent_max_abs_diff']:.1e}"
              f", image max {r['image_max_grey_diff']} / mean {r['image_mean_grey_diff']:.3f} grey levels, "
              f"attention r >= {r['attention_min_r']:.6f}")  # fmt: skip
    summary = {"latent_max_abs_diff": max(r["latent_max_abs_diff"] for r in runs),
               "image_max_grey_diff": max(r["image_max_grey_diff"] for r in runs),
               "attention_min_r": min(r["attention_min_r"] for r in runs),
               "onnxruntime": ort.__version__, "torch": torch.__version__}  # fmt: skip
    out = ROOT / "docs" / "data" / "live_onnx_parity.json"
    out.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}: {summary}")


if __name__ == "__main__":
    main()
