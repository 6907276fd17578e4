"""The results store's tables (SQLAlchemy 2.0 declarative). Times are naive UTC (`utcnow()`) on every backend."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from jobs import DEFAULT_MAX_ATTEMPTS

# Named constraints, so that Alembic (and batch mode on SQLite) can find them again.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit id for the one big table.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Status(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PRUNED = "PRUNED"
    """A study's pruner stopped it early: its validation metric was hopeless beside earlier trials at that step."""
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    """Training ran out of memory (any allocation failure, on any device): failed at once, never retried, with the
    settings that asked for the memory."""


FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.PRUNED, Status.OUT_OF_MEMORY)


class Outcome(StrEnum):
    """How one attempt (one training process) ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """Training raised an error that a retry would repeat (bad data, divergence, out of memory)."""
    CRASHED = "crashed"
    """The training process died (killed, segfault, unexpected exception): retried from the checkpoint."""
    LEASE_EXPIRED = "lease_expired"
    """The worker stopped heartbeating (SIGKILL, OOM killer, power loss): the reaper requeued the job."""
    HANDED_BACK = "handed_back"
    """The worker was shut down (SIGTERM) and gave the job back; does not count against max_attempts."""
    CANCELLED = "cancelled"
    PRUNED = "pruned"
    OUT_OF_MEMORY = "out_of_memory"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    spec: Mapped[dict[str, Any]]
    """`core.spec.spec_to_dict()` of the run, validated before the row was written."""
    status: Mapped[str] = mapped_column(String(16), default=Status.QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    """How many times a worker started it."""
    failures: Mapped[int] = mapped_column(default=0)
    """Attempts that crashed or lost their worker; at max_attempts the job is FAILED."""
    max_attempts: Mapped[int] = mapped_column(default=DEFAULT_MAX_ATTEMPTS)
    worker: Mapped[str | None] = mapped_column(String(200))
    """host:pid:thread of the worker holding (or that last held) the lease."""
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    step: Mapped[int] = mapped_column(default=0)
    total_steps: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None]
    """Last time a queue message was sent for it; the reaper re-sends one for a QUEUED job whose message is lost."""
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    artifact: Mapped[str | None] = mapped_column(String(1000))
    data_report: Mapped[dict[str, Any] | None]
    """What training left out of or added to the user's data (rows skipped, labels added; core.tasks.TaskData
    .data_report), written when an attempt starts; None before that, or when nothing was."""
    phase: Mapped[dict[str, Any] | None]
    """What the running attempt is doing: {"phase": "loading" | "training" | "validating" | "testing" | "writing",
    "done": n, "total": N} (progress within the phase, for the evaluations); None before it starts."""

    __table_args__ = (Index("ix_jobs_status_lease", "status", "lease_expires_at"),)


class JobAttempt(Base):
    """One training process of a job: where it ran, the step it resumed from, the last step it reached, how it
    ended."""

    __tablename__ = "job_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int]
    worker: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int | None]
    """The training process."""
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    resumed_from: Mapped[int | None]
    """The checkpoint step training resumed from; None for a fresh start."""
    last_step: Mapped[int] = mapped_column(default=0)
    outcome: Mapped[str | None] = mapped_column(String(16))
    """An `Outcome`; None while it runs."""
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("job_id", "number"),)


class MetricPoint(Base):
    """One value of one curve: split `train` (loss, lr, examples_per_second, peak_memory_mb, prompt_norm, ...),
    `val` (periodic evaluation) or `test` (final). A resumed attempt rewrites the steps it repeats (upsert on the
    unique key), so a curve has one point per step whatever happened to the workers."""

    __tablename__ = "metric_points"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int]
    step: Mapped[int]
    split: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None]
    """None for a non-finite value."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    # Leads with (job_id, step): the dashboard polls "points of job J after step S".
    __table_args__ = (UniqueConstraint("job_id", "step", "split", "name"),)


