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
