"""Jupyter widgets: :func:`explore` (one trace), :func:`compare` (two traces, one slider) and the
component explorers ``explore_text_encoder``, ``explore_vae``, ``explore_noising``, ``explore_unet``,
``explore_training``, ``explore_editing`` (one part of Stable Diffusion each)."""

from .compare import compare
from .components import (
    ComponentExplorer,
    explore_editing,
    explore_noising,
    explore_text_encoder,
    explore_training,
    explore_unet,
    explore_vae,
)
from .explore import Explorer, explore

__all__ = [
    "ComponentExplorer",
    "Explorer",
    "compare",
    "explore",
    "explore_editing",
    "explore_noising",
    "explore_text_encoder",
    "explore_training",
    "explore_unet",
    "explore_vae",
]
