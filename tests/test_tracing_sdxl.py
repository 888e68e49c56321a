"""Stable Diffusion XL through the family layer: parity per mode and scheduler, token segments, the zero
negative embedding, record-time layer selection, attention against an independent softmax, size estimates."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _sdxl import build_sdxl_pipeline
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline
from PIL import Image

import explainer
from explainer.tracing.families import SDXLFamily, family_for

PROMPT = "a red cube beside a blue sphere"
CLASSES = {"txt2img": StableDiffusionXLPipeline, "img2img": StableDiffusionXLImg2ImgPipeline,
           "inpaint": StableDiffusionXLInpaintPipeline}  # fmt: skip


@pytest.fixture(scope="module")
def xl():
    """Tiny SDXL text-to-image pipeline: 32x32 images, 16x16 latents, 12 cross-attention layers at 8x8."""
    return build_sdxl_pipeline()


def _inputs(mode: str) -> dict:
    if mode == "txt2img":
        return {}
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    image = np.stack([xx * 8, yy * 8, (xx + yy) * 4], -1).astype(np.uint8) ^ rng.integers(0, 32, (32, 32, 3), np.uint8)
    out = {"image": Image.fromarray(image, "RGB"), "strength": 0.75 if mode == "img2img" else 1.0}
    if mode == "inpaint":
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 4:20] = 255
        out["mask"] = Image.fromarray(mask, "L")
    return out


def _plain(pipe, mode: str, name: str, steps: int, **kwargs) -> np.ndarray:
    """The user's own call: diffusers' SDXL pipeline for the mode, that scheduler, a fresh generator."""
    sched = explainer.SCHEDULERS[name].from_config(pipe.scheduler.config)
    other = CLASSES[mode].from_pipe(pipe, scheduler=sched)
    other.set_progress_bar_config(disable=True)
    inputs = _inputs(mode)
    if "mask" in inputs:
        inputs["mask_image"] = inputs.pop("mask")
        kwargs.update(height=32, width=32)
    out = other(PROMPT, generator=torch.Generator("cpu").manual_seed(0), num_inference_steps=steps, **inputs, **kwargs)
    return np.asarray(out.images[0])


@pytest.mark.parametrize("name", ["euler", "euler_a", "dpm++"])
@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint"])
def test_sdxl_traced_image_is_bit_identical(xl, mode, name):
    tr = explainer.trace(xl, PROMPT, num_inference_steps=3, scheduler=name, guidance_scale=6.0, progress=False,
                         record={"dtype": "float32"}, **_inputs(mode))  # fmt: skip
    image = _plain(xl, mode, name, 3, guidance_scale=6.0)
    assert np.array_equal(np.asarray(tr.final_image), image), f"{mode}/{name}: image differs from diffusers' pipeline"
    assert image.std() > 0
    assert tr.complete and tr.mode == mode and tr.metadata["family"] == "sdxl"
    assert tr.metadata["model"]["pipeline"] == CLASSES[mode].__name__
    assert tr.num_steps == (3 if mode != "img2img" else 2) and tr.attention  # strength 0.75 skips one of 3 steps
    assert xl.scheduler.__class__.__name__ == "EulerDiscreteScheduler"  # the pipeline's own scheduler is untouched


def test_sdxl_nine_channel_inpainting_parity():
    pipe = StableDiffusionXLInpaintPipeline(**build_sdxl_pipeline(unet_in_channels=9).components)
    pipe.set_progress_bar_config(disable=True)
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=2, scheduler="euler_a", progress=False, **_inputs("inpaint"))
    assert tr.metadata["inpaint_mode"] == "unet9"
    assert np.array_equal(np.asarray(tr.final_image), _plain(pipe, "inpaint", "euler_a", 2, guidance_scale=7.5))


def test_family_is_chosen_from_the_pipeline(xl, pipe):
    assert isinstance(family_for(xl), SDXLFamily)
    assert family_for(pipe).name == "sd"
    with pytest.raises(explainer.UnsupportedPipelineError, match="StableDiffusionXLPipeline"):
        family_for(object())


def test_token_segments_for_prompt_and_prompt_2(xl):
    tr = explainer.trace(xl, PROMPT, prompt_2="a photograph of a small green pyramid on grass", num_inference_steps=1,
                         progress=False)  # fmt: skip
    cond = tr.metadata["token_segments"]["cond"]
    assert [s["name"] for s in cond] == ["prompt", "prompt_2"]
    assert [s["tokenizer"] for s in cond] == ["tokenizer", "tokenizer_2"]
    assert all(s["combine"] == "features" and s["key_offset"] == 0 for s in cond)
    first = xl.tokenizer(PROMPT).input_ids
    second = xl.tokenizer_2("a photograph of a small green pyramid on grass").input_ids
    assert cond[1]["ids"] == second and [w[0] for w in cond[1]["words"]][-2:] == ["on", "grass"]
    # keys cover the longer prompt_2; past the first prompt's EOS they hold its padding (EOS) tokens
    assert tr.recorded_token_count("cond") == len(second) > len(first)
    assert tr.token_ids[: len(first)] == first and set(tr.token_ids[len(first):]) == {xl.tokenizer.eos_token_id}
    assert [w.text for w in tr.words] == PROMPT.split()
    assert tr.heatmap("cube").shape == (32, 32)
    # without prompt_2 the second tokenizer reads the prompt
    same = explainer.trace(xl, PROMPT, num_inference_steps=1, progress=False)
    segs = same.metadata["token_segments"]["cond"]
    assert segs[1]["text"] == PROMPT and segs[1]["ids"] == first == same.token_ids


def test_prompt_2_changes_the_image_like_diffusers(xl):
    kwargs = dict(num_inference_steps=2, guidance_scale=5.0)
    tr = explainer.trace(xl, PROMPT, prompt_2="green grass", negative_prompt="blurry", negative_prompt_2="dark",
                         progress=False, scheduler="euler", **kwargs)  # fmt: skip
    plain = _plain(xl, "txt2img", "euler", 2, prompt_2="green grass", negative_prompt="blurry",
                   negative_prompt_2="dark", guidance_scale=5.0)  # fmt: skip
    assert np.array_equal(np.asarray(tr.final_image), plain)
    neg = tr.metadata["token_segments"]["uncond"]
    assert [s["text"] for s in neg] == ["blurry", "dark"]
    assert tr.negative_tokens == xl.tokenizer.convert_ids_to_tokens(xl.tokenizer("blurry").input_ids)
    assert tr.metadata["unconditional"] == "negative prompt"


def test_zero_negative_embedding_invents_no_tokens(xl):
    tr = explainer.trace(xl, PROMPT, num_inference_steps=2, progress=False, record="per_head")
    assert tr.has_uncond and tr.metadata["classifier_free_guidance"]
    assert tr.metadata["unconditional"].startswith("zeros")
    assert tr.metadata["conditioning"]["negative_embedding"] == "zeros"
    assert tr.negative_tokens == [] and tr.negative_words == [] and tr.metadata["token_segments"]["uncond"] == []
    assert all(k.startswith("cond/") for k in tr.attention)  # no maps over tokens the model never saw
    assert tr.metadata["conditioning"]["pooled_text_embeds"]["uncond"] == [0.0] * xl.text_encoder_2.config.projection_dim
    assert tr.metadata["conditioning"]["add_time_ids"]["cond"] == [32.0, 32.0, 0.0, 0.0, 32.0, 32.0]
    with pytest.warns(UserWarning, match="negative_prompt_2 is not used"):
        explainer.trace(xl, PROMPT, negative_prompt_2="dark", num_inference_steps=1, progress=False)
    # without force_zeros_for_empty_prompt the empty negative prompt is text: BOS, EOS
    texty = build_sdxl_pipeline(force_zeros_for_empty_prompt=False)
    tr2 = explainer.trace(texty, PROMPT, num_inference_steps=1, progress=False)
    assert tr2.negative_tokens == ["<|startoftext|>", "<|endoftext|>"] and "uncond/8x8" in tr2.attention
    assert tr2.metadata["unconditional"] == "empty negative prompt"


def _plain_qk(pipe, layer_name: str, steps: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor, int]:
    """q and k of one attention layer at the first UNet call of a plain pipeline run (forward hooks)."""
    module = pipe.unet.get_submodule(layer_name)
    seen: dict[str, torch.Tensor] = {}
    hooks = [module.to_q.register_forward_hook(lambda m, a, out: seen.setdefault("q", out.detach().clone())),
             module.to_k.register_forward_hook(lambda m, a, out: seen.setdefault("k", out.detach().clone()))]  # fmt: skip
    try:
        pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(0), **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return seen["q"], seen["k"], module.heads


def test_recorded_probabilities_equal_an_independent_softmax(xl):
    tr = explainer.trace(xl, PROMPT, negative_prompt="blurry", num_inference_steps=2, scheduler="euler",
                         progress=False, record={"attention": "per_head", "tokens": "all"})  # fmt: skip
    layer = tr.attention_layers[5]  # a layer of the second transformer of a block
    assert layer.name.endswith("transformer_blocks.1.attn2")
    q, k, heads = _plain_qk(xl, layer.name, 2, negative_prompt="blurry")  # [B, N, H*d], [B, T, H*d]
    b, n, inner = q.shape
    d = inner // heads
    qh = q.reshape(b, n, heads, d).permute(0, 2, 1, 3).double()
    kh = k.reshape(b, -1, heads, d).permute(0, 2, 1, 3).double()
    ref = torch.softmax(qh @ kh.transpose(-1, -2) / d**0.5, dim=-1).numpy()  # [B, H, N, T]
    assert tr.metadata["batch_order"] == "uncond, cond"
    for branch, row in (("cond", 1), ("uncond", 0)):
        got = tr.attention[f"{branch}/{layer.group}"][0, layer.slot].astype(np.float64)  # [H, T, h, w]
        got = got.reshape(heads, got.shape[1], -1).transpose(0, 2, 1)  # [H, N, T]
        assert np.allclose(got, ref[row], rtol=2e-3, atol=1e-4), branch  # stored in float16


def test_record_time_layer_selection(xl):
    full = explainer.trace(xl, PROMPT, num_inference_steps=1, progress=False)
    names = [la.name for la in full.attention_layers]
    assert len(names) == 12 and sum(n.startswith("mid_block") for n in names) == 2
    up = explainer.trace(xl, PROMPT, num_inference_steps=1, progress=False, record={"layers": ["up_blocks.0"]})
    assert [la.name for la in up.attention_layers] == [n for n in names if n.startswith("up_blocks.0.")]
    assert [la.slot for la in up.attention_layers] == list(range(6))
    assert up.attention["cond/8x8"].shape[1] == 6 and up.nbytes < full.nbytes
    first = [la for la in full.attention_layers if la.name.startswith("up_blocks.0.")]
    assert np.array_equal(up.attention["cond/8x8"], full.attention["cond/8x8"][:, [la.slot for la in first]])
    assert np.array_equal(np.asarray(up.final_image), np.asarray(full.final_image))
    by_size = explainer.trace(xl, PROMPT, num_inference_steps=1, progress=False, record={"layers": "8x8"})
    assert len(by_size.attention_layers) == 12 and by_size.metadata["record"]["layers"] == ["8x8"]
    with pytest.raises(ValueError, match=r"selects none of the 12 attention layers.*'8x8'"):
        explainer.trace(xl, PROMPT, num_inference_steps=1, progress=False, record={"layers": ["16x16"]})
    with pytest.raises(ValueError, match=r"record\['layers'\]"):
        explainer.trace(xl, PROMPT, num_inference_steps=1, progress=False, record={"layers": [3]})


@pytest.mark.parametrize("record", ["default", "per_head", "per_step", "none", {"layers": ["mid_block"]}])
def test_sdxl_estimate_matches_actual_bytes(xl, record):
    for kwargs in ({}, {"negative_prompt": "blurry and dark"}, _inputs("inpaint")):
        tr = explainer.trace(xl, PROMPT, num_inference_steps=2, record=record, progress=False, **kwargs)
        est = explainer.estimate_trace_bytes(xl, PROMPT, num_inference_steps=2, record=record, **kwargs)
        assert est == tr.nbytes, (record, list(kwargs))


@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_few_step_runs_have_no_unconditional_branch(xl, guidance):
    tr = explainer.trace(xl, PROMPT, num_inference_steps=1, guidance_scale=guidance, scheduler="euler_a",
                         progress=False)  # fmt: skip
    plain = _plain(xl, "txt2img", "euler_a", 1, guidance_scale=guidance)
    assert np.array_equal(np.asarray(tr.final_image), plain)
    assert not tr.has_uncond and tr.eps_uncond is None
    assert tr.metadata["unconditional"].startswith("no unconditional branch: guidance_scale")
    assert tr.metadata["token_segments"].keys() == {"cond"}
    with pytest.raises(ValueError, match="no unconditional branch"):
        tr.what_if_x0(0, 5.0)


def test_guidance_distilled_unet_has_no_unconditional_branch():
    from diffusers import LCMScheduler

    pipe = build_sdxl_pipeline(time_cond_proj_dim=16)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=2, guidance_scale=6.0, progress=False)
    ref = pipe(PROMPT, num_inference_steps=2, guidance_scale=6.0, generator=torch.Generator("cpu").manual_seed(0))
    assert np.array_equal(np.asarray(tr.final_image), np.asarray(ref.images[0]))
    assert not tr.has_uncond and "guidance-distilled" in tr.metadata["unconditional"]
    with pytest.raises(ValueError, match="guidance-distilled"):
        tr.what_if_x0(0, 3.0)


def test_sdxl_only_arguments_refused_on_sd(pipe):
    for name in ("prompt_2", "negative_prompt_2"):
        with pytest.raises(explainer.UnsupportedPipelineError, match=rf"{name}= applies to .*Stable Diffusion XL"):
            explainer.trace(pipe, PROMPT, num_inference_steps=1, progress=False, **{name: "x"})
    with pytest.raises(TypeError, match="prompt_2 must be"):
        explainer.trace(build_sdxl_pipeline(), PROMPT, prompt_2=3, num_inference_steps=1, progress=False)


def test_refiner_layout_is_refused():
    pipe = build_sdxl_pipeline()
    refiner = StableDiffusionXLImg2ImgPipeline(**{**pipe.components, "text_encoder": None, "tokenizer": None})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(explainer.UnsupportedPipelineError, match="refiner"):
            explainer.trace(refiner, PROMPT, image=_inputs("img2img")["image"], num_inference_steps=2, progress=False)


def test_sdxl_size_figures_are_current_and_default_fits_the_target():
    """docs/data/sdxl_trace_size.json matches a fresh planner run on the SDXL base layout (meta device)."""
    import importlib.util
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("sdxl_trace_size", repo / "scripts" / "sdxl_trace_size.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = json.loads((repo / "docs" / "data" / "sdxl_trace_size.json").read_text())
    pipe = script.sdxl_on_meta()
    assert len(family_for(pipe).attention_sites(pipe)) == data["attention_layers"] == 70
    rows = {(r["record"], r["negative_prompt"]): r for r in data["rows"]}
    for record, negative in (("default", None), ("layers=32x32", "blurry, low quality, watermark")):
        size = explainer.estimate_trace_bytes(pipe, script.PROMPT, negative_prompt=negative, num_inference_steps=30,
                                              height=1024, width=1024, record=script.RECORDS[record])  # fmt: skip
        assert size == rows[record, negative]["bytes"]
    assert rows["default", None]["bytes"] <= 150e6  # the target for the default record
    with pytest.raises(explainer.TraceBudgetError, match="over the budget"):  # per_head: refused before it starts
        explainer.trace(pipe, script.PROMPT, num_inference_steps=30, height=1024, width=1024, record="per_head")


def test_format_v3_round_trip_and_version_2_files(xl, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.numpy import save_file

    tr = explainer.trace(xl, PROMPT, prompt_2="green grass", num_inference_steps=2, progress=False,
                         **_inputs("inpaint"))  # fmt: skip
    path = tr.save(tmp_path / "xl.safetensors", quantize_attention=False)  # float maps, as versions 1-3 stored them
    with safe_open(str(path), framework="numpy") as f:
        meta, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format_version"] == "4" == str(explainer.tracing.FORMAT_VERSION)
    back = explainer.load_trace(path)
    assert back.family == "sdxl" and back.schedule_kind == "ve" and back.mode == "inpaint"
    assert back.token_segments == tr.token_segments and [s["name"] for s in back.token_segments["cond"]] == [
        "prompt", "prompt_2"]  # fmt: skip
    assert back.metadata["conditioning"] == tr.metadata["conditioning"]
    assert all(np.array_equal(back.attention[k], tr.attention[k]) for k in tr.attention)
    # a version-2 file (SD only, before families) loads with the version-3 fields filled in
    header = json.loads(meta["trace"])
    for key in ("family", "schedule_kind", "token_segments"):
        del header["metadata"][key]
    old = tmp_path / "v2.safetensors"
    save_file(arrays, str(old), metadata={**meta, "format_version": "2", "trace": json.dumps(header)})
    v2 = explainer.load_trace(old)
    assert v2.family == "sd" and v2.schedule_kind == "ve"
    assert v2.token_segments["cond"][0]["ids"] == tr.token_ids and v2.token_segments["cond"][0]["name"] == "prompt"
    assert "uncond" in v2.token_segments and v2.token_segments["uncond"][0]["ids"] == []


def test_explorer_exports_and_info_on_an_sdxl_trace(xl, tmp_path):
    from explainer import cli
    from explainer.widgets import Explorer

    tr = explainer.trace(xl, PROMPT, negative_prompt="blurry", num_inference_steps=3, progress=False)
    w = Explorer(tr, pipe=xl)
    w.selected = ["cond:3"]  # "cube"
    assert w.wait_idle()
    assert len(w.overlay_maps) == 3 and len(w.frames["x0"]) == 3
    for suffix in ("gif", "png", "html", "webp"):
        out = explainer.export(tr, tmp_path / f"run.{suffix}", verbose=False)
        assert out.is_file() and out.stat().st_size > 0
    path = tr.save(tmp_path / "xl.safetensors")
    assert cli.main(["info", str(path)]) in (0, None)


def test_load_pipeline_reads_the_family_from_model_index(xl, tmp_path):
    import json

    folder = tmp_path / "sdxl"
    xl.save_pretrained(folder, safe_serialization=True)
    loaded = explainer.load_pipeline(folder, device="cpu")
    assert type(loaded) is StableDiffusionXLPipeline and loaded.config.force_zeros_for_empty_prompt
    assert family_for(loaded).name == "sdxl"
    from explainer import cli

    out = tmp_path / "run"
    assert cli.main(["run", PROMPT, "--model", str(folder), "--steps", "2", "--out", str(out), "--quiet"]) == 0
    assert explainer.load_trace(out / "trace.safetensors").family == "sdxl"
    assert (out / "steps.gif").is_file() and (out / "explainer.html").is_file()
    index = json.loads((folder / "model_index.json").read_text())
    cases = {
        "refiner": ({**index, "_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None],
                     "tokenizer": [None, None]}, "SDXL refiner"),  # fmt: skip
        "flux_fill": ({"_class_name": "FluxFillPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]},
                      "FLUX.1 variant pipeline .*FluxFillPipeline.* not supported yet"),
        "other": ({"_class_name": "KandinskyV22Pipeline"}, "is a KandinskyV22Pipeline; load_pipeline takes"),
    }
    for name, (content, message) in cases.items():
        other = tmp_path / name
        other.mkdir()
        (other / "model_index.json").write_text(json.dumps(content))
        with pytest.raises(ValueError, match=message):
            explainer.load_pipeline(other, device="cpu")
