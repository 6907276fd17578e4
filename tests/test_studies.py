"""Studies: plans, Optuna's own database, grids and budgets run as real jobs, pruning, cancel, the recommendation and
its relaunch, the CLI, and the Study tab's handlers (real SQLite store and queue; PostgreSQL + Redis once)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from test_jobs_support import tiny_spec, worker_store

from core.errors import ConfigError
from core.spec import RunSpec
from jobs import store
from jobs.db import read
from jobs.models import Status, Study, StudyTrial


@pytest.fixture()
def sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from worker_store(tmp_path, monkeypatch, "sqlite")


@pytest.fixture()
def base(tiny_llama_dir: Path, sentiment_csv: Path) -> RunSpec:
    return tiny_spec(tiny_llama_dir, sentiment_csv, steps=6, eval_every=2)


def _run_all() -> None:
    """Step the queue until it is empty, advancing studies as a worker's reaper would."""
    from jobs.queue import execute_next
    from jobs.studies.conduct import advance_all

    while True:
        ran = execute_next()
        advance_all()
        if not ran:
            from jobs.queue import huey

            if huey.pending_count() == 0:
                return


def _rows(study_id: int) -> tuple[Study, list[StudyTrial]]:
    study, trials, _ = read(store.study_snapshot, study_id=study_id)
    assert study is not None
    return study, trials


def _optuna_states(study: Study) -> dict[int, str]:
    import optuna

    main = optuna.load_study(study_name=study.optuna_name, storage=_storage())
    return {t.number: t.state.name for t in main.get_trials(deepcopy=False)}


def _storage() -> Any:
    from jobs.studies.optuna_db import storage

    return storage()


# ---- plans -------------------------------------------------------------------------------------------------------

def test_lists_parse_and_bad_values_are_named() -> None:
    from jobs.studies.plan import parse_list

    assert parse_list("4, 8,16, 8", int, "rank") == [4, 8, 16]
    assert parse_list("", float, "lr") == []
    with pytest.raises(ConfigError, match=r"rank: 'x' is not an int"):
        parse_list("4, x", int, "rank")


def test_a_grid_counts_distinct_valid_runs_only(base: RunSpec) -> None:
    from jobs.studies.plan import StudyPlan, check_plan

    # prompt tuning has no rank or pool: its 4 combinations are one run; rank 16 > length 8 is invalid for LAMP.
    plan = check_plan(StudyPlan(name="g", base=base, space={"method": ["lamp", "prompt-tuning"],
                                                            "rank": [2, 4, 16], "pool": [1, 2]}))
    assert plan.n_trials == 2 * 2 + 1 and plan.parallel == plan.n_trials and plan.mode == "grid"
    assert plan.space["length"] == [8] and plan.space["seed"] == [base.train.seed]


def test_every_method_sweeps_beside_lamp(base: RunSpec) -> None:
    """The paper's comparison in one study: each method's trials get the swept length and rank where it has them
    and its own defaults for the rest (residual-pt's bottleneck, dept's positions)."""
    from core.methods import METHODS, DeptConfig, ResidualPtConfig
    from jobs.studies.plan import StudyPlan, check_plan, setting_spec

    plan = check_plan(StudyPlan(name="all", base=base, space={"method": list(METHODS), "rank": [2]}))
    assert plan.n_trials == len(METHODS)
    specs = {m: setting_spec(base, {"method": m, "length": 8, "rank": 2, "pool": 1, "lr": None, "seed": 1})
             for m in METHODS}
    assert {m: s.method.name for m, s in specs.items()} == {m: m for m in METHODS}
    dept, residual = specs["dept"].method, specs["residual-pt"].method
    assert isinstance(dept, DeptConfig) and (dept.positions, dept.rank) == (256, 2)
    assert isinstance(residual, ResidualPtConfig) and residual.bottleneck == 400 and specs["ulpt"].method.length == 8


