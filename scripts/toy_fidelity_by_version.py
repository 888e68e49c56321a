"""The toy model's caption fidelity under the installed transformers (run it once per environment).

The toy's text encoder must load the same under transformers 4.x and 5.x; this measures what a user
gets in each. Each run adds one row, keyed by the transformers version and the model folder, to
``docs/data/toy_fidelity_by_version.json``::

    python scripts/toy_fidelity_by_version.py                 # in each environment to compare
    python scripts/toy_fidelity_by_version.py --model OLD_DIR --label "5.x key layout"

Evaluation: the world's captions with evaluation noise seeds (:func:`explainer.toy.evaluate.fidelity`),
25 steps, guidance 7.5, a plain ``pipe(...)`` call.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "data" / "toy_fidelity_by_version.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy", help="model folder (default: the bundled toy)")
    p.add_argument("--label", default="shipped", help="what the model folder is, for the table")
    p.add_argument("--n", type=int, default=64, help="captions to draw (default 64)")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"--n must be >= 1, got {a.n}")

    import diffusers
    import torch
    import transformers

    import explainer
    from explainer.toy.evaluate import fidelity

    pipe = explainer.load_pipeline(a.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    res = fidelity(pipe, n=a.n, guidance_scale=7.5, num_inference_steps=25, batch_size=32)
    row = {"label": a.label, "transformers": transformers.__version__, "diffusers": diffusers.__version__,
           "torch": torch.__version__, "python": platform.python_version(), "n": res["n"],
           **{k: round(res[k], 4) for k in ("colour", "colour_position", "shape", "all")}}
    rows = json.loads(a.out.read_text())["rows"] if a.out.exists() else []
    rows = [r for r in rows if (r["label"], r["transformers"]) != (row["label"], row["transformers"])] + [row]
    rows.sort(key=lambda r: (r["label"], r["transformers"]))
    a.out.write_text(json.dumps({"command": "python scripts/toy_fidelity_by_version.py", "rows": rows}, indent=2) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
