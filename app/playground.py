"""The Playground as plain functions: one input, several tuned prompts and the bare model, side by side.

This is the one place the web process runs a model: a loaded backbone is shared by every prompt trained on it
(core.inference.cached_backbone), each job's prompt is loaded once, and the chosen jobs and the bare model are
answered in the same batches, through the API's service (app.api_service: its queue, mixed batches and prompt
cache).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from core.errors import ArtifactError, ConfigError
from core.inference import Ask, Prediction, Predictor, render_source, template_fields
from jobs import store
from jobs.db import read
from jobs.models import Status

ANSWER_COLUMNS = ("Prompt", "Answer", "Label probabilities", "Change vs bare model", "Model input")
MAX_JOBS = 4
"""Jobs compared at once in the playground."""
_PREDICTORS: OrderedDict[int, Predictor] = OrderedDict()
_LOCK = threading.Lock()  # one model call at a time: torch on the CPU already uses every core


def predictor_for(job_id: int, device: str = "cpu") -> Predictor:
    with _LOCK:
        if job_id in _PREDICTORS:
            _PREDICTORS.move_to_end(job_id)
            return _PREDICTORS[job_id]
    job = read(store.get_job, job_id=job_id)
    result = read(store.get_result, job_id=job_id)
    if job is None or job.status != Status.SUCCEEDED or result is None:
        raise ConfigError(f"job {job_id} has not succeeded: it has no tuned prompt to try")
    if not (Path(result.artifact) / "lamp_artifact.json").is_file():
        raise ArtifactError(f"job {job_id}: its artifact {result.artifact} is missing")
    predictor = Predictor.load(result.artifact, device=device)
    with _LOCK:
        _PREDICTORS[job_id] = predictor
        while len(_PREDICTORS) > 8:
            _PREDICTORS.popitem(last=False)
    return predictor


def _answer_together(predictors: Sequence[Predictor], sources: Sequence[str], max_new_tokens: int
                     ) -> list[tuple[Prediction, Prediction]]:
    """Each job's (tuned, bare) answer. The jobs on one backbone go through it together: every tuned prompt and
    the bare model in the same batches, each row reading its own prompt (core.serving)."""
    groups: dict[int, list[int]] = {}
    for i, predictor in enumerate(predictors):
        groups.setdefault(id(predictor.backbone), []).append(i)
    from app.api_service import shared_service

    out: dict[int, tuple[Prediction, Prediction]] = {}
    for members in groups.values():
        asks = [Ask(k, sources[i], bare) for k, i in enumerate(members) for bare in (False, True)]
        # the API's queue and batches (app.api_service): the same code path as /v1/classify, its prompt cache too
        got = shared_service().ask([predictors[i] for i in members], asks, max_new_tokens=max_new_tokens)
        for k, i in enumerate(members):
            out[i] = (got[2 * k], got[2 * k + 1])
    return [out[i] for i in range(len(predictors))]


def _scores(prediction: Prediction) -> str:
    """Label probabilities, most likely first, to three decimals (two made 0.5375 and 0.5441 look the same)."""
    return ", ".join(f"{w} {p:.3f}" for w, p in sorted(prediction.scores.items(), key=lambda kv: -kv[1]))


def _versus_bare(tuned: Prediction, bare: Prediction) -> str:
    """What the prompt changed: the tuned answer's probability against the bare model's for the same label."""
    if tuned.scores and tuned.answer in bare.scores:
        delta = tuned.scores[tuned.answer] - bare.scores[tuned.answer]
        flipped = "" if tuned.answer == bare.answer else f" (bare: {bare.answer})"
        return f"{tuned.answer} {delta:+.3f}{flipped}"
    return "same answer" if tuned.answer == bare.answer else "differs"


def _bare_key(predictor: Predictor, source: str) -> tuple[int, str, tuple[str, ...]]:
    """Jobs whose bare answers are the same: one backbone, one model input, the same label words."""
    return id(predictor.backbone), source, tuple(predictor.label_words or ())


def loading_note(job_ids: Sequence[int]) -> str:
    """Said before the first answer of a job whose prompt (and perhaps model) is not loaded in this process yet."""
    with _LOCK:
        missing = [int(i) for i in job_ids if int(i) not in _PREDICTORS]
    if not missing:
        return ""
    models = []
    for job_id in missing:
        job = read(store.get_job, job_id=job_id)
        if job is not None:
            models.append(str(job.spec.get("model", {}).get("name")))
    names = ", ".join(f"`{m}`" for m in dict.fromkeys(models)) or "the model"
    return (f"Loading {names} and the prompts of job {', '.join(f'#{i}' for i in missing)} (first use in this "
            f"server: about {_load_guess(models)}); later answers take a fraction of a second per prompt.")


def _load_guess(models: Sequence[str]) -> str:
    """A rough load time from the weights' size on disk (about 150 MB/s plus start-up), where it is known."""
    from core.backbone import OFFLINE_MODELS, lamp_home

    size = 0
    for name in models:
        folder = lamp_home() / "models" / OFFLINE_MODELS[name].folder if name in OFFLINE_MODELS else Path(name)
        if folder.is_dir():
            size += sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    if not size:
        return "a minute for a model not yet on this machine"
    return f"{max(3, round(3 + size / 150e6))} s"


