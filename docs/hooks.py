"""MkDocs hooks: what the site shows is made by the package when the docs are built.

Before each build, into ``docs/generated/`` (git-ignored):

- ``figures/``: the concept pages' figures, rendered with the toy model by ``docs/gen_figures.py``;
- ``javascripts/plotly.min.js``: plotly.js, copied from the installed ``plotly`` package (no CDN), for
  the interactive figures that a page includes with a line ``<!--plotly NAME-->``;
- ``notebooks/``: the classroom notebooks from ``notebooks/``, executed (so the pages show their
  pictures and numbers), then rendered by mkdocs-jupyter.

After each build, the live browser page (``explainer live``) is written into the site's ``live-page/``.

Both are cached: they are made again only when a notebook, ``gen_figures.py``, the package's code or
the toy model changes, so ``mkdocs serve`` stays fast after the first build. Set
``SD_EXPLAINER_DOCS_EXECUTE=0`` to render the notebooks without running them (no outputs), e.g.
when a test has just executed them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mkdocs.exceptions import PluginError

log = logging.getLogger("mkdocs.hooks.sd_explainer")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GENERATED = DOCS / "generated"
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT_S = 600
EXECUTE_ENV = "SD_EXPLAINER_DOCS_EXECUTE"


def execute_enabled() -> bool:
    return os.environ.get(EXECUTE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _hash_files(paths: list[Path], extra: bytes = b"") -> str:
    h = hashlib.sha256(extra)
    for p in sorted(paths):
        h.update(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def package_key() -> str:
    """Hash of what the generated pages depend on: the package's code and the toy model's files."""
    files = list((ROOT / "explainer").rglob("*.py")) + [p for p in (ROOT / "assets" / "toy").rglob("*") if p.is_file()]
    return _hash_files(files)


def _write_if_changed(path: Path, data: bytes) -> None:
    # mkdocs serve watches docs/: rewriting identical files would rebuild for ever
    if not path.exists() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# ------------------------------------------------------------------------------------------ figures
def make_figures(out: Path = GENERATED / "figures", key: str | None = None) -> bool:
    """Render the concept figures into ``out`` unless they are up to date; return whether it rendered."""
    script = DOCS / "gen_figures.py"
    key = _hash_files([script], (key or package_key()).encode())
    stamp = out / "key.txt"
    if stamp.exists() and stamp.read_text() == key:
        return False
    spec = importlib.util.spec_from_file_location("sd_explainer_docs_figures", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, _kernel_env():
        for path in module.render_all(tmp):
            _write_if_changed(out / path.name, path.read_bytes())
    _write_if_changed(stamp, key.encode())
    log.info("concept figures rendered in %.1f s", time.perf_counter() - start)
    return True


# ----------------------------------------------------------------------------- plotly (vendored)
PLOTLY_JS = "generated/javascripts/plotly.min.js"
_PLOTLY_MARK = re.compile(r"^<!--plotly ([\w-]+)-->$", re.MULTILINE)


def vendor_plotly(out: Path = DOCS / PLOTLY_JS) -> None:
    """Copy the installed plotly package's own plotly.min.js into the site (offline; same version as the figures)."""
    import plotly

    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not source.exists():
        raise PluginError(f"plotly.min.js not found in the installed plotly package ({source}).")
    _write_if_changed(out, source.read_bytes())


def include_interactive(markdown: str, figures: Path = GENERATED / "figures") -> str:
    """Replace each line ``<!--plotly NAME-->`` with the fragment ``figures/NAME.html``."""

    def inline(match: re.Match) -> str:
        path = figures / f"{match.group(1)}.html"
        if not path.exists():
            raise PluginError(f"interactive figure {match.group(1)!r} is not in {figures}; add it to docs/gen_figures.py.")
        return "\n" + path.read_text() + "\n"

    return _PLOTLY_MARK.sub(inline, markdown)


# ---------------------------------------------------------------------------------------- notebooks
@contextlib.contextmanager
def _kernel_env() -> Iterator[None]:
    """Offline, headless, single-threaded unless the caller chose otherwise (kernels inherit os.environ)."""
    wanted = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline",
              "PLOTLY_RENDERER": "plotly_mimetype"}  # plotly figures as JSON; _plotly_outputs makes the page's HTML
    wanted.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: Lines of library chatter that say nothing to a reader of the rendered page.
NOISE = re.compile(r"requires torchvision \(not installed\)|^Loading (pipeline components|weights)|Kernel is running over TCP")


def _quiet(nb) -> None:
    """Drop library chatter from the outputs: stderr lines and progress bars matching :data:`NOISE`."""
    for cell in nb.cells:
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                lines = [line for line in out["text"].splitlines(keepends=True) if not NOISE.search(line)]
                if not "".join(lines).strip():
                    continue
                out["text"] = "".join(lines)
            elif out.get("output_type") == "display_data" and NOISE.search(str(out.get("data", {}).get("text/plain", ""))):
                continue  # a tqdm progress-bar widget
            kept.append(out)
        if cell.cell_type == "code":
            cell.outputs = kept


PLOTLY_MIME = "application/vnd.plotly.v1+json"


