"""Cross-attention bookkeeping: prompt tokens and words, attn2 layer layout, probabilities, heatmaps.

Shapes used below: ``B`` batch (2 with classifier-free guidance), ``H`` heads, ``N = h * w`` image
positions of a layer, ``T`` text tokens (the tokenizer's ``model_max_length``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from .errors import StepIndexError

if TYPE_CHECKING:
    from .trace import Trace


@dataclass(frozen=True)
class Word:
    """A word of the prompt and the positions of its BPE tokens in ``Trace.tokens``."""

    text: str
    token_indices: tuple[int, ...]


@dataclass(frozen=True)
class PromptTokens:
    """How the tokenizer split one prompt.

    Attributes:
        ids: token ids from BOS to the first EOS, as the text encoder saw them.
        tokens: the BPE strings of ``ids`` (``"cat</w>"``, ``"<|startoftext|>"``...).
        words: the words, each with the indices (into ``tokens``) of its tokens; BOS/EOS excluded.
        truncated: BPE strings the tokenizer dropped because the prompt was too long.
    """

    ids: list[int]
    tokens: list[str]
    words: list[Word]
    truncated: list[str]


@dataclass(frozen=True)
class AttentionLayer:
    """One cross-attention (``attn2``) layer of the UNet.

    Attributes:
        index: position in execution order (0 = first attn2 the UNet runs).
        name: module path, e.g. ``"down_blocks.1.attentions.0.transformer_blocks.0.attn2"``.
        height, width: the layer's attention-map resolution for this run.
        heads: number of attention heads.
        group: key of the stored array this layer lives in (layers of one resolution share it).
        slot: the layer's index along that array's ``layer`` axis.
    """

    index: int
    name: str
    height: int
    width: int
    heads: int
    group: str
    slot: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokenize_prompt(tokenizer: Any, text: str, max_length: int | None = None) -> PromptTokens:
    """Tokenize like ``StableDiffusionPipeline.encode_prompt`` and keep BOS..first EOS.

    Args:
        tokenizer: the pipeline's CLIP tokenizer.
        text: the prompt ("" gives just BOS and EOS).
        max_length: the padded length the pipeline asks for (e.g. FLUX's ``max_sequence_length`` for its
            T5 tokenizer); default the tokenizer's ``model_max_length``.

    Returns:
        The prompt's tokens, words and anything truncation dropped.
    """
    max_len = tokenizer.model_max_length if max_length is None else max_length
    ids = tokenizer(text, padding="max_length", max_length=max_len, truncation=True).input_ids
    full = tokenizer(text, truncation=False).input_ids
    eos = tokenizer.eos_token_id
    end = ids.index(eos) + 1 if eos in ids else len(ids)
    ids = list(ids[:end])
    dropped = list(full[max_len - 1 : -1]) if len(full) > max_len else []
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return PromptTokens(
        ids=ids,
        tokens=tokens,
        words=group_words(tokenizer, tokens, ids),
        truncated=tokenizer.convert_ids_to_tokens(dropped),
    )


def group_words(tokenizer: Any, tokens: list[str], ids: list[int] | None = None) -> list[Word]:
    """Group BPE tokens into words: a word ends with a token carrying CLIP's ``</w>`` suffix.

    Args:
        tokenizer: the CLIP tokenizer (decodes each word's ids to text).
        tokens: BPE strings, BOS/EOS included.
        ids: their ids (looked up from ``tokens`` if omitted).
    """
    ids = list(ids) if ids is not None else tokenizer.convert_tokens_to_ids(tokens)
    special = set(tokenizer.all_special_tokens)
    words: list[Word] = []
    current: list[int] = []

    def close() -> None:
        text = tokenizer.decode([ids[j] for j in current], skip_special_tokens=True).strip()
        words.append(Word(text, tuple(current)))

    for i, tok in enumerate(tokens):
        if tok in special:
            continue
        current.append(i)
        if tok.endswith("</w>"):
            close()
            current = []
    if current:  # a word cut by truncation
        close()
    return words


_STAGE = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def cross_attention_modules(unet: torch.nn.Module) -> list[tuple[str, Attention, int]]:
    """Return ``(name, module, level)`` for every ``attn2`` layer, in execution order.

    ``level`` counts the downsamplings before the layer, read from the UNet's block layout
    (``down_blocks[i].downsamplers``, ``up_blocks[j].upsamplers``), so a layer at level ``l`` sees
    the latent grid halved ``l`` times.
    """
    downs = [getattr(b, "downsamplers", None) is not None for b in getattr(unet, "down_blocks", [])]
    ups = [getattr(b, "upsamplers", None) is not None for b in getattr(unet, "up_blocks", [])]
    bottom = sum(downs)
    found = []
    for order, (name, module) in enumerate(unet.named_modules()):
        if not (name.endswith("attn2") and isinstance(module, Attention)):
            continue
        parts = name.split(".")
        if parts[0] == "down_blocks":
            level = sum(downs[: int(parts[1])])
        elif parts[0] == "up_blocks":
            level = bottom - sum(ups[: int(parts[1])])
        elif parts[0] == "mid_block":
            level = bottom
        else:
            raise TypeError(f"unsupported UNet layout: cannot place cross-attention layer {name!r}")
        numbers = [int(n) for n in re.findall(r"\.(\d+)", name)]
        found.append(((_STAGE[parts[0]], numbers, order), name, module, level))
    found.sort(key=lambda item: item[0])
    return [(name, module, level) for _, name, module, level in found]


def level_size(height: int, width: int, level: int) -> tuple[int, int]:
    """Latent grid ``(h, w)`` after ``level`` stride-2 downsamplings (each rounds up)."""
    for _ in range(level):
        height, width = -(-height // 2), -(-width // 2)
    return height, width


def attention_probs(
    attns: Attention | list[Attention],
    queries: torch.Tensor | list[torch.Tensor],
    keys: torch.Tensor | list[torch.Tensor],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention probabilities of one or several same-shaped layer calls, in float32.

    Args:
        attns: the layer(s) (for ``heads``, ``scale`` and optional q/k norms); all must share them.
        queries: ``attn.to_q`` output(s), ``[B, N, heads * d]`` each.
        keys: ``attn.to_k`` output(s), ``[B, T, heads * d]`` each.
        attention_mask: optional additive mask as the processor received it (single layer only).

    Returns:
        ``[B, H, N, T]`` for one layer, ``[L, B, H, N, T]`` for a list; rows sum to 1 over all ``T`` keys.
    """
    single = isinstance(attns, Attention)
    if single:
        attns, queries, keys = [attns], [queries], [keys]
    attn = attns[0]
    batch, _, inner = queries[0].shape
    heads = attn.heads
    head_dim = inner // heads
    qs, ks = [], []
    for layer, query, key in zip(attns, queries, keys):
        q = query.reshape(batch, -1, heads, head_dim).transpose(1, 2)  # [B, H, N, d]
        k = key.reshape(batch, -1, heads, key.shape[-1] // heads).transpose(1, 2)  # [B, H, T, d]
        qs.append(layer.norm_q(q) if layer.norm_q is not None else q)
        ks.append(layer.norm_k(k) if layer.norm_k is not None else k)
    q_all, k_all = torch.stack(qs), torch.stack(ks)  # [L, B, H, N|T, d], contiguous
    n_layers, _, _, n_query, dim = q_all.shape
    n_keys = k_all.shape[3]
    # [L, B, H, N, T] in the model's dtype like its own: scale * q k^T in one kernel (beta=0: `empty` is not read)
    scores = torch.baddbmm(q_all.new_empty(n_layers * batch * heads, n_query, n_keys), q_all.view(-1, n_query, dim),
                           k_all.view(-1, n_keys, dim).transpose(1, 2), beta=0, alpha=attn.scale)  # fmt: skip
    scores = scores.view(n_layers, batch, heads, n_query, n_keys)
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, keys[0].shape[1], batch)
        scores = scores + mask.view(batch, heads, -1, mask.shape[-1]).to(scores.dtype)
    probs = scores.softmax(dim=-1, dtype=torch.float32)
    return probs[0] if single else probs


# --------------------------------------------------------------------------------------------- heatmaps


def no_negative_tokens_message(trace: Trace) -> str:
    """Why a trace with an unconditional branch has no negative-prompt tokens to map (one line)."""
    note = str(trace.metadata.get("unconditional", ""))
    if note.startswith("zeros"):
        return ("the unconditional embedding was all zeros: no negative tokens (no negative_prompt, and this SDXL "
                "pipeline has force_zeros_for_empty_prompt), so the unconditional branch attended to no text; "
                "trace with a negative_prompt to map negative tokens.")  # fmt: skip
    return f"this trace recorded no negative-prompt tokens ({note or 'no attention over the unconditional branch'})."


def resolve_tokens(trace: Trace, word_or_token_index: str | int, branch: str) -> list[int]:
    """Return the token indices a heatmap should average for a word, a token string or an index."""
    tokens, words = (trace.tokens, trace.words) if branch == "cond" else (trace.negative_tokens, trace.negative_words)
    recorded = trace.recorded_token_count(branch)
    if isinstance(word_or_token_index, (bool, np.bool_)):
        raise TypeError("word_or_token_index must be a word (str) or a token index (int), not a bool.")
    if isinstance(word_or_token_index, (int, np.integer)):
        index = int(word_or_token_index)
        if not -recorded <= index < recorded:
            raise StepIndexError(
                f"token index {index} is out of range for the {branch} branch: "
                f"{recorded} tokens were recorded (0..{recorded - 1}: {tokens})."
            )
        return [index % recorded]
    if not isinstance(word_or_token_index, str):
        raise TypeError(f"word_or_token_index must be a str or int, not {type(word_or_token_index).__name__}.")
    wanted = word_or_token_index.strip().lower()
    matches = [i for w in words if w.text.lower() == wanted for i in w.token_indices]
    if not matches:
        matches = [i for i, t in enumerate(tokens) if t.lower() in (wanted, wanted + "</w>")]
    if not matches:
        which = "prompt" if branch == "cond" else "negative prompt"
        raise ValueError(
            f"{word_or_token_index!r} is not a word of the {which}; its words are {[w.text for w in words]} "
            f"(or pass a token index into {tokens})."
        )
    return sorted(set(matches))


def resolve_steps(step: int | slice | None, num_steps: int) -> list[int]:
    """Turn ``None`` (all), an int or a slice into a non-empty list of step indices."""
    if step is None:
        steps = list(range(num_steps))
    elif isinstance(step, slice):
        steps = list(range(num_steps))[step]
    elif isinstance(step, (int, np.integer)) and not isinstance(step, (bool, np.bool_)):
        if not -num_steps <= int(step) < num_steps:
            raise StepIndexError(f"step={int(step)} is out of range; this trace has steps 0..{num_steps - 1}.")
        steps = [int(step) % num_steps]
    else:
        raise TypeError(f"step must be None, an int or a slice, not {type(step).__name__}.")
    if not steps:
        raise StepIndexError(f"step={step!r} selects no steps; this trace has steps 0..{num_steps - 1}.")
    return steps


LAYER_CONVENTIONS = ("all", "daam")  # named layer selections accepted by resolve_layers
DEFAULT_LAYERS = "all"  # what layers=None selects (docs/concepts/cross_attention.md says why)


def resolve_layers(trace: Trace, layers: Any) -> list[AttentionLayer]:
    """Select layers: ``None`` or ``"all"`` (every attn2 layer), ``"daam"`` (DAAM's convention: every
    layer but the UNet mid-block's), a resolution (``16``, ``"16x16"``, ``(16, 16)``) or a list of
    indices/names."""
    available = trace.attention_layers
    sizes = sorted({(la.height, la.width) for la in available})
    if layers is None:
        layers = DEFAULT_LAYERS
    if isinstance(layers, str) and layers == "all":
        return list(available)
    if isinstance(layers, str) and layers == "daam":
        chosen = [la for la in available if not la.name.startswith("mid_block.")]
        if not chosen:
            raise ValueError("layers='daam': this trace has only mid-block layers; use layers='all'.")
        return chosen
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        chosen = [la for la in available if la.height == int(layers) or la.width == int(layers)]
        if not chosen:
            raise ValueError(f"layers={int(layers)}: no layer has that resolution; resolutions: {sizes}.")
        return chosen
    if isinstance(layers, str) and re.fullmatch(r"\d+x\d+", layers):
        layers = tuple(int(v) for v in layers.split("x"))
    if isinstance(layers, tuple) and len(layers) == 2 and all(isinstance(v, int) for v in layers):
        chosen = [la for la in available if (la.height, la.width) == layers]
        if not chosen:
            raise ValueError(f"layers={layers}: no layer has that resolution; resolutions: {sizes}.")
        return chosen
    if isinstance(layers, (list, tuple)) and layers:
        by_name = {la.name: la for la in available}
        chosen = []
        for item in layers:
            if isinstance(item, str) and item in by_name:
                chosen.append(by_name[item])
            elif isinstance(item, (int, np.integer)) and not isinstance(item, bool) and 0 <= item < len(available):
                chosen.append(available[int(item)])
            else:
                raise ValueError(
                    f"layers entry {item!r} is neither a layer index 0..{len(available) - 1} nor a layer name "
                    f"(see trace.attention_layers)."
                )
        return chosen
    raise ValueError(
        f"layers={layers!r} is not allowed; use None, 'all', 'daam', a resolution such as {sizes[0][0] if sizes else 8} "
        f"or '{sizes[0][0] if sizes else 8}x{sizes[0][1] if sizes else 8}', or a list of layer indices/names."
    )


def heatmap(
    trace: Trace,
    word_or_token_index: str | int,
    step: int | slice | None = None,
    layers: Any = None,
    branch: str = "cond",
) -> np.ndarray:
    """Cross-attention map of a word or token, at image resolution, DAAM-style.

    Head-averaged attention of each selected layer is averaged over the selected steps and tokens at
    the layer's native resolution, upsampled bilinearly to the image size, averaged over layers, and
    divided by its maximum.

    Returns:
        ``[H, W]`` float32 in [0, 1].
    """
    if branch not in ("cond", "uncond"):
        raise ValueError(f"branch={branch!r} is not allowed; use 'cond' (prompt) or 'uncond' (negative prompt).")
    if trace.attention_mode == "none":
        raise ValueError("this trace recorded no attention (record='none'); trace again with record='default'.")
    if branch == "uncond" and not trace.has_uncond:
        raise ValueError("this trace has no unconditional branch (guidance_scale <= 1 disables it).")
    if branch == "uncond" and not trace.recorded_token_count("uncond"):
        raise ValueError(no_negative_tokens_message(trace))
    token_idx = resolve_tokens(trace, word_or_token_index, branch)
    steps = resolve_steps(step, trace.num_steps)
    height, width = trace.height, trace.width
    if trace.attention_mode == "per_step":
        if layers is not None:
            raise ValueError("layers must be None for a trace recorded with record='per_step' (layers were summed).")
        maps = trace.attention[f"{branch}/steps"]  # [step, token, h, w]
        grid = maps[np.ix_(steps, token_idx)].mean(axis=(0, 1), dtype=np.float32)
        total = _upsample(grid, height, width)
    else:
        chosen = resolve_layers(trace, layers)
        total = np.zeros((height, width), np.float32)
        by_group: dict[str, list[int]] = {}
        for la in chosen:
            by_group.setdefault(la.group, []).append(la.slot)
        for group, slots in by_group.items():
            arr = trace.attention[f"{branch}/{group}"]  # [step, layer, (head,) token, h, w]
            if trace.attention_mode == "per_head":
                sel = arr[np.ix_(steps, slots, range(arr.shape[2]), token_idx)]  # [s, l, head, t, h, w]
                grid = sel.mean(axis=(0, 1, 2, 3), dtype=np.float32)
            else:
                sel = arr[np.ix_(steps, slots, token_idx)]  # [s, l, t, h, w]
                grid = sel.mean(axis=(0, 1, 2), dtype=np.float32)  # [h, w]
            total += _upsample(grid, height, width) * len(slots)
        total /= len(chosen)
    peak = float(total.max())
    return (total / peak).astype(np.float32) if peak > 0 else np.zeros_like(total)


def _upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
