"""The New job form as plain functions: form values -> RunSpec, problems -> the field at fault, presets, the
trainable-parameter count for the chosen knobs."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.access import Access, check_data_dir, check_model
from core.errors import ConfigError, DataError, LampError, ProblemsError
from core.inputs import check_inputs
from core.methods import METHODS, DeptConfig, LampConfig, ResidualPtConfig, UlptConfig, method_config
from core.spec import (
    DEFAULT_METHOD,
    DEFAULT_STEPS,
    MLFLOW_ENV,
    PAPER,
    RECIPES,
    TENSORBOARD_ENV,
    DataConfig,
    ModelConfig,
    RunSpec,
    TrainConfig,
    recipe_words,
    validate_spec,
)
from core.tasks import BUILTIN_TASKS
from jobs import DEFAULT_MAX_ATTEMPTS

OWN_DATA = "my own file"
SOURCES = ("built-in task", OWN_DATA)

# Every input of the form, in the order the handlers receive them.
FIELDS = (
    "model", "dtype", "quantize", "source", "task", "data_file", "text_column", "template", "label_column", "kind",
    "method", "length", "rank", "pool", "bottleneck", "positions", "pair_lr", "steps", "batch_size", "lr",
    "weight_decay", "max_length", "eval_every",
    "seed", "device", "max_attempts", "init_from", "data_dir", "strict", "lr_scaling", "prompt_init",
    "max_test_examples",
)
_M, _D, _T, _LAMP = ModelConfig(), DataConfig(), TrainConfig(), LampConfig()
_RES, _DEPT, _ULPT = ResidualPtConfig(), DeptConfig(), UlptConfig()
RECIPE_CHOICE = "method's default"
"""The lr-scaling / prompt-start value that leaves the choice to the method's recipe (core.spec.RECIPES)."""
"""The settings' own defaults (core.spec, core.methods): the form starts from them, so each is written once."""
DEFAULTS: dict[str, Any] = {
    "model": _M.name, "dtype": _M.dtype, "quantize": _M.quantize, "source": "built-in task", "data_dir": None,
    "task": _D.task, "data_file": "", "text_column": None, "template": "", "label_column": None, "kind": _D.kind,
    "method": DEFAULT_METHOD, "length": _LAMP.length, "rank": _LAMP.rank, "pool": _LAMP.pool,
    "bottleneck": ResidualPtConfig.bottleneck, "positions": DeptConfig.positions, "pair_lr": DeptConfig.pair_lr,
    "steps": DEFAULT_STEPS, "batch_size": _T.batch_size, "lr": "", "weight_decay": _T.weight_decay,
    "max_length": _T.max_length, "eval_every": _T.eval_every, "seed": _T.seed, "device": _T.device,
    "max_attempts": DEFAULT_MAX_ATTEMPTS, "init_from": "", "strict": _D.strict, "lr_scaling": RECIPE_CHOICE,
    "prompt_init": RECIPE_CHOICE, "max_test_examples": "",
}
_RUN = {"steps": DEFAULT_STEPS, "batch_size": _T.batch_size, "lr_scaling": RECIPE_CHOICE, "prompt_init": RECIPE_CHOICE,
        "max_test_examples": ""}
QUICK_TEST_EXAMPLES = 100
"""Test examples a Quick look scores (the whole split of Rotten Tomatoes is 1,000: minutes on a CPU)."""
"""What the baselines share with the measured default run."""


@dataclass(frozen=True)
class Preset:
    label: str
    note: str
    values: dict[str, Any] = field(default_factory=dict)


