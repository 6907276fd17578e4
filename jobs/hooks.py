"""What a worker runs besides its jobs, given to it when it starts (`jobs.tasks.run_worker(hooks=...)`): work when one
of its jobs has ended, work on every pass of its reaper, and extra listeners of each training process's events. The
runner and the reaper call them without knowing what they are, so the queue calls nothing above it; studies give
theirs (jobs.studies.conduct.worker_hooks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class Listener(Protocol):
    """A listener of one job's training events, in its training process. Once `stop_reason` is set, training
    checkpoints and stops, and the job ends PRUNED with that reason."""

    stop_reason: str | None

    def __call__(self, event: Any) -> None: ...


ListenerFactory = Callable[[int, str], Listener | None]
"""(job id, store URL) -> a listener for that job, or None. A module-level function: the training process imports it
by name once its devices are set."""


@dataclass(frozen=True)
class WorkerHooks:
    job_ended: tuple[Callable[[int], None], ...] = ()
    """Called with a job's id once the job has ended (SUCCEEDED, FAILED, CANCELLED, PRUNED, OUT_OF_MEMORY)."""
    sweep: tuple[Callable[[], None], ...] = ()
    """Called on every pass of the reaper (every few seconds), after the reaper's own work."""
    listeners: tuple[ListenerFactory, ...] = ()


def qualified_name(fn: Callable[..., Any]) -> str:
    """`module:name` of a module-level function, what the training process imports (jobs.child)."""
    return f"{fn.__module__}:{fn.__qualname__}"
