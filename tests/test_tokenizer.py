"""The shipped tokenizer is the real CLIP BPE tokenizer, rebuilt from open-clip-torch's vocabulary."""

import importlib.util
import json
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from explainer.toy.tokenizer import write_clip_tokenizer

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "toy" / "tokenizer"


def test_shipped_tokenizer_gives_sd1_ids():
    tok = CLIPTokenizer.from_pretrained(str(SHIPPED))
    assert len(tok) == 49408 and tok.model_max_length == 77
    ids = tok("an astronaut riding a horse, photorealistic").input_ids
    assert ids == [49406, 550, 18376, 6765, 320, 4558, 267, 1153, 16157, 49407]
    assert tok.convert_ids_to_tokens(ids)[-3:] == ["photo", "realistic</w>", "<|endoftext|>"]


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None,
                    reason="open-clip-torch not installed (pip install --no-deps open-clip-torch)")
def test_builder_reproduces_the_shipped_files(tmp_path):
    out = write_clip_tokenizer(tmp_path / "tok")
    assert json.loads((out / "vocab.json").read_text()) == json.loads((SHIPPED / "vocab.json").read_text())
    assert (out / "merges.txt").read_text() == (SHIPPED / "merges.txt").read_text()
