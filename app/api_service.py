"""The service behind the OpenAI-compatible API and the Playground: every succeeded job's prompt on shared backbones,
requests gathered across callers into mixed batches.

Requests wait in one bounded queue. A batcher thread takes the first, gathers more for up to `max_wait_ms` (at most
`max_batch`), groups them by backbone and answers each group in one pass of mixed batches (core.serving: each row
reads its own prompt, the bare model's rows none). Each prompt's keys and values are kept in a PromptKV between
requests, so a prompt's own pass is paid once. A full queue refuses at once (Overloaded), it never piles up.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from app.settings import ApiLimits
from core.backbone import Backbone, resolve_device
from core.batching import RawCodec
from core.errors import LampError
from core.inference import Ask, MultiPredictor, Prediction, Predictor, cached_backbone, render_source, template_fields
from core.serving import Lane, PromptKV, Query, generate_mixed_ids
from core.spec import ModelConfig
from jobs import store
from jobs.db import read
from jobs.models import Status

log = logging.getLogger(__name__)
RESOLVE_TTL_S = 30.0
"""How long a resolved model is trusted before the store is read again (a deleted job stops being served then)."""


class ApiError(LampError):
    """A request the API refuses, with the HTTP status and OpenAI's error type and code."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param
        self.headers = headers or {}


class Overloaded(ApiError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(429, "the server is busy: too many requests are waiting; retry shortly", "rate_limit_error",
                         "overloaded", headers={"retry-after": str(max(1, round(retry_after)))})


@dataclass(frozen=True)
class ModelEntry:
    id: str
    """`job-N`, or a bare backbone's model name."""
    model: str
    """The backbone's model name."""
    job: int | None = None
    method: str | None = None
    task: str | None = None
    created: int = 0


@dataclass(frozen=True)
class Target:
    """What a request's `model` resolved to: a job's prompt on its backbone, or a bare backbone."""

    entry: ModelEntry
    backbone: Backbone
    predictor: Predictor | None = None

    @property
    def label_words(self) -> tuple[str, ...] | None:
        return tuple(self.predictor.label_words) if self.predictor and self.predictor.label_words else None

    def source(self, text: str) -> str:
        """The model input for a text: a job renders it with its task's template (one-field templates)."""
        if self.predictor is None:
            return text
        template = self.predictor.template
        return render_source(template, text) if len(template_fields(template)) == 1 else text

    def tokens(self, source: str) -> int:
        codec = self.predictor.codec if self.predictor else None
        if codec is not None:
            return len(codec.tokenizer(f"{source}\n{codec.answer_cue}:")["input_ids"])
        return len(self.backbone.tokenizer(source)["input_ids"])


@dataclass
class Work:
    target: Target
    source: str
    kind: str
    """"rank": label words (and, with `generate`, the generated answer) as a Prediction; "complete": new text."""
    max_tokens: int = 16
    temperature: float = 0.0
    bare: bool = False
    generate: bool = False
    future: Future[Any] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)
    batch_size: int = 0
    """Requests in the gathered batch that answered this one (set when it is answered)."""
    tokens: int = 0
    """The input's tokens (counted when it is checked)."""
    stream: queue.SimpleQueue[int] | None = None
    """Where a streamed completion's tokens go as they are chosen."""


@dataclass(frozen=True)
class Completion:
    ids: list[int]
    text: str
    prompt_tokens: int
    finish_reason: str


