"""``explainer fork`` and ``explainer edit`` on the toy model: files written, errors exit 2 with one line."""

from __future__ import annotations

import numpy as np
import pytest

import explainer
from explainer.cli import main


@pytest.fixture(scope="module")
def toy_trace(tmp_path_factory):
    pipe = explainer.load_pipeline()
    tr = explainer.trace(pipe, "a red circle above a blue square", num_inference_steps=3, progress=False)
    return tr.save(tmp_path_factory.mktemp("parent") / "parent.safetensors"), tr


def fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_fork_writes_the_branch(toy_trace, tmp_path, capsys):
    path, parent = toy_trace
    out = tmp_path / "fork"
    argv = ["fork", str(path), "--step", "1", "--prompt", "a green circle above a blue square", "--out", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    child = explainer.load_trace(out / "fork.safetensors")
    assert child.metadata["fork"]["parent_uid"] == parent.uid and child.metadata["fork"]["step"] == 1
    assert np.array_equal(child.latents[:2], parent.latents[:2])
    assert (out / "fork.png").stat().st_size > 0 and (out / "branches.png").stat().st_size > 0
    assert "prefix recomputed" in capsys.readouterr().out  # float16 latents: the prefix is run again


def test_export_a_saved_fork_with_its_parent(toy_trace, tmp_path, capsys):
    """`explainer export FORK OUT --parent PARENT`: both runs side by side, as `explainer fork --export` writes them."""
    path, parent = toy_trace
    out = tmp_path / "fork"
    assert main(["fork", str(path), "--step", "1", "--guidance", "3", "--out", str(out), "--quiet"]) == 0
    fork_file = out / "fork.safetensors"
    alone, both = tmp_path / "alone.png", tmp_path / "both.png"
    assert main(["export", str(fork_file), str(alone), "--size", "32", "--quiet"]) == 0
    assert main(["export", str(fork_file), str(both), "--parent", str(path), "--size", "32", "--quiet"]) == 0
    from PIL import Image

    with Image.open(alone) as a, Image.open(both) as b:
        assert b.size[1] > a.size[1]  # a lane per run
    capsys.readouterr()
    last = fails(["export", str(path), str(tmp_path / "x.png"), "--parent", str(fork_file)], capsys)
    assert "--parent" in last and "is not a fork" in last
    last = fails(["export", str(fork_file), str(tmp_path / "x.png"), "--parent", str(tmp_path / "none.safetensors")],
                 capsys)  # fmt: skip
    assert "no trace file" in last


def test_fork_errors_exit_2(toy_trace, tmp_path, capsys):
    path, _ = toy_trace
    last = fails(["fork", str(path), "--step", "3", "--out", str(tmp_path / "x")], capsys)
    assert "--step 3 is out of range" in last and "0..2" in last
    last = fails(["fork", str(tmp_path / "missing.safetensors"), "--step", "1", "--out", str(tmp_path / "x")], capsys)
    assert "no trace file" in last
    last = fails(["fork", str(path), "--step", "1", "--guidance", "1", "--out", str(tmp_path / "x")], capsys)
    assert "turns classifier-free guidance off" in last


def test_edit_writes_both_runs(tmp_path):
    out = tmp_path / "edit"
    assert main(["edit", "a red circle above a blue square", "a green circle above a blue square", "--steps", "3",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    target = explainer.load_trace(out / "target.safetensors")
    source = explainer.load_trace(out / "source.safetensors")
    assert target.metadata["edit"]["source_uid"] == source.uid
    assert target.metadata["edit"]["keep_context"] is True and target.metadata["edit"]["cross_steps"] == 0.6
    assert all((out / name).stat().st_size > 0 for name in ("source.png", "target.png", "edit.png"))
    assert main(["edit", "a red circle above a blue square", "a green circle above a blue square", "--steps", "2",
                 "--no-keep-context", "--out", str(tmp_path / "maps"), "--quiet"]) == 0  # fmt: skip
    assert explainer.load_trace(tmp_path / "maps" / "target.safetensors").metadata["edit"]["keep_context"] is False


def test_edit_errors_exit_2(tmp_path, capsys):
    base = ["--steps", "2", "--out", str(tmp_path / "e"), "--quiet"]
    last = fails(["edit", "a red circle", "a big red circle", *base], capsys)
    assert "mode='refine'" in last
    last = fails(["edit", "a red circle", "a red circle", "--weight", "red", *base], capsys)
    assert "WORD=FACTOR" in last
    last = fails(["edit", "a red circle", "a red circle", "--cross-steps", "2", *base], capsys)
    assert "fraction" in last
    last = fails(["edit", "a red circle", "a red circle", "--mode", "reweight", "--weight", "blue=2", *base], capsys)
    assert "weights names 'blue'" in last


def test_fork_and_edit_export_both_runs(toy_trace, tmp_path):
    import json
    import re

    from PIL import Image

    path, parent = toy_trace
    out = tmp_path / "fork"
    assert main(["fork", str(path), "--step", "1", "--prompt", "a green circle above a blue square", "--out", str(out),
                 "--export", "gif,html", "--export", "png", "--quiet"]) == 0  # fmt: skip
    with Image.open(out / "branches.gif") as gif:
        assert gif.n_frames == 3
    assert (out / "branches_grid.png").stat().st_size > 0 and (out / "branches.png").stat().st_size > 0
    page = (out / "branches.html").read_text()
    data = json.loads(re.search(r'id="trace-data">(.*?)</script>', page, re.S).group(1))
    assert [lane["name"] for lane in data["lanes"]] == ["parent", "fork"] and data["timeline"]["step"] == 1
    assert data["lanes"][0]["label"] == f'parent: "{parent.prompt}"'
    assert "VAE decode" in data["lanes"][0]["views"][0]["label"]  # the toy's VAE is cheap: decodes, not previews
    out = tmp_path / "edit"
    assert main(["edit", "a red circle above a blue square", "a green circle above a blue square", "--steps", "3",
                 "--out", str(out), "--export", "webp", "--quiet"]) == 0  # fmt: skip
    with Image.open(out / "edit.webp") as webp:
        assert webp.n_frames == 3


def test_bad_export_format_exits_2(toy_trace, tmp_path, capsys):
    path, _ = toy_trace
    last = fails(["fork", str(path), "--step", "1", "--out", str(tmp_path / "x"), "--export", "gif,avi"], capsys)
    assert "--export" in last and "expected formats among gif, webp, mp4, png, html, got 'gif,avi'" in last
