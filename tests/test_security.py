"""The dashboard as an attacker meets it: a real `lamp serve --auth` (no worker), called directly through
`gradio_client` and plain HTTP with whatever a hostile client would send.

- No endpoint opens a path the client sent: data files are named by the id the server issued to their owner;
  models, data folders and warm starts only as `default`, a hub id, a job id, or inside `--allow-dir`; the answers
  are the same whether or not the named path exists, and never show another file's content or columns.
- Nothing but the login form is served before logging in (not the API schema Gradio embeds in the page either).
- Logins are rate-limited per client and per user, with a lockout that expires.
- Uploads are bounded: a Parquet bomb is refused from its metadata while the server's memory stays flat; uploads at
  once are capped; what nobody took, and uploads unused for the retention period, go with `lamp gc`.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_support import Server, raw_call
from test_jobs_support import lamp_command, report

from app import forms
from app.components.new_job import INFO

pytestmark = pytest.mark.slow
USERS = "ann:s3cret,bob:b0b-pw"
LOCKOUT_S = 4
SECRET = "TOPSECRET-4242"


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A server home, a folder it offers (--allow-dir), and files outside both that no client may reach."""
    root = tmp_path_factory.mktemp("security")
    (root / "offered" / "glue-rte").mkdir(parents=True)
    outside = root / "outside"
    (outside / "model").mkdir(parents=True)
    (outside / "secret.csv").write_text("text,label\n" + "".join(f"{SECRET} {i},SECRETLABEL\n" for i in range(8)))
    (outside / "model" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4242}))
    (outside / "artifact").mkdir()
    (outside / "artifact" / "lamp_artifact.json").write_text(json.dumps({"format_version": 1, "secret": SECRET}))
    (root / "mine.csv").write_text("text,label\n" + "".join(f"a fine film {i},good\nsuch a bore {i},bad\n"
                                                            for i in range(6)))
    return root


@pytest.fixture(scope="module")
def server(place: Path) -> Iterator[Server]:
    srv = Server(place / "home", "--no-worker", "--auth", USERS, "--allow-dir", str(place / "offered"),
                 env={"LAMP_LOGIN_MAX_FAILURES": "3", "LAMP_LOGIN_LOCKOUT_SECONDS": str(LOCKOUT_S)})
    yield srv
    srv.stop()


def _client(server: Server, user: str = "ann") -> Any:
    from gradio_client import Client

    password = dict(pair.split(":", 1) for pair in USERS.split(","))[user]
    return Client(server.url, auth=(user, password), verbose=False)


def _count(server: Server, table: str) -> int:
    with sqlite3.connect(server.home / "lamp.db") as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _form(**changes: Any) -> list[Any]:
    values = {**forms.DEFAULTS, **changes}
    return [values[name] for name in forms.FIELDS]


def _launch(client: Any, **changes: Any) -> dict[str, Any]:
    """The New job form's Launch: each field's message, the data file's, the form's and the result."""
    out = client.predict(*_form(**changes), api_name="/launch")
    fields = {name: (o.get("info") if isinstance(o, dict) else o) for name, o in zip(INFO, out, strict=False)}
    rest = out[len(INFO):]
    return {**fields, "data_file": rest[0], "form": rest[1], "result": rest[2], "raw": json.dumps(out)}


def _upload(client: Any, path: Path) -> str:
    from gradio_client import handle_file

    return str(client.predict(handle_file(str(path)), api_name="/upload")[0])


