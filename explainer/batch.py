"""Batch tracing: many prompts and seeds, one trace file and one PNG each, and a Parquet index of them all.

One code path does the work (:class:`Worker`: trace one item, write its files and its record); the
engine only schedules it: ``engine="local"`` runs the items in this process, ``engine="ray"`` on a
pool of Ray actors with one pipeline each (``pip install "sd-explainer[scale]"``).

The output folder (a local path, or any URL fsspec can write, e.g. ``s3://bucket/run``) holds::

    traces/{key}.safetensors   one trace per finished item
    images/{key}.png           its final image
    records/{key}.json         one record per item, ok or not: written last, it marks the item done
    index.parquet              every record as one table (rebuilt from records/ as the run goes)
    plan.parquet               the items of the latest run (for ``explainer batch-status``)

A run that crashed or was killed continues where it stopped when run again: an item is done once its
record exists; an item cut off before that is traced again and its files are overwritten.

Example:
    >>> report = explainer.batch.run("toy", ["a red circle", "a blue square"], "runs/b", seeds=range(4))  # doctest: +SKIP
    >>> report.table().to_pandas()  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import functools
import hashlib
import inspect
import io
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ENGINES = ("local", "ray")
INDEX_FILE = "index.parquet"
PLAN_FILE = "plan.parquet"
DIRS = {"trace": "traces", "image": "images", "record": "records"}
#: Per-row columns a prompts table may have, and their types.
ROW_FIELDS: dict[str, type] = {
    "prompt": str,
    "negative_prompt": str,
    "seed": int,
    "guidance_scale": float,
    "num_inference_steps": int,
    "scheduler": str,
    "image": str,
    "mask": str,
    "strength": float,
    "height": int,
    "width": int,
}
#: Short column names accepted for the long ones (as the CLI spells them).
ROW_ALIASES = {"negative": "negative_prompt", "guidance": "guidance_scale", "steps": "num_inference_steps"}
#: ``trace()`` arguments a batch sets itself (per item), so they cannot be given as batch-wide keywords.
_RESERVED = ("pipe", "prompt", "seed", "generator", "progress")


@functools.cache
def _trace_parameters() -> dict[str, inspect.Parameter]:
    from .tracing import trace

    return dict(inspect.signature(trace).parameters)


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


# ---------------------------------------------------------------------------------------- items


@dataclass(frozen=True)
class Item:
    """One (prompt row, seed) of a batch.

    Attributes:
        key: ``"{row:06d}-s{seed}-{digest}"``; the digest covers every input, so changed inputs make a new item.
        row: row of the prompts input.
        seed: the noise seed.
        inputs: ``trace()`` keywords of this item (row values over batch-wide ones); image/mask are paths.
        base: folder that relative image/mask paths are read from.
        error: why the row cannot run (a value of the wrong type), or ``None``.
    """

    key: str
    row: int
    seed: int
    inputs: dict[str, Any]
    base: str = ""
    error: str | None = None


def parse_seeds(text: str) -> list[int]:
    """Seeds from ``"0-3"``, ``"0,2,5"`` or ``"0-3,7"`` (ranges inclusive).

    Returns:
        The seeds in order, without repeats.
    """
    seeds: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            values = range(int(lo), int(hi) + 1) if sep else [int(part)]
        except ValueError:
            raise ValueError(f"seeds={text!r}: {part!r} is not a seed or a range like 0-3") from None
        if sep and int(hi) < int(lo):
            raise ValueError(f"seeds={text!r}: the range {part!r} is empty (write low-high)")
        seeds += [s for s in values if s not in seeds]
    if not seeds:
        raise ValueError(f"seeds={text!r} names no seed; use e.g. '0-3' or '0,5'")
    return seeds


def _check_seeds(seeds: Any) -> list[int]:
    if isinstance(seeds, str):
        return parse_seeds(seeds)
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        seeds = [seeds]
    try:
        values = list(seeds)
    except TypeError:
        raise TypeError(f"seeds must be ints, a range or a string like '0-3', not {type(seeds).__name__}") from None
    bad = [s for s in values if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0]
    if bad or not values:
        raise ValueError(f"seeds must be one or more whole numbers >= 0, got {values!r}")
    return [int(s) for s in dict.fromkeys(values)]


def read_prompts(prompts: str | os.PathLike[str] | Sequence[str | Mapping[str, Any]]) -> tuple[list[dict], str]:
    """The rows of a prompts input, and the folder their relative image paths are read from.

    Args:
        prompts: a list of prompts (str) or rows (mappings with a ``prompt`` and any of :data:`ROW_FIELDS`);
            or a path or URL of a ``.txt`` file (one prompt a line; blank lines skipped), a ``.csv`` file
            with a header, or a ``.parquet`` table.

    Returns:
        ``(rows, base)``: rows as dicts of raw values (``None`` where a cell is empty), and the folder.

    Raises:
        ValueError: an unknown suffix or column, or no ``prompt`` column.
        FileNotFoundError: no such file.
    """
    if isinstance(prompts, (str, os.PathLike)):
        return _read_prompt_file(str(prompts))
    if isinstance(prompts, Mapping) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of prompts or rows, or a .txt/.csv/.parquet path, not {type(prompts).__name__}")
    rows = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            rows.append({"prompt": p})
        elif isinstance(p, Mapping):
            rows.append(dict(p))
        else:
            raise TypeError(f"prompts[{i}] must be a str or a mapping of row fields, not {type(p).__name__}")
    return [_check_columns(r, f"prompts[{i}]") for i, r in enumerate(rows)], os.getcwd()


def _read_prompt_file(path: str) -> tuple[list[dict], str]:
    fs, local = _filesystem(path)
    if not fs.isfile(local):
        raise FileNotFoundError(f"prompts file {path} does not exist")
    suffix = Path(local).suffix.lower()
    base = _parent(path)
    if suffix == ".txt":
        with fs.open(local, "r", encoding="utf-8") as f:
            return [{"prompt": line.strip()} for line in f if line.strip()], base
    if suffix == ".csv":
        with fs.open(local, "r", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            rows = [{k: (v if v != "" else None) for k, v in r.items()} for r in reader]
            columns = reader.fieldnames or []
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        with fs.open(local, "rb") as f:
            table = pq.read_table(f)
        rows, columns = table.to_pylist(), table.column_names
    else:
        raise ValueError(f"prompts file {path}: suffix {suffix or '(none)'!r} is not one of .txt, .csv, .parquet")
    _check_columns(dict.fromkeys(columns), f"prompts file {path}")
    return [_check_columns(r, f"{path} row {i}") for i, r in enumerate(rows)], base


def _check_columns(row: dict, where: str) -> dict:
    out = {}
    for name, value in row.items():
        field_name = ROW_ALIASES.get(str(name), str(name))
        if field_name not in ROW_FIELDS:
            allowed = ", ".join([*ROW_FIELDS, *ROW_ALIASES])
            raise ValueError(f"{where}: unknown column {name!r}; columns allowed: {allowed}")
        out[field_name] = value
    if "prompt" not in out:
        raise ValueError(f"{where}: no 'prompt' column")
    return out


def _convert(name: str, value: Any) -> Any:
    """A row value as its field's type (``None`` stays ``None``)."""
    kind = ROW_FIELDS[name]
    if value is None or (isinstance(value, float) and np.isnan(value) and kind is not float):
        return None
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}={value!r} must be text")
        return value
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a {'whole ' if kind is int else ''}number") from None
    if kind is int:
        if not number.is_integer():
            raise ValueError(f"{name}={value!r} must be a whole number")
        return int(number)
    return number


