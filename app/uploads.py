"""A user's data file from the browser: checked within limits, kept under $LAMP_HOME/uploads, known to the client
only by the id the server issued.

Gradio puts what a browser posts under its temporary folder; `accept_upload` reads it once as a stream (never the
whole file in memory: a sample for the preview and the column guess, a count of the rest), copies it to
`uploads/<sha256>/<name>`, records it for its owner (the logged-in user, or the browser session) and deletes
Gradio's copy. The form then holds only the sha256; `resolve_upload` turns it back into the file for that owner alone.
Each owner keeps at most a quota (its least recently used uploads go first), all uploads at most a total.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from app.access import Access
from app.settings import Quota, gradio_temp_dir, uploads_dir
from core.errors import ConfigError, DataError, StorageError, storage_error
from core.tasks.files import MAX_CLASSES, check_user_files
from core.tasks.reading import FORMATS, Limits, Reader
from jobs import uploads as upload_store
from jobs.db import read, transact

PREVIEW_ROWS = 5
SAMPLE_ROWS = 500
"""Rows kept in memory from an upload: the preview and the column guess read these."""
_ID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Upload:
    id: str
    """The file's sha256: all the client is given, and all it can name the file by."""
    name: str
    path: Path
    """The dashboard's copy, under $LAMP_HOME/uploads/<id>/<name>."""
    columns: list[str]
    rows: int
    sample: list[dict[str, str]]
    """The first SAMPLE_ROWS rows."""

    def preview(self, rows: int = PREVIEW_ROWS) -> pd.DataFrame:
        return pd.DataFrame([[r.get(c, "") for c in self.columns] for r in self.sample[:rows]], columns=self.columns)


def _safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "data"
    return stem[:100]


