"""Each default is written once, in the settings' dataclasses (core.spec, core.methods, a study's plan): the CLI's
flags, the New job form, the Study tab and the benchmark start from them."""

from __future__ import annotations

from dataclasses import replace

from core.spec import DEFAULT_STEPS, RECIPES, RunSpec, TrainConfig


def test_lamp_train_without_flags_is_the_default_run() -> None:
    from core.cli import spec_from_args
    from lamp.cli import build_parser

    spec = spec_from_args(build_parser().parse_args(["train"]))
    assert spec == RunSpec()


def test_the_new_job_form_starts_at_the_default_run() -> None:
    from app import forms

    spec, attempts = forms.settings_from_form(dict(forms.DEFAULTS))
    assert spec == replace(RunSpec(), train=replace(TrainConfig(), steps=DEFAULT_STEPS))  # the form shows the steps
    assert attempts == 3 and forms.PRESETS["Measured default"].values["steps"] == DEFAULT_STEPS


def test_the_study_cli_and_tab_share_the_plans_defaults() -> None:
    from app.study import STUDY_DEFAULTS
    from jobs.studies.plan import StudyPlan
    from lamp.cli import build_parser

    plan = StudyPlan(name="", base=RunSpec(), space={})
    a = build_parser().parse_args(["study", "start", "--name", "x"])
    assert (a.sampler, a.objectives, a.pruner, a.tolerance) == (plan.sampler, ",".join(plan.objectives),
                                                                plan.pruner, plan.tolerance)
    assert STUDY_DEFAULTS["tolerance"] / 100 == plan.tolerance and STUDY_DEFAULTS["pruner"] == plan.pruner


def test_the_benchmark_measures_the_default_run() -> None:
    from benchmarks.settings import BenchSettings
    from core.methods import LampConfig

    b, t, m = BenchSettings(), TrainConfig(), LampConfig()
    assert (b.batch_size, b.max_length, b.seed, b.accuracy_steps) == (t.batch_size, t.max_length, t.seed,
                                                                      DEFAULT_STEPS)
    assert (b.length, b.rank, b.default_pool, b.lr) == (m.length, m.rank, m.pool, RECIPES["lamp"].lr)