def test_a_parquet_bomb_is_refused_from_its_metadata_and_the_server_memory_stays_flat(
        server: Server, place: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from gradio_client import handle_file

    bomb = place / "bomb.parquet"  # 2M rows of 200-character reviews in runs: ~124 KB on disk, ~450 MB of text
    reviews = [(f"review {k} " + "so good and so long " * 20)[:200] for k in range(2000)]
    pq.write_table(pa.table({"text": [reviews[(i // 55) % 2000] for i in range(2_000_000)],
                             "label": ["good" if (i // 55) % 2 else "bad" for i in range(2_000_000)]}), bomb,
                   compression="zstd")
    client = _client(server)
    time.sleep(1)
    before = server.memory_mb()
    started = time.monotonic()
    out = client.predict(handle_file(str(bomb)), api_name="/upload")
    seconds = time.monotonic() - started
    after = server.memory_mb()
    assert out[0] == "" and "2,000,000 rows, more than the limit of 1,000,000" in str(out[4]), out
    report("parquet bomb upload", file_kb=round(bomb.stat().st_size / 1024, 1), rss_before_mb=round(before["VmRSS"]),
           peak_mb=round(after["VmHWM"]), rss_after_mb=round(after["VmRSS"]), seconds=round(seconds, 2))
    assert after["VmHWM"] - max(before["VmHWM"], before["VmRSS"]) < 150, (before, after)
    assert not list((server.home / "uploads").rglob("bomb.parquet"))


def test_uploads_are_known_by_id_and_only_to_their_owner(server: Server, place: Path) -> None:
    ann, bob = _client(server, "ann"), _client(server, "bob")
    mine = _upload(ann, place / "mine.csv")
    assert re.fullmatch(r"[0-9a-f]{64}", mine)
    jobs = _count(server, "jobs")
    launched = _launch(ann, source=forms.OWN_DATA, data_file=mine, text_column="text", label_column="label")
    assert re.search(r"Job \*\*\d+\*\* queued", str(launched["result"])), launched["raw"]
    assert _count(server, "jobs") == jobs + 1  # the form works: what the next tests refuse is refused for cause
    other = place / "bobs.csv"
    other.write_text("text,label\nfine,a\nbad,b\nok,a\nno,b\n")
    assert _upload(bob, other) != mine  # bob's own upload, which sets his column pickers
    theirs = _launch(bob, source=forms.OWN_DATA, data_file=mine, text_column="text", label_column="label")
    assert "not one of your uploads" in str(theirs["data_file"]) and _count(server, "jobs") == jobs + 1


def test_no_endpoint_opens_a_path_the_client_sent(server: Server, place: Path) -> None:
    ann = _client(server)
    _upload(ann, place / "mine.csv")  # this session's column pickers now offer text and label
    stored = next((server.home / "uploads").rglob("mine.csv"))
    jobs, studies = _count(server, "jobs"), _count(server, "lamp_studies")
    paths = [place / "outside" / "secret.csv", place / "outside" / "missing.csv", server.home / "lamp.db", stored,
             "../outside/secret.csv", "~/secret.csv"]
    answers = set()
    for path in paths:
        own = {"source": forms.OWN_DATA, "data_file": str(path), "text_column": "text", "label_column": "label"}
        launched = _launch(ann, **own)
        estimate = ann.predict(*_form(**own), api_name="/estimate")
        kind, upload = raw_call(ann, "upload", [{"path": str(path), "orig_name": "x.csv",
                                                  "meta": {"_type": "gradio.FileData"}}])
        for text in (launched["raw"], estimate, json.dumps(upload)):
            assert SECRET not in text and "SECRETLABEL" not in text
        assert kind == "error" and "not uploaded by a user" in str(upload)
        answers.add((str(launched["data_file"]), str(estimate)))
    assert len(answers) == 1, answers  # the same answer whether the file exists, is the store, or is an upload
    assert "not one of your uploads" in answers.pop()[0]

    model_answers = set()
    for model in (place / "outside" / "model", place / "outside" / "no-model", "/etc", "../outside/model", "~/m"):
        name = str(model)
        params = ann.predict(name, "lamp", 100, 8, 4, 400, 256, 1.0, api_name="/params")
        launched = _launch(ann, model=name)
        plan = ann.predict(*_study_form(name), api_name="/study_plan")
        study = ann.predict(*_study_form(name), api_name="/study_launch")
        for text in (json.dumps(params), launched["raw"], json.dumps(plan), json.dumps(study)):
            assert "4242" not in text and SECRET not in text
        model_answers.add(str(launched["model"]).replace(repr(name), "NAME"))
    assert len(model_answers) == 1 and "not a model this dashboard can load" in model_answers.pop()

    warm = _launch(ann, init_from=str(place / "outside" / "artifact"))
    assert "give the number of a succeeded job" in str(warm["init_from"]) and SECRET not in warm["raw"]
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="not in the list of choices"):  # Gradio's own check, before ours
        _launch(ann, task="rte", data_dir=str(place / "outside"))
    assert _count(server, "jobs") == jobs and _count(server, "lamp_studies") == studies  # nothing was created
    offered = _launch(ann, task="rte", data_dir=str(place / "offered" / "glue-rte"))
    assert "queued" in str(offered["result"]) and _count(server, "jobs") == jobs + 1


def _study_form(model: str) -> list[Any]:
    from app.study import STUDY_DEFAULTS, STUDY_FIELDS

    values = {**STUDY_DEFAULTS, "model": model}
    return [values[name] for name in STUDY_FIELDS]


def test_nothing_but_the_login_form_is_served_before_logging_in(server: Server) -> None:
    guarded = ["config", "gradio_api/info", "gradio_api/openapi.json", "openapi.json", "docs", "gradio_api/app_id",
               "gradio_api/runs", "gradio_api/heartbeat/x", "monitoring/x", "gradio_api/upload",
               "gradio_api/queue/status", f"gradio_api/file={server.home / 'lamp.db'}", "gradio_api/mcp/schema"]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for path in guarded:
            assert http.get(path).status_code == 401, path
        assert http.post("gradio_api/upload", files={"files": ("a.csv", b"text,label\n")}).status_code == 401
        page = http.get("").text
        assert 'window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}}' in page
        assert "/launch" not in page and "field-model" not in page
        assert http.post("login", data={"username": "ann", "password": "s3cret"}).status_code == 200
        assert "/launch" in http.get("").text and http.get("gradio_api/info").status_code == 200


def test_uploads_at_once_are_bounded_and_what_nobody_took_is_collected(server: Server) -> None:
    cookies = _client(server).cookies

    def post(name: str, seconds: float, answers: list[int]) -> None:
        def body() -> Iterator[bytes]:
            yield (f'--b\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                   "Content-Type: text/csv\r\n\r\ntext,label\n").encode()
            for _ in range(int(seconds * 10)):
                time.sleep(0.1)
                yield b"more,rows\n"
            yield b"\r\n--b--\r\n"

        answer = httpx.post(f"{server.url}gradio_api/upload", content=body(), cookies=cookies, timeout=60,
                            headers={"content-type": "multipart/form-data; boundary=b"})
        answers.append(answer.status_code)

    slow: list[int] = []
    threads = [threading.Thread(target=post, args=(f"slow{i}.csv", 3, slow)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(1)
    third: list[int] = []
    post("third.csv", 0, third)
    for t in threads:
        t.join()
    assert third == [429] and slow == [200, 200]
    orphans = [p for p in (server.home / "gradio-tmp").rglob("*.csv") if p.name.startswith("slow")]
    assert len(orphans) == 2  # posted to Gradio's route, never given to the form
    hour_ago = time.time() - 7200
    for path in orphans:
        os.utime(path, (hour_ago, hour_ago))
    env = {**os.environ, "LAMP_HOME": str(server.home)}
    env.pop("LAMP_DATABASE_URL", None)
    gc = subprocess.run([*lamp_command(), "gc", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0, gc.stderr
    removed = json.loads(gc.stdout)["removed"]
    assert {str(p) for p in orphans} <= set(removed) and not any(p.exists() for p in orphans)
    assert not any("uploads" in r for r in removed)  # kept uploads are younger than the retention


def test_old_uploads_go_unless_a_queued_job_reads_them(server: Server, place: Path) -> None:
    bob = _client(server, "bob")
    other = place / "theirs.csv"
    other.write_text("text,label\n" + "".join(f"another review {i},{'x' if i % 2 else 'y'}\n" for i in range(8)))
    _upload(bob, other)
    with sqlite3.connect(server.home / "lamp.db") as db:
        db.execute("UPDATE uploads SET used_at = '2000-01-01 00:00:00'")
    env = {**os.environ, "LAMP_HOME": str(server.home)}
    env.pop("LAMP_DATABASE_URL", None)
    gc = subprocess.run([*lamp_command(), "gc", "--days", "30"], env=env, capture_output=True, text=True,
                        timeout=120)
    assert gc.returncode == 0, gc.stderr
    assert not list((server.home / "uploads").rglob("theirs.csv"))  # unused for 30 days: gone
    assert list((server.home / "uploads").rglob("mine.csv"))  # ann's queued job reads it: kept
    assert "not one of your uploads" in str(_launch(bob, source=forms.OWN_DATA, data_file="0" * 64)["data_file"])


def test_logins_are_rate_limited_per_client_and_per_user_with_a_lockout_that_expires(server: Server) -> None:
    def login(user: str, password: str, client: str) -> httpx.Response:
        # uvicorn takes X-Forwarded-For from loopback (a reverse proxy's address): one header per simulated client
        return httpx.post(f"{server.url}login", data={"username": user, "password": password},
                          headers={"x-forwarded-for": client}, timeout=10)

    started = time.monotonic()
    codes = [login("ann", "wrong", "10.0.0.1").status_code for _ in range(4)]
    assert codes == [400, 400, 400, 429]  # the third failure locks this client out
    locked = login("ann", "s3cret", "10.0.0.1")
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1  # even the right password
    assert "try again in" in locked.json()["detail"]
    assert login("ann", "s3cret", "10.0.0.2").status_code == 200  # another client is not locked out
    assert [login("bob", "wrong", f"10.0.1.{i}").status_code for i in range(6)] == [400] * 6
    assert login("bob", "b0b-pw", "10.0.1.99").status_code == 429  # six failures from anywhere lock the user
    time.sleep(LOCKOUT_S + 0.5)
    assert login("ann", "s3cret", "10.0.0.1").status_code == 200 and login("bob", "b0b-pw", "10.0.1.99").status_code \
        == 200
    report("login lockout", failures_to_lock_client=3, failures_to_lock_user=6, lockout_s=LOCKOUT_S,
           seconds=round(time.monotonic() - started, 1))


def test_every_endpoint_given_outside_paths_for_its_text_fields_leaks_and_creates_nothing(server: Server,
                                                                                          place: Path) -> None:
    """Each event the page exposes, every free-text parameter set to a path outside (a secret CSV, a model folder
    of hidden size 4242), the rest to their defaults: no job, no study, no secret in any answer."""
    ann = _client(server)
    endpoints = ann.view_api(print_info=False, return_format="dict")["named_endpoints"]
    jobs, studies = _count(server, "jobs"), _count(server, "lamp_studies")
    called = 0
    for target in (place / "outside" / "secret.csv", place / "outside" / "model"):
        for name, info in endpoints.items():
            args = []
            for p in info["parameters"]:
                kind = p.get("type", {})
                free_text = kind.get("type") == "string" and "enum" not in kind
                args.append(str(target) if free_text else p.get("parameter_default"))
            try:
                out = json.dumps(ann.predict(*args, api_name=name), default=str)
            except Exception as exc:  # refused by Gradio or by the handler: what it says counts too
                out = str(exc)
            called += 1
            assert SECRET not in out and "SECRETLABEL" not in out and "4242" not in out, (name, out[:500])
    assert called > 40 and _count(server, "jobs") == jobs and _count(server, "lamp_studies") == studies
