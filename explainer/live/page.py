"""The live page's builder: one folder that runs the toy model in the browser, all assets local.

The folder opens from ``file://`` (a USB stick, no network, no server) and from any static web server, so
every script is a classic ``<script src>`` (no ES modules, no ``fetch()``): the models, the tokenizer's
vocabulary and the page's data ride in ``.js`` files that set properties of ``self.SDXLive``.

The step player is the explorer's own ``explainer/widgets/player.js`` (an anywidget ES module), copied
with its one ``export default`` line turned into ``self.SDXLive.player = { render }``; ``live.js`` drives
it through an in-page model (the anywidget ``get`` / ``set`` / ``on`` / ``save_changes`` calls) and does
what the kernel does for the notebook explorer: the runs, the token maps, the what-if previews.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

STATIC = Path(__file__).parent / "static"
WIDGETS = Path(__file__).parent.parent / "widgets"
#: The page's own files in ``static/`` (copied as they are; ``live.html`` becomes ``index.html``).
PAGE_FILES = ("live.js", "live.css")
#: The line that ends player.js as an ES module, and what the classic-script copy says instead.
PLAYER_EXPORT = "export default { render };"
#: The toy model's defaults, as ``explainer.toy.evaluate`` generates (guidance 7.5, 25 steps).
DEFAULTS = {"prompt": "a red circle on the left", "seed": 0, "guidance": 7.5, "steps": 25}
#: The tokenizer, the seeded noise and the scheduler in ``static/``, loaded after the runtime's scripts
#: (``explainer.live.runtime_files.runtime_scripts``: onnxruntime-web, the model scripts, runtime.js).
JS_SCRIPTS = ("tokenizer.js", "random.js", "scheduler.js", "png.js")


def player_script(source: str | None = None) -> str:
    """player.js as a classic script that sets ``self.SDXLive.player`` (no ES module needed).

    Args:
        source: the text of player.js (default: read ``explainer/widgets/player.js``).

    Returns:
        The same code wrapped in a function scope, its ``export default`` line replaced.
    """
    text = (WIDGETS / "player.js").read_text(encoding="utf-8") if source is None else source
    lines = text.splitlines()
    hits = [i for i, line in enumerate(lines) if line.strip() == PLAYER_EXPORT]
    if len(hits) != 1:
        raise ValueError(f"player.js must end its module with one {PLAYER_EXPORT!r} line; found {len(hits)}")
    lines[hits[0]] = "self.SDXLive.player = { render };"
    return "// explainer/widgets/player.js as a classic script (built by explainer/live/page.py)\n" \
        "self.SDXLive = self.SDXLive || {};\n(function () {\n" + "\n".join(lines) + "\n})();\n"


def page_data(*, docs_url: str = "", tokenizer: dict[str, Any] | None = None,
              scheduler: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """What the page needs from Python, as plain JSON: the toy's vocabulary and sizes, the classroom texts.

    Args:
        docs_url: base URL of the built docs for the overview strip's links (``""``: name the pages).
        tokenizer: what the page's CLIP tokenizer is built from (its vocabulary and merges), or ``None``.
        scheduler: the scheduler's config and ``alphas_cumprod`` (default: the config alone).

    Returns:
        ``{"vocabulary", "stages", "preview_labels", "colormap", "opacity", "display", "model", "defaults",
        "docs_url", "tokenizer", "scheduler"}``.
    """
    from ..export.frames import OVERLAY_ALPHA, colormap_lut
    from ..models import toy_model_path
    from ..toy import vocabulary
    from ..widgets.explore import MIN_DISPLAY, PREVIEW_LABELS, PRESENT_DISPLAY, STAGES

    toy = toy_model_path()
    unet = json.loads((toy / "unet" / "config.json").read_text())
    vae = json.loads((toy / "vae" / "config.json").read_text())
    tok = json.loads((toy / "tokenizer" / "tokenizer_config.json").read_text())
    sched = json.loads((toy / "scheduler" / "scheduler_config.json").read_text())
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    side = unet["sample_size"]
    return {
        "vocabulary": vocabulary(),
        "stages": [dict(s) for s in STAGES],
        "preview_labels": dict(PREVIEW_LABELS),
        "colormap": colormap_lut().reshape(-1).tolist(),  # [256 * 3] uint8
        "opacity": OVERLAY_ALPHA,
        "display": [MIN_DISPLAY, PRESENT_DISPLAY],
        "model": {
            "latent": [unet["in_channels"], side, side],  # [channel, h, w]
            "image": [vae["out_channels"], side * factor, side * factor],  # [channel, H, W]
            "scaling_factor": vae["scaling_factor"],
            "max_length": tok["model_max_length"],
        },
        "defaults": dict(DEFAULTS),
        "docs_url": docs_url,
        "tokenizer": tokenizer,
        "scheduler": scheduler if scheduler is not None else {"config": sched, "alphas_cumprod": None},
    }


def _script_tags(names: Sequence[str]) -> str:
    return "\n".join(f'<script src="{n}"></script>' for n in names)


def assemble(out_dir: str | Path, *, files: Sequence[tuple[str, Path]], load: Sequence[str],
             write_models: Callable[[Path], list[Path]], tokenizer: dict[str, Any] | None,
             scheduler: dict[str, Any] | None = None, docs_url: str = "") -> Path:  # fmt: skip
    """Write the page from its pieces (``build_page`` with the real ones; tests may pass stand-ins).

    Args:
        out_dir: the folder to write (created; files of the same names are replaced).
        files: ``(name in the folder, source file)`` of every file of the runtime, tokenizer and scheduler
            (scripts, licences).
        load: the scripts to load, in order: names among ``files`` and the model scripts (model scripts not
            named load first).
        write_models: writes the embedded model scripts into a folder and returns their paths, in load order.
        tokenizer: the tokenizer's data for ``SDXLive.pageData.tokenizer``.
        scheduler: the scheduler's data for ``SDXLive.pageData.scheduler`` (default: its config alone).
        docs_url: base URL of the built docs (``""``: the overview strip names the pages).

    Returns:
        The path of ``index.html``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    for name, src in files:
        dest = out / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    models = [Path(p).resolve().relative_to(out.resolve()).as_posix() for p in write_models(out)]
    (out / "player.js").write_text(player_script(), encoding="utf-8")
    shutil.copyfile(WIDGETS / "player.css", out / "player.css")
    for name in PAGE_FILES:
        shutil.copyfile(STATIC / name, out / name)
    data = json.dumps(page_data(docs_url=docs_url, tokenizer=tokenizer, scheduler=scheduler), separators=(",", ":"))
    (out / "data.js").write_text(f"self.SDXLive = self.SDXLive || {{}};\nself.SDXLive.pageData = {data};\n",
                                 encoding="utf-8")  # fmt: skip
    ordered = [*(m for m in models if m not in load), *load, "player.js", "data.js", "live.js"]
    html = (STATIC / "live.html").read_text(encoding="utf-8").replace("<!--scripts-->", _script_tags(ordered))
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index


