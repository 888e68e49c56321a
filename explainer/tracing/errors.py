"""Exceptions raised by the tracing engine.

Each subclasses the built-in a caller would naturally catch (``ValueError``, ``TypeError``,
``IndexError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class TraceFileError(ValueError):
    """A trace file is corrupt, not a trace, or written in an incompatible format.

    (A path that does not exist raises ``FileNotFoundError``.)

    Example:
        >>> _ = Path("notes.safetensors").write_text("not a trace")
        >>> explainer.load_trace("notes.safetensors")
        Traceback (most recent call last):
        TraceFileError: notes.safetensors is not a readable sd-explainer trace file (...)
    """


class StepIndexError(IndexError, ValueError):
    """A step index is outside the range a trace recorded.

    Example:
        >>> tr = explainer.trace(pipe, "a red circle on the left", num_inference_steps=10)
        >>> tr.preview(10)
        Traceback (most recent call last):
        StepIndexError: step=10 is out of range; this trace has steps 0..9.
        >>> tr.preview(-1)  # negative steps count from the end, as in Python lists
    """


class UnsupportedPipelineError(TypeError):
    """The object given as ``pipe`` is not a pipeline the tracer can instrument.

    Example:
        >>> explainer.trace("toy", "a red circle")
        Traceback (most recent call last):
        UnsupportedPipelineError: pipe must be a diffusers StableDiffusionPipeline (...) or StableDiffusionXLPipeline (...), not str; ...
        >>> explainer.trace(explainer.load_pipeline("toy"), "a red circle")  # load it first
    """


class TraceBudgetError(ValueError):
    """The recording asked for would take more memory than the budget allows.

    :func:`explainer.trace` checks :func:`explainer.estimate_trace_bytes` against ``record["max_bytes"]``
    (1 GiB by default) before the run starts. See ``notebooks/09_real_models.ipynb`` for sizes.

    Example:
        >>> explainer.trace(pipe, "a red circle", num_inference_steps=10, record={"max_bytes": 100_000})
        Traceback (most recent call last):
        TraceBudgetError: record='per_layer' would store about 0.2 MB for this run (...)
        >>> explainer.trace(pipe, "a red circle", num_inference_steps=10, record="none")  # fits
    """
