"""The OpenAI-compatible HTTP API: /v1/models, /v1/completions, /v1/chat/completions and /v1/classify.

One FastAPI app, mounted at /v1 on the dashboard's server (`lamp serve`) or served alone (`lamp api`). Errors have
OpenAI's shape, {"error": {"message", "type", "param", "code"}}, and never carry a path or a traceback. With API keys
set, every route needs `Authorization: Bearer KEY` (compared in constant time).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import queue
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.api_service import ApiError, ApiService, Completion, Target, Work
from core.errors import LampError

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1 << 20


def error_body(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code or str(status)}}


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.status, exc.message, exc.kind, exc.code, exc.param), exc.status,
                        headers=exc.headers)


def _authorized(request: Request, keys: Sequence[str]) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    given = token.strip().encode()
    return any(hmac.compare_digest(given, key.encode()) for key in keys)  # every key compared: no early exit


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is over {MAX_BODY_BYTES // 1024} KiB")
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _int(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"`{name}` must be an integer from {low} to {high}", param=name)
    return value


def _temperature(body: dict[str, Any]) -> float:
    value = body.get("temperature", 0)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
        raise ApiError(400, "`temperature` must be a number from 0 to 2 (0: greedy)", param="temperature")
    return float(value)


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "`stop` must be a string or a list of up to 4 non-empty strings", param="stop")
    return stops


def _one_choice(body: dict[str, Any]) -> None:
    if body.get("n", 1) not in (1, None):
        raise ApiError(400, "only `n` = 1 is supported", param="n")


def apply_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def render_chat(target: Target, messages: Any) -> str:
    """A chat as one model input: the backbone's chat template when it has one; a job's prompt reads the last user
    message through its task's template (that is what it was trained on)."""
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise ApiError(400, "`messages` must be a non-empty list of {\"role\", \"content\"} objects with text content",
                       param="messages")
    if target.predictor is not None:
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users:
            raise ApiError(400, "a job's prompt answers the last user message: give one", param="messages")
        return target.source(users[-1])
    tokenizer = target.backbone.tokenizer
    if getattr(tokenizer, "chat_template", None):
        text: str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def build_api(service: ApiService, keys: Sequence[str] = ()) -> FastAPI:
    """The /v1 routes as an app to mount at /v1 (paths inside it are /models, /completions, ...)."""
    api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    keys = tuple(k for k in keys if k)

    @api.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        if keys and not _authorized(request, keys):
            return JSONResponse(error_body(401, "a valid API key is required: Authorization: Bearer KEY",
                                           "invalid_request_error", "invalid_api_key"), 401,
                                headers={"www-authenticate": "Bearer"})
        response: Response = await call_next(request)
        return response

    @api.exception_handler(ApiError)
    async def refused(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    @api.exception_handler(LampError)
    async def ours(request: Request, exc: LampError) -> JSONResponse:  # says what is wrong, without a path
        return JSONResponse(error_body(400, str(exc).splitlines()[0]), 400)

    @api.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("API request %s failed", request.url.path, exc_info=exc)
        return JSONResponse(error_body(500, "the server could not answer this request", "server_error"), 500)

    @api.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(404, f"no route {request.url.path}", code="not_found"), 404)

    @api.exception_handler(405)
    async def bad_method(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(405, f"{request.method} is not allowed here", code="method_not_allowed"), 405)

    @api.get("/models")
    async def models() -> dict[str, Any]:
        entries = await asyncio.to_thread(service.registry.models)
        return {"object": "list", "data": [
            {"id": e.id, "object": "model", "created": e.created, "owned_by": "lamp-studio", "backbone": e.model,
             "job": e.job, "method": e.method, "task": e.task} for e in entries]}

    async def target_of(body: dict[str, Any]) -> Target:
        return await asyncio.to_thread(service.registry.resolve, body.get("model"))

    @api.post("/classify")
    async def classify(request: Request) -> Response:
        body = await _body(request)
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            raise ApiError(400, "`input` must be a string or a non-empty list of strings", param="input")
        if len(inputs) > service.limits.max_inputs:
            raise ApiError(400, f"at most {service.limits.max_inputs} inputs per request", param="input")
        if not str(body.get("model", "")).startswith("job-"):  # refused before any backbone is loaded
            raise ApiError(400, "classify answers with a job's label words: give a job-N model", param="model")
        target = await target_of(body)
        works = service.classify(target, inputs)
        answers = [await asyncio.wrap_future(w.future) for w in works]
        return JSONResponse({"object": "list", "model": target.entry.id, "data": [
            {"index": i, "label": a.answer, "probabilities": a.scores} for i, a in enumerate(answers)],
            "usage": {"prompt_tokens": sum(w.tokens for w in works), "total_tokens": sum(w.tokens for w in works)}},
            headers=_batch_header(works))

    async def submit(body: dict[str, Any], source_of: Any) -> tuple[Target, Work, list[str]]:
        """Checked and queued (a bad request or a full queue fails here, before any stream starts)."""
        _one_choice(body)
        max_tokens = _int(body, "max_tokens", 16, 1, service.limits.max_tokens)
        temperature = _temperature(body)
        stops = _stops(body)
        target = await target_of(body)
        source = source_of(target)
        return target, service.complete(target, source, max_tokens, temperature, bool(body.get("stream"))), stops

    async def finished(target: Target, work: Work, stops: list[str]) -> tuple[Completion, str, str, dict[str, int]]:
        done: Completion = await asyncio.wrap_future(work.future)
        text, stopped = apply_stop(done.text, stops)
        tokens = len(done.ids) if text == done.text else len(
            target.backbone.tokenizer(text, add_special_tokens=False)["input_ids"])
        return done, text, "stop" if stopped else done.finish_reason, _usage(done.prompt_tokens, tokens)

    @api.post("/completions")
    async def completions(request: Request) -> Response:
        body = await _body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "`prompt` must be a string (one prompt per request)", param="prompt")
        target, work, stops = await submit(body, lambda t: t.source(prompt))
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.get("stream"):
            def chunk(piece: str, finish: str | None) -> dict[str, Any]:
                return {"id": ident, "object": "text_completion", "created": created, "model": target.entry.id,
                        "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}]}
            return _stream(target, work, stops, chunk, finished)
        _, text, reason, usage = await finished(target, work, stops)
        return JSONResponse({"id": ident, "object": "text_completion", "created": created, "model": target.entry.id,
                             "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
                             "usage": usage}, headers=_batch_header([work]))

    @api.post("/chat/completions")
    async def chat(request: Request) -> Response:
        body = await _body(request)
        messages = body.get("messages")
        target, work, stops = await submit(body, lambda t: render_chat(t, messages))
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.get("stream"):
            def chunk(piece: str, finish: str | None) -> dict[str, Any]:
                delta = {"role": "assistant", "content": piece} if finish is None else {}
                return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": target.entry.id,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return _stream(target, work, stops, chunk, finished)
        _, text, reason, usage = await finished(target, work, stops)
        return JSONResponse({"id": ident, "object": "chat.completion", "created": created, "model": target.entry.id,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": reason}], "usage": usage}, headers=_batch_header([work]))

    return api


def _batch_header(works: Sequence[Work]) -> dict[str, str]:
    """How many requests the batcher answered together with this one (the largest batch among its inputs)."""
    return {"x-lamp-batch-size": str(max((w.batch_size for w in works), default=0))}


def _stream(target: Target, work: Work, stops: list[str], chunk: Any, finished: Any) -> StreamingResponse:
    """Server-sent events in OpenAI's shape while the batch generates: each token's text as it is chosen (text that
    could still turn into a stop string is held back until it cannot), a last chunk with the finish reason and the
    usage, then [DONE]."""
    tokenizer, hold = target.backbone.tokenizer, max((len(s) for s in stops), default=1) - 1
    eos = tokenizer.eos_token_id

    async def events() -> AsyncIterator[bytes]:
        ids: list[int] = []
        sent = ""
        assert work.stream is not None
        while not (work.future.done() and work.stream.empty()):
            try:
                token = work.stream.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.005)
                continue
            if token == eos:
                continue
            ids.append(token)
            text, stopped = apply_stop(tokenizer.decode(ids, skip_special_tokens=True), stops)
            ready = text if stopped else text[: max(len(sent), len(text) - hold)]
            if ready.startswith(sent) and len(ready) > len(sent):
                yield f"data: {json.dumps(chunk(ready[len(sent):], None))}\n\n".encode()
                sent = ready
            if stopped:
                break
        _, text, reason, usage = await finished(target, work, stops)
        if text.startswith(sent) and len(text) > len(sent):  # what was held back
            yield f"data: {json.dumps(chunk(text[len(sent):], None))}\n\n".encode()
        last = chunk("", reason)
        last["usage"] = usage
        yield f"data: {json.dumps(last)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


def mount_api(app: Any, service: ApiService, keys: Sequence[str]) -> None:
    """The API at /v1 on an existing Starlette/FastAPI app (Gradio's), ahead of its own routes."""
    from starlette.routing import Mount

    app.router.routes.insert(0, Mount("/v1", app=build_api(service, keys)))


def standalone_app(service: ApiService, keys: Sequence[str]) -> FastAPI:
    root = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    mount_api(root, service, keys)
    return root