def build_page(out_dir: str | Path, *, docs_url: str = "") -> Path:
    """Write the live page of the toy model into ``out_dir``: one folder, every asset local.

    Open its ``index.html`` in a browser (``file://`` works) or serve the folder; nothing loads from the
    network.

    Args:
        out_dir: the folder to write (created if missing).
        docs_url: base URL of the built docs, for the overview strip's links (``""``: name the pages).

    Returns:
        The path of the page's ``index.html``.
    """
    from ..models import toy_model_path
    from . import export_onnx, js_data  # the ONNX models; the tokenizer's and the scheduler's data
    from .runtime_files import runtime_scripts

    load = [*runtime_scripts(), *JS_SCRIPTS]
    static = [n for n in load if not n.startswith("model_")]  # model_*.js: written by write_model_scripts
    missing = [str(STATIC / n) for n in static if not (STATIC / n).is_file()]
    if missing:
        raise FileNotFoundError(f"the live page's scripts are missing: {', '.join(missing)}")
    files = [(n, STATIC / n) for n in static]
    files += [(p.relative_to(STATIC).as_posix(), p) for p in sorted((STATIC / "vendor").rglob("*")) if p.is_file()]
    toy = toy_model_path()
    return assemble(out_dir, files=list(dict(files).items()), load=load, write_models=export_onnx.write_model_scripts,
                    tokenizer=js_data.tokenizer_payload(toy / "tokenizer"),
                    scheduler=js_data.scheduler_payload(toy / "scheduler"), docs_url=docs_url)
