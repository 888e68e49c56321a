"""The documentation site builds with ``mkdocs build --strict`` and shows what the package made.

The build renders the concept figures with the toy model (docs/hooks.py). Here it renders the
notebooks without executing them (SD_EXPLAINER_DOCS_EXECUTE=0): tests/test_notebooks.py executes
every notebook in the same run, and executing them twice would double the suite's longest part.
The hook's executor is tested on a small notebook below.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

for module in ("mkdocs", "mkdocs_jupyter", "mkdocstrings", "material"):
    pytest.importorskip(module, reason="the docs extra is not installed: pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONCEPTS = ["text_encoder", "vae", "unet", "cross_attention", "diffusion", "guidance", "training"]
BUILD_TIMEOUT_S = 600


def _load_hooks():
    spec = importlib.util.spec_from_file_location("sd_explainer_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "SD_EXPLAINER_DOCS_EXECUTE": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=BUILD_TIMEOUT_S)  # fmt: skip
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return out


def _page(site: Path, name: str) -> str:
    path = site / name / "index.html" if name else site / "index.html"
    assert path.is_file(), f"no page {path.relative_to(site)}"
    return path.read_text()


def _figures(html: str) -> list[str]:
    return re.findall(r'<img[^>]+src="([^"]*generated/figures/[^"]+\.png)"', html)


@pytest.mark.parametrize("concept", CONCEPTS)
def test_concept_pages_show_generated_figures(site: Path, concept: str) -> None:
    html = _page(site, f"concepts/{concept}")
    figures = _figures(html)
    assert figures, f"concepts/{concept} shows no generated figure"
    for src in figures:
        png = (site / "concepts" / concept / src).resolve()
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
        assert png.stat().st_size > 5_000, f"{src} is suspiciously small"


def test_every_notebook_is_a_page(site: Path) -> None:
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for nb in notebooks:
        html = _page(site, f"generated/notebooks/{nb.stem}")
        assert "jp-Notebook" in html or "jupyter-wrapper" in html, f"{nb.name} was not rendered as a notebook"
    nav = _page(site, "notebooks")
    assert all(f"generated/notebooks/{nb.stem}/" in nav for nb in notebooks), "a notebook is missing from the nav"


def test_key_pages_exist(site: Path) -> None:
    assert "generated/figures/diffusion_reverse.png" in _page(site, "")
    assert "Trace overhead" in _page(site, "performance")
    assert "Model card" in _page(site, "toy_model")
    api = _page(site, "api")
    for anchor in ("explainer.tracing.recorder.trace", "explainer.Trace.heatmap", "explainer.load_pipeline",
                   "explainer.export.export", "explainer.widgets.explore.explore"):
        assert f'id="{anchor}"' in api, f"the API reference has no entry {anchor}"
    if (DOCS / "applications.md").exists():
        _page(site, "applications")


def test_getting_started_matches_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    page = (DOCS / "getting_started.md").read_text()
    commands = [line for line in readme.splitlines() if line.rstrip().endswith(("# run the main job", "# run the tests"))]
    assert len(commands) == 2, "README.md should mark its main-job and test commands"
    for line in commands:
        assert line in page, f"docs/getting_started.md does not have README's command:\n{line}"


def test_the_hook_executes_and_caches_notebooks(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    hooks = _load_hooks()
    src = tmp_path / "src" / "00_tiny.ipynb"
    src.parent.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Tiny"),
                                         nbformat.v4.new_code_cell("print(6 * 7)")])  # fmt: skip
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, src)
    out = tmp_path / "out"
    assert hooks.prepare_notebook(src, out, execute=True, key="k") == "executed"
    done = nbformat.read(out / src.name, as_version=4)
    assert done.cells[1].outputs[0]["text"].strip() == "42"
    assert hooks.prepare_notebook(src, out, execute=True, key="k") == "cached"
    assert hooks.prepare_notebook(src, out, execute=False, key="k") == "cached"   # an executed copy serves both
    assert hooks.prepare_notebook(src, out, execute=True, key="other") == "executed"  # code changed: run again
    assert hooks.notebook_title(src) == "Tiny"


def test_a_failing_notebook_fails_the_build(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    from mkdocs.exceptions import PluginError

    hooks = _load_hooks()
    src = tmp_path / "00_bad.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("assert 1 == 2, 'wrong'")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, src)
    with pytest.raises(PluginError, match="00_bad.ipynb"):
        hooks.prepare_notebook(src, tmp_path / "out", execute=True, key="k")


def test_library_chatter_is_dropped_but_real_warnings_stay() -> None:
    nbformat = pytest.importorskip("nbformat")
    hooks = _load_hooks()
    cell = nbformat.v4.new_code_cell("import explainer")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="[transformers] `CLIPImageProcessor` requires torchvision (not installed); ...\n"),
        nbformat.v4.new_output("display_data", data={"text/plain": "Loading pipeline components...:   0%|   | 0/5"}),
        nbformat.v4.new_output("stream", name="stderr", text="UserWarning: prompt is longer than 77 tokens\n"),
        nbformat.v4.new_output("stream", name="stdout", text="done\n"),
    ]
    nb = nbformat.v4.new_notebook(cells=[cell])
    hooks._quiet(nb)
    assert [o.get("text") for o in nb.cells[0].outputs] == ["UserWarning: prompt is longer than 77 tokens\n", "done\n"]


# ------------------------------------------------------------------------------------ offline

#: Tags that make the browser fetch what they name, and the attribute that names it.
_FETCHING = re.compile(r"<(script|img|iframe|source|audio|video|embed|track|input)\b[^>]*?\s(?:src|srcset)\s*=\s*[\"']?([^\"'\s>]+)",
                       re.IGNORECASE)  # fmt: skip
_LINK = re.compile(r"<link\b[^>]*>", re.IGNORECASE)
_CSS_URL = re.compile(r"(?:url\(\s*[\"']?|@import\s+[\"'])([^\"')\s]+)", re.IGNORECASE)
#: <link rel=...> values that name another page, not something the page loads.
_PAGE_RELS = {"canonical", "alternate", "author", "license", "next", "prev", "help", "search"}


def _remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://", "//"))


def remote_resources(html: str) -> list[str]:
    """Every http(s) URL that ``html`` loads: scripts, stylesheets, fonts, images, preconnects, CSS url()s.

    Links to other pages (``<a href>``, ``<link rel=canonical>``...) are not loads and are not listed.
    """
    found = [url for _, url in _FETCHING.findall(html) if _remote(url)]
    for tag in _LINK.findall(html):
        href = re.search(r"\shref\s*=\s*[\"']?([^\"'\s>]+)", tag, re.IGNORECASE)
        rel = re.search(r"\srel\s*=\s*[\"']?([^\"'>]+)", tag, re.IGNORECASE)
        rels = set(rel.group(1).lower().split()) if rel else set()
        if href and _remote(href.group(1)) and not (rels and rels <= _PAGE_RELS):
            found.append(href.group(1))
    for style in re.findall(r"<style\b[^>]*>(.*?)</style>|\sstyle\s*=\s*\"([^\"]*)\"", html, re.IGNORECASE | re.DOTALL):
        found += [url for url in _CSS_URL.findall("".join(style)) if _remote(url)]
    return found


def test_remote_resource_check_catches_what_a_cdn_page_loads() -> None:
    """Control: the checker flags the CDN script and web fonts the site used to load, and no page links."""
    html = """<html><head>
      <link rel="preconnect" href="https://fonts.gstatic.com">
      <link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">
      <link rel="canonical" href="https://example.org/page/">
      <style>@font-face { src: url("https://example.org/f.woff2"); }</style>
      <script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>
      <script src="../javascripts/vendor/mathjax/tex-chtml-full.js"></script>
    </head><body><a href="https://squidfunk.github.io/mkdocs-material/">Material</a><img src=//example.org/x.png></body></html>"""
    assert remote_resources(html) == [
        "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js",
        "//example.org/x.png",
        "https://fonts.gstatic.com",
        "https://fonts.googleapis.com/css?family=Roboto",
        "https://example.org/f.woff2",
    ]


