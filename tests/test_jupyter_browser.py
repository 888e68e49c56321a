"""explore() in real Jupyter front ends: notebooks opened in headless Chromium through Playwright.

One Jupyter server on localhost (temporary root dir, random token) serves both UIs: JupyterLab 4
(``/lab/tree/...``) and, when the ``notebook`` package (v7) is installed, Notebook 7
(``/tree``, ``/notebooks/...``; its server extension loads into the same server, as with ``jupyter
notebook``). In each, a cell showing ``explainer.explore(...)`` on the toy model runs; the tests move
the step slider, click token chips (and, in JupyterLab, the panel tabs), and check that the image
changed, the overlay appeared, the kernel heard the step, the guidance slider's what-if changed, and
no JS errors were logged. The Jupyter server and browser helpers are in tests/_browser.py.

Needs ``pip install jupyterlab notebook playwright anywidget`` and a Chromium (``apt-get install
chromium``), found by tests/_browser.py (``EXPLAINER_CHROMIUM``, ``PATH`` or Playwright's own);
skipped with that reason when one is missing, and failed instead when ``CI=true``.
"""

from __future__ import annotations

import _browser
import pytest

CELLS = [
    'import explainer\nw = explainer.explore("a red circle above a blue square", num_inference_steps=8, seed=0)\nw',
    "print('kernel step', w.step, 'selected', w.selected)\n"
    "print('prompt', w.trace.prompt, 'seed', w.trace.metadata['seed'], 'present', w.presentation)",
    'e = explainer.explore("a blue circle", image=w.trace.final_image, strength=0.5, num_inference_steps=8)\ne',
]
NB7_CELLS = [
    (
        'import explainer\nw = explainer.explore("a red circle above a blue square", negative_prompt="blurry",\n'
        "                      num_inference_steps=8, seed=0)\nw"
    ),
    "print('kernel step', w.step, 'selected', w.selected)\n"
    "print('prompt', w.trace.prompt, 'seed', w.trace.metadata['seed'], 'present', w.presentation)",
]
PIXELS_JS = _browser.canvas_js("return Array.from(ctx.getImageData(0, 0, c.width, c.height).data);")  # an <img>