PRESETS = {
    p.label: p for p in (
        Preset("Measured default", f"LAMP l={_LAMP.length}, r={_LAMP.rank}, p={_LAMP.pool}, {DEFAULT_STEPS} steps, "
               f"{recipe_words(DEFAULT_METHOD)}: the settings measured on the offline models, the cheap choice: "
               "0.09x prompt tuning's parameters; 0.4-1.1 points below it on Rotten Tomatoes, level with it on "
               "Gemma 3's debates and 4 below on SmolLM2's (both offline models, 3 seeds each; README, Choosing "
               "defaults).",
               {"method": DEFAULT_METHOD, "length": _LAMP.length, "rank": _LAMP.rank, "pool": _LAMP.pool,
                "lr": None, **_RUN, "max_length": _T.max_length, "eval_every": _T.eval_every}),
        Preset("Quick look", f"A short LAMP run (l=20, p=1, 40 steps, the first {QUICK_TEST_EXAMPLES} test examples "
               "scored) to check data and settings in a few minutes.",
               {"method": "lamp", "length": 20, "rank": 4, "pool": 1, "lr": None, "steps": 40, "batch_size": 8,
                "max_length": 128, "eval_every": 20, "lr_scaling": RECIPE_CHOICE, "prompt_init": RECIPE_CHOICE,
                "max_test_examples": QUICK_TEST_EXAMPLES}),
        Preset("Paper (T5 recipe)", "The paper's T5 settings: l=100, r=8, lr 0.3, batch 16, max length 256. lr 0.3 "
               "diverges on small decoder-only models such as the default one.",
               {"method": "lamp", "length": 100, "rank": 8, "pool": 1, "lr": PAPER.lr, "steps": 150, "batch_size": 16,
                "max_length": 256, "eval_every": 50, "lr_scaling": PAPER.lr_scaling, "prompt_init": PAPER.prompt_init,
                "max_test_examples": ""}),
        Preset("Prompt tuning baseline", f"Vanilla soft prompt (Lester et al. 2021), l={_LAMP.length}: at 150 steps "
               "more accurate than LAMP on Rotten Tomatoes (0.4-1.1 points, both offline models) and on SmolLM2's "
               "debates (4 points), level with it on Gemma 3's (3 seeds each), with 10x its parameters and "
               f"{_LAMP.pool}x the prompt tokens (README, Choosing defaults).",
               {"method": "prompt-tuning", "length": _LAMP.length, "lr": None, **_RUN}),
        Preset("DPT baseline", f"P = A B with random A (l x r), B (r x d) (Xiao et al. 2023), l={_LAMP.length}, "
               f"r={_LAMP.rank}.", {"method": "dpt", "length": _LAMP.length, "rank": _LAMP.rank, "lr": None, **_RUN}),
        Preset("Residual PT baseline", f"The prompt through a residual network with a {_RES.bottleneck}-wide "
               f"bottleneck (Razdaibiedina et al. 2023), l={_RES.length}; folded into a plain prompt after training.",
               {"method": "residual-pt", "length": _RES.length, "bottleneck": _RES.bottleneck, "lr": None, **_RUN}),
        Preset("DePT baseline", f"A {_DEPT.length}-token prompt plus a rank-{_DEPT.rank} offset A B on the input's "
               f"first {_DEPT.positions} token embeddings (Shi and Lipani 2024): the most accurate method measured "
               "on the offline model (Rotten Tomatoes, 3 seeds), with prompt tuning's parameter count and fewer "
               "prompt tokens.",
               {"method": "dept", "length": _DEPT.length, "rank": _DEPT.rank, "positions": _DEPT.positions,
                "pair_lr": _DEPT.pair_lr, "lr": None, **_RUN}),
        Preset("ULPT baseline", f"The prompt learned in r={_ULPT.rank} dimensions and lifted by a frozen random "
               f"projection, then scaled and shifted (Wu et al. 2025), l={_ULPT.length}.",
               {"method": "ulpt", "length": _ULPT.length, "rank": _ULPT.rank, "lr": None, **_RUN}),
    )
}