def plan(
    prompts: str | os.PathLike[str] | Sequence[str | Mapping[str, Any]],
    *,
    seeds: Any = (0,),
    model: str = "",
    **trace_kwargs: Any,
) -> list[Item]:
    """The items a batch will run, without running them: each row with each seed (a row's own ``seed`` wins).

    Args:
        prompts: as for :func:`read_prompts`.
        seeds: ints, a range, or a string like ``"0-3"``.
        model: the model's name (part of each item's key).
        **trace_kwargs: batch-wide ``trace()`` keywords; row values override them.

    Returns:
        The items, in row order then seed order.
    """
    seeds = _check_seeds(seeds)
    params = _trace_parameters()
    for name, value in trace_kwargs.items():
        if name in _RESERVED or name not in params:
            allowed = ", ".join(p for p in params if p not in _RESERVED)
            raise TypeError(f"{name}= is not a batch-wide trace() keyword; allowed: {allowed}")
        try:
            json.dumps(value)
        except TypeError:
            raise TypeError(f"{name}= must be plain data (str, number, list, dict) so it can go in the index, "
                            f"not {type(value).__name__}; give images as file paths") from None
    rows, base = read_prompts(prompts)
    items = []
    for i, raw in enumerate(rows):
        inputs, error = dict(trace_kwargs), None
        try:
            values = {k: _convert(k, v) for k, v in raw.items()}
        except (TypeError, ValueError) as err:
            values, error = {"prompt": raw.get("prompt") if isinstance(raw.get("prompt"), str) else None}, str(err)
        if values.get("prompt") is None:  # an empty CSV cell
            values["prompt"] = ""
        inputs.update({k: v for k, v in values.items() if v is not None and k != "seed"})
        row_seed = values.get("seed")
        for seed in [row_seed] if row_seed is not None else seeds:
            digest = hashlib.sha1(json.dumps([model, i, seed, inputs, error], sort_keys=True, default=str).encode())
            items.append(Item(f"{i:06d}-s{seed}-{digest.hexdigest()[:10]}", i, int(seed), inputs, base, error))
    return items