@pytest.fixture(scope="module", autouse=True)
def chromium() -> str:
    """Chromium's path; first, so that anything missing skips (fails under CI) before JupyterLab starts."""
    return _browser.require_browser(jupyterlab=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with _browser.jupyter_server(tmp_path_factory.mktemp("lab"), {"explore.ipynb": CELLS, "explore_nb7.ipynb": NB7_CELLS}) as server:
        yield server


@pytest.fixture(scope="module")
def browser(chromium):
    with _browser.launch(chromium) as b:
        yield b


def _run_explore_cell(page):
    """Run the first cell; return the x0 image once the widget shows step 0."""
    page.locator(".jp-Cell").first.click()
    page.keyboard.press("Shift+Enter")
    x0 = page.locator(".sdx img[data-panel='x0']")
    try:  # the first call imports, loads the toy and decodes every frame: minutes on a loaded two-core machine
        x0.wait_for(timeout=240_000)
    except Exception:
        print("the cell's output:", page.locator(".jp-Cell").first.locator(".jp-OutputArea").inner_text(timeout=5_000))
        raise
    page.wait_for_function("() => document.querySelector('.sdx')?.dataset.step === '0'", timeout=30_000)
    return x0


def _slide_to_end_and_check(page, x0, steps: int = 8) -> None:
    """Move the native range input to the last step; the frame must change to that step's pixels."""
    before_src, before = x0.get_attribute("src"), x0.evaluate(PIXELS_JS)
    slider = page.locator(".sdx input.sdx-step")
    slider.focus()
    page.keyboard.press("End")
    page.wait_for_function(f"() => document.querySelector('.sdx').dataset.step === '{steps - 1}'", timeout=10_000)
    assert slider.input_value() == str(steps - 1)
    assert x0.get_attribute("src") != before_src
    after = x0.evaluate(PIXELS_JS)
    assert len(after) == len(before) and sum(abs(a - b) for a, b in zip(after, before, strict=True)) > 0
    assert f"step {steps}/{steps}" in page.locator(".sdx .sdx-readout").first.inner_text()


def _click_chip_and_check_overlay(page, word: str, key: str) -> None:
    overlay = page.locator(".sdx canvas.sdx-overlay[data-panel='x0']")
    page.locator(".sdx .sdx-chip", has_text=word).click()
    page.wait_for_function(
        "key => { const c = document.querySelector(\".sdx canvas.sdx-overlay[data-panel='x0']\");"
        " return c && !c.hidden && (c.dataset.shown || '').split('@')[0].split(',').includes(key); }",
        arg=key,
        timeout=30_000,
    )
    painted = overlay.evaluate("c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)")
    assert max(painted[3::4]) > 0  # the colour-mapped map is drawn
    assert page.locator(f".sdx .sdx-chip[data-key='{key}'][aria-pressed='true']").count() == 1


def _kernel_says(page, expected: str) -> None:
    page.wait_for_timeout(300)  # the step goes to the kernel throttled
    page.locator(".jp-Cell").nth(1).click()
    page.keyboard.press("Shift+Enter")
    out = page.locator(".jp-Cell").nth(1).locator(".jp-OutputArea-output")
    out.wait_for(timeout=30_000)
    assert expected in out.inner_text()


def _open_tab_and_check(page, tab: str, caption: str, previous: str | None) -> str:
    """Click a panel tab; its picture (a new PNG) and caption must appear. Returns the image's src."""
    page.locator(f".sdx button[data-tab='{tab}']").click()
    page.wait_for_function(
        "([cap, prev]) => { const f = document.querySelector('.sdx figure.sdx-panel');"
        " const img = f && f.querySelector('img.sdx-panel-img');"
        " return f && !f.hidden && img && !img.hidden && img.src && img.src !== prev"
        " && f.querySelector('figcaption').textContent.startsWith(cap); }",
        arg=[caption, previous],
        timeout=60_000,
    )
    img = page.locator(".sdx img.sdx-panel-img")
    assert img.evaluate("async (i) => { await i.decode(); return i.naturalWidth > 200 && i.naturalHeight > 100; }")
    assert page.locator(f".sdx button[data-tab='{tab}'][aria-pressed='true']").count() == 1
    return img.get_attribute("src")


def _run_prompt_and_present(page) -> None:
    """Type a prompt the toy half knows and a seed, press Run: a new run shows (its unknown words greyed);
    then toggle presentation mode: frames of >= 512 px, larger type; toggle back."""
    root = page.locator(".sdx").first
    x0 = root.locator("img[data-panel='x0']")
    before = x0.get_attribute("src")
    root.locator("input.sdx-prompt").fill("a purple star on the left")
    root.locator("input.sdx-seed").fill("3")
    root.locator("select.sdx-scheduler").select_option("euler")
    root.locator("button.sdx-run").click()
    page.wait_for_function(
        "() => { const r = document.querySelector('.sdx'); const t = r.querySelector('.sdx-title').textContent;"
        " return t.includes('purple star') && t.includes('seed 3'); }",
        timeout=90_000,
    )
    assert x0.get_attribute("src") != before
    unknown = root.locator(".sdx-word[data-unknown='true']:not(.sdx-negative)")
    assert [w.get_attribute("title").split(":")[0] for w in unknown.all()] == ["purple", "star"]
    assert root.locator(".sdx-vocab").inner_text().startswith("the toy model never saw 'purple', 'star'")
    assert root.locator(".sdx-word:not([data-unknown]):not(.sdx-negative)").count() == 4  # a, on, the, left
    assert root.locator("select.sdx-scheduler").input_value() == "euler"
    assert [li.get_attribute("data-stage") for li in root.locator(".sdx-overview li").all()] == ["text", "clip", "unet", "vae"]
    width = x0.evaluate("i => i.width")
    font = root.evaluate("r => parseFloat(getComputedStyle(r).fontSize)")
    root.locator("button.sdx-present-toggle").click()
    page.wait_for_function("() => document.querySelector('.sdx').classList.contains('sdx-present')", timeout=10_000)
    assert x0.evaluate("i => i.width") >= 512 > width
    assert root.evaluate("r => parseFloat(getComputedStyle(r).fontSize)") > font
    assert root.locator("button.sdx-present-toggle").get_attribute("aria-pressed") == "true"
    root.locator("button.sdx-present-toggle").click()
    page.wait_for_function("() => !document.querySelector('.sdx').classList.contains('sdx-present')", timeout=10_000)
    assert x0.evaluate("i => i.width") == width
    assert root.locator(".sdx-error").is_hidden()


def _drag_guidance_and_check(page) -> None:
    """Drag the guidance slider (input events; releasing it would re-run the whole trace at that scale):
    the what-if x\u0302\u2080 of the shown step, re-guided from the recorded outputs, appears and changes
    with the scale."""
    root = page.locator(".sdx").first
    slider, whatif = root.locator("input.sdx-guidance"), root.locator("img.sdx-whatif")
    assert slider.is_visible() and whatif.is_hidden()  # a guided trace: the slider shows; no what-if yet
    caption = "document.querySelector('.sdx img.sdx-whatif').closest('figure').querySelector('figcaption').textContent"
    pixels = []
    for g in ("20", "0"):
        slider.evaluate("(s, v) => { s.value = v; s.dispatchEvent(new Event('input', { bubbles: true })); }", g)
        page.wait_for_function(f"() => {caption}.startsWith('what-if x\u2080 at g = {g},')", timeout=60_000)
        assert whatif.is_visible() and root.locator(".sdx-error").is_hidden()
        pixels.append(whatif.evaluate(PIXELS_JS))
    assert len(pixels[0]) == len(pixels[1]) and pixels[0] != pixels[1]


def test_explore_in_jupyterlab(lab, browser):
    base, token = lab
    errors: list[str] = []
    page = _browser.new_page(browser, errors)
    try:
        page.goto(f"{base}/lab/tree/explore.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
        x0 = _run_explore_cell(page)
        _slide_to_end_and_check(page, x0)

        overlay = page.locator(".sdx canvas.sdx-overlay[data-panel='x0']")
        assert overlay.is_hidden()
        _click_chip_and_check_overlay(page, "circle", "cond:3")
        assert page.locator(".sdx .sdx-chip[aria-pressed='true']").count() == 1
        assert page.locator(".sdx .sdx-error").is_hidden()

        # The on-demand panels: each tab's picture of the current (last) step appears.
        assert page.locator(".sdx figure.sdx-panel").is_hidden()
        src = _open_tab_and_check(page, "guidance", "guidance decomposition of step 8", None)
        src = _open_tab_and_check(page, "sweep", "guidance sweep of step 8", src)
        _open_tab_and_check(page, "trajectory", "latent trajectory (PCA), 4 seed(s), step 8", src)
        page.locator(".sdx button[data-tab='trajectory']").click()  # clicking the open tab closes it
        page.wait_for_function("() => document.querySelector('.sdx figure.sdx-panel').hidden", timeout=10_000)
        assert page.locator(".sdx .sdx-error").is_hidden()

        _kernel_says(page, "kernel step 7 selected ['cond:3']")

        # An img2img trace: its input image and its start on the schedule plot.
        page.locator(".jp-Cell").nth(2).click()
        page.keyboard.press("Shift+Enter")
        edit = page.locator(".jp-Cell").nth(2).locator(".sdx")
        edit.locator("img[data-panel='x0']").wait_for(timeout=60_000)
        assert edit.get_attribute("data-mode") == "img2img"
        shown = edit.locator("img[data-panel='input']")
        assert shown.is_visible() and shown.evaluate("async (i) => { await i.decode(); return i.naturalWidth; }") == 64
        assert edit.locator(".sdx-start").inner_text().startswith("img2img start, t = ")
        assert edit.locator(".sdx-start").inner_text().endswith("strength 0.5")
        assert page.locator(".jp-Cell").first.locator("figure[data-panel='input']").is_hidden()  # txt2img: none

        _run_prompt_and_present(page)
        _kernel_says(page, "prompt a purple star on the left seed 3 present False")
        _drag_guidance_and_check(page)
    finally:
        page.close()
    assert errors == []


def test_explore_in_notebook7(lab, browser):
    _browser.require_notebook7()
    base, token = lab
    errors: list[str] = []
    stacks: list[str] = []
    tree = _browser.new_page(browser, errors, stacks)
    try:
        tree.goto(f"{base}/tree?token={token}")  # the Notebook 7 file browser lists the notebook
        tree.get_by_text("explore_nb7.ipynb").first.wait_for(timeout=60_000)
        tree.wait_for_timeout(500)
    finally:
        tree.close()
    page = _browser.new_page(browser, errors, stacks)
    try:
        page.goto(f"{base}/notebooks/explore_nb7.ipynb?token={token}")
        _browser.notebook7_started(page, errors, stacks)
        config = page.evaluate("() => JSON.parse(document.getElementById('jupyter-config-data').textContent)")
        assert config["appName"] == "Jupyter Notebook" and config["appVersion"].startswith("7.")

        x0 = _run_explore_cell(page)
        assert page.locator(".sdx .sdx-error").is_hidden()
        _slide_to_end_and_check(page, x0)
        _click_chip_and_check_overlay(page, "circle", "cond:3")
        _click_chip_and_check_overlay(page, "blurry", "uncond:1")  # a negative prompt's token too
        page.wait_for_function(
            "() => document.querySelector('.sdx .sdx-emergence-labels').textContent"
            " === 'circle (prompt) \u00b7 blurry (negative)'",
            timeout=30_000,
        )
        _kernel_says(page, "kernel step 7 selected ['cond:3', 'uncond:1']")
        _run_prompt_and_present(page)
        _kernel_says(page, "prompt a purple star on the left seed 3 present False")
        _drag_guidance_and_check(page)
    finally:
        page.close()
    assert errors == []
