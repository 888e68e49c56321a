"""Figure functions: each takes a Trace (and options) and returns a matplotlib figure.

The explorer widget (:mod:`explainer.widgets`) composes these; they also serve static notebooks and docs.
"""

from .guidance import guidance_decomposition, guidance_sweep
from .steps import compare_steps, schedule_plot
from .tokens import concentration, emergence_curve, token_overlay
from .trajectory import latent_trajectory, project_latents

__all__ = [
    "compare_steps",
    "concentration",
    "emergence_curve",
    "guidance_decomposition",
    "guidance_sweep",
    "latent_trajectory",
    "project_latents",
    "schedule_plot",
    "token_overlay",
]
