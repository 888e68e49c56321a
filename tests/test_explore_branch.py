"""The explorer's "branch here", headless: a fork or a prompt-to-prompt edit of the shown run appears as a
linked branch pane, the fork step marked on both; without a pipeline the control is greyed with the reason."""

from __future__ import annotations

import numpy as np
import pytest

import explainer
from explainer.widgets import Explorer, compare
from explainer.widgets.branching import lineage, parse_weights

STEPS = 5
PROMPT = "a red cube beside a blue sphere"
NEW = "a green cube beside a blue sphere"


@pytest.fixture(scope="module")
def tr(pipe):
    return explainer.trace(pipe, PROMPT, num_inference_steps=STEPS, scheduler="ddim", guidance_scale=5.0, seed=0,
                           progress=False)  # fmt: skip


@pytest.fixture()
def w(tr, pipe):
    widget = Explorer(tr, pipe=pipe)
    yield widget
    widget.wait_idle()
    widget.close_branch()
    widget.close()


def test_fork_here_shows_a_linked_branch_pane_with_the_fork_marked(w, tr):
    assert w.can_branch and w.branch_hint == "" and w.branch is None
    assert (w.branch_prompt, w.branch_guidance, w.branch_seed) == (PROMPT, 5.0, -1)
    schedule = w.schedule_png
    w.step = 2
    child = w.branch_here(prompt=NEW)
    pane = w.branch
    assert isinstance(pane, Explorer) and pane.trace is child and pane.compact
    assert child.metadata["fork"]["parent_uid"] == tr.uid and child.metadata["fork"]["step"] == 2
    assert np.array_equal(child.latents[:3], tr.latents[:3]) and not np.array_equal(child.x0[2], tr.x0[2])
    # steps linked both ways, as in compare()
    assert pane.step == 2
    w.step = 4
    assert pane.step == 4
    pane.step = 1
    assert w.step == 1
    # the shared prefix has the parent's frames; the fork step is marked on both explorers
    assert pane.frames["xt"][:3] == w.frames["xt"][:3] and pane.frames["x0"][2] != w.frames["x0"][2]
    for side in (w, pane):
        assert (side.mark_kind, side.mark_step) == ("fork", 2)
        assert side.mark_label == "fork at step 3/5: steps 1\u20132 are the parent's"
    assert w.schedule_png != schedule


def test_the_control_runs_the_fork_once_then_hits_the_cache(w):
    w.step = 3
    w.branch_prompt, w.branch_guidance, w.branch_seed = NEW, 7.0, -1
    w.branch_request += 1
    assert w.wait_idle(120)
    assert w.error == "" and w.branch is not None
    first = w.branch.trace
    fork = first.metadata["fork"]
    assert fork["step"] == 3 and fork["changed"] == {"prompt": NEW, "guidance_scale": 7.0}
    assert len(w.branches) == 1
    w.branch_request += 1
    assert w.wait_idle(120)
    assert len(w.branches) == 1 and w.branch.trace is first  # the same branch again: no new run


@pytest.mark.parametrize(("mode", "target", "weights"), [("replace", NEW, ""), ("reweight", PROMPT, "red=3")])
def test_prompt_to_prompt_from_the_control(w, tr, mode, target, weights):
    w.branch_mode, w.branch_prompt, w.branch_weights = mode, target, weights
    w.branch_request += 1
    assert w.wait_idle(120)
    assert w.error == "" and w.branch is not None
    res = w.edit_result
    assert res.mode == mode and res.target is w.branch.trace and res.source.prompt == PROMPT
    assert np.array_equal(res.source.latents, tr.latents)  # the source re-run is the shown run
    until = res.settings["cross_until_step"]
    assert (w.mark_kind, w.mark_step) == ("edit", until) and w.branch.mark_kind == "edit"
    assert w.branch.mark_label.startswith(f"prompt-to-prompt {mode}: the source's cross-attention in steps 1\u2013{until}")
    if mode == "reweight":
        assert res.settings["weights"] == {"red": 3.0}


def test_without_a_pipeline_the_control_is_greyed_and_says_how(tr):
    w = Explorer(tr)  # a tiny test model, not the bundled toy: no pipeline to re-run
    assert not w.can_branch
    assert "explainer.explore(trace, pipe=" in w.branch_hint
    with pytest.raises(ValueError, match="cannot branch: branching runs the model again"):
        w.branch_here(prompt=NEW)
    w.branch_request += 1  # a click in a greyed control that got through: a message, not an exception
    assert w.wait_idle()
    assert "cannot branch" in w.error and w.branch is None


def test_bad_settings_are_messages(w):
    w.branch_mode, w.branch_weights = "reweight", "red"
    w.branch_request += 1
    assert w.wait_idle()
    assert "WORD=FACTOR" in w.error and w.branch is None
    with pytest.raises(ValueError, match="mode='sideways' is not allowed"):
        w.branch_here(mode="sideways")
    with pytest.raises(ValueError, match="step=9 is out of range"):
        w.branch_here(step=9, prompt=NEW)


def test_a_new_trace_closes_the_branch(w, pipe):
    w.branch_here(step=1, prompt=NEW)
    pane = w.branch
    other = explainer.trace(pipe, "a blue cone", num_inference_steps=STEPS, scheduler="ddim", progress=False)
    w.set_trace(other)
    assert w.branch is None and w.mark_kind == "" and pane.comm is None  # the pane's widget is closed


def test_compare_marks_a_fork_on_both_sides(tr, pipe):
    child = tr.fork(2, prompt=NEW, pipe=pipe, progress=False)
    left, right = compare(tr, child).explorers
    assert (left.mark_kind, left.mark_step, right.mark_kind, right.mark_step) == ("fork", 2, "fork", 2)
    assert lineage(None, tr)["kind"] == ""


def test_parse_weights():
    assert parse_weights("red=2, blue=0.5;cube=0") == {"red": 2.0, "blue": 0.5, "cube": 0.0}
    assert parse_weights("  ") == {}
    for bad in ("red", "=2", "red=-1", "red=x"):
        with pytest.raises(ValueError, match="WORD=FACTOR"):
            parse_weights(bad)
