"""Corpus views: questions about many traces at once, read from a batch folder (:mod:`explainer.batch`).

Every view reads the index first (a few columns), then the traces one at a time, keeping running
sums: memory is one trace plus the result, whatever the corpus size. Per trace the work is numpy on
whole arrays (all steps or all layers at once).

Example:
    >>> c = explainer.corpus.Corpus("runs/b")                    # doctest: +SKIP
    >>> wm = explainer.corpus.word_map(c, "circle")              # doctest: +SKIP
    >>> explainer.corpus.layer_localisation(c).to_pylist()       # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import batch as _batch
from .batch import files as _files


def is_toy(model: str | None) -> bool:
    """Whether a model name from the index is the bundled toy model ("toy" or its folder)."""
    if not model:
        return False
    if model == "toy":
        return True
    from .models import toy_model_path

    try:
        return Path(model).resolve() == toy_model_path().resolve()
    except OSError:
        return False


class Corpus:
    """The finished traces of a batch folder, read lazily.

    Args:
        out_dir: a folder written by :func:`explainer.batch.run` (path or fsspec URL).
        where: keep only index rows for which this returns true (called with each row as a dict).

    Example:
        >>> c = explainer.corpus.Corpus("runs/b", where=lambda r: r["guidance_scale"] == 7.5)  # doctest: +SKIP
        >>> len(c), c.index.column_names[:3]  # doctest: +SKIP
    """

    def __init__(self, out_dir: str | os.PathLike[str], where: Callable[[dict], bool] | None = None) -> None:
        self.out_dir = str(out_dir)
        self._fs, self._root = _files._filesystem(self.out_dir)
        table = _batch.read_index(self.out_dir)
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table["status"], "ok"))
        if where is not None:
            keep = [bool(where(r)) for r in table.to_pylist()]
            table = table.filter(keep)
        self.index = table  # pyarrow.Table, schema explainer.batch.index_schema(), status "ok" only

    def __len__(self) -> int:
        return self.index.num_rows

    def __repr__(self) -> str:
        return f"Corpus({self.out_dir!r}, {len(self)} traces)"

    def filter(self, where: Callable[[dict], bool]) -> Corpus:
        """A corpus of the rows for which ``where(row)`` is true."""
        out = Corpus.__new__(Corpus)
        out.out_dir, out._fs, out._root = self.out_dir, self._fs, self._root
        out.index = self.index.filter([bool(where(r)) for r in self.index.to_pylist()])
        return out

    def rows(self) -> list[dict]:
        """The index rows as dicts."""
        return self.index.to_pylist()

    def traces(self) -> Iterator[tuple[dict, Any]]:
        """``(row, Trace)`` pairs, one trace loaded at a time."""
        from .tracing import load_trace

        for row in self.rows():
            path = f"{self._root}/{row['trace_path']}"
            if _files._is_local(self._fs):
                yield row, load_trace(path)
            else:
                import tempfile

                with tempfile.TemporaryDirectory() as folder:
                    local = Path(folder) / "trace.safetensors"
                    self._fs.get_file(path, str(local))
                    yield row, load_trace(local)

    def images(self) -> Iterator[tuple[dict, Any]]:
        """``(row, PIL image)`` pairs of the final images (PNG files; no trace is read)."""
        from PIL import Image

        for row in self.rows():
            with self._fs.open(f"{self._root}/{row['image_path']}", "rb") as f, Image.open(f) as im:
                yield row, im.convert("RGB")


def _check_corpus(corpus: Corpus | str | os.PathLike[str]) -> Corpus:
    if isinstance(corpus, Corpus):
        return corpus
    if isinstance(corpus, (str, os.PathLike)):
        return Corpus(corpus)
    raise TypeError(f"corpus must be a Corpus or a batch folder, not {type(corpus).__name__}")


def _has_word(trace: Any, word: str) -> bool:
    return any(w.text == word for w in trace.words)


# ---------------------------------------------------------------------------------------- word maps


@dataclass
class WordMap:
    """A word's mean heat map over a corpus.

    Attributes:
        word: the word.
        mean: ``[H, W]`` float32: the mean of each image's map (each in [0, 1], DAAM-style, aligned to its image).
        n: traces averaged.
        keys: their index keys.
        skipped: traces whose prompt lacks the word.
    """

    word: str
    mean: np.ndarray  # [H, W]
    n: int
    keys: list[str]
    skipped: int


def word_map(corpus: Corpus | str, word: str, *, step: int | slice | None = None, layers: Any = None) -> WordMap:
    """A word's heat map averaged over every trace whose prompt has it (each map at its image's pixels).

    Args:
        corpus: a :class:`Corpus` or a batch folder.
        word: a prompt word.
        step, layers: as for :meth:`explainer.Trace.heatmap` (default: all steps, all layers).

    Returns:
        A :class:`WordMap`.

    Raises:
        ValueError: no trace has the word, or the images differ in size.
    """
    corpus = _check_corpus(corpus)
    total, keys, skipped = None, [], 0
    for row, tr in corpus.traces():
        if not _has_word(tr, word):
            skipped += 1
            continue
        heat = tr.heatmap(word, step=step, layers=layers)  # [H, W] in [0, 1]
        if total is None:
            total = np.zeros(heat.shape, np.float64)
        elif total.shape != heat.shape:
            raise ValueError(f"trace {row['key']} is {heat.shape[1]}x{heat.shape[0]}, the others "
                             f"{total.shape[1]}x{total.shape[0]}; filter the corpus to one image size")
        total += heat
        keys.append(row["key"])
    if total is None:
        raise ValueError(f"word={word!r} is in no prompt of this corpus ({len(corpus)} traces)")
    return WordMap(word, (total / len(keys)).astype(np.float32), len(keys), keys, skipped)


# ---------------------------------------------------------------------------------------- emergence


def step_maps(trace: Any, word: str, layers: Any = None) -> np.ndarray:
    """``[S, H, W]``: the word's map at each step (each in [0, 1])."""
    return np.stack([trace.heatmap(word, step=s, layers=layers) for s in range(trace.num_steps)])


