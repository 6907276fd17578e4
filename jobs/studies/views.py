"""Reading a study: its trials, the settings aggregated over seeds, the Pareto fronts and the recommendation. Reads
only (the store and Optuna's storage): the Study tab polls it and `lamp study show` prints it; a study advances
only through jobs.studies.conduct."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jobs.studies.optuna_db as optuna_db
from core.stats import interval95
from jobs import store
from jobs.db import read
from jobs.studies.plan import COSTS, setting_key


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


def study_view(study_id: int) -> StudyView:
    study, trials, jobs, results = read(store.study_results, study_id=study_id)
    optuna_storage = optuna_db.storage()
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
