"""`lamp serve` and `lamp gc` (added to the `lamp` parser by lamp/cli.py)."""

from __future__ import annotations

import argparse
import json
import logging

from app.access import ALLOWED_DIRS_ENV, env_allowed_dirs, parse_allowed_dirs
from app.settings import (
    API_KEYS_ENV,
    AUTH_ENV,
    DEFAULT_RETENTION_DAYS,
    LOOPBACK,
    MAX_ROWS_ENV,
    MAX_UPLOAD_ENV,
    RETENTION_ENV,
    UPLOAD_QUOTA_ENV,
    UPLOADS_TOTAL_ENV,
    ApiLimits,
    ServeSettings,
    env_api_keys,
    env_auth,
    env_int,
    env_max_upload_mb,
    parse_auth,
)
from core.errors import ConfigError
from core.tasks.reading import Limits


def _settings(a: argparse.Namespace) -> ServeSettings:
    return ServeSettings(
        host=a.host, port=a.port, worker=not a.no_worker, workers=a.workers, device=a.device,
        auth=parse_auth(a.auth) if a.auth else env_auth(),
        max_upload_mb=a.max_upload_mb if a.max_upload_mb is not None else env_max_upload_mb(),
        playground_device=a.playground_device,
        allowed_dirs=parse_allowed_dirs(a.allow_dir) if a.allow_dir else env_allowed_dirs(),
        max_rows=a.max_rows if a.max_rows is not None else env_int(MAX_ROWS_ENV, Limits.max_rows),
        upload_quota_mb=env_int(UPLOAD_QUOTA_ENV, ServeSettings.upload_quota_mb),
        uploads_total_mb=env_int(UPLOADS_TOTAL_ENV, ServeSettings.uploads_total_mb),
        retention_days=env_int(RETENTION_ENV, DEFAULT_RETENTION_DAYS),
        api_keys=env_api_keys(a.api_key),
    )


def cmd_serve(a: argparse.Namespace) -> int:
    from app.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = _settings(a)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.auth:
        logging.getLogger("lamp.serve").warning(
            "serving on %s without a login: anyone who reaches this port can launch jobs; set --auth", a.host)
    serve(settings)
    return 0


