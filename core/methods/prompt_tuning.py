"""Vanilla prompt tuning (Lester et al., 2021): a free l x d soft prompt initialised from vocabulary embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from core.errors import ConfigError
from core.methods.checks import UnpooledPrompt, length_issues


@dataclass(frozen=True)
class PromptTuningConfig(UnpooledPrompt):
    length: int = 100
    """l: soft-prompt tokens, each a free d-dimensional vector."""

    name: ClassVar[str] = "prompt-tuning"
    formula: ClassVar[str] = "l·d"
    """Its trainable parameters in the knobs' letters (d: the hidden size)."""

    def __post_init__(self) -> None:
        issues = length_issues(self.length)
        if issues:
            raise ConfigError("\n".join(issues))

    def trainable_params(self, hidden_size: int) -> int:
        return self.length * hidden_size


class SoftPrompt(nn.Module):
    """forward() returns the prompt P (l, d)."""

    def __init__(self, config: PromptTuningConfig, init_prompt: torch.Tensor) -> None:
        super().__init__()
        if init_prompt.shape[0] != config.length:
            raise ConfigError(f"init prompt has {init_prompt.shape[0]} rows, config.length is {config.length}")
        self.config = config
        self.prompt = nn.Parameter(init_prompt.detach().float().clone())  # (l, d)

    @property
    def num_tokens(self) -> int:
        return self.config.length

    def dense(self) -> torch.Tensor:
        """C, the prompt before pooling: P itself. (l, d)"""
        return self.prompt

    def forward(self) -> torch.Tensor:
        return self.prompt
