"""`lamp serve`: the dashboard on 127.0.0.1:7860 with an embedded worker, on the embedded default store and queue."""

from __future__ import annotations

import errno
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.settings import ServeSettings, app_dir, exports_dir

if TYPE_CHECKING:
    from app.guard import GuardSettings

log = logging.getLogger(__name__)
ORPHAN_UPLOAD_AGE_S = 600
"""Gradio deletes what a client posted to its upload route and no handler took after this long."""


def _private_temp_dir() -> str:
    """Gradio's uploads and cached downloads go under $LAMP_HOME, not a shared /tmp (set before gradio starts)."""
    path = app_dir("gradio-tmp")
    os.environ["GRADIO_TEMP_DIR"] = str(path)
    tempfile.tempdir = None
    return str(path)


def check_port(host: str, port: int) -> None:
    """ConfigError, before anything else starts (the embedded worker claims no job), if the port is taken."""
    from core.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is in use (another lamp serve?): stop that one, or pick "
                                  "another port with --port") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; check --host and --port") from None


def _guard_settings(settings: ServeSettings) -> GuardSettings:
    from app.guard import GuardSettings
    from app.settings import gradio_temp_dir

    return GuardSettings(auth=bool(settings.auth), temp_dir=gradio_temp_dir(),
                         temp_budget_bytes=8 * settings.max_upload_bytes, api=api_enabled(settings))


def api_enabled(settings: ServeSettings) -> bool:
    """The /v1 API rides on the dashboard when it listens on this machine only, or with API keys."""
    from app.settings import LOOPBACK

    return settings.host in LOOPBACK or bool(settings.api_keys)


def _mount_api(ui: Any, settings: ServeSettings, guard: GuardSettings) -> str:
    """The API at /v1 on Gradio's own app, sharing the Playground's service; a word for the start-up line. Gradio's
    app exists only once it listens: the guard answers /v1 with 503 until the routes are in."""
    if not api_enabled(settings):
        log.warning("the /v1 API is off: this server listens on %s and has no --api-key", settings.host)
        return ""
    from app.api import mount_api
    from app.api_service import shared_service

    mount_api(ui.server_app, shared_service(), settings.api_keys)
    guard.api_ready.set()
    return " · API on /v1" + (" (key required)" if settings.api_keys else "")


def _background(settings: ServeSettings) -> Callable[[], None]:
    """The embedded worker (or, on a UI-only server, the reaper alone) and the retention sweep; returns stop()."""
    from app.retention import sweep_forever

    stop = threading.Event()
    threading.Thread(target=sweep_forever, args=(stop, settings.retention_days), name="lamp-retention",
                     daemon=True).start()
    from jobs.studies.conduct import worker_hooks

    if settings.worker:
        from jobs.tasks import start_embedded_worker

        stop_worker = start_embedded_worker(workers=settings.workers, device=settings.device, hooks=worker_hooks())
    else:  # no worker here: jobs whose worker died elsewhere must still leave RUNNING, and studies advance
        from jobs.tasks import start_reaper

        stop_worker = start_reaper(hooks=worker_hooks())

    def stop_all() -> None:
        stop.set()
        stop_worker()

    return stop_all


def _launch(ui: Any, settings: ServeSettings, css: str, guard: GuardSettings) -> None:
    from starlette.middleware import Middleware

    from app.guard import Guard
    from core.errors import ConfigError

    try:
        ui.launch(
            server_name=settings.host, server_port=settings.port, share=False, inbrowser=False,
            auth=list(settings.auth) or None, auth_message="LAMP Studio: sign in",
            max_file_size=settings.max_upload_bytes, allowed_paths=[str(exports_dir())],
            show_error=True, prevent_thread_lock=True, quiet=True, ssr_mode=False, css=css,
            footer_links=["settings"], enable_monitoring=False, mcp_server=False, pwa=False,
            app_kwargs={"middleware": [Middleware(Guard, settings=guard)], "openapi_url": None, "docs_url": None,
                        "redoc_url": None},
        )
    except OSError as exc:  # the port was taken between check_port and now
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {exc}; pick another port with --port"
                          ) from None


def _preload() -> None:
    """The heavy libraries imported once, before the first request: two handlers importing transformers for the
    first time at once (the cost preview and a preset, say) could see it half-initialised."""
    import torch  # noqa: F401
    from transformers import AutoConfig, AutoTokenizer  # noqa: F401


def serve(settings: ServeSettings, *, block: bool = True, on_start: Callable[[str], None] | None = None) -> None:
    """Migrate the store, listen, then start the embedded worker (unless settings.worker is False: then only the
    reaper), serve until interrupted; running jobs are handed back (checkpointed and queued again) when the server
    stops."""
    from jobs.db import upgrade_database

    _private_temp_dir()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    check_port(settings.host, settings.port)
    upgrade_database()
    _preload()
    from app.interface import CSS, build_ui

    ui = build_ui(settings)
    ui.delete_cache = (ORPHAN_UPLOAD_AGE_S // 2, ORPHAN_UPLOAD_AGE_S)
    stop: Callable[[], None] | None = None
    try:
        ui.queue(default_concurrency_limit=4)
        guard = _guard_settings(settings)
        _launch(ui, settings, CSS, guard)
        api = _mount_api(ui, settings, guard)
        stop = _background(settings)  # only now: a server that cannot listen never claims a job
        local = f"http://{settings.host}:{settings.port}/"
        print(f"LAMP Studio on {local}" + (" (login required)" if settings.auth else "") + api, flush=True)
        if on_start is not None:
            on_start(local)
        if block:
            ui.block_thread()
    finally:
        if block:
            if stop is not None:
                stop()
            ui.close()
