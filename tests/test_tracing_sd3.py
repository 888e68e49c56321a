"""Stable Diffusion 3 / 3.5 through the family layer: parity, joint attention, T5 segments, flow x0, save/load.

Tiny random-weight components from configs (``_sd3.py``): 32x32 images, 16x16 latents, an 8x8 patch grid.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _sd3 import build_sd3_pipeline
from diffusers import StableDiffusion3Img2ImgPipeline
from PIL import Image

import explainer
from explainer.tracing.families import SD3Family, family_for
from explainer.tracing.t5_tokens import group_pieces

PROMPT = "a red cube beside a blue sphere"
T5_LEN = 16  # a short max_sequence_length keeps the tiny runs fast


@pytest.fixture(scope="module")
def sd3():
    """SD3 layout: two joint blocks, no QK-norm, CLIP-L + CLIP-G + T5."""
    return build_sd3_pipeline()


@pytest.fixture(scope="module")
def sd35():
    """SD3.5 layout: RMS QK-norms and an MMDiT-X block with a second, image-only attention (attn2)."""
    return build_sd3_pipeline(seed=1, qk_norm="rms_norm", dual_attention_layers=(0,))


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    image = np.stack([xx * 8, yy * 8, (xx + yy) * 4], -1).astype(np.uint8) ^ rng.integers(0, 32, (32, 32, 3), np.uint8)
    return Image.fromarray(image, "RGB")


def _plain(pipe, mode: str, steps: int, **kwargs) -> np.ndarray:
    """The user's own call: diffusers' SD3 pipeline for the mode, a fresh generator."""
    if mode == "img2img":
        pipe = StableDiffusion3Img2ImgPipeline.from_pipe(pipe)
        pipe.set_progress_bar_config(disable=True)
        kwargs.update(image=_image(), strength=0.7)
    out = pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(0), num_inference_steps=steps,
               max_sequence_length=T5_LEN, **kwargs)  # fmt: skip
    return np.asarray(out.images[0])


@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
@pytest.mark.parametrize("layout", ["sd3", "sd35"])
def test_sd3_traced_image_is_bit_identical(request, layout, mode):
    pipe = request.getfixturevalue(layout)
    extra = {"image": _image(), "strength": 0.7} if mode == "img2img" else {"height": 32, "width": 32}
    tr = explainer.trace(pipe, PROMPT, negative_prompt="blurry", num_inference_steps=4, max_sequence_length=T5_LEN,
                         progress=False, **extra)  # fmt: skip
    ref = _plain(pipe, mode, 4, negative_prompt="blurry")
    assert np.array_equal(np.asarray(tr.final_image), ref)
    assert tr.family == "sd3" and tr.schedule_kind == "flow" and tr.mode == mode
    expected_steps = 4 - SD3Family().start_step(4, 0.7) if mode == "img2img" else 4
    assert tr.num_steps == expected_steps and tr.has_uncond  # SD3's own get_timesteps (3 steps at 0.7 of 4)
    assert tr.metadata["prediction_type"] == "flow_velocity" and "velocity" in tr.metadata["model_output"]
    assert tr.metadata["schedule"]["shift"] == pipe.scheduler.config.shift
    layers = tr.attention_layers
    assert [la.name for la in layers] == [f"transformer_blocks.{i}.attn" for i in range(2)]  # attn2 (SD3.5) not a site
    assert layers[0].height == layers[0].width == 8
    if mode == "img2img":
        assert tr.image_latent is not None and tr.start_latent is not None


def test_flow_x0_matches_the_schedulers_own_step(sd3):
    tr = explainer.trace(sd3, PROMPT, num_inference_steps=4, max_sequence_length=T5_LEN, height=32, width=32,
                         progress=False, record={"dtype": "float32", "attention": "none"})  # fmt: skip
    sched = type(sd3.scheduler).from_config(sd3.scheduler.config)
    sched.set_timesteps(4)
    assert np.allclose(tr.sigmas, sched.sigmas[:-1].numpy()) and np.allclose(tr.timesteps, sched.timesteps.numpy())
    signal = (1 - tr.sigmas) ** 2
    assert np.allclose(tr.alphas_cumprod, signal / (signal + tr.sigmas**2))  # the same-SNR VP abar
    g = tr.guidance_scale
    for s in range(tr.num_steps):
        v = tr.eps_uncond[s] + g * (tr.eps_cond[s] - tr.eps_uncond[s])  # the guided velocity the scheduler stepped
        x = torch.from_numpy(tr.latents[s])[None]
        step = sched.step(torch.from_numpy(v)[None], sched.timesteps[s], x).prev_sample[0].numpy()
        assert np.allclose(step, tr.latents[s + 1], atol=1e-5)  # the recorded latent is the scheduler's step
        x0 = tr.x0[s]
        assert np.allclose(x0, tr.latents[s] - tr.sigmas[s] * v, atol=1e-5)
        nxt = float(sched.sigmas[s + 1])  # Euler's step lands on (1 - s') x0 + s' * (x0 + v): the implied x0
        assert np.allclose(step, (1 - nxt) * x0 + nxt * (x0 + v), atol=1e-4)
    assert np.allclose(tr.x0[-1], tr.latents[-1], atol=1e-5)  # the last step goes to sigma 0
    # what-if guidance works on flow: the recorded scale gives the recorded x0, another moves it along cond - uncond
    assert np.allclose(tr.what_if_x0(1, g), tr.x0[1])
    assert not np.allclose(tr.what_if_x0(1, g + 2), tr.x0[1])


def _joint_inputs(pipe, block: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The joint layer's hidden states and text states at its last call of a plain run (forward pre-hook)."""
    module = pipe.transformer.transformer_blocks[block].attn
    seen: dict[str, torch.Tensor] = {}

    def hook(_m, args, kw):
        seen["h"] = kw.get("hidden_states", args[0] if args else None).detach().clone()
        seen["e"] = kw["encoder_hidden_states"].detach().clone()

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        _plain(pipe, "txt2img", 2, height=32, width=32, **kwargs)
    finally:
        handle.remove()
    return seen["h"], seen["e"]


