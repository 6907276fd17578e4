"""The built-in SuperGLUE and GLUE tasks as text-to-text, in the T5 convention.

A source is the task's name, then `field: value` pairs in the data set's own field names (those of the Hugging Face
`aps/super_glue` and `nyu-mll/glue` data sets), and the answer is a word: `rte premise: ... hypothesis: ...` ->
`entailment` / `not_entailment`. The long context field (passage, paragraph) goes last, so that cutting a long
input at max_length cuts the context rather than the question. Whitespace inside values is collapsed to one space.

Special cases:
- copa: the answer is the label word `choice1` or `choice2` (T5's label names), not the text of the choice.
- multirc: one example per answer option (the data set's own rows), `group` = the question (paragraph and question
  idx), answers `false` / `true`.
- record: the answer is the first gold answer, `answers` = every gold answer, `candidates` = the passage's
  entities (to rank), `label` None; `@highlight` markers in the passage become sentence breaks, as T5 does.
"""

from __future__ import annotations

import hashlib
import random
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from core.errors import DataError
from core.tasks.base import Example, TaskData

Row = Mapping[str, Any]


@dataclass(frozen=True)
class GlueTask:
    """How one task is read from its data set and written as text."""

    name: str
    benchmark: Literal["super_glue", "glue"]
    config: str
    """The data set's config name on the hub (SuperGLUE's WSC is `wsc.fixed`)."""
    fields: tuple[str, ...]
    """Fields written into the source, in this order."""
    label_words: tuple[str, ...] | None
    """Answers in label-id order; None for ReCoRD, whose answers are entities."""
    metrics: tuple[str, ...] = ("accuracy",)
    eval_split: str = "validation"
    """The original split that plays 'validation' in the split rule."""

    @property
    def hub_path(self) -> str:
        return "aps/super_glue" if self.benchmark == "super_glue" else "nyu-mll/glue"

    @property
    def template(self) -> str:
        return " ".join([self.name, *(f"{f}: {{{f}}}" for f in self.fields)])


_FALSE_TRUE = ("false", "true")

TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask("boolq", "super_glue", "boolq", ("question", "passage"), _FALSE_TRUE),
        GlueTask(
            "cb",
            "super_glue",
            "cb",
            ("premise", "hypothesis"),
            ("entailment", "contradiction", "neutral"),
            metrics=("accuracy", "macro_f1"),
        ),
        GlueTask("copa", "super_glue", "copa", ("premise", "choice1", "choice2", "question"), ("choice1", "choice2")),
        GlueTask("rte", "super_glue", "rte", ("premise", "hypothesis"), ("entailment", "not_entailment")),
        GlueTask("wic", "super_glue", "wic", ("word", "sentence1", "sentence2"), _FALSE_TRUE),
        GlueTask("wsc", "super_glue", "wsc.fixed", ("text", "span1_text", "span2_text"), _FALSE_TRUE),
        GlueTask(
            "multirc",
            "super_glue",
            "multirc",
            ("question", "answer", "paragraph"),
            _FALSE_TRUE,
            metrics=("multirc_f1a", "multirc_em"),
        ),
        GlueTask(
            "record",
            "super_glue",
            "record",
            ("query", "entities", "passage"),
            None,
            metrics=("record_f1", "record_em"),
        ),
        GlueTask(
            "mnli",
            "glue",
            "mnli",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            eval_split="validation_matched",
        ),
        GlueTask("qnli", "glue", "qnli", ("question", "sentence"), ("entailment", "not_entailment")),
        GlueTask("sst2", "glue", "sst2", ("sentence",), ("negative", "positive")),
        GlueTask(
            "mrpc",
            "glue",
            "mrpc",
            ("sentence1", "sentence2"),
            ("not_equivalent", "equivalent"),
            metrics=("accuracy", "f1"),
        ),
    )
}

TEMPLATES: dict[str, str] = {name: task.template for name, task in TASKS.items()}
"""Each task's input format, e.g. TEMPLATES["rte"] == "rte premise: {premise} hypothesis: {hypothesis}"."""


def _clean(value: object) -> str:
    return " ".join(str(value).split())


def _field(task: GlueTask, row: Row, field: str) -> str:
    if field not in row:
        raise DataError(f"{task.name}: row has no field {field!r} (fields: {', '.join(sorted(row))})")
    return _clean(row[field])


def _source(task: GlueTask, row: Row, values: Mapping[str, str] | None = None) -> str:
    values = values or {}
    parts = [f"{f}: {values[f] if f in values else _field(task, row, f)}" for f in task.fields]
    return " ".join([task.name, *parts])


def label_id(task: GlueTask, row: Row) -> int | None:
    """The row's label as an id into the task's label words; None for an unlabelled row (-1, as in test splits)."""
    words = task.label_words or ()
    value = row.get("label")
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value == -1:
        return None
    if isinstance(value, int) and 0 <= value < len(words):
        return value
    if isinstance(value, str) and value.strip().lower() in words:
        return words.index(value.strip().lower())
    raise DataError(f"{task.name}: label {value!r} is not one of 0..{len(words) - 1} or {', '.join(words)}")


