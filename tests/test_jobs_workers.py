"""Real `lamp worker` consumer processes, really killed: training processes SIGKILLed mid-job, a consumer
SIGKILLed (its lease expires, the reaper requeues), a consumer SIGTERMed (it hands its job back)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_jobs_support import (
    Workers,
    alive,
    postgres_database,
    report,
    service_url,
    tiny_spec,
    wait_for,
    worker_env,
)

from core.train import fit
from jobs import store
from jobs.db import dispose_engines, read, upgrade_database
from jobs.models import FINISHED, Job, JobAttempt, Outcome, Status, utcnow

pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    workers: Workers
    db_url: str
    artifacts: Path


@pytest.fixture(params=["sqlite"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            lamp_home: Path) -> Iterator[Cluster]:
    """A store and a queue that this test process and its `lamp worker` processes share (SQLite files, or
    PostgreSQL + Redis as on several machines)."""
    from jobs.queue import huey, use_queue

    name = f"lamp-test-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            db_url, queue_url = f"sqlite:///{tmp_path / 'lamp.db'}", f"sqlite:///{tmp_path / 'queue.db'}"
        else:
            db_url = stack.enter_context(postgres_database(service_url("LAMP_TEST_POSTGRES_URL")))
            queue_url = service_url("LAMP_TEST_REDIS_URL")
        use_queue(queue_url, name=name)
        stack.callback(huey.flush)
        monkeypatch.setenv("LAMP_DATABASE_URL", db_url)
        upgrade_database(db_url)
        env = worker_env(home=lamp_home, db_url=db_url, queue_url=queue_url, queue_name=name)
        env["LAMP_ARTIFACTS_DIR"] = str(tmp_path / "artifacts")
        (tmp_path / "logs").mkdir()
        workers = Workers(env, tmp_path / "logs")
        stack.callback(dispose_engines)
        try:
            yield Cluster(workers, db_url, tmp_path / "artifacts")
        finally:
            workers.stop()
            print(workers.tails())  # pytest shows it when the test failed


def _job(job_id: int) -> Job:
    job = read(store.get_job, job_id=job_id)
    assert job is not None
    return job


def _live_attempt(job_id: int, min_progress: int, after: int = 0) -> JobAttempt | None:
    """The job's running attempt (numbered above `after`) once it trained `min_progress` steps past its start."""
    attempts = read(store.job_attempts, job_id=job_id)
    last = attempts[-1] if attempts else None
    if last is None or last.number <= after or last.outcome is not None or not last.pid:
        return None
    return last if last.last_step >= (last.resumed_from or 0) + min_progress else None


def _seconds(later: datetime, earlier: datetime) -> float:
    return round((later - earlier).total_seconds(), 2)


def test_sigkilled_training_processes_resume_and_every_job_succeeds(cluster: Cluster, tiny_llama_dir: Path,
                                                                    sentiment_csv: Path, tmp_path: Path) -> None:
    from jobs.tasks import submit

    steps, kills_per_job = 200, 2
    for _ in range(2):
        cluster.workers.start()
    specs = {submit(tiny_spec(tiny_llama_dir, sentiment_csv, steps=steps, checkpoint_every=1, eval_every=steps,
                              seed=seed), max_attempts=kills_per_job + 1): seed for seed in (1, 2, 3)}
    specs_by_id = {job_id: tiny_spec(tiny_llama_dir, sentiment_csv, steps=steps, checkpoint_every=1,
                                     eval_every=steps, seed=seed) for job_id, seed in specs.items()}
    kills = dict.fromkeys(specs, 0)
    killed: set[tuple[int, int]] = set()
    started = time.monotonic()
    while not all(_job(j).status in FINISHED for j in specs):
        assert time.monotonic() - started < 240, {j: _job(j).status for j in specs}
        for job_id in specs:
            attempt = _live_attempt(job_id, min_progress=5)
            if (attempt and (job_id, attempt.number) not in killed and kills[job_id] < kills_per_job
                    and attempt.last_step < steps - 40):
                os.kill(attempt.pid, signal.SIGKILL)  # type: ignore[arg-type]
                killed.add((job_id, attempt.number))
                kills[job_id] += 1
        time.sleep(0.05)
    elapsed = time.monotonic() - started

    for job_id, spec in specs_by_id.items():
        job = _job(job_id)
        assert job.status == Status.SUCCEEDED, job.error
        attempts = read(store.job_attempts, job_id=job_id)
        assert [a.outcome for a in attempts] == ["crashed"] * kills_per_job + ["succeeded"]
        assert all(a.resumed_from and a.resumed_from > 0 for a in attempts[1:]), [a.resumed_from for a in attempts]
        assert job.failures == kills_per_job and "SIGKILL" in (attempts[0].error or "")
        # One loss point per step, whatever was killed when: nothing lost, nothing doubled.
        assert [p.step for p in read(store.metric_points, job_id=job_id, split="train", name="loss")] == \
            list(range(1, steps + 1))
        whole = fit(spec, tmp_path / f"uninterrupted-{job_id}")
        a = load_file(f"{whole.artifact}/prompt_params.safetensors")
        b = load_file(f"{job.artifact}/prompt_params.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    report("training processes SIGKILLed mid-job", submitted=len(specs), completed=len(specs), lost=0,
           kills=sum(kills.values()), steps_per_job=steps, seconds=round(elapsed, 1))


