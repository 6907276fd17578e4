"""Scores for predicted answers, in pure Python.

Predictions are answer strings. How they were made (by generating text, or by ranking the label words / candidates
by their scores) is the caller's business: the caller labels the metric with it. Every metric here compares a
prediction with `Example.target` (or with every gold answer in `Example.answers`).

- accuracy: `strip().lower()` equality with the target.
- macro_f1: F1 per label word, averaged (CB). Classes are `label_words` when given, else the distinct gold targets.
- f1: binary F1, the positive class being label id 1 (the second label word), e.g. MRPC's "equivalent".
- multirc_f1a: binary F1 over all answer options, positive class "true" (label id 1) (MultiRC F1a).
- multirc_em: share of questions (`Example.group`) whose every answer option is right.
- record_f1, record_em: SQuAD token F1 / exact match after SQuAD normalisation, max over the gold answers (ReCoRD).
- exact_match: SQuAD-normalised string equality, max over the gold answers (free generation on a user's data).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from core.errors import ConfigError
from core.tasks.base import Example

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_label(text: str) -> str:
    """How a label prediction is compared: case and surrounding whitespace do not count."""
    return text.strip().lower()


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _gold_answers(example: Example) -> tuple[str, ...]:
    return example.answers or (example.target,)


def _safe_div(num: float, den: float) -> float:
    # sklearn's zero_division=0: an undefined precision/recall/F1 counts as 0.
    return num / den if den else 0.0


def _f1(tp: int, fp: int, fn: int) -> float:
    return _safe_div(2 * tp, 2 * tp + fp + fn)


def _accuracy(preds: Sequence[str], examples: Sequence[Example], label_words: Sequence[str] | None) -> float:
    hits = sum(normalize_label(p) == normalize_label(ex.target) for p, ex in zip(preds, examples, strict=True))
    return hits / len(examples)


def _macro_f1(preds: Sequence[str], examples: Sequence[Example], label_words: Sequence[str] | None) -> float:
    gold = [normalize_label(ex.target) for ex in examples]
    pred = [normalize_label(p) for p in preds]
    classes = [normalize_label(w) for w in label_words] if label_words else sorted(set(gold))
    scores = []
    for cls in classes:
        tp = sum(g == cls and p == cls for g, p in zip(gold, pred, strict=True))
        fp = sum(g != cls and p == cls for g, p in zip(gold, pred, strict=True))
        fn = sum(g == cls and p != cls for g, p in zip(gold, pred, strict=True))
        scores.append(_f1(tp, fp, fn))
    return sum(scores) / len(scores)


def _positive_word(examples: Sequence[Example], label_words: Sequence[str] | None) -> str | None:
    if label_words is not None and len(label_words) > 1:
        return normalize_label(label_words[1])
    for ex in examples:
        if ex.label == 1:
            return normalize_label(ex.target)
    return None


def _binary_f1(preds: Sequence[str], examples: Sequence[Example], label_words: Sequence[str] | None) -> float:
    positive = _positive_word(examples, label_words)
    if positive is None:
        return 0.0  # no gold positive and no way to recognise a predicted one: F1 is undefined
    gold = [normalize_label(ex.target) == positive for ex in examples]
    pred = [normalize_label(p) == positive for p in preds]
    tp = sum(g and p for g, p in zip(gold, pred, strict=True))
    fp = sum(p and not g for g, p in zip(gold, pred, strict=True))
    fn = sum(g and not p for g, p in zip(gold, pred, strict=True))
    return _f1(tp, fp, fn)


def _multirc_em(preds: Sequence[str], examples: Sequence[Example], label_words: Sequence[str] | None) -> float:
    all_right: dict[object, bool] = {}
    for i, (p, ex) in enumerate(zip(preds, examples, strict=True)):
        key: object = ex.group if ex.group is not None else ("__row__", i)
        right = normalize_label(p) == normalize_label(ex.target)
        all_right[key] = all_right.get(key, True) and right
    return sum(all_right.values()) / len(all_right)


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 between two answers."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _record_f1(preds: Sequence[str], examples: Sequence[Example], label_words: Sequence[str] | None) -> float:
    total = sum(max(token_f1(p, g) for g in _gold_answers(ex)) for p, ex in zip(preds, examples, strict=True))
    return total / len(examples)


def _exact_match(preds: Sequence[str], examples: Sequence[Example], label_words: Sequence[str] | None) -> float:
    hits = sum(
        any(normalize_answer(p) == normalize_answer(g) for g in _gold_answers(ex))
        for p, ex in zip(preds, examples, strict=True)
    )
    return hits / len(examples)


_Metric = Callable[[Sequence[str], Sequence[Example], Sequence[str] | None], float]

METRICS: dict[str, _Metric] = {
    "accuracy": _accuracy,
    "macro_f1": _macro_f1,
    "f1": _binary_f1,
    "multirc_f1a": _binary_f1,  # F1a is binary F1 over every answer option, positive class "true" (label id 1)
    "multirc_em": _multirc_em,
    "record_f1": _record_f1,
    "record_em": _exact_match,
    "exact_match": _exact_match,
}


def compute_metrics(
    names: Sequence[str],
    predictions: Sequence[str],
    examples: Sequence[Example],
    *,
    label_words: Sequence[str] | None = None,
) -> dict[str, float]:
    """Score `predictions[i]` against `examples[i]` with each named metric.

    `label_words` (the task's, in label-id order) fixes the classes of macro_f1 and the positive class of f1; without
    it they are read from the examples' targets and labels.
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    if not examples:
        raise ValueError("no examples to score")
    return {name: METRICS[name](predictions, examples, label_words) for name in names}
