"""`lamp study start | list | show | cancel | relaunch` (registered by jobs.cli). `show` only reads: the workers
advance a study (jobs.studies.conduct); its CSV and charts come from jobs.studies.report, as the Study tab's do."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from core.cli import add_spec_arguments, spec_from_args
from core.spec import DEFAULT_METHOD, RunSpec, TrainConfig
from jobs.studies.optuna_db import PRUNE_AFTER_TRIALS
from jobs.studies.plan import StudyPlan

_PLAN = StudyPlan(name="", base=RunSpec(), space={})
"""A plan's own defaults: the flags below read them."""
SWEPT = {"method": str, "length": int, "rank": int, "pool": int, "lr": float, "lr_scaling": str, "prompt_init": str,
         "seed": int}


def plan_from_args(a: argparse.Namespace) -> Any:
    """The study plan of `lamp study start`: the run flags give the base run, the swept ones lists of values."""
    from jobs.studies.plan import parse_list

    space = {k: parse_list(getattr(a, k), kind, k) for k, kind in SWEPT.items()}
    single = argparse.Namespace(**vars(a))
    for knob, values in space.items():  # the base run takes each knob's first value
        setattr(single, knob, values[0] if values else None)
    if single.seed is None:
        single.seed = TrainConfig.seed
    if single.method is None:
        single.method = DEFAULT_METHOD
    base = spec_from_args(single)
    objectives = tuple(o.strip() for o in a.objectives.split(",") if o.strip())
    return StudyPlan(name=a.name, base=base, space={k: v for k, v in space.items() if v},
                     mode="budget" if a.trials is not None else "grid", n_trials=a.trials, objectives=objectives,
                     sampler=a.sampler, parallel=a.parallel, pruner=a.pruner, tolerance=a.tolerance)


def cmd_start(a: argparse.Namespace) -> int:
    from jobs.db import read, upgrade_database
    from jobs.store import study_jobs
    from jobs.studies.conduct import create_study

    plan = plan_from_args(a)
    upgrade_database()
    study_id = create_study(plan)
    jobs = read(study_jobs, study_id=study_id)
    if a.json:
        print(json.dumps({"study": study_id, "jobs": jobs}))
    else:
        print(f"study {study_id}: {len(jobs)} job(s) queued: {', '.join(map(str, jobs))}")
        print(f"follow it with `lamp study show {study_id} --wait`, or in the dashboard's Study tab")
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    from jobs.db import read, upgrade_database
    from jobs.store import list_studies

    upgrade_database()
    rows = [{"id": s.id, "name": s.name, "status": s.status, "mode": s.mode, "trials": s.n_trials,
             "objectives": s.objectives, "created_at": s.created_at.isoformat() + "Z"}
            for s in read(list_studies, limit=a.limit)]
    if a.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(f"{r['id']:>4}  {r['status']:<9}  {r['mode']:<6}  {r['trials']:>3} trials  {r['name']}")
    return 0


def _trial_line(t: Any) -> str:
    from jobs.studies.plan import describe

    acc = f"{t.accuracy:.4f}" if t.accuracy is not None else "-"
    cost = f"{t.params:,} params, {t.time:.1f} s, {t.memory:,.0f} MiB" if t.params is not None else ""
    note = (t.note or "").splitlines()[-1:] if t.state in ("PRUNED", "FAIL", "SKIPPED") else []
    return (f"  #{t.number:<3} {t.state:<9} job {t.job_id if t.job_id is not None else '-':<5} "
            f"{describe(t.setting)} seed={t.setting.get('seed')}  val {acc}  {cost}{'  ' + note[0] if note else ''}")


