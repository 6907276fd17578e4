"""What a worker does with one job: claim it, spawn its training process, hold the lease, end it truthfully.

The worker thread (a huey consumer thread) never trains. It claims the job (one UPDATE QUEUED -> RUNNING, so two
workers never run it at once), spawns `jobs.child.train_attempt` with multiprocessing's spawn context, and while
the child runs it heartbeats the lease and watches for cancel and shutdown. Then, from the child's message and exit:
- done                        -> SUCCEEDED, with its result row;
- pruned (a listener's stop)  -> PRUNED, with its reason (a study's pruner);
- error (LampError)           -> FAILED with the message (a retry would fail the same way: bad data, a full disk);
- oom (any allocation failure, or SIGKILL while the kernel's OOM killer struck)
                              -> OUT_OF_MEMORY at once, with the settings that asked for the memory;
- cancel requested            -> CANCELLED (the child checkpoints and stops; killed if it takes > stop_grace);
- worker shutting down        -> handed back: QUEUED again, resumed elsewhere from the checkpoint;
- crash (killed, segfault...) -> QUEUED again with failures + 1, or FAILED with the reason at max_attempts;
- lease lost (taken over)     -> the child is killed and the job left to the attempt that owns it now.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.backbone import lamp_home
from core.errors import StorageError
from jobs import store
from jobs.child import train_attempt
from jobs.db import database_url, read, transact
from jobs.failures import memory_headroom_mb, oom_kills, oom_message, patient
from jobs.hooks import WorkerHooks, qualified_name
from jobs.models import FINISHED, Outcome, Status

log = logging.getLogger(__name__)
Enqueue = Callable[[int], None]


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass
class WorkerSettings:
    device: str | None = None
    """`cpu`, `cuda` or `cuda:N`: the training process sees only that GPU (or none). None: leave them all."""
    threads: int | None = None
    """torch CPU threads per training process (a job's own `threads` setting wins)."""
    lease_seconds: float = field(default_factory=lambda: _env_float("LAMP_LEASE_SECONDS", 30.0))
    """A running job whose worker has not heartbeated for this long is requeued by the reaper."""
    stop_grace: float = field(default_factory=lambda: _env_float("LAMP_STOP_GRACE_SECONDS", 15.0))
    """Seconds a training process gets to checkpoint and exit after a cancel or shutdown, before SIGKILL."""
    memory_mb: float | None = field(default_factory=memory_headroom_mb)
    """LAMP_JOB_MEMORY_MB: what a CPU training process may allocate beyond its libraries (None: no cap)."""
    hooks: WorkerHooks = field(default_factory=WorkerHooks)
    """What else this worker runs: at each job's end, on each reaper pass, inside each training process."""

    @property
    def heartbeat_seconds(self) -> float:
        return min(5.0, max(0.25, self.lease_seconds / 6))

    def visible_devices(self) -> str | None:
        if self.device is None or self.device == "cuda":
            return None
        if self.device == "cpu":
            return ""
        return self.device.removeprefix("cuda:")


settings = WorkerSettings()
_shutting_down = threading.Event()


@dataclass
class _Running:
    hand_back: threading.Event = field(default_factory=threading.Event)


_running: dict[int, _Running] = {}


def running_here() -> list[int]:
    """The jobs this process's worker threads are running now."""
    return list(_running)


def artifacts_dir() -> Path:
    """Where job artifacts go: LAMP_ARTIFACTS_DIR (a directory every worker host mounts), else $LAMP_HOME/artifacts."""
    return Path(os.environ.get("LAMP_ARTIFACTS_DIR") or lamp_home() / "artifacts").expanduser()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"[:200]


def run_job(job_id: int, enqueue: Enqueue) -> Status | None:
    """Run one attempt of a job if it can be claimed; returns the status it was left in (None: not claimed)."""
    if _shutting_down.is_set():
        enqueue(job_id)  # this worker is going away: leave the wake-up for another one
        return None
    attempt = transact(store.claim_job, job_id=job_id, worker=worker_name(), lease_seconds=settings.lease_seconds)
    if attempt is None:
        log.info("job %s: not claimable (taken, finished or cancelled); skipping", job_id)
        return None
    running = _Running()
    _running[job_id] = running
    if _shutting_down.is_set():  # claimed just as the worker began to shut down
        running.hand_back.set()
    try:
        message, reason, exitcode = _supervise(job_id, attempt.number, running)
        status = _conclude(job_id, attempt.number, message, reason, exitcode)
        if status == Status.QUEUED:
            enqueue(job_id)
        log.info("job %s attempt %s: %s", job_id, attempt.number, status)
        if status in FINISHED:
            _ended(job_id)
        return status
    finally:
        _running.pop(job_id, None)


def _ended(job_id: int) -> None:
    """The worker's hooks for a job that ended (a study tells Optuna and launches its next trial now; the reaper's
    sweep would, seconds later)."""
    for hook in settings.hooks.job_ended:
        try:
            hook(job_id)
        except Exception:
            log.exception("job %s: a hook for its end failed (%s); the reaper's sweep retries", job_id, hook)


def _supervise(job_id: int, attempt: int, running: _Running) -> tuple[Any, str | None, int | None]:
    """Run the training process to its end; returns (its message or None, why we stopped it or None, exitcode)."""
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    out_dir = artifacts_dir() / f"job-{job_id}"
    proc = ctx.Process(target=train_attempt, name=f"lamp-job-{job_id}", args=(
        job_id, attempt, database_url(), str(out_dir), settings.visible_devices(), settings.threads, os.getpid(),
        writer, settings.memory_mb, [qualified_name(f) for f in settings.hooks.listeners]))
    kills = oom_kills()
    proc.start()
    writer.close()  # the child holds the only writing end: its exit shows up here as EOF
    message: Any = None
    reason: str | None = None
    deadline: float | None = None
    next_beat = time.monotonic() + settings.heartbeat_seconds
    try:
        with contextlib.suppress(StorageError):  # the store's disk is full: the child's own writes will say so
            transact(store.set_attempt_pid, job_id=job_id, attempt=attempt, pid=proc.pid)
        while True:
            if reader.poll(0.2):
                with contextlib.suppress(EOFError):
                    message = reader.recv()
                break
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + settings.heartbeat_seconds
                lease = _heartbeat(job_id, attempt)
                if lease == "lost":
                    log.warning("job %s attempt %s: lease lost; killing its training process", job_id, attempt)
                    reason = "lost"
                    proc.kill()
                    break
                if lease == "cancel" and reason is None:
                    reason, deadline = "cancel", now + settings.stop_grace
                    _ask_to_stop(proc)
            if running.hand_back.is_set() and reason is None:
                reason, deadline = "hand_back", now + settings.stop_grace
                _ask_to_stop(proc)
            if deadline is not None and now > deadline and proc.is_alive():
                log.warning("job %s: training did not stop within %ss; killing it", job_id, settings.stop_grace)
                proc.kill()
    finally:
        proc.join(settings.stop_grace)
        if proc.is_alive():
            proc.kill()
            proc.join()
        reader.close()
    if message is None and reason is None and proc.exitcode == -signal.SIGKILL and kills is not None \
            and (oom_kills() or 0) > kills:  # killed while the kernel's OOM killer struck: out of memory
        message = ("oom", _killed_message(job_id))
    return message, reason, proc.exitcode


def _killed_message(job_id: int) -> str:
    from core.spec import spec_from_dict

    job = read(store.get_job, job_id=job_id)
    if job is None:
        return "the kernel's OOM killer ended the training process (SIGKILL)"
    return oom_message(spec_from_dict(job.spec), RuntimeError("the kernel's OOM killer ended the training process "
                                                              "(SIGKILL)"), job.step)


_quiet_until: dict[int, float] = {}


def _heartbeat(job_id: int, attempt: int) -> store.Lease:
    try:
        return transact(store.heartbeat, job_id=job_id, attempt=attempt, lease_seconds=settings.lease_seconds)
    except StorageError as exc:  # the store's disk is full: one line a minute, not a traceback every beat
        if time.monotonic() >= _quiet_until.get(job_id, 0):
            log.error("job %s: heartbeat not recorded: %s", job_id, exc)
            _quiet_until[job_id] = time.monotonic() + 60
        return "ok"
    except Exception:  # the store is unreachable: keep training; the lease decides if this lasts too long
        log.exception("job %s: heartbeat failed", job_id)
        return "ok"


def _ask_to_stop(proc: Any) -> None:
    """SIGTERM: the child's should_stop turns True, fit checkpoints and raises Cancelled."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the OOM killer sends SIGKILL: out of memory?)" if name == "SIGKILL" else ""
        return f"training process killed by {name}{hint}"
    return f"training process exited with code {exitcode} without a result"


def _record(fn: Callable[..., Any], job_id: int, **kwargs: Any) -> Any:
    """Write a job's outcome, waiting (and saying so, once a minute) while the store's disk is full."""
    return patient(fn, _shutting_down.is_set, f"job {job_id}: outcome", job_id=job_id, **kwargs)


def _conclude(job_id: int, attempt: int, message: Any, reason: str | None, exitcode: int | None) -> Status | None:
    kind, payload = message if message else (None, None)
    if reason == "lost":
        return None
    if kind == "done":
        ok = _record(store.finish_job, job_id, attempt=attempt, status=Status.SUCCEEDED, result=payload)
        return Status.SUCCEEDED if ok else None
    ended = {"error": Status.FAILED, "pruned": Status.PRUNED, "oom": Status.OUT_OF_MEMORY}.get(kind or "")
    if ended is not None:
        return ended if _record(store.finish_job, job_id, attempt=attempt, status=ended, error=payload) else None
    job = read(store.get_job, job_id=job_id)
    if reason == "cancel" or (job is not None and job.cancel_requested):
        step = job.step if job is not None else "?"
        ok = _record(store.finish_job, job_id, attempt=attempt, status=Status.CANCELLED,
                     error=f"cancelled at step {step}")
        return Status.CANCELLED if ok else None
    if reason == "hand_back":
        return _record(store.release_job, job_id, attempt=attempt, outcome=Outcome.HANDED_BACK,
                       error=f"handed back by {worker_name()} (worker shutting down)")
    # A crash, or a process that stopped on its own (an outside SIGTERM): retried from the checkpoint.
    error = {"crash": payload, "stopped": f"training stopped unasked: {payload}"}.get(kind or "")
    return _record(store.release_job, job_id, attempt=attempt, outcome=Outcome.CRASHED,
                   error=error or _describe_exit(exitcode))


def open_for_work() -> None:
    """Take jobs again (a worker started in a process whose earlier worker handed its jobs back)."""
    _shutting_down.clear()


def hand_back_all(timeout: float | None = None) -> None:
    """The worker is shutting down (SIGTERM): every running job checkpoints and goes back to the queue. Blocks until
    they are handed back (at most `timeout`, default stop_grace + 10 s)."""
    _shutting_down.set()
    deadline = time.monotonic() + (settings.stop_grace + 10 if timeout is None else timeout)
    while _running and time.monotonic() < deadline:
        for r in list(_running.values()):
            r.hand_back.set()
        time.sleep(0.05)
