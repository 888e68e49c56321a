"""Planning a trace before it runs: what will be recorded, how big it is, and the budget check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers.models.attention_processor import Attention
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .attention import AttentionLayer, level_size
from .errors import TraceBudgetError
from .families import Family, TokenSegment
from .schedulers import model_input_scale, schedule_table
from .validation import RecordSpec


@dataclass
class Plan:
    """Sizes of one run, known before it starts (all read from the pipeline's configs)."""

    num_steps: int  # loop iterations = len(scheduler.timesteps)
    latent_shape: tuple[int, int, int]  # (C, h, w)
    layers: list[AttentionLayer]
    tokens: dict[str, int]  # recorded tokens per branch
    cfg: bool
    spec: RecordSpec
    groups: dict[str, list[AttentionLayer]] = field(default_factory=dict)
    initial_scale: float = 1.0  # input scale of the initial latent
    modules: dict[str, Attention] = field(default_factory=dict, repr=False)  # attention modules by name
    mode: str = "txt2img"  # "txt2img" | "img2img" | "inpaint"
    inpaint_mode: str | None = None  # "unet9" | "blend4" for inpainting
    start_index: int = 0  # index in the full scheduler.timesteps of the first step run (strength < 1)
    image_size: tuple[int, int] = (0, 0)  # (H, W) in pixels
    schedule: dict[str, list[float]] = field(default_factory=dict)  # the full schedule: timesteps, sigmas
    family: Family | None = field(default=None, repr=False)
    schedule_kind: str = "vp"  # "vp" | "ve" | "flow"
    all_layers: int = 0  # attention sites in the model, before record-time selection
    keys: dict[str, list[int]] = field(default_factory=dict)  # per branch: the attention key positions recorded
    schedule_info: dict[str, Any] = field(default_factory=dict)  # what shaped the schedule (flow: shift, mu)
    timestep_arguments: dict[str, Any] = field(default_factory=dict)  # extra set_timesteps arguments (FLUX: mu)

    @property
    def attention_branches(self) -> list[str]:
        """Branches whose attention is recorded (a branch without text, e.g. SDXL's zero negative, has none)."""
        return [b for b in (("uncond", "cond") if self.cfg else ("cond",)) if self.tokens.get(b, 0) > 0]

    def estimate_bytes(self) -> int:
        """Bytes the finished trace will hold (arrays only; the image adds ``H * W * 3``)."""
        c, h, w = self.latent_shape
        item = 2 if self.spec.dtype == "float16" else 4
        s = self.num_steps
        tensors = (s + 1) * c * h * w * item + s * c * h * w * item * (2 + int(self.cfg)) + 6 * s * 8 + 8
        if self.mode != "txt2img":  # input image, image and start latents; mask at two resolutions
            big_h, big_w = self.image_size
            tensors += big_h * big_w * 3 + 2 * c * h * w * item
            if self.mode == "inpaint":
                tensors += (big_h * big_w + h * w) * 4
            if self.inpaint_mode == "blend4":
                tensors += 2 * s * c * h * w * item
        attn = 0
        mode = self.spec.attention
        for branch in self.attention_branches:
            t = self.tokens[branch]
            if mode == "per_step":
                attn += s * t * h * w * 2
            elif mode in ("per_layer", "per_head"):
                for la in self.layers:
                    attn += s * t * la.height * la.width * 2 * (la.heads if mode == "per_head" else 1)
        return int(tensors + attn)

    def check_budget(self) -> int:
        """Return the estimate; raise :class:`TraceBudgetError` if it is over ``spec.max_bytes``."""
        estimate = self.estimate_bytes()
        spec = self.spec
        if estimate > spec.max_bytes:
            raise TraceBudgetError(
                f"record={spec.attention!r} would store about {estimate / 1e6:.1f} MB for this run ({self.num_steps} "
                f"steps, {len(self.layers)} cross-attention layers, {sum(self.tokens.values())} tokens), over the "
                f"budget of {spec.max_bytes / 1e6:.1f} MB; record less (record='per_layer', 'per_step' or 'none', "
                "or fewer layers with record={'layers': ...}) or raise record={'max_bytes': ...}."
            )
        return estimate


def start_step(num_inference_steps: int, strength: float) -> int:
    """Steps of the full schedule that image-to-image and inpainting skip (diffusers' ``get_timesteps``).

    The pipelines run the last ``min(int(num_inference_steps * strength), num_inference_steps)`` steps.
    """
    return max(num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps), 0)


