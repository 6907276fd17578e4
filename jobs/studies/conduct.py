"""Advancing a study: the one place that tells Optuna how trials did and asks it for new ones.

`advance()` tells Optuna about trials whose jobs ended, asks for new ones until `parallel` trials are in flight
(each submitted as an ordinary job: same validation, queue and store as `lamp submit`), and marks the study DONE when
nothing is left. One process at a time does it (a lease in our store). Its callers write; readers never do:
- a study's creation (its first trials), and `relaunch` (one more job);
- the worker, through the hooks it is given when it starts (`worker_hooks`): at the end of each job, and on every
  pass of its reaper, so a wake-up lost to a dead worker costs seconds, not a stuck study.
The Study tab and `lamp study show` only read (jobs.studies.views).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import jobs.studies.optuna_db as optuna_db
from core.errors import ConfigError
from core.spec import DEFAULT_STEPS, spec_from_dict, spec_to_dict
from jobs import store
from jobs.db import read, transact
from jobs.errors import StudyNotFound
from jobs.hooks import WorkerHooks
from jobs.models import FINISHED, Job, Status, Study, StudyStatus, StudyTrial, utcnow
from jobs.studies.plan import KNOBS, StudyPlan, canonical, check_plan, checked_setting, setting_spec
from jobs.studies.pruning import pruning_hook
from jobs.studies.views import study_view

log = logging.getLogger(__name__)
LOCK_SECONDS = 120.0
SKIPS_PER_TRIAL = 10
"""A budget study stops asking after this many skipped proposals per trial (a space of mostly invalid settings)."""


def worker_hooks() -> WorkerHooks:
    """What a worker runs for studies: advance a job's study when the job ends, every study with work on each
    reaper pass, and the pruner in each training process."""
    return WorkerHooks(job_ended=(job_ended,), sweep=(advance_all,), listeners=(pruning_hook,))


def create_study(plan: StudyPlan) -> int:
    """Check the plan, record the study, create its Optuna study and pruning twin, and launch the first trials.
    What the base run reads was checked where it was submitted (core.inputs.check_inputs)."""
    plan = check_plan(plan)
    assert plan.n_trials is not None and plan.parallel is not None  # check_plan fills both
    row = Study(name=plan.name.strip(), optuna_name=f"pending-{utcnow().timestamp()}", mode=plan.mode,
                sampler=plan.sampler if plan.mode == "budget" else "grid", objectives=list(plan.objectives),
                base_spec=spec_to_dict(plan.base), space=plan.space, n_trials=plan.n_trials,
                parallel=plan.parallel, pruner=plan.pruner, tolerance=plan.tolerance, status=StudyStatus.RUNNING)
    study = transact(store.add_study, study=row)
    try:
        optuna_db.create_optuna_studies(study)
    except Exception:
        transact(store.delete_study, study_id=study.id)
        raise
    advance(study.id)
    return study.id


def _has_work(study: Study, trials: list[StudyTrial], jobs: dict[int, Job]) -> bool:
    open_trials = [t for t in trials if t.state == "RUNNING"]
    if any(t.job_id is None or jobs.get(t.job_id) is None or jobs[t.job_id].status in FINISHED for t in open_trials):
        return True  # a trial to tell
    if study.status != StudyStatus.RUNNING:
        return False
    return len(open_trials) < study.parallel  # room to ask, or the study is over


def advance(study_id: int) -> bool:
    """Tell Optuna about trials whose jobs ended, ask for new ones while there is room, mark the study DONE when
    nothing is left. Returns False when another process holds the study (it will do the same work)."""
    study, trials, jobs = read(store.study_snapshot, study_id=study_id)
    if study is None:
        raise StudyNotFound(f"no study {study_id}; `lamp study list` lists them")
    if not _has_work(study, trials, jobs):
        return True
    study = transact(store.lock_study, study_id=study_id, seconds=LOCK_SECONDS)
    if study is None:
        return False
    try:
        _, trials, jobs = read(store.study_snapshot, study_id=study.id)
        _tell_ended(study, trials, jobs)
        if study.status == StudyStatus.RUNNING:
            _ask(study, trials)
    finally:
        transact(store.unlock_study, study_id=study_id)
    return True


def _tell_ended(study: Study, trials: list[StudyTrial], jobs: dict[int, Job]) -> None:
    """Tell both Optuna studies how every trial whose job has ended did; each tell only if not done yet (a
    process that died between a tell and our row update left it half done)."""
    import optuna

    main, twin = optuna_db.main_study(study, asking=False), optuna_db.twin_study(study)
    states = {"COMPLETE": optuna.trial.TrialState.COMPLETE, "PRUNED": optuna.trial.TrialState.PRUNED}
    told = {v: k for k, v in states.items()}
    for trial in trials:
        job = jobs.get(trial.job_id) if trial.job_id is not None else None
        if trial.state != "RUNNING" or (job is not None and job.status not in FINISHED):
            continue
        state, values, note = _outcome(study, trial, job)
        optuna_state = states.get(state, optuna.trial.TrialState.FAIL)
        if trial.twin_id is not None and not optuna_db.storage().get_trial(trial.twin_id).state.is_finished():
            twin_trial = optuna.trial.Trial(twin, trial.twin_id)
            if state == "COMPLETE":
                twin.tell(twin_trial, values[0])
            else:
                twin.tell(twin_trial, state=optuna_state)
        main_trial = optuna_db.storage().get_trial(optuna_db.trial_id(main, trial.number))
        if main_trial.state.is_finished():
            state = told.get(main_trial.state, "FAIL")
        elif state == "COMPLETE":
            main.tell(trial.number, values)
        else:
            main.tell(trial.number, state=optuna_state)
        transact(store.set_trial, trial_id=trial.id, state=state, note=note)
        trial.state = state


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
    values = optuna_db.intermediate_values(trial.twin_id) if trial.twin_id is not None else {}
    if result is None or not values:
        return "FAIL", [], "the job left no result or no validation metric"
    costs = {"params": float(result.trainable_params), "time": result.train_seconds,
             "memory": result.peak_memory_mb}
    return "COMPLETE", [max(values.values())] + [costs[o] for o in study.objectives[1:]], None


@dataclass
class _Asking:
    """Where a study's asks stand while new trials are launched."""

    trials: list[StudyTrial]
    launched: list[StudyTrial] = field(default_factory=list)
    skipped: int = 0
    in_flight: int = 0

    def grid_left(self, study: Study) -> bool:
        return len(self.trials) < math.prod(len(v) for v in study.space.values())

    def more(self, study: Study) -> bool:
        """Whether the plan allows another trial."""
        if len(self.launched) >= study.n_trials:
            return False
        if study.mode == "grid":
            return self.grid_left(study)
        return self.skipped < SKIPS_PER_TRIAL * study.n_trials


