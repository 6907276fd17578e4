"""Several worker processes write metrics (through the training process's own MetricWriter) while a reader polls:
no row lost or doubled, no "database is locked", on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_jobs_support import postgres_database, report, service_url, wait_for

from jobs import store
from jobs.db import dispose_engines, read, transact, upgrade_database

WRITERS, STEPS, NAMES = 4, 1000, 8
WRITER = """
import json, logging, os, sys, time
from pathlib import Path
from core.events import Event
from jobs.child import MetricWriter

url, job_id, attempt, steps, names, go, out = sys.argv[1:]
Path(out + ".ready").touch()
steps, names = int(steps), int(names)
retries = []
class Count(logging.Handler):
    def emit(self, record): retries.append(record.getMessage())
logging.getLogger("jobs.db").addHandler(Count(logging.WARNING))
writer = MetricWriter(int(job_id), int(attempt), url, Path(out).parent)
while not os.path.exists(go):
    time.sleep(0.005)
start = time.time()
writer(Event("start", 0, steps, {"resumed_from": None}))
for step in range(1, steps + 1):
    writer(Event("step", step, steps, {f"m{i}": step + i / 10 for i in range(names)}))
    if step % 100 == 0:
        writer(Event("eval", step, steps, {"accuracy": step / steps}))
writer.flush()
Path(out).write_text(json.dumps({"start": start, "end": time.time(), "retries": retries, "fenced": writer.fenced}))
"""


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'lamp.db'}"
        else:
            url = stack.enter_context(postgres_database(service_url("LAMP_TEST_POSTGRES_URL")))
        monkeypatch.setenv("LAMP_DATABASE_URL", url)
        upgrade_database(url)
        yield url
        dispose_engines()


def test_concurrent_metric_writers_and_a_polling_reader(db: str, tmp_path: Path) -> None:
    jobs = []
    for _ in range(WRITERS):
        job_id = transact(store.create_job, spec={"writer": True}).id
        attempt = transact(store.claim_job, job_id=job_id, worker="bench", lease_seconds=600)
        assert attempt is not None
        jobs.append((job_id, attempt.number))
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, db, str(job_id), str(n), str(STEPS), str(NAMES),
                               str(go), str(tmp_path / f"writer-{job_id}.json")], stderr=subprocess.PIPE)
             for job_id, n in jobs]

    # The dashboard's poll: the job list, then each job's points after the last complete step it has seen (a
    # step is complete once a later one is there: its eval points may come in the next batch).
    seen = {job_id: 0 for job_id, _ in jobs}
    counts = dict.fromkeys(seen, 0)
    errors: list[BaseException] = []
    polls = 0
    done = threading.Event()

    def poll_once(final: bool = False) -> None:
        read(store.list_jobs)
        for job_id in seen:
            new = read(store.metric_points, job_id=job_id, after_step=seen[job_id])
            complete = new if final else [p for p in new if p.step < new[-1].step]
            counts[job_id] += len(complete)
            seen[job_id] = max([seen[job_id], *(p.step for p in complete)])

    def poll() -> None:
        nonlocal polls
        while not done.is_set():
            try:
                poll_once()
                polls += 1
            except BaseException as exc:  # any error here fails the test below
                errors.append(exc)
            time.sleep(0.02)

    reader = threading.Thread(target=poll)
    for job_id, _ in jobs:  # the writers have imported what they need: the measurement starts at `go`
        path = tmp_path / f"writer-{job_id}.json.ready"
        wait_for(path.exists, 120, f"writer of job {job_id} to start")
    go.touch()
    reader.start()
    stderr = [p.communicate(timeout=240)[1].decode() for p in procs]
    done.set()
    reader.join()
    assert [p.returncode for p in procs] == [0] * WRITERS, stderr
    assert errors == []
    poll_once(final=True)

    expected = STEPS * NAMES + STEPS // 100
    outs = [json.loads((tmp_path / f"writer-{job_id}.json").read_text()) for job_id, _ in jobs]
    for (job_id, _), out in zip(jobs, outs, strict=True):
        assert not out["fenced"]
        points = read(store.metric_points, job_id=job_id)
        assert len(points) == expected
        assert len({(p.step, p.split, p.name) for p in points}) == expected
        assert read(store.get_job, job_id=job_id).step == STEPS  # type: ignore[union-attr]
    retries = sum(len(o["retries"]) for o in outs)
    seconds = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    rows = expected * WRITERS
    assert polls > 0 and counts == dict.fromkeys(seen, expected)  # the reader saw every row exactly once
    report(f"metric rows under concurrency ({db.split(':')[0]})", writers=WRITERS, rows=rows,
           seconds=round(seconds, 2), rows_per_second=round(rows / seconds), busy_retries=retries, reader_polls=polls,
           lost=0, lock_errors=0)
