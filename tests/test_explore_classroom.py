"""The explorer for a classroom, headless: greyed chips for words the toy never saw, the prompt / seed /
scheduler run box, the pipeline overview strip and presentation mode."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

import explainer
from explainer.toy import ToyVocabularyWarning
from explainer.tracing import SCHEDULERS
from explainer.widgets import Explorer, explore
from explainer.widgets.explore import PRESENT_DISPLAY, STAGES, default_pipeline

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def toy_widget():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ToyVocabularyWarning)
        widget = explore("a purple star on the left", num_inference_steps=3, seed=0)
    yield widget
    widget.wait_idle()
    widget.close()


def test_unknown_words_grey_their_chips(toy_widget):
    w = toy_widget
    assert w.error == "" and w.unknown_words == ["purple", "star"]
    known = {g["text"]: g["known"] for g in w.words if g["branch"] == "cond"}
    assert known == {"a": True, "purple": False, "star": False, "on": True, "the": True, "left": True}
    assert w.vocab_note.startswith("the toy model never saw 'purple', 'star'")


def test_known_words_and_other_models_grey_nothing(tr_tiny):
    w = Explorer(tr_tiny)
    assert w.unknown_words == [] and w.vocab_note == ""  # not the toy: nothing recorded, nothing greyed
    assert all(g["known"] for g in w.words) and w.words
    assert not w.can_run  # no pipeline and not a toy trace: the run box is disabled
    w.close()


@pytest.fixture(scope="module")
def tr_tiny(pipe):
    return explainer.trace(pipe, "a cat beside a dog", num_inference_steps=2, scheduler="ddim", progress=False)


def test_run_box_runs_a_new_prompt_seed_and_scheduler(toy_widget):
    w = toy_widget
    assert w.can_run and w.prompt_text == "a purple star on the left" and w.seed_value == 0
    assert [v for v, _ in w.scheduler_options] == ["", *SCHEDULERS]
    first = w.trace
    w.prompt_text, w.seed_value, w.scheduler_name = "a red circle on the left", 5, "euler"
    w.run_request += 1
    assert w.wait_idle(120) and w.error == ""
    tr = w.trace
    assert (tr.prompt, tr.metadata["seed"], tr.metadata["scheduler"]["class"]) == (
        "a red circle on the left", 5, "EulerDiscreteScheduler")
    assert tr.num_steps == first.num_steps and w.unknown_words == [] and w.vocab_note == ""
    assert all(g["known"] for g in w.words)
    runs = w.run_count
    w.guidance = 3.0  # a guidance re-run keeps the chosen scheduler
    assert w.wait_idle(120) and w.trace.metadata["scheduler"]["class"] == "EulerDiscreteScheduler"
    w.prompt_text, w.seed_value, w.scheduler_name = "a red circle on the left", 5, "euler"
    w.guidance = 3.0
    w.run_request += 1  # the same run again: from the cache
    assert w.wait_idle(120) and w.run_count == runs + 1 and w.cache_hits >= 1
    w.scheduler_name = "nope"
    w.run_request += 1
    assert "scheduler='nope' is not allowed" in w.error


def test_run_box_on_a_toy_trace_loads_the_toy(tmp_path):
    pipe = default_pipeline()  # the explorer's own toy, loaded once per process
    tr = explainer.trace(pipe, "a red circle on the left", num_inference_steps=2, progress=False)
    loaded = explainer.load_trace(tr.save(tmp_path / "t.safetensors"))
    w = Explorer(loaded)  # no pipeline given: a toy trace re-runs on the bundled toy
    assert w.can_run
    w.prompt_text = "a blue square at the top"
    w.run_request += 1
    assert w.wait_idle(120) and w.error == "" and w.trace.prompt == "a blue square at the top"
    w.close()


def test_overview_strip_names_the_pipeline_and_real_concept_pages(toy_widget):
    w = toy_widget
    assert [s["key"] for s in w.stages] == ["text", "clip", "unet", "vae"] == [s["key"] for s in STAGES]
    for stage in w.stages:
        assert (DOCS / stage["page"]).is_file(), stage["page"]
        assert stage["line"] and stage["panels"]
    js = (Path(explainer.__file__).parent / "widgets" / "player.js").read_text()
    block = re.search(r"const PANEL_NAMES = \{(.*?)\};", js, re.S).group(1)
    names = set(re.findall(r"(\w+): \"", block))
    assert {k for s in STAGES for k in s["panels"]} <= names  # every panel key has a label in the strip


def test_presentation_mode_traits(toy_widget, tr_tiny):
    w = toy_widget
    assert w.presentation is False and min(w.present_size) >= PRESENT_DISPLAY >= 512
    assert w.present_size[0] / w.display_size[0] == w.present_size[1] / w.display_size[1]  # same aspect
    on = Explorer(tr_tiny, presentation=True, docs_url="http://127.0.0.1:8000/")
    assert on.presentation and on.docs_url == "http://127.0.0.1:8000/" and min(on.present_size) >= 512
    on.close()
    with pytest.raises(TypeError, match="presentation must be True or False"):
        Explorer(tr_tiny, presentation="yes")
    assert explore(tr_tiny, presentation=1).error.startswith("TypeError: presentation must be True or False")
    assert explore(tr_tiny, docs_url=3).error.startswith("TypeError: docs_url must be a string")
    assert explore(tr_tiny, presentation=True).presentation
