"""Classifier-free guidance from recorded model outputs: the guided output and "what if" re-guidance.

The pipeline guides with ``out = uncond + g * (cond - uncond)`` and every supported scheduler turns
``out`` into x0 linearly, ``x0 = a * x_t + b * out`` (see :mod:`explainer.tracing.schedulers`). So
for another scale ``g'``::

    x0(g') = x0(g) + b * (g' - g) * (cond - uncond)

which is exactly the recorded x0 at ``g' = g`` and needs no model run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .attention import resolve_steps
from .validation import check_guidance

if TYPE_CHECKING:
    from .trace import Trace


def guided_output(eps_uncond: np.ndarray, eps_cond: np.ndarray, guidance_scale: float) -> np.ndarray:
    """Return ``uncond + g * (cond - uncond)`` in float32 (shapes ``[..., C, h, w]``)."""
    u = np.asarray(eps_uncond, np.float32)
    return u + np.float32(guidance_scale) * (np.asarray(eps_cond, np.float32) - u)


def x0_from_output(trace: Trace, step: int, model_output: np.ndarray) -> np.ndarray:
    """Recompute a step's x0 from a model output with the scheduler's recorded coefficients."""
    a, b = float(trace.x0_coef_sample[step]), float(trace.x0_coef_model[step])
    return np.float32(a) * trace.latents[step].astype(np.float32) + np.float32(b) * np.asarray(model_output, np.float32)


def what_if_x0(trace: Trace, step: int, guidance_scale: float) -> np.ndarray:
    """Predicted clean latent of ``step`` had the step been guided with ``guidance_scale``.

    Args:
        trace: a trace recorded with classifier-free guidance (``guidance_scale > 1``).
        step: step index (negative counts from the end).
        guidance_scale: the scale to try (finite, >= 0).

    Returns:
        ``[C, h, w]`` float32; equal to ``trace.x0[step]`` at the recorded scale.
    """
    scale = check_guidance(guidance_scale)
    if not trace.has_uncond:
        why = trace.metadata.get("unconditional") or "no unconditional branch"
        # FLUX guides with true_cfg_scale and a negative prompt; guidance_scale is an embedding input there
        again = ("true_cfg_scale > 1 and a negative_prompt" if getattr(trace, "family", None) == "flux"
                 else "guidance_scale > 1")  # fmt: skip
        raise ValueError(
            "what_if needs both branches, but this trace was recorded without classifier-free guidance "
            f"(guidance_scale={trace.guidance_scale}; {why}); trace again with {again} "
            "(a guidance-distilled model has no unconditional branch to re-guide)."
        )
    (step,) = resolve_steps(step, trace.num_steps)
    recorded = trace.x0[step].astype(np.float32)
    delta = np.float32(scale - trace.cfg_scale)  # FLUX: relative to true_cfg_scale
    if delta == 0:
        return recorded
    diff = trace.eps_cond[step].astype(np.float32) - trace.eps_uncond[step].astype(np.float32)
    return recorded + np.float32(trace.x0_coef_model[step]) * delta * diff
