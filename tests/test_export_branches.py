"""Exports of a fork (with its parent) and of a prompt-to-prompt edit: both runs in every format, one step for
both, the shared prefix and the fork step marked; offline, on the tiny test pipeline."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

import explainer
from explainer.export import Lanes, as_lanes, export
from explainer.export.branches import AFTER_RGB, FORK_RGB, LanesRenderer, grid_steps
from explainer.export.frames import FrameRenderer

STEPS, K = 4, 2
PROMPT, NEW = "a red cube beside a blue sphere", "a green cube beside a blue sphere"


@pytest.fixture(scope="module")
def parent(pipe):
    return explainer.trace(pipe, PROMPT, num_inference_steps=STEPS, scheduler="ddim", guidance_scale=5.0, seed=0,
                           progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def child(parent, pipe):
    return parent.fork(K, prompt=NEW, pipe=pipe, progress=False)


def _lane_crops(renderer: LanesRenderer, frame: Image.Image) -> list[Image.Image]:
    """Each run's frame (under its label strip) cut out of a composed frame."""
    crops, y = [], 0
    for r in renderer.renderers:
        y += renderer.strip
        crops.append(frame.crop((0, y, r.layout.width, y + r.layout.height)))
        y += r.layout.height
    return crops


def test_fork_frames_show_both_runs_the_prefix_shared_and_the_fork_marked(parent, child):
    lanes = as_lanes(child, parent)
    assert [lane.name for lane in lanes.lanes] == ["parent", "fork"] and lanes.mark["step"] == K
    renderer = LanesRenderer(lanes, size=64)
    single = FrameRenderer(parent, size=64)
    for step in range(STEPS):
        frame = renderer.frame(step)
        assert frame.size == (renderer.width, renderer.height) and renderer.height % 2 == 0
        top, bottom = _lane_crops(renderer, frame)
        assert np.array_equal(np.asarray(top), np.asarray(single.frame(step)))  # the parent as exported alone
        same = np.array_equal(np.asarray(top), np.asarray(bottom))
        assert same == (step < K), step  # the shared prefix is the parent's, pixel for pixel; then they differ
        # the timeline: steps before the fork in the fork colour, the others not
        row = np.asarray(frame)[renderer.height - renderer.timeline + 6]
        cell = (renderer.width - 16) / STEPS
        centres = [round(8 + (s + 0.5) * cell) for s in range(STEPS)]
        assert [tuple(row[x]) for x in centres] == [FORK_RGB] * K + [AFTER_RGB] * (STEPS - K)
    assert lanes.status(K - 1) == "shared with the parent" and lanes.status(K) == f"branched (fork at step {K + 1})"


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".mp4"])
def test_animations_of_a_fork(parent, child, tmp_path, suffix):
    path = export(child, tmp_path / f"fork{suffix}", parent=parent, size=64, verbose=False)
    expected = LanesRenderer(as_lanes(child, parent), size=64)
    if suffix == ".mp4":
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        frames = list(reader)
        assert tuple(meta["size"]) == (expected.width, expected.height)
        assert len(frames) == STEPS + 8  # one per step, then the last held for 1 s at 8 fps
        return
    with Image.open(path) as im:
        assert im.n_frames == STEPS and im.size == (expected.width, expected.height)
        im.seek(STEPS - 1)
        last = np.asarray(im.convert("RGB"), np.float32)
    want = np.asarray(expected.frame(STEPS - 1), np.float32)
    assert np.abs(last - want).mean() < 6.0  # lossy palettes / WebP, the same picture


def test_png_grid_of_a_fork_has_a_row_per_run_and_panel(parent, child, tmp_path):
    path = export(child, tmp_path / "fork.png", parent=parent, size=48, verbose=False)
    plain = export(parent, tmp_path / "parent.png", size=48, verbose=False)
    with Image.open(path) as im, Image.open(plain) as one:
        assert im.height > 2 * one.height - 60  # two runs' rows (4 rows, not 2), and a title band with both prompts
        pixels, alone = np.asarray(im.convert("RGB")), np.asarray(one.convert("RGB"))
    fork_colour = (pixels == np.array(FORK_RGB, np.uint8)).all(-1)
    assert fork_colour.sum() > 100 and not (alone == np.array(FORK_RGB, np.uint8)).all(-1).any()
    column = np.nonzero(fork_colour.sum(0) > 0.5 * pixels.shape[0] - 80)[0]  # the line before the fork step
    assert len(column) >= 1 and 0 < column[0] < pixels.shape[1]
    assert grid_steps(as_lanes(child, parent), [0, 3]) == [0, 2, 3]  # the fork step is always a column


