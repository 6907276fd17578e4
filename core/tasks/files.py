"""A user's own data: a CSV, TSV, JSON Lines (or JSON array) or Parquet file turned into a task.

Every cell is read as text. The input is one column (`text_column`, default `text`) or a Python format string over
columns (`template`, e.g. "question: {question} context: {context}"); the answer is the label column (default
`label`). Problems name the file, the row (1-based, counting data rows as a person does: the first row under a CSV
header is row 1) and the column; row-level problems are collected and reported together.

Real files have a stray empty cell. A row whose input or label is empty is skipped and reported (how many, the
first rows: TaskData.skipped), unless `strict`, which refuses the file instead; a file with more than
MAX_SKIPPED_SHARE of its rows empty is refused either way (its columns are likely the wrong ones). A label that only
the evaluation file has is refused by name with the choice (`eval_labels`): add it to the label words (scored, never
trained on) or drop those rows.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.errors import ConfigError, DataError
from core.tasks.base import Example, Skipped, TaskData
from core.tasks.eval_labels import EvalLabels, UnseenLabels
from core.tasks.eval_labels import settle as settle_unseen
from core.tasks.reading import FORMATS, MAX_PROBLEMS, Limits, Problems, Reader

__all__ = ["FORMATS", "MAX_CLASSES", "MAX_LABELS", "Columns", "FileCheck", "Limits", "Table", "check_user_files",
           "load_user_task", "read_table"]

MAX_CLASSES = 20
"""In kind="auto", a label column with more distinct values than this is free text (generation)."""
MAX_LABELS = 100
"""kind="classification" scores every label word for every example: more labels than this is refused."""
VALIDATION_SHARE, MAX_VALIDATION = 0.1, 1_000
MAX_SKIPPED_SHARE = 0.2
"""A file with more of its rows than this empty (input or label) is refused, not skipped."""
Kind = Literal["auto", "classification", "generation"]


@dataclass(frozen=True)
class Table:
    """A file's rows as text cells, with how a person finds each row."""

    path: Path
    columns: tuple[str, ...]
    rows: list[dict[str, str]]
    where: list[str]
    """E.g. "row 3", or "row 3 (line 5)" where the line differs (JSON Lines with blank lines)."""


def read_table(file: str, *, max_bytes: int = 200 * 2**20, limits: Limits | None = None) -> Table:
    """Read a user's file whole into text cells; DataError names the file and what is wrong."""
    reader = Reader(file, limits or Limits(max_bytes=max_bytes))
    rows, where = [], []
    for place, row in reader:
        rows.append(row)
        where.append(place)
    return Table(reader.path, tuple(reader.columns), rows, where)


def _require_columns(path: Path, columns: Sequence[str], names: Sequence[str], role: str, setting: str) -> None:
    missing = [n for n in names if n not in columns]
    if missing:
        raise DataError((setting, f"{path}: no column {', '.join(map(repr, missing))} ({role}); columns: "
                                  f"{', '.join(columns)}"))


def _template_columns(template: str) -> list[str]:
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(("template", f"template {template!r} is not a valid format string: {exc}")) from exc
    if not fields or any(not f or f.isdigit() for f in fields):
        raise ConfigError(("template", f"template {template!r} must name columns in braces, e.g. "
                                       "'question: {question}'"))
    return list(dict.fromkeys(fields))


def _renderer(template: str | None, columns: list[str]) -> Callable[[dict[str, str]], str]:
    if template is None:
        return lambda row: row[columns[0]].strip()

    def render(row: dict[str, str]) -> str:
        try:
            return template.format_map({c: row[c].strip() for c in columns}).strip()
        except (ValueError, IndexError, KeyError, AttributeError) as exc:
            raise ConfigError(("template", f"template {template!r} cannot be filled: {exc}")) from exc

    return render


