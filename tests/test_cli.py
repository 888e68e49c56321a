"""The ``explainer`` command line: run -> export -> info end to end, help, and exit status 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

import explainer
from explainer.cli import RUN_FILES, main
from explainer.export import FrameRenderer

PROMPT = "a red circle above a blue square"


@pytest.fixture(scope="module")
def tiny_model(pipe, tmp_path_factory):
    """The tiny conftest pipeline saved in diffusers layout, so ``--model PATH`` can load it."""
    folder = tmp_path_factory.mktemp("tiny-model")
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    argv = ["run", PROMPT, "--model", str(tiny_model), "--steps", "3", "--scheduler", "ddim", "--seed", "1",
            "--guidance", "5", "--negative", "blurry", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return out


def error_of(capsys, argv: list[str]) -> str:
    """Run ``main(argv)``, check it exits with status 2, and return what it printed on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: explainer" in err
    return err.strip().splitlines()[-1]


def test_run_writes_trace_image_gif_and_html(run_dir, capsys):
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(RUN_FILES.values())
    loaded = explainer.load_trace(run_dir / RUN_FILES["trace"])
    assert loaded.prompt == PROMPT and loaded.negative_prompt == "blurry"
    assert loaded.num_steps == 3 and loaded.guidance_scale == 5.0 and loaded.metadata["seed"] == 1
    assert loaded.metadata["scheduler"]["class"] == "DDIMScheduler"
    with Image.open(run_dir / RUN_FILES["image"]) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(loaded.final_image))
    with Image.open(run_dir / RUN_FILES["gif"]) as gif:
        assert gif.n_frames == 3
    page = (run_dir / RUN_FILES["html"]).read_text(encoding="utf-8")
    assert '"prompt":"a red circle above a blue square"' in page