# ---------------------------------------------------------------------------------------- files


def _filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path in it)`` for a local path or a URL."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path.rstrip("/") or path


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _parent(url: str) -> str:
    url = str(url).rstrip("/")
    return url.rsplit("/", 1)[0] if "/" in url else os.getcwd()


def _join(base: str, path: str) -> str:
    """``path`` relative to ``base`` unless it is absolute or a URL."""
    if "://" in path or os.path.isabs(path) or not base:
        return path
    return base.rstrip("/") + "/" + path


def _write_bytes(fs: Any, path: str, data: bytes) -> None:
    """Write a whole file; on local disk through a temporary name and a rename (atomic)."""
    if _is_local(fs):
        tmp = f"{path}.part{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def _save_trace(fs: Any, path: str, tr: Any) -> int:
    """Save a trace to ``path`` (any filesystem); returns its size in bytes."""
    if _is_local(fs):
        tmp = f"{path}.part{os.getpid()}"
        tr.save(tmp)
        os.replace(tmp, path)
        return os.path.getsize(path)
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "trace.safetensors"
        tr.save(local)
        fs.put_file(str(local), path)
        return local.stat().st_size


def _read_image(path: str) -> Any:
    from PIL import Image

    fs, local = _filesystem(path)
    if not fs.isfile(local):
        raise FileNotFoundError(f"no image file at {path}")
    with fs.open(local, "rb") as f, Image.open(f) as opened:
        return opened.copy()


# ---------------------------------------------------------------------------------------- the worker


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def summaries(tr: Any) -> dict[str, Any]:
    """The scalar summaries of a trace that go in the index (see :func:`index_schema`)."""
    x0 = tr.x0.astype(np.float32)  # [step, channel, h, w]
    dist = np.linalg.norm((x0 - x0[-1]).reshape(len(x0), -1), axis=1) / max(float(np.linalg.norm(x0[-1])), 1e-12)
    above = np.nonzero(dist > 0.1)[0]
    settled = int(above[-1] + 1) if len(above) else 0
    gap = None
    if tr.eps_uncond is not None:
        gap = float(np.abs(tr.eps_cond.astype(np.float32) - tr.eps_uncond.astype(np.float32)).mean())
    final = None if tr.final_image is None else float(np.asarray(tr.final_image.convert("RGB")).mean() / 255.0)
    return {"steps": tr.num_steps, "n_tokens": len(tr.tokens), "n_truncated": len(tr.truncated_tokens),
            "final_mean": final, "x0_settled_step": settled, "guidance_gap": gap}