def _ask(study: Study, trials: list[StudyTrial]) -> None:
    """Launch trials while fewer than `parallel` are in flight and the plan allows more; DONE when nothing is in
    flight and nothing more will be asked."""
    state = _Asking(trials, launched=[t for t in trials if t.state != "SKIPPED"],
                    in_flight=sum(t.state == "RUNNING" for t in trials))
    state.skipped = len(trials) - len(state.launched)
    if state.in_flight < study.parallel and state.more(study):
        main, twin = optuna_db.main_study(study, asking=True), optuna_db.twin_study(study)
        base = spec_from_dict(study.base_spec)
        while state.in_flight < study.parallel and state.more(study):
            _ask_one(study, base, main, twin, state)
        if study.mode == "budget" and state.skipped >= SKIPS_PER_TRIAL * study.n_trials:
            log.warning("study %s: %s skipped proposals; stopping its asks", study.id, state.skipped)
    if state.in_flight == 0 and not state.more(study):
        transact(store.finish_study, study_id=study.id, status=StudyStatus.DONE)


def _ask_one(study: Study, base: Any, main: Any, twin: Any, state: _Asking) -> None:
    """Ask Optuna for one trial: a new setting becomes a job; an invalid or repeated one is told FAIL, SKIPPED."""
    import optuna

    from jobs.tasks import submit

    asked = main.ask(fixed_distributions=optuna_db.distributions(study.space))
    spec, problem = checked_setting(base, dict(asked.params))
    setting = canonical(spec) if spec is not None else dict(asked.params)
    seen = [t.setting for t in state.launched]
    if spec is None or setting in seen:
        same = next((t.number for t in state.trials if t.setting == setting and t.state != "SKIPPED"), None)
        reason = problem or f"same run as trial {same}"
        asked.set_user_attr("skipped", reason)
        main.tell(asked, state=optuna.trial.TrialState.FAIL)
        row = StudyTrial(study_id=study.id, number=asked.number, setting=setting, state="SKIPPED", note=reason)
        state.skipped += 1
    else:
        twin_trial = twin.ask()
        job_id = submit(spec)
        asked.set_user_attr("job_id", job_id)
        twin_trial.set_user_attr("job_id", job_id)
        row = StudyTrial(study_id=study.id, number=asked.number, job_id=job_id, setting=setting, state="RUNNING",
                         twin_id=optuna_db.trial_id(twin, twin_trial.number))
        state.launched.append(row)
        state.in_flight += 1
    transact(store.add_trial, trial=row)
    state.trials.append(row)


def advance_all() -> None:
    """Advance every study with work to do (the reaper loop of each worker calls this)."""
    for study_id in read(store.studies_with_work):
        try:
            advance(study_id)
        except Exception:  # one broken study must not stop the others, nor the reaper
            log.exception("study %s: advance failed", study_id)


def job_ended(job_id: int) -> None:
    """A worker finished one of a study's jobs: tell Optuna and launch the next trial now."""
    found = read(store.trial_of_job, job_id=job_id)
    if found is not None:
        advance(found[0].id)


def cancel_study(study_id: int) -> int:
    """Stop a study: no new trials; its queued jobs never start, running ones stop within seconds (the worker
    then tells Optuna). Returns how many jobs were asked to stop."""
    job_ids = transact(store.cancel_study, study_id=study_id)
    for job_id in job_ids:
        transact(store.request_cancel, job_id=job_id)
    return len(job_ids)


def relaunch(study_id: int, steps: int | None = None, factor: float = 4.0) -> int:
    """Run the recommended setting again as one job on a larger step budget (default: 4x the study's steps)."""
    from jobs.tasks import submit

    view = study_view(study_id)
    if view.recommendation is None:
        raise ConfigError(f"study {study_id} has no completed trial yet; nothing to recommend")
    base = spec_from_dict(view.base)
    setting = {**view.recommendation.setting, "seed": view.recommendation.trials[0].setting["seed"]}
    spec = setting_spec(base, {k: setting.get(k) for k in KNOBS})
    study_steps = base.train.steps or DEFAULT_STEPS
    spec = replace(spec, train=replace(spec.train, steps=steps or max(1, round(study_steps * factor)), epochs=None),
                   data=replace(spec.data, max_test_examples=None))  # trials may score a sample; this the whole split
    return submit(spec)
