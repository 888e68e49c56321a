"""Exceptions raised by the tracing engine.

Each subclasses the built-in a caller would naturally catch (``ValueError``, ``TypeError``,
``IndexError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class TraceFileError(ValueError):
    """A trace file is missing, corrupt, or written in an incompatible format."""


class StepIndexError(IndexError, ValueError):
    """A step index is outside the range a trace recorded."""


class UnsupportedPipelineError(TypeError):
    """The object given as ``pipe`` is not a pipeline the tracer can instrument."""


class TraceBudgetError(ValueError):
    """The recording asked for would take more memory than the budget allows."""
