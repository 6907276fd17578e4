"""`lamp serve` (registered into core.cli's parser)."""

from __future__ import annotations

import argparse
import logging

from app.settings import AUTH_ENV, MAX_UPLOAD_ENV, ServeSettings, env_auth, env_max_upload_mb, parse_auth


def cmd_serve(a: argparse.Namespace) -> int:
    from app.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = ServeSettings(
        host=a.host, port=a.port, worker=not a.no_worker, workers=a.workers, device=a.device,
        auth=parse_auth(a.auth) if a.auth else env_auth(),
        max_upload_mb=a.max_upload_mb if a.max_upload_mb is not None else env_max_upload_mb(),
        playground_device=a.playground_device,
    )
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.auth:
        logging.getLogger("lamp.serve").warning(
            "serving on %s without a login: anyone who reaches this port can launch jobs; set --auth", a.host)
    serve(settings)
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
    p.add_argument("--playground-device", default="cpu", help="where the playground runs tuned prompts")
    p.set_defaults(handler=cmd_serve)
