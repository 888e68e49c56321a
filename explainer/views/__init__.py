"""Figure functions: each takes a Trace (and options) and returns a matplotlib figure.

:mod:`explainer.views.components` holds the views of each part on its own (text encoder, VAE,
forward noising, UNet, training, editing), as functions of the pipeline's components and arrays.
:mod:`explainer.views.interactive` holds the plotly versions, for hovering and zooming.

The explorer widget (:mod:`explainer.widgets`) composes these; they also serve static notebooks and docs.
"""

from . import components  # noqa: F401 - explainer.views.components: one part of SD each
from ._common import difference_label, output_symbol
from .applications import blend_view, edit_overview, inpaint_progress, strength_schedule, strength_sweep
from .commitment import branches, commitment_curve, commitment_scores
from .guidance import guidance_decomposition, guidance_sweep
from .interactive import (
    emergence_figure,
    figure_html,
    guidance_sweep_figure,
    noise_levels,
    schedule_figure,
    token_similarity_figure,
    trajectory_figure,
)
from .steps import compare_steps, schedule_plot
from .tokens import concentration, emergence_curve, method_comparison, token_overlay
from .trajectory import latent_trajectory, project_latents

__all__ = [
    "blend_view",
    "branches",
    "commitment_curve",
    "commitment_scores",
    "compare_steps",
    "concentration",
    "difference_label",
    "edit_overview",
    "emergence_figure",
    "figure_html",
    "emergence_curve",
    "guidance_decomposition",
    "guidance_sweep",
    "guidance_sweep_figure",
    "inpaint_progress",
    "latent_trajectory",
    "method_comparison",
    "noise_levels",
    "output_symbol",
    "project_latents",
    "schedule_figure",
    "schedule_plot",
    "strength_schedule",
    "strength_sweep",
    "token_overlay",
    "token_similarity_figure",
    "trajectory_figure",
]
