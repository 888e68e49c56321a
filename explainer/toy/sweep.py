"""The model card's two training figure families, each one command that trains (resumably) and then
evaluates with :mod:`explainer.toy.evaluate`:

- ``grounding``: the attention-grounding fine-tune of a base model (its cross-attention and text
  encoder), evaluated at its start, at kept snapshots and at its end, and blended back toward the base
  (WiSE-FT) at several weights → ``docs/data/grounding.json`` and ``docs/img/toy_grounding.png``;
- ``quick-cpu``: the quick CPU recipe (``--minutes 60`` from scratch) → ``docs/data/quick_cpu_eval.json``.

::

    # the base model is the one the shipped weights were fine-tuned from (in git history):
    git archive f82a9d3^ assets/toy | tar -x -C /tmp/base
    python -m explainer.toy.sweep grounding --base /tmp/base/assets/toy --run runs/ground \\
        --out docs/data/grounding.json --img docs/img        # 40 min of training + ~1 h of evaluation on one core
    python -m explainer.toy.sweep quick-cpu --run runs/quick --out docs/data/quick_cpu_eval.json
                                                             # 60 min of training + ~15 min of evaluation
Both resume: run again to continue a stopped run; a finished run is only re-evaluated.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from .evaluate import fidelity, localisation

GROUNDING_RECIPE = dict(grounding_weight=0.1, unet_trainable=("attn2.",), unet_lr=1e-4, text_lr=2e-4, batch=32,
                        warmup=50, ema_decay=0.995, checkpoint_every=100)


def _scores(pipe, n_loc: int, n_fid: int, steps: int, progress: bool) -> dict:
    """Localisation (and every object word) on ``n_loc`` traced captions, fidelity on ``n_fid`` at guidance 7.5."""
    loc = localisation(pipe, n_loc, num_inference_steps=steps, compare=(), progress=progress)
    fid = fidelity(pipe, n_fid, num_inference_steps=steps, progress=progress)
    return {"localisation": loc["localisation"], "object_words": loc["object_words"],
            "chance_localisation": loc["chance"]["localisation"], "shape": fid["shape"],
            "colour_position": fid["colour_position"], "chance_all": fid["chance"]["all"]}


def _pipeline(trainer, weights: dict | None = None):
    """The trainer's EMA pipeline on the CPU, its UNet / text encoder replaced by ``weights`` where given."""
    from . import clip_keys

    pipe = trainer.pipeline().to("cpu")
    if weights and "unet" in weights:
        pipe.unet.load_state_dict({k: v.float() for k, v in weights["unet"].items()})
    if weights and "text_encoder" in weights:  # either key layout (clip_keys)
        text = {k: v.float() for k, v in weights["text_encoder"].items()}
        pipe.text_encoder.load_state_dict(clip_keys.fit_to(text, pipe.text_encoder))
    return pipe


def grounding(base: str, run: str, *, minutes: float, snapshots: tuple[int, ...], alphas: tuple[float, ...],
              n_loc: int, n_fid: int, steps: int, overrides: dict | None = None, progress: bool = True) -> dict:
    """Fine-tune ``base`` for attention grounding in ``run`` (resumes), then evaluate the sweep.

    Returns:
        the ``grounding.json`` fields: ``steps`` (rows at fine-tune steps 0, ``snapshots``, end) and
        ``blend`` (rows at each weight of the fine-tuned model), each row ``{"x", "localisation",
        "object_words", "shape", "colour_position", ...}``.
    """
    from safetensors.torch import load_file

    from .train import Trainer, TrainConfig, _read_init

    cfg = {**GROUNDING_RECIPE, "keep_snapshots": tuple(snapshots), **(overrides or {})}
    tr = Trainer(run, TrainConfig(), "cpu", cfg, init_from=base)
    if minutes > 0:
        tr.fit(minutes, vae_minutes=0, progress=progress)
    init = _read_init(base)
    rows_steps = [{"x": 0, **_scores(_pipeline(tr, init), n_loc, n_fid, steps, progress)}]
    for s in sorted(x for x in snapshots if 0 < x < tr.step):
        snap = {part: load_file(str(Path(run) / "snapshots" / f"step_{s:06d}_{part}.safetensors"))
                for part in ("unet", "text_encoder")}
        rows_steps.append({"x": s, **_scores(_pipeline(tr, snap), n_loc, n_fid, steps, progress)})
    rows_steps.append({"x": tr.step, **_scores(_pipeline(tr), n_loc, n_fid, steps, progress)})
    rows_blend = []
    for a in alphas:
        if a in (0.0, 1.0):  # the base model and the fine-tune's end: already evaluated
            rows_blend.append({**rows_steps[0 if a == 0.0 else -1], "x": a})
            continue
        with tempfile.TemporaryDirectory() as tmp:
            tr.export(Path(tmp) / "m", blend_with=base, blend_alpha=a)
            blended = _read_init(Path(tmp) / "m")
        rows_blend.append({"x": a, **_scores(_pipeline(tr, blended), n_loc, n_fid, steps, progress)})
    return {"title": f"attention-grounding fine-tune (n = {n_loc} captions for localisation, {n_fid} for fidelity)",
            "guidance": 7.5, "n_localisation": n_loc, "n_fidelity": n_fid, "fine_tune_steps": tr.step,
            "fine_tune_minutes": round(tr.minutes, 2), "steps": rows_steps, "blend": rows_blend}


