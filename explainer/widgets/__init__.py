"""Jupyter widgets: :func:`explore` (one trace) and :func:`compare` (two traces, one slider)."""

from .compare import compare
from .explore import Explorer, explore

__all__ = ["Explorer", "compare", "explore"]
