"""The Compare tab as plain functions: the table behind the charts, the charts, and its CSV download."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.monitor import data_name, main_metric
from app.settings import export_csv
from jobs import store
from jobs.db import read
from jobs.models import Status
from jobs.studies.report import METHOD_COLORS

COLUMNS = ["job", "method", "model", "data", "length", "rank", "pool", "prompt_tokens", "trainable_params",
           "peak_memory_mb", "train_seconds", "examples_per_second", "steps", "metric", "score", "gen_accuracy"]


def compare_frame(job_ids: Sequence[int]) -> pd.DataFrame:
    """One row per finished job with a result; other ids are left out."""
    ids = sorted({int(i) for i in job_ids})
    results = read(store.results_for, job_ids=ids)
    rows = []
    for job_id in ids:
        job = read(store.get_job, job_id=job_id)
        result = results.get(job_id)
        if job is None or result is None or job.status != Status.SUCCEEDED:
            continue
        m = job.spec.get("method", {})
        name = m.get("name")
        length = m.get("length")
        pool = m.get("pool", 1) if name == "lamp" else 1
        metric = main_metric(result.metrics) or ("", float("nan"))
        rows.append([job_id, name, job.spec.get("model", {}).get("name"), data_name(job.spec), length,
                     m.get("rank"), pool,
                     length // pool if length else None, result.trainable_params, round(result.peak_memory_mb, 1),
                     round(result.train_seconds, 2), round(result.examples_per_second, 2), result.steps,
                     metric[0], metric[1], result.metrics.get("gen_accuracy")])
    return pd.DataFrame(rows, columns=COLUMNS)


def _label(row: pd.Series) -> str:
    return f"#{row['job']} {row['method']}"


def empty_figure(message: str) -> go.Figure:
    """An empty chart that says what to do next."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 15})
    fig.update_layout(height=200, template="plotly_white", xaxis={"visible": False}, yaxis={"visible": False},
                      margin={"l": 20, "r": 20, "t": 20, "b": 20})
    return fig


def _method_legend(fig: go.Figure, methods: Sequence[str]) -> None:
    """One legend entry per method present (the bars are coloured by method, not one trace each)."""
    for method in dict.fromkeys(methods):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=str(method),
                                 marker={"size": 12, "symbol": "square",
                                         "color": METHOD_COLORS.get(str(method), "#6b7280")}))


def _plain(value: float) -> str:
    """A bar's label as a person reads it: 2,388, 678, 12.5, 0.43 (never 2.39e+03, never 0 for 0.43 s)."""
    if float(value).is_integer() or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def cost_figure(df: pd.DataFrame) -> go.Figure:
    """Trainable parameters, peak memory, training time and the main metric, one bar per job, on linear axes
    (a log axis made a 2,388-parameter bar a sliver) with plain numbers; the metric on its whole 0-1 scale."""
    panels = (("trainable_params", "Trainable parameters", _plain), ("peak_memory_mb", "Peak memory (MiB)", _plain),
              ("train_seconds", "Training time (s)", _plain), ("score", "Test metric", lambda v: f"{v:.3f}"))
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[1] for p in panels], vertical_spacing=0.22)
    labels = [_label(r) for _, r in df.iterrows()]
    colors = [METHOD_COLORS.get(m, "#6b7280") for m in df["method"]] if len(df) else []
    for i, (column, title, fmt) in enumerate(panels):
        fig.add_trace(go.Bar(x=labels, y=df[column], marker_color=colors, name=title, showlegend=False,
                             text=[fmt(v) if pd.notna(v) else "" for v in df[column]], textposition="auto"),
                      row=i // 2 + 1, col=i % 2 + 1)
    _method_legend(fig, list(df["method"]))
    fig.update_yaxes(tickformat=",~r", rangemode="tozero")
    if len(df) and df["score"].dropna().between(0, 1).all():
        fig.update_yaxes(range=[0, 1.05], row=2, col=2)
    fig.update_layout(height=600, margin={"l": 60, "r": 20, "t": 60, "b": 40}, template="plotly_white",
                      title="Cost and accuracy per job", legend={"orientation": "h", "y": -0.12})
    return fig


def knob_figure(df: pd.DataFrame) -> go.Figure:
    """The main metric against rank, prompt length and pool, one colour per method; each method in the legend
    (from the first panel it has points in: prompt tuning has no rank)."""
    knobs = (("rank", "rank r"), ("length", "prompt length l"), ("pool", "pool p"))
    fig = make_subplots(rows=1, cols=3, subplot_titles=[k[1] for k in knobs], shared_yaxes=True)
    for method, group in df.groupby("method") if len(df) else []:
        shown = False
        for i, (column, _title) in enumerate(knobs):
            sub = group.dropna(subset=[column]).sort_values(column)
            if sub.empty:
                continue
            fig.add_trace(go.Scatter(x=sub[column], y=sub["score"], mode="markers+lines", name=str(method),
                                     legendgroup=str(method), showlegend=not shown,
                                     marker={"size": 10, "color": METHOD_COLORS.get(str(method), "#6b7280")},
                                     text=[f"job {j}" for j in sub["job"]]), row=1, col=i + 1)
            shown = True
    fig.update_yaxes(title_text="test metric", row=1, col=1)
    if len(df) and df["score"].dropna().between(0, 1).all():
        fig.update_yaxes(range=[0, 1.05])
    fig.update_layout(height=400, margin={"l": 60, "r": 20, "t": 60, "b": 40}, template="plotly_white",
                      title="Accuracy against the knobs", legend={"orientation": "h", "y": -0.2})
    return fig


def compare_csv(df: pd.DataFrame) -> str:
    return export_csv(df, "lamp-compare.csv")
