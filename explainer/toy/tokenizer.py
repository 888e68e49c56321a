"""Build the real CLIP BPE tokenizer files from the vocabulary in the ``open-clip-torch`` wheel.

The result (``vocab.json`` + ``merges.txt``) loads with ``transformers.CLIPTokenizer`` and
tokenizes exactly like Stable Diffusion 1.x's tokenizer. ``open_clip`` is located with
``importlib.util.find_spec`` and never imported (importing it pulls torchvision).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# Same values as the tokenizer_config.json of SD 1.x (openai/clip-vit-large-patch14).
TOKENIZER_CONFIG = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "model_max_length": 77,
    "do_lower_case": True,
    "tokenizer_class": "CLIPTokenizer",
}


def find_bpe_vocab() -> Path:
    """Return the path of the BPE merges file shipped inside the ``open-clip-torch`` wheel.

    Raises:
        FileNotFoundError: when ``open-clip-torch`` is not installed.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "open-clip-torch is not installed; install it with "
            "`pip install --no-deps open-clip-torch` to build the CLIP vocabulary."
        )
    path = Path(spec.origin).parent / BPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{BPE_FILE} not found in the open-clip-torch package at {path.parent}")
    return path


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    # The reversible byte -> printable unicode map of GPT-2 / CLIP.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_vocab_and_merges(bpe_path: str | Path | None = None) -> tuple[dict[str, int], list[str]]:
    """Return CLIP's token→id vocabulary and its ordered BPE merges.

    Args:
        bpe_path: the ``bpe_simple_vocab_16e6.txt.gz`` file; found in ``open-clip-torch`` if omitted.

    Returns:
        ``(vocab, merges)`` in the order OpenAI's ``SimpleTokenizer`` builds them (49,408 tokens).
    """
    path = Path(bpe_path) if bpe_path is not None else find_bpe_vocab()
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    symbols = symbols + [s + "</w>" for s in symbols]
    symbols += ["".join(m.split()) for m in merges]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(symbols)}, merges


def write_clip_tokenizer(out_dir: str | Path, bpe_path: str | Path | None = None) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs that ``CLIPTokenizer`` loads.

    Args:
        out_dir: folder to write into (created if needed).
        bpe_path: optional path of the BPE file; see :func:`clip_vocab_and_merges`.

    Returns:
        The folder, ready for ``CLIPTokenizer.from_pretrained(out_dir)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges(bpe_path)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    special = {k: TOKENIZER_CONFIG[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(write_clip_tokenizer(sys.argv[1] if len(sys.argv) > 1 else "assets/toy/tokenizer"))
