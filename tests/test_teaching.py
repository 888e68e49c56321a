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


# ------------------------------------------------------------------ technical errors (issue 14's review)
#: Number words the concept index may use for its counts.
NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
#: σ's definition, in the spellings the pages use (LaTeX or Unicode, spaces and minus signs ignored).
SIGMA_DEFINED = re.compile(r"\\sqrt\{\(1-\\bar\\alpha_t\)/\\bar\\alpha_t\}|√\(\(1-ᾱ(_t)?\)/ᾱ(_t)?\)")


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])[*_]*\s+", re.sub(r"\s+", " ", text)) if s]  # markdown emphasis may close a sentence


def _review_errors(text: str) -> list[str]:
    """The technical errors the classroom review found (explainer issue 14), wherever they come back in ``text``."""
    found = []
    for s in _sentences(text):
        if re.search(r"\b(teach|train)\w*\b.*\btext encoder\b.*\bUNet\b", s) and not re.search(r"toy|frozen|pretrained", s):
            found.append(f"training the text encoder with the UNet (CLIP is pretrained and frozen in SD): {s}")
        if "average picture" in s and "conditional" not in s and not s.endswith("?"):
            found.append(f"only the conditional x̂0 is the average picture; guidance extrapolates past it: {s}")
        if re.search(r"(x̂0|x̂₀|\\hat x_0)[^.]*\b(derived )?from the conditional (output|prediction|ε|v)", s):
            found.append(f"the guided x̂0 comes from the guided output, not the conditional one: {s}")
        if re.search(r"ε_cond|ε_uncond|eps_cond\s*[−-]\s*eps_uncond", s):
            found.append(f"a label naming ε where the output may be v (use explainer.views.output_symbol): {s}")
        if "little structure" in s:
            found.append(f"an unseen word's map is sharp: the causal encoder carries the words before it: {s}")
        if re.search(r"β|\\beta", s) and re.search(r"\bsmall\b", s) and not re.search(r"terminal|= 1\b|exactly 1|1 at", s):
            found.append(f"β is not always small: β = 1 at t = 999 under zero terminal SNR: {s}")
    return found


def _lesson_texts() -> dict[str, str]:
    """Every docs page (not the generated ones), docs/gen_figures.py, and each notebook's cells."""
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "docs").rglob("*.md") if "generated" not in p.parts}
    texts["docs/gen_figures.py"] = (ROOT / "docs" / "gen_figures.py").read_text()
    for path in NOTEBOOKS:
        texts[str(path.relative_to(ROOT))] = "\n\n".join(_source(c) for c in _cells(path))
    return texts


def test_the_reviews_technical_errors_do_not_come_back() -> None:
    found = {name: errors for name, text in _lesson_texts().items() if (errors := _review_errors(text))}
    assert not found, json.dumps(found, indent=1, ensure_ascii=False)


@pytest.mark.parametrize(
    "wrong",
    [
        "Training teaches the text encoder and UNet to predict the noise.",
        "The guided x̂0 at step 0 is the model's average picture.",
        "The x̂0 derived from the conditional output (decoded).",
        "Rows show |ε_cond − ε_uncond| per step.",
        "An unseen word should give little structure.",
        "The schedule is a list of β_t, each small.",
    ],
)
def test_the_review_check_catches_each_error(wrong: str) -> None:
    assert len(_review_errors(wrong)) == 1


def test_sigma_is_defined_where_it_is_first_used() -> None:
    def defines(text: str) -> bool:
        return bool(SIGMA_DEFINED.search(re.sub(r"\s+", "", text).replace("−", "-")))

    for page in ("concepts/diffusion.md", "teaching/glossary.md", "teaching/cheat_sheet.md"):
        assert defines((ROOT / "docs" / page).read_text()), f"docs/{page} does not define σ = √((1−ᾱ)/ᾱ)"
    first = next(p for p in NOTEBOOKS if re.search(r"σ|\\sigma", "".join(_source(c) for c in _cells(p) if c["cell_type"] == "markdown")))
    assert defines("".join(_source(c) for c in _cells(first))), f"{first.name} uses σ first and does not define it"
    assert not defines("σ = the noise level") and defines(r"$\sigma_t = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$")


def test_the_concept_index_counts_what_it_lists() -> None:
    text = (ROOT / "docs" / "concepts" / "index.md").read_text()
    items = re.findall(r"^\d+\. ", text, re.M)
    pages = re.search(r"\b(\w+) pages\b", text)
    assert pages and NUMBERS[pages.group(1).lower()] == len(items), f"'{pages.group(0)}' but {len(items)} listed"
    networks = re.search(r"\b(\w+) learned (?:networks|parts) \(([^)]*)\)", text)
    assert networks and NUMBERS[networks.group(1).lower()] == len(networks.group(2).split(","))
