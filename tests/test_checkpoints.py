"""Checkpoints the project ships or writes load with every key in place, on any supported transformers.

transformers 4.x re-initialises (with only a warning) a ``CLIPTextModel`` saved in 5.x's unprefixed key
layout, so the toy would draw noise there. These tests load each component as the installed versions
do and fail on any missing, unexpected or mismatched key; they also require the canonical
``text_model.`` layout on disk, which both major versions load (5.x loads the other one too, so the
loading report alone would not catch it there).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from explainer.toy import clip_keys

REPO = Path(__file__).resolve().parent.parent
ASSET_MODELS = sorted(p.parent for p in (REPO / "assets").rglob("model_index.json"))


def loading_problems(folder: Path) -> dict[str, dict]:
    """Every component of a diffusers folder with weights, loaded as the installed libraries load it.

    Returns:
        ``{component: {"missing_keys": [...], "unexpected_keys": [...], "mismatched_keys": [...]}}``
        holding only the non-empty lists.
    """
    import diffusers
    import transformers

    index = json.loads((folder / "model_index.json").read_text())
    problems: dict[str, dict] = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        library, cls_name = spec
        if not any((folder / name).glob("*.safetensors")):
            continue
        cls = getattr(diffusers if library == "diffusers" else transformers, cls_name)
        _, info = cls.from_pretrained(str(folder / name), output_loading_info=True, torch_dtype=torch.float32)
        bad = {k: list(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if bad:
            problems[name] = bad
    return problems


def text_encoder_keys(folder: Path) -> list[str]:
    with safe_open(str(folder / "text_encoder" / "model.safetensors"), "pt") as f:
        return list(f.keys())


def test_the_assets_hold_a_model():
    assert ASSET_MODELS, "no model_index.json under assets/"


@pytest.mark.parametrize("folder", ASSET_MODELS, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_checkpoints_load_with_every_key(folder):
    assert loading_problems(folder) == {}


@pytest.mark.parametrize("folder", ASSET_MODELS, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_text_encoder_is_in_the_canonical_layout(folder):
    keys = text_encoder_keys(folder)
    assert keys and all(k.startswith(clip_keys.PREFIX) for k in keys), [k for k in keys if not k.startswith("text_model.")]


def test_the_old_layout_is_caught_and_rewritten(tmp_path):
    """The check above fails on a 5.x-layout file, and rewrite_canonical repairs it without changing a weight."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "toy"
    shutil.copytree(ASSET_MODELS[0], folder)
    path = folder / "text_encoder" / "model.safetensors"
    weights = load_file(str(path))
    save_file({k.removeprefix("text_model."): v for k, v in weights.items()}, str(path), metadata={"format": "pt"})
    assert not any(k.startswith("text_model.") for k in text_encoder_keys(folder))
    clip_keys.rewrite_canonical(path)
    again = load_file(str(path))
    assert again.keys() == weights.keys()
    assert all(torch.equal(again[k], weights[k]) for k in weights)


def test_fit_to_maps_either_layout_onto_the_live_module():
    from transformers import CLIPTextConfig, CLIPTextModel

    module = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                          num_hidden_layers=1, vocab_size=50, max_position_embeddings=8))
    live = module.state_dict()
    for state in (clip_keys.canonical(live), {k.removeprefix("text_model."): v for k, v in live.items()}):
        fitted = clip_keys.fit_to(state, module)
        assert fitted.keys() == live.keys()
        module.load_state_dict(fitted, strict=True)