class Registry:
    """The models the API offers: every succeeded job (read from the store on each call) and their bare backbones."""

    def __init__(self, limits: ApiLimits) -> None:
        self.limits = limits
        self._predictors: dict[int, Predictor] = {}
        self._resolved: dict[str, tuple[float, Target]] = {}
        self._lock = threading.Lock()
        self._load = threading.Lock()

    def models(self) -> list[ModelEntry]:
        jobs = read(store.list_jobs, status=Status.SUCCEEDED, limit=None)
        entries: list[ModelEntry] = []
        bare: dict[str, int] = {"default": 0}
        for job in sorted(jobs, key=lambda j: j.id):
            spec = job.spec
            model = str(spec.get("model", {}).get("name"))
            data = spec.get("data", {})
            created = int(job.finished_at.timestamp()) if job.finished_at else 0
            entries.append(ModelEntry(f"job-{job.id}", model, job.id, spec.get("method", {}).get("name"),
                                      data.get("task") or _file_name(data.get("train_file")), created))
            bare.setdefault(model, created)
        return entries + [ModelEntry(name, name, created=created) for name, created in bare.items()]

    def resolve(self, model_id: Any) -> Target:
        """The target of a request's `model`; a found one is remembered for RESOLVE_TTL_S (no store read per call)."""
        if not isinstance(model_id, str) or not model_id:
            raise ApiError(400, "`model` is required: a job-N id or a model name from GET /v1/models", param="model")
        now = time.monotonic()
        with self._lock:
            known = self._resolved.get(model_id)
        if known is not None and now - known[0] < RESOLVE_TTL_S:
            return known[1]
        target = self._resolve(model_id)
        with self._lock:
            self._resolved[model_id] = (now, target)
            if len(self._resolved) > 4 * self.limits.max_prompts:
                self._resolved.pop(next(iter(self._resolved)))
        return target

    def _resolve(self, model_id: str) -> Target:
        if model_id.startswith("job-") and model_id[4:].isdigit():
            return self._job(int(model_id[4:]), model_id)
        entry = next((e for e in self.models() if e.job is None and e.id == model_id), None)
        if entry is None:
            raise ApiError(404, f"the model {model_id!r} does not exist here; GET /v1/models lists what does",
                           code="model_not_found", param="model")
        return Target(entry, cached_backbone(ModelConfig(entry.model), resolve_device(self.limits.device)))

    def _job(self, job_id: int, model_id: str) -> Target:
        job = read(store.get_job, job_id=job_id)
        result = read(store.get_result, job_id=job_id)
        if job is None or job.status != Status.SUCCEEDED or result is None:
            raise ApiError(404, f"the model {model_id!r} does not exist here: only succeeded jobs are served",
                           code="model_not_found", param="model")
        with self._load:  # one load at a time: callers asking for the same job at once share it
            return self._loaded(job_id, model_id, job.spec, result.artifact)

    def _loaded(self, job_id: int, model_id: str, spec: dict[str, Any], artifact: str) -> Target:
        with self._lock:
            predictor = self._predictors.get(job_id)
        if predictor is None:
            try:
                predictor = Predictor.load(artifact, device=self.limits.device)
            except LampError as exc:
                log.warning("job %s: its artifact cannot be served: %s", job_id, exc)
                raise ApiError(404, f"the model {model_id!r} cannot be served: its artifact is missing or damaged",
                               code="model_not_found", param="model") from None
            with self._lock:
                self._predictors[job_id] = predictor
                while len(self._predictors) > self.limits.max_prompts:
                    self._predictors.pop(next(iter(self._predictors)))
        entry = ModelEntry(model_id, str(spec.get("model", {}).get("name")), job_id,
                           spec.get("method", {}).get("name"), spec.get("data", {}).get("task"))
        return Target(entry, predictor.backbone, predictor)


def _file_name(path: Any) -> str | None:
    return str(path).rsplit("/", 1)[-1] if path else None


