"""The Playground as plain functions: one input, several tuned prompts and the bare model, side by side.

This is the one place the web process runs a model: a loaded backbone is shared by every prompt trained on it
(core.inference.cached_backbone), each job's prompt is loaded once, and the chosen jobs and the bare model are
answered in the same batches (core.inference.MultiPredictor).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from core.errors import ArtifactError, ConfigError
from core.inference import Ask, MultiPredictor, Prediction, Predictor, render_source, template_fields
from jobs import store
from jobs.db import read
from jobs.models import Status

ANSWER_COLUMNS = ("Job", "Tuned prompt", "Bare model", "Tuned scores", "Bare scores", "Model input")
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
    out: dict[int, tuple[Prediction, Prediction]] = {}
    for members in groups.values():
        multi = MultiPredictor([predictors[i] for i in members])
        asks = [Ask(k, sources[i], bare) for k, i in enumerate(members) for bare in (False, True)]
        got = multi.answer(asks, max_new_tokens=max_new_tokens)
        for k, i in enumerate(members):
            out[i] = (got[2 * k], got[2 * k + 1])
    return [out[i] for i in range(len(predictors))]


def _scores(prediction: Prediction) -> str:
    return ", ".join(f"{w} {p:.2f}" for w, p in sorted(prediction.scores.items(), key=lambda kv: -kv[1]))


def ask(job_ids: Sequence[int], text: str, *, device: str = "cpu", max_new_tokens: int = 16
        ) -> tuple[pd.DataFrame, go.Figure]:
    """Each job's answer with its tuned prompt beside the bare model's, and the label scores of both."""
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
    rows, fig = [], go.Figure()
    for job_id, predictor, source, (tuned, bare) in zip(ids, predictors, sources, answers, strict=True):
        method = predictor.artifact.method.name
        rows.append([f"#{job_id} {method}", tuned.answer, bare.answer, _scores(tuned), _scores(bare), source])
        if tuned.scores:
            words = list(tuned.scores)
            fig.add_trace(go.Bar(name=f"#{job_id} tuned", x=words, y=[tuned.scores[w] for w in words]))
            fig.add_trace(go.Bar(name=f"#{job_id} bare", x=words, y=[bare.scores[w] for w in words],
                                 marker_pattern_shape="/"))
    fig.update_layout(barmode="group", height=320, template="plotly_white", title="Label probabilities",
                      yaxis={"range": [0, 1]}, margin={"l": 40, "r": 20, "t": 50, "b": 40})
    table = pd.DataFrame(rows, columns=list(ANSWER_COLUMNS))
    return table, fig
