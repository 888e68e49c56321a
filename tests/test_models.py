"""load_pipeline: the bundled toy model, local folders, and Hub ids without a network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

import explainer
from explainer import models

REPO = Path(__file__).resolve().parent.parent


def test_toy_path_is_the_installed_model(monkeypatch, tmp_path):
    assert (explainer.toy_model_path() / "model_index.json").is_file()  # whichever way it is installed
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "model_index.json").write_text("{}")
    monkeypatch.setattr(models.importlib.resources, "files", lambda name: tmp_path)
    assert models.toy_model_path() == tmp_path / "toy"  # the package data comes first


@pytest.mark.parametrize("installed", ["missing", "empty"])
def test_toy_path_falls_back_to_the_checkout(monkeypatch, tmp_path, installed):
    def files(name):
        if installed == "missing":
            raise ModuleNotFoundError(name)
        return tmp_path  # a package folder without toy/model_index.json

    monkeypatch.setattr(models.importlib.resources, "files", files)
    assert models.toy_model_path() == Path(models.__file__).resolve().parent.parent / "assets" / "toy"


def test_toy_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "toy_model_path", lambda: tmp_path / "toy")
    with pytest.raises(FileNotFoundError, match=r"bundled toy model is not installed \(no model_index.json"):
        explainer.load_pipeline("toy", device="cpu")


def test_toy_model_loads_and_traces():
    pipe = explainer.load_pipeline("toy", device="cpu")
    assert isinstance(pipe, StableDiffusionPipeline)
    tr = explainer.trace(pipe, "a red circle", num_inference_steps=2, progress=False)
    assert tr.complete and tr.final_image is not None


def test_local_folder_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "tiny", safe_serialization=True)
    assert not list((tmp_path / "tiny").rglob("*.bin"))
    loaded = explainer.load_pipeline(tmp_path / "tiny", device="cpu")
    assert isinstance(loaded, StableDiffusionPipeline) and loaded.device.type == "cpu"
    assert loaded.unet.dtype == torch.float32
    loaded.set_progress_bar_config(disable=True)
    a = pipe("a cube", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent").images
    b = loaded("a cube", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert torch.equal(a, b)
    half = explainer.load_pipeline(str(tmp_path / "tiny"), device="cpu", dtype="float16")
    assert half.unet.dtype == torch.float16


def test_folder_without_model_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline folder"):
        explainer.load_pipeline(tmp_path, device="cpu")


def test_missing_local_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder at"):
        explainer.load_pipeline(str(tmp_path / "nowhere" / "model"), device="cpu")


def test_uncached_hub_id_offline_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError) as info:
        explainer.load_pipeline("sd-explainer-tests/definitely-not-cached", device="cpu")
    message = str(info.value)
    assert "not in the local cache" in message and "load_pipeline('toy')" in message and "local folder" in message


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be"):
        explainer.load_pipeline(3)
    with pytest.raises(ValueError, match="dtype='int4'"):
        explainer.load_pipeline("toy", device="cpu", dtype="int4")
    with pytest.raises(ValueError, match="device='gpu9000'"):
        explainer.load_pipeline("toy", device="gpu9000")


def test_default_device_and_dtype():
    dev = models._pick_device(None)
    assert dev.type in ("cuda", "mps", "cpu")
    assert models._pick_dtype(None, torch.device("cpu")) == torch.float32
    assert models._pick_dtype(None, torch.device("cuda")) == torch.float16
