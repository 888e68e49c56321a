"""Bad input across the public API and the CLI: each case gets a clear error naming the argument, or is handled.

Tables of cases per entry point (``explainer.__all__`` and ``explainer run/export/info``). Each case
checks the exception type and that the message names the argument or value and what to do. Runs that
must fail inside the model are made to fail cheaply (a hook, a one-step run, a patched allocation).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors import safe_open
from safetensors.numpy import save_file

import explainer
from explainer.cli import main
from explainer.tracing import RecordSpec, previews
from explainer.tracing.recorder import Recorder

PROMPT = "a red cube beside a blue sphere"


def run(pipe, prompt=PROMPT, **kwargs):
    kwargs.setdefault("num_inference_steps", 1)
    kwargs.setdefault("progress", False)
    return explainer.trace(pipe, prompt, **kwargs)


@pytest.fixture(scope="module")
def other_vae():
    """A VAE with another latent layout (8 channels) than the tiny pipeline's (4)."""
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=8,
        norm_num_groups=8,
    ).eval()


@pytest.fixture(scope="module")
def big_trace(pipe):
    """A trace at another size (64x64) than ``basic_trace`` (32x32), with the same number of steps."""
    return explainer.trace(pipe, PROMPT, num_inference_steps=3, scheduler="ddim", height=64, width=64, progress=False)


