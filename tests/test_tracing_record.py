"""What a trace records: shapes, dtypes, tokens, attention values, recording modes, partial runs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import explainer
from explainer.tracing.attention import cross_attention_modules

PROMPT = "a red cube beside a blue sphere"


def test_shapes_and_dtypes(pipe, basic_trace):
    tr = basic_trace
    s = tr.num_steps
    c = pipe.unet.config.in_channels
    h = w = pipe.unet.config.sample_size
    assert s == 3
    assert tr.latents.shape == (s + 1, c, h, w) and tr.latents.dtype == np.float16
    for name in ("x0", "eps_cond", "eps_uncond"):
        arr = getattr(tr, name)
        assert arr.shape == (s, c, h, w) and arr.dtype == np.float16, name
    for name in ("timesteps", "sigmas", "alphas_cumprod", "x0_coef_sample", "x0_coef_model"):
        assert getattr(tr, name).shape == (s,), name
    assert tr.input_scale.shape == (s + 1,)
    assert tr.final_image.size == (tr.width, tr.height) == (w * pipe.vae_scale_factor, h * pipe.vae_scale_factor)
    # DDIM is variance preserving: its timesteps' abar equal the scheduler's table
    sched = explainer.SCHEDULERS["ddim"].from_config(pipe.scheduler.config)
    table = sched.alphas_cumprod.double().numpy()
    assert np.allclose(tr.alphas_cumprod, table[tr.timesteps.astype(int)], rtol=1e-6)
    assert np.all(np.diff(tr.sigmas) < 0)  # noise goes down
    assert tr.attention_mode == "per_layer"
    n_layers = len(cross_attention_modules(pipe.unet))
    assert len(tr.attention_layers) == n_layers
    for branch, tokens in (("cond", tr.tokens), ("uncond", tr.negative_tokens)):
        total = 0
        for group in {la.group for la in tr.attention_layers}:
            arr = tr.attention[f"{branch}/{group}"]  # [step, layer, token, h, w]
            members = [la for la in tr.attention_layers if la.group == group]
            assert arr.dtype == np.float16
            assert arr.shape == (s, len(members), len(tokens), members[0].height, members[0].width)
            total += len(members)
        assert total == n_layers


def test_metadata(pipe, basic_trace):
    meta = basic_trace.metadata
    for key in ("model", "scheduler", "seed", "guidance_scale", "num_inference_steps", "height", "width",
                "versions", "timings", "prediction_type", "model_output", "record"):  # fmt: skip
        assert key in meta, key
    assert meta["seed"] == 0 and meta["guidance_scale"] == 7.5 and meta["num_inference_steps"] == 3
    assert meta["scheduler"]["class"] == "DDIMScheduler" and meta["scheduler"]["config"]["beta_schedule"] == "scaled_linear"
    assert meta["model"]["dtype"] == "float32" and meta["model"]["tokenizer_max_length"] == pipe.tokenizer.model_max_length
    assert {"torch", "diffusers", "transformers"} <= set(meta["versions"])
    assert meta["timings"]["run_s"] > 0
    assert meta["batch_order"] == "uncond, cond"  # read from the embeddings, as diffusers builds it


def test_tokens_and_words(basic_trace, pipe):
    tr = basic_trace
    assert tr.tokens[0] == pipe.tokenizer.bos_token and tr.tokens[-1] == pipe.tokenizer.eos_token
    assert tr.tokens[1:-1] == ["a</w>", "red</w>", "cube</w>", "beside</w>", "a</w>", "blue</w>", "sphere</w>"]
    assert tr.token_ids == pipe.tokenizer(PROMPT).input_ids
    assert [w.text for w in tr.words] == PROMPT.split()
    assert tr.negative_tokens == [pipe.tokenizer.bos_token, pipe.tokenizer.eos_token]
    assert tr.truncated_tokens == []


def test_multi_token_word_grouping(pipe):
    tr = explainer.trace(pipe, "unbelievably naïve déjà", num_inference_steps=1, record="none", progress=False)
    texts = [w.text for w in tr.words]
    assert texts == ["unbelievably", "naïve", "déjà"]
    assert any(len(w.token_indices) > 1 for w in tr.words)
    flat = [i for w in tr.words for i in w.token_indices]
    assert flat == list(range(1, len(tr.tokens) - 1))


def _reference_probs(pipe, prompt, steps, layer_name):
    """attn.get_attention_scores on the layer's real inputs during a plain pipe() call (step 0)."""
    module = dict(pipe.unet.named_modules())[layer_name]
    seen = []

    def grab(mod, args, kwargs, output):
        if not seen:
            hidden = args[0]
            context = kwargs["encoder_hidden_states"]
            q = mod.head_to_batch_dim(mod.to_q(hidden))
            k = mod.head_to_batch_dim(mod.to_k(context))
            probs = mod.get_attention_scores(q, k, None)  # [B * H, N, T]
            seen.append(probs.reshape(hidden.shape[0], mod.heads, *probs.shape[1:]))

    handle = module.register_forward_hook(grab, with_kwargs=True)
    try:
        pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="latent")
    finally:
        handle.remove()
    return seen[0]  # [B, H, N, T]


