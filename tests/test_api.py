"""The OpenAI-compatible API: a real `lamp api` process (and the one mounted on `lamp serve`) over a store of jobs
trained here on a tiny Llama, called with the official `openai` client and plain HTTP: models, completions (plain,
chat, streamed), classify against each prompt answered alone, requests batched across callers, keys, overload and
bad requests."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from serve_support import Server, free_port, stop_process
from test_jobs_support import lamp_command, tiny_spec, worker_store

KEY = "sk-test-0123456789"


@dataclass
class Api:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)


def start_api(home: Path, *args: str) -> Api:
    port = free_port()
    env = {**os.environ, "LAMP_HOME": str(home), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LAMP_API_KEYS", None)
    log = home / f"api-{port}.log"
    proc = subprocess.Popen([*lamp_command(), "api", "--port", str(port), *args], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    api = Api(f"http://127.0.0.1:{port}/v1", proc, log)
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(api.url + "/models", timeout=2)
            return api
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                api.stop()
                raise AssertionError(f"lamp api did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.3)


@pytest.fixture(scope="module")
def jobs_home(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[tuple[Path, list[int]]]:
    """A store with two succeeded jobs on the tiny Llama: LAMP and prompt tuning, on the same upload (made once for
    this module's servers)."""
    from core.methods import method_config
    from jobs.queue import execute_next
    from jobs.tasks import submit

    home = tmp_path_factory.mktemp("api-home")
    csv = home / "reviews.csv"
    good = ["a joy to watch", "wonderful acting", "I loved it", "great fun", "a moving story", "brilliant"]
    bad = ["a dull mess", "boring and long", "I hated it", "awful script", "a waste of time", "terrible"]
    csv.write_text("review,verdict\n" + "".join(f'"{g} {i}",good\n"{b} {i}",bad\n'
                                                 for i in range(4) for g, b in zip(good, bad, strict=True)))
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("LAMP_HOME", str(home))
        for _ in worker_store(home, monkeypatch, "sqlite"):
            lamp = tiny_spec(tiny_llama_dir, csv)
            pt = replace(lamp, method=method_config("prompt-tuning", length=6))
            ids = [submit(lamp), submit(pt)]
            assert execute_next() and execute_next()
            yield home, ids


def reference(tmp_path: Path, job_id: int, texts: list[str]) -> list[dict[str, float]]:
    """Each text answered by the job's prompt alone, in this process (`lamp predict`'s path)."""
    from core.inference import Predictor, render_source
    from jobs import store
    from jobs.db import read

    result = read(store.get_result, job_id=job_id)
    assert result is not None
    predictor = Predictor.load(result.artifact, device="cpu")
    return [p.scores for p in predictor.predict([render_source(predictor.template, t) for t in texts])]


@pytest.fixture(scope="module")
def keyed_api(jobs_home: tuple[Path, list[int]]) -> Iterator[Api]:
    """One `lamp api` with a key and small caps, shared by the tests that do not need other limits."""
    api = start_api(jobs_home[0], "--api-key", KEY, "--max-wait-ms", "50", "--max-batch", "32", "--max-tokens", "8",
                    "--max-input-tokens", "40")
    yield api
    api.stop()


def test_the_api_answers_every_job_with_the_openai_client_batched_across_callers(
        jobs_home: tuple[Path, list[int]], keyed_api: Api, tiny_llama_dir: Path) -> None:
    import openai

    home, (lamp_id, pt_id) = jobs_home
    api = keyed_api
    client = openai.OpenAI(base_url=api.url, api_key=KEY, max_retries=0)
    ids = [m.id for m in client.models.list().data]
    assert ids[:2] == [f"job-{lamp_id}", f"job-{pt_id}"] and str(tiny_llama_dir) in ids and "default" in ids

    # Completions through the job's prompt: OpenAI's shapes, usage counted, greedy at temperature 0.
    done = client.completions.create(model=f"job-{lamp_id}", prompt="a wonderful film", max_tokens=4,
                                     temperature=0)
    assert isinstance(done.choices[0].text, str) and done.choices[0].finish_reason in ("stop", "length")
    assert done.usage is not None and done.usage.prompt_tokens > 3 and done.usage.completion_tokens <= 4
    again = client.completions.create(model=f"job-{lamp_id}", prompt="a wonderful film", max_tokens=4)
    assert again.choices[0].text == done.choices[0].text  # greedy: the same text
    streamed = list(client.completions.create(model=f"job-{lamp_id}", prompt="a wonderful film", max_tokens=4,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text
    if done.usage.completion_tokens >= 2:  # sent while the batch generates: a chunk per token, not one at the end
        assert len([c for c in streamed if c.choices[0].text]) >= 2
    assert streamed[-1].choices[0].finish_reason == done.choices[0].finish_reason
    long = client.completions.create(model=f"job-{lamp_id}", prompt="a dull mess", max_tokens=8).choices[0].text
    assert len(long) >= 5, long
    stop = long[3:5]  # a stop string inside the answer: cut there, streamed or not
    cut = client.completions.create(model=f"job-{lamp_id}", prompt="a dull mess", max_tokens=8, stop=[stop])
    assert cut.choices[0].text == long[: long.find(stop)] and cut.choices[0].finish_reason == "stop"
    cut_stream = client.completions.create(model=f"job-{lamp_id}", prompt="a dull mess", max_tokens=8,
                                           stop=[stop], stream=True)
    assert "".join(c.choices[0].text for c in cut_stream) == cut.choices[0].text
    chat = client.chat.completions.create(model=str(tiny_llama_dir), max_tokens=3,
                                          messages=[{"role": "user", "content": "Say hello"}])
    assert chat.choices[0].message.role == "assistant" and chat.usage is not None
    assert chat.usage.completion_tokens <= 3
    pieces = client.chat.completions.create(model=str(tiny_llama_dir), max_tokens=3, stream=True,
                                            messages=[{"role": "user", "content": "Say hello"}])
    assert "".join(c.choices[0].delta.content or "" for c in pieces) == chat.choices[0].message.content

    # Classify: the label words' probabilities, equal to each prompt answered alone.
    texts = ["a joy to watch 9", "a dull mess 9", "brilliant and moving"]
    want = {job: reference(home, job, texts) for job in (lamp_id, pt_id)}
    for job in (lamp_id, pt_id):
        got = httpx.post(api.url + "/classify", json={"model": f"job-{job}", "input": texts},
                         headers={"authorization": f"Bearer {KEY}"}, timeout=60).json()["data"]
        for row, expected in zip(got, want[job], strict=True):
            assert row["label"] == max(expected, key=expected.__getitem__)
            assert row["probabilities"] == pytest.approx(expected, abs=1e-4)

    # Many callers at once, two prompts: gathered into mixed batches, each answer still its prompt's own.
    def ask(i: int) -> tuple[int, int, dict[str, float], int]:
        job = (lamp_id, pt_id)[i % 2]
        r = httpx.post(api.url + "/classify", json={"model": f"job-{job}", "input": texts[i % 3]},
                       headers={"authorization": f"Bearer {KEY}"}, timeout=120)
        return job, i % 3, r.json()["data"][0]["probabilities"], int(r.headers["x-lamp-batch-size"])

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(32)))
    for job, k, probs, _ in answers:
        assert probs == pytest.approx(want[job][k], abs=1e-4)
    assert max(size for *_, size in answers) > 1, "no two requests were answered together"


def test_keys_limits_and_bad_requests_get_openai_errors_without_paths(jobs_home: tuple[Path, list[int]],
                                                                      keyed_api: Api) -> None:
    import openai

    home, (lamp_id, _) = jobs_home
    api = keyed_api
    bodies = []
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
        r = httpx.get(api.url + "/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=api.url, api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=api.url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="job-999", prompt="hi", max_tokens=2)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.completions.create(model=f"job-{lamp_id}", prompt="hi", max_tokens=9)
    assert too_many.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=f"job-{lamp_id}", prompt="word " * 60, max_tokens=2)
    assert too_long.value.code == "context_length_exceeded"
    auth = {"authorization": f"Bearer {KEY}"}
    for path, payload in (("/completions", b"{not json"), ("/classify", b'{"model": "job-1", "input": 3}'),
                          ("/chat/completions", b'{"model": "job-1", "messages": "hi"}'),
                          ("/completions", b'{"model": "job-1", "prompt": "hi", "n": 2}')):
        r = httpx.post(api.url + path, content=payload, headers={**auth, "content-type": "application/json"})
        assert r.status_code == 400, (path, r.text)
        bodies.append(r.text)
    bare = httpx.post(api.url + "/classify", json={"model": "default", "input": ["x"]}, headers=auth)
    assert bare.status_code == 400 and bare.json()["error"]["param"] == "model"
    nowhere = httpx.get(api.url + "/nothing-here", headers=auth)
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "not_found"
    for text in [*bodies, bare.text, nowhere.text]:
        assert str(home) not in text and "Traceback" not in text and '"error"' in text


def test_a_full_queue_answers_429_with_retry_after_and_nothing_fails_below_it(
        jobs_home: tuple[Path, list[int]]) -> None:
    home, (lamp_id, _) = jobs_home
    api = start_api(home, "--max-queue", "2", "--max-batch", "1", "--max-wait-ms", "0")
    try:
        def call(i: int) -> httpx.Response:
            return httpx.post(api.url + "/completions", timeout=120,
                              json={"model": f"job-{lamp_id}", "prompt": f"review {i}", "max_tokens": 16})

        with ThreadPoolExecutor(24) as pool:
            responses = list(pool.map(call, range(24)))
        codes = [r.status_code for r in responses]
        # The queue holds 2 whatever the arrival order; a third is answered only when the first call leaves the
        # queue before the burst fills it, which is timing.
        assert set(codes) <= {200, 429} and codes.count(429) > 0 and codes.count(200) >= 2, codes
        busy = next(r for r in responses if r.status_code == 429)
        assert int(busy.headers["retry-after"]) >= 1 and busy.json()["error"]["type"] == "rate_limit_error"
        # below the limit: one caller at a time is always answered
        assert all(call(i).status_code == 200 for i in range(3))
    finally:
        api.stop()


def test_off_loopback_the_api_needs_a_key(tmp_path: Path) -> None:
    env = {**os.environ, "LAMP_HOME": str(tmp_path)}
    env.pop("LAMP_API_KEYS", None)
    done = subprocess.run([*lamp_command(), "api", "--host", "0.0.0.0", "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--api-key" in done.stderr


def test_the_dashboard_serves_the_api_with_keys_beside_its_login(jobs_home: tuple[Path, list[int]]) -> None:
    home, (lamp_id, _) = jobs_home
    server = Server(home, "--no-worker", "--auth", "ann:secret", "--api-key", KEY,
                    env={"LAMP_DATABASE_URL": os.environ["LAMP_DATABASE_URL"],
                         "LAMP_ARTIFACTS_DIR": os.environ["LAMP_ARTIFACTS_DIR"]})
    try:
        api = server.url + "v1"
        assert httpx.get(api + "/models", timeout=60).status_code == 401  # the key, not the login, opens the API
        models = httpx.get(api + "/models", headers={"authorization": f"Bearer {KEY}"}, timeout=60).json()
        assert f"job-{lamp_id}" in [m["id"] for m in models["data"]]
        r = httpx.post(api + "/classify", json={"model": f"job-{lamp_id}", "input": ["a joy to watch"]},
                       headers={"authorization": f"Bearer {KEY}"}, timeout=120)
        assert r.status_code == 200 and r.json()["data"][0]["label"] in ("good", "bad")
        assert httpx.get(server.url + "gradio_api/info", timeout=60).status_code == 401  # the dashboard: its login
    finally:
        server.stop()


def test_the_dashboards_api_answers_503_until_its_routes_are_mounted(tmp_path: Path) -> None:
    """Gradio's app exists only once it listens, so /v1 is mounted a moment later: a client calling in that moment
    gets a retry (503, Retry-After), not a 404, and the login still guards the rest."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from app.guard import Guard, GuardSettings

    def models(request: Request) -> PlainTextResponse:
        return PlainTextResponse("models")

    inner = Starlette(routes=[Route("/v1/models", models), Route("/page", models)])
    settings = GuardSettings(auth=True, temp_dir=tmp_path, temp_budget_bytes=1 << 20, api=True)
    with TestClient(Guard(inner, settings)) as client:
        early = client.get("/v1/models")
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        settings.api_ready.set()
        assert client.get("/v1/models").text == "models"
        assert client.get("/page").status_code == 401


def test_prompt_caches_are_kept_between_calls_and_change_nothing(tiny_llama_dir: Path) -> None:
    import torch

    from core.backbone import load_backbone
    from core.batching import Codec
    from core.serving import Lane, PromptKV, Query, generate_mixed_ids, rank_mixed
    from core.spec import ModelConfig

    backbone = load_backbone(ModelConfig(str(tiny_llama_dir)), torch.device("cpu"))
    codec = Codec.for_backbone(backbone)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randn(n, backbone.hidden_size, generator=g) * 0.1 for n in (4, 7)]
    lanes = [Lane(p, codec, key=("p", i)) for i, p in enumerate(prompts)] + [Lane(None, codec)]
    queries = [Query(i % 3, f"text {i}", ("good", "bad")) for i in range(6)]
    cache = PromptKV(max_mib=64)
    plain = rank_mixed(backbone, lanes, queries)
    first = rank_mixed(backbone, lanes, queries, kv_cache=cache)
    second = rank_mixed(backbone, lanes, queries, kv_cache=cache)
    torch.testing.assert_close(torch.tensor(first), torch.tensor(plain))
    torch.testing.assert_close(torch.tensor(second), torch.tensor(plain))
    assert (cache.misses, cache.hits) == (2, 2) and cache.bytes > 0
    # Per-row budgets: each row stops at its own limit; limit k gives the first k tokens of the longer answer.
    long = generate_mixed_ids(backbone, lanes, queries, max_new_tokens=6, kv_cache=cache)
    short = generate_mixed_ids(backbone, lanes, queries, max_new_tokens=6, kv_cache=cache,
                               limits=[1, 2, 3, 4, 5, 6])
    for k, (a, b) in enumerate(zip(long, short, strict=True), start=1):
        assert b == a[:k]
    tiny = PromptKV(max_mib=cache.bytes / 2**20 / 2)  # room for one prompt: the older one goes
    rank_mixed(backbone, lanes, queries, kv_cache=tiny)
    assert tiny.get(("p", 0)) is None and tiny.get(("p", 1)) is not None


def test_stop_strings_cut_the_text_at_the_first() -> None:
    from app.api import apply_stop

    assert apply_stop("good. Next line", [".", "Next"]) == ("good", True)
    assert apply_stop("no stop here", ["###"]) == ("no stop here", False)



def test_a_prompt_embeds_export_builds_the_input_the_model_reads(jobs_home: tuple[Path, list[int]],
                                                                tmp_path: Path) -> None:
    """`lamp export --format prompt-embeds` and core.prompt_embeds: [prompt; embed(ids)] fed to the plain model as
    inputs_embeds gives the label scores our own path gives; the vLLM encoding round-trips."""
    import torch

    from core.inference import Predictor, render_source
    from core.prompt_embeds import ExportedPrompt, decode_embeds, encode_embeds
    from jobs import store
    from jobs.db import read

    _, (lamp_id, _) = jobs_home
    result = read(store.get_result, job_id=lamp_id)
    assert result is not None
    out = tmp_path / "embeds"
    done = subprocess.run([*lamp_command(), "export", "--artifact", result.artifact, "--format", "prompt-embeds",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    exported = ExportedPrompt.load(out)
    predictor = Predictor.load(result.artifact, device="cpu")
    backbone = predictor.backbone
    assert exported.prompt.shape == predictor.prompt.shape and exported.meta["label_words"] == ["bad", "good"]
    text = "a joy to watch"
    embeds = exported.request(backbone.tokenizer, backbone.model.get_input_embeddings(), text)
    ids = backbone.tokenizer(f"{render_source(predictor.template, text)}\n{predictor.codec.answer_cue}:")
    assert embeds.shape == (exported.prompt.shape[0] + len(ids["input_ids"]), backbone.hidden_size)
    torch.testing.assert_close(decode_embeds(encode_embeds(embeds)), embeds)
    with torch.no_grad():
        logits = backbone.model(inputs_embeds=embeds[None]).logits[0, -1].float()
    words = [backbone.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("bad", "good")]
    theirs = torch.softmax(torch.log_softmax(logits, -1)[words], -1)
    ours = predictor.predict([render_source(predictor.template, text)])[0].scores
    torch.testing.assert_close(theirs, torch.tensor([ours["bad"], ours["good"]]), atol=1e-4, rtol=0)


def test_lamp_import_records_an_artifact_as_a_succeeded_job_the_api_serves(jobs_home: tuple[Path, list[int]],
                                                                          keyed_api: Api) -> None:
    """`lamp import`: an artifact trained elsewhere becomes a succeeded job (the benchmark's serving-http section
    registers its prompts this way); a folder that is not an artifact is refused by name."""
    from jobs import store
    from jobs.db import read

    _, (lamp_id, _) = jobs_home
    result = read(store.get_result, job_id=lamp_id)
    assert result is not None
    done = subprocess.run([*lamp_command(), "import", "--artifact", result.artifact, "--json"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (new,) = json.loads(done.stdout.strip().splitlines()[-1])["ids"]
    job = read(store.get_job, job_id=new)
    assert job is not None and job.status == "SUCCEEDED"
    imported = read(store.get_result, job_id=new)
    assert imported is not None and imported.artifact == str(Path(result.artifact).resolve())
    assert imported.metrics == result.metrics
    models = httpx.get(keyed_api.url + "/models", headers={"authorization": f"Bearer {KEY}"}).json()["data"]
    assert f"job-{new}" in [m["id"] for m in models]
    bad = subprocess.run([*lamp_command(), "import", "--artifact", str(jobs_home[0])], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and str(jobs_home[0]) in bad.stderr
