"""The classroom material: notebooks read as lessons (checks folded away), the teacher's kit is complete,
and the docs' interactive figures are included from what the package made."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHECK_TAG = "remove-cell"


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _mkdocs() -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)  # !!python/name tags and the like
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_check_cells_hold_only_checks_and_are_folded(path: Path) -> None:
    checks = [c for c in _cells(path) if CHECK_TAG in c.get("metadata", {}).get("tags", [])]
    for cell in checks:
        assert cell["cell_type"] == "code"
        assert cell["metadata"].get("jupyter", {}).get("source_hidden") is True, f"{path.name}: a check cell is not folded"
        body = ast.parse(_source(cell)).body
        # asserts, and the values they test: nothing that shows output (the docs drop these cells)
        assert body and isinstance(body[-1], ast.Assert), f"{path.name}: a check cell should end in asserts"
        assert all(isinstance(node, (ast.Assert, ast.Assign, ast.Import, ast.ImportFrom)) for node in body), (
            f"{path.name}: a check cell holds more than checks, and the docs drop it:\n{_source(cell)}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_fold_their_checks(path: Path) -> None:
    """Every notebook is a lesson: its story cells hold no assert (not even inside a loop or a with
    block); every check is in a folded cell."""
    for cell in _cells(path):
        tagged = CHECK_TAG in cell.get("metadata", {}).get("tags", [])
        if cell["cell_type"] == "code" and not tagged:
            lines = [line for line in _source(cell).splitlines() if line.lstrip().startswith("assert ")]
            assert not lines, f"{path.name} shows a check to students: {lines[0]}"
    assert any(CHECK_TAG in c.get("metadata", {}).get("tags", []) for c in _cells(path)), path.name


def test_the_docs_drop_check_cells() -> None:
    jupyter = next(p["mkdocs-jupyter"] for p in _mkdocs()["plugins"] if isinstance(p, dict) and "mkdocs-jupyter" in p)
    assert CHECK_TAG in jupyter["remove_tag_config"]["remove_cell_tags"]


def test_quickstart_opens_with_the_pipeline() -> None:
    cells = _cells(ROOT / "notebooks" / "00_quickstart.ipynb")
    intro = _source(cells[0])
    assert cells[0]["cell_type"] == "markdown"
    order = [intro.find(part) for part in ("tokenizer", "text encoder", "UNet", "scheduler", "VAE decoder")]
    assert -1 not in order and order == sorted(order), "00 should open with text → CLIP → UNet + scheduler → VAE"


def test_teachers_kit_is_in_the_nav_with_one_exercise_per_notebook() -> None:
    nav = json.dumps(_mkdocs()["nav"])
    pages = ["index", "questions", "exercises", "glossary", "cheat_sheet"]
    for page in pages:
        assert f"teaching/{page}.md" in nav and (ROOT / "docs" / "teaching" / f"{page}.md").is_file()
    exercises = (ROOT / "docs" / "teaching" / "exercises.md").read_text()
    for path in NOTEBOOKS:
        section = re.search(rf"^## {path.stem[:2]} .*?(?=^## )", exercises, re.M | re.S)
        assert section, f"no exercise for {path.name}"
        heading = re.sub(r"[-_]", " ", section.group(0).splitlines()[0][6:].lower())
        assert heading == path.stem[3:].replace("_", " "), f"the {path.stem[:2]} exercise is headed {heading!r}, not for {path.name}"
        assert re.search(r'^\?\?\? \w+ "Solution"$', section.group(0), re.M), f"the {path.stem[:2]} solution is not folded"
    assert "## Break the toy" in exercises
    glossary = (ROOT / "docs" / "teaching" / "glossary.md").read_text()
    for symbol in (r"$x_t$", r"$\hat x_0$", r"$\varepsilon$", "$v$", r"$\bar\alpha_t$", r"$\beta_t$", r"$\sigma_t$", "SNR", "$g$"):
        assert symbol in glossary, symbol


#: Where each part is taught: the notebook that opens its live explorer.
EXPLORERS = {"01": "explore_text_encoder", "02": "explore_vae", "03": "explore_noising", "04": "explore_training",
             "05": "explore(", "06": "explore_unet", "07": "explore(", "08": "explore(", "10": "explore_editing"}


def test_each_part_opens_its_explorer_where_it_is_taught() -> None:
    by_number = {p.stem[:2]: p for p in NOTEBOOKS}
    for number, call in EXPLORERS.items():
        sources = [_source(c) for c in _cells(by_number[number]) if c["cell_type"] == "code"
                   and CHECK_TAG not in c.get("metadata", {}).get("tags", [])]  # fmt: skip
        assert any(f"explainer.{call}" in s for s in sources), f"{by_number[number].name} does not open explainer.{call}"


def test_lesson_plan_maps_every_lesson_notebook_and_explorer() -> None:
    plan = (ROOT / "docs" / "teaching" / "index.md").read_text()
    table = plan[plan.index("## A 90-minute lesson plan"):plan.index("## What the toy model")]
    rows = [r for r in table.splitlines() if re.match(r"^\| \d+–\d+ \|", r)]
    shown = [re.findall(r"Notebook (\d\d)", r) for r in rows]
    numbers = [n for found in shown for n in found]
    assert numbers == sorted(numbers), "the plan's segments should follow the notebooks' order"
    lesson = sorted(p.stem[:2] for p in NOTEBOOKS if p.stem[:2] <= "08")
    assert sorted(set(numbers)) == lesson, f"the plan shows notebooks {sorted(set(numbers))}, the lesson is {lesson}"
    for call in set(EXPLORERS.values()) - {"explore_editing"}:
        assert f"explainer.{call}" in table, f"the plan never drives explainer.{call}"
    times = [tuple(map(int, re.match(r"^\| (\d+)–(\d+)", r).groups())) for r in rows]
    assert times[0][0] == 0 and times[-1][1] == 90 and all(a[1] == b[0] for a, b in zip(times, times[1:]))


def _hooks():
    spec = importlib.util.spec_from_file_location("sd_explainer_docs_hooks_t", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interactive_figures_are_inlined_and_missing_ones_fail(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    from mkdocs.exceptions import PluginError

    hooks = _hooks()
    (tmp_path / "demo.html").write_text('<div class="sdx-plotly">x</div>')
    page = "Text\n\n<!--plotly demo-->\n\nMore"
    assert '<div class="sdx-plotly">x</div>' in hooks.include_interactive(page, tmp_path)
    assert "inline <!--plotly demo--> stays" in hooks.include_interactive("inline <!--plotly demo--> stays", tmp_path)
    with pytest.raises(PluginError, match="missing"):
        hooks.include_interactive("<!--plotly missing-->", tmp_path)
    # every page's marker names a figure that docs/gen_figures.py makes
    spec = importlib.util.spec_from_file_location("sd_explainer_docs_figures_t", ROOT / "docs" / "gen_figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    used = {m for p in (ROOT / "docs").rglob("*.md") for m in re.findall(r"^<!--plotly ([\w-]+)-->$", p.read_text(), re.M)}
    assert used and used <= set(figures.INTERACTIVE)


def test_plotly_outputs_get_offline_html() -> None:
    nbformat = pytest.importorskip("nbformat")
    import plotly.graph_objects as go

    hooks = _hooks()
    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 0], name="line"))
    cell = nbformat.v4.new_code_cell("fig")
    cell.outputs = [nbformat.v4.new_output("display_data", data={hooks.PLOTLY_MIME: json.loads(fig.to_json()),
                                                                 "text/plain": "Figure"})]  # fmt: skip
    nb = nbformat.v4.new_notebook(cells=[cell])
    hooks._plotly_outputs(nb)
    html = nb.cells[0].outputs[0]["data"]["text/html"]
    assert "Plotly.newPlot" in html and '"line"' in html and "cdn" not in html.lower()
