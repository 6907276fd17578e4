"""Query functions over the `uploads` table: who uploaded which file, how much each owner keeps, which are in use.

Like jobs.store, each takes the caller's session (`jobs.db.transact` / `read` open it).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from jobs.models import Job, Status, Upload, utcnow


def record_upload(*, session: Session, digest: str, owner: str, name: str, size: int, rows: int) -> Upload:
    """The owner's row for this file (a new one, or the old one renamed and marked used now)."""
    row = find_upload(session=session, digest=digest, owner=owner)
    if row is None:
        row = Upload(digest=digest, owner=owner, name=name, size=size, rows=rows)
        session.add(row)
    else:
        row.name, row.used_at = name, utcnow()
    session.flush()
    return row


def find_upload(*, session: Session, digest: str, owner: str) -> Upload | None:
    return session.scalars(select(Upload).where(Upload.digest == digest, Upload.owner == owner)).first()


def touch_upload(*, session: Session, upload_id: int) -> None:
    session.execute(update(Upload).where(Upload.id == upload_id).values(used_at=utcnow()))


def owner_bytes(*, session: Session, owner: str) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(Upload.size), 0)).where(Upload.owner == owner)) or 0)


def owner_uploads(*, session: Session, owner: str) -> list[Upload]:
    """The owner's uploads, least recently used first."""
    return list(session.scalars(select(Upload).where(Upload.owner == owner).order_by(Upload.used_at, Upload.id)))


def all_uploads(*, session: Session) -> list[Upload]:
    return list(session.scalars(select(Upload).order_by(Upload.used_at, Upload.id)))


def unused_since(*, session: Session, before: datetime) -> list[Upload]:
    return list(session.scalars(select(Upload).where(Upload.used_at < before).order_by(Upload.used_at)))


def delete_upload(*, session: Session, upload_id: int) -> None:
    session.execute(delete(Upload).where(Upload.id == upload_id))


def files_in_use(*, session: Session) -> set[str]:
    """The data files of jobs that are queued or running (a retention or quota never removes those)."""
    specs = session.scalars(select(Job.spec).where(Job.status.in_((Status.QUEUED, Status.RUNNING))))
    used: set[str] = set()
    for spec in specs:
        data = spec.get("data", {})
        used.update(p for p in (data.get("train_file"), data.get("eval_file")) if p)
    return used
