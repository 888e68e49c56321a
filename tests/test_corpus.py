"""Corpus views (explainer.corpus) on a small toy-model batch, checked against per-trace computations."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import explainer
from explainer import batch, corpus
from explainer.toy.checker import caption_scores
from explainer.views.tokens import concentration

STEPS = 3
PROMPTS = ["a red circle on the left", "a blue square at the top", "a green triangle and a yellow circle",
           "two circles in a field"]  # the last is outside the toy world's grammar


@pytest.fixture(scope="module")
def toy():
    pipe = explainer.load_pipeline("toy", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def folder(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    rows = [*PROMPTS, ""]  # the empty prompt is recorded as an error and is not part of the corpus
    report = batch.run(toy, rows, out, seeds="0-1", num_inference_steps=STEPS, progress=False)
    assert (report.ok, report.errors) == (8, 2)
    return out


def test_corpus_reads_ok_rows_lazily(folder):
    c = corpus.Corpus(folder)
    assert len(c) == 8 and all(r["status"] == "ok" for r in c.rows())
    red = c.filter(lambda r: "red" in r["prompt"])
    assert len(red) == 2 and len(corpus.Corpus(folder, where=lambda r: r["seed"] == 1)) == 4
    traces = c.traces()
    row, tr = next(traces)  # a generator: one trace at a time
    assert tr.prompt == row["prompt"] and tr.metadata["seed"] == row["seed"]


def test_word_map_is_the_mean_of_each_image_map(folder):
    c = corpus.Corpus(folder)
    wm = corpus.word_map(c, "circle")
    expected = [tr.heatmap("circle") for row, tr in c.traces() if "circle" in row["prompt"].split()]
    assert wm.n == len(expected) == 4 and wm.skipped == 4 and wm.mean.shape == (64, 64)
    np.testing.assert_allclose(wm.mean, np.mean(expected, axis=0), rtol=1e-6, atol=1e-7)
    layer = corpus.word_map(c, "circle", layers="8x8", step=slice(0, 2))
    assert not np.allclose(layer.mean, wm.mean)
    with pytest.raises(ValueError, match="word='hexagon' is in no prompt"):
        corpus.word_map(c, "hexagon")


def test_emergence_matches_the_single_trace_view(folder):
    c = corpus.Corpus(folder)
    em = corpus.emergence(c, "circle")
    assert em.curves.shape == (4, STEPS) and em.commit.shape == (4,) and len(em.keys) == 4
    first = next(tr for row, tr in c.traces() if row["key"] == em.keys[0])
    np.testing.assert_allclose(em.curves[0], concentration(first, "circle"), rtol=1e-6, atol=1e-7)
    assert ((0 <= em.commit) & (em.commit < STEPS)).all()
    maps = corpus.step_maps(first, "circle")
    assert corpus.commit_step(maps, 1.0) == STEPS - 1  # only the last map equals itself exactly...
    assert corpus.commit_step(np.repeat(maps[-1:], STEPS, 0), 0.9) == 0  # ...and constant maps commit at once
    with pytest.raises(ValueError, match="threshold"):
        corpus.emergence(c, "circle", threshold=0)


def test_layer_localisation_uses_the_toy_checker(folder):
    from explainer.toy.evaluate import object_word_regions

    c = corpus.Corpus(folder)
    table = corpus.layer_localisation(c).to_pylist()
    _, tr = next(c.traces())
    assert [r["name"] for r in table] == [la.name for la in tr.attention_layers]
    # recompute layer 0's peak-hit rate by hand over the traces of grammar captions
    hits = checked = 0
    for row, t in c.traces():
        if row["prompt"] == PROMPTS[3]:
            continue
        for word, region in object_word_regions(t, t.prompt, 2).items():
            heat = t.heatmap(word, layers=[0])
            y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
            hits += bool(region[y, x])
            checked += 1
    assert table[0]["n_checked"] == checked > 0 and table[0]["peak_hit"] == pytest.approx(hits / checked)
    assert all(0 <= r["concentration"] <= 1 for r in table)
    plain = corpus.layer_localisation(c.filter(lambda r: r["prompt"] == PROMPTS[3]), words=["circles"]).to_pylist()
    assert all(r["peak_hit"] is None and r["n_checked"] == 0 and r["n"] == 2 for r in plain)


def test_guidance_sweep_gives_fidelity_per_scale(toy, tmp_path):
    table = corpus.guidance_sweep(toy, PROMPTS, tmp_path, [1.0, 7.5], seeds="0", num_inference_steps=STEPS,
                                  progress=False).to_pylist()
    assert [r["guidance_scale"] for r in table] == [1.0, 7.5]
    c = corpus.Corpus(tmp_path)
    for r in table:
        images = [(row, im) for row, im in c.images() if row["guidance_scale"] == r["guidance_scale"]]
        scored = [caption_scores(np.asarray(im), row["prompt"])["all"] for row, im in images if row["prompt"] != PROMPTS[3]]
        assert (r["n"], r["unscored"]) == (3, 1) and r["fidelity"] == pytest.approx(np.mean(scored))
    custom = corpus.fidelity_by_guidance(c, checker=lambda image, prompt: "circle" in prompt.split()).to_pylist()
    assert [r["fidelity"] for r in custom] == [0.5, 0.5]
    with pytest.raises(ValueError, match="guidance_scales"):
        corpus.guidance_sweep(toy, PROMPTS, tmp_path, [])
    with pytest.raises(ValueError, match="set guidance_scale"):
        corpus.guidance_sweep(toy, [{"prompt": "a", "guidance": 2}], tmp_path, [1.0])


def test_fidelity_needs_a_checker_for_other_models(folder, tmp_path):
    c = corpus.Corpus(folder)
    import pyarrow as pa

    c.index = c.index.set_column(c.index.schema.get_field_index("model"), "model",
                                 pa.array(["my-sd15"] * len(c), pa.string()))
    with pytest.raises(ValueError, match="pass checker="):
        corpus.fidelity_by_guidance(c)


def test_contact_sheet_and_figures(folder):
    c = corpus.Corpus(folder)
    sheet = corpus.contact_sheet(c, columns=3)
    assert sheet.size == (3 * 96, 3 * (96 + 12))  # 8 images on 3 rows; 64-px images shown at 96
    first = next(c.images())[1].resize((96, 96), Image.NEAREST)
    assert np.array_equal(np.asarray(sheet)[:96, :96], np.asarray(first))
    assert corpus.contact_sheet(c, columns=4, limit=2, labels=False, cell=64).size == (256, 64)
    with pytest.raises(ValueError, match="columns=0"):
        corpus.contact_sheet(c, columns=0)
    assert corpus.plot_word_map(corpus.word_map(c, "circle")).axes
    assert corpus.plot_emergence(corpus.emergence(c, "circle")).axes
