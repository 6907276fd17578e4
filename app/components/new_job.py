"""The New job tab: model, task or uploaded data, method and knobs, training settings; live parameter count;
problems shown beside the field at fault; Launch puts the job on the queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from app import forms
from app.access import data_dir_choices
from app.components.common import access_for, friendly, warn
from app.settings import ServeSettings
from app.uploads import accept_upload, guess_columns
from core.errors import DataError, LampError, StorageError
from core.methods import METHODS
from core.spec import DEFAULT_METHOD, recipe_words
from core.tasks import BUILTIN_TASKS

INFO = {
    "model": "`default` (the offline SmolLM2-135M-Instruct), a hub id, or a folder this server offers",
    "dtype": "of the frozen backbone; the prompt trains in float32",
    "quantize": "4bit = bitsandbytes NF4 (CUDA workers only)",
    "task": "built-in tasks; GLUE/SuperGLUE ones need the hub or a local copy",
    "text_column": "the model's input",
    "template": "instead of a text column, e.g. `question: {question} passage: {passage}`",
    "label_column": "the answer: label words (classification) or free text (generation)",
    "kind": "auto: classification when the label column has few distinct values",
    "strict": "refuse the file for one row with an empty input or label (off: such rows are skipped and reported)",
    "method": "LAMP (Lan et al. 2025) or a baseline: vanilla prompt tuning, DPT, Residual PT, ULPT, DePT "
              "(README, Methods)",
    "length": "l: soft-prompt tokens before pooling",
    "rank": "r: rank kept from the SVD (LAMP), of A·B (DPT, DePT's offset), or ULPT's learned dimension",
    "pool": "p: LAMP averages blocks of p tokens; the model sees l/p",
    "bottleneck": "m: Residual PT's hidden width (the paper's 400)",
    "positions": "s: input tokens DePT's offset covers (DePT's 256, the default max length)",
    "pair_lr": "DePT trains its offset A·B at this multiple of the learning rate",
    "steps": "optimizer steps",
    "batch_size": "examples per step (the paper: 16)",
    "lr": f"learning rate; empty = the measured default ({recipe_words(DEFAULT_METHOD)})",
    "lr_scaling": "relative: each trained tensor's rate is the learning rate times its starting RMS; absolute: one "
                  "rate for all",
    "prompt_init": "text: the prompt starts from the task's words (an instruction with the label words); vocab: "
                   "from sampled common tokens",
    "weight_decay": "AdamW weight decay (the paper: 1e-5)",
    "max_length": "longest input in tokens, prompt excluded (the paper: 256)",
    "eval_every": "steps between evaluations (also the checkpoint cadence, at most 25)",
    "max_test_examples": "test examples scored at the end (empty: the whole split)",
    "seed": "same seed, same data order and init: runs repeat on the CPU",
    "device": "auto: the worker's device",
    "max_attempts": "runs after a crash or a dead worker before the job fails",
    "init_from": "warm start from a succeeded job's prompt (pick one or type its id): same prompt length, a model "
                 "of the same hidden size",
    "data_dir": "a local copy of the task's data among the folders this server offers; empty: the hub",
}


@dataclass
class NewJobTab:
    inputs: dict[str, Any]
    submit: gr.Button
    result: gr.Markdown
    submitted: gr.Number


def _field_updates(problems: dict[str, str]) -> list[Any]:
    return [gr.update(info=warn(problems[name]) if name in problems else INFO[name],
                      elem_classes=["lamp-field-error"] if name in problems else [])
            for name in INFO]


def build(settings: ServeSettings) -> NewJobTab:
    d = forms.DEFAULTS
    with gr.Row():
        preset = gr.Dropdown(list(forms.PRESETS), value=None, label="Preset", scale=1, elem_id="preset",
                             info="fills the form; change anything afterwards")
        preset_note = gr.Markdown(elem_id="preset-note")
    with gr.Row(equal_height=False):
        with gr.Column(variant="panel"):
            gr.Markdown("#### Model")
            c: dict[str, Any] = {}
            c["model"] = gr.Textbox(d["model"], label="Model", info=INFO["model"], elem_id="field-model")
            with gr.Row():
                c["dtype"] = gr.Dropdown(["float32", "bfloat16", "float16"], value=d["dtype"], label="dtype",
                                         info=INFO["dtype"], elem_id="field-dtype")
                c["quantize"] = gr.Dropdown(["none", "4bit"], value=d["quantize"], label="Quantize",
                                            info=INFO["quantize"], elem_id="field-quantize")
            gr.Markdown("#### Method")
            c["method"] = gr.Radio(list(METHODS), value=d["method"], label="Method", info=INFO["method"],
                                   elem_id="field-method")
            with gr.Row():
                c["length"] = gr.Number(d["length"], label="Prompt length", precision=0, info=INFO["length"],
                                        elem_id="field-length")
                c["rank"] = gr.Number(d["rank"], label="Rank", precision=0, info=INFO["rank"], elem_id="field-rank")
                c["pool"] = gr.Number(d["pool"], label="Pool", precision=0, info=INFO["pool"], elem_id="field-pool")
                c["bottleneck"] = gr.Number(d["bottleneck"], label="Bottleneck", precision=0, info=INFO["bottleneck"],
                                            elem_id="field-bottleneck", visible=False)
                c["positions"] = gr.Number(d["positions"], label="Offset positions", precision=0,
                                           info=INFO["positions"], elem_id="field-positions", visible=False)
                c["pair_lr"] = gr.Number(d["pair_lr"], label="Offset rate (x lr)", info=INFO["pair_lr"],
                                         elem_id="field-pair-lr", visible=False)
            c["init_from"] = gr.Dropdown([], value=None, label="Start from job (optional)", info=INFO["init_from"],
                                         allow_custom_value=True, elem_id="field-init-from")
            params = gr.Markdown(forms.param_summary(d["model"], d["method"], d["length"], d["rank"], d["pool"]),
                                 elem_id="param-count")
            cost = gr.Markdown("**Cost:** press Estimate, or change a knob.", elem_id="cost-estimate")
            estimate = gr.Button("Estimate cost", size="sm", elem_id="estimate", scale=0)
        with gr.Column(variant="panel"):
            gr.Markdown("#### Data")
            c["source"] = gr.Radio(list(forms.SOURCES), value=d["source"], label="Data", show_label=False,
                                   elem_id="field-source")
            c["task"] = gr.Dropdown(list(BUILTIN_TASKS), value=d["task"], label="Built-in task", info=INFO["task"],
                                    elem_id="field-task")
            offered = data_dir_choices(settings.allowed_dirs)
            c["data_dir"] = gr.Dropdown([("the hub", ""), *offered], value="", label="Data folder (optional)",
                                        info=INFO["data_dir"], elem_id="field-data-dir", visible=bool(offered))
            upload = gr.File(label=f"Your data: CSV, TSV, JSONL, JSON or Parquet (up to {settings.max_upload_mb} "
                             "MiB)", file_types=[".csv", ".tsv", ".jsonl", ".json", ".parquet"], elem_id="upload",
                             visible=False)
            upload_error = gr.Markdown(elem_id="upload-error", elem_classes=["lamp-error"])
            c["data_file"] = gr.Textbox(d["data_file"], visible=False, elem_id="field-data-file")
            preview = gr.Dataframe(label="First rows", visible=False, interactive=False, max_height=220,
                                   elem_id="preview")
            data_note = gr.Markdown(elem_id="data-note")
            with gr.Row(visible=False) as columns_row:
                c["text_column"] = gr.Dropdown([], label="Text column", info=INFO["text_column"],
                                               elem_id="field-text-column")
                c["label_column"] = gr.Dropdown([], label="Label column", info=INFO["label_column"],
                                                elem_id="field-label-column")
            with gr.Row(visible=False) as template_row:
                c["template"] = gr.Textbox(d["template"], label="Template (optional)", info=INFO["template"],
                                           elem_id="field-template")
                c["kind"] = gr.Radio(["auto", "classification", "generation"], value=d["kind"], label="Kind",
                                     info=INFO["kind"], elem_id="field-kind")
                c["strict"] = gr.Checkbox(d["strict"], label="Strict", info=INFO["strict"], elem_id="field-strict")
    with gr.Accordion("Training", open=True), gr.Row():
        c["steps"] = gr.Number(d["steps"], label="Steps", precision=0, info=INFO["steps"], elem_id="field-steps")
        c["batch_size"] = gr.Number(d["batch_size"], label="Batch size", precision=0, info=INFO["batch_size"],
                                    elem_id="field-batch-size")
        c["lr"] = gr.Textbox("", label="Learning rate", info=INFO["lr"], elem_id="field-lr", placeholder="default")
        c["lr_scaling"] = gr.Dropdown([forms.RECIPE_CHOICE, "relative", "absolute"], value=d["lr_scaling"],
                                      label="LR scaling", info=INFO["lr_scaling"], elem_id="field-lr-scaling")
        c["prompt_init"] = gr.Dropdown([forms.RECIPE_CHOICE, "text", "vocab"], value=d["prompt_init"],
                                       label="Prompt start", info=INFO["prompt_init"], elem_id="field-prompt-init")
        c["weight_decay"] = gr.Number(d["weight_decay"], label="Weight decay", info=INFO["weight_decay"],
                                      elem_id="field-weight-decay")
        c["max_length"] = gr.Number(d["max_length"], label="Max length", precision=0, info=INFO["max_length"],
                                    elem_id="field-max-length")
        c["eval_every"] = gr.Number(d["eval_every"], label="Evaluate every", precision=0, info=INFO["eval_every"],
                                    elem_id="field-eval-every")
        c["max_test_examples"] = gr.Textbox(d["max_test_examples"], label="Test examples",
                                            info=INFO["max_test_examples"], elem_id="field-max-test-examples",
                                            placeholder="all")
        c["seed"] = gr.Number(d["seed"], label="Seed", precision=0, info=INFO["seed"], elem_id="field-seed")
        c["device"] = gr.Dropdown(["auto", "cpu", "cuda"], value=d["device"], label="Device",
                                  info=INFO["device"], allow_custom_value=True, elem_id="field-device")
        c["max_attempts"] = gr.Number(d["max_attempts"], label="Max attempts", precision=0,
                                      info=INFO["max_attempts"], elem_id="field-max-attempts")
    form_error = gr.Markdown(elem_id="form-error", elem_classes=["lamp-error"])
    upload_problem = gr.State("")  # why the last upload was refused ("" when it was accepted)
    with gr.Row():
        submit = gr.Button("Launch job", variant="primary", elem_id="launch", scale=0, min_width=200)
        result = gr.Markdown(elem_id="launch-result")
    submitted = gr.Number(visible=False, precision=0)

    # ---- events ----
    inputs = [c[name] for name in forms.FIELDS]
    with_info = [c[name] for name in INFO]

    def on_source(source: str) -> list[Any]:
        own = source == forms.OWN_DATA
        return [gr.update(visible=not own), gr.update(visible=not own and bool(offered)), gr.update(visible=own),
                gr.update(visible=own), gr.update(visible=own)]

    c["source"].change(on_source, c["source"], [c["task"], c["data_dir"], upload, columns_row, template_row])

    def succeeded_jobs() -> Any:
        from app.monitor import job_choices
        from jobs.models import Status

        return gr.update(choices=[("none: a fresh prompt", ""), *job_choices(Status.SUCCEEDED)])

    c["init_from"].focus(succeeded_jobs, None, c["init_from"], show_progress="hidden")

    @friendly
    def on_upload(request: gr.Request, path: str | None) -> list[Any]:
        if not path:
            return [gr.skip()] * 8
        try:
            data = accept_upload(path, access=access_for(settings, request), quota=settings.quota)
        except (DataError, StorageError) as exc:  # kept in upload_problem: Launch repeats it, not a generic line
            return ["", gr.update(value=None, visible=False), gr.update(choices=[], value=None),
                    gr.update(choices=[], value=None), warn(str(exc)), gr.update(value=None), str(exc), gr.skip()]
        text, label = guess_columns(data.columns, data.sample)
        note = f"{data.rows:,} rows, columns: {', '.join(data.columns)}"
        return [data.id, gr.update(value=data.preview(), visible=True, label=f"First rows · {note}"),
                gr.update(choices=data.columns, value=text), gr.update(choices=data.columns, value=label), "",
                gr.skip(), "", ""]  # a good file clears the old problems' banner

    # The form keeps only the upload's id; two uploads are read at a time (each as a stream, within the limits).
    upload.upload(on_upload, upload, [c["data_file"], preview, c["text_column"], c["label_column"], upload_error,
                                      upload, upload_problem, form_error], api_name="upload", concurrency_limit=2)

    def on_note(request: gr.Request, *values: Any) -> str:
        return forms.upload_note(dict(zip(note_fields, values, strict=True)), access_for(settings, request))

    # What the job will skip (rows with an empty input or label), for the file and the columns chosen now.
    note_fields = ("source", "data_file", "text_column", "label_column", "template", "kind", "strict")
    gr.on([c[n].change for n in note_fields], on_note, [c[n] for n in note_fields], data_note,
          show_progress="hidden", trigger_mode="always_last", concurrency_limit=2)

    optional = ("rank", "pool", "bottleneck", "positions", "pair_lr")  # shown for the methods that have them

    def on_knobs(model: str, method: str, length: Any, rank: Any, pool: Any, bottleneck: Any, positions: Any,
                 pair_lr: Any) -> list[Any]:
        knobs = forms.knobs_of(method)
        more = {"bottleneck": bottleneck, "positions": positions, "pair_lr": pair_lr}
        summary = forms.param_summary(model, method, length, rank, pool, settings.allowed_dirs,
                                      **{k: v for k, v in more.items() if k in knobs})
        return [summary, *(gr.update(visible=name in knobs) for name in optional),
                gr.update(info=forms.default_lr_note(method))]

    knob_inputs = [c["model"], c["method"], c["length"], *(c[name] for name in optional)]
    for comp in knob_inputs:
        (comp.blur if comp is c["model"] else comp.change)(
            on_knobs, knob_inputs, [params, *(c[name] for name in optional), c["lr"]], show_progress="hidden",
            api_name="params" if comp is c["model"] else None)

    @friendly
    def on_preset(label: str | None) -> list[Any]:
        if not label:
            return [gr.skip()] * (len(forms.FIELDS) + 1)
        values = forms.preset_values(label)
        return [forms.PRESETS[label].note] + [values[n] if n in values else gr.skip() for n in forms.FIELDS]

    preset.change(on_preset, preset, [preset_note, *inputs])

    def on_cost(request: gr.Request, *values: Any) -> str:
        return forms.cost_summary(dict(zip(forms.FIELDS, values, strict=True)), access_for(settings, request))

    # The estimate follows the knobs; reading the data's widths the first time takes a few seconds, then is cached.
    cost_triggers = [c["model"].blur, *(c[n].change for n in forms.FIELDS if n != "model")]
    gr.on([estimate.click, *cost_triggers], on_cost, inputs, cost, show_progress="minimal",
          trigger_mode="always_last", concurrency_limit=2, api_name="estimate")

    def on_submit(request: gr.Request, last_upload_problem: str, *values: Any) -> list[Any]:
        from jobs.tasks import submit as submit_job

        form = dict(zip(forms.FIELDS, values, strict=True))
        try:
            spec, attempts = forms.spec_from_form(form, access_for(settings, request))
            job_id = submit_job(spec, max_attempts=attempts)
        except LampError as exc:
            if not isinstance(exc, forms.FormError):  # the store's disk is full, ...: what happened and what to do
                return [*_field_updates({}), "", warn(str(exc)), "", gr.skip()]
            problems = dict(exc.problems)
            if "data_file" in problems and last_upload_problem and not form.get("data_file"):
                problems["data_file"] = last_upload_problem  # why the last file was refused, not "upload a file"
            general = [f"{k}: {v}" for k, v in problems.items() if k not in INFO and k != "data_file"]
            count = len(problems)
            return [*_field_updates(problems), warn(problems.get("data_file", "")),
                    warn(f"{count} problem(s) to fix before launching" + ("".join(f"\n- {g}" for g in general))),
                    "", gr.skip()]
        return [*_field_updates({}), "", "",
                f"Job **{job_id}** queued: {spec.method.name} on `{spec.model.name}`; follow it in the Jobs tab.",
                job_id]

    submit.click(on_submit, [upload_problem, *inputs], [*with_info, upload_error, form_error, result, submitted],
                 concurrency_limit=4, api_name="launch")

    # A problem shown beside a field goes away as soon as that field is edited.
    def clear(name: str) -> Any:
        return lambda: gr.update(info=INFO[name], elem_classes=[])

    for name in INFO:
        c[name].change(clear(name), None, c[name], show_progress="hidden", queue=False)
    return NewJobTab(inputs=c, submit=submit, result=result, submitted=submitted)
