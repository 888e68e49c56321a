"""The toy evaluator's entry point (python -m explainer.toy.evaluate) and its chance baselines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from explainer.toy.evaluate import EVAL_SEED, fidelity_chance, main
from explainer.toy.checker import caption_scores
from explainer.toy.world import render_pil, sample_scenes


def test_shuffled_caption_control_is_far_below_ground_truth():
    scenes = sample_scenes(60, EVAL_SEED, 0)
    images = [np.asarray(render_pil(s)) for s in scenes]
    captions = [s.caption for s in scenes]
    own = np.mean([caption_scores(im, c)["all"] for im, c in zip(images, captions)])
    chance = fidelity_chance(images, captions)
    assert own >= 0.95
    assert chance["n"] == sum(captions[i] != captions[(i + 1) % 60] for i in range(60))
    assert chance["all"] < 0.25 and chance["colour"] < 0.5, chance


def test_entry_point_writes_and_merges(tmp_path):
    out = tmp_path / "eval.json"
    out.write_text(json.dumps({"kept": 1, "guidance_curve": {"2.0": {"n": 7}}}))
    rc = main(["--out", str(out), "--what", "localisation,fidelity", "--n-fidelity", "2",
               "--n-localisation", "2", "--steps", "2", "--no-progress"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["kept"] == 1 and data["guidance_curve"]["2.0"] == {"n": 7}  # fields it did not measure stay
    assert data["model"] == "assets/toy" and data["fine_tune"]["steps"] > 0 and data["num_inference_steps"] == 2
    g = data["guidance_curve"]["7.5"]
    assert g["n"] == 2 and set(g["chance"]) >= {"n", "colour", "colour_position", "shape", "all"}
    loc = data["localisation"]
    assert loc["n"] == 2 and set(loc["conventions"]) == {"all", "daam"}
    assert 0 < loc["chance"]["localisation"] < 0.5 and 0 < loc["chance"]["object_words"] < 0.5


@pytest.mark.parametrize("args, message", [
    (["--what", "speed"], "--what 'speed'"),
    (["--n-fidelity", "0"], "--n-fidelity must be >= 1"),
    (["--guidance", "1,x"], "--guidance '1,x'"),
    (["--guidance", "0.5"], "scales must be >= 1"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "e.json"), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_out_must_be_a_file_in_an_existing_folder(tmp_path, capsys):
    for bad in (tmp_path, tmp_path / "missing" / "e.json"):
        with pytest.raises(SystemExit) as e:
            main(["--out", str(bad), "--what", "fidelity"])
        assert e.value.code == 2 and "--out" in capsys.readouterr().err
