"""What ``scripts/{sdxl,sd3,flux}_trace_size.py`` share: the prompt, the planner loop and the JSON they write.

Each script builds its family's pipeline with the published denoiser and VAE configs on PyTorch's
``meta`` device (no weights, no memory) and calls :func:`main` with its ``record=`` settings and run
variants; the figures are the planner's estimates (``explainer.estimate_trace_bytes``), which the
family's tests check equal to a finished trace's ``nbytes`` on tiny components.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a red fox sitting in tall grass under evening sky"  # 10 words
NEGATIVE = "blurry, low quality, watermark"


def measure(pipe: Any, records: dict[str, Any], variants: list[dict[str, Any]], common: dict[str, Any],
            width: int = 32) -> list[dict[str, Any]]:  # fmt: skip
    """One row per ``record=`` setting and run variant: estimated bytes, layers and recorded tokens.

    Args:
        pipe: the pipeline (on the ``meta`` device).
        records: label -> ``record=`` value.
        variants: the extra ``trace`` arguments of each row (``negative_prompt``, family options such as
            ``true_cfg_scale``); each becomes part of its row.
        common: the arguments every row shares (steps, size).
        width: the label column's width in the printed table.

    Returns:
        The rows, in ``records`` order, each variant in turn.
    """
    import explainer

    rows = []
    for label, record in records.items():
        for variant in variants:
            options = {k: v for k, v in variant.items() if k != "negative_prompt"}
            req = explainer.tracing.recorder.prepare_request(pipe, PROMPT, negative_prompt=variant.get("negative_prompt"),
                                                             options=options or None, record=record, **common)  # fmt: skip
            size = explainer.estimate_trace_bytes(pipe, PROMPT, record=record, **variant, **common)
            rows.append({"record": label, **variant, "bytes": size, "mb": round(size / 1e6, 1),
                         "layers": len(req.plan.layers), "tokens": req.plan.tokens})  # fmt: skip
            shown = " ".join(f"{k}={v!r}" for k, v in variant.items())
            print(f"{label:{width}s} {shown:50s} {size / 1e6:8.1f} MB  {len(req.plan.layers)} layers")
    return rows


def main(*, doc: str, out: str, build: Callable[[], Any], records: dict[str, Any], variants: list[dict[str, Any]],
         common: dict[str, Any], what: str, method: str, extra: Callable[[Any], dict[str, Any]] | None = None,
         width: int = 32) -> None:  # fmt: skip
    """Parse ``--out``, build the pipeline, measure every row and write the JSON.

    Args:
        doc: the script's docstring (its first line is the ``--help`` text).
        out: the default output file name under ``docs/data/``.
        build: makes the pipeline on the ``meta`` device.
        records, variants, common, width: as in :func:`measure`.
        what, method: the JSON's description of the run and of how the figures were made.
        extra: more top-level JSON fields from the pipeline (layer counts, token counts).
    """
    import explainer

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "data" / out)
    args = parser.parse_args()
    pipe = build()
    rows = measure(pipe, records, variants, common, width)
    data = {"what": what, "prompt": PROMPT, "words": len(PROMPT.split())}
    data.update(extra(pipe) if extra is not None else {})
    data.setdefault("attention_layers", len(explainer.tracing.families.family_for(pipe).attention_sites(pipe)))
    data.update({
        "method": method,
        "machine": f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}",
        "rows": rows,
    })  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.out}")