def quick_cpu(run: str, *, minutes: float, n_loc: int, n_fid: int, steps: int, overrides: dict | None = None,
              progress: bool = True) -> dict:
    """Train the quick CPU recipe in ``run`` for ``minutes`` (resumes), then evaluate its EMA weights.

    Returns:
        the ``quick_cpu_eval.json`` fields.
    """
    from .train import Trainer, TrainConfig

    tr = Trainer(run, TrainConfig(), "cpu", overrides)
    if minutes > 0:
        tr.fit(minutes, progress=progress)
    pipe = _pipeline(tr)
    fid = fidelity(pipe, n_fid, num_inference_steps=steps, progress=progress)
    loc = localisation(pipe, n_loc, num_inference_steps=steps, progress=progress)
    return {"vae_steps": tr.vae_step, "stage2_steps": tr.step, "minutes": tr.minutes,
            "fidelity_g7.5": {k: v for k, v in fid.items() if k != "per_caption"},
            "localisation": {k: v for k, v in loc.items() if k != "per_caption"}}


def main(argv: list[str] | None = None) -> int:
    """``python -m explainer.toy.sweep {grounding,quick-cpu} --run DIR --out FILE.json``."""
    p = argparse.ArgumentParser(prog="python -m explainer.toy.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("family", choices=["grounding", "quick-cpu"])
    p.add_argument("--run", required=True, help="run folder (resumes from its checkpoint)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--base", default=None, help="grounding: the exported base model to fine-tune and blend with")
    p.add_argument("--img", default=None, help="grounding: also draw toy_grounding.png into this folder")
    p.add_argument("--minutes", type=float, default=None, help="training budget (default 40 grounding, 60 quick-cpu; "
                   "0: evaluate the run as it is)")
    p.add_argument("--snapshots", default="200", help="grounding: fine-tune steps also evaluated (default 200)")
    p.add_argument("--alphas", default="0.25,0.5,0.75", help="grounding: blend weights of the fine-tuned model")
    p.add_argument("--n-localisation", type=int, default=None, help="default 40")
    p.add_argument("--n-fidelity", type=int, default=None, help="default 64 grounding, 100 quick-cpu")
    p.add_argument("--steps", type=int, default=25, help="denoising steps of the evaluation")
    p.add_argument("--train-steps", type=int, default=None, help="cap on training steps (for smoke runs)")
    p.add_argument("--vae-steps", type=int, default=None, help="quick-cpu: cap on VAE steps (for smoke runs)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the recipe's)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    grounding_run = a.family == "grounding"
    minutes = a.minutes if a.minutes is not None else (40.0 if grounding_run else 60.0)
    n_loc = a.n_localisation or 40
    n_fid = a.n_fidelity or (64 if grounding_run else 100)
    if minutes < 0:
        p.error(f"--minutes must be >= 0, got {minutes}")
    for name, val in (("n-localisation", n_loc), ("n-fidelity", n_fid), ("steps", a.steps),
                      ("train-steps", a.train_steps), ("vae-steps", a.vae_steps), ("batch", a.batch)):
        if val is not None and val < 1:
            p.error(f"--{name} must be >= 1, got {val}")
    try:
        snapshots = tuple(int(s) for s in a.snapshots.split(",") if s.strip())
        alphas = tuple(float(s) for s in a.alphas.split(",") if s.strip())
    except ValueError:
        p.error(f"--snapshots {a.snapshots!r} / --alphas {a.alphas!r}: expected comma-separated numbers")
    if any(not 0.0 <= x <= 1.0 for x in alphas):
        p.error(f"--alphas {a.alphas!r}: weights must be in [0, 1]")
    out = Path(a.out)
    if out.is_dir() or not out.parent.resolve().is_dir():
        p.error(f"--out {a.out!r}: not a file in an existing folder")
    overrides = {k: v for k, v in (("steps", a.train_steps), ("vae_steps", a.vae_steps), ("batch", a.batch)) if v}
    t0 = time.time()
    if grounding_run:
        if not a.base or not (Path(a.base) / "training.json").is_file():
            p.error(f"--base {a.base!r}: grounding needs an exported toy model folder (with training.json)")
        data = grounding(a.base, a.run, minutes=minutes, snapshots=snapshots, alphas=(0.0, *alphas, 1.0),
                         n_loc=n_loc, n_fid=n_fid, steps=a.steps, overrides=overrides, progress=not a.no_progress)
        data["shipped_alpha"] = 0.5
    else:
        data = quick_cpu(a.run, minutes=minutes, n_loc=n_loc, n_fid=n_fid, steps=a.steps, overrides=overrides,
                         progress=not a.no_progress)
    data["command"] = "python -m explainer.toy.sweep " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    data["evaluate_minutes"] = round((time.time() - t0) / 60, 2)
    out.write_text(json.dumps(data, indent=1) + "\n")
    if grounding_run and a.img:
        import matplotlib.pyplot as plt

        from .report import plot_grounding

        fig = plot_grounding(out.parent if out.name == "grounding.json" else _as_dir(out))
        Path(a.img).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(a.img) / "toy_grounding.png", dpi=110)
        plt.close(fig)
    print(f"wrote {out} ({(time.time() - t0) / 60:.1f} min)")
    return 0


def _as_dir(out: Path) -> Path:
    """A temporary folder holding ``out`` as ``grounding.json`` (report.plot_grounding reads that name)."""
    tmp = Path(tempfile.mkdtemp())
    (tmp / "grounding.json").write_text(out.read_text())
    return tmp


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
