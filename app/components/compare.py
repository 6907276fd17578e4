"""The Compare tab: pick finished jobs; cost and accuracy per job, accuracy against the knobs, the table behind
the charts and its CSV."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app import compare, monitor
from app.components.common import friendly
from jobs.models import Status


def build() -> gr.Dropdown:
    with gr.Row():
        picker = gr.Dropdown([], multiselect=True, label="Finished jobs", elem_id="compare-jobs", scale=4,
                             info="pick two or more; all succeeded jobs are listed")
        refresh = gr.Button("Reload list", scale=0, min_width=120)
        run = gr.Button("Compare", variant="primary", scale=0, min_width=120, elem_id="compare")
    cost = gr.Plot(label="Cost and accuracy", elem_id="compare-cost")
    knobs = gr.Plot(label="Accuracy against the knobs", elem_id="compare-knobs")
    table = gr.Dataframe(headers=compare.COLUMNS, label="The numbers behind the charts", interactive=False,
                         elem_id="compare-table", max_height=420)  # wrapping broke the headers letter by letter
    csv = gr.File(label="CSV", interactive=False, elem_id="compare-csv")

    # ---- events ----
    def choices() -> Any:
        return gr.update(choices=monitor.job_choices(Status.SUCCEEDED))

    @friendly
    def on_compare(ids: list[int] | None) -> list[Any]:
        frame = compare.compare_frame(ids or [])
        if frame.empty:  # an empty state that says what to do, not four error badges
            hint = compare.empty_figure("Pick two or more succeeded jobs above, then Compare.")
            return [hint, compare.empty_figure("(the knobs chart follows)"), frame, None]
        shown = frame.assign(model=frame["model"].map(lambda m: monitor.model_name(str(m))))  # the CSV keeps paths
        return [compare.cost_figure(frame), compare.knob_figure(frame), shown, compare.compare_csv(frame)]

    refresh.click(choices, None, picker)
    run.click(on_compare, picker, [cost, knobs, table, csv])
    return picker
