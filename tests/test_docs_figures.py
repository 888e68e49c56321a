"""Every figure marked in the docs agrees with the JSON under docs/data/ that a committed command wrote.

A figure is marked in Markdown (pages and notebook prose) with an HTML comment right before it:
``<!--d final_eval.json#guidance_curve/7.5/shape-->84.0 %``: the file under docs/data/ (``.jsonl``: a
list of rows), a ``/``-separated key path (list indices as numbers), then the number as shown, optionally
in bold, with ``%`` when the JSON holds a fraction. It must match to the precision shown.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "data"
MARK = re.compile(r"<!--d (?P<file>[\w.]+)#(?P<path>[^\s>]+)-->\**(?P<num>-?[\d,]*\.?\d+)(?P<pct>\s?%)?")
# pages that quote measured figures, and how many marks each must hold at least
PAGES = {
    "docs/toy_model.md": 66,
    "docs/concepts/guidance.md": 2,
    "docs/concepts/cross_attention.md": 6,
    "notebooks/07_cross_attention.ipynb": 2,
    "notebooks/11_change_one_word.ipynb": 6,
    "docs/applications.md": 14,
    "docs/performance.md": 20,
    "docs/model_families.md": 4,
    "docs/batch.md": 6,
    "docs/teaching/exercises.md": 5,
    "docs/branching.md": 20,
    "docs/live.md": 20,
    "README.md": 0,
}


def _text(rel: str) -> str:
    path = ROOT / rel
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text()


def _load(name: str):
    path = DATA / name
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def lookup(name: str, key_path: str):
    """The value at ``key_path`` (``a/b/0/c``) in docs/data/``name``."""
    value = _load(name)
    for key in key_path.split("/"):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def agrees(shown: str, percent: bool, value: float) -> bool:
    """Whether ``shown`` (as printed, ``"1,242"``, ``"84.0"``) is ``value`` (×100 if ``percent``) rounded
    to the digits shown."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    expected = float(value) * (100 if percent else 1)
    return abs(float(shown.replace(",", "")) - expected) <= 0.5 * 10**-decimals + 1e-9


def _marks() -> list[tuple[str, re.Match]]:
    return [(rel, m) for rel in PAGES for m in MARK.finditer(_text(rel))]


def test_agrees_compares_to_the_digits_shown():
    assert agrees("84.0", True, 0.83984375)
    assert not agrees("84.1", True, 0.83984375)
    assert agrees("100", True, 1.0) and not agrees("99", True, 1.0)
    assert agrees("3,856", False, 3856) and not agrees("3,855", False, 3856)
    assert agrees("10.2", False, 10.1804) and not agrees("5.9", False, 10.1804)


@pytest.mark.parametrize("rel", sorted(PAGES))
def test_pages_mark_their_figures(rel):
    marks = [m for r, m in _marks() if r == rel]
    assert len(marks) >= PAGES[rel], f"{rel}: {len(marks)} marked figures, expected at least {PAGES[rel]}"
    text = _text(rel)
    broken = [text[m.start():m.end() + 12] for m in re.finditer(r"<!--d [^>]*-->", text) if not MARK.match(text, m.start())]
    assert not broken, f"{rel}: malformed figure marks {broken}"
    starts = [line for line in text.splitlines() if line.lstrip().startswith("<!--d ")]
    assert not starts, f"{rel}: a line starting with a mark opens an HTML block in CommonMark: {starts}"


def test_every_marked_figure_matches_its_json():
    wrong = []
    for rel, m in _marks():
        try:
            value = lookup(m["file"], m["path"])
        except (KeyError, IndexError, ValueError, FileNotFoundError) as e:
            wrong.append(f"{rel}: {m.group(0)!r}: no {m['path']} in docs/data/{m['file']} ({e!r})")
            continue
        if not agrees(m["num"], bool(m["pct"]), value):
            wrong.append(f"{rel}: {m.group(0)!r} but docs/data/{m['file']} {m['path']} = {value}")
    assert not wrong, "\n".join(wrong)


def test_no_page_claims_held_out_captions():
    """The evaluation holds out noise seeds and layouts only: every caption of the world is seen in training."""
    pages = [*PAGES, "docs/index.md", "docs/concepts/training.md", "docs/applications.md",
             *(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb"))]
    bad = [rel for rel in pages if re.search(r"held[- ]out (captions|scenes)", _text(rel), re.I)]
    assert not bad, f"pages still say 'held-out captions/scenes': {bad}"
