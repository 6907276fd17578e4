"""A small client for serving an exported prompt on an engine that takes embeddings (vLLM's
`--enable-prompt-embeds`): the request is `[prompt; embed(ids)]`, the tuned prompt followed by the input's own token
embeddings, laid out exactly as LAMP Studio lays out a prompted input (template, then `\\n<cue>:`).

    from core.prompt_embeds import ExportedPrompt
    exported = ExportedPrompt.load("exports/job-7")             # lamp export --format prompt-embeds --out ...
    embeds = exported.request(tokenizer, embedding_layer, "a wonderful film")   # (prompt + input tokens, d)
    client.completions.create(model=exported.meta["backbone"], prompt="", max_tokens=4,
                              extra_body={"prompt_embeds": encode_embeds(embeds)})
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from core.errors import ArtifactError
from core.export import PROMPT_EMBEDS, PROMPT_EMBEDS_META


@dataclass(frozen=True)
class ExportedPrompt:
    prompt: torch.Tensor
    """(n, d) float32."""
    meta: dict[str, Any]
    offset: torch.Tensor | None = None
    """(s, d) float32: DePT's input offset, added to the input's first s token embeddings; None for the others."""

    @classmethod
    def load(cls, folder: str | Path) -> ExportedPrompt:
        root = Path(folder).expanduser()
        try:
            tensors = load_file(str(root / PROMPT_EMBEDS))
            meta = json.loads((root / PROMPT_EMBEDS_META).read_text())
            prompt = tensors["prompt_embeds"]
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{root}: not a prompt-embeds export ({exc.__class__.__name__})") from None
        return cls(prompt, meta, tensors.get("offset"))

    def source_text(self, text: str) -> str:
        """The model input for a text, as training saw it: the task's template, then the answer cue."""
        from core.inference import render_source

        return f"{render_source(self.meta['template'], text)}\n{self.meta['answer_cue']}:"

    def request(self, tokenizer: Any, embedding: torch.nn.Module, text: str) -> torch.Tensor:
        """`[prompt; embed(ids)]` for one input: (prompt tokens + input tokens, d), in the embedding's dtype; with
        an offset, its first rows are added to the input's first token embeddings."""
        ids = torch.tensor(tokenizer(self.source_text(text))["input_ids"])
        with torch.no_grad():
            tokens = embedding(ids)
            if self.offset is not None:
                n = min(len(ids), self.offset.shape[0])
                tokens = torch.cat([tokens[:n] + self.offset[:n].to(tokens.dtype), tokens[n:]])
        return torch.cat([self.prompt.to(tokens.dtype), tokens], dim=0)


def encode_embeds(embeds: torch.Tensor) -> str:
    """A tensor as vLLM's completions route reads `prompt_embeds`: base64 of its torch.save bytes."""
    buffer = io.BytesIO()
    torch.save(embeds.contiguous().cpu(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_embeds(data: str) -> torch.Tensor:
    tensor = torch.load(io.BytesIO(base64.b64decode(data)), weights_only=True)
    if not isinstance(tensor, torch.Tensor):
        raise ArtifactError("prompt_embeds does not hold a tensor")
    return tensor