def make_plan(
    family: Family,
    pipe: Any,
    scheduler: SchedulerMixin,
    steps: int,
    height: int,
    width: int,
    spec: RecordSpec,
    cfg: bool,
    segments: dict[str, list[TokenSegment]],
    mode: str = "txt2img",
    strength: float = 1.0,
) -> Plan:
    """Plan one run of ``pipe`` (the pipeline that runs ``mode``) from configs only.

    Args:
        family: the pipeline's family adapter.
        segments: per branch, the token segments its text became (``[]``: the branch sees no text).

    Returns:
        The plan, layers already filtered by ``spec.layers``.
    """
    probe = copy_scheduler(scheduler)
    timestep_args = family.timestep_arguments(pipe, probe, height, width, num_inference_steps=steps)
    probe.set_timesteps(steps, device="cpu", **timestep_args)
    skipped = family.start_step(steps, strength)
    start_index = 0 if mode == "txt2img" else skipped * int(getattr(probe, "order", 1))
    num_steps = len(probe.timesteps) - start_index
    space = family.schedule_kind(probe)
    initial_scale = model_input_scale(space, float(probe.sigmas[start_index])) if space == "ve" else 1.0
    c, h, w = family.latent_shape(pipe, height, width)
    layers: list[AttentionLayer] = []
    groups: dict[str, list[AttentionLayer]] = {}
    modules: dict[str, Attention] = {}
    sites = family.attention_sites(pipe)
    for name, module, level in sites:
        lh, lw = level_size(h, w, level)
        if not spec.selects(name, lh, lw):
            continue
        modules[name] = module
        group = f"{lh}x{lw}" if spec.attention != "per_head" else f"{lh}x{lw}x{module.heads}h"
        layer = AttentionLayer(len(layers), name, lh, lw, module.heads, group, len(groups.get(group, [])))
        groups.setdefault(group, []).append(layer)
        layers.append(layer)
    if spec.layers is not None and not layers and spec.attention != "none":
        sizes = sorted({f"{lh}x{lw}" for lh, lw in (level_size(h, w, lv) for _, _, lv in sites)})
        raise ValueError(
            f"record['layers']={list(spec.layers)!r} selects none of the {len(sites)} attention layers; use module "
            f"paths or prefixes such as {'.'.join(sites[0][0].split('.')[:2])!r}, or resolutions among {sizes}."
        )
    keys = {b: family.recorded_keys(pipe, segs, spec.tokens) for b, segs in segments.items()}
    counts = {b: len(k) for b, k in keys.items()}
    schedule = schedule_table(probe, space)  # the whole schedule, for plots of what strength skips
    inpaint_mode = None
    if mode == "inpaint":
        inpaint_mode = "unet9" if family.denoiser(pipe).config.in_channels == 9 else "blend4"
    return Plan(num_steps, (c, h, w), layers, counts, cfg, spec, groups, initial_scale, modules, mode, inpaint_mode,
                start_index, (height, width), schedule, family, space, len(sites), keys,
                family.schedule_info(probe, timestep_args), timestep_args)  # fmt: skip


def copy_scheduler(scheduler: SchedulerMixin) -> SchedulerMixin:
    """A fresh scheduler of the same class and config (for probing its timesteps without touching the real one)."""
    return type(scheduler).from_config(scheduler.config)
