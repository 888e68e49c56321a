"""The live page's runtime (explainer/live/static/runtime.js) in a real browser, opened from file://.

Headless Chromium through Playwright loads the vendored onnxruntime-web and the embedded toy graphs with
every non-file request blocked, runs encode → one guided UNet call → decode, and the numbers match
onnxruntime in Python (and PyTorch) to float tolerance. Needs playwright and a Chromium (tests/_browser.py);
skipped with the reason when either is missing, failed instead when ``CI=true``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import _browser
import numpy as np
import pytest
import torch

import explainer
from explainer.live.export_onnx import MODEL_FILES, onnx_dir, write_model_scripts
from explainer.live.runtime_files import STATIC_DIR, runtime_scripts

PROMPT = "a green triangle at the top"

RUN_JS = """async ([ids, negIds, latent, t]) => {
  const rt = await SDXLive.Runtime.create();
  const cond = await rt.encode(Int32Array.from(ids));
  const uncond = await rt.encode(BigInt64Array.from(negIds, BigInt));
  const emb = new Float32Array(uncond.length * 2);
  emb.set(uncond, 0); emb.set(cond, uncond.length);
  const x = Float32Array.from(latent);
  const both = new Float32Array(x.length * 2); both.set(x, 0); both.set(x, x.length);
  const u = await rt.unet(both, t, emb);
  const rgba = await rt.decode(x);
  let badInput = '';
  try { await rt.encode(new Int32Array(3)); } catch (err) { badInput = err.name + ': ' + err.message; }
  return {config: rt.config, backend: rt.backend, cond: Array.from(cond), output: Array.from(u.output),
          attn: u.attn.map((a) => ({name: a.name, shape: a.shape, data: Array.from(a.data)})),
          rgba: Array.from(rgba), badInput};
}"""


@pytest.fixture(scope="module", autouse=True)
def chromium() -> str:
    return _browser.require_browser()


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory) -> Path:
    """A folder as the page will have it: runtime.js, the vendored runtime, the model scripts, an HTML file."""
    folder = tmp_path_factory.mktemp("live")
    shutil.copytree(STATIC_DIR, folder, dirs_exist_ok=True)
    written = write_model_scripts(folder)
    wanted = {folder / s for s in runtime_scripts()}
    assert set(written) <= wanted and all(path.is_file() for path in wanted)
    tags = "\n".join(f'<script src="{s}"></script>' for s in runtime_scripts())
    (folder / "index.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>runtime</title>{tags}"
                                       "</head><body></body></html>", encoding="utf-8")  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def browser_run(chromium, page_dir, inputs):
    """Run RUN_JS in a page opened from file://; keep console errors and every non-file request."""
    from playwright.sync_api import sync_playwright

    errors, requests = [], []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=_browser.CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            blocked = _browser.block_network(context, allow=("file://",))
            page.goto((page_dir / "index.html").as_uri())
            page.wait_for_load_state("load")
            result = page.evaluate(RUN_JS, [inputs["ids"], inputs["neg_ids"], inputs["latent"].ravel().tolist(),
                                            inputs["t"]])  # fmt: skip
        finally:
            browser.close()
    result["errors"], result["blocked"] = errors, blocked
    result["network"] = [u for u in requests + blocked if not u.startswith(("file://", "data:", "blob:"))]
    return result


@pytest.fixture(scope="module")
def toy():
    return explainer.load_pipeline("toy", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def inputs(toy):
    tok = toy.tokenizer

    def ids(text: str) -> list[int]:
        return tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids

    c, s = toy.unet.config.in_channels, toy.unet.config.sample_size
    latent = torch.randn((1, c, s, s), generator=torch.Generator().manual_seed(5)).numpy()
    return {"ids": ids(PROMPT), "neg_ids": ids(""), "latent": latent, "t": 781}


@pytest.fixture(scope="module")
def expected(inputs):
    """The same calls through onnxruntime in Python."""
    ort = pytest.importorskip("onnxruntime", reason="pip install onnxruntime (the test extra)")
    s = {key: ort.InferenceSession(str(onnx_dir() / name), providers=["CPUExecutionProvider"])
         for key, name in MODEL_FILES.items()}  # fmt: skip
    cond = s["text_encoder"].run(None, {"input_ids": np.array([inputs["ids"]], np.int32)})[0]
    uncond = s["text_encoder"].run(None, {"input_ids": np.array([inputs["neg_ids"]], np.int32)})[0]
    out, *attn = s["unet"].run(None, {"sample": np.concatenate([inputs["latent"]] * 2),
                                      "timestep": np.array([inputs["t"]], np.float32),
                                      "encoder_hidden_states": np.concatenate([uncond, cond])})  # fmt: skip
    image = s["vae_decoder"].run(None, {"latent": inputs["latent"]})[0][0]  # [3, H, W]
    return {"cond": cond, "output": out, "attn": attn, "image": (image.transpose(1, 2, 0) * 255).round()}


def test_runs_offline_without_console_errors(browser_run):
    assert browser_run["errors"] == [], f"console errors/warnings: {browser_run['errors']}"
    assert browser_run["network"] == [], f"network requests: {browser_run['network']}"
    assert browser_run["backend"] == "wasm"


def test_config_comes_from_the_model(browser_run, toy):
    config = browser_run["config"]
    assert config["tokens"] == toy.tokenizer.model_max_length and config["dim"] == toy.text_encoder.config.hidden_size
    assert config["channels"] == toy.unet.config.in_channels and config["height"] == toy.unet.config.sample_size
    assert config["scheduler"]["prediction_type"] == toy.scheduler.config.prediction_type


def test_encode_matches_onnxruntime_and_torch(browser_run, expected, toy, inputs):
    cond = np.asarray(browser_run["cond"], np.float32).reshape(expected["cond"].shape)
    assert np.abs(cond - expected["cond"]).max() < 1e-4
    with torch.no_grad():
        theirs = toy.text_encoder(torch.tensor([inputs["ids"]]))[0].numpy()
    assert np.abs(cond - theirs).max() < 1e-4


def test_unet_output_and_attention_match_onnxruntime(browser_run, expected):
    out = np.asarray(browser_run["output"], np.float32).reshape(expected["output"].shape)
    assert np.abs(out - expected["output"]).max() < 1e-3 * max(1.0, np.abs(expected["output"]).max())
    assert len(browser_run["attn"]) == len(expected["attn"]) == len(browser_run["config"]["attention"])
    for ours, theirs in zip(browser_run["attn"], expected["attn"]):
        assert ours["shape"] == list(theirs.shape)
        assert np.abs(np.asarray(ours["data"], np.float32).reshape(theirs.shape) - theirs).max() < 1e-4, ours["name"]


def test_decode_gives_the_same_pixels(browser_run, expected):
    h, w, _ = expected["image"].shape
    rgba = np.asarray(browser_run["rgba"], np.float32).reshape(h, w, 4)
    assert np.abs(rgba[..., :3] - expected["image"]).max() <= 1
    assert (rgba[..., 3] == 255).all() and rgba[..., :3].std() > 1


def test_bad_input_names_the_argument(browser_run):
    assert browser_run["badInput"].startswith("RangeError: ids has 3 values")
