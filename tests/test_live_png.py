"""The live page's PNG writer (explainer/live/static/png.js), run by Node: its PNGs decode (PIL) to exactly
the pixels it was given, at the latent's size, the image's, and one large enough for several deflate blocks.
Without ``node`` these tests skip, and under ``CI=true`` they fail."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _browser import require_node

STATIC = Path(__file__).resolve().parent.parent / "explainer" / "live" / "static"
SIZES = ((1, 1), (16, 16), (64, 64), (300, 250))  # the last: more than one 65535-byte stored block
NODE_SCRIPT = r"""
const fs = require('fs');
const path = require('path');
const [staticDir, folder] = process.argv.slice(2);
const { encodePNG } = require(path.join(staticDir, 'png.js'));
const sizes = JSON.parse(fs.readFileSync(path.join(folder, 'sizes.json'), 'utf8'));
sizes.forEach(([w, h], k) => {
  const rgba = new Uint8ClampedArray(fs.readFileSync(path.join(folder, `in${k}.raw`)));
  fs.writeFileSync(path.join(folder, `out${k}.png`), encodePNG(rgba, w, h));
});
const errors = [];
for (const args of [[new Uint8Array(4), 0, 1], [new Uint8Array(4), 1.5, 1], [new Uint8Array(8), 1, 1], [null, 1, 1]]) {
  try { encodePNG(...args); errors.push(null); } catch (e) { errors.push(e.message); }
}
fs.writeFileSync(path.join(folder, 'errors.json'), JSON.stringify(errors));
"""


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    node = require_node()
    folder = tmp_path_factory.mktemp("live_png")
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (h, w, 4), dtype=np.uint8) for w, h in SIZES]  # [H, W, RGBA]
    for k, px in enumerate(pixels):
        (folder / f"in{k}.raw").write_bytes(px.tobytes())
    (folder / "sizes.json").write_text(json.dumps(SIZES))
    (folder / "run.js").write_text(NODE_SCRIPT)
    proc = subprocess.run([node, str(folder / "run.js"), str(STATIC), str(folder)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return folder, pixels


def test_png_decodes_to_the_same_pixels(written):
    folder, pixels = written
    for k, px in enumerate(pixels):
        with Image.open(folder / f"out{k}.png") as im:
            assert im.mode == "RGBA" and im.size == (px.shape[1], px.shape[0])
            assert np.array_equal(np.asarray(im), px)


def test_png_refuses_bad_sizes_with_a_message(written):
    folder, _ = written
    errors = json.loads((folder / "errors.json").read_text())
    assert "positive whole numbers" in errors[0] and "positive whole numbers" in errors[1]
    assert "width * height * 4 = 4 bytes, got 8" in errors[2] and "got null" in errors[3]
