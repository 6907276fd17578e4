"""A user's own data: a CSV, TSV, JSON Lines (or JSON array) or Parquet file turned into a task.

Every cell is read as text. The input is one column (`text_column`, default `text`) or a Python format string over
columns (`template`, e.g. "question: {question} context: {context}"); the answer is the label column (default
`label`). Problems name the file, the row (1-based, counting data rows as a person does: the first row under a CSV
header is row 1) and the column; row-level problems are collected and reported together.
"""

from __future__ import annotations

import csv
import io
import json
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core.errors import ConfigError, DataError
from core.tasks.base import Example, TaskData

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
MAX_CLASSES = 20
"""In kind="auto", a label column with more distinct values than this is free text (generation)."""
MAX_PROBLEMS = 5
"""Row-level problems listed in one error; the rest are counted."""
VALIDATION_SHARE, MAX_VALIDATION = 0.1, 1_000


@dataclass(frozen=True)
class Table:
    """A file's rows as text cells, with how a person finds each row."""

    path: Path
    columns: tuple[str, ...]
    rows: list[dict[str, str]]
    where: list[str]
    """E.g. "row 3", or "row 3 (line 5)" where the line differs (JSON Lines with blank lines)."""


class _Problems:
    """Collects row-level problems so that one error lists several of them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(message)

    def raise_if_any(self) -> None:
        if not self.count:
            return
        more = f"\n  ... and {self.count - len(self.items)} more" if self.count > len(self.items) else ""
        raise DataError(f"{self.path}: {self.count} problem(s):\n  " + "\n  ".join(self.items) + more)


def _cell(value: Any) -> str:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars
    if value is None or (isinstance(value, float) and value != value):  # null or NaN
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # an integer column with nulls comes back as floats: 1.0 -> "1"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset {exc.start} (line {line}); "
            "the file must be UTF-8 encoded: re-save it as UTF-8"
        ) from exc


def _read_delimited(path: Path, text: str, delimiter: str) -> Table:
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # long passages exceed the 128 KiB default
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise DataError(f"{path}: no header row: the first line must name the columns")
        duplicated = sorted({h for h in header if header.count(h) > 1})
        if duplicated:
            raise DataError(f"{path}: column name(s) used twice in the header: {', '.join(duplicated)}")
        rows: list[dict[str, str]] = []
        where: list[str] = []
        problems = _Problems(path)
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # blank line
            n = len(rows) + 1
            if len(cells) > len(header):
                problems.add(f"row {n} (line {reader.line_num}): {len(cells)} fields, the header has {len(header)}")
            rows.append(dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=False)))
            where.append(f"row {n}")
    except csv.Error as exc:
        raise DataError(f"{path}: malformed {path.suffix[1:].upper()} at line {reader.line_num}: {exc}") from exc
    problems.raise_if_any()
    return Table(path, tuple(header), rows, where)


def _object_rows(path: Path, items: list[tuple[Any, str]], problems: _Problems) -> Table:
    columns: dict[str, None] = {}
    rows, where = [], []
    for item, place in items:
        if not isinstance(item, dict):
            problems.add(f'{place}: expected a JSON object such as {{"text": ..., "label": ...}}, got {item!r:.40}')
            continue
        columns.update(dict.fromkeys(map(str, item)))
        rows.append({str(k): _cell(v) for k, v in item.items()})
        where.append(place)
    problems.raise_if_any()
    return Table(path, tuple(columns), rows, where)


def _read_json_lines(path: Path, text: str) -> Table:
    items: list[tuple[Any, str]] = []
    problems = _Problems(path)
    # Split on "\n" only: str.splitlines() also breaks at U+2028, which JSON allows inside strings.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        n = len(items) + 1
        place = f"row {n}" if n == line_no else f"row {n} (line {line_no})"
        try:
            items.append((json.loads(line), place))
        except json.JSONDecodeError as exc:
            problems.add(f"{place}: malformed JSON: {exc.msg} at column {exc.colno}")
            items.append((None, place))
    problems.raise_if_any()
    return _object_rows(path, items, problems)


def _read_json(path: Path, text: str) -> Table:
    if not text.lstrip().startswith("["):
        return _read_json_lines(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    return _object_rows(path, [(item, f"row {i}") for i, item in enumerate(data, start=1)], _Problems(path))


def _read_parquet(path: Path) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    rows = [{k: _cell(v) for k, v in row.items()} for row in table.to_pylist()]
    return Table(path, tuple(table.column_names), rows, [f"row {i}" for i in range(1, len(rows) + 1)])


def read_table(file: str, *, max_bytes: int = 200 * 2**20) -> Table:
    """Read a user's file into text cells; DataError names the file and what is wrong."""
    path = Path(file)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(
            f"{path}: file is {size:,} bytes ({size / 2**20:.1f} MiB), larger than the limit of {max_bytes:,} bytes "
            f"({max_bytes / 2**20:.1f} MiB)"
        )
    if size == 0:
        raise DataError(f"{path}: file is empty")
    if kind == "parquet":
        table = _read_parquet(path)
    else:
        text = _decode(path, path.read_bytes())
        if kind in ("json", "jsonl"):
            table = _read_json(path, text)
        else:
            table = _read_delimited(path, text, "," if kind == "csv" else "\t")
    if not table.rows:
        raise DataError(f"{path}: no data rows")
    return table


