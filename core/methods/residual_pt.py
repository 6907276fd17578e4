"""Residual prompt tuning (Razdaibiedina et al., Findings of ACL 2023): the prompt passes through a shallow residual
network with a bottleneck before the backbone reads it.

    H  = ReLU(P W1 + b1)           (l, m)    down-projection to the bottleneck m
    P' = P + LN(H W2 + b2)         (l, d)    up-projection, layer norm, skip connection

Trained: P, W1 (d x m), b1, W2 (m x d), b2 and the layer norm's weight and bias: l*d + (d*m + m) + (m*d + d) + 2d.
With m = 400 that is the LAMP paper's table (T5-Small, d = 512, l = 100: 462,736; T5-Base, d = 768: 693,904).

The layer norm's weight starts at zero, so P' starts at P (the vocabulary sample, or the text start): the norm's
output has unit scale per entry, tens of times a small model's embedding entries (SmolLM2: RMS 0.12), and would
otherwise drown the prompt at step 0. The skip connection keeps gradients flowing to P from the first step; the
branch opens as its norm's weight moves. After training the network is folded away: the artifact's prompt is P'
itself, and serving it costs what vanilla prompt tuning costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from core.errors import ConfigError
from core.methods.checks import UnpooledPrompt, length_issues


@dataclass(frozen=True)
class ResidualPtConfig(UnpooledPrompt):
    length: int = 100
    """l: soft-prompt tokens."""
    bottleneck: int = 400
    """m: the residual network's hidden width (the paper's 400)."""

    name: ClassVar[str] = "residual-pt"
    formula: ClassVar[str] = "l·d + 2·d·m + m + 3·d"
    """Its trainable parameters in the knobs' letters (d: the hidden size)."""

    def __post_init__(self) -> None:
        issues = length_issues(self.length)
        if self.bottleneck < 1:
            issues.append(f"bottleneck={self.bottleneck}: the residual network needs at least 1 hidden unit; "
                          "use e.g. --bottleneck 400")
        if issues:
            raise ConfigError("\n".join(issues))

    def trainable_params(self, hidden_size: int) -> int:
        """P (l x d) + W1 and b1 (d x m + m) + W2 and b2 (m x d + d) + the layer norm's weight and bias (2d)."""
        d, m = hidden_size, self.bottleneck
        return self.length * d + (d * m + m) + (m * d + d) + 2 * d


def _uniform(rows: int, cols: int, fan_in: int, generator: torch.Generator) -> torch.Tensor:
    """nn.Linear's own init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from the run's generator."""
    bound = 1 / math.sqrt(fan_in)
    return (torch.rand(rows, cols, generator=generator) * 2 - 1) * bound


class ResidualPrompt(nn.Module):
    """Trainable P (l, d) and the residual network; forward() returns P' = P + LN(ReLU(P W1 + b1) W2 + b2) (l, d)."""

    def __init__(self, config: ResidualPtConfig, init_prompt: torch.Tensor, generator: torch.Generator) -> None:
        super().__init__()
        length, d = init_prompt.shape
        if length != config.length:
            raise ConfigError(f"init prompt has {length} rows, config.length is {config.length}")
        m = config.bottleneck
        self.config = config
        self.prompt = nn.Parameter(init_prompt.detach().float().clone())  # (l, d)
        self.down = nn.Linear(d, m)
        self.up = nn.Linear(m, d)
        self.norm = nn.LayerNorm(d)
        with torch.no_grad():
            self.down.weight.copy_(_uniform(m, d, d, generator))  # (m, d)
            self.down.bias.copy_(_uniform(1, m, d, generator)[0])
            self.up.weight.copy_(_uniform(d, m, m, generator))  # (d, m)
            self.up.bias.copy_(_uniform(1, d, m, generator)[0])
            self.norm.weight.zero_()  # the branch starts closed: P' = P at step 0

    @property
    def num_tokens(self) -> int:
        return self.config.length

    def dense(self) -> torch.Tensor:
        """The prompt the backbone reads, P' (l, d): nothing is pooled."""
        return self.prompt + self.norm(self.up(torch.relu(self.down(self.prompt))))

    def forward(self) -> torch.Tensor:
        return self.dense()
