"""The Playground: one input, the tuned prompts of several finished jobs beside the bare model."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app import monitor, playground
from app.components.common import friendly
from app.settings import ServeSettings
from jobs.models import Status


def build(settings: ServeSettings) -> gr.Dropdown:
    with gr.Row():
        picker = gr.Dropdown([], multiselect=True, label="Tuned prompts (finished jobs)", scale=4,
                             elem_id="playground-jobs", max_choices=playground.MAX_JOBS,
                             info=f"up to {playground.MAX_JOBS}; each answers beside the bare model")
        refresh = gr.Button("Reload list", scale=0, min_width=120)
    text = gr.Textbox(label="Input", lines=3, elem_id="playground-input",
                      placeholder="e.g. a film review, for a Rotten Tomatoes prompt")
    ask = gr.Button("Ask", variant="primary", elem_id="ask", scale=0, min_width=160)
    note = gr.Markdown(elem_id="playground-note")
    answers = gr.Dataframe(headers=list(playground.ANSWER_COLUMNS), label="Answers", interactive=False,
                           elem_id="playground-answers", wrap=True)
    scores = gr.Plot(label="Label scores", elem_id="playground-scores")

    # ---- events ----
    def choices() -> Any:
        return gr.update(choices=monitor.job_choices(Status.SUCCEEDED))

    @friendly
    def on_ask(ids: list[int] | None, prompt: str) -> list[Any]:
        table, fig = playground.ask(ids or [], prompt, device=settings.playground_device)
        return [table, fig, ""]

    def on_note(ids: list[int] | None, prompt: str) -> str:
        return playground.loading_note(ids or []) if ids and prompt and prompt.strip() else ""

    refresh.click(choices, None, picker)
    gr.on([ask.click, text.submit], on_note, [picker, text], note, queue=False).then(
        on_ask, [picker, text], [answers, scores, note], concurrency_limit=2)
    return picker
