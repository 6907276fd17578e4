"""What the dashboard keeps on disk, and for how long: `lamp gc`, and the server's own sweep every hour.

- uploads/: an upload unused (not uploaded again, no job launched with it) for the retention period is forgotten and
  its file deleted, unless a queued or running job reads it; files no upload row names (left by an older version, or
  a copy cut short) go after the same period.
- gradio-tmp/: what clients posted to Gradio's upload route and no handler took (Gradio's own sweep covers a running
  server; this covers files a killed server left) goes after an hour.
- exports/: downloads (artifact zips, CSVs) are rebuilt on demand; they go after a day.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from app.settings import DEFAULT_RETENTION_DAYS, exports_dir, gradio_temp_dir, uploads_dir
from app.uploads import remove_upload
from jobs import uploads as upload_store
from jobs.db import read
from jobs.models import utcnow

log = logging.getLogger(__name__)
TEMP_AGE_S = 3600.0
EXPORT_AGE_S = 86400.0
SWEEP_EVERY_S = 3600.0


@dataclass
class Collected:
    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0

    def add(self, path: Path, dry_run: bool) -> None:
        with contextlib.suppress(OSError):
            size = path.stat().st_size
            if not dry_run:
                path.unlink()
            self.removed.append(str(path))
            self.freed_bytes += size


def _old_files(folder: Path, age_s: float) -> list[Path]:
    cutoff = time.time() - age_s
    out = []
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            with contextlib.suppress(OSError):
                if path.lstat().st_mtime < cutoff:
                    out.append(path)
    return out


def _prune_empty(folder: Path) -> None:
    for root, dirs, _ in os.walk(folder, topdown=False):
        for name in dirs:
            with contextlib.suppress(OSError):
                (Path(root) / name).rmdir()  # only empty ones


def collect(*, retention_days: float = DEFAULT_RETENTION_DAYS, dry_run: bool = False) -> Collected:
    """Remove what has outlived its time (see the module's docstring); returns what went (or would go)."""
    done = Collected()
    in_use = read(upload_store.files_in_use)
    before = utcnow() - timedelta(days=retention_days)
    for row in read(upload_store.unused_since, before=before):
        path = uploads_dir() / row.digest / row.name
        if str(path) in in_use:
            continue
        size = path.stat().st_size if path.is_file() else 0
        if not dry_run:
            remove_upload(row.id, row.digest, row.name)
        done.removed.append(str(path))
        done.freed_bytes += size
    named = {str(uploads_dir() / r.digest / r.name) for r in read(upload_store.all_uploads)}
    for path in _old_files(uploads_dir(), retention_days * 86400):
        if str(path) not in named and str(path) not in in_use and str(path) not in done.removed:
            done.add(path, dry_run)
    for folder, age in ((gradio_temp_dir(), TEMP_AGE_S), (exports_dir(), EXPORT_AGE_S)):
        for path in _old_files(folder, age):
            done.add(path, dry_run)
    if not dry_run:
        for folder in (uploads_dir(), gradio_temp_dir()):
            _prune_empty(folder)
    return done


def sweep_forever(stop: threading.Event, retention_days: float, every: float = SWEEP_EVERY_S) -> None:
    """The server's own `lamp gc`, at start and every `every` seconds."""
    while True:
        try:
            done = collect(retention_days=retention_days)
            if done.removed:
                log.info("retention: removed %d file(s), %.1f MiB", len(done.removed), done.freed_bytes / 2**20)
        except Exception as exc:  # the store is busy or its disk full for a moment: try again next time
            log.warning("retention sweep failed: %s", exc)
        if stop.wait(every):
            return