def test_no_page_loads_anything_from_the_network(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    loads = {str(p.relative_to(site)): remote_resources(p.read_text(errors="replace")) for p in pages}
    assert {page: urls for page, urls in loads.items() if urls} == {}
    for css in site.rglob("*.css"):  # the stylesheets the site ships fetch nothing either
        assert [u for u in _CSS_URL.findall(css.read_text(errors="replace")) if _remote(u)] == [], css
    mathjax = site / "javascripts" / "vendor" / "mathjax"
    assert (mathjax / "tex-chtml-full.js").is_file() and list((mathjax / "output/chtml/fonts/woff-v2").glob("*.woff"))


def test_math_renders_offline_in_chromium(site: Path) -> None:
    """A page with math, opened from disk in headless Chromium with every non-file request aborted."""
    import _browser

    _browser.require_module("playwright.sync_api", "playwright")
    chromium = _browser.require_chromium()
    from playwright.sync_api import sync_playwright

    page_file = site / "concepts" / "diffusion" / "index.html"
    assert 'class="arithmatex"' in page_file.read_text()
    failed: list[str] = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=_browser.CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            blocked = _browser.block_network(context, allow=("file://", "data:", "blob:"))
            page = context.new_page()
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(page_file.as_uri())
            page.wait_for_function(
                "() => { const m = document.querySelectorAll('.arithmatex');"
                " return m.length > 0 && [...m].every(e => e.querySelector('mjx-container')); }",
                timeout=30_000,
            )
            fonts = page.evaluate("async () => { await document.fonts.ready;"
                                  " return [...document.fonts].filter(f => f.status === 'loaded').map(f => f.family); }")  # fmt: skip
        finally:
            browser.close()
    assert blocked == [] and failed == [], (blocked, failed)
    assert any(f.startswith("MJXTEX") for f in fonts), fonts  # MathJax's own fonts, from the vendored copy