# ------------------------------------------------------------------------------- explainer.trace


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"record": RecordSpec(dtype="int8")}, ValueError, r"record\['dtype'\]='int8' is not allowed; use one of"),
        ({"record": RecordSpec(attention="bogus")}, ValueError, r"record='bogus' is not a recording mode; use one of"),
        ({"record": RecordSpec(tokens="some")}, ValueError, r"record\['tokens'\]='some' is not allowed"),
        ({"record": RecordSpec(max_bytes=0)}, ValueError, r"record\['max_bytes'\]=0 must be a positive integer"),
        ({"record": RecordSpec(max_bytes=1000)}, explainer.TraceBudgetError, r"over the budget of 0\.0 MB; record less"),
        ({"progress": "yes"}, TypeError, r"progress must be True or False, not str"),
        ({"mask": np.ones((32, 32), bool)}, ValueError, r"mask needs image=: pass the picture to inpaint"),
        ({"strength": 0.5}, ValueError, r"strength=0\.5 applies to image-to-image and inpainting only; pass image="),
        ({"image": "photo.png", "num_inference_steps": 4}, TypeError, r"image must be a PIL image or a numpy array \[H, W, 3\], not str"),
        ({"image": np.zeros((32, 32, 3)), "strength": 1.5}, ValueError, r"strength=1\.5 is not allowed; use a number"),
        ({"image": np.zeros((32, 32, 3)), "mask": np.ones((16, 16)), "num_inference_steps": 4}, ValueError, r"mask is 16x16 pixels but image is"),
        ({"guidance_scale": float("inf")}, ValueError, r"guidance_scale=inf is not allowed; use a finite number"),
    ],
    ids=["spec-dtype", "spec-attention", "spec-tokens", "spec-max_bytes", "spec-budget", "progress", "mask-alone",
         "strength-alone", "image-type", "strength-range", "mask-size", "guidance-inf"],
)
def test_trace_refuses(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        run(pipe, **kwargs)


def test_a_valid_record_spec_is_accepted(pipe):
    tr = run(pipe, record=RecordSpec(attention="per_step", dtype="float32"))
    assert tr.attention_mode == "per_step" and tr.latents.dtype == np.float32


def _nan_on_unet_call(pipe, call: int):
    """A forward hook that turns the UNet's output into NaN from its ``call``-th call on."""
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        if calls["n"] >= call:
            return (torch.full_like(output[0], float("nan")),) if isinstance(output, tuple) else type(output)(
                sample=torch.full_like(output.sample, float("nan"))
            )
        return None

    return pipe.unet.register_forward_hook(hook)


@pytest.mark.parametrize("lag", [0, 2, 5])
def test_non_finite_model_output_names_the_step_and_keeps_the_finished_ones(pipe, monkeypatch, lag):
    """Read at once (CPU), two steps late (CUDA) or only after the run: the same error and partial trace."""
    monkeypatch.setattr(Recorder, "finite_check_lag", lag)
    handle = _nan_on_unet_call(pipe, 3)
    try:
        with pytest.raises(FloatingPointError, match=r"^step 2 of 4 \(timestep \d+\) gave NaN or infinite values in "
                                                     r"the UNet output") as info:  # fmt: skip
            run(pipe, num_inference_steps=4, scheduler="ddim")
    finally:
        handle.remove()
    partial = info.value.partial_trace
    assert not partial.complete and partial.num_steps == 2 and partial.error.startswith("FloatingPointError: step 2")
    assert np.isfinite(partial.latents).all() and np.isfinite(partial.x0).all() and np.isfinite(partial.eps_cond).all()
    assert partial.latents.shape[0] == 3 and all(a.shape[0] == 2 for a in partial.attention.values())
    assert partial.final_image is None


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("lag", [0, 2])
def test_absurd_guidance_is_caught_during_the_run(pipe, monkeypatch, dtype, lag):
    monkeypatch.setattr(Recorder, "finite_check_lag", lag)
    with pytest.raises(FloatingPointError, match=r"gave NaN or infinite values .*guidance_scale=1e\+30 is far above"):
        run(pipe, num_inference_steps=3, scheduler="ddim", guidance_scale=1e30, record={"dtype": dtype})


def test_out_of_memory_at_a_huge_size_is_not_hidden(pipe, monkeypatch):
    """The partial trace of a run that failed before its first latent allocates nothing of that size."""

    def no_memory(*args, **kwargs):
        raise MemoryError("out of memory allocating the latents")

    monkeypatch.setattr(pipe, "prepare_latents", no_memory)
    side = 1 << 16  # 65536 px: a [1, 4, 32768, 32768] latent would take 8.6 GB in float16
    with pytest.raises(MemoryError, match="^out of memory allocating the latents") as info:
        run(pipe, height=side, width=side, record={"attention": "none", "max_bytes": 1 << 50})
    partial = info.value.partial_trace
    assert partial.latents.shape == (1, 4, side // 2, side // 2) and partial.latents.strides == (0, 0, 0, 0)
    assert partial.num_steps == 0 and not partial.complete


def test_a_failing_partial_build_keeps_the_runs_own_error(pipe, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError("no memory for the partial trace")

    monkeypatch.setattr(Recorder, "build", no_memory)
    handle = pipe.unet.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(RuntimeError("device lost")))
    try:
        with pytest.raises(RuntimeError, match="^device lost") as info:
            run(pipe)
    finally:
        handle.remove()
    assert any("no partial trace (MemoryError" in note for note in info.value.__notes__)


def test_truncation_warning_is_short(pipe, caplog):
    prompt = " ".join(["cube"] * 2000)
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="tokens were dropped") as record:
        tr = run(pipe, prompt, record="none", guidance_scale=1.0)
    messages = [str(w.message) for w in record if "tokens were dropped" in str(w.message)]
    assert len(messages) == 1 and len(messages[0]) < 300
    assert messages[0].startswith(f"prompt is longer than the tokenizer's 77 tokens; {len(tr.truncated_tokens)} tokens")
    assert "and 1920 more (all in trace.truncated_tokens)" in messages[0]
    assert not [r for r in caplog.records if "was truncated" in r.getMessage()]  # diffusers' full-text record


# ------------------------------------------------------------------------------- estimate_trace_bytes, outpaint


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prompt": 3}, TypeError, r"prompt must be a string"),
        ({"record": RecordSpec(dtype="int8")}, ValueError, r"record\['dtype'\]='int8'"),
        ({"num_inference_steps": 0}, ValueError, r"num_inference_steps=0 is not allowed"),
        ({"height": 30}, ValueError, r"height=30 is not allowed; .* multiple of 4"),
    ],
    ids=["prompt", "record", "steps", "height"],
)
def test_estimate_trace_bytes_refuses(pipe, kwargs, error, match):
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(error, match=match):
        explainer.estimate_trace_bytes(pipe, kwargs.pop("prompt"), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, r"outpaint needs at least one margin > 0"),
        ({"left": -4}, ValueError, r"left"),
        ({"right": 8, "fill": "mirror"}, ValueError, r"fill='mirror' is not allowed; use one of"),
        ({"right": 8, "mask": np.ones((8, 8))}, TypeError, r"outpaint\(\) sets mask itself"),
        ({"right": 8, "image": "photo.png"}, TypeError, r"image must be a PIL image or a numpy array"),
    ],
    ids=["no-margin", "negative", "fill", "mask", "image"],
)
def test_outpaint_refuses(pipe, basic_trace, kwargs, error, match):
    kwargs = {"image": basic_trace.final_image, **kwargs}
    with pytest.raises(error, match=match):
        explainer.outpaint(pipe, PROMPT, kwargs.pop("image"), num_inference_steps=1, progress=False, **kwargs)