def _remove_temp(path: Path) -> None:
    """Gradio keeps each upload in a folder of its own; remove both (quietly: it may be gone already)."""
    with contextlib.suppress(OSError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only if now empty


def _scan(temp: Path, name: str, access: Access) -> tuple[str, list[str], int, list[dict[str, str]]]:
    """(sha256, columns, rows, sample), reading the file once as a stream within the limits."""
    digest = hashlib.sha256()
    with temp.open("rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    reader = Reader(temp, access.limits)
    sample: list[dict[str, str]] = []
    try:
        for _, row in reader:
            if len(sample) < SAMPLE_ROWS:
                sample.append(row)
    except DataError as exc:
        raise DataError(str(exc).replace(str(temp), name)) from exc
    return digest.hexdigest(), list(reader.columns), reader.count, sample


def accept_upload(temp_path: str | Path, *, access: Access, quota: Quota | None = None,
                  original_name: str | None = None) -> Upload:
    """Check the file (where it came from, type, size, rows, cells), keep a copy for `access.owner`, delete the
    upload. DataError says what is wrong, naming the file by the name the user gave it; StorageError when the
    server's disk cannot take it."""
    temp = Path(temp_path)
    name = _safe_name(original_name or temp.name)
    root = gradio_temp_dir().resolve()
    if root not in Path(temp).resolve().parents:  # Gradio only hands over files under its folder; never another
        raise DataError(f"{name}: not a file uploaded to this dashboard; upload it again")
    try:
        suffix = Path(name).suffix.lower()
        if suffix not in FORMATS:
            raise DataError(f"{name}: unknown file type {suffix or '(none)'!r}; upload one of {', '.join(FORMATS)}")
        size = temp.stat().st_size
        limit = access.limits.max_bytes
        if size > limit:
            raise DataError(f"{name}: {size / 2**20:.1f} MiB is over the upload limit of {limit / 2**20:.0f} MiB")
        digest, columns, rows, sample = _scan(temp, name, access)
        if read(upload_store.find_upload, digest=digest, owner=access.owner) is None:
            _make_room(access.owner, size, quota or Quota())
        target = uploads_dir() / digest / name
        try:
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".part")
                shutil.copyfile(temp, partial)
                partial.replace(target)
        except OSError as exc:
            problem = storage_error(OSError(exc.errno, exc.strerror, str(target.parent)))
            if problem is None:
                raise
            raise StorageError(f"the server cannot keep {name}: {problem} (this is for the server's operator)"
                               ) from exc
    finally:
        _remove_temp(temp)
    transact(upload_store.record_upload, digest=digest, owner=access.owner, name=name, size=size, rows=rows)
    return Upload(digest, name, target, columns, rows, sample)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _make_room(owner: str, size: int, quota: Quota) -> None:
    """Evict the owner's least recently used uploads (not those a queued or running job reads) until `size` more
    fits its quota; refuse when it cannot, or when all uploads together would pass the total."""
    if size > quota.owner_bytes:
        raise DataError(f"{size / 2**20:.1f} MiB is more than the {quota.owner_bytes / 2**20:.0f} MiB one user may "
                        "keep uploaded")
    used = read(upload_store.owner_bytes, owner=owner)
    in_use = read(upload_store.files_in_use)
    for row in read(upload_store.owner_uploads, owner=owner):
        if used + size <= quota.owner_bytes:
            break
        if str(uploads_dir() / row.digest / row.name) not in in_use:
            remove_upload(row.id, row.digest, row.name)
            used -= row.size
    if used + size > quota.owner_bytes:
        raise DataError(f"your uploads take {used / 2**20:.0f} MiB of the {quota.owner_bytes / 2**20:.0f} MiB you "
                        "may keep, and queued or running jobs read them; wait for those jobs, then upload again")
    total = _folder_bytes(uploads_dir())
    if total + size > quota.total_bytes:
        raise StorageError(f"the server's uploads take {total / 2**20:.0f} MiB of the {quota.total_bytes / 2**20:.0f}"
                           " MiB they may; ask the operator to run `lamp gc` or raise LAMP_UPLOADS_TOTAL_MB")


def remove_upload(upload_id: int, digest: str, name: str) -> None:
    """Forget one owner's upload; the file goes when no other owner has the same one."""
    transact(upload_store.delete_upload, upload_id=upload_id)
    others = [r for r in read(upload_store.all_uploads) if r.digest == digest and r.name == name]
    if not others:
        with contextlib.suppress(OSError):
            (uploads_dir() / digest / name).unlink()
        with contextlib.suppress(OSError):
            (uploads_dir() / digest).rmdir()


def resolve_upload(upload_id: object, *, owner: str) -> Path:
    """The file behind an id this owner was given; DataError (the same one for any id that is not theirs)."""
    text = str(upload_id or "").strip()
    row = read(upload_store.find_upload, digest=text, owner=owner) if _ID.fullmatch(text) else None
    if row is None:
        raise DataError("not one of your uploads; upload the file again")
    path = uploads_dir() / row.digest / row.name
    if not path.is_file():
        raise DataError(f"{row.name} was removed (unused for too long, or over the quota); upload it again")
    transact(upload_store.touch_upload, upload_id=row.id)
    return path


def guess_columns(columns: list[str], sample: list[dict[str, str]]) -> tuple[str | None, str | None]:
    """(text column, label column). The label is the column with the fewest distinct values (2..MAX_CLASSES) that
    repeats some value, ties broken by the shorter cells; the text is the remaining column with the longest cells.
    On a small file a text column can have as few distinct values as the label: its longer cells tell them apart."""
    if not columns:
        return None, None
    distinct = {c: len({r.get(c, "") for r in sample}) for c in columns}
    length = {c: sum(len(r.get(c, "")) for r in sample) / max(1, len(sample)) for c in columns}
    repeats = [c for c in columns if 2 <= distinct[c] <= MAX_CLASSES and distinct[c] < len(sample)]
    labels = repeats or [c for c in columns if 2 <= distinct[c] <= MAX_CLASSES]
    label = min(labels, key=lambda c: (distinct[c], length[c])) if labels else None
    others = [c for c in columns if c != label] or list(columns)
    text = max(others, key=lambda c: length[c])
    return text, label


@lru_cache(maxsize=64)
def skip_note(upload_id: str, text_column: str | None, label_column: str, template: str | None, kind: str,
              strict: bool, owner: str, limits: Limits) -> str:
    """Markdown: the rows of an owner's upload the job will skip (an empty input or label) for these columns, or
    why it would refuse the file. One streaming pass, as the job will read it, per upload and columns (cached)."""
    try:
        path = resolve_upload(upload_id, owner=owner)
    except DataError as exc:
        return f"**Upload again:** {exc}"
    try:
        found = check_user_files(str(path), text_column=text_column, label_column=label_column, template=template,
                                 kind=kind, limits=limits, strict=strict)  # type: ignore[arg-type]
    except (DataError, ConfigError) as exc:
        return "**The job would refuse this file:** " + str(exc).replace(str(path), path.name)
    if not found.skipped:
        return f"Every one of the {found.rows:,} rows has an input and a label."
    return " · ".join(f"**{s.count:,} of {s.rows:,} rows will be skipped** ({s.why}): {', '.join(s.first)}"
                      f"{', ...' if s.count > len(s.first) else ''}; tick Strict to refuse the file instead"
                      for s in found.skipped)
