"""Small keyword-only query functions over the results store. Each takes the caller's session; `jobs.db.transact`
runs one in a short write transaction.

Every change of a running job is a compare-and-set on (status RUNNING, attempts = the caller's attempt number):
a worker whose lease was taken over, or a training process left behind by a dead worker, cannot change a job that
has moved on, and a job is claimed by exactly one worker (QUEUED -> RUNNING in one UPDATE).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobs import DEFAULT_MAX_ATTEMPTS
from jobs.errors import JobNotFound, StudyNotFound
from jobs.models import (
    Job,
    JobAttempt,
    MetricPoint,
    Outcome,
    Result,
    Status,
    Study,
    StudyStatus,
    StudyTrial,
    utcnow,
)

Lease = Literal["ok", "cancel", "lost"]


@dataclass(frozen=True)
class Point:
    step: int
    split: str
    name: str
    value: float | None


def create_job(*, session: Session, spec: dict[str, Any], max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Job:
    job = Job(spec=spec, status=Status.QUEUED, max_attempts=max_attempts)
    session.add(job)
    session.flush()
    return job


def get_job(*, session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id, populate_existing=True)


def list_jobs(*, session: Session, status: str | None = None, limit: int | None = 100) -> list[Job]:
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Job.status == status)
    return list(session.scalars(query))


def get_result(*, session: Session, job_id: int) -> Result | None:
    return session.get(Result, job_id)


def results_for(*, session: Session, job_ids: Sequence[int]) -> dict[int, Result]:
    return {r.job_id: r for r in session.scalars(select(Result).where(Result.job_id.in_(job_ids)))}


def job_attempts(*, session: Session, job_id: int) -> list[JobAttempt]:
    return list(session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.number)))


def metric_mark(*, session: Session, job_id: int) -> tuple[int, str]:
    """(number of points, when the latest was written) of a job: changes whenever a point is written or
    overwritten, for a page's poll to redraw on."""
    count, last = session.execute(select(func.count(MetricPoint.id), func.max(MetricPoint.created_at))
                                  .where(MetricPoint.job_id == job_id)).one()
    return int(count or 0), str(last)


def metric_points(*, session: Session, job_id: int, split: str | None = None, name: str | None = None,
                  after_step: int | None = None) -> list[MetricPoint]:
    query = select(MetricPoint).where(MetricPoint.job_id == job_id).order_by(MetricPoint.step, MetricPoint.id)
    if split is not None:
        query = query.where(MetricPoint.split == split)
    if name is not None:
        query = query.where(MetricPoint.name == name)
    if after_step is not None:
        query = query.where(MetricPoint.step > after_step)
    return list(session.scalars(query))


def mark_enqueued(*, session: Session, job_id: int) -> None:
    session.execute(update(Job).where(Job.id == job_id, Job.status == Status.QUEUED).values(enqueued_at=utcnow()))


def claim_job(*, session: Session, job_id: int, worker: str, lease_seconds: float) -> JobAttempt | None:
    """QUEUED -> RUNNING for this worker, atomically; None if someone else has it or it is no longer queued.

    The attempt starts in the loading phase: from here to its first step the worker starts the training process and
    loads the model and data."""
    now = utcnow()
    number = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == Status.QUEUED, Job.cancel_requested.is_(False))
        .values(status=Status.RUNNING, worker=worker, attempts=Job.attempts + 1, heartbeat_at=now,
                lease_expires_at=now + timedelta(seconds=lease_seconds), started_at=func.coalesce(Job.started_at, now),
                phase={"phase": "loading"})
        .returning(Job.attempts)
    ).scalar_one_or_none()
    if number is None:
        return None
    attempt = JobAttempt(job_id=job_id, number=number, worker=worker, started_at=now)
    session.add(attempt)
    session.flush()
    return attempt


def _fence(job_id: int, attempt: int) -> ColumnElement[bool]:
    return and_(Job.id == job_id, Job.status == Status.RUNNING, Job.attempts == attempt)


def set_phase(*, session: Session, job_id: int, attempt: int, phase: dict[str, Any]) -> bool:
    """Record what the running attempt is doing (fenced: nothing is written once the job is not this attempt's)."""
    done = session.execute(update(Job).where(_fence(job_id, attempt)).values(phase=phase).returning(Job.id))
    return done.scalar_one_or_none() is not None


def _update_attempt(session: Session, job_id: int, attempt: int, **values: Any) -> None:
    session.execute(update(JobAttempt).where(JobAttempt.job_id == job_id, JobAttempt.number == attempt)
                    .values(**values))


def set_attempt_pid(*, session: Session, job_id: int, attempt: int, pid: int) -> None:
    _update_attempt(session, job_id, attempt, pid=pid)


