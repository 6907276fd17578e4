"""Experiment tracking against the real libraries: a run on a tiny Llama logs to MLflow (a local sqlite store, read
back with MlflowClient) and to TensorBoard (event files read back with TensorBoard's EventAccumulator), from
`lamp train` and from a queued job whose page says where it was logged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_jobs_support import lamp_command, tiny_spec, worker_store

from core.spec import RunSpec


def _scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_lamp_train_logs_to_mlflow_and_tensorboard(tiny_llama_dir: Path, sentiment_csv: Path,
                                                   tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run-a"
    done = subprocess.run([*lamp_command(), "train", "--model", str(tiny_llama_dir), "--train",
                           str(sentiment_csv), "--text-column", "review", "--label-column", "verdict", "--length", "8",
                           "--rank", "4", "--pool", "2", "--steps", "4", "--batch-size", "4", "--eval-every", "2",
                           "--device", "cpu", "--threads", "1", "--quiet", "--out", str(out), "--mlflow", uri,
                           "--tensorboard", str(tmp_path / "tb")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lamp-studio")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run-a" and run.info.status == "FINISHED"
    assert run.data.params["method.name"] == "lamp" and run.data.params["train.steps"] == "4"
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == [1, 2, 3, 4] and all(m.value > 0 for m in losses)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [2, 4]
    assert "test_accuracy" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "artifact")}
    assert "artifact/lamp_artifact.json" in logged and "artifact/prompt.safetensors" in logged
    assert (out / "mlflow_run_id").read_text() == run.info.run_id  # a resumed run continues this one
    tb = _scalars(tmp_path / "tb" / "run-a", "train/loss")
    assert [s for s, _ in tb] == [1, 2, 3, 4]
    assert [v for _, v in tb] == pytest.approx([m.value for m in losses], rel=1e-6)
    assert [s for s, _ in _scalars(tmp_path / "tb" / "run-a", "val/accuracy")] == [2, 4]


def test_a_queued_job_logs_where_its_page_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              tiny_llama_dir: Path, sentiment_csv: Path) -> None:
    from dataclasses import replace

    from mlflow.tracking import MlflowClient

    from app.monitor import job_details
    from jobs.queue import execute_next
    from jobs.tasks import submit

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for _ in worker_store(tmp_path, monkeypatch, "sqlite"):
        spec: RunSpec = tiny_spec(tiny_llama_dir, sentiment_csv)
        spec = replace(spec, train=replace(spec.train, mlflow_uri=uri, tensorboard_dir=str(tmp_path / "tb")))
        job_id = submit(spec)
        assert execute_next()
        page = job_details(job_id).markdown
        assert f"MLflow `{uri}` (experiment lamp-studio, run job-{job_id})" in page
        assert f"TensorBoard `{tmp_path / 'tb' / f'job-{job_id}'}`" in page
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("lamp-studio")
        assert experiment is not None
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.run_name == f"job-{job_id}" and run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == spec.train.steps
        assert _scalars(tmp_path / "tb" / f"job-{job_id}", "train/loss")
