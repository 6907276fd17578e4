"""A user's data file from the browser: checked, kept under $LAMP_HOME/uploads, the upload itself removed.

The training job reads the file later, in another process (maybe on another host sharing $LAMP_HOME's artifacts),
so the dashboard keeps its own copy, named by content hash, and deletes Gradio's temporary upload at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from app.settings import uploads_dir
from core.errors import DataError
from core.tasks.files import FORMATS, MAX_CLASSES, Table, read_table

PREVIEW_ROWS = 5


@dataclass(frozen=True)
class Upload:
    path: Path
    """The dashboard's copy, under $LAMP_HOME/uploads/<hash>/<name>."""
    table: Table

    @property
    def columns(self) -> list[str]:
        return list(self.table.columns)

    def preview(self, rows: int = PREVIEW_ROWS) -> pd.DataFrame:
        return pd.DataFrame(self.table.rows[:rows], columns=self.columns)


def _safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "data"
    return stem[:100]


def _remove_upload(path: Path) -> None:
    """Gradio keeps each upload in a folder of its own; remove both (quietly: it may be gone already)."""
    with contextlib.suppress(OSError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only if now empty


def accept_upload(temp_path: str | Path, *, max_bytes: int, original_name: str | None = None) -> Upload:
    """Check the file (type, size, readable rows), keep a copy, delete the upload. DataError says what is wrong,
    naming the file by the name the user gave it."""
    temp = Path(temp_path)
    name = _safe_name(original_name or temp.name)
    try:
        suffix = Path(name).suffix.lower()
        if suffix not in FORMATS:
            raise DataError(f"{name}: unknown file type {suffix or '(none)'!r}; upload one of {', '.join(FORMATS)}")
        size = temp.stat().st_size
        if size > max_bytes:
            raise DataError(f"{name}: {size / 2**20:.1f} MiB is over the upload limit of {max_bytes / 2**20:.0f} MiB")
        digest = hashlib.sha256()
        with temp.open("rb") as f:
            for chunk in iter(lambda: f.read(2**20), b""):
                digest.update(chunk)
        target = uploads_dir() / digest.hexdigest()[:16] / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")
            shutil.copyfile(temp, partial)
            partial.replace(target)
    finally:
        _remove_upload(temp)
    try:
        table = read_table(str(target), max_bytes=max_bytes)
    except DataError as exc:
        shutil.rmtree(target.parent, ignore_errors=True)
        raise DataError(str(exc).replace(str(target), name)) from exc
    return Upload(target, table)


def open_upload(path: str | Path, *, max_bytes: int) -> Upload:
    """Re-read a file accepted earlier (after a page reload the form only has its path)."""
    target = Path(path).resolve()
    if uploads_dir().resolve() not in target.parents:
        raise DataError(f"{path}: not a file uploaded to this dashboard")
    return Upload(target, read_table(str(target), max_bytes=max_bytes))


def guess_columns(table: Table) -> tuple[str | None, str | None]:
    """(text column, label column): the label is the column with the fewest distinct values (2..MAX_CLASSES),
    the text the remaining column with the longest cells on average."""
    if not table.columns:
        return None, None
    sample = table.rows[:500]
    distinct = {c: len({r.get(c, "") for r in sample}) for c in table.columns}
    labels = [c for c in table.columns if 2 <= distinct[c] <= MAX_CLASSES]
    label = min(labels, key=lambda c: distinct[c]) if labels else None
    others = [c for c in table.columns if c != label] or list(table.columns)
    text = max(others, key=lambda c: sum(len(r.get(c, "")) for r in sample))
    return text, label