def _require_columns(table: Table, names: Sequence[str], role: str) -> None:
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise DataError(
            f"{table.path}: no column {', '.join(map(repr, missing))} ({role}); columns: {', '.join(table.columns)}"
        )


def _template_columns(template: str) -> list[str]:
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"template {template!r} is not a valid format string: {exc}") from exc
    if not fields or any(not f or f.isdigit() for f in fields):
        raise ConfigError(f"template {template!r} must name columns in braces, e.g. 'question: {{question}}'")
    return list(dict.fromkeys(fields))


def _input_columns(table: Table, text_column: str | None, template: str | None) -> list[str]:
    if template is not None:
        return _template_columns(template)
    if text_column is not None:
        return [text_column]
    if "text" in table.columns:
        return ["text"]
    raise DataError(
        f"{table.path}: no 'text' column; pass text_column or template. Columns: {', '.join(table.columns)}"
    )


def _renderer(template: str | None, columns: list[str]) -> Callable[[dict[str, str]], str]:
    if template is None:
        return lambda row: row[columns[0]].strip()

    def render(row: dict[str, str]) -> str:
        try:
            return template.format_map({c: row[c].strip() for c in columns}).strip()
        except (ValueError, IndexError, KeyError, AttributeError) as exc:
            raise ConfigError(f"template {template!r} cannot be filled: {exc}") from exc

    return render


def _pairs(
    table: Table, inputs: list[str], label: str, render: Callable[[dict[str, str]], str]
) -> list[tuple[str, str, str]]:
    """(where, source, target) per row; empty inputs or labels are collected and raised together."""
    problems, pairs = _Problems(table.path), []
    for row, where in zip(table.rows, table.where, strict=True):
        row = {c: row.get(c, "") for c in table.columns}
        if all(not row[c].strip() for c in inputs):
            kind = "column" if len(inputs) == 1 else "columns (all)"
            problems.add(f"{where}: empty {kind} {', '.join(map(repr, inputs))}")
        if not row[label].strip():
            problems.add(f"{where}: empty label in column {label!r}")
        pairs.append((where, render(row), row[label].strip()))
    problems.raise_if_any()
    return pairs


def _sorted_labels(labels: set[str]) -> tuple[str, ...]:
    if all(label.lstrip("-").isdigit() for label in labels):
        return tuple(sorted(labels, key=int))  # "2" before "10"
    return tuple(sorted(labels))


def _is_classification(kind: str, labels: list[str]) -> bool:
    distinct = len(set(labels))
    return kind == "classification" or (kind == "auto" and distinct <= MAX_CLASSES and distinct < len(labels) / 2)