def _two_workers_and_a_running_job(cluster: Cluster, tiny_llama_dir: Path, sentiment_csv: Path,
                                   checkpoint_every: int) -> tuple[int, JobAttempt, Any, Any]:
    """Two consumers, one job training on one of them: (job id, its attempt, that consumer, the other one)."""
    from jobs.tasks import submit

    procs = [cluster.workers.start(), cluster.workers.start()]
    job_id = submit(tiny_spec(tiny_llama_dir, sentiment_csv, steps=400, checkpoint_every=checkpoint_every,
                              eval_every=400))
    attempt = wait_for(lambda: _live_attempt(job_id, min_progress=10), 90, "the job to train")
    victim = cluster.workers.proc(cluster.workers.pid_of(attempt.worker))
    return job_id, attempt, victim, next(p for p in procs if p is not victim)


@pytest.mark.parametrize("cluster", ["sqlite", "redis+postgres"], indirect=True)
def test_a_sigkilled_worker_loses_its_lease_and_another_resumes_the_job(cluster: Cluster, tiny_llama_dir: Path,
                                                                          sentiment_csv: Path) -> None:
    job_id, attempt, victim, survivor = _two_workers_and_a_running_job(cluster, tiny_llama_dir, sentiment_csv, 5)
    victim.kill()  # SIGKILL: no hand-back, no goodbye
    died = utcnow()
    victim.wait()
    wait_for(lambda: not alive(attempt.pid), 10, "its training process to die with it")  # type: ignore[arg-type]
    again = wait_for(lambda: _live_attempt(job_id, 1, after=attempt.number), 90, "the job to train again")
    resumed_at = utcnow()
    wait_for(lambda: _job(job_id).status in FINISHED, 120, "the job to finish")
    job = _job(job_id)
    assert job.status == Status.SUCCEEDED, job.error
    attempts = read(store.job_attempts, job_id=job_id)
    assert [a.outcome for a in attempts] == [Outcome.LEASE_EXPIRED, Outcome.SUCCEEDED]
    assert cluster.workers.pid_of(attempts[1].worker) == survivor.pid and (again.resumed_from or 0) >= 10
    report(f"worker SIGKILLed ({cluster.db_url.split(':')[0]})", lease_seconds=3,
           death_to_claimed=_seconds(attempts[1].started_at, died), death_to_training=_seconds(resumed_at, died),
           resumed_from=again.resumed_from)


def test_a_sigtermed_worker_hands_its_job_back_and_another_completes_it(cluster: Cluster, tiny_llama_dir: Path,
                                                                          sentiment_csv: Path) -> None:
    job_id, attempt, victim, survivor = _two_workers_and_a_running_job(cluster, tiny_llama_dir, sentiment_csv, 50)
    victim.send_signal(signal.SIGTERM)
    asked = utcnow()
    assert victim.wait(30) == 0
    assert not alive(attempt.pid)  # type: ignore[arg-type]
    again = wait_for(lambda: _live_attempt(job_id, 1, after=attempt.number), 90, "the job to train again")
    wait_for(lambda: _job(job_id).status in FINISHED, 120, "the job to finish")
    job = _job(job_id)
    assert job.status == Status.SUCCEEDED and job.failures == 0, job.error
    attempts = read(store.job_attempts, job_id=job_id)
    assert [a.outcome for a in attempts] == [Outcome.HANDED_BACK, Outcome.SUCCEEDED]
    assert cluster.workers.pid_of(attempts[1].worker) == survivor.pid
    # The hand-back checkpointed the step it stopped at, not the last periodic checkpoint (every 50 steps).
    assert again.resumed_from == attempts[0].last_step and again.resumed_from > 0
    report("worker SIGTERMed", handed_back_at_step=again.resumed_from,
           sigterm_to_claimed=_seconds(attempts[1].started_at, asked))