@pytest.mark.parametrize(("changes", "message"), [
    ({"objectives": ("params",)}, "accuracy first"),
    ({"objectives": ("accuracy", "speed")}, "accuracy first"),
    ({"mode": "budget", "n_trials": 50}, "only 2 distinct valid settings"),
    ({"mode": "budget", "n_trials": None}, "needs a number of trials"),
    ({"space": {"rank": [16, 32]}}, "rank=16 fits no setting"),
    ({"space": {"rank": list(range(1, 9)), "pool": [1, 2], "seed": list(range(40))}}, "at most 512"),
    ({"tolerance": 2.0}, "tolerance=2.0"),
    ({"pruner": "hyperband"}, "pruner='hyperband'"),
])
def test_bad_plans_say_what_to_change(base: RunSpec, changes: dict[str, Any], message: str) -> None:
    from jobs.studies.plan import StudyPlan, check_plan

    plan = StudyPlan(name="bad", base=base, space={"rank": [2, 4]})
    with pytest.raises(ConfigError, match=message):
        check_plan(replace(plan, **changes))


def test_optuna_keeps_its_own_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from jobs.studies.optuna_db import storage_url

    monkeypatch.delenv("LAMP_STUDY_DATABASE_URL", raising=False)
    assert storage_url(f"sqlite:///{tmp_path}/lamp.db") == f"sqlite:///{tmp_path}/studies.db"
    assert (storage_url("postgresql+psycopg://u:pw@db:5432/lamp")
            == "postgresql+psycopg://u:pw@db:5432/lamp_studies")
    monkeypatch.setenv("LAMP_STUDY_DATABASE_URL", f"sqlite:///{tmp_path}/lamp.db")
    with pytest.raises(ConfigError, match="needs its own database"):
        storage_url(f"sqlite:///{tmp_path}/lamp.db")


# ---- studies run as jobs -------------------------------------------------------------------------------------------

def test_a_grid_study_runs_every_setting_as_a_job_and_finds_the_front(sqlite_store: str, base: RunSpec,
                                                                      tmp_path: Path) -> None:
    from sqlalchemy import inspect

    from jobs.db import get_engine
    from jobs.studies.conduct import create_study
    from jobs.studies.plan import StudyPlan
    from jobs.studies.views import study_view

    plan = StudyPlan(name="grid", base=base, space={"method": ["lamp", "prompt-tuning"], "rank": [2, 4],
                                                    "lr": [0.05]}, pruner="none")
    study_id = create_study(plan)
    _study, trials = _rows(study_id)
    # Every grid point asked at once; prompt tuning's second rank is the same run as its first: skipped.
    assert sorted(t.state for t in trials) == ["RUNNING"] * 3 + ["SKIPPED"]
    skipped = next(t for t in trials if t.state == "SKIPPED")
    assert skipped.job_id is None and "same run as trial" in (skipped.note or "")
    _run_all()
    view = study_view(study_id)
    assert view.status == "DONE" and view.counts() == {"COMPLETE": 3, "SKIPPED": 1}
    # Optuna was told the same thing; its tables live in their own database, not in ours.
    assert sorted(_optuna_states(read(lambda session: session.get(Study, study_id))).values()) == \
        ["COMPLETE"] * 3 + ["FAIL"]
    assert not {"studies", "trials"} & set(inspect(get_engine()).get_table_names())
    assert (tmp_path / "studies.db").is_file()
    for t in view.trials:
        if t.job_id is not None:
            job = read(store.get_job, job_id=t.job_id)
            result = read(store.get_result, job_id=t.job_id)
            assert job is not None and job.status == Status.SUCCEEDED and result is not None
            assert t.params == result.trainable_params and t.accuracy is not None and 0 <= t.accuracy <= 1
            assert job.spec["train"]["lr"] == 0.05 and job.spec["method"]["name"] == t.setting["method"]
    # The fronts equal a brute-force dominance check, for every cost.
    for cost in ("params", "time", "memory"):
        for s in view.settings:
            dominated = any(o.accuracy >= s.accuracy and o.cost(cost) <= s.cost(cost)
                            and (o.accuracy > s.accuracy or o.cost(cost) < s.cost(cost)) for o in view.settings)
            assert s.front[cost] == (not dominated), (cost, s.setting)
    rec = view.recommendation
    assert rec is not None
    best = max(s.accuracy for s in view.settings)
    near = [s for s in view.settings if s.accuracy >= best - view.tolerance]
    assert rec.accuracy >= best - view.tolerance and rec.params == min(s.params for s in near)


