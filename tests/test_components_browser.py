"""The component explorers (explainer.explore_text_encoder, ..._vae, ..._noising, ..._unet, ..._training,
..._editing) in real Jupyter front ends: one notebook with all six, opened in headless Chromium through
Playwright in JupyterLab 4 and in Notebook 7 (one Jupyter server serves both, as in
tests/test_jupyter_browser.py; the helpers are in tests/_browser.py). In each front end every widget's
live control is moved (a prompt typed, a slider moved, a schedule chosen, the training button pressed, a
mask brushed and an edit run); the kernel must redraw, the picture must change, and no JS error may be
logged. Then presentation mode is switched on and off (pictures of 512 px or more, larger type).

Needs jupyterlab, notebook 7, playwright and a Chromium (tests/_browser.py); skipped with the reason when
one is missing, and failed instead when ``CI=true``.
"""

from __future__ import annotations

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


@pytest.fixture(scope="module", autouse=True)
def chromium() -> str:
    return _browser.require_browser(jupyterlab=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with _browser.jupyter_server(tmp_path_factory.mktemp("components"), {"components_lab.ipynb": CELLS, "components_nb7.ipynb": CELLS}) as server:
        yield server


@pytest.fixture(scope="module")
def browser(chromium):
    with _browser.launch(chromium) as b:
        yield b


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

    _present(page, "noising", "noising")
    _present(page, "editing", "schedule", frame="input")  # a pixel picture: 64 px shown at 256, then 512


def _width(locator) -> float:
    return locator.evaluate("e => e.getBoundingClientRect().width")


def _present(page, part: str, key: str, frame: str | None = None) -> None:
    """Press ``part``'s Presentation button: the kernel redraws figure ``key`` bigger, and picture ``frame``
    (default ``key``) is shown at least PRESENT_DISPLAY px wide, within the widget, with larger type;
    pressed again, all is as before."""
    from explainer.widgets.explore import PRESENT_DISPLAY

    root, toggle = page.locator(_root(part)), page.locator(f"{_root(part)} button.sdc-present-toggle")
    img = root.locator(f"img[data-key='{frame or key}']")
    width, font = _width(img), root.evaluate("r => parseFloat(getComputedStyle(r).fontSize)")
    natural = root.locator(f"img[data-key='{key}']").evaluate("i => i.naturalWidth")
    _changed(page, part, key, toggle.click)
    assert root.evaluate("r => r.classList.contains('sdc-present')") and toggle.get_attribute("aria-pressed") == "true"
    assert root.locator(f"img[data-key='{key}']").evaluate("i => i.naturalWidth") > natural  # drawn bigger
    shown = _width(img)
    assert shown >= PRESENT_DISPLAY and shown > width and shown <= _width(root) + 0.5, (width, shown, _width(root))
    assert root.evaluate("r => parseFloat(getComputedStyle(r).fontSize)") > font
    _changed(page, part, key, toggle.click)
    assert toggle.get_attribute("aria-pressed") == "false" and _width(img) == pytest.approx(width, abs=0.5)


def test_component_explorers_in_jupyterlab(lab, browser):
    base, token = lab
    errors: list[str] = []
    page = _browser.new_page(browser, errors)
    try:
        page.goto(f"{base}/lab/tree/components_lab.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
        _run_all_and_drive(page)
    finally:
        page.close()
    assert errors == []


def test_component_explorers_in_notebook7(lab, browser):
    _browser.require_notebook7()
    base, token = lab
    errors: list[str] = []
    stacks: list[str] = []
    page = _browser.new_page(browser, errors, stacks)
    try:
        page.goto(f"{base}/notebooks/components_nb7.ipynb?token={token}")
        _browser.notebook7_started(page, errors, stacks)
        _run_all_and_drive(page)
    finally:
        page.close()
    assert errors == []