def test_attention_rows_sum_to_one_and_match_reference(pipe):
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=2, progress=False,
                         record={"attention": "per_head", "tokens": "all", "dtype": "float32"})  # fmt: skip
    max_len = pipe.tokenizer.model_max_length
    for key, arr in tr.attention.items():  # [step, layer, head, token, h, w]
        assert arr.shape[3] == max_len
        sums = arr.astype(np.float64).sum(axis=3)
        assert np.allclose(sums, 1.0, atol=5e-3), key
    layer = tr.attention_layers[0]
    ref = _reference_probs(pipe, PROMPT, 2, layer.name).float().numpy()  # [B, H, N, T]
    got_cond = tr.attention[f"cond/{layer.group}"][0, layer.slot]  # [head, token, h, w]
    got_uncond = tr.attention[f"uncond/{layer.group}"][0, layer.slot]
    heads = got_cond.shape[0]
    cond = got_cond.reshape(heads, max_len, -1).transpose(0, 2, 1)
    uncond = got_uncond.reshape(heads, max_len, -1).transpose(0, 2, 1)
    assert np.allclose(cond, ref[1], atol=2e-3)  # diffusers' batch: [uncond, cond]
    assert np.allclose(uncond, ref[0], atol=2e-3)
    assert not np.allclose(cond, uncond, atol=1e-3)


def test_record_modes_agree(pipe):
    common = dict(num_inference_steps=2, scheduler="euler", progress=False)
    per_head = explainer.trace(pipe, PROMPT, record="per_head", **common)
    per_layer = explainer.trace(pipe, PROMPT, record="per_layer", **common)
    per_step = explainer.trace(pipe, PROMPT, record="per_step", **common)
    none = explainer.trace(pipe, PROMPT, record="none", **common)
    assert np.array_equal(np.asarray(none.final_image), np.asarray(per_head.final_image))
    assert none.attention == {} and none.attention_mode == "none"
    for la in per_layer.attention_layers:
        head_key = next(k for k in per_head.attention if k.startswith(f"cond/{la.height}x{la.width}"))
        mean = per_head.attention[head_key][:, la.slot].astype(np.float32).mean(axis=1)
        assert np.allclose(per_layer.attention[f"cond/{la.group}"][:, la.slot], mean, atol=2e-3)
    steps = per_step.attention["cond/steps"]  # [step, token, h, w]
    assert steps.shape == (2, len(per_step.tokens), *per_step.latents.shape[-2:])
    # per_step = mean over layers of the per-layer maps upsampled to the latent grid
    maps = []
    for la in per_layer.attention_layers:
        arr = torch.from_numpy(per_layer.attention[f"cond/{la.group}"][:, la.slot].astype(np.float32))
        maps.append(torch.nn.functional.interpolate(arr, size=steps.shape[-2:], mode="bilinear", align_corners=False))
    assert np.allclose(steps.astype(np.float32), torch.stack(maps).mean(0).numpy(), atol=2e-3)
    assert per_head.nbytes > per_layer.nbytes > per_step.nbytes > none.nbytes


