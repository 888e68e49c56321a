"""The toy-model measurement of edits (explainer.toy.evaluate_edit): its scoring on ground truth, and a smoke run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from explainer.toy import evaluate_edit
from explainer.toy.world import Obj, Scene, parse_caption, render, sample_scenes


def _image(scene: Scene) -> np.ndarray:
    return (render([scene])[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_kept_objects_on_ground_truth():
    a = Scene("a red circle and a blue square", (Obj("red", "circle", 0.25, 0.5, 0.13), Obj("blue", "square", 0.75, 0.5, 0.13)))
    moved = Scene(a.caption, (Obj("red", "circle", 0.25, 0.62, 0.13), a.objects[1]))  # 0.12 of the side lower
    recoloured = Scene(a.caption, (Obj("green", "circle", 0.25, 0.5, 0.13), a.objects[1]))
    src = _image(a)
    assert evaluate_edit.kept_objects(src, src, a.caption)
    assert not evaluate_edit.kept_objects(_image(moved), src, a.caption)
    assert not evaluate_edit.kept_objects(_image(recoloured), src, a.caption)
    nudged = Scene(a.caption, (Obj("red", "circle", 0.27, 0.5, 0.13), a.objects[1]))  # 0.02: within tolerance
    assert evaluate_edit.kept_objects(_image(nudged), src, a.caption)


def test_inpaint_case_recolours_the_first_object():
    rng = np.random.default_rng(0)
    for scene in sample_scenes(20, seed=3):
        _, coverage = render([scene], masks=True)
        caption, old, new, mask = evaluate_edit.inpaint_case(scene, coverage[0].numpy(), rng)
        targets = parse_caption(caption)
        assert old == scene.objects[0].colour and new not in {o.colour for o in scene.objects}
        assert targets[0].colour == new and targets[0].shape == scene.objects[0].shape
        assert [t.colour for t in targets[1:]] == [o.colour for o in scene.objects[1:]]
        covered = coverage[0, 0].numpy() > 0
        assert mask[covered].min() == 1 and 0 < mask.mean() < 0.6  # the object and a margin, not the picture


@pytest.mark.slow
def test_smoke_run_writes_every_figure(tmp_path):
    """Two cases, ten steps (strength 0.1 runs one) on the toy model: the script runs and writes every figure."""
    out = tmp_path / "eval.json"
    with pytest.raises(ValueError, match="strength=0.1 with num_inference_steps=5 leaves"):
        evaluate_edit.main(["--n", "1", "--steps", "5", "--out", str(out), "--quiet", "--device", "cpu"])
    assert evaluate_edit.main(["--n", "2", "--n-outpaint", "1", "--steps", "10", "--out", str(out), "--quiet",
                               "--device", "cpu"]) == 0  # fmt: skip
    data = json.loads(out.read_text())
    assert data["img2img"]["n"] == 2 and set(data["img2img"]["by_prompt"]) == {"own", "new"}
    assert {"0.3", "1"} <= set(data["img2img"]["by_prompt"]["new"])
    assert 0 <= data["inpaint"]["new_colour"] <= 1 and data["inpaint"]["outside_change_pixel_blend"] == 0
    assert set(data["outpaint"]["by_fill"]) == {"edge", "blur", "noise"}
    assert data["model"] == "toy" and data["timings_s"]["total"] > 0
