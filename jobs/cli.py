"""`lamp submit`, `lamp jobs`, `lamp cancel` and `lamp worker` (added to the `lamp` parser by lamp/cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from core.cli import add_spec_arguments, spec_from_args
from jobs import DEFAULT_MAX_ATTEMPTS


def cmd_submit(a: argparse.Namespace) -> int:
    from jobs.db import upgrade_database
    from jobs.tasks import submit

    if a.init_from is not None and a.init_from.strip().lstrip("#").isdigit():  # a job id: its artifact directory
        from jobs.warm import resolve_init_from

        upgrade_database()
        a.init_from = resolve_init_from(a.init_from)
    spec = spec_from_args(a)  # validates: a bad spec stops here, before the store or the queue is touched
    upgrade_database()
    job_id = submit(spec, max_attempts=a.max_attempts)
    print(json.dumps({"id": job_id}) if a.json else job_id)
    return 0


def _age(iso: str | None) -> str:
    return iso[:19].replace("T", " ") if iso else "-"


def _row(job: dict[str, Any]) -> list[str]:
    from jobs.store import phase_text

    step = f"{job['step']}/{job['total_steps']}" if job["total_steps"] else str(job["step"] or "-")
    if job.get("phase") and job["phase"].get("phase") != "training":  # what the evaluation steps are doing
        step += f" {phase_text(job['phase'])}"
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in (job.get("metrics") or {}).items())
    error = (job["error"] or "").splitlines()[-1:] if job["status"] != "SUCCEEDED" else []
    note = metrics or (error[0][:60] if error else "")
    if job["cancel_requested"] and job["status"] == "RUNNING":
        note = "cancelling"
    return [str(job["id"]), job["status"], step, f"{job['attempts']}", str(job["method"]), str(job["model"])[-30:],
            str(job["task"])[-30:], _age(job["created_at"]), note]


def cmd_jobs(a: argparse.Namespace) -> int:
    from jobs import store
    from jobs.db import read, upgrade_database

    upgrade_database()

    def summaries(*, session: Any) -> list[dict[str, Any]]:
        jobs = store.list_jobs(session=session, status=a.status, limit=a.limit)
        results = store.results_for(session=session, job_ids=[j.id for j in jobs])
        return [store.job_summary(j, results.get(j.id)) for j in jobs]

    rows = read(summaries)
    if a.json:
        print(json.dumps(rows))
        return 0
    table = [["ID", "STATUS", "STEP", "RUNS", "METHOD", "MODEL", "DATA", "CREATED (UTC)", "RESULT / ERROR"]]
    table += [_row(job) for job in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_cancel(a: argparse.Namespace) -> int:
    from jobs.db import upgrade_database
    from jobs.models import Status
    from jobs.tasks import cancel

    upgrade_database()
    for job_id in a.ids:
        status = cancel(job_id)
        if status == Status.RUNNING:
            print(f"job {job_id}: cancel requested; its worker stops it within seconds")
        elif status == Status.CANCELLED:
            print(f"job {job_id}: CANCELLED")
        else:
            print(f"job {job_id}: already {status}; nothing to cancel")
    return 0


def cmd_worker(a: argparse.Namespace) -> int:
    from core.errors import ConfigError

    if a.device is not None and not (a.device in ("cpu", "cuda") or a.device.startswith("cuda:")):
        raise ConfigError(f"--device {a.device}: choose cpu, cuda or cuda:N")
    if a.workers < 1:
        raise ConfigError(f"--workers {a.workers}: must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from jobs.studies.conduct import worker_hooks
    from jobs.tasks import run_worker

    run_worker(workers=a.workers, device=a.device, threads=a.threads, lease_seconds=a.lease_seconds,
               hooks=worker_hooks())
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    from jobs.db import upgrade_database
    from jobs.tasks import import_artifact

    upgrade_database()
    ids = [import_artifact(path) for path in a.artifact]
    print(json.dumps({"ids": ids}) if a.json else "\n".join(f"job {i}: {p}" for i, p in zip(ids, a.artifact,
                                                                                             strict=True)))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("submit", help="queue a tuning job (same flags as `lamp train`); prints its id")
    add_spec_arguments(p)
    p.add_argument("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS,
                   help=f"give up (FAILED) after this many crashed attempts or dead workers (default "
                        f"{DEFAULT_MAX_ATTEMPTS})")
    p.add_argument("--json", action="store_true", help='print {"id": N}')
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser("jobs", help="list queued, running and finished jobs")
    p.add_argument("--status", default=None,
                   choices=["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "PRUNED", "OUT_OF_MEMORY"])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="a JSON list of objects with id, status, step, ...")
    p.set_defaults(handler=cmd_jobs)

    p = sub.add_parser("import", help="record finished artifacts as succeeded jobs (served by the API, listed in "
                                      "the dashboard)")
    p.add_argument("--artifact", action="append", required=True, metavar="DIR", help="an artifact folder (repeatable)")
    p.add_argument("--json", action="store_true", help='print {"ids": [...]}')
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser("cancel", help="cancel jobs: a queued one never starts, a running one stops")
    p.add_argument("ids", type=int, nargs="+", metavar="ID")
    p.set_defaults(handler=cmd_cancel)

    p = sub.add_parser("worker", help="run queued jobs (a huey consumer; one per GPU)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N: the device its jobs train on "
                   "(default: each job's own; `auto` picks the first GPU)")
    p.add_argument("--workers", type=int, default=1, help="jobs run at the same time (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per job")
    p.add_argument("--lease-seconds", type=float, default=None,
                   help="requeue a job this long after its worker stops heartbeating (default 30, "
                        "or LAMP_LEASE_SECONDS)")
    p.set_defaults(handler=cmd_worker)
    register_estimate(sub)
    from jobs.study_cli import register as register_study

    register_study(sub)


def cmd_estimate(a: argparse.Namespace) -> int:
    from core.estimate import data_widths, estimate, with_timing
    from jobs.db import upgrade_database
    from jobs.estimates import timed_from_history

    spec = spec_from_args(a)
    widths = data_widths(spec)
    est = estimate(spec, widths)
    if a.probe:
        from core.probe import probe

        measured = probe(spec, steps=a.probe_steps)
        est = with_timing(spec, widths, est, measured.seconds_per_step,
                          f"measured by a {measured.steps}-step probe")
        probed: dict[str, Any] | None = {"seconds_per_step": measured.seconds_per_step,
                                         "activations_mb": measured.activations_mb, "peak_mb": measured.peak_mb,
                                         "memory": measured.memory_how}
    else:
        upgrade_database()
        est = timed_from_history(spec, widths, est)
        probed = None
    if a.json:
        print(json.dumps({**est.to_json(), "mean_batch_width": widths.mean, "probe": probed}))
        return 0
    rows = [
        ("trainable parameters", f"{est.trainable_params:,}"),
        ("prompt tokens the model reads", f"{est.prompt_tokens}"),
        ("sequence (prompt + mean batch width)", f"{est.sequence_tokens:.0f} tokens (longest {est.longest_sequence})"),
        (f"peak memory ({est.device})", f"{est.peak_mb:,.0f} MiB = weights {est.weights_mb:,.0f} + activations "
         f"{est.activations_mb:,.0f}" + (f" + runtime {est.runtime_mb:,.0f}" if est.runtime_mb else "")),
    ]
    if est.seconds_per_step is not None and est.run_seconds is not None:
        rows.append(("time", f"{est.seconds_per_step:.2f} s/step, {est.run_seconds / 60:.1f} min for the run "
                     f"({est.timing})"))
        if est.job_seconds is not None and est.eval_seconds is not None:
            rows.append(("whole job", f"{est.job_seconds / 60:.1f} min = training {est.run_seconds / 60:.1f} + "
                         f"loading and evaluation {est.eval_seconds / 60:.1f}"))
    else:
        rows.append(("time", est.timing))
    if probed is not None:
        rows.append(("probe: measured memory", f"activations {probed['activations_mb']:,.0f} MiB, process peak "
                     f"{probed['peak_mb']:,.0f} MiB ({probed['memory']})"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def register_estimate(sub: Any) -> None:
    p = sub.add_parser("estimate", help="what a run will cost: parameters, sequence, memory, time (before launch)")
    add_spec_arguments(p)
    p.add_argument("--probe", action="store_true", help="measure a few real training steps for the time")
    p.add_argument("--probe-steps", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_estimate)