def heartbeat(*, session: Session, job_id: int, attempt: int, lease_seconds: float) -> Lease:
    """Extend the lease. `cancel`: the user asked to stop; `lost`: the job is no longer this attempt's."""
    now = utcnow()
    cancel = session.execute(
        update(Job).where(_fence(job_id, attempt))
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .returning(Job.cancel_requested)
    ).scalar_one_or_none()
    return "lost" if cancel is None else "cancel" if cancel else "ok"


def should_stop(*, session: Session, job_id: int, attempt: int) -> bool:
    """For the training process: stop when cancel was asked or the job is no longer this attempt's."""
    row = session.execute(select(Job.status, Job.attempts, Job.cancel_requested).where(Job.id == job_id)).one_or_none()
    return row is None or row.status != Status.RUNNING or row.attempts != attempt or bool(row.cancel_requested)


def start_attempt(*, session: Session, job_id: int, attempt: int, resumed_from: int | None,
                  total_steps: int, data_report: dict[str, Any] | None = None) -> bool:
    """Record where training (re)started and what it left out of the data; False if the job is no longer this
    attempt's."""
    ok = session.execute(update(Job).where(_fence(job_id, attempt))
                         .values(total_steps=total_steps, data_report=data_report)
                         .returning(Job.id)).scalar_one_or_none()
    if ok is not None:
        _update_attempt(session, job_id, attempt, resumed_from=resumed_from, last_step=resumed_from or 0)
    return ok is not None


def add_metrics(*, session: Session, job_id: int, attempt: int, points: Sequence[Point], step: int | None = None,
                fenced: bool = True) -> bool:
    """Write a batch of points (a repeated (step, split, name) overwrites the old value) and the job's progress.
    With `fenced`, nothing is written unless the job is still this attempt's; returns whether it was written."""
    if fenced:
        ok = session.execute(update(Job).where(_fence(job_id, attempt)).values(step=Job.step if step is None else step)
                             .returning(Job.id)).scalar_one_or_none()
        if ok is None:
            return False
        if step is not None:
            _update_attempt(session, job_id, attempt, last_step=step)
    now = utcnow()
    rows = [{"job_id": job_id, "attempt": attempt, "step": p.step, "split": p.split, "name": p.name,
             "value": p.value, "created_at": now} for p in points]
    insert = sqlite.insert if session.get_bind().dialect.name == "sqlite" else postgresql.insert
    for start in range(0, len(rows), 500):  # under SQLite's limit of bound parameters per statement
        stmt = insert(MetricPoint).values(rows[start:start + 500])
        session.execute(stmt.on_conflict_do_update(
            index_elements=["job_id", "step", "split", "name"],
            set_={"value": stmt.excluded.value, "attempt": stmt.excluded.attempt,
                  "created_at": stmt.excluded.created_at}))
    return True


def finish_job(*, session: Session, job_id: int, attempt: int, status: Status, error: str | None = None,
               result: dict[str, Any] | None = None) -> bool:
    """End a running attempt for good: SUCCEEDED (with `result`, a FitResult.to_json()), FAILED, CANCELLED,
    PRUNED or OUT_OF_MEMORY."""
    now = utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now, "lease_expires_at": None, "error": error}
    if result is not None:
        values.update(artifact=result["artifact"], step=result["steps"])
    ok = session.execute(update(Job).where(_fence(job_id, attempt)).values(**values).returning(Job.id))
    if ok.scalar_one_or_none() is None:
        return False
    outcome = {Status.SUCCEEDED: Outcome.SUCCEEDED, Status.FAILED: Outcome.FAILED, Status.PRUNED: Outcome.PRUNED,
               Status.OUT_OF_MEMORY: Outcome.OUT_OF_MEMORY}.get(status, Outcome.CANCELLED)
    _update_attempt(session, job_id, attempt, outcome=outcome, ended_at=now, error=error)
    if result is not None:
        session.add(Result(job_id=job_id, **{k: result[k] for k in (
            "metrics", "scoring", "trainable_params", "peak_memory_mb", "train_seconds", "total_seconds",
            "examples_per_second", "steps", "best_step", "artifact")}))
    return True


