"""Alembic environment of the results store.

The URL is the `sqlalchemy.url` option when set (jobs.db sets it), else LAMP_DATABASE_URL, else
sqlite:///$LAMP_HOME/lamp.db. `jobs.db.upgrade_database()` passes an open connection in
`config.attributes["connection"]` whose transaction already holds the migration lock; the `alembic` command line
opens its own. SQLite runs in batch mode (copy-and-move tables), since it cannot ALTER most things in place.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from jobs.db import database_url, session
from jobs.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or database_url()


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=_url().startswith("sqlite"), dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    with session(write=True, url=_url()) as s, s.begin():
        _configure(s.connection())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