def test_joint_probabilities_equal_an_independent_softmax(sd35):
    tr = explainer.trace(sd35, PROMPT, negative_prompt="blurry", num_inference_steps=2, max_sequence_length=T5_LEN,
                         height=32, width=32, progress=False, record={"attention": "per_head"})  # fmt: skip
    layer = tr.attention_layers[1]
    attn = sd35.transformer.transformer_blocks[1].attn
    hidden, text = _joint_inputs(sd35, 1, negative_prompt="blurry")
    heads, d = attn.heads, attn.to_q.out_features // attn.heads

    def split(x):  # [B, N, H*d] -> [B, H, N, d]
        return x.reshape(x.shape[0], -1, heads, d).transpose(1, 2)

    with torch.no_grad():
        q = attn.norm_q(split(attn.to_q(hidden)))
        k = attn.norm_k(split(attn.to_k(hidden)))
        tk = attn.norm_added_k(split(attn.add_k_proj(text)))
    keys = torch.cat([k, tk], dim=2).double()
    probs = torch.softmax(q.double() @ keys.transpose(-1, -2) / d**0.5, dim=-1)  # [B, H, N, N + T]
    assert torch.allclose(probs.sum(-1), torch.ones(()).double())  # each image query's row over all keys sums to 1
    n = hidden.shape[1]
    row = 1 if tr.metadata["batch_order"] == "uncond, cond" else 0
    keys_cond = family_keys(sd35, tr, "cond")
    ref = probs[row, :, :, n:][..., keys_cond].numpy()  # [H, N, t]: the text block at the recorded keys
    got = tr.attention[f"cond/{layer.group}"][-1, layer.slot].astype(np.float64)  # [H, t, h, w]
    got = got.reshape(heads, got.shape[1], -1).transpose(0, 2, 1)
    assert np.allclose(got, ref, rtol=2e-3, atol=1e-4)  # stored in float16
    assert np.all(got.sum(-1) < 1)  # the rest of each row went to image keys