def release_job(*, session: Session, job_id: int, attempt: int, outcome: Outcome, error: str | None,
                expired_before: Any = None) -> Status | None:
    """Give a running job up: back to QUEUED to be resumed from its checkpoint, or, decided in the same UPDATE,
    CANCELLED if cancel was asked or FAILED when a crash/expiry uses up max_attempts. `expired_before`: only if the
    lease expired before then (the reaper). Returns the new status, None if the job was not this attempt's."""
    now = utcnow()
    counts = outcome in (Outcome.CRASHED, Outcome.LEASE_EXPIRED)
    failures = Job.failures + 1 if counts else Job.failures
    new_status = case((Job.cancel_requested, Status.CANCELLED.value),
                      (failures >= Job.max_attempts, Status.FAILED.value), else_=Status.QUEUED.value)
    where = _fence(job_id, attempt)
    if expired_before is not None:
        where = and_(where, Job.lease_expires_at < expired_before)
    row = session.execute(
        update(Job).where(where)
        .values(status=new_status, failures=failures, worker=None, lease_expires_at=None, heartbeat_at=None,
                enqueued_at=None, error=error, finished_at=case((new_status != Status.QUEUED.value, now), else_=None))
        .returning(Job.status, Job.failures, Job.max_attempts)
    ).one_or_none()
    if row is None:
        return None
    _update_attempt(session, job_id, attempt, outcome=outcome, ended_at=now, error=error)
    if row.status == Status.FAILED:
        reason = f"gave up after {row.failures} failed attempts (max_attempts={row.max_attempts}); last: {error}"
        session.execute(update(Job).where(Job.id == job_id).values(error=reason))
    return Status(row.status)


def requeue_expired(*, session: Session, now: Any = None, alive: Sequence[int] = ()) -> list[tuple[int, Status]]:
    """Release every RUNNING job whose lease expired (its worker died): [(job id, new status)]. `alive`: jobs the
    caller's own process is running (their lease lapsed because the store could not be written, not because their
    worker died: that worker records their outcome)."""
    now = now or utcnow()
    rows = session.execute(select(Job.id, Job.attempts, Job.worker, Job.lease_expires_at)
                           .where(Job.status == Status.RUNNING, Job.lease_expires_at < now,
                                  Job.id.not_in(list(alive)))).all()
    released = []
    for row in rows:
        error = (f"worker {row.worker} stopped heartbeating; its lease expired at "
                 f"{row.lease_expires_at:%Y-%m-%d %H:%M:%S} UTC")
        status = release_job(session=session, job_id=row.id, attempt=row.attempts, outcome=Outcome.LEASE_EXPIRED,
                             error=error, expired_before=now)
        if status is not None:
            released.append((row.id, status))
    return released


def stale_queued(*, session: Session, older_than: float) -> list[int]:
    """QUEUED jobs whose last queue message is older than `older_than` seconds (or that never got one)."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    return list(session.scalars(select(Job.id).where(
        Job.status == Status.QUEUED, or_(Job.enqueued_at.is_(None), Job.enqueued_at < cutoff)).order_by(Job.id)))


def request_cancel(*, session: Session, job_id: int) -> Job:
    """A queued job is CANCELLED at once (it never starts); a running one gets `cancel_requested` and its worker
    stops it within seconds; a finished one is left as it is."""
    now = utcnow()
    session.execute(update(Job).where(Job.id == job_id, Job.status == Status.QUEUED)
                    .values(status=Status.CANCELLED, cancel_requested=True, finished_at=now))
    session.execute(update(Job).where(Job.id == job_id, Job.status == Status.RUNNING).values(cancel_requested=True))
    job = get_job(session=session, job_id=job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id}; `lamp jobs` lists them")
    return job


def phase_of(job: Job) -> dict[str, Any] | None:
    """The job's phase while it runs; None once it has ended or before it starts."""
    return job.phase if job.status == Status.RUNNING and job.phase else None


def phase_text(phase: dict[str, Any] | None) -> str:
    """"testing 128/300", "loading", ...: a phase as a person reads it ("" for none)."""
    if not phase:
        return ""
    done, total = phase.get("done"), phase.get("total")
    return f"{phase['phase']} {done}/{total}" if done is not None and total else str(phase["phase"])


def job_summary(job: Job, result: Result | None = None) -> dict[str, Any]:
    """A JSON-able view of a job for `lamp jobs --json` and the dashboard."""
    spec = job.spec
    data = spec.get("data", {})
    out: dict[str, Any] = {
        "id": job.id, "status": job.status, "step": job.step, "total_steps": job.total_steps,
        "attempts": job.attempts, "failures": job.failures, "max_attempts": job.max_attempts,
        "method": spec.get("method", {}).get("name"), "model": spec.get("model", {}).get("name"),
        "task": data.get("task") or data.get("train_file"), "worker": job.worker,
        "cancel_requested": job.cancel_requested, "error": job.error, "artifact": job.artifact,
        "data_report": job.data_report, "phase": phase_of(job),
    }
    for name in ("created_at", "started_at", "finished_at", "heartbeat_at"):
        value = getattr(job, name)
        out[name] = value.isoformat() + "Z" if value is not None else None
    if result is not None:
        out.update(metrics=result.metrics, trainable_params=result.trainable_params,
                   peak_memory_mb=result.peak_memory_mb, train_seconds=result.train_seconds,
                   examples_per_second=result.examples_per_second)
    return out


