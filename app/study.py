"""The Study tab as plain functions: form -> StudyPlan (each problem beside its field), what launching it will do,
the summary, the recommendation and the CSV. The tables and charts come from jobs.studies.report, which
`lamp study show` shares."""

from __future__ import annotations

import math
from typing import Any

from app.access import Access
from app.forms import DEFAULTS, FormError, form_words, spec_from_form
from app.settings import export_csv
from core.errors import ConfigError, LampError
from core.spec import DEFAULT_STEPS, DataConfig, RunSpec
from jobs.db import read
from jobs.store import list_studies
from jobs.studies.plan import COSTS, StudyPlan, check_plan, describe, parse_list
from jobs.studies.report import (
    DEFAULT_LINK_BASE,
    SETTINGS_COLUMNS,
    pareto_figure,
    pareto_figures,
    settings_frame,
    trials_frame,
)
from jobs.studies.views import StudyView

__all__ = ["SETTINGS_COLUMNS", "pareto_figure", "pareto_figures", "settings_frame", "trials_frame"]

# The study form's inputs, in the order the handlers receive them.
STUDY_FIELDS = (
    "name", "model", "task", "steps", "batch_size", "max_length", "eval_every", "max_eval_examples", "device",
    "max_test_examples", "methods", "lengths", "ranks", "pools", "lrs", "seeds", "mode", "trials", "sampler",
    "objectives", "pruner", "parallel", "tolerance",
)
_PLAN = StudyPlan(name="", base=RunSpec(), space={})
"""A plan's own defaults (jobs.studies.plan); the study form starts from them and from the run's."""
STUDY_DEFAULTS: dict[str, Any] = {
    "name": "", "model": DEFAULTS["model"], "task": DEFAULTS["task"], "steps": 40, "batch_size": 8,
    "max_length": DEFAULTS["max_length"], "eval_every": 20, "max_eval_examples": DataConfig.max_eval_examples,
    "device": DEFAULTS["device"], "max_test_examples": 200, "methods": [DEFAULTS["method"]], "lengths": "20, 100",
    "ranks": "4, 8",
    "pools": "1, 4", "lrs": "", "seeds": str(DEFAULTS["seed"]), "mode": _PLAN.mode, "trials": 8,
    "sampler": _PLAN.sampler, "objectives": list(_PLAN.objectives[1:]), "pruner": _PLAN.pruner, "parallel": "",
    "tolerance": _PLAN.tolerance * 100,
}
"""Short trials (40 steps, batch 8) over a small grid: a study ranks settings, a relaunch trains the winner."""
# Form fields of the base run (app.forms) -> the study form's field that shows their problems.
_BASE_FIELD = {"method": "methods", "length": "lengths", "rank": "ranks", "pool": "pools", "lr": "lrs",
               "seed": "seeds"}
SWEEPS = {"methods": ("method", str), "lengths": ("length", int), "ranks": ("rank", int), "pools": ("pool", int),
          "lrs": ("lr", float), "seeds": ("seed", int)}
# A plan's problems by setting (jobs.studies.plan: a swept knob, `space`, or the plan's own) -> the field to change;
# the plan's own settings and the base run's that the form shows keep their names, the rest go beside the name.
_PLAN_FIELD = {**{knob: name for name, (knob, _) in SWEEPS.items()}, "space": "ranks"}


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

        max_eval, max_test = values.get("max_eval_examples"), values.get("max_test_examples")
        if max_eval not in (None, ""):
            base = replace(base, data=replace(base.data, max_eval_examples=int(max_eval)))
        if max_test not in (None, ""):  # trials score a sample of the test split; the relaunch scores it all
            base = replace(base, data=replace(base.data, max_test_examples=int(max_test)))
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
        tolerance=float(tolerance) / 100 if tolerance not in (None, "") else _PLAN.tolerance)
    try:
        return check_plan(plan)
    except ConfigError as exc:
        found: dict[str, str] = {}
        for setting, message in exc.problems:
            key = _PLAN_FIELD.get(setting or "", setting if setting in STUDY_FIELDS else "name")
            message = form_words(message)
            found[key] = f"{found[key]}; {message}" if key in found else message
        raise FormError(found) from exc


def plan_text(plan: StudyPlan) -> str:
    """What launching this plan will do, shown as the form changes."""
    from jobs.studies.plan import distinct_settings

    settings, dropped = distinct_settings(plan.base, plan.space)
    skipped = math.prod(len(v) for v in plan.space.values()) - len(settings)
    what = (f"a grid of **{len(settings)}** distinct runs" if plan.mode == "grid"
            else f"**{plan.n_trials}** trials chosen by {plan.sampler} among {len(settings)} distinct runs")
    why = f" ({skipped} combination(s) skipped as duplicates or invalid: {sorted(set(dropped))[0]})" if dropped else (
        f" ({skipped} duplicate combination(s) skipped)" if skipped else "")
    runs = len(settings) if plan.mode == "grid" else min(plan.n_trials or 0, len(settings))
    return (f"Launching starts {what}{why}, {plan.parallel} queued at a time, each "
            f"{plan.base.train.steps or DEFAULT_STEPS} steps; objectives {', '.join(plan.objectives)}. "
            f"{plan_time(plan, settings, runs)}")


def plan_time(plan: StudyPlan, settings: list[dict[str, Any]], runs: int) -> str:
    """The study's training time from earlier jobs on this model and data (as the New job form's estimate), summed
    over its runs; said plainly when there is no history to go on."""
    import json

    from app.forms import _widths
    from core.estimate import estimate
    from core.spec import spec_to_dict
    from jobs.estimates import timed_from_history
    from jobs.studies.plan import setting_spec

    if not settings or not runs:
        return ""
    try:
        widths = _widths(("study", plan.base.model.name, str(plan.base.data)), json.dumps(spec_to_dict(plan.base)))
        seconds = []
        for setting in settings[:runs]:
            spec = setting_spec(plan.base, setting)
            est = timed_from_history(spec, widths, estimate(spec, widths))
            if est.run_seconds is None:
                return "Time: no earlier job on this model and data to estimate from."
            seconds.append(est.run_seconds)
    except (LampError, OSError):
        return "Time: cannot estimate here."
    total = sum(seconds) * runs / len(seconds)
    return (f"Training time ≈ **{total / 60:.0f} min** in all ({total / runs / 60:.1f} min a run, from earlier "
            f"jobs; evaluation not included), less with several workers.")


def launch(plan: StudyPlan) -> int:
    from jobs.studies.conduct import create_study

    return create_study(plan)


def study_choices(limit: int = 100) -> list[tuple[str, int]]:
    return [(f"#{s.id} {s.name} · {s.status.lower()} · {s.mode}", s.id) for s in read(list_studies, limit=limit)]


def page_base(request: Any) -> str:
    """The dashboard's own address as the browser sees it (links in plotly charts must be absolute: plotly drops
    relative hrefs)."""
    headers = dict(request.headers) if request is not None else {}
    referer = str(headers.get("referer") or "")
    if referer.startswith(("http://", "https://")):
        return referer.split("?", 1)[0].split("#", 1)[0]
    origin = str(headers.get("origin") or "")
    return f"{origin}/" if origin.startswith(("http://", "https://")) else DEFAULT_LINK_BASE


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