class FormError(LampError):
    """Problems with the form, each attached to the field at fault ("" for the form as a whole)."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("\n".join(f"{k or 'form'}: {v}" for k, v in problems.items()))
        self.problems = problems


FIELD_OF_SETTING = {
    "model": "model", "dtype": "dtype", "quantize": "quantize", "task": "task", "data_dir": "data_dir",
    "train_file": "data_file", "eval_file": "data_file", "text_column": "text_column", "template": "template",
    "label_column": "label_column", "kind": "kind", "strict": "strict", "method": "method", "init": "method",
    "length": "length", "rank": "rank", "pool": "pool", "bottleneck": "bottleneck", "positions": "positions",
    "pair_lr": "pair_lr", "steps": "steps", "epochs": "steps",
    "batch_size": "batch_size", "lr": "lr", "weight_decay": "weight_decay", "max_length": "max_length",
    "eval_every": "eval_every", "checkpoint_every": "eval_every", "seed": "seed", "device": "device",
    "init_from": "init_from", "max_attempts": "max_attempts", "lr_scaling": "lr_scaling", "prompt_init": "prompt_init",
    "prompt_init_text": "prompt_init", "max_test_examples": "max_test_examples",
}
"""core's settings (the names its problems carry) -> the form field a person has to change."""


def field_of(setting: str | None) -> str:
    """The form field of a setting ("" when the form has none: the problem is shown for the whole form)."""
    return FIELD_OF_SETTING.get(setting or "", "")


FORM_WORDS = {
    "--rank": "Rank", "--length": "Prompt length", "--pool": "Pool", "--lr": "Learning rate", "--steps": "Steps",
    "--epochs": "Steps", "--batch-size": "Batch size", "--max-length": "Max length", "--eval-every": "Evaluate every",
    "--text-column": "Text column", "--label-column": "Label column", "--template": "Template", "--seed": "Seed",
    "--init-from": "Start from job", "--quantize": "Quantize", "--dtype": "dtype", "--device": "Device",
    "--kind": "Kind", "--strict": "Strict", "--lr-scaling": "LR scaling", "--prompt-init": "Prompt start",
}
"""core's messages name CLI flags; in the browser they name the form's fields."""


def form_words(message: str) -> str:
    """A core message with each CLI flag it names replaced by the form field's label."""
    return re.sub(r"--[a-z][a-z-]*", lambda m: FORM_WORDS.get(m.group(0), m.group(0)), message)


def _add(problems: dict[str, str], error: ProblemsError, rename: tuple[str, str] | None = None) -> None:
    """Each of the error's problems under the field of its setting (several on one field are joined); `rename`
    replaces a path in the messages (the server's copy of an upload -> the name the user gave it)."""
    for setting, message in error.problems:
        key = field_of(setting)
        text = form_words(message.replace(*rename) if rename else message)
        problems[key] = f"{problems[key]}; {text}" if key in problems else text


def _int(values: dict[str, Any], name: str, problems: dict[str, str], *, optional: bool = False) -> int | None:
    raw = values.get(name)
    if raw is None or raw == "":
        if optional:
            return None
        problems[name] = "required"
        return None
    try:
        number = float(raw)
    except (TypeError, ValueError):
        problems[name] = f"{raw!r} is not a number"
        return None
    if number != int(number):
        problems[name] = f"{raw} must be a whole number"
        return None
    return int(number)


def _float(values: dict[str, Any], name: str, problems: dict[str, str]) -> float | None:
    raw = values.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except (TypeError, ValueError):
        problems[name] = f"{raw!r} is not a number"
        return None


