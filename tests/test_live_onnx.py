"""The toy's prebuilt ONNX graphs (assets/toy_onnx, for the live browser page) against PyTorch.

A short DDIM run with guidance, driven by onnxruntime with diffusers' own scheduler, follows the traced
PyTorch run step by step; its final image matches within 1 grey level and its attention maps correlate
with the ones ``explainer.trace`` records at r >= 0.999. Stale files (a retrained toy) fail here.
"""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch

import explainer
from explainer.live.export_onnx import CONFIG_FILE, MODEL_FILES, live_config, onnx_dir, write_model_scripts

ort = pytest.importorskip("onnxruntime", reason="pip install onnxruntime (the test extra)")

PROMPT = "a red circle on the left and a blue square"
STEPS = 6
GUIDANCE = 7.5


@pytest.fixture(scope="module")
def toy():
    return explainer.load_pipeline("toy", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def sessions():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return {key: ort.InferenceSession(str(onnx_dir() / name), options, providers=["CPUExecutionProvider"])
            for key, name in MODEL_FILES.items()}  # fmt: skip


@pytest.fixture(scope="module")
def runs(toy, sessions):
    """The traced PyTorch run and the same run through the ONNX graphs (onnxruntime + diffusers' DDIM)."""
    tr = explainer.trace(toy, PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, seed=3, progress=False,
                         record={"dtype": "float32"})  # fmt: skip
    config = live_config(toy)
    tok = toy.tokenizer

    def encode(text: str) -> np.ndarray:
        ids = tok(text, padding="max_length", max_length=config["tokens"], truncation=True).input_ids
        return sessions["text_encoder"].run(None, {"input_ids": np.array([ids], np.int32)})[0]  # [1, T, D]

    embeds = np.concatenate([encode(""), encode(PROMPT)])  # diffusers' order: [negative, prompt]
    scheduler = type(toy.scheduler).from_config(toy.scheduler.config)
    scheduler.set_timesteps(STEPS)
    x = torch.from_numpy(tr.latents[0].copy())[None]  # [1, C, h, w]
    latents, maps = [x[0].numpy()], []
    for t in scheduler.timesteps:
        sample = np.concatenate([x.numpy()] * 2)
        out, *attn = sessions["unet"].run(None, {"sample": sample, "timestep": np.array([float(t)], np.float32),
                                                 "encoder_hidden_states": embeds})  # fmt: skip
        guided = out[:1] + GUIDANCE * (out[1:] - out[:1])
        x = scheduler.step(torch.from_numpy(guided), t, x).prev_sample
        latents.append(x[0].numpy())
        maps.append(attn)  # per layer [2, N, T]
    image = sessions["vae_decoder"].run(None, {"latent": x.numpy()})[0][0]  # [3, H, W] in [0, 1]
    pixels = (image.transpose(1, 2, 0) * 255).round().astype(np.uint8)
    return {"trace": tr, "embeds": embeds, "latents": np.stack(latents), "maps": maps, "image": pixels}


def test_text_encoder_matches_the_pipeline(toy, runs):
    with torch.no_grad():
        cond, uncond = toy.encode_prompt(PROMPT, "cpu", 1, True, "")
    expected = torch.cat([uncond, cond]).numpy()
    assert np.abs(runs["embeds"] - expected).max() < 1e-4


def test_latents_follow_the_traced_run_step_by_step(runs):
    tr = runs["trace"]
    assert runs["latents"].shape == tr.latents.shape
    for step, (ours, theirs) in enumerate(zip(runs["latents"], tr.latents)):
        err = np.abs(ours - theirs).max()
        assert err < 1e-4 * max(1.0, np.abs(theirs).max()), f"step {step}: max |onnx - torch| = {err}"
    assert np.abs(runs["latents"][-1] - runs["latents"][0]).max() > 0.1  # the run moved: not a trivial match


def test_final_image_within_one_grey_level(runs):
    theirs = np.asarray(runs["trace"].final_image.convert("RGB"), dtype=np.int16)
    diff = np.abs(runs["image"].astype(np.int16) - theirs)
    assert diff.max() <= 1, f"max grey-level difference {diff.max()}"
    assert theirs.std() > 5  # a picture, not a flat field


def test_attention_maps_correlate_with_the_trace(toy, runs):
    tr = runs["trace"]
    t = len(tr.token_ids)
    config = live_config(toy)
    assert [la.name for la in tr.attention_layers] == [a["name"] for a in config["attention"]]
    for la in tr.attention_layers:
        ours = np.stack([step[la.index][1, :, :t].T for step in runs["maps"]])  # [step, t, N], cond row
        theirs = tr.attention[f"cond/{la.group}"][:, la.slot].reshape(ours.shape).astype(np.float32)
        r = np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]
        assert r >= 0.999, f"{la.name}: r = {r:.5f}"
        assert np.allclose(runs["maps"][0][la.index].sum(-1), 1, atol=1e-4)  # softmax rows over all tokens