@pytest.mark.parametrize("block", [0, 1])  # block 1 is the last: context_pre_only, no to_add_out
def test_concept_attention_maps_equal_an_independent_computation(sd35, block):
    """ConceptAttention-style maps on SD3: per head, softmax over the text tokens of image-output . text-output
    (the joint attention's outputs before the output projections), head-averaged; the image is unchanged."""
    common = dict(negative_prompt="blurry", num_inference_steps=2, max_sequence_length=T5_LEN, height=32, width=32,
                  progress=False)  # fmt: skip
    tr = explainer.trace(sd35, PROMPT, record={"method": "concept"}, **common)
    plain = explainer.trace(sd35, PROMPT, **common)
    assert np.array_equal(np.asarray(tr.final_image), np.asarray(plain.final_image))
    assert tr.metadata["record"]["method"] == "concept" and "ConceptAttention" in tr.metadata["attention_method"]
    layer = tr.attention_layers[block]
    attn = sd35.transformer.transformer_blocks[block].attn
    assert attn.context_pre_only == (block == 1)
    hidden, text = _joint_inputs(sd35, block, negative_prompt="blurry")
    heads, d = attn.heads, attn.to_q.out_features // attn.heads

    def split(x):  # [B, N, H*d] -> [B, H, N, d]
        return x.reshape(x.shape[0], -1, heads, d).transpose(1, 2)

    with torch.no_grad():
        q = torch.cat([attn.norm_q(split(attn.to_q(hidden))), attn.norm_added_q(split(attn.add_q_proj(text)))], 2)
        k = torch.cat([attn.norm_k(split(attn.to_k(hidden))), attn.norm_added_k(split(attn.add_k_proj(text)))], 2)
        v = torch.cat([split(attn.to_v(hidden)), split(attn.add_v_proj(text))], 2)
    out = torch.softmax(q.double() @ k.double().transpose(-1, -2) / d**0.5, dim=-1) @ v.double()  # [B, H, N + T, d]
    n = hidden.shape[1]
    maps = torch.softmax(out[:, :, :n] @ out[:, :, n:].transpose(-1, -2), dim=-1).mean(1)  # [B, N, T]
    row = 1 if tr.metadata["batch_order"] == "uncond, cond" else 0
    ref = maps[row][:, family_keys(sd35, tr, "cond")].numpy()  # [N, t]
    got = tr.attention[f"cond/{layer.group}"][-1, layer.slot].astype(np.float64)  # [t, h, w]
    np.testing.assert_allclose(got.reshape(got.shape[0], -1).T, ref, rtol=3e-3, atol=2e-4)  # stored in float16
    with pytest.raises(ValueError, match=r"record\['method'\]='rollout' is not allowed"):
        explainer.trace(sd35, PROMPT, record={"method": "rollout"}, **common)


def family_keys(pipe, tr, branch: str) -> list[int]:
    """Recorded key positions of a branch, from the trace's segments (CLIP keys, then T5 keys after the CLIP ones)."""
    segs = tr.token_segments[branch]
    clip = max(len(s["ids"]) for s in segs if s["combine"] == "features")
    t5 = [s for s in segs if s["combine"] == "sequence"]
    return list(range(clip)) + [t5[0]["key_offset"] + j for j in range(len(t5[0]["ids"]))] if t5 else list(range(clip))


def test_token_segments_clip_then_t5(sd3):
    tr = explainer.trace(sd3, PROMPT, prompt_3="a crimson cube", num_inference_steps=1, max_sequence_length=T5_LEN,
                         height=32, width=32, progress=False)  # fmt: skip
    segs = tr.token_segments["cond"]
    assert [(s["name"], s["tokenizer"], s["combine"], s["key_offset"]) for s in segs] == [
        ("prompt", "tokenizer", "features", 0), ("prompt_2", "tokenizer_2", "features", 0),
        ("prompt_3", "tokenizer_3", "sequence", sd3.tokenizer.model_max_length)]  # fmt: skip
    clip_n, t5_n = len(segs[0]["ids"]), len(segs[2]["ids"])
    assert len(tr.tokens) == clip_n + t5_n == tr.attention["cond/8x8"].shape[2]
    words = [w.text for w in tr.words]
    assert words == PROMPT.split() + ["a", "crimson", "cube"]
    assert [tr.tokens[i] for i in tr.words[-1].token_indices] == ["cube</w>"] and tr.words[-1].token_indices[0] > clip_n
    # padding and every key only when asked: 77 CLIP keys + max_sequence_length T5 keys
    full = explainer.trace(sd3, PROMPT, num_inference_steps=1, max_sequence_length=T5_LEN, height=32, width=32,
                           progress=False, record={"tokens": "all"})  # fmt: skip
    assert full.attention["cond/8x8"].shape[2] == len(full.tokens) == sd3.tokenizer.model_max_length + T5_LEN
    assert [w.text for w in full.words] == PROMPT.split() * 2


def test_sentencepiece_pieces_group_into_words():
    pieces = ["\u2581a", "\u2581red", "\u2581cir", "cle", "\u2581", "3", "d", ",", "\u2581sphere", "</s>", "<pad>"]
    words = group_pieces(pieces, {"</s>", "<pad>"})
    assert words == [("a", (0,)), ("red", (1,)), ("circle", (2, 3)), ("3d,", (4, 5, 6, 7)), ("sphere", (8,))]
    assert group_pieces([]) == [] and group_pieces(["x", "\u2581y"]) == [("x", (0,)), ("y", (1,))]


