"""Warm start (prompt transfer): a new run starts from a finished run's prompt instead of the vocabulary.

What transfers is the source's full prompt C (l, d) before pooling, built from its trained parameters (LAMP:
U diag(Q)^2 V^T; prompt tuning: P; DPT: A B). The new method starts from it (core.methods.build_prompt):

    LAMP           truncated SVD of C at the new rank, Q = sqrt(S): C starts at the best rank-r approximation
    prompt tuning  a copy of C
    DPT            A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T: A B is the same best rank-r approximation

So the new run may use another method, rank or pool, and another backbone, as long as its hidden size d and its
prompt length l are the source's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.artifact import MANIFEST, Artifact, load_artifact
from core.errors import ArtifactError, ConfigError, Problem
from core.methods import prompt_module
from core.spec import RunSpec


@dataclass(frozen=True)
class WarmSource:
    artifact: Artifact
    dense: torch.Tensor
    """C (l, d), float32: the source's trained prompt before pooling."""

    def origin(self, start: torch.Tensor | None = None) -> dict[str, Any]:
        """What the new artifact's manifest records under `init_from`. `start` (l, d), the new run's C at step 0,
        adds how far it is from the source (0 up to rounding unless a lower rank truncated it)."""
        m = self.artifact.manifest
        out: dict[str, Any] = {
            "artifact": str(self.artifact.path.resolve()),
            "model": m["model"]["id"], "model_source": m["model"]["source"], "hidden_size": m["model"]["hidden_size"],
            "method": m["spec"]["method"], "task": m["task"]["name"], "steps": m.get("steps"),
            "metrics": m.get("metrics", {}),
        }
        if start is not None:
            out["start_error"] = relative_distance(start, self.dense)
        return out


def relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||_F / ||b||_F (0 when b is all zeros and a equals it)."""
    ref = b.detach().double().norm().item()
    diff = (a.detach().double() - b.detach().double()).norm().item()
    return diff / ref if ref > 0 else diff


def dense_of(artifact: Artifact) -> torch.Tensor:
    """C (l, d) of an artifact's trained parameters."""
    module = prompt_module(artifact.method, artifact.params())
    with torch.no_grad():
        return module.dense().detach().float()


def _artifact_at(path: str) -> Artifact:
    folder = Path(path).expanduser()
    if not (folder / MANIFEST).is_file():
        raise ArtifactError(f"init_from={path}: no finished run there (no {MANIFEST}); give the --out directory "
                            "of a finished `lamp train` (`lamp submit` and the dashboard also take a job id)")
    try:
        return load_artifact(folder)
    except ArtifactError as exc:
        raise ArtifactError(f"init_from={path}: {exc}") from exc


def load_warm_source(path: str) -> WarmSource:
    artifact = _artifact_at(path)
    return WarmSource(artifact, dense_of(artifact))


def warm_start_problems(spec: RunSpec) -> list[Problem]:
    """Problems with `spec.train.init_from`, read from the source's manifest and the target model's config alone
    (no weights), each under the `init_from` setting."""
    from core.backbone import config_hidden_size

    path = spec.train.init_from
    if path is None:
        return []
    try:
        artifact = _artifact_at(path)
    except ArtifactError as exc:
        return [("init_from", str(exc))]
    problems: list[Problem] = []
    source = artifact.manifest
    length = int(source["spec"]["method"]["length"])
    if length != spec.method.length:
        problems.append(("init_from", f"init_from: the source prompt has length l={length} but this run's length is "
                                      f"{spec.method.length}; set the length to {length} (rank and pool may differ)"))
    source_d = int(source["model"]["hidden_size"])
    target_d = config_hidden_size(spec.model.name)
    if target_d is not None and target_d != source_d:
        problems.append(("init_from", f"init_from: the source prompt was trained on {source['model']['id']} with "
                                      f"hidden size {source_d}, but {spec.model.name} has hidden size {target_d}; a "
                                      "warm start needs a model of the same hidden size"))
    return problems


def check_width(source: WarmSource, hidden_size: int) -> None:
    """At load time, for a model whose config could not be read before (a hub id not cached at submit)."""
    if source.dense.shape[1] != hidden_size:
        raise ConfigError(f"init_from: the source prompt has width {source.dense.shape[1]} but the model's hidden "
                          f"size is {hidden_size}; a warm start needs a model of the same hidden size")
