"""The CLIP text encoder's checkpoint key layout, the same under transformers 4.x and 5.x.

transformers 4.x names a ``CLIPTextModel``'s weights ``text_model.embeddings...``; transformers 5.x
drops the ``text_model.`` prefix from ``state_dict()`` and ``save_pretrained``. Real Stable Diffusion
checkpoints use the prefixed (canonical) layout, and both versions load it, while 4.x silently
re-initialises a text encoder saved in the unprefixed layout. So everything the toy recipe writes is
in the canonical layout, and everything it reads is mapped to the layout of the live module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, TypeVar

import torch

PREFIX = "text_model."  # the canonical (transformers 4.x, real SD checkpoint) prefix
T = TypeVar("T")


def canonical(state: Mapping[str, T]) -> dict[str, T]:
    """``state`` with every key in the canonical ``text_model.`` layout.

    Args:
        state: a ``CLIPTextModel`` state dict in either layout.

    Returns:
        A new dict, keys prefixed with ``text_model.`` where they were not.
    """
    return {k if k.startswith(PREFIX) else PREFIX + k: v for k, v in state.items()}


def fit_to(state: Mapping[str, T], module: torch.nn.Module) -> dict[str, T]:
    """``state`` keyed as ``module.state_dict()`` is keyed (the installed transformers' layout).

    Args:
        state: a ``CLIPTextModel`` state dict in either layout.
        module: the live text encoder the weights are for.

    Returns:
        A new dict in the module's layout, ready for ``module.load_state_dict(..., strict=True)``.
    """
    prefixed = any(k.startswith(PREFIX) for k in module.state_dict())
    plain = {k.removeprefix(PREFIX): v for k, v in state.items()}
    return canonical(plain) if prefixed else plain


def rewrite_canonical(path: str | Path) -> None:
    """Rewrite a saved text-encoder ``model.safetensors`` in the canonical layout, in place.

    Args:
        path: the ``.safetensors`` file ``save_pretrained`` wrote.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {"format": "pt"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(canonical(tensors), str(path), metadata=meta)