def test_seeds_are_aggregated_as_mean_and_spread(sqlite_store: str, base: RunSpec) -> None:
    import statistics

    from jobs.studies.conduct import create_study
    from jobs.studies.plan import StudyPlan
    from jobs.studies.views import study_view

    study_id = create_study(StudyPlan(name="seeds", base=base, space={"seed": [1, 2, 3]}, pruner="none"))
    _run_all()
    view = study_view(study_id)
    assert len(view.settings) == 1
    setting = view.settings[0]
    accs = [t.accuracy for t in view.trials if t.accuracy is not None]
    assert setting.seeds == 3 and "seed" not in setting.setting
    assert len(accs) == 3 and setting.accuracy == pytest.approx(statistics.fmean(accs))
    assert setting.accuracy_std == pytest.approx(statistics.stdev(accs))
    tests = [t.test for t in view.trials if t.test is not None]  # test accuracy too: mean, spread, 95% interval
    assert len(tests) == 3 and setting.test == pytest.approx(statistics.fmean(tests))
    assert setting.test_std == pytest.approx(statistics.stdev(tests))
    assert setting.test_ci95 == pytest.approx(4.303 * statistics.stdev(tests) / 3**0.5)


def test_the_recipe_knobs_sweep_like_the_others(sqlite_store: str, base: RunSpec) -> None:
    from jobs.studies.conduct import create_study
    from jobs.studies.plan import StudyPlan, describe
    from jobs.studies.views import study_view

    space: dict[str, list[Any]] = {"lr_scaling": ["absolute", "relative"], "prompt_init": ["vocab", "text"],
                                   "lr": [0.05]}
    study_id = create_study(StudyPlan(name="recipe", base=base, space=space, pruner="none"))
    _run_all()
    view = study_view(study_id)
    assert view.counts() == {"COMPLETE": 4}
    assert {(s.setting["lr_scaling"], s.setting["prompt_init"]) for s in view.settings} == \
        {(a, b) for a in ("absolute", "relative") for b in ("vocab", "text")}
    for t in view.trials:
        job = read(store.get_job, job_id=t.job_id)
        assert job is not None
        assert (job.spec["train"]["lr_scaling"], job.spec["train"]["prompt_init"]) == \
            (t.setting["lr_scaling"], t.setting["prompt_init"])
        assert f"lr-scaling={t.setting['lr_scaling']} prompt-init={t.setting['prompt_init']}" in describe(t.setting)


def test_the_pruner_stops_a_hopeless_trial_and_its_job_ends_pruned(sqlite_store: str, base: RunSpec) -> None:
    import optuna

    from jobs.studies.conduct import create_study
    from jobs.studies.plan import StudyPlan
    from jobs.studies.views import study_view

    study_id = create_study(StudyPlan(name="prune", base=base, space={"rank": [2]}, pruner="median"))
    study, _trials = _rows(study_id)
    # Three earlier trials that scored 1.0 at every evaluation: anything below is under their median.
    twin = optuna.load_study(study_name=f"{study.optuna_name}:pruning", storage=_storage())
    for _ in range(3):
        twin.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={2: 1.0, 4: 1.0, 6: 1.0}))
    _run_all()
    view = study_view(study_id)
    trial = view.trials[0]
    job = read(store.get_job, job_id=trial.job_id)
    assert job is not None
    if trial.accuracy == 1.0:  # the tiny random model got every validation example right: nothing to prune
        pytest.fail("the tiny model scored 1.0; the test needs a weaker one")
    assert job.status == Status.PRUNED and trial.state == "PRUNED"
    assert job.error is not None and job.error.startswith("pruned at step 2")
    assert job.total_steps == 6 and job.step == 2
    assert view.status == "DONE" and _optuna_states(study) == {0: "PRUNED"}
    assert read(store.get_result, job_id=job.id) is None
    from app import monitor  # the Jobs tab shows it as pruned, with the reason, and can run it again in full

    details = monitor.job_details(job.id)
    assert details.can_retry and details.error.startswith("pruned at step 2")
    rerun = read(store.get_job, job_id=monitor.retry_job(job.id))
    assert rerun is not None and rerun.status == Status.QUEUED and rerun.spec == job.spec