# ------------------------------------------------------------------------------- load_pipeline


@pytest.fixture()
def no_cuda(monkeypatch):
    """A CPU-only torch, whatever this machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture()
def pickle_model(tmp_path):
    """A pipeline folder whose UNet has only a ``.bin`` (pickle) weights file."""
    folder = tmp_path / "bin-model"
    shutil.copytree(explainer.toy_model_path(), folder)
    unet = folder / "unet"
    for weights in unet.glob("*.safetensors"):
        weights.unlink()
    (unet / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    return folder


def test_load_pipeline_on_cuda_without_cuda(no_cuda):
    with pytest.raises(ValueError, match=r"^device='cuda' is not available: .*; use device='cpu', or device=None"):
        explainer.load_pipeline(device="cuda")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": 123}, TypeError, r"model must be 'toy', a folder path or a Hub id string, not int"),
        ({"device": "gpu0"}, ValueError, r"device='gpu0' is not a torch device; use e\.g\. 'cpu'"),
        ({"device": 3.5}, ValueError, r"device=3\.5 is not a torch device"),
        ({"dtype": "int8"}, ValueError, r"dtype='int8' is not supported; use None, torch\.float32"),
        ({"model": "./no/such/model"}, FileNotFoundError, r"no model folder at no/such/model; pass an existing folder"),
    ],
    ids=["model-type", "device-name", "device-type", "dtype", "missing-folder"],
)
def test_load_pipeline_refuses(kwargs, error, match):
    with pytest.raises(error, match=match):
        explainer.load_pipeline(**kwargs)


def test_load_pipeline_refuses_a_missing_cuda_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device='cuda:3' is not available: this machine has 1 CUDA device"):
        explainer.load_pipeline(device="cuda:3")


def test_load_pipeline_refuses_a_folder_without_model_index(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is not a diffusers pipeline folder \(it has no model_index\.json\)"):
        explainer.load_pipeline(tmp_path)


def test_load_pipeline_refuses_pickle_weights(pickle_model):
    with pytest.raises(FileNotFoundError, match=r"unet has only pickle weights \(diffusion_pytorch_model\.bin\), and "
                                                r"load_pipeline reads safetensors only"):  # fmt: skip
        explainer.load_pipeline(pickle_model)


# ------------------------------------------------------------------------------- Trace.save and load_trace


def _file_parts(trace, tmp_path):
    """``(arrays, header, meta)`` of ``trace`` as saved, to write altered copies."""
    path = trace.save(tmp_path / "original.safetensors", quantize_attention=False)  # float maps: any version's layout
    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    return arrays, json.loads(meta["trace"]), meta


def _write(tmp_path, arrays, header, meta, name="altered.safetensors"):
    path = tmp_path / name
    save_file(arrays, str(path), metadata={**meta, "trace": json.dumps(header)})
    return path


def _bigger(header):
    header["metadata"].update(height=4096, width=4096)


def _extra_array(arrays):
    arrays["junk"] = np.zeros((64, 64), np.float32)


def _wrong_layer_group(arrays):
    arrays["attention/cond/99x99"] = np.zeros((3, 1, 9, 99, 99), np.float16)


def _int8_latents(arrays):
    arrays["latents"] = arrays["latents"].astype(np.int8)


def _wide_attention(arrays):
    key = "attention/cond/16x16"
    arrays[key] = np.zeros((*arrays[key].shape[:-1], 17), np.float16)


def _edit_array_in_txt2img(arrays):
    arrays["input_image"] = np.zeros((32, 32, 3), np.uint8)


def _small_final_image(arrays):
    arrays["final_image"] = arrays["final_image"][:16]


def _extra_step(arrays):
    arrays["eps_cond"] = np.concatenate([arrays["eps_cond"], arrays["eps_cond"][:1]])


def _steps_recorded(header):
    header["metadata"]["num_steps_recorded"] = 7


def _uncond_without_guidance(header):
    header["metadata"]["classifier_free_guidance"] = False


@pytest.mark.parametrize(
    ("alter", "match"),
    [
        (_bigger, r"its metadata says 4096x4096 pixels \(latents 2048x2048 at VAE scale factor 2\), but its latents are "
                  r"16x16"),
        (_extra_array, r"it holds arrays a txt2img trace with attention='per_layer' does not have: \['junk'\]"),
        (_wrong_layer_group, r"does not have: \['attention/cond/99x99'\]"),
        (_int8_latents, r"its array 'latents' has dtype I8; a trace stores F16 or BF16 or F32 or F64 there"),
        (_wide_attention, r"its array 'attention/cond/16x16' has shape \[3, 3, 9, 16, 17\]; its metadata implies "
                           r"\[3, 3, 9, 16, 16\]"),
        (_edit_array_in_txt2img, r"does not have: \['input_image'\]"),
        (_small_final_image, r"its array 'final_image' has shape \[16, 32, 3\]; its metadata implies \[32, 32, 3\]"),
        (_extra_step, r"its array 'eps_cond' has shape \[4, 4, 16, 16\]; its metadata implies \[3, 4, 16, 16\]"),
        (_steps_recorded, r"its metadata records 7 steps, but its latents hold 3"),
        (_uncond_without_guidance, r"does not have: \['attention/uncond/16x16', 'attention/uncond/8x8', 'eps_uncond'\]"),
    ],
    ids=lambda f: f.__name__.strip("_") if callable(f) else "",
)
def test_load_trace_checks_arrays_against_metadata(basic_trace, tmp_path, alter, match):
    arrays, header, meta = _file_parts(basic_trace, tmp_path)
    alter(header if "header" in alter.__code__.co_varnames else arrays)
    path = _write(tmp_path, arrays, header, meta)
    with pytest.raises(explainer.TraceFileError, match=match) as info:
        explainer.load_trace(path)
    assert str(info.value).startswith(f"{path}: ")


def test_load_trace_reads_format_version_1(basic_trace, tmp_path):
    """Version-1 files (text-to-image only, no ``mode`` in the metadata) still load and pass the checks."""
    arrays, header, meta = _file_parts(basic_trace, tmp_path)
    del header["metadata"]["mode"]
    loaded = explainer.load_trace(_write(tmp_path, arrays, header, {**meta, "format_version": "1"}))
    assert loaded.mode == "txt2img" and loaded.num_steps == basic_trace.num_steps


@pytest.mark.parametrize(("path", "name"), [(123, "int"), (None, "NoneType"), (b"t.safetensors", "bytes")])
def test_load_trace_refuses_non_paths(path, name):
    with pytest.raises(TypeError, match=rf"^path must be a str or Path naming a trace file, not {name}\.$"):
        explainer.load_trace(path)


def test_save_refuses_a_folder(basic_trace, tmp_path):
    with pytest.raises(IsADirectoryError, match=rf"^path='{tmp_path}' is a folder; give a file name inside it"):
        basic_trace.save(tmp_path)


def test_save_refuses_a_path_under_a_file(basic_trace, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match=rf"cannot be written: {blocker} is a file, not a folder"):
        basic_trace.save(blocker / "run.safetensors")


def test_save_refuses_a_non_path(basic_trace):
    with pytest.raises(TypeError, match=r"^path must be a str or Path, not int\.$"):
        basic_trace.save(3)


def test_save_creates_missing_folders(basic_trace, tmp_path):
    path = basic_trace.save(tmp_path / "new" / "deeper" / "run.safetensors")
    assert explainer.load_trace(path).uid == basic_trace.uid


# ------------------------------------------------------------------------------- Trace views


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda tr, vae: tr.preview("1"), TypeError, r"step must be an int, not str"),
        (lambda tr, vae: tr.preview(0, method="fast"), ValueError, r"method='fast' is not allowed; use 'linear', 'taesd' or 'vae'"),
        (lambda tr, vae: tr.preview(0, method="vae", pipe="toy"), TypeError,
         r"pipe must be a diffusers pipeline with a VAE, or an AutoencoderKL, not str; load one with"),
        (lambda tr, vae: tr.preview(0, method="vae", pipe=vae), ValueError,
         r"pipe's VAE decodes latents with 8 channels, but these latents have shape \[4, 16, 16\]"),
        (lambda tr, vae: tr.preview(tr.num_steps, kind="xt", method="vae", pipe=vae), ValueError, r"with 8 channels"),
        (lambda tr, vae: tr.what_if(0, float("nan")), ValueError, r"guidance_scale=nan is not allowed"),
        (lambda tr, vae: tr.what_if(0, "7"), TypeError, r"guidance_scale must be a number, not str"),
        (lambda tr, vae: tr.what_if(0, 3.0, method="vae", pipe=vae), ValueError, r"decodes latents with 8 channels"),
        (lambda tr, vae: tr.what_if(0, 3.0, method="vae"), ValueError, r"method='vae' decodes with the model: pass pipe="),
        (lambda tr, vae: tr.heatmap("cube", step=2.5), TypeError, r"step"),
        (lambda tr, vae: tr.heatmap(["cube"]), TypeError, r"word_or_token_index"),
    ],
    ids=["preview-step", "preview-method", "preview-pipe-name", "preview-other-vae", "preview-xt-other-vae",
         "what_if-nan", "what_if-type", "what_if-other-vae", "what_if-no-pipe", "heatmap-step", "heatmap-word"],
)
def test_trace_views_refuse(basic_trace, other_vae, call, error, match):
    with pytest.raises(error, match=match):
        call(basic_trace, other_vae)


def test_vae_preview_cache_follows_the_content(pipe, basic_trace):
    """A trace changed with dataclasses.replace keeps its uid but must not get the original's decodes."""
    previews.clear_preview_cache()
    before = basic_trace.preview(0, method="vae", pipe=pipe)
    changed = dataclasses.replace(basic_trace, x0=basic_trace.x0[::-1].copy())
    assert changed.uid == basic_trace.uid
    after = changed.preview(0, method="vae", pipe=pipe)
    expected = previews.to_pil(previews.decode_latents(pipe.vae, changed.latent(0)[None])[0].permute(1, 2, 0).numpy())
    assert after.tobytes() == expected.tobytes() and after.tobytes() != before.tobytes()
    assert basic_trace.preview(0, method="vae", pipe=pipe) is before  # the original is still served from the cache
    exported = previews.decode_steps(changed, pipe, "x0", steps=[0])[0]
    assert exported is after  # one cache for previews and exports, keyed by the latent