# ---- studies: a study's row, its trials (one job each) and the lease of the process that advances it ----

StudySnapshot = tuple[Study | None, list[StudyTrial], dict[int, Job]]


def list_studies(*, session: Session, limit: int = 50) -> list[Study]:
    return list(session.scalars(select(Study).order_by(Study.id.desc()).limit(limit)))


def study_jobs(*, session: Session, study_id: int) -> list[int]:
    return [j for j in session.scalars(select(StudyTrial.job_id).where(StudyTrial.study_id == study_id)
                                       .order_by(StudyTrial.number)) if j is not None]


def study_snapshot(*, session: Session, study_id: int) -> StudySnapshot:
    """The study (None if there is none), its trials in order, and their jobs by id."""
    study = session.get(Study, study_id)
    trials = list(session.scalars(select(StudyTrial).where(StudyTrial.study_id == study_id)
                                  .order_by(StudyTrial.number)))
    ids = [t.job_id for t in trials if t.job_id is not None]
    jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))} if ids else {}
    return study, trials, jobs


def study_results(*, session: Session, study_id: int) -> tuple[Study, list[StudyTrial], dict[int, Job],
                                                                dict[int, Result]]:
    """The snapshot and the results of its trials' jobs; StudyNotFound when there is no such study."""
    study, trials, jobs = study_snapshot(session=session, study_id=study_id)
    if study is None:
        raise StudyNotFound(f"no study {study_id}; `lamp study list` lists them")
    return study, trials, jobs, results_for(session=session, job_ids=list(jobs))


def add_study(*, session: Session, study: Study) -> Study:
    """Record a study; its Optuna name is made from the id it gets."""
    session.add(study)
    session.flush()
    study.optuna_name = f"lamp-study-{study.id}"
    return study


def delete_study(*, session: Session, study_id: int) -> None:
    row = session.get(Study, study_id)
    if row is not None:
        session.delete(row)


def lock_study(*, session: Session, study_id: int, seconds: float) -> Study | None:
    """Take the study's lease (the one process advancing it) for `seconds`; None while another holds it."""
    now = utcnow()
    got = session.execute(
        update(Study).where(Study.id == study_id, (Study.locked_until.is_(None)) | (Study.locked_until < now))
        .values(locked_until=now + timedelta(seconds=seconds)).returning(Study.id)).scalar_one_or_none()
    return session.get(Study, study_id) if got is not None else None


def unlock_study(*, session: Session, study_id: int) -> None:
    session.execute(update(Study).where(Study.id == study_id).values(locked_until=None))


def add_trial(*, session: Session, trial: StudyTrial) -> None:
    session.add(trial)


def set_trial(*, session: Session, trial_id: int, state: str, note: str | None) -> None:
    session.execute(update(StudyTrial).where(StudyTrial.id == trial_id).values(state=state, note=note))


def finish_study(*, session: Session, study_id: int, status: StudyStatus) -> None:
    session.execute(update(Study).where(Study.id == study_id, Study.status == StudyStatus.RUNNING)
                    .values(status=status, finished_at=utcnow()))


def cancel_study(*, session: Session, study_id: int) -> list[int]:
    """Mark a study CANCELLED; returns the jobs of its open trials (to be cancelled)."""
    if session.get(Study, study_id) is None:
        raise StudyNotFound(f"no study {study_id}; `lamp study list` lists them")
    finish_study(session=session, study_id=study_id, status=StudyStatus.CANCELLED)
    return [j for j in session.scalars(select(StudyTrial.job_id).where(
        StudyTrial.study_id == study_id, StudyTrial.state == "RUNNING")) if j is not None]


def studies_with_work(*, session: Session) -> list[int]:
    """Studies still running, or with a trial not yet told."""
    running = select(Study.id).where(Study.status == StudyStatus.RUNNING)
    open_trials = select(StudyTrial.study_id).where(StudyTrial.state == "RUNNING")
    return list(session.scalars(running.union(open_trials)))


def trial_of_job(*, session: Session, job_id: int) -> tuple[Study, StudyTrial] | None:
    """The study and trial a job runs, if it is a study's trial."""
    trial = session.scalar(select(StudyTrial).where(StudyTrial.job_id == job_id))
    study = session.get(Study, trial.study_id) if trial is not None else None
    return (study, trial) if study is not None and trial is not None else None

