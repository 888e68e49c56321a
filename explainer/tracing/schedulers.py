"""Scheduler short names, and each scheduler's parameterisation of the predicted clean latent x0.

Every scheduler used by Stable Diffusion predicts x0 as a *linear* function of the latent it is
stepping and the model output::

    x0 = a * sample + b * model_output

The coefficients depend on where the scheduler keeps its samples:

- ``"vp"`` (DDIM, PNDM, DDPM, DPM-Solver, UniPC, ...): ``sample = sqrt(abar) x0 + sqrt(1 - abar) eps``.
- ``"ve"`` (Euler, Euler ancestral, LMS, Heun, KDPM2, the k-diffusion family):
  ``sample = x0 + sigma eps``; the UNet sees ``sample / sqrt(sigma^2 + 1)``.

with ``sigma = sqrt((1 - abar) / abar)`` linking the two, and a third kind for the flow-matching
schedulers of diffusion transformers (SD3, FLUX):

- ``"flow"`` (``FlowMatchEulerDiscreteScheduler`` and its relatives):
  ``sample = (1 - sigma) x0 + sigma noise`` with ``sigma`` in [0, 1]; the model predicts the
  velocity ``v = noise - x0``, so ``x0 = sample - sigma v``; the model sees ``sample`` unscaled.
  Here ``sigma`` is the flow sigma, not the k-diffusion one; a VP process with the same
  signal-to-noise ratio has ``abar = (1 - sigma)^2 / ((1 - sigma)^2 + sigma^2)`` (:func:`equivalent_abar`). :func:`x0_coefficients` returns ``(a, b)``
for one step; the recorder uses them where a scheduler does not return ``pred_original_sample``,
and :mod:`explainer.tracing.guidance` uses ``b`` to re-guide a recorded step.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import numpy as np
import torch

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

Space = Literal["vp", "ve", "flow"]

#: ``prediction_type`` of flow-matching schedulers (their config has none): the model output is a velocity.
FLOW_VELOCITY = "flow_velocity"

#: Short names accepted by ``trace(..., scheduler=...)``; each means ``cls.from_config(pipe.scheduler.config)``.
SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "lms": LMSDiscreteScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "ddpm": DDPMScheduler,
    "unipc": UniPCMultistepScheduler,
}

# Where each known scheduler keeps its samples (see the module docstring).
_VE = (
    EulerDiscreteScheduler,
    EulerAncestralDiscreteScheduler,
    LMSDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
)
_VP = (
    DDIMScheduler,
    DDPMScheduler,
    PNDMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    UniPCMultistepScheduler,
    DEISMultistepScheduler,
)
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def resolve_scheduler(scheduler: str | SchedulerMixin | None, base: SchedulerMixin) -> SchedulerMixin:
    """Return the scheduler instance a trace should run with.

    Args:
        scheduler: ``None`` (the pipeline's own), a short name from :data:`SCHEDULERS`, or an instance.
        base: the pipeline's scheduler; a short name is built from its config.

    Returns:
        A scheduler. A short name always gives a fresh instance, so the pipeline's is never touched.

    Raises:
        ValueError: unknown short name. TypeError: neither a string nor a diffusers scheduler.
    """
    if scheduler is None:
        return base
    if isinstance(scheduler, str):
        cls = SCHEDULERS.get(scheduler.strip().lower())
        if cls is None:
            raise ValueError(
                f"scheduler={scheduler!r} is not a known scheduler name; use one of {sorted(SCHEDULERS)} "
                "or pass a diffusers scheduler instance."
            )
        return cls.from_config(copy.deepcopy(dict(base.config)))
    if isinstance(scheduler, SchedulerMixin) and callable(getattr(scheduler, "step", None)):
        return scheduler
    raise TypeError(
        f"scheduler must be None, a name from {sorted(SCHEDULERS)} or a diffusers scheduler instance, "
        f"not {type(scheduler).__name__}."
    )


def is_flow_scheduler(scheduler: SchedulerMixin) -> bool:
    """Whether ``scheduler`` is a flow-matching scheduler (diffusers' ``FlowMatch*`` classes)."""
    return type(scheduler).__name__.startswith("FlowMatch")


def scheduler_space(scheduler: SchedulerMixin) -> Space:
    """Return ``"ve"``, ``"vp"`` or ``"flow"``: whether the scheduler keeps ``x0 + sigma*eps``,
    ``sqrt(abar)x0 + ...`` or ``(1 - sigma) x0 + sigma noise``.

    Unknown classes are classified by their behaviour: a ``sigmas`` table with an initial noise
    sigma above 1 means the sample is not variance-preserving.
    """
    if is_flow_scheduler(scheduler):
        return "flow"
    if isinstance(scheduler, _VE):
        return "ve"
    if isinstance(scheduler, _VP):
        return "vp"
    init = float(getattr(scheduler, "init_noise_sigma", 1.0))
    return "ve" if hasattr(scheduler, "sigmas") and init > 1.0 + 1e-6 else "vp"


def prediction_type(scheduler: SchedulerMixin) -> str:
    """Return what the model predicts according to the scheduler config: epsilon, v_prediction or sample
    (:data:`FLOW_VELOCITY` for a flow-matching scheduler)."""
    if is_flow_scheduler(scheduler):
        return FLOW_VELOCITY
    kind = str(scheduler.config.get("prediction_type", "epsilon"))
    if kind == "original_sample":
        kind = "sample"
    if kind not in _PREDICTION_TYPES:
        raise ValueError(f"prediction_type {kind!r} is not supported; expected one of {_PREDICTION_TYPES}.")
    return kind


def current_sigma(scheduler: SchedulerMixin, timestep: float, space: Space, step_index: int | None) -> float:
    """Return the noise level sigma (k-diffusion convention) of the step the scheduler just took.

    Args:
        scheduler: the scheduler, *after* its ``step`` returned.
        timestep: the timestep passed to ``step``.
        space: from :func:`scheduler_space`.
        step_index: ``scheduler.step_index`` after the step, or ``None`` for schedulers without one.

    Returns:
        ``sigma = sqrt((1 - abar) / abar)`` of the step's input sample (the flow sigma for ``"flow"``).
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if step_index is not None and sigmas is not None and (space in ("ve", "flow") or _sigma_indexed_vp(scheduler)):
        return float(sigmas[step_index - 1])
    abar = float(scheduler.alphas_cumprod[int(round(float(timestep)))])
    return math.sqrt((1.0 - abar) / abar) if abar > 0 else math.inf  # zero terminal SNR: pure noise


def _sigma_indexed_vp(scheduler: SchedulerMixin) -> bool:
    # VP schedulers whose step() looks its noise level up in `sigmas[step_index]` (DPM-Solver family, UniPC, DEIS).
    return isinstance(
        scheduler,
        (DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, UniPCMultistepScheduler, DEISMultistepScheduler),
    ) and not scheduler.config.get("use_flow_sigmas", False)


def x0_coefficients(space: Space, prediction: str, sigma: float) -> tuple[float, float]:
    """Return ``(a, b)`` with ``x0 = a * sample + b * model_output`` for one step.

    Args:
        space: ``"vp"``, ``"ve"`` or ``"flow"`` (see :func:`scheduler_space`).
        prediction: ``"epsilon"``, ``"v_prediction"``, ``"sample"`` or :data:`FLOW_VELOCITY`.
        sigma: the step's noise level, ``sqrt((1 - abar) / abar)`` (the flow sigma for ``"flow"``).

    Returns:
        The two scalars, as Python floats.
    """
    if space == "flow" or prediction == FLOW_VELOCITY:  # sample = (1 - sigma) x0 + sigma noise, v = noise - x0
        return 1.0, -sigma
    if prediction == "sample":
        return 0.0, 1.0
    if math.isinf(sigma):  # zero terminal SNR: only v (or sample) prediction determines x0 there
        if prediction == "epsilon":
            return math.inf, -math.inf
        return 0.0, -1.0
    s2 = sigma * sigma
    if space == "ve":
        if prediction == "epsilon":  # sample = x0 + sigma * eps
            return 1.0, -sigma
        return 1.0 / (s2 + 1.0), -sigma / math.sqrt(s2 + 1.0)  # v-prediction, k-diffusion c_skip / c_out
    alpha = 1.0 / math.sqrt(s2 + 1.0)  # sqrt(abar)
    sigma_t = sigma * alpha  # sqrt(1 - abar)
    if prediction == "epsilon":
        return 1.0 / alpha, -sigma_t / alpha
    return alpha, -sigma_t  # v-prediction: x0 = sqrt(abar) x - sqrt(1 - abar) v


def model_input_scale(space: Space, sigma: float) -> float:
    """Return the factor that brings a step's sample to unit variance (what the UNet sees)."""
    if space in ("vp", "flow"):
        return 1.0
    return 0.0 if math.isinf(sigma) else 1.0 / math.sqrt(sigma * sigma + 1.0)


def scheduler_x0(scheduler: SchedulerMixin, output: object) -> tuple[object | None, str]:
    """Return the x0 the scheduler itself computed during ``step`` (or ``None``) and where it came from.

    ``pred_original_sample`` when the step output carries it; for DPM-Solver++ the converted model
    output it keeps in ``model_outputs[-1]`` (its data prediction); otherwise ``None``.
    """
    x0 = getattr(output, "pred_original_sample", None)
    if x0 is not None:
        return x0, "scheduler.pred_original_sample"
    if isinstance(scheduler, DPMSolverMultistepScheduler) and scheduler.config.get("algorithm_type") in (
        "dpmsolver++",
        "sde-dpmsolver++",
    ):
        outputs = getattr(scheduler, "model_outputs", None)
        if outputs and outputs[-1] is not None:
            return outputs[-1], "scheduler.convert_model_output"
    return None, "parameterisation"


def equivalent_abar(sigma: float | np.ndarray, space: str) -> np.ndarray:
    """``abar`` of the VP process with the same signal-to-noise ratio as a sample at noise level ``sigma``.

    Args:
        sigma: the k-diffusion sigma (``"vp"``/``"ve"``) or the flow sigma (``"flow"``); a float or an array.
        space: which of the two ``sigma`` is.

    Returns:
        float64 array shaped like ``sigma``: ``1 / (sigma^2 + 1)`` (0 where sigma is infinite), or
        ``(1 - sigma)^2 / ((1 - sigma)^2 + sigma^2)`` for flow.
    """
    s = np.asarray(sigma, np.float64)
    if space == "flow":
        signal = (1.0 - s) ** 2
        total = signal + s * s
        return np.divide(signal, total, out=np.zeros_like(s), where=total > 0)
    return 1.0 / (s**2 + 1.0)


def schedule_table(scheduler: SchedulerMixin, space: Space) -> dict[str, list[float]]:
    """The whole schedule of a scheduler whose timesteps are set: ``{"timesteps": [...], "sigmas": [...]}``.

    Args:
        scheduler: a scheduler after ``set_timesteps``.
        space: from :func:`scheduler_space`; ``"flow"`` reads its ``sigmas`` table (with any shift
            applied), the others the k-diffusion sigma of each timestep's ``abar``.

    Returns:
        One timestep and one sigma per step of the schedule (lists of floats).
    """
    full_t = scheduler.timesteps.detach().to("cpu", torch.float64)
    if space == "flow":
        sigmas = scheduler.sigmas.detach().to("cpu", torch.float64)[: len(full_t)]
        return {"timesteps": full_t.tolist(), "sigmas": sigmas.tolist()}
    table = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
    abar = table[full_t.round().long().clamp(0, len(table) - 1)]
    return {"timesteps": full_t.tolist(), "sigmas": ((1 - abar) / abar).sqrt().tolist()}
