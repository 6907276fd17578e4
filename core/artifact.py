"""The artifact directory a run writes, and reading it back.

    lamp_artifact.json        what was trained on what: spec, method, model, label words, template, metrics
    prompt_params.safetensors the method's trained parameters (LAMP: u, q, v)
    init_params.safetensors   the same parameters at initialisation (to measure drift)
    prompt.safetensors        the pooled prompt P' the backbone sees, tensor "prompt" (l/p, d), float32; for DePT
                              also "offset" (s, d), added to the input's first s token embeddings
    history.jsonl             one line per step/eval event
    snapshots/step-NNNNNN.safetensors
                              the method's parameters at each evaluation (LAMP: u, q, v; a few to tens of KB each),
                              for what moved during training (`lamp inspect`: Q over training, drift). A resumed
                              run first drops the snapshots after its checkpoint, as it does history lines.

The manifest's `init_from` (None for a run that started from the vocabulary) records a warm start: the source
artifact's path, model, method, task and metrics.
"""

from __future__ import annotations

import json
import math
import os
import re
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

    def offset(self) -> torch.Tensor | None:
        """What the method adds to the input's own token embeddings (DePT: A B, (s, d)), float32; None for the
        methods that only put a prompt in front."""
        return load_file(str(self.path / "prompt.safetensors")).get("offset")

    def params(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "prompt_params.safetensors"))

    def init_params(self) -> dict[str, torch.Tensor] | None:
        """The parameters at initialisation (None for an artifact written without them)."""
        file = self.path / "init_params.safetensors"
        return load_file(str(file)) if file.is_file() else None

    def snapshots(self) -> list[tuple[int, dict[str, torch.Tensor]]]:
        """(step, parameters) at each evaluation, in step order."""
        return [(step, load_file(str(file))) for step, file in snapshot_files(self.path)]


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}


def save_artifact(
    out: Path, manifest: dict[str, Any], params: dict[str, torch.Tensor], init_params: dict[str, torch.Tensor],
    prompt: torch.Tensor, offset: torch.Tensor | None = None,
) -> Artifact:
    out.mkdir(parents=True, exist_ok=True)
    save_file(_cpu(params), str(out / "prompt_params.safetensors"))
    save_file(_cpu(init_params), str(out / "init_params.safetensors"))
    save_file(_cpu({"prompt": prompt} if offset is None else {"prompt": prompt, "offset": offset}),
              str(out / "prompt.safetensors"))
    write_json_atomic(out / MANIFEST, {"format_version": FORMAT_VERSION, **manifest})  # written last: marks done
    return Artifact(out, load_manifest(out))


SNAPSHOTS = "snapshots"
_SNAPSHOT = re.compile(r"^step-(\d+)\.safetensors$")


def snapshot_files(out: Path) -> list[tuple[int, Path]]:
    folder = out / SNAPSHOTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), f) for f in folder.iterdir() if (m := _SNAPSHOT.match(f.name))]
    return sorted(found)


def save_snapshot(out: Path, step: int, params: dict[str, torch.Tensor]) -> Path:
    folder = out / SNAPSHOTS
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"step-{step:06d}.safetensors"
    tmp = file.with_name(file.name + ".tmp")
    save_file(_cpu(params), str(tmp))
    os.replace(tmp, file)  # atomic: a kill mid-write leaves no half snapshot behind
    return file


def drop_snapshots_after(out: Path, step: int | None) -> None:
    """Remove the snapshots taken after `step` (None: all of them), as a resumed or restarted run must."""
    for taken, file in snapshot_files(out):
        if step is None or taken > step:
            file.unlink()


def load_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise ArtifactError(f"{path}: not a LAMP Studio artifact (no {MANIFEST}); point --artifact at the "
                            "directory that `lamp train --out` wrote")
    try:
        manifest: dict[str, Any] = json.loads(file.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{file}: not readable JSON ({exc}); the artifact is damaged: train the run again") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{file}: not an artifact manifest; the artifact is damaged: train the run again")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format {manifest.get('format_version')} is not supported "
                            f"(this version reads {FORMAT_VERSION})")
    return manifest


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER = 100 * 2**20


def check_safetensors(file: Path) -> None:
    """ArtifactError naming the file unless its header is whole and its tensors fill the file exactly (a file cut
    short, or overwritten, is caught here, before any model is loaded)."""
    size = file.stat().st_size
    bad = f"{file}: not a complete safetensors file"
    with file.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(MAX_HEADER, size - 8):
            raise ArtifactError(f"{bad} ({size:,} bytes: the header is cut short or garbled); train the run again "
                                "or copy the artifact again")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ArtifactError(f"{bad} (its header is not JSON: {exc}); train the run again") from exc
    end = 0
    for name, info in (header.items() if isinstance(header, dict) else []):
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            count = _DTYPE_BYTES[info["dtype"]] * math.prod(info["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{bad} (tensor {name!r} is described wrongly: {exc})") from exc
        if stop - begin != count or begin < 0:
            raise ArtifactError(f"{bad} (tensor {name!r} has {stop - begin} bytes for {count})")
        end = max(end, stop)
    if 8 + n + end != size:
        raise ArtifactError(f"{bad}: its tensors need {8 + n + end:,} bytes, the file has {size:,} (cut short or "
                            "padded); train the run again or copy the artifact again")


def load_artifact(path: str | Path) -> Artifact:
    """The artifact at `path`, its manifest read and its safetensors files checked (ArtifactError names the file)."""
    p = Path(path).expanduser()
    manifest = load_manifest(p)
    for name in ("prompt.safetensors", "prompt_params.safetensors", "init_params.safetensors"):
        file = p / name
        if not file.is_file():
            if name == "init_params.safetensors":
                continue  # written from format 1's later runs on; older artifacts lack it
            raise ArtifactError(f"{p}: {name} is missing; the run may not have finished")
        check_safetensors(file)
    return Artifact(p, manifest)
