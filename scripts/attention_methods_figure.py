"""The two joint-attention map methods side by side, for the same tokens of the same FLUX run.

Attention probabilities (the text block of the joint softmax, ``record={"method": "probabilities"}``)
next to ConceptAttention-style maps (the image tokens' attention outputs projected onto the text
tokens', ``record={"method": "concept"}``), drawn by ``explainer.views.method_comparison``.

**The model has random weights.** No FLUX.1 weights are available where this runs, so it is the
tests' tiny random-weight FLUX.1 (``tests/_flux.py``: FLUX.1-dev's layout with ``guidance_embeds``,
shrunk to 2 double-stream and 2 single-stream blocks of 2 heads x 16, a tiny CLIP and T5, a tiny
16-channel VAE), at 64x64 pixels (a 16x16 grid of packed tokens). The figure shows what each method
computes from one run, not what a trained model attends to. Writes ``docs/data/attention_methods.png``
and ``docs/data/attention_methods.json`` (the settings, each method's description and both maps).

    python scripts/attention_methods_figure.py [--out docs/data]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

PROMPT = "a red cube beside a blue sphere"
TOKENS = "cube"
SETTINGS = dict(num_inference_steps=4, height=64, width=64, max_sequence_length=16, seed=0)
BLOCKS = dict(num_layers=2, num_single_layers=2)  # double- and single-stream blocks of the tiny FLUX


def main() -> None:
    import explainer
    from _flux import build_flux_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "data")
    args = parser.parse_args()
    pipe = build_flux_pipeline(guidance_embeds=True, **BLOCKS)
    traces = [explainer.trace(pipe, PROMPT, progress=False, record={"method": method}, **SETTINGS)
              for method in ("probabilities", "concept")]  # fmt: skip
    assert traces[0].final_image.tobytes() == traces[1].final_image.tobytes()  # the maps differ, the run does not
    step = traces[0].num_steps - 1
    fig = explainer.views.method_comparison(traces, TOKENS, step)
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "attention_methods.png", dpi=110)
    maps = [tr.heatmap(TOKENS, step=step) for tr in traces]  # [H, W] in [0, 1] each, at image size
    config = dict(pipe.transformer.config)
    data = {
        "what": "the same token's map from the same FLUX run, by the two methods (views.method_comparison)",
        "model": "tests/_flux.py tiny FLUX.1 with RANDOM weights (FLUX.1-dev layout, guidance_embeds=True), "
        f"{BLOCKS['num_layers']} double-stream + {BLOCKS['num_single_layers']} single-stream blocks; not a trained model",
        "transformer_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()
                               if not k.startswith("_")},  # fmt: skip
        "prompt": PROMPT,
        "token": TOKENS,
        "step": step,
        "settings": SETTINGS,
        "layers": [la.name for la in traces[0].attention_layers],
        "methods": {tr.metadata["record"].get("method", "probabilities"): tr.metadata["attention_method"] for tr in traces},
        "correlation": round(float(np.corrcoef(maps[0].ravel(), maps[1].ravel())[0, 1]), 4),
        "concentration": {tr.metadata["record"].get("method", "probabilities"): round(float(explainer.views.concentration(tr, TOKENS)[step]), 4)
                          for tr in traces},  # fmt: skip
        "maps": {tr.metadata["record"].get("method", "probabilities"): np.round(m, 4).tolist() for tr, m in zip(traces, maps)},
        "machine": f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}",
    }
    (args.out / "attention_methods.json").write_text(json.dumps(data) + "\n")
    print(f"wrote {args.out / 'attention_methods.png'} and attention_methods.json; correlation {data['correlation']}, "
          f"concentration {data['concentration']}")


if __name__ == "__main__":
    main()
