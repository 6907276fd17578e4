"""Reading a user's data file row by row, within limits: CSV, TSV, JSON Lines (or a JSON array) and Parquet.

Rows come out one at a time as text cells, so that a caller that only needs a sample or a count (the dashboard's
preview, a check before a job is queued) never holds the whole file. Every limit fails at the first row that breaks
it, with a message naming the file, the row and the limit; a Parquet file's row count and decompressed size are
checked from its metadata before any row is read.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
MAX_PROBLEMS = 5
"""Row-level problems listed in one error; the rest are counted."""
Row = tuple[str, dict[str, str]]
"""Where a person finds the row ("row 3", "row 3 (line 5)") and its cells."""


@dataclass(frozen=True)
class Limits:
    """How much of a file is read before giving up. The defaults fit the GLUE-sized data sets prompt tuning uses."""

    max_bytes: int = 200 * 2**20
    """The file's size on disk."""
    max_rows: int = 1_000_000
    max_cell_chars: int = 20_000
    """One cell: longer inputs are truncated to max_length tokens anyway, and a long label costs memory per token."""
    max_text_chars: int = 2**30
    """All cells together, once decompressed (a Parquet file of a few KB can hold gigabytes of repeated text)."""
    max_json_array_bytes: int = 32 * 2**20
    """A JSON array is parsed whole; larger data belongs in JSON Lines, which is read line by line."""


class Problems:
    """Collects row-level problems so that one error lists several of them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(message)

    def message(self) -> str:
        more = f"\n  ... and {self.count - len(self.items)} more" if self.count > len(self.items) else ""
        return f"{self.path}: {self.count} problem(s):\n  " + "\n  ".join(self.items) + more

    def raise_if_any(self) -> None:
        if self.count:
            raise DataError((None, self.message()))


def cell(value: Any) -> str:
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # numpy scalars
    if value is None or (isinstance(value, float) and value != value):  # null or NaN
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # an integer column with nulls comes back as floats: 1.0 -> "1"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def check_file(path: Path, limits: Limits) -> str:
    """The file's format; DataError if it is of an unknown type, missing, empty or too large."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise DataError(
            f"{path}: file is {size:,} bytes ({size / 2**20:.1f} MiB), larger than the limit of "
            f"{limits.max_bytes:,} bytes ({limits.max_bytes / 2**20:.1f} MiB)"
        )
    if size == 0:
        raise DataError(f"{path}: file is empty")
    return kind


