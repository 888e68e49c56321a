"""Prompt-to-prompt editing (Hertz et al., 2022) through diffusers attention processors.

The source and the target prompt run from the same starting noise, the source first. While the
source runs, a processor on every attention layer calls the layer's *own* processor for its output
(so the source image is bit-identical to an untraced run) and keeps, on the side, the conditional
half's attention probabilities of the steps the edit will need. While the target runs, its
processors compute attention the classic way (diffusers' ``AttnProcessor``) and, in those steps,
replace the probabilities with the source's:

- cross-attention (``attn2``), the first ``cross_steps`` of the run: ``replace`` (word swap) takes
  the source's maps for every key position; ``refine`` (added words) those of the target tokens
  aligned with a source token, the new tokens keep their own; ``reweight`` keeps the source's maps
  and scales the named words' columns.
  With ``keep_context`` (the default) the target tokens that are the source's (all but the swapped or
  added words) also take the source's text states in those steps: CLIP's text encoder is causal, so
  without it every token after a changed word carries other values even where the maps are the source's.
- self-attention (``attn1``), the first ``self_steps``: the source's maps, on every layer (the full
  resolution included) or, with ``self_max_positions``, on layers with at most that many positions (the
  paper's SD code: a quarter of a 64x64 latent's, 32x32 and below).

Both runs are ordinary :func:`explainer.trace` calls, so both come back as traces.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.attention_processor import Attention

from .attention import PromptTokens
from .errors import UnsupportedPipelineError
from .families import family_for
from .plan import copy_scheduler
from .schedulers import resolve_scheduler
from .trace import Trace
from .validation import check_prompt

MODES = ("replace", "refine", "reweight")


@dataclass
class EditResult:
    """A prompt-to-prompt edit: both runs and how the target's tokens map to the source's.

    Attributes:
        source: the trace of the source prompt (identical to a plain :func:`explainer.trace`).
        target: the edited trace of the target prompt; ``metadata["edit"]`` holds the settings.
        alignment: per target token (BOS .. EOS), the index of the source token whose cross-attention
            it took, or ``None`` (a new word in ``refine`` mode).
        mode: ``"replace"``, ``"refine"`` or ``"reweight"``.
        settings: the edit's settings (also in ``target.metadata["edit"]``).

    Returned by :func:`explainer.edit`; shown in ``notebooks/11_change_one_word.ipynb``.
    """

    source: Trace
    target: Trace
    alignment: list[int | None]
    mode: str
    settings: dict[str, Any] = field(default_factory=dict)


def align_tokens(source: PromptTokens, target: PromptTokens, mode: str) -> list[int | None]:
    """Map each target token (BOS .. EOS) to a source token index, or ``None`` for an added one.

    Args:
        source, target: the two prompts' tokens.
        mode: ``"replace"`` / ``"reweight"`` (same words, a swapped word needs as many tokens as the one it
            replaces) or ``"refine"`` (the target adds words to the source, keeping its words in order).

    Returns:
        ``alignment[j]`` = source token index for target token ``j``.

    Raises:
        ValueError: what cannot be aligned, naming the words.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed; use one of {list(MODES)}.")
    src_words, tgt_words = [w.text for w in source.words], [w.text for w in target.words]
    if mode in ("replace", "reweight"):
        if len(src_words) != len(tgt_words):
            raise ValueError(
                f"mode={mode!r} swaps words one for one, but the source has {len(src_words)} words {src_words} and the "
                f"target {len(tgt_words)} {tgt_words}; use mode='refine' to add words."
            )
        bad = [(a.text, len(a.token_indices), b.text, len(b.token_indices)) for a, b in zip(source.words, target.words)
               if len(a.token_indices) != len(b.token_indices)]  # fmt: skip
        if bad:
            a, na, b, nb = bad[0]
            raise ValueError(
                f"cannot align {a!r} ({na} token{'s' * (na != 1)}) with {b!r} ({nb} token{'s' * (nb != 1)}): a word "
                "swap needs the same number of tokens; pick a word the tokenizer splits alike, or use mode='refine'."
            )
        return list(range(len(target.ids)))
    matcher = difflib.SequenceMatcher(a=source.ids, b=target.ids, autojunk=False)
    alignment: list[int | None] = [None] * len(target.ids)
    matched = set()
    for block in matcher.get_matching_blocks():
        for offset in range(block.size):
            alignment[block.b + offset] = block.a + offset
            matched.add(block.a + offset)
    missing = [w.text for w in source.words if not all(i in matched for i in w.token_indices)]
    if missing:
        raise ValueError(
            f"mode='refine' adds words to the source, but the target {' '.join(tgt_words)!r} lacks the source's "
            f"{missing}; use mode='replace' to swap words."
        )
    return alignment