def _plotly_outputs(nb) -> None:
    """Give each plotly output an HTML fragment drawn by the site's vendored plotly.js (no CDN)."""
    from plotly.io import from_json

    from explainer.views import figure_html

    for k, cell in enumerate(nb.cells):
        for j, out in enumerate(cell.get("outputs", [])):
            spec = out.get("data", {}).get(PLOTLY_MIME)
            if spec is not None:
                fig = from_json(json.dumps(spec), skip_invalid=True)
                out["data"]["text/html"] = figure_html(fig, div_id=f"plotly-{k}-{j}")


def notebook_title(path: Path) -> str:
    """The notebook's first Markdown heading, else its file name."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def prepare_notebook(src: Path, out_dir: Path, execute: bool, key: str) -> str:
    """Put ``src`` into ``out_dir``, executed when ``execute``; return ``"cached"``, ``"executed"`` or ``"copied"``."""
    import nbformat

    nb_key = _hash_files([src], key.encode())
    target = out_dir / src.name
    if target.exists():
        meta = json.loads(target.read_text()).get("metadata", {}).get("sd_explainer_docs", {})
        if meta.get("key") == nb_key and (meta.get("executed") or not execute):
            return "cached"
    nb = nbformat.read(src, as_version=4)
    if execute:
        import nbclient

        start = time.perf_counter()
        client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                         resources={"metadata": {"path": str(src.parent)}})
        try:
            with _kernel_env():
                client.execute()
        except Exception as err:  # CellExecutionError names the cell; fail the build with it
            raise PluginError(f"notebook {src.name} failed while building the docs:\n{err}") from err
        log.info("executed %s in %.1f s", src.name, time.perf_counter() - start)
        _quiet(nb)
        _plotly_outputs(nb)
    nb.metadata["sd_explainer_docs"] = {"key": nb_key, "executed": execute}
    _write_if_changed(target, nbformat.writes(nb).encode())
    return "executed" if execute else "copied"


def prepare_notebooks(out_dir: Path = GENERATED / "notebooks", execute: bool | None = None) -> dict[str, str]:
    """Every notebook of ``notebooks/`` into ``out_dir``; stale copies are removed."""
    execute = execute_enabled() if execute is None else execute
    key = package_key()
    sources = sorted(NOTEBOOKS.glob("*.ipynb"))
    result = {src.name: prepare_notebook(src, out_dir, execute, key) for src in sources}
    for old in out_dir.glob("*.ipynb"):
        if old.name not in result:
            old.unlink()
    return result


# ------------------------------------------------------------------------------------------- hooks
def _is_notebook_entry(entry: str | dict) -> bool:
    page = entry if isinstance(entry, str) else next(iter(entry.values()), "")
    return isinstance(page, str) and page.endswith(".ipynb")


def on_config(config, **kwargs):
    """Fill the "Notebooks" section of the nav with every notebook, and list optional pages that exist."""
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and "Notebooks" in entry:
            pages = [p for p in entry["Notebooks"] if not _is_notebook_entry(p)]
            pages += [{notebook_title(p): f"generated/notebooks/{p.name}"} for p in sorted(NOTEBOOKS.glob("*.ipynb"))]
            entry["Notebooks"] = pages
    if PLOTLY_JS not in config["extra_javascript"]:
        config["extra_javascript"].append(PLOTLY_JS)
    optional = {"Applications": "applications.md"}
    for title, page in optional.items():
        if (DOCS / page).exists() and not any(isinstance(e, dict) and title in e for e in config["nav"]):
            config["nav"].insert(len(config["nav"]) - 3, {title: page})  # before Performance, toy model, API
    return config


_NOTEBOOK_LINK = re.compile(r"\]\(([^)\s]*?\.ipynb)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    """Links to ``notebooks/NN_name.ipynb`` in the repository (as on GitHub) point at the rendered page."""
    here = (DOCS / page.file.src_path).parent

    def repoint(match: re.Match) -> str:
        target = Path(os.path.normpath(here / match.group(1)))
        if target.parent != NOTEBOOKS:
            return match.group(0)
        rendered = os.path.relpath(GENERATED / "notebooks" / target.name, here).replace(os.sep, "/")
        return f"]({rendered}{match.group(2) or ''})"

    return include_interactive(_NOTEBOOK_LINK.sub(repoint, markdown))


def on_pre_build(config, **kwargs):
    start = time.perf_counter()
    make_figures()
    vendor_plotly()
    done = prepare_notebooks()
    log.info("generated pages ready in %.1f s (notebooks: %s)", time.perf_counter() - start,
             ", ".join(f"{k} {v}" for k, v in done.items()))


#: Where the built site holds the live page (``docs/live.md`` links it): written by ``explainer.live.build_page``.
LIVE_PAGE_DIR = "live-page"


def on_post_build(config, **kwargs):
    """Write the live browser page into the site (offline: every asset local), linked from live.md."""
    from explainer.live import build_page

    start = time.perf_counter()
    try:
        build_page(Path(config["site_dir"]) / LIVE_PAGE_DIR, docs_url="../")
    except (OSError, ValueError) as err:
        raise PluginError(f"the live page could not be built into the site: {err}") from err
    log.info("live page written to %s/ in %.1f s", LIVE_PAGE_DIR, time.perf_counter() - start)


def clean() -> None:
    """Remove everything the hooks generated."""
    shutil.rmtree(GENERATED, ignore_errors=True)
