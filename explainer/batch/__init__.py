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

from .index import DIRS, INDEX_FILE, PLAN_FILE, compact, index_schema, read_index, status
from .items import ROW_ALIASES, ROW_FIELDS, Item, parse_seeds, plan, read_prompts
from .runner import ENGINES, BatchReport, run
from .worker import Worker, base_record, model_name, summaries

__all__ = [
    "DIRS", "ENGINES", "INDEX_FILE", "PLAN_FILE", "ROW_ALIASES", "ROW_FIELDS", "BatchReport", "Item", "Worker",
    "base_record", "compact", "index_schema", "model_name", "parse_seeds", "plan", "read_index", "read_prompts",
    "run", "status", "summaries",
]
