"""The Jobs tab's "Inside the prompt" as plain functions: a succeeded job's inspection (core.inspection, computed
on demand and cached per job) as a table of nearest tokens and four figures: per-token norms beside the
vocabulary's, Q over training (LAMP), a heatmap of C, and the drift from initialisation."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from app.monitor import _artifact_dir
from core.inspection import Inspection, Neighbour, Stage, inspect_artifact

CACHE_SIZE = 8
_CACHE: OrderedDict[tuple[int, str, int, float], Inspection] = OrderedDict()
NEAREST_COLUMNS = ["#", "Norm init", "Norm trained", "Nearest at init", "Nearest trained"]
"""Short numeric headers ("Vector" wrapped as "Vec tor"), the token columns given the width."""
_LAYOUT: dict[str, Any] = {"height": 380, "margin": {"l": 50, "r": 20, "t": 50, "b": 80}, "template": "plotly_white",
                           "legend": {"orientation": "h", "yanchor": "top", "y": -0.22}}
"""The legend sits under the x axis's title, not over it."""


def inspect_job(job_id: int, top_k: int = 5) -> Inspection:
    """The inspection of a succeeded job's artifact; computed once per job, k and artifact version."""
    folder = _artifact_dir(int(job_id))  # ArtifactError unless the job succeeded and its artifact is here
    key = (int(job_id), str(folder), int(top_k), (folder / "lamp_artifact.json").stat().st_mtime)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    inspection = inspect_artifact(folder, top_k=top_k)
    _CACHE[key] = inspection
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return inspection


def _tokens(row: list[Neighbour]) -> str:
    return ", ".join(f"{n.token!r} {n.cosine:.2f}" for n in row)


def nearest_frame(ins: Inspection) -> pd.DataFrame:
    """One row per pooled prompt vector: its norm and nearest vocabulary tokens (cosine), at init and trained."""
    rows = [[i, round(a, 3), round(b, 3), _tokens(before), _tokens(after)]
            for i, (a, b, before, after) in enumerate(zip(ins.norms_init, ins.norms_trained, ins.nearest_init,
                                                          ins.nearest_trained, strict=True))]
    return pd.DataFrame(rows, columns=NEAREST_COLUMNS)


def norm_figure(ins: Inspection) -> go.Figure:
    """Per-vector L2 norm at init and trained, over the band p5-p95 of the common tokens' norms and their mean."""
    xs = list(range(len(ins.norms_trained)))
    common, every = ins.vocab_norms["common"], ins.vocab_norms["all"]
    fig = go.Figure()
    fig.add_hrect(y0=common["p5"], y1=common["p95"], fillcolor="#94a3b8", opacity=0.2, line_width=0,
                  annotation_text="common tokens p5-p95", annotation_position="top left")
    fig.add_trace(go.Scatter(x=xs, y=ins.norms_init, mode="lines+markers", name="init"))
    fig.add_trace(go.Scatter(x=xs, y=ins.norms_trained, mode="lines+markers", name="trained"))
    fig.add_trace(go.Scatter(x=[xs[0], xs[-1]], y=[common["mean"]] * 2, mode="lines", name="common tokens' mean",
                             line={"dash": "dash", "color": "#475569"}))
    fig.add_trace(go.Scatter(x=[xs[0], xs[-1]], y=[every["mean"]] * 2, mode="lines", name="all tokens' mean",
                             line={"dash": "dot", "color": "#94a3b8"}))
    fig.update_layout(title=f"Per-token norm ({ins.norm_ratio:.2f}x the common tokens' mean)", **_LAYOUT)
    fig.update_xaxes(title_text="pooled prompt vector")
    fig.update_yaxes(title_text="L2 norm")
    return fig


def _over_training(ins: Inspection) -> tuple[list[Stage], Stage]:
    """(init and the evaluation snapshots, the trained stage); without snapshots the line is init -> trained."""
    *stages, trained = ins.history
    return (stages if len(stages) > 1 else [*stages, trained]), trained