def test_export_then_info(run_dir, tmp_path, capsys):
    trace_file = str(run_dir / RUN_FILES["trace"])
    out = tmp_path / "steps.mp4"
    assert main(["export", trace_file, str(out), "--size", "64", "--fps", "4", "--hold", "0", "--quiet"]) == 0
    assert f"wrote {out} (3 frames" in capsys.readouterr().out
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = reader.__next__()
    assert meta["fps"] == 4 and len(list(reader)) == 3
    grid = tmp_path / "grid.png"
    assert main(["export", trace_file, str(grid), "--panels", "x0,final", "--words", "circle", "--steps", "0,-1",
                 "--no-captions", "--size", "32", "--quiet"]) == 0  # fmt: skip
    with Image.open(grid) as png:  # 2 steps x 3 rows (x0, final, "circle") of 32 px cells, 8 px apart
        assert png.size == (8 + 2 * 40, 8 + 3 * 40)

    assert main(["info", trace_file]) == 0
    text = capsys.readouterr().out
    assert f"prompt     {PROMPT!r}" in text
    assert "negative   'blurry'" in text
    assert "tokens     9: <|startoftext|> a</w> red</w> circle</w>" in text
    assert "settings   steps 3, guidance 5, seed 1" in text
    assert "scheduler  DDIMScheduler" in text and "image      32x32, latent 4x16x16" in text
    assert main(["info", trace_file, "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["words"] == ["a", "red", "circle", "above", "a", "blue", "square"]
    assert (facts["steps"], facts["width"], facts["latent_shape"], facts["complete"]) == (3, 32, [4, 16, 16], True)


def test_toy_model_end_to_end(tmp_path, capsys):
    """`explainer run` on the bundled toy model, then export and info (the README's main job)."""
    out = tmp_path / "toy"
    assert main(["run", "a red circle above a blue square", "--steps", "4", "--out", str(out), "--quiet"]) == 0
    trace_file = str(out / RUN_FILES["trace"])
    assert main(["export", trace_file, str(tmp_path / "circle.webp"), "--panels", "overlay", "--words", "circle",
                 "--quiet"]) == 0  # fmt: skip
    layout = FrameRenderer(explainer.load_trace(trace_file), panels=["overlay"], words=["circle"]).layout
    assert (layout.panel_width, layout.panel_height) == (256, 256)  # 64 px toy images upscaled 4x by default
    with Image.open(tmp_path / "circle.webp") as webp:
        assert webp.n_frames == 4 and webp.size == (layout.width, layout.height)
    capsys.readouterr()
    assert main(["info", trace_file]) == 0
    text = capsys.readouterr().out
    assert "image      64x64, latent 4x16x16" in text and "model      toy\n" in text
    assert "scheduler  DDIMScheduler" in text  # the toy's own: trailing spacing, zero terminal SNR
    page = (out / RUN_FILES["html"]).read_text(encoding="utf-8")
    assert '"sigma":"\u221e"' in page  # its first step is pure noise: sigma = infinity
    assert "predicted image x\u2080 (VAE decode)" in page  # decoding the toy is cheap: frames are VAE decodes


# ------------------------------------------------------------------------------------ help


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["export", "--help"], ["info", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: explainer")
    expected = {"--help": "run", "run": "--guidance", "export": "--every", "info": "--json"}[argv[0]]
    assert expected in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ bad input


def test_missing_trace_file(tmp_path, capsys):
    missing = tmp_path / "nope.safetensors"
    assert error_of(capsys, ["export", str(missing), str(tmp_path / "out.gif")]) == (
        f"explainer export: error: no trace file at {missing}"
    )
    assert error_of(capsys, ["info", str(missing)]) == f"explainer info: error: no trace file at {missing}"
    assert not (tmp_path / "out.gif").exists()


def test_not_a_trace_file(tmp_path, capsys):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    assert "is not a readable sd-explainer trace file" in error_of(capsys, ["info", str(bogus)])


def test_unknown_format(run_dir, tmp_path, capsys):
    message = error_of(capsys, ["export", str(run_dir / RUN_FILES["trace"]), str(tmp_path / "out.avi")])
    assert message == (
        f"explainer export: error: OUT {tmp_path / 'out.avi'} has '.avi'; the format follows the suffix, "
        "one of .gif, .webp, .mp4, .png, .html, .htm"
    )


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--steps", "-3", "argument --steps: must be a whole number >= 1, got -3"),
        ("--steps", "0", "argument --steps: must be a whole number >= 1, got 0"),
        ("--steps", "many", "argument --steps: must be a whole number >= 1, got 'many'"),
        ("--guidance", "-1", "argument --guidance: must be a finite number >= 0, got -1"),
        ("--seed", "-5", "argument --seed: must be a whole number >= 0, got -5"),
        ("--scheduler", "fast", "argument --scheduler: invalid choice: 'fast'"),
    ],
)
def test_bad_run_arguments(flag, value, expected, tmp_path, capsys):
    message = error_of(capsys, ["run", "a cat", flag, value, "--out", str(tmp_path / "o")])
    assert message.startswith(f"explainer run: error: {expected}")
    assert not (tmp_path / "o").exists()


def test_bad_model_and_out(tmp_path, capsys):
    message = error_of(capsys, ["run", "a cat", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o")])
    assert message.startswith(f"explainer run: error: --model {tmp_path / 'no-model'}: no model folder at")
    file_out = tmp_path / "file.txt"
    file_out.write_text("x")
    message = error_of(capsys, ["run", "a cat", "--out", str(file_out)])
    assert message == f"explainer run: error: --out {file_out} exists and is not a folder"


def test_bad_export_options(run_dir, tmp_path, capsys):
    trace_file = str(run_dir / RUN_FILES["trace"])
    message = error_of(capsys, ["export", trace_file, str(tmp_path / "a.mp4"), "--no-loop", "--columns", "2"])
    assert message.startswith(
        "explainer export: error: --no-loop, --columns does not apply to .mp4 export; its options:"
    )
    message = error_of(capsys, ["export", trace_file, str(tmp_path / "a.gif"), "--words", "dog"])
    assert message.startswith("explainer export: error: 'dog' is not a word of the prompt; its words are ['a', 'red'")
    message = error_of(capsys, ["export", trace_file, str(tmp_path / "a.gif"), "--panels", "x0,noise"])
    assert "panels ['noise'] are not known; choose from" in message
    message = error_of(capsys, ["export", trace_file, str(tmp_path / "a.gif"), "--steps", "0,9"])
    assert message == "explainer export: error: step 9 is out of range; this trace has steps 0..2."
    message = error_of(capsys, ["export", trace_file, str(tmp_path / "a.gif"), "--fps", "0"])
    assert message == "explainer export: error: argument --fps: must be a number > 0, got 0"
    assert not list(tmp_path.glob("a.*"))


def test_python_dash_m_exit_status(tmp_path):
    """``python -m explainer`` is the same program, and the process really exits with status 2."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "explainer", "info", str(tmp_path / "missing.safetensors")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(f"explainer info: error: no trace file at {tmp_path / 'missing.safetensors'}")


# ------------------------------------------------------------------------ image-to-image and inpainting


@pytest.fixture(scope="module")
def edit_inputs(tmp_path_factory):
    """A 32x32 picture and a mask of its left half (saved as RGB, as masks often are)."""
    folder = tmp_path_factory.mktemp("edit-inputs")
    yy, xx = np.mgrid[0:1:32j, 0:1:32j]
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * xx + c) * np.cos(4 * yy) for c in range(3)], -1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / "in.png")
    mask = np.zeros((32, 32, 3), np.uint8)
    mask[:, :16] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(mask[:16, :16, 0]).save(folder / "small_mask.png")
    return folder


def test_run_inpainting(tiny_model, edit_inputs, tmp_path, capsys):
    out = tmp_path / "inpaint"
    argv = ["run", PROMPT, "--model", str(tiny_model), "--steps", "4", "--scheduler", "ddim", "--image",
            str(edit_inputs / "in.png"), "--mask", str(edit_inputs / "mask.png"), "--strength", "0.5", "--out",
            str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "reading it as grey levels" in capsys.readouterr().err
    loaded = explainer.load_trace(out / RUN_FILES["trace"])
    assert loaded.mode == "inpaint" and loaded.strength == 0.5 and loaded.num_steps == 2
    assert loaded.mask[:, :16].min() == 1 and loaded.mask[:, 16:].max() == 0
    with Image.open(out / RUN_FILES["gif"]) as gif:
        assert gif.n_frames == 2 and gif.width > 4 * 32  # input, x_t, x0 and final panels
    assert main(["info", str(out / RUN_FILES["trace"])]) == 0
    assert "mode       inpaint, strength 0.5 (starts at step 2 of 4), blend4" in capsys.readouterr().out
    out2 = tmp_path / "img2img"
    argv = ["run", PROMPT, "--model", str(tiny_model), "--steps", "4", "--image", str(edit_inputs / "in.png"),
            "--out", str(out2), "--quiet", "--no-gif", "--no-html"]  # fmt: skip
    assert main(argv) == 0
    loaded = explainer.load_trace(out2 / RUN_FILES["trace"])  # default strength 0.75: the last 3 of 4 steps
    assert loaded.mode == "img2img" and loaded.strength == 0.75 and loaded.start_step == 1
    assert loaded.num_steps == 4  # the tiny model's PNDM runs one extra step (5 timesteps for 4 steps)


def test_bad_edit_arguments(tiny_model, edit_inputs, tmp_path, capsys):
    base = ["run", "a cat", "--model", str(tiny_model), "--out", str(tmp_path / "o")]
    image = ["--image", str(edit_inputs / "in.png")]
    message = error_of(capsys, [*base, *image, "--strength", "0"])
    assert message == "explainer run: error: argument --strength: must be a number in (0, 1], got 0"
    message = error_of(capsys, [*base, "--mask", str(edit_inputs / "mask.png")])
    assert message == "explainer run: error: --mask needs --image (the picture to edit)"
    message = error_of(capsys, [*base, "--image", str(tmp_path / "none.png")])
    assert message == f"explainer run: error: --image {tmp_path / 'none.png'}: no such file"
    message = error_of(capsys, [*base, *image, "--mask", str(edit_inputs / "small_mask.png")])
    assert message.startswith("explainer run: error: mask is 16x16 pixels but image is 32x32")
    message = error_of(capsys, [*base, *image, "--steps", "4", "--strength", "0.2"])
    assert "leaves int(4 * 0.2) = 0 denoising steps" in message
    assert not (tmp_path / "o").exists()
