"""The live page's builder (explainer/live/page.py), without a browser: the player as a classic script and
the data the page reads. The page itself runs in tests/test_live_browser.py."""

from __future__ import annotations

import json

import pytest

from explainer.live import page
from explainer.widgets.explore import STAGES


def test_player_script_is_the_players_code_as_a_classic_script():
    source = (page.WIDGETS / "player.js").read_text()
    script = page.player_script()
    assert page.PLAYER_EXPORT not in script and "self.SDXLive.player = { render };" in script
    body = source.replace(page.PLAYER_EXPORT, "self.SDXLive.player = { render };")
    assert body in script  # every other line as it is: no second copy of the drawing code to keep in step


def test_player_script_refuses_a_player_without_its_export_line():
    with pytest.raises(ValueError, match="export default"):
        page.player_script("function render() {}\n")


def test_page_data_comes_from_the_toy_and_the_explorer(tmp_path):
    from explainer.models import toy_model_path
    from explainer.toy import vocabulary

    data = page.page_data(docs_url="../")
    unet = json.loads((toy_model_path() / "unet" / "config.json").read_text())
    assert data["model"]["latent"] == [unet["in_channels"], unet["sample_size"], unet["sample_size"]]
    assert data["model"]["image"][1] == data["model"]["image"][2] == 4 * unet["sample_size"]  # the toy's VAE: 2 downsamplings
    assert data["vocabulary"] == vocabulary()
    assert [s["key"] for s in data["stages"]] == [s["key"] for s in STAGES]
    assert len(data["colormap"]) == 256 * 3 and data["docs_url"] == "../"
    json.dumps(data)  # plain JSON for data.js