def _examples(
    pairs: list[tuple[str, str, str]], label_words: tuple[str, ...] | None, path: Path, label: str
) -> list[Example]:
    if label_words is None:
        return [Example(source=source, target=target) for _, source, target in pairs]
    problems, examples = _Problems(path), []
    for where, source, target in pairs:
        if target not in label_words:
            known = ", ".join(label_words)
            problems.add(f"{where}: label {target!r} in column {label!r} is not one of the training labels ({known})")
            continue
        examples.append(Example(source=source, target=target, label=label_words.index(target)))
    problems.raise_if_any()
    return examples


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
) -> TaskData:
    """Turn a user's file(s) into a task.

    Classification when `kind="classification"`, or in "auto" when the label column has at most MAX_CLASSES distinct
    values and fewer than half as many as rows: label words are the sorted distinct labels (numerically when all are
    integers), metric accuracy. Otherwise generation: the target is the label text, metric exact_match.
    Without `eval_file`, 10% of the training rows (at least 1, at most 1,000; shuffled with random.Random(seed)) are
    held out as validation, and the test set is that same validation set. With `eval_file`, validation = test = it.
    """
    if text_column is not None and template is not None:
        raise ConfigError("give either text_column or template, not both")
    if kind not in ("auto", "classification", "generation"):
        raise ConfigError(f"kind {kind!r} must be 'auto', 'classification' or 'generation'")
    train_table = read_table(train_file, max_bytes=max_bytes)
    eval_table = read_table(eval_file, max_bytes=max_bytes) if eval_file else None
    inputs = _input_columns(train_table, text_column, template)
    label = label_column or "label"
    for table in (train_table, eval_table):
        if table is not None:
            _require_columns(table, inputs, "named by the template" if template else "text")
            _require_columns(table, [label], "label; pass label_column")
    render = _renderer(template, inputs)
    train_pairs = _pairs(train_table, inputs, label, render)
    eval_pairs = _pairs(eval_table, inputs, label, render) if eval_table else None

    labels = [target for _, _, target in train_pairs]
    label_words = _sorted_labels(set(labels)) if _is_classification(kind, labels) else None
    if label_words is not None and len(label_words) < 2:
        raise DataError(
            f"{train_table.path}: column {label!r} has one class only ({label_words[0]!r}); classification needs two "
            "or more (or use kind='generation')"
        )
    train = _examples(train_pairs, label_words, train_table.path, label)
    if eval_pairs is not None and eval_table is not None:
        validation = _examples(eval_pairs, label_words, eval_table.path, label)
        note = f"train = {train_file} ({len(train)} rows); validation = test = {eval_file} ({len(validation)} rows)"
    else:
        train, validation, note = _hold_out(train, seed, train_file)
    return TaskData(
        name=name or Path(train_file).stem,
        train=train,
        validation=validation,
        test=list(validation),
        label_words=label_words,
        metrics=("accuracy",) if label_words is not None else ("exact_match",),
        template=template or f"{{{inputs[0]}}}",
        split_note=note,
        extra={
            "train_file": train_file,
            "eval_file": eval_file or "",
            "label_column": label,
            "kind": "classification" if label_words is not None else "generation",
        },
    )


def _hold_out(examples: list[Example], seed: int, train_file: str) -> tuple[list[Example], list[Example], str]:
    if len(examples) < 2:
        raise DataError(f"{train_file}: {len(examples)} row(s); holding out a validation set needs at least 2")
    n_val = min(MAX_VALIDATION, max(1, round(len(examples) * VALIDATION_SHARE)))
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    note = (
        f"seed {seed}; no eval file: validation = {n_val} of the {len(examples)} rows of {train_file} (10%, 1..1000), "
        f"test = the same rows as validation, train = the other {len(examples) - n_val}"
    )
    return shuffled[n_val:], shuffled[:n_val], note