def ask(job_ids: Sequence[int], text: str, *, device: str = "cpu", max_new_tokens: int = 16
        ) -> tuple[pd.DataFrame, go.Figure]:
    """Each job's answer with its tuned prompt, and the bare model's once for the jobs it answers alike (one
    backbone, one input, one set of label words); the label probabilities of each, and what each prompt changed."""
    if not text or not text.strip():
        raise ConfigError("type an input first")
    ids = [int(i) for i in job_ids]
    if not ids:
        raise ConfigError("pick at least one finished job")
    if len(ids) > MAX_JOBS:
        raise ConfigError(f"pick at most {MAX_JOBS} jobs at once")
    predictors = [predictor_for(job_id, device) for job_id in ids]
    # A one-field template takes the text as that field; for several fields the text is the whole input.
    sources = [render_source(p.template, text.strip()) if len(template_fields(p.template)) == 1 else text.strip()
               for p in predictors]
    with _LOCK:
        answers = _answer_together(predictors, sources, max_new_tokens)
    groups: dict[tuple[int, str, tuple[str, ...]], list[int]] = {}
    for i, (predictor, source) in enumerate(zip(predictors, sources, strict=True)):
        groups.setdefault(_bare_key(predictor, source), []).append(i)
    rows, fig = [], go.Figure()
    for members in groups.values():
        for i in members:
            tuned, bare = answers[i]
            rows.append([f"#{ids[i]} {predictors[i].artifact.method.name}", tuned.answer, _scores(tuned),
                         _versus_bare(tuned, bare), sources[i]])
            if tuned.scores:
                words = list(tuned.scores)
                fig.add_trace(go.Bar(name=f"#{ids[i]} {predictors[i].artifact.method.name}", x=words,
                                     y=[tuned.scores[w] for w in words]))
        bare = answers[members[0]][1]
        model = predictors[members[0]].artifact.spec.model.name
        which = "" if len(groups) == 1 else " for " + ", ".join(f"#{ids[i]}" for i in members)
        rows.append([f"bare model {model}{which}", bare.answer, _scores(bare), "", sources[members[0]]])
        if bare.scores:
            words = list(bare.scores)
            fig.add_trace(go.Bar(name=f"bare model{which}", x=words, y=[bare.scores[w] for w in words],
                                 marker_pattern_shape="/", marker_color="#9aa0a6"))
    fig.update_layout(barmode="group", height=320, template="plotly_white", title="Label probabilities",
                      yaxis={"range": [0, 1], "tickformat": ".0%"}, margin={"l": 40, "r": 20, "t": 50, "b": 40},
                      legend={"orientation": "h", "y": -0.2})
    table = pd.DataFrame(rows, columns=list(ANSWER_COLUMNS))
    return table, fig
