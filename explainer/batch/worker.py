"""The one code path of every engine: trace one item, write its trace, PNG and record."""

from __future__ import annotations

import inspect
import io
import json
import os
import socket
import time
from typing import Any

import numpy as np

from .files import _filesystem, _join, _read_image, _save_trace, _write_bytes
from .index import DIRS
from .items import ROW_FIELDS, Item, _trace_parameters

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
        ray_progress: keep a progress bar of this worker's items with Ray's distributed tqdm
            (``ray.experimental.tqdm_ray``): inside a Ray actor it is reported to the driver, which
            draws every actor's bar below the batch's own.
    """

    def __init__(self, model: Any, out_dir: str, *, device: str | None = None, threads: int | None = None,
                 allow_empty_prompt: bool = False, ray_progress: bool = False) -> None:
        import torch

        from ..models import load_pipeline

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
        self.bar = None
        if ray_progress:
            from ray.experimental import tqdm_ray

            self.bar = tqdm_ray.tqdm(desc=f"worker {self.name}", unit="trace")

    def ready(self) -> str:
        """This worker's ``host:pid`` (Ray engine: waits for the actor to load its pipeline)."""
        return self.name

    def process(self, item: Item) -> dict[str, Any]:
        """Trace one item, write its trace, PNG and record; an error is recorded, not raised.

        Returns:
            The item's record (a row of the index). ``KeyboardInterrupt`` propagates, with no record.
        """
        from ..tracing import trace

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
        if self.bar is not None:
            self.bar.update(1)
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