def key_mapper(alignment: list[int | None], source_len: int, keys: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Over all ``keys`` attention keys: source key per target key, and 1 where it is taken from the source.

    Positions after the target's EOS (padding) map to the source's positions after its EOS.
    """
    index = torch.zeros(keys, dtype=torch.long)
    alpha = torch.ones(keys)
    for j in range(keys):
        if j < len(alignment):
            a = alignment[j]
            index[j], alpha[j] = (j, 0.0) if a is None else (a, 1.0)
        else:
            index[j] = min(keys - 1, j - len(alignment) + source_len)
    return index, alpha


#: The most bytes of source self-attention maps ``edit(self_max_positions="auto")`` keeps in memory.
SELF_MAPS_BUDGET = 2 * 1024**3


def self_layers(pipe: Any, height: int, width: int) -> list[tuple[int, int]]:
    """``(query positions, bytes of one map [heads, N, N])`` of each self-attention layer for a ``height x width`` run."""
    family = family_for(pipe)
    _, h, w = family.latent_shape(pipe, height, width)
    unet = family.denoiser(pipe)
    size = next(unet.parameters()).element_size()
    out = []
    for name, module, level in family.attention_sites(pipe):
        try:
            attn1 = unet.get_submodule(name.removesuffix("attn2") + "attn1")
        except AttributeError:
            continue
        positions = (-(-h // 2**level)) * (-(-w // 2**level))
        out.append((positions, attn1.heads * positions * positions * size))
    return out


def fitting_limit(layers: list[tuple[int, int]], maps_per_layer: int, budget: int) -> int | None:
    """The largest position limit whose layers' maps (``maps_per_layer`` each) fit in ``budget`` bytes; ``None``: all fit."""
    for limit in sorted({p for p, _ in layers}, reverse=True):
        if sum(b for p, b in layers if p <= limit) * maps_per_layer <= budget:
            return None if limit == max(p for p, _ in layers) else limit
    return 0


def kept_tokens(alignment: list[int | None], source_ids: list[int], target_ids: list[int], keys: int) -> torch.Tensor:
    """Which of the ``keys`` target keys take the source's text states (``keep_context``): ``[keys]`` bool.

    A target token is kept when it is aligned with a source token of the same id: every token but the swapped
    or added words' (padding after EOS included).
    """
    return torch.tensor([j >= len(alignment) or (alignment[j] is not None and target_ids[j] == source_ids[alignment[j]])
                         for j in range(keys)])  # fmt: skip


class _Edit:
    """Shared state of one edit: the current step, the stored source maps and the edit settings."""

    def __init__(self, cross_until: int, self_until: int, self_max: int | None, index: torch.Tensor,
                 alpha: torch.Tensor, weights: dict[int, float], mode: str, both_halves: bool = False) -> None:  # fmt: skip
        self.step = -1
        self.cross_until, self.self_until, self.self_max = cross_until, self_until, self_max
        self.both_halves = both_halves  # self-attention: inject the unconditional half too
        self.keep: torch.Tensor | None = None  # [keys] bool: target keys whose text states come from the source
        self.context: torch.Tensor | None = None  # the source's conditional text states, [b/2, keys, dim]
        self.index, self.alpha, self.weights, self.mode = index, alpha, weights, mode
        self.store: dict[tuple[str, int], torch.Tensor] = {}  # (layer, step) -> [heads, N, keys], conditional half
        self.recording = True

    def wanted(self, kind: str, positions: int) -> bool:
        if kind == "cross":
            return self.step < self.cross_until
        return self.step < self.self_until and (self.self_max is None or positions <= self.self_max)

    def rows(self, kind: str, batch: int) -> slice:
        """The rows of the UNet batch whose maps are kept and injected."""
        return slice(0, batch) if kind == "self" and self.both_halves else _cond_rows(batch)

    def count_step(self, module: Any, args: Any) -> None:
        self.step += 1


def _qkv(attn: Attention, hidden: torch.Tensor, context: torch.Tensor | None, mask: Any, temb: Any) -> tuple:
    """diffusers ``AttnProcessor`` up to the probabilities: ``(probs [B*H, N, T], value, residual, shape info)``."""
    residual = hidden
    if attn.spatial_norm is not None:
        hidden = attn.spatial_norm(hidden, temb)
    ndim = hidden.ndim
    shape = hidden.shape
    if ndim == 4:
        b, c, h, w = shape
        hidden = hidden.view(b, c, h * w).transpose(1, 2)
    batch, seq, _ = hidden.shape if context is None else context.shape
    mask = attn.prepare_attention_mask(mask, seq, batch)
    if attn.group_norm is not None:
        hidden = attn.group_norm(hidden.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden)
    if context is None:
        context = hidden
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    key, value = attn.to_k(context), attn.to_v(context)
    query, key, value = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)
    return attn.get_attention_scores(query, key, mask), value, residual, ndim, shape


