"""Chromium and Playwright for the browser tests (and benchmarks/widget_latency.py), found in one place.

Chromium is looked for in this order: ``$EXPLAINER_CHROMIUM`` (a path; when set, nothing else is
tried), then ``chromium``, ``chromium-browser``, ``google-chrome``, ``google-chrome-stable`` on
``PATH``, then the Chromium that Playwright installed itself (``playwright install chromium``).

A browser test that cannot run skips with the reason outside CI; when ``CI`` is ``true`` (or ``1``,
``yes``), as on the CI machine, it FAILS instead, so that a green CI run means the browser tests ran.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType

#: Executable names tried on ``PATH``, in order.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Flags for a headless Chromium in a container.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]  # fmt: skip


def in_ci() -> bool:
    """Whether ``$CI`` says this is a CI run (``true``, ``1`` or ``yes``, any case)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _playwright_chromium() -> str | None:
    """The Chromium that Playwright manages, if it is installed."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    try:
        with sync_playwright() as p:
            path = p.chromium.executable_path
    except Exception:  # noqa: BLE001 - Playwright's driver missing or broken: no browser from it
        return None
    return path if path and Path(path).is_file() else None


def find_chromium() -> tuple[str | None, str]:
    """Find a Chromium executable.

    Returns:
        ``(path, "")`` when found, else ``(None, why)`` naming every place looked at.
    """
    named = os.environ.get("EXPLAINER_CHROMIUM", "").strip()
    if named:
        if Path(named).is_file() and os.access(named, os.X_OK):
            return named, ""
        return None, f"EXPLAINER_CHROMIUM={named!r} is not an executable file"
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path, ""
    path = _playwright_chromium()
    if path:
        return path, ""
    return None, (
        f"no Chromium: EXPLAINER_CHROMIUM is unset, none of {', '.join(CHROMIUM_NAMES)} is on PATH and Playwright has "
        "no browser of its own; apt-get install chromium, or playwright install chromium"
    )


def unavailable(reason: str) -> None:
    """Skip the calling test with ``reason``; under CI, fail it instead."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI is set, and a browser test may not skip there)", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, install: str) -> ModuleType:
    """Import ``name``, or skip (fail under CI) saying ``pip install <install>``."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        unavailable(f"the browser test needs {name} ({err}): pip install {install}")
        raise  # unreachable: unavailable() raises


def require_chromium() -> str:
    """Chromium's path, or skip (fail under CI) naming where it was looked for."""
    path, why = find_chromium()
    if path is None:
        unavailable(f"the browser test needs Chromium: {why}")
    return path
