"""Chromium and Playwright for the browser tests (and benchmarks/widget_latency.py), found in one place.

Chromium is looked for in this order: ``$EXPLAINER_CHROMIUM`` (a path; when set, nothing else is
tried), then ``chromium``, ``chromium-browser``, ``google-chrome``, ``google-chrome-stable`` on
``PATH``, then the Chromium that Playwright installed itself (``playwright install chromium``).

A browser test that cannot run skips with the reason outside CI; when ``CI`` is ``true`` (or ``1``,
``yes``), as on the CI machine, it FAILS instead, so that a green CI run means the browser tests ran.

The Jupyter front-end tests (tests/test_jupyter_browser.py, tests/test_components_browser.py) share the
rest: one Jupyter server serving JupyterLab 4 and Notebook 7 (:func:`jupyter_server`), a headless
Chromium (:func:`launch`), pages that collect JS errors (:func:`new_page`), and Notebook 7's start-up
check (:func:`notebook7_started`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

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
        pytest.fail(f"{reason} (CI is set, and these tests may not skip there)", pytrace=False)
    pytest.skip(reason)


def require_node() -> str:
    """Node.js's path (the live page's JS runs in it), or skip (fail under CI)."""
    node = shutil.which("node")
    if node is None:
        unavailable("the live page's JS tests need Node.js (`node` on PATH): apt-get install nodejs")
    return node


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


def require_browser(*, jupyterlab: bool = False) -> str:
    """Chromium's path once Playwright (and, with ``jupyterlab``, JupyterLab) imports; else skip (fail under CI)."""
    require_module("playwright.sync_api", "playwright")
    if jupyterlab:
        require_module("jupyterlab", "jupyterlab")
    return require_chromium()


def canvas_js(result: str) -> str:
    """A ``page.evaluate`` function that draws an ``<img>`` (once decoded) or ``<canvas>`` onto a new canvas.

    Args:
        result: the JavaScript that returns what the test reads, with ``c`` (the canvas) and ``ctx`` in scope.
    """
    return f"""async (el) => {{
  if (el instanceof HTMLImageElement) await el.decode();
  const c = document.createElement("canvas");
  c.width = el.naturalWidth || el.width; c.height = el.naturalHeight || el.height;
  const ctx = c.getContext("2d");
  ctx.drawImage(el, 0, 0);
  {result}
}}"""


# --------------------------------------------------------------------------- Jupyter front ends
#: Notebook 7.6 (with JupyterLab 4.6) throws from its own bundle while its page starts, before any
#: cell runs, on an empty /tree page too: "Cannot read properties of undefined (reading 'schema')"
#: (settings of a few JupyterLab plugins fail to load) and, at times, "Command
#: 'filebrowser:open-path' not registered". Such start-up errors are allowed when every frame of their
#: stack is Notebook's own code; once a cell runs, no error at all is.
NB7_OWN_CODE = "/static/notebook/"
#: The browser window of the front-end tests.
VIEWPORT = {"width": 1400, "height": 1000}
#: How long the Jupyter server may take to start (s); on a loaded two-core machine, over a minute.
SERVER_START_S = 180


def free_port() -> int:
    """A free TCP port on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notebook_json(cells: list[str]) -> str:
    """An nbformat-4 notebook (Python 3 kernel) of code ``cells``, not yet run, as JSON."""
    notebook = {
        "cells": [{"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None} for src in cells],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(notebook)


@contextlib.contextmanager
def jupyter_server(root: Path, notebooks: dict[str, list[str]]) -> Iterator[tuple[str, str]]:
    """Write ``notebooks`` (file name -> cells) into ``root`` and serve it with one Jupyter server on
    localhost (a random port and token): JupyterLab 4 at ``/lab/tree/NAME`` and, when notebook 7 is
    installed, Notebook 7 at ``/notebooks/NAME`` (its server extension loads into the same server).
    Kernels inherit this process's environment (``PYTHONPATH`` too), offline.

    Yields:
        ``(base_url, token)``; the server is stopped on exit.
    """
    import pytest

    for name, cells in notebooks.items():  # a kernel each
        (root / name).write_text(notebook_json(cells))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "JUPYTER_CONFIG_DIR": str(root / ".config"), "JUPYTER_RUNTIME_DIR": str(root / ".runtime")}  # fmt: skip
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]  # fmt: skip
    log = open(root / "lab.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start in {SERVER_START_S} s:\n" + (root / "lab.log").read_text()[-3000:])
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


@contextlib.contextmanager
def launch(chromium: str) -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``) from ``chromium``'s path, closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def block_network(context: Any, *, allow: tuple[str, ...] = ("file:",)) -> list[str]:
    """Abort every request of a Playwright ``context`` whose URL starts with none of ``allow``.

    Returns:
        The list the aborted URLs are appended to (a test asserts it stays empty).
    """
    blocked: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(allow):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    return blocked


def new_page(browser: Any, errors: list[str], stacks: list[str] | None = None) -> Any:
    """A page of :data:`VIEWPORT` that appends each JS error to ``errors`` (and each page error's stack to
    ``stacks``, when given)."""
    page = browser.new_page(viewport=VIEWPORT)
    page.on("pageerror", lambda err: (errors.append(f"pageerror: {err}"), stacks is not None and stacks.append(err.stack or "")))
    page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
    return page


def require_notebook7() -> None:
    """Skip (fail under CI) unless notebook >= 7 is installed."""
    notebook = require_module("notebook", "'notebook>=7'")
    if int(notebook.__version__.split(".")[0]) < 7:
        unavailable(f"the Notebook 7 test needs notebook>=7, not {notebook.__version__}: pip install 'notebook>=7'")


def notebook7_started(page: Any, errors: list[str], stacks: list[str]) -> None:
    """Wait for a Notebook 7 notebook page to start; check that it is Notebook 7's shell and that its
    only errors so far are its own start-up ones (:data:`NB7_OWN_CODE`); then clear ``errors``."""
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    assert page.evaluate("() => document.body.dataset.notebook") == "notebooks"  # Notebook 7's shell, not Lab's
    page.wait_for_selector(".jp-NotebookKernelStatus", state="attached", timeout=60_000)
    page.wait_for_timeout(500)
    assert all(e.startswith("pageerror: ") for e in errors), errors  # no console errors
    frames = [ln for st in stacks for ln in st.splitlines() if ln.strip().startswith("at ") and "://" in ln]
    assert len(stacks) == len(errors) and all(NB7_OWN_CODE in f for f in frames), stacks  # Notebook's own code
    errors.clear()
