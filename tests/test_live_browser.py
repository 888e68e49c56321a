"""The live page (``explainer live``) in a real browser: the toy model running in headless Chromium.

The page is written by the CLI (``explainer live --out``) and opened from ``file://`` with every
request that is not a local file aborted and recorded: none may be attempted. No console errors.
Typing a prompt and running, scrubbing the steps and clicking a word each change what is shown.
``--serve`` serves the same page on localhost. Needs Playwright and a Chromium (tests/_browser.py).
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import _browser
import pytest

from explainer.cli import main

# The pixels an <img> or <canvas> shows, hashed in the page: [width, height, sha of RGBA].
PIXELS_JS = _browser.canvas_js("""const px = ctx.getImageData(0, 0, c.width, c.height).data;
  let h = 0, nonzero = 0;
  for (let i = 0; i < px.length; i++) { h = (Math.imul(h, 31) + px[i]) | 0; if (px[i] && i % 4 === 3) nonzero++; }
  return [c.width, c.height, h, nonzero];""")
DONE_JS = "(p) => { const r = self.SDXLive.live && self.SDXLive.live.state.run; return !!r && r.settings.prompt === p && self.SDXLive.live.model.get('can_run'); }"


@pytest.fixture(scope="module")
def chromium() -> str:
    return _browser.require_browser()


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory) -> Path:
    """The page as ``explainer live --out`` writes it."""
    out = tmp_path_factory.mktemp("live") / "page"
    assert main(["live", "--out", str(out)]) == 0
    return out


def test_cli_writes_every_file_the_page_names(page_dir, capsys):
    import re

    html = (page_dir / "index.html").read_text()
    scripts = re.findall(r'<script src="([^"]+)"', html) + re.findall(r'<link rel="stylesheet" href="([^"]+)"', html)
    assert "live.js" in scripts and "player.js" in scripts and len(scripts) >= 8
    for name in scripts:
        assert (page_dir / name).is_file(), name
    text = "".join((page_dir / n).read_text(errors="replace") for n in scripts if n.endswith(".js") and "vendor" not in n)
    assert not re.search(r"\bimport\s*\(|^\s*import\s|^\s*export\s", text, re.MULTILINE)  # classic scripts only
    assert "self.SDXLive.player = { render };" in (page_dir / "player.js").read_text()


def test_cli_errors_exit_2(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("x")
    for argv, needle in ((["live", "--out", str(target)], "is not a folder"), (["live"], "--out"),
                         (["live", "--out", str(tmp_path / "p"), "--port", "8001"], "--port applies to --serve"),
                         (["live", "--serve", "--port", "70000"], "port number")):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert needle in err and "Traceback" not in err


def test_serve_serves_the_page():
    proc = subprocess.Popen([sys.executable, "-m", "explainer", "live", "--serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving the live page at http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url, timeout=30) as resp:
            html = resp.read().decode()
        assert "<title>sd-explainer live" in html
        with urllib.request.urlopen(url + "live.js", timeout=30) as resp:
            assert resp.headers["Content-Type"].startswith("text/javascript")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode in (0, -15)


def test_page_offline_types_runs_scrubs_and_maps(page_dir, chromium):
    from playwright.sync_api import sync_playwright

    problems: list[str] = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=_browser.CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 1200})
            blocked = _browser.block_network(context)
            page = context.new_page()
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "blob:")) else blocked.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto((page_dir / "index.html").as_uri())
            # The default caption runs by itself once the models are loaded.
            page.wait_for_function(DONE_JS, arg=page.evaluate("() => self.SDXLive.pageData.defaults.prompt"), timeout=120_000)
            all_decoded = "() => self.SDXLive.live.state.run.allDecoded"  # the x0 frames' VAE decodes, after the run
            page.evaluate(all_decoded)
            pixels = lambda sel: page.locator(sel).first.evaluate(PIXELS_JS)  # noqa: E731
            final0, x0_last = pixels("img[data-panel=final]"), pixels("img[data-panel=x0]")
            assert page.locator(".sdx-chip").count() >= 4
            # After the run, the x0 previews are replaced by VAE decodes, and the label says which is shown.
            kind = page.locator(".sdx-preview-kind")
            kind.locator("xpath=self::*[@data-method='vae']").wait_for(timeout=10_000)
            assert "VAE decode" in kind.inner_text()

            # Typing a prompt (an unknown word flagged as typed) and running it changes the picture.
            box = page.locator(".sdx-prompt")
            box.fill("a green square at the top zebra")
            assert "'zebra'" in page.locator(".sdx-vocab").inner_text()
            box.fill("")
            page.locator(".live-word[data-word=blue]").click()
            page.locator(".live-word[data-word=triangle]").click()
            assert box.input_value() == "blue triangle"
            box.fill("a blue triangle at the top")
            page.locator(".live-steps").fill("6")
            box.press("Enter")
            page.wait_for_function("() => document.querySelector('.sdx-preview-kind').dataset.method === 'linear'")  # running
            assert "preview" in kind.inner_text()
            page.wait_for_function(DONE_JS, arg="a blue triangle at the top", timeout=60_000)
            page.evaluate(all_decoded)
            assert pixels("img[data-panel=final]") != final0
            assert "a blue triangle at the top" in page.locator(".sdx-title").inner_text()
            assert page.locator(".live-compare img").count() == 2  # this run beside the previous one

            # Scrubbing to the first step shows another x0.
            x0_end = pixels("img[data-panel=x0]")
            page.locator(".sdx").first.focus()
            page.keyboard.press("Home")
            assert page.locator(".sdx").first.get_attribute("data-step") == "0"
            assert pixels("img[data-panel=x0]") != x0_end
            assert "step 1/6" in page.locator(".sdx-readout").first.inner_text()

            # Clicking a word's chip draws its attention map over x0; another word draws another.
            overlay = page.locator("canvas.sdx-overlay[data-panel=x0]")
            assert overlay.is_hidden()
            chips = page.locator(".sdx-chip")
            words = chips.all_inner_texts()
            chips.nth(words.index("blue")).click()
            page.wait_for_function("() => document.querySelector('canvas.sdx-overlay').dataset.shown")
            blue = pixels("canvas.sdx-overlay[data-panel=x0]")
            assert blue[3] > 0
            chips.nth(words.index("blue")).click()
            top = chips.nth(words.index("top"))
            top.click()
            page.wait_for_function("(k) => document.querySelector('canvas.sdx-overlay').dataset.shown === k + '@0'",
                                   arg=top.get_attribute("data-key"))
            assert pixels("canvas.sdx-overlay[data-panel=x0]") != blue
            assert x0_last  # the first run drew its frames too

            # The guidance what-if: x0 of the shown step re-guided from the recorded branches (no run).
            def what_if(g: str):
                page.evaluate("(g) => { const s = document.querySelector('.sdx-guidance'); s.value = g; "
                              "s.dispatchEvent(new Event('input')); }", g)  # fmt: skip
                page.wait_for_function("(g) => document.querySelector('.sdx-whatif').closest('figure').hidden === false "
                                       "&& document.querySelector('.sdx-guidance-row figcaption').textContent.includes('g = ' + g)",
                                       arg=g)  # fmt: skip
                return pixels("img.sdx-whatif")

            assert what_if("1.0") != what_if("15.0")
        finally:
            browser.close()
    assert blocked == []
    assert problems == []
