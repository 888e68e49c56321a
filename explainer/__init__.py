"""sd-explainer: make Stable Diffusion visible. Trace every denoising step of a real diffusers pipeline."""

from . import _quiet  # noqa: F401 - first, before diffusers loads: drops library notices for unused features
from .export import export
from .models import load_pipeline, toy_model_path
from .tracing import (
    SCHEDULERS,
    EditResult,
    LatentRGB,
    StepIndexError,
    Trace,
    TraceBudgetError,
    TraceFileError,
    UnsupportedPipelineError,
    edit,
    estimate_trace_bytes,
    fit_latent_rgb_factors,
    fork,
    load_preview_decoder,
    load_trace,
    outpaint,
    trace,
)
from .widgets import compare, explore
from .widgets import explore_editing, explore_noising, explore_text_encoder, explore_training, explore_unet, explore_vae
from . import batch, corpus, toy  # noqa: E402 - explainer.batch.run(...), explainer.corpus views, explainer.toy.vocabulary()

__version__ = "0.1.0"

__all__ = [
    "SCHEDULERS",
    "EditResult",
    "LatentRGB",
    "StepIndexError",
    "Trace",
    "TraceBudgetError",
    "TraceFileError",
    "UnsupportedPipelineError",
    "batch",
    "compare",
    "corpus",
    "edit",
    "estimate_trace_bytes",
    "explore",
    "explore_editing",
    "explore_noising",
    "explore_text_encoder",
    "explore_training",
    "explore_unet",
    "explore_vae",
    "export",
    "fit_latent_rgb_factors",
    "fork",
    "load_pipeline",
    "load_preview_decoder",
    "load_trace",
    "outpaint",
    "toy",
    "toy_model_path",
    "trace",
]
