"""The Study tab as plain functions: form -> StudyPlan (each problem beside its field), the trials and settings
tables, the Pareto charts of accuracy against each cost, the recommendation, and the CSV."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from app.access import Access
from app.compare import METHOD_COLORS
from app.forms import DEFAULTS, FormError, spec_from_form
from app.settings import export_csv
from core.errors import ConfigError
from jobs.db import read
from jobs.studies import (
    COST_LABELS,
    COSTS,
    StudyPlan,
    StudyView,
    check_plan,
    describe,
    list_studies,
    parse_list,
)

# The study form's inputs, in the order the handlers receive them.
STUDY_FIELDS = (
    "name", "model", "task", "steps", "batch_size", "max_length", "eval_every", "max_eval_examples", "device",
    "methods", "lengths", "ranks", "pools", "lrs", "seeds", "mode", "trials", "sampler", "objectives", "pruner",
    "parallel", "tolerance",
)
STUDY_DEFAULTS: dict[str, Any] = {
    "name": "", "model": "default", "task": "rotten_tomatoes", "steps": 40, "batch_size": 8, "max_length": 256,
    "eval_every": 20, "max_eval_examples": 200, "device": "auto", "methods": ["lamp"], "lengths": "20, 100",
    "ranks": "4, 8", "pools": "1, 4", "lrs": "", "seeds": "42", "mode": "grid", "trials": 8, "sampler": "tpe",
    "objectives": ["params"], "pruner": "median", "parallel": "", "tolerance": 1.0,
}
# Form fields of the base run (app.forms) -> the study form's field that shows their problems.
_BASE_FIELD = {"method": "methods", "length": "lengths", "rank": "ranks", "pool": "pools", "lr": "lrs",
               "seed": "seeds"}
SWEEPS = {"methods": ("method", str), "lengths": ("length", int), "ranks": ("rank", int), "pools": ("pool", int),
          "lrs": ("lr", float), "seeds": ("seed", int)}


def plan_from_form(values: dict[str, Any], access: Access | None = None) -> StudyPlan:
    """The study the form describes; FormError maps every problem to the field at fault. `access`: what the
    user may name (the model), as for the New job form."""
    problems: dict[str, str] = {}
    space: dict[str, list[Any]] = {}
    for name, (knob, kind) in SWEEPS.items():
        raw = values.get(name)
        try:
            space[knob] = parse_list(raw if isinstance(raw, str) else list(raw or []), kind, knob)
        except ConfigError as exc:
            problems[name] = str(exc)
    if not space.get("method"):
        problems["methods"] = "pick at least one method"
    form = {**DEFAULTS, **{k: values.get(k) for k in ("model", "task", "steps", "batch_size", "max_length",
                                                      "eval_every", "device")}}
    form.update({k: (space[knob][0] if space.get(knob) else DEFAULTS[k]) for k, knob in (
        ("method", "method"), ("length", "length"), ("rank", "rank"), ("pool", "pool"), ("seed", "seed"))})
    form["lr"] = space["lr"][0] if space.get("lr") else ""
    base = None
    try:
        base, _ = spec_from_form(form, access)
    except FormError as exc:
        for key, message in exc.problems.items():
            problems[_BASE_FIELD.get(key, key if key in STUDY_FIELDS else "name")] = message
    if base is not None:
        from dataclasses import replace

        max_eval = values.get("max_eval_examples")
        if max_eval not in (None, ""):
            base = replace(base, data=replace(base.data, max_eval_examples=int(max_eval)))
    objectives = ("accuracy", *[o for o in COSTS if o in (values.get("objectives") or [])])
    if len(objectives) == 1:
        problems["objectives"] = "pick at least one cost to weigh accuracy against"
    budget = values.get("mode") == "budget"
    trials = values.get("trials")
    if budget and (trials in (None, "") or int(trials) < 1):
        problems["trials"] = "a budget study needs a number of trials"
    tolerance = values.get("tolerance")
    parallel = str(values.get("parallel") or "").strip()
    if parallel and not parallel.isdigit():
        problems["parallel"] = f"{parallel!r} is not a whole number (empty: the whole grid, 2 for a budget)"
    if problems or base is None:
        raise FormError(problems or {"": "the base run is invalid"})
    plan = StudyPlan(
        name=str(values.get("name") or "").strip() or f"{base.data.task or 'data'} sweep", base=base,
        space={k: v for k, v in space.items() if v}, mode="budget" if budget else "grid",
        n_trials=int(trials) if budget and trials else None, objectives=objectives,
        sampler=str(values.get("sampler") or "tpe"), parallel=int(parallel) if parallel else None,
        pruner=str(values.get("pruner") or "median"),
        tolerance=float(tolerance) / 100 if tolerance not in (None, "") else 0.01)
    try:
        return check_plan(plan)
    except ConfigError as exc:
        raise FormError({_field_of_plan_problem(line): line for line in str(exc).splitlines()}) from exc


def _field_of_plan_problem(message: str) -> str:
    knob = message.split("=", 1)[0]
    sweep = {knob_: name for name, (knob_, _) in SWEEPS.items()}
    if knob in sweep and " fits no setting" in message:
        return sweep[knob]
    for key, name in (("trials", "trials"), ("objectives", "objectives"), ("tolerance", "tolerance"),
                      ("parallel", "parallel"), ("rank", "ranks"), ("length", "lengths"), ("pool", "pools"),
                      ("the space", "ranks"), ("no valid", "ranks"), ("lr", "lrs")):
        if message.startswith(key):
            return name
    return "name"


def plan_text(plan: StudyPlan) -> str:
    """What launching this plan will do, shown as the form changes."""
    from jobs.studies import distinct_settings

    settings, dropped = distinct_settings(plan.base, plan.space)
    skipped = math.prod(len(v) for v in plan.space.values()) - len(settings)
    what = (f"a grid of **{len(settings)}** distinct runs" if plan.mode == "grid"
            else f"**{plan.n_trials}** trials chosen by {plan.sampler} among {len(settings)} distinct runs")
    why = f" ({skipped} combination(s) skipped as duplicates or invalid: {sorted(set(dropped))[0]})" if dropped else (
        f" ({skipped} duplicate combination(s) skipped)" if skipped else "")
    return (f"Launching starts {what}{why}, {plan.parallel} queued at a time, each "
            f"{plan.base.train.steps or 150} steps; objectives {', '.join(plan.objectives)}.")


def launch(plan: StudyPlan) -> int:
    from jobs.studies import create_study

    return create_study(plan)


def study_choices(limit: int = 100) -> list[tuple[str, int]]:
    return [(f"#{s.id} {s.name} · {s.status.lower()} · {s.mode}", s.id) for s in read(list_studies, limit=limit)]


def trials_frame(view: StudyView) -> pd.DataFrame:
    rows = []
    for t in view.trials:
        s = t.setting
        rows.append({"trial": t.number, "state": t.state, "job": t.job_id, "method": s.get("method"),
                     "length": s.get("length"), "rank": s.get("rank"), "pool": s.get("pool"), "lr": s.get("lr"),
                     "seed": s.get("seed"), "val": _round(t.accuracy), "test": _round(t.test), "params": t.params,
                     "train_s": _round(t.time, 1), "memory_mb": _round(t.memory, 0), "step": t.step,
                     "note": (t.note or "").strip().splitlines()[-1] if t.note else ""})
    return pd.DataFrame(rows, columns=["trial", "state", "job", "method", "length", "rank", "pool", "lr", "seed",
                                       "val", "test", "params", "train_s", "memory_mb", "step", "note"])


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


DEFAULT_LINK_BASE = "http://127.0.0.1:7860/"


def page_base(request: Any) -> str:
    """The dashboard's own address as the browser sees it (links in plotly charts must be absolute: plotly drops
    relative hrefs)."""
    headers = dict(request.headers) if request is not None else {}
    referer = str(headers.get("referer") or "")
    if referer.startswith(("http://", "https://")):
        return referer.split("?", 1)[0].split("#", 1)[0]
    origin = str(headers.get("origin") or "")
    return f"{origin}/" if origin.startswith(("http://", "https://")) else DEFAULT_LINK_BASE


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


def recommendation_text(view: StudyView) -> str:
    rec = view.recommendation
    if rec is None:
        return "No recommendation yet: it needs at least one completed trial."
    best = max(s.accuracy for s in view.settings)
    jobs = ", ".join(f"[#{t.job_id}](?job={t.job_id})" for t in rec.trials)
    return (f"**Recommended:** {describe(rec.setting)}: validation {view.metric or 'accuracy'} "
            f"{rec.accuracy:.4f} (best {best:.4f}, tolerance {view.tolerance * 100:g} points) with "
            f"{rec.params:,.0f} trainable parameters, {rec.time:.1f} s of training, {rec.memory:,.0f} MiB peak "
            f"(mean of {rec.seeds} seed(s); jobs {jobs}). The cheapest setting by "
            f"{view.objectives[1] if len(view.objectives) > 1 else 'params'} within the tolerance of the best.")


def summary_text(view: StudyView) -> str:
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(view.counts().items())) or "no trials yet"
    base = view.base
    size = f"{view.sampler}, {view.n_trials} trials" if view.mode == "budget" else f"{view.n_trials} settings"
    return (f"**Study #{view.id} · {view.name}** · {view.status} · {view.mode} ({size})"
            f" · objectives {', '.join(view.objectives)} · pruner {view.pruner}  \n"
            f"Trials: {counts}. Base run: model `{base['model']['name']}`, "
            f"data `{base['data'].get('task') or base['data'].get('train_file')}`, {base['train'].get('steps')} steps, "
            f"batch {base['train'].get('batch_size')}.")


def study_csv(view: StudyView) -> str:
    return export_csv(settings_frame(view), f"lamp-study-{view.id}.csv")


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
