"""Helpers for the job queue and store tests (no tests here): service URLs, scratch databases, tiny specs, `lamp
worker` processes and waiting.

Redis and PostgreSQL come from LAMP_TEST_REDIS_URL / LAMP_TEST_POSTGRES_URL (`eval "$(scripts/ci-services.sh)"`
sets both). Unset, their tests skip, except under CI=true, where they fail: CI must not pass without them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from core.methods import method_config
from core.spec import DataConfig, ModelConfig, RunSpec, TrainConfig

T = TypeVar("T")


def service_url(env: str) -> str:
    url = os.environ.get(env)
    if url:
        return url
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{env} is not set under CI: run `eval \"$(bash scripts/ci-services.sh)\"` first")
    pytest.skip(f"{env} not set (eval \"$(bash scripts/ci-services.sh)\" starts the service)")


@contextlib.contextmanager
def postgres_database(base_url: str) -> Iterator[str]:
    """A fresh, empty database on the server of `base_url`, dropped afterwards."""
    name = f"lamp_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        from jobs.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def worker_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> Iterator[str]:
    """A private store and queue that tests step in-process (`jobs.queue.execute_next`), on the embedded default
    (SQLite store and queue) or the scaled-out pair (PostgreSQL store, Redis queue); yields the store's URL. A
    study's Optuna database (beside the store) goes with it. The in-process worker has the hooks `lamp worker`
    starts with (a study's pruner, its advance at each job's end)."""
    from jobs import runner
    from jobs.db import dispose_engines, upgrade_database
    from jobs.queue import huey, use_queue
    from jobs.studies import optuna_db
    from jobs.studies.conduct import worker_hooks

    monkeypatch.setenv("LAMP_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.delenv("LAMP_STUDY_DATABASE_URL", raising=False)
    monkeypatch.setattr(runner, "settings", runner.WorkerSettings(threads=1, lease_seconds=10, stop_grace=10,
                                                                  hooks=worker_hooks()))
    runner.open_for_work()
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'lamp.db'}"
            use_queue(f"sqlite:///{tmp_path / 'queue.db'}")
        else:
            url = stack.enter_context(postgres_database(service_url("LAMP_TEST_POSTGRES_URL")))
            use_queue(service_url("LAMP_TEST_REDIS_URL"), name=f"lamp-t-{uuid.uuid4().hex[:8]}")
            stack.callback(huey.flush)
            stack.callback(_drop_database, optuna_db.storage_url(url))
        monkeypatch.setenv("LAMP_DATABASE_URL", url)
        upgrade_database(url)
        yield url
        dispose_engines()
        optuna_db.optuna_storage.cache_clear()
    use_queue("memory://")


def _drop_database(url: str) -> None:
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    admin.dispose()


def tiny_spec(model: Path, csv: Path, **train: Any) -> RunSpec:
    """A few-second run of a tiny random Llama on the CPU (one thread)."""
    settings = {"steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 2, "lr": 0.05, "device": "cpu",
                "threads": 1, **train}
    return RunSpec(model=ModelConfig(str(model)), method=method_config("lamp", length=8, rank=4, pool=2),
                   data=DataConfig(task=None, train_file=str(csv), text_column="review", label_column="verdict",
                                   max_eval_examples=8, max_test_examples=8),
                   train=TrainConfig(**settings))


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll until `predicate()` is truthy and return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is dead, only not yet reaped
    return True


def lamp_command() -> list[str]:
    script = Path(sys.executable).with_name("lamp")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lamp"]


@dataclass
class Workers:
    """`lamp worker` consumer processes sharing one store and one queue."""

    env: dict[str, str]
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen([*lamp_command(), "worker", "--threads", "1", *args], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def pid_of(self, worker: str) -> int:
        """The consumer process named in a job's `worker` (host:pid:thread)."""
        return int(worker.split(":")[1])

    def proc(self, pid: int) -> subprocess.Popen[bytes]:
        return next(p for p in self.procs if p.pid == pid)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def tails(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}" for f in sorted(self.logs.iterdir()))


def worker_env(*, home: Path, db_url: str, queue_url: str, queue_name: str, lease: float = 3.0) -> dict[str, str]:
    return {**os.environ, "LAMP_HOME": str(home), "LAMP_DATABASE_URL": db_url, "LAMP_QUEUE_URL": queue_url,
            "LAMP_QUEUE_NAME": queue_name, "LAMP_LEASE_SECONDS": str(lease), "LAMP_STOP_GRACE_SECONDS": "10",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def report(name: str, **figures: Any) -> None:
    """Print a measured figure (shown with -s) and append it to $LAMP_JOBS_FIGURES as a JSON line when set."""
    import json

    line = json.dumps({"figure": name, **figures})
    print(f"\nFIGURE {line}")
    path = os.environ.get("LAMP_JOBS_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
