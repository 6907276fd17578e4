"""The Jobs tab: every job with status, progress and key figures; one job's live curves, error, cancel, retry and
downloads. A timer polls the store; the page only redraws what changed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from app import monitor
from app.components import inspection
from app.components.common import friendly, keep_in_url

POLL_SECONDS = 2.0


def job_from_url(request: gr.Request | None) -> int | None:
    """The job named by `?job=N` in the page's address, if any."""
    raw = dict(request.query_params).get("job") if request is not None else None
    return int(raw) if raw and str(raw).isdigit() else None


@dataclass
class JobsTab:
    job_id: gr.Number
    table: gr.Dataframe
    timer: gr.Timer
    refresh: Callable[[float | None], list[Any]]
    """Fills the tab at once (on page load, before the first timer tick)."""
    outputs: list[Any]


def build() -> JobsTab:
    with gr.Row():
        gr.Markdown("Click a row to follow that job. The list and the curves refresh every "
                    f"{POLL_SECONDS:g} s from the store; reloading the page loses nothing.")
        refresh = gr.Button("Refresh", scale=0, min_width=100)
    table = gr.Dataframe(None, headers=monitor.JOB_COLUMNS, interactive=False, max_height=300, wrap=True,
                         pinned_columns=2, max_chars=60, elem_id="jobs-table", label="Jobs")
    with gr.Row():
        job_id = gr.Number(label="Job", precision=0, value=None, scale=0, min_width=120, elem_id="job-id")
        cancel = gr.Button("Cancel", variant="stop", interactive=False, elem_id="cancel", scale=0)
        retry = gr.Button("Retry", interactive=False, elem_id="retry", scale=0)
        get_artifact = gr.Button("Artifact (.zip)", interactive=False, elem_id="download-artifact", scale=0)
        get_peft = gr.Button("PEFT adapter (.zip)", interactive=False, elem_id="download-peft", scale=0)
        action = gr.Markdown(elem_id="job-action")
    download = gr.File(label="Download", visible=False, elem_id="download", interactive=False)
    details = gr.Markdown(monitor.job_details(None).markdown, elem_id="job-details")
    error = gr.Textbox(label="Error", lines=6, visible=False, elem_id="job-error", interactive=False)
    plot = gr.Plot(monitor.curve_figure(None), label="Training curves", elem_id="job-curves")
    inspection.build(job_id)  # on demand only: the poll below never computes it
    seen = gr.State(None)
    timer = gr.Timer(POLL_SECONDS)

    # ---- events ----
    def poll(job: float | None, last: Any) -> list[Any]:
        jid = int(job) if job else None  # ids start at 1; an empty box reads as 0
        frame = monitor.jobs_frame()
        info = monitor.job_details(jid)
        signature = (jid, info.signature, frame.to_json())
        if signature == last:
            return [gr.skip()] * 9
        same_curves = isinstance(last, tuple) and last[:2] == signature[:2]
        return [frame, info.markdown, gr.update(value=info.error, visible=bool(info.error)),
                gr.skip() if same_curves else monitor.curve_figure(jid), gr.update(interactive=info.can_cancel),
                gr.update(interactive=info.can_retry), gr.update(interactive=info.can_download),
                gr.update(interactive=info.can_download), signature]

    outputs = [table, details, error, plot, cancel, retry, get_artifact, get_peft, seen]
    timer.tick(poll, [job_id, seen], outputs, show_progress="hidden")
    refresh.click(lambda job: poll(job, None), job_id, outputs)
    job_id.change(lambda job: poll(job, None), job_id, outputs, show_progress="hidden")
    # The followed job goes into the address (?job=N): a reload, a bookmark or a shared link opens it again.
    job_id.change(None, job_id, None, js=keep_in_url("job"))

    def pick(frame: pd.DataFrame, evt: gr.SelectData) -> Any:
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        return int(frame.iloc[int(row)]["ID"])

    table.select(pick, table, job_id)

    @friendly
    def on_cancel(job: float) -> str:
        return monitor.cancel_job(int(job))

    @friendly
    def on_retry(job: float) -> tuple[str, int]:
        new_id = monitor.retry_job(int(job))
        return f"Job {int(job)} queued again as job **{new_id}**", new_id

    @friendly
    def on_download(job: float, kind: str) -> Any:
        path = monitor.artifact_zip(int(job)) if kind == "artifact" else monitor.peft_zip(int(job))
        return gr.update(value=str(path), visible=True), f"{path.name} is ready below"

    cancel.click(on_cancel, job_id, action)
    retry.click(on_retry, job_id, [action, job_id])
    get_artifact.click(lambda job: on_download(job, "artifact"), job_id, [download, action])
    get_peft.click(lambda job: on_download(job, "peft"), job_id, [download, action])
    return JobsTab(job_id=job_id, table=table, timer=timer, refresh=lambda job: poll(job, None), outputs=outputs)