@dataclass(frozen=True)
class Columns:
    """Which columns make the input and which the answer, checked before any file is read."""

    inputs: list[str]
    label: str
    template: str | None
    text_given: bool

    @classmethod
    def of(cls, text_column: str | None, label_column: str | None, template: str | None, kind: str) -> Columns:
        if text_column is not None and template is not None:
            raise ConfigError(("text_column", "give either text_column or template, not both"))
        if kind not in ("auto", "classification", "generation"):
            raise ConfigError(("kind", f"kind {kind!r} must be 'auto', 'classification' or 'generation'"))
        inputs = _template_columns(template) if template is not None else [text_column or "text"]
        label = label_column or "label"
        if label in inputs:
            where = f"the template {template!r} uses it" if template is not None else "it is also the text column"
            raise ConfigError(("label_column", f"label_column={label!r}: {where}, so the model would read its own "
                                               "answer; pick a label column that is not part of the input"))
        return cls(inputs, label, template, text_column is not None or template is not None)


class _Pass:
    """One pass over a file's rows: each kept row's (where, input, answer) when `keep`, the rows with an empty input
    or label (skipped; with `strict` refused), and the distinct answers (counted up to MAX_LABELS + 1). Errors name
    `role`, the file's setting, unless they name a column."""

    def __init__(self, file: str, columns: Columns, limits: Limits, keep: bool, role: str = "train_file",
                 strict: bool = False) -> None:
        self.reader = Reader(file, limits)
        self.path = self.reader.path
        self.columns, self.keep, self.role, self.strict = columns, keep, role, strict
        self.render = _renderer(columns.template, columns.inputs)
        self.empty = Problems(self.path)
        self.empty_of: set[str] = set()
        """The settings the empty cells are about (the text column or template, the label column)."""
        self.skipped: list[str] = []
        """Where the first skipped rows are."""
        self.skips = 0
        self.pairs: list[tuple[str, str, str]] = []
        self.labels: set[str] = set()
        self.rows = 0
        """Rows kept."""

    def run(self, check: Callable[[str, str], None] | None = None) -> _Pass:
        try:
            self._read(check)
        except DataError as exc:
            raise exc.about(self.role) from None
        return self

    def _read(self, check: Callable[[str, str], None] | None) -> None:
        inputs, label = self.columns.inputs, self.columns.label
        for where, row in self.reader:
            values = {c: row.get(c, "") for c in inputs}
            target = row.get(label, "").strip()
            if self._empty(where, values, target):
                continue
            source = self.render(values)
            if check is not None:
                check(where, target)
            if self.keep:
                self.pairs.append((where, source, target))
            if len(self.labels) <= MAX_LABELS:
                self.labels.add(target)
            self.rows += 1
        self._check_columns(tuple(self.reader.columns))
        self._settle_empty()

    def _empty(self, where: str, values: dict[str, str], target: str) -> bool:
        """Record the row's empty input and label; True if it has either (the row is skipped)."""
        before = self.empty.count
        if all(not v.strip() for v in values.values()):
            kind = "column" if len(values) == 1 else "columns (all)"
            self.empty.add(f"{where}: empty {kind} {', '.join(map(repr, values))}")
            self.empty_of.add("template" if self.columns.template else "text_column")
        if not target:
            self.empty.add(f"{where}: empty label in column {self.columns.label!r}")
            self.empty_of.add("label_column")
        if self.empty.count == before:
            return False
        self.skips += 1
        if len(self.skipped) < MAX_PROBLEMS:
            self.skipped.append(where)
        return True

    def _settle_empty(self) -> None:
        """Rows with an empty input or label stay skipped, unless `strict` or there are too many: then the file is
        refused, naming it and the first such rows."""
        total = self.rows + self.skips
        if not self.skips or (not self.strict and self.skips <= MAX_SKIPPED_SHARE * total):
            return
        why = ("strict: a row with an empty input or label refuses the file; without strict it is skipped and "
               "reported" if self.strict else
               f"{self.skips:,} of {total:,} rows have an empty input or label, more than {MAX_SKIPPED_SHARE:.0%}: "
               "check the text and label columns, or fix the file")
        setting = next(iter(self.empty_of)) if len(self.empty_of) == 1 else self.role
        raise DataError((setting, f"{self.empty.message()}\n  ({why})"))

    def skipped_report(self) -> Skipped | None:
        if not self.skips:
            return None
        return Skipped(self.path.name, self.rows + self.skips, self.skips, tuple(self.skipped))

    def _check_columns(self, found: tuple[str, ...]) -> None:
        c = self.columns
        if not c.text_given and "text" not in found:
            raise DataError(("text_column", f"{self.path}: no 'text' column; pass text_column or template. "
                                            f"Columns: {', '.join(found)}"))
        _require_columns(self.path, found, c.inputs, "named by the template" if c.template else "text",
                         "template" if c.template else "text_column")
        _require_columns(self.path, found, [c.label], "label; pass label_column", "label_column")


