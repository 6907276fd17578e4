"""Measure the web process's memory when a client uploads a "Parquet bomb": a file of about 124 KB that holds
2,000,000 rows (repeated values compress to almost nothing).

Starts `lamp serve --no-worker` on a free port with a fresh LAMP_HOME, uploads the file through `gradio_client` to the
New job tab's upload handler (`--copies N` at once), and prints one JSON line: the server's resident memory before,
its peak (VmHWM) and what it kept afterwards, in MiB, the answer (or error) of each upload and the seconds it took.

    .venv/bin/python scripts/upload_bomb.py [--copies 1] [--rows 2000000] [--source DIR]

`--source DIR` runs the `lamp` of another checkout (e.g. a `git worktree` of an older commit) with this venv.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def write_bomb(path: Path, rows: int, copy: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # 2,000 distinct reviews of 200 characters, in runs of 55 equal rows: dictionary and run-length encoding
    # squeeze 2M rows (about 450 MB of text) into about 124 KB.
    reviews = [(f"review {k} copy {copy} " + "so good and so long " * 20)[:200] for k in range(2000)]
    table = pa.table({"text": pa.array([reviews[(i // 55) % 2000] for i in range(rows)]),
                      "label": pa.array(["good" if (i // 55) % 2 else "bad" for i in range(rows)])})
    pq.write_table(table, path, compression="zstd", use_dictionary=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def start_server(home: Path, port: int, source: Path | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMP_")}
    env.update(LAMP_HOME=str(home), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "lamp", "serve", "--no-worker", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, cwd=source or Path(__file__).resolve().parents[1],
                            stdout=(home / "serve.log").open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except urllib.error.HTTPError:
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"lamp serve did not start; see {home / 'serve.log'}")


def upload_endpoint(client: Any) -> str:
    """The api name of the event that takes the data file (named `upload`, or the old handler's own name)."""
    names = list(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    for name in ("/upload", "/on_upload"):
        if name in names:
            return name
    raise SystemExit(f"no upload endpoint among {names}")


def upload(url: str, path: Path) -> str:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    try:
        answer = client.predict(handle_file(str(path)), api_name=upload_endpoint(client))
    except Exception as exc:
        return f"error: {str(exc)[:300]}"
    return json.dumps(answer, default=str)[:300]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=1, help="uploads at the same time")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--source", type=Path, default=None, help="checkout whose `lamp serve` to run")
    a = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="lamp-bomb-"))
    bombs = [write_bomb(home / f"bomb-{i}.parquet", a.rows, i) for i in range(a.copies)]  # distinct files
    port = free_port()
    proc = start_server(home, port, a.source)
    try:
        time.sleep(2)
        before = memory_mb(proc.pid)
        url = f"http://127.0.0.1:{port}/"
        start = time.monotonic()
        with ThreadPoolExecutor(a.copies) as pool:
            answers = list(pool.map(lambda bomb: upload(url, bomb), bombs))
        seconds = round(time.monotonic() - start, 1)
        time.sleep(3)
        after = memory_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    print(json.dumps({"file_kb": round(bombs[0].stat().st_size / 1024, 1), "rows": a.rows, "copies": a.copies,
                      "rss_before_mb": before["VmRSS"], "peak_mb": after["VmHWM"], "rss_after_mb": after["VmRSS"],
                      "seconds": seconds, "answers": answers}))


if __name__ == "__main__":
    main()
