"""The text encoder: how a prompt becomes BPE tokens and ids, and how alike its tokens' encodings are."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._common import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _toy_known_words() -> frozenset[str]:
    """The words of the toy's shapes-world captions (``explainer.toy.vocabulary()["words"]``)."""
    from ...toy import vocabulary

    return frozenset(vocabulary()["words"])


def tokenize(tokenizer: Any, prompt: str, *, known: frozenset[str] | None = None) -> dict[str, Any]:
    """Tokenize ``prompt`` as the pipeline does: BOS, BPE tokens, EOS, then padding to the tokenizer's
    ``model_max_length`` (longer prompts are truncated there).

    Args:
        tokenizer: a CLIP tokenizer (``pipe.tokenizer``).
        prompt: the text.
        known: words a model knows (the explorer passes the toy's words); tokens of other words are marked unknown.

    Returns:
        ``tokens`` and ``ids`` (length ``max_length``), ``kinds`` (``"bos"``, ``"word"``, ``"eos"``,
        ``"pad"`` per position), ``max_length``, ``n_prompt`` (BPE tokens of the prompt, untruncated),
        ``truncated`` (the tokens cut off), ``known`` (per position: ``True``/``False`` for word tokens,
        ``None`` otherwise) and ``unknown_words``.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, not {type(prompt).__name__}.")
    max_length = int(tokenizer.model_max_length)
    full = tokenizer(prompt, add_special_tokens=False).input_ids  # the prompt's BPE ids, untruncated
    ids = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True).input_ids  # [max_length]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    kept = min(len(full), max_length - 2)
    kinds = ["bos"] + ["word"] * kept + ["eos"] + ["pad"] * (max_length - kept - 2)
    words = [w.lower() for w in re.findall(r"[a-zA-Z]+|[^\sa-zA-Z]", prompt)]
    unknown = [] if known is None else [w for w in words if w not in known]
    flags: list[bool | None] = []
    for token, kind in zip(tokens, kinds):
        if kind != "word" or known is None:
            flags.append(None)
        else:
            flags.append(token.replace("</w>", "").lower() in known)
    return {
        "tokens": tokens,
        "ids": [int(i) for i in ids],
        "kinds": kinds,
        "max_length": max_length,
        "n_prompt": len(full),
        "truncated": tokenizer.convert_ids_to_tokens(full[kept:]),
        "known": flags,
        "unknown_words": list(dict.fromkeys(unknown)),
    }


@torch.no_grad()
def token_similarity(tokenizer: Any, text_encoder: Any, prompt: str, *, space: str = "output") -> tuple[list[str], np.ndarray]:
    """Cosine similarity between the prompt's tokens (BOS to EOS).

    Args:
        tokenizer, text_encoder: the pipeline's (``pipe.tokenizer``, ``pipe.text_encoder``).
        prompt: the text.
        space: ``"output"`` (the encoder's last hidden states, what the UNet attends to: context mixes in,
            as the causal encoder carries each word forward) or ``"input"`` (the token embedding table).

    Returns:
        The token labels and the ``[n, n]`` similarity matrix (n = prompt tokens + BOS + EOS).
    """
    if space not in ("output", "input"):
        raise ValueError(f"space={space!r} is not allowed; use 'output' or 'input'.")
    info = tokenize(tokenizer, prompt)
    n = info["kinds"].index("eos") + 1
    ids = torch.tensor([info["ids"]], device=text_encoder.device)  # [1, max_length]
    if space == "input":
        vecs = text_encoder.get_input_embeddings()(ids)[0, :n]  # [n, width]
    else:
        vecs = text_encoder(ids)[0][0, :n]  # [n, width]
    vecs = torch.nn.functional.normalize(vecs.float(), dim=-1)
    labels = [t.replace("</w>", "") for t in info["tokens"][:n]]
    return labels, (vecs @ vecs.T).cpu().numpy()  # [n, n]


@torch.no_grad()
def word_embeddings(tokenizer: Any, text_encoder: Any, words: list[str]) -> np.ndarray:
    """The text encoder's input embedding (its first layer, a table with one learned row per token id) of
    each word, for words that are one BPE token each.

    Args:
        tokenizer, text_encoder: the pipeline's (``pipe.tokenizer``, ``pipe.text_encoder``).
        words: the words, each one token.

    Returns:
        ``[n, width]``: one row of the table per word.
    """
    ids = []
    for word in words:
        if not isinstance(word, str):
            raise TypeError(f"words must be strs, got {type(word).__name__} {word!r}.")
        found = tokenizer(word, add_special_tokens=False).input_ids
        if len(found) != 1:
            raise ValueError(f"word {word!r} is {len(found)} BPE tokens; word_embeddings takes one-token words.")
        ids.append(found[0])
    table = text_encoder.get_input_embeddings().weight  # [vocab, width]
    return table[torch.tensor(ids, device=table.device)].float().cpu().numpy()  # [n, width]


def word_similarity(tokenizer: Any, text_encoder: Any, words: list[str]) -> tuple[list[str], np.ndarray]:
    """Cosine similarity of :func:`word_embeddings`: how alike the encoder's table holds the words.

    Args:
        tokenizer, text_encoder: the pipeline's. words: one-token words.

    Returns:
        The words and the ``[n, n]`` similarity matrix (for :func:`token_similarity_figure`).
    """
    vecs = word_embeddings(tokenizer, text_encoder, words)  # [n, width]
    unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return list(words), unit @ unit.T  # [n, n]


def token_similarity_figure(labels: list[str], sim: np.ndarray, *, title: str = "token similarity (cosine)") -> Figure:
    """Heatmap of a :func:`token_similarity` matrix.

    Args:
        labels: the token labels. sim: the ``[n, n]`` matrix. title: the figure's title.

    Returns:
        The figure.
    """
    n = len(labels)
    size = 2.6 + 0.22 * n
    fig, axes = new_figure(size + 0.8, size)
    ax = axes[0, 0]
    shown = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(n), labels, rotation=70, fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(shown, ax=ax, shrink=0.8)
    return fig
