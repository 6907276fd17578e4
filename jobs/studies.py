"""Studies: a search over a run's knobs (method x length x rank x pool x lr x lr scaling x prompt init x seed) on
Optuna, one trial = one job.

Optuna asks, our queue runs, Optuna is told (ask-and-tell):
- a study is a row of `lamp_studies` plus an Optuna study of the same name in Optuna's own database
  (`storage_url()`: never ours, since Optuna brings its own tables and Alembic history);
- `advance()` tells Optuna how finished trials did, then asks for new ones until `parallel` trials are in flight,
  submitting each as an ordinary job (same validation, queue and store as `lamp submit`). It runs when a study is
  created, when a worker finishes one of its jobs, and from every worker's reaper loop, so a lost wake-up costs
  seconds, not a stuck study. One process at a time advances a study (`locked_until`, a lease in our store);
- grids use Optuna's GridSampler; budgets a multi-objective sampler (TPE by default, NSGA-II or random). The first
  objective is accuracy (the best validation value of the task's primary metric, maximised); the others are costs
  to minimise: trainable parameters, training seconds, peak memory;
- pruning: Optuna does not prune multi-objective studies, so each study has a single-objective twin
  (`<name>:pruning`) whose trials receive the evaluation metric as intermediate values from the training process
  (`PruningHook`) and whose pruner decides. A pruned trial's job ends PRUNED, not FAILED.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from core.errors import ConfigError
from core.methods import method_config, method_to_dict
from core.spec import RunSpec, spec_from_dict, spec_to_dict, validate_spec
from core.stats import interval95
from jobs import store
from jobs.db import database_url, is_sqlite, read, transact
from jobs.errors import JobNotFound
from jobs.models import FINISHED, Job, Result, Status, Study, StudyStatus, StudyTrial, utcnow

log = logging.getLogger(__name__)

KNOBS = ("method", "length", "rank", "pool", "lr", "lr_scaling", "prompt_init", "seed")
OBJECTIVES: dict[str, Any] = {"accuracy": "maximize", "params": "minimize", "time": "minimize", "memory": "minimize"}
COSTS = ("params", "time", "memory")
COST_LABELS = {"params": "trainable parameters", "time": "training time (s)", "memory": "peak memory (MiB)"}
SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("median", "none")
MAX_GRID = 512
LOCK_SECONDS = 120.0
SKIPS_PER_TRIAL = 10
"""A budget study stops asking after this many skipped proposals per trial (a space of mostly invalid settings)."""
PRUNE_AFTER_TRIALS = 3
"""The median pruner waits for this many finished trials before it prunes anything."""


# ---------------------------------------------------------------------------------------------------------------
# Plans: what a person asked for, checked before anything is written.

@dataclass(frozen=True)
class StudyPlan:
    name: str
    base: RunSpec
    """The run every trial starts from (model, data, steps, batch, ...)."""
    space: dict[str, list[Any]]
    """Knob -> values; knobs not swept hold the base run's value."""
    mode: str = "grid"
    n_trials: int | None = None
    """Budget mode: how many trials the sampler chooses. Grid mode: every distinct valid setting."""
    objectives: tuple[str, ...] = ("accuracy", "params")
    sampler: str = "tpe"
    parallel: int | None = None
    """Trials queued or running at once; default: all of a grid, 2 for a budget (a sampler learns from results)."""
    pruner: str = "median"
    tolerance: float = 0.01
    seed: int = 0
    """The sampler's seed."""


def parse_list(text: str | Sequence[Any] | None, kind: type, knob: str) -> list[Any]:
    """`"4, 8, 16"` -> [4, 8, 16]; an empty value -> []."""
    if text is None:
        return []
    items = [t.strip() for t in text.replace(";", ",").split(",")] if isinstance(text, str) else list(text)
    out: list[Any] = []
    for item in items:
        if item == "" or item is None:
            continue
        try:
            value = kind(item)
        except (TypeError, ValueError):
            raise ConfigError(f"{knob}: {item!r} is not a{'n' if kind is int else ''} {kind.__name__}; "
                              "give a comma-separated list such as 4, 8, 16") from None
        if value not in out:
            out.append(value)
    return out


