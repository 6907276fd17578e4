"""The artifact directory a run writes, and reading it back.

    lamp_artifact.json        what was trained on what: spec, method, model, label words, template, metrics
    prompt_params.safetensors the method's trained parameters (LAMP: u, q, v)
    init_params.safetensors   the same parameters at initialisation (to measure drift)
    prompt.safetensors        the pooled prompt P' the backbone sees, tensor "prompt" (l/p, d), float32
    history.jsonl             one line per step/eval event
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from core.errors import ArtifactError
from core.methods import MethodConfig, method_from_dict
from core.spec import RunSpec, spec_from_dict

FORMAT_VERSION = 1
MANIFEST = "lamp_artifact.json"


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @property
    def spec(self) -> RunSpec:
        return spec_from_dict(self.manifest["spec"])

    @property
    def method(self) -> MethodConfig:
        return method_from_dict(self.manifest["spec"]["method"])

    @property
    def label_words(self) -> tuple[str, ...] | None:
        words = self.manifest["task"]["label_words"]
        return tuple(words) if words is not None else None

    def prompt(self) -> torch.Tensor:
        """The pooled prompt P' (l/p, d), float32."""
        return load_file(str(self.path / "prompt.safetensors"))["prompt"]

    def params(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "prompt_params.safetensors"))


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}


def save_artifact(
    out: Path, manifest: dict[str, Any], params: dict[str, torch.Tensor], init_params: dict[str, torch.Tensor],
    prompt: torch.Tensor,
) -> Artifact:
    out.mkdir(parents=True, exist_ok=True)
    save_file(_cpu(params), str(out / "prompt_params.safetensors"))
    save_file(_cpu(init_params), str(out / "init_params.safetensors"))
    save_file(_cpu({"prompt": prompt}), str(out / "prompt.safetensors"))
    write_json_atomic(out / MANIFEST, {"format_version": FORMAT_VERSION, **manifest})  # written last: marks done
    return Artifact(out, load_manifest(out))


def load_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise ArtifactError(f"{path}: not a LAMP Studio artifact (no {MANIFEST}); point --artifact at the "
                            "directory that `lamp train --out` wrote")
    manifest: dict[str, Any] = json.loads(file.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format {manifest.get('format_version')} is not supported "
                            f"(this version reads {FORMAT_VERSION})")
    return manifest


def load_artifact(path: str | Path) -> Artifact:
    p = Path(path).expanduser()
    manifest = load_manifest(p)
    for name in ("prompt.safetensors", "prompt_params.safetensors"):
        if not (p / name).is_file():
            raise ArtifactError(f"{p}: {name} is missing; the run may not have finished")
    return Artifact(p, manifest)