def test_a_budget_study_keeps_parallel_trials_in_flight(sqlite_store: str, base: RunSpec) -> None:
    from jobs.studies.conduct import create_study
    from jobs.studies.plan import StudyPlan
    from jobs.studies.views import study_view

    plan = StudyPlan(name="budget", base=base, space={"rank": [1, 2, 4], "pool": [1, 2], "lr": [0.05, 0.1]},
                     mode="budget", n_trials=3, parallel=2, objectives=("accuracy", "params", "time"),
                     pruner="none")
    study_id = create_study(plan)
    assert len([t for t in _rows(study_id)[1] if t.state == "RUNNING"]) == 2  # not all three at once
    _run_all()
    view = study_view(study_id)
    launched = [t for t in view.trials if t.state != "SKIPPED"]
    assert view.status == "DONE" and len(launched) == 3
    assert all(t.state == "COMPLETE" for t in launched)
    assert len({json.dumps(t.setting, sort_keys=True) for t in launched}) == 3
    study, _ = _rows(study_id)
    import optuna

    main = optuna.load_study(study_name=study.optuna_name, storage=_storage())
    assert [d.name for d in main.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    done = [t for t in main.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3 and all(len(t.values) == 3 for t in done)


def test_cancelling_a_study_cancels_its_jobs_and_asks_no_more(sqlite_store: str, base: RunSpec) -> None:
    from jobs.studies.conduct import cancel_study, create_study
    from jobs.studies.plan import StudyPlan
    from jobs.studies.views import study_view

    study_id = create_study(StudyPlan(name="stop", base=base, space={"rank": [1, 2, 4]}, parallel=2))
    assert cancel_study(study_id) == 2
    _run_all()
    view = study_view(study_id)
    assert view.status == "CANCELLED" and view.counts() == {"FAIL": 2}
    for t in view.trials:
        job = read(store.get_job, job_id=t.job_id)
        assert job is not None and job.status == Status.CANCELLED


def test_reading_a_study_never_advances_it_and_the_workers_hooks_do(sqlite_store: str, base: RunSpec,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from jobs import runner
    from jobs.hooks import WorkerHooks
    from jobs.queue import execute_next
    from jobs.studies.conduct import create_study, worker_hooks
    from jobs.studies.plan import StudyPlan
    from jobs.studies.views import study_view
    from lamp.cli import main

    plan = StudyPlan(name="reads", base=base, space={"rank": [1, 2]}, pruner="none")
    study_id = create_study(plan)
    monkeypatch.setattr(runner.settings, "hooks", WorkerHooks())  # a worker without the studies' hooks
    while execute_next():
        pass
    view = study_view(study_id)
    assert main(["study", "show", str(study_id), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "RUNNING"
    study, trials = _rows(study_id)  # the page and the CLI read the jobs' outcome, and wrote nothing
    assert study.status == "RUNNING" and [t.state for t in trials] == ["RUNNING", "RUNNING"]
    assert [t.state for t in view.trials] == ["SUCCEEDED", "SUCCEEDED"]
    worker_hooks().sweep[0]()  # the reaper's pass of a worker that has them tells Optuna
    assert _rows(study_id)[0].status == "DONE"

    monkeypatch.setattr(runner.settings, "hooks", worker_hooks())  # each job's end advances its study at once
    again = create_study(replace(plan, name="hooks"))
    while execute_next():
        pass
    study, trials = _rows(again)
    assert study.status == "DONE" and [t.state for t in trials] == ["COMPLETE", "COMPLETE"]


def test_the_recommendation_relaunches_on_a_larger_budget(sqlite_store: str, base: RunSpec) -> None:
    from dataclasses import replace

    from jobs.studies.conduct import create_study, relaunch
    from jobs.studies.plan import StudyPlan
    from jobs.studies.views import study_view

    sampled = replace(base, data=replace(base.data, max_test_examples=4))  # trials score a sample of the test split
    study_id = create_study(StudyPlan(name="again", base=sampled, space={"rank": [1, 2]}, pruner="none"))
    _run_all()
    rec = study_view(study_id).recommendation
    assert rec is not None
    job = read(store.get_job, job_id=relaunch(study_id))
    assert job is not None and job.status == Status.QUEUED
    assert job.spec["train"]["steps"] == 4 * 6
    assert job.spec["method"]["rank"] == rec.setting["rank"]
    assert job.spec["data"]["max_test_examples"] is None  # the relaunch scores the whole split
    job2 = read(store.get_job, job_id=relaunch(study_id, steps=10))
    assert job2 is not None and job2.spec["train"]["steps"] == 10


def test_the_cli_starts_shows_and_exports_a_study(sqlite_store: str, tiny_llama_dir: Path, sentiment_csv: Path,
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lamp.cli import main

    args = ["study", "start", "--name", "cli", "--model", str(tiny_llama_dir), "--train", str(sentiment_csv),
            "--text-column", "review", "--label-column", "verdict", "--steps", "4", "--batch-size", "4",
            "--eval-every", "2", "--max-eval-examples", "8", "--max-test-examples", "8", "--device", "cpu",
            "--threads", "1", "--method", "lamp", "--length", "8", "--rank", "2,4", "--pool", "2", "--lr", "0.05",
            "--pruner", "none", "--json"]
    assert main(args) == 0
    started = json.loads(capsys.readouterr().out)
    assert started["study"] >= 1 and len(started["jobs"]) == 2
    _run_all()
    csv_path, charts = tmp_path / "study.csv", tmp_path / "charts"
    assert main(["study", "show", str(started["study"]), "--json", "--csv", str(csv_path), "--charts",
                 str(charts)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "DONE" and shown["counts"] == {"COMPLETE": 2}
    assert sorted(t["job_id"] for t in shown["trials"]) == sorted(started["jobs"])
    assert shown["recommendation"]["setting"]["rank"] in (2, 4)
    assert csv_path.read_text().splitlines()[0].startswith("setting,method,length,rank,pool,lr,seeds,val_mean")
    pages = sorted(p.name for p in charts.iterdir())
    assert pages == [f"study-{started['study']}-pareto-{c}.html" for c in ("memory", "params", "time")]
    page = (charts / pages[1]).read_text().replace("\\u002f", "/")  # the figure's JSON escapes slashes
    assert f'http://127.0.0.1:7860/?job={started["jobs"][0]}' in page
    assert main(["study", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "cli"
    assert main([*args[:-1], "--rank", "2,x"]) == 2
    assert "rank: 'x' is not an int" in capsys.readouterr().err


def test_a_study_on_postgres_and_redis_keeps_optuna_in_its_own_database(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       base: RunSpec) -> None:
    from jobs.studies.conduct import create_study
    from jobs.studies.optuna_db import storage_url
    from jobs.studies.plan import StudyPlan
    from jobs.studies.views import study_view

    for url in worker_store(tmp_path, monkeypatch, "redis+postgres"):
        study_id = create_study(StudyPlan(name="pg", base=base, space={"rank": [1, 2]}, pruner="none"))
        _run_all()
        view = study_view(study_id)
        assert view.status == "DONE" and view.counts() == {"COMPLETE": 2}
        assert storage_url(url) == make_url(url).set(database=f"{make_url(url).database}_studies").render_as_string(
            hide_password=False)
        ours = create_engine(url)
        with ours.connect() as conn:
            tables = {r[0] for r in conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname='public'"))}
        ours.dispose()
        assert "lamp_studies" in tables and "trials" not in tables


# ---- the Study tab's handlers ---------------------------------------------------------------------------------------

def _study_form(model: Path, **changes: Any) -> dict[str, Any]:
    from app.study import STUDY_DEFAULTS

    form = {**STUDY_DEFAULTS, "model": str(model), "steps": 4, "batch_size": 4, "eval_every": 2,
            "max_eval_examples": 8, "device": "cpu", "methods": ["lamp"], "lengths": "8", "ranks": "2, 4",
            "pools": "2", "lrs": "0.05", "seeds": "1", "pruner": "none"}
    return {**form, **changes}


@pytest.mark.parametrize(("changes", "field"), [
    ({"ranks": "4, x"}, "ranks"),
    ({"methods": []}, "methods"),
    ({"mode": "budget", "trials": None}, "trials"),
    ({"objectives": []}, "objectives"),
    ({"ranks": "64"}, "ranks"),
    ({"steps": 0}, "steps"),
    ({"lrs": "0.01, 50"}, "lrs"),
])
def test_study_form_problems_land_beside_their_fields(tiny_llama_dir: Path, changes: dict[str, Any],
                                                      field: str, access: Any) -> None:
    from app.forms import FormError
    from app.study import STUDY_FIELDS, plan_from_form

    with pytest.raises(FormError) as caught:
        plan_from_form(_study_form(tiny_llama_dir, **changes), access)
    assert field in caught.value.problems and set(caught.value.problems) <= set(STUDY_FIELDS)


def test_study_form_builds_the_plan_and_says_what_it_will_launch(sqlite_store: str, tiny_llama_dir: Path,
                                                                  access: Any) -> None:
    from app.study import plan_from_form, plan_text

    plan = plan_from_form(_study_form(tiny_llama_dir, methods=["lamp", "prompt-tuning"], objectives=["time"],
                                      tolerance=2), access)
    assert plan.objectives == ("accuracy", "time") and plan.tolerance == pytest.approx(0.02)
    assert plan.space["method"] == ["lamp", "prompt-tuning"] and plan.space["rank"] == [2, 4]
    assert plan.base.data.max_eval_examples == 8 and plan.base.train.steps == 4
    assert plan.base.data.max_test_examples == 200  # the form's cap on each trial's test split
    assert "a grid of **3** distinct runs" in plan_text(plan)  # prompt tuning's two ranks are one run
    assert "each 4 steps" in plan_text(plan) and "no earlier job on this model and data" in plan_text(plan)
    ten = plan_from_form(_study_form(tiny_llama_dir, methods=["lamp"], objectives=["time"], steps=10), access)
    assert "each 10 steps" in plan_text(ten)  # the preview follows the steps field
    from app.forms import FormError

    with pytest.raises(FormError) as caught:  # the browser names the form's fields, not CLI flags
        plan_from_form(_study_form(tiny_llama_dir, ranks="64", lengths="8"), access)
    assert "--rank" not in caught.value.problems["ranks"] and "Rank" in caught.value.problems["ranks"]


def test_study_tab_shows_fronts_links_tables_and_the_recommendation(sqlite_store: str, tiny_llama_dir: Path,
                                                                   access: Any) -> None:
    from app import study as tab
    from jobs.studies.views import study_view

    study_id = tab.launch(tab.plan_from_form(_study_form(tiny_llama_dir, seeds="1, 2"), access))
    assert (study_id, ) == tuple(i for _, i in tab.study_choices())
    _run_all()
    view = study_view(study_id)
    figs = tab.pareto_figures(view)
    assert len(figs) == 3
    names = [t.name for t in figs[0].data]
    assert "Pareto front" in names and "recommended" in names
    links = [a.text for a in figs[0].layout.annotations]
    assert links and all(re.fullmatch(r'<a href="http://127.0.0.1:7860/\?job=\d+">#\d+</a>', str(x)) for x in links)
    shifted = tab.pareto_figure(view, "time", "https://lamp.example/studio/")
    assert all("https://lamp.example/studio/?job=" in str(a.text) for a in shifted.layout.annotations)
    assert len(links) == len(view.settings)
    settings = tab.settings_frame(view)
    assert len(settings) == 2 and set(settings["seeds"]) == {2} and settings["recommended"].sum() == 1
    assert (settings["val_std"] >= 0).all()
    trials = tab.trials_frame(view)
    assert len(trials) == 4 and set(trials["state"]) == {"COMPLETE"}
    assert "Recommended:" in tab.recommendation_text(view) and "?job=" in tab.recommendation_text(view)
    assert Path(tab.study_csv(view)).read_text().count("\n") == 3
    from app import monitor

    assert f"of [study #{study_id} " in monitor.job_details(view.trials[0].job_id).markdown
