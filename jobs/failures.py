"""Failures that a retry would only repeat, named so that a person knows what to change.

- Out of memory, of any kind (torch's OutOfMemoryError, MemoryError, an allocator's RuntimeError such as
  "DefaultCPUAllocator: can't allocate memory", a training process SIGKILLed while the kernel's OOM killer struck):
  the job ends OUT_OF_MEMORY at once, its message naming the settings that asked for the memory.
- Storage: the artifact folder's disk is full or read-only, or the store cannot be written. The job ends FAILED
  with the path and the fix; the worker keeps trying to record that outcome while the store's own disk is full,
  with one log line a minute instead of a traceback every few seconds.
- `LAMP_JOB_MEMORY_MB` caps what a CPU training process may allocate beyond its libraries (RLIMIT_AS), so that an
  over-large job fails as OUT_OF_MEMORY on its own instead of waking the OOM killer for the whole machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from core.errors import StorageError, is_out_of_memory, storage_error

T = TypeVar("T")
log = logging.getLogger(__name__)
MEMORY_ENV = "LAMP_JOB_MEMORY_MB"
RECORD_EVERY_S = 2.0


def oom_message(spec: Any, exc: BaseException, step: int | None) -> str:
    """What ran out, where, and the settings that asked for the memory (with what to lower)."""
    t, m = spec.train, spec.method
    what = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    when = f"at step {step + 1}" if step else "before the first step (loading the model and data, or step 1)"
    quant = f", quantize={spec.model.quantize}" if spec.model.quantize != "none" else ""
    tokens = getattr(m, "prompt_tokens", m.length)
    return (f"out of memory {when}: {what}. Settings: batch_size={t.batch_size}, max_length={t.max_length}, "
            f"method={m.name} length={m.length} (the model reads {tokens} prompt tokens), model="
            f"{spec.model.name} dtype={spec.model.dtype}{quant}, device={t.device}. Lower batch_size or max_length "
            "(`lamp estimate` shows the memory a run needs), or use dtype=bfloat16")


def classify(exc: BaseException, spec: Any, step: int | None, out_dir: Path) -> tuple[str, str] | None:
    """The child's message for an error that ends the job at once: ("oom", ...) or ("error", a StorageError's
    text); None for anything else (a crash, retried from the checkpoint)."""
    if is_out_of_memory(exc):
        return "oom", oom_message(spec, exc, step)
    problem = storage_error(exc, out_dir)
    if problem is None:
        from jobs.db import store_storage_error

        problem = store_storage_error(exc)
    return ("error", f"StorageError: {problem}") if problem is not None else None


def limit_memory(headroom_mb: float | None) -> None:
    """Cap this process's address space at what it maps now plus `headroom_mb` (CPU only: CUDA maps far more
    address space than it uses, so a GPU process is left alone)."""
    if not headroom_mb:
        return
    import resource

    import torch

    if torch.cuda.is_available():
        return
    with open("/proc/self/status") as f:
        mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    limit = mapped + int(headroom_mb * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def memory_headroom_mb() -> float | None:
    raw = os.environ.get(MEMORY_ENV)
    return float(raw) if raw else None


def oom_kills() -> int | None:
    """The kernel's count of OOM-killer kills (any cgroup), None where it cannot be read."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/vmstat") as f:
        return int(next(line.split()[1] for line in f if line.startswith("oom_kill ")))
    return None


def patient(fn: Callable[..., T], stopping: Callable[[], bool], what: str, /, **kwargs: Any) -> T | None:
    """`jobs.db.transact(fn, **kwargs)`, tried again every RECORD_EVERY_S while the store cannot be written (disk
    full, read-only), with one log line a minute; None if the worker is shutting down first."""
    from jobs.db import transact

    quiet_until = 0.0
    while True:
        try:
            return transact(fn, **kwargs)
        except StorageError as exc:
            if time.monotonic() >= quiet_until:
                log.error("%s: %s; trying again every %.0f s until it can be written", what, exc, RECORD_EVERY_S)
                quiet_until = time.monotonic() + 60
        if stopping():
            log.error("%s: not recorded (worker shutting down); its lease expires and a reaper requeues it", what)
            return None
        time.sleep(RECORD_EVERY_S)
