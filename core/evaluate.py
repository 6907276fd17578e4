"""Scoring a prompt on a task's examples, by ranking answer words and by generation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from core.backbone import Backbone
from core.batching import Codec
from core.scoring import generate, generate_and_rank, rank_candidates
from core.tasks import Example, TaskData, compute_metrics

GEN_PREFIX = "gen_"
CHUNK = 64
"""Examples scored between two progress reports (each chunk is still batched and sorted by length)."""
Progress = Callable[[int, int], None]
"""Called with (examples scored so far, examples in all)."""


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
    progress: Progress | None = None,
    offset: torch.Tensor | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics by name and how each was scored ("rank" or "generation").

    Ranked tasks report the task's metrics by ranking and, with `generate`, the same metrics by generation under
    a `gen_` prefix. Free-text tasks are scored by generation under the plain names. `progress` hears how many
    examples are scored after every CHUNK of them. `offset`: the method's input offset (DePT; core.scoring).
    """
    if not examples:
        return {}, {}
    metrics: dict[str, float] = {}
    scoring: dict[str, str] = {}
    words = task.label_words
    report = progress or (lambda done, total: None)
    if is_ranked(task, examples):
        cands = [candidates_of(task, e) for e in examples]
        sources = [e.source for e in examples]
        texts, scores = [], []
        new = max_answer_tokens(codec, task, examples)
        for start in range(0, len(sources), CHUNK):
            part = slice(start, start + CHUNK)
            if generate:
                t, sc = generate_and_rank(backbone, prompt, codec, sources[part], cands[part],
                                          batch_size=batch_size, max_new_tokens=new, offset=offset)
                texts += t
            else:
                sc = rank_candidates(backbone, prompt, codec, sources[part], cands[part], batch_size=batch_size,
                                     offset=offset)
            scores += sc
            report(min(start + CHUNK, len(sources)), len(sources))
        picks = [c[max(range(len(s)), key=s.__getitem__)] for c, s in zip(cands, scores, strict=True)]
        for name, value in compute_metrics(task.metrics, picks, examples, label_words=words).items():
            metrics[name], scoring[name] = value, "rank"
        if generate:
            for name, value in compute_metrics(task.metrics, texts, examples, label_words=words).items():
                metrics[GEN_PREFIX + name], scoring[GEN_PREFIX + name] = value, "generation"
        return metrics, scoring
    texts = []
    for start in range(0, len(examples), CHUNK):
        texts += _generate(backbone, prompt, codec, task, examples[start : start + CHUNK], batch_size, offset)
        report(min(start + CHUNK, len(examples)), len(examples))
    for name, value in compute_metrics(task.metrics, texts, examples, label_words=words).items():
        metrics[name], scoring[name] = value, "generation"
    return metrics, scoring


def _generate(backbone: Backbone, prompt: torch.Tensor | None, codec: Codec, task: TaskData,
              examples: Sequence[Example], batch_size: int, offset: torch.Tensor | None = None) -> list[str]:
    return generate(backbone, prompt, codec, [e.source for e in examples], max_new_tokens=32,
                    batch_size=batch_size, offset=offset)


def primary_metric(task: TaskData, metrics: dict[str, float]) -> str:
    """The metric that picks the best checkpoint: the task's first metric."""
    return task.metrics[0] if task.metrics[0] in metrics else next(iter(metrics))
