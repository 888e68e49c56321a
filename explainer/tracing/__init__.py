"""The tracing engine: record every denoising step of a real diffusers pipeline into a plain-data Trace."""

from .attention import AttentionLayer, Word
from .errors import StepIndexError, TraceBudgetError, TraceFileError, UnsupportedPipelineError
from .previews import LatentRGB, clear_preview_cache, fit_latent_rgb_factors
from .preview_decoder import load_preview_decoder
from .schedulers import SCHEDULERS
from .trace import FORMAT_VERSION, Trace, load_trace
from .validation import ATTENTION_MODES, RecordSpec

# Last: binds the name `trace` to the function, shadowing the `trace` submodule attribute.
from .recorder import estimate_trace_bytes, trace  # noqa: E402
from .outpaint import outpaint  # noqa: E402
from .fork import fork  # noqa: E402
from .p2p import EditResult, edit  # noqa: E402

__all__ = [
    "ATTENTION_MODES",
    "FORMAT_VERSION",
    "SCHEDULERS",
    "AttentionLayer",
    "EditResult",
    "LatentRGB",
    "RecordSpec",
    "StepIndexError",
    "Trace",
    "TraceBudgetError",
    "TraceFileError",
    "UnsupportedPipelineError",
    "Word",
    "clear_preview_cache",
    "edit",
    "estimate_trace_bytes",
    "fit_latent_rgb_factors",
    "fork",
    "load_preview_decoder",
    "load_trace",
    "outpaint",
    "trace",
]