def test_prebuilt_files_match_the_toy_config(toy, sessions):
    stored = json.loads((onnx_dir() / CONFIG_FILE).read_text(encoding="utf-8"))
    assert stored == json.loads(json.dumps(live_config(toy)))
    outputs = [o.name for o in sessions["unet"].get_outputs()]
    assert outputs == ["model_output", *[a["output"] for a in stored["attention"]]]
    shapes = {o.name: o.shape for o in sessions["unet"].get_outputs()}
    for a in stored["attention"]:
        assert shapes[a["output"]][1:] == [a["height"] * a["width"], stored["tokens"]]


def test_unet_takes_a_batch_of_one(toy, sessions):
    c, h, w, t, d = (live_config(toy)[k] for k in ("channels", "height", "width", "tokens", "dim"))
    rng = np.random.default_rng(0)
    sample, embeds = rng.standard_normal((1, c, h, w), np.float32), rng.standard_normal((1, t, d), np.float32)
    out = sessions["unet"].run(["model_output"], {"sample": sample, "timestep": np.array([500.0], np.float32),
                                                  "encoder_hidden_states": embeds})[0]  # fmt: skip
    with torch.no_grad():
        expected = toy.unet(torch.from_numpy(sample), 500, torch.from_numpy(embeds)).sample.numpy()
    assert np.abs(out - expected).max() < 1e-4


def test_write_model_scripts(tmp_path):
    paths = write_model_scripts(tmp_path)
    assert [p.name for p in paths] == ["model_config.js", *[f"model_{k}.js" for k in MODEL_FILES]]
    for key, name in MODEL_FILES.items():
        text = (tmp_path / f"model_{key}.js").read_text(encoding="ascii")
        data = re.search(rf"ns\.modelData\.{key} = '([A-Za-z0-9+/=]+)';", text).group(1)
        assert base64.b64decode(data) == (onnx_dir() / name).read_bytes()
    config = re.search(r"ns\.modelConfig = (\{.*\});", paths[0].read_text(encoding="utf-8")).group(1)
    assert json.loads(config) == json.loads((onnx_dir() / CONFIG_FILE).read_text(encoding="utf-8"))


def test_write_model_scripts_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="export_toy_onnx"):
        write_model_scripts(tmp_path / "out", source=tmp_path)


def test_exporter_on_a_tiny_pipeline(pipe, tmp_path):
    """The exporter itself (what scripts/export_toy_onnx.py runs), on the tiny random pipeline: its graphs give
    the traced run's model outputs and attention maps, and the pipeline keeps its own processors."""
    pytest.importorskip("onnxscript", reason="pip install onnx onnxscript (the test extra)")
    from explainer.live.export_onnx import export_toy_onnx

    processors = dict(pipe.unet.attn_processors)
    paths = export_toy_onnx(tmp_path, pipe=pipe)
    assert all(pipe.unet.attn_processors[k] is v for k, v in processors.items())
    assert not any("forward" in vars(m) for m in pipe.unet.modules())
    tr = explainer.trace(pipe, PROMPT, num_inference_steps=2, guidance_scale=GUIDANCE, progress=False,
                         record={"dtype": "float32"})  # fmt: skip
    unet = ort.InferenceSession(str(paths["unet"]), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, "")
    feeds = {"sample": np.stack([tr.latents[0]] * 2), "timestep": np.array([tr.timesteps[0]], np.float32),
             "encoder_hidden_states": torch.cat([uncond, cond]).numpy()}  # fmt: skip
    out, *maps = unet.run(None, feeds)
    assert np.abs(out[1] - tr.eps_cond[0]).max() < 1e-4 and np.abs(out[0] - tr.eps_uncond[0]).max() < 1e-4
    t = len(tr.token_ids)
    assert len(maps) == len(tr.attention_layers) > 1
    for la in tr.attention_layers:
        theirs = tr.attention[f"cond/{la.group}"][0, la.slot].reshape(t, -1)  # [t, N]
        assert np.abs(maps[la.index][1, :, :t].T - theirs).max() < 2e-3  # float16 storage in the trace
    image = ort.InferenceSession(str(paths["vae_decoder"])).run(None, {"latent": tr.latents[-1][None]})[0][0]
    pixels = (image.transpose(1, 2, 0) * 255).round().astype(np.int16)
    assert np.abs(pixels - np.asarray(tr.final_image, dtype=np.int16)).max() <= 1