def q_figure(ins: Inspection) -> go.Figure:
    """LAMP's Q_i against the step (init, each evaluation), the kept (best) values marked."""
    fig = go.Figure()
    fig.update_layout(title="Q over training", **_LAYOUT)
    stages, trained = _over_training(ins)
    if trained.q is None:
        fig.add_annotation(text=f"{ins.method['name']} has no Q: it is LAMP's diag(Q)", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper")
        return fig
    steps = [s.step for s in stages]
    for i in range(len(trained.q)):
        fig.add_trace(go.Scatter(x=steps, y=[s.q[i] for s in stages if s.q is not None], mode="lines+markers",
                                 name=f"Q{i + 1}"))
    fig.add_trace(go.Scatter(x=[trained.step] * len(trained.q), y=trained.q, mode="markers", name="kept",
                             marker={"symbol": "star", "size": 11, "color": "#111827"}))
    fig.update_xaxes(title_text="step")
    return fig


def dense_heatmap(ins: Inspection) -> go.Figure:
    """C (l x d), the prompt before pooling (LAMP: U diag(Q)^2 V^T; prompt tuning: P; DPT: A B)."""
    z = ins.dense.numpy()
    bound = float(abs(z).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=z, colorscale="RdBu", zmid=0.0, zmin=-bound, zmax=bound,
                               colorbar={"title": {"text": "value"}}))
    fig.update_layout(title=f"C before pooling ({z.shape[0]} x {z.shape[1]})",
                      **{**_LAYOUT, "height": 420})
    fig.update_xaxes(title_text="hidden dimension")
    fig.update_yaxes(title_text="prompt token", autorange="reversed")
    return fig


def drift_figure(ins: Inspection) -> go.Figure:
    """||X - X0||_F / ||X0||_F of C and of the pooled prompt against the step."""
    stages, trained = _over_training(ins)
    steps = [s.step for s in stages]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=steps, y=[s.drift_dense for s in stages], mode="lines+markers", name="C"))
    fig.add_trace(go.Scatter(x=steps, y=[s.drift_pooled for s in stages], mode="lines+markers",
                             name="pooled prompt"))
    fig.add_trace(go.Scatter(x=[trained.step] * 2, y=[trained.drift_dense, trained.drift_pooled], mode="markers",
                             name="kept", marker={"symbol": "star", "size": 11, "color": "#111827"}))
    fig.update_layout(title="Drift from initialisation (relative Frobenius distance)", **_LAYOUT)
    fig.update_xaxes(title_text="step")
    return fig


def summary_markdown(ins: Inspection) -> str:
    m, c = ins.method, ins.vocab_norms["common"]
    knobs = " ".join(f"{k[0]}={m[k]}" for k in ("length", "rank", "pool") if k in m)
    mean = sum(ins.norms_trained) / len(ins.norms_trained)
    lines = [
        f"**{m['name']}** {knobs} on `{ins.model}` (d = {ins.hidden_size}) · kept step **{ins.best_step}** of "
        f"{ins.steps} · {len(ins.history) - 2} evaluation snapshot(s)",
        f"Per-token norm of the pooled prompt **{mean:.2f}** = **{ins.norm_ratio:.2f}x** the common tokens' mean "
        f"{c['mean']:.2f} (p5 {c['p5']:.2f}, p95 {c['p95']:.2f}) · drift from init: C **{ins.drift_dense:.3f}**, "
        f"pooled **{ins.drift_pooled:.3f}**",
    ]
    if ins.origin:
        lines.append(f"Warm-started from `{ins.origin['artifact']}` ({ins.origin['method']['name']} on "
                     f"`{ins.origin['model']}`)")
    return "\n\n".join(lines)


def inside_prompt(job_id: int, top_k: int = 5) -> tuple[str, pd.DataFrame, go.Figure, go.Figure, go.Figure,
                                                         go.Figure]:
    """Everything the section shows: summary, nearest tokens, norms, Q, C heatmap, drift."""
    ins = inspect_job(job_id, top_k)
    return (summary_markdown(ins), nearest_frame(ins), norm_figure(ins), q_figure(ins), dense_heatmap(ins),
            drift_figure(ins))
