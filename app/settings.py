"""Where the dashboard keeps its files, and its serving settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.backbone import lamp_home
from core.errors import ConfigError
from core.tasks.reading import Limits

AUTH_ENV = "LAMP_AUTH"
"""`user:password` (or several, comma-separated) to require a login, as `lamp serve --auth` does."""
MAX_UPLOAD_ENV = "LAMP_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 200
UPLOAD_QUOTA_ENV, DEFAULT_UPLOAD_QUOTA_MB = "LAMP_UPLOAD_QUOTA_MB", 1024
"""What one user (or browser session) keeps under uploads/; over it, their least recently used uploads go."""
UPLOADS_TOTAL_ENV, DEFAULT_UPLOADS_TOTAL_MB = "LAMP_UPLOADS_TOTAL_MB", 10240
"""What all uploads together may take; over it, new uploads are refused until `lamp gc` or the retention frees."""
RETENTION_ENV, DEFAULT_RETENTION_DAYS = "LAMP_UPLOAD_RETENTION_DAYS", 30
"""Uploads unused (no upload, no job launch) for this many days are removed by `lamp gc` and by the server."""
MAX_ROWS_ENV = "LAMP_MAX_ROWS"


@dataclass(frozen=True)
class Quota:
    """How much uploaded data one owner, and everyone together, may keep under uploads/."""

    owner_bytes: int = DEFAULT_UPLOAD_QUOTA_MB * 2**20
    total_bytes: int = DEFAULT_UPLOADS_TOTAL_MB * 2**20


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 7860
    worker: bool = True
    """Run an embedded worker (training processes spawned from this process); False for a UI-only host."""
    workers: int = 1
    device: str | None = None
    """The embedded worker's device (None: as `lamp worker` decides)."""
    auth: tuple[tuple[str, str], ...] = ()
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB
    playground_device: str = "cpu"
    """The playground runs tuned prompts in the web process; the CPU keeps GPUs free for training."""
    allowed_dirs: tuple[Path, ...] = ()
    """Folders (and their subfolders) users may name as a model folder or a task's data folder."""
    max_rows: int = Limits.max_rows
    upload_quota_mb: int = DEFAULT_UPLOAD_QUOTA_MB
    uploads_total_mb: int = DEFAULT_UPLOADS_TOTAL_MB
    retention_days: float = DEFAULT_RETENTION_DAYS
    api_keys: tuple[str, ...] = ()
    """Bearer keys the /v1 API requires (separate from the dashboard's login); none: open on loopback only."""

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 2**20

    @property
    def limits(self) -> Limits:
        return Limits(max_bytes=self.max_upload_bytes, max_rows=self.max_rows)

    @property
    def quota(self) -> Quota:
        return Quota(self.upload_quota_mb * 2**20, self.uploads_total_mb * 2**20)


def parse_auth(value: str | None) -> tuple[tuple[str, str], ...]:
    """`user:pw` or `user1:pw1,user2:pw2` -> pairs. A password may contain ':' (split at the first one)."""
    if not value:
        return ()
    pairs = []
    for item in value.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"auth {item.strip()!r}: give user:password (several separated by commas)")
        pairs.append((user, password))
    return tuple(pairs)


def env_auth() -> tuple[tuple[str, str], ...]:
    return parse_auth(os.environ.get(AUTH_ENV))


def env_int(name: str, default: int) -> int:
    """A whole number >= 1 from the environment (`default` when unset)."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: give a whole number") from exc
    if value < 1:
        raise ConfigError(f"{name}={value}: must be at least 1")
    return value


def env_max_upload_mb() -> int:
    return env_int(MAX_UPLOAD_ENV, DEFAULT_MAX_UPLOAD_MB)


def app_dir(name: str) -> Path:
    """A folder of the dashboard's own under $LAMP_HOME: uploads (data sets users gave), exports (downloads)."""
    path = lamp_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def uploads_dir() -> Path:
    return app_dir("uploads")


def gradio_temp_dir() -> Path:
    """Where Gradio puts what clients post to its upload route (app.server points GRADIO_TEMP_DIR here)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or app_dir("gradio-tmp"))


def exports_dir() -> Path:
    return app_dir("exports")


def export_csv(frame: Any, name: str) -> str:
    """Write a table for download under exports_dir() (atomically: a half-written file is never served)."""
    path = exports_dir() / name
    partial = path.with_name(path.name + ".part")
    frame.to_csv(partial, index=False)
    partial.replace(path)
    return str(path)


@dataclass(frozen=True)
class ApiLimits:
    max_batch: int = 32
    """Requests answered together in one gathered batch."""
    max_wait_ms: float = 10.0
    """How long the batcher waits for more requests after the first."""
    max_queue: int = 256
    """Requests waiting at most; beyond, a request is refused (HTTP 429) instead of queued."""
    max_input_tokens: int = 1024
    max_tokens: int = 256
    """The largest `max_tokens` a completion may ask for."""
    max_inputs: int = 64
    """Inputs in one /v1/classify request."""
    cache_mib: float = 256.0
    """Prompts' keys and values kept between requests."""
    mix_prompts: bool = True
    """Answer different prompts' requests in the same forward passes; False answers a gathered batch one prompt
    after another (what a server that cannot mix prompts does: the benchmark's baseline)."""
    forward_rows: int | None = None
    """Rows per forward inside a gathered batch (sorted by length, so that little is padding); None: 8 on the CPU,
    where 32 rows of reviews took 1.65 s in batches of 8 against 2.10 s in one batch of 32 and 3.90 s one by one
    (the default model, 2 threads), and 32 on a GPU."""
    device: str = "cpu"
    max_prompts: int = 256
    """Loaded job prompts kept (each a few KB on the backbone they share)."""


API_KEYS_ENV = "LAMP_API_KEYS"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
"""Hosts that only this machine reaches: the API needs no key there."""


def env_api_keys(given: list[str] | None = None) -> tuple[str, ...]:
    """--api-key values, else LAMP_API_KEYS (comma-separated)."""
    if given:
        return tuple(k.strip() for k in given if k.strip())
    return tuple(k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip())
