"""Data the live page's plain-JS tokenizer and scheduler are built from, as JSON-serialisable dicts.

The page works from ``file://`` (no fetch), so these dicts are written into the page as JS objects:
``tokenizer_payload`` feeds ``new SDXLive.CLIPTokenizer(payload)`` (static/tokenizer.js) and
``scheduler_payload`` feeds ``new SDXLive.DDIMScheduler(payload.config, {alphasCumprod:
payload.alphas_cumprod})`` (static/scheduler.js).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def tokenizer_payload(tokenizer_dir: str | Path) -> dict[str, Any]:
    """The tokenizer files of a CLIP tokenizer folder, for ``SDXLive.CLIPTokenizer``.

    Args:
        tokenizer_dir: a folder holding ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
            optionally ``special_tokens_map.json`` (as ``assets/toy/tokenizer``).

    Returns:
        ``{"vocab": {token: id}, "merges": merges.txt's text, "config": tokenizer_config.json updated
        with special_tokens_map.json}``.

    Raises:
        FileNotFoundError: when a required file is missing (named in the message).
        ValueError: when the config has no integer ``model_max_length``.
    """
    folder = Path(tokenizer_dir)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"tokenizer_dir={str(folder)!r} has no {name}; a CLIP tokenizer folder needs "
                                    "vocab.json, merges.txt and tokenizer_config.json")  # fmt: skip
    config = _read_json(folder / "tokenizer_config.json")
    specials = folder / "special_tokens_map.json"
    if specials.is_file():
        config.update(_read_json(specials))
    if not isinstance(config.get("model_max_length"), int):
        raise ValueError(f"tokenizer_config.json in {str(folder)!r} has model_max_length="
                         f"{config.get('model_max_length')!r}; an integer is needed")  # fmt: skip
    return {
        "vocab": _read_json(folder / "vocab.json"),
        "merges": (folder / "merges.txt").read_text(encoding="utf-8"),
        "config": config,
    }


def scheduler_payload(scheduler_dir: str | Path) -> dict[str, Any]:
    """A DDIM scheduler's config and diffusers' own ``alphas_cumprod``, for ``SDXLive.DDIMScheduler``.

    The JS scheduler computes ᾱ from the config itself; passing diffusers' values as well makes its
    steps use exactly the same ᾱ (PyTorch's float32 sqrt is not correctly rounded, so recomputing can
    differ in the last bit).

    Args:
        scheduler_dir: a folder holding ``scheduler_config.json`` (as ``assets/toy/scheduler``).

    Returns:
        ``{"config": scheduler_config.json, "alphas_cumprod": [num_train_timesteps] floats}``.

    Raises:
        FileNotFoundError: when ``scheduler_config.json`` is missing.
        ValueError: when the config is not a ``DDIMScheduler`` one.
    """
    from diffusers import DDIMScheduler

    path = Path(scheduler_dir) / "scheduler_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"scheduler_dir={str(scheduler_dir)!r} has no scheduler_config.json")
    config = _read_json(path)
    if config.get("_class_name", "DDIMScheduler") != "DDIMScheduler":
        raise ValueError(f"scheduler_dir={str(scheduler_dir)!r} holds a {config.get('_class_name')!r} config; "
                         "the live page's scheduler is DDIMScheduler")  # fmt: skip
    sched = DDIMScheduler.from_config(config)
    return {"config": config, "alphas_cumprod": [float(a) for a in sched.alphas_cumprod.tolist()]}
