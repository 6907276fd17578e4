"""The Jobs tab's "Inside the prompt" section: computed only when asked (a button), never on the 2-s poll."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app import inspection
from app.components.common import friendly

HINT = "Pick a succeeded job, then press **Inspect** (a few seconds the first time; cached per job afterwards)."


def build(job_id: gr.Number) -> None:
    with gr.Accordion("Inside the prompt", open=False, elem_id="inside-prompt"):
        gr.Markdown("Each vector the model reads, as its nearest vocabulary tokens at initialisation and trained; "
                    "its norm beside the vocabulary's; LAMP's Q over training; C before pooling; and how far the "
                    "prompt moved from where it started.")
        with gr.Row():
            run = gr.Button("Inspect", elem_id="inspect", scale=0, min_width=120)
            top_k = gr.Number(5, label="Nearest tokens per vector", precision=0, minimum=1, maximum=50, scale=0,
                              min_width=180, elem_id="inspect-top-k")
        summary = gr.Markdown(HINT, elem_id="inspect-summary")
        table = gr.Dataframe(None, headers=inspection.NEAREST_COLUMNS, interactive=False, max_height=320,
                             wrap=True, elem_id="inspect-tokens", label="Nearest vocabulary tokens (cosine)",
                             column_widths=["8%", "10%", "10%", "36%", "36%"])
        with gr.Row():
            norms = gr.Plot(elem_id="inspect-norms", show_label=False)
            drift = gr.Plot(elem_id="inspect-drift", show_label=False)
        with gr.Row():
            q = gr.Plot(elem_id="inspect-q", show_label=False)
            heat = gr.Plot(elem_id="inspect-heatmap", show_label=False)

    # ---- events ----
    outputs = [summary, table, norms, q, heat, drift]

    @friendly
    def on_inspect(job: float | None, k: float | None) -> tuple[Any, ...]:
        if not job:
            return (HINT, None, None, None, None, None)
        return inspection.inside_prompt(int(job), int(k or 5))

    def clear() -> tuple[Any, ...]:
        return (HINT, None, None, None, None, None)

    run.click(on_inspect, [job_id, top_k], outputs, concurrency_limit=1)
    job_id.change(clear, None, outputs, show_progress="hidden", queue=False)