def test_sd3_without_t5_records_clip_keys_only():
    pipe = build_sd3_pipeline(with_t5=False)
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=1, max_sequence_length=T5_LEN, height=32, width=32,
                         progress=False)  # fmt: skip
    assert [s["name"] for s in tr.token_segments["cond"]] == ["prompt", "prompt_2"]
    assert tr.metadata["conditioning"]["text_sequence"]["t5"].startswith("absent")
    assert tr.attention["cond/8x8"].shape[2] == len(tr.tokens) == len(tr.token_segments["cond"][0]["ids"])


def test_sd3_bad_input(sd3, pipe):  # pipe: the toy SD 1.x pipeline (conftest)
    with pytest.raises(ValueError, match="max_sequence_length=513"):
        explainer.trace(sd3, PROMPT, max_sequence_length=513, progress=False)
    with pytest.raises(ValueError, match="height"):
        explainer.trace(sd3, PROMPT, height=34, width=32, progress=False)  # not a multiple of vae factor x patch
    with pytest.raises(ValueError, match="width=34"):
        explainer.trace(sd3, PROMPT, height=32, width=34, progress=False)
    with pytest.raises(TypeError, match="max_sequence_length must be an int"):
        explainer.trace(sd3, PROMPT, max_sequence_length=64.0, progress=False)
    unguided = explainer.trace(sd3, PROMPT, guidance_scale=1.0, num_inference_steps=1, max_sequence_length=T5_LEN,
                               height=32, width=32, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"trace again with guidance_scale > 1"):  # what-if needs SD3's CFG
        unguided.what_if_x0(0, 5.0)
    with pytest.raises(explainer.UnsupportedPipelineError, match="inpainting"):
        explainer.trace(sd3, PROMPT, image=_image(), mask=np.ones((32, 32)), progress=False)
    with pytest.raises(ValueError, match="flow matching"):
        explainer.trace(sd3, PROMPT, scheduler="euler", progress=False)
    with pytest.raises(explainer.UnsupportedPipelineError, match="max_sequence_length"):
        explainer.trace(pipe, PROMPT, max_sequence_length=64, progress=False)  # SD 1.x has no T5
    with pytest.raises(explainer.UnsupportedPipelineError, match="prompt_3"):
        explainer.trace(pipe, PROMPT, prompt_3="x", progress=False)
    assert isinstance(family_for(sd3), SD3Family)


def test_cli_refuses_t5_flags_for_models_without_t5(pipe, capsys):
    import argparse

    from explainer import cli

    args = argparse.Namespace(prompt_2=None, negative_prompt_2=None, prompt_3="a crimson cube", negative_prompt_3=None,
                              model="toy")  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        cli._check_family_flags(argparse.ArgumentParser(prog="explainer run"), args, pipe)
    assert exc.value.code == 2 and "--prompt-3 applies to Stable Diffusion 3 models" in capsys.readouterr().err


def test_sd3_save_load_round_trip(sd3, tmp_path):
    tr = explainer.trace(sd3, PROMPT, negative_prompt="blurry", num_inference_steps=2, max_sequence_length=T5_LEN,
                         height=32, width=32, progress=False)  # fmt: skip
    back = explainer.load_trace(tr.save(tmp_path / "sd3.safetensors", quantize_attention=False))
    assert back.family == "sd3" and back.schedule_kind == "flow"
    assert back.token_segments == tr.token_segments and back.tokens == tr.tokens and back.words == tr.words
    assert back.metadata["schedule"] == tr.metadata["schedule"]
    assert np.array_equal(back.sigmas, tr.sigmas) and np.array_equal(back.alphas_cumprod, tr.alphas_cumprod)
    assert all(np.array_equal(back.attention[k], tr.attention[k]) for k in tr.attention)
    assert np.array_equal(back.x0, tr.x0) and np.array_equal(back.eps_uncond, tr.eps_uncond)
    small = explainer.load_trace(tr.save(tmp_path / "sd3_uint8.safetensors"))  # default: uint8 maps, each within 1/255 of its peak
    for k, value in tr.attention.items():
        x, y = np.asarray(small.attention[k], np.float32), value.astype(np.float32)
        peak = y.max(axis=(-2, -1), keepdims=True)
        assert (np.abs(x - y) <= peak / 255 + 1e-7).all(), k