def full_space(base: RunSpec, space: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Every knob with its values: the swept ones as given, the rest from the base run."""
    unknown = sorted(set(space) - set(KNOBS))
    if unknown:
        raise ConfigError(f"cannot sweep {', '.join(unknown)}; the knobs are {', '.join(KNOBS)}")
    m = method_to_dict(base.method)
    fixed: dict[str, Any] = {"method": base.method.name, "length": m.get("length"), "rank": m.get("rank", 8),
                             "pool": m.get("pool", 1), "lr": base.train.lr, "lr_scaling": base.train.lr_scaling,
                             "prompt_init": base.train.prompt_init, "seed": base.train.seed}
    return {k: list(space[k]) if space.get(k) else [fixed[k]] for k in KNOBS}


def setting_spec(base: RunSpec, params: dict[str, Any]) -> RunSpec:
    """The run of one trial: the base run with the trial's knobs."""
    knobs = {k: v for k, v in method_to_dict(base.method).items() if k != "name"}
    if params["method"] != base.method.name:
        knobs = {}
    knobs.update({k: params[k] for k in ("length", "rank", "pool") if params.get(k) is not None})
    method = method_config(params["method"], **knobs)
    train = replace(base.train, lr=params["lr"], seed=params["seed"], lr_scaling=params.get("lr_scaling"),
                    prompt_init=params.get("prompt_init"))
    return replace(base, method=method, train=train)


def canonical(spec: RunSpec) -> dict[str, Any]:
    """The knobs that matter for this method (prompt tuning has no rank or pool), the lr resolved, and the seed."""
    m = method_to_dict(spec.method)
    out = {"method": spec.method.name}
    out.update({k: m[k] for k in ("length", "rank", "pool") if k in m})
    return {**out, "lr": spec.lr, "lr_scaling": spec.lr_scaling, "prompt_init": spec.prompt_init,
            "seed": spec.train.seed}


def setting_key(setting: dict[str, Any]) -> tuple[Any, ...]:
    """Trials that differ only in the seed share a key (their results are aggregated)."""
    return tuple((k, setting.get(k)) for k in KNOBS if k != "seed")


def describe(setting: dict[str, Any]) -> str:
    parts = [setting["method"]] + [f"{k[0]}={setting[k]}" for k in ("length", "rank", "pool") if k in setting]
    extra = [f"{k.replace('_', '-')}={setting[k]}" for k in ("lr_scaling", "prompt_init") if setting.get(k)]
    return " ".join([*parts, f"lr={setting['lr']:g}", *extra])


def _checked(base: RunSpec, params: dict[str, Any]) -> tuple[RunSpec | None, str | None]:
    try:
        spec = setting_spec(base, params)
        validate_spec(spec)
    except ConfigError as exc:
        return None, str(exc).splitlines()[0]
    return spec, None


def distinct_settings(base: RunSpec, space: dict[str, list[Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The distinct valid settings of a space's grid, and why the others were dropped."""
    seen: list[dict[str, Any]] = []
    why: list[str] = []
    for combo in itertools.product(*(space[k] for k in KNOBS)):
        spec, problem = _checked(base, dict(zip(KNOBS, combo, strict=True)))
        if spec is None:
            why.append(problem or "invalid")
        elif canonical(spec) not in seen:
            seen.append(canonical(spec))
    return seen, why


def never_valid(base: RunSpec, space: dict[str, list[Any]]) -> list[str]:
    """A value no combination can use (lr=50, rank 64 beside lengths of 8) is a mistake, not a point to skip."""
    problems = []
    for knob in KNOBS:
        for value in space[knob]:
            others = [space[k] if k != knob else [value] for k in KNOBS]
            failures = [_checked(base, dict(zip(KNOBS, combo, strict=True)))[1]
                        for combo in itertools.product(*others)]
            if failures and all(f is not None for f in failures):
                problems.append(f"{knob}={value} fits no setting of this space: {failures[0]}")
    return problems


def check_plan(plan: StudyPlan) -> StudyPlan:
    """Every problem with a plan at once (ConfigError), or the plan with its defaults filled in."""
    problems: list[str] = []
    try:
        validate_spec(plan.base)
    except ConfigError as exc:
        problems += str(exc).splitlines()
    if not plan.name.strip():
        problems.append("name: give the study a name")
    if plan.mode not in ("grid", "budget"):
        problems.append(f"mode={plan.mode!r}: choose grid or budget")
    bad = [o for o in plan.objectives if o not in OBJECTIVES]
    repeated = len(set(plan.objectives)) < len(plan.objectives)
    if bad or repeated or not plan.objectives or plan.objectives[0] != "accuracy":
        problems.append(f"objectives={','.join(plan.objectives)}: accuracy first, then any of "
                        f"{', '.join(COSTS)} (e.g. accuracy,params)")
    if plan.sampler not in SAMPLERS:
        problems.append(f"sampler={plan.sampler!r}: choose {', '.join(SAMPLERS)}")
    if plan.pruner not in PRUNERS:
        problems.append(f"pruner={plan.pruner!r}: choose {', '.join(PRUNERS)}")
    if not 0 <= plan.tolerance < 1:
        problems.append(f"tolerance={plan.tolerance}: a fraction of accuracy in [0, 1), e.g. 0.01 for one point")
    if plan.parallel is not None and plan.parallel < 1:
        problems.append(f"parallel={plan.parallel}: must be at least 1")
    if problems:
        raise ConfigError("\n".join(problems))
    space = full_space(plan.base, plan.space)
    size = math.prod(len(v) for v in space.values())
    if size > MAX_GRID:
        raise ConfigError(f"the space has {size:,} combinations (at most {MAX_GRID}); sweep fewer values")
    never = never_valid(plan.base, space)
    if never:
        raise ConfigError("\n".join(never))
    settings, why = distinct_settings(plan.base, space)
    if not settings:
        raise ConfigError("no valid setting in this space: " + "; ".join(sorted(set(why))[:3]))
    n = len(settings) if plan.mode == "grid" else plan.n_trials
    if n is None or n < 1:
        raise ConfigError("trials: a budget study needs a number of trials (at least 1)")
    if plan.mode == "budget" and n > len(settings):
        raise ConfigError(f"trials={n}: the space has only {len(settings)} distinct valid settings; "
                          "ask for fewer trials or run it as a grid")
    parallel = plan.parallel or (n if plan.mode == "grid" else min(2, n))
    return replace(plan, space=space, n_trials=n, parallel=parallel)


# ---------------------------------------------------------------------------------------------------------------
# Optuna's storage: its own database.

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
        from pathlib import Path

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
def _storage(url: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if is_sqlite(url):
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}}
    else:
        _ensure_postgres_database(url)
        kwargs = {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def storage(url: str | None = None) -> Any:
    return _storage(storage_url(url))


def _sampler(study: Study) -> Any:
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


def _pruner(name: str) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def _main(study: Study, *, asking: bool) -> Any:
    """The study, with its sampler when it is to ask. Tells go through a plain sampler: GridSampler's after-trial
    hook calls `study.stop()` once the grid is used up, which Optuna only allows inside `optimize()`."""
    import optuna

    sampler = _sampler(study) if asking else optuna.samplers.RandomSampler()
    return optuna.load_study(study_name=study.optuna_name, storage=storage(), sampler=sampler)


def _twin(study: Study, url: str | None = None) -> Any:
    import optuna

    return optuna.load_study(study_name=f"{study.optuna_name}:pruning", storage=storage(url),
                             pruner=_pruner(study.pruner))


def _distributions(space: dict[str, list[Any]]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution

    return {k: CategoricalDistribution(space[k]) for k in KNOBS}


# ---------------------------------------------------------------------------------------------------------------
# Creating, advancing, cancelling.

def create_study(plan: StudyPlan) -> int:
    """Check the plan, record the study, create its Optuna study and pruning twin, and launch the first trials."""
    import optuna

    plan = check_plan(plan)
    assert plan.n_trials is not None and plan.parallel is not None  # check_plan fills both

    def insert(*, session: Session) -> Study:
        row = Study(name=plan.name.strip(), optuna_name=f"pending-{utcnow().timestamp()}", mode=plan.mode,
                    sampler=plan.sampler if plan.mode == "budget" else "grid", objectives=list(plan.objectives),
                    base_spec=spec_to_dict(plan.base), space=plan.space, n_trials=plan.n_trials,
                    parallel=plan.parallel, pruner=plan.pruner, tolerance=plan.tolerance, status=StudyStatus.RUNNING)
        session.add(row)
        session.flush()
        row.optuna_name = f"lamp-study-{row.id}"
        return row

    study = transact(insert)
    try:
        optuna.create_study(study_name=study.optuna_name, storage=storage(),
                            directions=[OBJECTIVES[o] for o in study.objectives])
        optuna.create_study(study_name=f"{study.optuna_name}:pruning", storage=storage(), direction="maximize")
    except Exception:
        transact(_delete_study, study_id=study.id)
        raise
    advance(study.id)
    return study.id


def _delete_study(*, session: Session, study_id: int) -> None:
    row = session.get(Study, study_id)
    if row is not None:
        session.delete(row)


def _lock(*, session: Session, study_id: int) -> Study | None:
    now = utcnow()
    got = session.execute(
        update(Study).where(Study.id == study_id, (Study.locked_until.is_(None)) | (Study.locked_until < now))
        .values(locked_until=now + timedelta(seconds=LOCK_SECONDS)).returning(Study.id)).scalar_one_or_none()
    return session.get(Study, study_id) if got is not None else None


def _unlock(*, session: Session, study_id: int) -> None:
    session.execute(update(Study).where(Study.id == study_id).values(locked_until=None))


def _snapshot(*, session: Session, study_id: int) -> tuple[Study | None, list[StudyTrial], dict[int, Job]]:
    study = session.get(Study, study_id)
    trials = list(session.scalars(select(StudyTrial).where(StudyTrial.study_id == study_id)
                                  .order_by(StudyTrial.number)))
    ids = [t.job_id for t in trials if t.job_id is not None]
    jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))} if ids else {}
    return study, trials, jobs


def _has_work(study: Study, trials: list[StudyTrial], jobs: dict[int, Job]) -> bool:
    open_trials = [t for t in trials if t.state == "RUNNING"]
    if any(t.job_id is None or jobs.get(t.job_id) is None or jobs[t.job_id].status in FINISHED for t in open_trials):
        return True  # a trial to tell
    if study.status != StudyStatus.RUNNING:
        return False
    return len(open_trials) < study.parallel  # room to ask, or the study is over


class StudyNotFound(JobNotFound):
    """No study with that id."""


def advance(study_id: int) -> bool:
    """Tell Optuna about trials whose jobs ended, ask for new ones while there is room, mark the study DONE when
    nothing is left. Returns False when another process holds the study (it will do the same work)."""
    study, trials, jobs = read(_snapshot, study_id=study_id)
    if study is None:
        raise StudyNotFound(f"no study {study_id}; `lamp study list` lists them")
    if not _has_work(study, trials, jobs):
        return True
    study = transact(_lock, study_id=study_id)
    if study is None:
        return False
    try:
        _advance_locked(study)
    finally:
        transact(_unlock, study_id=study_id)
    return True


def _advance_locked(study: Study) -> None:
    import optuna

    _, trials, jobs = read(_snapshot, study_id=study.id)
    main, twin = _main(study, asking=False), _twin(study)
    # 1. Tell: every trial whose job has ended.
    for trial in trials:
        if trial.state != "RUNNING":
            continue
        job = jobs.get(trial.job_id) if trial.job_id is not None else None
        if job is not None and job.status not in FINISHED:
            continue
        state, values, note = _outcome(study, trial, job)
        told = {optuna.trial.TrialState.COMPLETE: "COMPLETE", optuna.trial.TrialState.PRUNED: "PRUNED"}
        optuna_state = {"COMPLETE": optuna.trial.TrialState.COMPLETE,
                        "PRUNED": optuna.trial.TrialState.PRUNED}.get(state, optuna.trial.TrialState.FAIL)
        # Each tell only if not done yet: a process that died between a tell and our row update left it half done.
        if trial.twin_id is not None and not storage().get_trial(trial.twin_id).state.is_finished():
            twin_trial = optuna.trial.Trial(twin, trial.twin_id)
            if state == "COMPLETE":
                twin.tell(twin_trial, values[0])
            else:
                twin.tell(twin_trial, state=optuna_state)
        main_trial = storage().get_trial(_trial_id(main, trial.number))
        if main_trial.state.is_finished():
            state = told.get(main_trial.state, "FAIL")
        elif state == "COMPLETE":
            main.tell(trial.number, values)
        else:
            main.tell(trial.number, state=optuna_state)
        transact(_set_trial, trial_id=trial.id, state=state, note=note)
        trial.state = state
    if study.status != StudyStatus.RUNNING:
        return
    # 2. Ask: launch trials while fewer than `parallel` are in flight and the plan allows more.
    base = spec_from_dict(study.base_spec)
    launched = [t for t in trials if t.state != "SKIPPED"]
    skipped = len(trials) - len(launched)
    in_flight = sum(t.state == "RUNNING" for t in trials)
    if in_flight < study.parallel and len(launched) < study.n_trials:
        main = _main(study, asking=True)
    seen = [t.setting for t in launched]
    grid_left = study.mode == "grid" and len(trials) < math.prod(len(v) for v in study.space.values())
    while in_flight < study.parallel and len(launched) < study.n_trials:
        if study.mode == "grid" and not grid_left:
            break
        if study.mode == "budget" and skipped >= SKIPS_PER_TRIAL * study.n_trials:
            log.warning("study %s: %s skipped proposals; stopping its asks", study.id, skipped)
            break
        asked = main.ask(fixed_distributions=_distributions(study.space))
        spec, problem = _checked(base, dict(asked.params))
        setting = canonical(spec) if spec is not None else dict(asked.params)
        if spec is None or setting in seen:
            reason = problem or f"same run as trial {_trial_with(trials, setting)}"
            asked.set_user_attr("skipped", reason)
            main.tell(asked, state=optuna.trial.TrialState.FAIL)
            row = StudyTrial(study_id=study.id, number=asked.number, setting=setting, state="SKIPPED", note=reason)
            transact(_add_trial, trial=row)
            trials.append(row)
            skipped += 1
        else:
            twin_trial = twin.ask()
            from jobs.tasks import submit

            job_id = submit(spec)
            asked.set_user_attr("job_id", job_id)
            twin_trial.set_user_attr("job_id", job_id)
            row = StudyTrial(study_id=study.id, number=asked.number, twin_id=_trial_id(twin, twin_trial.number),
                             job_id=job_id,
                             setting=setting, state="RUNNING")
            transact(_add_trial, trial=row)
            trials.append(row)
            launched.append(row)
            seen.append(setting)
            in_flight += 1
        if study.mode == "grid":
            grid_left = len(trials) < math.prod(len(v) for v in study.space.values())
    # 3. Done when nothing is in flight and nothing more will be asked.
    more = len(launched) < study.n_trials and (grid_left if study.mode == "grid"
                                                else skipped < SKIPS_PER_TRIAL * study.n_trials)
    if in_flight == 0 and not more:
        transact(_finish_study, study_id=study.id, status=StudyStatus.DONE)


def _trial_id(study: Any, number: int) -> int:
    """The storage id of a study's trial number (what `optuna.trial.Trial(study, id)` takes)."""
    storage_ = storage()
    return int(storage_.get_trial_id_from_study_id_trial_number(
        storage_.get_study_id_from_name(study.study_name), number))


def _trial_with(trials: list[StudyTrial], setting: dict[str, Any]) -> int | None:
    return next((t.number for t in trials if t.setting == setting and t.state != "SKIPPED"), None)


def _outcome(study: Study, trial: StudyTrial, job: Job | None) -> tuple[str, list[float], str | None]:
    """What to tell Optuna about a trial whose job ended: (COMPLETE | PRUNED | FAIL, values, note)."""
    if job is None:
        return "FAIL", [], "its job was deleted"
    if job.status == Status.PRUNED:
        return "PRUNED", [], job.error
    if job.status != Status.SUCCEEDED:
        last = (job.error or "").strip().splitlines()[-1:]
        return "FAIL", [], f"job {job.status.lower()}" + (f": {last[0]}" if last else "")
    result = read(store.get_result, job_id=job.id)
    accuracy = best_validation(study, trial)
    if result is None or accuracy is None:
        return "FAIL", [], "the job left no result or no validation metric"
    costs = {"params": float(result.trainable_params), "time": result.train_seconds,
             "memory": result.peak_memory_mb}
    return "COMPLETE", [accuracy] + [costs[o] for o in study.objectives[1:]], None


def best_validation(study: Study, trial: StudyTrial) -> float | None:
    """The best validation value of the primary metric (what picked the job's checkpoint), from the twin trial's
    intermediate values."""
    if trial.twin_id is None:
        return None
    values = storage().get_trial(trial.twin_id).intermediate_values
    return max(values.values()) if values else None


def _set_trial(*, session: Session, trial_id: int, state: str, note: str | None) -> None:
    session.execute(update(StudyTrial).where(StudyTrial.id == trial_id).values(state=state, note=note))


def _add_trial(*, session: Session, trial: StudyTrial) -> None:
    session.add(trial)


def _finish_study(*, session: Session, study_id: int, status: StudyStatus) -> None:
    session.execute(update(Study).where(Study.id == study_id, Study.status == StudyStatus.RUNNING)
                    .values(status=status, finished_at=utcnow()))


def _running_studies(*, session: Session) -> list[int]:
    running = select(Study.id).where(Study.status == StudyStatus.RUNNING)
    open_trials = select(StudyTrial.study_id).where(StudyTrial.state == "RUNNING")
    return list(session.scalars(running.union(open_trials)))


def advance_all() -> None:
    """Advance every study with work to do (the reaper loop of each worker calls this)."""
    for study_id in read(_running_studies):
        try:
            advance(study_id)
        except Exception:  # one broken study must not stop the others, nor the reaper
            log.exception("study %s: advance failed", study_id)


def _study_of_job(*, session: Session, job_id: int) -> int | None:
    return session.scalar(select(StudyTrial.study_id).where(StudyTrial.job_id == job_id))


def job_ended(job_id: int) -> None:
    """A worker finished one of a study's jobs: tell Optuna and launch the next trial now."""
    study_id = read(_study_of_job, job_id=job_id)
    if study_id is not None:
        advance(study_id)


def cancel_study(study_id: int) -> int:
    """Stop a study: no new trials; its queued jobs never start, running ones stop within seconds. Returns how many
    jobs were asked to stop."""
    def mark(*, session: Session) -> list[int]:
        if session.get(Study, study_id) is None:
            raise StudyNotFound(f"no study {study_id}; `lamp study list` lists them")
        _finish_study(session=session, study_id=study_id, status=StudyStatus.CANCELLED)
        return [j for j in session.scalars(select(StudyTrial.job_id).where(
            StudyTrial.study_id == study_id, StudyTrial.state == "RUNNING")) if j is not None]

    job_ids = transact(mark)
    for job_id in job_ids:
        transact(store.request_cancel, job_id=job_id)
    advance(study_id)  # queued jobs are CANCELLED already: tell Optuna now
    return len(job_ids)


# ---------------------------------------------------------------------------------------------------------------
# The training process's side: intermediate values and the pruner's decision.

class PruningHook:
    """fit's on_event for a study's job: reports each validation value of the primary metric to the twin trial and
    asks its pruner whether to stop. `pruned` turns True when it should (fit then checkpoints and stops)."""

    def __init__(self, study: Study, trial: StudyTrial, url: str) -> None:
        import optuna

        self.twin = optuna.load_study(study_name=f"{study.optuna_name}:pruning", storage=storage(url),
                                      pruner=_pruner(study.pruner))
        assert trial.twin_id is not None  # pruning_hook only builds hooks for launched trials
        self.trial = optuna.trial.Trial(self.twin, trial.twin_id)
        self.pruned = False
        self.reason = ""
        self.metric: str | None = None

    def __call__(self, event: Any) -> None:
        if event.kind != "eval" or "primary" not in event.data:
            return
        name = event.data["primary"]
        value = float(event.data[name])
        if self.metric != name:  # the study's pages name the metric they chart
            self.trial.set_user_attr("metric", name)
            self.metric = name
        self.trial.report(value, event.step)
        if not self.pruned and event.step < event.total_steps and self.trial.should_prune():
            self.pruned = True
            self.reason = (f"pruned at step {event.step}: validation {name} {value:.4f} is below the median of "
                           f"earlier trials at this step")


def pruning_hook(job_id: int, url: str) -> PruningHook | None:
    """The hook for a job that is a study's trial, else None."""
    def find(*, session: Session) -> tuple[Study, StudyTrial] | None:
        trial = session.scalar(select(StudyTrial).where(StudyTrial.job_id == job_id))
        if trial is None or trial.twin_id is None:
            return None
        study = session.get(Study, trial.study_id)
        return (study, trial) if study is not None else None

    found = read(find, url=url)
    return PruningHook(*found, url) if found is not None else None


# ---------------------------------------------------------------------------------------------------------------
# Reading a study: trials, settings aggregated over seeds, the Pareto fronts, the recommendation.

@dataclass
class TrialView:
    number: int
    state: str
    """COMPLETE, PRUNED, FAIL, SKIPPED, or the job's QUEUED / RUNNING while it runs."""
    setting: dict[str, Any]
    job_id: int | None
    accuracy: float | None
    """Best validation value of the primary metric (for a running or pruned trial: the best so far)."""
    test: float | None
    params: int | None
    time: float | None
    memory: float | None
    step: int | None
    note: str | None


@dataclass
class SettingView:
    """One setting over its seeds."""

    key: tuple[Any, ...]
    setting: dict[str, Any]
    trials: list[TrialView]
    accuracy: float
    accuracy_std: float
    test: float | None
    """Mean test accuracy over the seeds that have one, with its spread and 95% interval (core.stats)."""
    test_std: float | None
    test_ci95: float | None
    params: float
    time: float
    memory: float
    front: dict[str, bool] = field(default_factory=dict)
    """Cost -> whether the setting is on the Pareto front of accuracy against that cost."""

    @property
    def seeds(self) -> int:
        return len(self.trials)

    def cost(self, name: str) -> float:
        return float(getattr(self, name))


@dataclass
class StudyView:
    id: int
    name: str
    status: str
    mode: str
    sampler: str
    objectives: list[str]
    pruner: str
    tolerance: float
    n_trials: int
    base: dict[str, Any]
    metric: str | None
    trials: list[TrialView]
    settings: list[SettingView]
    recommendation: SettingView | None
    created_at: str

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out


def _trial_views(*, session: Session, study_id: int) -> tuple[Study, list[StudyTrial], dict[int, Job],
                                                              dict[int, Result]]:
    study, trials, jobs = _snapshot(session=session, study_id=study_id)
    if study is None:
        raise StudyNotFound(f"no study {study_id}; `lamp study list` lists them")
    results = store.results_for(session=session, job_ids=list(jobs))
    return study, trials, jobs, results


def study_view(study_id: int) -> StudyView:
    study, trials, jobs, results = read(_trial_views, study_id=study_id)
    optuna_storage = storage()
    twins = {t.id: optuna_storage.get_trial(t.twin_id) for t in trials if t.twin_id is not None}
    # The metric the trials were judged by, as the training process named it (the task's first metric).
    metric = next((str(w.user_attrs["metric"]) for w in twins.values() if "metric" in w.user_attrs), None)
    if metric is None and results:
        metric = next((k for r in results.values() for k in r.metrics if not k.startswith("gen_")), None)
    views = []
    for t in trials:
        job = jobs.get(t.job_id) if t.job_id is not None else None
        result = results.get(t.job_id) if t.job_id is not None else None
        values = twins[t.id].intermediate_values if t.id in twins else {}
        state = t.state if t.state != "RUNNING" or job is None else job.status
        views.append(TrialView(
            number=t.number, state=state, setting=t.setting, job_id=t.job_id,
            accuracy=max(values.values()) if values else None,
            test=result.metrics.get(metric) if result is not None and metric else None,
            params=result.trainable_params if result is not None else None,
            time=result.train_seconds if result is not None else None,
            memory=result.peak_memory_mb if result is not None else None,
            step=job.step if job is not None else None, note=t.note or (job.error if job is not None else None)))
    settings = aggregate(views)
    mark_fronts(settings)
    cost = study.objectives[1] if len(study.objectives) > 1 else "params"
    return StudyView(
        id=study.id, name=study.name, status=study.status, mode=study.mode, sampler=study.sampler,
        objectives=list(study.objectives), pruner=study.pruner, tolerance=study.tolerance, n_trials=study.n_trials,
        base=study.base_spec, metric=metric, trials=views, settings=settings,
        recommendation=recommend(settings, study.tolerance, cost), created_at=study.created_at.isoformat() + "Z")


def aggregate(trials: Iterable[TrialView]) -> list[SettingView]:
    """Completed trials grouped by setting (all knobs but the seed): mean and spread over seeds."""
    groups: dict[tuple[Any, ...], list[TrialView]] = {}
    for t in trials:
        if t.state == "COMPLETE" and t.accuracy is not None:
            groups.setdefault(setting_key(t.setting), []).append(t)
    out = []
    for key, group in groups.items():
        accs = [t.accuracy for t in group if t.accuracy is not None]
        tests = [t.test for t in group if t.test is not None]
        setting = {k: v for k, v in group[0].setting.items() if k != "seed"}
        test, test_std, test_ci95 = interval95(tests) if tests else (None, None, None)
        out.append(SettingView(
            key=key, setting=setting, trials=group, accuracy=statistics.fmean(accs),
            accuracy_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
            test=test, test_std=test_std, test_ci95=test_ci95,
            params=statistics.fmean(float(t.params or 0) for t in group),
            time=statistics.fmean(float(t.time or 0) for t in group),
            memory=statistics.fmean(float(t.memory or 0) for t in group)))
    return sorted(out, key=lambda s: (-s.accuracy, s.params))


def pareto_front(settings: Sequence[SettingView], cost: str) -> list[SettingView]:
    """The settings no other beats on both accuracy (up) and `cost` (down): Optuna's `best_trials` of a two-
    objective in-memory study holding one trial per setting."""
    import optuna
    from optuna.distributions import IntDistribution

    if not settings:
        return []
    study = optuna.create_study(directions=["maximize", "minimize"], storage=optuna.storages.InMemoryStorage())
    study.add_trials([optuna.trial.create_trial(
        params={"i": i}, distributions={"i": IntDistribution(0, len(settings) - 1)},
        values=[s.accuracy, s.cost(cost)]) for i, s in enumerate(settings)])
    return [settings[t.params["i"]] for t in study.best_trials]


def mark_fronts(settings: Sequence[SettingView]) -> None:
    for cost in COSTS:
        on = {id(s) for s in pareto_front(settings, cost)}
        for s in settings:
            s.front[cost] = id(s) in on


def recommend(settings: Sequence[SettingView], tolerance: float, cost: str = "params") -> SettingView | None:
    """The cheapest setting (by `cost`) whose mean accuracy is within `tolerance` of the best; ties go to the more
    accurate."""
    if not settings:
        return None
    best = max(s.accuracy for s in settings)
    near = [s for s in settings if s.accuracy >= best - tolerance - 1e-12]
    return min(near, key=lambda s: (s.cost(cost), -s.accuracy))


def relaunch(study_id: int, steps: int | None = None, factor: float = 4.0) -> int:
    """Run the recommended setting again as one job on a larger step budget (default: 4x the study's steps)."""
    view = study_view(study_id)
    if view.recommendation is None:
        raise ConfigError(f"study {study_id} has no completed trial yet; nothing to recommend")
    base = spec_from_dict(view.base)
    setting = {**view.recommendation.setting, "seed": view.recommendation.trials[0].setting["seed"]}
    spec = setting_spec(base, {k: setting.get(k) for k in KNOBS})
    study_steps = base.train.steps or 150
    spec = replace(spec, train=replace(spec.train, steps=steps or max(1, round(study_steps * factor)), epochs=None))
    from jobs.tasks import submit

    return submit(spec)


def list_studies(*, session: Session, limit: int = 50) -> list[Study]:
    return list(session.scalars(select(Study).order_by(Study.id.desc()).limit(limit)))


def study_jobs(*, session: Session, study_id: int) -> list[int]:
    return [j for j in session.scalars(select(StudyTrial.job_id).where(StudyTrial.study_id == study_id)
                                       .order_by(StudyTrial.number)) if j is not None]