def _classification(task: GlueTask, row: Row) -> Example:
    label = label_id(task, row)
    if label is None:
        raise DataError(f"{task.name}: row {row.get('idx')!r} has no label")
    words = task.label_words or ()
    return Example(source=_source(task, row), target=words[label], label=label)


def format_boolq(row: Row) -> Example:
    return _classification(TASKS["boolq"], row)


def format_cb(row: Row) -> Example:
    return _classification(TASKS["cb"], row)


def format_copa(row: Row) -> Example:
    return _classification(TASKS["copa"], row)


def format_rte(row: Row) -> Example:
    return _classification(TASKS["rte"], row)


def format_wic(row: Row) -> Example:
    return _classification(TASKS["wic"], row)


def format_wsc(row: Row) -> Example:
    return _classification(TASKS["wsc"], row)


def format_mnli(row: Row) -> Example:
    return _classification(TASKS["mnli"], row)


def format_qnli(row: Row) -> Example:
    return _classification(TASKS["qnli"], row)


def format_sst2(row: Row) -> Example:
    return _classification(TASKS["sst2"], row)


def format_mrpc(row: Row) -> Example:
    return _classification(TASKS["mrpc"], row)


def _multirc_group(row: Row) -> str:
    idx = row.get("idx")
    if isinstance(idx, Mapping) and "paragraph" in idx and "question" in idx:
        return f"p{idx['paragraph']}-q{idx['question']}"
    # Without idx, the same question text under two paragraphs must still be two questions.
    digest = hashlib.sha1(f"{row.get('paragraph')}\n{row.get('question')}".encode()).hexdigest()[:12]
    return f"q-{digest}"


def format_multirc(row: Row) -> Example:
    return replace(_classification(TASKS["multirc"], row), group=_multirc_group(row))


def _record_passage(passage: str) -> str:
    # T5's ReCoRD preprocessing: "@highlight" bullets become sentences.
    passage = re.sub(r"([.?!\"'])\n@highlight\n", r"\1 ", passage)
    return _clean(re.sub(r"\n@highlight\n", ". ", passage))


def _unique(values: Sequence[object] | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_clean(v) for v in (values or ())))


def format_record(row: Row) -> Example:
    task = TASKS["record"]
    _field(task, row, "entities")  # raises when the row lacks the field
    entities = _unique(row["entities"])
    answers = _unique(row.get("answers"))
    if not answers:
        raise DataError(f"record: row {row.get('idx')!r} has no answers")
    values = {"entities": ", ".join(entities), "passage": _record_passage(str(row.get("passage", "")))}
    return Example(source=_source(task, row, values), target=answers[0], candidates=entities, answers=answers)


FORMATTERS: dict[str, Callable[[Row], Example]] = {
    "boolq": format_boolq,
    "cb": format_cb,
    "copa": format_copa,
    "rte": format_rte,
    "wic": format_wic,
    "wsc": format_wsc,
    "multirc": format_multirc,
    "record": format_record,
    "mnli": format_mnli,
    "qnli": format_qnli,
    "sst2": format_sst2,
    "mrpc": format_mrpc,
}


def is_labelled(task: GlueTask, row: Row) -> bool:
    """Test splits carry label -1 (ReCoRD: no answers); such rows cannot be trained or scored."""
    if task.label_words is None:
        return bool(row.get("answers"))
    return row.get("label") != -1


def format_rows(task: GlueTask, rows: list[dict[str, Any]]) -> list[Example]:
    formatter = FORMATTERS[task.name]
    return [formatter(row) for row in rows if is_labelled(task, row)]


SMALL_TASK_LIMIT = 10_000
"""Tasks with fewer training examples than this split their validation set in half: validation and test."""
VALIDATION_HOLDOUT = 1_000
"""Larger tasks hold out this many training examples as validation and test on the original validation set."""


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    note: str


def _units(examples: Sequence[Example]) -> list[list[Example]]:
    # A MultiRC question's answer options stay in one split, so exact match per question keeps its meaning.
    units: dict[object, list[Example]] = {}
    for i, ex in enumerate(examples):
        units.setdefault(ex.group if ex.group is not None else ("row", i), []).append(ex)
    return list(units.values())


def _flatten(units: Sequence[list[Example]]) -> list[Example]:
    return [ex for unit in units for ex in unit]


