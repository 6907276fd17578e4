"""`lamp serve`: the dashboard on 127.0.0.1:7860 with an embedded worker, on the embedded default store and queue."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable

from app.settings import ServeSettings, app_dir, exports_dir

log = logging.getLogger(__name__)


def _private_temp_dir() -> str:
    """Gradio's uploads and cached downloads go under $LAMP_HOME, not a shared /tmp (set before gradio starts)."""
    path = app_dir("gradio-tmp")
    os.environ["GRADIO_TEMP_DIR"] = str(path)
    tempfile.tempdir = None
    return str(path)


def serve(settings: ServeSettings, *, block: bool = True, on_start: Callable[[str], None] | None = None) -> None:
    """Migrate the store, start the embedded worker (unless settings.worker is False), serve until interrupted;
    running jobs are handed back (checkpointed and queued again) when the server stops."""
    from jobs.db import upgrade_database

    _private_temp_dir()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    upgrade_database()
    from app.interface import CSS, build_ui

    ui = build_ui(settings)
    stop_worker: Callable[[], None] | None = None
    if settings.worker:
        from jobs.tasks import start_embedded_worker

        stop_worker = start_embedded_worker(workers=settings.workers, device=settings.device)
    try:
        ui.queue(default_concurrency_limit=4)
        ui.launch(
            server_name=settings.host, server_port=settings.port, share=False, inbrowser=False,
            auth=list(settings.auth) or None, auth_message="LAMP Studio: sign in",
            max_file_size=settings.max_upload_bytes, allowed_paths=[str(exports_dir())],
            show_error=True, prevent_thread_lock=True, quiet=True, ssr_mode=False, css=CSS,
            footer_links=["settings"], enable_monitoring=False, mcp_server=False, pwa=False,
        )
        local = f"http://{settings.host}:{settings.port}/"
        print(f"LAMP Studio on {local}" + (" (login required)" if settings.auth else ""), flush=True)
        if on_start is not None:
            on_start(local)
        if block:
            ui.block_thread()
    finally:
        if block:
            if stop_worker is not None:
                stop_worker()
            ui.close()
