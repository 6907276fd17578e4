"""DPT, decomposed prompt tuning (Xiao et al., 2023): P = A B with random A (l x r) and B (r x d)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from core.errors import ConfigError
from core.methods.checks import UnpooledPrompt, length_rank_issues


@dataclass(frozen=True)
class DptConfig(UnpooledPrompt):
    length: int = 100
    """l: soft-prompt tokens."""
    rank: int = 8
    """r: inner dimension of A B; 1 <= r <= min(l, hidden size)."""

    name: ClassVar[str] = "dpt"
    formula: ClassVar[str] = "l·r + r·d"
    """Its trainable parameters in the knobs' letters (d: the hidden size)."""

    def __post_init__(self) -> None:
        issues = length_rank_issues(self.length, self.rank)
        if issues:
            raise ConfigError("\n".join(issues))

    def trainable_params(self, hidden_size: int) -> int:
        return self.length * self.rank + self.rank * hidden_size


class DptPrompt(nn.Module):
    """Trainable A (l, r) and B (r, d); forward() returns P = A @ B (l, d)."""

    def __init__(self, config: DptConfig, hidden_size: int, scale: float, generator: torch.Generator) -> None:
        super().__init__()
        config.check_hidden_size(hidden_size)
        self.config = config
        r = config.rank
        # Random Gaussian factors, scaled so that the entries of A @ B have the embedding table's RMS `scale`:
        # var(sum_k a_k b_k) = r * var(a) * var(b) = r * 1 * scale^2 / r.
        a = torch.randn(config.length, r, generator=generator)
        b = torch.randn(r, hidden_size, generator=generator) * (scale / math.sqrt(r))
        self.a = nn.Parameter(a)  # (l, r)
        self.b = nn.Parameter(b)  # (r, d)

    @classmethod
    def from_prompt(cls, config: DptConfig, prompt: torch.Tensor) -> DptPrompt:
        """A warm start: A B = the best rank-r approximation of `prompt` (l, d), split evenly from its SVD,
        A = U_r sqrt(S_r) and B = sqrt(S_r) V_r^T."""
        module = cls(config, prompt.shape[1], 1.0, torch.Generator().manual_seed(0))
        u, s, vh = torch.linalg.svd(prompt.detach().to(torch.float64), full_matrices=False)
        r = config.rank
        root = s[:r].sqrt()
        with torch.no_grad():
            module.a.copy_(u[:, :r] * root)  # (l, r)
            module.b.copy_(root[:, None] * vh[:r])  # (r, d)
        return module

    @property
    def num_tokens(self) -> int:
        return self.config.length

    def dense(self) -> torch.Tensor:
        """C, the prompt before pooling: A @ B. (l, d)"""
        return self.a @ self.b

    def forward(self) -> torch.Tensor:
        return self.dense()  # (l, d)
