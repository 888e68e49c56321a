"""The explorer's "branch here" in JupyterLab 4 (headless Chromium through Playwright): clicking it runs the
fork, the branch pane appears under the parent, follows the parent's slider, and no JS error is logged.

Lean on purpose: the toy model, 4 steps. Needs what tests/test_jupyter_browser.py needs (JupyterLab,
Playwright and a Chromium found by tests/_browser.py); skipped with the reason when one is missing,
failed instead when ``CI=true``.
"""

from __future__ import annotations

import _browser
import pytest

STEPS = 4
CELLS = [
    f'import explainer\nw = explainer.explore("a red circle above a blue square", num_inference_steps={STEPS}, seed=0)\nw',
    "print('fork step', w.branch.trace.metadata['fork']['step'], 'pane step', w.branch.step, 'prompt', w.branch.trace.prompt)",
]
PARENT = "document.querySelector('.sdx')"
PANE = "document.querySelector('.sdx-branch-pane .sdx')"


@pytest.fixture(scope="module")
def chromium() -> str:
    return _browser.require_browser(jupyterlab=True)


@pytest.fixture(scope="module")
def lab(chromium, tmp_path_factory):
    with _browser.jupyter_server(tmp_path_factory.mktemp("branch_lab"), {"branch.ipynb": CELLS}) as server:
        yield server


def test_branch_here_in_jupyterlab(lab, chromium):
    from playwright.sync_api import sync_playwright

    base, token = lab
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=_browser.CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda err: errors.append(f"pageerror: {err}"))
        page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
        try:
            page.goto(f"{base}/lab/tree/branch.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
            page.locator(".jp-Cell").first.click()
            page.keyboard.press("Shift+Enter")
            root = page.locator(".sdx").first
            root.locator("img[data-panel='x0']").wait_for(timeout=90_000)
            page.wait_for_function(f"() => {PARENT}.dataset.step === '0'", timeout=30_000)
            assert root.locator(".sdx-branch-box").is_hidden() and root.locator(".sdx-fork-tick").is_hidden()

            # go to step 2 of 4 and branch there with a new colour
            slider = root.locator("input.sdx-step").first  # the parent's (the pane's comes later in the page)
            slider.fill("1")
            page.wait_for_function(f"() => {PARENT}.dataset.step === '1'", timeout=10_000)
            button = root.locator("button.sdx-branch").first
            assert button.is_enabled() and button.inner_text().endswith("Branch at step 2")
            assert root.locator("select.sdx-branch-mode").input_value() == "fork"
            root.locator("input.sdx-branch-prompt").fill("a green circle above a blue square")
            page.wait_for_timeout(300)  # the step reaches the kernel (throttled) before the click
            button.click()

            pane = root.locator(".sdx-branch-pane .sdx")
            pane.locator("img[data-panel='x0']").wait_for(timeout=120_000)
            page.wait_for_function(f"() => {PANE} && {PANE}.dataset.step === '1'", timeout=30_000)
            assert root.locator(".sdx-branch-head").first.inner_text() == "branch \u00b7 fork at step 2/4: steps 1\u20131 are the parent's"
            assert pane.get_attribute("data-mark-kind") == "fork" and pane.get_attribute("data-mark-step") == "1"
            assert root.get_attribute("data-mark-step") == "1" and root.locator(".sdx-fork-tick").first.is_visible()
            assert pane.locator(".sdx-title").inner_text().startswith('"a green circle above a blue square"')
            assert pane.locator(".sdx-run-row").is_hidden() and pane.locator(".sdx-branch-row").is_hidden()

            # scrubbing the parent moves the branch: its frame changes with the step
            x0 = pane.locator("img[data-panel='x0']")
            before = x0.get_attribute("src")
            slider.fill(str(STEPS - 1))
            page.wait_for_function(f"() => {PANE}.dataset.step === '{STEPS - 1}'", timeout=10_000)
            assert x0.get_attribute("src") != before
            assert "after the fork" in pane.locator(".sdx-readout").first.inner_text()
            slider.fill("0")
            page.wait_for_function(f"() => {PANE}.dataset.step === '0'", timeout=10_000)
            assert "shared with the parent" in pane.locator(".sdx-readout").first.inner_text()
            slider.fill("1")
            page.wait_for_function(f"() => {PANE}.dataset.step === '1'", timeout=10_000)
            assert root.locator(".sdx-error").first.is_hidden()

            page.wait_for_timeout(300)  # the step goes to the kernel throttled
            page.locator(".jp-Cell").nth(1).click()
            page.keyboard.press("Shift+Enter")
            out = page.locator(".jp-Cell").nth(1).locator(".jp-OutputArea-output")
            out.wait_for(timeout=30_000)
            assert "fork step 1 pane step 1 prompt a green circle above a blue square" in out.inner_text()
        finally:
            page.close()
            browser.close()
    assert errors == []


def test_fork_page_has_both_runs_on_one_slider(chromium, pipe, tmp_path):
    """The standalone page of a fork and its parent (explainer.export(..., parent=)), opened from file://."""
    from playwright.sync_api import sync_playwright

    import explainer

    parent = explainer.trace(pipe, "a red cube beside a blue sphere", num_inference_steps=STEPS, scheduler="ddim",
                             progress=False)  # fmt: skip
    child = parent.fork(2, prompt="a green cube beside a blue sphere", pipe=pipe, progress=False)
    path = explainer.export(child, tmp_path / "fork.html", parent=parent, size=48, verbose=False)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=_browser.CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("pageerror", lambda err: errors.append(f"pageerror: {err}"))
        page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
        try:
            page.goto(path.as_uri())
            lanes = page.locator("section.lane")
            assert [lanes.nth(i).get_attribute("data-lane") for i in range(2)] == ["parent", "fork"]
            assert lanes.nth(1).locator("h2").inner_text() == 'fork at step 3: "a green cube beside a blue sphere"'
            assert page.locator("#timeline span").count() == STEPS and page.locator("#timeline span.marked").count() == 2
            assert page.locator("#timeline span.current").count() == 1
            fork_x0 = lanes.nth(1).locator("figure[data-view='x0'] img")
            before = fork_x0.get_attribute("src")
            page.locator("#step").fill(str(STEPS - 1))
            assert fork_x0.get_attribute("src") != before
            assert page.locator("#timeline span").nth(STEPS - 1).get_attribute("class") == "current"
            assert page.locator("#step-label").inner_text().endswith("branched (fork at step 3)")
            page.locator("#step").fill("0")
            assert page.locator("#step-label").inner_text().endswith("shared with the parent")
            # a chip of the fork's prompt overlays its map on the fork's views only
            page.locator("#chips button.chip[data-lane='1']", has_text="green").click()
            page.wait_for_function("() => document.querySelector(\"section.lane[data-lane='fork'] canvas\").dataset.shown === 'green:0'")
            assert lanes.nth(0).locator("canvas").first.is_hidden()
        finally:
            browser.close()
    assert errors == []
