"""Warm start (prompt transfer): a run starts at a finished run's prompt C, through `fit`, validation, `lamp
submit --init-from JOB`, the New job form and job details."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_app_handlers import _store
from test_jobs_support import tiny_spec

from core.artifact import load_artifact
from core.errors import Cancelled, ConfigError
from core.inputs import check_inputs
from core.methods import method_config, prompt_module
from core.spec import DataConfig, ModelConfig, RunSpec, TrainConfig, validate_spec
from core.train import fit
from core.warm_start import dense_of


def _spec(model: Path, csv: Path, method: str, init_from: Path | None, **knobs: int) -> RunSpec:
    return RunSpec(model=ModelConfig(str(model)), method=method_config(method, **knobs),
                   data=DataConfig(task=None, train_file=str(csv), text_column="review", label_column="verdict",
                                   max_eval_examples=4, max_test_examples=4),
                   train=TrainConfig(steps=1, batch_size=4, eval_every=1, lr=0.05, device="cpu", final_eval=False,
                                     generate_eval=False, init_from=str(init_from) if init_from else None))


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    path.write_text("review,verdict\n" + "".join(f"great {i},good\nawful {i},bad\n" for i in range(8)))
    return path


@pytest.fixture(scope="module")
def source(tiny_llama_dir: Path, csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished LAMP run (l=8, r=4, p=2), trained enough to have moved from its vocabulary init."""
    spec = replace(_spec(tiny_llama_dir, csv, "lamp", None, length=8, rank=4, pool=2),
                   train=TrainConfig(steps=6, batch_size=4, eval_every=3, lr=0.05, device="cpu", final_eval=False,
                                     generate_eval=False))
    return Path(fit(spec, tmp_path_factory.mktemp("source")).artifact)


