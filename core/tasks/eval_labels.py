"""Labels that only a user's evaluation file has. Training never saw them, so the choice is the user's, and until
they make it the file is refused, naming each such label and its first rows: add them to the label words (scored,
never trained on: the model can still be asked to rank them) or drop those rows (reported as skipped)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from core.errors import DataError
from core.tasks.base import Skipped
from core.tasks.reading import MAX_PROBLEMS

EvalLabels = Literal["add", "drop"]
"""What to do with an evaluation label the training rows lack (None: refuse, naming it and this choice)."""
SHOWN = 3
"""Rows named per label."""


class UnseenLabels:
    """Called with each kept evaluation row's (where, label): counts the labels the training rows lack and keeps
    where the first few are."""

    def __init__(self, words: tuple[str, ...]) -> None:
        self.words = set(words)
        self.counts: Counter[str] = Counter()
        self.where: dict[str, list[str]] = {}

    def __call__(self, where: str, target: str) -> None:
        if target not in self.words:
            self.counts[target] += 1
            first = self.where.setdefault(target, [])
            if len(first) < SHOWN:
                first.append(where)

    def describe(self) -> str:
        def one(label: str) -> str:
            n, first = self.counts[label], self.where[label]
            return f"{label!r} ({n:,} row{'s' if n > 1 else ''}: {', '.join(first)}{', ...' if n > len(first) else ''})"

        return ", ".join(one(label) for label in sorted(self.counts))


def settle(unseen: UnseenLabels, words: tuple[str, ...], choice: str | None, *, path: Path, label: str,
           rows: int) -> tuple[tuple[str, ...], Skipped | None]:
    """The label words with the evaluation file's own labels added (`add`), or the report of its rows dropped
    (`drop`: the caller leaves them out); DataError naming the labels and the choice when none was made."""
    if not unseen.counts:
        return words, None
    names = sorted(unseen.counts)
    if choice == "add":
        return words + tuple(names), None
    dropped = sum(unseen.counts.values())
    if choice == "drop":
        if dropped >= rows:
            raise DataError(("eval_labels", f"{path}: every row has a label the training rows lack "
                                            f"({unseen.describe()}); nothing is left to evaluate on"))
        first = tuple(w for name in names for w in unseen.where[name])[:MAX_PROBLEMS]
        why = f"a label the training rows lack: {', '.join(map(repr, names))}"
        return words, Skipped(path.name, rows, dropped, first, why)
    raise DataError(("eval_labels", f"{path}: label(s) {unseen.describe()} in column {label!r} are not among the "
                                    f"training labels ({', '.join(words)}): add them to the label words "
                                    "(--eval-labels add: scored, never trained on) or drop those rows "
                                    "(--eval-labels drop)"))
