"""The HTML export as a handout: notes by step and questions, from Python and from the CLI."""

from __future__ import annotations

import json
import re

import pytest

import explainer
from explainer.cli import main
from explainer.export.html import build_html, note_at

STEPS = 4


@pytest.fixture(scope="module")
def tr(pipe):
    return explainer.trace(pipe, "a red circle", num_inference_steps=STEPS, scheduler="ddim", progress=False)


def _data(page: str) -> dict:
    block = re.search(r'<script type="application/json" id="trace-data">(.*?)</script>', page, re.S).group(1)
    return json.loads(block)


def test_notes_and_questions_go_into_the_page(tr):
    page, _ = build_html(tr, notes={0: "noise </script> <b>", -1: "done"}, questions=["Why?", "What next?"])
    data = _data(page)
    assert data["notes"] == [[1, "noise </script> <b>"], [STEPS, "done"]]  # 1-based, as the page shows steps
    assert [s["note"] for s in data["steps"]] == ["noise </script> <b>"] * (STEPS - 1) + ["done"]
    assert data["questions"] == ["Why?", "What next?"]
    assert "noise \\u003c/script> \\u003cb>" in page and "noise </script>" not in page  # escaped in the JSON
    plain = _data(build_html(tr)[0])
    assert plain["notes"] == [] and plain["questions"] == [] and {s["note"] for s in plain["steps"]} == {""}
    every = _data(build_html(tr, every=2, notes={1: "one"})[0])  # steps 0, 2, 3 shown: step 2 keeps note 1
    assert [s["note"] for s in every["steps"]] == ["", "one", "one"]


def test_note_at_takes_the_latest_earlier_note():
    notes = {2: "b", 0: "a"}
    assert [note_at(notes, s) for s in range(4)] == ["a", "a", "b", "b"] and note_at({3: "x"}, 1) == ""


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"notes": ["x"]}, TypeError, "notes must be a dict"),
        ({"notes": {"0": "x"}}, TypeError, "notes keys must be step indices"),
        ({"notes": {STEPS: "x"}}, ValueError, f"notes has step {STEPS}; this trace has steps 0..{STEPS - 1}"),
        ({"notes": {0: 3}}, TypeError, r"notes\[0\] must be text"),
        ({"questions": "Why?"}, TypeError, "questions must be a list of strings"),
        ({"questions": ["ok", 3]}, TypeError, "questions must hold strings"),
    ],
)
def test_bad_notes_and_questions(tr, kwargs, error, match):
    with pytest.raises(error, match=match):
        build_html(tr, **kwargs)


def test_cli_export_notes_and_questions(tr, tmp_path, capsys):
    saved = tr.save(tmp_path / "t.safetensors")
    out = tmp_path / "h.html"
    assert main(["export", str(saved), str(out), "--note", "0=pure noise", "--note=-1=done",
                 "--question", "Why?", "--question", "What next?", "--quiet"]) in (0, None)  # fmt: skip
    data = _data(out.read_text())
    assert data["notes"] == [[1, "pure noise"], [STEPS, "done"]] and data["questions"] == ["Why?", "What next?"]
    for argv, expected in (
        (["--note", "x"], "must be STEP=TEXT"),
        (["--note", f"{STEPS}=x"], f"notes has step {STEPS}"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", str(saved), str(out), *argv, "--quiet"])
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(SystemExit):
        main(["export", str(saved), str(tmp_path / "a.gif"), "--question", "Why?", "--quiet"])
    assert "--question does not apply to .gif export" in capsys.readouterr().err
