"""Figures of a toy-model training run: loss, learning curve, guidance curve, grounding fine-tune (for the
model card), and ``train_summary.json``: the stage times and step rates derived from the logged times.

    python -m explainer.toy.report docs/data docs/img
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_loss(data: str | Path):
    """Stage-1 and stage-2 training loss against steps, from ``train_log.jsonl``."""
    rows = _rows(Path(data) / "train_log.jsonl")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, stage, title in zip(axes, (1, 2), ("stage 1: VAE (MSE + KL)", "stage 2: UNet + text (weighted v-MSE, EMA-smoothed)")):
        r = [x for x in rows if x["stage"] == stage]
        ax.plot([x["step"] for x in r], [x["loss"] for x in r])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_learning_curve(data: str | Path):
    """Fidelity (and localisation, where measured) against stage-2 steps and minutes."""
    data = Path(data)
    evals = _rows(data / "eval_log.jsonl")
    loc = json.loads((data / "localisation_curve.json").read_text()) if (data / "localisation_curve.json").exists() else []
    fig, ax = plt.subplots(figsize=(6, 3.6))
    steps = [e["step"] for e in evals]
    for key, label in (("colour_position", "colour + position"), ("shape", "shape")):
        ax.plot(steps, [100 * e["g7.5"][key] for e in evals], marker="o", label=label)
    if loc:
        ax.plot([p["step"] for p in loc], [100 * p["localisation"] for p in loc], marker="s", label="attention localisation")
    ax.set_xlabel("stage-2 step")
    ax.set_ylabel("% of evaluation captions (guidance 7.5)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if len(evals) > 1:  # the logged training minutes (both stages) at each evaluation, piecewise linear between them
        mins = [e["minutes"] for e in evals]
        sec = ax.secondary_xaxis("top", functions=(lambda s: _interp(s, steps, mins), lambda m: _interp(m, mins, steps)))
        sec.set_xlabel("training minutes (logged, stages 1 + 2)")
    fig.tight_layout()
    return fig


def _interp(x, xp: list[float], fp: list[float]):
    """Piecewise-linear through ``(xp, fp)``, extended linearly past both ends (invertible for axes)."""
    import numpy as np

    x = np.asarray(x, dtype=float)
    y = np.interp(x, xp, fp)
    lo, hi = x < xp[0], x > xp[-1]
    y[lo] = fp[0] + (x[lo] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    y[hi] = fp[-1] + (x[hi] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return y


def plot_guidance_curve(data: str | Path):
    """Fidelity against guidance scale, from ``final_eval.json``."""
    final = json.loads((Path(data) / "final_eval.json").read_text())
    curve = final["guidance_curve"]
    gs = sorted(curve, key=float)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for key, label in (("colour_position", "colour + position"), ("shape", "shape"), ("all", "all correct")):
        ax.plot([float(g) for g in gs], [100 * curve[g][key] for g in gs], marker="o", label=label)
    ax.set_xlabel("guidance scale")
    ax.set_ylabel("% of evaluation captions")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_grounding(data: str | Path):
    """The attention-grounding fine-tune, from ``grounding.json``: localisation and shape fidelity
    against fine-tune steps (left) and against the interpolation weight toward the fine-tuned model (right)."""
    g = json.loads((Path(data) / "grounding.json").read_text())
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3), sharey=True)
    for ax, key, xlabel in ((axes[0], "steps", "fine-tune step (cross-attention + text encoder)"),
                            (axes[1], "blend", "weight of the fine-tuned model (0 = before, 1 = after)")):
        rows = g[key]
        x = [r["x"] for r in rows]
        ax.plot(x, [100 * r["localisation"] for r in rows], marker="s", label="attention localisation")
        ax.plot(x, [100 * r["shape"] for r in rows], marker="o", label="shape")
        ax.plot(x, [100 * r["colour_position"] for r in rows], marker="^", label="colour + position")
        ow = [r for r in rows if "object_words" in r]
        if ow:
            ax.plot([r["x"] for r in ow], [100 * r["object_words"] for r in ow], marker="d", ls="--",
                    label="every object word on its object")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
    if g.get("shipped_alpha") is not None:
        axes[1].axvline(g["shipped_alpha"], color="#444", lw=1, ls=":")
        axes[1].text(g["shipped_alpha"], 3, " shipped", fontsize=7)
    axes[0].set_ylabel(f"% of evaluation captions (g {g.get('guidance', 7.5)})", fontsize=8)
    axes[0].set_ylim(0, 102)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(g.get("title", ""), fontsize=9)
    fig.tight_layout()
    return fig


def train_summary(data: str | Path) -> dict:
    """Stage times and step rates from the logged times of ``train_log.jsonl`` (one row every 50 steps).

    Returns:
        ``{"stage1": {"last_logged_step", "minutes"}, "stage2": {"first_logged_step", "last_logged_step",
        "minutes_between", "steps_per_s"}}``; ``minutes`` is the cumulative training time the trainer
        logs (stage 1 included, evaluation excluded), so stage 2 took ``final minutes - stage1.minutes``.
    """
    rows = _rows(Path(data) / "train_log.jsonl")
    s1 = [r for r in rows if r["stage"] == 1]
    s2 = [r for r in rows if r["stage"] == 2]
    out: dict = {}
    if s1:
        out["stage1"] = {"last_logged_step": s1[-1]["step"], "minutes": s1[-1]["minutes"]}
    if len(s2) > 1:
        span = s2[-1]["minutes"] - s2[0]["minutes"]
        out["stage2"] = {"first_logged_step": s2[0]["step"], "last_logged_step": s2[-1]["step"], "minutes_between": span,
                         "steps_per_s": (s2[-1]["step"] - s2[0]["step"]) / (60 * span) if span > 0 else None}
    return out


def write_figures(data: str | Path, out: str | Path) -> list[Path]:
    """Save the loss, learning-curve, guidance-curve and grounding PNGs into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in (("toy_loss.png", plot_loss), ("toy_learning_curve.png", plot_learning_curve),
                     ("toy_guidance_curve.png", plot_guidance_curve), ("toy_grounding.png", plot_grounding)):
        if fn is plot_grounding and not (Path(data) / "grounding.json").exists():
            continue
        fig = fn(data)
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)
    return paths


def write_summary(data: str | Path) -> Path:
    """Write :func:`train_summary` of ``data`` as ``data/train_summary.json``."""
    path = Path(data) / "train_summary.json"
    path.write_text(json.dumps(train_summary(data), indent=1) + "\n")
    return path


if __name__ == "__main__":  # pragma: no cover
    _data = sys.argv[1] if len(sys.argv) > 1 else "docs/data"
    print([write_summary(_data), *write_figures(_data, sys.argv[2] if len(sys.argv) > 2 else "docs/img")])
