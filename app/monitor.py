"""The Jobs tab as plain functions: the table of jobs, one job's details and live curves, cancel, retry, and the
downloads of its artifact and PEFT export. Everything is read from the store; nothing here trains."""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.settings import exports_dir
from core.errors import ArtifactError, ConfigError
from core.spec import spec_from_dict
from core.tasks.base import report_notes
from core.tracking import where_logged
from jobs import store
from jobs.db import read
from jobs.models import FINISHED, Job, MetricPoint, Result, Status

JOB_COLUMNS = ["ID", "Status", "Progress", "Result", "Method", "Knobs", "Model", "Data", "Params", "Elapsed"]
"""Key columns first: what a job is doing and what it reached, then what it is; the page pins ID and Status."""
CURVES = (  # (split, metric, panel title)
    ("train", "loss", "Training loss"),
    ("val", None, "Eval metric"),
    ("train", "examples_per_second", "Examples / s"),
    ("train", "peak_memory_mb", "Peak memory (MiB)"),
)


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def elapsed_seconds(job: Job, now: datetime | None = None) -> float | None:
    start = _utc(job.started_at)
    if start is None:
        return None
    end = _utc(job.finished_at) if job.status in FINISHED and job.finished_at else (now or datetime.now(UTC))
    return max(0.0, (end - start).total_seconds()) if end else None


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


KNOB_LETTERS = (("length", "l"), ("rank", "r"), ("pool", "p"), ("bottleneck", "m"), ("positions", "s"),
                ("pair_lr", "pair_lr"))
"""A job's method knobs as the Jobs table writes them, in the letters of the methods' formulas."""


def knobs(spec: dict[str, Any]) -> str:
    m = spec.get("method", {})
    return " ".join(f"{letter}={m[name]}" for name, letter in KNOB_LETTERS if m.get(name) is not None)


def data_name(spec: dict[str, Any]) -> str:
    data = spec.get("data", {})
    return data.get("task") or Path(data.get("train_file") or "?").name


def main_metric(metrics: dict[str, Any] | None) -> tuple[str, float] | None:
    """The figure a person compares jobs by: accuracy (ranked label words) first, else the first metric."""
    if not metrics:
        return None
    for name in ("accuracy", "f1", "exact_match"):
        if isinstance(metrics.get(name), int | float):
            return name, float(metrics[name])
    for name, value in metrics.items():
        if isinstance(value, int | float):
            return name, float(value)
    return None


def status_text(job: Job, now: datetime | None = None) -> str:
    if job.status == Status.RUNNING and job.cancel_requested:
        return "CANCELLING"
    if job.status == Status.QUEUED and job.attempts:
        return "QUEUED (resumes)"
    lease = _utc(job.lease_expires_at)
    if job.status == Status.RUNNING and lease is not None and (now or datetime.now(UTC)) > lease:
        # Its worker stopped renewing the lease: dead (a reaper requeues it), or unable to write the store.
        return f"RUNNING (no heartbeat for {format_seconds(((now or datetime.now(UTC)) - lease).total_seconds())})"
    return str(job.status)


def progress(job: Job) -> str:
    """Steps done, and while the job runs what it is doing beyond training (loading, validating, testing n/N,
    writing): a job whose steps are all done is not done until it has been tested."""
    phase = store.phase_of(job)
    doing = store.phase_text(phase) if phase and phase.get("phase") != "training" else ""
    if not job.total_steps:
        steps = "-" if job.status == Status.QUEUED else str(job.step)
    else:
        steps = f"{job.step}/{job.total_steps} ({job.step / job.total_steps:.0%})"
    return f"{steps} · {doing}" if doing else steps


def job_row(job: Job, result: Result | None, now: datetime | None = None) -> list[Any]:
    metric = main_metric(result.metrics if result else None)
    if metric:
        outcome = f"{metric[0]} {metric[1]:.3f}"
    elif job.error and job.status != Status.SUCCEEDED:
        outcome = job.error.strip().splitlines()[-1][:80]
    else:
        outcome = ""
    spec = job.spec
    return [job.id, status_text(job, now), progress(job), outcome, spec.get("method", {}).get("name"), knobs(spec),
            model_name(str(spec.get("model", {}).get("name"))), data_name(spec)[-40:],
            f"{result.trainable_params:,}" if result else "", format_seconds(elapsed_seconds(job, now))]


def model_name(name: str) -> str:
    """A model as the table shows it: a local folder by its last part (the job page names it whole)."""
    return Path(name).name if name.startswith(("/", ".", "~")) else name


def jobs_frame(limit: int = 200) -> pd.DataFrame:
    jobs = read(store.list_jobs, limit=limit)
    results = read(store.results_for, job_ids=[j.id for j in jobs])
    now = datetime.now(UTC)
    return pd.DataFrame([job_row(j, results.get(j.id), now) for j in jobs], columns=JOB_COLUMNS)


