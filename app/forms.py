"""The New job form as plain functions: form values -> RunSpec, problems -> the field at fault, presets, the
trainable-parameter count for the chosen knobs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.access import Access, check_data_dir, check_model
from core.errors import ConfigError, DataError, LampError
from core.inputs import check_inputs
from core.methods import METHODS, LampConfig, method_config
from core.spec import DEFAULT_LR, DEFAULT_STEPS, DataConfig, ModelConfig, RunSpec, TrainConfig, validate_spec
from core.tasks import BUILTIN_TASKS

OWN_DATA = "my own file"
SOURCES = ("built-in task", OWN_DATA)

# Every input of the form, in the order the handlers receive them.
FIELDS = (
    "model", "dtype", "quantize", "source", "task", "data_file", "text_column", "template", "label_column", "kind",
    "method", "length", "rank", "pool", "steps", "batch_size", "lr", "weight_decay", "max_length", "eval_every",
    "seed", "device", "max_attempts", "init_from", "data_dir",
)
DEFAULTS: dict[str, Any] = {
    "model": "default", "dtype": "float32", "quantize": "none", "source": "built-in task", "data_dir": None,
    "task": "rotten_tomatoes", "data_file": "", "text_column": None, "template": "", "label_column": None,
    "kind": "auto", "method": "lamp", "length": 100, "rank": 8, "pool": 4, "steps": DEFAULT_STEPS,
    "batch_size": 16, "lr": "", "weight_decay": 1e-5, "max_length": 256, "eval_every": 50, "seed": 42,
    "device": "auto", "max_attempts": 3, "init_from": "",
}


@dataclass(frozen=True)
class Preset:
    label: str
    note: str
    values: dict[str, Any] = field(default_factory=dict)


PRESETS = {
    p.label: p for p in (
        Preset("Measured default", "LAMP l=100, r=8, p=4, lr 0.01, 150 steps: the settings measured on the default "
               "model (README, Choosing defaults).",
               {"method": "lamp", "length": 100, "rank": 8, "pool": 4, "lr": None, "steps": 150, "batch_size": 16,
                "max_length": 256, "eval_every": 50}),
        Preset("Quick look", "A short LAMP run (l=20, p=1, 40 steps) to check data and settings in a few minutes.",
               {"method": "lamp", "length": 20, "rank": 4, "pool": 1, "lr": None, "steps": 40, "batch_size": 8,
                "max_length": 128, "eval_every": 20}),
        Preset("Paper (T5 recipe)", "The paper's T5 settings: l=100, r=8, lr 0.3, batch 16, max length 256. lr 0.3 "
               "diverges on small decoder-only models such as the default one.",
               {"method": "lamp", "length": 100, "rank": 8, "pool": 1, "lr": 0.3, "steps": 150, "batch_size": 16,
                "max_length": 256, "eval_every": 50}),
        Preset("Prompt tuning baseline", "Vanilla soft prompt (Lester et al. 2021), l=100.",
               {"method": "prompt-tuning", "length": 100, "lr": None, "steps": 150, "batch_size": 16}),
        Preset("DPT baseline", "P = A B with random A (l x r), B (r x d) (Xiao et al. 2023), l=100, r=8.",
               {"method": "dpt", "length": 100, "rank": 8, "lr": None, "steps": 150, "batch_size": 16}),
    )
}


class FormError(LampError):
    """Problems with the form, each attached to the field at fault ("" for the form as a whole)."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("\n".join(f"{k or 'form'}: {v}" for k, v in problems.items()))
        self.problems = problems


# A problem message from core names its setting first ("rank=9 > ...", "--train x: ...", "data: ..."); this maps
# that name to the form field a person has to change.
_FIELD_OF = {
    "model": "model", "dtype": "dtype", "quantize": "quantize", "data": "task", "--train": "data_file",
    "--eval": "data_file", "kind": "kind", "steps": "steps", "epochs": "steps", "give": "steps",
    "batch_size": "batch_size", "lr": "lr", "weight_decay": "weight_decay", "max_length": "max_length",
    "eval_every": "eval_every", "device": "device", "length": "length", "rank": "rank", "pool": "pool",
    "method": "method", "init": "method", "max_attempts": "max_attempts", "text_column": "text_column",
    "label_column": "label_column", "template": "template", "seed": "seed", "init_from": "init_from",
    "data_dir": "data_dir",
}