def _print_view(view: Any) -> None:
    from jobs.studies.plan import describe

    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(view.counts().items()))
    print(f"study {view.id} '{view.name}': {view.status} ({view.mode}, objectives {', '.join(view.objectives)}, "
          f"pruner {view.pruner}); trials: {counts}")
    for t in view.trials:
        print(_trial_line(t))
    if view.settings:
        print(f"settings (mean over seeds; * on the front of {view.metric or 'accuracy'} against "
              "params / time / memory):")
        for s in view.settings:
            marks = "".join("*" if s.front[c] else "." for c in ("params", "time", "memory"))
            test = (f"  test {s.test:.4f} ± {s.test_std:.4f} [{s.test - s.test_ci95:.4f}-{s.test + s.test_ci95:.4f}]"
                    if s.test is not None else "")
            print(f"  {marks} {describe(s.setting):<40} val {s.accuracy:.4f} ± {s.accuracy_std:.4f} "
                  f"(n={s.seeds}){test}  {s.params:,.0f} params  {s.time:.1f} s  {s.memory:,.0f} MiB")
    rec = view.recommendation
    if rec is not None:
        print(f"recommendation (cheapest within {view.tolerance:g} of the best): {describe(rec.setting)} "
              f"val {rec.accuracy:.4f}, {rec.params:,.0f} params; `lamp study relaunch {view.id}` runs it longer")


def view_json(view: Any) -> dict[str, Any]:
    from dataclasses import asdict

    def setting(s: Any) -> dict[str, Any]:
        return {"setting": s.setting, "seeds": s.seeds, "accuracy": s.accuracy, "accuracy_std": s.accuracy_std,
                "test": s.test, "test_std": s.test_std, "test_ci95": s.test_ci95, "params": s.params,
                "time": s.time, "memory": s.memory, "front": s.front, "jobs": [t.job_id for t in s.trials]}

    return {"id": view.id, "name": view.name, "status": view.status, "mode": view.mode, "sampler": view.sampler,
            "objectives": view.objectives, "pruner": view.pruner, "tolerance": view.tolerance,
            "metric": view.metric, "counts": view.counts(), "trials": [asdict(t) for t in view.trials],
            "settings": [setting(s) for s in view.settings],
            "recommendation": setting(view.recommendation) if view.recommendation else None}


def cmd_show(a: argparse.Namespace) -> int:
    from jobs.db import upgrade_database
    from jobs.studies.views import study_view

    upgrade_database()
    last = ""
    while True:
        view = study_view(a.id)  # reads only: the workers advance the study
        if not a.wait or view.status != "RUNNING":
            break
        line = ", ".join(f"{n} {s.lower()}" for s, n in sorted(view.counts().items()))
        if line != last:
            print(f"{time.strftime('%H:%M:%S')} study {a.id}: {line}", file=sys.stderr, flush=True)
            last = line
        time.sleep(a.poll)
    if a.csv:
        from jobs.studies.report import settings_frame

        settings_frame(view).to_csv(a.csv, index=False)
    if a.charts:
        from jobs.studies.report import DEFAULT_LINK_BASE, write_charts

        for path in write_charts(view, Path(a.charts), a.link_base or DEFAULT_LINK_BASE):
            print(f"wrote {path}", file=sys.stderr)
    if a.json:
        print(json.dumps(view_json(view)))
    else:
        _print_view(view)
    return 0


def cmd_cancel(a: argparse.Namespace) -> int:
    from jobs.db import upgrade_database
    from jobs.studies.conduct import cancel_study

    upgrade_database()
    n = cancel_study(a.id)
    print(f"study {a.id}: CANCELLED; {n} queued or running job(s) asked to stop")
    return 0


def cmd_relaunch(a: argparse.Namespace) -> int:
    from jobs.db import upgrade_database
    from jobs.studies.conduct import relaunch

    upgrade_database()
    job_id = relaunch(a.id, steps=a.steps)
    print(json.dumps({"id": job_id}) if a.json else f"job {job_id}: the recommended setting, queued")
    return 0