def test_html_page_of_a_fork(parent, child, tmp_path):
    path = export(child, tmp_path / "fork.html", parent=parent, size=48, verbose=False)
    page = path.read_text()
    data = json.loads(re.search(r'id="trace-data">(.*?)</script>', page, re.S).group(1))
    assert [lane["name"] for lane in data["lanes"]] == ["parent", "fork"]
    assert data["lanes"][1]["label"] == f'fork at step {K + 1}: "{NEW}"'
    for lane in data["lanes"]:
        assert [v["key"] for v in lane["views"]] == ["xt", "x0"] and all(len(v["frames"]) == STEPS for v in lane["views"])
        assert lane["final"].startswith("data:image/jpeg")
    assert "green" in [w["text"] for w in data["lanes"][1]["words"]] and "green" not in [w["text"] for w in data["lanes"][0]["words"]]
    x0 = [lane["views"][1]["frames"] for lane in data["lanes"]]
    assert x0[0][:K] == x0[1][:K] and x0[0][K] != x0[1][K]
    assert data["timeline"]["kind"] == "fork" and data["timeline"]["step"] == K
    assert [s.get("status") for s in data["steps"]] == ["shared with the parent"] * K + [f"branched (fork at step {K + 1})"] * (STEPS - K)
    assert ["fork", f"fork at step {K + 1}/{STEPS}: steps 1\u2013{K} are the parent's"] in data["settings"]
    assert data["views"] == [] and data["words"] == []


def test_export_of_an_edit_and_of_two_traces(pipe, parent, tmp_path):
    res = explainer.edit(pipe, PROMPT, NEW, num_inference_steps=STEPS, guidance_scale=5.0, scheduler="ddim",
                         progress=False)  # fmt: skip
    lanes = as_lanes(res)
    assert [lane.name for lane in lanes.lanes] == ["source", "target"] and lanes.mark["kind"] == "edit"
    assert lanes.mark["step"] == res.settings["cross_until_step"]
    page = export(res, tmp_path / "edit.html", size=48, verbose=False).read_text()
    assert '"timeline":{"kind":"edit"' in page
    assert export(res, tmp_path / "edit.gif", size=48, verbose=False).stat().st_size > 0
    other = explainer.trace(pipe, NEW, num_inference_steps=STEPS, scheduler="ddim", seed=1, progress=False)
    two = as_lanes([parent, other])
    assert [lane.name for lane in two.lanes] == ["a", "b"] and two.mark["kind"] == "" and two.status(0) == ""
    with Image.open(export([parent, other], tmp_path / "two.webp", size=48, verbose=False)) as im:
        assert im.n_frames == STEPS


def test_bad_pairs_are_named(pipe, parent, child, tmp_path):
    assert as_lanes(parent) is None and isinstance(as_lanes([parent, child]), Lanes)
    with pytest.raises(ValueError, match="not a fork"):
        export(parent, tmp_path / "x.gif", parent=child)
    stranger = explainer.trace(pipe, PROMPT, num_inference_steps=STEPS, scheduler="ddim", progress=False)
    with pytest.raises(ValueError, match=f"not from parent \\(uid {stranger.uid}\\)"):
        export(child, tmp_path / "x.gif", parent=stranger)
    with pytest.raises(TypeError, match="list of two explainer Traces"):
        export([parent, child, child], tmp_path / "x.gif")
    short = explainer.trace(pipe, PROMPT, num_inference_steps=STEPS - 1, scheduler="ddim", progress=False)
    with pytest.raises(ValueError, match="a has 4 steps, b 3"):
        export([parent, short], tmp_path / "x.gif")
    with pytest.raises(ValueError, match="fork: .*'green'|parent: .*words"):
        export(child, tmp_path / "x.gif", parent=parent, words=["green"])
    with pytest.raises(TypeError, match="an EditResult or a list of two"):
        export("run", tmp_path / "x.gif")


def test_an_image_of_a_frame_reads_back(parent, child):
    """A composed frame encodes and decodes as PNG without loss (what the writers build on)."""
    frame = LanesRenderer(as_lanes(child, parent), size=48).frame(0)
    buffer = io.BytesIO()
    frame.save(buffer, format="PNG")
    assert np.array_equal(np.asarray(Image.open(buffer).convert("RGB")), np.asarray(frame))
