"""The inputs of a batch: prompts (a list, or a .txt/.csv/.parquet table with per-row overrides), seeds, and the items they make."""

from __future__ import annotations

import csv
import functools
import hashlib
import inspect
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .files import _filesystem, _parent

#: Per-row columns a prompts table may have, and their types.
ROW_FIELDS: dict[str, type] = {
    "prompt": str,
    "negative_prompt": str,
    "prompt_2": str,  # SDXL's second text encoder (other families: an error recorded for the row)
    "negative_prompt_2": str,
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
    from ..tracing import trace

    return dict(inspect.signature(trace).parameters)


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
