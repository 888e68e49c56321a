"""The component explorers (explainer.explore_text_encoder, ..._vae, ..._noising, ..._unet, ..._training,
..._editing) in real Jupyter front ends: one notebook with all six, opened in headless Chromium through
Playwright in JupyterLab 4 and in Notebook 7 (one Jupyter server serves both, as in
tests/test_jupyter_browser.py). In each front end every widget's live control is moved (a prompt typed,
a slider moved, a schedule chosen, the training button pressed, a mask brushed and an edit run); the
kernel must redraw, the picture must change, and no JS error may be logged.

Needs jupyterlab, notebook 7, playwright and a Chromium (tests/_browser.py); skipped with the reason when
one is missing, and failed instead when ``CI=true``.
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

import _browser
import pytest

CELLS = [
    'import explainer\nexplainer.explore_text_encoder("a red circle")',
    "explainer.explore_vae()",
    "explainer.explore_noising(t=100)",
    "explainer.explore_unet(num_inference_steps=4)",
    "import explainer.widgets.components as C\nC.TRAIN_STEPS = 1  # one step per press keeps the test short\nexplainer.explore_training(t=100)",
    "explainer.explore_editing(strength=0.5, num_inference_steps=4)",
]
PARTS = ["text_encoder", "vae", "noising", "unet", "training", "editing"]
#: Notebook 7's own start-up errors, allowed before any cell runs (see tests/test_jupyter_browser.py).
NB7_OWN_CODE = "/static/notebook/"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def chromium() -> str:
    _browser.require_module("playwright.sync_api", "playwright")
    _browser.require_module("jupyterlab", "jupyterlab")
    return _browser.require_chromium()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("components")
    for name in ("components_lab.ipynb", "components_nb7.ipynb"):  # a kernel each
        notebook = {
            "cells": [{"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None} for src in CELLS],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        (root / name).write_text(json.dumps(notebook))
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


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=_browser.CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _page(browser, errors: list[str], stacks: list[str] | None = None):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("pageerror", lambda err: (errors.append(f"pageerror: {err}"), stacks is not None and stacks.append(err.stack or "")))
    page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
    return page


def _root(part: str) -> str:
    return f".sdc[data-part='{part}']"


def _revision(page, part: str) -> int:
    return int(page.locator(_root(part)).get_attribute("data-revision"))


def _src(page, part: str, key: str) -> str:
    return page.locator(f"{_root(part)} img[data-key='{key}']").get_attribute("src")


def _changed(page, part: str, key: str, act, timeout: int = 120_000) -> None:
    """Do ``act()``; the kernel must redraw ``part`` and picture ``key`` must change, with no error shown."""
    revision, before = _revision(page, part), _src(page, part, key)
    act()
    page.wait_for_function(
        "([sel, rev]) => Number(document.querySelector(sel).dataset.revision) > rev", arg=[_root(part), revision], timeout=timeout
    )
    page.wait_for_function(
        "([sel, prev]) => { const i = document.querySelector(sel); return i && i.src !== prev; }",
        arg=[f"{_root(part)} img[data-key='{key}']", before],
        timeout=timeout,
    )
    assert page.locator(f"{_root(part)} .sdc-error").is_hidden()
    img = page.locator(f"{_root(part)} img[data-key='{key}']")
    assert img.evaluate("async (i) => { await i.decode(); return i.naturalWidth > 0; }")


def _slide_to_end(page, part: str, name: str):
    def act():
        slider = page.locator(f"{_root(part)} input[data-name='{name}']")
        slider.focus()
        page.keyboard.press("End")

    return act


def _run_all_and_drive(page) -> None:
    page.locator(".jp-Cell").first.click()
    for _ in CELLS:
        page.keyboard.press("Shift+Enter")
    for part in PARTS:
        page.wait_for_selector(f"{_root(part)} img", timeout=240_000)
        assert page.locator(f"{_root(part)} .sdc-error").is_hidden()

    text = page.locator(f"{_root('text_encoder')} input[data-name='prompt']")

    def type_prompt():
        text.fill("a purple star on the left")
        text.press("Enter")

    _changed(page, "text_encoder", "similarity", type_prompt)
    assert page.locator(f"{_root('text_encoder')} .sdc-tok[data-known='false']").count() == 2  # purple, star

    _changed(page, "vae", "vae", _slide_to_end(page, "vae", "scale"))
    _changed(page, "noising", "noising", _slide_to_end(page, "noising", "t"))
    _changed(page, "noising", "schedule", lambda: page.locator(f"{_root('noising')} select[data-name='schedule']").select_option("cosine"))
    diagram = _src(page, "unet", "diagram")
    _changed(page, "unet", "norms", _slide_to_end(page, "unet", "step"))
    assert _src(page, "unet", "diagram") == diagram
    _changed(page, "training", "objective", _slide_to_end(page, "training", "t"))
    page.locator(f"{_root('training')} button[data-name='train']").click()
    page.wait_for_selector(f"{_root('training')} img[data-key='loss']", timeout=180_000)

    _changed(page, "editing", "schedule", _slide_to_end(page, "editing", "strength"))

    def brush():
        box = page.locator(f"{_root('editing')} canvas.sdc-brush").bounding_box()
        x, y = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + box["width"] * 0.2, y + box["height"] * 0.2, steps=6)
        page.mouse.up()

    _changed(page, "editing", "input", brush)
    page.locator(f"{_root('editing')} button[data-name='run']").click()
    page.wait_for_selector(f"{_root('editing')} img[data-key='result']", timeout=180_000)
    assert page.locator(f"{_root('editing')} figure[data-key='result'] figcaption").inner_text().startswith("inpaint")


def test_component_explorers_in_jupyterlab(lab, browser):
    base, token = lab
    errors: list[str] = []
    page = _page(browser, errors)
    try:
        page.goto(f"{base}/lab/tree/components_lab.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
        _run_all_and_drive(page)
    finally:
        page.close()
    assert errors == []


def test_component_explorers_in_notebook7(lab, browser):
    notebook = _browser.require_module("notebook", "'notebook>=7'")
    if int(notebook.__version__.split(".")[0]) < 7:
        _browser.unavailable(f"the Notebook 7 test needs notebook>=7, not {notebook.__version__}: pip install 'notebook>=7'")
    base, token = lab
    errors: list[str] = []
    stacks: list[str] = []
    page = _page(browser, errors, stacks)
    try:
        page.goto(f"{base}/notebooks/components_nb7.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        assert page.evaluate("() => document.body.dataset.notebook") == "notebooks"  # Notebook 7's shell, not Lab's
        page.wait_for_selector(".jp-NotebookKernelStatus", state="attached", timeout=60_000)
        page.wait_for_timeout(500)
        assert all(e.startswith("pageerror: ") for e in errors), errors  # no console errors
        frames = [ln for st in stacks for ln in st.splitlines() if ln.strip().startswith("at ") and "://" in ln]
        assert len(stacks) == len(errors) and all(NB7_OWN_CODE in f for f in frames), stacks  # Notebook's own code
        errors.clear()
        _run_all_and_drive(page)
    finally:
        page.close()
    assert errors == []
