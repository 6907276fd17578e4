"""Where the dashboard keeps its files, and its serving settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.backbone import lamp_home
from core.errors import ConfigError

AUTH_ENV = "LAMP_AUTH"
"""`user:password` (or several, comma-separated) to require a login, as `lamp serve --auth` does."""
MAX_UPLOAD_ENV = "LAMP_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 200


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

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 2**20


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


def env_max_upload_mb() -> int:
    raw = os.environ.get(MAX_UPLOAD_ENV)
    if not raw:
        return DEFAULT_MAX_UPLOAD_MB
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{MAX_UPLOAD_ENV}={raw!r}: give a whole number of MiB") from exc
    if value < 1:
        raise ConfigError(f"{MAX_UPLOAD_ENV}={value}: must be at least 1")
    return value


def app_dir(name: str) -> Path:
    """A folder of the dashboard's own under $LAMP_HOME: uploads (data sets users gave), exports (downloads)."""
    path = lamp_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def uploads_dir() -> Path:
    return app_dir("uploads")


def exports_dir() -> Path:
    return app_dir("exports")


def export_csv(frame: Any, name: str) -> str:
    """Write a table for download under exports_dir() (atomically: a half-written file is never served)."""
    path = exports_dir() / name
    partial = path.with_name(path.name + ".part")
    frame.to_csv(partial, index=False)
    partial.replace(path)
    return str(path)
