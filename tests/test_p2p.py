"""Prompt-to-prompt editing: the source run is untouched, the target takes the source's attention, alignment errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import explainer
from explainer.tracing.p2p import align_tokens, fitting_limit, kept_tokens, key_mapper, self_layers
from explainer.tracing.attention import tokenize_prompt

SOURCE = "a red cube beside a blue sphere"
TARGET = "a green cube beside a blue sphere"
STEPS = 4


def edit(pipe, source=SOURCE, target=TARGET, **kw):
    kw = {"num_inference_steps": STEPS, "scheduler": "ddim", "progress": False, **kw}
    return explainer.edit(pipe, source, target, **kw)


def test_source_run_is_bit_identical_to_an_untraced_call(pipe):
    result = edit(pipe, cross_steps=1.0, self_steps=1.0)
    plain = explainer.trace(pipe, SOURCE, num_inference_steps=STEPS, scheduler="ddim", progress=False)
    sched = explainer.tracing.schedulers.resolve_scheduler("ddim", pipe.scheduler)
    original = pipe.scheduler
    pipe.scheduler = sched
    try:
        untraced = pipe(SOURCE, num_inference_steps=STEPS, generator=torch.Generator("cpu").manual_seed(0)).images[0]
    finally:
        pipe.scheduler = original
    assert np.array_equal(np.asarray(result.source.final_image), np.asarray(untraced))
    assert np.array_equal(result.source.latents, plain.latents)
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in pipe.unet.attn_processors.values())  # restored


def test_injection_changes_the_target_and_zero_steps_do_not(pipe):
    plain_target = explainer.trace(pipe, TARGET, num_inference_steps=STEPS, scheduler="ddim", progress=False)
    off = edit(pipe, cross_steps=0.0, self_steps=0.0)
    assert np.array_equal(off.target.latents, plain_target.latents)  # no step injected: the plain target run
    on = edit(pipe, cross_steps=1.0, self_steps=0.5)
    assert not np.array_equal(on.target.latents[-1], plain_target.latents[-1])
    assert on.alignment == list(range(len(on.target.tokens)))
    settings = on.target.metadata["edit"]
    assert settings["source_uid"] == on.source.uid and settings["mode"] == "replace"
    assert settings["cross_until_step"] == STEPS and settings["self_until_step"] == STEPS // 2
    assert settings["keep_context"] is True and settings["self_max_positions"] is None  # the defaults


def test_self_attention_layers_and_kept_context_each_change_the_target(pipe):
    plain_target = explainer.trace(pipe, TARGET, num_inference_steps=STEPS, scheduler="ddim", progress=False)
    # self-attention only: on no layer (at most 1 position) it is the plain target run; on every layer it is not
    none = edit(pipe, cross_steps=0.0, self_steps=1.0, self_max_positions=1)
    assert np.array_equal(none.target.latents, plain_target.latents)
    every = edit(pipe, cross_steps=0.0, self_steps=1.0)
    assert not np.array_equal(every.target.latents[-1], plain_target.latents[-1])
    # the source's text states for the unchanged tokens: another target than the maps alone
    kept = edit(pipe, cross_steps=0.5, self_steps=0.0, keep_context=True)
    own = edit(pipe, cross_steps=0.5, self_steps=0.0, keep_context=False)
    assert not np.array_equal(kept.target.latents[-1], own.target.latents[-1])
    with pytest.raises(ValueError, match="self_max_positions=0 must be a positive number"):
        edit(pipe, self_max_positions=0)


def test_kept_tokens_are_all_but_the_changed_words(pipe):
    tok = pipe.tokenizer
    src, tgt = tokenize_prompt(tok, "a red cube beside a blue sphere"), tokenize_prompt(tok, "a green cube beside a blue sphere")
    keep = kept_tokens(align_tokens(src, tgt, "replace"), src.ids, tgt.ids, 12)
    green = tgt.tokens.index("green</w>")
    assert keep.tolist() == [j != green for j in range(12)]  # BOS, the other words, EOS and padding: the source's
    added = tokenize_prompt(tok, "a red cube beside a big blue sphere")
    keep = kept_tokens(align_tokens(src, added, "refine"), src.ids, added.ids, 12)
    assert keep.tolist() == [j != added.tokens.index("big</w>") for j in range(12)]


def test_full_injection_makes_the_target_follow_the_source(pipe):
    # With every attention map the source's, the target differs from the source only through the values:
    # it is far closer to the source than a plain run of the target prompt is.
    full = edit(pipe, cross_steps=1.0, self_steps=1.0)
    plain_target = explainer.trace(pipe, TARGET, num_inference_steps=STEPS, scheduler="ddim", progress=False)
    src = full.source.latents[-1].astype(np.float32)
    assert np.abs(full.target.latents[-1] - src).mean() < np.abs(plain_target.latents[-1] - src).mean()


def test_refine_and_reweight(pipe):
    refined = edit(pipe, target="a red cube beside a big blue sphere", mode="refine")
    tokens = refined.target.tokens
    big = tokens.index("big</w>")
    assert refined.alignment[big] is None
    assert refined.alignment[big + 1] == big  # "blue" keeps the source's "blue"
    heavy = edit(pipe, target=SOURCE, mode="reweight", weights={"red": 3.0}, cross_steps=1.0, self_steps=0.0)
    light = edit(pipe, target=SOURCE, mode="reweight", weights={"red": 1.0}, cross_steps=1.0, self_steps=0.0)
    assert not np.array_equal(heavy.target.latents[-1], light.target.latents[-1])


def test_alignment_errors(pipe):
    tok = pipe.tokenizer
    src = tokenize_prompt(tok, "a red cube")
    with pytest.raises(ValueError, match=r"cannot align 'red' \(1 token\) with 'reddishbrownish' \(\d tokens\)"):
        align_tokens(src, tokenize_prompt(tok, "a reddishbrownish cube"), "replace")
    with pytest.raises(ValueError, match=r"source has 3 words.*target 4.*mode='refine'"):
        align_tokens(src, tokenize_prompt(tok, "a big red cube"), "replace")
    with pytest.raises(ValueError, match=r"lacks the source's \['red'\]"):
        align_tokens(src, tokenize_prompt(tok, "a green cube"), "refine")
    with pytest.raises(ValueError, match="mode='swap' is not allowed"):
        align_tokens(src, src, "swap")
    index, alpha = key_mapper([0, 1, None, 2, 3], 4, 8)  # one word added: pads shift by one
    assert index.tolist() == [0, 1, 2, 2, 3, 4, 5, 6] and alpha.tolist() == [1, 1, 0, 1, 1, 1, 1, 1]


def test_edit_argument_errors(pipe, basic_trace):
    with pytest.raises(ValueError, match="needs weights="):
        edit(pipe, target=SOURCE, mode="reweight")
    with pytest.raises(ValueError, match="weights names 'cat', not a word of the target prompt"):
        edit(pipe, weights={"cat": 2.0})
    with pytest.raises(ValueError, match=r"cross_steps=1.5 must be a fraction"):
        edit(pipe, cross_steps=1.5)
    with pytest.raises(ValueError, match="edit\\(\\) re-runs a text-to-image trace of source_prompt='a red cube'"):
        explainer.edit(basic_trace, "a red cube", TARGET, pipe=pipe)


def test_auto_self_layers_drop_the_largest_grids_to_fit_the_budget(pipe):
    from explainer.tracing.families import family_for

    _, h, w = family_for(pipe).latent_shape(pipe, 32, 32)
    layers = self_layers(pipe, 32, 32)  # the tiny pipeline: attention at the latent's grid and at half of it
    full, half = h * w, (h // 2) * (w // 2)
    assert sorted({p for p, _ in layers}) == [half, full]
    assert all(b == pipe.unet.dtype.itemsize * p * p * layer_heads for (p, b), layer_heads in
               zip(layers, [m.heads for n, m in pipe.unet.named_modules() if n.endswith("attn1")]))  # fmt: skip
    every = sum(b for _, b in layers)
    assert fitting_limit(layers, 3, 3 * every) is None  # all fit: every layer
    small = sum(b for p, b in layers if p <= half)
    assert fitting_limit(layers, 3, 3 * every - 1) == half  # the full-resolution layers are dropped first
    assert fitting_limit(layers, 3, 3 * small - 1) == 0  # nothing fits: no self-attention injection