def field_of(message: str) -> str:
    """The form field a core problem message is about ("" when none fits)."""
    match = re.match(r"\s*(--[a-z]+|[a-z_]+)", message)
    key = match.group(1) if match else ""
    if key == "data" and "--text-column or --template" in message:
        return "text_column"
    if key == "quantize" or message.startswith("quantize=4bit"):
        return "quantize"
    return _FIELD_OF.get(key, "")


def _add(problems: dict[str, str], message: str, where: str | None = None) -> None:
    for line in message.splitlines():
        if not line.strip():
            continue
        key = field_of(line) if where is None else where
        problems[key] = f"{problems[key]}; {line}" if key in problems else line


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


def spec_from_form(values: dict[str, Any], access: Access | None = None) -> tuple[RunSpec, int]:
    """The job's settings and max attempts, checked as `lamp submit` checks them. FormError lists every problem,
    each under its field. Only what `access` allows is named: the owner's uploads (by id), `default` or a hub id or
    a folder inside the allowed ones, a job id to start from."""
    access = access or Access()
    v = {**DEFAULTS, **{k: val for k, val in values.items() if k in FIELDS}}
    problems: dict[str, str] = {}
    ints = {n: _int(v, n, problems) for n in ("length", "rank", "pool", "steps", "batch_size", "max_length",
                                               "eval_every", "seed", "max_attempts")}
    lr, weight_decay = _float(v, "lr", problems), _float(v, "weight_decay", problems)
    init_from = _init_from(v["init_from"], problems)
    if problems:
        raise FormError(problems)
    model = _checked(problems, "model", check_model, v["model"], access.allowed_dirs)
    try:
        method = method_config(str(v["method"]), length=ints["length"], rank=ints["rank"], pool=ints["pool"])
    except ConfigError as exc:
        _add(problems, str(exc))
        method = LampConfig()
    own = v["source"] == OWN_DATA
    data_file = _data_file(v["data_file"], access, problems) if own else None
    data_dir = None if own else _checked(problems, "data_dir", check_data_dir, v["data_dir"], access.allowed_dirs)
    template = (v["template"] or "").strip() or None
    data = DataConfig(
        task=None if own else (v["task"] or None), train_file=data_file, data_dir=data_dir,
        text_column=None if (template or not own) else (v["text_column"] or None), template=template if own else None,
        label_column=(v["label_column"] or None) if own else None, kind=v["kind"] if own else "auto",
    )
    if own and not template and not data.text_column:
        problems["text_column"] = "pick the column that holds the input text (or write a template)"
    if own and not data.label_column:
        problems["label_column"] = "pick the column that holds the answer"
    if not own and not data.task:
        problems["task"] = f"pick a task: {', '.join(BUILTIN_TASKS)}"
    spec = RunSpec(
        model=ModelConfig(model or "default", v["dtype"], v["quantize"]),
        method=method,
        data=data,
        train=TrainConfig(steps=ints["steps"], batch_size=ints["batch_size"] or 0, lr=lr,
                          weight_decay=weight_decay if weight_decay is not None else 1e-5,
                          max_length=ints["max_length"] or 0, eval_every=ints["eval_every"] or 0,
                          checkpoint_every=min(25, ints["eval_every"] or 25), seed=ints["seed"] or 0,
                          init_from=init_from, device=str(v["device"])),
    )
    try:
        validate_spec(spec)
        check_inputs(spec)
    except ConfigError as exc:
        _add(problems, str(exc))
    if own and "task" in problems:  # "give a task or a file": with own data selected, the file is what is missing
        problems.setdefault("data_file", problems.pop("task"))
        problems.pop("task", None)
    if (ints["max_attempts"] or 0) < 1:
        problems["max_attempts"] = "must be at least 1"
    if own and data_file and not problems:
        check_data(spec.data, problems, access)
    if problems:
        raise FormError(problems)
    return spec, ints["max_attempts"] or 3


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


