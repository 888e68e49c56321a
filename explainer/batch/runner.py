"""``run``: plan the items, skip those already done, schedule the rest on an engine, keep the index current."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .engines import _import_ray, _run_local, _run_ray
from .files import _filesystem
from .index import DIRS, PLAN_FILE, _records_to_table, _write_parquet, compact, read_index
from .items import Item, plan
from .worker import base_record, model_name

ENGINES = ("local", "ray")


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


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(engine: str, *, total: int, initial: int, enabled: bool) -> Any:
    """The batch's progress bar: tqdm locally; on Ray, Ray's distributed tqdm, which also draws the actors' bars."""
    if not enabled:
        return _NoBar()
    desc = f"batch ({engine})"
    if engine == "ray":
        from ray.experimental import tqdm_ray

        bar = tqdm_ray.tqdm(total=total, desc=desc, unit="trace")
        if initial:
            bar.update(initial)
        return bar
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="trace")


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
        progress: show progress: a tqdm bar locally; with ``engine="ray"``, Ray's own distributed bars
            (``ray.experimental.tqdm_ray``): the batch's, and one per actor, all drawn by this process.
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
    bar = _progress_bar(engine, total=len(items), initial=report.skipped, enabled=progress)
    since_flush = 0
    try:
        options = dict(device=device, allow_empty_prompt=allow_empty_prompt)
        if engine == "local":
            results = _run_local(model, out_dir, pending, threads=threads, report=report, **options)
        else:
            results = _run_ray(model, out_dir, pending, address=address, workers=workers, threads=threads,
                               cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, report=report,
                               progress=progress, **options)
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
