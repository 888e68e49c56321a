"""FLUX.1 through the family layer: parity with diffusers' own pipelines (with and without guidance_embeds,
text-to-image and image-to-image, true CFG), joint attention of a double- and a single-stream block against an
independent softmax over q and k (QK-norms and RoPE applied), where single-stream blocks keep the text, the
flow x0, unpacking, save/load and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _flux import build_flux_pipeline
from diffusers import FluxImg2ImgPipeline, FluxPipeline
from diffusers.models.embeddings import apply_rotary_emb
from PIL import Image

import explainer
from explainer.tracing.families import FluxFamily, family_for
from explainer.tracing.families.flux import block_kind, pack, unpack

PROMPT = "a red cube beside a blue sphere"
SEQ = 16  # max_sequence_length: T5 keys of every joint softmax
RUN = dict(height=32, width=32, num_inference_steps=2, max_sequence_length=SEQ)


@pytest.fixture(scope="module")
def dev():
    """Guidance-distilled (FLUX.1-dev style): 32x32 images, 16x16x16 latents, 8x8 packed tokens."""
    return build_flux_pipeline(guidance_embeds=True)


@pytest.fixture(scope="module")
def schnell():
    """No guidance embedding (FLUX.1-schnell style)."""
    return build_flux_pipeline(guidance_embeds=False, seed=1)


def _image() -> Image.Image:
    yy, xx = np.mgrid[0:32, 0:32]
    return Image.fromarray(np.stack([xx * 8, yy * 8, (xx + yy) * 4], -1).astype(np.uint8), "RGB")


def _reference(pipe, **kwargs) -> np.ndarray:
    out = pipe(generator=torch.Generator().manual_seed(0), **kwargs)
    return np.asarray(out.images[0])


@pytest.mark.parametrize("which", ["dev", "schnell"])
def test_txt2img_parity_bit_for_bit(which, request):
    pipe = request.getfixturevalue(which)
    assert isinstance(family_for(pipe), FluxFamily)
    tr = explainer.trace(pipe, PROMPT, seed=0, record={"dtype": "float32"}, progress=False, **RUN)
    np.testing.assert_array_equal(np.asarray(tr.final_image), _reference(pipe, prompt=PROMPT, **RUN))
    packed = pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0), output_type="latent", **RUN).images
    final = FluxPipeline._unpack_latents(packed, 32, 32, pipe.vae_scale_factor)[0]
    assert torch.equal(torch.from_numpy(tr.latents[-1]), final)  # stored unpacked, [C, h, w]
    assert tr.latents.shape == (3, 16, 16, 16) and tr.family == "flux"
    assert not tr.has_uncond
    cond = tr.metadata["conditioning"]
    assert cond["guidance_embeds"] is (which == "dev")
    assert cond["guidance_embedding"] == (3.5 if which == "dev" else None)
    assert cond["text_seq_len"] == SEQ and cond["image_seq_len"] == 64


def test_img2img_parity_and_schedule(dev):
    image = _image()
    tr = explainer.trace(dev, PROMPT, image=image, strength=0.6, seed=0, progress=False, num_inference_steps=5,
                         max_sequence_length=SEQ)
    ref = _reference(FluxImg2ImgPipeline.from_pipe(dev), prompt=PROMPT, image=image, strength=0.6,
                     num_inference_steps=5, max_sequence_length=SEQ, height=32, width=32)
    np.testing.assert_array_equal(np.asarray(tr.final_image), ref)
    assert tr.metadata["start_step"] == 2 and tr.num_steps == 3  # int(5 - 5 * 0.6) skipped, as diffusers does
    sched = tr.metadata["schedule"]  # the dynamic resolution shift actually used
    assert sched["kind"] == "flow" and sched["mu_used"] is True
    cfg = dev.scheduler.config
    slope = (cfg.max_shift - cfg.base_shift) / (cfg.max_image_seq_len - cfg.base_image_seq_len)
    assert sched["mu"] == pytest.approx(cfg.base_shift + slope * (64 - cfg.base_image_seq_len))


def test_true_cfg_two_branches_and_flow_x0(schnell):
    kwargs = dict(negative_prompt="a green cone", true_cfg_scale=3.0, **RUN)
    tr = explainer.trace(schnell, PROMPT, seed=0, record={"dtype": "float32"}, progress=False, **kwargs)
    np.testing.assert_array_equal(np.asarray(tr.final_image), _reference(schnell, prompt=PROMPT, **kwargs))
    assert tr.has_uncond and tr.negative_tokens[1:4] == ["a</w>", "green</w>", "cone</w>"]
    assert set(tr.attention) == {"cond/8x8", "uncond/8x8"}
    assert not np.array_equal(tr.eps_cond, tr.eps_uncond)
    for step in range(tr.num_steps):  # x0 = x_t - sigma * v, v the guided velocity
        v = tr.eps_uncond[step] + 3.0 * (tr.eps_cond[step] - tr.eps_uncond[step])
        np.testing.assert_allclose(tr.x0[step], tr.latents[step] - tr.sigmas[step] * v, rtol=1e-5, atol=1e-5)
    # the scheduler's own step from the recorded latent and velocity gives the next latent
    np.testing.assert_allclose(tr.latents[1], tr.latents[0] + (tr.sigmas[1] - tr.sigmas[0]) *
                               (tr.eps_uncond[0] + 3.0 * (tr.eps_cond[0] - tr.eps_uncond[0])), atol=1e-5)  # fmt: skip


def _qk(attn, hidden, context, rotary):
    """Independent q (image rows) and k (all keys, text first) of one FLUX attention call, [B, H, S, d]."""
    heads = lambda x: x.unflatten(-1, (attn.heads, -1))  # noqa: E731
    q, k = attn.norm_q(heads(attn.to_q(hidden))), attn.norm_k(heads(attn.to_k(hidden)))
    if context is not None:
        q = torch.cat([attn.norm_added_q(heads(attn.add_q_proj(context))), q], dim=1)
        k = torch.cat([attn.norm_added_k(heads(attn.add_k_proj(context))), k], dim=1)
    q, k = apply_rotary_emb(q, rotary, sequence_dim=1), apply_rotary_emb(k, rotary, sequence_dim=1)
    return q.transpose(1, 2).float(), k.transpose(1, 2).float()


def test_joint_attention_double_and_single_stream(dev):
    seen = {}

    def grab(name):
        def hook(module, args, kwargs):
            seen.setdefault(name, kwargs)
        return hook

    blocks = {"transformer_blocks.0": dev.transformer.transformer_blocks[0],
              "single_transformer_blocks.0": dev.transformer.single_transformer_blocks[0]}  # fmt: skip
    handles = [b.attn.register_forward_pre_hook(grab(n + ".attn"), with_kwargs=True) for n, b in blocks.items()]
    handles += [b.register_forward_pre_hook(grab(n), with_kwargs=True) for n, b in blocks.items()]
    try:
        tr = explainer.trace(dev, PROMPT, seed=0, record="per_layer", progress=False, **RUN)
    finally:
        for h in handles:
            h.remove()
    names = [la.name for la in tr.attention_layers]
    assert names == ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn"]
    assert tr.metadata["model"]["attention_blocks"] == {names[0]: "double-stream", names[1]: "single-stream"}
    assert [block_kind(n) for n in names] == ["double-stream", "single-stream"]
    t = len(tr.tokens)  # BOS .. EOS of the T5 segment: the first t of the SEQ text keys
    n = 64  # 8x8 packed image tokens
    # single-stream: the block receives text and image separately and concatenates [text, image]; its
    # attention input holds SEQ + n tokens, and the text is the first SEQ of them
    single = seen["single_transformer_blocks.0"]
    assert single["encoder_hidden_states"].shape[1] == SEQ and single["hidden_states"].shape[1] == n
    assert seen["single_transformer_blocks.0.attn"]["hidden_states"].shape[1] == SEQ + n
    for la in tr.attention_layers:
        kw = seen[la.name]
        attn = dict(dev.transformer.named_modules())[la.name]
        with torch.no_grad():
            q, k = _qk(attn, kw["hidden_states"], kw.get("encoder_hidden_states"), kw["image_rotary_emb"])
            probs = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)  # [B, H, SEQ + n, SEQ + n]
        np.testing.assert_allclose(probs.sum(-1).numpy(), 1.0, atol=1e-5)  # each row over all keys sums to 1
        expected = probs[0, :, SEQ:, :t].mean(0).T.reshape(t, 8, 8).numpy()  # image queries -> text keys
        recorded = tr.attention[f"cond/{la.group}"][0, la.slot].astype(np.float32)  # step 0, [t, h, w]
        np.testing.assert_allclose(recorded, expected, atol=2e-3, rtol=2e-3)  # fp16 storage
        assert (recorded.sum(0) < 1).all()  # the image keys took the rest of each row


def test_unpack_round_trip():
    rng = torch.Generator().manual_seed(0)
    latent = torch.randn(16, 6, 10, generator=rng)
    packed = pack(latent)
    assert packed.shape == (15, 64)
    ours = FluxPipeline._pack_latents(latent[None], 1, 16, 6, 10)[0]
    assert torch.equal(packed, ours)
    assert torch.equal(unpack(packed, 16, 6, 10), latent)
    assert torch.equal(unpack(packed, 16, 6, 10), FluxPipeline._unpack_latents(packed[None], 12, 20, 2)[0])


def test_save_load_round_trip(dev, tmp_path):
    tr = explainer.trace(dev, PROMPT, seed=0, progress=False, **RUN)
    back = explainer.load_trace(tr.save(tmp_path / "flux.trace", quantize_attention=False))
    assert back.family == "flux" and back.tokens == tr.tokens
    for name in ("latents", "x0", "eps_cond", "sigmas", "timesteps"):
        np.testing.assert_array_equal(getattr(back, name), getattr(tr, name))
    for key, value in tr.attention.items():
        np.testing.assert_array_equal(back.attention[key], value)
    small = explainer.load_trace(tr.save(tmp_path / "flux_uint8.trace"))  # default: uint8 maps, each within 1/255 of its peak
    for key, value in tr.attention.items():
        x, y = np.asarray(small.attention[key], np.float32), value.astype(np.float32)
        assert (np.abs(x - y) <= y.max(axis=(-2, -1), keepdims=True) / 255 + 1e-7).all(), key
    assert back.metadata["conditioning"]["guidance_embedding"] == 3.5
    assert back.metadata["schedule"]["mu"] == tr.metadata["schedule"]["mu"]


def test_bad_input(dev):
    with pytest.raises(ValueError, match=r"max_sequence_length=600 is over the T5 limit.*512"):
        explainer.trace(dev, PROMPT, max_sequence_length=600, height=32, width=32)
    with pytest.raises(ValueError, match=r"height=30 .*multiple of 4"):
        explainer.trace(dev, PROMPT, height=30, width=32, max_sequence_length=SEQ)
    with pytest.warns(UserWarning, match=r"true_cfg_scale=4 has no effect without negative_prompt"):
        tr = explainer.trace(dev, PROMPT, true_cfg_scale=4.0, seed=0, progress=False, num_inference_steps=1,
                             height=32, width=32, max_sequence_length=SEQ)
    with pytest.raises(ValueError, match=r"guidance-distilled"):
        tr.what_if_x0(0, 5.0)
    assert "guidance_embeds=True" in tr.metadata["unconditional"]
    with pytest.raises(ValueError, match=r"true_cfg_scale=-1"):
        explainer.trace(dev, PROMPT, true_cfg_scale=-1, height=32, width=32)
    with pytest.raises(explainer.UnsupportedPipelineError, match=r"mask= \(inpainting\) is not supported for FLUX"):
        explainer.trace(dev, PROMPT, image=_image(), mask=Image.new("L", (32, 32), 255), max_sequence_length=SEQ)


def test_bad_input_more(schnell):
    """The rest of the issue's bad-input list: width off the packing, a non-integer max_sequence_length, a negative
    prompt without true_cfg_scale (warned, as its true_cfg_scale twin), what-if without true CFG on a schnell-style
    model (says how to get the second branch)."""
    with pytest.raises(ValueError, match=r"width=34 .*multiple of 4"):  # VAE factor 2 x the 2x2 packing
        explainer.trace(schnell, PROMPT, height=32, width=34, max_sequence_length=SEQ)
    with pytest.raises(TypeError, match=r"max_sequence_length must be an integer"):
        explainer.trace(schnell, PROMPT, max_sequence_length="256", height=32, width=32)
    with pytest.warns(UserWarning, match=r"negative_prompt is ignored: FluxPipeline uses it only with true_cfg_scale > 1"):
        tr = explainer.trace(schnell, PROMPT, negative_prompt="blurry", seed=0, progress=False, num_inference_steps=1,
                             height=32, width=32, max_sequence_length=SEQ)  # fmt: skip
    assert not tr.has_uncond and tr.negative_tokens == []
    with pytest.raises(ValueError, match=r"trace again with true_cfg_scale > 1 and a negative_prompt"):
        tr.what_if(0, 3.0)
    assert "guidance_embeds" in tr.metadata["unconditional"]


def test_true_cfg_what_if_uses_true_cfg_scale(schnell):
    tr = explainer.trace(schnell, PROMPT, negative_prompt="a green cone", true_cfg_scale=3.0, seed=0,
                         progress=False, **RUN)  # fmt: skip
    assert tr.cfg_scale == 3.0 and tr.guidance_scale == 3.5  # guidance_scale: the pipeline's (unused) embedding value
    np.testing.assert_allclose(tr.what_if_x0(0, 3.0), tr.x0[0].astype(np.float32), atol=1e-6)
    v = lambda g: tr.eps_uncond[0].astype(np.float32) + g * (tr.eps_cond[0] - tr.eps_uncond[0]).astype(np.float32)  # noqa: E731
    expected = tr.x0[0].astype(np.float32) - tr.sigmas[0] * (v(5.0) - v(3.0))
    np.testing.assert_allclose(tr.what_if_x0(0, 5.0), expected, atol=2e-3)
    seg = tr.metadata["token_segments"]["uncond"]
    assert [s["combine"] for s in seg] == ["sequence", "pooled"] and seg[0]["tokenizer"] == "tokenizer_2"


def test_latent_rgb_published_flux_factors_or_fit(dev):
    from explainer.tracing.previews import FLUX_LATENT_RGB_FACTORS, choose_latent_rgb, preset_latent_rgb

    preset = preset_latent_rgb(dev.vae.config)  # FLUX's scaling/shift and 16 channels: ComfyUI's Flux factors
    assert preset.source == "comfyui-flux" and preset.factors.shape == (len(FLUX_LATENT_RGB_FACTORS), 3)
    tr = explainer.trace(dev, PROMPT, seed=0, progress=False, **RUN)
    # random VAE weights: the published factors do not explain the image, so the least-squares fit is used
    chosen = choose_latent_rgb(dev.vae.config, torch.from_numpy(tr.latents[-1].astype(np.float32)), tr.final_image)
    assert chosen.source == "fit:final-image" and tr.latent_rgb.source == "fit:final-image"
    assert tr.preview(0).size == (32, 32)  # the unpacked [C, h, w] x0 through the fitted map, at image size


def test_concept_attention_maps(dev, pipe):
    """ConceptAttention-style maps: softmax over text tokens of image-output . text-output, per head, head-averaged;
    the image is the same as without recording them."""
    seen = {}

    def grab(name):
        def hook(module, args, kwargs):
            seen.setdefault(name, kwargs)
        return hook

    named = dict(dev.transformer.named_modules())
    sites = ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn"]
    handles = [named[n].register_forward_pre_hook(grab(n), with_kwargs=True) for n in sites]
    try:
        tr = explainer.trace(dev, PROMPT, seed=0, progress=False, record={"method": "concept", "tokens": "all"}, **RUN)
    finally:
        for h in handles:
            h.remove()
    plain = explainer.trace(dev, PROMPT, seed=0, progress=False, **RUN)
    np.testing.assert_array_equal(np.asarray(tr.final_image), np.asarray(plain.final_image))
    assert tr.metadata["record"]["method"] == "concept" and "ConceptAttention" in tr.metadata["attention_method"]
    for la in tr.attention_layers:
        kw, attn = seen[la.name], named[la.name]
        with torch.no_grad():
            q, k = _qk(attn, kw["hidden_states"], kw.get("encoder_hidden_states"), kw["image_rotary_emb"])
            context = kw.get("encoder_hidden_states")
            v = attn.to_v(kw["hidden_states"]).unflatten(-1, (attn.heads, -1))
            if context is not None:
                v = torch.cat([attn.add_v_proj(context).unflatten(-1, (attn.heads, -1)), v], dim=1)
            out = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1) @ v.transpose(1, 2).float()  # [B, H, S, d]
            maps = (out[:, :, SEQ:] @ out[:, :, :SEQ].transpose(-1, -2)).softmax(-1).mean(1)[0]  # [n, SEQ]
        recorded = tr.attention[f"cond/{la.group}"][0, la.slot].astype(np.float32)  # [SEQ, 8, 8]
        np.testing.assert_allclose(recorded, maps.T.reshape(SEQ, 8, 8).numpy(), atol=2e-3, rtol=2e-3)
        np.testing.assert_allclose(recorded.sum(0), 1.0, atol=3e-3)  # rows over all text tokens sum to 1
    with pytest.raises(ValueError, match=r"record\['method'\]='concept' is available for Stable Diffusion 3 and FLUX.1 pipelines only"):
        explainer.trace(pipe, PROMPT, num_inference_steps=1, record={"method": "concept"})
    with pytest.raises(ValueError, match=r"record\['method'\]='rollout' is not allowed"):
        explainer.trace(dev, PROMPT, record={"method": "rollout"}, **RUN)


@pytest.mark.parametrize("record", ["default", "per_step", "per_head", "none"])
def test_size_estimate_equals_trace(schnell, record):
    for kwargs in ({"height": 32, "width": 32}, {"negative_prompt": "blurry and dark", "true_cfg_scale": 2.0,
                                                  "image": _image()}):  # fmt: skip
        common = dict(num_inference_steps=2, record=record, max_sequence_length=SEQ, **kwargs)
        tr = explainer.trace(schnell, PROMPT, progress=False, **common)
        assert explainer.estimate_trace_bytes(schnell, PROMPT, **common) == tr.nbytes, (record, list(kwargs))


def test_documented_flux_trace_size():
    """docs/data/flux_trace_size.json matches a fresh planner run on the FLUX.1-dev layout (meta device)."""
    import importlib.util
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("flux_trace_size", repo / "scripts" / "flux_trace_size.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = json.loads((repo / "docs" / "data" / "flux_trace_size.json").read_text())
    pipe = script.flux_on_meta()
    assert len(family_for(pipe).attention_sites(pipe)) == data["attention_layers"] == 57
    rows = {(r["record"], r["true_cfg_scale"]): r for r in data["rows"]}
    for record, cfg in (("default", None), ("per_step", 2.0)):
        size = explainer.estimate_trace_bytes(pipe, script.PROMPT, negative_prompt=script.NEGATIVE if cfg else None,
                                              true_cfg_scale=cfg, num_inference_steps=28, height=1024, width=1024,
                                              record=script.RECORDS[record])  # fmt: skip
        assert size == rows[record, cfg]["bytes"]
    assert rows["per_step", None]["bytes"] <= 150e6 and rows["layers=transformer_blocks", None]["bytes"] <= 150e6
