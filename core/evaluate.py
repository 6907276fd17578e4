"""Scoring a prompt on a task's examples, by ranking answer words and by generation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.backbone import Backbone
from core.batching import Codec
from core.scoring import generate, generate_and_rank, rank_candidates
from core.tasks import Example, TaskData, compute_metrics

GEN_PREFIX = "gen_"


def is_ranked(task: TaskData, examples: Sequence[Example]) -> bool:
    """Classification (label words) and per-example candidates are scored by ranking; free text by generation."""
    return task.label_words is not None or any(e.candidates for e in examples)


def candidates_of(task: TaskData, example: Example) -> tuple[str, ...]:
    return example.candidates or (task.label_words or ())


def max_answer_tokens(codec: Codec, task: TaskData, examples: Sequence[Example]) -> int:
    words = {w for e in examples for w in candidates_of(task, e)} or {e.target for e in examples}
    return max(len(codec.target(w)) for w in words) + 1 if words else 16


def evaluate(
    backbone: Backbone,
    prompt: torch.Tensor | None,
    codec: Codec,
    task: TaskData,
    examples: Sequence[Example],
    *,
    generate: bool = True,
    batch_size: int = 32,
) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics by name and how each was scored ("rank" or "generation").

    Ranked tasks report the task's metrics by ranking and, with `generate`, the same metrics by generation under
    a `gen_` prefix. Free-text tasks are scored by generation under the plain names.
    """
    if not examples:
        return {}, {}
    metrics: dict[str, float] = {}
    scoring: dict[str, str] = {}
    words = task.label_words
    if is_ranked(task, examples):
        cands = [candidates_of(task, e) for e in examples]
        sources = [e.source for e in examples]
        if generate:
            texts, scores = generate_and_rank(backbone, prompt, codec, sources, cands, batch_size=batch_size,
                                              max_new_tokens=max_answer_tokens(codec, task, examples))
        else:
            scores = rank_candidates(backbone, prompt, codec, sources, cands, batch_size=batch_size)
        picks = [c[max(range(len(s)), key=s.__getitem__)] for c, s in zip(cands, scores, strict=True)]
        for name, value in compute_metrics(task.metrics, picks, examples, label_words=words).items():
            metrics[name], scoring[name] = value, "rank"
        if generate:
            for name, value in compute_metrics(task.metrics, texts, examples, label_words=words).items():
                metrics[GEN_PREFIX + name], scoring[GEN_PREFIX + name] = value, "generation"
        return metrics, scoring
    texts = _generate(backbone, prompt, codec, task, examples, batch_size)
    for name, value in compute_metrics(task.metrics, texts, examples, label_words=words).items():
        metrics[name], scoring[name] = value, "generation"
    return metrics, scoring


def _generate(backbone: Backbone, prompt: torch.Tensor | None, codec: Codec, task: TaskData,
              examples: Sequence[Example], batch_size: int) -> list[str]:
    return generate(backbone, prompt, codec, [e.source for e in examples], max_new_tokens=32,
                    batch_size=batch_size)


def primary_metric(task: TaskData, metrics: dict[str, float]) -> str:
    """The metric that picks the best checkpoint: the task's first metric."""
    return task.metrics[0] if task.metrics[0] in metrics else next(iter(metrics))
