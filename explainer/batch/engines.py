"""Engines schedule the worker: ``local`` runs items in this process, ``ray`` on a pool of Ray actors."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .items import Item
from .worker import Worker

if TYPE_CHECKING:
    from .runner import BatchReport

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
             progress: bool = False, **options: Any) -> Iterator[dict]:
    ray = _import_ray()
    from ray.util import ActorPool

    t0 = time.perf_counter()
    started_here = False
    actors: list[Any] = []
    if not ray.is_initialized():
        # with progress, actors' output reaches this process: Ray's tqdm reports each actor's bar that way
        ray.init(address=address, include_dashboard=False, log_to_driver=progress)
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
        actors += [actor_cls.remote(str(model), out_dir, device=device, threads=threads, ray_progress=progress, **options)
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
