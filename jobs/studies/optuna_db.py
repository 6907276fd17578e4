"""Optuna's side of a study: its storage in a database of its own (never ours: Optuna brings its own tables and
Alembic history), created on PostgreSQL when missing; the samplers, pruners and the two Optuna studies of each of
ours (the multi-objective main study and its single-objective pruning twin)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from core.errors import ConfigError
from jobs.db import database_url, is_sqlite
from jobs.models import Study
from jobs.studies.plan import KNOBS, OBJECTIVES

PRUNE_AFTER_TRIALS = 3
"""The median pruner waits for this many finished trials before it prunes anything."""


def storage_url(url: str | None = None) -> str:
    """Where Optuna keeps its studies: LAMP_STUDY_DATABASE_URL, else beside our store: `studies.db` next to an
    SQLite store, or the database `<ours>_studies` on the same PostgreSQL server (created when missing)."""
    explicit = os.environ.get("LAMP_STUDY_DATABASE_URL")
    ours = url or database_url()
    if explicit:
        if explicit == ours:
            raise ConfigError("LAMP_STUDY_DATABASE_URL is the results store itself; Optuna needs its own database "
                              "(it brings its own tables and migrations)")
        return explicit
    parsed = make_url(ours)
    if is_sqlite(ours):
        db = parsed.database
        if not db or db == ":memory:":
            raise ConfigError("an in-memory results store has no place for studies; set LAMP_STUDY_DATABASE_URL")
        return str(parsed.set(database=str(Path(db).with_name("studies.db"))))
    return parsed.set(database=f"{parsed.database}_studies").render_as_string(hide_password=False)


def _ensure_postgres_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database}).first()
            if exists is None:
                conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    except Exception as exc:
        raise ConfigError(f"could not create the studies database {parsed.database!r} ({exc}); create it, or set "
                          "LAMP_STUDY_DATABASE_URL to a database Optuna may use") from exc
    finally:
        admin.dispose()


@functools.cache
def optuna_storage(url: str) -> Any:
    """One RDBStorage per Optuna database URL in this process (`optuna_storage.cache_clear()` forgets them)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if is_sqlite(url):
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}}
    else:
        _ensure_postgres_database(url)
        kwargs = {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def storage(url: str | None = None) -> Any:
    """Optuna's storage for the results store at `url` (default: this process's store)."""
    return optuna_storage(storage_url(url))


def sampler(study: Study) -> Any:
    import optuna

    if study.mode == "grid":
        return optuna.samplers.GridSampler(study.space, seed=study.id)
    if study.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=study.id)
    if study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=study.id)
    # constant_liar: trials still running count as mediocre, so parallel asks do not pile onto one point.
    return optuna.samplers.TPESampler(seed=study.id, constant_liar=True,
                                      n_startup_trials=max(2, min(5, study.n_trials // 3)))


def pruner(name: str) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def main_study(study: Study, *, asking: bool) -> Any:
    """The study, with its sampler when it is to ask. Tells go through a plain sampler: GridSampler's after-trial
    hook calls `study.stop()` once the grid is used up, which Optuna only allows inside `optimize()`."""
    import optuna

    chooser = sampler(study) if asking else optuna.samplers.RandomSampler()
    return optuna.load_study(study_name=study.optuna_name, storage=storage(), sampler=chooser)


def twin_study(study: Study, url: str | None = None) -> Any:
    """The single-objective twin whose trials receive the evaluation metric and whose pruner decides (Optuna does
    not prune multi-objective studies)."""
    import optuna

    return optuna.load_study(study_name=f"{study.optuna_name}:pruning", storage=storage(url),
                             pruner=pruner(study.pruner))


def create_optuna_studies(study: Study) -> None:
    import optuna

    optuna.create_study(study_name=study.optuna_name, storage=storage(),
                        directions=[OBJECTIVES[o] for o in study.objectives])
    optuna.create_study(study_name=f"{study.optuna_name}:pruning", storage=storage(), direction="maximize")


def distributions(space: dict[str, list[Any]]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution

    return {k: CategoricalDistribution(space[k]) for k in KNOBS}


def trial_id(study: Any, number: int) -> int:
    """The storage id of a study's trial number (what `optuna.trial.Trial(study, id)` takes)."""
    storage_ = storage()
    return int(storage_.get_trial_id_from_study_id_trial_number(
        storage_.get_study_id_from_name(study.study_name), number))


def intermediate_values(twin_id: int) -> dict[int, float]:
    """The validation values a trial's training process reported to its twin, by step."""
    return dict(storage().get_trial(twin_id).intermediate_values)

