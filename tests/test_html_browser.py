"""The standalone HTML page in a real browser: headless Chromium through Playwright, opened from file://.

Needs ``pip install playwright`` and a Chromium (``apt-get install chromium``), found by
tests/_browser.py (``EXPLAINER_CHROMIUM``, ``PATH`` or Playwright's own); skipped with that reason
when either is missing, and failed instead when ``CI=true``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import _browser
import numpy as np
import pytest
from PIL import Image

import explainer
from explainer.export import export
from explainer.export.frames import colormap_lut
from explainer.tracing.previews import SD1_LATENT_RGB_FACTORS

STEPS = 4
SIZE = 64

# Pixels of an <img> or <canvas> as decoded by the browser: [width, height, flat RGBA].
PIXELS_JS = _browser.canvas_js("return [c.width, c.height, Array.from(ctx.getImageData(0, 0, c.width, c.height).data)];")


@pytest.fixture(scope="module", autouse=True)
def chromium() -> str:
    """Chromium's path; first, so that a missing browser skips (fails under CI) before any trace is made."""
    return _browser.require_browser()


@pytest.fixture(scope="module")
def tr(pipe, smooth_latents):
    """A real trace of the tiny pipeline (its attention maps), with smooth synthetic latents.

    Random weights give pixel-noise previews, the worst case for JPEG; smooth latents that shift
    from step to step make each frame both encodable and unmistakable.
    """
    prompt = "a red circle above a blue square"
    result = explainer.trace(pipe, prompt, num_inference_steps=STEPS, scheduler="ddim", progress=False)
    rgb = explainer.LatentRGB(np.asarray(SD1_LATENT_RGB_FACTORS, np.float32), np.zeros(3, np.float32), "test:sd1")
    latents, x0, scale = smooth_latents(STEPS)
    return dataclasses.replace(result, latent_rgb=rgb, latents=latents, x0=x0, input_scale=scale)


@pytest.fixture(scope="module")
def page_file(tr, tmp_path_factory):
    return export(tr, tmp_path_factory.mktemp("html") / "run.html", size=SIZE, fps=20, hold=0.1, verbose=False)


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=_browser.CHROMIUM_ARGS)
        yield b
        b.close()


class Session:
    """A fresh page that records console errors and every request (aborting all but file://)."""

    def __init__(self, browser, url: str) -> None:
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.context.route("**/*", self._route)
        self.page.goto(url)
        self.page.wait_for_load_state("load")

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith("file://"):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def network(self) -> list[str]:
        """Requests that left the file system (data: URIs are not requests)."""
        return [u for u in self.requests + self.blocked if not u.startswith(("file://", "data:"))]

    def pixels(self, selector: str) -> np.ndarray:
        w, h, data = self.page.locator(selector).evaluate(PIXELS_JS)
        return np.asarray(data, np.uint8).reshape(h, w, 4)


@pytest.fixture
def session(browser, page_file):
    s = Session(browser, page_file.as_uri())
    yield s
    s.context.close()


def assert_clean(s: Session, page_file: Path) -> None:
    assert s.errors == [], f"console errors: {s.errors}"
    assert s.network() == [], f"network requests: {s.network()}"
    assert [u for u in s.requests if u.startswith("file://")] == [page_file.as_uri()]


def expected(tr, kind: str, step: int) -> np.ndarray:
    return np.asarray(tr.preview(step, kind=kind).resize((SIZE, SIZE), Image.NEAREST), np.float32)


def test_page_opens_offline_with_prompt_and_settings(session, page_file, tr):
    page = session.page
    assert page.title() == "sd-explainer: a red circle above a blue square"
    assert page.locator("#prompt").text_content() == "a red circle above a blue square"
    settings = page.locator("#settings").text_content()
    assert "scheduler DDIMScheduler" in settings and f"steps {STEPS}" in settings and "guidance 7.5" in settings
    assert page.locator("#step-label").text_content().startswith(f"step 1 / {STEPS} \u00b7 t = ")
    assert page.locator(".chip").all_text_contents() == ["a", "red", "circle", "above", "blue", "square"]
    shown = session.pixels("figure[data-view=x0] img")[..., :3]
    assert np.abs(shown - expected(tr, "x0", 0)).mean() < 8  # the first step's x0, JPEG-decoded
    assert_clean(session, page_file)


def test_slider_changes_the_frame(session, page_file, tr):
    page = session.page
    before = session.pixels("figure[data-view=xt] img")
    page.locator("#step").focus()
    page.keyboard.press("End")  # a real key press on the range input
    assert page.locator("#step").input_value() == str(STEPS - 1)
    assert page.locator("#step-label").text_content().startswith(f"step {STEPS} / {STEPS} ")
    for kind in ("xt", "x0"):
        shown = session.pixels(f"figure[data-view={kind}] img")[..., :3].astype(np.float32)
        error = np.abs(shown - expected(tr, kind, STEPS - 1)).mean()
        assert error < 8, (kind, error)
        assert np.abs(shown - expected(tr, kind, 0)).mean() > error + 10  # not the first frame any more
    assert not np.array_equal(before, session.pixels("figure[data-view=xt] img"))
    page.keyboard.press("Home")
    assert np.array_equal(before, session.pixels("figure[data-view=xt] img"))
    assert_clean(session, page_file)