def _start(result_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, pooled prompt) of a run at step 0, from its init_params."""
    artifact = load_artifact(result_dir)
    module = prompt_module(artifact.method, load_file(f"{result_dir}/init_params.safetensors"))
    with torch.no_grad():
        return module.dense(), module()


def _best_rank(c: torch.Tensor, r: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(c.double(), full_matrices=False)
    return ((u[:, :r] * s[:r]) @ vh[:r]).float()


@pytest.mark.parametrize(("method", "knobs"), [
    ("lamp", {"rank": 8, "pool": 2}), ("lamp", {"rank": 4, "pool": 4}), ("prompt-tuning", {}), ("dpt", {"rank": 4}),
], ids=["lamp-r8", "lamp-r4-p4", "prompt-tuning", "dpt-r4"])
def test_a_warm_start_begins_at_the_source_prompt(method: str, knobs: dict[str, int], source: Path,
                                                  tiny_llama_dir: Path, csv: Path, tmp_path: Path) -> None:
    result = fit(_spec(tiny_llama_dir, csv, method, source, length=8, **knobs), tmp_path)
    dense, pooled = _start(result.artifact)
    source_c = dense_of(load_artifact(source))
    assert not torch.allclose(source_c, _start(str(source))[0], atol=1e-3)  # the source did move from its init
    torch.testing.assert_close(dense, source_c, atol=1e-5, rtol=1e-4)  # source C has rank <= 4: nothing is lost
    if method == "lamp" and knobs["pool"] == 2:  # same pool: the backbone sees the source's own prompt at step 0
        torch.testing.assert_close(pooled, load_artifact(source).prompt(), atol=1e-5, rtol=1e-4)
    manifest = json.loads(Path(result.artifact, "lamp_artifact.json").read_text())
    origin = manifest["init_from"]
    assert origin["artifact"] == str(source.resolve()) and origin["method"]["name"] == "lamp"
    assert origin["model"] == str(tiny_llama_dir) and origin["hidden_size"] == 32
    assert origin["start_error"] < 1e-5 and manifest["init_token_ids"] == []


@pytest.mark.parametrize("method", ["lamp", "dpt"])
def test_a_lower_rank_starts_at_the_best_rank_r_approximation(method: str, source: Path, tiny_llama_dir: Path,
                                                              csv: Path, tmp_path: Path) -> None:
    result = fit(_spec(tiny_llama_dir, csv, method, source, length=8, rank=2), tmp_path)
    dense, _ = _start(result.artifact)
    source_c = dense_of(load_artifact(source))
    torch.testing.assert_close(dense, _best_rank(source_c, 2), atol=1e-5, rtol=1e-4)
    s = torch.linalg.svdvals(source_c.double())
    expected = float(s[2:].pow(2).sum().sqrt() / s.pow(2).sum().sqrt())  # Eckart-Young: the dropped values
    origin = json.loads(Path(result.artifact, "lamp_artifact.json").read_text())["init_from"]
    assert origin["start_error"] == pytest.approx(expected, rel=1e-3) and expected > 0.01


def test_mismatches_are_refused_with_their_fix(source: Path, tiny_llama_dir: Path, csv: Path,
                                               tmp_path: Path) -> None:
    wide = tmp_path / "wide-model"
    wide.mkdir()
    (wide / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 48}))
    with pytest.raises(ConfigError) as err:
        check_inputs(_spec(wide, csv, "lamp", source, length=12, rank=4, pool=2))
    message = str(err.value)
    assert "hidden size 32" in message and "has hidden size 48" in message
    assert "length l=8" in message and "set the length to 8" in message
    assert all(line.startswith("init_from") for line in message.splitlines())
    assert {setting for setting, _ in err.value.problems} == {"init_from"}
    with pytest.raises(ConfigError, match="no finished run there"):
        check_inputs(_spec(tiny_llama_dir, csv, "lamp", tmp_path / "nothing", length=8))
    with pytest.raises(ConfigError, match="init=paper"):
        validate_spec(_spec(tiny_llama_dir, csv, "lamp", source, length=8, init="paper"))  # type: ignore[arg-type]
    check_inputs(_spec(tiny_llama_dir, csv, "dpt", source, length=8, rank=3))  # other method and rank: fine


def test_a_resumed_warm_start_and_an_older_checkpoint_resume(source: Path, tiny_llama_dir: Path, csv: Path,
                                                             tmp_path: Path) -> None:
    spec = _spec(tiny_llama_dir, csv, "lamp", source, length=8, rank=4, pool=2)
    spec = replace(spec, train=replace(spec.train, steps=4, checkpoint_every=2))
    calls = {"n": 0}

    def stop_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled):
        fit(spec, tmp_path, should_stop=stop_after_two)
    assert fit(spec, tmp_path).resumed_from == 2
    # A checkpoint written before `init_from` existed reads it as None and still resumes its run.
    plain = replace(spec, train=replace(spec.train, init_from=None, steps=6))
    calls["n"] = 0
    with pytest.raises(Cancelled):
        fit(plain, tmp_path / "old", should_stop=stop_after_two)
    state = torch.load(tmp_path / "old" / "checkpoint.pt", weights_only=False)
    del state["spec"]["train"]["init_from"]
    torch.save(state, tmp_path / "old" / "checkpoint.pt")
    assert fit(plain, tmp_path / "old").resumed_from == 2


# ---- through the store: lamp submit, the form, job details ----

@pytest.fixture()
def finished_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama_dir: Path,
                 sentiment_csv: Path) -> Iterator[int]:
    from jobs.queue import execute_next
    from jobs.tasks import submit

    for _ in _store(tmp_path, monkeypatch, "sqlite"):
        job_id = submit(tiny_spec(tiny_llama_dir, sentiment_csv))
        assert execute_next()
        yield job_id


def test_submit_init_from_a_job_id(finished_job: int, tiny_llama_dir: Path, sentiment_csv: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from app import monitor
    from jobs import store
    from jobs.db import read
    from lamp.cli import main

    flags = ["--model", str(tiny_llama_dir), "--train", str(sentiment_csv), "--text-column", "review",
             "--label-column", "verdict", "--length", "8", "--rank", "2", "--steps", "2", "--device", "cpu"]
    assert main(["submit", *flags, "--init-from", str(finished_job), "--json"]) == 0
    new_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["id"]
    job, result = read(store.get_job, job_id=new_id), read(store.get_result, job_id=finished_job)
    assert job is not None and result is not None and job.spec["train"]["init_from"] == result.artifact
    details = monitor.job_details(new_id).markdown
    assert f"Warm start from job **#{finished_job}**: lamp l=8 r=4 p=2" in details
    assert main(["submit", *flags, "--init-from", str(new_id)]) == 2  # still queued
    assert f"job {new_id} is QUEUED" in capsys.readouterr().err
    assert main(["submit", *flags, "--length", "12", "--init-from", f"#{finished_job}"]) == 2
    assert "length l=8" in capsys.readouterr().err


def test_the_form_puts_warm_start_problems_beside_its_field(finished_job: int, tiny_llama_dir: Path,
                                                           tmp_path: Path, access: Any) -> None:
    from app import forms
    from jobs import store
    from jobs.db import read

    wide = tmp_path / "wide-model"
    wide.mkdir()
    (wide / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 48}))
    form = {**forms.DEFAULTS, "model": str(tiny_llama_dir), "length": 8, "rank": 4, "pool": 2}
    with pytest.raises(forms.FormError) as err:
        forms.spec_from_form({**form, "model": str(wide), "init_from": finished_job}, access)
    assert set(err.value.problems) == {"init_from"}
    assert "hidden size 48" in err.value.problems["init_from"]
    with pytest.raises(forms.FormError) as err:
        forms.spec_from_form({**form, "init_from": "999"}, access)
    assert err.value.problems == {"init_from": "init_from: there is no job 999"}
    with pytest.raises(forms.FormError) as err:
        forms.spec_from_form({**form, "length": 100, "init_from": finished_job}, access)
    assert "length l=8" in err.value.problems["init_from"]
    spec, _ = forms.spec_from_form({**form, "init_from": float(finished_job)}, access)  # as the dropdown sends it
    result = read(store.get_result, job_id=finished_job)
    assert result is not None and spec.train.init_from == result.artifact
    assert forms.spec_from_form({**form, "init_from": ""}, access)[0].train.init_from is None
