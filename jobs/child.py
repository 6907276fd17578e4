"""The training process of one job attempt, spawned by jobs/runner.py (spawn, not fork: CUDA breaks under fork).

It runs `core.train.fit` with two listeners of its own: `MetricWriter` (events -> metric rows, in batches) and
`StopCheck` (fit's should_stop: SIGTERM from the worker, cancel in the store, the job taken over, the worker gone).
It sends one message back through a pipe and exits:
    ("done", FitResult.to_json()) | ("stopped", why) | ("pruned", why) | ("error", message) | ("oom", message)
    | ("crash", traceback)
"pruned": a listener the worker was given (jobs.hooks; a study's pruner) stopped training: the job ends PRUNED.
"oom": any allocation failure (jobs.failures): the job ends OUT_OF_MEMORY at once, with the settings that caused it.
"error" is a LampError that a retry would repeat (bad data, divergence, a full or read-only disk): the job FAILS.
Anything else, or dying without a message, is a crash: the job is retried from its checkpoint. Imports of torch and
core stay inside functions so that CUDA_VISIBLE_DEVICES is set before torch loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from jobs import store
from jobs.db import read, transact
from jobs.store import Point

SPLITS = {"step": "train", "eval": "val", "test": "test"}
FLUSH_SECONDS = 0.5
FLUSH_POINTS = 200
POLL_SECONDS = 1.0


def queue_spec(spec: Any) -> Any:
    """The spec a queued job trains with. In the queue the worker picks the GPU (`lamp worker --device cuda:N` sets
    CUDA_VISIBLE_DEVICES); a job only says whether it must stay on the CPU."""
    from core.spec import with_train

    return with_train(spec, device="cpu" if spec.train.device == "cpu" else "auto")


def event_points(kind: str, step: int, data: dict[str, Any]) -> list[Point]:
    split = SPLITS.get(kind)
    if split is None:
        return []
    return [Point(step, split, name, float(v) if math.isfinite(v) else None)
            for name, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)]


class MetricWriter:
    """fit's on_event: buffers metric points and writes them in one short transaction every FLUSH_SECONDS (or
    FLUSH_POINTS points, and at each evaluation and the end). A resumed attempt first re-reads the artifact's
    history.jsonl up to its checkpoint, so points that a killed attempt had not flushed yet are not lost."""

    def __init__(self, job_id: int, attempt: int, url: str, out_dir: Path) -> None:
        self.job_id, self.attempt, self.url, self.out_dir = job_id, attempt, url, out_dir
        self.points: list[Point] = []
        self.step: int | None = None
        self.last_step = 0
        """The last training step seen (an out-of-memory message says where it happened)."""
        self.last_flush = time.monotonic()
        self.fenced = False
        """Set when the store refused a write: the job is no longer this attempt's."""
        self.phase: dict[str, Any] = {}
        self.phase_written = 0.0

    def __call__(self, event: Any) -> None:
        if event.kind == "start":
            self._start(event.data.get("resumed_from"), event.total_steps, event.data.get("data"))
            return
        if event.kind == "phase":
            self._phase(event.data)
            return
        new = event_points(event.kind, event.step, event.data)
        self.points += new
        if event.kind == "step":
            self.step = self.last_step = event.step
        urgent = event.kind in ("eval", "test", "done")
        if urgent or len(self.points) >= FLUSH_POINTS or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def _start(self, resumed_from: int | None, total_steps: int, data: dict[str, Any] | None) -> None:
        report = data if data and any(data.values()) else None  # rows skipped, labels added: the job's details
        ok = transact(store.start_attempt, url=self.url, job_id=self.job_id, attempt=self.attempt,
                      resumed_from=resumed_from, total_steps=total_steps, data_report=report)
        self.fenced = not ok
        if resumed_from:
            self.points = history_points(self.out_dir / "history.jsonl", resumed_from)
            self.step = resumed_from
            self.flush()

    def _phase(self, data: dict[str, Any]) -> None:
        """A phase starts (written at once, with the points so far), or its progress moves (at most one write per
        FLUSH_SECONDS / 4)."""
        phase = {k: data[k] for k in ("phase", "done", "total") if data.get(k) is not None}
        started = phase.get("phase") != self.phase.get("phase")
        if self.fenced or (not started and time.monotonic() - self.phase_written < FLUSH_SECONDS / 4
                           and phase.get("done") != phase.get("total")):
            return
        self.flush()
        self.fenced = self.fenced or not transact(store.set_phase, url=self.url, job_id=self.job_id,
                                                  attempt=self.attempt, phase=phase)
        self.phase, self.phase_written = phase, time.monotonic()

    def flush(self) -> None:
        if self.fenced or (not self.points and self.step is None):
            return
        ok = transact(store.add_metrics, url=self.url, job_id=self.job_id, attempt=self.attempt,
                      points=self.points, step=self.step)
        self.fenced = not ok
        self.points, self.step, self.last_flush = [], None, time.monotonic()


