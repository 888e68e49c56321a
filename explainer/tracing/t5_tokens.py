"""T5 (sentencepiece) prompts: pieces grouped into words, where a piece starting with ``▁`` starts a word.

SD3 and FLUX feed a T5 encoder the prompt padded to ``max_sequence_length``; the transformer attends
to every one of those positions. :func:`tokenize_sequence` reads a prompt as the pipeline's
``_get_t5_prompt_embeds`` does and keeps the pieces up to the first EOS; :func:`group_pieces` makes
words of them. A tokenizer whose pieces carry no ``▁`` (a CLIP BPE tokenizer in the T5 slot, as in
the tests' tiny pipelines) is grouped by CLIP's ``</w>`` rule instead.
"""

from __future__ import annotations

from typing import Any

from .attention import PromptTokens, Word, group_words

#: sentencepiece's word-boundary mark (U+2581), the first character of a piece that starts a word.
WORD_START = "\u2581"


def group_pieces(pieces: list[str], special: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, tuple[int, ...]]]:
    """Group sentencepiece pieces into words: a piece starting with ``▁`` starts a new word.

    Args:
        pieces: the pieces, e.g. ``["▁a", "▁red", "▁cir", "cle", "</s>"]``.
        special: pieces that belong to no word (EOS, padding, ...); they also end the current word.

    Returns:
        ``(text, piece indices)`` per word, e.g. ``[("a", (0,)), ("red", (1,)), ("circle", (2, 3))]``; a
        lone ``▁`` piece starts a word that its following pieces complete.
    """
    words: list[tuple[str, tuple[int, ...]]] = []
    current: list[int] = []

    def close() -> None:
        if current:
            text = "".join(pieces[j] for j in current).replace(WORD_START, " ").strip()
            words.append((text, tuple(current)))

    for i, piece in enumerate(pieces):
        if piece in special:
            close()
            current = []
            continue
        if piece.startswith(WORD_START) and current:
            close()
            current = []
        current.append(i)
    close()
    return words


def tokenize_sequence(tokenizer: Any, text: str, max_length: int) -> PromptTokens:
    """Tokenize like the pipelines' ``_get_t5_prompt_embeds`` (padded to ``max_length``) and keep up to the first EOS.

    Args:
        tokenizer: the pipeline's T5 tokenizer (``tokenizer_3`` for SD3, ``tokenizer_2`` for FLUX).
        text: the prompt.
        max_length: the run's ``max_sequence_length``.

    Returns:
        The pieces up to and including the first EOS, their words, and the pieces truncation dropped.
    """
    ids = tokenizer(text, padding="max_length", max_length=max_length, truncation=True,
                    add_special_tokens=True).input_ids  # fmt: skip
    full = tokenizer(text, truncation=False, add_special_tokens=True).input_ids
    eos = tokenizer.eos_token_id
    end = ids.index(eos) + 1 if eos in ids else len(ids)
    ids = list(ids[:end])
    dropped = list(full[max_length - 1 : -1]) if len(full) > max_length else []
    tokens = tokenizer.convert_ids_to_tokens(ids)
    if any(tok.startswith(WORD_START) for tok in tokens):
        special = set(tokenizer.all_special_tokens)
        words = [Word(t, idx) for t, idx in group_pieces(tokens, special)]
    else:  # a CLIP BPE tokenizer in the T5 slot
        words = group_words(tokenizer, tokens, ids)
    return PromptTokens(ids=ids, tokens=tokens, words=words, truncated=tokenizer.convert_ids_to_tokens(dropped))
