"""A user's own data: a CSV, TSV, JSON Lines (or JSON array) or Parquet file turned into a task.

Every cell is read as text. The input is one column (`text_column`, default `text`) or a Python format string over
columns (`template`, e.g. "question: {question} context: {context}"); the answer is the label column (default
`label`). Problems name the file, the row (1-based, counting data rows as a person does: the first row under a CSV
header is row 1) and the column; row-level problems are collected and reported together.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.errors import ConfigError, DataError
from core.tasks.base import Example, TaskData
from core.tasks.reading import FORMATS, Limits, Problems, Reader

__all__ = ["FORMATS", "MAX_CLASSES", "MAX_LABELS", "Columns", "FileCheck", "Limits", "Table", "check_user_files",
           "load_user_task", "read_table"]

MAX_CLASSES = 20
"""In kind="auto", a label column with more distinct values than this is free text (generation)."""
MAX_LABELS = 100
"""kind="classification" scores every label word for every example: more labels than this is refused."""
VALIDATION_SHARE, MAX_VALIDATION = 0.1, 1_000


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
    """One pass over a file's rows: each row's (where, input, answer) when `keep`, the row problems, and the
    distinct answers (counted up to MAX_LABELS + 1)."""

    def __init__(self, file: str, columns: Columns, limits: Limits, keep: bool) -> None:
        self.reader = Reader(file, limits)
        self.path = self.reader.path
        self.columns, self.keep = columns, keep
        self.render = _renderer(columns.template, columns.inputs)
        self.problems = Problems(self.path)
        self.pairs: list[tuple[str, str, str]] = []
        self.labels: set[str] = set()
        self.rows = 0

    def run(self, check: Callable[[str, str], None] | None = None) -> _Pass:
        inputs, label = self.columns.inputs, self.columns.label
        for where, row in self.reader:
            values = {c: row.get(c, "") for c in inputs}
            if all(not v.strip() for v in values.values()):
                kind = "column" if len(inputs) == 1 else "columns (all)"
                self.problems.add(f"{where}: empty {kind} {', '.join(map(repr, inputs))}")
            target = row.get(label, "").strip()
            if not target:
                self.problems.add(f"{where}: empty label in column {label!r}")
            source = self.render(values)
            if check is not None:
                check(where, target)
            if self.keep:
                self.pairs.append((where, source, target))
            if len(self.labels) <= MAX_LABELS:
                self.labels.add(target)
            self.rows += 1
        self._check_columns(tuple(self.reader.columns))
        self.problems.raise_if_any()
        return self

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


def _known_label(problems: Problems, words: tuple[str, ...], label: str) -> Callable[[str, str], None]:
    def check(where: str, target: str) -> None:
        if target and target not in words:
            problems.add(f"{where}: label {target!r} in column {label!r} is not one of the training labels "
                         f"({', '.join(words)})")

    return check


@dataclass(frozen=True)
class FileCheck:
    """What `check_user_files` found, without keeping the rows."""

    rows: int
    eval_rows: int | None
    label_words: tuple[str, ...] | None


def check_user_files(
    train_file: str, eval_file: str | None = None, *, text_column: str | None = None,
    label_column: str | None = None, template: str | None = None,
    kind: Literal["auto", "classification", "generation"] = "auto", limits: Limits | None = None,
) -> FileCheck:
    """Every check `load_user_task` makes, in one streaming pass per file (memory does not grow with the file)."""
    columns = Columns.of(text_column, label_column, template, kind)
    limits = limits or Limits()
    train = _Pass(train_file, columns, limits, keep=False).run()
    words = _label_words(kind, train)
    evaluated = None
    if eval_file:
        held = _Pass(eval_file, columns, limits, keep=False)
        held.run(_known_label(held.problems, words, columns.label) if words else None)
        evaluated = held.rows
    return FileCheck(train.rows, evaluated, words)


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
    kind: Literal["auto", "classification", "generation"] = "auto",
    seed: int = 42,
    max_bytes: int = 200 * 2**20,
    name: str | None = None,
    limits: Limits | None = None,
) -> TaskData:
    """Turn a user's file(s) into a task.

    Classification when `kind="classification"` (at most MAX_LABELS labels), or in "auto" when the label column has
    at most MAX_CLASSES distinct values and fewer than half as many as rows: label words are the sorted distinct
    labels (numerically when all are integers), metric accuracy. Otherwise generation: the target is the label text,
    metric exact_match. The label column may not be part of the input.
    Without `eval_file`, 10% of the training rows (at least 1, at most 1,000; shuffled with random.Random(seed)) are
    held out as validation, and the test set is that same validation set. With `eval_file`, validation = test = it.
    Files are read within `limits` (default: Limits(max_bytes=max_bytes)).
    """
    columns = Columns.of(text_column, label_column, template, kind)
    limits = limits or Limits(max_bytes=max_bytes)
    train_pass = _Pass(train_file, columns, limits, keep=True).run()
    words = _label_words(kind, train_pass)
    train = _examples(train_pass.pairs, words)
    if eval_file:
        held = _Pass(eval_file, columns, limits, keep=True)
        held.run(_known_label(held.problems, words, columns.label) if words else None)
        validation = _examples(held.pairs, words)
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
