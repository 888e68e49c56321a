"""Interactive plotly figures: hover and zoom where that teaches something.

Each function takes a Trace (or plain arrays) and returns a ``plotly.graph_objects.Figure``; in
Jupyter the figure shows itself, and :func:`figure_html` gives a fragment for a web page. Numbers on
hover come from the trace: ᾱ, σ = √((1 − ᾱ)/ᾱ) and SNR = ᾱ/(1 − ᾱ) of each step, the step and
timestep of each latent, a word's concentration per step, the cosine of two token vectors.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import check_step
from .guidance import DEFAULT_SWEEP, _need_uncond
from .steps import describe
from .tokens import concentration
from .trajectory import project_latents

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from ..tracing import Trace

MARK = "#444"


def _go():
    import plotly.graph_objects as go

    return go


def noise_levels(alphas_cumprod: np.ndarray) -> dict[str, np.ndarray]:
    """σ and SNR from ᾱ (float64 arrays of the same shape).

    Args:
        alphas_cumprod: ᾱ per timestep or step, in ``[0, 1]``.

    Returns:
        ``{"alpha_bar", "sigma", "snr"}``: σ = √((1 − ᾱ)/ᾱ) (``inf`` where ᾱ = 0) and SNR = ᾱ/(1 − ᾱ)
        (``inf`` where ᾱ = 1).
    """
    abar = np.asarray(alphas_cumprod, np.float64)
    if abar.size and (abar.min() < 0 or abar.max() > 1):
        raise ValueError(f"alphas_cumprod must lie in [0, 1], got values from {abar.min():g} to {abar.max():g}.")
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.sqrt((1 - abar) / abar)
        snr = abar / (1 - abar)
    return {"alpha_bar": abar, "sigma": sigma, "snr": snr}


def _fmt(values: np.ndarray, spec: str = ".3g") -> list[str]:
    return ["∞" if np.isinf(v) else format(float(v), spec) for v in values]


def _log_safe(values: np.ndarray) -> np.ndarray:
    """NaN where a log axis cannot draw (0, ∞); plotly leaves a gap there."""
    out = np.asarray(values, np.float64).copy()
    out[~np.isfinite(out) | (out <= 0)] = np.nan
    return out


def schedule_figure(
    trace: Trace, step: int | None = None, *, train_alphas_cumprod: np.ndarray | None = None
) -> go.Figure:
    """The noise schedule: ᾱ against t, SNR on a log axis, the run's steps as points.

    Hovering a point shows its step, t, ᾱ, σ and SNR.

    Args:
        trace: the trace (its ``timesteps`` and ``alphas_cumprod``).
        step: a step to mark with a vertical line, or ``None``.
        train_alphas_cumprod: ``[T]`` ᾱ of every training timestep (``scheduler.alphas_cumprod``), drawn
            as the full curve behind the run's steps; ``None`` draws the steps only.

    Returns:
        A plotly figure: traces ``"ᾱ (training)"`` and ``"SNR (training)"`` when given, then
        ``"ᾱ at the run's steps"`` and ``"SNR at the run's steps"``.
    """
    go = _go()
    step = check_step(trace, step)
    fig = go.Figure()
    hover = "t = %{x}<br>ᾱ = %{customdata[0]}<br>σ = %{customdata[1]}<br>SNR = %{customdata[2]}"
    if train_alphas_cumprod is not None:
        full = noise_levels(train_alphas_cumprod)
        t_all = np.arange(len(full["alpha_bar"]))
        data = np.stack([_fmt(full["alpha_bar"]), _fmt(full["sigma"]), _fmt(full["snr"])], axis=-1)
        fig.add_scatter(x=t_all, y=full["alpha_bar"], name="ᾱ (training)", mode="lines", line={"color": "#3a8fd8"},
                        customdata=data, hovertemplate=hover + "<extra>training timestep</extra>")
        fig.add_scatter(x=t_all, y=_log_safe(full["snr"]), name="SNR (training)", mode="lines", yaxis="y2",
                        line={"color": "#f0a030", "dash": "dot"}, customdata=data,
                        hovertemplate=hover + "<extra>training timestep</extra>")
    run = noise_levels(trace.alphas_cumprod)
    steps = np.arange(trace.num_steps)
    data = np.stack([_fmt(run["alpha_bar"]), _fmt(run["sigma"]), _fmt(run["snr"]), steps.astype(str)], axis=-1)
    t = np.asarray(trace.timesteps, np.float64)
    hover_run = "step %{customdata[3]}<br>" + hover + "<extra></extra>"
    fig.add_scatter(x=t, y=run["alpha_bar"], name="ᾱ at the run's steps", mode="markers",
                    marker={"color": "#3a8fd8", "size": 9}, customdata=data, hovertemplate=hover_run)
    fig.add_scatter(x=t, y=_log_safe(run["snr"]), name="SNR at the run's steps", mode="markers", yaxis="y2",
                    marker={"color": "#f0a030", "size": 9, "symbol": "diamond"}, customdata=data,
                    hovertemplate=hover_run)
    if step is not None:
        fig.add_vline(x=float(t[step]), line={"color": MARK, "width": 1})
    fig.update_layout(
        xaxis={"title": "timestep t (sampling runs right to left)", "autorange": "reversed"},
        yaxis={"title": "ᾱ (signal share)", "range": [-0.02, 1.02]},
        yaxis2={"title": "SNR = ᾱ / (1 − ᾱ)", "type": "log", "overlaying": "y", "side": "right",
                "exponentformat": "power", "dtick": 2, "showgrid": False},
        legend={"orientation": "h", "y": -0.25}, margin={"l": 60, "r": 60, "t": 30, "b": 40}, height=380,
        hovermode="closest",
    )
    return fig


def trajectory_figure(
    traces: Trace | Sequence[Trace], step: int | None = None, *, labels: Sequence[str] | None = None
) -> go.Figure:
    """Latent paths in the plane of their first two principal components (see :func:`project_latents`).

    Hovering a point shows the run, the step and its timestep; several seeds start apart and are
    pulled towards the images they become.

    Args:
        traces: one trace or several of one model and size.
        step: a step to ring on every path, or ``None``.
        labels: a name per trace (default: prompt, seed and guidance).

    Returns:
        A plotly figure with one line per trace (points ``x_0 .. x_S``) and, with ``step``, one ring
        trace named ``"step N"``.
    """
    go = _go()
    traces = [traces] if not isinstance(traces, (list, tuple)) else list(traces)
    if labels is not None and len(labels) != len(traces):
        raise ValueError(f"labels has {len(labels)} entries for {len(traces)} traces.")
    step = check_step(traces[0], step)
    fig = go.Figure()
    rings = []
    for i, (tr, xy) in enumerate(zip(traces, project_latents(traces), strict=True)):
        label = labels[i] if labels is not None else describe(tr).replace("\n", " ")
        n = len(xy)
        ts = [str(int(v)) for v in tr.timesteps] + ["done"]
        names = ["start (noise)"] + [f"after step {s}" for s in range(n - 1)]
        custom = np.stack([np.arange(n).astype(str), ts[:n], names], axis=-1)
        fig.add_scatter(x=xy[:, 0], y=xy[:, 1], mode="lines+markers", name=label, customdata=custom,
                        hovertemplate="<b>%{fullData.name}</b><br>latent %{customdata[0]}: %{customdata[2]}"
                                      "<br>input of the step at t = %{customdata[1]}<extra></extra>")
        if step is not None and step < n:
            rings.append(xy[step])
    if rings:
        ring = np.asarray(rings)
        fig.add_scatter(x=ring[:, 0], y=ring[:, 1], mode="markers", name=f"step {step}", hoverinfo="skip",
                        marker={"size": 16, "color": "rgba(0,0,0,0)", "line": {"color": MARK, "width": 2}})
    fig.update_layout(xaxis={"title": "PC 1"}, yaxis={"title": "PC 2", "scaleanchor": "x"}, height=420,
                      margin={"l": 50, "r": 20, "t": 30, "b": 40}, legend={"font": {"size": 10}})
    return fig


def emergence_figure(
    trace: Trace, words: str | int | Sequence[str | int], *, layers: Any = None, branch: str = "cond"
) -> go.Figure:
    """:func:`concentration` of each word over the steps; hover for the step, t and value.

    Args:
        trace: a trace with attention.
        words: a word, a token index, or several.
        layers, branch: as for :meth:`Trace.heatmap`.

    Returns:
        A plotly figure with one line per word, named by the word.
    """
    go = _go()
    words = [words] if isinstance(words, (str, int)) else list(words)
    if not words:
        raise ValueError("words is empty; give at least one word or token index.")
    fig = go.Figure()
    steps = np.arange(trace.num_steps)
    custom = np.stack([np.asarray(trace.timesteps).astype(int).astype(str)], axis=-1)
    for w in words:
        name = w if isinstance(w, str) else trace.tokens[w]
        fig.add_scatter(x=steps, y=concentration(trace, w, layers=layers, branch=branch), mode="lines+markers",
                        name=f'"{name}"', customdata=custom,
                        hovertemplate="%{fullData.name}<br>step %{x} (t = %{customdata[0]})"
                                      "<br>concentration %{y:.3f}<extra></extra>")
    fig.update_layout(xaxis={"title": "step", "dtick": 1}, yaxis={"title": "concentration (1 − entropy / log pixels)"},
                      height=340, margin={"l": 60, "r": 20, "t": 30, "b": 40})
    return fig


def _png_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def guidance_sweep_figure(
    trace: Trace,
    step: int | None = None,
    scales: Sequence[float] = DEFAULT_SWEEP,
    *,
    method: str = "linear",
    pipe: Any = None,
) -> go.Figure:
    """What-if x̂0 of one step at several guidance scales, one at a time under a slider.

    Below the image, how far each scale's x̂0 lies from the conditional one (g = 1): the distance grows
    in proportion to |g − 1|, because guidance moves along one line, uncond + g·(cond − uncond).

    Args:
        trace: a trace recorded with classifier-free guidance.
        step: the step; ``None`` for the last.
        scales: the guidance scales, one slider position each.
        method: ``"linear"`` previews or ``"vae"`` decodes (needs ``pipe``).
        pipe: the pipeline or its VAE, for ``method="vae"``.

    Returns:
        A plotly figure: one image trace per scale (named ``"g 7.5"``; only the slider's is visible) and
        a line ``"distance from g = 1"``.
    """
    from plotly.subplots import make_subplots

    _need_uncond(trace)
    scales = [float(g) for g in scales]
    if not scales:
        raise ValueError("scales is empty; give at least one guidance scale.")
    step = trace.num_steps - 1 if step is None else trace._check_step(step, "x0")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5], horizontal_spacing=0.12,
                        subplot_titles=(f"x̂0 of step {step}", f"mean |x̂0(g) − x̂0(1)|, step {step}"))
    cond = trace.what_if_x0(step, 1.0)
    distance = [float(np.abs(trace.what_if_x0(step, g) - cond).mean()) for g in scales]
    for i, g in enumerate(scales):
        image = trace.what_if(step, g, method=method, pipe=pipe)
        fig.add_trace(_image_trace(image, name=f"g {g:g}", visible=i == 0), row=1, col=1)
    fig.add_scatter(x=scales, y=distance, mode="lines+markers", name="distance from g = 1", row=1, col=2,
                    hovertemplate="g = %{x}<br>mean |x̂0(g) − x̂0(1)| = %{y:.3f}<extra></extra>")
    n = len(scales)
    sliders = [{
        "active": 0, "currentvalue": {"prefix": "guidance scale g = "}, "pad": {"t": 30},
        "steps": [{"label": f"{g:g}", "method": "restyle", "args": [{"visible": [j == i for j in range(n)] + [True]}]}
                  for i, g in enumerate(scales)],
    }]
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_yaxes(showticklabels=False, row=1, col=1)
    fig.update_xaxes(title_text="g", row=1, col=2)
    fig.update_layout(sliders=sliders, height=400, showlegend=False, margin={"l": 20, "r": 20, "t": 40, "b": 20})
    return fig


def _image_trace(image, *, name: str, visible: bool = True):
    """A plotly image trace of a PIL image, embedded as PNG (compact in HTML, whatever the size)."""
    return _go().Image(source=_png_uri(image), name=name, visible=visible, hoverinfo="skip")


def token_similarity_figure(embeddings: np.ndarray, labels: Sequence[str], *, title: str | None = None) -> go.Figure:
    """Cosine similarity of token vectors as a heat map; hover names the pair and their cosine.

    Plain data in: pass rows of the text encoder's input embedding table, or its output per token.

    Args:
        embeddings: ``[n, d]`` one vector per token.
        labels: ``n`` names, one per row.
        title: a title, or ``None``.

    Returns:
        A plotly figure with one heat map trace (``z`` is the ``[n, n]`` cosine matrix).
    """
    go = _go()
    vecs = np.asarray(embeddings, np.float64)
    if vecs.ndim != 2:
        raise ValueError(f"embeddings must be [n, d], got shape {vecs.shape}.")
    labels = list(labels)
    if len(labels) != len(vecs):
        raise ValueError(f"labels has {len(labels)} entries for {len(vecs)} embeddings.")
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    unit = vecs / np.where(norms > 0, norms, 1)
    sim = unit @ unit.T
    fig = go.Figure(go.Heatmap(z=sim, x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
                               hovertemplate="%{y} · %{x}<br>cosine %{z:.2f}<extra></extra>",
                               colorbar={"title": "cosine"}))
    fig.update_layout(title=title, yaxis={"autorange": "reversed"}, height=460,
                      margin={"l": 70, "r": 20, "t": 40 if title else 20, "b": 70})
    return fig


def figure_html(fig: go.Figure, *, div_id: str | None = None) -> str:
    """An HTML fragment of ``fig`` that draws with the page's plotly.js (no CDN; the docs vendor it).

    The script waits for the page to finish loading, so plotly.js may come later in the page.

    Args:
        fig: the figure.
        div_id: the id of its ``<div>``, or ``None`` for a random one.

    Returns:
        One ``<div>`` holding a ``<div>`` and a ``<script>``; the figure follows the page's width.
    """
    import uuid

    div_id = div_id or f"sdx-{uuid.uuid4().hex[:12]}"
    height = int(fig.layout.height or 420)
    spec = fig.to_json().replace("</", "<\\/")  # never close the script early
    return (
        f'<div class="sdx-plotly">\n<div id="{div_id}" style="width:100%;height:{height}px"></div>\n'
        f"<script>(function () {{ var fig = {spec}; function draw() {{ "
        f'Plotly.newPlot("{div_id}", fig.data, fig.layout, {{responsive: true, displaylogo: false}}); }} '
        'if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", draw); } '
        "else { draw(); } })();</script>\n</div>"
    )