def job_choices(status: str | None = None, limit: int = 200) -> list[tuple[str, int]]:
    """(label, id) pairs for the dashboard's job pickers, newest first."""
    jobs = read(store.list_jobs, status=status, limit=limit)
    results = read(store.results_for, job_ids=[j.id for j in jobs])
    out = []
    for job in jobs:
        metric = main_metric(results[job.id].metrics) if job.id in results else None
        tail = f" · {metric[0]} {metric[1]:.3f}" if metric else f" · {job.status}"
        label = f"#{job.id} {job.spec.get('method', {}).get('name')} {knobs(job.spec)} · {data_name(job.spec)}{tail}"
        out.append((label, job.id))
    return out


@dataclass(frozen=True)
class Details:
    markdown: str
    error: str
    can_cancel: bool
    can_retry: bool
    can_download: bool
    signature: tuple[Any, ...]
    """Changes whenever anything shown changes (status, step, points); the page redraws only then."""


def job_details(job_id: int | None) -> Details:
    if job_id is None:
        return Details("Pick a job in the table (click its row) to see its curves.", "", False, False, False, ())
    job = read(store.get_job, job_id=int(job_id))
    if job is None:
        return Details(f"No job {job_id}.", "", False, False, False, ("missing", job_id))
    result = read(store.get_result, job_id=job.id)
    attempts = read(store.job_attempts, job_id=job.id)
    spec = job.spec
    train = spec.get("train", {})
    lines = [
        f"### Job {job.id}: {status_text(job)}",
        f"**{spec.get('method', {}).get('name')}** {knobs(spec)} on `{spec.get('model', {}).get('name')}` · data "
        f"**{data_name(spec)}** · batch {train.get('batch_size')} · lr {train.get('lr') or 'default'} · seed "
        f"{train.get('seed')}",
        f"Progress {progress(job)} · elapsed {format_seconds(elapsed_seconds(job))} · attempts {job.attempts}"
        f"/{job.max_attempts} · worker {job.worker or '-'}",
    ]
    if train.get("init_from"):
        lines.append(warm_start_text(str(train["init_from"])))
    logged = where_logged(train, f"job-{job.id}")
    if logged:
        lines.append(f"Logged to {logged}")
    found = read(store.trial_of_job, job_id=job.id)
    if found is not None:
        study, trial = found
        lines.append(f"Trial {trial.number} of [study #{study.id} {study.name}](?study={study.id})")
    lines += [f"Data: {note}" for note in report_notes(job.data_report)]  # rows skipped, labels added
    resumed = [a for a in attempts if a.resumed_from]
    if resumed:
        lines.append("Resumed from checkpoints at step " + ", ".join(str(a.resumed_from) for a in resumed))
    if result is not None:
        metrics = ", ".join(f"{k} **{v:.3f}**" for k, v in result.metrics.items() if isinstance(v, int | float))
        lines.append(f"Test: {metrics} · trainable params **{result.trainable_params:,}** · peak memory "
                     f"{result.peak_memory_mb:,.0f} MiB · training {format_seconds(result.train_seconds)} · "
                     f"{result.examples_per_second:.1f} examples/s")
        if job.status == Status.SUCCEEDED:
            lines.append(call_snippet(job.id, bool(spec.get("data", {}).get("label_column") or
                                                   spec.get("data", {}).get("task"))))
    # The points' count and last id (one indexed aggregate per poll): the final evaluation changes neither the step
    # nor the status, and its point must still be drawn without a reload.
    signature = (job.status, job.step, job.cancel_requested, job.attempts, result is not None,
                 read(store.metric_mark, job_id=job.id))
    return Details("\n\n".join(lines), job.error or "", job.status in (Status.QUEUED, Status.RUNNING)
                   and not job.cancel_requested, job.status in RETRYABLE,
                   job.status == Status.SUCCEEDED, signature)


def call_snippet(job_id: int, labelled: bool = True) -> str:
    """How to call the job's prompt from code: the API on this server (`/v1`, README "API"), with curl and Python.
    LAMP_URL is this page's address; the key is one given to `lamp serve --api-key` (none on loopback)."""
    model = f"job-{job_id}"
    curl = (f"curl -s $LAMP_URL/v1/classify -H \"Authorization: Bearer $LAMP_API_KEY\" \\\n"
            f"  -H 'content-type: application/json' -d '{{\"model\": \"{model}\", \"input\": [\"your text\"]}}'"
            if labelled else
            f"curl -s $LAMP_URL/v1/completions -H \"Authorization: Bearer $LAMP_API_KEY\" \\\n"
            f"  -H 'content-type: application/json' -d '{{\"model\": \"{model}\", \"prompt\": \"your text\", "
            f"\"max_tokens\": 16}}'")
    python = (f"from openai import OpenAI\n"
              f"client = OpenAI(base_url=LAMP_URL + \"/v1\", api_key=LAMP_API_KEY or \"none\")\n"
              f"client.completions.create(model=\"{model}\", prompt=\"your text\", max_tokens=16).choices[0].text")
    return (f"**Call it from code** as `{model}` (LAMP_URL: this page's address; the key: one given to `lamp serve "
            f"--api-key`, none needed on this machine):\n\n```bash\n{curl}\n```\n\n```python\n{python}\n```")


