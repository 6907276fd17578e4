"""The queue stepped in-process (huey MemoryHuey / SqliteHuey / RedisHuey + execute_next), with real training
processes and a real store: submit, run, cancel, failures, retries and the reaper."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_jobs_support import alive, postgres_database, report, service_url, tiny_spec, wait_for

from core.errors import ConfigError
from jobs import store
from jobs.db import dispose_engines, read, transact, upgrade_database
from jobs.models import Job, JobAttempt, Outcome, Status
from lamp.cli import main


@pytest.fixture()
def jobs_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A SQLite store in tmp_path, an in-memory queue, one-thread training."""
    from jobs import runner
    from jobs.queue import use_queue

    url = f"sqlite:///{tmp_path / 'lamp.db'}"
    monkeypatch.setenv("LAMP_DATABASE_URL", url)
    monkeypatch.setenv("LAMP_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.setattr(runner, "settings", runner.WorkerSettings(threads=1, lease_seconds=10, stop_grace=10))
    use_queue("memory://")
    runner.open_for_work()  # in case an embedded worker of an earlier test handed its jobs back
    upgrade_database(url)
    yield tmp_path / "artifacts"
    dispose_engines()


def _job(job_id: int) -> Job:
    job = read(store.get_job, job_id=job_id)
    assert job is not None
    return job


def _step_in_thread() -> threading.Thread:
    from jobs.queue import execute_next

    thread = threading.Thread(target=execute_next, daemon=True)
    thread.start()
    return thread


def _running_attempt(job_id: int, min_step: int) -> JobAttempt:
    def ready() -> JobAttempt | None:
        attempts = read(store.job_attempts, job_id=job_id)
        last = attempts[-1] if attempts else None
        if last is not None and last.outcome is None and last.pid and last.last_step >= min_step:
            return last
        return None

    return wait_for(ready, 60, f"job {job_id} to reach step {min_step}")


@pytest.mark.parametrize("backend", ["sqlite", "redis+postgres"])
def test_a_submitted_job_runs_once_and_leaves_a_complete_record(backend: str, jobs_env: Path, tiny_llama_dir: Path,
                                                                 sentiment_csv: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.queue import execute_next, huey, use_queue
    from jobs.tasks import enqueue, submit

    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            use_queue(f"sqlite:///{tmp_path / 'queue.db'}")
        else:
            url = stack.enter_context(postgres_database(service_url("LAMP_TEST_POSTGRES_URL")))
            monkeypatch.setenv("LAMP_DATABASE_URL", url)
            upgrade_database(url)
            use_queue(service_url("LAMP_TEST_REDIS_URL"), name=f"lamp-test-{uuid.uuid4().hex[:8]}")
            stack.callback(huey.flush)
        spec = tiny_spec(tiny_llama_dir, sentiment_csv)
        job_id = submit(spec)
        assert len(huey.pending()) == 1
        assert execute_next()
        job = read(store.get_job, job_id=job_id)
        assert job is not None and job.status == Status.SUCCEEDED, job and job.error
        assert job.artifact == str(jobs_env / f"job-{job_id}")
        assert (Path(job.artifact) / "prompt_params.safetensors").is_file()
        [attempt] = read(store.job_attempts, job_id=job_id)
        assert attempt.outcome == Outcome.SUCCEEDED and attempt.resumed_from is None and attempt.last_step == 6
        loss = read(store.metric_points, job_id=job_id, split="train", name="loss")
        assert [p.step for p in loss] == [1, 2, 3, 4, 5, 6]
        assert sorted({p.step for p in read(store.metric_points, job_id=job_id, split="val")}) == [3, 6]
        test_points = {p.name: p.value for p in read(store.metric_points, job_id=job_id, split="test")}
        result = read(store.get_result, job_id=job_id)
        # Ranking label words only: scoring by generation is opt-in (generate_eval).
        assert result is not None and result.metrics == test_points and set(result.metrics) == {"accuracy"}
        assert result.trainable_params == spec.method.trainable_params(32) and result.peak_memory_mb > 0
        # A second message for a finished job (a duplicate, a replay) does not run it again.
        enqueue(job_id)
        assert execute_next()
        assert len(read(store.job_attempts, job_id=job_id)) == 1
        assert not execute_next()


def test_a_bad_spec_is_refused_before_anything_is_queued(jobs_env: Path, tiny_llama_dir: Path, sentiment_csv: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.queue import huey
    from jobs.tasks import submit

    with pytest.raises(ConfigError, match="steps=0"):
        submit(tiny_spec(tiny_llama_dir, sentiment_csv, steps=0))
    code = main(["submit", "--model", str(tiny_llama_dir), "--train", str(sentiment_csv), "--text-column", "review",
                 "--label-column", "verdict", "--steps", "0", "--lr", "50"])
    assert code == 2
    err = capsys.readouterr().err
    assert "lr=50.0" in err and "steps=0" in err
    assert read(store.list_jobs) == [] and huey.pending() == []


def test_cancel_a_queued_job_it_never_starts(jobs_env: Path, tiny_llama_dir: Path, sentiment_csv: Path) -> None:
    from jobs.queue import execute_next
    from jobs.tasks import cancel, submit

    job_id = submit(tiny_spec(tiny_llama_dir, sentiment_csv))
    assert cancel(job_id) == Status.CANCELLED
    assert execute_next()  # its message is consumed and ignored
    assert read(store.job_attempts, job_id=job_id) == []
    assert not (jobs_env / f"job-{job_id}").exists()


def test_cancel_a_running_job_stops_it_within_seconds(jobs_env: Path, tiny_llama_dir: Path,
                                                      sentiment_csv: Path) -> None:
    from jobs.tasks import cancel, submit

    job_id = submit(tiny_spec(tiny_llama_dir, sentiment_csv, steps=5000, checkpoint_every=1000, eval_every=5000))
    thread = _step_in_thread()
    attempt = _running_attempt(job_id, min_step=3)
    asked = time.monotonic()
    assert cancel(job_id) == Status.RUNNING
    wait_for(lambda: read(store.get_job, job_id=job_id).status == Status.CANCELLED, 15, "CANCELLED")  # type: ignore
    stopped_in = time.monotonic() - asked
    thread.join(15)
    assert not thread.is_alive() and attempt.pid is not None and not alive(attempt.pid)
    job = read(store.get_job, job_id=job_id)
    assert job is not None and job.step < 5000 and "cancelled at step" in (job.error or "")
    assert read(store.job_attempts, job_id=job_id)[0].outcome == Outcome.CANCELLED
    assert stopped_in < 10, stopped_in
    report("cancel a running job", seconds_to_cancelled=round(stopped_in, 2))


def test_a_training_error_fails_at_once_with_its_message(jobs_env: Path, tiny_llama_dir: Path,
                                                         sentiment_csv: Path) -> None:
    from dataclasses import replace

    from jobs.queue import execute_next
    from jobs.tasks import submit

    spec = tiny_spec(tiny_llama_dir, sentiment_csv)
    job_id = submit(replace(spec, data=replace(spec.data, label_column="stars")))
    assert execute_next()
    job = read(store.get_job, job_id=job_id)
    assert job is not None and job.status == Status.FAILED and "stars" in (job.error or "")
    assert job.attempts == 1 and job.failures == 0  # a retry would fail the same way: none
    assert not execute_next()


def test_a_killed_training_process_resumes_then_fails_at_max_attempts(jobs_env: Path, tiny_llama_dir: Path,
                                                                       sentiment_csv: Path) -> None:
    from jobs.tasks import submit

    job_id = submit(tiny_spec(tiny_llama_dir, sentiment_csv, steps=5000, checkpoint_every=2, eval_every=5000),
                    max_attempts=2)
    for expected in (Status.QUEUED, Status.FAILED):
        thread = _step_in_thread()
        attempt = _running_attempt(job_id, min_step=_job(job_id).step + 3)
        assert attempt.pid is not None
        os.kill(attempt.pid, signal.SIGKILL)
        thread.join(30)
        job = _job(job_id)
        assert job.status == expected
    attempts = read(store.job_attempts, job_id=job_id)
    assert [a.outcome for a in attempts] == ["crashed", "crashed"]
    assert attempts[1].resumed_from is not None and attempts[1].resumed_from >= 2
    assert "gave up after 2 failed attempts" in (job.error or "") and "SIGKILL" in (job.error or "")


def test_the_reaper_requeues_dead_workers_jobs_and_resends_lost_messages(jobs_env: Path, tiny_llama_dir: Path,
                                                                          sentiment_csv: Path) -> None:
    from jobs.queue import execute_next, huey
    from jobs.tasks import reap, submit

    job_id = submit(tiny_spec(tiny_llama_dir, sentiment_csv))
    assert huey.dequeue() is not None  # a worker took the message, claimed the job, then died without a trace
    assert transact(store.claim_job, job_id=job_id, worker="dead:1:Worker-1", lease_seconds=0.2) is not None
    assert reap() == []  # lease still valid
    time.sleep(0.3)
    assert reap() == [job_id]
    assert [t.args for t in huey.pending()] == [(job_id,)]
    assert execute_next()
    job = read(store.get_job, job_id=job_id)
    assert job is not None and job.status == Status.SUCCEEDED and job.failures == 1
    assert [a.outcome for a in read(store.job_attempts, job_id=job_id)] == ["lease_expired", "succeeded"]
    # A QUEUED job whose message is gone gets one (once: not while it is still in the queue).
    lost = transact(store.create_job, spec=read(store.get_job, job_id=job_id).spec).id  # type: ignore[union-attr]
    assert reap(stale_after=0) == [lost]
    assert reap(stale_after=0) == []
    assert [t.args for t in huey.pending()] == [(lost,)]


def test_submit_jobs_and_cancel_from_the_command_line(jobs_env: Path, tiny_llama_dir: Path, sentiment_csv: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--model", str(tiny_llama_dir), "--train", str(sentiment_csv), "--text-column", "review",
             "--label-column", "verdict", "--steps", "6", "--device", "cpu"]
    assert main(["submit", *flags, "--json"]) == 0
    job_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["id"]
    assert main(["submit", *flags, "--max-attempts", "5"]) == 0
    second = int(capsys.readouterr().out.strip())
    assert main(["jobs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(j["id"], j["status"]) for j in listed] == [(second, "QUEUED"), (job_id, "QUEUED")]
    assert listed[0]["max_attempts"] == 5 and listed[1]["method"] == "lamp"
    assert main(["cancel", str(job_id)]) == 0
    assert "CANCELLED" in capsys.readouterr().out
    assert main(["jobs"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["ID", "STATUS"] and "CANCELLED" in table[2] and "QUEUED" in table[1]
    assert main(["cancel", "4242"]) == 2
    assert "no job 4242" in capsys.readouterr().err


def test_an_embedded_worker_runs_jobs_and_hands_them_back_when_stopped(jobs_env: Path, tiny_llama_dir: Path,
                                                                       sentiment_csv: Path, tmp_path: Path) -> None:
    """What `lamp serve` embeds: consumer threads in the host process, stopped by a call rather than a signal."""
    from jobs.queue import use_queue
    from jobs.tasks import start_embedded_worker, submit

    use_queue(f"sqlite:///{tmp_path / 'queue.db'}")
    stop = start_embedded_worker(threads=1)
    try:
        quick = submit(tiny_spec(tiny_llama_dir, sentiment_csv))
        wait_for(lambda: _job(quick).status == Status.SUCCEEDED, 60, "the first job to succeed")
        long = submit(tiny_spec(tiny_llama_dir, sentiment_csv, steps=5000, checkpoint_every=1000, eval_every=5000))
        attempt = _running_attempt(long, min_step=3)
    finally:
        stop()
    job = _job(long)
    assert job.status == Status.QUEUED and job.failures == 0 and job.step < 5000
    assert read(store.job_attempts, job_id=long)[0].outcome == Outcome.HANDED_BACK
    assert attempt.pid is not None and not alive(attempt.pid)
