"""The results store's query functions, on a real SQLite file and on PostgreSQL (LAMP_TEST_POSTGRES_URL)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session
from test_jobs_support import postgres_database, service_url

from jobs import store
from jobs.db import dispose_engines, get_engine, read, transact, upgrade_database
from jobs.errors import JobNotFound
from jobs.models import Outcome, Status, utcnow
from jobs.store import Point

SPEC = {"model": {"name": "m"}, "method": {"name": "lamp"}, "data": {"task": "rotten_tomatoes"}, "train": {}}


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with _database(request.param, tmp_path) as url:
        monkeypatch.setenv("LAMP_DATABASE_URL", url)
        upgrade_database(url)
        yield url
        dispose_engines()


def _database(backend: str, tmp_path: Path) -> contextlib.AbstractContextManager[str]:
    if backend == "sqlite":
        return contextlib.nullcontext(f"sqlite:///{tmp_path / 'lamp.db'}")
    return postgres_database(service_url("LAMP_TEST_POSTGRES_URL"))


def _new_job(max_attempts: int = 3) -> int:
    return transact(store.create_job, spec=SPEC, max_attempts=max_attempts).id


def _claim(job_id: int, lease: float = 30.0, worker: str = "w1") -> int:
    attempt = transact(store.claim_job, job_id=job_id, worker=worker, lease_seconds=lease)
    assert attempt is not None
    return attempt.number


def test_sqlite_is_set_up_for_concurrent_writers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lamp.db'}"
    with get_engine(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert (conn.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0) >= 10_000


def test_create_get_list(db: str) -> None:
    a, b = _new_job(), _new_job(max_attempts=5)
    job = read(store.get_job, job_id=b)
    assert job is not None and job.status == Status.QUEUED and job.max_attempts == 5 and job.spec == SPEC
    assert [j.id for j in read(store.list_jobs)] == [b, a]
    assert read(store.list_jobs, status=Status.RUNNING) == []
    assert read(store.get_job, job_id=999) is None


def test_a_job_is_claimed_by_exactly_one_of_many_racing_workers(db: str) -> None:
    job_id = _new_job()
    won: list[int] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        attempt = transact(store.claim_job, job_id=job_id, worker=f"w{i}", lease_seconds=30)
        if attempt is not None:
            won.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    job = read(store.get_job, job_id=job_id)
    assert job is not None and job.status == Status.RUNNING and job.attempts == 1 and job.worker == f"w{won[0]}"
    assert [a.number for a in read(store.job_attempts, job_id=job_id)] == [1]


def test_heartbeat_cancel_and_fencing_of_a_stale_attempt(db: str) -> None:
    job_id = _new_job()
    n = _claim(job_id)
    assert transact(store.heartbeat, job_id=job_id, attempt=n, lease_seconds=30) == "ok"
    assert transact(store.request_cancel, job_id=job_id).status == Status.RUNNING
    assert transact(store.heartbeat, job_id=job_id, attempt=n, lease_seconds=30) == "cancel"
    assert read(store.should_stop, job_id=job_id, attempt=n)
    # The attempt is released (say, by the reaper); everything it tries afterwards is refused.
    assert transact(store.release_job, job_id=job_id, attempt=n, outcome=Outcome.LEASE_EXPIRED, error="x") == \
        Status.CANCELLED
    assert transact(store.heartbeat, job_id=job_id, attempt=n, lease_seconds=30) == "lost"
    assert not transact(store.add_metrics, job_id=job_id, attempt=n, points=[Point(1, "train", "loss", 1.0)], step=1)
    assert not transact(store.finish_job, job_id=job_id, attempt=n, status=Status.SUCCEEDED, result=None)
    assert read(store.metric_points, job_id=job_id) == []


def test_metric_batches_upsert_and_progress(db: str) -> None:
    job_id = _new_job()
    n = _claim(job_id)
    assert transact(store.start_attempt, job_id=job_id, attempt=n, resumed_from=None, total_steps=10)
    points = [Point(s, "train", "loss", 1.0 / s) for s in range(1, 4)] + [Point(3, "val", "accuracy", None)]
    assert transact(store.add_metrics, job_id=job_id, attempt=n, points=points, step=3)
    # A resumed attempt repeats step 3: the value is replaced, not duplicated.
    assert transact(store.add_metrics, job_id=job_id, attempt=n, points=[Point(3, "train", "loss", 0.5)], step=3)
    rows = read(store.metric_points, job_id=job_id, split="train")
    assert [(p.step, p.value) for p in rows] == [(1, 1.0), (2, 0.5), (3, 0.5)]
    assert [p.step for p in read(store.metric_points, job_id=job_id, after_step=2)] == [3, 3]
    job = read(store.get_job, job_id=job_id)
    assert job is not None and (job.step, job.total_steps) == (3, 10)
    assert read(store.job_attempts, job_id=job_id)[0].last_step == 3


def test_a_running_job_reports_its_phase_through_the_training_processs_writer(db: str, tmp_path: Path) -> None:
    """The phase events fit() emits reach the store as the job's phase (the page and `lamp jobs` show it: a job
    whose steps are all done is still testing); a stale attempt writes none, and an ended job has none."""
    from app.monitor import progress
    from core.events import Event
    from jobs.child import MetricWriter

    job_id = _new_job()
    n = _claim(job_id)
    job = read(store.get_job, job_id=job_id)  # claimed: loading until the training process reports otherwise
    assert job is not None and progress(job) == "0 · loading"
    writer = MetricWriter(job_id, n, db, tmp_path)
    writer(Event("start", 0, 4, {}))
    writer(Event("phase", 4, 4, {"phase": "testing", "done": 64, "total": 300}))
    job = read(store.get_job, job_id=job_id)
    assert job is not None and job.phase == {"phase": "testing", "done": 64, "total": 300}
    assert store.job_summary(job)["phase"] == job.phase and progress(job).endswith("· testing 64/300")
    writer(Event("phase", 4, 4, {"phase": "writing"}))  # a new phase is written at once
    job = read(store.get_job, job_id=job_id)
    assert job is not None and job.phase == {"phase": "writing"} and progress(job).endswith("· writing")
    assert not transact(store.set_phase, job_id=job_id, attempt=n + 1, phase={"phase": "loading"})  # fenced
    assert transact(store.finish_job, job_id=job_id, attempt=n, status=Status.SUCCEEDED, result=None)
    job = read(store.get_job, job_id=job_id)
    assert job is not None and store.job_summary(job)["phase"] is None and "·" not in progress(job)


def test_crashes_requeue_until_max_attempts_then_fail_with_the_reason(db: str) -> None:
    job_id = _new_job(max_attempts=2)
    n = _claim(job_id)
    assert transact(store.release_job, job_id=job_id, attempt=n, outcome=Outcome.HANDED_BACK, error="bye") == \
        Status.QUEUED  # a hand-back is not a failure
    n = _claim(job_id)
    assert transact(store.release_job, job_id=job_id, attempt=n, outcome=Outcome.CRASHED, error="boom 1") == \
        Status.QUEUED
    n = _claim(job_id)
    assert transact(store.release_job, job_id=job_id, attempt=n, outcome=Outcome.CRASHED, error="boom 2") == \
        Status.FAILED
    job = read(store.get_job, job_id=job_id)
    assert job is not None and job.attempts == 3 and job.failures == 2 and job.finished_at is not None
    assert job.error is not None and "gave up after 2 failed attempts" in job.error and "boom 2" in job.error
    assert [a.outcome for a in read(store.job_attempts, job_id=job_id)] == ["handed_back", "crashed", "crashed"]
    assert transact(store.claim_job, job_id=job_id, worker="w", lease_seconds=5) is None


def test_requeue_expired_takes_only_expired_leases(db: str) -> None:
    dead, alive_job = _new_job(), _new_job()
    n_dead = _claim(dead, lease=0.01)
    _claim(alive_job, lease=60)
    released = transact(store.requeue_expired, now=utcnow() + timedelta(seconds=1))
    assert released == [(dead, Status.QUEUED)]
    job = read(store.get_job, job_id=dead)
    assert job is not None and job.worker is None and job.failures == 1 and "stopped heartbeating" in (job.error or "")
    assert read(store.job_attempts, job_id=dead)[0].outcome == Outcome.LEASE_EXPIRED
    assert transact(store.heartbeat, job_id=dead, attempt=n_dead, lease_seconds=5) == "lost"
    assert read(store.get_job, job_id=alive_job).status == Status.RUNNING  # type: ignore[union-attr]


def test_success_writes_the_result_once(db: str) -> None:
    job_id = _new_job()
    n = _claim(job_id)
    result = {"artifact": "/a/job-1", "steps": 6, "trainable_params": 123, "train_seconds": 1.5,
              "total_seconds": 2.0, "examples_per_second": 16.0, "peak_memory_mb": 300.0,
              "metrics": {"accuracy": 0.75}, "scoring": {"accuracy": "rank"}, "best_step": 6, "resumed_from": None}
    assert transact(store.finish_job, job_id=job_id, attempt=n, status=Status.SUCCEEDED, result=result)
    assert not transact(store.finish_job, job_id=job_id, attempt=n, status=Status.SUCCEEDED, result=result)
    saved = read(store.get_result, job_id=job_id)
    assert saved is not None and saved.metrics == {"accuracy": 0.75} and saved.trainable_params == 123
    job = read(store.get_job, job_id=job_id)
    assert job is not None and job.status == Status.SUCCEEDED and job.artifact == "/a/job-1" and job.step == 6
    summary = store.job_summary(job, saved)
    assert summary["id"] == job_id and summary["status"] == "SUCCEEDED" and summary["metrics"] == {"accuracy": 0.75}
    # A finished job is never claimed again, and cancelling it changes nothing.
    assert transact(store.claim_job, job_id=job_id, worker="w", lease_seconds=5) is None
    assert transact(store.request_cancel, job_id=job_id).status == Status.SUCCEEDED


def test_cancel_a_queued_job_and_unknown_ids(db: str) -> None:
    job_id = _new_job()
    assert transact(store.request_cancel, job_id=job_id).status == Status.CANCELLED
    assert transact(store.claim_job, job_id=job_id, worker="w", lease_seconds=5) is None
    with pytest.raises(JobNotFound, match="no job 4242"):
        transact(store.request_cancel, job_id=4242)


def test_stale_queued_jobs_are_found(db: str) -> None:
    fresh, never = _new_job(), _new_job()
    transact(store.mark_enqueued, job_id=fresh)
    assert read(store.stale_queued, older_than=60) == [never]
    assert read(store.stale_queued, older_than=-1) == [fresh, never]


def test_deleting_a_job_cascades_to_its_rows(db: str) -> None:
    job_id = _new_job()
    n = _claim(job_id)
    transact(store.add_metrics, job_id=job_id, attempt=n, points=[Point(1, "train", "loss", 1.0)], step=1)

    def delete(*, session: Session) -> None:
        session.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": job_id})

    transact(delete)
    assert read(store.metric_points, job_id=job_id) == []
    assert read(store.job_attempts, job_id=job_id) == []