def warm_start_text(init_from: str) -> str:
    """Where a warm-started job's prompt came from: the source job (found by its artifact) and what it trained."""
    from core.artifact import load_manifest
    from jobs.warm import job_of_artifact

    source = job_of_artifact(init_from)
    where = f"job **#{source}**" if source is not None else f"`{init_from}`"
    try:
        spec = load_manifest(Path(init_from))["spec"]
    except (ArtifactError, OSError, ValueError):
        return f"Warm start from {where} (its artifact is no longer readable here)"
    return (f"Warm start from {where}: {spec['method']['name']} {knobs(spec)} on `{spec['model']['name']}` · data "
            f"**{data_name(spec)}**")


def _series(points: list[MetricPoint]) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    out: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for p in points:
        if p.value is None:
            continue
        xs, ys = out.setdefault((p.split, p.name), ([], []))
        xs.append(p.step)
        ys.append(p.value)
    return out


def curve_figure(job_id: int | None) -> go.Figure:
    """Four panels: training loss, eval metrics, examples/s and peak memory against the step."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=[c[2] for c in CURVES], horizontal_spacing=0.1,
                        vertical_spacing=0.16)
    fig.update_layout(height=520, margin={"l": 50, "r": 20, "t": 50, "b": 40}, legend={"orientation": "h"},
                      template="plotly_white")
    if job_id is None:
        return fig
    series = _series(read(store.metric_points, job_id=int(job_id)))
    for i, (split, name, _title) in enumerate(CURVES):
        row, col = divmod(i, 2)
        keys = [k for k in series if k[0] == split and (name is None or k[1] == name)]
        for key in keys:
            xs, ys = series[key]
            single = len(xs) == 1  # a lone point on a lines-only trace is invisible: draw it, with its value
            fig.add_trace(go.Scatter(x=xs, y=ys, mode=("markers+text" if single else
                                                       "lines+markers" if split == "val" else "lines"),
                                     text=[f"{ys[0]:,.3g}"] if single else None, textposition="top center",
                                     name=f"{key[0]} {key[1]}", showlegend=split == "val"), row=row + 1, col=col + 1)
        if split == "val" and keys and all(0 <= y <= 1 for k in keys for y in series[k][1]):
            fig.update_yaxes(range=[0, 1.05], row=row + 1, col=col + 1)  # accuracy and friends: the whole 0-1 scale
    fig.update_yaxes(rangemode="tozero", row=2)  # a flat memory line reads as flat, not as 674.5-676
    fig.update_yaxes(tickformat=",~r")  # 2,390, not 2.39e+03
    fig.update_xaxes(title_text="step", row=2)
    return fig


def cancel_job(job_id: int) -> str:
    from jobs.tasks import cancel

    status = cancel(int(job_id))
    return f"Job {job_id}: {'cancel requested' if status == Status.RUNNING else status}"


RETRYABLE = (Status.FAILED, Status.CANCELLED, Status.PRUNED, Status.OUT_OF_MEMORY)


def retry_job(job_id: int) -> int:
    """A failed, cancelled, pruned or out-of-memory job runs again as a new job with the same settings (validated
    again); a pruned trial's rerun is an ordinary job, outside its study, so nothing prunes it."""
    from jobs.tasks import submit

    job = read(store.get_job, job_id=int(job_id))
    if job is None:
        raise ConfigError(f"no job {job_id}")
    if job.status not in RETRYABLE:
        raise ConfigError(f"job {job_id} is {job.status}: only a failed, cancelled, pruned or out-of-memory job can "
                          "be retried")
    return submit(spec_from_dict(job.spec), max_attempts=job.max_attempts)


def _artifact_dir(job_id: int) -> Path:
    job = read(store.get_job, job_id=int(job_id))
    result = read(store.get_result, job_id=int(job_id))
    if job is None or job.status != Status.SUCCEEDED or result is None:
        raise ArtifactError(f"job {job_id} has not succeeded: nothing to download yet")
    path = Path(result.artifact)
    if not (path / "lamp_artifact.json").is_file():
        raise ArtifactError(f"job {job_id}: its artifact {path} is missing (deleted, or on a disk this host lacks)")
    return path


def _zip(folder: Path, target: Path, skip: tuple[str, ...] = ()) -> Path:
    partial = target.with_name(target.name + ".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name not in skip:
                zf.write(path, f"{target.stem}/{path.relative_to(folder)}")
    partial.replace(target)
    return target


def artifact_zip(job_id: int) -> Path:
    """The job's artifact folder as a zip (the resume checkpoint left out), for `lamp predict` elsewhere."""
    folder = _artifact_dir(job_id)
    return _zip(folder, exports_dir() / f"lamp-job-{int(job_id)}.zip", skip=("checkpoint.pt",))


def peft_zip(job_id: int) -> Path:
    """A PEFT prompt-tuning adapter of the job's prompt (PeftModel.from_pretrained on the same backbone)."""
    from core.export import export_peft

    folder = _artifact_dir(job_id)
    staging = exports_dir() / f"peft-job-{int(job_id)}"
    shutil.rmtree(staging, ignore_errors=True)
    export_peft(folder, staging)
    try:
        return _zip(staging, exports_dir() / f"peft-job-{int(job_id)}.zip")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