def settings_from_form(values: dict[str, Any], access: Access | None = None) -> tuple[RunSpec, int]:
    """The job's settings and max attempts from the form, validated as `lamp submit` validates them; no file is
    read (the cost preview calls this on every change). FormError lists every problem, each under its field. Only
    what `access` allows is named: the owner's uploads (by id), `default` or a hub id or a folder inside the
    allowed ones, a job id to start from."""
    access = access or Access()
    v = {**DEFAULTS, **{k: val for k, val in values.items() if k in FIELDS}}
    problems: dict[str, str] = {}
    ints = {n: _int(v, n, problems) for n in ("length", "rank", "pool", "steps", "batch_size", "max_length",
                                               "eval_every", "seed", "max_attempts")}
    ints |= {n: _int(v, n, problems, optional=True) for n in ("bottleneck", "positions")}
    ints["max_test_examples"] = _int(v, "max_test_examples", problems, optional=True)
    floats = {n: _float(v, n, problems) for n in ("lr", "weight_decay", "pair_lr")}
    init_from = _init_from(v["init_from"], problems)
    if problems:
        raise FormError(problems)
    model = _checked(problems, "model", check_model, v["model"], access.allowed_dirs)
    try:
        method = method_config(str(v["method"]), **method_knobs(ints, floats))
    except ConfigError as exc:
        _add(problems, exc)
        method = LampConfig()
    own = v["source"] == OWN_DATA
    spec = RunSpec(model=ModelConfig(model or _M.name, v["dtype"], v["quantize"]), method=method,
                   data=replace(_data_config(v, own, access, problems), max_test_examples=ints["max_test_examples"]),
                   train=_train_config(ints, floats, init_from, v))
    try:
        validate_spec(spec)
    except ConfigError as exc:
        _add(problems, exc)
    if own and "task" in problems:  # "give a task or a file": with own data selected, the file is what is missing
        problems.setdefault("data_file", problems.pop("task"))
        problems.pop("task", None)
    if (ints["max_attempts"] or 0) < 1:
        problems["max_attempts"] = "must be at least 1"
    if problems:
        raise FormError(problems)
    return spec, ints["max_attempts"] or DEFAULT_MAX_ATTEMPTS


def spec_from_form(values: dict[str, Any], access: Access | None = None) -> tuple[RunSpec, int]:
    """What Launch submits: `settings_from_form`, then what the job reads checked once (core.inputs): the upload
    read as the job will read it (one streaming pass, within the upload limits, so that a bad column or a
    one-class label shows before queueing), a warm start's source. FormError lists every problem by field."""
    access = access or Access()
    spec, attempts = settings_from_form(values, access)
    upload = spec.data.train_file
    try:
        check_inputs(spec, read_within=access.limits if upload else None)
    except (ConfigError, DataError) as exc:
        problems: dict[str, str] = {}
        found = exc.about("train_file") if isinstance(exc, DataError) else exc  # the file, unless a column is named
        _add(problems, found, (upload, Path(upload).name) if upload else None)
        raise FormError(problems) from exc
    return spec, attempts


def _data_config(v: dict[str, Any], own: bool, access: Access, problems: dict[str, str]) -> DataConfig:
    data_file = _data_file(v["data_file"], access, problems) if own else None
    data_dir = None if own else _checked(problems, "data_dir", check_data_dir, v["data_dir"], access.allowed_dirs)
    template = (v["template"] or "").strip() or None
    data = DataConfig(
        task=None if own else (v["task"] or None), train_file=data_file, data_dir=data_dir,
        text_column=None if (template or not own) else (v["text_column"] or None), template=template if own else None,
        label_column=(v["label_column"] or None) if own else None, kind=v["kind"] if own else "auto",
        strict=bool(v["strict"]) and own,
    )
    if own and not template and not data.text_column:
        problems["text_column"] = "pick the column that holds the input text (or write a template)"
    if own and not data.label_column:
        problems["label_column"] = "pick the column that holds the answer"
    if not own and not data.task:
        problems["task"] = f"pick a task: {', '.join(BUILTIN_TASKS)}"
    return data


def _train_config(ints: dict[str, int | None], floats: dict[str, float | None], init_from: str | None,
                  v: dict[str, Any]) -> TrainConfig:
    weight_decay = floats["weight_decay"]
    return TrainConfig(steps=ints["steps"], batch_size=ints["batch_size"] or 0, lr=floats["lr"],
                       weight_decay=weight_decay if weight_decay is not None else _T.weight_decay,
                       max_length=ints["max_length"] or 0, eval_every=ints["eval_every"] or 0,
                       checkpoint_every=min(_T.checkpoint_every, ints["eval_every"] or _T.checkpoint_every),
                       seed=ints["seed"] or 0, init_from=init_from, device=str(v["device"]),
                       lr_scaling=_recipe_choice(v["lr_scaling"]),  # type: ignore[arg-type]
                       prompt_init=_recipe_choice(v["prompt_init"]),  # type: ignore[arg-type]
                       # the operator's tracking (the server's environment) applies to the dashboard's jobs too
                       mlflow_uri=os.environ.get(MLFLOW_ENV) or None,
                       tensorboard_dir=os.environ.get(TENSORBOARD_ENV) or None)


