"""Warm starts through the store: a job id names the artifact of a finished job (`lamp submit --init-from 12`, the
New job form's "Start from job"), and an artifact names the job that wrote it (job details)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import ConfigError
from jobs import store
from jobs.db import read
from jobs.models import Result, Status


def artifact_of_job(job_id: int) -> str:
    job = read(store.get_job, job_id=job_id)
    if job is None:
        raise ConfigError(f"init_from: there is no job {job_id}")
    result = read(store.get_result, job_id=job_id)
    if job.status != Status.SUCCEEDED or result is None:
        raise ConfigError(f"init_from: job {job_id} is {job.status}; a warm start needs a SUCCEEDED job")
    return result.artifact


def resolve_init_from(value: str | int | float | None) -> str | None:
    """A job id (`12`, `#12`) -> that job's artifact directory; a directory stays as given; empty -> None."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return artifact_of_job(int(value))
    text = value.strip()
    if not text:
        return None
    if text.lstrip("#").isdigit():
        return artifact_of_job(int(text.lstrip("#")))
    return text


def result_for_artifact(*, session: Session, artifact: str) -> Result | None:
    paths = {artifact, str(Path(artifact).expanduser().resolve())}
    return session.scalars(select(Result).where(Result.artifact.in_(paths)).order_by(Result.job_id)).first()


def job_of_artifact(artifact: str) -> int | None:
    """The job whose result is this artifact directory (None: a `lamp train` run, or another store's job)."""
    result = read(result_for_artifact, artifact=artifact)
    return result.job_id if result is not None else None
