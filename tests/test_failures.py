"""Failures say what happened and what to do, at once: out of memory of any kind (OUT_OF_MEMORY, never retried), a
full disk or an unwritable LAMP_HOME (one line naming the path and the fix: CLI exit 2, the job FAILED), a corrupt
artifact (found before any model loads), a busy port (reported before the embedded worker claims a job), a dead
worker on a UI-only server (its job leaves RUNNING).

Real processes and real file systems: the training process of the real worker path, `lamp` commands, `lamp worker`
and `lamp serve`; full and read-only disks are small tmpfs mounts (those tests need root and skip without it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from serve_support import Server, free_port
from test_jobs_support import lamp_command, report, tiny_spec, wait_for, worker_store

from core.errors import is_out_of_memory
from jobs import store
from jobs.db import read
from jobs.models import Outcome, Status

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def small_disk(path: Path, size: str = "2m", read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (root only), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of the file system holding `folder`."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        for size in (2**20, 4096, 1):  # then whatever smaller blocks can still take
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler


def lamp(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("LAMP_DATABASE_URL", "LAMP_QUEUE_URL",
                                                              "LAMP_ARTIFACTS_DIR")}
    return subprocess.run([*lamp_command(), *args], env={**clean, "LAMP_HOME": str(home), **env},
                          capture_output=True, text=True, timeout=300)


@pytest.fixture()
def sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from worker_store(tmp_path, monkeypatch, "sqlite")


# ---- out of memory ----

@pytest.mark.parametrize("message", [
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 30000000000 bytes. Error code 12 (Cannot allocate memory)",
    "[enforce fail at alloc_cpu.cpp:83] data. DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB",
    "CUDA out of memory. Tried to allocate 2.00 GiB",
])
def test_every_kind_of_allocation_failure_is_out_of_memory(message: str) -> None:
    assert is_out_of_memory(RuntimeError(message))
    try:
        raise ValueError("while batching") from RuntimeError(message)
    except ValueError as exc:
        assert is_out_of_memory(exc)
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(RuntimeError("shape mismatch"))


def test_a_job_that_cannot_allocate_fails_at_once_as_out_of_memory(sqlite_store: str, tiny_llama_dir: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs import runner
    from jobs.queue import execute_next
    from jobs.tasks import submit

    # Long answers (generation): the first step asks for the logits of every answer token at once, ~3.5 GB.
    data = tmp_path / "long.csv"
    data.write_text("review,verdict\n" + "".join(f'"review {i}","{f"answer {i} " * 300}"\n' for i in range(16)))
    monkeypatch.setattr(runner.settings, "memory_mb", 1000.0)  # LAMP_JOB_MEMORY_MB: a CPU job may take 1 GB more
    spec = tiny_spec(tiny_llama_dir, data, batch_size=16, max_length=64)
    started = time.monotonic()
    job_id = submit(spec, max_attempts=3)
    assert execute_next()
    seconds = time.monotonic() - started
    job = read(store.get_job, job_id=job_id)
    attempts = read(store.job_attempts, job_id=job_id)
    assert job is not None and job.status == Status.OUT_OF_MEMORY, job and job.error
    assert job.attempts == 1 and job.failures == 0 and not execute_next()  # never retried
    assert [a.outcome for a in attempts] == [Outcome.OUT_OF_MEMORY]
    error = job.error or ""
    assert "can't allocate memory" in error and "batch_size=16" in error and "max_length=64" in error
    assert "Lower batch_size or max_length" in error and "Traceback" not in error
    report("out of memory to a clear failure", seconds=round(seconds, 1))


def test_lamp_train_out_of_memory_is_one_line(tmp_path: Path, tiny_llama_dir: Path) -> None:
    import resource

    data = tmp_path / "long.csv"
    data.write_text("review,verdict\n" + "".join(f'"review {i}","{f"answer {i} " * 300}"\n' for i in range(16)))

    def cap() -> None:  # 3 GB of address space: the libraries and the tiny model fit, the first step's logits do not
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, resource.RLIM_INFINITY))

    done = subprocess.run([*lamp_command(), "train", "--model", str(tiny_llama_dir), "--train", str(data),
                           "--text-column", "review", "--label-column", "verdict", "--length", "8", "--rank", "4",
                           "--pool", "2", "--steps", "2", "--batch-size", "16", "--max-length", "64", "--device", "cpu",
                           "--threads", "1", "--quiet", "--out", str(tmp_path / "out")], preexec_fn=cap,
                          env={**os.environ, "LAMP_HOME": str(tmp_path / "home")}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "out of memory" in last and "--batch-size" in last, last


# ---- full disks, unwritable homes ----

def test_an_unwritable_lamp_home_is_one_line_naming_the_path(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    for args in (["jobs"], ["submit", "--steps", "1"], ["gc"]):
        done = lamp(*args, home=a_file / "home")
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert str(a_file) in lines[0] and "a file, not a folder" in lines[0] and "LAMP_HOME" in lines[0]


def test_a_read_only_or_full_lamp_home_is_one_line_naming_the_path(tmp_path: Path) -> None:
    with small_disk(tmp_path / "ro", read_only=True) as home:
        done = lamp("jobs", home=home)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert f"{home}" in done.stderr and "read-only" in done.stderr
    with small_disk(tmp_path / "full", size="1m") as home:
        fill(home)
        started = time.monotonic()
        done = lamp("submit", "--steps", "1", home=home)
        seconds = time.monotonic() - started
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert str(home) in done.stderr and "disk is full" in done.stderr and "free space" in done.stderr
        report("full LAMP_HOME to a clear CLI error", seconds=round(seconds, 1))


def test_a_job_on_a_full_disk_fails_at_once_naming_the_folder(tmp_path: Path, tiny_llama_dir: Path,
                                                              sentiment_csv: Path) -> None:
    home = tmp_path / "home"
    with small_disk(tmp_path / "artifacts", size="4m") as artifacts:
        env = {"LAMP_ARTIFACTS_DIR": str(artifacts), "LAMP_LEASE_SECONDS": "3"}
        submitted = lamp(*_flags(tiny_llama_dir, sentiment_csv), "--json", home=home, **env)
        assert submitted.returncode == 0, submitted.stderr
        fill(artifacts)
        worker = subprocess.Popen([*lamp_command(), "worker", "--threads", "1"], env={
            **os.environ, "LAMP_HOME": str(home), **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            started = time.monotonic()
            status = wait_for(lambda: _status(home, 1) if _status(home, 1) not in ("QUEUED", "RUNNING") else None,
                              180, "the job to end")
            seconds = time.monotonic() - started
        finally:
            worker.terminate()
            worker.wait(60)
    error = _error(home, 1)
    assert status == "FAILED" and "disk is full" in error and str(artifacts) in error, error
    assert _attempts(home, 1) == 1  # not retried: a retry would find the same full disk
    report("full artifact disk to a FAILED job", seconds=round(seconds, 1))


def _flags(model: Path, csv: Path) -> list[str]:
    return ["submit", "--model", str(model), "--train", str(csv), "--text-column", "review", "--label-column",
            "verdict", "--length", "8", "--rank", "4", "--pool", "2", "--steps", "6", "--batch-size", "4",
            "--eval-every", "3", "--max-eval-examples", "8", "--device", "cpu"]


def _row(home: Path, job_id: int, column: str) -> str:
    with sqlite3.connect(home / "lamp.db") as db:
        row = db.execute(f"SELECT {column} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return str(row[0]) if row else ""


def _status(home: Path, job_id: int) -> str:
    return _row(home, job_id, "status")


def _error(home: Path, job_id: int) -> str:
    return _row(home, job_id, "error")


def _attempts(home: Path, job_id: int) -> int:
    return int(_row(home, job_id, "attempts") or 0)


def test_an_upload_on_a_full_disk_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, access: object,
                                          sentiment_csv: Path) -> None:
    from app.uploads import accept_upload
    from core.errors import StorageError

    for _ in worker_store(tmp_path, monkeypatch, "sqlite"):
        with small_disk(tmp_path / "lamp-home", size="1m") as home:
            monkeypatch.setenv("LAMP_HOME", str(home))
            (home / "uploads").mkdir()
            fill(home)
            temp = tmp_path / "gradio" / "x" / "reviews.csv"
            temp.parent.mkdir(parents=True)
            temp.write_text(sentiment_csv.read_text())
            monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
            with pytest.raises(StorageError, match=rf"cannot write {home}/uploads.*the disk is full; free space"):
                accept_upload(temp, access=access)  # type: ignore[arg-type]


# ---- a corrupt artifact, a busy port, a dead worker under a UI-only server ----

def test_a_corrupt_artifact_is_named_before_any_model_loads(tmp_path: Path, tiny_llama_dir: Path,
                                                            sentiment_csv: Path) -> None:
    from core.artifact import load_artifact
    from core.errors import ArtifactError
    from core.train import fit

    artifact = fit(replace(tiny_spec(tiny_llama_dir, sentiment_csv), train=replace(
        tiny_spec(tiny_llama_dir, sentiment_csv).train, steps=2, final_eval=False)), tmp_path / "art").artifact
    prompt = Path(artifact) / "prompt.safetensors"
    prompt.write_bytes(prompt.read_bytes()[:-7])  # cut short, as a copy that ran out of space would be
    with pytest.raises(ArtifactError, match=r"prompt\.safetensors: not a complete safetensors file"):
        load_artifact(artifact)
    started = time.monotonic()
    done = lamp("predict", "--artifact", artifact, "--text", "a fine film", home=tmp_path / "home")
    seconds = time.monotonic() - started
    assert done.returncode == 2 and str(prompt) in done.stderr and "Traceback" not in done.stderr, done.stderr
    (Path(artifact) / "prompt_params.safetensors").write_bytes(b"\xff" * 40)
    prompt.unlink()
    with pytest.raises(ArtifactError, match=r"prompt\.safetensors is missing"):
        load_artifact(artifact)
    report("corrupt artifact to a clear error (lamp predict)", seconds=round(seconds, 1))


def test_a_busy_port_is_reported_before_the_embedded_worker_claims_a_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert lamp("submit", "--steps", "1", home=home).returncode == 0
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run([*lamp_command(), "serve", "--port", str(port)], env={
            **os.environ, "LAMP_HOME": str(home)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr and "--port" in done.stderr
    assert _status(home, 1) == "QUEUED" and _attempts(home, 1) == 0  # nothing was claimed


def test_a_ui_only_server_requeues_a_job_whose_worker_died(tmp_path: Path) -> None:
    from jobs.db import transact, upgrade_database

    home = tmp_path / "home"
    assert lamp("submit", "--steps", "1", home=home).returncode == 0
    url = f"sqlite:///{home / 'lamp.db'}"
    upgrade_database(url)
    assert transact(store.claim_job, url=url, job_id=1, worker="gone:1:x", lease_seconds=1) is not None
    time.sleep(1.2)  # the lease expired: that worker is dead
    server = Server(home, "--no-worker", env={"LAMP_LEASE_SECONDS": "2"})
    try:
        wait_for(lambda: _status(home, 1) == "QUEUED" or None, 30, "the reaper to requeue the job")
    finally:
        server.stop()
    assert "stopped heartbeating" in _error(home, 1)


def test_a_job_whose_disk_fills_up_mid_run_does_not_stay_running(tmp_path: Path, tiny_llama_dir: Path,
                                                                  sentiment_csv: Path) -> None:
    """Store, queue and artifacts on one disk that fills while the job trains. SQLite may still write (its WAL
    reuses pages it has), so the job ends FAILED at once naming the full artifact folder; or the store cannot be
    written either, and then the worker says so in one line and records FAILED as soon as space is back."""
    with small_disk(tmp_path / "home", size="24m") as home:
        env = {"LAMP_LEASE_SECONDS": "3"}
        assert lamp(*_flags(tiny_llama_dir, sentiment_csv), "--steps", "2000", home=home, **env).returncode == 0
        log = tmp_path / "worker.log"
        worker = subprocess.Popen([*lamp_command(), "worker", "--threads", "1"], env={
            **os.environ, "LAMP_HOME": str(home), **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: (_status(home, 1) == "RUNNING" and int(_row(home, 1, "step") or 0) > 2) or None, 120,
                     "the job to run")
            filler = fill(home)
            started = time.monotonic()
            try:
                wait_for(lambda: _status(home, 1) != "RUNNING" or None, 15, "the job to end while the disk is full")
                how = "ended while full"
            except AssertionError:  # the store cannot be written: the worker keeps the outcome until it can
                assert "trying again every" in log.read_text(errors="replace")
                filler.unlink()
                started = time.monotonic()
                wait_for(lambda: _status(home, 1) != "RUNNING" or None, 30, "the job to end once space is back")
                how = "recorded once space was back"
            seconds = time.monotonic() - started
        finally:
            worker.terminate()
            worker.wait(60)
        status, error, text = _status(home, 1), _error(home, 1), log.read_text(errors="replace")
    assert status == "FAILED" and "disk is full" in error and str(home) in error, (status, error)
    assert "Traceback" not in text and text.count("trying again every") <= 1, text[-3000:]
    report("disk full mid-run to a FAILED job", how=how, seconds=round(seconds, 1))
