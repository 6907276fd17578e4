"""The serving-http section: the OpenAI-compatible API as a client meets it, a real `lamp api` process on loopback.

- K prompts are K succeeded jobs in a private store: LAMP (l, r, default p) prompts from K seeds, untrained (all a
  timing needs), each a copy of one real artifact written by core.train.fit with its prompt replaced.
- Clients: C threads, each with its own HTTP connection, send `requests` /v1/classify calls between them (one test
  review each, the jobs by turns) as fast as they are answered. Figures: p50 and p99 latency, requests/s, input
  tokens/s, failed requests.
- Contenders: the server as shipped (requests gathered into mixed batches), the same server answering a gathered
  batch one prompt after another (`--no-mix`: what a server that cannot mix prompts does), the same server
  answering one request at a time (`--max-batch 1`), and PEFT answering the same requests one at a time in this
  process (one adapter per prompt, `set_adapter` then a forward; PEFT has no server of its own, and no HTTP cost
  is added to it).
- Batch 1: one client, completions of one token, a job's cached prompt against the bare backbone.
- Overload: a server with a queue of 8 under 64 clients answers 200 or 429 (with Retry-After), nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import torch
from safetensors.torch import save_file

from benchmarks.contenders import Ours, PeftAdapters
from core.backbone import lamp_home
from core.methods import LampConfig
from core.spec import DataConfig, ModelConfig, RunSpec, TrainConfig

if TYPE_CHECKING:
    from benchmarks.run import Bench

Row = dict[str, Any]
BATCHED, BY_PROMPT, ONE, PEFT = "batched", "one-prompt-at-a-time", "one-at-a-time", "peft-pt"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _store_env(home: Path) -> dict[str, str]:
    """A private store for the section's jobs, for the `lamp` processes it starts."""
    return {"LAMP_HOME": str(home), "LAMP_DATABASE_URL": f"sqlite:///{home / 'lamp.db'}",
            "LAMP_ARTIFACTS_DIR": str(home / "artifacts")}


def _lamp() -> list[str]:
    lamp = Path(sys.executable).with_name("lamp")
    return [str(lamp)] if lamp.is_file() else [sys.executable, "-m", "lamp"]


def register_prompts(bench: Bench, home: Path, env: dict[str, str], count: int
                     ) -> tuple[list[str], list[torch.Tensor]]:
    """`count` succeeded jobs, each a LAMP prompt from its own seed: one artifact from a one-step fit, copied with
    its prompt replaced, recorded with `lamp import`. Returns their model ids (job-N) and prompts."""
    import json

    from core.train import fit

    s = bench.s
    config = LampConfig(length=s.length, rank=s.rank, pool=s.default_pool)
    spec = RunSpec(model=ModelConfig(s.model, s.dtype), method=config,  # type: ignore[arg-type]
                   data=DataConfig(task=s.task, max_eval_examples=2, max_test_examples=2),
                   train=TrainConfig(steps=1, batch_size=2, eval_every=1, device=s.device, seed=s.seed))
    base = home / "artifacts" / "base"
    fit(spec, base, backbone=bench.backbone)
    folders, prompts = [], []
    for k in range(count):
        prompt = Ours(bench.backbone, config, bench.table, bench.common, s.seed + k, s.lr).prompt().detach()
        folder = home / "artifacts" / f"prompt-{k}"
        shutil.copytree(base, folder, ignore=shutil.ignore_patterns("checkpoint.pt", "snapshots"))
        save_file({"prompt": prompt.float().cpu().contiguous()}, str(folder / "prompt.safetensors"))
        folders += ["--artifact", str(folder)]
        prompts.append(prompt)
    done = subprocess.run([*_lamp(), "import", *folders, "--json"], env={**os.environ, **env}, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"lamp import failed: {done.stderr[-2000:]}")
    ids = json.loads(done.stdout.strip().splitlines()[-1])["ids"]
    return [f"job-{i}" for i in ids], prompts