def _finish(attn: Attention, probs: torch.Tensor, value: torch.Tensor, residual: torch.Tensor, ndim: int,
            shape: tuple) -> torch.Tensor:  # fmt: skip
    hidden = attn.batch_to_head_dim(torch.bmm(probs, value))
    hidden = attn.to_out[1](attn.to_out[0](hidden))
    if ndim == 4:
        hidden = hidden.transpose(-1, -2).reshape(*shape)
    if attn.residual_connection:
        hidden = hidden + residual
    return hidden / attn.rescale_output_factor


def _cond_rows(batch: int) -> slice:
    """The conditional half of the UNet batch: diffusers' SD pipelines build ``cat([negative, prompt])``."""
    return slice(batch // 2, batch) if batch > 1 else slice(0, batch)


class _SourceProcessor:
    """The layer's own processor for the output; the conditional probabilities kept on the side."""

    def __init__(self, edit: _Edit, name: str, kind: str, original: Any) -> None:
        self.edit, self.name, self.kind, self.original = edit, name, kind, original

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:  # fmt: skip
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if self.kind == "cross" and self.edit.keep is not None and self.edit.context is None:
            self.edit.context = encoder_hidden_states[_cond_rows(encoder_hidden_states.shape[0])].detach().clone()
        positions = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        if self.edit.wanted(self.kind, positions):
            with torch.no_grad():
                probs = _qkv(attn, hidden_states, encoder_hidden_states, attention_mask, temb)[0]
            b = hidden_states.shape[0]
            probs = probs.view(b, attn.heads, *probs.shape[1:])[self.edit.rows(self.kind, b)]
            self.edit.store[(self.name, self.edit.step)] = probs.detach().clone()  # [b/2 or b, heads, N, keys]
        return out


class _TargetProcessor:
    """Classic attention whose conditional probabilities are replaced by the source's in the edit steps."""

    def __init__(self, edit: _Edit, name: str, kind: str, original: Any) -> None:
        self.edit, self.name, self.kind, self.original = edit, name, kind, original

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:  # fmt: skip
        edit = self.edit
        source = edit.store.get((self.name, edit.step))
        if source is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        b = hidden_states.shape[0]
        if self.kind == "cross" and edit.keep is not None and edit.context is not None:
            encoder_hidden_states = encoder_hidden_states.clone()
            rows = _cond_rows(b)
            keep = edit.keep.to(encoder_hidden_states.device)
            own = encoder_hidden_states[rows]
            src = edit.context[:, edit.index.to(own.device)].to(own.dtype)
            encoder_hidden_states[rows] = torch.where(keep[None, :, None], src, own)
        probs, value, residual, ndim, shape = _qkv(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        view = probs.view(b, attn.heads, *probs.shape[1:])  # [B, heads, N, keys]
        rows = edit.rows(self.kind, b)
        if self.kind == "self":
            view[rows] = source.to(view.dtype)
        else:
            own = view[rows]
            index, alpha = edit.index.to(own.device), edit.alpha.to(own.device, own.dtype)
            new = source[..., index].to(own.dtype) * alpha + own * (1 - alpha)
            for key, weight in edit.weights.items():
                new[..., key] = new[..., key] * weight
            view[rows] = new
        return _finish(attn, probs, value, residual, ndim, shape)


def _sites(pipe: Any) -> list[tuple[str, Attention, str]]:
    """``(path, module, kind)`` of every cross-attention layer and its block's self-attention (``attn1``)."""
    family = family_for(pipe)
    unet = family.denoiser(pipe)
    sites = []
    for name, module, _ in family.attention_sites(pipe):
        sites.append((name, module, "cross"))
        self_name = name.removesuffix("attn2") + "attn1"
        try:
            sites.append((self_name, unet.get_submodule(self_name), "self"))
        except AttributeError:
            pass
    return sites


def _attach(pipe: Any, edit: _Edit, kind_cls: type) -> Any:
    sites = _sites(pipe)
    originals = [(module, module.processor) for _, module, _ in sites]
    for name, module, kind in sites:
        module.set_processor(kind_cls(edit, name, kind, module.processor))
    hook = family_for(pipe).denoiser(pipe).register_forward_pre_hook(edit.count_step)

    def undo() -> None:
        hook.remove()
        for module, proc in originals:
            module.set_processor(proc)

    return undo


def edit(
    trace_or_pipe: Any,
    source_prompt: str,
    target_prompt: str,
    *,
    mode: str = "replace",
    cross_steps: float = 0.6,
    self_steps: float = 0.4,
    self_max_positions: int | None | str = "auto",
    self_both_halves: bool = False,
    keep_context: bool = True,
    weights: dict[str, float] | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int | None = None,
    scheduler: Any = None,
    record: str | dict[str, Any] = "default",
    pipe: Any = None,
    progress: bool = True,
) -> EditResult:
    """Edit an image by changing its prompt while keeping its layout (prompt-to-prompt).

    Args:
        trace_or_pipe: a pipeline, or a trace of the source prompt (its seed, steps, guidance and scheduler
            are reused; pass ``pipe=`` or its model is loaded).
        source_prompt, target_prompt: the two prompts (for ``reweight`` usually the same).
        mode: ``"replace"`` (word swap), ``"refine"`` (the target adds words) or ``"reweight"``.
        cross_steps: fraction of the steps, from the start, whose cross-attention comes from the source.
        self_steps: the same for self-attention (0 turns it off).
        self_max_positions: inject self-attention only on layers with at most this many query positions
            (the paper's SD code: a quarter of the latent's, 32x32 of 64x64); ``None``: every layer, the
            full-resolution ones included; ``"auto"``: every layer whose stored maps fit in
            :data:`SELF_MAPS_BUDGET` bytes, the largest grids dropped first (every layer on the toy; on a
            512x512 SD 1.x run with the default steps, the paper's 32x32 and below).
        self_both_halves: inject self-attention into the unconditional half of the guidance batch too
            (the paper injects the conditional half only).
        keep_context: in the cross-attention steps, the text states (keys and values) of the target's tokens
            that are the source's tokens (every token but the swapped or added words) come from the source's
            encoding: CLIP's text encoder is causal, so otherwise every token after a changed word differs.
        weights: word of the target prompt -> factor on its cross-attention (required for ``reweight``).
        num_inference_steps, guidance_scale, seed, scheduler, record: as for :func:`explainer.trace`.
        pipe: the pipeline when ``trace_or_pipe`` is a trace.
        progress: show progress bars.

    Returns:
        An :class:`EditResult` with ``source`` and ``target`` traces and the token ``alignment``.

    Raises:
        ValueError: what cannot be aligned (named words), or a bad setting.

    Example:
        >>> res = explainer.edit(pipe, "a red circle above a blue square", "a green circle above a blue square")  # doctest: +SKIP
        >>> res.source.final_image, res.target.final_image, res.alignment  # doctest: +SKIP

    Walk-through: ``notebooks/11_change_one_word.ipynb``.
    """
    if isinstance(trace_or_pipe, Trace):
        given: Trace | None = trace_or_pipe
        if pipe is None:
            from ..models import load_pipeline

            pipe = load_pipeline(given.metadata["model"]["name_or_path"])
        from .fork import parent_scheduler

        num_inference_steps = num_inference_steps or int(given.metadata["num_inference_steps"])
        guidance_scale = given.guidance_scale if guidance_scale is None else guidance_scale
        seed = int(given.metadata.get("seed") or 0) if seed is None else seed
        scheduler = parent_scheduler(given) if scheduler is None else scheduler
        if given.mode != "txt2img" or source_prompt != given.prompt:
            raise ValueError(f"the trace given is a {given.mode} run of {given.prompt!r}; edit() re-runs a text-to-image "
                             f"trace of source_prompt={source_prompt!r}.")  # fmt: skip
    else:
        given, pipe = None, trace_or_pipe
    family = family_for(pipe)
    if family.name != "sd":
        raise UnsupportedPipelineError(f"edit() is built for Stable Diffusion 1.x/2.x pipelines; this is {family.label}.")
    source_prompt, target_prompt = check_prompt(source_prompt, "source_prompt"), check_prompt(target_prompt, "target_prompt")
    for name, value in (("cross_steps", cross_steps), ("self_steps", self_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name}={value!r} must be a fraction of the steps in [0, 1].")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed; use one of {list(MODES)}.")
    weights = dict(weights or {})
    if mode == "reweight" and not weights:
        raise ValueError("mode='reweight' needs weights=, e.g. {'red': 2.0} (word of the target prompt -> factor).")
    texts = {"prompt": source_prompt, "negative_prompt": None}
    src_tokens = family.token_segments(pipe, texts, "cond")[0].tokens
    tgt_tokens = family.token_segments(pipe, {**texts, "prompt": target_prompt}, "cond")[0].tokens
    alignment = align_tokens(src_tokens, tgt_tokens, mode)
    word_keys: dict[int, float] = {}
    for word, factor in weights.items():
        found = [w for w in tgt_tokens.words if w.text == word]
        if not found:
            raise ValueError(f"weights names {word!r}, not a word of the target prompt (its words: "
                             f"{[w.text for w in tgt_tokens.words]}).")  # fmt: skip
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 0:
            raise ValueError(f"weights[{word!r}]={factor!r} must be a number >= 0.")
        for w in found:
            for i in w.token_indices:
                word_keys[i] = float(factor)
    steps = 25 if num_inference_steps is None else num_inference_steps
    sched = resolve_scheduler(scheduler, pipe.scheduler)
    probe = copy_scheduler(sched)
    probe.set_timesteps(int(steps), device="cpu")
    total = len(probe.timesteps)
    keys = family.max_tokens(pipe)
    index, alpha = key_mapper(alignment, len(src_tokens.ids), keys)
    if self_max_positions not in (None, "auto") and (isinstance(self_max_positions, bool) or
                                                     not isinstance(self_max_positions, int) or self_max_positions < 1):  # fmt: skip
        raise ValueError(f"self_max_positions={self_max_positions!r} must be a positive number of query positions, None "
                         "for every self-attention layer, or 'auto'.")  # fmt: skip
    self_until = round(self_steps * total)
    size = (given.height, given.width) if given is not None else family.default_size(pipe)
    layers = self_layers(pipe, *size)
    if self_max_positions == "auto":
        self_max = fitting_limit(layers, self_until * (2 if self_both_halves else 1), SELF_MAPS_BUDGET)
    else:
        self_max = self_max_positions
    state = _Edit(round(cross_steps * total), self_until, self_max, index, alpha, word_keys, mode,
                  both_halves=bool(self_both_halves))  # fmt: skip
    if keep_context:
        state.keep = kept_tokens(alignment, src_tokens.ids, tgt_tokens.ids, keys)
    from .recorder import trace

    common = dict(num_inference_steps=steps, guidance_scale=guidance_scale, seed=0 if seed is None else seed,
                  scheduler=sched, record=record, progress=progress)  # fmt: skip
    if given is not None:
        common.update(height=given.height, width=given.width, negative_prompt=given.negative_prompt)
    undo = _attach(pipe, state, _SourceProcessor)
    try:
        source = trace(pipe, source_prompt, **common)
    finally:
        undo()
    if source.metadata.get("batch_order") == "cond, uncond":  # pragma: no cover - diffusers' SD pipelines build [neg, prompt]
        raise UnsupportedPipelineError("this pipeline puts the prompt first in its guidance batch; edit() expects it second.")
    undo = _attach(pipe, state, _TargetProcessor)
    state.step = -1
    try:
        target = trace(pipe, target_prompt, **common)
    finally:
        undo()
        state.store.clear()
        state.context = None
    settings = {"source_prompt": source_prompt, "target_prompt": target_prompt, "mode": mode,
                "cross_steps": cross_steps, "self_steps": self_steps, "cross_until_step": state.cross_until,
                "self_until_step": state.self_until, "self_max_positions": self_max,
                "self_both_halves": bool(self_both_halves), "keep_context": bool(keep_context), "weights": weights,
                "alignment": alignment, "source_uid": source.uid,
                "recorded_attention": "the target's own queries against its own keys, before the injection"}  # fmt: skip
    target.metadata["edit"] = settings
    return EditResult(source=source, target=target, alignment=alignment, mode=mode, settings=settings)