def _recipe_choice(value: Any) -> str | None:
    """None (the method's recipe decides) for the form's "method's default" or an empty value."""
    return None if value in (None, "", RECIPE_CHOICE) else str(value)


def _checked(problems: dict[str, str], name: str, check: Any, value: Any, allowed: Any) -> Any:
    try:
        return check(value, allowed)
    except ConfigError as exc:
        problems[name] = str(exc)
        return None


def _data_file(value: Any, access: Access, problems: dict[str, str]) -> str | None:
    """The owner's upload behind the form's id (the form never carries a path)."""
    from app.uploads import resolve_upload

    if not value:
        problems["data_file"] = "upload a CSV, TSV, JSONL or Parquet file"
        return None
    try:
        return str(resolve_upload(value, owner=access.owner))
    except DataError as exc:
        problems["data_file"] = str(exc)
        return None


def _init_from(value: Any, problems: dict[str, str]) -> str | None:
    """"Start from job": a succeeded job's id -> its artifact directory (the dashboard takes no directory)."""
    if value is None or str(value).strip() == "":
        return None
    from jobs.warm import resolve_init_from

    text = str(value).strip().lstrip("#")
    if isinstance(value, str) and not text.isdigit():
        problems["init_from"] = f"init_from={value!r}: give the number of a succeeded job"
        return None
    try:
        return resolve_init_from(value)
    except ConfigError as exc:
        problems["init_from"] = str(exc)
        return None


def upload_note(values: dict[str, Any], access: Access | None = None) -> str:
    """Markdown under the upload's preview, for the columns chosen now: how many rows the job will skip (an empty
    input or label) and the first of them, or why it would refuse the file (app.uploads.skip_note)."""
    access = access or Access()
    template = (values.get("template") or "").strip() or None
    text, label = values.get("text_column") or None, values.get("label_column") or None
    if values.get("source") != OWN_DATA or not values.get("data_file") or not (text or template) or not label:
        return ""
    from app.uploads import skip_note

    return skip_note(str(values["data_file"]), None if template else text, label, template,
                     str(values.get("kind") or "auto"), bool(values.get("strict")), access.owner, access.limits)


def hidden_size_of(model: str) -> int | None:
    """The backbone's hidden size d, read from its config without loading weights (None if not known here)."""
    from core.backbone import config_hidden_size

    return config_hidden_size(model)


def method_knobs(ints: dict[str, int | None], floats: dict[str, float | None]) -> dict[str, Any]:
    """The method's knobs among the form's numbers (method_config keeps those its method has)."""
    return {"length": ints["length"], "rank": ints["rank"], "pool": ints["pool"], "bottleneck": ints["bottleneck"],
            "positions": ints["positions"], "pair_lr": floats["pair_lr"]}


def param_summary(model: str, method: str, length: Any, rank: Any, pool: Any,
                  allowed_dirs: tuple[Path, ...] = (), **more: Any) -> str:
    """Markdown: the trainable parameters of these knobs and what the backbone will see. The model's config is
    read only for a name the dashboard accepts (`default`, a hub id in the local cache, an allowed folder).
    `more`: the knobs only some methods have (bottleneck, positions, pair_lr)."""
    try:
        extra = {k: (float(x) if k == "pair_lr" else int(x)) for k, x in more.items() if x not in (None, "")}
        config = method_config(method, length=int(length), rank=int(rank), pool=int(pool), **extra)
    except (ConfigError, TypeError, ValueError) as exc:
        return f"**Trainable parameters:** fix the knobs first: {str(exc).splitlines()[0]}"
    try:
        model = check_model(model, allowed_dirs)
    except ConfigError as exc:
        return f"**Trainable parameters:** fix the model first: {exc}"
    hidden = hidden_size_of(model)
    tokens = getattr(config, "prompt_tokens", config.length)
    formula = config.formula
    if hidden is None:
        return (f"**Trainable parameters:** {formula} (hidden size d of `{model}` is read when the job loads it) · "
                f"the model sees **{tokens}** prompt tokens")
    count = config.trainable_params(hidden)
    full = length * hidden if isinstance(length, int) else int(length) * hidden
    return (f"**Trainable parameters: {count:,}** ({formula}, d = {hidden}) · {count / full:.2%} of a full "
            f"{int(length)}-token soft prompt · the model sees **{tokens}** prompt tokens")