@contextlib.contextmanager
def api_server(env: dict[str, str], *args: str) -> Iterator[str]:
    port = _free_port()
    log = Path(env["LAMP_HOME"]) / f"api-{port}.log"
    proc = subprocess.Popen([*_lamp(), "api", "--port", str(port), *args], env={**os.environ, **env},
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                httpx.get(url + "/models", timeout=2)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"lamp api did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def drive(url: str, models: Sequence[str], texts: Sequence[str], clients: int, requests: int,
          timeout: float = 300) -> Row:
    """`requests` classify calls from `clients` threads, the models by turns; latency, throughput, failures."""
    local = threading.local()

    def one(i: int) -> tuple[float, int, int]:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=timeout)
        tick = time.perf_counter()
        try:
            r = client.post(url + "/classify", json={"model": models[i % len(models)], "input": texts[i % len(texts)]})
        except httpx.HTTPError:
            return time.perf_counter() - tick, -1, 0
        tokens = r.json().get("usage", {}).get("prompt_tokens", 0) if r.status_code == 200 else 0
        return time.perf_counter() - tick, r.status_code, int(tokens)

    with ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        done = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    ok = [d for d in done if d[1] == 200]
    lat = [d[0] * 1e3 for d in ok] or [float("nan")]
    return {"prompts": len(models), "clients": clients, "requests": requests, "p50_ms": statistics.median(lat),
            "p99_ms": _percentile(lat, 0.99), "requests_per_s": len(ok) / wall,
            "tokens_per_s": sum(d[2] for d in ok) / wall, "failed": len(done) - len(ok),
            "codes": dict(Counter(d[1] for d in done))}


def batch_one(url: str, job: str, bare: str, texts: Sequence[str], repeats: int, cue: str) -> Row:
    """One client, one-token completions: a job's cached prompt against the bare backbone reading the same tokens
    (the job's input ends with its answer cue, so the bare model's text is given it too)."""
    out: dict[str, list[float]] = {job: [], bare: []}

    def text(model: str, i: int) -> str:
        return texts[i % len(texts)] if model == job else f"{texts[i % len(texts)]}\n{cue}:"

    with httpx.Client(timeout=120) as client:
        for model in (job, bare):  # warm: the prompt's keys and values are cached after its first call
            client.post(url + "/completions", json={"model": model, "prompt": text(model, 0), "max_tokens": 1})
        for i in range(repeats):
            for model in (job, bare):
                tick = time.perf_counter()
                r = client.post(url + "/completions", json={"model": model, "prompt": text(model, i),
                                                            "max_tokens": 1})
                r.raise_for_status()
                out[model].append((time.perf_counter() - tick) * 1e3)
    prompted, plain = statistics.median(out[job]), statistics.median(out[bare])
    return {"contender": "batch 1: a cached prompt against the bare model", "method": BATCHED, "prompts": 1,
            "clients": 1, "requests": repeats, "p50_ms": prompted, "bare_p50_ms": plain,
            "x_bare": prompted / plain if plain else None}


def peft_one_at_a_time(bench: Bench, prompts: Sequence[torch.Tensor], texts: Sequence[str], requests: int) -> Row:
    """PEFT answering the same stream one request at a time in this process: set_adapter, then one forward."""
    words = list(bench.task.label_words or ())
    token_ids = [bench.codec.target(w, eos=False)[0] for w in words]
    peft = PeftAdapters(bench.backbone, prompts)
    try:
        peft.label_scores(0, bench.codec, [texts[0]], token_ids)  # warm
        lat = []
        start = time.perf_counter()
        for i in range(requests):
            tick = time.perf_counter()
            with torch.no_grad():
                peft.label_scores(i % len(prompts), bench.codec, [texts[i % len(texts)]], token_ids)
            lat.append((time.perf_counter() - tick) * 1e3)
        wall = time.perf_counter() - start
    finally:
        peft.close()
    return {"contender": "PEFT: one adapter, one request at a time (in process, no HTTP)", "method": PEFT,
            "prompts": len(prompts), "clients": 1, "requests": requests, "p50_ms": statistics.median(lat),
            "p99_ms": _percentile(lat, 0.99), "requests_per_s": requests / wall, "failed": 0}