class Worker:
    """Traces items and writes their files: the one code path of every engine.

    Args:
        model: a pipeline, or what :func:`explainer.load_pipeline` takes (``"toy"``, a folder, a Hub id).
        out_dir: the output folder (path or fsspec URL).
        device: for :func:`explainer.load_pipeline`.
        threads: torch CPU threads (``None``: leave as is). CPU results depend on the thread count, so
            traces are bit-identical across engines when it matches.
        allow_empty_prompt: trace ``""`` as an unconditional image instead of recording an error.
    """

    def __init__(self, model: Any, out_dir: str, *, device: str | None = None, threads: int | None = None,
                 allow_empty_prompt: bool = False) -> None:
        import torch

        from .models import load_pipeline

        if threads is not None:
            torch.set_num_threads(int(threads))
        if isinstance(model, (str, os.PathLike)):
            _quiet_loading()
            self.pipe = load_pipeline(model, device=device)
        else:
            self.pipe = model
        self.pipe.set_progress_bar_config(disable=True)
        self.model = model_name(model)
        self.out_dir = str(out_dir)
        self.fs, self.root = _filesystem(self.out_dir)
        self.allow_empty_prompt = allow_empty_prompt
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def ready(self) -> str:
        """This worker's ``host:pid`` (Ray engine: waits for the actor to load its pipeline)."""
        return self.name

    def process(self, item: Item) -> dict[str, Any]:
        """Trace one item, write its trace, PNG and record; an error is recorded, not raised.

        Returns:
            The item's record (a row of the index). ``KeyboardInterrupt`` propagates, with no record.
        """
        from .tracing import trace

        start = time.perf_counter()
        rec = base_record(item, self.model)
        rec["worker"] = self.name
        tr = None
        try:
            if item.error:
                raise ValueError(item.error)
            kwargs = dict(item.inputs)
            prompt = kwargs.pop("prompt", None)
            if not isinstance(prompt, str):
                raise ValueError(f"prompt={prompt!r} must be text")
            if not prompt.strip() and not self.allow_empty_prompt:
                raise ValueError("the prompt is empty; pass allow_empty_prompt=True (--allow-empty) to trace "
                                 "unconditional images")
            for name in ("image", "mask"):
                if kwargs.get(name) is not None:
                    kwargs[name] = _read_image(_join(item.base, kwargs[name]))
            t0 = time.perf_counter()
            tr = trace(self.pipe, prompt, seed=item.seed, progress=False, **kwargs)
            rec["t_trace_s"] = time.perf_counter() - t0
            if not tr.complete:  # trace() turns Ctrl-C into an incomplete trace: stop the batch, record nothing
                raise KeyboardInterrupt(tr.error)
            t0 = time.perf_counter()
            trace_rel = f"{DIRS['trace']}/{item.key}.safetensors"
            image_rel = f"{DIRS['image']}/{item.key}.png"
            rec["trace_bytes"] = _save_trace(self.fs, f"{self.root}/{trace_rel}", tr)
            png = io.BytesIO()
            tr.final_image.save(png, format="PNG")
            _write_bytes(self.fs, f"{self.root}/{image_rel}", png.getvalue())
            rec["t_write_s"] = time.perf_counter() - t0
            rec.update(summaries(tr), status="ok", trace_path=trace_rel, image_path=image_rel,
                       guidance_scale=tr.guidance_scale,
                       num_inference_steps=int(tr.metadata.get("num_inference_steps", rec["num_inference_steps"])))
        except KeyboardInterrupt:
            raise
        except Exception as err:  # a bad row: record it and go on
            rec.update(status="error", error=_one_line(err))
        finally:
            del tr  # one trace in memory at a time
        rec["t_total_s"] = time.perf_counter() - start
        rec["finished_at"] = time.time()
        _write_bytes(self.fs, f"{self.root}/{DIRS['record']}/{item.key}.json",
                     json.dumps(rec, default=str).encode())
        return rec


def _quiet_loading() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def model_name(model: Any) -> str:
    """What the index records as the model: the name or folder given, or a pipeline's ``name_or_path``."""
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return str(getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)


def base_record(item: Item, model: str) -> dict[str, Any]:
    """An item's record before it runs: its inputs, with ``trace()``'s defaults filled in."""
    params = _trace_parameters()
    inputs = dict(item.inputs)

    def value(name: str) -> Any:
        if name in inputs:
            return inputs.pop(name)
        default = params[name].default if name in params else None
        return None if default is inspect.Parameter.empty else default

    rec: dict[str, Any] = {"key": item.key, "row": item.row, "seed": item.seed, "prompt": inputs.pop("prompt", None)}
    for name in ROW_FIELDS:
        if name not in ("prompt", "seed"):
            rec[name] = value(name)
    rec["options"] = json.dumps(inputs, sort_keys=True) if inputs else None
    rec.update(model=model, status=None, error=None)
    return rec


# ---------------------------------------------------------------------------------------- the index


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


# ---------------------------------------------------------------------------------------- running


@dataclass
class BatchReport:
    """What a :func:`run` did.

    Attributes:
        out_dir: the output folder.
        planned: items in the plan.
        skipped: items already done before this run (resumed).
        ok, errors: items this run finished, and those that recorded an error.
        seconds: wall time of this run, start-up included.
        startup_seconds: engine start-up (model loading; for Ray also connecting and starting actors).
    """

    out_dir: str
    planned: int
    skipped: int
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    error_messages: list[str] = field(default_factory=list)

    def table(self) -> Any:
        """The index (``pyarrow.Table``)."""
        return read_index(self.out_dir)


