"""What the toy model understands: the words of the shapes world it was trained on.

Every word comes from :mod:`explainer.toy.world` (the grammar that drew the training captions), so the
list cannot drift from what the toy saw. When the toy is the model, :func:`explainer.trace` records the
prompt's unknown words in ``trace.metadata["unknown_words"]`` and warns once (:class:`ToyVocabularyWarning`);
a word the toy never saw is still encoded and drawn, which is itself a lesson.

The toy is recognised by its folder: a pipeline loaded from a folder that holds ``training.json``, the
record the toy trainer writes next to every exported model (``assets/toy`` and any model exported by
:mod:`explainer.toy.train`). A pipeline saved elsewhere with ``save_pretrained`` has no such record and
is not checked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from . import world

#: How the prompt is split into words: runs of letters, digits and apostrophes, lowercased (as CLIP does).
WORD_RE = re.compile(r"[a-z0-9']+")
#: The record the toy trainer writes beside an exported toy model.
MARKER_FILE = "training.json"


class ToyVocabularyWarning(UserWarning):
    """The prompt has words the toy model never saw in training."""


def words_of(text: str) -> list[str]:
    """The words of ``text``, lowercased, in order (repeats kept).

    Args:
        text: a prompt.

    Returns:
        Its words, e.g. ``["a", "red", "circle"]``.
    """
    return WORD_RE.findall(str(text).lower())


def vocabulary() -> dict[str, list[str]]:
    """Every word the toy model was trained on, by kind, derived from the shapes world's grammar.

    Returns:
        ``{"colours": [...], "shapes": [...], "places": [...], "relations": [...], "fillers": [...],
        "words": [...]}``: ``places`` are the single-object phrases (``"on the left"``...), ``relations``
        the words joining two objects (``"and"``, ``"above"``), ``fillers`` the remaining words of the
        captions (``"a"``, ``"on"``, ``"the"``...), and ``words`` every known word, sorted.

    Example:
        >>> from explainer.toy import vocabulary
        >>> " ".join(vocabulary()["shapes"])
        'circle square triangle'
    """
    colours, shapes = list(world.COLOURS), list(world.SHAPES)
    relations = [r for r in world.FORMS if r != "single"]
    named = set(colours) | set(shapes) | set(relations)
    place_words = {w for p in world.PLACES for w in words_of(p)}
    every = {w for caption in world.all_captions() for w in words_of(caption)}
    fillers = sorted(every - named - place_words)
    return {
        "colours": colours,
        "shapes": shapes,
        "places": list(world.PLACES),
        "relations": relations,
        "fillers": fillers,
        "words": sorted(every),
    }


def unknown_words(text: str) -> list[str]:
    """The words of ``text`` the toy never saw, in order of first appearance.

    Args:
        text: a prompt.

    Returns:
        e.g. ``["purple", "star"]`` for ``"a purple star on the left"``; ``[]`` for a caption of the world.
    """
    known = set(vocabulary()["words"])
    out: list[str] = []
    for w in words_of(text):
        if w not in known and w not in out:
            out.append(w)
    return out


def is_toy(pipe: Any) -> bool:
    """Whether ``pipe`` is a toy model of the shapes world: loaded from a folder holding the toy
    trainer's ``training.json`` (with its ``train_config``).

    Args:
        pipe: a diffusers pipeline (anything else is not the toy).

    Returns:
        ``True`` for the bundled toy (``load_pipeline("toy")``) and models exported by the toy trainer.
    """
    name = getattr(pipe, "name_or_path", None)
    if not name:
        config = getattr(pipe, "config", None)
        name = config.get("_name_or_path") if hasattr(config, "get") else None
    if not isinstance(name, (str, Path)) or not str(name):
        return False
    marker = Path(name) / MARKER_FILE
    try:
        if not marker.is_file():
            return False
        return "train_config" in json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def unknown_words_message(unknown: dict[str, list[str]]) -> str:
    """The one warning naming the unknown words of the prompt and negative prompt."""
    vocab = vocabulary()
    parts = [f"{', '.join(map(repr, words))} (in the {branch.replace('_', ' ')})" for branch, words in unknown.items() if words]
    return (
        f"the toy model never saw the words {' and '.join(parts)}; it will still draw something, from "
        f"the words it knows. It knows colours {', '.join(vocab['colours'])}; shapes {', '.join(vocab['shapes'])}; "
        f"places {', '.join(repr(p) for p in vocab['places'])}; two objects joined by "
        f"{' / '.join(repr(r) for r in vocab['relations'])}. See explainer.toy.vocabulary()."
    )


def check_prompt(pipe: Any, prompt: str, negative_prompt: str | None = None) -> dict[str, list[str]] | None:
    """For the toy model, the unknown words of the prompt and negative prompt; ``None`` for other models.

    Args:
        pipe: the pipeline being traced.
        prompt: the prompt. negative_prompt: the negative prompt, if any.

    Returns:
        ``{"prompt": [...], "negative_prompt": [...]}`` (empty lists when every word is known) when
        ``pipe`` is the toy (:func:`is_toy`), else ``None``.
    """
    if not is_toy(pipe):
        return None
    return {"prompt": unknown_words(prompt or ""), "negative_prompt": unknown_words(negative_prompt or "")}