def serving_http(bench: Bench) -> list[Row]:
    s = bench.s
    texts = [e.source for e in bench.task.test[:64]]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="lamp-serving-http-") as tmp:
        home = Path(tmp)
        models = lamp_home() / "models"
        if models.is_dir():
            (home / "models").symlink_to(models)  # the converted offline models, not converted again
        env = _store_env(home)
        ids, prompts = register_prompts(bench, home, env, max(s.http_prompts))
        bench.log(f"serving-http: {len(ids)} jobs registered ({ids[0]} ...); {s.http_requests} requests per "
                  f"setting, clients {list(s.http_clients)}, prompts {list(s.http_prompts)}")
        servers = ((BATCHED, f"server: requests gathered into mixed batches (max batch {s.http_max_batch}, "
                    f"{s.http_max_wait_ms:g} ms)", ["--max-batch", str(s.http_max_batch), "--max-wait-ms",
                                                   str(s.http_max_wait_ms)]),
                   (BY_PROMPT, "server: gathered, one prompt at a time (--no-mix)",
                    ["--max-batch", str(s.http_max_batch), "--max-wait-ms", str(s.http_max_wait_ms), "--no-mix"]),
                   (ONE, "server: one request at a time (--max-batch 1)", ["--max-batch", "1", "--max-wait-ms",
                                                                            "0"]))
        for method, name, args in servers:
            with api_server(env, "--device", s.device, *args) as url:
                drive(url, ids, texts, 1, len(ids))  # warm: every prompt loaded, its keys and values cached
                for k in s.http_prompts:
                    for clients in s.http_clients:
                        row = {"contender": name, "method": method,
                               **drive(url, ids[:k], texts, clients, max(s.http_requests, clients))}
                        rows.append(row)
                        bench.log(f"  {method} K={k} C={clients}: p50 {row['p50_ms']:.0f} ms, p99 "
                                  f"{row['p99_ms']:.0f} ms, {row['requests_per_s']:.1f} req/s, failed "
                                  f"{row['failed']}")
                if method == BATCHED:
                    one = batch_one(url, ids[0], s.model, texts, s.repeats * 10, bench.task.answer_cue)
                    rows.append(one)
                    bench.log(f"  batch 1: cached prompt {one['p50_ms']:.0f} ms, bare {one['bare_p50_ms']:.0f} "
                              f"ms ({one['x_bare']:.2f}x)")
        with api_server(env, "--device", s.device, "--max-queue", "8", "--max-batch", "4") as url:
            row = {"contender": "overload: a queue of 8 under 64 clients", "method": BATCHED,
                   **drive(url, ids[:4], texts, 64, 128)}
            rows.append(row)
            bench.log(f"  overload: answers {row['codes']}")
    for k in s.http_prompts:
        row = peft_one_at_a_time(bench, prompts[:k], texts, s.http_requests)
        rows.append(row)
        bench.log(f"  PEFT K={k}: p50 {row['p50_ms']:.0f} ms, {row['requests_per_s']:.1f} req/s")
    return with_http_ratios(rows)


def with_http_ratios(rows: list[Row]) -> list[Row]:
    """`requests_per_s_x_one` and `_x_by_prompt`: over the one-request-at-a-time and the one-prompt-at-a-time
    servers at the same K and clients; `requests_per_s_x_peft`: over PEFT at the same K."""
    for row in rows:
        if "requests_per_s" not in row:
            continue
        same = [r for r in rows if r["prompts"] == row["prompts"] and r["clients"] == row["clients"]]
        by_prompt = next((r for r in same if r["method"] == BY_PROMPT), None)
        row["requests_per_s_x_by_prompt"] = (row["requests_per_s"] / by_prompt["requests_per_s"] if by_prompt
                                             else None)
        one = next((r for r in same if r["method"] == ONE), None)
        peft = next((r for r in rows if r["method"] == PEFT and r["prompts"] == row["prompts"]), None)
        row["requests_per_s_x_one"] = row["requests_per_s"] / one["requests_per_s"] if one else None
        row["requests_per_s_x_peft"] = row["requests_per_s"] / peft["requests_per_s"] if peft else None
    return rows