def _retry_cleanup(fs: Any, root: str, items: list[Item], index: Any) -> None:
    failed = {k for k, s in zip(index["key"].to_pylist(), index["status"].to_pylist()) if s != "ok"}
    for item in items:
        if item.key in failed:
            fs.rm_file(f"{root}/{DIRS['record']}/{item.key}.json")


def run(
    model: Any,
    prompts: str | os.PathLike[str] | Sequence[str | Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    seeds: Any = (0,),
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1,
    gpus_per_worker: float | None = None,
    device: str | None = None,
    threads: int | None = None,
    retry_failed: bool = False,
    allow_empty_prompt: bool = False,
    progress: bool = True,
    flush_every: int = 50,
    on_item: Callable[[dict[str, Any]], None] | None = None,
    **trace_kwargs: Any,
) -> BatchReport:
    """Trace every (prompt, seed) into ``out_dir``: a trace file and a PNG each, and a Parquet index.

    Args:
        model: ``"toy"``, a model folder or a Hub id (each Ray actor loads its own); ``engine="local"`` also
            takes a loaded pipeline.
        prompts: a list of prompts or rows, or a ``.txt`` / ``.csv`` / ``.parquet`` file (see
            :func:`read_prompts`); rows may set ``negative_prompt``, ``seed``, ``guidance_scale``,
            ``num_inference_steps``, ``scheduler``, ``image``/``mask`` paths, ``strength``, ``height``, ``width``.
        out_dir: output folder: a local path, or an fsspec URL every worker can write (``s3://...``).
        seeds: seeds of each row without its own ``seed``: ints, a range, or ``"0-3"``.
        engine: ``"local"`` (this process) or ``"ray"`` (an actor pool, one pipeline per actor).
        address: Ray only: the cluster to join (``"auto"``, ``"ray://host:10001"``); ``None`` joins the
            instance this process already started or starts a local one.
        workers: Ray only: number of actors (default: one per GPU of the cluster, else one per
            ``cpus_per_worker`` CPUs).
        cpus_per_worker, gpus_per_worker: Ray only: resources of each actor (GPUs default to 1 when the
            cluster has GPUs, else 0).
        device: for :func:`explainer.load_pipeline` (default CUDA, then MPS, then CPU).
        threads: torch CPU threads per worker (Ray default ``cpus_per_worker``; local default: unchanged).
        retry_failed: run items whose record is an error again (default: finished is finished).
        allow_empty_prompt: trace empty prompts as unconditional images (default: record them as errors).
        progress: show a tqdm bar.
        flush_every: rewrite ``index.parquet`` after this many items (it is always rewritten at the end).
        on_item: called in this process with each finished item's record.
        **trace_kwargs: batch-wide :func:`explainer.trace` keywords (``num_inference_steps``, ``record``...).

    Returns:
        A :class:`BatchReport`; ``report.table()`` is the index.

    Raises:
        ValueError, TypeError: bad arguments, prompts file or columns (before anything runs).
        ImportError: ``engine="ray"`` without Ray (``pip install "sd-explainer[scale]"``).

    Example:
        >>> report = explainer.batch.run("toy", "prompts.csv", "runs/b", seeds="0-3")  # doctest: +SKIP
        >>> explainer.batch.run("toy", "prompts.csv", "s3://bucket/b", seeds="0-3",
        ...                     engine="ray", address="auto")  # doctest: +SKIP

        The walk-through: ``docs/batch.md`` ("Beyond one notebook").
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not allowed; use one of {', '.join(map(repr, ENGINES))}")
    if engine == "local" and (address is not None or workers is not None):
        raise ValueError("address= and workers= are for engine='ray'; engine='local' runs in this process")
    if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
        raise ValueError(f"flush_every={flush_every!r} must be a whole number >= 1")
    if engine == "ray":
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError("engine='ray' loads the model in each actor: pass model as 'toy', a folder or a Hub id, "
                            f"not a {type(model).__name__} object")
        _import_ray()
    started = time.perf_counter()
    out_dir = str(out_dir)
    items = plan(prompts, seeds=seeds, model=model_name(model), **trace_kwargs)
    fs, root = _filesystem(out_dir)
    if fs.isfile(root):
        raise NotADirectoryError(f"out_dir={out_dir!r} is a file; give a folder")
    for d in DIRS.values():
        fs.makedirs(f"{root}/{d}", exist_ok=True)
    _write_parquet(fs, f"{root}/{PLAN_FILE}", _records_to_table([base_record(i, model_name(model)) for i in items]))
    index = compact(out_dir)
    if retry_failed:
        _retry_cleanup(fs, root, items, index)
        index = compact(out_dir)
    done = set(index["key"].to_pylist())
    pending = [i for i in items if i.key not in done]
    report = BatchReport(out_dir, planned=len(items), skipped=len(items) - len(pending))
    if not pending:
        report.seconds = time.perf_counter() - started
        return report
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), initial=report.skipped, desc=f"batch ({engine})", unit="trace", disable=not progress)
    since_flush = 0
    try:
        options = dict(device=device, allow_empty_prompt=allow_empty_prompt)
        if engine == "local":
            results = _run_local(model, out_dir, pending, threads=threads, report=report, **options)
        else:
            results = _run_ray(model, out_dir, pending, address=address, workers=workers, threads=threads,
                               cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, report=report,
                               **options)
        for rec in results:
            if rec["status"] == "ok":
                report.ok += 1
            else:
                report.errors += 1
                if len(report.error_messages) < 20:
                    report.error_messages.append(f"row {rec['row']} seed {rec['seed']}: {rec['error']}")
            bar.update(1)
            if on_item is not None:
                on_item(rec)
            since_flush += 1
            if since_flush >= flush_every:
                compact(out_dir)
                since_flush = 0
    finally:
        bar.close()
        compact(out_dir)
        report.seconds = time.perf_counter() - started
    return report


def _run_local(model: Any, out_dir: str, items: list[Item], *, threads: int | None, report: BatchReport,
               **options: Any) -> Iterator[dict]:
    t0 = time.perf_counter()
    worker = Worker(model, out_dir, threads=threads, **options)
    report.startup_seconds = time.perf_counter() - t0
    for item in items:
        yield worker.process(item)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError('engine="ray" needs Ray: pip install "sd-explainer[scale]"') from None
    return ray


def _run_ray(model: Any, out_dir: str, items: list[Item], *, address: str | None, workers: int | None,
             threads: int | None, cpus_per_worker: float, gpus_per_worker: float | None, report: BatchReport,
             **options: Any) -> Iterator[dict]:
    ray = _import_ray()
    from ray.util import ActorPool

    t0 = time.perf_counter()
    started_here = False
    actors: list[Any] = []
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started_here = True  # shutdown() stops a local instance, or only disconnects from a cluster
    try:
        resources = ray.cluster_resources()
        if gpus_per_worker is None:
            gpus_per_worker = 1 if resources.get("GPU", 0) >= 1 else 0
        if workers is None:
            workers = int(resources.get("GPU", 0) // gpus_per_worker) if gpus_per_worker else \
                int(resources.get("CPU", 1) // cpus_per_worker)
        workers = max(1, min(int(workers), len(items)))
        threads = threads if threads is not None else max(1, int(cpus_per_worker))
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        env.update({k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME") if k in os.environ})
        actor_cls = ray.remote(Worker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                               runtime_env={"env_vars": env})
        device = options.pop("device") or ("cuda" if gpus_per_worker else "cpu")
        actors += [actor_cls.remote(str(model), out_dir, device=device, threads=threads, **options)
                   for _ in range(workers)]
        ray.get([a.ready.remote() for a in actors])  # pipelines loaded: the start-up ends here
        report.startup_seconds = time.perf_counter() - t0
        pool = ActorPool(actors)
        queue = iter(items)
        for item in queue:  # fill the pool, then one new item per finished one: bounded in flight
            pool.submit(lambda actor, it: actor.process.remote(it), item)
            if not pool.has_free():
                break
        while pool.has_next():
            rec = pool.get_next_unordered()
            nxt = next(queue, None)
            if nxt is not None:
                pool.submit(lambda actor, it: actor.process.remote(it), nxt)
            yield rec
    finally:  # also when the run stops early: actors on a cluster that outlives this run are not left behind
        for a in actors:
            ray.kill(a)
        if started_here:
            ray.shutdown()


# ---------------------------------------------------------------------------------------- status


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

