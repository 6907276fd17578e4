"""Problems carry the setting at fault: validate_spec (settings alone, no file read), check_inputs (what a run reads),
and the method configs' checks, so that every face finds a problem's field by the setting's name."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from core.errors import ConfigError, DataError
from core.inputs import check_inputs
from core.methods import method_config
from core.spec import DataConfig, RunSpec, TrainConfig, validate_spec


def test_validation_names_the_setting_of_every_problem() -> None:
    bad = RunSpec(data=DataConfig(task="rotten_tomatoes", max_eval_examples=0),
                  train=TrainConfig(steps=0, epochs=2, batch_size=0, lr=20, eval_every=0, device="tpu"))
    with pytest.raises(ConfigError) as info:
        validate_spec(bad)
    settings = [setting for setting, _ in info.value.problems]
    assert settings == ["max_eval_examples", "steps", "steps", "batch_size", "lr", "eval_every", "device"]
    assert str(info.value).splitlines() == [message for _, message in info.value.problems]


def test_validation_reads_no_file_and_check_inputs_does(tmp_path: Path) -> None:
    missing = RunSpec(data=DataConfig(task=None, train_file=str(tmp_path / "no.csv"), eval_file=str(tmp_path / "x")),
                      train=TrainConfig(init_from=str(tmp_path / "no-run")))
    validate_spec(missing)  # settings alone: a path that is not there is check_inputs' business
    with pytest.raises(ConfigError) as info:
        check_inputs(missing)
    assert [setting for setting, _ in info.value.problems] == ["train_file", "eval_file", "init_from"]
    assert "no.csv: no such file" in str(info.value) and "no finished run there" in str(info.value)


@pytest.mark.parametrize(("method", "knobs", "setting"), [
    ("lamp", {"length": 0}, "length"),
    ("lamp", {"rank": 0}, "rank"),
    ("lamp", {"rank": 9, "length": 4, "pool": 1}, "rank"),
    ("lamp", {"pool": 3}, "pool"),
    ("lamp", {"init": "x"}, "init"),
    ("dpt", {"rank": 0}, "rank"),
    ("prompt-tuning", {"length": 0}, "length"),
    ("nope", {}, "method"),
])
def test_every_method_problem_names_its_knob(method: str, knobs: dict[str, object], setting: str) -> None:
    # The method configs write their problems as "knob=value: ..."; a reworded message must keep naming its knob,
    # or the dashboard would show it away from its field: this test is what notices.
    with pytest.raises(ConfigError) as info:
        method_config(method, **knobs)
    assert setting in {name for name, _ in info.value.problems}, info.value.problems


def test_problems_survive_pickling_and_can_be_given_a_setting() -> None:
    error = ConfigError(("lr", "lr=20: must be in (0, 10)"), "a line of its own")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is ConfigError and again.problems == error.problems == (
        ("lr", "lr=20: must be in (0, 10)"), (None, "a line of its own"))
    assert DataError("d.csv: no data rows").about("train_file").problems == (("train_file", "d.csv: no data rows"),)