def history_points(path: Path, up_to: int) -> list[Point]:
    """Points of the events an artifact's history.jsonl recorded at steps <= up_to (a later line wins)."""
    points: dict[tuple[int, str, str], Point] = {}
    if not path.is_file():
        return []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        kind, step = record.pop("kind", None), record.pop("step", None)
        if isinstance(kind, str) and isinstance(step, int) and step <= up_to:
            for p in event_points(kind, step, record):
                points[(p.step, p.split, p.name)] = p
    return list(points.values())


class StopCheck:
    """fit's should_stop: cheap checks every step, the store at most once per POLL_SECONDS."""

    def __init__(self, job_id: int, attempt: int, url: str, parent_pid: int, writer: MetricWriter) -> None:
        self.job_id, self.attempt, self.url, self.parent_pid, self.writer = job_id, attempt, url, parent_pid, writer
        self.signalled = threading.Event()
        self.last_poll = time.monotonic()

    def __call__(self) -> bool:
        if self.signalled.is_set() or self.writer.fenced or os.getppid() != self.parent_pid:
            return True
        if time.monotonic() - self.last_poll < POLL_SECONDS:
            return False
        self.last_poll = time.monotonic()
        return read(store.should_stop, url=self.url, job_id=self.job_id, attempt=self.attempt)


def _die_with_parent(parent_pid: int) -> None:
    """If the worker dies (SIGKILL, OOM killer), take the training down with it at once (Linux), rather than
    leave it running beside the attempt the reaper will start; StopCheck's getppid() test covers other systems."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)


def train_attempt(job_id: int, attempt: int, url: str, out_dir: str, visible_devices: str | None,
                  threads: int | None, parent_pid: int, conn: Connection, memory_mb: float | None = None,
                  listeners: Sequence[str] = ()) -> None:
    """Entry point of the spawned process."""
    os.setsid()  # a terminal's Ctrl-C goes to the worker, which decides what the training does
    _die_with_parent(parent_pid)
    if visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    writer = MetricWriter(job_id, attempt, url, Path(out_dir))
    stop = StopCheck(job_id, attempt, url, parent_pid, writer)
    signal.signal(signal.SIGTERM, lambda *_: stop.signalled.set())  # the worker's "checkpoint and stop"
    try:
        message = _train(job_id, url, Path(out_dir), threads, writer, stop, memory_mb, listeners)
    except BaseException:  # a crash: the worker retries from the checkpoint
        message = ("crash", traceback.format_exc(limit=20))
    conn.send(message)
    conn.close()


def _train(job_id: int, url: str, out_dir: Path, threads: int | None, writer: MetricWriter,
           stop: StopCheck, memory_mb: float | None = None, listeners: Sequence[str] = ()) -> tuple[str, Any]:
    import torch

    from core.errors import Cancelled
    from core.spec import spec_from_dict
    from core.train import fit
    from jobs.failures import classify, limit_memory

    job = read(store.get_job, url=url, job_id=job_id)
    if job is None:
        return ("error", f"job {job_id} is gone from the store")
    spec = queue_spec(spec_from_dict(job.spec))
    if threads is not None and spec.train.threads is None:
        torch.set_num_threads(threads)
    extra = _listeners(listeners, job_id, url)  # the worker's hooks: a study's pruner, for one of its trials

    def on_event(event: Any) -> None:
        writer(event)
        for listener in extra:
            listener(event)

    def stopped_by() -> str | None:
        return next((listener.stop_reason for listener in extra if listener.stop_reason), None)

    def should_stop() -> bool:
        return stop() or stopped_by() is not None

    limit_memory(memory_mb)
    try:
        result = fit(spec, out_dir, on_event=on_event, should_stop=should_stop)
    except Cancelled as exc:
        writer.flush()
        reason = stopped_by()
        return ("pruned", reason) if reason is not None else ("stopped", str(exc))
    except Exception as exc:
        ended = classify(exc, spec, writer.last_step, out_dir)
        if ended is None and not _is_lamp_error(exc):
            raise  # a crash: retried from the checkpoint
        with contextlib.suppress(Exception):  # the points so far, if the store takes them
            writer.flush()
        return ended or ("error", f"{type(exc).__name__}: {exc}")
    writer.flush()
    return ("done", result.to_json())


def _listeners(names: Sequence[str], job_id: int, url: str) -> list[Any]:
    """The worker's listener factories (`module:function`, imported here, after the devices are set), each asked
    for a listener of this job."""
    made = []
    for name in names:
        module, _, function = name.partition(":")
        listener = getattr(importlib.import_module(module), function)(job_id, url)
        if listener is not None:
            made.append(listener)
    return made


def _is_lamp_error(exc: BaseException) -> bool:
    from core.errors import LampError

    return isinstance(exc, LampError)
