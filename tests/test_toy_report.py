"""The model card's figures are drawn from the committed evaluation data."""

from pathlib import Path

from PIL import Image

from explainer.toy.report import write_figures

DATA = Path(__file__).resolve().parents[1] / "docs" / "data"


def test_model_card_figures_are_drawn_from_the_data(tmp_path):
    paths = write_figures(DATA, tmp_path)
    assert [p.name for p in paths] == ["toy_loss.png", "toy_learning_curve.png", "toy_guidance_curve.png", "toy_grounding.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.width > 300 and im.height > 200


def test_train_summary_derives_rates_from_the_logged_times(tmp_path):
    import json

    from explainer.toy.report import train_summary, write_summary

    rows = [{"stage": 1, "step": 50, "loss": 1.0, "minutes": 0.5},
            {"stage": 2, "step": 50, "loss": 1.0, "minutes": 1.0}, {"stage": 2, "step": 650, "loss": 0.5, "minutes": 2.0}]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = train_summary(tmp_path)
    assert s["stage1"] == {"last_logged_step": 50, "minutes": 0.5}
    assert s["stage2"]["steps_per_s"] == 10.0 and s["stage2"]["minutes_between"] == 1.0
    assert json.loads(write_summary(tmp_path).read_text()) == s
    assert train_summary(DATA) == json.loads((DATA / "train_summary.json").read_text())  # the committed file is current
