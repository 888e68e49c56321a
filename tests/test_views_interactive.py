"""Plotly figures (explainer.views.interactive) and labels that name the model's real output."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import explainer
from explainer import views


@pytest.fixture(scope="module")
def eps_trace(pipe):
    return explainer.trace(pipe, "a red cube beside a blue sphere", num_inference_steps=4, guidance_scale=5.0,
                           seed=0, progress=False)


@pytest.fixture(scope="module")
def v_trace(vpipe):
    return explainer.trace(vpipe, "a red cube beside a blue sphere", num_inference_steps=4, guidance_scale=5.0,
                           seed=0, progress=False)


def test_labels_name_the_model_output(eps_trace, v_trace):
    assert eps_trace.metadata["prediction_type"] == "epsilon" and v_trace.metadata["prediction_type"] == "v_prediction"
    assert views.output_symbol(eps_trace) == "ε" and views.output_symbol(v_trace) == "v"
    for tr, sym, other in ((eps_trace, "ε", "v"), (v_trace, "v", "ε")):
        titles = [ax.get_title() for ax in views.guidance_decomposition(tr, 0).axes]
        assert f"|{sym}_cond − {sym}_uncond|" in titles
        assert not any(f"{other}_cond" in t for t in titles)


def test_label_of_an_older_trace_without_prediction_type(v_trace):
    old = copy.copy(v_trace)
    old.metadata = {k: v for k, v in v_trace.metadata.items() if k != "prediction_type"}
    assert "velocity" in old.metadata["model_output"]
    assert views.output_symbol(old) == "v"
    old.metadata = {}
    assert views.output_symbol(old) == "output"


def test_noise_levels_define_sigma_and_snr():
    abar = np.array([1.0, 0.5, 0.2, 0.0])
    lv = views.noise_levels(abar)
    assert np.allclose(lv["sigma"][1:3], np.sqrt((1 - abar[1:3]) / abar[1:3]))
    assert np.allclose(lv["snr"][1:3], abar[1:3] / (1 - abar[1:3]))
    assert lv["sigma"][0] == 0 and np.isinf(lv["sigma"][3]) and np.isinf(lv["snr"][0]) and lv["snr"][3] == 0
    with pytest.raises(ValueError, match="alphas_cumprod"):
        views.noise_levels(np.array([1.5]))


def test_schedule_figure_hovers_t_alpha_sigma_snr(eps_trace, pipe):
    tr = eps_trace
    full = pipe.scheduler.alphas_cumprod.numpy()
    fig = views.schedule_figure(tr, 2, train_alphas_cumprod=full)
    names = [d.name for d in fig.data]
    assert names == ["ᾱ (training)", "SNR (training)", "ᾱ at the run's steps", "SNR at the run's steps"]
    assert len(fig.data[0].x) == len(full)
    run = fig.data[2]
    assert np.allclose(run.x, tr.timesteps) and np.allclose(run.y, tr.alphas_cumprod)
    for key in ("t =", "ᾱ =", "σ =", "SNR =", "step"):
        assert key in run.hovertemplate
    sigma = np.sqrt((1 - tr.alphas_cumprod.astype(np.float64)) / tr.alphas_cumprod)
    assert [float(v) for v in np.asarray(run.customdata)[:, 1]] == pytest.approx(sigma, rel=6e-3)  # 3 significant digits
    assert fig.layout.shapes[0].x0 == pytest.approx(float(tr.timesteps[2]))
    assert fig.layout.yaxis2.type == "log"
    assert len(views.schedule_figure(tr).data) == 2 and not views.schedule_figure(tr).layout.shapes
    with pytest.raises(explainer.StepIndexError):
        views.schedule_figure(tr, 9)


def test_trajectory_figure_one_path_per_seed(pipe):
    runs = [explainer.trace(pipe, "a red cube", num_inference_steps=3, seed=s, record="none", progress=False)
            for s in (0, 1)]
    fig = views.trajectory_figure(runs, 1, labels=["seed 0", "seed 1"])
    assert [d.name for d in fig.data] == ["seed 0", "seed 1", "step 1"]
    xy = views.project_latents(runs)
    for d, path in zip(fig.data[:2], xy):
        assert np.allclose(d.x, path[:, 0]) and np.allclose(d.y, path[:, 1])
        assert "latent %{customdata[0]}" in d.hovertemplate and len(d.customdata) == runs[0].num_steps + 1
    assert np.allclose(fig.data[2].x, [xy[0][1, 0], xy[1][1, 0]])
    with pytest.raises(ValueError, match="labels"):
        views.trajectory_figure(runs, labels=["one"])


def test_emergence_figure_matches_concentration(eps_trace):
    fig = views.emergence_figure(eps_trace, ["red", "cube"])
    assert [d.name for d in fig.data] == ['"red"', '"cube"']
    assert np.allclose(fig.data[0].y, views.concentration(eps_trace, "red"))
    assert "concentration" in fig.data[0].hovertemplate
    with pytest.raises(ValueError, match="words"):
        views.emergence_figure(eps_trace, [])


def test_guidance_sweep_figure_slider_and_line(eps_trace, pipe):
    scales = (0.0, 1.0, 3.0, 7.5)
    fig = views.guidance_sweep_figure(eps_trace, 1, scales)
    images = [d for d in fig.data if d.type == "image"]
    assert [d.name for d in images] == ["g 0", "g 1", "g 3", "g 7.5"]
    assert [bool(d.visible) for d in images] == [True, False, False, False]
    assert all(d.source.startswith("data:image/png;base64,") for d in images)
    slider = fig.layout.sliders[0]
    assert [s.label for s in slider.steps] == ["0", "1", "3", "7.5"]
    assert slider.steps[2].args[0]["visible"] == [False, False, True, False, True]
    line = fig.data[-1]
    assert line.name == "distance from g = 1" and list(line.x) == list(scales)
    # guidance moves along one line: the distance from the conditional x̂0 grows with |g − 1|
    d = np.asarray(line.y)
    assert d[1] == pytest.approx(0, abs=1e-6) and d[3] / d[2] == pytest.approx(6.5 / 2.0, rel=1e-3)
    with pytest.raises(ValueError, match="scales"):
        views.guidance_sweep_figure(eps_trace, 1, ())
    unguided = explainer.trace(pipe, "a red cube", num_inference_steps=2, guidance_scale=1.0, progress=False)
    with pytest.raises(ValueError, match="guidance"):
        views.guidance_sweep_figure(unguided)


def test_token_similarity_figure(pipe):
    tok, enc = pipe.tokenizer, pipe.text_encoder
    words = ["red", "blue", "cube"]
    ids = [tok(w).input_ids[1] for w in words]
    table = enc.get_input_embeddings().weight.detach().numpy()[ids]
    fig = views.token_similarity_figure(table, words, title="input embeddings")
    z = np.asarray(fig.data[0].z)
    assert z.shape == (3, 3) and np.allclose(np.diag(z), 1) and np.allclose(z, z.T)
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    assert z[0, 1] == pytest.approx(float(unit[0] @ unit[1]), abs=1e-5)
    assert list(fig.data[0].x) == words and "cosine" in fig.data[0].hovertemplate
    with pytest.raises(ValueError, match="labels"):
        views.token_similarity_figure(table, words[:2])
    with pytest.raises(ValueError, match="embeddings"):
        views.token_similarity_figure(table[0], words)


def test_figure_html_needs_no_cdn(eps_trace):
    html = views.figure_html(views.emergence_figure(eps_trace, "red"), div_id="emergence")
    assert 'id="emergence"' in html and "Plotly.newPlot" in html
    assert "cdn" not in html.lower() and "<html" not in html
