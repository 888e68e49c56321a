"""Rebuild the toy's prebuilt ONNX graphs (assets/toy_onnx/) for the live browser page, and record their sizes.

Run after retraining the toy: ``python scripts/export_toy_onnx.py``. tests/test_live_onnx.py checks the
committed graphs against PyTorch, so stale files fail CI. Needs ``onnx`` and ``onnxscript`` (the test extra).
Writes docs/data/live_onnx.json: each file's size raw and as the base64 the page embeds, and the export time.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from explainer.live.export_onnx import export_toy_onnx, onnx_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    start = time.perf_counter()
    paths = export_toy_onnx(onnx_dir())
    seconds = time.perf_counter() - start
    files = {}
    for key, path in paths.items():
        raw = path.read_bytes()
        files[path.name] = {"bytes": len(raw), "base64_bytes": len(base64.b64encode(raw))}
        print(f"{path.name:22s} {len(raw) / 1e6:7.2f} MB raw  {files[path.name]['base64_bytes'] / 1e6:7.2f} MB base64")
    total = {k: sum(f[k] for f in files.values()) for k in ("bytes", "base64_bytes")}
    print(f"{'total':22s} {total['bytes'] / 1e6:7.2f} MB raw  {total['base64_bytes'] / 1e6:7.2f} MB base64; "
          f"export {seconds:.0f} s")  # fmt: skip
    out = ROOT / "docs" / "data" / "live_onnx.json"
    out.write_text(json.dumps({"files": files, "total": total, "export_seconds": round(seconds, 1)}, indent=1) + "\n",
                   encoding="utf-8")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