def api_limits(a: argparse.Namespace) -> ApiLimits:
    limits = ApiLimits(max_batch=a.max_batch, max_wait_ms=a.max_wait_ms, max_queue=a.max_queue,
                       max_input_tokens=a.max_input_tokens, max_tokens=a.max_tokens, cache_mib=a.cache_mib,
                       device=a.device, forward_rows=a.forward_rows, mix_prompts=not a.no_mix)
    for name in ("max_batch", "max_queue", "max_input_tokens", "max_tokens"):
        if getattr(limits, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if limits.forward_rows is not None and limits.forward_rows < 1:
        raise ConfigError("--forward-rows must be at least 1")
    if limits.max_wait_ms < 0 or limits.cache_mib < 0:
        raise ConfigError("--max-wait-ms and --cache-mib cannot be negative")
    return limits


def cmd_api(a: argparse.Namespace) -> int:
    from app.server import check_port

    keys = env_api_keys(a.api_key)
    limits = api_limits(a)
    if a.host not in LOOPBACK and not keys:  # before anything heavy is imported
        raise ConfigError(f"the API would listen on {a.host} without a key: give --api-key KEY (or {API_KEYS_ENV}), "
                          "or listen on 127.0.0.1")
    check_port(a.host, a.port)
    import uvicorn

    from app.api import standalone_app
    from app.api_service import ApiService
    from jobs.db import upgrade_database

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    upgrade_database()
    service = ApiService(limits)
    print(f"LAMP Studio API on http://{a.host}:{a.port}/v1" + (" (API key required)" if keys else ""), flush=True)
    try:
        uvicorn.run(standalone_app(service, keys), host=a.host, port=a.port, log_level="warning")
    finally:
        service.close()
    return 0


def cmd_gc(a: argparse.Namespace) -> int:
    from app.retention import collect
    from jobs.db import upgrade_database

    upgrade_database()
    days = a.days if a.days is not None else env_int(RETENTION_ENV, DEFAULT_RETENTION_DAYS)
    done = collect(retention_days=days, dry_run=a.dry_run)
    if a.json:
        print(json.dumps({"removed": done.removed, "freed_bytes": done.freed_bytes, "dry_run": a.dry_run}))
        return 0
    for path in done.removed:
        print(path)
    verb = "would free" if a.dry_run else "freed"
    print(f"{len(done.removed)} file(s), {verb} {done.freed_bytes / 2**20:.1f} MiB (uploads unused for {days:g} "
          "days, Gradio's temporary files older than an hour, downloads older than a day)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the dashboard (and an embedded worker)",
                       description="The LAMP Studio dashboard on http://127.0.0.1:7860 with an embedded worker.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--no-worker", action="store_true", help="UI only: jobs run on `lamp worker` processes")
    p.add_argument("--workers", type=int, default=1, help="jobs the embedded worker runs at once")
    p.add_argument("--device", default=None, help="the embedded worker's device: cpu, cuda:0, ...")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                   help=f"require a login (several: a,b comma-separated; or set {AUTH_ENV})")
    p.add_argument("--max-upload-mb", type=int, default=None,
                   help=f"largest data file a user may upload (default 200; or set {MAX_UPLOAD_ENV})")
    p.add_argument("--max-rows", type=int, default=None,
                   help=f"most data rows an uploaded file may have (default {Limits.max_rows:,}; or {MAX_ROWS_ENV})")
    p.add_argument("--allow-dir", action="append", default=None, metavar="DIR",
                   help="a folder whose subfolders users may name as a model or a task's data folder (repeatable; "
                        f"or {ALLOWED_DIRS_ENV}, separated by ':'); nothing else on this machine can be named")
    p.add_argument("--playground-device", default="cpu", help="where the playground runs tuned prompts")
    p.add_argument("--api-key", action="append", default=None, metavar="KEY",
                   help=f"a bearer key the /v1 API requires (repeatable; or {API_KEYS_ENV}, comma-separated); "
                        "required for the API when --host is not this machine")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("api", help="the OpenAI-compatible API alone (every succeeded job's prompt)",
                       description="Serve /v1/models, /v1/completions, /v1/chat/completions and /v1/classify for "
                                   "every succeeded job, requests gathered into mixed batches on shared backbones.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", action="append", default=None, metavar="KEY",
                   help=f"a bearer key every request must carry (repeatable; or {API_KEYS_ENV}); required off "
                        "loopback")
    d = ApiLimits()
    p.add_argument("--device", default=d.device, help=f"where prompts run (default {d.device})")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help=f"requests per gathered batch ({d.max_batch})")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help=f"how long to gather requests after the first ({d.max_wait_ms:g} ms)")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help=f"requests waiting at most; beyond, 429 with Retry-After ({d.max_queue})")
    p.add_argument("--max-input-tokens", type=int, default=d.max_input_tokens, help=f"({d.max_input_tokens})")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens,
                   help=f"the largest max_tokens a request may ask ({d.max_tokens})")
    p.add_argument("--no-mix", action="store_true",
                   help="answer a gathered batch one prompt after another instead of in mixed batches (a baseline)")
    p.add_argument("--forward-rows", type=int, default=None,
                   help="rows per forward inside a gathered batch (default: 8 on the CPU, 32 on a GPU)")
    p.add_argument("--cache-mib", type=float, default=d.cache_mib,
                   help=f"prompts' keys and values kept between requests ({d.cache_mib:g} MiB)")
    p.set_defaults(handler=cmd_api)

    p = sub.add_parser("gc", help="remove old uploads, Gradio's leftover temporary files and old downloads")
    p.add_argument("--days", type=float, default=None,
                   help=f"remove uploads unused for this many days (default {DEFAULT_RETENTION_DAYS}; or "
                        f"{RETENTION_ENV}); those a queued or running job reads stay")
    p.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_gc)