def split_builtin(train: list[Example], evaluation: list[Example], *, seed: int, eval_split: str) -> Splits:
    """The split rule of ATTEMPT, DPT and LAMP (see SMALL_TASK_LIMIT), shuffling with random.Random(seed)."""
    rng = random.Random(seed)
    if len(train) < SMALL_TASK_LIMIT:
        units = _units(evaluation)
        if len(units) < 2:
            raise DataError(f"{eval_split} has {len(units)} example(s); halving it needs at least 2")
        rng.shuffle(units)
        validation, test = _flatten(units[: len(units) // 2]), _flatten(units[len(units) // 2 :])
        note = (
            f"seed {seed}; {len(train)} training examples (< {SMALL_TASK_LIMIT}): train = original train, "
            f"validation = {len(validation)} and test = {len(test)} examples of the shuffled original {eval_split}"
        )
        return Splits(train, validation, test, note)
    units = _units(train)
    rng.shuffle(units)
    cut, held = 0, 0
    while held < VALIDATION_HOLDOUT and cut < len(units):
        held, cut = held + len(units[cut]), cut + 1
    validation, rest = _flatten(units[:cut]), _flatten(units[cut:])
    note = (
        f"seed {seed}; {len(train)} training examples (>= {SMALL_TASK_LIMIT}): validation = {len(validation)} "
        f"held-out training examples, train = the other {len(rest)}, test = original {eval_split} ({len(evaluation)})"
    )
    return Splits(rest, validation, list(evaluation), note)


_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def _task_folder(root: Path, task: GlueTask) -> Path:
    for sub in (task.name, task.config):
        if (root / sub).is_dir():
            return root / sub
    return root


def _split_files(folder: Path) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in _FILE_BUILDERS:
            # "train.parquet" and the hub's shard names "train-00000-of-00001.parquet" both mean split "train".
            files.setdefault(path.name.split(".")[0].split("-")[0], []).append(path)
    return files


def _missing_split(task: GlueTask, folder: Path, split: str, found: Sequence[str]) -> DataError:
    return DataError(
        f"{task.name}: {folder} has no {split!r} split (found: {', '.join(found) or 'none'}); expected a "
        f"DatasetDict.save_to_disk folder or files such as train.parquet and {task.eval_split}.jsonl"
    )


def _read_local(task: GlueTask, data_dir: str, splits: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    import datasets  # heavy; only loaders need it

    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{task.name}: data_dir {data_dir} is not a folder")
    folder = _task_folder(root, task)
    if (folder / "dataset_dict.json").is_file():
        saved = datasets.load_from_disk(str(folder))
        if not isinstance(saved, datasets.DatasetDict):
            raise DataError(f"{task.name}: {folder} holds one Dataset; save a DatasetDict with train and validation")
        for split in splits:
            if split not in saved:
                raise _missing_split(task, folder, split, list(saved))
        return {split: saved[split].to_list() for split in splits}
    files = _split_files(folder)
    rows: dict[str, list[dict[str, Any]]] = {}
    # A throwaway cache: local files are read once into Python rows, and nothing is left behind in ~/.cache.
    with tempfile.TemporaryDirectory() as cache:
        for split in splits:
            paths = files.get(split)
            if not paths:
                raise _missing_split(task, folder, split, sorted(files))
            builders = {_FILE_BUILDERS[p.suffix.lower()] for p in paths}
            if len(builders) > 1:
                raise DataError(f"{task.name}: split {split!r} mixes file formats: {', '.join(map(str, paths))}")
            data = datasets.load_dataset(
                builders.pop(), data_files=[str(p) for p in paths], split="train", cache_dir=cache
            )
            rows[split] = data.to_list()
    return rows


def _read_hub(task: GlueTask, splits: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    import datasets

    try:
        return {s: datasets.load_dataset(task.hub_path, task.config, split=s).to_list() for s in splits}
    except Exception as exc:  # the hub fails in many ways (no network, renamed config): all mean "not reachable"
        raise DataError(
            f"{task.name}: could not load {task.hub_path} ({task.config}) from the hub: {exc}. Without internet, "
            f"pass data_dir: a DatasetDict.save_to_disk folder or per-split parquet/jsonl/csv files"
        ) from exc


def load_glue_task(name: str, *, data_dir: str | None, seed: int = 42) -> TaskData:
    """Load a built-in GLUE/SuperGLUE task, from `data_dir` when given, else from the hub.

    `data_dir` is a folder written by `DatasetDict.save_to_disk`, or a folder of per-split files
    (`train.parquet`, `validation.jsonl`, `validation_matched.csv`, ...); a parent folder with one such subfolder per
    task (named like the task or its hub config) works too.
    """
    task = TASKS[name]
    wanted = ("train", task.eval_split)
    raw = _read_local(task, data_dir, wanted) if data_dir else _read_hub(task, wanted)
    train = format_rows(task, raw["train"])
    evaluation = format_rows(task, raw[task.eval_split])
    if not train or not evaluation:
        raise DataError(f"{name}: no labelled rows in train ({len(train)}) or {task.eval_split} ({len(evaluation)})")
    splits = split_builtin(train, evaluation, seed=seed, eval_split=task.eval_split)
    return TaskData(
        name=name,
        train=splits.train,
        validation=splits.validation,
        test=splits.test,
        label_words=task.label_words,
        metrics=task.metrics,
        template=task.template,
        split_note=splits.note,
        extra={"source": data_dir or f"hub:{task.hub_path}/{task.config}"},
    )