def _sorted_labels(labels: set[str]) -> tuple[str, ...]:
    if all(label.lstrip("-").isdigit() for label in labels):
        return tuple(sorted(labels, key=int))  # "2" before "10"
    return tuple(sorted(labels))


def _label_words(kind: str, train: _Pass) -> tuple[str, ...] | None:
    """The sorted label words for a classification task, None for generation; DataError for one class only or
    more than MAX_LABELS."""
    distinct, label = len(train.labels), train.columns.label
    auto = kind == "auto" and distinct <= MAX_CLASSES and distinct < train.rows / 2
    if kind != "classification" and not auto:
        return None
    if distinct > MAX_LABELS:
        raise DataError(("label_column", f"{train.path}: column {label!r} has more than {MAX_LABELS} distinct "
                         "labels; classification scores every label for every example, so that many would take "
                         "hours per evaluation: use kind='generation', or merge labels"))
    if distinct < 2:
        raise DataError(("label_column", f"{train.path}: column {label!r} has one class only "
                         f"({next(iter(train.labels))!r}); classification needs two or more (or use "
                         "kind='generation')"))
    return _sorted_labels(train.labels)


@dataclass(frozen=True)
class FileCheck:
    """What `check_user_files` found, without keeping the rows."""

    rows: int
    """Training rows kept."""
    eval_rows: int | None
    label_words: tuple[str, ...] | None
    skipped: tuple[Skipped, ...] = ()
    added_labels: tuple[str, ...] = ()


@dataclass
class _Read:
    """Both files read: the passes, the label words (None: generation) and what was left out or added."""

    train: _Pass
    held: _Pass | None
    words: tuple[str, ...] | None
    skipped: tuple[Skipped, ...]
    added: tuple[str, ...]


def _read(train_file: str, eval_file: str | None, columns: Columns, kind: str, limits: Limits, *, keep: bool,
          strict: bool, eval_labels: str | None) -> _Read:
    train = _Pass(train_file, columns, limits, keep, "train_file", strict).run()
    words = _label_words(kind, train)
    if not eval_file:
        return _Read(train, None, words, tuple(s for s in [train.skipped_report()] if s), ())
    held = _Pass(eval_file, columns, limits, keep, "eval_file", strict)
    unseen = UnseenLabels(words) if words else None
    held.run(unseen)
    reports = [train.skipped_report(), held.skipped_report()]
    added: tuple[str, ...] = ()
    if unseen is not None and words is not None:
        given, dropped = settle_unseen(unseen, words, eval_labels, path=held.path, label=columns.label,
                                       rows=held.rows)
        if dropped is not None:  # the rows of labels training never saw, left out as asked
            held.pairs = [p for p in held.pairs if p[2] not in unseen.counts]
            held.rows -= dropped.count
            reports.append(dropped)
        added, words = given[len(words):], given
    return _Read(train, held, words, tuple(r for r in reports if r is not None), added)