def preset_values(label: str) -> dict[str, Any]:
    """The form values a preset sets (the learning rate as the form shows it: "" for the default)."""
    preset = PRESETS.get(label)
    if preset is None:
        raise ConfigError(f"unknown preset {label!r}; choose one of {', '.join(PRESETS)}")
    return {k: ("" if k == "lr" and v is None else v) for k, v in preset.values.items()}


def knobs_of(method: str) -> frozenset[str]:
    """The knobs a method has (its config's fields): the form shows only those (prompt tuning has no rank or
    pool, DPT no pool, only residual-pt a bottleneck, only dept positions and a pair rate)."""
    config = METHODS.get(method)
    return frozenset(config.__dataclass_fields__) if config is not None else frozenset()


def default_lr_note(method: str) -> str:
    known = method if method in RECIPES else DEFAULT_METHOD
    return f"empty = the measured default for {known}: {recipe_words(known)}"


__all__ = ["DEFAULTS", "FIELDS", "METHODS", "PRESETS", "FormError", "field_of", "param_summary", "settings_from_form",
           "spec_from_form"]


_WIDTH_KEYS = ("model", "source", "task", "data_file", "text_column", "template", "label_column", "kind",
               "max_length", "batch_size", "seed")


@lru_cache(maxsize=32)
def _widths(key: tuple[Any, ...], spec_json: str) -> Any:
    from core.estimate import data_widths
    from core.spec import spec_from_dict

    return data_widths(spec_from_dict(json.loads(spec_json)))


def minutes(seconds: float) -> str:
    """"2.4" below ten minutes (a Quick look is a few), whole minutes above."""
    return f"{seconds / 60:.1f}" if seconds < 600 else f"{seconds / 60:.0f}"


def cost_summary(values: dict[str, Any], access: Access | None = None) -> str:
    """Markdown: the estimate of `lamp estimate` for the form's settings (data widths cached per data setting)."""
    from core.estimate import estimate
    from core.spec import spec_to_dict
    from jobs.estimates import timed_from_history

    try:
        spec, _ = settings_from_form(values, access)
    except FormError:
        return "**Cost:** fix the form's problems first."
    from core.backbone import OFFLINE_MODELS, lamp_home

    offline = OFFLINE_MODELS.get(spec.model.name)
    if offline is not None and not (lamp_home() / "models" / offline.folder / "model.safetensors").is_file():
        return f"**Cost:** shown once the {spec.model.name} model has been converted (its first job does it)."
    try:
        widths = _widths(tuple(str(values.get(k)) for k in _WIDTH_KEYS), json.dumps(spec_to_dict(spec)))
        est = timed_from_history(spec, widths, estimate(spec, widths))
    except LampError as exc:
        return f"**Cost:** cannot estimate: {str(exc).splitlines()[0]}"
    except OSError as exc:
        return f"**Cost:** cannot read the model's config or tokenizer here: {exc}"
    time = (f"{est.seconds_per_step:.1f} s/step, about {est.run_seconds / 60:.0f} min of training ({est.timing})"
            if est.seconds_per_step is not None and est.run_seconds is not None else est.timing)
    if est.job_seconds is not None and est.eval_seconds is not None:
        time = (f"**about {minutes(est.job_seconds)} min for the whole job** (loading, validation and test "
                f"{minutes(est.eval_seconds)} min) · {time}")
    return (f"**Cost ({est.device}):** sequence ≈ {est.sequence_tokens:.0f} tokens (longest "
            f"{est.longest_sequence}) · peak memory ≈ **{est.peak_mb:,.0f} MiB** (weights {est.weights_mb:,.0f} + "
            f"activations {est.activations_mb:,.0f}" + (f" + runtime {est.runtime_mb:,.0f}" if est.runtime_mb
                                                           else "") + f") · time: {time}")
