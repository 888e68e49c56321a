"""Trace file format 4: uint8 attention maps (fidelity bounds), lazy loading, identical re-saves, old versions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import explainer
from explainer.tracing import storage
from explainer.tracing.storage import QuantizedMaps


def _per_map_r(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each ``[h, w]`` map of ``x`` with the same map of ``y`` (1 for constant maps)."""
    a = x.astype(np.float64).reshape(-1, x.shape[-2] * x.shape[-1])
    b = y.astype(np.float64).reshape(a.shape)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1), 1.0)


def _assert_within_bounds(original: np.ndarray, restored: np.ndarray) -> None:
    """The issue's bound: each map's r >= 0.999 and max abs error <= 1/255 of that map's peak."""
    x, y = original.astype(np.float32), np.asarray(restored).astype(np.float32)
    peak = np.abs(x).max(axis=(-2, -1), keepdims=True)
    assert (np.abs(x - y) <= peak / 255).all()
    assert _per_map_r(x, y).min() >= 0.999


def test_quantised_maps_of_a_real_trace_match_the_float_ones(basic_trace, tmp_path):
    loaded = explainer.load_trace(basic_trace.save(tmp_path / "q.safetensors"))
    assert basic_trace.attention and all(isinstance(v, QuantizedMaps) for v in loaded.attention.values())
    for key, maps in basic_trace.attention.items():
        assert loaded.attention[key].dtype == maps.dtype and loaded.attention[key].shape == maps.shape
        _assert_within_bounds(maps, loaded.attention[key])
    for word in ("cube", "sphere"):  # what a user sees: the heat maps
        assert np.abs(loaded.heatmap(word) - basic_trace.heatmap(word)).max() < 2 / 255


@pytest.mark.parametrize("kind", ["peaked", "flat_offset", "tiny", "uniform_noise", "constant", "float32"])
def test_quantisation_bound_on_hard_maps(kind):
    rng = np.random.default_rng(0)
    maps = rng.random((3, 2, 5, 8, 8)).astype(np.float32)
    if kind == "peaked":  # one hot spot on a near-zero field
        maps = maps * 1e-3
        maps[..., 3, 4] = 0.9
    elif kind == "flat_offset":  # narrow range far from zero: the per-map minimum matters
        maps = 0.5 + maps * 0.01
    elif kind == "tiny":  # float16 subnormals
        maps = maps * 1e-6
    elif kind == "constant":
        maps = np.full_like(maps, 0.25)
    maps = maps.astype(np.float32 if kind == "float32" else np.float16)
    levels, ranges = storage.quantize_maps(maps)
    assert levels.dtype == np.uint8 and ranges.shape == (3, 2, 5, 2) and ranges.dtype == maps.dtype
    back = storage.dequantize_maps(levels, ranges)
    assert back.dtype == maps.dtype
    _assert_within_bounds(maps, back)
    assert np.array_equal(storage.quantize_maps(back)[0], levels)  # dequantised maps quantise to the same levels


def test_quantised_file_is_smaller_and_float_storage_stays_exact(basic_trace, tmp_path):
    small = basic_trace.save(tmp_path / "q.safetensors")
    exact = basic_trace.save(tmp_path / "f.safetensors", quantize_attention=False)
    with safe_open(str(small), framework="numpy") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert {dtypes[k] for k in dtypes if k.startswith("attention/")} == {"U8"}
    assert {k.removeprefix("attention_range/") for k in dtypes if k.startswith("attention_range/")} == set(
        basic_trace.attention)
    attention_bytes = sum(a.nbytes for a in basic_trace.attention.values())
    saved = exact.stat().st_size - small.stat().st_size
    assert saved > 0.4 * attention_bytes  # about half the maps' bytes, less the ranges
    loaded = explainer.load_trace(exact)
    assert all(np.array_equal(loaded.attention[k], v) for k, v in basic_trace.attention.items())
    with pytest.raises(TypeError, match="quantize_attention must be True or False"):
        basic_trace.save(tmp_path / "x.safetensors", quantize_attention="yes")


def test_lazy_load_reads_what_is_indexed(basic_trace, tmp_path):
    path = basic_trace.save(tmp_path / "t.safetensors")
    loaded = explainer.load_trace(path)
    assert isinstance(loaded.latents, np.memmap) or loaded.latents.nbytes < storage.LAZY_MIN_BYTES
    maps = next(iter(loaded.attention.values()))
    one = maps[1]  # one step: dequantised alone, nothing else kept
    assert maps._full is None and isinstance(one, np.ndarray) and one.shape == maps.shape[1:]
    key = next(iter(loaded.attention))
    assert np.array_equal(one, np.asarray(maps)[1])
    picked = maps[np.ix_([0, 2], [1], [0, 1])]
    assert np.array_equal(picked, np.asarray(maps)[np.ix_([0, 2], [1], [0, 1])])
    assert np.array_equal(maps[..., 0], np.asarray(maps)[..., 0])  # other indexing goes through the full array
    assert maps.astype(np.float32).dtype == np.float32 and maps.mean() == np.asarray(maps).mean()
    with pytest.raises(ValueError):
        np.asarray(maps)[0] = 0  # the dequantised array is read-only: the stored levels are the data
    _assert_within_bounds(basic_trace.attention[key], maps)


def test_lazily_loaded_trace_resaves_identically_and_onto_its_own_file(basic_trace, tmp_path):
    path = basic_trace.save(tmp_path / "t.safetensors")
    original = path.read_bytes()
    loaded = explainer.load_trace(path)
    loaded.heatmap("cube", step=1)  # touched (partly dequantised) before saving
    assert loaded.save(tmp_path / "copy.safetensors").read_bytes() == original
    loaded.latents[0] += 1  # copy-on-write: the loaded arrays change, the file does not
    assert path.read_bytes() == original
    loaded.save(path)  # onto the very file it maps: written beside it, then moved into place
    again = explainer.load_trace(path)
    assert np.array_equal(again.latents[0], loaded.latents[0]) and not np.array_equal(again.latents[0],
                                                                                       basic_trace.latents[0])
    assert not list(tmp_path.glob(".*partial"))


def test_version_3_files_load_and_uint8_maps_need_version_4_and_ranges(basic_trace, tmp_path):
    path = basic_trace.save(tmp_path / "f.safetensors", quantize_attention=False)
    with safe_open(str(path), framework="numpy") as f:
        meta, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format_version"] == "4"
    old = tmp_path / "v3.safetensors"
    save_file(arrays, str(old), metadata={**meta, "format_version": "3"})
    v3 = explainer.load_trace(old)
    assert all(np.array_equal(v3.attention[k], v) for k, v in basic_trace.attention.items())
    quantised = basic_trace.save(tmp_path / "q.safetensors")
    with safe_open(str(quantised), framework="numpy") as f:
        qarrays = {k: f.get_tensor(k) for k in f.keys()}
    save_file(qarrays, str(old), metadata={**meta, "format_version": "3"})
    with pytest.raises(explainer.TraceFileError, match="has dtype U8"):
        explainer.load_trace(old)
    key = next(k for k in qarrays if k.startswith("attention_range/"))
    del qarrays[key]
    save_file(qarrays, str(old), metadata=meta)
    with pytest.raises(explainer.TraceFileError, match="lack their per-map ranges"):
        explainer.load_trace(old)
    header = json.loads(meta["trace"])
    assert header["attention_mode"] == basic_trace.attention_mode
