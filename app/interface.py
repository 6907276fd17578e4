"""Assembles the dashboard's tabs into one page."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app import monitor
from app.components import compare, jobs, new_job, playground, study
from app.components.common import guard_handlers
from app.settings import ServeSettings
from jobs.models import Status

CSS = """
.lamp-field-error [data-testid="block-info"], .lamp-error p { color: #b91c1c !important; font-weight: 600; }
.lamp-field-error input, .lamp-field-error textarea { border-color: #b91c1c !important; }
"""
TITLE = "LAMP Studio"


def open_tab_from_url(request: gr.Request | None) -> Any:
    query = dict(request.query_params) if request is not None else {}
    if query.get("study"):
        return gr.Tabs(selected="study")
    if query.get("job"):
        return gr.Tabs(selected="jobs")
    return gr.skip()


def build_ui(settings: ServeSettings | None = None) -> gr.Blocks:
    settings = settings or ServeSettings()
    with gr.Blocks(title=TITLE, analytics_enabled=False) as ui:
        gr.Markdown(f"## {TITLE} · prompt tuning of frozen language models with LAMP")
        with gr.Tabs(selected="new") as tabs:
            with gr.Tab("New job", id="new", elem_id="tab-new"):
                form = new_job.build(settings)
            with gr.Tab("Jobs", id="jobs", elem_id="tab-jobs"):
                board = jobs.build()
            with gr.Tab("Compare", id="compare", elem_id="tab-compare") as compare_tab:
                compare_picker = compare.build()
            with gr.Tab("Playground", id="playground", elem_id="tab-playground") as play_tab:
                play_picker = playground.build(settings)
            with gr.Tab("Study", id="study", elem_id="tab-study") as study_tab:
                sweep = study.build(settings)

        # A launched job opens in the Jobs tab.
        def follow(job_id: float | None) -> list[Any]:
            if job_id in (None, ""):
                return [gr.skip(), gr.skip()]
            return [gr.Tabs(selected="jobs"), int(job_id)]

        form.submitted.change(follow, form.submitted, [tabs, board.job_id])

        def succeeded() -> Any:
            return gr.update(choices=monitor.job_choices(Status.SUCCEEDED))

        compare_tab.select(succeeded, None, compare_picker)
        play_tab.select(succeeded, None, play_picker)
        ui.load(lambda: [succeeded(), succeeded()], None, [compare_picker, play_picker])
        ui.load(jobs.job_from_url, None, board.job_id).then(board.refresh, board.job_id, board.outputs)
        # A link with ?job=N (a Pareto point, a shared address) opens the Jobs tab; ?study=N the Study tab.
        ui.load(open_tab_from_url, None, tabs)
        ui.load(study.study_from_url, None, sweep.study_id)
        study_tab.select(lambda: study.study_choices_update(), None, sweep.study_id)
    guard_handlers(ui)  # no raw exception text reaches the page
    return ui
