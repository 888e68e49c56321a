"""Joint attention (diffusion transformers): text and image tokens attend in one softmax.

In an MMDiT block (SD3) the image queries attend to the keys of the image *and* of the text in a
single softmax. The map of a prompt token is the text→image block of that softmax: for each image
query, its probability on each text key, normalised over **all** keys (image and text), so a row of
the recorded block sums to less than 1 and the rest went to image keys.

:class:`JointAttentionRecorder` wraps a block's own processor (``JointAttnProcessor2_0``): the
original processor computes the output (so the image is bit-identical) while thin ``forward``
wrappers on the layer's projections and QK-norms hand over the very q and k it used, after the
norms. :func:`text_probabilities` turns them into the text block, in query chunks so the full
``[queries, keys]`` matrix never exists at once.

With ``method="concept"`` the recorder keeps ConceptAttention-style maps instead (:func:`concept_maps`,
Helbling et al., 2025): the image tokens' attention outputs (softmax(QK^T/sqrt(d))V, the input of
``to_out[0]``) dotted with the text tokens' (the input of ``to_add_out``; in SD3's last block, which has
no ``to_add_out`` (``context_pre_only``), the processor returns them unprojected), softmax over the text.

Shapes: ``B`` batch, ``H`` heads, ``N`` image queries (= image keys), ``T`` text keys, ``d`` head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .attention import AttentionLayer

#: Elements of one chunk of scores (float32); bounds the transient memory of :func:`text_probabilities`.
CHUNK_ELEMENTS = 1 << 26


def heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N, H * d]`` (a projection's output) or ``[B, H, N, d]`` (after a QK-norm) -> ``[B, H, N, d]``."""
    if x.ndim == 4:
        return x
    batch, n, inner = x.shape
    return x.view(batch, n, heads, inner // heads).transpose(1, 2)


def text_probabilities(
    query: torch.Tensor,
    keys: torch.Tensor,
    text: slice,
    *,
    scale: float | None = None,
    head_mean: bool = True,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Probabilities of image queries on the text keys, from a softmax over all keys (computed in float32).

    Args:
        query: ``[B, H, N, d]`` the image queries, as the block used them (QK-norm and any RoPE applied).
        keys: ``[B, H, K, d]`` every key of the joint softmax, image and text, in the block's order.
        text: where the text keys sit along ``K`` (SD3: after the image keys; FLUX: before them).
        scale: the softmax scale; default ``d ** -0.5`` (what ``scaled_dot_product_attention`` uses).
        head_mean: average over heads (``[B, 1, N, T]``) instead of keeping them (``[B, H, N, T]``).
        chunk_elements: at most this many scores per chunk of queries.

    Returns:
        ``[B, 1 | H, N, T]`` float32; with the image-key probabilities each query's row sums to 1.
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    batch, heads, n, _ = query.shape
    k = keys.float()
    step = max(1, chunk_elements // max(1, batch * heads * k.shape[2]))
    parts = []
    for start in range(0, n, step):
        q = query[:, :, start : start + step].float()
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)  # [B, H, n, K]
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        probs = (scores[..., text] - lse).exp_()  # [B, H, n, T]
        parts.append(probs.mean(dim=1, keepdim=True) if head_mean else probs)
    return torch.cat(parts, dim=2)


def concept_maps(image: torch.Tensor, text: torch.Tensor, head_dim: int, *, head_mean: bool = True) -> torch.Tensor:
    """ConceptAttention-style maps: per head, softmax over the text tokens of image-output . text-output.

    Args:
        image: ``[B, N, H * d]`` the attention outputs of the image tokens (before the output projection).
        text: ``[B, T, H * d]`` those of the text tokens.
        head_dim: ``d``.
        head_mean: average the per-head maps (``[B, 1, N, T]``) instead of keeping them (``[B, H, N, T]``).

    Returns:
        float32; each image token's row sums to 1 over the ``T`` text tokens.
    """
    img = image.unflatten(-1, (-1, head_dim)).transpose(1, 2).float()  # [B, H, N, d]
    txt = text.unflatten(-1, (-1, head_dim)).transpose(1, 2).float()  # [B, H, T, d]
    probs = torch.matmul(img, txt.transpose(-1, -2)).softmax(dim=-1)  # [B, H, N, T]
    return probs.mean(dim=1, keepdim=True) if head_mean else probs


class JointAttentionRecorder:
    """Processor for one MMDiT joint-attention layer: the original processor computes the output, we keep q and k.

    ``to_q``/``to_k``/``add_k_proj`` (and the QK-norms ``norm_q``/``norm_k``/``norm_added_k``, whose
    outputs win where present) get ``forward`` wrappers (:meth:`wrappers`) that hand their outputs here.
    After the call the text block is computed at once and handed to ``sink(layer, probs)``.

    Args:
        layer: the layer being recorded.
        original: the layer's processor before recording.
        sink: called with ``(layer, probs [B, 1 | H, N, T])`` after each call while ``active()``.
        active: whether the recorder is recording now.
        head_mean: store the head average (``False`` keeps every head).
        method: ``"probabilities"`` (the text block of the softmax) or ``"concept"`` (:func:`concept_maps`).
    """

    #: (slot, projection, norm) per captured tensor: image queries, image keys, text keys
    SLOTS = (("query", "to_q", "norm_q"), ("key", "to_k", "norm_k"), ("text_key", "add_k_proj", "norm_added_k"))

    def __init__(self, layer: AttentionLayer, original: Any, sink: Callable[[AttentionLayer, torch.Tensor], None],
                 active: Callable[[], bool], head_mean: bool = True, method: str = "probabilities") -> None:  # fmt: skip
        self.layer = layer
        self.original = original
        self.sink = sink
        self.active = active
        self.head_mean = head_mean
        self.method = method
        self.seen: dict[str, torch.Tensor] = {}

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:  # fmt: skip
        self.seen = {}
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        seen, self.seen = self.seen, {}
        if self.active() and encoder_hidden_states is not None and self.method == "concept" and "image_out" in seen:
            # the text outputs: to_add_out's input, or (context_pre_only: no to_add_out) the returned, unprojected ones
            text = seen["text_out"] if "text_out" in seen else out[1]
            head_dim = seen["image_out"].shape[-1] // attn.heads
            self.sink(self.layer, concept_maps(seen["image_out"], text, head_dim, head_mean=self.head_mean))
        elif self.active() and encoder_hidden_states is not None and {"query", "key", "text_key"} <= seen.keys():
            query = heads_first(seen["query"], attn.heads)
            image_keys = heads_first(seen["key"], attn.heads)
            text_keys = heads_first(seen["text_key"], attn.heads)
            n = image_keys.shape[2]
            keys = torch.cat([image_keys, text_keys], dim=2)  # JointAttnProcessor2_0's order: image, then text
            probs = text_probabilities(query, keys, slice(n, None), head_mean=self.head_mean)
            self.sink(self.layer, probs)
        elif self.active() and encoder_hidden_states is not None:
            raise RuntimeError(
                f"joint attention layer {self.layer.name}: its processor {type(self.original).__name__} did not call "
                "to_q/to_k/add_k_proj (fused projections?); the tracer cannot read its q and k."
            )
        return out

    def wrappers(self, attn: Any) -> list[tuple[Any, Callable[..., Any]]]:
        """``(module, new forward)`` for every projection and norm to wrap, and the output projections' inputs
        for ``method="concept"`` (the caller installs and undoes them)."""
        found = []
        for slot, projection, norm in self.SLOTS:
            for name in (projection, norm):
                module = getattr(attn, name, None)
                if module is not None:
                    found.append((module, self._capture(module.forward, slot)))
        if self.method == "concept":  # the attention outputs enter the output projections
            outputs = getattr(attn, "to_out", None)
            for slot, module in (("image_out", outputs[0] if outputs is not None else None),
                                 ("text_out", getattr(attn, "to_add_out", None))):  # fmt: skip
                if module is not None:
                    found.append((module, self._capture_input(module.forward, slot)))
        return found

    def _capture(self, forward: Callable[..., torch.Tensor], slot: str) -> Callable[..., torch.Tensor]:
        def captured(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = forward(*args, **kwargs)
            self.seen[slot] = out  # a norm runs after its projection, so its output replaces the projection's
            return out

        return captured

    def _capture_input(self, forward: Callable[..., torch.Tensor], slot: str) -> Callable[..., torch.Tensor]:
        def captured(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            self.seen[slot] = x
            return forward(x, *args, **kwargs)

        return captured
