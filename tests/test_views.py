"""Figure functions: each returns a matplotlib figure drawn from the trace, with clear errors."""

from __future__ import annotations

import numpy as np
import pytest

import explainer
from explainer import views


@pytest.fixture(scope="module")
def tr(pipe):
    return explainer.trace(pipe, "a red cube beside a blue sphere", num_inference_steps=4, scheduler="ddim", progress=False)


def test_schedule_marks_the_step(tr):
    fig = views.schedule_plot(tr, 2)
    ax = fig.axes[0]
    assert np.allclose(ax.lines[0].get_ydata(), tr.sigmas)
    assert list(ax.lines[-1].get_xdata()) == [2, 2]
    with pytest.raises(explainer.StepIndexError):
        views.schedule_plot(tr, 9)


def test_token_overlay_and_emergence(tr):
    fig = views.token_overlay(tr, ["red", "cube"], step=slice(0, 2))
    shown = fig.axes[0].images[0].get_array()
    assert shown.shape == (tr.height, tr.width, 3)
    conc = views.concentration(tr, "red")
    assert conc.shape == (4,) and np.all((conc >= 0) & (conc <= 1))
    fig = views.emergence_curve(tr, ["red", 3], step=1)
    assert len(fig.axes[0].lines) == 3 and np.allclose(fig.axes[0].lines[0].get_ydata(), conc)
    with pytest.raises(ValueError, match="not a word"):
        views.token_overlay(tr, "dog")


def test_emergence_of_prompt_and_negative_tokens(pipe):
    tr = explainer.trace(pipe, "a red cube", negative_prompt="blurry", num_inference_steps=3, progress=False)
    fig = views.emergence_curve(tr, "red", negative_tokens="blurry", step=0)
    prompt_line, negative_line = fig.axes[0].lines[:2]
    assert (prompt_line.get_label(), negative_line.get_label()) == ("red (prompt)", "blurry (negative)")
    assert negative_line.get_linestyle() == "--"
    assert np.allclose(negative_line.get_ydata(), views.concentration(tr, "blurry", branch="uncond"))


def test_guidance_views(tr, pipe):
    fig = views.guidance_decomposition(tr, 1)
    assert len(fig.axes[0].images) == 1 and len(fig.axes) == 5  # 4 panels + colour bar
    fig = views.guidance_sweep(tr, scales=(1, 7.5))
    assert [ax.get_title() for ax in fig.axes] == ["g 1", "g 7.5"]
    vae = views.guidance_sweep(tr, 2, scales=(1,), method="vae", pipe=pipe)
    shown = np.asarray(vae.axes[0].images[0].get_array())
    assert np.array_equal(shown, np.asarray(tr.what_if(2, 1.0, method="vae", pipe=pipe)))
    fig = views.guidance_decomposition(tr, 1, method="vae", pipe=pipe)
    assert np.array_equal(np.asarray(fig.axes[2].images[0].get_array()), np.asarray(tr.preview(1, method="vae", pipe=pipe)))
    no_cfg = explainer.trace(pipe, "a cube", num_inference_steps=2, guidance_scale=1.0, progress=False)
    with pytest.raises(ValueError, match="without classifier-free guidance"):
        views.guidance_sweep(no_cfg)


def test_trajectory_and_compare(tr, pipe):
    other = explainer.trace(pipe, "a red cube beside a blue sphere", num_inference_steps=4, scheduler="ddim",
                            seed=1, progress=False)  # fmt: skip
    a, b = views.project_latents([tr, other])
    assert a.shape == (5, 2) and not np.allclose(a, b)
    fig = views.latent_trajectory([tr, other], step=2)
    assert len(fig.axes[0].lines) == 6
    fig = views.compare_steps([tr, other], 3, labels=["seed 0", "seed 1"])
    assert [ax.get_title() for ax in fig.axes] == ["seed 0", "seed 1"]
    with pytest.raises(ValueError, match="two or more"):
        views.compare_steps([tr], 0)
