"""sd-explainer: make Stable Diffusion visible. Trace every denoising step of a real diffusers pipeline."""

from . import _quiet  # noqa: F401 - first, before diffusers loads: drops library notices for unused features
from .export import export
from .models import load_pipeline, toy_model_path
from .tracing import (
    SCHEDULERS,
    LatentRGB,
    StepIndexError,
    Trace,
    TraceBudgetError,
    TraceFileError,
    UnsupportedPipelineError,
    estimate_trace_bytes,
    fit_latent_rgb_factors,
    load_preview_decoder,
    load_trace,
    outpaint,
    trace,
)
from .widgets import compare, explore
from . import batch, corpus  # noqa: E402 - explainer.batch.run(...), explainer.corpus views

__version__ = "0.1.0"

__all__ = [
    "SCHEDULERS",
    "LatentRGB",
    "StepIndexError",
    "Trace",
    "TraceBudgetError",
    "TraceFileError",
    "UnsupportedPipelineError",
    "batch",
    "compare",
    "corpus",
    "estimate_trace_bytes",
    "explore",
    "export",
    "fit_latent_rgb_factors",
    "load_pipeline",
    "load_preview_decoder",
    "load_trace",
    "outpaint",
    "toy_model_path",
    "trace",
]
