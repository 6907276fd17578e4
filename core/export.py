"""Export the pooled prompt P' as a PEFT prompt-tuning adapter.

PEFT's default for seq-to-seq models puts a prompt before the decoder too (num_transformer_submodules=2); ours goes
before the encoder only, so the adapter says 1. The weights file holds one tensor, `prompt_embeddings` (l/p, d).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from core.artifact import load_artifact
from core.errors import ArtifactError


def export_peft(artifact_dir: str | Path, out_dir: str | Path, base_model: str | None = None) -> Path:
    from peft import PromptTuningConfig, TaskType

    artifact = load_artifact(artifact_dir)
    if artifact.offset() is not None:
        raise ArtifactError(f"{artifact_dir}: a {artifact.method.name} prompt also changes the input's own token "
                            "embeddings (its offset A B), and a PEFT prompt-tuning adapter can only put vectors in "
                            "front of them; serve it with LAMP Studio (lamp api) or export --format prompt-embeds")
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


PROMPT_EMBEDS = "prompt_embeds.safetensors"
PROMPT_EMBEDS_META = "prompt_embeds.json"


def export_prompt_embeds(artifact_dir: str | Path, out_dir: str | Path) -> Path:
    """The pooled prompt as a plain tensor for engines that take embeddings as input (vLLM's
    `--enable-prompt-embeds`): `prompt_embeds.safetensors` holds `prompt_embeds` (l/p, d) in float32, and
    `prompt_embeds.json` the backbone, the task's template, answer cue and label words (core.prompt_embeds builds
    a request from both). A DePT prompt's input offset goes along as `offset` (s, d): the request adds it to the
    input's first s token embeddings."""
    artifact = load_artifact(artifact_dir)
    model = artifact.manifest["model"]
    prompt = artifact.prompt()
    if prompt.shape[1] != model["hidden_size"]:
        raise ArtifactError(f"{artifact_dir}: prompt width {prompt.shape[1]} != hidden size {model['hidden_size']}")
    if model["family"] != "causal":
        raise ArtifactError(f"{artifact_dir}: prompt embeddings as an input are for decoder-only models; this one is "
                            "encoder-decoder (export --format peft instead)")
    task = artifact.manifest["task"]
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    offset = artifact.offset()
    tensors = {"prompt_embeds": prompt.float().contiguous()}
    if offset is not None:
        tensors["offset"] = offset.float().contiguous()
    save_file(tensors, str(out / PROMPT_EMBEDS))
    meta = {"backbone": model["hub_id"], "hidden_size": int(prompt.shape[1]), "prompt_tokens": int(prompt.shape[0]),
            "dtype": artifact.spec.model.dtype, "template": task["template"] or "{text}",
            "answer_cue": task["answer_cue"], "label_words": artifact.label_words,
            "layout": "[prompt_embeds; embed(tokenizer(template.format(text) + '\\n' + answer_cue + ':'))"
                      + (" + offset[:n]]" if offset is not None else "]")}
    (out / PROMPT_EMBEDS_META).write_text(json.dumps(meta, indent=2) + "\n")
    return out