def _heat_from_overlay(rgba: np.ndarray) -> np.ndarray:
    """Invert the colormap: the attention value (0..1) each overlay pixel shows."""
    lut = colormap_lut().astype(np.float32)
    dist = ((rgba[..., None, :3].astype(np.float32) - lut[None, None]) ** 2).sum(-1)
    return dist.argmin(-1) / 255.0


def test_token_chip_shows_its_overlay(session, page_file, tr):
    page = session.page
    overlay = "figure[data-view=x0] canvas"
    assert page.locator(overlay).is_hidden()
    page.locator(".chip", has_text="circle").click()
    assert page.locator(".chip", has_text="circle").get_attribute("aria-pressed") == "true"
    page.locator(overlay + '[data-shown="circle:0"]').wait_for(state="visible")
    rgba = session.pixels(overlay)
    assert rgba.shape == (SIZE, SIZE, 4)
    assert abs(int(np.median(rgba[..., 3])) - round(2.55 * 65)) <= 1  # the default 65 % opacity
    heat = tr.heatmap("circle", step=0)
    want = np.asarray(Image.fromarray(heat.astype(np.float32), "F").resize((SIZE, SIZE), Image.BILINEAR))
    shown = _heat_from_overlay(rgba)
    assert np.abs(shown - want).mean() < 0.06, np.abs(shown - want).mean()
    other = np.asarray(Image.fromarray(tr.heatmap("square", step=0), "F").resize((SIZE, SIZE), Image.BILINEAR))
    assert np.abs(shown - want).mean() < 0.5 * np.abs(shown - other).mean()  # circle's map, not square's

    page.locator("#step").focus()
    page.keyboard.press("End")  # the overlay follows the step
    page.locator(f'{overlay}[data-shown="circle:{STEPS - 1}"]').wait_for(state="visible")
    later = _heat_from_overlay(session.pixels(overlay))
    want_later = Image.fromarray(tr.heatmap("circle", step=STEPS - 1), "F").resize((SIZE, SIZE), Image.BILINEAR)
    assert np.abs(later - np.asarray(want_later)).mean() < 0.06
    assert np.abs(later - want).mean() > 2 * np.abs(later - np.asarray(want_later)).mean()  # not step 0's map

    page.locator("#all-steps").check()  # the map averaged over all steps
    page.locator(f'{overlay}[data-shown="circle:all"]').wait_for(state="visible")
    mean = Image.fromarray(tr.heatmap("circle"), "F").resize((SIZE, SIZE), Image.BILINEAR)
    assert np.abs(_heat_from_overlay(session.pixels(overlay)) - np.asarray(mean)).mean() < 0.06

    page.locator(".chip", has_text="circle").click()  # a second click hides it
    assert page.locator(overlay).is_hidden()
    assert page.locator(".chip", has_text="circle").get_attribute("aria-pressed") == "false"
    assert_clean(session, page_file)


def test_play_button_advances_and_pauses(session, page_file):
    page = session.page
    page.locator("#play").click()
    page.wait_for_function("() => document.getElementById('step').value !== '0'", timeout=5000)
    page.locator("#play").click()
    assert page.locator("#play").get_attribute("aria-label") == "play"
    paused_at = page.locator("#step").input_value()
    page.wait_for_timeout(300)  # 6 frames at 20 fps: nothing moves while paused
    assert page.locator("#step").input_value() == paused_at
    assert_clean(session, page_file)


def test_request_check_catches_a_network_request(browser, page_file, tmp_path):
    """Control: the same checks flag a page that does reach for the network."""
    leaky = tmp_path / "leaky.html"
    page = page_file.read_text(encoding="utf-8")
    leaky.write_text(page.replace("</body>", '<img src="https://example.invalid/pixel.png"></body>'), encoding="utf-8")
    s = Session(browser, leaky.as_uri())
    try:
        assert s.blocked == ["https://example.invalid/pixel.png"]
        assert set(s.network()) == {"https://example.invalid/pixel.png"}
    finally:
        s.context.close()


def test_handout_notes_follow_the_slider_and_questions_are_listed(browser, tr, tmp_path):
    notes = {0: "pure noise: nothing to see yet", STEPS - 2: "the shapes settle"}
    questions = ["Why is the first x\u2080 a blur?", "Which word's map sharpens first?"]
    path = export(tr, tmp_path / "handout.html", size=SIZE, notes=notes, questions=questions, verbose=False)
    s = Session(browser, path.as_uri())
    try:
        page = s.page
        note = page.locator("#note")
        assert note.is_visible() and note.text_content() == notes[0]
        page.locator("#step").focus()
        page.keyboard.press("End")  # the last step shows the latest note at or before it
        assert note.text_content() == notes[STEPS - 2]
        assert page.locator("#notes li").all_text_contents() == [f"step {s + 1}: {t}" for s, t in notes.items()]
        assert page.locator("#questions li").all_text_contents() == questions
        assert page.locator("#handout").is_visible()
        assert_clean(s, path)
    finally:
        s.context.close()
    plain = Session(browser, export(tr, tmp_path / "plain.html", size=SIZE, verbose=False).as_uri())
    try:  # no notes, no questions: no handout section
        assert plain.page.locator("#note").is_hidden() and plain.page.locator("#handout").is_hidden()
    finally:
        plain.context.close()
