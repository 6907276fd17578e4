"""The dashboard's door: an ASGI middleware inside Gradio's app (`lamp serve` passes it in `app_kwargs`).

- Logins are rate-limited per client address and per user name: after LAMP_LOGIN_MAX_FAILURES wrong passwords in
  LAMP_LOGIN_LOCKOUT_SECONDS, that client (or, at twice as many from anywhere, that user) gets 429 with Retry-After,
  even with the right password, until the lockout expires.
- With a login configured, nothing but the login page and its static files is served before logging in: no API
  schema (`/gradio_api/info`, `openapi.json`, nor the copy Gradio embeds in the page itself), no config, no upload,
  no queue, no file route.
- Gradio's upload route takes a bounded number of uploads at a time (per client and in all), and none while its
  temporary folder already holds more than a few uploads' worth of files (Gradio deletes orphans after ten
  minutes, app.retention anything older that a killed server left).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LOGIN_PATHS = ("/login", "/login/")
UPLOAD_PATHS = ("/gradio_api/upload", "/gradio_api/upload/")
PUBLIC_PATHS = {"/", "/logout", "/favicon.ico", "/robots.txt", "/manifest.json", "/theme.css", "/gradio_api/theme.css",
                "/gradio_api/login_check", "/gradio_api/login_check/", "/gradio_api/startup-events", *LOGIN_PATHS}
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon", "/gradio_api/static/")
MAX_LOGIN_BODY = 64 * 1024


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


@dataclass
class LoginLimiter:
    """Counts failed logins per client and per user within a window; past the limit, a lockout that expires."""

    max_failures: int = field(default_factory=lambda: int(_env_number("LAMP_LOGIN_MAX_FAILURES", 5)))
    lockout_seconds: float = field(default_factory=lambda: _env_number("LAMP_LOGIN_LOCKOUT_SECONDS", 300))
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _locked: dict[str, float] = field(default_factory=dict)

    def _keys(self, client: str, user: str) -> list[tuple[str, int]]:
        return [(f"client:{client}", self.max_failures), (f"user:{user.strip().lower()}", 2 * self.max_failures)]

    def retry_after(self, client: str, user: str) -> float:
        """Seconds until this client may try this user again (0: now)."""
        now = self.clock()
        waits = [self._locked[k] - now for k, _ in self._keys(client, user) if self._locked.get(k, 0) > now]
        return max(waits, default=0.0)

    def failed(self, client: str, user: str) -> None:
        now = self.clock()
        for key, limit in self._keys(client, user):
            times = self._failures.setdefault(key, deque())
            times.append(now)
            while times and times[0] < now - self.lockout_seconds:
                times.popleft()
            if len(times) >= limit:
                self._locked[key], times = now + self.lockout_seconds, deque()
                self._failures[key] = times
        if len(self._failures) > 10_000:  # forget the oldest keys rather than grow without bound
            for key in list(self._failures)[:5_000]:
                self._failures.pop(key, None)

    def succeeded(self, client: str, user: str) -> None:
        for key, _ in self._keys(client, user):
            self._failures.pop(key, None)


@dataclass
class GuardSettings:
    auth: bool
    temp_dir: Path
    """Gradio's upload folder."""
    temp_budget_bytes: int
    max_uploads: int = 4
    max_uploads_per_client: int = 2
    logins: LoginLimiter = field(default_factory=LoginLimiter)
    api: bool = False
    """The /v1 API rides on this server: its routes take API keys instead of the dashboard's login."""
    api_ready: threading.Event = field(default_factory=threading.Event)
    """Set once the /v1 routes are mounted (just after Gradio starts listening); until then /v1 answers 503."""


async def _reply(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _logged_in(scope: Scope) -> bool:
    app = scope.get("app")
    tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
    if tokens is None or cookie_id is None:
        return False
    cookies: SimpleCookie = SimpleCookie()
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            cookies.load(value.decode("latin-1"))
    return any(cookies.get(f"access-token{kind}-{cookie_id}") is not None
               and cookies[f"access-token{kind}-{cookie_id}"].value in tokens for kind in ("", "-unsecure"))


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


_API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.S)


def _without_api_info(send: Send) -> Send:
    """Gradio embeds the whole API schema in its page even for the login form; the login form gets an empty one
    (the page loads again after the login, with it)."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = _API_INFO.sub(b'window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}};</script>',
                             b"".join(chunks))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return wrapped


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


class Guard:
    """The ASGI middleware; `settings` is shared with the server (tests read its limiter)."""

    def __init__(self, app: Callable[..., Awaitable[None]], settings: GuardSettings) -> None:
        self.app, self.settings = app, settings
        self.uploads: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if self.settings.api and (path == "/v1" or path.startswith("/v1/")):
            if not self.settings.api_ready.is_set():  # listening, the API not mounted yet: a retry, not a 404
                await _reply(send, 503, "the API is starting; retry in a second", {"retry-after": "1"})
            else:
                await self.app(scope, receive, send)  # the API checks its own bearer keys
        elif method == "POST" and path in LOGIN_PATHS and self.settings.auth:
            await self._login(scope, receive, send)
        elif self.settings.auth and not _logged_in(scope):
            if path == "/" and method == "GET":
                await self.app(scope, receive, _without_api_info(send))
            elif _public(path):
                await self.app(scope, receive, send)
            elif scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _reply(send, 401, "Not authenticated: log in first")
        elif method == "POST" and path in UPLOAD_PATHS:
            await self._upload(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
            if sum(map(len, chunks)) > MAX_LOGIN_BODY:
                await _reply(send, 413, "login request too large")
                return
        body = b"".join(chunks)
        user = (parse_qs(body.decode("utf-8", "replace")).get("username") or [""])[0]
        client, limiter = _client(scope), self.settings.logins
        wait = limiter.retry_after(client, user)
        if wait > 0:
            await _reply(send, 429, f"Too many failed logins; try again in {wait:.0f} s",
                         {"retry-after": str(int(wait) + 1)})
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                ok = message["status"] < 400
                (limiter.succeeded if ok else limiter.failed)(client, user)
            await send(message)

        await self.app(scope, replay, watch)

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        client, s = _client(scope), self.settings
        if sum(self.uploads.values()) >= s.max_uploads or self.uploads.get(client, 0) >= s.max_uploads_per_client:
            await _reply(send, 429, "too many uploads at once; try again when the others are done",
                         {"retry-after": "5"})
            return
        if _folder_bytes(s.temp_dir) >= s.temp_budget_bytes:
            await _reply(send, 507, "the server's upload space is full for now; try again in a few minutes",
                         {"retry-after": "60"})
            return
        self.uploads[client] = self.uploads.get(client, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.uploads[client] -= 1
            if not self.uploads[client]:
                del self.uploads[client]