def test_explorer_exports_info_and_previews_on_an_sd3_trace(sd3, tmp_path, capsys):
    from explainer import cli
    from explainer.tracing.previews import preset_latent_rgb
    from explainer.widgets import Explorer

    tr = explainer.trace(sd3, PROMPT, negative_prompt="blurry", num_inference_steps=3, max_sequence_length=T5_LEN,
                         height=32, width=32, progress=False)  # fmt: skip
    # SD3's VAE format has ComfyUI's published factors; these random weights do not fit them, so a fit is used
    assert preset_latent_rgb(sd3.vae.config).source == "comfyui-sd3"
    assert tr.latent_rgb.source.startswith("fit") and tr.latent_rgb.factors.shape == (16, 3)
    w = Explorer(tr, pipe=sd3)
    w.selected = [f"cond:{tr.words[-1].token_indices[0]}"]  # T5's "sphere"
    assert w.wait_idle()
    assert len(w.overlay_maps) == 3 and len(w.frames["x0"]) == 3
    for suffix in ("gif", "png", "html", "webp"):
        out = explainer.export(tr, tmp_path / f"run.{suffix}", verbose=False)
        assert out.is_file() and out.stat().st_size > 0
    path = tr.save(tmp_path / "sd3.safetensors")
    capsys.readouterr()
    assert cli.main(["info", str(path)]) in (0, None)
    shown = capsys.readouterr().out
    assert "family     sd3" in shown and "joint attention" in shown and "flow matching (σ, velocity), shift 3" in shown
    fig = explainer.views.schedule_plot(tr, 1)
    assert "shift 3" in fig.axes[0].get_title() and fig.axes[0].get_yscale() == "linear"


def test_load_pipeline_reads_an_sd3_folder(sd3, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from explainer import cli

    folder = tmp_path / "sd3"
    sd3.save_pretrained(folder, safe_serialization=True)
    loaded = explainer.load_pipeline(folder, device="cpu")
    assert type(loaded) is StableDiffusion3Pipeline and isinstance(family_for(loaded), SD3Family)
    out = tmp_path / "run"  # the CLI loads the folder itself and passes the SD3 flags through
    assert cli.main(["run", PROMPT, "--model", str(folder), "--steps", "1", "--prompt-3", "a crimson cube",
                     "--max-sequence-length", str(T5_LEN), "--out", str(out), "--quiet"]) == 0  # fmt: skip
    run = explainer.load_trace(out / "trace.safetensors")
    assert run.family == "sd3" and run.num_steps == 1 and run.token_segments["cond"][2]["text"] == "a crimson cube"
    assert run.metadata["model"]["max_sequence_length"] == T5_LEN


@pytest.mark.parametrize("record", ["default", {"attention": "per_step", "tokens": "all"}])
def test_sd3_estimate_matches_actual_bytes(sd3, record):
    for kwargs in ({"height": 32, "width": 32}, {"negative_prompt": "blurry and dark", "image": _image()}):
        common = dict(num_inference_steps=2, record=record, max_sequence_length=T5_LEN, **kwargs)
        tr = explainer.trace(sd3, PROMPT, progress=False, **common)
        assert explainer.estimate_trace_bytes(sd3, PROMPT, **common) == tr.nbytes, (record, list(kwargs))


def test_sd3_size_figures_are_current():
    """docs/data/sd3_trace_size.json matches a fresh planner run on the SD3 Medium layout (meta device)."""
    import importlib.util
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("sd3_trace_size", repo / "scripts" / "sd3_trace_size.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = json.loads((repo / "docs" / "data" / "sd3_trace_size.json").read_text())
    pipe = script.sd3_on_meta()
    assert len(family_for(pipe).attention_sites(pipe)) == data["attention_layers"] == 24
    rows = {(r["record"], r["negative_prompt"]): r for r in data["rows"]}
    for record, negative in (("default", None), ("layers=transformer_blocks.0-7", script.NEGATIVE)):
        size = explainer.estimate_trace_bytes(pipe, script.PROMPT, negative_prompt=negative, num_inference_steps=28,
                                              height=1024, width=1024, record=script.RECORDS[record])  # fmt: skip
        assert size == rows[record, negative]["bytes"]
    assert rows["per_step", script.NEGATIVE]["bytes"] <= 150e6 >= rows["layers=transformer_blocks.0-7", script.NEGATIVE]["bytes"]
    with pytest.raises(explainer.TraceBudgetError, match="over the budget"):  # per_head: refused before it starts
        explainer.trace(pipe, script.PROMPT, num_inference_steps=28, height=1024, width=1024, record="per_head")
