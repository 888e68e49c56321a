"""explore() in a real JupyterLab: a notebook opened in headless Chromium through Playwright.

Starts JupyterLab on localhost (temporary root dir, random token), runs a cell showing
``explainer.explore(...)`` on the toy model, moves the step slider, clicks a token chip, and checks
that the image changed, the overlay appeared, the kernel heard the step, and no JS errors were logged.

Needs ``pip install jupyterlab playwright anywidget`` and Debian's ``chromium`` at /usr/bin/chromium
(or ``EXPLAINER_CHROMIUM``); skipped with that reason when one is missing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs Playwright: pip install playwright")
pytest.importorskip("jupyterlab", reason="the browser test needs JupyterLab: pip install jupyterlab")
CHROMIUM = os.environ.get("EXPLAINER_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"the browser test needs Chromium at {CHROMIUM}: apt-get install chromium", allow_module_level=True)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]  # fmt: skip
CELLS = [
    'import explainer\nw = explainer.explore("a red circle above a blue square", num_inference_steps=8, seed=0)\nw',
    "print('kernel step', w.step, 'selected', w.selected)",
]
PIXELS_JS = """async (img) => {
  await img.decode();
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  return Array.from(ctx.getImageData(0, 0, c.width, c.height).data);
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    notebook = {
        "cells": [{"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None} for src in CELLS],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (root / "explore.ipynb").write_text(json.dumps(notebook))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "JUPYTER_CONFIG_DIR": str(root / ".config"), "JUPYTER_RUNTIME_DIR": str(root / ".runtime")}  # fmt: skip
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]  # fmt: skip
    log = open(root / "lab.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (root / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(root / ".runtime", ignore_errors=True)


def test_explore_in_jupyterlab(lab):
    base, token = lab
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda err: errors.append(f"pageerror: {err}"))
            page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
            page.goto(f"{base}/lab/tree/explore.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
            page.locator(".jp-Cell").first.click()
            page.keyboard.press("Shift+Enter")
            x0 = page.locator(".sdx img[data-panel='x0']")
            x0.wait_for(timeout=90_000)
            page.wait_for_function("() => document.querySelector('.sdx')?.dataset.step === '0'", timeout=30_000)
            before_src = x0.get_attribute("src")
            before = x0.evaluate(PIXELS_JS)

            slider = page.locator(".sdx input.sdx-step")
            slider.focus()
            page.keyboard.press("End")  # the native range input moves to the last step
            page.wait_for_function("() => document.querySelector('.sdx').dataset.step === '7'", timeout=10_000)
            assert slider.input_value() == "7"
            assert x0.get_attribute("src") != before_src
            after = x0.evaluate(PIXELS_JS)
            assert len(after) == len(before) and sum(abs(a - b) for a, b in zip(after, before, strict=True)) > 0
            assert "step 8/8" in page.locator(".sdx .sdx-readout").first.inner_text()

            overlay = page.locator(".sdx canvas.sdx-overlay[data-panel='x0']")
            assert overlay.is_hidden()
            page.locator(".sdx .sdx-chip", has_text="circle").click()
            page.wait_for_function(
                "() => { const c = document.querySelector(\".sdx canvas.sdx-overlay[data-panel='x0']\");"
                " return c && !c.hidden && (c.dataset.shown || '').startsWith('cond:3@'); }",
                timeout=30_000,
            )
            painted = overlay.evaluate("c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)")
            assert max(painted[3::4]) > 0  # the colour-mapped map is drawn
            assert page.locator(".sdx .sdx-chip[aria-pressed='true']").count() == 1
            assert page.locator(".sdx .sdx-error").is_hidden()

            page.wait_for_timeout(300)  # the step goes to the kernel throttled
            page.locator(".jp-Cell").nth(1).click()
            page.keyboard.press("Shift+Enter")
            out = page.locator(".jp-Cell").nth(1).locator(".jp-OutputArea-output")
            out.wait_for(timeout=30_000)
            assert "kernel step 7 selected ['cond:3']" in out.inner_text()
        finally:
            browser.close()
    assert errors == []
