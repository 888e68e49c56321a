"""The training figure families' commands (python -m explainer.toy.sweep): tiny smoke runs of both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from explainer.toy.sweep import main

TOY = Path(__file__).resolve().parents[1] / "assets" / "toy"


def test_quick_cpu_trains_resumes_and_writes(tmp_path, monkeypatch):
    from explainer.toy.train import Trainer

    measure = Trainer.measure_scaling_factor  # 2,048 images by default: too slow for a smoke run
    monkeypatch.setattr(Trainer, "measure_scaling_factor", lambda self, n=2048: measure(self, 8))
    out = tmp_path / "quick.json"
    args = ["quick-cpu", "--run", str(tmp_path / "run"), "--out", str(out), "--minutes", "30", "--train-steps", "2",
            "--vae-steps", "2", "--batch", "2", "--n-fidelity", "2", "--n-localisation", "1", "--steps", "2",
            "--no-progress"]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert data["vae_steps"] == 2 and data["stage2_steps"] == 2 and data["minutes"] > 0
    assert data["fidelity_g7.5"]["n"] == 2 and "chance" in data["fidelity_g7.5"]
    assert data["localisation"]["n"] == 1 and "chance" in data["localisation"]
    assert main([*args[:5], "--minutes", "0", *args[7:]]) == 0  # a finished run is only re-evaluated
    assert json.loads(out.read_text())["stage2_steps"] == 2


def test_grounding_fine_tunes_snapshots_and_blends(tmp_path):
    out = tmp_path / "grounding.json"
    assert main(["grounding", "--base", str(TOY), "--run", str(tmp_path / "g"), "--out", str(out), "--img", str(tmp_path),
                 "--minutes", "1", "--train-steps", "2", "--batch", "2", "--snapshots", "1", "--alphas", "0.5",
                 "--n-fidelity", "1", "--n-localisation", "1", "--steps", "2", "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert [r["x"] for r in data["steps"]] == [0, 1, 2] and [r["x"] for r in data["blend"]] == [0.0, 0.5, 1.0]
    for row in data["steps"] + data["blend"]:
        assert set(row) >= {"localisation", "object_words", "shape", "colour_position"}
    assert data["blend"][0] == {**data["steps"][0], "x": 0.0}  # weight 0 is the base model, 1 the end
    assert data["blend"][-1] == {**data["steps"][-1], "x": 1.0}
    assert (tmp_path / "toy_grounding.png").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["grounding"], "--base None"),
    (["quick-cpu", "--minutes", "-1"], "--minutes must be >= 0"),
    (["quick-cpu", "--alphas", "2"], "--alphas '2'"),
])
def test_bad_arguments_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main([*args, "--run", str(tmp_path / "r"), "--out", str(tmp_path / "o.json")])
    assert e.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]
