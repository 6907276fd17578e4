"""What a dashboard client may name, checked before anything it sent is used.

The server never opens a path a client sent. A client names its own uploads by the id the server issued (their
sha256, bound to its user or browser session: app.uploads), a finished job by its number, a model as `default` or
a hub id, and a server folder (a model folder, a GLUE data folder) only inside the folders the operator offered
with `lamp serve --allow-dir DIR` (LAMP_ALLOWED_DIRS). A refused name gets the same message whether or not such a
path exists, so that the answers reveal nothing about the server's disk.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.tasks.reading import Limits

ALLOWED_DIRS_ENV = "LAMP_ALLOWED_DIRS"
"""Folders (separated by os.pathsep) whose subfolders dashboard users may name as model or data folders."""
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")


@dataclass(frozen=True)
class Access:
    """Who is asking, and what the operator lets dashboard users name."""

    owner: str = "local"
    """`user:<name>` when logged in, else `session:<browser session>`: the only one who may name its uploads."""
    allowed_dirs: tuple[Path, ...] = ()
    limits: Limits = field(default_factory=Limits)
    """How much of an uploaded file is read (rows, cell length, decompressed size)."""


def owner_of(request: Any) -> str:
    """The owner of what this request uploads: its logged-in user, else its browser session."""
    user = getattr(request, "username", None)
    if user:
        return f"user:{user}"
    session = getattr(request, "session_hash", None)
    return f"session:{session}" if session else "anonymous"


def parse_allowed_dirs(values: list[str] | tuple[str, ...] | None) -> tuple[Path, ...]:
    """Operator-given folders, made absolute (symlinks resolved); ConfigError for one that is not a folder."""
    out = []
    for value in values or ():
        for part in str(value).split(os.pathsep):
            if not part.strip():
                continue
            folder = Path(part.strip()).expanduser().resolve()
            if not folder.is_dir():
                raise ConfigError(f"--allow-dir {part}: not a folder")
            out.append(folder)
    return tuple(dict.fromkeys(out))


def env_allowed_dirs() -> tuple[Path, ...]:
    raw = os.environ.get(ALLOWED_DIRS_ENV)
    return parse_allowed_dirs([raw]) if raw else ()


def _inside(text: str, allowed: tuple[Path, ...]) -> Path | None:
    """The folder `text` names when it lies inside an allowed folder (after resolving symlinks), else None."""
    if not allowed or not os.path.isabs(text):
        return None
    folder = Path(os.path.realpath(text))
    return folder if any(folder == root or root in folder.parents for root in allowed) else None


def _offered(allowed: tuple[Path, ...]) -> str:
    if not allowed:
        return "this server offers no folders of its own (its operator can, with lamp serve --allow-dir)"
    return "or a folder inside " + ", ".join(str(p) for p in allowed)


def check_model(name: Any, allowed: tuple[Path, ...]) -> str:
    """The model to record: `default`, a hub id, or the resolved path of a folder inside an allowed folder."""
    text = str(name or "").strip()
    if text == "default":
        return text
    # A hub id that is also a folder in the server's working directory would load that folder: refused with it.
    if HUB_ID.fullmatch(text) and ".." not in text and not os.path.lexists(text):
        return text
    folder = _inside(text, allowed)
    if folder is not None:
        return str(folder)
    raise ConfigError(f"model={text!r}: not a model this dashboard can load; give `default`, a hub id "
                      f"(owner/name), {_offered(allowed)}")


def check_data_dir(value: Any, allowed: tuple[Path, ...]) -> str | None:
    """A GLUE/SuperGLUE task's local data folder: one inside an allowed folder, or None for the hub."""
    text = str(value or "").strip()
    if not text:
        return None
    folder = _inside(text, allowed)
    if folder is None:
        raise ConfigError(f"data_dir={text!r}: not a folder this dashboard offers; {_offered(allowed)}")
    return str(folder)


def data_dir_choices(allowed: tuple[Path, ...]) -> list[str]:
    """The allowed folders and the folders directly inside them (what the New job form offers)."""
    choices = []
    for root in allowed:
        choices.append(str(root))
        try:
            choices += sorted(str(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
    return choices