def check_user_files(
    train_file: str, eval_file: str | None = None, *, text_column: str | None = None,
    label_column: str | None = None, template: str | None = None, kind: Kind = "auto",
    limits: Limits | None = None, strict: bool = False, eval_labels: EvalLabels | None = None,
) -> FileCheck:
    """Every check `load_user_task` makes, in one streaming pass per file (memory does not grow with the file)."""
    read = _read(train_file, eval_file, Columns.of(text_column, label_column, template, kind), kind,
                 limits or Limits(), keep=False, strict=strict, eval_labels=eval_labels)
    return FileCheck(read.train.rows, read.held.rows if read.held else None, read.words, read.skipped, read.added)


def _examples(pairs: list[tuple[str, str, str]], words: tuple[str, ...] | None) -> list[Example]:
    if words is None:
        return [Example(source=source, target=target) for _, source, target in pairs]
    return [Example(source=source, target=target, label=words.index(target)) for _, source, target in pairs]


def load_user_task(
    train_file: str,
    eval_file: str | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    template: str | None = None,
    kind: Kind = "auto",
    seed: int = 42,
    max_bytes: int = 200 * 2**20,
    name: str | None = None,
    limits: Limits | None = None,
    strict: bool = False,
    eval_labels: EvalLabels | None = None,
) -> TaskData:
    """Turn a user's file(s) into a task.

    Classification when `kind="classification"` (at most MAX_LABELS labels), or in "auto" when the label column has
    at most MAX_CLASSES distinct values and fewer than half as many as rows: label words are the sorted distinct
    labels (numerically when all are integers), metric accuracy. Otherwise generation: the target is the label text,
    metric exact_match. The label column may not be part of the input.
    Without `eval_file`, 10% of the training rows (at least 1, at most 1,000; shuffled with random.Random(seed)) are
    held out as validation, and the test set is that same validation set. With `eval_file`, validation = test = it.
    Files are read within `limits` (default: Limits(max_bytes=max_bytes)). Rows with an empty input or label are
    skipped and reported (`strict`: refused); an evaluation label the training rows lack is refused unless
    `eval_labels` says what to do (module docstring).
    """
    columns = Columns.of(text_column, label_column, template, kind)
    read = _read(train_file, eval_file, columns, kind, limits or Limits(max_bytes=max_bytes), keep=True,
                 strict=strict, eval_labels=eval_labels)
    words = read.words
    train = _examples(read.train.pairs, words)
    if read.held is not None:
        validation = _examples(read.held.pairs, words)
        note = f"train = {train_file} ({len(train)} rows); validation = test = {eval_file} ({len(validation)} rows)"
    else:
        train, validation, note = _hold_out(train, seed, train_file)
    return TaskData(
        name=name or Path(train_file).stem,
        train=train,
        validation=validation,
        test=list(validation),
        label_words=words,
        metrics=("accuracy",) if words is not None else ("exact_match",),
        template=template or f"{{{columns.inputs[0]}}}",
        split_note=note,
        extra={
            "train_file": train_file,
            "eval_file": eval_file or "",
            "label_column": columns.label,
            "kind": "classification" if words is not None else "generation",
        },
        skipped=read.skipped,
        added_labels=read.added,
    )


def _hold_out(examples: list[Example], seed: int, train_file: str) -> tuple[list[Example], list[Example], str]:
    if len(examples) < 2:
        raise DataError(("train_file", f"{train_file}: {len(examples)} row(s); holding out a validation set needs "
                                       "at least 2"))
    n_val = min(MAX_VALIDATION, max(1, round(len(examples) * VALIDATION_SHARE)))
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    note = (
        f"seed {seed}; no eval file: validation = {n_val} of the {len(examples)} rows of {train_file} (10%, 1..1000), "
        f"test = the same rows as validation, train = the other {len(examples) - n_val}"
    )
    return shuffled[n_val:], shuffled[:n_val], note