def test_fit_latent_rgb_factors_refuses(basic_trace, other_vae):
    with pytest.raises(TypeError, match=r"pipe must be a diffusers pipeline with a VAE.*not str"):
        explainer.fit_latent_rgb_factors("toy", basic_trace)
    with pytest.raises(ValueError, match=r"latents must have shape \[N, 8, h, w\] for this VAE, got \(3, 4, 16, 16\)"):
        explainer.fit_latent_rgb_factors(other_vae, basic_trace)


# ------------------------------------------------------------------------------- export


@pytest.mark.parametrize(
    ("target", "kwargs", "error", "match"),
    [
        ("folder.gif", {}, IsADirectoryError, r"path='.*folder\.gif' is a folder; give a file name inside it, e\.g\. "),
        ("folder", {}, IsADirectoryError, r"path='.*folder' is a folder; give a file name inside it, e\.g\. .*steps\.gif"),
        ("notes.txt/out.gif", {}, NotADirectoryError, r"cannot be written: .*notes\.txt is a file, not a folder"),
        ("out.avi", {}, ValueError, r"cannot export to '\.avi': choose a file name ending in one of"),
        ("out.gif", {"columns": 2}, TypeError, r"option\(s\) \['columns'\] do not apply to \.gif export"),
        ("out.gif", {"pipe": "other"}, ValueError, r"pipe's VAE decodes latents with 8 channels"),
    ],
    ids=["folder-with-suffix", "folder", "under-a-file", "suffix", "option", "other-vae"],
)
def test_export_refuses(basic_trace, other_vae, tmp_path, target, kwargs, error, match):
    (tmp_path / "folder.gif").mkdir()
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    kwargs = {k: other_vae if v == "other" else v for k, v in kwargs.items()}
    with pytest.raises(error, match=match):
        explainer.export(basic_trace, tmp_path / target, verbose=False, **kwargs)