def register(sub: Any) -> None:
    study = sub.add_parser("study", help="sweep rank / length / pool / lr / seeds as a study of jobs (Optuna)")
    ssub = study.add_subparsers(dest="study_command", required=True, metavar="COMMAND")

    p = ssub.add_parser("start", conflict_handler="resolve", help="start a study: a grid, or --trials N chosen "
                        "by a multi-objective sampler; prints its id and job ids")
    add_spec_arguments(p)
    g = p.add_argument_group("the knobs to sweep (comma-separated lists; one value = fixed)")
    g.add_argument("--method", default=None, help=f"e.g. lamp,prompt-tuning,dpt (default {DEFAULT_METHOD})")
    g.add_argument("--length", default=None, help="soft prompt tokens, e.g. 20,100")
    g.add_argument("--rank", default=None, help="e.g. 4,8,16")
    g.add_argument("--pool", default=None, help="e.g. 1,4")
    g.add_argument("--lr", default=None, help="e.g. 0.003,0.01,0.03 (default: the method's measured default)")
    g.add_argument("--lr-scaling", default=None, help="absolute,relative (default: the method's recipe)")
    g.add_argument("--prompt-init", default=None, help="vocab,text (default: the method's recipe)")
    g.add_argument("--seed", default=None,
                   help=f"seeds to repeat each setting with, e.g. 1,2,3 (default {TrainConfig.seed})")
    g = p.add_argument_group("the study")
    g.add_argument("--name", required=True, help="a name to find it by")
    g.add_argument("--trials", type=int, default=None,
                   help="a budget of N trials chosen by the sampler (default: the full grid)")
    g.add_argument("--sampler", default=_PLAN.sampler, choices=["tpe", "nsga2", "random"],
                   help="budget studies: multi-objective TPE (default), NSGA-II or random")
    g.add_argument("--objectives", default=",".join(_PLAN.objectives),
                   help="accuracy, then the costs to minimise: params, time, memory (default "
                        f"{','.join(_PLAN.objectives)})")
    g.add_argument("--parallel", type=int, default=None,
                   help="trials queued at once (default: the whole grid; 2 for a budget)")
    g.add_argument("--pruner", default=_PLAN.pruner, choices=["median", "none"],
                   help="stop trials whose validation metric is below the median of earlier trials at the same "
                        f"step (default {_PLAN.pruner}; it waits for {PRUNE_AFTER_TRIALS} finished trials)")
    g.add_argument("--tolerance", type=float, default=_PLAN.tolerance,
                   help=f"recommend the cheapest setting within this of the best accuracy (default {_PLAN.tolerance})")
    g.add_argument("--json", action="store_true", help='print {"study": ID, "jobs": [...]}')
    p.set_defaults(handler=cmd_start)

    p = ssub.add_parser("list", help="the studies, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_list)

    p = ssub.add_parser("show", help="a study's trials, settings over seeds, Pareto fronts and recommendation")
    p.add_argument("id", type=int)
    p.add_argument("--wait", action="store_true", help="poll until the study is done, printing progress")
    p.add_argument("--poll", type=float, default=5.0, help=argparse.SUPPRESS)
    p.add_argument("--csv", default=None, help="write the settings table (mean and spread over seeds) here")
    p.add_argument("--charts", default=None, metavar="DIR",
                   help="write the Pareto charts (HTML) of accuracy against params, time and memory into DIR")
    p.add_argument("--link-base", default=None,
                   help="the dashboard's address: each chart point links to <link-base>?job=N (default: the "
                        "address `lamp serve` listens on by default)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_show)

    p = ssub.add_parser("cancel", help="stop a study: no new trials, its queued and running jobs cancelled")
    p.add_argument("id", type=int)
    p.set_defaults(handler=cmd_cancel)

    p = ssub.add_parser("relaunch", help="run the study's recommended setting again on a larger step budget")
    p.add_argument("id", type=int)
    p.add_argument("--steps", type=int, default=None, help="default: 4x the study's steps")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_relaunch)

