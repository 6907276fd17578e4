"""What a task hands to the trainer: text-to-text examples, label words and the metrics to report."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One text-to-text example.

    `source` is the model's input (for built-in tasks in the T5 convention: the task's name, then `field: value`
    pairs), `target` the answer as words. For classification `label` indexes the task's `label_words`.
    """

    source: str
    target: str
    label: int | None = None
    candidates: tuple[str, ...] = ()
    """Per-example answer choices to rank (e.g. ReCoRD entities); empty means rank the task's label words."""
    answers: tuple[str, ...] = ()
    """Every gold answer, when there are several (ReCoRD); empty means just `target`."""
    group: str | None = None
    """Question id that answers belong to (MultiRC exact match is per question)."""


@dataclass(frozen=True)
class TaskData:
    """A task's splits and how to score it."""

    name: str
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    label_words: tuple[str, ...] | None
    """Classification label words in label-id order; None for free generation."""
    metrics: tuple[str, ...] = ("accuracy",)
    """Metric names understood by core.tasks.metrics.compute_metrics."""
    template: str = ""
    """Human-readable input format, e.g. 'rte sentence1: {sentence1} sentence2: {sentence2}'."""
    answer_cue: str = "answer"
    """Decoder-only models read the answer after `<source>\n<answer_cue>:`; encoder-decoders ignore it."""
    split_note: str = ""
    """How the splits were made (seed, sizes), recorded with the run."""
    extra: dict[str, str] = field(default_factory=dict)