class Reader:
    """The rows of one file, bounded by `limits`; `columns` is complete once the rows are exhausted (JSON objects
    may add keys as they go)."""

    def __init__(self, file: str | Path, limits: Limits | None = None) -> None:
        self.path = Path(file)
        self.limits = limits or Limits()
        self.kind = check_file(self.path, self.limits)
        self.columns: dict[str, None] = {}
        self.count = 0
        self._chars = 0

    def __iter__(self) -> Iterator[Row]:
        source = {"csv": self._delimited, "tsv": self._delimited, "jsonl": self._json, "json": self._json,
                  "parquet": self._parquet}[self.kind]
        for where, row in source():
            self.count += 1
            if self.count > self.limits.max_rows:
                raise DataError(f"{self.path}: more than {self.limits.max_rows:,} data rows, the limit for one "
                                "file; split it or take a sample")
            self._bound(where, row)
            yield where, row
        if not self.count:
            raise DataError(f"{self.path}: no data rows")

    def _bound(self, where: str, row: dict[str, str]) -> None:
        for column, value in row.items():
            if len(value) > self.limits.max_cell_chars:
                raise DataError(f"{self.path}: {where}, column {column!r}: a cell of {len(value):,} characters, "
                                f"more than the limit of {self.limits.max_cell_chars:,}; shorten it")
            self._chars += len(value)
        if self._chars > self.limits.max_text_chars:
            raise DataError(f"{self.path}: more than {self.limits.max_text_chars:,} characters of text in all, the "
                            f"limit for one file (at {where}); split it or take a sample")

    # ---- formats ----

    def _text_lines(self) -> Iterator[str]:
        try:
            with self.path.open(encoding="utf-8-sig", newline="") as f:
                yield from f
        except UnicodeDecodeError:
            raise _utf8_error(self.path) from None

    def _delimited(self) -> Iterator[Row]:
        csv.field_size_limit(max(csv.field_size_limit(), self.limits.max_cell_chars + 1))
        reader = csv.reader(self._text_lines(), delimiter="," if self.kind == "csv" else "\t")
        try:
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise DataError(f"{self.path}: no header row: the first line must name the columns")
            duplicated = sorted({h for h in header if header.count(h) > 1})
            if duplicated:
                raise DataError(f"{self.path}: column name(s) used twice in the header: {', '.join(duplicated)}")
            self.columns = dict.fromkeys(header)
            problems, n = Problems(self.path), 0
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue  # blank line
                n += 1
                if len(cells) > len(header):
                    problems.add(f"row {n} (line {reader.line_num}): {len(cells)} fields, the header has "
                                 f"{len(header)}")
                yield f"row {n}", dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=False))
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                raise DataError(f"{self.path}: line {reader.line_num}: a cell of more than "
                                f"{self.limits.max_cell_chars:,} characters, the limit; shorten it") from exc
            raise DataError(f"{self.path}: malformed {self.path.suffix[1:].upper()} at line {reader.line_num}: "
                            f"{exc}") from exc
        problems.raise_if_any()

    def _json(self) -> Iterator[Row]:
        with self.path.open("rb") as f:
            start = f.read(4096).decode("utf-8-sig", errors="ignore").lstrip()
        items = self._json_array() if start.startswith("[") else self._json_lines()
        problems = Problems(self.path)
        for item, where in items:
            if not isinstance(item, dict):
                problems.add(f'{where}: expected a JSON object such as {{"text": ..., "label": ...}}, got '
                             f"{item!r:.40}")
                continue
            self.columns.update(dict.fromkeys(map(str, item)))
            yield where, {str(k): cell(v) for k, v in item.items()}
        problems.raise_if_any()

    def _json_lines(self) -> Iterator[tuple[Any, str]]:
        problems, n = Problems(self.path), 0
        # Split on "\n" only (the file is opened with newline=""): str.splitlines() also breaks at U+2028, which
        # JSON allows inside strings.
        for line_no, line in enumerate(self._text_lines(), start=1):
            if not line.strip():
                continue
            n += 1
            where = f"row {n}" if n == line_no else f"row {n} (line {line_no})"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.add(f"{where}: malformed JSON: {exc.msg} at column {exc.colno}")
                continue
            if not problems.count:
                yield item, where
        problems.raise_if_any()

    def _json_array(self) -> Iterator[tuple[Any, str]]:
        size = self.path.stat().st_size
        if size > self.limits.max_json_array_bytes:
            raise DataError(f"{self.path}: a JSON array of {size / 2**20:.1f} MiB is read whole, and the limit for "
                            f"that is {self.limits.max_json_array_bytes / 2**20:.0f} MiB; save it as JSON Lines "
                            "(one object per line)")
        try:
            data = json.loads(_decoded(self.path))
        except json.JSONDecodeError as exc:
            raise DataError(f"{self.path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
        for i, item in enumerate(data, start=1):
            yield item, f"row {i}"

    def _parquet(self) -> Iterator[Row]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(self.path)
            meta = file.metadata
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{self.path}: not a readable Parquet file: {exc}") from exc
        if meta.num_rows > self.limits.max_rows:
            raise DataError(f"{self.path}: {meta.num_rows:,} rows, more than the limit of {self.limits.max_rows:,} "
                            "for one file; split it or take a sample")
        decoded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if decoded > self.limits.max_text_chars:
            raise DataError(f"{self.path}: {decoded / 2**20:,.0f} MiB once decompressed, more than the limit of "
                            f"{self.limits.max_text_chars / 2**20:,.0f} MiB for one file; split it")
        self.columns = dict.fromkeys(file.schema_arrow.names)
        n = 0
        try:
            for batch in file.iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    n += 1
                    yield f"row {n}", {k: cell(v) for k, v in row.items()}
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{self.path}: not a readable Parquet file: {exc}") from exc


def _decoded(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _utf8_error(path) from None


def _utf8_error(path: Path) -> DataError:
    """Where the first byte that is not UTF-8 is (offset and line), found without reading the file whole."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                # The decoder may hold back up to 3 bytes of an unfinished character from the chunk before.
                bad = max(0, exc.start - (len(exc.object) - len(chunk)))
                at = offset + bad
                line = lines + chunk[:bad].count(b"\n")
                return DataError(
                    f"{path}: not UTF-8 text: byte 0x{chunk[bad]:02x} at byte offset {at} (line {line}); "
                    "the file must be UTF-8 encoded: re-save it as UTF-8"
                )
            offset, lines = offset + len(chunk), lines + chunk.count(b"\n")
    return DataError(f"{path}: not UTF-8 text; the file must be UTF-8 encoded: re-save it as UTF-8")