def check_data(data: DataConfig, problems: dict[str, str], access: Access | None = None) -> None:
    """Check the user's file as the job will read it (one streaming pass, within the upload limits), so that a bad
    column or a one-class label shows before queueing."""
    from core.tasks.files import check_user_files

    assert data.train_file is not None
    try:
        check_user_files(data.train_file, data.eval_file, text_column=data.text_column,
                         label_column=data.label_column, template=data.template, kind=data.kind,
                         limits=(access or Access()).limits)
    except (DataError, ConfigError) as exc:
        text = str(exc).replace(data.train_file, Path(data.train_file).name)
        lowered = text.lower()
        if text.startswith("label_column=") or (data.label_column and data.label_column in text
                                                and "label" in lowered):
            problems["label_column"] = text
        elif "column" in lowered and data.text_column and data.text_column in text:
            problems["text_column"] = text
        elif "template" in lowered:
            problems["template"] = text
        else:
            problems["data_file"] = text


def hidden_size_of(model: str) -> int | None:
    """The backbone's hidden size d, read from its config without loading weights (None if not known here)."""
    from core.backbone import config_hidden_size

    return config_hidden_size(model)


def param_summary(model: str, method: str, length: Any, rank: Any, pool: Any,
                  allowed_dirs: tuple[Path, ...] = ()) -> str:
    """Markdown: the trainable parameters of these knobs and what the backbone will see. The model's config is
    read only for a name the dashboard accepts (`default`, a hub id in the local cache, an allowed folder)."""
    try:
        config = method_config(method, length=int(length), rank=int(rank), pool=int(pool))
    except (ConfigError, TypeError, ValueError) as exc:
        return f"**Trainable parameters:** fix the knobs first: {str(exc).splitlines()[0]}"
    try:
        model = check_model(model, allowed_dirs)
    except ConfigError as exc:
        return f"**Trainable parameters:** fix the model first: {exc}"
    hidden = hidden_size_of(model)
    tokens = getattr(config, "prompt_tokens", config.length)
    formula = {"lamp": "l·r + r + r·d", "prompt-tuning": "l·d", "dpt": "l·r + r·d"}[method]
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


def default_lr_note(method: str) -> str:
    return f"empty = {DEFAULT_LR.get(method, 0.01)} (measured default for {method})"


__all__ = ["DEFAULTS", "FIELDS", "METHODS", "PRESETS", "FormError", "field_of", "param_summary", "spec_from_form"]


_WIDTH_KEYS = ("model", "source", "task", "data_file", "text_column", "template", "label_column", "kind",
               "max_length", "batch_size", "seed")


@lru_cache(maxsize=32)
def _widths(key: tuple[Any, ...], spec_json: str) -> Any:
    from core.estimate import data_widths
    from core.spec import spec_from_dict

    return data_widths(spec_from_dict(json.loads(spec_json)))


def cost_summary(values: dict[str, Any], access: Access | None = None) -> str:
    """Markdown: the estimate of `lamp estimate` for the form's settings (data widths cached per data setting)."""
    from core.estimate import estimate
    from core.spec import spec_to_dict
    from jobs.estimates import timed_from_history

    try:
        spec, _ = spec_from_form(values, access)
    except FormError:
        return "**Cost:** fix the form's problems first."
    if spec.model.name == "default":
        from core.backbone import lamp_home

        if not (lamp_home() / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file():
            return "**Cost:** shown once the default model has been converted (its first job does it)."
    try:
        widths = _widths(tuple(str(values.get(k)) for k in _WIDTH_KEYS), json.dumps(spec_to_dict(spec)))
        est = timed_from_history(spec, widths, estimate(spec, widths))
    except LampError as exc:
        return f"**Cost:** cannot estimate: {str(exc).splitlines()[0]}"
    except OSError as exc:
        return f"**Cost:** cannot read the model's config or tokenizer here: {exc}"
    time = (f"{est.seconds_per_step:.1f} s/step, about {est.run_seconds / 60:.0f} min for the run ({est.timing})"
            if est.seconds_per_step is not None and est.run_seconds is not None else est.timing)
    return (f"**Cost ({est.device}):** sequence ≈ {est.sequence_tokens:.0f} tokens (longest "
            f"{est.longest_sequence}) · peak memory ≈ **{est.peak_mb:,.0f} MiB** (weights {est.weights_mb:,.0f} + "
            f"activations {est.activations_mb:,.0f}" + (f" + runtime {est.runtime_mb:,.0f}" if est.runtime_mb
                                                           else "") + f") · time: {time}")
