"""The Study tab: launch a sweep (grid or budget) over method, length, rank, pool, lr and seeds; follow it; read
its Pareto charts, tables and recommendation; cancel it or relaunch the recommendation on a larger budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from app import study as handlers
from app.components.common import access_for, friendly, keep_in_url, warn
from app.forms import FormError
from app.settings import ServeSettings
from core.errors import ConfigError
from core.methods import METHODS
from core.tasks import BUILTIN_TASKS
from jobs.errors import StudyNotFound
from jobs.studies.conduct import cancel_study, relaunch
from jobs.studies.plan import COST_LABELS, COSTS
from jobs.studies.report import TRIAL_COLUMNS
from jobs.studies.views import study_view

POLL_SECONDS = 3.0
INFO = {
    "name": "to find it again", "model": "`default`, a hub id, or a folder this server offers", "task": "built-in task",
    "steps": "per trial; short trials rank settings, the relaunch trains the winner longer",
    "batch_size": "per trial", "max_length": "tokens of input", "eval_every": "steps between validations: "
    "the pruner's checkpoints", "max_eval_examples": "validation examples per evaluation",
    "max_test_examples": "test examples each trial scores (empty: all; Relaunch scores the whole split)",
    "device": "auto, cpu, cuda", "methods": "each is tried with every value below that applies to it",
    "lengths": "soft prompt tokens l, e.g. 20, 100", "ranks": "r, e.g. 4, 8, 16 (LAMP and DPT)",
    "pools": "p, e.g. 1, 4 (LAMP)", "lrs": "e.g. 0.003, 0.01, 0.03; empty = each method's measured default",
    "seeds": "several seeds give each setting a mean and a spread", "mode": "grid: every combination; budget: N "
    "trials picked by a multi-objective sampler", "trials": "budget mode", "sampler": "budget mode",
    "objectives": "costs to weigh accuracy against (the first one picks the recommendation)",
    "pruner": "median: stop a trial whose validation score is below the median of earlier trials at that step",
    "parallel": "trials queued at once (empty: the whole grid, 2 for a budget)",
    "tolerance": "recommend the cheapest setting within this many accuracy points of the best",
}


@dataclass
class StudyTab:
    study_id: gr.Dropdown
    refresh: Any
    outputs: list[Any]


def _field_updates(problems: dict[str, str]) -> list[Any]:
    return [gr.update(info=warn(problems[name]) if name in problems else INFO[name],
                      elem_classes=["lamp-field-error"] if name in problems else [])
            for name in handlers.STUDY_FIELDS]


def build(settings: ServeSettings) -> StudyTab:
    d = handlers.STUDY_DEFAULTS
    c: dict[str, Any] = {}
    with gr.Accordion("New study", open=True, elem_id="new-study"):
        gr.Markdown("Sweep the knobs on one model and task. Every trial is an ordinary job (see the Jobs tab); the "
                    "charts below fill in as trials finish.")
        with gr.Row():
            c["name"] = gr.Textbox(d["name"], label="Study name", info=INFO["name"], elem_id="study-name")
            c["model"] = gr.Textbox(d["model"], label="Model", info=INFO["model"], elem_id="study-model")
            c["task"] = gr.Dropdown(list(BUILTIN_TASKS), value=d["task"], label="Task", info=INFO["task"],
                                    elem_id="study-task")
        with gr.Row():
            c["methods"] = gr.CheckboxGroup(list(METHODS), value=d["methods"], label="Methods",
                                            info=INFO["methods"], elem_id="study-methods")
            c["lengths"] = gr.Textbox(d["lengths"], label="Lengths", info=INFO["lengths"], elem_id="study-lengths")
            c["ranks"] = gr.Textbox(d["ranks"], label="Ranks", info=INFO["ranks"], elem_id="study-ranks")
            c["pools"] = gr.Textbox(d["pools"], label="Pools", info=INFO["pools"], elem_id="study-pools")
            c["lrs"] = gr.Textbox(d["lrs"], label="Learning rates", info=INFO["lrs"], elem_id="study-lrs",
                                  placeholder="default")
            c["seeds"] = gr.Textbox(d["seeds"], label="Seeds", info=INFO["seeds"], elem_id="study-seeds")
        with gr.Row():
            c["steps"] = gr.Number(d["steps"], label="Steps per trial", precision=0, info=INFO["steps"],
                                   elem_id="study-steps")
            c["batch_size"] = gr.Number(d["batch_size"], label="Batch size", precision=0, info=INFO["batch_size"],
                                        elem_id="study-batch-size")
            c["max_length"] = gr.Number(d["max_length"], label="Max length", precision=0, info=INFO["max_length"],
                                        elem_id="study-max-length")
            c["eval_every"] = gr.Number(d["eval_every"], label="Evaluate every", precision=0,
                                        info=INFO["eval_every"], elem_id="study-eval-every")
            c["max_eval_examples"] = gr.Number(d["max_eval_examples"], label="Validation examples", precision=0,
                                               info=INFO["max_eval_examples"], elem_id="study-max-eval")
            c["max_test_examples"] = gr.Number(d["max_test_examples"], label="Test examples", precision=0,
                                               info=INFO["max_test_examples"], elem_id="study-max-test")
            c["device"] = gr.Dropdown(["auto", "cpu", "cuda"], value=d["device"], label="Device",
                                      info=INFO["device"], allow_custom_value=True, elem_id="study-device")
        with gr.Row():
            c["mode"] = gr.Radio(["grid", "budget"], value=d["mode"], label="Search", info=INFO["mode"],
                                 elem_id="study-mode")
            c["trials"] = gr.Number(d["trials"], label="Trials", precision=0, info=INFO["trials"],
                                    elem_id="study-trials", interactive=False)
            c["sampler"] = gr.Dropdown(["tpe", "nsga2", "random"], value=d["sampler"], label="Sampler",
                                       info=INFO["sampler"], elem_id="study-sampler", interactive=False)
            c["objectives"] = gr.CheckboxGroup([(COST_LABELS[k], k) for k in COSTS], value=d["objectives"],
                                               label="Costs", info=INFO["objectives"], elem_id="study-objectives")
            c["pruner"] = gr.Radio(["median", "none"], value=d["pruner"], label="Pruner", info=INFO["pruner"],
                                   elem_id="study-pruner")
            c["parallel"] = gr.Textbox("", label="Parallel", info=INFO["parallel"], elem_id="study-parallel",
                                       placeholder="all / 2")
            c["tolerance"] = gr.Number(d["tolerance"], label="Tolerance (points)", info=INFO["tolerance"],
                                       elem_id="study-tolerance")
        plan_note = gr.Markdown(elem_id="study-plan")
        with gr.Row():
            launch = gr.Button("Launch study", variant="primary", elem_id="launch-study", scale=0, min_width=160)
            launched = gr.Markdown(elem_id="study-launched")
    with gr.Row():
        picker = gr.Dropdown([], value=None, label="Study", elem_id="study-picker", scale=4)
        refresh = gr.Button("Refresh", scale=0, min_width=100, elem_id="study-refresh")
        cancel = gr.Button("Cancel study", variant="stop", scale=0, min_width=130, elem_id="cancel-study",
                           interactive=False)
    summary = gr.Markdown("Pick a study, or launch one above.", elem_id="study-summary")
    with gr.Row():
        recommendation = gr.Markdown(elem_id="study-recommendation")
        relaunch_steps = gr.Textbox("", label="Relaunch with steps", scale=0, min_width=160, placeholder="4x",
                                   elem_id="relaunch-steps", info="empty: 4x the study's")
        relaunch_btn = gr.Button("Relaunch recommended", scale=0, min_width=190, elem_id="relaunch",
                                 interactive=False)
    action = gr.Markdown(elem_id="study-action")
    # One under the other, full width: three side by side squeeze their axes unreadable.
    plots = [gr.Plot(label=f"Accuracy against {COST_LABELS[cost]}", elem_id=f"pareto-{cost}") for cost in COSTS]
    settings_table = gr.Dataframe(headers=list(handlers.SETTINGS_COLUMNS), interactive=False,
                                  label="Settings (mean and spread over seeds; front_* = on that Pareto front)",
                                  elem_id="study-settings", max_height=320)
    trials_table = gr.Dataframe(headers=list(TRIAL_COLUMNS), interactive=False, label="Trials (each one a job)",
                                elem_id="study-trials-table", max_height=320, wrap=True)
    csv = gr.File(label="Settings table (CSV)", interactive=False, elem_id="study-csv")
    seen = gr.State(None)
    timer = gr.Timer(POLL_SECONDS)

    # ---- events ----
    inputs = [c[name] for name in handlers.STUDY_FIELDS]

    def values_of(args: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(handlers.STUDY_FIELDS, args, strict=True))

    def on_plan(request: gr.Request, *args: Any) -> list[Any]:
        try:
            plan = handlers.plan_from_form(values_of(args), access_for(settings, request))
        except FormError as exc:
            return [*_field_updates(exc.problems), f"{len(exc.problems)} problem(s) to fix before launching"]
        return [*_field_updates({}), handlers.plan_text(plan)]

    def on_launch(request: gr.Request, *args: Any) -> list[Any]:
        try:
            plan = handlers.plan_from_form(values_of(args), access_for(settings, request))
            study = handlers.launch(plan)
        except FormError as exc:
            return [*_field_updates(exc.problems), gr.skip(), warn(f"{len(exc.problems)} problem(s) to fix"),
                    gr.skip()]
        return [*_field_updates({}), gr.update(choices=handlers.study_choices(), value=study),
                f"Study **#{study}** launched", gr.skip()]

    for name in handlers.STUDY_FIELDS:  # every field: the preview's steps and time follow the form
        c[name].change(on_plan, inputs, [*inputs, plan_note], show_progress="hidden",
                       api_name="study_plan" if name == "methods" else None, trigger_mode="always_last")
    launch.click(on_launch, inputs, [*inputs, picker, launched, plan_note], api_name="study_launch")
    # Trials and sampler only mean something for a budget.
    c["mode"].change(lambda mode: [gr.update(interactive=mode == "budget")] * 2, c["mode"],
                     [c["trials"], c["sampler"]])

    def show(study: Any, last: Any, request: gr.Request | None = None) -> list[Any]:
        sid = int(study) if study not in (None, "") else None
        if sid is None:
            return [gr.skip()] * (len(outputs) - 1) + [None]
        try:
            view = study_view(sid)  # reads only: the worker advances the study
        except StudyNotFound:
            missing = ("missing", sid)
            if last == missing:
                return [gr.skip()] * len(outputs)
            return [f"No study {sid}; pick one from the list.", "", *[None] * len(plots), None, None, None,
                    gr.update(interactive=False), gr.update(interactive=False), missing]
        signature = (sid, view.status, tuple((t.number, t.state, t.step, t.accuracy) for t in view.trials))
        if signature == last:
            return [gr.skip()] * len(outputs)
        return [handlers.summary_text(view), handlers.recommendation_text(view),
                *handlers.pareto_figures(view, handlers.page_base(request)),
                handlers.settings_frame(view), handlers.trials_frame(view),
                handlers.study_csv(view), gr.update(interactive=view.status == "RUNNING"),
                gr.update(interactive=view.recommendation is not None), signature]

    outputs = [summary, recommendation, *plots, settings_table, trials_table, csv, cancel, relaunch_btn, seen]

    def tick(study: Any, last: Any, request: gr.Request) -> list[Any]:
        # A finished study no longer changes: no store or Optuna reads every 3 s for it.
        if (isinstance(last, tuple) and last[1] in ("DONE", "CANCELLED") and study not in (None, "")
                and last[0] == int(study) and not any(t[1] in ("QUEUED", "RUNNING") for t in last[2])):
            return [gr.skip()] * len(outputs)
        return show(study, last, request)

    def show_now(study: Any, request: gr.Request) -> list[Any]:
        return show(study, None, request)

    timer.tick(tick, [picker, seen], outputs, show_progress="hidden")
    picker.change(show_now, picker, outputs, show_progress="hidden")
    picker.change(None, picker, None, js=keep_in_url("study"))
    def reload(study: Any, request: gr.Request) -> list[Any]:
        return [gr.update(choices=handlers.study_choices()), *show(study, None, request)]

    refresh.click(reload, picker, [picker, *outputs])

    @friendly
    def on_cancel(study: Any) -> str:
        n = cancel_study(int(study))
        return f"Study #{int(study)} cancelled; {n} queued or running job(s) asked to stop"

    @friendly
    def on_relaunch(study: Any, steps: Any) -> str:
        text = str(steps or "").strip()
        if text and not text.isdigit():
            raise ConfigError(f"steps: {text!r} is not a whole number")
        job = relaunch(int(study), steps=int(text) if text else None)
        return f"The recommended setting is queued as [job {job}](?job={job}) (see the Jobs tab)"

    cancel.click(on_cancel, picker, action).then(show_now, picker, outputs)
    relaunch_btn.click(on_relaunch, [picker, relaunch_steps], action)
    return StudyTab(study_id=picker, refresh=show_now, outputs=outputs)


def study_from_url(request: gr.Request | None) -> Any:
    """`?study=N` in the address: the study to open, with the list of studies."""
    raw = dict(request.query_params).get("study") if request is not None else None
    choices = handlers.study_choices()
    value = int(raw) if raw and str(raw).isdigit() else None
    return gr.update(choices=choices, value=value if value in [c[1] for c in choices] else None)



def study_choices_update() -> Any:
    return gr.update(choices=handlers.study_choices())
