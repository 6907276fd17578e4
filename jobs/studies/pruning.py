"""The training process's side of a study: a listener of fit's events that reports each validation value to the
trial's pruning twin and asks its pruner whether to go on. A worker runs it in every training process (its hooks'
listeners, jobs.hooks); for a job that is no study's trial it is None."""

from __future__ import annotations

from typing import Any

import jobs.studies.optuna_db as optuna_db
from jobs import store
from jobs.db import read
from jobs.models import Study, StudyTrial


class PruningHook:
    """fit's on_event for a study's job: reports each validation value of the primary metric to the twin trial and
    asks its pruner whether to stop. `stop_reason` is set when it should (fit then checkpoints and stops, and the
    job ends PRUNED with that reason)."""

    def __init__(self, study: Study, trial: StudyTrial, url: str) -> None:
        import optuna

        assert trial.twin_id is not None  # pruning_hook only builds hooks for launched trials
        self.twin = optuna_db.twin_study(study, url)
        self.trial = optuna.trial.Trial(self.twin, trial.twin_id)
        self.stop_reason: str | None = None
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
        if self.stop_reason is None and event.step < event.total_steps and self.trial.should_prune():
            self.stop_reason = (f"pruned at step {event.step}: validation {name} {value:.4f} is below the median "
                                "of earlier trials at this step")


def pruning_hook(job_id: int, url: str) -> PruningHook | None:
    """The hook for a job that is a study's trial, else None."""
    found = read(store.trial_of_job, job_id=job_id, url=url)
    if found is None or found[1].twin_id is None:
        return None
    return PruningHook(*found, url)
