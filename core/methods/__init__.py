"""The tuning methods: each a frozen config dataclass and an nn.Module whose forward() returns the prompt."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.errors import ConfigError
from core.methods.dpt import DptConfig, DptPrompt
from core.methods.lamp import LampConfig, LampPrompt
from core.methods.prompt_tuning import PromptTuningConfig, SoftPrompt
from core.vocab import sample_token_ids

MethodConfig = LampConfig | PromptTuningConfig | DptConfig
METHODS: dict[str, type[LampConfig] | type[PromptTuningConfig] | type[DptConfig]] = {
    "lamp": LampConfig,
    "prompt-tuning": PromptTuningConfig,
    "dpt": DptConfig,
}

__all__ = [
    "METHODS",
    "DptConfig",
    "LampConfig",
    "MethodConfig",
    "PromptTuningConfig",
    "build_prompt",
    "method_config",
    "method_to_dict",
    "trainable_param_counts",
]


def method_config(name: str, **knobs: Any) -> MethodConfig:
    """Build a method's config from its name and the knobs that apply to it (others are ignored)."""
    if name not in METHODS:
        raise ConfigError(f"method={name!r}: unknown method; choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    fields = cls.__dataclass_fields__
    return cls(**{k: v for k, v in knobs.items() if k in fields and v is not None})


def method_to_dict(config: MethodConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return {"name": config.name, **asdict(config)}


def method_from_dict(data: dict[str, Any]) -> MethodConfig:
    data = dict(data)
    return method_config(data.pop("name"), **data)


def trainable_param_counts(hidden_size: int, length: int, rank: int, pool: int = 1) -> dict[str, int]:
    """Trainable parameters of each method at these knobs, from the formulas alone."""
    return {
        "lamp": LampConfig(length=length, rank=rank, pool=pool).trainable_params(hidden_size),
        "prompt-tuning": PromptTuningConfig(length=length).trainable_params(hidden_size),
        "dpt": DptConfig(length=length, rank=rank).trainable_params(hidden_size),
    }


def build_prompt(
    config: MethodConfig, embeddings: torch.Tensor, common_ids: list[int], generator: torch.Generator
) -> tuple[nn.Module, list[int]]:
    """The method's prompt module for a backbone whose input embedding table is `embeddings` (vocab, d).

    Returns the module and the vocabulary ids its initial prompt was drawn from (empty for DPT's random init).
    """
    hidden = embeddings.shape[1]
    config.check_hidden_size(hidden)
    if isinstance(config, DptConfig):
        scale = embeddings.detach().float().pow(2).mean().sqrt().item()
        return DptPrompt(config, hidden, scale, generator), []
    ids = sample_token_ids(common_ids, config.length, generator)
    init = embeddings.detach()[torch.tensor(ids)].float()  # (l, d)
    if isinstance(config, LampConfig):
        return LampPrompt(config, init), ids
    return SoftPrompt(config, init), ids
