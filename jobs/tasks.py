"""The huey task that runs a job, submitting, the reaper, and the consumer loop behind `lamp worker`.

huey delivers a message at most once: a worker killed by SIGKILL loses it silently. So a message only means "look
at job N"; the store decides. `run_job` does nothing unless it can claim the job, duplicates are harmless, and the
reaper (a thread in every worker, every few seconds) requeues RUNNING jobs whose lease expired and re-sends a
message for QUEUED jobs whose message is gone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huey import signals
from huey.consumer import Consumer

from core.errors import ConfigError, StorageError
from core.spec import RunSpec, spec_to_dict, validate_spec
from jobs import DEFAULT_MAX_ATTEMPTS, runner, store
from jobs.db import read, transact, upgrade_database
from jobs.hooks import WorkerHooks
from jobs.models import Status
from jobs.queue import huey

log = logging.getLogger(__name__)
STALE_QUEUED_SECONDS = 60.0
"""A QUEUED job with no message in the queue for this long gets a new one."""


@huey.task()
def run_job(job_id: int) -> None:
    runner.run_job(job_id, enqueue)


def enqueue(job_id: int) -> None:
    """Send (again) a wake-up for a QUEUED job. If the broker is unreachable the job stays QUEUED in the store and
    a reaper sends it later."""
    transact(store.mark_enqueued, job_id=job_id)
    run_job(job_id)


def submit(spec: RunSpec, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> int:
    """Validate the settings (validate_spec, as `lamp train` does), record the job, queue it; returns its id. A bad
    spec raises ConfigError and nothing is written or queued. What the run reads (its files, a warm start) was
    checked once where it was submitted: core.inputs.check_inputs (the CLI, the New job form, a study's creation)."""
    validate_spec(spec)
    if max_attempts < 1:
        raise ConfigError(f"max_attempts={max_attempts}: must be at least 1")
    job = transact(store.create_job, spec=spec_to_dict(spec), max_attempts=max_attempts)
    try:
        enqueue(job.id)
    except Exception:
        log.exception("job %s is recorded but the queue is unreachable; a worker's reaper will queue it", job.id)
    return job.id


def import_artifact(path: str | Path) -> int:
    """Record a finished run's artifact (from `lamp train`, another machine, a benchmark) as a succeeded job, so that
    the dashboard, Compare, the Playground and the API offer it; returns its id. The folder is used where it is."""
    import json

    from core.artifact import load_artifact
    from core.errors import ArtifactError

    folder = Path(path).expanduser().resolve()
    artifact = load_artifact(folder)  # ArtifactError unless it is a complete artifact
    try:
        result = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        raise ArtifactError(f"{folder}: no result.json (an artifact written by lamp train has one)") from None
    job = transact(store.create_job, spec=spec_to_dict(artifact.spec), max_attempts=1)
    attempt = transact(store.claim_job, job_id=job.id, worker="import", lease_seconds=60)
    if attempt is None:
        raise ConfigError(f"job {job.id} was taken by a worker while being imported")
    transact(store.finish_job, job_id=job.id, attempt=attempt.number, status=Status.SUCCEEDED,
             result={**result, "artifact": str(folder)})
    return job.id


def cancel(job_id: int) -> Status:
    """Cancel a job: a queued one never starts, a running one stops within seconds. Returns its status now."""
    return Status(transact(store.request_cancel, job_id=job_id).status)


def reap(stale_after: float = STALE_QUEUED_SECONDS) -> list[int]:
    """Requeue jobs whose worker died and re-send lost messages; returns the ids (re)queued."""
    sent = []
    for job_id, status in transact(store.requeue_expired, alive=runner.running_here()):
        log.warning("job %s: its worker stopped heartbeating; now %s", job_id, status)
        if status == Status.QUEUED:
            enqueue(job_id)
            sent.append(job_id)
    stale = read(store.stale_queued, older_than=stale_after)
    if stale:
        pending = {t.args[0] for t in huey.pending() if isinstance(t, run_job.task_class) and t.args}
        for job_id in stale:
            if job_id in pending:  # only waiting for a free worker: look again in STALE_QUEUED_SECONDS
                transact(store.mark_enqueued, job_id=job_id)
            else:
                log.warning("job %s: QUEUED with no message in the queue; sending one", job_id)
                enqueue(job_id)
                sent.append(job_id)
    return sent


@huey.signal(signals.SIGNAL_INTERRUPTED)
def _hand_back(signal_name: str, task: Any, *args: Any, **kwargs: Any) -> None:
    """The consumer got SIGTERM (or a second Ctrl-C): hand running jobs back before the process exits."""
    runner.hand_back_all()


def _reap_forever(stop: threading.Event, every: float, hooks: WorkerHooks) -> None:
    quiet_until = 0.0
    while not stop.wait(every):
        try:
            reap()
            for sweep in hooks.sweep:  # e.g. studies whose trials ended without a worker noticing (a cancelled job)
                sweep()
        except StorageError as exc:  # the store's disk is full or read-only: one line a minute, not a traceback
            if time.monotonic() >= quiet_until:
                log.error("reaper: %s (retrying every %.0f s)", exc, every)
                quiet_until = time.monotonic() + 60
        except Exception:  # the store or the broker is down for a moment: try again next time
            log.exception("reaper failed")


def start_reaper(lease_seconds: float | None = None, hooks: WorkerHooks | None = None) -> Callable[[], None]:
    """The reaper alone, for a process that runs no worker (`lamp serve --no-worker`): jobs whose worker died
    elsewhere are still requeued (or FAILED) when their lease expires, and the hooks' sweeps run. Returns stop()."""
    upgrade_database()
    seconds = lease_seconds if lease_seconds is not None else runner.WorkerSettings().lease_seconds
    stop = threading.Event()
    every = max(0.5, min(5.0, seconds / 3))
    threading.Thread(target=_reap_forever, args=(stop, every, hooks or WorkerHooks()), name="lamp-reaper",
                     daemon=True).start()
    return stop.set


class _EmbeddedConsumer(Consumer):
    def _set_signal_handlers(self) -> None:
        """The host program (the dashboard) owns its signals; it calls stop() instead."""


def _start(consumer_class: type[Consumer], workers: int, device: str | None, threads: int | None,
           lease_seconds: float | None, hooks: WorkerHooks) -> tuple[Consumer, threading.Event]:
    upgrade_database()
    runner.open_for_work()
    runner.settings = runner.WorkerSettings(device=device, threads=threads, hooks=hooks)
    if lease_seconds is not None:
        runner.settings.lease_seconds = lease_seconds
    reap()
    stop = threading.Event()
    every = max(0.5, min(5.0, runner.settings.lease_seconds / 3))
    threading.Thread(target=_reap_forever, args=(stop, every, hooks), name="lamp-reaper", daemon=True).start()
    consumer = consumer_class(huey, workers=workers, worker_type="thread", periodic=False, initial_delay=0.1,
                              backoff=1.15, max_delay=1.0)
    return consumer, stop


def run_worker(*, workers: int = 1, device: str | None = None, threads: int | None = None,
               lease_seconds: float | None = None, hooks: WorkerHooks | None = None) -> None:
    """`lamp worker`: a huey consumer with `workers` threads, each running one job at a time in its own training
    process, plus the reaper; `hooks` is what else it runs (jobs.hooks). SIGTERM hands running jobs back; Ctrl-C
    lets them finish (a second one hands them back)."""
    visible = runner.WorkerSettings(device=device).visible_devices()
    if visible is not None:  # this process never touches CUDA; its training processes inherit it from birth
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    consumer, stop = _start(Consumer, workers, device, threads, lease_seconds, hooks or WorkerHooks())
    try:
        consumer.run()
    finally:
        stop.set()


def start_embedded_worker(*, workers: int = 1, device: str | None = None, threads: int | None = None,
                          lease_seconds: float | None = None, hooks: WorkerHooks | None = None) -> Callable[[], None]:
    """A consumer inside another program (`lamp serve`): worker threads, no signal handlers. Returns `stop()`,
    which stops taking jobs and hands running ones back (checkpointed, QUEUED) before it returns."""
    consumer, reaper_stop = _start(_EmbeddedConsumer, workers, device, threads, lease_seconds,
                                   hooks or WorkerHooks())
    consumer.start()

    def stop() -> None:
        consumer.stop_flag.set()
        reaper_stop.set()
        runner.hand_back_all()

    return stop