class Result(Base):
    """What a SUCCEEDED job produced (`core.train.FitResult`)."""

    __tablename__ = "results"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    metrics: Mapped[dict[str, Any]]
    """Test-split metrics of the best checkpoint, by name."""
    scoring: Mapped[dict[str, Any]]
    """Per metric: `rank` (label-word scores) or `generation` (exact match)."""
    trainable_params: Mapped[int] = mapped_column(BigInteger)
    peak_memory_mb: Mapped[float]
    train_seconds: Mapped[float]
    total_seconds: Mapped[float]
    examples_per_second: Mapped[float]
    steps: Mapped[int]
    best_step: Mapped[int]
    artifact: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StudyStatus(StrEnum):
    RUNNING = "RUNNING"
    """Trials are queued or running, or more are to be asked."""
    DONE = "DONE"
    CANCELLED = "CANCELLED"


class Study(Base):
    """A search over a run's knobs: one Optuna study (in its own database, `jobs.studies.optuna_db.storage_url()`) whose
    trials are ordinary jobs. Named `lamp_studies` so that it can never be confused with Optuna's `studies`."""

    __tablename__ = "lamp_studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    optuna_name: Mapped[str] = mapped_column(String(200), unique=True)
    """The study's name in Optuna's storage; its pruning twin is `<optuna_name>:pruning`."""
    mode: Mapped[str] = mapped_column(String(16))
    """`grid` (every combination) or `budget` (n_trials chosen by a multi-objective sampler)."""
    sampler: Mapped[str] = mapped_column(String(16))
    objectives: Mapped[list[str]] = mapped_column(JSON)
    """`accuracy` (maximised, the best validation value of the task's primary metric), then costs to minimise:
    `params`, `time`, `memory`."""
    base_spec: Mapped[dict[str, Any]]
    """`spec_to_dict()` of the run every trial starts from; a trial overrides the knobs in `space`."""
    space: Mapped[dict[str, Any]]
    """Knob -> list of values: method, length, rank, pool, lr, seed."""
    n_trials: Mapped[int]
    parallel: Mapped[int]
    """Trials queued or running at the same time."""
    pruner: Mapped[str] = mapped_column(String(16))
    tolerance: Mapped[float]
    """The recommendation: the cheapest setting whose accuracy is within this of the best (0.01 = one point)."""
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.RUNNING, index=True)
    locked_until: Mapped[datetime | None]
    """Set while one process asks and tells (jobs.studies.conduct.advance); a crashed holder frees it when it passes."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class StudyTrial(Base):
    """One trial of a study: its Optuna trial, its pruning twin, and the job that runs it (None: skipped)."""

    __tablename__ = "lamp_study_trials"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("lamp_studies.id", ondelete="CASCADE"), index=True)
    number: Mapped[int]
    """The trial's number in the Optuna study."""
    twin_id: Mapped[int | None]
    """The storage id of the twin trial in the single-objective pruning study."""
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), unique=True)
    setting: Mapped[dict[str, Any]]
    """The knobs this trial tried (method-irrelevant ones dropped), including the seed."""
    state: Mapped[str] = mapped_column(String(16))
    """What Optuna was told: RUNNING until the job ends, then COMPLETE, PRUNED, FAIL or SKIPPED."""
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("study_id", "number"),)


class Upload(Base):
    """A data file a dashboard user uploaded, kept at `$LAMP_HOME/uploads/<digest>/<name>`. The client knows it
    only by its digest, and only its owner (the logged-in user, or the browser session on a server without a login)
    can name it; the server never opens a path a client sent."""

    __tablename__ = "uploads"

    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    """sha256 of the file's bytes, hex: the id the client is given."""
    owner: Mapped[str] = mapped_column(String(200), index=True)
    """`user:<name>` or `session:<gradio session hash>`."""
    name: Mapped[str] = mapped_column(String(200))
    """The file name the user gave, made safe; the file is `<digest>/<name>` under the uploads folder."""
    size: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    used_at: Mapped[datetime] = mapped_column(default=utcnow)
    """Last upload or job launch that named it; `lamp gc` removes uploads unused for the retention period."""

    __table_args__ = (UniqueConstraint("digest", "owner"),)
