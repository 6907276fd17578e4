"""Time per step before launch, from the results of earlier jobs on the same model and data."""

from __future__ import annotations

import statistics

from core.errors import ConfigError
from core.estimate import Estimate, Widths, scored_examples, tokens_per_step, with_eval_timing, with_timing
from core.spec import RunSpec, spec_from_dict
from jobs import store
from jobs.db import read
from jobs.models import Status


def _same_run_family(spec: RunSpec, other: RunSpec) -> bool:
    return (other.model == spec.model and other.data.task == spec.data.task
            and other.data.train_file == spec.data.train_file and other.data.template == spec.data.template)


def timed_from_history(spec: RunSpec, widths: Widths, est: Estimate, *, limit: int = 500) -> Estimate:
    """`est` with seconds per step from earlier succeeded jobs on the same model (dtype, quantisation) and data,
    each scaled by tokens per step (batch x (width + prompt tokens)); unchanged when there are none."""
    jobs = read(store.list_jobs, status=Status.SUCCEEDED, limit=limit)
    results = read(store.results_for, job_ids=[j.id for j in jobs])
    scaled, ids, per_example = [], [], []
    for job in jobs:
        result = results.get(job.id)
        if result is None or result.steps < 1 or result.train_seconds <= 0:
            continue
        try:
            other = spec_from_dict(job.spec)
        except ConfigError:
            continue
        if not _same_run_family(spec, other):
            continue
        per_step = result.train_seconds / result.steps
        scaled.append(per_step * tokens_per_step(spec, widths) / tokens_per_step(other, widths))
        ids.append(job.id)
        scored = scored_examples(other, widths)  # the same data: the same split sizes
        if scored and result.total_seconds > result.train_seconds:
            per_example.append((result.total_seconds - result.train_seconds) / scored)
    if not scaled:
        return est
    shown = ", ".join(f"#{i}" for i in ids[:5]) + (" ..." if len(ids) > 5 else "")
    how = f"from {len(ids)} earlier job(s) on this model and data ({shown}), scaled by tokens per step"
    timed = with_timing(spec, widths, est, statistics.median(scaled), how)
    if not per_example:
        return timed
    # Loading, validations and the test, at the earlier jobs' rate per scored example (loading included in it).
    return with_eval_timing(timed, statistics.median(per_example) * scored_examples(spec, widths))
