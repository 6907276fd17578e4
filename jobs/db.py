"""One engine per database URL, short transactions, and the Alembic upgrade run on start.

SQLite (the embedded default) is set up for several processes writing while another reads: WAL (readers never
block the writer), a busy timeout, foreign keys on, and write transactions opened with BEGIN IMMEDIATE so that a
writer waits for the lock up front instead of failing when it upgrades a read snapshot ("database is locked").
`transact()` retries the whole transaction if SQLite still reports busy. PostgreSQL: `postgresql+psycopg://...`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from core.errors import StorageError, storage_error

T = TypeVar("T")
log = logging.getLogger(__name__)
BUSY_TIMEOUT_S = 30.0
WRITE_RETRIES = 8
MIGRATION_LOCK = 7_357_001  # PostgreSQL advisory lock key held while migrating
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def database_url() -> str:
    if os.environ.get("LAMP_DATABASE_URL"):
        return os.environ["LAMP_DATABASE_URL"]
    from core.backbone import lamp_home  # imported here: core.backbone loads torch, which a given URL does not need

    return f"sqlite:///{lamp_home() / 'lamp.db'}"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def get_engine(url: str | None = None) -> Engine:
    """The process's engine for `url` (default: `database_url()`)."""
    url = url or database_url()
    with _lock:
        if url not in _engines:
            _engines[url] = _make_engine(url)
        return _engines[url]


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def _make_engine(url: str) -> Engine:
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True)
    database = make_url(url).database
    if database and database != ":memory:":
        folder = Path(database).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, folder) or exc from exc
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN handling off; _on_begin below does it
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("lamp_write") else "BEGIN")

    return engine


def session(*, write: bool = False, url: str | None = None) -> Session:
    """A new session; `write=True` takes SQLite's write lock when its transaction begins."""
    engine = get_engine(url)
    bind = engine.execution_options(lamp_write=True) if write else engine
    return Session(bind=bind, expire_on_commit=False)


def _retryable(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    message = str(exc.orig).lower()
    return isinstance(exc, OperationalError) and ("locked" in message or "busy" in message)


_SQLITE_STORAGE = ("unable to open database file", "database or disk is full", "readonly database", "disk i/o error")


def _why(folder: Path, message: str) -> tuple[str, str]:
    """What keeps SQLite from writing in `folder`, and the fix, found by looking at the folder itself."""
    probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), folder)
    with contextlib.suppress(OSError):
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            return "the file system is read-only", "point LAMP_HOME (or LAMP_DATABASE_URL) at a writable folder"
        if "full" in message or shutil.disk_usage(probe).free < 2**16:
            return "the disk is full", "free space there, or point LAMP_HOME (or LAMP_DATABASE_URL) at another disk"
    if not folder.is_dir():
        return "its folder cannot be created", "point LAMP_HOME (or LAMP_DATABASE_URL) at a folder you can write"
    if not os.access(folder, os.W_OK):
        return "permission denied", "make the folder writable for this user, or point LAMP_HOME elsewhere"
    return message, "check the disk and the folder's permissions, or point LAMP_HOME elsewhere"


def store_storage_error(exc: BaseException, url: str | None = None) -> StorageError | None:
    """A StorageError naming the store's file, what is wrong and the fix, when `exc` says the store cannot be
    written (disk full, read-only, no permission); None for any other error."""
    found = storage_error(exc)
    if found is not None:
        return found
    url = url or database_url()
    if not is_sqlite(url):
        return None
    return sqlite_storage_error(exc, Path(make_url(url).database or "").expanduser(), "the store")


def sqlite_storage_error(exc: BaseException, path: Path, what_file: str) -> StorageError | None:
    """The same for any SQLite file (the store, the queue): `exc` as raised by sqlite3 or through SQLAlchemy."""
    message = str(getattr(exc, "orig", exc)).lower()
    if not any(m in message for m in _SQLITE_STORAGE):
        return None
    what, fix = _why(path.parent, message)
    return StorageError(f"cannot write {what_file} {path}: {what}; {fix}")


def transact(fn: Callable[..., T], /, *, url: str | None = None, **kwargs: Any) -> T:
    """Run `fn(session=..., **kwargs)` in one short write transaction and commit it; retry the whole transaction
    when SQLite says busy/locked or the connection dropped. StorageError when the store cannot be written."""
    for attempt in range(WRITE_RETRIES):
        try:
            with session(write=True, url=url) as s, s.begin():
                return fn(session=s, **kwargs)
        except DBAPIError as exc:
            if attempt == WRITE_RETRIES - 1 or not _retryable(exc):
                raise store_storage_error(exc, url) or exc from exc
            log.warning("database busy (%s); retrying", exc.orig)
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def read(fn: Callable[..., T], /, *, url: str | None = None, **kwargs: Any) -> T:
    """Run `fn(session=..., **kwargs)` in a read transaction (never blocks writers on SQLite's WAL)."""
    try:
        with session(url=url) as s, s.begin():
            return fn(session=s, **kwargs)
    except DBAPIError as exc:
        raise store_storage_error(exc, url) or exc from exc


def migrations_dir() -> Path:
    here = Path(__file__).resolve().parents[1] / "migrations"
    if (here / "env.py").is_file():
        return here
    import importlib.util

    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the migrations/ folder is not installed next to jobs/")
    return Path(next(iter(spec.submodule_search_locations)))


def alembic_config(url: str | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if url is not None:  # else migrations/env.py falls back to database_url()
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def current_revision(url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade_database(url: str | None = None, revision: str = "head") -> None:
    """Bring the schema to `revision` (Alembic), holding a lock so that workers starting together migrate once.
    StorageError (one line: the store's path, what is wrong, the fix) when the store cannot be opened or written."""
    url = url or database_url()
    try:
        _upgrade(url, revision)
    except DBAPIError as exc:
        raise store_storage_error(exc, url) or exc from exc


def _upgrade(url: str, revision: str) -> None:
    from alembic import command

    if revision == "head" and current_revision(url) == head_revision():
        return
    config = alembic_config(url)
    with session(write=True, url=url) as s, s.begin():  # SQLite: BEGIN IMMEDIATE holds the write lock
        conn = s.connection()
        if not is_sqlite(url):
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def downgrade_database(url: str | None = None, revision: str = "base") -> None:
    from alembic import command

    url = url or database_url()
    config = alembic_config(url)
    with session(write=True, url=url) as s, s.begin():
        config.attributes["connection"] = s.connection()
        command.downgrade(config, revision)
