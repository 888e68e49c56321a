"""The ``--real-weights`` option: real_weights tests skip without it, and FAIL with it when no SD 1.x
checkpoint is found; the checkpoint is found in the Hugging Face cache (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import conftest
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _snapshot(cache: Path, hub_id: str, cross_attention_dim: int = 768, weights: bool = True, rev: str = "abc") -> Path:
    """A Hub-cache snapshot folder with an SD pipeline's configs (the weights file is an empty stand-in)."""
    snap = cache / ("models--" + hub_id.replace("/", "--")) / "snapshots" / rev
    (snap / "unet").mkdir(parents=True)
    (snap / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (snap / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": cross_attention_dim}))
    if weights:
        (snap / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    return snap


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.delenv(conftest.REAL_MODEL_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    return tmp_path / "hub"


def test_the_cache_is_searched_for_an_sd1_snapshot(cache, monkeypatch):
    path, why = conftest.find_real_sd1()
    assert path is None and str(cache) in why and conftest.REAL_MODEL_ENV in why
    _snapshot(cache, "stabilityai/stable-diffusion-2-1", cross_attention_dim=1024)  # SD 2.x: not SD 1.x
    _snapshot(cache, "someone/sd15-without-weights", weights=False)  # an incomplete download
    assert conftest.find_real_sd1()[0] is None
    other = _snapshot(cache, "someone/my-sd15-finetune")
    assert conftest.find_real_sd1() == (str(other), "")
    runway = _snapshot(cache, "runwayml/stable-diffusion-v1-5")
    assert conftest.find_real_sd1() == (str(runway), "")  # a known SD 1.x id comes first
    monkeypatch.setenv(conftest.REAL_MODEL_ENV, "/models/sd15")
    assert conftest.find_real_sd1() == ("/models/sd15", "")  # the environment variable wins


def test_hub_cache_follows_huggingface_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert conftest.hf_hub_cache() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert conftest.hf_hub_cache() == tmp_path / "cache"


def _run(cache: Path, *args: str) -> tuple[int, str]:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop(conftest.REAL_MODEL_ENV, None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", *args, "tests/test_real_weights.py"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def test_real_weights_tests_skip_without_the_option_and_fail_without_weights(cache):
    code, out = _run(cache)
    summary = out.strip().splitlines()[-1]
    assert code == 0 and "skipped" in summary and "passed" not in summary and "error" not in summary, out[-3000:]
    assert "opt-in: pytest --real-weights" in out
    code, out = _run(cache, "--real-weights")
    summary = out.strip().splitlines()[-1]
    assert code == 1 and "error" in summary and "skipped" not in summary and "passed" not in summary, out[-3000:]
    assert "--real-weights was given but $EXPLAINER_SD_MODEL is unset" in out and str(cache) in out, out[-3000:]