@pytest.mark.parametrize(("trace", "path", "match"), [("run.safetensors", "a.gif", r"trace must be an explainer Trace"),
                                                       (None, 3, r"path must be a str or Path, not int")])  # fmt: skip
def test_export_refuses_wrong_types(basic_trace, trace, path, match):
    with pytest.raises(TypeError, match=match):
        explainer.export(trace if trace is not None else basic_trace, path)


# ------------------------------------------------------------------------------- explore and compare


def test_explore_shows_errors_inside_the_widget(basic_trace, pipe):
    assert explainer.explore(basic_trace, pipe="toy").error.startswith(
        "TypeError: pipe must be a diffusers pipeline with a VAE, or an AutoencoderKL, not str; load one with"
    )
    assert explainer.explore(3).error.startswith("TypeError: prompt_or_trace must be a prompt (str) or an explainer.Trace")
    assert explainer.explore(PROMPT, pipe="toy").error.startswith("UnsupportedPipelineError: pipe must be a diffusers")
    assert explainer.explore(PROMPT, pipe=pipe, num_inference_steps=0).error.startswith(
        "ValueError: num_inference_steps=0 is not allowed"
    )
    no_rgb = dataclasses.replace(basic_trace, latent_rgb=None)
    assert explainer.explore(no_rgb).error.startswith("ValueError: this trace has no latent->RGB factors")


