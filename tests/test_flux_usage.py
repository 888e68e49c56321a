"""FLUX.1 traces in use: every view, every export format, the explorer and ``explainer info`` on a
guidance-distilled trace and on a true-CFG trace (tiny random-weight FLUX components)."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from _flux import build_flux_pipeline  # noqa: E402

import explainer  # noqa: E402
from explainer import views  # noqa: E402
from explainer.widgets.explore import Explorer  # noqa: E402

PROMPT = "a red cube beside a blue sphere"
RUN = dict(height=32, width=32, num_inference_steps=2, max_sequence_length=16, seed=0, progress=False)


@pytest.fixture(scope="module")
def schnell():
    return build_flux_pipeline(guidance_embeds=False, seed=1)


@pytest.fixture(scope="module")
def traces(schnell):
    dev = build_flux_pipeline(guidance_embeds=True)
    return {
        "dev": explainer.trace(dev, PROMPT, **RUN),
        "true_cfg": explainer.trace(schnell, PROMPT, negative_prompt="a green cone", true_cfg_scale=3.0, **RUN),
    }


@pytest.mark.parametrize("which", ["dev", "true_cfg"])
def test_every_view_and_export_on_flux_traces(traces, which, tmp_path):
    tr = traces[which]
    figures = [
        views.token_overlay(tr, "cube", 1),
        views.emergence_curve(tr, ["red", "cube"], step=1),
        views.schedule_plot(tr, 1),
        views.compare_steps([tr, traces["dev"]], 1),
        views.latent_trajectory([tr, traces["dev"]]),
    ]
    if tr.has_uncond:
        figures += [views.guidance_decomposition(tr, 1), views.guidance_sweep(tr, 1)]
    assert all(len(f.axes) > 0 for f in figures)
    plt.close("all")
    for suffix in ("gif", "png", "html"):
        out = explainer.export(tr, tmp_path / f"run.{suffix}", verbose=False)
        assert out.stat().st_size > 0, suffix


def test_explorer_on_flux_traces(traces):
    for tr in traces.values():
        w = Explorer(tr)
        w.selected = ["cond:2"]  # "red"
        assert w.wait_idle() and not w.error and len(w.overlay_maps) == tr.num_steps
    assert Explorer(traces["true_cfg"]).guidance_enabled and not Explorer(traces["dev"]).guidance_enabled


def test_info_names_family_method_and_guidance(traces, tmp_path, capsys):
    from explainer import cli

    path = traces["dev"].save(tmp_path / "dev.safetensors")
    assert cli.main(["info", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["family"] == "flux" and "guidance-distilled" in summary["unconditional"]
    assert "RoPE" in summary["attention_method"]
    assert [s["combine"] for s in summary["token_segments"]["cond"]] == ["sequence", "pooled"]
    assert cli.main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "pooled" in text and "mu" in text


def test_load_pipeline_reads_a_flux_folder(tmp_path):
    import numpy as np
    from diffusers import FluxPipeline

    from explainer.tracing.families import family_for

    pipe = build_flux_pipeline(guidance_embeds=True)
    folder = tmp_path / "flux"
    pipe.save_pretrained(folder, safe_serialization=True)
    loaded = explainer.load_pipeline(folder, device="cpu")
    assert type(loaded) is FluxPipeline and family_for(loaded).name == "flux"
    ours, theirs = (explainer.trace(p, PROMPT, **RUN) for p in (loaded, pipe))
    assert np.array_equal(np.asarray(ours.final_image), np.asarray(theirs.final_image))


def test_explorer_guidance_rerun_moves_true_cfg_scale(traces, schnell):
    """On a true-CFG trace the guidance slider is true_cfg_scale; re-runs keep the family options."""
    tr = traces["true_cfg"]
    w = Explorer(tr, pipe=schnell)
    assert w.guidance_recorded == 3.0 == tr.cfg_scale
    w.guidance = 4.0
    assert w.wait_idle() and not w.error and w.run_count == 1
    assert w.trace.cfg_scale == 4.0 and w.trace.guidance_scale == tr.guidance_scale
    assert w.trace.metadata["options"]["max_sequence_length"] == 16 and len(w.trace.tokens) == len(tr.tokens)


def test_method_comparison_shows_both_methods(traces):
    dev = build_flux_pipeline(guidance_embeds=True)
    concept = explainer.trace(dev, PROMPT, record={"method": "concept"}, **RUN)
    fig = views.method_comparison([traces["dev"], concept], "cube", 1)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["cube: attention probabilities", "cube: ConceptAttention"]
    assert not (concept.heatmap("cube", 1) == traces["dev"].heatmap("cube", 1)).all()  # two different maps
    with pytest.raises(ValueError, match="at least one Trace"):
        views.method_comparison([], "cube")


def test_cli_runs_a_flux_folder_with_true_cfg(schnell, tmp_path, capsys):
    from explainer import cli

    folder = tmp_path / "flux"
    schnell.save_pretrained(folder, safe_serialization=True)
    out = tmp_path / "run"
    argv = ["run", PROMPT, "--model", str(folder), "--steps", "2", "--height", "32", "--width", "32",
            "--max-sequence-length", "16", "--negative", "a green cone", "--true-cfg-scale", "3", "--out", str(out),
            "--quiet", "--no-gif", "--no-html"]  # fmt: skip
    assert cli.main(argv) == 0
    tr = explainer.load_trace(out / "trace.safetensors")
    assert tr.family == "flux" and tr.has_uncond and tr.cfg_scale == 3.0
    assert tr.metadata["options"] == {"max_sequence_length": 16, "true_cfg_scale": 3.0}


def test_attention_methods_figure_data_is_consistent():
    """docs/data/attention_methods.json (scripts/attention_methods_figure.py): both methods' maps of one run, and the
    correlation and concentrations the docs quote are those of the stored maps."""
    from pathlib import Path

    import numpy as np

    data_dir = Path(__file__).resolve().parent.parent / "docs" / "data"
    data = json.loads((data_dir / "attention_methods.json").read_text())
    assert set(data["methods"]) == set(data["maps"]) == {"probabilities", "concept"}
    assert "ConceptAttention" in data["methods"]["concept"] and "RANDOM weights" in data["model"]
    a, b = (np.asarray(data["maps"][m], np.float64) for m in ("probabilities", "concept"))
    assert a.shape == b.shape == (data["settings"]["height"], data["settings"]["width"])
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1] - data["correlation"]) < 1e-3  # maps rounded to 4 digits
    assert (data_dir / "attention_methods.png").stat().st_size > 0
