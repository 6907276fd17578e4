"""A user's own files: happy paths per format, and every error naming the file, row and column."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigError, DataError
from core.tasks import Example, load_user_task


def _csv(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def _jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _reviews(n: int) -> str:
    return "text,label\n" + "".join(f"review number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(n))


def test_csv_classification_with_default_columns(tmp_path: Path) -> None:
    task = load_user_task(_csv(tmp_path / "reviews.csv", _reviews(20)))
    assert task.name == "reviews"
    assert task.label_words == ("neg", "pos")
    assert task.metrics == ("accuracy",)
    assert (len(task.train), len(task.validation)) == (18, 2)
    assert task.test == task.validation  # no eval file: the test set is the validation set
    all_sources = {e.source for e in task.train + task.validation}
    assert all_sources == {f"review number {i}" for i in range(20)}
    assert all(e.target == task.label_words[e.label] for e in task.train if e.label is not None)
    assert task.template == "{text}" and "seed 42" in task.split_note
    again = load_user_task(str(tmp_path / "reviews.csv"))
    assert again.validation == task.validation
    assert load_user_task(str(tmp_path / "reviews.csv"), seed=1).validation != task.validation


def test_tsv_with_named_columns_and_integer_labels(tmp_path: Path) -> None:
    rows = "".join(f"  doc {i}  \t{[2, 10, 1][i % 3]}\n" for i in range(12))
    task = load_user_task(_csv(tmp_path / "d.tsv", "body\tstars\n" + rows), text_column="body", label_column="stars")
    assert task.label_words == ("1", "2", "10")  # numeric order, not "1" < "10" < "2"
    assert Example("doc 0", "2", 1) in task.train + task.validation


def test_jsonl_generation_with_template(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}?", "context": f"c{i}", "label": f"answer {i}"} for i in range(10)]
    task = load_user_task(_jsonl(tmp_path / "qa.jsonl", rows), template="question: {question} context: {context}")
    assert task.label_words is None and task.metrics == ("exact_match",)
    assert (len(task.train), len(task.validation)) == (9, 1)
    assert Example("question: q3? context: c3", "answer 3") in task.train + task.validation
    assert task.extra["kind"] == "generation"


def test_parquet_with_eval_file_and_forced_kinds(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame({"sentence": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"sentence": ["e", "f"], "label": [1, 0]}).to_parquet(tmp_path / "dev.parquet")
    train, dev = str(tmp_path / "train.parquet"), str(tmp_path / "dev.parquet")
    # 2 classes in 4 rows is not "fewer than half the rows", so auto calls it generation; kind overrides.
    assert load_user_task(train, dev, text_column="sentence").label_words is None
    task = load_user_task(train, dev, text_column="sentence", kind="classification")
    assert task.label_words == ("0", "1")
    assert task.train == [Example("a", "0", 0), Example("b", "1", 1), Example("c", "0", 0), Example("d", "1", 1)]
    assert task.validation == task.test == [Example("e", "1", 1), Example("f", "0", 0)]
    many = load_user_task(_csv(tmp_path / "m.csv", _reviews(30)), kind="generation")
    assert many.label_words is None and many.train[0].label is None


def test_json_array(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": f"t{i}", "label": i % 2 == 0} for i in range(6)]), encoding="utf-8")
    task = load_user_task(str(path))
    assert task.label_words == ("false", "true")


def _error(match: str, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(DataError) as info:
        load_user_task(*args, **kwargs)
    message = str(info.value)
    assert re.search(match, message, re.S), message
    return message


def test_missing_file(tmp_path: Path) -> None:
    _error(r"nope\.csv: file not found", str(tmp_path / "nope.csv"))


def test_unknown_extension(tmp_path: Path) -> None:
    _error(r"d\.xlsx: unknown file type '\.xlsx'; use one of \.csv", _csv(tmp_path / "d.xlsx", "x"))


def test_empty_file_and_no_rows(tmp_path: Path) -> None:
    _error(r"e\.csv: file is empty", _csv(tmp_path / "e.csv", ""))
    _error(r"h\.csv: no data rows", _csv(tmp_path / "h.csv", "text,label\n"))
    _error(r"b\.jsonl: no data rows", _csv(tmp_path / "b.jsonl", "\n\n"))


def test_too_large(tmp_path: Path) -> None:
    data = _csv(tmp_path / "big.csv", _reviews(60))
    size = Path(data).stat().st_size
    _error(rf"big\.csv: file is {size:,} bytes \(0\.0 MiB\), larger than the limit of 100 bytes", data, max_bytes=100)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncafé,1\n".encode("latin-1"))
    _error(r"latin\.csv: not UTF-8 text: byte 0xe9 at byte offset 14 \(line 2\).*UTF-8", str(path))


def test_malformed_json_lines_are_collected(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n[1, 2]\n{"text": "c"', encoding="utf-8")
    message = _error(r"bad\.jsonl: 2 problem\(s\)", str(path))
    assert "row 2 (line 3): malformed JSON" in message
    assert "row 4 (line 5): malformed JSON" in message
    _error(r"row 2 \(line 3\): expected a JSON object", _csv(tmp_path / "list.jsonl", '{"text": "a"}\n\n[1]\n'))


def test_missing_columns(tmp_path: Path) -> None:
    data = _csv(tmp_path / "d.csv", "review,stars\ngood,5\nbad,1\n")
    _error(r"d\.csv: no 'text' column; pass text_column or template\. Columns: review, stars", data)
    _error(r"d\.csv: no column 'body' \(text\); columns: review, stars", data, text_column="body")
    _error(r"d\.csv: no column 'label' \(label; pass label_column\); columns: review, st", data, text_column="review")
    _error(
        r"d\.csv: no column 'title', 'author' \(named by the template\); columns: review, stars",
        data,
        template="{title} by {author}: {review}",
        label_column="stars",
    )


def test_missing_column_in_eval_file_names_that_file(tmp_path: Path) -> None:
    train = _csv(tmp_path / "train.csv", _reviews(10))
    dev = _csv(tmp_path / "dev.csv", "text,gold\nx,pos\n")
    _error(r"dev\.csv: no column 'label'", train, dev)


def test_empty_cells_name_row_and_column(tmp_path: Path) -> None:
    data = _csv(tmp_path / "d.csv", 'text,label\nfine,pos\n"  ",neg\nok,\nalso fine,neg\n')
    message = _error(r"d\.csv: 2 problem\(s\)", data)
    assert "row 2: empty column 'text'" in message
    assert "row 3: empty label in column 'label'" in message


def test_a_stray_empty_cell_is_skipped_and_reported(tmp_path: Path) -> None:
    from core.tasks.files import check_user_files

    rows = "".join(f"review number {i},{'pos' if i % 2 else 'neg'}\n" if i != 833 else ",pos\n" for i in range(1, 1201))
    data = _csv(tmp_path / "messy.csv", "text,label\n" + rows)
    task = load_user_task(data)
    assert len(task.train) + len(task.validation) == 1199
    assert [(s.file, s.rows, s.count, s.first) for s in task.skipped] == [("messy.csv", 1200, 1, ("row 833",))]
    assert task.data_notes() == ["messy.csv: 1 of 1,200 rows skipped (an empty input or label): row 833"]
    assert task.data_report()["skipped"][0]["first"] == ["row 833"]
    assert check_user_files(data).skipped == task.skipped and check_user_files(data).rows == 1199
    with pytest.raises(DataError) as info:  # strict: the one empty cell refuses the file, as before
        load_user_task(data, strict=True)
    assert "row 833: empty column 'text'" in str(info.value) and "strict" in str(info.value)
    assert info.value.problems[0][0] == "text_column"


def test_a_mostly_empty_file_is_still_refused(tmp_path: Path) -> None:
    labels = ["pos", "neg", "", "pos", "neg", "", "pos", "neg", "pos", "neg"]  # 2 of 10: 20%, skipped
    fine = _csv(tmp_path / "fine.csv", "text,label\n" + "".join(f"t{i},{v}\n" for i, v in enumerate(labels)))
    assert load_user_task(fine).skipped[0].first == ("row 3", "row 6")
    labels[8] = ""  # 3 of 10: more than 20%, refused, naming the file and its first rows
    bad = _csv(tmp_path / "bad.csv", "text,label\n" + "".join(f"t{i},{v}\n" for i, v in enumerate(labels)))
    message = _error(r"bad\.csv: 3 problem\(s\):\n  row 3: empty label in column 'label'\n  row 6: .*\n  row 9: "
                     r".*3 of 10 rows have an empty input or label, more than 20%", bad)
    assert "check the text and label columns" in message


def test_many_problems_are_capped(tmp_path: Path) -> None:
    data = _csv(tmp_path / "d.csv", "text,label\n" + "x,\n" * 9)
    message = _error(r"9 problem\(s\).*row 5: empty label.*and 4 more", data)
    assert "row 6" not in message


def test_extra_csv_fields(tmp_path: Path) -> None:
    _error(r"row 2 \(line 3\): 3 fields, the header has 2", _csv(tmp_path / "d.csv", "text,label\na,x\nb,x,y\n"))


def test_one_class_only(tmp_path: Path) -> None:
    data = _csv(tmp_path / "one.csv", "text,label\n" + "".join(f"t{i},spam\n" for i in range(8)))
    _error(r"one\.csv: column 'label' has one class only \('spam'\)", data)


def test_eval_label_unknown_to_training(tmp_path: Path) -> None:
    train = _csv(tmp_path / "train.csv", _reviews(10))
    dev = _csv(tmp_path / "dev.csv", "text,label\na,pos\nb,meh\nc,meh\nd,neg\n")
    message = _error(r"dev\.csv: label\(s\) 'meh' \(2 rows: row 2, row 3\) in column 'label' are not among the "
                     r"training labels \(neg, pos\): add them to the label words.*or drop those rows", train, dev)
    assert "--eval-labels add" in message and "--eval-labels drop" in message
    with pytest.raises(DataError) as info:
        load_user_task(train, dev)
    assert info.value.problems[0][0] == "eval_labels"
    added = load_user_task(train, dev, eval_labels="add")  # scored, never trained on
    assert added.label_words == ("neg", "pos", "meh") and added.added_labels == ("meh",)
    assert [e.target for e in added.validation] == ["pos", "meh", "meh", "neg"]
    assert {e.target for e in added.train} == {"neg", "pos"}
    assert "'meh' only in the evaluation file: added to the label words" in added.data_notes()[0]
    dropped = load_user_task(train, dev, eval_labels="drop")
    assert dropped.label_words == ("neg", "pos") and [e.target for e in dropped.validation] == ["pos", "neg"]
    assert dropped.data_notes() == ["dev.csv: 2 of 4 rows skipped (a label the training rows lack: 'meh'): row 2, "
                                    "row 3"]


def test_config_errors(tmp_path: Path) -> None:
    data = _csv(tmp_path / "d.csv", _reviews(10))
    with pytest.raises(ConfigError, match="either text_column or template"):
        load_user_task(data, text_column="text", template="{text}")
    with pytest.raises(ConfigError, match="must name columns in braces"):
        load_user_task(data, template="no fields here")
    with pytest.raises(ConfigError, match="not a valid format string"):
        load_user_task(data, template="{text")


# ---- limits: every one fails fast, naming the file and the limit ----

def test_a_parquet_file_with_too_many_rows_is_refused_from_its_metadata(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.tasks.reading import Limits, Reader

    path = tmp_path / "bomb.parquet"  # 2M rows of repeated text: a few KB on disk
    pq.write_table(pa.table({"text": ["same words"] * 2_000_000, "label": ["a", "b"] * 1_000_000}), path)
    assert path.stat().st_size < 200_000
    reader = Reader(path, Limits(max_rows=1_000_000))
    with pytest.raises(DataError, match=r"bomb\.parquet: 2,000,000 rows, more than the limit of 1,000,000"):
        next(iter(reader))
    assert reader.count == 0  # refused before a single row was decoded
    _error(r"more than 10 data rows", _csv(tmp_path / "many.csv", _reviews(11)), limits=Limits(max_rows=10))


def test_long_cells_and_too_much_text_are_refused(tmp_path: Path) -> None:
    from core.tasks.reading import Limits

    long = _csv(tmp_path / "long.csv", "text,label\nshort,a\n" + "x" * 30_000 + ",b\n")
    # csv's own field limit (process-wide: it may be higher) or the reader's check, whichever sees it first
    _error(r"long\.csv: (line 3|row 2, column 'text'): a cell of (more than 20,000|30,000) characters", long)
    rows = [{"text": "t", "label": "y" * 300} for _ in range(4)]
    _error(r"row 1, column 'label': a cell of 300 characters, more than the limit of 200",
           _jsonl(tmp_path / "l.jsonl", rows), limits=Limits(max_cell_chars=200))
    _error(r"more than 500 characters of text in all", _csv(tmp_path / "t.csv", _reviews(40)),
           limits=Limits(max_text_chars=500))
    path = tmp_path / "array.json"
    path.write_text(json.dumps([{"text": "a" * 100, "label": "b"}] * 20), encoding="utf-8")
    _error(r"a JSON array of 0\.0 MiB is read whole.*save it as JSON Lines", str(path),
           limits=Limits(max_json_array_bytes=1000))


def test_classification_has_a_label_cap(tmp_path: Path) -> None:
    rows = "".join(f"review {i},label{i % 150}\n" for i in range(600))
    data = _csv(tmp_path / "labels.csv", "text,label\n" + rows)
    _error(r"labels\.csv: column 'label' has more than 100 distinct labels.*kind='generation'", data,
           kind="classification")
    assert load_user_task(data).label_words is None  # auto: so many labels are free text


def test_the_label_column_cannot_be_part_of_the_input(tmp_path: Path) -> None:
    data = _csv(tmp_path / "d.csv", _reviews(10))
    with pytest.raises(ConfigError, match=r"label_column='text': it is also the text column"):
        load_user_task(data, text_column="text", label_column="text")
    with pytest.raises(ConfigError, match=r"label_column='label': the template '\{text\} \{label\}' uses it"):
        load_user_task(data, template="{text} {label}")


def test_the_streaming_check_says_what_loading_would(tmp_path: Path) -> None:
    from core.tasks.files import check_user_files

    train = _csv(tmp_path / "train.csv", _reviews(10))
    assert check_user_files(train).label_words == ("neg", "pos") == load_user_task(train).label_words
    assert check_user_files(train, kind="generation").label_words is None
    assert check_user_files(train).rows == 10
    dev = _csv(tmp_path / "dev.csv", "text,label\na,pos\nb,meh\n")
    with pytest.raises(DataError, match=r"label\(s\) 'meh' \(1 row: row 2\) in column 'label' are not among"):
        check_user_files(train, dev, kind="classification")
    assert check_user_files(train, dev, kind="classification", eval_labels="add").added_labels == ("meh",)
    with pytest.raises(DataError, match=r"no 'text' column"):
        check_user_files(_csv(tmp_path / "r.csv", "review,stars\ngood,5\n"))