def test_explore_shows_a_vae_of_another_layout_inside_the_widget(pipe, basic_trace, other_vae):
    widget = explainer.explore(basic_trace, pipe=other_vae)
    assert widget.error.startswith("ValueError: pipe's VAE decodes latents with 8 channels")


@pytest.mark.parametrize(
    ("pair", "kwargs", "match"),
    [
        (("basic", "big"), {}, r"^ValueError: compare needs traces of one size and latent layout: a is 32x32 \(latent "
                               r"4x16x16\), b is 64x64 \(latent 4x32x32\); trace both with the same model"),
        (("basic", 3), {}, r"^TypeError: compare takes prompts \(str\) or explainer\.Trace objects, not int"),
        (("basic", "basic"), {"pipe": "toy"}, r"^TypeError: pipe must be a diffusers pipeline with a VAE"),
    ],
    ids=["sizes", "type", "pipe-name"],
)
def test_compare_shows_errors_inside_the_widget(basic_trace, big_trace, pair, kwargs, match):
    traces = {"basic": basic_trace, "big": big_trace}
    box = explainer.compare(*(traces.get(p, p) if isinstance(p, str) else p for p in pair), **kwargs)
    assert box.explorers == []
    assert re.match(match, box.children[0].error), box.children[0].error


def test_compare_steps_differ(pipe, basic_trace):
    short = explainer.trace(pipe, PROMPT, num_inference_steps=2, scheduler="ddim", progress=False)
    box = explainer.compare(basic_trace, short)
    assert box.children[0].error == "ValueError: compare needs the same number of steps on both sides, got 3 and 2."


