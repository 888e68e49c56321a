"""Shared ``--json`` output of the benchmarks: their figures, with the machine they ran on, under docs/data/."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path


def machine() -> dict:
    """Where the figures were measured: CPU, core count, load, library versions, and the GPU if one is used."""
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "PIL"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write(path: str | os.PathLike[str] | None, benchmark: str, args: dict, rows: list[dict]) -> None:
    """Write ``{"benchmark", "command", "args", "machine", "date", "rows"}`` to ``path`` (nothing if ``None``)."""
    if path is None:
        return
    path = Path(path)
    data = {"benchmark": benchmark, "command": " ".join(["python", *sys.argv]), "args": args,
            "machine": machine(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"# wrote {path}")


def check_path(parser, path: str | None) -> None:
    """Refuse an unwritable ``--json`` before any work is done (exit 2, one line)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir() or not p.parent.resolve().is_dir():
        parser.error(f"--json {path!r}: not a file in an existing folder")
