"""save / load_trace: safetensors + JSON, exact round trip, clear errors on bad files."""

from __future__ import annotations

import importlib
import json
import pickle
import struct
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import explainer
from explainer.tracing.storage import QuantizedMaps

trace_module = importlib.import_module("explainer.tracing.trace")  # the module; the package exports the function
PROMPT = "a red cube beside a blue sphere"


def assert_traces_equal(a, b):
    for name in ("prompt", "negative_prompt", "tokens", "token_ids", "words", "truncated_tokens", "negative_tokens",
                 "negative_token_ids", "negative_words", "negative_truncated_tokens", "attention_layers",
                 "attention_mode", "metadata", "complete", "error", "uid"):  # fmt: skip
        assert getattr(a, name) == getattr(b, name), name
    for name in ("timesteps", "sigmas", "alphas_cumprod", "x0_coef_sample", "x0_coef_model", "input_scale",
                 "latents", "x0", "eps_cond", "eps_uncond"):  # fmt: skip
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None, name
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y, equal_nan=True), name
    assert a.attention.keys() == b.attention.keys()
    for key in a.attention:
        assert a.attention[key].dtype == b.attention[key].dtype and a.attention[key].shape == b.attention[key].shape
        x, y = np.asarray(a.attention[key]), np.asarray(b.attention[key])
        if isinstance(b.attention[key], QuantizedMaps):  # stored as uint8: each value within 1/255 of its map's peak
            peak = np.abs(x.astype(np.float32)).max(axis=(-2, -1), keepdims=True)
            assert (np.abs(x.astype(np.float32) - y.astype(np.float32)) <= peak / 255).all(), key
        else:
            assert np.array_equal(x, y), key
    if a.final_image is None:
        assert b.final_image is None
    else:
        assert a.final_image.size == b.final_image.size and a.final_image.mode == b.final_image.mode
        assert a.final_image.tobytes() == b.final_image.tobytes()
    if a.latent_rgb is None:
        assert b.latent_rgb is None
    else:
        assert np.array_equal(a.latent_rgb.factors, b.latent_rgb.factors)
        assert np.array_equal(a.latent_rgb.bias, b.latent_rgb.bias)
        assert a.latent_rgb.source == b.latent_rgb.source


def test_round_trip_is_exact(basic_trace, tmp_path):
    path = basic_trace.save(tmp_path / "t.safetensors", quantize_attention=False)
    loaded = explainer.load_trace(path)
    assert_traces_equal(basic_trace, loaded)
    assert np.array_equal(loaded.heatmap("cube"), basic_trace.heatmap("cube"))
    assert loaded.preview(1).tobytes() == basic_trace.preview(1).tobytes()


@pytest.mark.parametrize("record", ["per_head", "per_step", "none", {"dtype": "float32", "tokens": "all"}])
def test_round_trip_other_recordings(pipe, tmp_path, record):
    tr = explainer.trace(pipe, "", num_inference_steps=2, guidance_scale=1.0 if record == "none" else 7.5,
                         record=record, progress=False)  # fmt: skip
    assert_traces_equal(tr, explainer.load_trace(tr.save(tmp_path / "t.st")))


def test_partial_trace_round_trip(pipe, tmp_path):
    calls = {"n": 0}

    def stop(module, args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    handle = pipe.unet.register_forward_pre_hook(stop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr = explainer.trace(pipe, PROMPT, num_inference_steps=3, progress=False)
    finally:
        handle.remove()
    loaded = explainer.load_trace(tr.save(tmp_path / "partial.st"))
    assert_traces_equal(tr, loaded)
    assert not loaded.complete and loaded.final_image is None


def test_file_is_plain_safetensors_and_loads_without_pickle(basic_trace, tmp_path, monkeypatch):
    path = basic_trace.save(tmp_path / "t.st")
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    assert header["__metadata__"]["format"] == "sd-explainer-trace"
    assert header["__metadata__"]["format_version"] == str(explainer.tracing.FORMAT_VERSION)
    assert all(isinstance(v, str) for v in header["__metadata__"].values())  # safetensors metadata: str -> str
    # A valid safetensors file: the reference reader gives exactly the header's arrays, which tile the data.
    arrays = load_file(path)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert arrays.keys() == tensors.keys() and len(arrays) > 5
    spans = sorted(tuple(v["data_offsets"]) for v in tensors.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - size
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # no gap where anything else could hide
    for key, arr in arrays.items():
        assert list(arr.shape) == tensors[key]["shape"], key

    def no_pickle(*args, **kwargs):
        raise AssertionError("load_trace used pickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, no_pickle)
    monkeypatch.setattr(np, "load", no_pickle)  # np.load(allow_pickle=...) is not how a trace is read either
    assert_traces_equal(basic_trace, explainer.load_trace(path))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        explainer.load_trace(tmp_path / "nope.st")


def test_garbage_file(tmp_path):
    path = tmp_path / "bad.st"
    path.write_bytes(b"this is not a trace" * 10)
    with pytest.raises(explainer.TraceFileError, match="not a readable sd-explainer trace"):
        explainer.load_trace(path)


def test_truncated_file(basic_trace, tmp_path):
    path = basic_trace.save(tmp_path / "t.st")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(explainer.TraceFileError):
        explainer.load_trace(path)


def test_other_safetensors_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(path))
    with pytest.raises(explainer.TraceFileError, match="not an sd-explainer trace"):
        explainer.load_trace(path)


def test_newer_format_version(basic_trace, tmp_path, monkeypatch):
    future = trace_module.FORMAT_VERSION + 1
    monkeypatch.setattr(trace_module, "FORMAT_VERSION", future)
    path = basic_trace.save(tmp_path / "future.st")
    monkeypatch.undo()
    with pytest.raises(explainer.TraceFileError, match=f"format version {future}"):
        explainer.load_trace(path)


def test_corrupt_json_and_missing_arrays(basic_trace, tmp_path):
    arrays = {k: np.ascontiguousarray(v) for k, v in basic_trace._arrays().items()}
    meta = {"format": "sd-explainer-trace", "format_version": "1", "trace": "{not json"}
    save_file(arrays, str(tmp_path / "json.st"), metadata=meta)
    with pytest.raises(explainer.TraceFileError):
        explainer.load_trace(tmp_path / "json.st")
    good = explainer.load_trace(basic_trace.save(tmp_path / "good.st"))
    del arrays["x0"]
    header = json.loads(
        json.loads(
            (tmp_path / "good.st").read_bytes()[8 : 8 + struct.unpack("<Q", (tmp_path / "good.st").read_bytes()[:8])[0]]
        )["__metadata__"]["trace"]
    )
    save_file(arrays, str(tmp_path / "missing.st"), metadata={**meta, "trace": json.dumps(header)})
    with pytest.raises(explainer.TraceFileError, match="lacks arrays"):
        explainer.load_trace(tmp_path / "missing.st")
    assert good.num_steps == basic_trace.num_steps
