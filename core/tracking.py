"""Experiment tracking: MLflow and TensorBoard as listeners of the training events (the same callback the store and
the progress bar hear). Off unless a run names a place (TrainConfig.mlflow_uri, TrainConfig.tensorboard_dir; the
CLI's --mlflow / --tensorboard, or LAMP_MLFLOW_URI / LAMP_TENSORBOARD_DIR). Both libraries are an optional extra:
`pip install 'lamp-studio[tracking]'`.

Logged: the run's settings as parameters; by step the training loss, learning rate, examples/s, peak memory and the
prompt's norm; each validation's metrics (`val_<name>`) and the test's (`test_<name>`); the artifact folder at the
end (MLflow). A resumed run continues the MLflow run it began (its id is kept in the run's folder).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.events import Event

EXPERIMENT = "lamp-studio"
RUN_ID_FILE = "mlflow_run_id"
STEP_KEYS = ("loss", "lr", "examples_per_second", "peak_memory_mb", "prompt_norm", "norm_ratio")


def _flat(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: "" if value is None else str(value)[:500]}


def _metrics(event: Event) -> dict[str, float]:
    """The event's numbers under their tracked names."""
    if event.kind == "step":
        return {f"train_{k}": float(event.data[k]) for k in STEP_KEYS if isinstance(event.data.get(k), int | float)}
    if event.kind in ("eval", "test"):
        prefix = "val_" if event.kind == "eval" else "test_"
        return {prefix + k: float(v) for k, v in event.data.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}
    return {}


def _require(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs the tracking extra: pip install 'lamp-studio[tracking]'") from None


class MlflowTracker:
    """One MLflow run per training run, through MlflowClient (no global active run: safe in a worker)."""

    def __init__(self, uri: str, out_dir: Path, settings: dict[str, Any], run_name: str) -> None:
        _require("mlflow", f"--mlflow {uri}")
        from mlflow.tracking import MlflowClient

        self.uri, self.out_dir = uri, out_dir
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=_artifact_root(uri))
        kept = out_dir / RUN_ID_FILE
        self.run_id = kept.read_text().strip() if kept.is_file() else ""
        if not self.run_id:
            run = self.client.create_run(experiment_id, run_name=run_name)
            self.run_id = run.info.run_id
            out_dir.mkdir(parents=True, exist_ok=True)
            kept.write_text(self.run_id)
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in _flat(settings).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.artifact: str | None = None

    def __call__(self, event: Event) -> None:
        from mlflow.entities import Metric

        values = _metrics(event)
        if values:
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, event.step) for k, v in values.items()])
        if event.kind == "done":
            self.artifact = str(event.data.get("artifact") or "")

    def close(self, failed: bool) -> None:
        if not failed and self.artifact and Path(self.artifact).is_dir():
            self.client.log_artifacts(self.run_id, self.artifact, artifact_path="artifact")
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _artifact_root(uri: str) -> str | None:
    """A local sqlite store keeps its artifacts beside it (MLflow's default, ./mlruns, follows the cwd)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).expanduser().resolve().parent / "mlflow-artifacts").as_uri()
    return None


class TensorBoardTracker:
    """TensorBoard event files in `folder/<run name>` (torch's SummaryWriter)."""

    def __init__(self, folder: str, settings: dict[str, Any], run_name: str) -> None:
        _require("tensorboard", f"--tensorboard {folder}")
        from torch.utils.tensorboard import SummaryWriter

        self.dir = str(Path(folder).expanduser() / run_name)
        self.writer = SummaryWriter(log_dir=self.dir)
        self.writer.add_text("settings", "```\n" + json.dumps(settings, indent=2) + "\n```", 0)

    def __call__(self, event: Event) -> None:
        for name, value in _metrics(event).items():
            split, _, key = name.partition("_")
            self.writer.add_scalar(f"{split}/{key}", value, event.step)
        if event.kind in ("eval", "test", "done"):
            self.writer.flush()

    def close(self, failed: bool) -> None:
        self.writer.close()


Tracker = MlflowTracker | TensorBoardTracker


def open_trackers(settings: dict[str, Any], out_dir: Path, mlflow_uri: str | None, tensorboard_dir: str | None
                  ) -> list[Tracker]:
    """The trackers a run asked for (none: an empty list); the run's name is its folder's."""
    name = out_dir.name or "run"
    out: list[Tracker] = []
    if mlflow_uri:
        out.append(MlflowTracker(mlflow_uri, out_dir, settings, name))
    if tensorboard_dir:
        out.append(TensorBoardTracker(tensorboard_dir, settings, name))
    return out


def where_logged(train: dict[str, Any], run_name: str) -> str:
    """"MLflow sqlite:///... (experiment lamp-studio, run job-7) · TensorBoard runs/tb/job-7", or ""."""
    parts = []
    if train.get("mlflow_uri"):
        parts.append(f"MLflow `{train['mlflow_uri']}` (experiment {EXPERIMENT}, run {run_name})")
    if train.get("tensorboard_dir"):
        parts.append(f"TensorBoard `{Path(str(train['tensorboard_dir'])) / run_name}`")
    return " · ".join(parts)
