"""tests/_browser.py: Chromium is found wherever it is, and under CI=true a missing browser fails the
browser tests instead of skipping them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import _browser
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _fake_executable(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def no_browser(monkeypatch, tmp_path):
    """An environment with no Chromium anywhere: nothing named, an empty PATH, no Playwright browsers."""
    monkeypatch.delenv("EXPLAINER_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path / "no-playwright-browsers"))
    return tmp_path


@pytest.mark.parametrize("name", _browser.CHROMIUM_NAMES)
def test_chromium_is_found_on_path_under_any_name(no_browser, monkeypatch, name):
    fake = _fake_executable(no_browser / "bin", name)
    monkeypatch.setenv("PATH", f"{no_browser / 'empty-bin'}{os.pathsep}{fake.parent}")
    assert _browser.find_chromium() == (str(fake), "")


def test_explainer_chromium_wins_and_a_bad_one_is_named(no_browser, monkeypatch):
    on_path = _fake_executable(no_browser / "bin", "chromium")
    named = _fake_executable(no_browser / "elsewhere", "my-chrome")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.setenv("EXPLAINER_CHROMIUM", str(named))
    assert _browser.find_chromium() == (str(named), "")
    monkeypatch.setenv("EXPLAINER_CHROMIUM", str(no_browser / "missing"))
    path, why = _browser.find_chromium()
    assert path is None and "EXPLAINER_CHROMIUM" in why and "missing" in why


def test_playwright_browser_is_the_last_resort(no_browser, monkeypatch):
    own = _fake_executable(no_browser / "pw", "chrome")
    monkeypatch.setattr(_browser, "_playwright_chromium", lambda: str(own))
    assert _browser.find_chromium() == (str(own), "")


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_missing_chromium_fails_under_ci(no_browser, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="needs Chromium.*none of chromium, chromium-browser"):
        _browser.require_chromium()
    with pytest.raises(pytest.fail.Exception, match="needs no_such_module_xyz.*CI is set"):
        _browser.require_module("no_such_module_xyz", "no-such-module")


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_missing_chromium_skips_outside_ci(no_browser, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="needs Chromium"):
        _browser.require_chromium()
    with pytest.raises(pytest.skip.Exception, match="needs no_such_module_xyz"):
        _browser.require_module("no_such_module_xyz", "no-such-module")


def test_browser_test_module_fails_under_ci_without_a_browser(no_browser):
    """End to end: pytest on the HTML browser tests with CI=true and no Chromium reports errors, no skips."""
    env = {**os.environ, "CI": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", "tests/test_html_browser.py"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    summary = out.strip().splitlines()[-1]  # e.g. "5 errors in 24.4s": every test errors at setup
    assert "error" in summary and "skipped" not in summary and "passed" not in summary, out[-3000:]
    assert "the browser test needs Chromium" in out, out[-3000:]
