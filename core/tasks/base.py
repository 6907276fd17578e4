"""What a task hands to the trainer: text-to-text examples, label words and the metrics to report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
class Skipped:
    """Rows of a user's file left out of the task, and why: reported wherever the run is (the CLI, the job's
    details, `lamp train --json`), never silent."""

    file: str
    """The file's name."""
    rows: int
    """Data rows in the file."""
    count: int
    first: tuple[str, ...]
    """Where the first few are, as a person finds them ("row 833")."""
    why: str = "an empty input or label"

    def text(self) -> str:
        more = ", ..." if self.count > len(self.first) else ""
        return (f"{self.file}: {self.count:,} of {self.rows:,} rows skipped ({self.why}): "
                f"{', '.join(self.first)}{more}")


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
    skipped: tuple[Skipped, ...] = ()
    """Rows of a user's files left out (an empty input or label; an evaluation label dropped on request)."""
    added_labels: tuple[str, ...] = ()
    """Label words only the evaluation file has, added on request: scored, never trained on."""

    def data_notes(self) -> list[str]:
        """What was done to the user's data, one line each (empty for clean data)."""
        return report_notes(self.data_report())

    def data_report(self) -> dict[str, Any]:
        """The same as JSON: {"skipped": [{file, rows, count, first, why}, ...], "added_labels": [...]}."""
        return {"skipped": [{**asdict(s), "first": list(s.first)} for s in self.skipped],
                "added_labels": list(self.added_labels)}


def report_notes(report: dict[str, Any] | None) -> list[str]:
    """The lines of a `TaskData.data_report()` (as a job stores it): each file's skipped rows, the labels added."""
    if not report:
        return []
    notes = [Skipped(**{**s, "first": tuple(s["first"])}).text() for s in report.get("skipped", [])]
    added = report.get("added_labels") or []
    if added:
        notes.append(f"label(s) {', '.join(map(repr, added))} only in the evaluation file: added to the label words "
                     "(scored, never trained on)")
    return notes
