"""A real `lamp serve` for tests (no tests here): started on a free port with a private LAMP_HOME, called through
`gradio_client` or plain HTTP, stopped with SIGINT; plus a raw call that sends exactly what a client chooses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from test_jobs_support import lamp_command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT, as Ctrl-C would; killed if it has not ended after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Server:
    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        base = {k: v for k, v in os.environ.items()
                if k not in ("LAMP_DATABASE_URL", "LAMP_QUEUE_URL", "LAMP_ARTIFACTS_DIR", "LAMP_AUTH")}
        base.update(LAMP_HOME=str(home), PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
        self.log = home / "serve.log"
        home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([*lamp_command(), "serve", "--port", str(self.port), *args], env=base,
                                     stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        if wait:
            self.wait()

    def wait(self, timeout: float = 120) -> None:
        """Until it prints its start-up line: it does so once Gradio listens, the API is mounted and the worker runs."""
        deadline = time.monotonic() + timeout
        while "LAMP Studio on " not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"lamp serve did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        stop_process(self.proc)

    def memory_mb(self) -> dict[str, float]:
        """The server process's resident memory now (VmRSS) and at its peak (VmHWM), MiB."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
        return out


def raw_call(client: Any, api_name: str, data: list[Any], timeout: float = 120) -> tuple[str, Any]:
    """Call an event through Gradio's HTTP API with exactly `data` (gradio_client would upload any local file a
    FileData names first; a hostile client need not), on the client's login. Returns ("complete", output) or
    ("error", message)."""
    with httpx.Client(cookies=client.cookies, base_url=client.src, timeout=timeout) as http:
        event = http.post(f"gradio_api/call/{api_name}", json={"data": data})
        event.raise_for_status()
        text = http.get(f"gradio_api/call/{api_name}/{event.json()['event_id']}").text
    kind, payload = "error", None
    for line in text.splitlines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ").strip()
        elif line.startswith("data: "):
            payload = json.loads(line.removeprefix("data: "))
    return kind, payload
