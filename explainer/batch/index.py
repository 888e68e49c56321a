"""The index of a batch folder: one Parquet table of every item's record, rebuilt from the per-item records."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .files import _filesystem, _write_bytes

INDEX_FILE = "index.parquet"
PLAN_FILE = "plan.parquet"
DIRS = {"trace": "traces", "image": "images", "record": "records"}


def index_schema() -> Any:
    """The Parquet schema of ``index.parquet``: inputs, outputs, status, error, timings and summaries.

    Returns:
        A ``pyarrow.Schema``.
    """
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()),  # "{row:06d}-s{seed}-{digest}": the item's id and file stem
        ("row", pa.int64()),  # row of the prompts input (0-based)
        ("seed", pa.int64()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("prompt_2", pa.string()),  # SDXL's second text encoder; None: the pipeline's default (the prompt)
        ("negative_prompt_2", pa.string()),
        ("guidance_scale", pa.float64()),
        ("num_inference_steps", pa.int64()),
        ("scheduler", pa.string()),  # None: the model's own
        ("image", pa.string()),  # input image path (edits), as given
        ("mask", pa.string()),
        ("strength", pa.float64()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("options", pa.string()),  # JSON of the other trace() keywords (record=...)
        ("model", pa.string()),
        ("status", pa.string()),  # "ok" or "error"
        ("error", pa.string()),  # "ExceptionType: first line of the message", or None
        ("trace_path", pa.string()),  # relative to the output folder; None for errors
        ("image_path", pa.string()),
        ("trace_bytes", pa.int64()),
        ("t_trace_s", pa.float64()),  # the traced run
        ("t_write_s", pa.float64()),  # writing the trace and the PNG
        ("t_total_s", pa.float64()),  # the whole item, reading input images included
        ("finished_at", pa.timestamp("ms", tz="UTC")),
        ("worker", pa.string()),  # "host:pid"
        ("steps", pa.int64()),  # denoising iterations recorded
        ("n_tokens", pa.int64()),  # prompt tokens, BOS .. EOS
        ("n_truncated", pa.int64()),  # tokens cut off by the text encoder's length
        ("final_mean", pa.float64()),  # mean pixel value of the final image, in [0, 1]
        ("x0_settled_step", pa.int64()),  # first step from which x0 stays within 10 % of the final x0
        ("guidance_gap", pa.float64()),  # mean |eps_cond - eps_uncond| over steps (None without guidance)
    ])


def _read_parquet(fs: Any, path: str) -> Any:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def _write_parquet(fs: Any, path: str, table: Any) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    _write_bytes(fs, path, buf.getvalue())


def _records_to_table(records: list[dict]) -> Any:
    import pyarrow as pa

    schema = index_schema()
    rows = []
    for r in records:
        row = {name: r.get(name) for name in schema.names}
        if row["finished_at"] is not None:
            row["finished_at"] = datetime.fromtimestamp(float(row["finished_at"]), timezone.utc)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema)


def compact(out_dir: str | os.PathLike[str]) -> Any:
    """Rebuild ``index.parquet`` from the records: rows of existing records are kept, new records added.

    Args:
        out_dir: the batch's output folder.

    Returns:
        The index as a ``pyarrow.Table`` (schema :func:`index_schema`), sorted by row, seed and key.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    fs, root = _filesystem(str(out_dir))
    record_dir = f"{root}/{DIRS['record']}"
    files = fs.glob(f"{record_dir}/*.json") if fs.isdir(record_dir) else []
    on_disk = {Path(f).name[: -len(".json")]: f for f in files}
    index_path = f"{root}/{INDEX_FILE}"
    old = _read_parquet(fs, index_path) if fs.isfile(index_path) else _records_to_table([])
    if old.schema != index_schema():
        old = _records_to_table([])  # written by another version: rebuild from the records
    rows_before = old.num_rows
    old = old.filter(pc.is_in(old["key"], pa.array(list(on_disk), pa.string())))  # records removed: rows dropped
    known = set(old["key"].to_pylist())
    new = [json.loads(fs.cat_file(f)) for k, f in on_disk.items() if k not in known]
    table = pa.concat_tables([old, _records_to_table(new)]) if new else old
    table = table.sort_by([("row", "ascending"), ("seed", "ascending"), ("key", "ascending")])
    if new or old.num_rows != rows_before or not fs.isfile(index_path):
        _write_parquet(fs, index_path, table)
    return table


def read_index(out_dir: str | os.PathLike[str], columns: Sequence[str] | None = None) -> Any:
    """The index of a batch folder (compacted first, so records not yet in it are included).

    Args:
        out_dir: the batch's output folder.
        columns: only these columns (default all).

    Returns:
        A ``pyarrow.Table``.
    """
    fs, root = _filesystem(str(out_dir))
    if not fs.isdir(root):
        raise FileNotFoundError(f"no batch folder at {out_dir}")
    table = compact(out_dir)
    return table.select(list(columns)) if columns is not None else table


def status(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """How far a batch folder is: planned, done, ok, errors, pending, timings and the last errors.

    Returns:
        A JSON-ready dict.
    """
    fs, root = _filesystem(str(out_dir))
    if not fs.isdir(root) or not (fs.isdir(f"{root}/{DIRS['record']}") or fs.isfile(f"{root}/{INDEX_FILE}")):
        raise FileNotFoundError(f"{out_dir} is not a batch folder (no {DIRS['record']}/ or {INDEX_FILE})")
    index = compact(out_dir)
    planned_keys = _read_parquet(fs, f"{root}/{PLAN_FILE}")["key"].to_pylist() if fs.isfile(f"{root}/{PLAN_FILE}") else []
    keys = set(index["key"].to_pylist())
    rows = index.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] != "ok"]
    times = [r["t_total_s"] for r in ok if r["t_total_s"] is not None]
    return {
        "folder": str(out_dir),
        "planned": len(planned_keys),
        "done": len(rows),
        "ok": len(ok),
        "errors": len(errors),
        "pending": sum(k not in keys for k in planned_keys),
        "mean_item_s": float(np.mean(times)) if times else None,
        "trace_mb": round(sum(r["trace_bytes"] or 0 for r in ok) / 1e6, 3),
        "models": sorted({r["model"] for r in rows if r["model"]}),
        "last_errors": [f"row {r['row']} seed {r['seed']}: {r['error']}" for r in errors[-5:]],
    }
