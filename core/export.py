"""Export the pooled prompt P' as a PEFT prompt-tuning adapter.

PEFT's default for seq-to-seq models puts a prompt before the decoder too (num_transformer_submodules=2); ours goes
before the encoder only, so the adapter says 1. The weights file holds one tensor, `prompt_embeddings` (l/p, d).
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from core.artifact import load_artifact
from core.errors import ArtifactError


def export_peft(artifact_dir: str | Path, out_dir: str | Path, base_model: str | None = None) -> Path:
    from peft import PromptTuningConfig, TaskType

    artifact = load_artifact(artifact_dir)
    model = artifact.manifest["model"]
    prompt = artifact.prompt()  # (l/p, d)
    if prompt.shape[1] != model["hidden_size"]:
        raise ArtifactError(f"{artifact_dir}: prompt width {prompt.shape[1]} != hidden size {model['hidden_size']}")
    config = PromptTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if model["family"] == "seq2seq" else TaskType.CAUSAL_LM,
        num_virtual_tokens=int(prompt.shape[0]),
        token_dim=int(prompt.shape[1]),
        num_transformer_submodules=1,
        base_model_name_or_path=base_model or model["hub_id"],
    )
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file({"prompt_embeddings": prompt.contiguous()}, str(out / "adapter_model.safetensors"))
    return out
