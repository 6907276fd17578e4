"""Each metric on tiny cases computed by hand."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from core.tasks import Example, compute_metrics
from core.tasks.metrics import normalize_answer, token_f1


def _ex(target: str, label: int | None = None, **kw: object) -> Example:
    return Example(source="s", target=target, label=label, **kw)  # type: ignore[arg-type]


def test_accuracy_ignores_case_and_surrounding_space() -> None:
    examples = [_ex("positive", 1), _ex("negative", 0), _ex("positive", 1), _ex("negative", 0)]
    preds = [" Positive\n", "negative", "negative", "neg"]
    assert compute_metrics(["accuracy"], preds, examples) == {"accuracy": 0.5}


def test_macro_f1_over_label_words() -> None:
    words = ("entailment", "contradiction", "neutral")
    examples = [_ex("entailment", 0), _ex("entailment", 0), _ex("contradiction", 1), _ex("neutral", 2)]
    preds = ["entailment", "contradiction", "contradiction", "entailment"]
    # entailment: tp 1, fp 1, fn 1 -> 0.5; contradiction: tp 1, fp 1, fn 0 -> 2/3; neutral: tp 0 -> 0
    expected = (0.5 + 2 / 3 + 0) / 3
    got = compute_metrics(["macro_f1"], preds, examples, label_words=words)
    assert got["macro_f1"] == pytest.approx(expected)
    assert compute_metrics(["macro_f1"], preds, examples)["macro_f1"] == pytest.approx(expected)


def test_macro_f1_counts_a_predicted_class_absent_from_gold_when_label_words_given() -> None:
    examples = [_ex("entailment", 0), _ex("contradiction", 1)]
    preds = ["entailment", "neutral"]
    # entailment 1.0, contradiction 0.0, neutral (fp only) 0.0
    assert compute_metrics(["macro_f1"], preds, examples, label_words=("entailment", "contradiction", "neutral")) == {
        "macro_f1": pytest.approx(1 / 3)
    }


def test_binary_f1_positive_is_label_one() -> None:
    examples = [_ex("equivalent", 1), _ex("equivalent", 1), _ex("not_equivalent", 0), _ex("not_equivalent", 0)]
    preds = ["equivalent", "not_equivalent", "equivalent", "not_equivalent"]
    # tp 1, fp 1, fn 1 -> F1 0.5; accuracy 0.5
    assert compute_metrics(["accuracy", "f1"], preds, examples) == {"accuracy": 0.5, "f1": 0.5}
    words = ("not_equivalent", "equivalent")
    assert compute_metrics(["f1"], preds, examples, label_words=words) == {"f1": 0.5}


def test_binary_f1_without_positives_is_zero() -> None:
    examples = [_ex("no", 0), _ex("no", 0)]
    assert compute_metrics(["f1"], ["no", "no"], examples) == {"f1": 0.0}


def test_multirc_f1a_and_em() -> None:
    examples = [
        _ex("true", 1, group="q1"),
        _ex("false", 0, group="q1"),
        _ex("true", 1, group="q2"),
        _ex("true", 1, group="q2"),
        _ex("false", 0, group="q3"),
    ]
    preds = ["true", "false", "true", "false", "true"]
    # positives: gold {0,2,3}, predicted {0,2,4}: tp 2, fp 1, fn 1 -> F1a 2/3; questions right: q1 only -> EM 1/3
    got = compute_metrics(["multirc_f1a", "multirc_em"], preds, examples)
    assert got == {"multirc_f1a": pytest.approx(2 / 3), "multirc_em": pytest.approx(1 / 3)}


def test_squad_normalisation() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert token_f1("the big red dog", "red dog") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))


def test_record_f1_and_em_take_the_best_gold_answer() -> None:
    examples = [
        _ex("Barack Obama", answers=("Barack Obama", "Obama")),
        _ex("Berlin", answers=("Berlin",)),
        _ex("Angela Merkel"),  # no answers: the target is the only gold answer
    ]
    preds = ["obama.", "Paris", "Merkel"]
    # 1: EM with "Obama" -> f1 1; 2: 0; 3: token F1 of "merkel" vs "angela merkel" = 2*(1*0.5)/1.5 = 2/3
    got = compute_metrics(["record_f1", "record_em"], preds, examples)
    assert got == {"record_f1": pytest.approx((1 + 0 + 2 / 3) / 3), "record_em": pytest.approx(1 / 3)}


def test_exact_match_normalises() -> None:
    examples = [_ex("The answer is 42."), _ex("yes")]
    assert compute_metrics(["exact_match"], ["answer is 42", "no"], examples) == {"exact_match": 0.5}


def test_bad_calls() -> None:
    with pytest.raises(ConfigError, match=r"unknown metric.*bleu.*known: accuracy"):
        compute_metrics(["bleu"], ["a"], [_ex("a")])
    with pytest.raises(ValueError, match="2 predictions for 1 examples"):
        compute_metrics(["accuracy"], ["a", "b"], [_ex("a")])
    with pytest.raises(ValueError, match="no examples"):
        compute_metrics(["accuracy"], [], [])
