"""A study's plan: what a person asked for (the base run, the knobs to sweep, grid or budget, objectives), and the
settings it stands for, checked before anything is written. Pure: no store, no Optuna."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from core.errors import ConfigError, Problem
from core.methods import LampConfig, method_config, method_to_dict
from core.spec import RunSpec, validate_spec

KNOBS = ("method", "length", "rank", "pool", "lr", "lr_scaling", "prompt_init", "seed")
OBJECTIVES: dict[str, Any] = {"accuracy": "maximize", "params": "minimize", "time": "minimize", "memory": "minimize"}
COSTS = ("params", "time", "memory")
COST_LABELS = {"params": "trainable parameters", "time": "training time (s)", "memory": "peak memory (MiB)"}
SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("median", "none")
MAX_GRID = 512
_RANK = LampConfig.rank
"""The rank of a swept method when the base run's has none (prompt tuning)."""


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
    """Recommend the cheapest setting whose accuracy is within this of the best (0.01 = one point)."""
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
            raise ConfigError((knob, f"{knob}: {item!r} is not a{'n' if kind is int else ''} {kind.__name__}; "
                                     "give a comma-separated list such as 4, 8, 16")) from None
        if value not in out:
            out.append(value)
    return out


def full_space(base: RunSpec, space: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Every knob with its values: the swept ones as given, the rest from the base run."""
    unknown = sorted(set(space) - set(KNOBS))
    if unknown:
        raise ConfigError(("space", f"cannot sweep {', '.join(unknown)}; the knobs are {', '.join(KNOBS)}"))
    m = method_to_dict(base.method)
    fixed: dict[str, Any] = {"method": base.method.name, "length": m.get("length"), "rank": m.get("rank", _RANK),
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


def checked_setting(base: RunSpec, params: dict[str, Any]) -> tuple[RunSpec | None, str | None]:
    """The run of a trial's knobs, or None and its first problem (settings only: validate_spec is pure)."""
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
        spec, problem = checked_setting(base, dict(zip(KNOBS, combo, strict=True)))
        if spec is None:
            why.append(problem or "invalid")
        elif canonical(spec) not in seen:
            seen.append(canonical(spec))
    return seen, why


def never_valid(base: RunSpec, space: dict[str, list[Any]]) -> list[Problem]:
    """A value no combination can use (lr=50, rank 64 beside lengths of 8) is a mistake, not a point to skip."""
    problems: list[Problem] = []
    for knob in KNOBS:
        for value in space[knob]:
            others = [space[k] if k != knob else [value] for k in KNOBS]
            failures = [checked_setting(base, dict(zip(KNOBS, combo, strict=True)))[1]
                        for combo in itertools.product(*others)]
            if failures and all(f is not None for f in failures):
                problems.append((knob, f"{knob}={value} fits no setting of this space: {failures[0]}"))
    return problems


def _plan_problems(plan: StudyPlan) -> list[Problem]:
    problems: list[Problem] = []
    try:
        validate_spec(plan.base)
    except ConfigError as exc:
        problems += exc.problems
    if not plan.name.strip():
        problems.append(("name", "name: give the study a name"))
    if plan.mode not in ("grid", "budget"):
        problems.append(("mode", f"mode={plan.mode!r}: choose grid or budget"))
    bad = [o for o in plan.objectives if o not in OBJECTIVES]
    repeated = len(set(plan.objectives)) < len(plan.objectives)
    if bad or repeated or not plan.objectives or plan.objectives[0] != "accuracy":
        problems.append(("objectives", f"objectives={','.join(plan.objectives)}: accuracy first, then any of "
                                       f"{', '.join(COSTS)} (e.g. accuracy,params)"))
    if plan.sampler not in SAMPLERS:
        problems.append(("sampler", f"sampler={plan.sampler!r}: choose {', '.join(SAMPLERS)}"))
    if plan.pruner not in PRUNERS:
        problems.append(("pruner", f"pruner={plan.pruner!r}: choose {', '.join(PRUNERS)}"))
    if not 0 <= plan.tolerance < 1:
        problems.append(("tolerance", f"tolerance={plan.tolerance}: a fraction of accuracy in [0, 1), e.g. 0.01 "
                                      "for one point"))
    if plan.parallel is not None and plan.parallel < 1:
        problems.append(("parallel", f"parallel={plan.parallel}: must be at least 1"))
    return problems


def check_plan(plan: StudyPlan) -> StudyPlan:
    """Every problem with a plan at once (ConfigError, each under its setting: a plan's field, a swept knob, or
    `space`), or the plan with its defaults filled in."""
    problems = _plan_problems(plan)
    if problems:
        raise ConfigError(*problems)
    space = full_space(plan.base, plan.space)
    size = math.prod(len(v) for v in space.values())
    if size > MAX_GRID:
        raise ConfigError(("space", f"the space has {size:,} combinations (at most {MAX_GRID}); sweep fewer values"))
    never = never_valid(plan.base, space)
    if never:
        raise ConfigError(*never)
    settings, why = distinct_settings(plan.base, space)
    if not settings:
        raise ConfigError(("space", "no valid setting in this space: " + "; ".join(sorted(set(why))[:3])))
    n = len(settings) if plan.mode == "grid" else plan.n_trials
    if n is None or n < 1:
        raise ConfigError(("trials", "trials: a budget study needs a number of trials (at least 1)"))
    if plan.mode == "budget" and n > len(settings):
        raise ConfigError(("trials", f"trials={n}: the space has only {len(settings)} distinct valid settings; "
                                     "ask for fewer trials or run it as a grid"))
    parallel = plan.parallel or (n if plan.mode == "grid" else min(2, n))
    return replace(plan, space=space, n_trials=n, parallel=parallel)