# ------------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def tiny_model(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def cli_error(capsys, argv: list[str]) -> str:
    """Run ``main(argv)``; check it exits with status 2 and one error line, and return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: explainer") and not any("Traceback" in line for line in err)
    return err[-1]


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail the test if the command loads a model (its error must come before any work)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was noticed")

    monkeypatch.setattr(explainer.models, "load_pipeline", refuse)


def test_cli_run_device_without_cuda(no_cuda, tmp_path, capsys):
    line = cli_error(capsys, ["run", "a cat", "--device", "cuda", "--out", str(tmp_path / "o"), "--quiet"])
    assert line.startswith("explainer run: error: --device cuda: device='cuda' is not available:")
    assert not (tmp_path / "o").exists()


def test_cli_run_pickle_model(pickle_model, tmp_path, capsys):
    line = cli_error(capsys, ["run", "a cat", "--model", str(pickle_model), "--out", str(tmp_path / "o")])
    assert line.startswith(f"explainer run: error: --model {pickle_model}: {pickle_model / 'unet'} has only pickle")


def test_cli_run_out_under_a_file_fails_before_the_run(no_model_load, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    line = cli_error(capsys, ["run", "a cat", "--out", str(blocker / "demo"), "--quiet"])
    assert line == f"explainer run: error: --out {blocker / 'demo'}: {blocker} is a file, so no folder can be made there"


def test_cli_run_absurd_guidance(tiny_model, tmp_path, capsys):
    argv = ["run", "a cat", "--model", str(tiny_model), "--steps", "2", "--scheduler", "ddim", "--guidance", "1e30",
            "--out", str(tmp_path / "o"), "--quiet"]  # fmt: skip
    line = cli_error(capsys, argv)
    assert line.startswith("explainer run: error: step 0 of 2 (timestep ") and "guidance_scale=1e+30 is far above" in line
    assert not (tmp_path / "o").exists()


@pytest.fixture()
def saved_trace(basic_trace, tmp_path):
    return basic_trace.save(tmp_path / "t.safetensors")


@pytest.mark.parametrize("target", ["folder", "folder.gif"])
def test_cli_export_onto_a_folder(saved_trace, tmp_path, capsys, target):
    (tmp_path / target).mkdir()
    line = cli_error(capsys, ["export", str(saved_trace), str(tmp_path / target), "--quiet"])
    suffix = ".gif"
    assert line == (f"explainer export: error: OUT {tmp_path / target} is a folder; give a file name inside it, "
                    f"e.g. {tmp_path / target / ('steps' + suffix)}")  # fmt: skip


def test_cli_export_under_a_file(saved_trace, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    line = cli_error(capsys, ["export", str(saved_trace), str(blocker / "a.gif"), "--quiet"])
    assert line.startswith(f"explainer export: error: OUT {blocker / 'a.gif'}: path=") and "is a file, not a folder" in line


@pytest.mark.parametrize("command", ["info", "export"])
def test_cli_refuses_an_inconsistent_trace_file(basic_trace, tmp_path, capsys, command):
    arrays, header, meta = _file_parts(basic_trace, tmp_path)
    _bigger(header)
    path = _write(tmp_path, arrays, header, meta)
    argv = ["info", str(path)] if command == "info" else ["export", str(path), str(tmp_path / "a.gif"), "--quiet"]
    line = cli_error(capsys, argv)
    assert line.startswith(f"explainer {command}: error: {path}: its metadata says 4096x4096 pixels")
    assert not (tmp_path / "a.gif").exists()