def test_estimate_matches_actual_bytes(pipe):
    for record in ("default", "per_head", "per_step", "none", {"dtype": "float32"}):
        tr = explainer.trace(pipe, PROMPT, num_inference_steps=2, record=record, progress=False)
        image_bytes = tr.width * tr.height * 3
        assert tr.metadata["estimated_bytes"] == tr.nbytes - image_bytes, record
        assert explainer.estimate_trace_bytes(pipe, PROMPT, num_inference_steps=2, record=record) == tr.nbytes


def test_budget_error_names_the_numbers(pipe):
    with pytest.raises(explainer.TraceBudgetError, match=r"record='per_head'.*MB.*budget"):
        explainer.trace(pipe, PROMPT, num_inference_steps=2, record={"attention": "per_head", "max_bytes": 1000},
                        progress=False)  # fmt: skip


def test_guidance_off_records_one_branch(pipe):
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=2, guidance_scale=1.0, progress=False)
    assert tr.eps_uncond is None and not tr.has_uncond
    assert not any(k.startswith("uncond/") for k in tr.attention)
    assert tr.metadata["classifier_free_guidance"] is False
    assert tr.heatmap("cube").shape == (tr.height, tr.width)


def test_empty_prompt_is_unconditional_and_works(pipe):
    tr = explainer.trace(pipe, "", num_inference_steps=2, progress=False)
    assert tr.complete and tr.words == [] and len(tr.tokens) == 2
    assert tr.heatmap(0).shape == (tr.height, tr.width)


def test_long_prompt_warns_and_records_dropped_tokens(pipe):
    prompt = " ".join(["red"] * pipe.tokenizer.model_max_length)
    with pytest.warns(UserWarning, match="tokens were dropped"):
        tr = explainer.trace(pipe, prompt, num_inference_steps=1, record="none", progress=False)
    assert len(tr.tokens) == pipe.tokenizer.model_max_length
    assert tr.truncated_tokens == ["red</w>"] * 2


def _fail_on_unet_call(pipe, call: int, exc: BaseException):
    calls = {"n": 0}

    def hook(module, args):
        calls["n"] += 1
        if calls["n"] == call:
            raise exc

    return pipe.unet.register_forward_pre_hook(hook)


def test_keyboard_interrupt_returns_partial_trace(pipe):
    handle = _fail_on_unet_call(pipe, 3, KeyboardInterrupt())
    try:
        with pytest.warns(UserWarning, match="interrupted after 2 of 4 steps"):
            tr = explainer.trace(pipe, PROMPT, num_inference_steps=4, scheduler="euler", progress=False)
    finally:
        handle.remove()
    assert not tr.complete and tr.error == "KeyboardInterrupt" and tr.final_image is None
    assert tr.num_steps == 2 and tr.latents.shape[0] == 3 and tr.input_scale.shape == (3,)
    assert all(arr.shape[0] == 2 for arr in tr.attention.values())
    full = explainer.trace(pipe, PROMPT, num_inference_steps=4, scheduler="euler", progress=False)
    assert np.array_equal(tr.latents, full.latents[:3]) and np.array_equal(tr.x0, full.x0[:2])
    assert np.isclose(tr.input_scale[-1], full.input_scale[2])
    assert tr.preview(1).size == (tr.width, tr.height)


def test_exception_carries_partial_trace(pipe):
    handle = _fail_on_unet_call(pipe, 2, RuntimeError("out of memory in step 1"))
    try:
        with pytest.raises(RuntimeError, match="out of memory") as info:
            explainer.trace(pipe, PROMPT, num_inference_steps=3, progress=False)
    finally:
        handle.remove()
    partial = info.value.partial_trace
    assert not partial.complete and partial.num_steps == 1 and "out of memory" in partial.error


def test_interrupt_before_first_step(pipe):
    handle = _fail_on_unet_call(pipe, 1, KeyboardInterrupt())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr = explainer.trace(pipe, PROMPT, num_inference_steps=3, progress=False)
    finally:
        handle.remove()
    assert tr.num_steps == 0 and tr.latents.shape[0] == 1 and not tr.complete
    assert np.isfinite(tr.latents).all()  # the initial noise is known


def test_progress_bar_can_be_on(pipe, capsys):
    explainer.trace(pipe, PROMPT, num_inference_steps=2, record="none", progress=True)
    assert "trace" in capsys.readouterr().err
