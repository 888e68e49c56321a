"""Figure functions: each takes a Trace (and options) and returns a matplotlib figure.

The explorer widget (:mod:`explainer.widgets`) composes these; they also serve static notebooks and docs.
"""

from .applications import blend_view, edit_overview, inpaint_progress, strength_schedule, strength_sweep
from .commitment import branches, commitment_curve, commitment_scores
from .guidance import guidance_decomposition, guidance_sweep
from .steps import compare_steps, schedule_plot
from .tokens import concentration, emergence_curve, token_overlay
from .trajectory import latent_trajectory, project_latents

__all__ = [
    "blend_view",
    "branches",
    "commitment_curve",
    "commitment_scores",
    "compare_steps",
    "concentration",
    "edit_overview",
    "emergence_curve",
    "guidance_decomposition",
    "guidance_sweep",
    "inpaint_progress",
    "latent_trajectory",
    "project_latents",
    "schedule_plot",
    "strength_schedule",
    "strength_sweep",
    "token_overlay",
]
