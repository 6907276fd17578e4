"""A study's tables and Pareto charts, for `lamp study show --csv/--charts` and the Study tab alike: the trials and
settings tables (pandas) and validation accuracy against each cost (plotly), each point linking to its job."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from jobs.studies.plan import COST_LABELS, COSTS, describe
from jobs.studies.views import StudyView

METHOD_COLORS = {"lamp": "#2563eb", "prompt-tuning": "#dc2626", "dpt": "#16a34a", "residual-pt": "#9333ea",
                 "ulpt": "#0891b2", "dept": "#ea580c"}
"""One color per method, in every chart (the Compare tab's too)."""
DEFAULT_LINK_BASE = "http://127.0.0.1:7860/"
"""Where chart points link when the dashboard's own address is not known (`lamp study show --charts`)."""


TRIAL_COLUMNS = ("trial", "state", "job", "method", "length", "rank", "pool", "lr", "seed", "val", "test", "params",
                 "train_s", "memory_mb", "step", "note")


def trials_frame(view: StudyView) -> pd.DataFrame:
    rows = []
    for t in view.trials:
        s = t.setting
        rows.append({"trial": t.number, "state": t.state, "job": t.job_id, "method": s.get("method"),
                     "length": s.get("length"), "rank": s.get("rank"), "pool": s.get("pool"), "lr": s.get("lr"),
                     "seed": s.get("seed"), "val": _round(t.accuracy), "test": _round(t.test), "params": t.params,
                     "train_s": _round(t.time, 1), "memory_mb": _round(t.memory, 0), "step": t.step,
                     "note": (t.note or "").strip().splitlines()[-1] if t.note else ""})
    return pd.DataFrame(rows, columns=list(TRIAL_COLUMNS))


SETTINGS_COLUMNS = ("setting", "method", "length", "rank", "pool", "lr", "seeds", "val_mean", "val_std", "test_mean",
                    "test_std", "test_ci95", "params", "train_s", "memory_mb", *[f"front_{c}" for c in COSTS],
                    "recommended", "jobs")


def settings_frame(view: StudyView) -> pd.DataFrame:
    """One row per setting (mean and spread over seeds), best first: the table behind the charts and the CSV."""
    rows = []
    for s in view.settings:
        rows.append({
            "setting": describe(s.setting), "method": s.setting.get("method"), "length": s.setting.get("length"),
            "rank": s.setting.get("rank"), "pool": s.setting.get("pool"), "lr": s.setting.get("lr"),
            "seeds": s.seeds, "val_mean": _round(s.accuracy), "val_std": _round(s.accuracy_std),
            "test_mean": _round(s.test), "test_std": _round(s.test_std), "test_ci95": _round(s.test_ci95),
            "params": round(s.params), "train_s": _round(s.time, 1),
            "memory_mb": _round(s.memory, 0),
            **{f"front_{c}": s.front.get(c, False) for c in COSTS},
            "recommended": view.recommendation is not None and s.key == view.recommendation.key,
            "jobs": " ".join(str(t.job_id) for t in s.trials)})
    return pd.DataFrame(rows, columns=SETTINGS_COLUMNS)


def _round(value: float | None, digits: int = 4) -> float | None:
    return round(value, digits) if value is not None else None


def pareto_figure(view: StudyView, cost: str, link_base: str = DEFAULT_LINK_BASE) -> go.Figure:
    """Validation accuracy (mean over seeds, bars = spread) against one cost; the Pareto front joined and ringed,
    each point labelled with a link to its job (`link_base?job=N`: the dashboard opens that job)."""
    fig = go.Figure()
    settings = view.settings
    for method in sorted({s.setting["method"] for s in settings}):
        group = [s for s in settings if s.setting["method"] == method]
        fig.add_trace(go.Scatter(
            x=[s.cost(cost) for s in group], y=[s.accuracy for s in group], mode="markers", name=method,
            error_y={"type": "data", "array": [s.accuracy_std for s in group], "visible": True},
            marker={"size": 11, "color": METHOD_COLORS.get(method, "#6b7280"), "line": {"width": 0}},
            customdata=[[describe(s.setting), s.seeds, " ".join(str(t.job_id) for t in s.trials)] for s in group],
            hovertemplate="%{customdata[0]}<br>val %{y:.4f} (n=%{customdata[1]})<br>" + COST_LABELS[cost]
                          + " %{x:,.4g}<br>jobs %{customdata[2]}<extra></extra>"))
    front = sorted((s for s in settings if s.front.get(cost)), key=lambda s: s.cost(cost))
    if front:
        fig.add_trace(go.Scatter(
            x=[s.cost(cost) for s in front], y=[s.accuracy for s in front], mode="lines+markers", name="Pareto front",
            line={"shape": "hv", "dash": "dot", "color": "#111827"},
            marker={"size": 18, "symbol": "circle-open", "color": "#111827", "line": {"width": 2}},
            hoverinfo="skip"))
    # Each point's label links to its job. Annotations, not trace text: they sit above plotly's drag layer, so
    # they take clicks (on a log axis an annotation's x is the exponent).
    for s in settings:
        job = s.trials[0].job_id
        x = s.cost(cost)
        fig.add_annotation(x=math.log10(x) if cost == "params" and x > 0 else x, y=s.accuracy, yshift=14,
                           text=f'<a href="{link_base}?job={job}">#{job}</a>', showarrow=False,
                           font={"size": 12, "color": "#1d4ed8"}, captureevents=True)
    rec = view.recommendation
    if rec is not None:
        fig.add_trace(go.Scatter(x=[rec.cost(cost)], y=[rec.accuracy], mode="markers", name="recommended",
                                 marker={"size": 22, "symbol": "star-open", "color": "#d97706",
                                         "line": {"width": 2}}, hoverinfo="skip"))
    pruned = view.counts().get("PRUNED", 0)
    fig.update_layout(
        title=f"validation {view.metric or 'accuracy'} vs {COST_LABELS[cost]}"
              + (f" · {pruned} trial(s) pruned" if pruned else ""),
        xaxis_title=COST_LABELS[cost], yaxis_title=f"validation {view.metric or 'accuracy'}",
        xaxis_type="log" if cost == "params" else "linear", template="plotly_white", height=420,
        margin={"l": 60, "r": 20, "t": 60, "b": 50}, legend={"orientation": "h", "y": -0.2})
    return fig


def pareto_figures(view: StudyView, link_base: str = DEFAULT_LINK_BASE) -> list[go.Figure]:
    return [pareto_figure(view, cost, link_base) for cost in COSTS]


def write_charts(view: StudyView, out: Path, link_base: str = DEFAULT_LINK_BASE) -> list[Path]:
    """The three Pareto charts as standalone HTML files (plotly.js inlined); points link to the dashboard at
    `link_base`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for cost, fig in zip(COSTS, pareto_figures(view, link_base), strict=True):
        path = out / f"study-{view.id}-pareto-{cost}.html"
        fig.write_html(path, include_plotlyjs=True)  # works offline
        paths.append(path)
    return paths