class Batcher:
    """One thread answering gathered batches of Work; submit() refuses with Overloaded when the queue is full."""

    def __init__(self, limits: ApiLimits, kv_cache: PromptKV) -> None:
        self.limits, self.kv_cache = limits, kv_cache
        self._queue: deque[Work] = deque()
        self._ready = threading.Condition()
        self._stop = False
        self.batches = 0
        self.gathered = 0
        self._thread = threading.Thread(target=self._loop, name="lamp-api-batcher", daemon=True)
        self._thread.start()

    def submit(self, works: Sequence[Work]) -> list[Future[Any]]:
        with self._ready:
            if len(self._queue) + len(works) > self.limits.max_queue:
                raise Overloaded(retry_after=max(self.limits.max_wait_ms / 1000, 1.0))
            self._queue.extend(works)
            self._ready.notify()
        return [w.future for w in works]

    def close(self) -> None:
        with self._ready:
            self._stop = True
            self._ready.notify_all()

    def _take(self) -> list[Work]:
        with self._ready:
            while not self._queue and not self._stop:
                self._ready.wait()
            if self._stop:
                return []
            batch = [self._queue.popleft()]
            deadline = time.monotonic() + self.limits.max_wait_ms / 1000
            while len(batch) < self.limits.max_batch:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            self.batches += 1
            self.gathered += len(batch)
            for w in batch:
                w.batch_size = len(batch)
            groups: dict[tuple[int, str, bool, int | None], list[Work]] = {}
            for w in batch:  # one pass per backbone; without mixing, one per prompt (the benchmark's baseline)
                prompt = None if self.limits.mix_prompts else id(w.target.predictor)
                groups.setdefault((id(w.target.backbone), w.kind, w.generate, prompt), []).append(w)
            for works in groups.values():
                try:
                    results: Sequence[Any] = (self._rank(works) if works[0].kind == "rank"
                                              else self._complete(works))
                except Exception as exc:  # one group's failure is its requests' answer, never the thread's end
                    log.exception("the API could not answer a batch of %d", len(works))
                    for w in works:
                        if not w.future.done():
                            w.future.set_exception(exc)
                    continue
                for w, r in zip(works, results, strict=True):
                    w.future.set_result(r)

    def _rank(self, works: list[Work]) -> list[Prediction]:
        predictors: dict[int, int] = {}
        listed: list[Predictor] = []
        for w in works:
            p = w.target.predictor
            assert p is not None  # classify needs a job's label words: the handler refused bare models
            if id(p) not in predictors:
                predictors[id(p)] = len(listed)
                listed.append(p)
        multi = MultiPredictor(listed)
        asks = [Ask(predictors[id(w.target.predictor)], w.source, w.bare) for w in works]
        return multi.answer(asks, generate=works[0].generate, max_new_tokens=max(w.max_tokens for w in works),
                            kv_cache=self.kv_cache, batch_size=self._rows(multi.backbone))

    def _rows(self, backbone: Backbone) -> int:
        return self.limits.forward_rows or (8 if backbone.device.type == "cpu" else 32)

    @torch.no_grad()
    def _complete(self, works: list[Work]) -> list[Completion]:
        backbone = works[0].target.backbone
        lanes: dict[int | None, int] = {}
        lane_list: list[Lane] = []
        queries = []
        for w in works:
            p = w.target.predictor
            key = None if p is None else id(p)
            if key not in lanes:
                lanes[key] = len(lane_list)
                lane_list.append(Lane(p.prompt, p.codec, p.key, p.offset) if p is not None else
                                 Lane(None, RawCodec(backbone.tokenizer, backbone.family, "",
                                                     self.limits.max_input_tokens)))
            queries.append(Query(lanes[key], w.source))
        def heard(i: int, token: int) -> None:
            stream = works[i].stream
            if stream is not None:
                stream.put(token)

        ids = generate_mixed_ids(backbone, lane_list, queries, max_new_tokens=max(w.max_tokens for w in works),
                                 batch_size=self._rows(backbone), kv_cache=self.kv_cache,
                                 limits=[w.max_tokens for w in works],
                                 temperatures=[w.temperature for w in works],
                                 on_token=heard if any(w.stream is not None for w in works) else None)
        eos = backbone.tokenizer.eos_token_id
        out = []
        for w, row in zip(works, ids, strict=True):
            stopped = bool(row) and row[-1] == eos
            kept = row[:-1] if stopped else row
            text = backbone.tokenizer.decode(kept, skip_special_tokens=True)
            out.append(Completion(kept, text, w.target.tokens(w.source), "stop" if stopped else "length"))
        return out


class ApiService:
    """The registry and the batcher together: what the HTTP routes and the Playground call."""

    def __init__(self, limits: ApiLimits | None = None) -> None:
        self.limits = limits or ApiLimits()
        self.kv_cache = PromptKV(self.limits.cache_mib)
        self.registry = Registry(self.limits)
        self.batcher = Batcher(self.limits, self.kv_cache)

    def close(self) -> None:
        self.batcher.close()

    def check_input(self, target: Target, source: str, param: str) -> int:
        n = target.tokens(source)
        if n > self.limits.max_input_tokens:
            raise ApiError(400, f"the input is {n} tokens; this server takes at most {self.limits.max_input_tokens}",
                           code="context_length_exceeded", param=param)
        return n

    def classify(self, target: Target, texts: Sequence[str]) -> list[Work]:
        if target.label_words is None:
            raise ApiError(400, f"{target.entry.id} has no label words to classify with: use a job-N model trained "
                                "on a classification task", param="model")
        sources = [target.source(t) for t in texts]
        works = [Work(target, s, "rank", tokens=self.check_input(target, s, "input")) for s in sources]
        self.batcher.submit(works)
        return works

    def complete(self, target: Target, source: str, max_tokens: int, temperature: float, stream: bool = False
                 ) -> Work:
        self.check_input(target, source, "prompt")
        work = Work(target, source, "complete", max_tokens, temperature,
                    stream=queue.SimpleQueue() if stream else None)
        self.batcher.submit([work])
        return work

    def ask(self, predictors: Sequence[Predictor], asks: Sequence[Ask], max_new_tokens: int) -> list[Prediction]:
        """The Playground's answers (tuned and bare, generated and ranked) through the same queue and batches."""
        works = []
        for a in asks:
            p = predictors[a.prompt]
            entry = ModelEntry(f"job-{a.prompt}", str(p.artifact.spec.model.name))
            works.append(Work(Target(entry, p.backbone, p), a.source, "rank", max_new_tokens, bare=a.bare,
                              generate=True))
        futures = self.batcher.submit(works)
        return [f.result() for f in futures]


_SERVICE: ApiService | None = None
_SERVICE_LOCK = threading.Lock()


def shared_service(limits: ApiLimits | None = None) -> ApiService:
    """The process's one service (the dashboard's API routes and its Playground share it)."""
    global _SERVICE
    with _SERVICE_LOCK:
        if _SERVICE is None:
            _SERVICE = ApiService(limits)
        return _SERVICE
