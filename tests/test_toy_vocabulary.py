"""The toy model says what it understands: its vocabulary comes from the shapes world, and tracing the
toy with words it never saw records them and warns once; a caption of the world never warns."""

from __future__ import annotations

import warnings

import pytest

import explainer
from explainer.toy import ToyVocabularyWarning, is_toy, unknown_words, vocabulary
from explainer.toy import world
from explainer.toy.known_words import check_prompt, words_of

#: The three prompts the classroom review tried (explainer issue 14), with the words the toy never saw.
REVIEW_CASES = {
    "a purple star on the left": ["purple", "star"],
    "a cat": ["cat"],
    "a blue square to the right of a red circle": ["to", "of"],
}


@pytest.fixture(scope="module")
def toy():
    from explainer.widgets.explore import default_pipeline

    return default_pipeline()  # the bundled toy, loaded once per process


def test_vocabulary_is_the_worlds_words():
    vocab = vocabulary()
    assert vocab["colours"] == list(world.COLOURS) and vocab["shapes"] == list(world.SHAPES)
    assert vocab["places"] == list(world.PLACES)
    assert vocab["relations"] == ["and", "above"]
    caption_words = {w for c in world.all_captions() for w in c.split()}
    assert set(vocab["words"]) == caption_words and vocab["words"] == sorted(caption_words)
    named = set(vocab["colours"]) | set(vocab["shapes"]) | set(vocab["relations"])
    places = {w for p in vocab["places"] for w in p.split()}
    assert set(vocab["fillers"]) == caption_words - named - places and "a" in vocab["fillers"]


def test_unknown_words_in_order_once_each_and_case_insensitive():
    for prompt, unknown in REVIEW_CASES.items():
        assert unknown_words(prompt) == unknown
    assert unknown_words("A Purple, purple STAR!") == ["purple", "star"]
    assert unknown_words("") == [] and words_of("a red-circle") == ["a", "red", "circle"]


def test_toy_detection(toy, pipe, tmp_path):
    assert is_toy(toy)
    assert not is_toy(pipe)  # tiny random pipeline built from configs: no folder
    assert not is_toy("toy") and not is_toy(None)
    (tmp_path / "training.json").write_text("{not json")

    class Folder:
        name_or_path = str(tmp_path)

    assert not is_toy(Folder())  # a broken record is not the toy's
    (tmp_path / "training.json").write_text('{"train_config": {}}')
    assert is_toy(Folder())


def test_no_caption_of_the_world_is_flagged(toy):
    captions = world.all_captions()
    assert len(captions) == len(set(captions)) > 100
    for caption in captions:  # the check trace() runs on the toy, over every caption of the grammar
        assert check_prompt(toy, caption) == {"prompt": [], "negative_prompt": []}, caption
        assert check_prompt(toy, caption.upper()) == {"prompt": [], "negative_prompt": []}


def _trace(pipe, prompt, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr = explainer.trace(pipe, prompt, num_inference_steps=2, progress=False, **kwargs)
    return tr, [w for w in caught if issubclass(w.category, ToyVocabularyWarning)]


@pytest.mark.parametrize("prompt", list(REVIEW_CASES))
def test_unknown_words_warn_once_and_are_recorded(toy, prompt):
    tr, caught = _trace(toy, prompt)
    assert tr.metadata["unknown_words"] == {"prompt": REVIEW_CASES[prompt], "negative_prompt": []}
    assert len(caught) == 1
    message = str(caught[0].message)
    assert all(repr(w) in message for w in REVIEW_CASES[prompt]) and "explainer.toy.vocabulary()" in message
    assert caught[0].filename == __file__  # points at the caller's trace() line


def test_in_vocabulary_traces_do_not_warn_and_record_no_words(toy, tmp_path):
    for caption in (world.all_captions()[0], world.all_captions()[-1], "A Red Circle on the left"):
        tr, caught = _trace(toy, caption)
        assert caught == [] and tr.metadata["unknown_words"] == {"prompt": [], "negative_prompt": []}
    tr, caught = _trace(toy, "a red circle on the left", negative_prompt="blurry")
    assert len(caught) == 1 and "'blurry' (in the negative prompt)" in str(caught[0].message)
    assert tr.metadata["unknown_words"] == {"prompt": [], "negative_prompt": ["blurry"]}
    loaded = explainer.load_trace(tr.save(tmp_path / "t.safetensors"))
    assert loaded.metadata["unknown_words"] == tr.metadata["unknown_words"]


def test_other_models_are_not_checked(pipe):
    tr, caught = _trace(pipe, "a cat")
    assert caught == [] and "unknown_words" not in tr.metadata


def test_model_card_section_and_data_are_the_scripts_output():
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("toy_vocabulary_script", root / "scripts" / "toy_vocabulary.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    d = script.data()
    assert json.loads((root / "docs" / "data" / "toy_vocabulary.json").read_text()) == d
    assert d["tried"] == REVIEW_CASES
    card = (root / "docs" / "toy_model.md").read_text()
    assert script.section(d) in card, "docs/toy_model.md is stale: python scripts/toy_vocabulary.py --markdown"


def test_docstring_example_runs():
    import doctest

    import explainer.toy.known_words as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
