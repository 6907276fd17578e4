"""The huey instance. Tasks live in jobs/tasks.py and import it (huey's own layout).

LAMP_QUEUE_URL picks the broker when this module is first imported:
- `sqlite:///PATH` (default `sqlite:///$LAMP_HOME/queue.db`): SqliteHuey, one machine, no server;
- `redis://host:6379/0` (or `rediss://`): RedisHuey, for workers on several machines;
- `memory://`: MemoryHuey, in-process (tests step it with `execute_next()`).
LAMP_QUEUE_NAME (default `lamp`) names the queue inside the broker, so that several installations can share one
Redis. The queue only carries "run job N" wake-ups; what a job is and where it stands lives in the results store.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from huey import Huey, MemoryHuey, RedisHuey, SqliteHuey
from sqlalchemy.engine import make_url

from core.backbone import lamp_home
from core.errors import ConfigError, storage_error


def queue_url() -> str:
    return os.environ.get("LAMP_QUEUE_URL") or f"sqlite:///{lamp_home() / 'queue.db'}"


def make_huey(url: str, name: str | None = None) -> Huey:
    name = name or os.environ.get("LAMP_QUEUE_NAME") or "lamp"
    # Results are not kept: the store records outcomes, and huey's result keys would only pile up.
    options: dict[str, Any] = {"results": False, "utc": True}
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisHuey(name, url=url, **options)
    if url.startswith("sqlite:"):
        database = make_url(url).database
        if not database:
            raise ConfigError(f"LAMP_QUEUE_URL={url}: give a file, e.g. sqlite:///{lamp_home() / 'queue.db'}")
        path = Path(database).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return SqliteHuey(name, filename=str(path), timeout=30, **options)
        except (OSError, sqlite3.Error) as exc:
            from jobs.db import sqlite_storage_error

            raise storage_error(exc, path.parent) or sqlite_storage_error(exc, path, "the queue") or exc from exc
    if url.startswith("memory:"):
        return MemoryHuey(name, **options)
    raise ConfigError(f"LAMP_QUEUE_URL={url}: use sqlite:///PATH, redis://HOST:PORT/DB or memory://")


huey = make_huey(queue_url())


def use_queue(url: str, name: str | None = None) -> Huey:
    """Point this process's huey at another broker (tests; a program that knows its queue only after import)."""
    huey.storage = make_huey(url, name).storage
    return huey


def execute_next() -> bool:
    """Run the next queued task in this thread (tests step the queue with it); False if the queue was empty."""
    task = huey.dequeue()
    if task is None:
        return False
    huey.execute(task)
    return True