def concentration_curve(maps: np.ndarray) -> np.ndarray:
    """``1 - entropy / log(pixels)`` of each map, vectorised over the leading axis.

    The same measure as :func:`explainer.views.tokens.concentration`. Args: ``maps`` ``[..., H, W]``.

    Returns:
        ``[...]`` float32.
    """
    heat = maps.astype(np.float64).reshape(*maps.shape[:-2], -1)  # [..., pixels]
    total = heat.sum(-1, keepdims=True)
    p = np.divide(heat, total, out=np.zeros_like(heat), where=total > 0)
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    out = 1.0 - (-(p * logp).sum(-1)) / np.log(heat.shape[-1])
    return np.where(total[..., 0] > 0, out, 0.0).astype(np.float32)


def commit_step(maps: np.ndarray, threshold: float = 0.9) -> int:
    """First step from which the word's map stays correlated (Pearson >= ``threshold``) with its last step's map.

    Args:
        maps: ``[S, H, W]`` from :func:`step_maps`.
        threshold: correlation in (0, 1].

    Returns:
        The step index (``S - 1`` when only the last map qualifies).
    """
    flat = maps.reshape(len(maps), -1).astype(np.float64)  # [S, pixels]
    flat = flat - flat.mean(1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1)
    corr = flat @ flat[-1] / np.maximum(norms * norms[-1], 1e-12)  # [S]
    below = np.nonzero(corr < threshold)[0]
    return int(below[-1] + 1) if len(below) else 0


@dataclass
class Emergence:
    """When a word's map forms, across a corpus.

    Attributes:
        word: the word.
        curves: ``[N, S]`` float32 concentration of the word's map at each step, one row per trace.
        commit: ``[N]`` int: :func:`commit_step` of each trace.
        keys: the traces' index keys.
    """

    word: str
    curves: np.ndarray  # [trace, step]
    commit: np.ndarray  # [trace]
    keys: list[str]


