"""Silence the library notices that sd-explainer itself triggers, for features it never uses.

Importing diffusers' Stable Diffusion pipelines makes transformers 5 announce that its image
processors fall back to Pillow without torchvision (the package never runs an image processor: the
safety checker is off), and loading a pipeline makes diffusers recommend ``accelerate`` for
low-memory loading. Each known notice is dropped by a :class:`logging.Filter` on the one logger that
emits it, matched by its message. Nothing else changes: other records from those loggers, the
libraries' verbosity and Python's warning filters are left as they are. ``import explainer`` installs
the filters (this module is imported first, before diffusers).
"""

from __future__ import annotations

import logging
import re

_ACCELERATE = r"^Cannot initialize model with low cpu memory usage because `accelerate` was not found"

#: ``(logger name, message pattern)`` of each notice that is dropped.
KNOWN_NOTICES: tuple[tuple[str, str], ...] = (
    (
        "transformers.utils.import_utils",
        r"^`\w+ImageProcessor` requires torchvision \(not installed\); falling back to `\w+ImageProcessorPil`",
    ),
    ("diffusers.pipelines.pipeline_utils", _ACCELERATE),
    ("diffusers.models.modeling_utils", _ACCELERATE),
)


class KnownNoticeFilter(logging.Filter):
    """Drop the records of one logger whose message matches ``pattern`` (``re.search``)."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.search(record.getMessage()) is None


def install() -> None:
    """Add the filters of :data:`KNOWN_NOTICES` to their loggers (once; calling again adds none)."""
    for name, pattern in KNOWN_NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, KnownNoticeFilter) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(KnownNoticeFilter(pattern))


install()
