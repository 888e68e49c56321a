"""Tiny random-weight Stable Diffusion pipelines built from configs (as diffusers' own tests do).

The tokenizer is the real CLIP BPE tokenizer in ``assets/toy/tokenizer``. Everything runs offline on
the CPU in milliseconds per step.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# oneDNN spends seconds building kernels for each new tiny shape on CPU; plain kernels are faster here.
torch.backends.mkldnn.enabled = False

from _tiny import clip_tokenizer, text_config, tiny_vae  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# SD 1.x scheduler settings (the runwayml/stable-diffusion-v1-5 scheduler_config.json values).
SD_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    skip_prk_steps=True,
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
)


def build_components(prediction_type: str = "epsilon", seed: int = 0, unet_in_channels: int = 4) -> dict:
    """Tiny UNet (two cross-attention resolutions; 9 input channels makes it an inpainting UNet), VAE,
    CLIP text encoder, real tokenizer, PNDM."""
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=unet_in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    vae = tiny_vae(seed)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config(act="quick_gelu"))
    tokenizer = clip_tokenizer()
    scheduler = PNDMScheduler.from_config({**SD_SCHEDULER, "prediction_type": prediction_type})
    return dict(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_pipeline(prediction_type: str = "epsilon", seed: int = 0):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**build_components(prediction_type, seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def pipe():
    """Tiny epsilon-prediction pipeline (32x32 images, 16x16 latents, attention at 16x16 and 8x8)."""
    return build_pipeline("epsilon")


@pytest.fixture(scope="session")
def vpipe():
    """The same tiny pipeline with a v-prediction scheduler config."""
    return build_pipeline("v_prediction")


@pytest.fixture(scope="session")
def basic_trace(pipe):
    """A default trace shared by read-only tests (3 DDIM steps)."""
    import explainer

    return explainer.trace(pipe, "a red cube beside a blue sphere", num_inference_steps=3, scheduler="ddim", progress=False)


def _smooth_latents(steps: int) -> tuple:
    """Smooth synthetic 4x16x16 latents whose pattern shifts from step to step.

    Random-weight latents decode to pixel noise, the worst case for any image encoder; these give
    natural-image-like frames that are each clearly different from the others.

    Returns:
        ``(latents [steps+1, 4, 16, 16], x0 [steps, 4, 16, 16], input_scale [steps+1])``, float32.
    """
    import numpy as np

    yy, xx = np.mgrid[0:1:16j, 0:1:16j]

    def field(phase: float) -> np.ndarray:
        return np.stack(
            [0.8 * np.sin(2 * np.pi * (xx * (1 + c % 2) + yy * (0.5 + c // 2)) + phase + c) for c in range(4)]
        )

    latents = np.stack([field(0.9 * i) for i in range(steps + 1)]).astype(np.float32)
    x0 = np.stack([field(0.9 * i + 2.0) for i in range(steps)]).astype(np.float32)
    return latents, x0, np.ones(steps + 1, np.float32)


@pytest.fixture(scope="session")
def smooth_latents():
    """The function ``steps -> (latents, x0, input_scale)`` of smooth synthetic latents (export tests)."""
    return _smooth_latents


# ------------------------------------------------------------------------ real weights (opt-in)

#: A real SD 1.x checkpoint for the ``real_weights`` tests: a diffusers folder or a cached Hub id.
REAL_MODEL_ENV = "EXPLAINER_SD_MODEL"
#: Hub ids preferred, in order, among the SD 1.x snapshots in the Hugging Face cache.
SD1_HUB_IDS = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5", "CompVis/stable-diffusion-v1-4")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--real-weights",
        action="store_true",
        default=False,
        help=f"run the tests marked real_weights: they trace a real SD 1.x checkpoint from ${REAL_MODEL_ENV} or the "
        "Hugging Face cache, and fail when there is none",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--real-weights"):
        return
    skip = pytest.mark.skip(reason=f"opt-in: pytest --real-weights (an SD 1.x checkpoint from ${REAL_MODEL_ENV} or the HF cache)")
    for item in items:
        if item.get_closest_marker("real_weights") is not None:
            item.add_marker(skip)


# ------------------------------------------------------------------------ CI: nothing passes by skipping


def _skip_allowed(item: pytest.Item | None) -> bool:
    """Only the opt-in real-weights tests may skip in CI (they need weights CI does not have)."""
    return item is not None and item.get_closest_marker("real_weights") is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under ``CI=true`` a skipped test is a failure: a green CI run means every test ran."""
    outcome = yield
    report = outcome.get_result()
    from _browser import in_ci

    if report.skipped and in_ci() and not _skip_allowed(item) and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which no test may do here: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """Under ``CI=true`` a test module that skips itself at import (``importorskip``) is a failure."""
    outcome = yield
    report = outcome.get_result()
    from _browser import in_ci

    if report.skipped and in_ci():
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} skipped itself under CI=true, which no test module may do: {report.longrepr}"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, by huggingface_hub's precedence of environment variables."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "huggingface" / "hub"


def _is_sd1_folder(folder: Path) -> bool:
    """A complete SD 1.x pipeline folder: StableDiffusionPipeline, a 768-wide cross-attention UNet with weights."""
    import json

    try:
        index = json.loads((folder / "model_index.json").read_text())
        unet = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    weights = [p for p in (folder / "unet").glob("diffusion_pytorch_model*.safetensors") if p.exists()]
    return index.get("_class_name") == "StableDiffusionPipeline" and unet.get("cross_attention_dim") == 768 and bool(weights)


def find_real_sd1() -> tuple[str | None, str]:
    """The SD 1.x checkpoint to test: ``$EXPLAINER_SD_MODEL``, else the best snapshot in the HF cache.

    Returns:
        ``(folder or Hub id, "")``, or ``(None, why)`` naming where it looked.
    """
    named = os.environ.get(REAL_MODEL_ENV, "").strip()
    if named:
        return named, ""  # a folder or a Hub id: load_pipeline says clearly what is wrong with it
    cache = hf_hub_cache()
    found: dict[str, Path] = {}
    for repo in sorted(cache.glob("models--*")):
        snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
        snapshot = next((s for s in snapshots if _is_sd1_folder(s)), None)
        if snapshot is not None:
            found[repo.name.removeprefix("models--").replace("--", "/")] = snapshot
    for hub_id in (*SD1_HUB_IDS, *sorted(found)):
        if hub_id in found:
            return str(found[hub_id]), ""
    return None, (
        f"${REAL_MODEL_ENV} is unset and the Hugging Face cache {cache} holds no SD 1.x snapshot (a StableDiffusionPipeline "
        "whose UNet has 768-wide cross-attention and .safetensors weights)"
    )


@pytest.fixture(scope="session")
def real_model() -> str:
    """The real SD 1.x checkpoint of the ``real_weights`` tests; with --real-weights and none found, FAIL."""
    path, why = find_real_sd1()
    if path is None:
        pytest.fail(
            f"--real-weights was given but {why}. Set {REAL_MODEL_ENV}=/path/to/stable-diffusion-v1-5 (a diffusers "
            "folder) or a cached Hub id, or download one into the cache.",
            pytrace=False,
        )
    return path