def emergence(corpus: Corpus | str, word: str, *, layers: Any = None, threshold: float = 0.9) -> Emergence:
    """Emergence curves of a word across the prompts that have it (all traces need the same step count).

    Args:
        corpus: a :class:`Corpus` or a batch folder.
        word: a prompt word.
        layers: as for :meth:`explainer.Trace.heatmap`.
        threshold: for :func:`commit_step`.

    Returns:
        An :class:`Emergence`.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold!r} must be in (0, 1]")
    corpus = _check_corpus(corpus)
    curves, commits, keys = [], [], []
    for row, tr in corpus.traces():
        if not _has_word(tr, word):
            continue
        maps = step_maps(tr, word, layers)  # [S, H, W]
        if curves and len(maps) != len(curves[0]):
            raise ValueError(f"trace {row['key']} has {len(maps)} steps, the others {len(curves[0])}; "
                             "filter the corpus to one step count")
        curves.append(concentration_curve(maps))
        commits.append(commit_step(maps, threshold))
        keys.append(row["key"])
    if not keys:
        raise ValueError(f"word={word!r} is in no prompt of this corpus ({len(corpus)} traces)")
    return Emergence(word, np.stack(curves), np.asarray(commits, np.int64), keys)


# ---------------------------------------------------------------------------------------- localisation


def layer_localisation(corpus: Corpus | str, words: Sequence[str] | None = None, *, dilate: int = 2) -> Any:
    """Per attention layer: how concentrated each word's map is and, on the toy model, whether it lands.

    For each trace, layer and word the map over all steps is taken (one layer at a time). On toy-model
    traces the toy's checker finds each object word's object in the final image
    (:func:`explainer.toy.evaluate.object_word_regions`) and ``peak_hit`` says whether the map's peak
    falls inside it; elsewhere ``peak_hit`` is null.

    Args:
        corpus: a :class:`Corpus` or a batch folder.
        words: the words to score (default: every word of each prompt; on the toy, its object words).
        dilate: pixels the toy's object regions are grown by.

    Returns:
        A ``pyarrow.Table``: ``layer`` (index), ``name``, ``resolution`` ("HxW"), ``n`` (word maps),
        ``concentration`` (mean), ``peak_hit`` (rate, null without a checker), ``n_checked``.
    """
    import pyarrow as pa

    corpus = _check_corpus(corpus)
    stats: dict[int, dict[str, Any]] = {}
    for row, tr in corpus.traces():
        regions: dict[str, np.ndarray] = {}
        if is_toy(row["model"]):
            from .toy.evaluate import object_word_regions

            try:
                regions = object_word_regions(tr, tr.prompt, dilate)
            except ValueError:  # a prompt outside the toy's grammar
                regions = {}
        chosen = [w.text for w in tr.words if (words is None and (not regions or w.text in regions))
                  or (words is not None and w.text in words)]
        for i, la in enumerate(tr.attention_layers):
            s = stats.setdefault(i, {"name": la.name, "resolution": f"{la.height}x{la.width}", "n": 0,
                                     "conc": 0.0, "hits": 0, "checked": 0})
            for word in chosen:
                heat = tr.heatmap(word, layers=[i])  # [H, W]
                s["n"] += 1
                s["conc"] += float(concentration_curve(heat))
                if word in regions:
                    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
                    s["hits"] += bool(regions[word][y, x])
                    s["checked"] += 1
    rows = [{"layer": i, "name": s["name"], "resolution": s["resolution"], "n": s["n"],
             "concentration": s["conc"] / s["n"] if s["n"] else None,
             "peak_hit": s["hits"] / s["checked"] if s["checked"] else None, "n_checked": s["checked"]}
            for i, s in sorted(stats.items())]
    schema = pa.schema([("layer", pa.int64()), ("name", pa.string()), ("resolution", pa.string()), ("n", pa.int64()),
                        ("concentration", pa.float64()), ("peak_hit", pa.float64()), ("n_checked", pa.int64())])
    return pa.Table.from_pylist(rows, schema=schema)


# ---------------------------------------------------------------------------------------- guidance


def toy_checker(image: Any, prompt: str) -> bool | None:
    """The toy's checker: every object the caption names has the right colour, position and shape.

    Returns:
        The verdict, or ``None`` for a prompt outside the toy world's grammar (not scored).
    """
    from .toy.checker import caption_scores
    from .toy.world import parse_caption

    try:
        parse_caption(prompt)
    except ValueError:
        return None
    return bool(caption_scores(np.asarray(image), prompt)["all"])


def fidelity_by_guidance(corpus: Corpus | str, checker: Callable[[Any, str], bool] | None = None) -> Any:
    """Fidelity (the share of images the checker passes) at each guidance scale of a corpus.

    Args:
        corpus: a :class:`Corpus` or a batch folder.
        checker: ``checker(PIL image, prompt) -> bool`` (``None``: not scored); default :func:`toy_checker`,
            which needs a corpus of the toy model.

    Returns:
        A ``pyarrow.Table``: ``guidance_scale``, ``n`` (images scored), ``fidelity`` (share passed),
        ``unscored`` (images the checker could not score), sorted by guidance.

    Raises:
        ValueError: no checker given and the corpus is not all toy-model traces.
    """
    import pyarrow as pa

    corpus = _check_corpus(corpus)
    if checker is None:
        models = set(corpus.index["model"].to_pylist())
        if not models or not all(is_toy(m) for m in models):
            raise ValueError(f"the toy's checker reads only toy-model images (this corpus: {sorted(models)}); "
                             "pass checker=callable(image, prompt) -> bool")
        checker = toy_checker
    sums: dict[float, list[int]] = {}
    for row, image in corpus.images():
        s = sums.setdefault(float(row["guidance_scale"]), [0, 0, 0])
        verdict = checker(image, row["prompt"])
        if verdict is None:
            s[2] += 1
            continue
        s[0] += 1
        s[1] += bool(verdict)
    rows = [{"guidance_scale": g, "n": n, "fidelity": k / n if n else None, "unscored": u}
            for g, (n, k, u) in sorted(sums.items())]
    return pa.Table.from_pylist(rows, schema=pa.schema([("guidance_scale", pa.float64()), ("n", pa.int64()),
                                                        ("fidelity", pa.float64()), ("unscored", pa.int64())]))


def guidance_sweep(
    model: Any,
    prompts: Any,
    out_dir: str | os.PathLike[str],
    guidance_scales: Sequence[float],
    *,
    checker: Callable[[Any, str], bool] | None = None,
    **run_kwargs: Any,
) -> Any:
    """Trace every prompt at every guidance scale (one batch, resumable), then :func:`fidelity_by_guidance`.

    Args:
        model, prompts, out_dir: as for :func:`explainer.batch.run` (rows must not set ``guidance_scale``).
        guidance_scales: the scales to sweep.
        checker: as for :func:`fidelity_by_guidance`.
        **run_kwargs: more :func:`explainer.batch.run` keywords (``seeds``, ``engine``, ``num_inference_steps``...).

    Returns:
        The fidelity table (``guidance_scale``, ``n``, ``fidelity``) of the scales swept.
    """
    scales = [float(g) for g in guidance_scales]
    if not scales or any(not np.isfinite(g) or g < 0 for g in scales):
        raise ValueError(f"guidance_scales={list(guidance_scales)!r} must be one or more finite numbers >= 0")
    if "guidance_scale" in run_kwargs:
        raise TypeError("guidance_scale= is swept: give the scales as guidance_scales")
    rows, _ = _batch.read_prompts(prompts)
    if any(r.get("guidance_scale") is not None for r in rows):
        raise ValueError("prompt rows set guidance_scale; a sweep sets it for every row")
    base = _files._parent(str(prompts)) if isinstance(prompts, (str, os.PathLike)) else None
    swept = []
    for r in rows:
        for g in scales:
            row = {**r, "guidance_scale": g}
            for name in ("image", "mask"):
                if row.get(name) and base is not None:
                    row[name] = _files._join(base, row[name])
            swept.append(row)
    _batch.run(model, swept, out_dir, **run_kwargs)
    corpus = Corpus(out_dir, where=lambda r: float(r["guidance_scale"]) in scales)
    return fidelity_by_guidance(corpus, checker)


# ---------------------------------------------------------------------------------------- figures


def contact_sheet(corpus: Corpus | str, *, columns: int = 8, limit: int | None = 64, labels: bool = True,
                  cell: int | None = None) -> Any:
    """The final images side by side, in index order.

    Args:
        corpus: a :class:`Corpus` or a batch folder.
        columns: images per row.
        limit: at most this many images (``None``: all).
        labels: write each image's row and seed under it.
        cell: side of each image in pixels (default: the first image's size, at least 96).

    Returns:
        A PIL image.
    """
    from PIL import Image, ImageDraw

    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns={columns!r} must be a whole number >= 1")
    corpus = _check_corpus(corpus)
    count = len(corpus) if limit is None else min(limit, len(corpus))
    if count == 0:
        raise ValueError(f"the corpus at {corpus.out_dir} has no finished trace")
    sheet = draw = None
    label_h = 12 if labels else 0
    for i, (row, image) in enumerate(corpus.images()):
        if i >= count:
            break
        if sheet is None:
            size = cell or max(96, max(image.size))
            rows_n = -(-count // columns)
            sheet = Image.new("RGB", (columns * size, rows_n * (size + label_h)), "white")
            draw = ImageDraw.Draw(sheet)
        x, y = (i % columns) * size, (i // columns) * (size + label_h)
        sheet.paste(image.resize((size, size), Image.NEAREST), (x, y))
        if labels:
            draw.text((x + 2, y + size), f"r{row['row']} s{row['seed']}", fill="black")
    return sheet


def plot_word_map(wm: WordMap, *, width: float = 3.0) -> Any:
    """A matplotlib figure of a :class:`WordMap`."""
    from .views._common import new_figure

    fig, axes = new_figure(width, width)
    ax = axes[0, 0]
    ax.imshow(wm.mean, cmap="inferno", vmin=0)
    ax.set_title(f"{wm.word!r}: mean of {wm.n} maps", fontsize=8)
    ax.axis("off")
    return fig


def plot_emergence(em: Emergence, *, width: float = 4.0, height: float = 2.2) -> Any:
    """Every trace's concentration curve (thin), their mean (thick) and the median commit step (line)."""
    from .views._common import new_figure

    fig, axes = new_figure(width, height)
    ax = axes[0, 0]
    steps = np.arange(em.curves.shape[1])
    ax.plot(steps, em.curves.T, color="#88a", lw=0.5, alpha=0.5)
    ax.plot(steps, em.curves.mean(0), color="#124", lw=2, label=f"{em.word!r}, mean of {len(em.keys)}")
    ax.axvline(float(np.median(em.commit)), color="#c33", lw=1, label="median commit step")
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("concentration", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    return fig
